package dev.kiln.dist;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import dev.kiln.nn.Parameter;
import dev.kiln.optim.GradScaler;
import dev.kiln.optim.MixedPrecisionOptimizer;
import dev.kiln.optim.ParamGroup;
import dev.kiln.optim.Sgd;
import dev.kiln.tensor.DType;
import dev.kiln.tensor.Tensor;
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
import java.util.Map;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * fp16/bf16 and gradient accumulation under tensor and pipeline parallelism give the single-process run of the same
 * config on the same global batch: the {@link DataParallelTest} run (20 steps, batch 12, GPT of 2 blocks, 2 heads,
 * C 32; dropout 0, which pipelines refuse). One mpirun job per test, each with what can fail attributably together:
 * <ul>
 *   <li>tp 2, fp16 with overflows injected at steps 8–10: losses, the same skipped steps and loss-scale sequence, and a
 *       final checkpoint that is the single process's (with the scaler's state);</li>
 *   <li>tp 2 × pp 2 (1F1B), bf16: losses and the consolidated checkpoint;</li>
 *   <li>tp 2, grad_accum_steps 2: losses;</li>
 *   <li>pp 2 (1F1B, 2 micro-batches), grad_accum_steps 2 and fp16 with overflows at steps 8–10: losses (a broken
 *       accumulation diverges from step 1) and the loss-scale sequence (a broken skip diverges from step 8).</li>
 * </ul>
 * Tolerance 1e-4 relative, as DataParallelOptionsTest's for half precision: shards and micro-batches sum in another
 * order than one process, so the fp32 gradients differ in the last bits and their half-precision rounding flips
 * rarely. Plus a unit test of the overflow vote with an inf on one rank only.
 */
class ModelParallelOptionsTest {
    static final double TOLERANCE = 1e-4;
    static final String[] OVERFLOWS = {"train.precision=fp16", "train.loss_scale_window=5", "faults.overflow_steps=8,9,10"};

    @TempDir
    static Path tmp;

    static List<String> config(String name, String... extra) {
        return DataParallelTest.config(tmp, name, concat(new String[]{"model.dropout=0"}, extra));
    }

    static String[] concat(String[] a, String... b) {
        List<String> o = new ArrayList<>(Arrays.asList(a));
        o.addAll(Arrays.asList(b));
        return o.toArray(String[]::new);
    }

    static Trainer.Result single(String name, String... extra) {
        var r = new Trainer(ConfigLoader.load(null, config(name, extra)), false, new PrintStream(new ByteArrayOutputStream()), false).run();
        assertEquals(20, r.losses().size());
        assertTrue(r.losses().getLast() < r.losses().getFirst() - 0.05, "the run learns: " + r.losses());
        return r;
    }

    /** Runs {@code np} ranks: every rank logs the same global losses, within TOLERANCE of {@code want}'s. */
    static MpiRun.Result sameLosses(int np, String name, Trainer.Result want, String... extra) throws Exception {
        var r = MpiRun.run(np, DistTrainMain.class.getName(), 300, config(name, extra).toArray(String[]::new));
        assertEquals(0, r.exitCode(), r.output());
        List<Double> first = null;
        for (int rank = 0; rank < np; rank++) {
            String prefix = "LOSSES " + rank + " ";
            String line = Files.readAllLines(tmp.resolve("runs").resolve(name).resolve("result-rank" + rank + ".txt")).stream()
                    .filter(l -> l.startsWith(prefix)).findFirst().orElseThrow(() -> new AssertionError(r.output()));
            List<Double> l = Arrays.stream(line.substring(prefix.length()).trim().split(" ")).map(Double::parseDouble).toList();
            if (first == null) first = l;
            assertEquals(first, l, "rank " + rank + " logs the global loss");
        }
        double worst = DataParallelTest.maxRelDiff(first, want.losses());
        System.out.printf("%s np %d: max relative loss difference to single process over 20 steps %.3g (%.1f s)%n", name, np, worst, r.seconds());
        assertTrue(worst < TOLERANCE, name + ": max rel diff " + worst + "\n" + r.output());
        return r;
    }

    /** "step:loss_scale[ overflow]" of every step record of run {@code name}'s metrics.jsonl (rank 0's) under {@code runs}. */
    static List<String> scaleSequence(Path runs, String name) throws IOException {
        ObjectMapper json = new ObjectMapper();
        List<String> out = new ArrayList<>();
        for (String line : Files.readAllLines(runs.resolve(name).resolve("metrics.jsonl"))) {
            if (line.isBlank()) continue;
            JsonNode n = json.readTree(line);
            if (n.has("loss")) out.add(n.get("step") + ":" + n.get("loss_scale") + (n.has("overflow") ? " overflow" : ""));
        }
        return out;
    }

    /** The same skipped steps and loss scales as the single process, which skipped the injected overflows. */
    static void sameScales(Path runs, String name, String singleName) throws IOException {
        List<String> want = scaleSequence(runs, singleName), got = scaleSequence(runs, name);
        System.out.println(name + ": fp16 loss scale per step " + got);
        assertEquals(want, got, name + ": the same skipped steps and loss-scale sequence");
        assertTrue(want.stream().filter(x -> x.endsWith("overflow")).count() >= 3, "the injected overflows skipped steps: " + want);
    }

    /**
     * The final checkpoint is the single process's (names, shapes, values) within {@code tol} of each tensor's largest
     * magnitude: 1e-3 as the fp32 pipeline tests allow; under bf16 2^-8, one bf16 step, since a gradient element
     * whose fp32 value differs in the last bits can round to the neighbouring bf16 value and AdamW's moments keep it.
     */
    static void sameCheckpoint(String name, Trainer.Result want, double tol) {
        for (String file : List.of("model.safetensors", "optimizer.safetensors"))
            PipelineParallelTest.sameCheckpoint(tmp.resolve("runs").resolve(name), want, name, file, tol);
    }

    /**
     * Also the checkpoints: the step-20 one is the single process's (with the scaler's state), and a copy of the run
     * holding only the step-10 one resumes at tp 2 with the single process's losses and loss scales of steps 11–20
     * (the scale was 16384 there after the overflows: a lost scaler state would restart at 65536).
     */
    @Test
    void tp2Fp16WithOverflows() throws Exception {
        String[] extra = concat(OVERFLOWS, "train.checkpoint_interval=10");
        Trainer.Result s = single("tp2_fp16_single", extra);
        var r = sameLosses(2, "tp2_fp16", s, concat(extra, "parallel.tp=2"));
        assertTrue(r.output().contains("kiln: tensor parallel over 2 ranks"), r.output());
        sameScales(tmp.resolve("runs"), "tp2_fp16", "tp2_fp16_single");
        sameCheckpoint("tp2_fp16", s, 1e-3); // whole model and AdamW state, and grad_scaler.scale / growth_tracker

        PipelineParallelTest.copyTree(tmp.resolve("runs/tp2_fp16"), tmp.resolve("runs/tp2_fp16_resumed"));
        PipelineParallelTest.deleteTree(tmp.resolve("runs/tp2_fp16_resumed/checkpoints/step-000020"));
        var again = MpiRun.run(2, DistTrainMain.class.getName(), 300,
                PipelineParallelTest.withResume(config("tp2_fp16_resumed", concat(extra, "parallel.tp=2"))));
        assertEquals(0, again.exitCode(), again.output());
        assertTrue(again.output().contains("resumed from"), again.output());
        String prefix = "LOSSES 0 ";
        String line = Files.readAllLines(tmp.resolve("runs/tp2_fp16_resumed/result-rank0.txt")).stream()
                .filter(l -> l.startsWith(prefix)).findFirst().orElseThrow(() -> new AssertionError(again.output()));
        List<Double> rest = Arrays.stream(line.substring(prefix.length()).trim().split(" ")).map(Double::parseDouble).toList();
        double diff = DataParallelTest.maxRelDiff(rest, s.losses().subList(10, 20));
        System.out.printf("tp 2 fp16 resumed at tp 2 from step 10: max relative loss difference %.3g%n", diff);
        assertTrue(diff < TOLERANCE, rest + " vs " + s.losses().subList(10, 20));
        sameScales(tmp.resolve("runs"), "tp2_fp16_resumed", "tp2_fp16_single");
    }

    @Test
    void tp2TimesPp2Bf16() throws Exception {
        String[] extra = {"train.precision=bf16"};
        Trainer.Result s = single("tp2pp2_bf16_single", extra);
        var r = sameLosses(4, "tp2pp2_bf16", s, concat(extra, "parallel.tp=2", "parallel.pp=2", "parallel.pp_schedule=1f1b"));
        assertTrue(r.output().contains("kiln: pipeline parallel over") && r.output().contains("kiln: tensor parallel over"), r.output());
        sameCheckpoint("tp2pp2_bf16", s, 0x1p-8);
    }

    @Test
    void tp2WithAccumulation() throws Exception {
        String[] extra = {"train.grad_accum_steps=2"};
        sameLosses(2, "tp2_accum", single("tp2_accum_single", extra), concat(extra, "parallel.tp=2"));
    }

    @Test
    void pp2WithAccumulationAndFp16Overflows() throws Exception {
        String[] extra = concat(OVERFLOWS, "train.grad_accum_steps=2");
        Trainer.Result s = single("pp2_accum_fp16_single", extra);
        var r = sameLosses(2, "pp2_accum_fp16", s, concat(extra, "parallel.pp=2", "parallel.pp_schedule=1f1b", "parallel.micro_batches=2"));
        assertTrue(r.output().contains("kiln: pipeline parallel over 2 stages"), r.output());
        sameScales(tmp.resolve("runs"), "pp2_accum_fp16", "pp2_accum_fp16_single");
        // the tied wte's two halves (stage 0's, the last stage's) meet only after the flush, so its running sum over
        // the 2 micro-steps is rounded to fp16 otherwise than the single process's round(e1 + h1) (every other
        // gradient is rounded as the single process's; measured: 4.2e-3 in wte, the largest); AdamW turns
        // such differences in near-zero gradients into lr-sized steps: 1e-2, still far below a lost update or state
        sameCheckpoint("pp2_accum_fp16", s, 1e-2);
    }

    /**
     * The vote over the ranks' gradients: an fp16 overflow on one rank only (its gradient above fp16's range) skips
     * the step on both, and both back the scale off alike; without the vote the other rank would go on.
     */
    @Test
    void anOverflowOnOneRankSkipsTheStepOnEveryRank() throws Exception {
        assertEquals(List.of("true 512.0", "true 512.0"), oneRankOverflows(true));
        assertEquals(List.of("false 1024.0", "true 512.0"), oneRankOverflows(false), "without the vote the ranks part ways");
    }

    private static List<String> oneRankOverflows(boolean vote) throws Exception {
        return ThreadGroup.run(2, g -> {
            Parameter w = new Parameter(Tensor.of(new float[]{1f, 2f}, 2));
            Map<String, Parameter> params = Map.of("w", w);
            var mp = new MixedPrecisionOptimizer(new Sgd(ParamGroup.standard(params, 0, 0), 0, false), params, DType.F16, GradScaler.dynamic(1024, 5));
            if (vote) mp.agreeOnOverflow(g::anyRank);
            mp.beginStep();
            w.setGrad(Tensor.of(new float[]{g.rank() == 1 ? 1e6f : 1f, 1f}, 2)); // 1e6 rounds to fp16's inf: rank 1 only
            boolean skip = mp.endBackward();
            return skip + " " + mp.scaler().scale();
        });
    }
}
