package dev.kiln.train;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import dev.kiln.KilnException;
import dev.kiln.dist.DataParallel;
import dev.kiln.dist.PipelineParallel;
import dev.kiln.dist.ProcessGroup;
import dev.kiln.dist.TensorParallel;
import dev.kiln.nn.models.CausalLm;
import dev.kiln.nn.models.Gpt;
import dev.kiln.optim.Optimizer;
import dev.kiln.optim.WeightAverage;
import dev.kiln.tensor.DType;
import dev.kiln.tensor.MemoryScope;
import dev.kiln.tensor.Safetensors;
import dev.kiln.tensor.Tensor;

import java.io.IOException;
import java.lang.foreign.MemorySegment;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Comparator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * Sharded checkpoints ({@code parallel.checkpoint: sharded}): every rank writes {@code rank-RRRRR-of-WWWWW.safetensors}
 * into the step directory with the pieces it owns, model (Hugging Face names) and optimizer state, so no rank holds
 * the whole model to save it. A piece is a block of a tensor: its full name and shape and the block's offset in it
 * (the file's "pieces" metadata); a replicated tensor is written once, by the rank {@link dev.kiln.dist.ParameterOwners}
 * makes its owner. Rank 0 writes trainer.json last, with the index under "shards" (world size, layout, ZeRO stage,
 * the files, the model's tensor order) and every rank file's checksums, after all ranks reported their file complete;
 * then the directory is renamed into place, so a rank that dies mid-write leaves only a {@code .tmp-} directory.
 * {@link #consolidate} assembles the pieces, checking each tensor is covered exactly once (for eval, export and
 * {@code kiln checkpoint consolidate}; {@code --resume} of a GPT reshards instead, each rank reading its share: {@link ShardedLoad}).
 *
 * <p>Any layout dp × tp × pp of a GPT ({@link RankPieces}: a tensor-parallel shard is written as blocks of rows or
 * columns of the whole tensor, a pipeline stage its own parameters, replicas once); data parallelism alone also for
 * Llama (whole tensors balanced over the ranks). The ranks' files are named by world rank.
 */
public final class ShardedCheckpoint {
    private ShardedCheckpoint() {}

    /** trainer.json's key of the index. */
    static final String INDEX_KEY = "shards";
    static final String MODEL = "model/", OPTIMIZER = "optimizer/";
    private static final String PIECES = "pieces";
    private static final ObjectMapper JSON = new ObjectMapper();

    /** A consolidated checkpoint in memory: HF model tensors in model order and the optimizer's state with its metadata. */
    public record Whole(Map<String, Tensor> model, Safetensors.Loaded optimizer) {}

    /** One block of a tensor: {@code kind} model or optimizer, the tensor's full name and shape, the block's offset. */
    record Piece(String kind, String name, int[] fullShape, int[] offset, Tensor block) {}

    static String rankFile(int rank, int world) {
        return String.format("rank-%05d-of-%05d.safetensors", rank, world);
    }

    /** The rank files an index lists. */
    static List<String> files(JsonNode index) {
        List<String> out = new ArrayList<>();
        index.path("files").forEach(f -> out.add(f.asText()));
        return out;
    }

    /** Whether {@code checkpoint}'s trainer.json has a sharded index (false when it is unreadable). */
    public static boolean isSharded(Path checkpoint) {
        try {
            return JSON.readTree(checkpoint.resolve(CheckpointStore.STATE_FILE).toFile()).path(INDEX_KEY).isObject();
        } catch (IOException e) {
            return false;
        }
    }

    /**
     * Saves a sharded checkpoint of the active data / tensor / pipeline parallelism (collective over the world): every
     * rank writes its file, the ranks agree that all succeeded, then rank 0 writes trainer.json and renames the
     * directory into place. Returns the step directory.
     */
    static Path save(CheckpointStore store, CausalLm model, Optimizer opt, dev.kiln.train.config.OptimConfig oc,
                     List<WeightAverage> averages, CheckpointStore.TrainerState state, JsonNode config, int keep) {
        DataParallel dp = DataParallel.active();
        TensorParallel tp = TensorParallel.active();
        PipelineParallel pipe = PipelineParallel.active();
        ProcessGroup g = ProcessGroup.world();
        int rank = g.rank(), world = g.size();
        long step = state.step();
        String fault = null;
        if (rank == 0) {
            try {
                store.beginSave(step);
            } catch (IOException e) {
                fault = "cannot create " + store.temporaryDirectory(step) + ": " + e.getMessage();
            }
        }
        agree(g, store, step, fault); // the directory exists before anyone writes into it
        Path tmp = store.temporaryDirectory(step);
        try (var scope = MemoryScope.open()) {
            List<Piece> pieces = model instanceof Gpt gpt ? RankPieces.of(gpt, opt, dp, tp == null ? 0 : tp.rank(), tp == null ? 1 : tp.size(), pipe) : balancedPieces(dp, model, opt);
            write(tmp.resolve(rankFile(rank, world)), pieces, opt, rank, world);
            if (rank == 0 && !averages.isEmpty()) CheckpointStore.writeAverages(tmp, averages); // replicated: once
        } catch (RuntimeException e) { // KilnException included: the other ranks must learn of it rather than wait
            fault = "rank " + rank + ": cannot write " + tmp.resolve(rankFile(rank, world)) + ": " + e.getMessage();
        }
        agree(g, store, step, fault);
        if (rank != 0) return store.stepDirectory(step);
        try {
            List<String> files = new ArrayList<>();
            for (int r = 0; r < world; r++) files.add(rankFile(r, world));
            ObjectNode index = JSON.createObjectNode();
            index.put("world_size", world);
            index.put("dp", dp == null ? 1 : dp.group().size()).put("tp", tp == null ? 1 : tp.size()).put("pp", pipe == null ? 1 : pipe.group().size())
                    .put("zero_stage", dp == null ? 0 : dp.zeroStage()).put("step", step);
            ArrayNode fl = index.putArray("files");
            files.forEach(fl::add);
            ArrayNode order = index.putArray("model_order");
            modelNames(model).forEach(order::add);
            ArrayNode params = index.putArray("param_order");
            // the unsharded optimizer lists its state group by group (decay, no decay, …): consolidation keeps that order
            for (var group : RunSetup.paramGroups(oc, model, model.trainableParameters())) group.params().keySet().forEach(params::add);
            List<String> checked = new ArrayList<>(files);
            if (!averages.isEmpty()) checked.add(CheckpointStore.AVERAGES_FILE);
            return store.commit(state, checked, config, index, keep);
        } catch (IOException | KilnException e) {
            store.abandon(step);
            String prev = store.latest().map(Path::toString).orElse("none");
            throw new TrainingException("cannot write sharded checkpoint " + store.stepDirectory(step) + ": " + e.getMessage()
                    + " (previous checkpoint intact: " + prev + ")", e);
        }
    }

    /** Every rank learns whether any failed; all throw if one did (rank 0 removes the temporary directory first). */
    private static void agree(ProcessGroup g, CheckpointStore store, long step, String fault) {
        double[] failed = {fault == null ? 0 : 1};
        g.allReduceMax(failed);
        if (failed[0] == 0) return;
        if (g.rank() == 0) store.abandon(step);
        String prev = store.latest().map(Path::toString).orElse("none");
        throw new TrainingException((fault != null ? fault : "sharded checkpoint of step " + step + " failed on another rank")
                + " (previous checkpoint intact: " + prev + ")");
    }

    /** The model's HF tensor names in file order (what a consolidated model.safetensors lists). */
    private static List<String> modelNames(CausalLm model) {
        if (model instanceof Gpt gpt) return new ArrayList<>(gpt.namedParameters().keySet()); // GPT-2: HF names are Kiln's
        return new ArrayList<>(model.hfStateDict().keySet());
    }

    /**
     * What a rank of a data-parallel non-GPT run writes (the whole model on every rank: ZeRO-3, tp and pp are GPT
     * only): the HF tensors balanced over the ranks; optimizer entries "kind.param" with their parameter's owner
     * (under ZeRO-1/2 that is this rank's whole shard); entries of no trainable parameter and frozen parameters on rank 0.
     */
    private static List<Piece> balancedPieces(DataParallel dp, CausalLm model, Optimizer opt) {
        int rank = dp.group().rank();
        var owners = dp.owners();
        var trainable = dp.parameters().keySet();
        Map<String, Tensor> mine = new LinkedHashMap<>();
        Map<String, Tensor> hf = model.hfStateDict();
        int[] owner = balance(hf, dp.group().size());
        int i = 0;
        for (var e : hf.entrySet()) if (owner[i++] == rank) mine.put(e.getKey(), e.getValue());
        List<Piece> out = new ArrayList<>();
        mine.forEach((n, t) -> out.add(whole(MODEL, n, t)));
        opt.stateDict().forEach((k, t) -> {
            String param = k.substring(k.indexOf('.') + 1);
            if ((trainable.contains(param) ? owners.owner(param) : 0) == rank) out.add(whole(OPTIMIZER, k, t));
        });
        return out;
    }

    static Piece whole(String kind, String name, Tensor t) {
        return new Piece(kind, name, t.shape(), new int[t.shape().length], t);
    }

    /** Largest first, each to the rank with the fewest elements so far (as ParameterOwners, over any tensors). */
    private static int[] balance(Map<String, Tensor> tensors, int ranks) {
        List<Tensor> list = new ArrayList<>(tensors.values());
        Integer[] idx = new Integer[list.size()];
        for (int i = 0; i < idx.length; i++) idx[i] = i;
        Arrays.sort(idx, Comparator.<Integer>comparingLong(i -> -list.get(i).numel()).thenComparingInt(i -> i));
        long[] load = new long[ranks];
        int[] owner = new int[idx.length];
        for (int i : idx) {
            int best = 0;
            for (int r = 1; r < ranks; r++) if (load[r] < load[best]) best = r;
            owner[i] = best;
            load[best] += list.get(i).numel();
        }
        return owner;
    }

    static void write(Path file, List<Piece> pieces, Optimizer opt, int rank, int world) {
        Map<String, Tensor> tensors = new LinkedHashMap<>();
        ObjectNode meta = JSON.createObjectNode();
        for (Piece p : pieces) {
            String key = p.kind() + p.name();
            for (int i = 1; tensors.containsKey(key); i++) key = p.kind() + p.name() + "#" + i; // several blocks of one tensor
            tensors.put(key, p.block());
            ObjectNode m = meta.putObject(key);
            m.put("name", p.name());
            ArrayNode shape = m.putArray("shape"), offset = m.putArray("offset");
            for (int d : p.fullShape()) shape.add(d);
            for (int d : p.offset()) offset.add(d);
        }
        Map<String, String> metadata = new LinkedHashMap<>();
        metadata.put(PIECES, meta.toString());
        metadata.put("optimizer", opt.name());
        metadata.put("optimizer_step", Long.toString(opt.stepCount()));
        metadata.put("rank", Integer.toString(rank));
        metadata.put("world_size", Integer.toString(world));
        Safetensors.write(file, tensors, metadata);
    }

    /** A tensor being assembled from blocks, and the blocks placed so far (to find gaps and overlaps). */
    private static final class Assembly {
        final String name;
        final int[] shape;
        final Tensor full;
        final List<int[][]> blocks = new ArrayList<>(); // {offset, shape}
        final List<String> from = new ArrayList<>();

        Assembly(String name, DType dtype, int[] shape) {
            this.name = name;
            this.shape = shape;
            this.full = Tensor.zeros(dtype, shape);
        }
    }

    /**
     * Assembles a sharded checkpoint in memory (tensors owned by the caller's {@link MemoryScope}). The checkpoint
     * must pass {@link CheckpointStore#verify} (checksums of every rank file); each tensor must be covered exactly
     * once, else a one-line error names the tensor and the file(s).
     */
    public static Whole consolidate(Path checkpoint) {
        String fault = CheckpointStore.verify(checkpoint);
        if (fault != null) throw new TrainingException("checkpoint " + checkpoint + " failed verification: " + fault);
        JsonNode index;
        try {
            index = JSON.readTree(checkpoint.resolve(CheckpointStore.STATE_FILE).toFile()).path(INDEX_KEY);
        } catch (IOException e) {
            throw new TrainingException(checkpoint.resolve(CheckpointStore.STATE_FILE) + ": unreadable (" + e.getMessage() + ")", e);
        }
        if (!index.isObject()) throw new TrainingException(checkpoint + " is not a sharded checkpoint (trainer.json has no '" + INDEX_KEY + "')");
        List<Path> files = new ArrayList<>();
        for (String f : files(index)) files.add(checkpoint.resolve(f));
        int world = index.path("world_size").asInt(-1), layout = index.path("dp").asInt(1) * index.path("tp").asInt(1) * index.path("pp").asInt(1);
        if (world != files.size() || layout != world)
            throw new TrainingException(checkpoint.resolve(CheckpointStore.STATE_FILE) + ": the sharded index lists " + files.size() + " rank files for world_size "
                    + world + " = dp " + index.path("dp").asInt(1) + " × tp " + index.path("tp").asInt(1) + " × pp " + index.path("pp").asInt(1) + "; they must agree");
        List<String> modelOrder = new ArrayList<>(), paramOrder = new ArrayList<>();
        index.path("model_order").forEach(n -> modelOrder.add(n.asText()));
        index.path("param_order").forEach(n -> paramOrder.add(n.asText()));
        return assemble(files, modelOrder, paramOrder);
    }

    /**
     * Assembles rank files (no checksum verification: {@link #consolidate} does that first): model tensors in
     * {@code modelOrder}, optimizer entries kind by kind in {@code paramOrder} (names not listed follow, as found).
     * A tensor not covered exactly once is a one-line error naming it and the file(s) involved.
     */
    public static Whole assemble(List<Path> rankFiles, List<String> modelOrder, List<String> paramOrder) {
        Map<String, Assembly> model = new LinkedHashMap<>(), optim = new LinkedHashMap<>();
        Map<String, String> optMeta = new LinkedHashMap<>();
        for (Path file : rankFiles) {
            String f = file.getFileName().toString();
            Safetensors.Loaded loaded = null; // its blocks are freed once copied; the assembled tensors belong to the caller's scope
            try {
                loaded = Safetensors.read(file);
                JsonNode pieces = JSON.readTree(loaded.metadata().getOrDefault(PIECES, "{}"));
                String name = loaded.metadata().get("optimizer"), step = loaded.metadata().get("optimizer_step");
                if (name == null || step == null) throw new TrainingException(file + ": no optimizer name or step in its metadata");
                if (optMeta.isEmpty()) {
                    optMeta.put("step", step);
                    optMeta.put("optimizer", name);
                } else if (!optMeta.get("optimizer").equals(name) || !optMeta.get("step").equals(step))
                    throw new TrainingException(file + ": optimizer " + name + " at step " + step + " disagrees with the other rank files ("
                            + optMeta.get("optimizer") + " at step " + optMeta.get("step") + ")");
                for (var e : loaded.tensors().entrySet()) {
                    JsonNode m = pieces.path(e.getKey());
                    if (!m.isObject()) throw new TrainingException(file + ": tensor " + e.getKey() + " has no piece description");
                    boolean isModel = e.getKey().startsWith(MODEL);
                    if (!isModel && !e.getKey().startsWith(OPTIMIZER)) throw new TrainingException(file + ": tensor " + e.getKey() + " is neither model/ nor optimizer/");
                    place(isModel ? model : optim, m, e.getValue(), f);
                }
            } catch (IOException e) {
                throw new TrainingException(file + ": unreadable piece description (" + e.getMessage() + ")", e);
            } catch (KilnException e) {
                throw e instanceof TrainingException t ? t : new TrainingException(e.getMessage(), e);
            } finally {
                if (loaded != null) loaded.tensors().values().forEach(Tensor::release);
            }
        }
        checkCovered(model, "model");
        checkCovered(optim, "optimizer");
        Map<String, Tensor> m = new LinkedHashMap<>();
        for (String n : modelOrder) {
            if (!model.containsKey(n)) throw new TrainingException("model tensor " + n + " is in none of the rank files (" + rankFiles.size() + " read)");
            m.put(n, model.get(n).full);
        }
        model.forEach((n, a) -> m.putIfAbsent(n, a.full));
        // optimizers list their state kind by kind, each in parameter order ("exp_avg.*", then "exp_avg_sq.*", …)
        List<String> kinds = new ArrayList<>();
        for (String k : optim.keySet()) if (!kinds.contains(kind(k))) kinds.add(kind(k));
        List<String> keys = new ArrayList<>(optim.keySet());
        keys.sort(Comparator.<String>comparingInt(k -> kinds.indexOf(kind(k)))
                .thenComparingInt(k -> Math.floorMod(paramOrder.indexOf(k.substring(k.indexOf('.') + 1)), Integer.MAX_VALUE)));
        Map<String, Tensor> o = new LinkedHashMap<>();
        for (String k : keys) o.put(k, optim.get(k).full);
        return new Whole(m, new Safetensors.Loaded(o, optMeta));
    }

    private static String kind(String key) {
        int dot = key.indexOf('.');
        return dot < 0 ? key : key.substring(0, dot);
    }

    /** A one-line error unless the block of shape {@code bs} at {@code offset} lies inside a tensor of {@code shape}. */
    static void checkInside(Object file, String name, int[] shape, int[] offset, int[] bs) {
        if (offset.length != shape.length || bs.length != shape.length)
            throw new TrainingException(file + ": piece of " + name + " has a block of rank " + bs.length + " for a tensor of shape " + Arrays.toString(shape));
        for (int d = 0; d < shape.length; d++)
            if (offset[d] < 0 || offset[d] + bs[d] > shape[d])
                throw new TrainingException(file + ": piece of " + name + " at " + Arrays.toString(offset) + " of shape " + Arrays.toString(bs)
                        + " lies outside " + Arrays.toString(shape));
    }

    /** Copies one block into its tensor, checking its bounds and its overlap with the blocks placed before. */
    private static void place(Map<String, Assembly> into, JsonNode m, Tensor block, String file) {
        String name = m.path("name").asText();
        int[] shape = ints(m.path("shape")), offset = ints(m.path("offset")), bs = block.shape();
        checkInside(file, name, shape, offset, bs);
        Assembly a = into.computeIfAbsent(name, n -> new Assembly(n, block.dtype(), shape));
        if (!Arrays.equals(a.shape, shape) || a.full.dtype() != block.dtype())
            throw new TrainingException(file + ": piece of " + name + " says shape " + Arrays.toString(shape) + " " + block.dtype()
                    + " but " + a.from.getFirst() + " says " + Arrays.toString(a.shape) + " " + a.full.dtype());
        for (int i = 0; i < a.blocks.size(); i++)
            if (overlaps(a.blocks.get(i)[0], a.blocks.get(i)[1], offset, bs))
                throw new TrainingException("tensor " + name + ": the pieces in " + a.from.get(i) + " and " + file + " overlap at "
                        + Arrays.toString(offset));
        a.blocks.add(new int[][]{offset, bs});
        a.from.add(file);
        copyBlock(block, a.full, offset);
    }

    private static void checkCovered(Map<String, Assembly> tensors, String what) {
        for (Assembly a : tensors.values()) {
            long covered = 0, total = 1;
            for (int[][] b : a.blocks) covered += Arrays.stream(b[1]).asLongStream().reduce(1, (x, y) -> x * y);
            for (int d : a.shape) total *= d;
            if (covered != total) // blocks are disjoint (checked when placed), so fewer elements means a gap
                throw new TrainingException(what + " tensor " + a.name + " " + Arrays.toString(a.shape) + ": the rank files cover " + covered + " of its " + total
                        + " elements (a piece is missing: element " + Arrays.toString(firstUncovered(a)) + " is in none; pieces found in " + String.join(", ", a.from) + ")");
        }
    }

    /** The first element (row-major) no block of {@code a} covers; only called when there is one. */
    private static int[] firstUncovered(Assembly a) {
        long total = 1;
        for (int d : a.shape) total *= d;
        java.util.BitSet covered = new java.util.BitSet(Math.toIntExact(Math.min(total, Integer.MAX_VALUE)));
        int rank = a.shape.length;
        for (int[][] b : a.blocks) {
            long n = 1;
            for (int d : b[1]) n *= d;
            for (long i = 0; i < n; i++) { // element i of the block → its flat index in the tensor
                long rest = i, at = 0, stride = 1;
                for (int d = rank - 1; d >= 0; d--) {
                    at += (b[0][d] + rest % b[1][d]) * stride;
                    rest /= b[1][d];
                    stride *= a.shape[d];
                }
                if (at < Integer.MAX_VALUE) covered.set((int) at);
            }
        }
        long flat = covered.nextClearBit(0);
        int[] idx = new int[rank];
        for (int d = rank - 1; d >= 0; d--) {
            idx[d] = (int) (flat % a.shape[d]);
            flat /= a.shape[d];
        }
        return idx;
    }

    private static boolean overlaps(int[] o1, int[] s1, int[] o2, int[] s2) {
        for (int d = 0; d < o1.length; d++)
            if (o1[d] + s1[d] <= o2[d] || o2[d] + s2[d] <= o1[d]) return false;
        return true;
    }

    /** Row-major copy of a contiguous block into {@code full} at {@code offset}, innermost runs at a time, bytes as stored. */
    private static void copyBlock(Tensor block, Tensor full, int[] offset) {
        int[] bs = block.shape(), fs = full.shape();
        int rank = bs.length;
        long es = block.dtype().byteSize();
        MemorySegment src = block.contiguous().segment(), dst = full.segment();
        if (rank == 0) {
            MemorySegment.copy(src, 0, dst, 0, es);
            return;
        }
        long[] stride = new long[rank];
        stride[rank - 1] = 1;
        for (int d = rank - 2; d >= 0; d--) stride[d] = stride[d + 1] * fs[d + 1];
        long runs = 1;
        for (int d = 0; d < rank - 1; d++) runs *= bs[d];
        int[] idx = new int[rank];
        long run = bs[rank - 1] * es;
        for (long r = 0; r < runs; r++) {
            long at = offset[rank - 1];
            for (int d = 0; d < rank - 1; d++) at += (long) (offset[d] + idx[d]) * stride[d];
            if (run > 0) MemorySegment.copy(src, r * run, dst, at * es, run);
            for (int d = rank - 2; d >= 0; d--) {
                if (++idx[d] < bs[d]) break;
                idx[d] = 0;
            }
        }
    }

    private static int[] ints(JsonNode a) {
        int[] out = new int[a.size()];
        for (int i = 0; i < out.length; i++) out[i] = a.get(i).asInt();
        return out;
    }

    /**
     * Writes the consolidated checkpoint of a sharded {@code checkpoint} to {@code out}: model.safetensors,
     * optimizer.safetensors, averages.safetensors when present, and trainer.json without the index and with the
     * new files' checksums, an ordinary single-process checkpoint. Returns {@code out}.
     */
    public static Path consolidateTo(Path checkpoint, Path out) {
        try (var scope = MemoryScope.open()) {
            Whole whole = consolidate(checkpoint);
            Files.createDirectories(out);
            Safetensors.write(out.resolve(CheckpointStore.MODEL_FILE), whole.model(), Map.of("format", "pt"));
            Safetensors.write(out.resolve(CheckpointStore.OPTIMIZER_FILE), whole.optimizer().tensors(),
                    Map.of("step", whole.optimizer().metadata().get("step"), "optimizer", whole.optimizer().metadata().get("optimizer")));
            ObjectNode manifest = (ObjectNode) JSON.readTree(checkpoint.resolve(CheckpointStore.STATE_FILE).toFile());
            manifest.remove(INDEX_KEY);
            List<String> files = new ArrayList<>(List.of(CheckpointStore.MODEL_FILE, CheckpointStore.OPTIMIZER_FILE));
            Path avg = checkpoint.resolve(CheckpointStore.AVERAGES_FILE);
            if (Files.isRegularFile(avg)) {
                Files.copy(avg, out.resolve(CheckpointStore.AVERAGES_FILE), java.nio.file.StandardCopyOption.REPLACE_EXISTING);
                files.add(CheckpointStore.AVERAGES_FILE);
            }
            ObjectNode sums = JSON.createObjectNode();
            for (String f : files) sums.set(f, JSON.valueToTree(Checksums.of(out.resolve(f))));
            manifest.set("checksums", sums);
            byte[] bytes = JSON.writerWithDefaultPrettyPrinter().writeValueAsBytes(manifest);
            dev.kiln.AtomicFile.write(out.resolve(CheckpointStore.STATE_FILE), ch -> ch.write(java.nio.ByteBuffer.wrap(bytes)));
            return out;
        } catch (IOException e) {
            throw new TrainingException("cannot write the consolidated checkpoint to " + out + ": " + e.getMessage(), e);
        }
    }
}
