package dev.kiln.nn.models;

import dev.kiln.autograd.Tape;
import dev.kiln.tensor.MemoryScope;
import dev.kiln.tensor.Rng;
import dev.kiln.tensor.Tensor;

import java.util.Arrays;

/** Autoregressive sampling with temperature and top-k, as nanoGPT's sample.py. */
public final class Generator {
    private Generator() {}

    /** Returns prompt + {@code maxNew} sampled tokens. temperature ≤ 0 means greedy. */
    public static int[] generate(CausalLm model, int[] prompt, int maxNew, double temperature, int topK, Rng rng) {
        if (prompt.length == 0) throw new IllegalArgumentException("empty prompt");
        boolean wasTraining = model.isTraining();
        model.eval();
        int[] seq = Arrays.copyOf(prompt, prompt.length + maxNew);
        int len = prompt.length;
        try (var ng = Tape.noGradScope()) {
            for (int i = 0; i < maxNew; i++) {
                int start = Math.max(0, len - model.blockSize());
                int t = len - start;
                double[] logits;
                try (var scope = MemoryScope.open()) {
                    Tensor out = model.forward(model.ids(Arrays.copyOfRange(seq, start, len), 1, t));
                    Tensor last = out.selectView(0, 0).selectView(0, t - 1);
                    logits = last.contiguous().toDoubleArray(); // the last row only comes back from a device
                }
                seq[len++] = pick(logits, temperature, topK, rng);
            }
        } finally {
            model.train(wasTraining);
        }
        return seq;
    }

    static int pick(double[] logits, double temperature, int topK, Rng rng) {
        int v = logits.length;
        if (temperature <= 0) {
            int best = 0;
            for (int j = 1; j < v; j++) if (logits[j] > logits[best]) best = j;
            return best;
        }
        double cutoff = Double.NEGATIVE_INFINITY;
        if (topK > 0 && topK < v) {
            double[] sorted = logits.clone();
            Arrays.sort(sorted);
            cutoff = sorted[v - topK];
        }
        double max = Double.NEGATIVE_INFINITY;
        for (double l : logits) max = Math.max(max, l);
        double[] p = new double[v];
        double sum = 0;
        for (int j = 0; j < v; j++) {
            p[j] = logits[j] < cutoff ? 0 : Math.exp((logits[j] - max) / temperature);
            sum += p[j];
        }
        double u = rng.nextDouble() * sum, acc = 0;
        for (int j = 0; j < v; j++) {
            acc += p[j];
            if (u < acc) return j;
        }
        return v - 1;
    }
}
