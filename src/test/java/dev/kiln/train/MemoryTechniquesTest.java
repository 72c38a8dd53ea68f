package dev.kiln.train;

import com.fasterxml.jackson.databind.JsonNode;
import dev.kiln.data.Batch;
import dev.kiln.nn.Parameter;
import dev.kiln.nn.Recompute;
import dev.kiln.nn.models.Gpt;
import dev.kiln.optim.Optimizer;
import dev.kiln.tensor.MemoryCategory;
import dev.kiln.tensor.Rng;
import dev.kiln.train.config.RunConfig;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** Activation recomputation and gradient accumulation: same numbers as without them, less memory or bigger batches. */
class MemoryTechniquesTest {
    @TempDir
    Path tmp;

    private static final int VOCAB = 65;

    private RunConfig config(String... extra) {
        List<String> o = new ArrayList<>(List.of("model.vocab_size=" + VOCAB));
        o.addAll(List.of(extra));
        return SmallRuns.config(tmp, "m", 10, o.toArray(String[]::new));
    }

    static Batch randomBatch(Rng rng, int b, int t) {
        int[] x = new int[b * t], y = new int[b * t];
        for (int i = 0; i < x.length; i++) {
            x[i] = rng.nextInt(VOCAB);
            y[i] = rng.nextInt(VOCAB);
        }
        return new Batch(x, y, b, t);
    }

    private record Backprop(double loss, Map<String, float[]> grads, long rngAfter, long peakActivations, long peakTotal) {}

    /** One training forward + backward of {@code batch}, as the trainer runs it, with the account of its memory. */
    private Backprop backprop(String recompute, Batch batch, String... extra) {
        List<String> o = new ArrayList<>(List.of("model.dropout=0.1", "train.recompute=" + recompute));
        o.addAll(List.of(extra));
        Gpt model = (Gpt) RunSetup.buildModel(config(o.toArray(String[]::new)));
        assertEquals(Recompute.parse(recompute), model.recompute());
        model.train(true);
        TrainStep.forwardBackward(model, batch, 0, 0, 1.0); // first: allocates the .grad buffers, warms the allocator
        model.zeroGrad();
        model.dropoutRng().setState(7);
        MemoryPeaks mem = MemoryPeaks.start();
        double loss = TrainStep.forwardBackward(model, batch, 0, 0, 1.0);
        Map<String, float[]> grads = new LinkedHashMap<>();
        for (Map.Entry<String, Parameter> e : model.namedParameters().entrySet())
            if (e.getValue().requiresGrad()) grads.put(e.getKey(), e.getValue().grad().toFloatArray());
        return new Backprop(loss, grads, model.dropoutRng().state(), mem.peak(MemoryCategory.ACTIVATIONS), mem.peakTotal());
    }

    @Test
    void recomputeGivesBitIdenticalGradientsWithDropoutAndLessActivationMemory() {
        Batch batch = randomBatch(new Rng(3), 4, 32);
        Backprop none = backprop("none", batch), full = backprop("full", batch), selective = backprop("selective", batch);
        for (Backprop r : List.of(full, selective)) {
            assertEquals(none.loss(), r.loss(), 0.0);
            assertEquals(none.rngAfter(), r.rngAfter(), "the dropout generator ends where it would without recompute");
            assertEquals(none.grads().keySet(), r.grads().keySet());
            none.grads().forEach((name, g) -> assertArrayEquals(g, r.grads().get(name), 0.0f, name + " differs"));
        }
        System.out.printf("peak activations: none %d, selective %d, full %d bytes; peak total %d, %d, %d%n", none.peakActivations(),
                selective.peakActivations(), full.peakActivations(), none.peakTotal(), selective.peakTotal(), full.peakTotal());
        assertTrue(selective.peakActivations() < none.peakActivations(), "selective keeps fewer activations");
        assertTrue(full.peakActivations() < selective.peakActivations(), "full keeps fewer still");
        assertTrue(full.peakTotal() < none.peakTotal());
    }

    @Test
    void recomputeKeepsGradientsBitIdenticalUnderLoraWithAdapterDropout() {
        Batch batch = randomBatch(new Rng(4), 2, 32);
        String[] lora = {"lora.rank=4", "lora.targets=c_attn,c_fc,c_proj", "lora.dropout=0.2"};
        Backprop none = backprop("none", batch, lora), full = backprop("full", batch, lora), selective = backprop("selective", batch, lora);
        for (Backprop r : List.of(full, selective)) {
            assertEquals(none.rngAfter(), r.rngAfter());
            none.grads().forEach((name, g) -> assertArrayEquals(g, r.grads().get(name), 0.0f, name + " differs"));
        }
    }

    static Batch concat(List<Batch> parts) {
        int t = parts.getFirst().blockSize(), rows = parts.stream().mapToInt(Batch::batchSize).sum();
        int[] x = new int[rows * t], y = new int[rows * t];
        int at = 0;
        for (Batch p : parts) {
            System.arraycopy(p.inputs(), 0, x, at, p.inputs().length);
            System.arraycopy(p.targets(), 0, y, at, p.targets().length);
            at += p.inputs().length;
        }
        return new Batch(x, y, rows, t);
    }

    static Map<String, float[]> weights(Gpt model) {
        Map<String, float[]> out = new LinkedHashMap<>();
        model.namedParameters().forEach((k, p) -> out.put(k, p.toFloatArray()));
        return out;
    }

    static double maxDiff(Map<String, float[]> a, Map<String, float[]> b) {
        double m = 0;
        for (var e : a.entrySet()) {
            float[] x = e.getValue(), y = b.get(e.getKey());
            for (int i = 0; i < x.length; i++) m = Math.max(m, Math.abs(x[i] - y[i]));
        }
        return m;
    }

    /** Max |Δ| between the weights after 3 steps on 4 micro-batches of 2 and after 3 steps on the same 8 rows as one batch. */
    private double accumulatedVsLarge(double lr, String... optim) {
        List<String> o = new ArrayList<>(List.of("optim.grad_clip=0.5")); // clipping active: it must see the accumulated gradient
        o.addAll(List.of(optim));
        RunConfig cfg = config(o.toArray(String[]::new));
        Gpt accumulated = (Gpt) RunSetup.buildModel(cfg), large = (Gpt) RunSetup.buildModel(cfg), single = (Gpt) RunSetup.buildModel(cfg);
        Optimizer oa = RunSetup.optimizer(cfg.optim(), accumulated), ol = RunSetup.optimizer(cfg.optim(), large),
                os = RunSetup.optimizer(cfg.optim(), single);
        Map<String, float[]> init = weights(large);
        Rng rng = new Rng(11);
        for (int step = 0; step < 3; step++) {
            List<Batch> micro = List.of(randomBatch(rng, 2, 32), randomBatch(rng, 2, 32), randomBatch(rng, 2, 32), randomBatch(rng, 2, 32));
            TrainStep.StepResult ra = GradAccumulation.step(accumulated, oa, micro, lr, 0.5, 0, 0, 1.0);
            TrainStep.StepResult rl = TrainStep.step(large, ol, concat(micro), lr, 0.5, 0, 0, 1.0);
            GradAccumulation.step(single, os, micro.subList(0, 1), lr, 0.5, 0, 0, 1.0);
            assertEquals(rl.loss(), ra.loss(), 1e-5, "mean loss over the micro-batches");
            assertEquals(rl.gradNorm(), ra.gradNorm(), 1e-5 * rl.gradNorm(), "the norm clipping sees");
            assertTrue(rl.gradNorm() > 0.5, "clipping is active");
        }
        double moved = maxDiff(init, weights(large)), diff = maxDiff(weights(accumulated), weights(large)),
                control = maxDiff(weights(single), weights(large));
        System.out.printf("%s: accumulated vs large batch %.3g, weights moved %.3g, one micro-batch alone %.3g%n", o, diff, moved, control);
        assertTrue(moved > 1000 * diff && control > 1000 * diff, "the check can fail: weights moved " + moved + ", one micro-batch alone differs by " + control);
        return diff;
    }

    @Test
    void fourMicroBatchesUpdateLikeOneFourTimesLargerBatch() {
        // fp32: summing 4 micro-batch gradients and one batch of 8 round differently, ~1e-7 relative per element;
        // SGD passes that on linearly (× lr); AdamW divides by √v, which magnifies it for elements whose gradient is
        // near ε, so it gets a looser bound (still 1000× below how far the weights move)
        assertTrue(accumulatedVsLarge(0.1, "optim.optimizer=sgd", "optim.momentum=0.9") <= 1e-6);
        assertTrue(accumulatedVsLarge(3e-3) <= 1e-5);
    }

    private Trainer.Result train(String name, int iters, boolean resume, String... extra) {
        return new Trainer(SmallRuns.config(tmp, name, iters, extra), resume, new PrintStream(new ByteArrayOutputStream()), false).run();
    }

    @Test
    void accumulationResumesBitForBitAndCountsEveryMicroBatchToken() {
        String[] acc = {"train.grad_accum_steps=2", "model.dropout=0.1", "train.recompute=selective"};
        Trainer.Result straight = train("straight", 24, false, acc);
        Trainer.Result first = train("halves", 12, false, acc);
        Trainer.Result second = train("halves", 24, true, acc);
        assertEquals(12, second.firstStep());
        List<Double> joined = new ArrayList<>(first.losses());
        joined.addAll(second.losses());
        assertArrayEquals(straight.losses().stream().mapToDouble(d -> d).toArray(), joined.stream().mapToDouble(d -> d).toArray(), 0.0);
        assertEquals(straight.finalValLoss(), second.finalValLoss(), 0.0);
        List<JsonNode> steps = SmallRuns.steps(straight);
        assertEquals(24L * 2 * 4 * 32, steps.getLast().path("tokens").asLong(), "2 micro-batches × 4 sequences × 32 tokens a step");
        JsonNode last = SmallRuns.metrics(straight).getLast();
        assertTrue(last.path("final").asBoolean() && last.path("mem_peak_activations").asLong() > 0 && last.path("mem_peak_parameters").asLong() > 0);

        // a token budget ends after budget / (k·b·T) steps
        Trainer.Result budget = train("budget", 1000, false, "train.grad_accum_steps=2", "train.budget_tokens=8192");
        assertEquals(8192 / (2 * 4 * 32), budget.lastStep());
        assertEquals("budget_tokens", budget.endedBy());
    }
}
