package dev.kiln.backend.cuda;

import dev.kiln.KilnException;
import dev.kiln.backend.cuda.Kernels.Launch;
import org.junit.jupiter.api.Test;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** The catalog's launch rules and argument packing (what both NVRTC launches and the emulator use). */
class KernelsTest {
    private static final MemorySegment P = MemorySegment.NULL;

    @Test
    void launchGeometryFollowsEachRule() {
        // a warp per row, 8 rows per 256-thread block: 37 rows need 5 blocks
        assertEquals(new Launch(5, 256, 0), Kernels.get("layernorm_forward_f32").launch(P, P, P, P, P, P, 37, 53, 1e-5f));
        // a block per row
        assertEquals(new Launch(13, 256, 0), Kernels.get("crossentropy_forward_bf16").launch(P, P, P, P, P, 13, 1031, -100, 0f, 0f));
        // a thread per column
        assertEquals(new Launch(2, 256, 0), Kernels.get("sum_rows_f32").launch(P, P, 301, 259));
        // grid-stride elements: ⌈n/256⌉ blocks up to the cap; size from several parameters (n·c)
        assertEquals(new Launch(17, 256, 0), Kernels.get("gelu_forward_f32").launch(P, P, 4099));
        assertEquals(new Launch(Kernels.MAX_GRID, 256, 0), Kernels.get("gelu_forward_f32").launch(P, P, 1 << 30));
        assertEquals(new Launch(8, 256, 0), Kernels.get("embedding_forward_f32").launch(P, P, P, P, 29, 67, 11));
        assertEquals(new Launch(Kernels.MAX_PARTIALS, 256, 0), Kernels.get("sum_squares_partial_f32").launch(P, P, 100_003));
        assertEquals(new Launch(1, 256, 0), Kernels.get("sum_partials").launch(P, P, 256));
    }

    @Test
    void packLaysOutKernelParamsAsCuLaunchKernelReadsThem() {
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment x = arena.allocate(64);
            MemorySegment params = Kernels.get("axpy_f32").pack(arena, 0.5, x, 1234L, 7);
            MemorySegment[] slots = new MemorySegment[4];
            for (int i = 0; i < 4; i++) slots[i] = params.getAtIndex(ValueLayout.ADDRESS, i).reinterpret(8);
            assertEquals(0.5f, slots[0].get(ValueLayout.JAVA_FLOAT, 0));
            assertEquals(x.address(), slots[1].get(ValueLayout.JAVA_LONG, 0));
            assertEquals(1234L, slots[2].get(ValueLayout.JAVA_LONG, 0), "a Long is a device address");
            assertEquals(7, slots[3].get(ValueLayout.JAVA_INT, 0));
        }
    }

    @Test
    void badCallsNameTheKernelAndArgument() {
        var wrongCount = assertThrows(KilnException.class, () -> Kernels.get("scale_bf16").launch(P, 2f));
        assertEquals("kernel scale_bf16 takes 3 arguments (x:P, alpha:F, n:I), got 2", wrongCount.getMessage());
        var wrongKind = assertThrows(KilnException.class, () -> Kernels.get("scale_bf16").launch(P, 2f, 3L));
        assertEquals("kernel scale_bf16: argument n must be INT, got Long", wrongKind.getMessage());
        var empty = assertThrows(KilnException.class, () -> Kernels.get("scale_bf16").launch(P, 2f, 0));
        assertTrue(empty.getMessage().contains("launch size 0"), empty.getMessage());
        var unknown = assertThrows(KilnException.class, () -> Kernels.get("softmax_forward_f16"));
        assertTrue(unknown.getMessage().startsWith("no CUDA kernel named softmax_forward_f16"), unknown.getMessage());
    }
}
