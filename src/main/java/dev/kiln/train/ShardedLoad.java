package dev.kiln.train;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import dev.kiln.KilnException;
import dev.kiln.dist.DataParallel;
import dev.kiln.dist.PipelineParallel;
import dev.kiln.dist.TensorParallel;
import dev.kiln.nn.Parameter;
import dev.kiln.nn.models.CausalLm;
import dev.kiln.nn.models.Gpt;
import dev.kiln.nn.models.GptHfFormat;
import dev.kiln.nn.models.TensorParallelism;
import dev.kiln.optim.Optimizer;
import dev.kiln.optim.WeightAverage;
import dev.kiln.tensor.DType;
import dev.kiln.tensor.MemoryScope;
import dev.kiln.tensor.Safetensors;
import dev.kiln.tensor.Tensor;

import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.nio.channels.FileChannel;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.HashSet;
import java.util.LinkedHashMap;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.zip.CRC32C;

/**
 * Resharding load of a sharded checkpoint ({@link ShardedCheckpoint}) into a GPT run at any layout, as PyTorch's
 * Distributed Checkpoint and DeepSpeed's universal checkpoints do: this rank reads, from the memory-mapped rank files,
 * only the parts of the pieces that overlap what IT holds under the run's layout, and copies them straight into its
 * parameters and optimizer state. What a rank holds: under pp its stage's parameters; under ZeRO-3 the parameters it
 * owns (the others are evicted first, and gathered from their owners when first used); under tp its shard of each
 * split tensor ({@link RankPieces#blocks}, vocabulary padding left zero); the optimizer entries its optimizer has
 * (ZeRO-1/2: its owned parameters'). Nothing whole is built but what the rank holds whole anyway (replicated tensors).
 *
 * <p>Checks: every rank file's size against trainer.json, and the CRC32C of each piece this rank reads from
 * (trainer.json's per-tensor checksums); a missing file, a failing piece or an element of what the rank needs in no
 * piece is a one-line error naming the file / tensor. Consolidated checkpoints, and non-GPT models, load as before.
 */
public final class ShardedLoad {
    private ShardedLoad() {}

    private static final ObjectMapper JSON = new ObjectMapper();

    /**
     * What the last load in this process did: bytes copied out of the rank files, bytes of the pieces read from
     * (their checksums were checked), the bytes this rank holds of the model and optimizer state (its share), and
     * the number of rank files it read from of those in the checkpoint.
     */
    public record Report(long bytesRead, long bytesChecked, long share, int filesRead, int files) {}

    private static volatile Report last;

    /** The report of this process's last resharding load, or null. */
    public static Report lastLoad() {
        return last;
    }

    /** Whether {@link #load} takes this checkpoint into this model (a sharded checkpoint and a GPT). */
    static boolean applies(Path checkpoint, CausalLm model) {
        return model instanceof Gpt && ShardedCheckpoint.isSharded(checkpoint);
    }

    /** One block of a tensor in a rank file: its key there, its box in the whole tensor, where its bytes are. */
    record Source(Path file, String key, int[] offset, int[] shape, DType dtype, long begin, long end) {}

    /**
     * Loads {@code checkpoint} into the active layout's share of {@code model} and {@code opt} (collective-free; under
     * ZeRO-3 it first evicts the parameters this rank does not own) and the weight averages (replicated, whole);
     * returns the trainer state.
     */
    static CheckpointStore.TrainerState load(Path checkpoint, Gpt model, Optimizer opt, List<WeightAverage> averages) {
        CheckpointStore.TrainerState st = CheckpointStore.readState(checkpoint, model);
        DataParallel dp = DataParallel.active();
        TensorParallel tp = TensorParallel.active();
        PipelineParallel pipe = PipelineParallel.active();
        Set<String> held = new LinkedHashSet<>(pipe == null ? model.namedParameters().keySet() : pipe.parameters().keySet());
        if (dp != null && dp.zeroStage() == 3) {
            dp.evictUnownedParameters();
            var trainable = dp.parameters().keySet();
            held.removeIf(n -> trainable.contains(n) && dp.owners().owner(n) != dp.group().rank());
        }
        last = fill(checkpoint, model, held, tp == null ? 0 : tp.rank(), tp == null ? 1 : tp.size(), opt, st.optimizerStep());
        if (!averages.isEmpty()) {
            checkWholeFile(checkpoint, CheckpointStore.AVERAGES_FILE);
            CheckpointStore.loadAverages(checkpoint, averages);
        }
        return st;
    }

    /**
     * Fills the parameters of {@code model} named in {@code held} (tp shard {@code tpRank} of {@code tpSize} where
     * split) and every entry of {@code opt}'s state dict (null: none) from the pieces of {@code checkpoint}; see the
     * class comment.
     */
    static Report fill(Path checkpoint, Gpt model, Set<String> held, int tpRank, int tpSize, Optimizer opt, long optimizerStep) {
        Index idx = Index.read(checkpoint);
        if (opt != null && !idx.optimizer.equals(opt.name()))
            throw new TrainingException(checkpoint + " holds " + idx.optimizer + " state but the run's optim.optimizer is " + opt.name()
                    + "; resume with optim.optimizer=" + idx.optimizer + " or start a new run");
        Map<String, Parameter> named = model.namedParameters();
        Map<String, TensorParallelism.Split> splits = model.tensorParallelSplits();
        try (Reader reader = new Reader(idx)) {
            long share = 0;
            for (String n : held) {
                Parameter p = named.get(n);
                if (p == null) continue;
                TensorParallelism.Split split = splits.get(n);
                int[] whole = split == null ? p.shape() : model.tensorParallelWholeShape(n);
                boolean conv = GptHfFormat.isConv1D(n);
                int[] hfWhole = conv ? reversed(whole) : whole;
                List<Source> sources = idx.pieces(ShardedCheckpoint.MODEL, n, hfWhole);
                try (var scope = MemoryScope.open()) {
                    Tensor local = Tensor.zeros(sources.getFirst().dtype(), p.shape());
                    share += reader.into(local, "model tensor " + n, sources, split == null ? null : RankPieces.blocks(split, whole, tpRank, tpSize), whole, conv);
                    p.copyFrom(local);
                }
            }
            if (opt != null) share += fillOptimizer(idx, reader, model, opt, named, splits, tpRank, tpSize, optimizerStep);
            return new Report(reader.bytesRead, reader.bytesChecked, share, reader.filesRead(), idx.files.size());
        }
    }

    /** Fills each entry of {@code opt}'s state dict (its own tensors, in place), then loads them: it sets the step count. */
    private static long fillOptimizer(Index idx, Reader reader, Gpt model, Optimizer opt, Map<String, Parameter> named,
                                      Map<String, TensorParallelism.Split> splits, int tpRank, int tpSize, long optimizerStep) {
        Map<String, Tensor> state = new LinkedHashMap<>(opt.stateDict());
        Set<String> covered = new HashSet<>();
        for (String k : state.keySet()) covered.add(parameterOf(k));
        long share = 0;
        for (var e : state.entrySet()) {
            String k = e.getKey(), param = parameterOf(k);
            Tensor t = e.getValue();
            TensorParallelism.Split split = named.containsKey(param) ? splits.get(param) : null;
            boolean cut = split != null && t.numel() == split.numel(); // per-element state of a tp shard
            int[] whole = cut ? model.tensorParallelWholeShape(param) : t.shape();
            List<Source> sources = idx.pieces(ShardedCheckpoint.OPTIMIZER, k, whole);
            try (var scope = MemoryScope.open()) {
                Tensor local = Tensor.zeros(sources.getFirst().dtype(), t.shape());
                share += reader.into(local, "optimizer tensor " + k, sources, cut ? RankPieces.blocks(split, whole, tpRank, tpSize) : null, whole, false);
                t.copyFrom(local);
            }
        }
        // entries the checkpoint has for this optimizer's parameters but its state dict does not list now ("step.<param>" of
        // a parameter that joined late): whole, as the consolidated state would hand them over
        try (var scope = MemoryScope.open()) {
            for (String k : idx.optimShapes.keySet()) {
                if (state.containsKey(k) || !named.containsKey(parameterOf(k)) || !covered.contains(parameterOf(k))) continue;
                int[] whole = idx.optimShapes.get(k);
                List<Source> sources = idx.pieces(ShardedCheckpoint.OPTIMIZER, k, whole);
                Tensor local = Tensor.zeros(sources.getFirst().dtype(), whole);
                share += reader.into(local, "optimizer tensor " + k, sources, null, whole, false);
                state.put(k, local);
            }
            try {
                opt.loadStateDict(state, optimizerStep);
            } catch (KilnException e) {
                throw new TrainingException(idx.dir + " (sharded optimizer state): " + e.getMessage(), e);
            }
        }
        return share;
    }

    private static String parameterOf(String key) {
        int dot = key.indexOf('.');
        return dot < 0 ? key : key.substring(dot + 1);
    }

    private static int[] reversed(int[] s) {
        return s.length == 2 ? new int[]{s[1], s[0]} : s.clone();
    }

    /** trainer.json's sharded index and checksums, and every piece of every rank file (from their headers only). */
    static final class Index {
        final Path dir;
        final List<Path> files = new ArrayList<>();
        final JsonNode checksums;
        final Map<String, List<Source>> modelPieces = new HashMap<>(), optimPieces = new HashMap<>();
        final Map<String, int[]> modelShapes = new HashMap<>(), optimShapes = new LinkedHashMap<>();
        String optimizer;
        long optimizerStep = -1;

        private Index(Path dir, JsonNode checksums) {
            this.dir = dir;
            this.checksums = checksums;
        }

        static Index read(Path checkpoint) {
            Path stateFile = checkpoint.resolve(CheckpointStore.STATE_FILE);
            JsonNode manifest;
            try {
                manifest = JSON.readTree(stateFile.toFile());
            } catch (IOException e) {
                throw new TrainingException(stateFile + ": unreadable (" + e.getMessage() + ")", e);
            }
            JsonNode shards = manifest.path(ShardedCheckpoint.INDEX_KEY);
            if (!shards.isObject()) throw new TrainingException(checkpoint + " is not a sharded checkpoint (trainer.json has no '" + ShardedCheckpoint.INDEX_KEY + "')");
            Index idx = new Index(checkpoint, manifest.path("checksums"));
            for (String f : ShardedCheckpoint.files(shards)) {
                Path file = checkpoint.resolve(f);
                idx.files.add(file);
                idx.addPieces(file);
            }
            if (idx.files.isEmpty()) throw new TrainingException(stateFile + ": the sharded index lists no rank files");
            return idx;
        }

        /** Reads one rank file's header: checks its size against trainer.json and records its pieces. */
        private void addPieces(Path file) {
            String f = file.getFileName().toString();
            if (!Files.isRegularFile(file)) throw new TrainingException("checkpoint " + dir + ": rank file " + f + " is missing");
            JsonNode sum = checksums.path(f);
            if (!sum.isObject()) throw new TrainingException("checkpoint " + dir + ": trainer.json has no checksums for " + f);
            try {
                long size = Files.size(file);
                if (size != sum.path("bytes").asLong(-1))
                    throw new TrainingException("checkpoint " + dir + ": rank file " + f + " is " + size + " bytes, expected " + sum.path("bytes").asLong(-1));
            } catch (IOException e) {
                throw new TrainingException("checkpoint " + dir + ": rank file " + f + ": " + e.getMessage(), e);
            }
            Map<String, String> meta = new LinkedHashMap<>();
            Map<String, Safetensors.Span> spans;
            JsonNode pieces;
            try {
                spans = Safetensors.locate(file, meta);
                pieces = JSON.readTree(meta.getOrDefault("pieces", "{}"));
            } catch (KilnException e) {
                throw new TrainingException(e.getMessage(), e);
            } catch (IOException e) {
                throw new TrainingException(file + ": unreadable piece description (" + e.getMessage() + ")", e);
            }
            String name = meta.get("optimizer"), step = meta.get("optimizer_step");
            if (name == null || step == null) throw new TrainingException(file + ": no optimizer name or step in its metadata");
            if (optimizer == null) {
                optimizer = name;
                optimizerStep = Long.parseLong(step);
            } else if (!optimizer.equals(name) || optimizerStep != Long.parseLong(step))
                throw new TrainingException(file + ": optimizer " + name + " at step " + step + " disagrees with the other rank files ("
                        + optimizer + " at step " + optimizerStep + ")");
            for (var e : spans.entrySet()) {
                String key = e.getKey();
                JsonNode m = pieces.path(key);
                if (!m.isObject()) throw new TrainingException(file + ": tensor " + key + " has no piece description");
                boolean isModel = key.startsWith(ShardedCheckpoint.MODEL);
                if (!isModel && !key.startsWith(ShardedCheckpoint.OPTIMIZER)) throw new TrainingException(file + ": tensor " + key + " is neither model/ nor optimizer/");
                String tensor = m.path("name").asText();
                int[] shape = ints(m.path("shape")), offset = ints(m.path("offset")), bs = e.getValue().shape();
                ShardedCheckpoint.checkInside(file, tensor, shape, offset, bs);
                Map<String, int[]> shapes = isModel ? modelShapes : optimShapes;
                int[] before = shapes.putIfAbsent(tensor, shape);
                if (before != null && !Arrays.equals(before, shape))
                    throw new TrainingException(file + ": piece of " + tensor + " says shape " + Arrays.toString(shape) + " but another says " + Arrays.toString(before));
                (isModel ? modelPieces : optimPieces).computeIfAbsent(tensor, x -> new ArrayList<>())
                        .add(new Source(file, key, offset, bs, e.getValue().dtype(), e.getValue().begin(), e.getValue().end()));
            }
        }

        /** The pieces of tensor {@code name}, whose whole shape must be {@code whole}; a one-line error when there are none. */
        List<Source> pieces(String kind, String name, int[] whole) {
            boolean isModel = kind.equals(ShardedCheckpoint.MODEL);
            List<Source> s = (isModel ? modelPieces : optimPieces).get(name);
            String what = (isModel ? "model tensor " : "optimizer tensor ") + name;
            if (s == null) throw new TrainingException("checkpoint " + dir + ": " + what + " is in none of the " + files.size() + " rank files");
            int[] shape = (isModel ? modelShapes : optimShapes).get(name);
            if (!Arrays.equals(shape, whole))
                throw new TrainingException("checkpoint " + dir + ": " + what + " is " + Arrays.toString(shape) + " there but " + Arrays.toString(whole) + " in this run");
            return s;
        }

        /** trainer.json's CRC32C of tensor {@code key} of rank file {@code file}, or null. */
        String crc(Path file, String key) {
            JsonNode c = checksums.path(file.getFileName().toString()).path("tensors").path(key);
            return c.isTextual() ? c.asText() : null;
        }

        private static int[] ints(JsonNode a) {
            int[] out = new int[a.size()];
            for (int i = 0; i < out.length; i++) out[i] = a.get(i).asInt();
            return out;
        }
    }

    /** The rank files mapped on first use; copies boxes out of them, checking each piece it reads once. */
    private static final class Reader implements AutoCloseable {
        private final Index idx;
        private final Arena arena = Arena.ofConfined();
        private final Map<Path, MemorySegment> mapped = new HashMap<>();
        private final Set<Source> checked = new HashSet<>();
        long bytesRead, bytesChecked;

        Reader(Index idx) {
            this.idx = idx;
        }

        int filesRead() {
            return mapped.size();
        }

        /**
         * Fills {@code local} (contiguous, zero: a tensor of this rank, Kiln layout) with its blocks of the whole tensor
         * of shape {@code whole} (Kiln layout): {@code blocks} from {@link RankPieces#blocks}, or null for the whole
         * tensor. {@code conv}: the pieces are in HF layout, transposed. Returns the bytes this rank holds of it.
         */
        long into(Tensor local, String what, List<Source> sources, List<RankPieces.Block> blocks, int[] whole, boolean conv) {
            if (blocks == null) {
                if (BlockOverlap.numel(whole) != local.numel())
                    throw new TrainingException("checkpoint " + idx.dir + ": " + what + " " + Arrays.toString(whole) + " does not fit this rank's " + local.shapeString());
                blocks = List.of(new RankPieces.Block(new int[whole.length], whole, 0));
            }
            long es = local.dtype().byteSize(), held = 0;
            Tensor flat = local.view(-1);
            for (RankPieces.Block b : blocks) {
                long n = BlockOverlap.numel(b.shape());
                Tensor dst = flat.sliceView(0, Math.toIntExact(b.localStart()), Math.toIntExact(b.localStart() + n)).view(b.shape());
                if (!conv) {
                    fillBox(what, sources, b.offset(), b.shape(), dst);
                } else { // the pieces hold the transpose: assemble the block so, then copy it in transposed
                    int[] o = reversed(b.offset()), s = reversed(b.shape());
                    Tensor box = Tensor.zeros(local.dtype(), s);
                    fillBox(what, sources, o, s, box);
                    dst.copyFrom(box.transposeView(0, 1));
                }
                held += n * es;
            }
            return held;
        }

        /** {@code dst} (contiguous, row-major) ← box (offset, shape) of the whole tensor, from the pieces overlapping it. */
        private void fillBox(String what, List<Source> sources, int[] offset, int[] shape, Tensor dst) {
            long need = BlockOverlap.numel(shape), got = 0;
            long es = dst.dtype().byteSize();
            for (Source s : sources) {
                int[][] box = BlockOverlap.intersect(s.offset(), s.shape(), offset, shape);
                if (box == null) continue;
                if (s.dtype() != dst.dtype())
                    throw new TrainingException(s.file() + ": piece " + s.key() + " of " + what + " is " + s.dtype() + ", another " + dst.dtype());
                MemorySegment file = segment(s);
                got += BlockOverlap.numel(box[1]);
                bytesRead += BlockOverlap.copy(file, s.begin(), s.offset(), s.shape(), dst.segment(), dst.offset() * es, offset, shape, box, es);
            }
            if (got != need)
                throw new TrainingException("checkpoint " + idx.dir + ": " + what + ": the rank files cover " + got + " of the " + need + " elements at "
                        + Arrays.toString(offset) + " of shape " + Arrays.toString(shape) + " this rank holds ("
                        + (got < need ? "a piece is missing" : "pieces overlap") + ")");
        }

        /** The mapped file of {@code s}, after the piece's checksum is checked (once per piece). */
        private MemorySegment segment(Source s) {
            MemorySegment seg = mapped.computeIfAbsent(s.file(), f -> {
                try (FileChannel ch = FileChannel.open(f, StandardOpenOption.READ)) {
                    return ch.map(FileChannel.MapMode.READ_ONLY, 0, ch.size(), arena);
                } catch (IOException e) {
                    throw new TrainingException("checkpoint " + idx.dir + ": cannot read rank file " + f.getFileName() + ": " + e.getMessage(), e);
                }
            });
            if (checked.add(s)) {
                String want = idx.crc(s.file(), s.key());
                if (want == null) throw new TrainingException("checkpoint " + idx.dir + ": trainer.json has no checksum of " + s.key() + " in " + s.file().getFileName());
                CRC32C c = new CRC32C();
                c.update(seg.asSlice(s.begin(), s.end() - s.begin()).asByteBuffer());
                String got = String.format("%08x", c.getValue());
                if (!got.equals(want))
                    throw new TrainingException("checkpoint " + idx.dir + ": rank file " + s.file().getFileName() + ": tensor " + s.key()
                            + " fails its checksum (crc32c " + got + ", expected " + want + ")");
                bytesChecked += s.end() - s.begin();
            }
            return seg;
        }

        @Override
        public void close() {
            arena.close();
        }
    }

    /** The whole-file checksum of a replicated file of the checkpoint (averages.safetensors), as {@link CheckpointStore#verify} checks it. */
    private static void checkWholeFile(Path checkpoint, String name) {
        Path file = checkpoint.resolve(name);
        if (!Files.isRegularFile(file)) return; // loadAverages names what is missing
        try {
            JsonNode sum = JSON.readTree(checkpoint.resolve(CheckpointStore.STATE_FILE).toFile()).path("checksums").path(name);
            if (!sum.isObject()) throw new TrainingException("checkpoint " + checkpoint + ": trainer.json has no checksums for " + name);
            String bad = JSON.treeToValue(sum, Checksums.class).mismatch(Checksums.of(file));
            if (bad != null) throw new TrainingException("checkpoint " + checkpoint + ": " + name + ": " + bad);
        } catch (IOException e) {
            throw new TrainingException("checkpoint " + checkpoint + ": " + name + ": " + e.getMessage(), e);
        }
    }
}
