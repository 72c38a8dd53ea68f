package dev.kiln.backend.cpu;

import dev.kiln.tensor.DType;
import dev.kiln.tensor.Rng;
import dev.kiln.tensor.Tensor;
import dev.kiln.ops.Rope;
import org.junit.jupiter.api.Test;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * The fp32 paths of Llama's kernels against their double-precision reference paths. Widths 67 and 1000
 * are not multiples of the vector length, so the scalar tails are covered too. fp32 sums of ≤ 1000 terms
 * stay within ~1e-5 relative; 1e-4 allows that and nothing else.
 */
class LlamaKernelsTest {
    private final CpuBackend be = CpuBackend.get();

    @Test
    void rmsNormF32MatchesReference() {
        for (int c : new int[]{16, 67, 1000}) {
            int rows = 13;
            Tensor x = Tensor.randn(new Rng(c), 2, DType.F32, rows, c), w = Tensor.randn(new Rng(c + 1), 1, DType.F32, c);
            Tensor g = Tensor.randn(new Rng(c + 2), 1, DType.F32, rows, c);
            Tensor out = Tensor.empty(DType.F32, rows, c), rstd = Tensor.empty(DType.F32, rows);
            Tensor out64 = Tensor.empty(DType.F64, rows, c), rstd64 = Tensor.empty(DType.F64, rows);
            be.rmsNorm(x, w, 1e-5, out, rstd);
            be.rmsNorm(x.to(DType.F64), w.to(DType.F64), 1e-5, out64, rstd64);
            assertClose(out64, out, 1e-4);
            assertClose(rstd64, rstd, 1e-5);
            Tensor gx = Tensor.randn(new Rng(7), 1, DType.F32, rows, c), gw = Tensor.randn(new Rng(8), 1, DType.F32, c);
            Tensor gx64 = gx.to(DType.F64), gw64 = gw.to(DType.F64); // backward accumulates onto what is there
            be.rmsNormBackward(x, w, rstd, g, gx, gw);
            be.rmsNormBackward(x.to(DType.F64), w.to(DType.F64), rstd64, g.to(DType.F64), gx64, gw64);
            assertClose(gx64, gx, 1e-4);
            assertClose(gw64, gw, 1e-4);
        }
    }

    @Test
    void swigluAndRopeF32MatchReference() {
        int n = 1003;
        Tensor a = Tensor.randn(new Rng(1), 4, DType.F32, n), u = Tensor.randn(new Rng(2), 1, DType.F32, n), g = Tensor.randn(new Rng(3), 1, DType.F32, n);
        Tensor out = Tensor.empty(DType.F32, n), ref = Tensor.empty(DType.F64, n);
        be.swiglu(a, u, out);
        be.swiglu(a.to(DType.F64), u.to(DType.F64), ref);
        assertClose(ref, out, 1e-5);
        be.silu(a, out);
        be.silu(a.to(DType.F64), ref);
        assertClose(ref, out, 1e-5);
        Tensor ga = Tensor.zeros(DType.F32, n), gu = Tensor.zeros(DType.F32, n), ga64 = Tensor.zeros(DType.F64, n), gu64 = Tensor.zeros(DType.F64, n);
        be.swigluBackward(a, u, g, ga, gu);
        be.swigluBackward(a.to(DType.F64), u.to(DType.F64), g.to(DType.F64), ga64, gu64);
        assertClose(ga64, ga, 1e-5);
        assertClose(gu64, gu, 1e-5);
        be.siluBackward(a, g, ga);
        be.siluBackward(a.to(DType.F64), g.to(DType.F64), ga64);
        assertClose(ga64, ga, 1e-5);

        // the same F32 tables for both paths: the kernels, not the tables, are compared here
        Rope.Tables t32 = Rope.tables(11, 8, 10000, DType.F32);
        Tensor x = Tensor.randn(new Rng(4), 1, DType.F32, 3, 11, 24);
        Tensor y = Tensor.empty(DType.F32, 3, 11, 24), y64 = Tensor.empty(DType.F64, 3, 11, 24);
        be.rope(x, 8, t32.cos(), t32.sin(), y);
        be.rope(x.to(DType.F64), 8, t32.cos().to(DType.F64), t32.sin().to(DType.F64), y64);
        assertClose(y64, y, 1e-6);
        Tensor dx = Tensor.zeros(DType.F32, 3, 11, 24), dx64 = Tensor.zeros(DType.F64, 3, 11, 24);
        be.ropeBackward(y, 8, t32.cos(), t32.sin(), dx); // the inverse rotation of the rotation gives x back
        be.ropeBackward(y64, 8, t32.cos().to(DType.F64), t32.sin().to(DType.F64), dx64);
        assertClose(dx64, dx, 1e-6);
        assertClose(x.to(DType.F64), dx, 1e-6);
    }

    @Test
    void f32RopeTablesRoundAnglesAsFloat32() {
        // HF computes t·θ_i in float32; at t = 2047 that differs from the exact angle by up to ~1e-4 rad
        Rope.Tables t32 = Rope.tables(2048, 64, 10000, DType.F32);
        float inv = (float) (1.0 / Math.pow(10000, 2.0 * 1 / 64));
        float angle = 2047f * inv;
        assertEquals((float) Math.cos(angle), t32.cos().get(2047, 1), 0.0);
        assertEquals((float) Math.sin(angle), t32.sin().get(2047, 1), 0.0);
    }

    private static void assertClose(Tensor ref, Tensor got, double rel) {
        double scale = 0;
        for (long i = 0; i < ref.numel(); i++) scale = Math.max(scale, Math.abs(ref.getFlat(i)));
        for (long i = 0; i < ref.numel(); i++)
            assertTrue(Math.abs(ref.getFlat(i) - got.getFlat(i)) <= rel * Math.max(scale, 1e-30),
                    "element " + i + ": " + got.getFlat(i) + " vs reference " + ref.getFlat(i));
    }
}
