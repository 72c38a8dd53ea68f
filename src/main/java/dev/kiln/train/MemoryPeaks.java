package dev.kiln.train;

import com.fasterxml.jackson.databind.node.ObjectNode;
import dev.kiln.tensor.Device;
import dev.kiln.tensor.MemoryCategory;
import dev.kiln.tensor.MemoryTracker;
import dev.kiln.tensor.MemoryUsage;

/**
 * A run's (or a benchmark's) peak memory by category: the {@link MemoryTracker}'s peaks since {@link #start()}
 * (or {@link #restart()}), less what was live at the start (memory of earlier work in the same process, e.g. other tests, is not this run's).
 * Written to metrics.jsonl as {@code mem_peak_<category>} bytes, {@code mem_peak_total} and {@code mem_reserved}
 * (the allocator's cached free bytes), and printed at the end of a run.
 */
public final class MemoryPeaks {
    private final Device device;
    private final MemoryUsage base;

    private MemoryPeaks(Device device, MemoryUsage base) {
        this.device = device;
        this.base = base;
    }

    /** Starts a new peak window on the host now. */
    public static MemoryPeaks start() {
        return start(Device.CPU);
    }

    /** Starts a new peak window on {@code device} (a run's training device) now. */
    public static MemoryPeaks start(Device device) {
        MemoryTracker.resetPeaks();
        return new MemoryPeaks(device, MemoryTracker.usage(device));
    }

    /**
     * Restarts the peak window, keeping the baseline: called once the model and optimizer are built, so the peaks
     * are those of training, not of the initial values that construction copies into parameters and then frees.
     */
    public void restart() {
        MemoryTracker.resetPeaks();
    }

    /** Peak bytes of {@code c} since the start, above what was live at the start. */
    public long peak(MemoryCategory c) {
        return MemoryTracker.usage(device).peak(c) - base.live(c);
    }

    /** Peak of all categories together (not the sum of their peaks). */
    public long peakTotal() {
        return MemoryTracker.usage(device).peakTotal() - base.liveTotal();
    }

    public ObjectNode record(ObjectNode rec) {
        for (MemoryCategory c : MemoryCategory.values()) rec.put("mem_peak_" + c.key(), peak(c));
        return rec.put("mem_peak_total", peakTotal()).put("mem_reserved", MemoryTracker.usage(device).reserved());
    }

    /** One line: the peak of each category and of the total, in MiB. */
    public String summary() {
        StringBuilder s = new StringBuilder("peak memory on " + device + ":");
        for (MemoryCategory c : MemoryCategory.values()) s.append(String.format(" %s %s,", c.key(), mib(peak(c))));
        return s.append(String.format(" total %s (allocator cache: %s free)", mib(peakTotal()), mib(MemoryTracker.usage(device).reserved()))).toString();
    }

    private static String mib(long bytes) {
        return String.format("%.1f MiB", bytes / 1048576.0);
    }
}
