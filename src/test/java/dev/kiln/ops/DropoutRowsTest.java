package dev.kiln.ops;

import dev.kiln.tensor.Rng;
import dev.kiln.tensor.Tensor;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotEquals;

/**
 * Data-parallel dropout: with a row share set, each rank's mask is exactly the single process's mask of its rows of
 * the global batch, and the generator ends where the single process's ends (so the next layer's masks line up too).
 */
class DropoutRowsTest {
    @AfterEach
    void clear() {
        DropoutRows.clear();
    }

    @Test
    void skipEqualsDrawing() {
        Rng a = new Rng(42), b = new Rng(42);
        for (int i = 0; i < 1000; i++) a.nextDouble();
        b.skip(1000);
        assertEquals(a.state(), b.state());
        assertEquals(a.nextLong(), b.nextLong());
    }

    /** The mask dropout applied, read off by dropping out a tensor of ones. */
    private static float[] mask(int rows, Rng rng) {
        float[] ones = new float[rows * 3 * 5];
        java.util.Arrays.fill(ones, 1f);
        return Activations.dropout(Tensor.of(ones, rows, 3, 5), 0.4, true, rng).toFloatArray();
    }

    @Test
    void eachShareDrawsItsRowsOfTheGlobalMask() {
        int parts = 3, per = 2;
        Rng single = new Rng(7);
        float[] first = mask(parts * per, single), second = mask(parts * per, single); // two layers in a row
        for (int part = 0; part < parts; part++) {
            DropoutRows.set(part, parts);
            Rng rank = new Rng(7);
            float[] m1 = mask(per, rank), m2 = mask(per, rank);
            int n = per * 15;
            assertArrayEquals(java.util.Arrays.copyOfRange(first, part * n, (part + 1) * n), m1, "share " + part + ", first layer");
            assertArrayEquals(java.util.Arrays.copyOfRange(second, part * n, (part + 1) * n), m2, "share " + part + ", second layer");
            assertEquals(single.state(), rank.state(), "the stream ends where one process's does");
        }
        assertNotEquals(java.util.Arrays.toString(first), java.util.Arrays.toString(second), "the layers draw different masks");
    }

    @Test
    void badShareIsRefused() {
        var e = org.junit.jupiter.api.Assertions.assertThrows(IllegalArgumentException.class, () -> DropoutRows.set(2, 2));
        assertEquals("dropout row share 2 of 2", e.getMessage());
    }
}
