package dev.kiln.dist;

import dev.kiln.nn.Parameter;
import dev.kiln.nn.models.Gpt;
import dev.kiln.optim.GradScaler;
import dev.kiln.optim.MixedPrecisionOptimizer;
import dev.kiln.optim.ParamGroup;
import dev.kiln.optim.Sgd;
import dev.kiln.tensor.DType;
import dev.kiln.tensor.MemoryScope;
import dev.kiln.tensor.Safetensors;
import dev.kiln.tensor.Tensor;
import dev.kiln.train.ShardedCheckpoint;
import dev.kiln.train.Trainer;
import dev.kiln.train.config.ConfigLoader;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * fp16/bf16 at ZeRO-3: each rank keeps fp32 masters of the parameters it owns only, the just-in-time all-gathers carry
 * the half-precision working copies (2 bytes an element), and training gives the single process's run of the same
 * global batch (the {@link DataParallelTest} run: 20 steps, batch 12, GPT of 2 blocks, 2 heads, C 32). The fp16 runs
 * inject overflows at steps 8–10 on ONE rank only (DistTrainMain's --overflow-rank), the single process on its only
 * one: every rank must skip the same steps and keep the single process's loss-scale sequence.
 * <ul>
 *   <li>dp 2, ZeRO-3, fp16 (np 2): losses, loss scales, the all-gathered bytes (exactly the half-precision formula),
 *       and the final consolidated checkpoint (fp32 masters, AdamW state, scaler state) as the single process's;</li>
 *   <li>dp 2 × tp 2, ZeRO-3, fp16, {@code parallel.checkpoint: sharded} (np 4): losses and loss scales; its sharded
 *       step-10 checkpoint resumed in one process gives, bit for bit, the losses and scales of resuming the same
 *       checkpoint consolidated, and the single process's steps 11–20;</li>
 *   <li>dp 2, ZeRO-3, bf16, grad_accum_steps 2 (np 2): losses;</li>
 *   <li>in one JVM (threads as ranks): a gather of working copies delivers the owners' fp16/bf16 values exactly in
 *       half the bytes, and the fp32 masters come back after the step.</li>
 * </ul>
 * The ranks' skip decisions are one all-reduced vote (identical on every rank by construction); a rank that skipped
 * while another stepped would leave the parameters it owns a step away from the single process's, which the 1e-4
 * loss tolerance (as DataParallelOptionsTest's for half precision) sees, and rank 0's metrics give the scale sequence.
 * An overflow injected by loss scaling on one rank reaches the other ranks' owned gradients through the
 * reduce-scatter (and under tp through the backward all-reduces), as a real one would; the vote on its own, with an
 * inf that only one rank's owned gradients hold, is ModelParallelOptionsTest's unit test.
 */
class ZeroThreeMixedPrecisionTest {
    static final double TOLERANCE = 1e-4;
    static final String[] FP16 = ModelParallelOptionsTest.OVERFLOWS; // fp16 with overflows injected at steps 8-10

    @TempDir
    static Path tmp;

    static List<String> config(String name, String... extra) {
        return DataParallelTest.config(tmp, name, extra);
    }

    static Trainer.Result single(String name, String... extra) {
        var r = new Trainer(ConfigLoader.load(null, config(name, extra)), false, new PrintStream(new ByteArrayOutputStream()), false).run();
        assertEquals(20, r.losses().size());
        assertTrue(r.losses().getLast() < r.losses().getFirst() - 0.05, "the run learns: " + r.losses());
        return r;
    }

    /** Runs {@code np} ranks with overflows injected on world rank 1 only; returns rank 0's result-file lines. */
    static List<String> dist(int np, String name, Trainer.Result want, String... extra) throws Exception {
        List<String> args = new ArrayList<>(config(name, extra));
        args.add("--overflow-rank=1");
        var r = MpiRun.run(np, DistTrainMain.class.getName(), 300, args.toArray(String[]::new));
        assertEquals(0, r.exitCode(), r.output());
        assertTrue(r.output().contains("ZeRO stage 3"), r.output());
        List<Double> first = null;
        List<String> lines0 = null;
        for (int rank = 0; rank < np; rank++) {
            List<String> lines = Files.readAllLines(tmp.resolve("runs").resolve(name).resolve("result-rank" + rank + ".txt"));
            List<Double> l = numbers(lines, "LOSSES " + rank + " ", r.output()).stream().map(Double::valueOf).toList();
            if (first == null) {
                first = l;
                lines0 = lines;
            }
            assertEquals(first, l, "rank " + rank + " logs the global loss");
        }
        // rank 0 wrote the run's config: its faults.overflow_steps is empty, so the overflows its metrics record came from rank 1
        var written = new com.fasterxml.jackson.databind.ObjectMapper().readTree(tmp.resolve("runs").resolve(name).resolve("config.json").toFile());
        assertEquals("", written.path("faults").path("overflow_steps").asText("?"), "rank 0 injects no overflow");
        double worst = DataParallelTest.maxRelDiff(first, want.losses());
        System.out.printf("%s np %d: max relative loss difference to single process over 20 steps %.3g (%.1f s)%n", name, np, worst, r.seconds());
        assertTrue(worst < TOLERANCE, name + ": max rel diff " + worst + "\n" + r.output());
        return lines0;
    }

    static List<String> numbers(List<String> lines, String prefix, String output) {
        String line = lines.stream().filter(s -> s.startsWith(prefix)).findFirst().orElseThrow(() -> new AssertionError(output));
        return Arrays.asList(line.substring(prefix.length()).trim().split(" "));
    }

    /**
     * dp 2: also the all-gathers, exactly: per step unit −1 (embeddings, ln_f) once and each block twice (forward,
     * and again in backward), each rank's block of fp16 elements padded to whole 4-byte slots; then the final
     * checkpoint's one gather of every parameter in fp32 (4P). The same gathers in fp32 would be 4 bytes an element.
     */
    @Test
    void dp2Fp16WithOverflowOnOneRank() throws Exception {
        String[] extra = concat(FP16, "model.dropout=0.1");
        Trainer.Result s = single("dp2_fp16_single", extra);
        List<String> lines = dist(2, "dp2z3_fp16", s, concat(extra, "parallel.zero_stage=3"));
        ModelParallelOptionsTest.sameScales(tmp.resolve("runs"), "dp2z3_fp16", "dp2_fp16_single");
        for (String file : List.of("model.safetensors", "optimizer.safetensors")) // masters, AdamW state, grad_scaler.*
            PipelineParallelTest.sameCheckpoint(tmp.resolve("runs/dp2z3_fp16"), s, "dp2z3_fp16", file, 1e-3);

        long gathered = 0;
        for (String l : lines)
            if (l.startsWith("COMM 0 ")) {
                var m = java.util.regex.Pattern.compile("all_gather (\\d+) B in").matcher(l);
                assertTrue(m.find(), l);
                gathered = Long.parseLong(m.group(1));
            }
        long[] expected = gatherBytes(s.runDir().resolve("checkpoints/step-000020/model.safetensors"), 2);
        System.out.printf("dp 2 ZeRO-3 fp16: all-gathered %,d B in 20 steps and the final checkpoint (fp16 gathers %,d B a step, fp32 would be %,d)%n",
                gathered, expected[0], expected[1]);
        assertEquals(20 * expected[0] + expected[2], gathered, "half-precision working copies gathered per step, fp32 masters for the checkpoint");
        assertTrue(expected[0] < 0.51 * expected[1], "half the bytes: " + Arrays.toString(expected));
    }

    /**
     * {half-precision all-gather bytes per step, the same in fp32, 4P} for the GPT whose tensors a checkpoint's
     * model.safetensors lists (its numel per name; HF names are Kiln's), over {@code ranks} ZeRO-3 ranks.
     */
    static long[] gatherBytes(Path modelFile, int ranks) {
        try (var scope = MemoryScope.open()) {
            Map<String, Parameter> params = new LinkedHashMap<>();
            Safetensors.read(modelFile).tensors().forEach((n, t) -> params.put(n, new Parameter(Tensor.zeros(DType.F32, (int) t.numel()))));
            ParameterOwners owners = new ParameterOwners(params, ranks);
            int blocks = params.keySet().stream().mapToInt(ParameterSharding::unitOf).max().orElse(-1) + 1;
            long half = 0, full = 0, all = 0;
            for (int u = -1; u < blocks; u++) {
                long[] perRank = new long[ranks];
                for (var e : params.entrySet())
                    if (ParameterSharding.unitOf(e.getKey()) == u) perRank[owners.owner(e.getKey())] += e.getValue().numel();
                long h = 0, f = 0;
                for (long n : perRank) {
                    h += 4 * ((n + 1) / 2);
                    f += 4 * n;
                }
                int times = u < 0 ? 1 : 2;
                half += times * h;
                full += times * f;
                all += f;
            }
            return new long[]{half, full, all};
        }
    }

    /**
     * dp 2 × tp 2 (np 4), sharded checkpoints: the step-10 one holds what a single process's holds, so resuming it in
     * one process and resuming its consolidation give the same losses bit for bit, with the scaler state restored (the
     * scale after the overflows is 16384, a lost state would restart at 65536).
     */
    @Test
    void dp2Tp2Fp16ShardedCheckpointResumesInOneProcess() throws Exception {
        String[] extra = concat(FP16, "model.dropout=0", "train.checkpoint_interval=10");
        Trainer.Result s = single("dp2tp2_fp16_single", extra);
        dist(4, "dp2tp2z3_fp16", s, concat(extra, "parallel.tp=2", "parallel.zero_stage=3", "parallel.checkpoint=sharded"));
        ModelParallelOptionsTest.sameScales(tmp.resolve("runs"), "dp2tp2z3_fp16", "dp2tp2_fp16_single");
        Path step10 = tmp.resolve("runs/dp2tp2z3_fp16/checkpoints/step-000010");
        assertTrue(ShardedCheckpoint.isSharded(step10));

        List<List<Double>> rests = new ArrayList<>();
        for (String mode : new String[]{"sharded", "consolidated"}) {
            String copy = "one_from_dp2tp2z3_fp16_" + mode;
            Path dir = tmp.resolve("runs").resolve(copy);
            PipelineParallelTest.copyTree(tmp.resolve("runs/dp2tp2z3_fp16"), dir);
            PipelineParallelTest.deleteTree(dir.resolve("checkpoints/step-000020"));
            if (mode.equals("consolidated")) {
                Path c = ShardedCheckpoint.consolidateTo(dir.resolve("checkpoints/step-000010"), tmp.resolve("c10"));
                PipelineParallelTest.deleteTree(dir.resolve("checkpoints/step-000010"));
                PipelineParallelTest.copyTree(c, dir.resolve("checkpoints/step-000010"));
                assertFalse(ShardedCheckpoint.isSharded(dir.resolve("checkpoints/step-000010")));
            }
            var r = new Trainer(ConfigLoader.load(null, config(copy, extra)), true, new PrintStream(new ByteArrayOutputStream()), false).run();
            assertEquals(10, r.firstStep(), copy + " resumed at step 10");
            rests.add(r.losses());
            ModelParallelOptionsTest.sameScales(tmp.resolve("runs"), copy, "dp2tp2_fp16_single");
        }
        assertEquals(rests.get(1), rests.get(0), "resumed from the sharded and from the consolidated checkpoint");
        double diff = DataParallelTest.maxRelDiff(rests.get(0), s.losses().subList(10, 20));
        System.out.printf("dp 2 × tp 2 ZeRO-3 fp16 sharded checkpoint at step 10, resumed in one process: max relative loss difference %.3g%n", diff);
        assertTrue(diff < TOLERANCE, rests.get(0) + " vs " + s.losses().subList(10, 20));
    }

    /**
     * bf16 with grad_accum_steps 2 (np 2): the working copies are gathered in bf16 in every micro-batch's forward and
     * backward; the accumulated gradient is reduce-scattered once and rounded once it is reduced. Losses only (the
     * rounding-order caveat of DataParallelOptionsTest's bf16 accumulation test applies to the state).
     */
    @Test
    void dp2Bf16WithAccumulation() throws Exception {
        String[] extra = {"train.precision=bf16", "train.grad_accum_steps=2", "model.dropout=0.1"};
        dist(2, "dp2z3_bf16_accum", single("dp2_bf16_accum_single", extra), concat(extra, "parallel.zero_stage=3"));
    }

    /**
     * Threads as 2 ranks: under mixed precision a gather delivers every parameter as its owner's half-precision
     * working copy (the rounding of its fp32 value), in about half the bytes of an fp32 gather; the step's start drops
     * fp32 copies gathered before (e.g. by a checkpoint load); its end restores the owned masters exactly and drops
     * the working copies, so the next gather carries fp32 masters.
     */
    @Test
    void halfPrecisionGathersCarryTheOwnersWorkingCopies() throws Exception {
        for (DType half : List.of(DType.F16, DType.BF16)) {
            List<long[]> bytes = ThreadGroup.run(2, g -> {
                Gpt model = ShardingPiecesTest.tinyGpt();
                Map<String, Parameter> params = model.trainableParameters();
                Map<String, float[]> fp32 = new LinkedHashMap<>();
                params.forEach((k, p) -> fp32.put(k, p.toFloatArray()));
                ParameterOwners owners = new ParameterOwners(params, 2);
                ParameterSharding sharding = new ParameterSharding(g, model, params, owners);
                var mp = new MixedPrecisionOptimizer(new Sgd(ParamGroup.standard(params, 0, 0), 0, false), params, half,
                        half == DType.F16 ? GradScaler.dynamic(1024, 5) : null, sharding);
                mp.beginStep();
                params.forEach((k, p) -> assertEquals(owners.owner(k) == g.rank(), p.storage().isResident(), k + ": only owned parameters stay"));
                long b0 = g.stats().bytes(CommStats.Kind.ALL_GATHER);
                sharding.gatherAll();
                long halfBytes = g.stats().bytes(CommStats.Kind.ALL_GATHER) - b0;
                params.forEach((k, p) -> assertArrayEquals(rounded(fp32.get(k), half), p.toFloatArray(), k + ": the owner's " + half + " working copy"));
                assertFalse(mp.endBackward());
                params.forEach((k, p) -> {
                    assertEquals(owners.owner(k) == g.rank(), p.storage().isResident(), k + ": working copies dropped after the step");
                    if (owners.owner(k) == g.rank()) assertArrayEquals(fp32.get(k), p.toFloatArray(), k + ": master restored");
                });
                long b1 = g.stats().bytes(CommStats.Kind.ALL_GATHER);
                sharding.gatherAll();
                long fullBytes = g.stats().bytes(CommStats.Kind.ALL_GATHER) - b1;
                params.forEach((k, p) -> assertArrayEquals(fp32.get(k), p.toFloatArray(), k + ": fp32 master gathered outside a step"));
                return new long[]{halfBytes, fullBytes};
            });
            long p = ShardingPiecesTest.tinyGpt().trainableParameters().values().stream().mapToLong(Parameter::numel).sum();
            long units = 1 + 2; // unit −1 and the 2 blocks: each rank's block of halves padded to at most one 4-byte slot more
            System.out.printf("%s working copies gathered: %d B (fp32 masters %d B, P = %d)%n", half, bytes.getFirst()[0], bytes.getFirst()[1], p);
            assertEquals(4 * p, bytes.getFirst()[1]);
            assertTrue(bytes.getFirst()[0] >= 2 * p && bytes.getFirst()[0] <= 2 * p + 4 * 2 * units, Arrays.toString(bytes.getFirst()));
        }
    }

    private static float[] rounded(float[] v, DType half) {
        float[] out = v.clone();
        for (int i = 0; i < out.length; i++)
            out[i] = half == DType.F16 ? Float.float16ToFloat(Float.floatToFloat16(v[i])) : DType.bf16ToFloat(DType.floatToBf16(v[i]));
        return out;
    }

    static String[] concat(String[] a, String... b) {
        return ModelParallelOptionsTest.concat(a, b);
    }
}
