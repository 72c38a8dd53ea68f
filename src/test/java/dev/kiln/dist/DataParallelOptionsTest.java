package dev.kiln.dist;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import dev.kiln.train.Trainer;
import dev.kiln.train.config.ConfigLoader;
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
import java.util.regex.Matcher;
import java.util.regex.Pattern;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * Gradient accumulation, fp16/bf16 and dropout under data parallelism (np 2) give the single-process run of the same
 * config on the same global batch: the DataParallelTest model and 20 steps, every run with model.dropout 0.1 (each
 * rank's masks are its rows of the single process's masks). One mpirun job per test, each combining what it can:
 * <ul>
 *   <li>ZeRO-1, grad_accum_steps 2: losses; bytes per step exactly those without accumulation (4P + 8 all-reduced,
 *       4P all-gathered: the reduction runs on the last micro-batch only);</li>
 *   <li>ZeRO-3, grad_accum_steps 2: losses; 4P reduce-scattered per step;</li>
 *   <li>ZeRO-2, fp16 with injected overflows: losses, and the same skipped steps and loss-scale sequence;</li>
 *   <li>DDP, bf16: losses;</li>
 *   <li>ZeRO-1, bf16, grad_accum_steps 2: losses, and the final checkpoint's whole optimizer state.</li>
 * </ul>
 * Tolerance as DataParallelTest (1e-4 relative, fp32 summation order amplified over 20 steps). Under fp16/bf16 each
 * gradient is rounded to half precision after the all-reduce, as one process rounds its whole-batch gradient: the
 * fp32 sums differ in the last bits only, so a half-precision rounding flips rarely and the same tolerance holds.
 */
class DataParallelOptionsTest {
    static final double TOLERANCE = DataParallelTest.TOLERANCE;

    @TempDir
    static Path tmp;

    record Single(List<Double> losses, List<JsonNode> steps, long parameters, Trainer.Result result) {}

    record Dist(MpiRun.Result result, List<List<Double>> losses, List<JsonNode> steps, String comm) {}

    static List<String> config(String name, String... extra) {
        List<String> o = new ArrayList<>(DataParallelTest.config(tmp, name, "model.dropout=0.1"));
        o.addAll(List.of(extra));
        return o;
    }

    /** The step records (those with a loss) of a run's metrics.jsonl. */
    static List<JsonNode> steps(String name) throws IOException {
        ObjectMapper json = new ObjectMapper();
        List<JsonNode> out = new ArrayList<>();
        for (String line : Files.readAllLines(tmp.resolve("runs").resolve(name).resolve("metrics.jsonl")))
            if (!line.isBlank()) {
                JsonNode n = json.readTree(line);
                if (n.has("loss")) out.add(n);
            }
        return out;
    }

    static Single single(String name, String... extra) throws IOException {
        var r = new Trainer(ConfigLoader.load(null, config(name, extra)), false, new PrintStream(new ByteArrayOutputStream()), false).run();
        assertEquals(20, r.losses().size());
        return new Single(r.losses(), steps(name), r.memory().parameterBytes() / 4, r);
    }

    static Dist dist(int np, String name, String... extra) throws Exception {
        var r = MpiRun.run(np, DistTrainMain.class.getName(), 150, config(name, extra).toArray(String[]::new));
        assertEquals(0, r.exitCode(), r.output());
        List<List<Double>> losses = new ArrayList<>();
        String comm = null;
        for (int rank = 0; rank < np; rank++) {
            List<String> lines = Files.readAllLines(tmp.resolve("runs").resolve(name).resolve("result-rank" + rank + ".txt"));
            String prefix = "LOSSES " + rank + " ";
            String l = lines.stream().filter(s -> s.startsWith(prefix)).findFirst().orElseThrow(() -> new AssertionError(r.output()));
            losses.add(Arrays.stream(l.substring(prefix.length()).trim().split(" ")).map(Double::parseDouble).toList());
            if (rank == 0) comm = lines.stream().filter(s -> s.startsWith("COMM 0 ")).findFirst().orElseThrow(() -> new AssertionError(r.output()));
        }
        return new Dist(r, losses, steps(name), comm);
    }

    /** Every rank logs the same global loss, within TOLERANCE of the single process's at every step. */
    static void sameLosses(Dist d, Single s, String what) {
        double worst = 0;
        for (List<Double> l : d.losses()) {
            assertEquals(d.losses().getFirst(), l, "every rank logs the same global loss");
            worst = Math.max(worst, DataParallelTest.maxRelDiff(l, s.losses()));
        }
        System.out.printf("%s: max relative loss difference to single process over 20 steps %.3g (%.1f s)%n", what, worst, d.result().seconds());
        assertTrue(worst < TOLERANCE, what + ": max rel diff " + worst + "\n" + d.result().output());
        assertTrue(s.losses().getLast() < s.losses().getFirst() - 0.05, "the run learns: " + s.losses());
    }

    /** Bytes this rank handed to collectives of {@code kind} ("all_reduce", …) in the whole run, from its CommStats line. */
    static long bytes(Dist d, String kind) {
        Matcher m = Pattern.compile(kind + " (\\d+) B in").matcher(d.comm());
        return m.find() ? Long.parseLong(m.group(1)) : 0;
    }

    // one-off collectives of every run: the start-up check that all ranks hold the same weights (two all-reduces of 2 doubles)
    static final long WEIGHT_CHECK_BYTES = 2 * 16;

    @Test
    void accumulationAtZero1CommunicatesOncePerStep() throws Exception {
        String[] extra = {"parallel.zero_stage=1", "train.grad_accum_steps=2"};
        Single s = single("accum_single", extra);
        Dist d = dist(2, "accum_zero1_np2", extra);
        sameLosses(d, s, "ZeRO-1 np 2, grad_accum_steps 2, dropout 0.1");
        long p = s.parameters();
        System.out.println("ZeRO-1 np 2, grad_accum_steps 2, P = " + p + ": " + d.comm());
        assertEquals(20 * (4 * p + 8) + WEIGHT_CHECK_BYTES, bytes(d, "all_reduce"), "gradients and the loss reduced once per step, not per micro-batch");
        assertEquals(20 * 4 * p, bytes(d, "all_gather"), "parameters gathered once per step");
    }

    @Test
    void accumulationAtZero3() throws Exception {
        String[] extra = {"parallel.zero_stage=3", "train.grad_accum_steps=2"};
        Single s = single("accum3_single", extra);
        Dist d = dist(2, "accum_zero3_np2", extra);
        sameLosses(d, s, "ZeRO-3 np 2, grad_accum_steps 2, dropout 0.1");
        System.out.println("ZeRO-3 np 2, grad_accum_steps 2, P = " + s.parameters() + ": " + d.comm());
        assertEquals(20 * 4 * s.parameters(), bytes(d, "reduce_scatter"), "gradients reduce-scattered once per step");
    }

    @Test
    void fp16WithOverflowsAtZero2() throws Exception {
        String[] extra = {"parallel.zero_stage=2", "train.precision=fp16", "train.loss_scale_window=5", "faults.overflow_steps=8,9,10"};
        Single s = single("fp16_single", extra);
        Dist d = dist(2, "fp16_zero2_np2", extra);
        sameLosses(d, s, "ZeRO-2 np 2, fp16, overflows injected at steps 8-10, dropout 0.1");
        List<String> singleScale = new ArrayList<>(), distScale = new ArrayList<>();
        for (JsonNode n : s.steps()) singleScale.add(n.get("step") + ":" + n.get("loss_scale") + (n.has("overflow") ? " overflow" : ""));
        for (JsonNode n : d.steps()) distScale.add(n.get("step") + ":" + n.get("loss_scale") + (n.has("overflow") ? " overflow" : ""));
        System.out.println("fp16 loss scale per step (single process): " + singleScale);
        assertEquals(singleScale, distScale, "the same skipped steps and loss-scale sequence");
        assertTrue(singleScale.stream().filter(x -> x.endsWith("overflow")).count() >= 3, "the injected overflows skipped steps: " + singleScale);
    }

    /**
     * Half precision and accumulation together: bf16 at ZeRO-1 with grad_accum_steps 2 (the gradients reduced and
     * rounded once per step); the final checkpoint holds the whole AdamW state, gathered past the mixed-precision
     * wrapper, as the single process's. Values within 1e-2 of each tensor's largest magnitude (measured 4.3e-3): one
     * process rounds the running sum to bf16 after each micro-batch, the ranks only once it is reduced (no_sync), so
     * gradient elements differ by a bf16 step and AdamW turns that in near-zero gradients into lr-sized steps; a lost
     * update or missing state is far above it, and the key set is exact (the wrapped ZeRO-1 state gathered whole).
     */
    @Test
    void bf16WithAccumulationAtZero1() throws Exception {
        String[] extra = {"parallel.zero_stage=1", "train.precision=bf16", "train.grad_accum_steps=2"};
        Single s = single("bf16_accum_single", extra);
        sameLosses(dist(2, "bf16_accum_zero1_np2", extra), s, "ZeRO-1 np 2, bf16, grad_accum_steps 2, dropout 0.1");
        for (String file : List.of("model.safetensors", "optimizer.safetensors"))
            PipelineParallelTest.sameCheckpoint(tmp.resolve("runs/bf16_accum_zero1_np2"), s.result(), "bf16_accum_zero1_np2", file, 1e-2);
    }

    @Test
    void bf16Ddp() throws Exception {
        String[] extra = {"parallel.zero_stage=0", "train.precision=bf16"};
        sameLosses(dist(2, "bf16_ddp_np2", extra), single("bf16_single", extra), "DDP np 2, bf16, dropout 0.1");
    }
}
