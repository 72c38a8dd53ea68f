package dev.kiln.backend.cuda;

import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.SplittableRandom;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** The caching allocator's logic against a fake device that counts raw allocations and enforces a capacity. */
class CudaAllocatorTest {

    /** Hands out disjoint address ranges; 0 when the capacity would be exceeded, like cuMemAlloc's OOM. */
    static final class FakeDevice implements DeviceMemory {
        final long capacity;
        final Map<Long, Long> live = new HashMap<>();
        long next = 0x7f0000000000L, used, allocs, frees;

        FakeDevice(long capacity) {
            this.capacity = capacity;
        }

        @Override
        public long allocate(long bytes) {
            if (used + bytes > capacity) return 0;
            long a = next;
            next += bytes + 4096;
            live.put(a, bytes);
            used += bytes;
            allocs++;
            return a;
        }

        @Override
        public void free(long address) {
            Long b = live.remove(address);
            if (b == null) throw new AssertionError("free of unknown address " + address);
            used -= b;
            frees++;
        }

        @Override
        public long[] memoryInfo() {
            return new long[] {capacity - used, capacity};
        }
    }

    private static final long MiB = 1L << 20;

    @Test
    void smallRequestsShareOneSegmentAndDoNotOverlap() {
        FakeDevice dev = new FakeDevice(1L << 30);
        CudaAllocator a = new CudaAllocator(dev, "fake:0");
        List<CudaAllocator.Block> blocks = new ArrayList<>();
        for (int i = 1; i <= 100; i++) blocks.add(a.allocate(i * 100L));
        assertEquals(1, dev.allocs, "100 small blocks (≤ 10 kB each) fit in one 2 MiB segment");
        assertEquals(2 * MiB, a.reservedBytes());
        long sum = 0;
        for (var b : blocks) {
            assertEquals(0, b.byteSize() % 512);
            sum += b.byteSize();
        }
        assertEquals(sum, a.allocatedBytes());
        blocks.sort(java.util.Comparator.comparingLong(CudaAllocator.Block::address));
        for (int i = 1; i < blocks.size(); i++)
            assertTrue(blocks.get(i - 1).address() + blocks.get(i - 1).byteSize() <= blocks.get(i).address(), "blocks overlap");
    }

    @Test
    void freedBlocksMergeBackIntoTheWholeSegment() {
        FakeDevice dev = new FakeDevice(1L << 30);
        CudaAllocator a = new CudaAllocator(dev, "fake:0");
        var x = a.allocate(1000);
        var y = a.allocate(3000);
        var z = a.allocate(5000);
        y.free();
        x.free();
        z.free();
        assertEquals(0, a.allocatedBytes());
        // the segment is whole again: a 2 MiB-fitting 1 MiB request reuses it
        var big = a.allocate(MiB);
        assertEquals(1, dev.allocs);
        assertEquals(x.address(), big.address());
        big.free();
        a.emptyCache();
        assertEquals(0, a.reservedBytes());
        assertEquals(1, dev.frees);
        assertTrue(dev.live.isEmpty());
    }

    @Test
    void bestFitPicksTheSmallestFreeBlockThatFits() {
        FakeDevice dev = new FakeDevice(1L << 34);
        CudaAllocator a = new CudaAllocator(dev, "fake:0");
        var big = a.allocate(64 * MiB);       // its own 64 MiB segment
        var mid = a.allocate(24 * MiB);       // its own 24 MiB segment
        big.free();
        mid.free();
        var got = a.allocate(20 * MiB);
        assertEquals(mid.address(), got.address(), "the 24 MiB block fits more tightly than the 64 MiB one");
        assertEquals(2, dev.allocs);
    }

    @Test
    void largeAndSmallPoolsAreSeparate() {
        FakeDevice dev = new FakeDevice(1L << 32);
        CudaAllocator a = new CudaAllocator(dev, "fake:0");
        var large = a.allocate(3 * MiB);      // a 20 MiB segment of the large pool
        var small = a.allocate(4096);         // must not be carved from the large segment
        assertEquals(2, dev.allocs);
        assertEquals(20 * MiB + 2 * MiB, a.reservedBytes());
        var large2 = a.allocate(5 * MiB);     // fits the rest of the 20 MiB segment
        assertEquals(2, dev.allocs);
        assertEquals(large.address() + 3 * MiB, large2.address());
        small.free();
        large.free();
        large2.free();
    }

    /** A step's requests: small (≤ 4 kB), medium (≤ 2 MiB) and large (1–65 MiB) in a fixed random mix. */
    private static long[] stepSizes(int seed) {
        SplittableRandom r = new SplittableRandom(seed);
        long[] sizes = new long[300];
        for (int i = 0; i < sizes.length; i++) {
            int kind = r.nextInt(3);
            sizes[i] = kind == 0 ? 1 + r.nextInt(4096) : kind == 1 ? 1 + r.nextInt(2 << 20) : (1L << 20) + r.nextLong(64L << 20);
        }
        return sizes;
    }

    /**
     * Kiln's step: parameters and optimizer state live across steps; every temporary of a step belongs to
     * its MemoryScope and is freed when the step ends. After the first step, no raw allocation at all.
     */
    @ParameterizedTest
    @ValueSource(ints = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20})
    void scopedTrainingStepsDoNoRawAllocationAfterTheFirst(int seed) {
        FakeDevice dev = new FakeDevice(1L << 36);
        CudaAllocator a = new CudaAllocator(dev, "fake:0");
        long[] sizes = stepSizes(seed);
        List<CudaAllocator.Block> persistent = new ArrayList<>();
        for (int i = 0; i < 20; i++) persistent.add(a.allocate(sizes[i * 7] / 2 + 1));
        long afterFirst = -1, reservedAfterFirst = -1;
        for (int step = 0; step < 6; step++) {
            List<CudaAllocator.Block> scope = new ArrayList<>();
            for (long size : sizes) scope.add(a.allocate(size));
            for (var b : scope) b.free();
            if (step == 0) {
                afterFirst = dev.allocs;
                reservedAfterFirst = a.reservedBytes();
            } else {
                assertEquals(afterFirst, dev.allocs, "step " + step + " took new raw device memory");
                assertEquals(reservedAfterFirst, a.reservedBytes());
            }
        }
        assertEquals(0, dev.frees, "nothing is given back during training");
        assertEquals(20 + 6L * sizes.length, a.requests());
        for (var b : persistent) b.free();
        assertEquals(0, a.allocatedBytes());
        assertTrue(a.peakAllocatedBytes() > 0 && a.peakAllocatedBytes() <= a.peakReservedBytes());
    }

    /**
     * With frees in the middle of a step (tensors released early), a step that starts from a warm cache can lay
     * blocks out differently from the first one, which started empty, so it may still take a segment. But the
     * allocator is deterministic and a step ends with every segment whole again: once one step takes no new
     * segment, the next starts from the same state, and so no later step takes one either.
     */
    @ParameterizedTest
    @ValueSource(ints = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20})
    void stepsWithEarlyFreesStopTakingMemoryOnceOneStepTakesNone(int seed) {
        FakeDevice dev = new FakeDevice(1L << 36);
        CudaAllocator a = new CudaAllocator(dev, "fake:0");
        long[] sizes = stepSizes(seed);
        SplittableRandom r = new SplittableRandom(-seed);
        boolean[] freeEarly = new boolean[sizes.length];
        for (int i = 0; i < sizes.length; i++) freeEarly[i] = r.nextInt(3) == 0;
        int settled = -1;
        long before = 0;
        for (int step = 0; step < 16; step++) {
            List<CudaAllocator.Block> live = new ArrayList<>();
            for (int i = 0; i < sizes.length; i++) {
                live.add(a.allocate(sizes[i]));
                if (i >= 10 && freeEarly[i - 10]) {
                    live.get(i - 10).free();
                    live.set(i - 10, null);
                }
            }
            for (var b : live) if (b != null) b.free();
            assertEquals(0, a.allocatedBytes());
            if (step > 0 && dev.allocs == before && settled < 0) settled = step;
            if (settled >= 0) assertEquals(before, dev.allocs, "step " + step + " took memory after step " + settled + " took none");
            before = dev.allocs;
        }
        assertTrue(settled > 0, "no step without new memory in 16 steps");
        assertEquals(0, dev.frees);
    }

    @Test
    void outOfMemoryReleasesTheCacheRetriesAndThenNamesTheRequest() {
        FakeDevice dev = new FakeDevice(100 * MiB);
        CudaAllocator a = new CudaAllocator(dev, "cuda:0 (Fake GPU)");
        var keep = a.allocate(40 * MiB);
        var cached = a.allocate(50 * MiB);
        cached.free();                                   // 50 MiB cached in a free segment
        var again = a.allocate(56 * MiB);                // no room until the cached segment is returned
        assertEquals(1, dev.frees, "the free cached segment was returned to make room");
        assertNotEquals(0, again.address());
        CudaAllocator.OutOfDeviceMemory e = assertThrows(CudaAllocator.OutOfDeviceMemory.class, () -> a.allocate(30 * MiB));
        String m = e.getMessage();
        assertFalse(m.contains("\n"), m);
        assertTrue(m.startsWith("CUDA out of memory on cuda:0 (Fake GPU): allocating 30.0 MiB"), m);
        assertTrue(m.contains("Kiln holds 96.0 MiB in tensors, 96.0 MiB reserved"), m);
        assertTrue(m.contains("the device has 4.0 MiB free of 100.0 MiB"), m);
        assertTrue(m.contains("train.batch_size"), m);
        keep.free();
        again.free();
    }

    @Test
    void doubleFreeIsAnErrorAndZeroBytesStillGetABlock() {
        CudaAllocator a = new CudaAllocator(new FakeDevice(1L << 30), "fake:0");
        var z = a.allocate(0);
        assertEquals(512, z.byteSize());
        z.free();
        IllegalStateException e = assertThrows(IllegalStateException.class, z::free);
        assertTrue(e.getMessage().contains("freed twice"), e.getMessage());
        assertThrows(IllegalArgumentException.class, () -> a.allocate(-1));
    }
}
