package dev.kiln.train;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import dev.kiln.KilnException;
import dev.kiln.nn.models.CausalLm;
import dev.kiln.optim.Optimizer;
import dev.kiln.optim.WeightAverage;
import dev.kiln.tensor.Tensor;
import dev.kiln.tensor.MemoryScope;
import dev.kiln.tensor.Safetensors;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.stream.Stream;

/**
 * Checkpoints of one run: {@code checkpoints/step-NNNNNN/} holding model.safetensors (Hugging Face
 * names and layout of the architecture: GPT-2's or LlamaForCausalLM's), optimizer.safetensors (the optimizer's state, its name in the metadata),
 * averages.safetensors when weight averaging is on (EMA / SWA / LAWA weights, sample counts in the
 * metadata) and trainer.json (step, data position, RNG states, budget and early-stopping state,
 * checksums of the other files, config). A checkpoint is built in a temporary directory and renamed into
 * place, so a crash mid-write never leaves a half checkpoint under a real name.
 */
public final class CheckpointStore {
    public static final String MODEL_FILE = "model.safetensors", OPTIMIZER_FILE = "optimizer.safetensors", STATE_FILE = "trainer.json",
            AVERAGES_FILE = "averages.safetensors";
    private static final ObjectMapper JSON = new ObjectMapper();
    private static final int FORMAT = 2; // 2: checksums in the manifest

    /**
     * Everything besides tensors that an exact resume needs: lrScale and rollbacks (see FaultConfig);
     * tokensSeen and trainSeconds (what a budget has used); bestValLoss (+∞ before the first evaluation)
     * and staleEvals (evaluations since it improved: early stopping); depth (blocks now: model.n_layer until
     * growth) and layerDropRngState (the layer-drop generator; 0 when layer drop is off); memberTokens, the
     * tokens drawn from each mixture member (empty without a mixture). The curricula need nothing here:
     * they are functions of the step.
     */
    public record TrainerState(long step, long samplerState, long dropoutRngState, long optimizerStep, double lrScale, int rollbacks,
                               long tokensSeen, double trainSeconds, double bestValLoss, int staleEvals, int depth, long layerDropRngState,
                               long[] memberTokens) {
        /** The state before the first step. */
        public static TrainerState initial(long samplerState, long dropoutRngState, int depth, long layerDropRngState) {
            return new TrainerState(0, samplerState, dropoutRngState, 0, 1.0, 0, 0, 0, Double.POSITIVE_INFINITY, 0, depth, layerDropRngState, new long[0]);
        }
    }

    /**
     * Fault injection for the reliability tests: KILN_FAULT_CHECKPOINT_PAUSE_MS makes each file
     * write inside a checkpoint pause, so that a kill lands mid-checkpoint. Unset in normal use.
     */
    private static final long PAUSE_MS = Long.parseLong(System.getenv().getOrDefault("KILN_FAULT_CHECKPOINT_PAUSE_MS", "0"));

    private final Path dir;

    public CheckpointStore(Path runDir) {
        this.dir = runDir.resolve("checkpoints");
    }

    /** Where the checkpoint of step {@code step} is (or would be) saved. */
    public Path stepDirectory(long step) {
        return dir.resolve(String.format("step-%06d", step));
    }

    public Path directory() {
        return dir;
    }

    /** Writes a checkpoint for {@code state.step()} and prunes all but the newest {@code keep}. */
    public Path save(CausalLm model, Optimizer optimizer, List<WeightAverage> averages, TrainerState state, JsonNode config, int keep) {
        Path target = stepDirectory(state.step());
        Path tmp = dir.resolve(".tmp-" + target.getFileName());
        try {
            Files.createDirectories(dir);
            deleteTree(tmp);
            Files.createDirectories(tmp);
            Safetensors.write(tmp.resolve(MODEL_FILE), model.hfStateDict(), Map.of("format", "pt"));
            pause();
            Safetensors.write(tmp.resolve(OPTIMIZER_FILE), optimizer.stateDict(),
                    Map.of("step", Long.toString(optimizer.stepCount()), "optimizer", optimizer.name()));
            pause();
            List<String> files = new ArrayList<>(List.of(MODEL_FILE, OPTIMIZER_FILE));
            if (!averages.isEmpty()) {
                writeAverages(tmp, averages);
                files.add(AVERAGES_FILE);
            }
            writeManifest(tmp, state, files, config, null);
            if (Files.exists(target)) deleteTree(target);
            Files.move(tmp, target, StandardCopyOption.ATOMIC_MOVE);
            dev.kiln.AtomicFile.syncDirectory(dir);
        } catch (IOException | KilnException e) {
            try {
                deleteTree(tmp);
            } catch (IOException ignored) {
                // best effort: a stray .tmp- directory is ignored by latest()
            }
            String prev = latest().map(Path::toString).orElse("none");
            String why = e instanceof KilnException ? e.getMessage() : "cannot write checkpoint " + target + ": " + e.getMessage();
            throw new TrainingException(why + " (previous checkpoint intact: " + prev + ")", e);
        }
        prune(keep);
        return target;
    }

    /** The temporary directory a checkpoint of {@code step} is assembled in before {@link #commit}. */
    Path temporaryDirectory(long step) {
        return dir.resolve(".tmp-" + stepDirectory(step).getFileName());
    }

    /** Creates an empty {@link #temporaryDirectory} (removing a leftover one). */
    Path beginSave(long step) throws IOException {
        Path tmp = temporaryDirectory(step);
        Files.createDirectories(dir);
        deleteTree(tmp);
        Files.createDirectories(tmp);
        return tmp;
    }

    /**
     * Finishes a checkpoint whose data {@code files} are already in {@link #temporaryDirectory}: writes trainer.json
     * (with their checksums and {@code shards}, the sharded index, when not null), renames the directory into place
     * and prunes all but the newest {@code keep}.
     */
    Path commit(TrainerState state, List<String> files, JsonNode config, ObjectNode shards, int keep) throws IOException {
        Path tmp = temporaryDirectory(state.step()), target = stepDirectory(state.step());
        writeManifest(tmp, state, files, config, shards);
        if (Files.exists(target)) deleteTree(target);
        Files.move(tmp, target, StandardCopyOption.ATOMIC_MOVE);
        dev.kiln.AtomicFile.syncDirectory(dir);
        prune(keep);
        return target;
    }

    /** Deletes a failed checkpoint's temporary directory (best effort). */
    void abandon(long step) {
        try {
            deleteTree(temporaryDirectory(step));
        } catch (IOException ignored) {
            // a stray .tmp- directory is ignored by latest()
        }
    }

    /** Writes averages.safetensors into {@code tmp}: every average's tensors, their sample counts in the metadata. */
    static void writeAverages(Path tmp, List<WeightAverage> averages) {
        Map<String, Tensor> tensors = new LinkedHashMap<>();
        Map<String, String> counts = new LinkedHashMap<>();
        for (WeightAverage a : averages) {
            tensors.putAll(a.stateDict());
            counts.put(a.name(), Long.toString(a.count()));
        }
        Safetensors.write(tmp.resolve(AVERAGES_FILE), tensors, counts);
        pause();
    }

    private static void writeManifest(Path tmp, TrainerState state, List<String> files, JsonNode config, ObjectNode shards) throws IOException {
        ObjectNode st = JSON.createObjectNode();
        st.put("format", FORMAT);
        st.put("step", state.step());
        st.put("sampler_state", state.samplerState());
        st.put("dropout_rng_state", state.dropoutRngState());
        st.put("optimizer_step", state.optimizerStep());
        st.put("lr_scale", state.lrScale());
        st.put("rollbacks", state.rollbacks());
        st.put("tokens_seen", state.tokensSeen());
        st.put("train_seconds", state.trainSeconds());
        if (Double.isFinite(state.bestValLoss())) st.put("best_val_loss", state.bestValLoss());
        st.put("stale_evals", state.staleEvals());
        st.put("n_layer", state.depth());
        st.put("layer_drop_rng_state", state.layerDropRngState());
        if (state.memberTokens().length > 0) {
            var mt = st.putArray("member_tokens");
            for (long v : state.memberTokens()) mt.add(v);
        }
        if (shards != null) st.set(ShardedCheckpoint.INDEX_KEY, shards);
        ObjectNode sums = st.putObject("checksums");
        for (String f : files) sums.set(f, JSON.valueToTree(Checksums.of(tmp.resolve(f))));
        st.set("config", config);
        byte[] manifest = JSON.writerWithDefaultPrettyPrinter().writeValueAsBytes(st);
        dev.kiln.AtomicFile.write(tmp.resolve(STATE_FILE), ch -> ch.write(java.nio.ByteBuffer.wrap(manifest)));
        pause();
    }

    /**
     * Removes checkpoints that were being assembled when a process died ({@code .tmp-*}): they are
     * never valid, and would otherwise hold a checkpoint's worth of disk forever.
     */
    public void removeUnfinished() {
        if (!Files.isDirectory(dir)) return;
        try (Stream<Path> s = Files.list(dir)) {
            for (Path p : s.filter(q -> q.getFileName().toString().startsWith(".tmp-")).toList()) deleteTree(p);
        } catch (IOException e) {
            System.err.println("kiln: warning: could not remove unfinished checkpoints in " + dir + ": " + e.getMessage());
        }
    }

    /** The newest complete checkpoint, if any (not verified: see {@link #latestVerified}). */
    public Optional<Path> latest() {
        return list().stream().filter(CheckpointStore::isComplete).reduce((a, b) -> b);
    }

    /** The newest checkpoint that passes {@link #verify}; each one skipped is reported on {@code warn}. */
    public Optional<Path> latestVerified(java.io.PrintStream warn) {
        List<Path> all = new ArrayList<>(list());
        for (int i = all.size() - 1; i >= 0; i--) {
            String fault = verify(all.get(i));
            if (fault == null) return Optional.of(all.get(i));
            warn.println("kiln: warning: skipping checkpoint " + all.get(i) + ": " + fault);
        }
        return Optional.empty();
    }

    /**
     * Null if the checkpoint is complete, its manifest readable and every file and tensor matches
     * the checksums recorded when it was written; otherwise what is wrong, naming the file/tensor.
     */
    public static String verify(Path checkpoint) {
        if (!isComplete(checkpoint)) return "incomplete (needs " + MODEL_FILE + ", " + OPTIMIZER_FILE + ", " + STATE_FILE + ", or a sharded index)";
        JsonNode sums, shards;
        try {
            JsonNode manifest = JSON.readTree(checkpoint.resolve(STATE_FILE).toFile());
            if (manifest.path("format").asInt(0) < FORMAT)
                return "written by an earlier Kiln without checksums (format " + manifest.path("format").asInt(0) + "); it cannot be verified";
            sums = manifest.path("checksums");
            shards = manifest.path(ShardedCheckpoint.INDEX_KEY);
        } catch (IOException e) {
            return STATE_FILE + " is unreadable (" + e.getMessage().lines().findFirst().orElse("") + ")";
        }
        List<String> files = new ArrayList<>(shards.isObject() ? ShardedCheckpoint.files(shards) : List.of(MODEL_FILE, OPTIMIZER_FILE));
        if (sums.has(AVERAGES_FILE)) files.add(AVERAGES_FILE);
        for (String f : files) {
            if (!Files.isRegularFile(checkpoint.resolve(f))) return f + " is missing";
            JsonNode expected = sums.path(f);
            if (!expected.isObject()) return STATE_FILE + " has no checksums for " + f;
            try {
                Checksums want = JSON.treeToValue(expected, Checksums.class);
                String bad = want.mismatch(Checksums.of(checkpoint.resolve(f)));
                if (bad != null) return f + ": " + bad;
            } catch (IOException | RuntimeException e) { // verification must never crash: any failure means "not verified"
                String msg = String.valueOf(e.getMessage()).lines().findFirst().orElse("");
                return (e instanceof IOException && !(e instanceof java.nio.file.NoSuchFileException) ? STATE_FILE + " checksums for " + f : f) + ": " + msg;
            }
        }
        return null;
    }

    /** Complete and incomplete checkpoint directories, oldest first. */
    public List<Path> list() {
        if (!Files.isDirectory(dir)) return List.of();
        try (Stream<Path> s = Files.list(dir)) {
            return s.filter(p -> p.getFileName().toString().matches("step-\\d+")).sorted(Comparator.comparing(Path::toString)).toList();
        } catch (IOException e) {
            throw new TrainingException("cannot list checkpoints in " + dir + ": " + e.getMessage(), e);
        }
    }

    private static boolean isComplete(Path p) {
        if (!Files.isRegularFile(p.resolve(STATE_FILE))) return false;
        return Files.isRegularFile(p.resolve(MODEL_FILE)) && Files.isRegularFile(p.resolve(OPTIMIZER_FILE)) || ShardedCheckpoint.isSharded(p);
    }

    /**
     * Restores model, optimizer (if given) and weight averages from a checkpoint directory; returns the
     * trainer state. The checkpoint must hold state for exactly the optimizer and averages given.
     */
    public static TrainerState load(Path checkpoint, CausalLm model, Optimizer optimizerOrNull, List<WeightAverage> averages) {
        String fault = verify(checkpoint);
        if (fault != null) throw new TrainingException("checkpoint " + checkpoint + " failed verification: " + fault);
        TrainerState state = readState(checkpoint, model);
        try (var scope = MemoryScope.open()) {
            // a sharded checkpoint is consolidated in memory here (eval, a non-GPT model); a GPT run resumes it through ShardedLoad
            ShardedCheckpoint.Whole whole = ShardedCheckpoint.isSharded(checkpoint) ? ShardedCheckpoint.consolidate(checkpoint) : null;
            Path modelFile = checkpoint.resolve(whole != null ? "(sharded) " + MODEL_FILE : MODEL_FILE);
            model.loadHfStateDict(whole != null ? whole.model() : Safetensors.read(modelFile).tensors(), modelFile.toString());
            if (optimizerOrNull != null) {
                Path optFile = checkpoint.resolve(whole != null ? "(sharded) " + OPTIMIZER_FILE : OPTIMIZER_FILE);
                Safetensors.Loaded opt = whole != null ? whole.optimizer() : Safetensors.read(optFile);
                String saved = opt.metadata().getOrDefault("optimizer", "adamw");
                if (!saved.equals(optimizerOrNull.name()))
                    throw new TrainingException(optFile + " holds " + saved + " state but the run's optim.optimizer is " + optimizerOrNull.name()
                            + "; resume with optim.optimizer=" + saved + " or start a new run");
                try {
                    optimizerOrNull.loadStateDict(opt.tensors(), state.optimizerStep());
                } catch (KilnException e) {
                    throw new TrainingException(optFile + ": " + e.getMessage(), e);
                }
            }
            if (!averages.isEmpty()) loadAverages(checkpoint, averages);
        }
        return state;
    }

    /** The trainer state of {@code checkpoint}'s trainer.json, checked (no tensor is read); the model must have its depth. */
    static TrainerState readState(Path checkpoint, CausalLm model) {
        JsonNode st;
        try {
            st = JSON.readTree(checkpoint.resolve(STATE_FILE).toFile());
        } catch (IOException e) {
            throw new TrainingException(checkpoint.resolve(STATE_FILE) + ": unreadable (" + e.getMessage() + ")", e);
        }
        for (String key : new String[]{"step", "sampler_state", "dropout_rng_state", "optimizer_step"})
            if (!st.path(key).isIntegralNumber() || !st.path(key).canConvertToLong())
                throw new TrainingException(checkpoint.resolve(STATE_FILE) + ": missing or invalid '" + key + "' (an integer is needed)");
        if (st.get("step").asLong() < 0 || st.get("optimizer_step").asLong() < 0 || st.path("rollbacks").asInt(0) < 0)
            throw new TrainingException(checkpoint.resolve(STATE_FILE) + ": negative step, optimizer_step or rollbacks");
        double lrScale = st.path("lr_scale").asDouble(1.0);
        if (!(lrScale > 0 && lrScale <= 1) || st.has("lr_scale") && !st.get("lr_scale").isNumber())
            throw new TrainingException(checkpoint.resolve(STATE_FILE) + ": invalid 'lr_scale' " + st.path("lr_scale") + " (must be in (0, 1])");
        if (st.path("tokens_seen").asLong(0) < 0 || !(st.path("train_seconds").asDouble(0) >= 0) || st.path("stale_evals").asInt(0) < 0)
            throw new TrainingException(checkpoint.resolve(STATE_FILE) + ": negative tokens_seen, train_seconds or stale_evals");
        TrainerState state = new TrainerState(st.get("step").asLong(), st.get("sampler_state").asLong(),
                st.get("dropout_rng_state").asLong(), st.get("optimizer_step").asLong(),
                st.path("lr_scale").asDouble(1.0), st.path("rollbacks").asInt(0), st.path("tokens_seen").asLong(0),
                st.path("train_seconds").asDouble(0), st.path("best_val_loss").asDouble(Double.POSITIVE_INFINITY), st.path("stale_evals").asInt(0),
                depth(checkpoint, model.depth()), st.path("layer_drop_rng_state").asLong(0), memberTokens(st, checkpoint));
        if (state.depth() != model.depth())
            throw new TrainingException(checkpoint.resolve(STATE_FILE) + ": records n_layer " + state.depth() + " but the model has " + model.depth()
                    + " blocks (a grown model is rebuilt at its recorded depth before loading)");
        return state;
    }

    private static long[] memberTokens(JsonNode st, Path checkpoint) {
        JsonNode a = st.path("member_tokens");
        if (a.isMissingNode()) return new long[0];
        if (!a.isArray()) throw new TrainingException(checkpoint.resolve(STATE_FILE) + ": invalid 'member_tokens' (a list is needed)");
        long[] out = new long[a.size()];
        for (int i = 0; i < out.length; i++) {
            if (!a.get(i).isIntegralNumber() || !a.get(i).canConvertToLong() || a.get(i).asLong() < 0)
                throw new TrainingException(checkpoint.resolve(STATE_FILE) + ": invalid 'member_tokens' (non-negative integers are needed)");
            out[i] = a.get(i).asLong();
        }
        return out;
    }

    /** Restores weight averages from the checkpoint's averages file; names what is missing. */
    public static void loadAverages(Path checkpoint, List<WeightAverage> averages) {
        Path file = checkpoint.resolve(AVERAGES_FILE);
        if (!Files.isRegularFile(file))
            throw new TrainingException(checkpoint + " has no " + AVERAGES_FILE + " (the run that wrote it did not average weights); "
                    + "turn averaging off to resume it, or start a new run");
        try (var scope = MemoryScope.open()) {
            Safetensors.Loaded loaded = Safetensors.read(file);
            for (WeightAverage a : averages) {
                String count = loaded.metadata().get(a.name());
                if (count == null) throw new TrainingException(file + " has no " + a.name() + " average; it was not configured when the checkpoint was written");
                try {
                    a.loadStateDict(loaded.tensors(), Long.parseLong(count));
                } catch (KilnException | NumberFormatException e) {
                    throw new TrainingException(file + ": " + e.getMessage(), e);
                }
            }
        }
    }

    /**
     * How many blocks the model in a checkpoint has (trainer.json's n_layer: more than the config's after
     * growth); {@code fallback} for checkpoints written before depth was recorded.
     */
    public static int depth(Path checkpoint, int fallback) {
        JsonNode n;
        try {
            n = JSON.readTree(checkpoint.resolve(STATE_FILE).toFile()).path("n_layer");
        } catch (IOException e) {
            throw new TrainingException(checkpoint.resolve(STATE_FILE) + ": unreadable (" + e.getMessage() + ")", e);
        }
        if (n.isMissingNode()) return fallback;
        if (!n.isIntegralNumber() || !n.canConvertToInt() || n.asInt() < 1)
            throw new TrainingException(checkpoint.resolve(STATE_FILE) + ": invalid 'n_layer' " + n + " (a positive integer is needed)");
        return n.asInt();
    }

    /** The resolved config stored with a checkpoint. */
    public static JsonNode config(Path checkpoint) {
        try {
            return JSON.readTree(checkpoint.resolve(STATE_FILE).toFile()).path("config");
        } catch (IOException e) {
            throw new TrainingException(checkpoint.resolve(STATE_FILE) + ": unreadable (" + e.getMessage() + ")", e);
        }
    }

    private static void pause() {
        if (PAUSE_MS <= 0) return;
        try {
            Thread.sleep(PAUSE_MS);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }

    private void prune(int keep) {
        List<Path> all = new ArrayList<>(list());
        while (all.size() > Math.max(1, keep)) {
            Path old = all.remove(0);
            try {
                deleteTree(old);
            } catch (IOException e) {
                System.err.println("kiln: warning: could not delete old checkpoint " + old + ": " + e.getMessage());
            }
        }
    }

    private static void deleteTree(Path p) throws IOException {
        if (!Files.exists(p)) return;
        try (Stream<Path> s = Files.walk(p)) {
            for (Path q : s.sorted(Comparator.reverseOrder()).toList()) Files.delete(q);
        }
    }
}
