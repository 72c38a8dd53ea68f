package dev.kiln.tensor;

import java.util.LinkedHashMap;
import java.util.Map;

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

    /** Peak bytes by category key (parameters, gradients, …), in enum order. */
    public Map<String, Long> peaks() {
        Map<String, Long> out = new LinkedHashMap<>();
        for (MemoryCategory c : MemoryCategory.values()) out.put(c.key(), peak(c));
        return out;
    }

    /** One line: peak per category and total, in MiB. */
    public String summary() {
        StringBuilder s = new StringBuilder("peak memory on " + device + ":");
        for (MemoryCategory c : MemoryCategory.values()) s.append(String.format(" %s %.1f MiB,", c.key(), peak(c) / 1048576.0));
        return s.append(String.format(" total %.1f MiB (allocator cache %.1f MiB free)", peakTotal / 1048576.0, reserved / 1048576.0)).toString();
    }
}
