package dev.kiln.plan;

import dev.kiln.nn.Recompute;
import dev.kiln.tensor.MemoryCategory;

/**
 * One combination of techniques, its predicted peak device memory per category and in total, and its cost
 * relative to the plain configuration (1.0 = the same time per step).
 *
 * @param stateSettings the config overrides of {@code state} ({@link StateOption#settings})
 * @param implemented   whether Kiln trains the combination today (otherwise it is a planned one's estimate)
 */
public record PlanRow(Recompute recompute, int microBatch, int accumSteps, StateOption state, String stateSettings, boolean implemented,
                      long[] peakBytes, long peakTotal, double relativeCost) {

    public long peak(MemoryCategory c) {
        return peakBytes[c.ordinal()];
    }

    public boolean fits(long deviceBytes) {
        return peakTotal <= deviceBytes;
    }

    /** The overrides that select this row's techniques, e.g. "train.recompute=full train.batch_size=2 train.grad_accum_steps=4". */
    public String settings() {
        String s = "train.recompute=" + recompute.key() + " train.batch_size=" + microBatch + " train.grad_accum_steps=" + accumSteps;
        return stateSettings.isEmpty() ? s : s + " " + stateSettings;
    }
}
