package dev.kiln.backend.cuda;

import dev.kiln.KilnException;
import dev.kiln.tensor.DeviceBlock;

import java.util.ArrayList;
import java.util.Comparator;
import java.util.List;
import java.util.TreeSet;

/**
 * The caching allocator for one device (after PyTorch's): raw memory is taken in segments and never
 * given back during training; requests are rounded to 512 bytes and served best-fit from free blocks of
 * their pool. Three pools keep sizes apart so small blocks do not fragment big ones: requests up to 1 MiB
 * are carved from 2 MiB segments, those under 10 MiB from 20 MiB segments (blocks split when the rest can
 * serve a request, merged with free neighbours when freed), larger ones take a whole segment of their size
 * rounded up to 2 MiB, never split, and never one more than 20 MiB larger than asked. A training step whose
 * temporaries are all freed when it ends (a MemoryScope) thus does no raw allocation after its first
 * iteration; with frees inside the step the first warm steps may still add a segment or two, and once a
 * step adds none no later step does (the tests check both).
 *
 * <p>Stream order: all work on the memory is issued on the device's one compute stream, so a block freed
 * by the host can be handed out again at once: later kernels that reuse it are ordered after the ones that
 * used it. (Memory used on another stream must be freed only after that stream is synchronised.)
 *
 * <p>Out of memory: cached free segments are released and the raw allocation tried once more; then a
 * {@link OutOfDeviceMemory} names the request, what Kiln holds and what the device has left.
 */
public final class CudaAllocator {
    static final long ROUND = 512;
    static final long SMALL_REQUEST = 1L << 20;       // ≤ 1 MiB: small pool
    static final long SMALL_SEGMENT = 2L << 20;
    static final long MEDIUM_REQUEST = 10L << 20;     // < 10 MiB: a 20 MiB segment holds several
    static final long MEDIUM_SEGMENT = 20L << 20;
    static final long SEGMENT_ROUND = 2L << 20;

    private final DeviceMemory device;
    private final String deviceName;
    private final TreeSet<Block> smallFree = new TreeSet<>(BY_SIZE), mediumFree = new TreeSet<>(BY_SIZE), largeFree = new TreeSet<>(BY_SIZE);
    private final List<Block> segments = new ArrayList<>();   // first block of each segment
    private long allocated, reserved, peakAllocated, peakReserved, rawAllocs, rawFrees, requests;

    private static final Comparator<Block> BY_SIZE = Comparator.comparingLong((Block b) -> b.size).thenComparingLong(b -> b.address);

    public CudaAllocator(DeviceMemory device, String deviceName) {
        this.device = device;
        this.deviceName = deviceName;
    }

    /** A block of a segment; handed out while {@code allocated}. */
    public final class Block implements DeviceBlock {
        private final long address;
        private long size;
        private final Pool pool;
        private Block prev, next;     // neighbours in the same segment
        private boolean inUse;
        private final long segmentBase;

        private Block(long address, long size, Pool pool, long segmentBase) {
            this.address = address;
            this.size = size;
            this.pool = pool;
            this.segmentBase = segmentBase;
        }

        @Override
        public long address() {
            return address;
        }

        /** The rounded size actually held. */
        @Override
        public long byteSize() {
            return size;
        }

        @Override
        public void free() {
            release(this);
        }
    }

    /** Which free set a block belongs to: requests of a class are only served from segments of that class. */
    private enum Pool { SMALL, MEDIUM, LARGE }

    private TreeSet<Block> free(Pool p) {
        return switch (p) {
            case SMALL -> smallFree;
            case MEDIUM -> mediumFree;
            case LARGE -> largeFree;
        };
    }

    static long roundUp(long bytes, long to) {
        return (bytes + to - 1) / to * to;
    }

    /** A block of at least {@code bytes} (rounded up to 512; 0 bytes still get a block). */
    public synchronized Block allocate(long bytes) {
        if (bytes < 0) throw new IllegalArgumentException("negative allocation of " + bytes + " bytes");
        long size = Math.max(ROUND, roundUp(bytes, ROUND));
        Pool p = size <= SMALL_REQUEST ? Pool.SMALL : size < MEDIUM_REQUEST ? Pool.MEDIUM : Pool.LARGE;
        TreeSet<Block> pool = free(p);
        Block b = pool.ceiling(new Block(-1, size, p, -1));
        // a large request takes a whole block and never splits it; one far bigger is left for a bigger request
        if (b != null && p == Pool.LARGE && b.size > size + MEDIUM_SEGMENT) b = null;
        if (b == null) {
            b = newSegment(size, p, bytes);
            pool.add(b);
        }
        pool.remove(b);
        long rest = b.size - size;
        // keep the rest as a free block if it can serve a request of its pool (PyTorch's rule)
        if (p == Pool.SMALL ? rest >= ROUND : p == Pool.MEDIUM && rest > SMALL_REQUEST) {
            Block tail = new Block(b.address + size, rest, p, b.segmentBase);
            tail.prev = b;
            tail.next = b.next;
            if (b.next != null) b.next.prev = tail;
            b.next = tail;
            b.size = size;
            pool.add(tail);
        }
        b.inUse = true;
        allocated += b.size;
        peakAllocated = Math.max(peakAllocated, allocated);
        requests++;
        return b;
    }

    private Block newSegment(long size, Pool p, long requested) {
        long segSize = switch (p) {
            case SMALL -> SMALL_SEGMENT;
            case MEDIUM -> MEDIUM_SEGMENT;
            case LARGE -> roundUp(size, SEGMENT_ROUND);
        };
        long addr = device.allocate(segSize);
        if (addr == 0) {
            emptyCache();
            addr = device.allocate(segSize);
            if (addr == 0) throw outOfMemory(requested, segSize);
        }
        rawAllocs++;
        reserved += segSize;
        peakReserved = Math.max(peakReserved, reserved);
        Block seg = new Block(addr, segSize, p, addr);
        segments.add(seg);
        return seg;
    }

    private synchronized void release(Block b) {
        if (!b.inUse) throw new IllegalStateException("device block at 0x" + Long.toHexString(b.address) + " freed twice");
        b.inUse = false;
        allocated -= b.size;
        TreeSet<Block> pool = free(b.pool);
        Block merged = b;
        if (merged.prev != null && !merged.prev.inUse) {           // absorb into the free predecessor
            Block p = merged.prev;
            pool.remove(p);
            p.size += merged.size;
            p.next = merged.next;
            if (merged.next != null) merged.next.prev = p;
            merged = p;
        }
        if (merged.next != null && !merged.next.inUse) {           // absorb the free successor
            Block n = merged.next;
            pool.remove(n);
            merged.size += n.size;
            merged.next = n.next;
            if (n.next != null) n.next.prev = merged;
        }
        pool.add(merged);
    }

    /** Returns every wholly free segment to the device (as torch.cuda.empty_cache()). */
    public synchronized void emptyCache() {
        for (var it = segments.iterator(); it.hasNext(); ) {
            Block s = it.next();
            if (!s.inUse && s.next == null && s.prev == null) {
                free(s.pool).remove(s);
                device.free(s.address);
                rawFrees++;
                reserved -= s.size;
                it.remove();
            }
        }
    }

    private OutOfDeviceMemory outOfMemory(long requested, long segment) {
        long[] info = device.memoryInfo();
        String dev = info == null ? "" : String.format("; the device has %s free of %s", size(info[0]), size(info[1]));
        return new OutOfDeviceMemory(String.format(
                "CUDA out of memory on %s: allocating %s (a %s segment) failed; Kiln holds %s in tensors, %s reserved (peak %s)%s. "
                        + "Lower train.batch_size or model.block_size, or turn on activation recomputation or gradient accumulation",
                deviceName, size(requested), size(segment), size(allocated), size(reserved), size(peakAllocated), dev));
    }

    static String size(long bytes) {
        if (bytes >= 1L << 30) return String.format("%.2f GiB", bytes / (double) (1L << 30));
        if (bytes >= 1L << 20) return String.format("%.1f MiB", bytes / (double) (1L << 20));
        return bytes + " bytes";
    }

    /** The device ran out of memory; the message names the request and what to change. */
    public static final class OutOfDeviceMemory extends KilnException {
        OutOfDeviceMemory(String message) {
            super(message);
        }
    }

    /** Bytes in blocks handed out (rounded sizes). */
    public synchronized long allocatedBytes() {
        return allocated;
    }

    /** Bytes in segments taken from the device. */
    public synchronized long reservedBytes() {
        return reserved;
    }

    public synchronized long peakAllocatedBytes() {
        return peakAllocated;
    }

    public synchronized long peakReservedBytes() {
        return peakReserved;
    }

    /** Raw device allocations (cuMemAlloc calls) so far: flat in a steady-state training loop. */
    public synchronized long rawAllocations() {
        return rawAllocs;
    }

    public synchronized long rawFrees() {
        return rawFrees;
    }

    /** allocate() calls so far. */
    public synchronized long requests() {
        return requests;
    }

    public synchronized int segmentCount() {
        return segments.size();
    }

    @Override
    public synchronized String toString() {
        return String.format("CudaAllocator[%s: %s allocated, %s reserved in %d segments, %d raw allocations]",
                deviceName, size(allocated), size(reserved), segments.size(), rawAllocs);
    }
}
