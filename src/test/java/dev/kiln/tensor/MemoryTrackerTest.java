package dev.kiln.tensor;

import dev.kiln.autograd.Tape;
import dev.kiln.ops.Activations;
import dev.kiln.ops.Linalg;
import dev.kiln.ops.Reduce;
import org.junit.jupiter.api.Test;

import static dev.kiln.tensor.MemoryCategory.*;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** The account charges each allocator block (64-byte rounded) to the category open when it was made. */
class MemoryTrackerTest {
    private static long delta(MemoryUsage after, MemoryUsage before, MemoryCategory c) {
        return after.live(c) - before.live(c);
    }

    @Test
    void mlpForwardBackwardIsChargedExactlyByCategory() throws Exception {
        int b = 3, in = 5, hidden = 7, out = 2;
        try (var scope = MemoryScope.open()) {
            MemoryUsage start = MemoryTracker.usage(Device.CPU);
            Tensor w1, b1, w2;
            try (var a = MemoryTracker.attribute(PARAMETERS)) {
                w1 = Tensor.randn(new Rng(1), 0.5, DType.F32, hidden, in).requiresGrad(true); // 140 B → 192
                b1 = Tensor.zeros(hidden).requiresGrad(true);                                  // 28 B → 64
                w2 = Tensor.randn(new Rng(2), 0.5, DType.F32, out, hidden).requiresGrad(true); // 56 B → 64
            }
            Tensor x = Tensor.randn(new Rng(3), 1, DType.F32, b, in); // unattributed: a temporary
            MemoryUsage built = MemoryTracker.usage(Device.CPU);
            assertEquals(192 + 64 + 64, delta(built, start, PARAMETERS));
            assertEquals(64, delta(built, start, TEMPORARIES));

            Tensor loss;
            try (var a = MemoryTracker.attribute(ACTIVATIONS)) {
                // saved for backward: h (by gelu), g (by the second linear), y (by sum); loss is the output
                loss = Reduce.sum(Linalg.linear(Activations.gelu(Linalg.linear(x, w1, b1)), w2, null));
            }
            MemoryUsage forward = MemoryTracker.usage(Device.CPU);
            long h = 128, g = 128, y = 64, scalar = 64; // 84, 84, 24 and 4 bytes, each one 64-byte-rounded block
            assertEquals(h + g + y + scalar, delta(forward, start, ACTIVATIONS));
            assertEquals(0, delta(forward, built, PARAMETERS) + delta(forward, built, GRADIENTS) + delta(forward, built, TEMPORARIES));

            MemoryTracker.resetPeaks();
            Tape.backward(loss);
            MemoryUsage backward = MemoryTracker.usage(Device.CPU);
            assertEquals(192 + 64 + 64, delta(backward, start, GRADIENTS), "the three .grad buffers, nothing for x");
            assertEquals(h + g + y + scalar, delta(backward, start, ACTIVATIONS), "backward frees no activation: the step scope does");
            // backward's interior gradients (dy, dg, dh) and the seed are temporaries, released as backward goes
            assertTrue(backward.peak(TEMPORARIES) - forward.live(TEMPORARIES) >= 64 + 128, "at least dg and dh were live together");
            assertEquals(backward.peak(ACTIVATIONS), forward.live(ACTIVATIONS), "peaks restart at resetPeaks");
            for (Tensor p : new Tensor[] {w1, b1, w2}) {
                assertEquals(GRADIENTS, p.grad().storage().category());
                p.grad().release();
            }
        }
        MemoryUsage end = MemoryTracker.usage(Device.CPU);
        assertTrue(end.reserved() >= 192 + 64 + 64, "freed blocks stay cached in the allocator, reported as reserved");
    }

    @Test
    void attributionsNestAndTheInnermostWins() {
        assertEquals(TEMPORARIES, MemoryTracker.current());
        try (var a = MemoryTracker.attribute(OPTIMIZER_STATE)) {
            try (var b = MemoryTracker.attribute(COMMUNICATION)) {
                assertEquals(COMMUNICATION, MemoryTracker.current());
            }
            assertEquals(OPTIMIZER_STATE, MemoryTracker.current());
        }
        assertEquals(TEMPORARIES, MemoryTracker.current());
    }
}
