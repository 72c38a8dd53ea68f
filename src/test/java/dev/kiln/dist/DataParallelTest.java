package dev.kiln.dist;

import dev.kiln.train.Trainer;
import dev.kiln.train.config.ConfigLoader;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * Data parallelism under mpirun gives the losses of single-process training on the same global batch: 20 steps of a
 * 2-layer GPT, batch 12 (6 rows per rank at np 2, 3 at np 4), small gradient buckets so several are in flight
 * during backward. Tolerance: the ranks sum gradients in another order than one process does, so the runs agree to
 * fp32 rounding amplified over 20 AdamW steps, not bit for bit; 1e-4 relative is far below any real divergence
 * (a wrong slice, a missed or double-counted gradient moves the loss at the 1e-2 level within a few steps).
 */
class DataParallelTest {
    static final double TOLERANCE = 1e-4;

    @TempDir
    static Path tmp;
    static List<Double> single;
    static dev.kiln.train.MemoryAccount singleMemory;

    static List<String> config(String name, String... extra) {
        return config(tmp, name, extra);
    }

    /** The test run: runs and the prepared data under {@code dir}. */
    static List<String> config(Path dir, String name, String... extra) {
        List<String> o = new ArrayList<>(List.of("model.n_layer=2", "model.n_head=2", "model.n_embd=32", "model.block_size=32",
                "train.batch_size=12", "train.max_iters=20", "train.eval_interval=1000", "train.final_eval_iters=0",
                "train.checkpoint_interval=1000", "train.sample_tokens=0", "train.threads=1", "train.log_interval=1000",
                "train.out_dir=" + dir.resolve("runs"), "train.name=" + name, "data.dir=" + dir.resolve("data"),
                "optim.warmup_iters=5", "optim.lr_decay_iters=20", "parallel.bucket_mb=0.01"));
        o.addAll(List.of(extra));
        return o;
    }

    @BeforeAll
    static void singleProcess() {
        var cfg = ConfigLoader.load(null, config("single"));
        var r = new Trainer(cfg, false, new PrintStream(new ByteArrayOutputStream()), false).run();
        single = r.losses();
        singleMemory = r.memory();
        assertEquals(20, single.size());
    }

    /** The line starting with {@code prefix} of the result file {@link DistTrainMain} wrote for {@code rank} of run {@code name}. */
    static String resultLine(MpiRun.Result r, String name, int rank, String prefix) {
        assertEquals(0, r.exitCode(), r.output());
        try {
            return java.nio.file.Files.readAllLines(tmp.resolve("runs").resolve(name).resolve("result-rank" + rank + ".txt")).stream()
                    .filter(l -> l.startsWith(prefix)).findFirst().orElseThrow(() -> new AssertionError(r.output()));
        } catch (java.io.IOException e) {
            throw new AssertionError("no result file of rank " + rank + ": " + e + "\n" + r.output());
        }
    }

    /** Each rank's losses, from the LOSSES lines of a {@link DistTrainMain} run. */
    static List<List<Double>> losses(MpiRun.Result r, String name, int np) {
        List<List<Double>> out = new ArrayList<>();
        for (int rank = 0; rank < np; rank++) {
            String prefix = "LOSSES " + rank + " ";
            String line = resultLine(r, name, rank, prefix);
            out.add(Arrays.stream(line.substring(prefix.length()).trim().split(" ")).map(Double::parseDouble).toList());
        }
        return out;
    }

    static double maxRelDiff(List<Double> a, List<Double> b) {
        assertEquals(a.size(), b.size());
        double m = 0;
        for (int i = 0; i < a.size(); i++) m = Math.max(m, Math.abs(a.get(i) - b.get(i)) / Math.abs(b.get(i)));
        return m;
    }

    /** Each rank's measured {param, grad, optimizer state} bytes, from the MEMORY lines. */
    static long[][] memory(MpiRun.Result r, String name, int np) {
        long[][] out = new long[np][];
        for (int rank = 0; rank < np; rank++) {
            String prefix = "MEMORY " + rank + " ";
            String line = resultLine(r, name, rank, prefix);
            out[rank] = Arrays.stream(line.substring(prefix.length()).trim().split(" ")).mapToLong(Long::parseLong).toArray();
        }
        return out;
    }

    record Run(MpiRun.Result result, String name) {
        String output() {
            return result.output();
        }
    }

    static Run sameLossesAsSingleProcess(int np, String name, String... extra) throws Exception {
        var r = MpiRun.run(np, DistTrainMain.class.getName(), 150, config(name, extra).toArray(String[]::new));
        var all = losses(r, name, np);
        double worst = 0;
        for (List<Double> l : all) {
            assertEquals(all.getFirst(), l, "every rank logs the same global loss");
            worst = Math.max(worst, maxRelDiff(l, single));
        }
        System.out.printf("%s np %d: max relative loss difference to single process over 20 steps %.3g (%.1f s)%n", name, np, worst, r.seconds());
        assertTrue(worst < TOLERANCE, name + ": max rel diff " + worst + "\n" + r.output());
        assertTrue(single.getLast() < single.getFirst() - 0.05, "the run learns: " + single);
        return new Run(r, name);
    }

    @Test
    void ddpOnTwoRanks() throws Exception {
        var r = sameLossesAsSingleProcess(2, "ddp2", "parallel.zero_stage=0");
        for (long[] m : memory(r.result(), r.name(), 2)) // plain DDP replicates everything
            assertArrayEqualsMemory(new long[]{singleMemory.parameterBytes(), singleMemory.gradientBytes(), singleMemory.optimizerStateBytes()}, m);
    }

    static void assertArrayEqualsMemory(long[] want, long[] got) {
        assertEquals(Arrays.toString(want), Arrays.toString(got));
    }

    /**
     * ZeRO-1 and 2: each rank keeps the optimizer state (and at stage 2 the gradients) of its own parameters only.
     * Whole parameters are owned, so a rank's share is ≈ 1/N up to the greedy balance; measured, it must be within
     * 10% of 1/N, and the shares must add up to the unsharded total exactly.
     */
    static void shardedMemory(Run r, int np, boolean gradsSharded) {
        long[][] m = memory(r.result(), r.name(), np);
        long stateSum = 0, gradSum = 0;
        for (long[] rank : m) {
            assertEquals(singleMemory.parameterBytes(), rank[0], "stages 1 and 2 keep every parameter");
            double stateShare = (double) rank[2] / singleMemory.optimizerStateBytes();
            assertTrue(Math.abs(stateShare * np - 1) < 0.1, "optimizer state share " + stateShare + " at np " + np);
            stateSum += rank[2];
            gradSum += rank[1];
            if (gradsSharded) assertTrue(Math.abs((double) rank[1] / singleMemory.gradientBytes() * np - 1) < 0.1, "gradient share at np " + np);
            else assertEquals(singleMemory.gradientBytes(), rank[1]);
        }
        assertEquals(singleMemory.optimizerStateBytes(), stateSum);
        if (gradsSharded) assertEquals(singleMemory.gradientBytes(), gradSum);
        System.out.println("measured per-rank {param, grad, optimizer} bytes at np " + np + ": " + Arrays.deepToString(m)
                + " (single process: " + singleMemory.parameterBytes() + ", " + singleMemory.gradientBytes() + ", " + singleMemory.optimizerStateBytes() + ")");
    }

    @Test
    void zero1OnTwoRanks() throws Exception {
        shardedMemory(sameLossesAsSingleProcess(2, "zero1_np2", "parallel.zero_stage=1"), 2, false);
    }

    @Test
    void zero2OnFourRanks() throws Exception {
        shardedMemory(sameLossesAsSingleProcess(4, "zero2_np4", "parallel.zero_stage=2"), 4, true);
    }

    /**
     * ZeRO-3: parameters, gradients and optimizer state all sharded; measured after the last step, each rank holds
     * ≈ 1/N of the single process's params + grads + optimizer state (within 10%: whole parameters are owned), and
     * the shards add up to the whole exactly.
     */
    static void zero3Memory(Run r, int np) {
        long[][] m = memory(r.result(), r.name(), np);
        long whole = singleMemory.trainingStateBytes(), sum = 0;
        StringBuilder shares = new StringBuilder();
        for (long[] rank : m) {
            long held = rank[0] + rank[1] + rank[2];
            sum += held;
            double share = (double) held / whole;
            shares.append(String.format(" %.4f", share));
            assertTrue(Math.abs(share * np - 1) < 0.1, "rank holds " + share + " of the unsharded training state at np " + np);
        }
        assertEquals(whole, sum, "the shards add up to the whole");
        System.out.println("ZeRO-3 np " + np + ": measured per-rank {param, grad, optimizer} bytes " + Arrays.deepToString(m)
                + "; share of the unsharded " + whole + " B:" + shares);
    }

    @Test
    void zero3OnTwoRanks() throws Exception {
        // with an evaluation at step 10 and a final sample: forwards without grad gather and evict the blocks too
        var r = sameLossesAsSingleProcess(2, "zero3_np2", "parallel.zero_stage=3", "train.eval_interval=10", "train.eval_iters=2",
                "train.sample_tokens=5");
        assertTrue(r.output().contains("step 10: val loss"), r.output());
        zero3Memory(r, 2);
    }

    @Test
    void zero3OnFourRanks() throws Exception {
        zero3Memory(sameLossesAsSingleProcess(4, "zero3_np4", "parallel.zero_stage=3"), 4);
    }

    /**
     * ZeRO-2 on 2 ranks for 10 steps writes one checkpoint (the optimizer state gathered from both ranks into one
     * file); a single process resumes it and its steps 11..20 give the single-process run's losses.
     */
    @Test
    void zero2CheckpointResumesInOneProcess() throws Exception {
        var r = MpiRun.run(2, DistTrainMain.class.getName(), 150,
                config("resume_np2_np1", "parallel.zero_stage=2", "train.max_iters=10").toArray(String[]::new));
        List<Double> first = losses(r, "resume_np2_np1", 2).getFirst();
        assertTrue(maxRelDiff(first, single.subList(0, 10)) < TOLERANCE);
        Path ckpt = tmp.resolve("runs/resume_np2_np1/checkpoints/step-000010");
        var state = dev.kiln.tensor.Safetensors.read(ckpt.resolve("optimizer.safetensors")).tensors();
        long floats = state.values().stream().mapToLong(dev.kiln.tensor.Tensor::numel).sum();
        assertEquals(singleMemory.optimizerStateBytes() / 4, floats, "the checkpoint holds the whole optimizer state, not a shard");
        var cfg = ConfigLoader.load(null, config("resume_np2_np1"));
        List<Double> rest = new Trainer(cfg, true, new PrintStream(new ByteArrayOutputStream()), false).run().losses();
        double diff = maxRelDiff(rest, single.subList(10, 20));
        System.out.printf("ZeRO-2 np 2 for 10 steps, resumed in one process for 10 more: max relative loss difference %.3g%n", diff);
        assertTrue(diff < TOLERANCE, rest + " vs " + single.subList(10, 20));
    }
}
