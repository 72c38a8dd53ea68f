package dev.kiln.dist;

import dev.kiln.tensor.Safetensors;
import dev.kiln.train.Trainer;
import dev.kiln.train.config.ConfigLoader;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * Tensor parallelism under mpirun gives the losses of single-process training on the same global batch: 20 steps of
 * a GPT with 2 layers, 4 heads, n_embd 32, block 32, batch 8 on the 65-token character vocabulary (padded to 66 at
 * tp 2, 68 at tp 4). Tolerance 1e-4 relative, as for data parallelism: the shards sum partial products in another
 * order than one GEMM (and the vocab-parallel cross-entropy accumulates in fp64), so losses agree to fp32 rounding
 * amplified over 20 AdamW steps; a wrong slice, mask or missing all-reduce moves them at the 1e-2 level.
 */
class TensorParallelTest {
    static final double TOLERANCE = 1e-4;

    @TempDir
    static Path tmp;
    static List<Double> single;
    static Path singleCheckpoint;
    static Trainer.Result singleRun;

    static List<String> config(String name, String... extra) {
        List<String> o = new ArrayList<>(List.of("model.n_layer=2", "model.n_head=4", "model.n_embd=32", "model.block_size=32",
                "train.batch_size=8", "train.max_iters=20", "train.eval_interval=1000", "train.final_eval_iters=0",
                "train.checkpoint_interval=1000", "train.sample_tokens=0", "train.threads=1", "train.log_interval=1000",
                "train.out_dir=" + tmp.resolve("runs"), "train.name=" + name, "data.dir=" + tmp.resolve("data"),
                "optim.warmup_iters=5", "optim.lr_decay_iters=20", "parallel.bucket_mb=0.01"));
        o.addAll(List.of(extra));
        return o;
    }

    @BeforeAll
    static void singleProcess() {
        var r = new Trainer(ConfigLoader.load(null, config("single")), false, new PrintStream(new ByteArrayOutputStream()), false).run();
        singleRun = r;
        single = r.losses();
        singleCheckpoint = r.runDir().resolve("checkpoints/step-000020");
        assertEquals(20, single.size());
        assertTrue(single.getLast() < single.getFirst() - 0.05, "the run learns: " + single);
    }

    static List<String> resultLines(MpiRun.Result r, String name, int rank, String prefix) {
        assertEquals(0, r.exitCode(), r.output());
        try {
            return Files.readAllLines(tmp.resolve("runs").resolve(name).resolve("result-rank" + rank + ".txt")).stream()
                    .filter(l -> l.startsWith(prefix)).map(l -> l.substring(prefix.length()).trim()).toList();
        } catch (java.io.IOException e) {
            throw new AssertionError("no result file of rank " + rank + ": " + e + "\n" + r.output());
        }
    }

    /** Runs {@code np} ranks; every rank must log the same losses, within tolerance of {@code want}; returns the job. */
    static MpiRun.Result sameLosses(int np, String name, List<Double> want, String... args) throws Exception {
        var r = MpiRun.run(np, DistTrainMain.class.getName(), 240, args);
        List<Double> first = null;
        for (int rank = 0; rank < np; rank++) {
            List<Double> l = Arrays.stream(resultLines(r, name, rank, "LOSSES " + rank).getFirst().split(" ")).map(Double::parseDouble).toList();
            if (first == null) first = l;
            assertEquals(first, l, "every rank logs the same global loss");
        }
        double worst = DataParallelTest.maxRelDiff(first, want);
        System.out.printf("%s np %d: max relative loss difference to single process over %d steps %.3e (%.1f s); last loss %.9f vs %.9f%n",
                name, np, want.size(), worst, r.seconds(), first.getLast(), want.getLast());
        assertTrue(worst < TOLERANCE, name + ": max rel diff " + worst + "\n" + r.output());
        return r;
    }

    /** The replicated parameters are bit-identical on every shard after training (their gradients were equal). */
    static void replicatedAgree(MpiRun.Result r, String name, int np) {
        String sum = null;
        for (int rank = 0; rank < np; rank++) {
            String[] f = resultLines(r, name, rank, "REPLICATED " + rank).getFirst().split(" ");
            if (sum == null) sum = f[1];
            assertEquals(sum, f[1], "rank " + rank + " (tp rank " + f[0] + "): replicated parameters differ from rank 0's");
        }
    }

    static long[] memory(MpiRun.Result r, String name, int rank) {
        return Arrays.stream(resultLines(r, name, rank, "MEMORY " + rank).getFirst().split(" ")).mapToLong(Long::parseLong).toArray();
    }

    /** Parameters per rank at tp t: the replicated ones plus 1/t of the sharded ones (vocabulary padded to a multiple of t). */
    static long parametersPerRank(int t) {
        long l = 2, c = 32, tokens = 32, v = 65, rows = (v + t - 1) / t;
        long replicated = tokens * c + 2 * c + l * 6 * c;          // wpe, ln_f; per block ln_1, ln_2, both c_proj biases
        long sharded = rows * t * c + l * (12 * c * c + 7 * c);   // wte; c_attn, attn c_proj weight, c_fc, mlp c_proj weight
        return replicated + sharded / t;
    }

    static Map<String, String> shapes(Path modelFile) {
        Map<String, String> out = new TreeMap<>();
        Safetensors.read(modelFile).tensors().forEach((k, t) -> out.put(k, Arrays.toString(t.shape())));
        return out;
    }

    /** Copies {@code from}'s checkpoint of step {@code step} into a new run {@code to}, to be resumed there. */
    static void copyCheckpoint(String from, String to, int step) throws Exception {
        String dir = String.format("step-%06d", step);
        Path src = tmp.resolve("runs").resolve(from).resolve("checkpoints").resolve(dir);
        Path dst = Files.createDirectories(tmp.resolve("runs").resolve(to).resolve("checkpoints").resolve(dir));
        try (var files = Files.list(src)) {
            for (Path f : files.toList()) Files.copy(f, dst.resolve(f.getFileName()));
        }
    }

    /**
     * tp 2 on 2 ranks (with an evaluation at step 10, a checkpoint there and a final sample, which gathers the full
     * logits): the losses, equal replicated parameters, the memory per rank, and a checkpoint in the single-process
     * format (HF names and whole shapes). That checkpoint then resumes in one process (tp 1) and on 4 ranks at tp 4:
     * both continue with the single-process losses of steps 11–20.
     */
    @Test
    void tp2MatchesOneProcessAndItsCheckpointResumesAtTp1AndTp4() throws Exception {
        var r = sameLosses(2, "tp2", single, config("tp2", "parallel.tp=2", "train.eval_interval=10", "train.eval_iters=2",
                "train.checkpoint_interval=10", "train.sample_tokens=5").toArray(String[]::new));
        assertTrue(r.output().contains("step 10: val loss"), r.output());
        assertTrue(r.output().contains("---- sample ----"), r.output());
        assertTrue(r.output().contains("kiln: tensor parallel over 2 ranks"), r.output());
        replicatedAgree(r, "tp2", 2);
        for (int rank = 0; rank < 2; rank++) {
            long[] m = memory(r, "tp2", rank);
            assertEquals(4 * parametersPerRank(2), m[0], "rank " + rank + ": parameter bytes = replicated + 1/2 of the sharded");
            assertEquals(2 * m[0], m[2], "rank " + rank + ": AdamW state for its own parameters");
        }
        Path ckpt = tmp.resolve("runs/tp2/checkpoints/step-000010");
        assertEquals(shapes(singleCheckpoint.resolve("model.safetensors")), shapes(ckpt.resolve("model.safetensors")),
                "a tp checkpoint holds the whole model under HF names, as a single process writes it");
        var state = Safetensors.read(ckpt.resolve("optimizer.safetensors")).tensors();
        var singleState = Safetensors.read(singleCheckpoint.resolve("optimizer.safetensors")).tensors();
        assertEquals(singleState.keySet(), state.keySet());
        for (var e : singleState.entrySet())
            assertEquals(Arrays.toString(e.getValue().shape()), Arrays.toString(state.get(e.getKey()).shape()), e.getKey());

        copyCheckpoint("tp2", "tp2_to_tp1", 10);
        List<Double> rest = new Trainer(ConfigLoader.load(null, config("tp2_to_tp1")), true, new PrintStream(new ByteArrayOutputStream()), false)
                .run().losses();
        double diff = DataParallelTest.maxRelDiff(rest, single.subList(10, 20));
        System.out.printf("tp 2 for 10 steps, resumed in one process for 10 more: max relative loss difference %.3e%n", diff);
        assertTrue(diff < TOLERANCE, rest + " vs " + single.subList(10, 20));

        copyCheckpoint("tp2", "tp2_to_tp4", 10);
        List<String> args = new ArrayList<>(config("tp2_to_tp4", "parallel.tp=4"));
        args.add("--resume");
        var r4 = sameLosses(4, "tp2_to_tp4", single.subList(10, 20), args.toArray(String[]::new));
        replicatedAgree(r4, "tp2_to_tp4", 4);
        for (int rank = 0; rank < 4; rank++) assertEquals(4 * parametersPerRank(4), memory(r4, "tp2_to_tp4", rank)[0]);
    }

    /**
     * dp 2 × tp 2 on 4 ranks with ZeRO-1: each data-parallel rank trains on its half of the batch with a tp-2 shard;
     * the losses match, the shards of a tp group keep equal replicated parameters, and the optimizer state of a shard
     * is split over its two data-parallel ranks (together: AdamW's two moments of the shard).
     */
    @Test
    void dp2ByTp2WithZero1MatchesOneProcess() throws Exception {
        var r = sameLosses(4, "dp2tp2", single, config("dp2tp2", "parallel.tp=2", "parallel.zero_stage=1").toArray(String[]::new));
        assertTrue(r.output().contains("kiln: data parallel over 2 ranks, ZeRO stage 1"), r.output());
        replicatedAgree(r, "dp2tp2", 4);
        long[][] m = new long[4][];
        for (int rank = 0; rank < 4; rank++) {
            m[rank] = memory(r, "dp2tp2", rank);
            assertEquals(4 * parametersPerRank(2), m[rank][0], "rank " + rank + ": parameter bytes at tp 2");
        }
        for (int tpRank = 0; tpRank < 2; tpRank++) // world ranks tpRank and tpRank + 2 hold the same shard (Megatron order)
            assertEquals(2 * m[tpRank][0], m[tpRank][2] + m[tpRank + 2][2], "ZeRO-1 splits shard " + tpRank + "'s optimizer state over dp");
        System.out.println("dp2×tp2 ZeRO-1: per-rank {param, grad, optimizer} bytes " + Arrays.deepToString(m));
    }

    /** dp 2 × tp 2 at ZeRO-0 (DDP over each shard's data-parallel pair): the losses, and the whole shard's state on every rank. */
    @Test
    void dp2ByTp2WithZero0MatchesOneProcess() throws Exception {
        var r = sameLosses(4, "dp2tp2_zero0", single, config("dp2tp2_zero0", "parallel.tp=2", "parallel.zero_stage=0").toArray(String[]::new));
        assertTrue(r.output().contains("kiln: data parallel over 2 ranks, ZeRO stage 0"), r.output());
        replicatedAgree(r, "dp2tp2_zero0", 4);
        sameGradNorms("dp2tp2_zero0");
        long p = 4 * parametersPerRank(2);
        for (int rank = 0; rank < 4; rank++)
            assertEquals(Arrays.toString(new long[]{p, p, 2 * p}), Arrays.toString(memory(r, "dp2tp2_zero0", rank)), "rank " + rank + ": DDP keeps the shard's whole state");
    }

    /**
     * The pre-clipping gradient norm of every step of run {@code name} (metrics.jsonl, written by rank 0) is the
     * single process's within {@link #TOLERANCE}: the norm of the whole model's gradient, whatever holds which part
     * of it. Returns how many steps clipped (norm above optim.grad_clip's default 1), so the scaling ran too.
     */
    static int sameGradNorms(String name) throws Exception {
        return sameGradNorms(tmp.resolve("runs").resolve(name), singleRun.runDir(), name);
    }

    /** {@link #sameGradNorms(String)} for the run in {@code runDir} against the one-process run in {@code referenceDir}. */
    static int sameGradNorms(Path runDir, Path referenceDir, String name) throws Exception {
        Map<Long, Double> want = gradNorms(referenceDir), got = gradNorms(runDir);
        assertEquals(want.keySet(), got.keySet(), name + ": steps with a gradient norm");
        double worst = 0;
        int clipped = 0;
        for (var e : want.entrySet()) {
            worst = Math.max(worst, Math.abs(got.get(e.getKey()) - e.getValue()) / e.getValue());
            if (e.getValue() > 1) clipped++;
        }
        System.out.printf("%s: max relative gradient-norm difference to single process %.3e over %d steps (%d clipped)%n", name, worst, want.size(), clipped);
        assertTrue(worst < TOLERANCE, name + ": gradient norms " + got + " vs " + want);
        return clipped;
    }

    private static Map<Long, Double> gradNorms(Path runDir) throws Exception {
        Map<Long, Double> out = new TreeMap<>();
        var json = new com.fasterxml.jackson.databind.ObjectMapper();
        for (String line : Files.readAllLines(runDir.resolve("metrics.jsonl"))) {
            var rec = json.readTree(line);
            if (rec.has("grad_norm")) out.put(rec.get("step").asLong(), rec.get("grad_norm").asDouble());
        }
        return out;
    }

    /** Copies of run {@code from} that hold only its step-10 checkpoint, to be resumed as {@code to}. */
    static void copyStep10(String from, String to) throws Exception {
        PipelineParallelTest.copyTree(tmp.resolve("runs").resolve(from), tmp.resolve("runs").resolve(to));
        PipelineParallelTest.deleteTree(tmp.resolve("runs").resolve(to).resolve("checkpoints/step-000020"));
    }

    /**
     * dp 2 × tp 2 with ZeRO-2 (the gradients and optimizer state of each tp shard reduce-scattered over its dp pair; the
     * clipping norm summed over dp, then its sharded part over tp): the losses; each rank keeps its shard's whole
     * parameters and its dp half of the gradients and optimizer state; the step-20 checkpoint, gathered over dp then
     * tp, is the single process's; the step-10 one resumes in one process with the single-process losses.
     */
    @Test
    void dp2ByTp2WithZero2MatchesOneProcessAndResumesInOne() throws Exception {
        var r = sameLosses(4, "dp2tp2_zero2", single, config("dp2tp2_zero2", "parallel.tp=2", "parallel.zero_stage=2",
                "train.checkpoint_interval=10").toArray(String[]::new));
        assertTrue(r.output().contains("kiln: data parallel over 2 ranks, ZeRO stage 2"), r.output());
        replicatedAgree(r, "dp2tp2_zero2", 4);
        assertTrue(sameGradNorms("dp2tp2_zero2") > 0, "some step clips, so the clipping is checked, not only the norm");
        long p = 4 * parametersPerRank(2);
        long[][] m = new long[4][];
        for (int rank = 0; rank < 4; rank++) {
            m[rank] = memory(r, "dp2tp2_zero2", rank);
            assertEquals(p, m[rank][0], "rank " + rank + ": ZeRO-2 keeps the shard's parameters");
        }
        for (int tpRank = 0; tpRank < 2; tpRank++) { // world ranks tpRank and tpRank + 2 hold the same shard
            assertEquals(p, m[tpRank][1] + m[tpRank + 2][1], "shard " + tpRank + "'s gradients split over dp");
            assertEquals(2 * p, m[tpRank][2] + m[tpRank + 2][2], "shard " + tpRank + "'s optimizer state split over dp");
            for (int rank : new int[]{tpRank, tpRank + 2}) assertTrue(m[rank][1] > 0 && m[rank][1] < p, "rank " + rank + " holds a part of the gradients");
        }
        System.out.println("dp2×tp2 ZeRO-2: per-rank {param, grad, optimizer} bytes " + Arrays.deepToString(m));
        PipelineParallelTest.sameCheckpoint(tmp.resolve("runs/dp2tp2_zero2"), singleRun, "dp2tp2_zero2", "model.safetensors", 1e-3);
        PipelineParallelTest.sameCheckpoint(tmp.resolve("runs/dp2tp2_zero2"), singleRun, "dp2tp2_zero2", "optimizer.safetensors", 1e-3);

        copyStep10("dp2tp2_zero2", "dp2tp2_zero2_to_1");
        List<Double> rest = new Trainer(ConfigLoader.load(null, config("dp2tp2_zero2_to_1")), true, new PrintStream(new ByteArrayOutputStream()), false)
                .run().losses();
        double diff = DataParallelTest.maxRelDiff(rest, single.subList(10, 20));
        System.out.printf("dp2×tp2 ZeRO-2 for 10 steps, resumed in one process for 10 more: max relative loss difference %.3e%n", diff);
        assertTrue(diff < TOLERANCE, rest + " vs " + single.subList(10, 20));
    }

    /**
     * dp 2 × tp 2 with ZeRO-3 (each tp shard's parameters too split over its dp pair and gathered per block just in
     * time, with an evaluation at step 10 and a final sample: forwards without grad gather too): the losses; each
     * rank's params + grads + optimizer state, by the memory account, is ≈ 1/4 of the single process's (within 10%:
     * the replicated parameters, 5% of this model, are not split by tp, and ZeRO owns whole parameters) and the two
     * dp ranks of a shard hold its whole state exactly once; the step-20 checkpoint is the single process's; the
     * step-10 one resumes at dp 2 × tp 2 ZeRO-3 with the single-process losses.
     */
    @Test
    void dp2ByTp2WithZero3MatchesOneProcessAndResumes() throws Exception {
        var r = sameLosses(4, "dp2tp2_zero3", single, config("dp2tp2_zero3", "parallel.tp=2", "parallel.zero_stage=3",
                "train.checkpoint_interval=10", "train.eval_interval=10", "train.eval_iters=2", "train.sample_tokens=5").toArray(String[]::new));
        assertTrue(r.output().contains("kiln: data parallel over 2 ranks, ZeRO stage 3"), r.output());
        assertTrue(r.output().contains("step 10: val loss"), r.output());
        assertTrue(r.output().contains("---- sample ----"), r.output());
        replicatedAgree(r, "dp2tp2_zero3", 4);
        sameGradNorms("dp2tp2_zero3");
        long whole = singleRun.memory().trainingStateBytes(), shard = 16 * parametersPerRank(2); // param, grad, AdamW's 2 moments
        long[][] m = new long[4][];
        StringBuilder shares = new StringBuilder();
        for (int rank = 0; rank < 4; rank++) {
            m[rank] = memory(r, "dp2tp2_zero3", rank);
            double share = (double) (m[rank][0] + m[rank][1] + m[rank][2]) / whole;
            shares.append(String.format(" %.4f", share));
            assertTrue(Math.abs(share * 4 - 1) < 0.1, "rank " + rank + " holds " + share + " of the unsharded training state");
        }
        for (int tpRank = 0; tpRank < 2; tpRank++)
            assertEquals(shard, m[tpRank][0] + m[tpRank][1] + m[tpRank][2] + m[tpRank + 2][0] + m[tpRank + 2][1] + m[tpRank + 2][2],
                    "shard " + tpRank + "'s params + grads + optimizer state held once over its dp pair");
        System.out.println("dp2×tp2 ZeRO-3: per-rank {param, grad, optimizer} bytes " + Arrays.deepToString(m) + "; share of the unsharded "
                + whole + " B:" + shares);
        PipelineParallelTest.sameCheckpoint(tmp.resolve("runs/dp2tp2_zero3"), singleRun, "dp2tp2_zero3", "model.safetensors", 1e-3);
        PipelineParallelTest.sameCheckpoint(tmp.resolve("runs/dp2tp2_zero3"), singleRun, "dp2tp2_zero3", "optimizer.safetensors", 1e-3);

        copyStep10("dp2tp2_zero3", "dp2tp2_zero3_resume");
        List<String> args = new ArrayList<>(config("dp2tp2_zero3_resume", "parallel.tp=2", "parallel.zero_stage=3", "train.checkpoint_interval=10"));
        args.add("--resume");
        var again = sameLosses(4, "dp2tp2_zero3_resume", single.subList(10, 20), args.toArray(String[]::new));
        assertTrue(again.output().contains("resumed from"), again.output());
        replicatedAgree(again, "dp2tp2_zero3_resume", 4);
    }
}
