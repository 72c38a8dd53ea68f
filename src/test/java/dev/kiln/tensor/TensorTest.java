package dev.kiln.tensor;

import org.junit.jupiter.api.Test;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

class TensorTest {

    @Test
    void viewsShareMemoryAndFollowStrides() {
        Tensor t = Tensor.of(new float[]{0, 1, 2, 3, 4, 5}, 2, 3);
        Tensor tr = t.transposeView(0, 1);
        assertArrayEquals(new int[]{3, 2}, tr.shape());
        assertFalse(tr.isContiguous());
        assertArrayEquals(new float[]{0, 3, 1, 4, 2, 5}, tr.contiguous().toFloatArray());
        Tensor s = t.sliceView(1, 1, 3);
        assertArrayEquals(new float[]{1, 2, 4, 5}, s.toFloatArray());
        s.set(9, 1, 0);
        assertEquals(9, t.get(1, 1), "a view writes through to its base");
        assertArrayEquals(new float[]{3, 9, 5}, t.selectView(0, 1).toFloatArray());
        assertArrayEquals(new float[]{0, 3, 1, 9, 2, 5}, t.permuteView(1, 0).contiguous().toFloatArray());
        assertArrayEquals(new float[]{0, 1, 2, 0, 1, 2}, Tensor.of(new float[]{0, 1, 2}, 3).expandView(2, 3).toFloatArray());
        assertThrows(IllegalArgumentException.class, () -> t.view(4, 2));
        assertThrows(IllegalStateException.class, () -> tr.view(6));
    }

    @Test
    void bf16RoundsToNearestEvenAndKeepsSpecials() {
        // 1 + 2^-8 is exactly halfway between two bf16 values: ties go to the even one (1.0)
        assertEquals(1.0f, DType.bf16ToFloat(DType.floatToBf16(1f + 0x1p-8f)));
        // 1 + 3·2^-8 is halfway too: rounds up to the even 1 + 2^-6
        assertEquals(1f + 0x1p-6f, DType.bf16ToFloat(DType.floatToBf16(1f + 3 * 0x1p-8f)));
        assertEquals(1f + 0x1p-7f, DType.bf16ToFloat(DType.floatToBf16(1f + 0x1p-7f + 0x1p-10f)), "below halfway rounds down");
        assertTrue(Float.isNaN(DType.bf16ToFloat(DType.floatToBf16(Float.NaN))));
        assertEquals(Float.POSITIVE_INFINITY, DType.bf16ToFloat(DType.floatToBf16(Float.POSITIVE_INFINITY)));
        assertEquals(Float.POSITIVE_INFINITY, DType.bf16ToFloat(DType.floatToBf16(Float.MAX_VALUE)), "overflow rounds to infinity");
    }

    @Test
    void halfPrecisionStorageRoundTrips() {
        Rng rng = new Rng(3);
        Tensor x = Tensor.randn(rng, 10, DType.F32, 1000);
        for (DType d : new DType[]{DType.BF16, DType.F16}) {
            Tensor h = x.to(d);
            assertEquals(d, h.dtype());
            assertEquals(2 * 1000, h.numel() * d.byteSize());
            double relBound = d == DType.BF16 ? 0x1p-8 : 0x1p-11; // half an ulp of an 8- / 11-bit significand
            for (int i = 0; i < 1000; i++) {
                double v = x.getFlat(i), r = h.getFlat(i);
                assertTrue(Math.abs(r - v) <= relBound * Math.abs(v) + 1e-7, d + " " + v + " -> " + r);
            }
            assertArrayEquals(h.to(DType.F32).toFloatArray(), h.to(DType.F32).to(d).to(DType.F32).toFloatArray(), "idempotent");
        }
        assertEquals(65504f, Tensor.of(new float[]{65504f}, 1).to(DType.F16).getFlat(0), "largest fp16 is exact");
    }

    @Test
    void scopeReleasesTemporariesAndUseAfterReleaseFailsLoudly() {
        Tensor escaped;
        try (var s = MemoryScope.open()) {
            escaped = Tensor.zeros(16, 16);
        }
        assertTrue(escaped.storage().isReleased());
        assertThrows(IllegalStateException.class, () -> escaped.getFlat(0));
        Tensor kept;
        try (var s = MemoryScope.open()) {
            try (var p = MemoryScope.persistent()) {
                kept = Tensor.zeros(4);
            }
        }
        assertEquals(0.0, kept.getFlat(3), "persistent allocations outlive the step scope");
    }

    @Test
    void aScopeClosedKeepingHandsItsMemoryToTheHandleAndTheEnclosingScope() {
        Tensor a, b;
        try (var step = MemoryScope.open()) {
            var micro = MemoryScope.open();
            a = Tensor.zeros(8);
            Runnable free = micro.closeKeeping();
            assertEquals(0.0, a.getFlat(7), "kept past its own scope");
            var micro2 = MemoryScope.open();
            b = Tensor.zeros(8);
            micro2.closeKeeping(); // never freed early: the step scope frees it
            free.run();
            assertTrue(a.storage().isReleased(), "the handle frees it before the step ends");
            assertEquals(0.0, b.getFlat(0));
            assertThrows(IllegalStateException.class, micro::closeKeeping);
        }
        assertTrue(b.storage().isReleased(), "the enclosing scope frees what was kept");
    }

    @Test
    void steadyStateStepsReuseCachedBlocks() {
        for (int i = 0; i < 3; i++) step();
        long before = HostAllocator.freshAllocations();
        for (int i = 0; i < 5; i++) step();
        assertEquals(before, HostAllocator.freshAllocations(), "the same allocations each step come from the cache");
    }

    private static void step() {
        try (var s = MemoryScope.open()) {
            Tensor.zeros(128, 64);
            Tensor.empty(DType.F32, 7, 9);
            Tensor.ofInts(new int[]{1, 2, 3}, 3);
        }
    }
}
