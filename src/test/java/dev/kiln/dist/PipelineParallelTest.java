package dev.kiln.dist;

import com.fasterxml.jackson.databind.ObjectMapper;
import dev.kiln.tensor.Safetensors;
import dev.kiln.tensor.Tensor;
import dev.kiln.train.MemoryAccount;
import dev.kiln.train.Trainer;
import dev.kiln.train.config.ConfigLoader;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.MethodOrderer;
import org.junit.jupiter.api.Order;
import org.junit.jupiter.api.TestMethodOrder;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.PrintStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Map;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * Pipeline parallelism under mpirun gives the losses of single-process training on the same global batch: the run of
 * {@link DataParallelTest} (20 steps, batch 12, GPT of 2 blocks, C 32) at pp 2 with GPipe and with 1F1B, at pp 4
 * (1F1B, 4 blocks, one per stage) and at dp 2 × pp 2 (ZeRO-1). Tolerance, as for data parallelism, 1e-4 relative:
 * micro-batches sum their gradients (and the stages their squared norms) in another order than one process, so the
 * runs agree to fp32 rounding amplified over 20 AdamW steps; a lost, doubled or misrouted micro-batch gradient moves
 * the loss at the 1e-2 level within a few steps. The final checkpoints are the whole model and optimizer state, laid
 * out as the single process's (same names and shapes), and resume at pp 2 and in one process.
 */
@TestMethodOrder(MethodOrderer.OrderAnnotation.class)
class PipelineParallelTest {
    static final double TOLERANCE = 1e-4;
    static final ObjectMapper JSON = new ObjectMapper();

    @TempDir
    static Path tmp;
    static Trainer.Result single, single4;

    static List<String> config(String name, String... extra) {
        return DataParallelTest.config(tmp, name, extra);
    }

    @BeforeAll
    static void singleProcess() {
        // evaluations at step 10 and checkpoints at 10 and 20, as the pipelined runs below have them
        single = new Trainer(ConfigLoader.load(null, config("single", "train.eval_interval=10", "train.eval_iters=2", "train.checkpoint_interval=10")),
                false, new PrintStream(new ByteArrayOutputStream()), false).run();
        single4 = new Trainer(ConfigLoader.load(null, config("single4", "model.n_layer=4")), false, new PrintStream(new ByteArrayOutputStream()), false).run();
        assertEquals(20, single.losses().size());
        assertTrue(single.losses().getLast() < single.losses().getFirst() - 0.05, "the run learns: " + single.losses());
    }

    /** Each rank's LOSSES and MEMORY lines, from the result files {@link DistTrainMain} wrote. */
    static List<String> results(MpiRun.Result r, String name, int rank) {
        assertEquals(0, r.exitCode(), r.output());
        try {
            return Files.readAllLines(tmp.resolve("runs").resolve(name).resolve("result-rank" + rank + ".txt"));
        } catch (IOException e) {
            throw new AssertionError("no result file of rank " + rank + ": " + e + "\n" + r.output());
        }
    }

    static double[] numbers(List<String> lines, String prefix) {
        String line = lines.stream().filter(l -> l.startsWith(prefix)).findFirst().orElseThrow();
        return Arrays.stream(line.substring(prefix.length()).trim().split(" ")).mapToDouble(Double::parseDouble).toArray();
    }

    /** Runs {@code np} ranks, checks every rank's losses against {@code reference}; returns each rank's memory {param, grad, state}. */
    static long[][] sameLosses(int np, String name, List<Double> reference, String... extra) throws Exception {
        var r = MpiRun.run(np, DistTrainMain.class.getName(), 200, config(name, extra).toArray(String[]::new));
        long[][] memory = new long[np][];
        double worst = 0;
        for (int rank = 0; rank < np; rank++) {
            List<String> lines = results(r, name, rank);
            List<Double> losses = Arrays.stream(numbers(lines, "LOSSES " + rank + " ")).boxed().toList();
            worst = Math.max(worst, DataParallelTest.maxRelDiff(losses, reference));
            memory[rank] = Arrays.stream(numbers(lines, "MEMORY " + rank + " ")).mapToLong(d -> (long) d).toArray();
        }
        System.out.printf("%s np %d: max relative loss difference to single process over %d steps %.3g (%.1f s)%n", name, np, reference.size(), worst, r.seconds());
        assertTrue(worst < TOLERANCE, name + ": max rel diff " + worst + "\n" + r.output());
        assertTrue(r.output().contains("kiln: pipeline parallel over"), r.output());
        return memory;
    }

    /**
     * A rank holds its stage's parameters, gradients and optimizer state only: every rank less than the whole; over
     * the stages of one pipeline they add up to the whole plus the tied wte's second copy on the last stage.
     */
    static void stageMemory(long[][] m, MemoryAccount whole, long wteBytes, int stateCopies) {
        long[] sum = new long[3];
        for (long[] rank : m) {
            assertTrue(rank[0] < whole.parameterBytes(), "a stage holds less than the whole model: " + Arrays.deepToString(m));
            for (int i = 0; i < 3; i++) sum[i] += rank[i];
        }
        assertEquals(whole.parameterBytes() + wteBytes, sum[0], "parameters: " + Arrays.deepToString(m));
        assertEquals(whole.gradientBytes() + wteBytes, sum[1], "gradients: " + Arrays.deepToString(m));
        assertEquals(whole.optimizerStateBytes() + stateCopies * wteBytes, sum[2], "optimizer state: " + Arrays.deepToString(m));
        System.out.println("measured per-rank {param, grad, optimizer} bytes " + Arrays.deepToString(m) + " (single process: "
                + whole.parameterBytes() + ", " + whole.gradientBytes() + ", " + whole.optimizerStateBytes() + "; wte " + wteBytes + ")");
    }

    static long wteBytes(int vocab) {
        return 4L * vocab * 32; // n_embd 32
    }

    static int vocab() throws IOException {
        return (int) Safetensors.read(single.runDir().resolve("checkpoints/step-000020/model.safetensors")).tensors().get("transformer.wte.weight").size(0);
    }

    /**
     * The checkpoint {@code file} of run {@code name} at {@code step} holds the tensors of the single-process run's
     * (same names and shapes), with values equal up to {@code tol} × the tensor's largest magnitude. The weights' 1e-3:
     * AdamW divides each gradient element by its own running RMS, so an element whose gradient is near zero moves by
     * up to lr per step whatever its rounding: the key part of c_attn's bias has a true gradient of 0 (softmax ignores
     * a constant added to every score), and there fp32 summation-order differences show at the 1e-4 level (measured:
     * up to 1.4e-4 at pp 4, in transformer.h.3.attn.c_attn.bias); a wrong gradient moves whole tensors by far more.
     */
    static void sameCheckpoint(String name, Trainer.Result reference, String file, double tol) {
        sameCheckpoint(tmp.resolve("runs").resolve(name), reference, name, file, tol);
    }

    /** {@link #sameCheckpoint(String, Trainer.Result, String, double)} for the run in {@code runDir}, named {@code name} in messages. */
    static void sameCheckpoint(Path runDir, Trainer.Result reference, String name, String file, double tol) {
        Map<String, Tensor> got = Safetensors.read(runDir.resolve("checkpoints/step-000020").resolve(file)).tensors();
        Map<String, Tensor> want = Safetensors.read(reference.runDir().resolve("checkpoints/step-000020").resolve(file)).tensors();
        assertEquals(want.keySet(), got.keySet(), file);
        double worst = 0;
        String worstName = "";
        for (var e : want.entrySet()) {
            Tensor g = got.get(e.getKey());
            assertEquals(e.getValue().shapeString(), g.shapeString(), e.getKey());
            double[] a = e.getValue().toDoubleArray(), b = g.toDoubleArray();
            double scale = Arrays.stream(a).map(Math::abs).max().orElse(0), diff = 0;
            for (int i = 0; i < a.length; i++) diff = Math.max(diff, Math.abs(a[i] - b[i]));
            if (scale > 0 && diff / scale > worst) {
                worst = diff / scale;
                worstName = e.getKey();
            }
        }
        System.out.printf("%s: %s like the single process's, largest difference %.3g of a tensor's magnitude (%s)%n", name, file, worst, worstName);
        assertTrue(worst < tol, name + " " + file + ": " + worst + " in " + worstName);
    }

    /**
     * GPipe at pp 2 over 4 micro-batches, with an evaluation at step 10 (through the pipeline: the single process's
     * val loss) and a final sample (the whole model gathered on every rank).
     */
    @Test
    @Order(1)
    void pp2GpipeWithEvaluationAndSample() throws Exception {
        long[][] m = sameLosses(2, "pp2_gpipe", single.losses(), "parallel.pp=2", "parallel.pp_schedule=gpipe", "parallel.micro_batches=4",
                "train.eval_interval=10", "train.eval_iters=2", "train.sample_tokens=5");
        stageMemory(m, single.memory(), wteBytes(vocab()), 2); // AdamW: two moments of wte on each end
        sameValLoss("pp2_gpipe");
    }

    static void sameValLoss(String name) throws IOException {
        double val = evalRecordAtStep10(name).get("val_loss").asDouble(), want = evalRecordAtStep10("single").get("val_loss").asDouble();
        System.out.printf("%s: val loss at step 10 %.6f, single process %.6f%n", name, val, want);
        assertTrue(Math.abs(val - want) / want < TOLERANCE, val + " vs " + want);
    }

    static com.fasterxml.jackson.databind.JsonNode evalRecordAtStep10(String name) throws IOException {
        for (String line : Files.readAllLines(tmp.resolve("runs").resolve(name).resolve("metrics.jsonl"))) {
            var rec = JSON.readTree(line);
            if (rec.has("val_loss") && rec.get("step").asLong() == 10) return rec;
        }
        throw new AssertionError("no val loss at step 10 in " + name);
    }

    /**
     * 1F1B at pp 2 over 4 micro-batches with checkpoints at steps 10 and 20: the step-20 checkpoint is the single
     * process's model and optimizer state; from a copy of the run holding only the step-10 checkpoint, a pp 2 job and a
     * single process both resume and give the single-process run's losses of steps 11..20. Stage 0 (rank 0, whose
     * peaks the metrics log) holds at most 2 micro-batches' activations at once, GPipe's all 4: its activation peak
     * (measured by the memory tracker, up to step 10) is about half GPipe's.
     */
    @Test
    @Order(2)
    void pp2OneFOneBCheckpointsResumeAtPp2AndInOneProcess() throws Exception {
        long[][] m = sameLosses(2, "pp2_1f1b", single.losses(), "parallel.pp=2", "parallel.pp_schedule=1f1b", "parallel.micro_batches=4",
                "train.checkpoint_interval=10", "train.eval_interval=10", "train.eval_iters=2");
        stageMemory(m, single.memory(), wteBytes(vocab()), 2);
        sameValLoss("pp2_1f1b");
        long peak = evalRecordAtStep10("pp2_1f1b").get("mem_peak_activations").asLong();
        if (Files.exists(tmp.resolve("runs/pp2_gpipe/metrics.jsonl"))) { // GPipe's run (ordered first; absent when this test runs alone)
            long gpipe = evalRecordAtStep10("pp2_gpipe").get("mem_peak_activations").asLong();
            System.out.printf("stage 0 activation peak over 4 micro-batches: 1F1B %,d B, GPipe %,d B (%.2f)%n", peak, gpipe, (double) peak / gpipe);
            assertTrue(peak < 0.65 * gpipe, "1F1B " + peak + " B vs GPipe " + gpipe + " B");
        }
        sameCheckpoint("pp2_1f1b", single, "model.safetensors", 1e-3);
        sameCheckpoint("pp2_1f1b", single, "optimizer.safetensors", 1e-3);
        for (String copy : List.of("resume_pp2", "resume_single")) {
            copyTree(tmp.resolve("runs/pp2_1f1b"), tmp.resolve("runs").resolve(copy));
            deleteTree(tmp.resolve("runs").resolve(copy).resolve("checkpoints/step-000020"));
        }
        List<Double> rest = single.losses().subList(10, 20);
        var r = MpiRun.run(2, DistTrainMain.class.getName(), 200,
                withResume(config("resume_pp2", "parallel.pp=2", "train.checkpoint_interval=10")));
        assertTrue(r.output().contains("resumed from"), r.output());
        for (int rank = 0; rank < 2; rank++) {
            List<Double> losses = Arrays.stream(numbers(results(r, "resume_pp2", rank), "LOSSES " + rank + " ")).boxed().toList();
            double diff = DataParallelTest.maxRelDiff(losses, rest);
            System.out.printf("pp 2 resumed at pp 2 from step 10: max relative loss difference %.3g%n", diff);
            assertTrue(diff < TOLERANCE, losses + " vs " + rest);
        }
        List<Double> alone = new Trainer(ConfigLoader.load(null, config("resume_single")), true, new PrintStream(new ByteArrayOutputStream()), false).run().losses();
        double diff = DataParallelTest.maxRelDiff(alone, rest);
        System.out.printf("pp 2 resumed in one process from step 10: max relative loss difference %.3g%n", diff);
        assertTrue(diff < TOLERANCE, alone + " vs " + rest);
    }

    static String[] withResume(List<String> args) {
        List<String> a = new ArrayList<>(args);
        a.add("--resume");
        return a.toArray(String[]::new);
    }

    @Test
    void pp4OneFOneBOneBlockPerStage() throws Exception {
        long[][] m = sameLosses(4, "pp4", single4.losses(), "model.n_layer=4", "parallel.pp=4", "parallel.micro_batches=4");
        stageMemory(m, single4.memory(), wteBytes(vocab()), 2);
        sameCheckpoint("pp4", single4, "model.safetensors", 1e-3);
    }

    /** dp 2 × pp 2 with ZeRO-1: each stage's optimizer state is split over its two data-parallel ranks. */
    @Test
    void dp2TimesPp2WithZero1() throws Exception {
        long[][] m = sameLosses(4, "dp2pp2", single.losses(), "parallel.pp=2", "parallel.zero_stage=1");
        // world ranks 0, 1: stage 0 (dp 0, 1); ranks 2, 3: stage 1. Parameters and gradients are whole per stage.
        long wte = wteBytes(vocab());
        stageMemory(new long[][]{{m[0][0], m[0][1], m[0][2] + m[1][2]}, {m[2][0], m[2][1], m[2][2] + m[3][2]}}, single.memory(), wte, 2);
        assertEquals(m[0][0], m[1][0]);
        assertNotEquals(0, m[1][2]);
        sameCheckpoint("dp2pp2", single, "model.safetensors", 1e-3);
        sameCheckpoint("dp2pp2", single, "optimizer.safetensors", 1e-3);
    }

    /**
     * dp 2 × pp 2 with ZeRO-2: each stage's accumulated gradients reduce-scattered once after the flush (the tied wte's
     * two halves summed between the ends first) and the clipping norm summed over dp: the losses and every step's
     * gradient norm; each stage's gradients and optimizer state split over its two data-parallel ranks (parameters
     * whole); the step-20 checkpoint is the single process's. Three blocks (stage 0: blocks 0–1, stage 1: block 2), so
     * the greedy owners put wte on dp rank 0 of stage 0 but dp rank 1 of the last stage: the two halves must be summed
     * before the reduce-scatter frees the unowned one.
     */
    @Test
    void dp2TimesPp2WithZero2() throws Exception {
        var single3 = new Trainer(ConfigLoader.load(null, config("single3", "model.n_layer=3")), false, new PrintStream(new ByteArrayOutputStream()), false).run();
        long[][] m = sameLosses(4, "dp2pp2_zero2", single3.losses(), "model.n_layer=3", "parallel.pp=2", "parallel.zero_stage=2");
        TensorParallelTest.sameGradNorms(tmp.resolve("runs/dp2pp2_zero2"), single3.runDir(), "dp2pp2_zero2");
        // world ranks 0, 1: stage 0 (dp 0, 1); ranks 2, 3: stage 1
        long wte = wteBytes(vocab());
        stageMemory(new long[][]{{m[0][0], m[0][1] + m[1][1], m[0][2] + m[1][2]}, {m[2][0], m[2][1] + m[3][1], m[2][2] + m[3][2]}}, single3.memory(), wte, 2);
        for (int rank = 0; rank < 4; rank++)
            assertTrue(m[rank][1] > 0 && m[rank][1] < m[rank][0], "rank " + rank + " keeps only the gradients it owns: " + Arrays.deepToString(m));
        assertEquals(m[0][0], m[1][0]);
        sameCheckpoint("dp2pp2_zero2", single3, "model.safetensors", 1e-3);
        sameCheckpoint("dp2pp2_zero2", single3, "optimizer.safetensors", 1e-3);
    }

    /** What pipeline parallelism does not support ends every rank with one line naming the key. */
    @Test
    void unsupportedFeaturesAreRefused() throws Exception {
        var r = MpiRun.run(2, DistTrainMain.class.getName(), 120, config("refused", "parallel.pp=2", "model.dropout=0.1").toArray(String[]::new));
        assertNotEquals(0, r.exitCode());
        assertTrue(r.output().contains("model.dropout > 0 (micro-batches cannot reproduce"), r.output());
        assertTrue(r.output().contains("cannot be combined with pipeline parallelism (parallel.pp > 1)"), r.output());
    }

    /**
     * ZeRO-3 under dp × pp is refused as DeepSpeed's pipeline engine refuses it (it would gather the stage's parameters
     * again for every micro-batch), with the reason in the one line.
     */
    @Test
    void zeroStage3WithDataAndPipelineParallelismIsRefused() throws Exception {
        var r = MpiRun.run(4, DistTrainMain.class.getName(), 120, config("refused_zero3", "parallel.pp=2", "parallel.zero_stage=3").toArray(String[]::new));
        assertNotEquals(0, r.exitCode());
        assertTrue(r.output().contains("parallel.zero_stage 3 (as in DeepSpeed: it would all-gather the stage's parameters again for every micro-batch"), r.output());
        assertTrue(r.output().contains("cannot be combined with pipeline parallelism (parallel.pp > 1)"), r.output());
    }

    static void copyTree(Path from, Path to) throws IOException {
        try (var walk = Files.walk(from)) {
            for (Path p : walk.toList()) {
                Path q = to.resolve(from.relativize(p).toString());
                if (Files.isDirectory(p)) Files.createDirectories(q);
                else Files.copy(p, q);
            }
        }
    }

    static void deleteTree(Path dir) throws IOException {
        try (var walk = Files.walk(dir)) {
            for (Path p : walk.sorted(java.util.Comparator.reverseOrder()).toList()) Files.delete(p);
        }
    }
}
