package dev.kiln.tensor;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.ArrayDeque;
import java.util.HashMap;
import java.util.Map;

/**
 * Caching allocator for host memory: freed blocks are kept per (64-byte rounded) size and handed
 * out again, so a training step that allocates the same tensors every step reaches a steady state
 * with no new allocations. Blocks are 64-byte aligned for vector loads.
 */
public final class HostAllocator {
    private static final Map<Long, ArrayDeque<MemorySegment>> FREE = new HashMap<>();
    private static long bytesInUse, bytesCached, peakInUse, fresh, allocations;
    private static long limit = Long.MAX_VALUE;

    private HostAllocator() {}

    static long blockSize(long bytes) {
        return Math.max(64, (bytes + 63) & ~63L);
    }

    /** A block of at least {@code bytes} bytes (exactly {@link #blockSize}); contents undefined. */
    static synchronized MemorySegment allocate(long bytes) {
        long size = blockSize(bytes);
        ArrayDeque<MemorySegment> q = FREE.get(size);
        MemorySegment seg = q == null ? null : q.pollFirst();
        if (seg == null) {
            if (bytesInUse + size > limit) {
                trim(); // cached blocks of other sizes count towards the limit: give them back first
                if (bytesInUse + bytesCached + size > limit) throw outOfMemory(size, null);
            }
            try {
                seg = Arena.ofAuto().allocate(size, 64);
            } catch (OutOfMemoryError e) {
                throw outOfMemory(size, e);
            }
            fresh++;
        } else {
            bytesCached -= size;
        }
        bytesInUse += size;
        allocations++;
        peakInUse = Math.max(peakInUse, bytesInUse);
        return seg;
    }

    /**
     * Caps the host memory of tensors (bytes; Long.MAX_VALUE = none). Explicit process-wide
     * device configuration, set once at start-up.
     */
    public static synchronized void setLimit(long bytes) {
        limit = bytes <= 0 ? Long.MAX_VALUE : bytes;
    }

    /** Drops every cached (free) block; their memory returns to the system when collected. */
    public static synchronized void trim() {
        FREE.clear();
        bytesCached = 0;
    }

    private static OutOfHostMemory outOfMemory(long size, OutOfMemoryError cause) {
        String lim = limit == Long.MAX_VALUE ? "the machine's memory" : "the limit of " + mib(limit) + " (faults.host_memory_limit_mib)";
        return new OutOfHostMemory(String.format("out of host memory: a tensor of %s did not fit (%s in use, %s; peak %s). "
                + "Lower train.batch_size or model.block_size / n_embd, or turn on activation recomputation or gradient "
                + "accumulation when available", mib(size), mib(bytesInUse), lim, mib(peakInUse)), cause);
    }

    private static String mib(long bytes) {
        return String.format("%.1f MiB", bytes / 1048576.0);
    }

    /** Tensor memory exhausted; the message names the size that failed and what to change. */
    public static final class OutOfHostMemory extends dev.kiln.KilnException {
        OutOfHostMemory(String message, Throwable cause) {
            super(message, cause);
        }
    }

    static synchronized void free(MemorySegment block) {
        long size = block.byteSize();
        bytesInUse -= size;
        bytesCached += size;
        FREE.computeIfAbsent(size, k -> new ArrayDeque<>()).addFirst(block);
    }

    public static synchronized long bytesInUse() {
        return bytesInUse;
    }

    public static synchronized long peakBytesInUse() {
        return peakInUse;
    }

    public static synchronized long bytesCached() {
        return bytesCached;
    }

    /** How many host blocks were handed out so far, from the cache or the system: every host tensor's memory is one. */
    public static synchronized long allocations() {
        return allocations;
    }

    /** How many blocks were obtained from the system (not from the cache) so far. */
    public static synchronized long freshAllocations() {
        return fresh;
    }
}
