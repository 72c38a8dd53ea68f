package dev.kiln.backend.cuda;

import dev.kiln.tensor.DType;
import dev.kiln.tensor.Rng;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.ArrayList;
import java.util.List;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.fail;

/**
 * Host buffers standing in for device memory in emulated kernel tests, in fp32 or bf16 storage.
 * Every buffer is followed by a guard of 64 canary bytes, checked by {@link #checkGuards}: a bf16
 * kernel that wrote fp32 (4 bytes a value), or any kernel that wrote past its end, trips it.
 */
final class HostBuffers implements AutoCloseable {
    /** A kernel variant's storage type. */
    enum Type {
        F32(4), BF16(2);

        final int bytes;

        Type(int bytes) {
            this.bytes = bytes;
        }

        /** The value as this type stores it (bf16: round to nearest even). */
        float round(float v) {
            return this == F32 ? v : DType.bf16ToFloat(DType.floatToBf16(v));
        }

        float[] round(float[] v) {
            float[] r = new float[v.length];
            for (int i = 0; i < v.length; i++) r[i] = round(v[i]);
            return r;
        }

        /** The kernel of this variant: name_f32 or name_bf16. */
        String kernel(String base) {
            return base + (this == F32 ? "_f32" : "_bf16");
        }
    }

    private static final int GUARD = 64;
    private static final byte CANARY = 0x5A;
    private final Arena arena = Arena.ofConfined();
    private final List<MemorySegment> guards = new ArrayList<>();

    private MemorySegment alloc(long bytes) {
        MemorySegment s = arena.allocate(bytes + GUARD, 16);
        MemorySegment g = s.asSlice(bytes, GUARD);
        g.fill(CANARY);
        guards.add(g);
        return s;
    }

    MemorySegment of(Type t, float[] v) {
        MemorySegment s = alloc((long) v.length * t.bytes);
        for (int i = 0; i < v.length; i++) {
            if (t == Type.F32) s.setAtIndex(ValueLayout.JAVA_FLOAT, i, v[i]);
            else s.setAtIndex(ValueLayout.JAVA_SHORT, i, DType.floatToBf16(v[i]));
        }
        return s;
    }

    MemorySegment f32(float[] v) {
        return of(Type.F32, v);
    }

    MemorySegment zeros(Type t, int n) {
        return of(t, new float[n]);
    }

    MemorySegment ints(int... v) {
        MemorySegment s = alloc(4L * v.length);
        for (int i = 0; i < v.length; i++) s.setAtIndex(ValueLayout.JAVA_INT, i, v[i]);
        return s;
    }

    static float[] read(Type t, MemorySegment s, int n) {
        float[] r = new float[n];
        for (int i = 0; i < n; i++)
            r[i] = t == Type.F32 ? s.getAtIndex(ValueLayout.JAVA_FLOAT, i) : DType.bf16ToFloat(s.getAtIndex(ValueLayout.JAVA_SHORT, i));
        return r;
    }

    static float[] readF32(MemorySegment s, int n) {
        return read(Type.F32, s, n);
    }

    /** Fails if any kernel wrote into a guard. */
    void checkGuards() {
        for (MemorySegment g : guards)
            for (long i = 0; i < GUARD; i++)
                if (g.get(ValueLayout.JAVA_BYTE, i) != CANARY) fail("a kernel wrote past the end of a buffer (guard byte " + i + ")");
    }

    @Override
    public void close() {
        arena.close();
    }

    static float[] randn(long seed, int n, double std) {
        Rng rng = new Rng(seed);
        float[] r = new float[n];
        for (int i = 0; i < n; i++) r[i] = (float) (std * rng.nextGaussian());
        return r;
    }

    static double[] toDouble(float[] v) {
        double[] r = new double[v.length];
        for (int i = 0; i < v.length; i++) r[i] = v[i];
        return r;
    }

    /**
     * |got − ref| ≤ rtol·|ref| + atol·max|ref| elementwise; the atol term covers elements that are
     * small only through cancellation, whose error scales with the terms, not with the result.
     */
    static void assertClose(String what, double[] ref, float[] got, double rtol, double atol) {
        assertEquals(ref.length, got.length, what + ": length");
        double max = 0;
        for (double r : ref) max = Math.max(max, Math.abs(r));
        double worst = 0;
        int at = -1;
        for (int i = 0; i < ref.length; i++) {
            double err = Math.abs(got[i] - ref[i]), bound = rtol * Math.abs(ref[i]) + atol * max;
            if (!(err <= bound) && (at < 0 || err - bound > worst)) {
                worst = err - bound;
                at = i;
            }
        }
        if (at >= 0)
            fail(what + ": element " + at + " is " + got[at] + ", reference " + ref[at] + " (rtol " + rtol + ", atol " + atol + "·" + max + ")");
    }
}
