package dev.kiln.tensor;

/**
 * A snapshot of one device's memory account: live and peak bytes per {@link MemoryCategory}, the
 * live total, the peak of the total (not the sum of the per-category peaks, which need not coincide)
 * and the allocator's reserved-but-free bytes (cached blocks, not counted in any category).
 */
public record MemoryUsage(Device device, long[] liveBytes, long[] peakBytes, long liveTotal, long peakTotal, long reserved) {

    public long live(MemoryCategory c) {
        return liveBytes[c.ordinal()];
    }

    public long peak(MemoryCategory c) {
        return peakBytes[c.ordinal()];
    }
}
