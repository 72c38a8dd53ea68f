package dev.kiln.train;

import dev.kiln.data.TokenShard;
import dev.kiln.data.WindowScores;
import dev.kiln.nn.models.CausalLm;
import dev.kiln.tensor.MemoryScope;
import dev.kiln.tensor.Tensor;

import java.io.PrintStream;
import java.nio.file.Path;

/**
 * Difficulty scores for a curriculum ({@code kiln prepare --score}): every non-overlapping window of the model's
 * block size in a shard, scored by its mean next-token loss under a (small, already trained) reference model.
 */
public final class WindowScoring {
    private WindowScoring() {}

    /** The mean loss of each window k (inputs at [k·T, k·T+T)), in eval mode, {@code batch} windows per forward. */
    public static float[] score(CausalLm model, TokenShard shard, int batch, PrintStream progress) {
        int t = model.blockSize();
        int n = WindowScores.windows(shard.size(), t);
        float[] out = new float[n];
        boolean was = model.isTraining();
        model.eval();
        try {
            int[] window = new int[t + 1];
            long lastReport = System.nanoTime();
            for (int first = 0; first < n; first += batch) {
                int b = Math.min(batch, n - first);
                int[] x = new int[b * t], y = new int[b * t];
                for (int r = 0; r < b; r++) {
                    shard.copy((long) (first + r) * t, window, 0, t + 1);
                    System.arraycopy(window, 0, x, r * t, t);
                    System.arraycopy(window, 1, y, r * t, t);
                }
                try (var scope = MemoryScope.open()) {
                    double[] losses = model.sequenceLosses(Tensor.ofInts(x, b, t), Tensor.ofInts(y, b, t));
                    for (int r = 0; r < b; r++) out[first + r] = (float) losses[r];
                }
                if (progress != null && System.nanoTime() - lastReport > 10e9) {
                    progress.printf("kiln: scored %,d of %,d windows%n", first + b, n);
                    lastReport = System.nanoTime();
                }
            }
        } finally {
            model.train(was);
        }
        return out;
    }

    /** Scores {@code shard} and writes the scores beside it ({@link WindowScores#FILE}); returns the file. */
    public static Path scoreAndWrite(CausalLm model, TokenShard shard, int batch, PrintStream progress) {
        float[] scores = score(model, shard, batch, progress);
        Path file = shard.path().resolveSibling(WindowScores.FILE);
        WindowScores.write(file, scores, model.blockSize(), shard.size());
        return file;
    }
}
