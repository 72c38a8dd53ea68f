package dev.kiln.plan;

import dev.kiln.tensor.MemoryCategory;

/** Predicted peak bytes of each {@link MemoryCategory} and of their sum over one training step. */
public record Prediction(long[] peakBytes, long peakTotal) {
    public long peak(MemoryCategory c) {
        return peakBytes[c.ordinal()];
    }
}
