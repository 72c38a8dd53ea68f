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

    static List<String> config(String name, String... extra) {
        List<String> o = new ArrayList<>(List.of("model.n_layer=2", "model.n_head=2", "model.n_embd=32", "model.block_size=32",
                "train.batch_size=12", "train.max_iters=20", "train.eval_interval=1000", "train.final_eval_iters=0",
                "train.checkpoint_interval=1000", "train.sample_tokens=0", "train.threads=1", "train.log_interval=1000",
                "train.out_dir=" + tmp.resolve("runs"), "train.name=" + name, "data.dir=" + tmp.resolve("data"),
                "optim.warmup_iters=5", "optim.lr_decay_iters=20", "parallel.bucket_mb=0.01"));
        o.addAll(List.of(extra));
        return o;
    }

    @BeforeAll
    static void singleProcess() {
        var cfg = ConfigLoader.load(null, config("single"));
        single = new Trainer(cfg, false, new PrintStream(new ByteArrayOutputStream()), false).run().losses();
        assertEquals(20, single.size());
    }

    /** Each rank's losses, from the LOSSES lines of a {@link DistTrainMain} run. */
    static List<List<Double>> losses(MpiRun.Result r, int np) {
        assertEquals(0, r.exitCode(), r.output());
        List<List<Double>> out = new ArrayList<>();
        for (int rank = 0; rank < np; rank++) {
            String prefix = "LOSSES " + rank + " ";
            String line = r.output().lines().filter(l -> l.startsWith(prefix)).findFirst().orElseThrow(() -> new AssertionError(r.output()));
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

    static double sameLossesAsSingleProcess(int np, String name, String... extra) throws Exception {
        var r = MpiRun.run(np, DistTrainMain.class.getName(), 150, config(name, extra).toArray(String[]::new));
        var all = losses(r, np);
        double worst = 0;
        for (List<Double> l : all) {
            assertEquals(all.getFirst(), l, "every rank logs the same global loss");
            worst = Math.max(worst, maxRelDiff(l, single));
        }
        System.out.printf("%s np %d: max relative loss difference to single process over 20 steps %.3g (%.1f s)%n", name, np, worst, r.seconds());
        assertTrue(worst < TOLERANCE, name + ": max rel diff " + worst + "\n" + r.output());
        assertTrue(single.getLast() < single.getFirst() - 0.3, "the run learns: " + single);
        return worst;
    }

    @Test
    void ddpOnTwoRanks() throws Exception {
        sameLossesAsSingleProcess(2, "ddp2", "parallel.zero_stage=0");
    }
}
