package dev.kiln.plan;

import dev.kiln.tensor.MemoryCategory;

/**
 * A symbolic allocation timeline: blocks charged to categories and freed again, in program order, with the
 * live and peak bytes the {@link dev.kiln.tensor.MemoryTracker} would see. Sizes are rounded as the host
 * allocator rounds them (64-byte blocks), so a faithful walk of a step predicts the account exactly.
 */
final class Timeline {
    private static final int N = MemoryCategory.values().length;
    private final long[] live = new long[N], peak = new long[N];
    private long liveTotal, peakTotal;
    private MemoryCategory current = MemoryCategory.TEMPORARIES;

    /** One allocated block (its bytes and category) so that it can be freed or re-attributed. */
    static final class Block {
        final long bytes;
        MemoryCategory category;
        boolean freed;

        private Block(long bytes, MemoryCategory category) {
            this.bytes = bytes;
            this.category = category;
        }
    }

    /** The host allocator's block size for a tensor of {@code bytes}. */
    static long rounded(long bytes) {
        return Math.max(64, (bytes + 63) & ~63L);
    }

    /** Allocations from now on go to {@code c}; returns the previous category (to restore). */
    MemoryCategory attribute(MemoryCategory c) {
        MemoryCategory was = current;
        current = c;
        return was;
    }

    /** An fp32 tensor of {@code elements}. */
    Block f32(long elements) {
        return alloc(4 * elements);
    }

    Block alloc(long bytes) {
        return alloc(bytes, current);
    }

    /** A block of {@code bytes} charged to {@code c}, whatever the current category. */
    Block alloc(long bytes, MemoryCategory c) {
        Block b = new Block(rounded(bytes), c);
        int i = b.category.ordinal();
        live[i] += b.bytes;
        peak[i] = Math.max(peak[i], live[i]);
        liveTotal += b.bytes;
        peakTotal = Math.max(peakTotal, liveTotal);
        return b;
    }

    void free(Block b) {
        if (b == null || b.freed) return;
        b.freed = true;
        live[b.category.ordinal()] -= b.bytes;
        liveTotal -= b.bytes;
    }

    void reattribute(Block b, MemoryCategory to) {
        live[b.category.ordinal()] -= b.bytes;
        b.category = to;
        live[to.ordinal()] += b.bytes;
        peak[to.ordinal()] = Math.max(peak[to.ordinal()], live[to.ordinal()]);
    }

    long peak(MemoryCategory c) {
        return peak[c.ordinal()];
    }

    long peakTotal() {
        return peakTotal;
    }
}
