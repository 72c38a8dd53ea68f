package dev.kiln.backend.cuda;

import dev.kiln.backend.Backend.BinaryOp;
import dev.kiln.backend.Backend.Mat;
import dev.kiln.backend.cpu.CpuBackend;
import dev.kiln.backend.cuda.HostBuffers.Type;
import dev.kiln.tensor.DType;
import dev.kiln.tensor.Tensor;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.EnumSource;

import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;

import static dev.kiln.backend.cuda.HostBuffers.randn;
import static dev.kiln.backend.cuda.HostBuffers.read;
import static dev.kiln.backend.cuda.HostBuffers.readF32;
import static dev.kiln.backend.cuda.HostBuffers.toDouble;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * Every CUDA kernel, built for the host with kiln_emu.h ({@link KernelEmulator}), forward and
 * backward, fp32 and bf16, against the CPU backend's double-precision reference kernels, on sizes
 * that are not multiples of a warp or a block and rows longer than a block.
 *
 * <p>Inputs of a bf16 variant are rounded to bf16 first, and the reference gets exactly those
 * values, so the only differences are the kernel's own fp32 arithmetic and its final rounding.
 * Tolerances: fp32 outputs (including the fp32 statistics, losses and parameter gradients of bf16
 * variants) within {@value #F32_RTOL} relative, plus {@value #F32_RTOL} of the largest |value| for
 * elements small by cancellation; bf16 outputs within 2⁻⁸ + 1e-5 relative (the final rounding to
 * nearest even is at most half a bf16 ulp, ≤ 2⁻⁸ relative; 1e-5 is the fp32 arithmetic before it —
 * so a kernel that truncated instead of rounding would fail) plus the same fp32 floor. Seen on
 * these sizes: fp32 errors ≤ 6e-7 of the largest |value|. A bf16 variant that accumulated
 * in bf16 (unit roundoff 2⁻⁸) could not meet the fp32 tolerances on its fp32 outputs; {@link
 * #bf16VariantsAccumulateInFp32} checks it directly with sums where a bf16 accumulator stalls.
 *
 * <p>What emulation cannot show, and so these tests do not claim: tensor-core instructions (the
 * GEMMs are cuBLAS's; here a host GEMM stands in), speed and occupancy, real warp divergence and
 * independent thread scheduling (fibers run one at a time), races that the GPU's memory model
 * allows between unsynchronised threads (serialised here), and the GPU's own expf/tanhf/rsqrtf
 * rounding (glibc's is used; both are within a few ulp, far inside the tolerances).
 */
class KernelEmulationTest {
    static final double F32_RTOL = 1e-5;
    static final double BF16_RTOL = 0x1p-8 + F32_RTOL;
    private static KernelEmulator emu;
    private final CpuBackend cpu = CpuBackend.get();
    private HostBuffers buf;

    @BeforeEach
    void open() {
        emu = KernelEmulator.get(); // built once; each test skips with the reason where g++ is missing
        buf = new HostBuffers();
    }

    @AfterEach
    void close() {
        if (buf == null) return;
        buf.checkGuards();
        buf.close();
    }

    private static double rtol(Type t) {
        return t == Type.F32 ? F32_RTOL : BF16_RTOL;
    }

    /** A tensor or storage output of type t against an F64 reference. */
    private static void check(String what, Type t, Tensor ref, MemorySegment got) {
        int n = (int) ref.numel();
        HostBuffers.assertClose(what + " (" + t + ")", ref.toDoubleArray(), read(t, got, n), rtol(t), F32_RTOL);
    }

    /** An fp32 output (statistics, losses, parameter gradients) of either variant. */
    private static void checkF32(String what, Tensor ref, MemorySegment got) {
        check(what, Type.F32, ref, got);
    }

    private static Tensor f64(float[] v, int... shape) {
        return Tensor.ofDoubles(toDouble(v), shape);
    }

    // ------------------------------------------------------------------ elementwise

    @ParameterizedTest
    @EnumSource(Type.class)
    void binaryBroadcastsLikeTheCpuBackend(Type t) {
        int[] shape = {3, 5, 7, 9};
        int n = 3 * 5 * 7 * 9;
        float[] a = t.round(randn(1, n, 1)), b = t.round(randn(2, 5 * 9, 1));
        for (int i = 0; i < b.length; i++) b[i] = t.round(0.5f + Math.abs(b[i])); // divisor away from 0
        for (BinaryOp op : BinaryOp.values()) {
            MemorySegment out = buf.zeros(t, n);
            // b is (1, 5, 1, 9) broadcast to (3, 5, 7, 9): strides 0, 9, 0, 1
            emu.launch(t.kernel("binary"), op.ordinal(), buf.of(t, a), buf.of(t, b), out, n, 5, 7, 9, 315, 63, 9, 1, 0, 9, 0, 1);
            Tensor ref = Tensor.zeros(DType.F64, shape);
            cpu.binary(op, f64(a, shape), f64(b, 1, 5, 1, 9).expandView(shape), ref);
            check("binary " + op, t, ref, out);
        }
    }

    @ParameterizedTest
    @EnumSource(Type.class)
    void axpyAndScale(Type t) {
        int n = 4099;
        float[] src = t.round(randn(3, n, 1)), dst = t.round(randn(4, n, 1));
        MemorySegment d = buf.of(t, dst);
        emu.launch(t.kernel("axpy"), -0.75f, buf.of(t, src), d, n);
        Tensor ref = f64(dst, n);
        cpu.axpy(-0.75, f64(src, n), ref);
        check("axpy", t, ref, d);

        MemorySegment x = buf.of(t, src);
        emu.launch(t.kernel("scale"), x, 1.5f, n);
        Tensor sref = f64(src, n);
        cpu.scale(sref, 1.5);
        check("scale", t, sref, x);
    }

    // ------------------------------------------------------------------ GELU

    @ParameterizedTest
    @EnumSource(Type.class)
    void geluForwardAndBackward(Type t) {
        int n = 5003;
        float[] x = t.round(randn(5, n, 2)), g = t.round(randn(6, n, 1)), acc = t.round(randn(7, n, 1));
        MemorySegment y = buf.zeros(t, n), gi = buf.of(t, acc);
        emu.launch(t.kernel("gelu_forward"), buf.of(t, x), y, n);
        emu.launch(t.kernel("gelu_backward"), buf.of(t, x), buf.of(t, g), gi, n);
        Tensor yRef = Tensor.zeros(DType.F64, n), giRef = f64(acc, n);
        cpu.gelu(f64(x, n), yRef);
        cpu.geluBackward(f64(x, n), f64(g, n), giRef);
        check("gelu", t, yRef, y);
        check("gelu backward (accumulated)", t, giRef, gi);
    }

    @ParameterizedTest
    @EnumSource(Type.class)
    void biasGeluIsBiasAddThenGelu(Type t) {
        int rows = 37, c = 53, n = rows * c;
        float[] x = t.round(randn(8, n, 1.5)), bias = t.round(randn(9, c, 1));
        MemorySegment pre = buf.of(t, x), out = buf.zeros(t, n);
        emu.launch(t.kernel("bias_gelu_forward"), pre, buf.of(t, bias), out, n, c);
        Tensor preRef = Tensor.zeros(DType.F64, rows, c);
        cpu.binary(BinaryOp.ADD, f64(x, rows, c), f64(bias, c).expandView(rows, c), preRef);
        check("bias + x", t, preRef, pre);
        // out is the GELU of pre as stored (what the backward will read)
        float[] stored = read(t, pre, n);
        Tensor outRef = Tensor.zeros(DType.F64, n);
        cpu.gelu(f64(stored, n), outRef);
        check("gelu(bias + x)", t, outRef, out);
    }

    // ------------------------------------------------------------------ LayerNorm

    @ParameterizedTest
    @EnumSource(Type.class)
    void layerNormForwardAndBackward(Type t) {
        layerNorm(t, 37, 53, true);   // rows of 53: lanes stride past one warp width, 37 rows: a partial block
        layerNorm(t, 9, 773, false);  // rows longer than a 256-thread block, no bias
    }

    private void layerNorm(Type t, int rows, int c, boolean withBias) {
        int n = rows * c;
        String at = " [" + rows + "x" + c + "]";
        float[] x = t.round(randn(10 + c, n, 2)), w = t.round(randn(11, c, 1)), b = t.round(randn(12, c, 1));
        for (int i = 0; i < n; i++) x[i] = t.round(x[i] + 0.5f); // a nonzero mean
        MemorySegment out = buf.zeros(t, n), mean = buf.zeros(Type.F32, rows), rstd = buf.zeros(Type.F32, rows);
        emu.launch(t.kernel("layernorm_forward"), buf.of(t, x), buf.of(t, w), withBias ? buf.of(t, b) : MemorySegment.NULL,
                out, mean, rstd, rows, c, 1e-5f);
        Tensor outRef = Tensor.zeros(DType.F64, rows, c), meanRef = Tensor.zeros(DType.F64, rows), rstdRef = Tensor.zeros(DType.F64, rows);
        cpu.layerNorm(f64(x, rows, c), f64(w, c), withBias ? f64(b, c) : null, 1e-5, outRef, meanRef, rstdRef);
        check("layernorm" + at, t, outRef, out);
        checkF32("layernorm mean" + at, meanRef, mean);
        checkF32("layernorm rstd" + at, rstdRef, rstd);

        float[] dy = t.round(randn(13, n, 1)), dx0 = t.round(randn(14, n, 1)), dw0 = randn(15, c, 1), db0 = randn(16, c, 1);
        MemorySegment dx = buf.of(t, dx0), dw = buf.f32(dw0), db = buf.f32(db0);
        emu.launch(t.kernel("layernorm_backward"), buf.of(t, x), buf.of(t, w), mean, rstd, buf.of(t, dy), dx, rows, c);
        emu.launch(t.kernel("layernorm_backward_params"), buf.of(t, x), mean, rstd, buf.of(t, dy), dw, db, rows, c);
        // the reference takes the kernel's fp32 statistics, as the kernels do
        Tensor dxRef = f64(dx0, rows, c), dwRef = f64(dw0, c), dbRef = f64(db0, c);
        cpu.layerNormBackward(f64(x, rows, c), f64(w, c), f64(readF32(mean, rows), rows), f64(readF32(rstd, rows), rows),
                f64(dy, rows, c), dxRef, dwRef, dbRef);
        check("layernorm dx" + at, t, dxRef, dx);
        checkF32("layernorm dw" + at, dwRef, dw);
        checkF32("layernorm db" + at, dbRef, db);
    }

    // ------------------------------------------------------------------ Llama: RMS norm, RoPE, SiLU/SwiGLU

    @ParameterizedTest
    @EnumSource(Type.class)
    void rmsNormForwardAndBackward(Type t) {
        rmsNorm(t, 37, 53);   // partial block, lanes striding past a warp
        rmsNorm(t, 9, 773);   // rows longer than a block
    }

    private void rmsNorm(Type t, int rows, int c) {
        int n = rows * c;
        String at = " [" + rows + "x" + c + "]";
        float[] x = t.round(randn(40 + c, n, 2)), w = t.round(randn(41, c, 1));
        MemorySegment out = buf.zeros(t, n), rstd = buf.zeros(Type.F32, rows);
        emu.launch(t.kernel("rmsnorm_forward"), buf.of(t, x), buf.of(t, w), out, rstd, rows, c, 1e-6f);
        Tensor outRef = Tensor.zeros(DType.F64, rows, c), rstdRef = Tensor.zeros(DType.F64, rows);
        cpu.rmsNorm(f64(x, rows, c), f64(w, c), 1e-6, outRef, rstdRef);
        check("rmsnorm" + at, t, outRef, out);
        checkF32("rmsnorm rstd" + at, rstdRef, rstd);

        float[] dy = t.round(randn(42, n, 1)), dx0 = t.round(randn(43, n, 1)), dw0 = randn(44, c, 1);
        MemorySegment dx = buf.of(t, dx0), dw = buf.f32(dw0);
        emu.launch(t.kernel("rmsnorm_backward"), buf.of(t, x), buf.of(t, w), rstd, buf.of(t, dy), dx, rows, c);
        emu.launch(t.kernel("rmsnorm_backward_weight"), buf.of(t, x), rstd, buf.of(t, dy), dw, rows, c);
        Tensor dxRef = f64(dx0, rows, c), dwRef = f64(dw0, c);
        cpu.rmsNormBackward(f64(x, rows, c), f64(w, c), f64(readF32(rstd, rows), rows), f64(dy, rows, c), dxRef, dwRef);
        check("rmsnorm dx" + at, t, dxRef, dx);
        checkF32("rmsnorm dw" + at, dwRef, dw);
    }

    @ParameterizedTest
    @EnumSource(Type.class)
    void ropeForwardAndBackward(Type t) {
        int b = 3, tLen = 11, heads = 3, d = 14, h = d / 2, w = heads * d, rows = b * tLen, n = rows * w;
        float[] x = t.round(randn(45, n, 1)), cos = new float[tLen * h], sin = new float[tLen * h];
        for (int p = 0; p < tLen; p++)
            for (int i = 0; i < h; i++) {
                double angle = p * Math.pow(10000, -2.0 * i / d);
                cos[p * h + i] = (float) Math.cos(angle);
                sin[p * h + i] = (float) Math.sin(angle);
            }
        MemorySegment out = buf.zeros(t, n);
        emu.launch(t.kernel("rope"), buf.of(t, x), buf.f32(cos), buf.f32(sin), out, n / 2, w, d, tLen, 0);
        Tensor ref = Tensor.zeros(DType.F64, rows, w);
        cpu.rope(f64(x, rows, w), d, f64(cos, tLen, h), f64(sin, tLen, h), ref);
        check("rope", t, ref, out);
        float[] g = t.round(randn(46, n, 1)), acc = t.round(randn(47, n, 1));
        MemorySegment gx = buf.of(t, acc);
        emu.launch(t.kernel("rope"), buf.of(t, g), buf.f32(cos), buf.f32(sin), gx, n / 2, w, d, tLen, 1);
        Tensor gRef = f64(acc, rows, w);
        cpu.ropeBackward(f64(g, rows, w), d, f64(cos, tLen, h), f64(sin, tLen, h), gRef);
        check("rope backward (accumulated)", t, gRef, gx);
    }

    @ParameterizedTest
    @EnumSource(Type.class)
    void siluAndSwiglu(Type t) {
        int n = 5003;
        float[] a = t.round(randn(48, n, 2)), u = t.round(randn(49, n, 1)), g = t.round(randn(50, n, 1));
        float[] ga0 = t.round(randn(51, n, 1)), gu0 = t.round(randn(52, n, 1));
        MemorySegment silu = buf.zeros(t, n), sw = buf.zeros(t, n);
        emu.launch(t.kernel("swiglu_forward"), buf.of(t, a), MemorySegment.NULL, silu, n);
        emu.launch(t.kernel("swiglu_forward"), buf.of(t, a), buf.of(t, u), sw, n);
        Tensor siluRef = Tensor.zeros(DType.F64, n), swRef = Tensor.zeros(DType.F64, n);
        cpu.silu(f64(a, n), siluRef);
        cpu.swiglu(f64(a, n), f64(u, n), swRef);
        check("silu", t, siluRef, silu);
        check("swiglu", t, swRef, sw);

        MemorySegment gs = buf.of(t, ga0), ga = buf.of(t, ga0), gu = buf.of(t, gu0);
        emu.launch(t.kernel("swiglu_backward"), buf.of(t, a), MemorySegment.NULL, buf.of(t, g), gs, MemorySegment.NULL, n);
        emu.launch(t.kernel("swiglu_backward"), buf.of(t, a), buf.of(t, u), buf.of(t, g), ga, gu, n);
        Tensor gsRef = f64(ga0, n), gaRef = f64(ga0, n), guRef = f64(gu0, n);
        cpu.siluBackward(f64(a, n), f64(g, n), gsRef);
        cpu.swigluBackward(f64(a, n), f64(u, n), f64(g, n), gaRef, guRef);
        check("silu backward", t, gsRef, gs);
        check("swiglu backward gate", t, gaRef, ga);
        check("swiglu backward up", t, guRef, gu);
    }

    // ------------------------------------------------------------------ softmax

    @ParameterizedTest
    @EnumSource(Type.class)
    void softmaxForwardAndBackward(Type t) {
        softmax(t, 19, 45, false);
        softmax(t, 3 * 40, 40, true);
        softmax(t, 5, 1500, false); // rows longer than a block
    }

    private void softmax(Type t, int rows, int n, boolean causal) {
        int size = rows * n;
        String at = " [" + rows + "x" + n + (causal ? " causal" : "") + "]";
        float[] x = t.round(randn(20 + n, size, 3));
        MemorySegment y = buf.zeros(t, size);
        emu.launch(t.kernel("softmax_forward"), buf.of(t, x), y, rows, n, causal ? 1 : 0);
        Tensor yRef = Tensor.zeros(DType.F64, rows, n);
        cpu.softmax(f64(x, rows, n), yRef, causal);
        check("softmax" + at, t, yRef, y);

        float[] dy = t.round(randn(21, size, 1)), dx0 = t.round(randn(22, size, 1));
        float[] yStored = read(t, y, size);
        MemorySegment dx = buf.of(t, dx0);
        emu.launch(t.kernel("softmax_backward"), y, buf.of(t, dy), dx, rows, n);
        Tensor dxRef = f64(dx0, rows, n);
        cpu.softmaxBackward(f64(yStored, rows, n), f64(dy, rows, n), dxRef);
        check("softmax backward" + at, t, dxRef, dx);
    }

    // ------------------------------------------------------------------ cross-entropy

    @ParameterizedTest
    @EnumSource(Type.class)
    void crossEntropyForwardAndBackward(Type t) {
        crossEntropy(t, 0, 0);
        crossEntropy(t, 0.1, 1e-4);
    }

    private void crossEntropy(Type t, double smoothing, double zLoss) {
        int rows = 13, v = 1031, ignore = -100; // v: a vocabulary row longer than a block, not a multiple of it
        String at = " [smoothing " + smoothing + ", z-loss " + zLoss + "]";
        float[] x = t.round(randn(30, rows * v, 2));
        int[] tg = new int[rows];
        for (int r = 0; r < rows; r++) tg[r] = (r * 389 + 17) % v;
        tg[5] = ignore;
        MemorySegment losses = buf.zeros(Type.F32, rows), lse = buf.zeros(Type.F32, rows), err = buf.ints(Integer.MAX_VALUE);
        MemorySegment xs = buf.of(t, x), targets = buf.ints(tg);
        emu.launch(t.kernel("crossentropy_forward"), xs, targets, losses, lse, err, rows, v, ignore, (float) smoothing, (float) zLoss);
        assertEquals(Integer.MAX_VALUE, err.get(ValueLayout.JAVA_INT, 0), "no bad target reported");
        Tensor lossRef = Tensor.zeros(DType.F64, rows), lseRef = Tensor.zeros(DType.F64, rows);
        cpu.crossEntropy(f64(x, rows, v), Tensor.ofInts(tg, rows), ignore, smoothing, zLoss, lossRef, lseRef);
        checkF32("cross-entropy losses" + at, lossRef, losses);
        checkF32("cross-entropy lse" + at, lseRef, lse);

        float[] g0 = t.round(randn(31, rows * v, 1e-3));
        MemorySegment g = buf.of(t, g0);
        double scale = 1.0 / 12;
        emu.launch(t.kernel("crossentropy_backward"), xs, targets, lse, g, rows, v, ignore, (float) smoothing, (float) zLoss, (float) scale);
        Tensor gRef = f64(g0, rows, v);
        cpu.crossEntropyBackward(f64(x, rows, v), Tensor.ofInts(tg, rows), ignore, smoothing, zLoss, lseRef, scale, gRef);
        check("cross-entropy backward" + at, t, gRef, g);
    }

    @ParameterizedTest
    @EnumSource(Type.class)
    void crossEntropyReportsTheFirstBadTarget(Type t) {
        int rows = 9, v = 40;
        int[] tg = {1, 2, 3, 4, 41, 5, 6, -7, 8};
        MemorySegment err = buf.ints(Integer.MAX_VALUE);
        emu.launch(t.kernel("crossentropy_forward"), buf.of(t, randn(32, rows * v, 1)), buf.ints(tg), buf.zeros(Type.F32, rows),
                buf.zeros(Type.F32, rows), err, rows, v, -100, 0f, 0f);
        assertEquals(4, err.get(ValueLayout.JAVA_INT, 0));
    }

    // ------------------------------------------------------------------ embedding

    @ParameterizedTest
    @EnumSource(Type.class)
    void embeddingForwardAndBackward(Type t) {
        int n = 29, c = 67, v = 11; // 29 positions over 11 ids: many share a row, so the backward collides
        int[] ids = new int[n];
        for (int i = 0; i < n; i++) ids[i] = (i * 7 + 3) % v;
        float[] w = t.round(randn(40, v * c, 1));
        MemorySegment out = buf.zeros(t, n * c), err = buf.ints(Integer.MAX_VALUE), idx = buf.ints(ids);
        emu.launch(t.kernel("embedding_forward"), idx, buf.of(t, w), out, err, n, c, v);
        assertEquals(Integer.MAX_VALUE, err.get(ValueLayout.JAVA_INT, 0));
        Tensor ref = Tensor.zeros(DType.F64, n, c);
        cpu.embedding(Tensor.ofInts(ids, n), f64(w, v, c), ref);
        assertArrayEquals(ref.toFloatArray(), read(t, out, n * c), "embedding rows are copied exactly");

        float[] dy = t.round(randn(41, n * c, 1)), gw0 = randn(42, v * c, 1);
        MemorySegment gwAtomic = buf.f32(gw0), gwOrdered = buf.f32(gw0);
        emu.launch(t.kernel("embedding_backward"), idx, buf.of(t, dy), gwAtomic, n, c, v);
        emu.launch(t.kernel("embedding_backward_deterministic"), idx, buf.of(t, dy), gwOrdered, n, c, v);
        Tensor gwRef = f64(gw0, v, c);
        cpu.embeddingBackward(Tensor.ofInts(ids, n), f64(dy, n, c), gwRef);
        checkF32("embedding backward (atomics)", gwRef, gwAtomic);
        // the deterministic variant adds in position order in fp32, as the CPU backend's fp32 path: same bits
        Tensor gwCpu = Tensor.of(gw0.clone(), v, c);
        cpu.embeddingBackward(Tensor.ofInts(ids, n), Tensor.of(dy.clone(), n, c), gwCpu);
        assertArrayEquals(gwCpu.toFloatArray(), readF32(gwOrdered, v * c), "deterministic embedding backward is bitwise the CPU's");
    }

    @ParameterizedTest
    @EnumSource(Type.class)
    void embeddingReportsTheFirstBadId(Type t) {
        int c = 5, v = 4;
        int[] ids = {0, 1, 2, 3, 2, 1, -1, 0, 4};
        MemorySegment err = buf.ints(Integer.MAX_VALUE);
        emu.launch(t.kernel("embedding_forward"), buf.ints(ids), buf.of(t, randn(43, v * c, 1)), buf.zeros(t, ids.length * c), err,
                ids.length, c, v);
        assertEquals(6, err.get(ValueLayout.JAVA_INT, 0));
    }

    // ------------------------------------------------------------------ attention

    /**
     * The whole attention pipeline — permute, S = Q·Kᵀ, causal softmax, O = P·V, unpermute, and its
     * backward — with host GEMMs (double, rounded to the storage type as cuBLAS's output would be)
     * in place of cuBLAS, against CpuBackend.attention/attentionBackward. In bf16, q, k, v, S, P, O,
     * dO, dP, dS, dq, dk, dv are each rounded once, so errors compound over up to four roundings of
     * ≤ 2⁻⁸ each: the stated bf16 tolerance is 2⁻⁶ of the largest |value| (seen: ≤ 0.0045).
     */
    @ParameterizedTest
    @EnumSource(Type.class)
    void attentionPipelineMatchesTheCpuBackend(Type t) {
        int b = 2, tl = 37, nh = 3, d = 8, c = nh * d, bh = b * nh, rows = bh * tl, nqkv = b * tl * 3 * c, headSize = bh * tl * d;
        float scale = (float) (1.0 / Math.sqrt(d));
        float[] qkv = t.round(randn(50, nqkv, 1));
        MemorySegment q = buf.zeros(t, headSize), k = buf.zeros(t, headSize), v = buf.zeros(t, headSize);
        emu.launch(t.kernel("attention_permute"), buf.of(t, qkv), q, k, v, b, tl, nh, d);
        float[] qh = read(t, q, headSize), kh = read(t, k, headSize), vh = read(t, v, headSize);
        float[] s = t.round(gemm(bh, tl, tl, d, qh, false, kh, true));
        MemorySegment p = buf.zeros(t, rows * tl);
        emu.launch(t.kernel("attention_softmax_forward"), buf.of(t, s), p, rows, tl, scale);
        float[] ph = read(t, p, rows * tl);
        float[] o = t.round(gemm(bh, tl, d, tl, ph, false, vh, false));
        MemorySegment out = buf.zeros(t, b * tl * c);
        emu.launch(t.kernel("attention_unpermute"), buf.of(t, o), out, b, tl, nh, d);

        Tensor outRef = Tensor.zeros(DType.F64, b, tl, c), probsRef = Tensor.zeros(DType.F64, b, nh, tl, tl);
        cpu.attention(f64(qkv, b, tl, 3 * c), nh, outRef, probsRef);
        double tol = t == Type.F32 ? F32_RTOL : 0x1p-6;
        HostBuffers.assertClose("attention probs (" + t + ")", probsRef.toDoubleArray(), ph, t == Type.F32 ? F32_RTOL : 0, tol);
        HostBuffers.assertClose("attention out (" + t + ")", outRef.toDoubleArray(), read(t, out, b * tl * c), t == Type.F32 ? F32_RTOL : 0, tol);

        float[] dout = t.round(randn(51, b * tl * c, 1)), dqkv0 = t.round(randn(52, nqkv, 1));
        MemorySegment dO = buf.zeros(t, headSize);
        emu.launch(t.kernel("attention_unpermute_backward"), buf.of(t, dout), dO, b, tl, nh, d);
        float[] dOh = read(t, dO, headSize);
        float[] dp = t.round(gemm(bh, tl, tl, d, dOh, false, vh, true));      // dP = dO·Vᵀ
        float[] dv = t.round(gemm(bh, tl, d, tl, ph, true, dOh, false));      // dV = Pᵀ·dO
        MemorySegment ds = buf.zeros(t, rows * tl);
        emu.launch(t.kernel("attention_softmax_backward"), p, buf.of(t, dp), ds, rows, tl, scale);
        float[] dsh = read(t, ds, rows * tl);
        float[] dq = t.round(gemm(bh, tl, d, tl, dsh, false, kh, false));     // dQ = dS·K
        float[] dk = t.round(gemm(bh, tl, d, tl, dsh, true, qh, false));      // dK = dSᵀ·Q
        MemorySegment dqkv = buf.of(t, dqkv0);
        emu.launch(t.kernel("attention_permute_backward"), buf.of(t, dq), buf.of(t, dk), buf.of(t, dv), dqkv, b, tl, nh, d);
        Tensor dqkvRef = f64(dqkv0, b, tl, 3 * c);
        cpu.attentionBackward(f64(qkv, b, tl, 3 * c), nh, probsRef, f64(dout, b, tl, c), dqkvRef);
        HostBuffers.assertClose("attention dqkv (" + t + ")", dqkvRef.toDoubleArray(), read(t, dqkv, nqkv), t == Type.F32 ? F32_RTOL : 0, tol);
    }

    /** batch × (m × k)·(k × n) in double, row-major operands, optionally transposed: the stand-in for cuBLAS. */
    private static float[] gemm(int batch, int m, int n, int k, float[] a, boolean ta, float[] b, boolean tb) {
        Tensor c = Tensor.zeros(DType.F64, batch, m, n);
        Tensor at = f64(a, a.length), bt = f64(b, b.length);
        Mat am = ta ? new Mat(at, 0, (long) m * k, 1, m) : new Mat(at, 0, (long) m * k, k, 1);
        Mat bm = tb ? new Mat(bt, 0, (long) k * n, 1, k) : new Mat(bt, 0, (long) k * n, n, 1);
        CpuBackend.get().gemm(batch, m, n, k, 1.0, am, bm, 0.0, new Mat(c, 0, (long) m * n, n, 1));
        return c.toFloatArray();
    }

    // ------------------------------------------------------------------ AdamW

    @Test
    void adamwMatchesTheCpuBackendAndWritesTheBf16Copy() {
        int n = 3001;
        double lr = 1e-3, b1 = 0.9, b2 = 0.95, eps = 1e-8, wd = 0.1;
        float[] p0 = randn(60, n, 1);
        MemorySegment p = buf.f32(p0), m = buf.zeros(Type.F32, n), v = buf.zeros(Type.F32, n);
        MemorySegment p2 = buf.f32(p0), m2 = buf.zeros(Type.F32, n), v2 = buf.zeros(Type.F32, n), copy = buf.zeros(Type.BF16, n);
        // views one float into their allocations: not 16-byte aligned, so the one-by-one path runs
        float[] shifted = new float[n + 1];
        System.arraycopy(p0, 0, shifted, 1, n);
        MemorySegment p3 = buf.f32(shifted).asSlice(4), m3 = buf.zeros(Type.F32, n + 1).asSlice(4), v3 = buf.zeros(Type.F32, n + 1).asSlice(4);
        Tensor pRef = f64(p0, n), mRef = Tensor.zeros(DType.F64, n), vRef = Tensor.zeros(DType.F64, n);
        for (int step = 1; step <= 3; step++) {
            float[] g = randn(60 + step, n, 0.1);
            Object[] scalars = adamwScalars(lr, b1, b2, eps, wd, step);
            emu.launch("adamw_f32", concat(new Object[]{p, buf.f32(g), m, v, n}, scalars));
            emu.launch("adamw_bf16", concat(new Object[]{p2, buf.f32(g), m2, v2, copy, n}, scalars));
            float[] gShifted = new float[n + 1];
            System.arraycopy(g, 0, gShifted, 1, n);
            emu.launch("adamw_f32", concat(new Object[]{p3, buf.f32(gShifted).asSlice(4), m3, v3, n}, scalars));
            cpu.adamw(pRef, f64(g, n), mRef, vRef, lr, b1, b2, eps, wd, step);
        }
        checkF32("adamw p", pRef, p);
        checkF32("adamw m", mRef, m);
        checkF32("adamw v", vRef, v);
        // the mixed-precision variant updates the fp32 master identically and writes its bf16 rounding
        assertArrayEquals(readF32(p, n), readF32(p2, n));
        assertArrayEquals(readF32(m, n), readF32(m2, n));
        assertArrayEquals(readF32(v, n), readF32(v2, n));
        assertArrayEquals(Type.BF16.round(readF32(p2, n)), read(Type.BF16, copy, n));
        // the float4 path (aligned, 750 vectors + a tail of 1) and the scalar path give the same bits
        assertArrayEquals(readF32(p, n), readF32(p3, n));
        assertArrayEquals(readF32(m, n), readF32(m3, n));
        assertArrayEquals(readF32(v, n), readF32(v3, n));
    }

    /** The step's scalars formed in double and rounded once, as CpuBackend's fp32 AdamW forms them. */
    static Object[] adamwScalars(double lr, double beta1, double beta2, double eps, double wd, long step) {
        double bc1 = 1 - Math.pow(beta1, step), bc2 = 1 - Math.pow(beta2, step);
        return new Object[]{(float) beta1, (float) beta2, (float) (1 - beta1), (float) (1 - beta2), (float) (lr / bc1),
                (float) (1.0 / Math.sqrt(bc2)), (float) (lr * wd), (float) eps};
    }

    private static Object[] concat(Object[] a, Object[] b) {
        Object[] r = new Object[a.length + b.length];
        System.arraycopy(a, 0, r, 0, a.length);
        System.arraycopy(b, 0, r, a.length, b.length);
        return r;
    }

    // ------------------------------------------------------------------ conversions

    @Test
    void conversionsRoundToNearestEvenAndCanonicaliseNaN() {
        float[] special = {0f, -0f, 1f, -1f, Float.MIN_VALUE, -Float.MIN_VALUE, Float.MIN_NORMAL, Float.MAX_VALUE, -Float.MAX_VALUE,
                Float.POSITIVE_INFINITY, Float.NEGATIVE_INFINITY, Float.NaN, Float.intBitsToFloat(0x7f800001), Float.intBitsToFloat(0xffc12345),
                Float.intBitsToFloat(0x3f808000), Float.intBitsToFloat(0x3f818000), Float.intBitsToFloat(0x3f808001), Float.intBitsToFloat(0x7f7fffff)};
        float[] rnd = randn(70, 4000, 100);
        float[] x = new float[special.length + rnd.length];
        System.arraycopy(special, 0, x, 0, special.length);
        System.arraycopy(rnd, 0, x, special.length, rnd.length);
        int n = x.length;
        MemorySegment dst = buf.zeros(Type.BF16, n);
        emu.launch("convert_f32_to_bf16", buf.f32(x), dst, n);
        for (int i = 0; i < n; i++) {
            short want = Float.isNaN(x[i]) ? (short) 0x7fff : DType.floatToBf16(x[i]); // CUDA's canonical NaN
            assertEquals(want, dst.getAtIndex(ValueLayout.JAVA_SHORT, i), "bf16 of " + x[i] + " (bits " + Integer.toHexString(Float.floatToRawIntBits(x[i])) + ")");
        }
        MemorySegment back = buf.zeros(Type.F32, n);
        emu.launch("convert_bf16_to_f32", dst, back, n);
        for (int i = 0; i < n; i++)
            assertEquals(Integer.toHexString((dst.getAtIndex(ValueLayout.JAVA_SHORT, i) & 0xffff) << 16),
                    Integer.toHexString(Float.floatToRawIntBits(back.getAtIndex(ValueLayout.JAVA_FLOAT, i))));
    }

    // ------------------------------------------------------------------ reductions

    @ParameterizedTest
    @EnumSource(Type.class)
    void sumRowsIsBitwiseTheCpusColumnSum(Type t) {
        int rows = 301, n = 259;
        float[] src = t.round(randn(80, rows * n, 1)), dst0 = randn(81, n, 1);
        MemorySegment dst = buf.f32(dst0);
        emu.launch(t.kernel("sum_rows"), buf.of(t, src), dst, rows, n);
        Tensor ref = Tensor.of(dst0.clone(), n);
        cpu.sumRows(Tensor.of(src.clone(), rows, n), ref); // fp32, rows added in order per column: the same sums
        assertArrayEquals(ref.toFloatArray(), readF32(dst, n));
        Tensor ref64 = f64(dst0, n);
        cpu.sumRows(f64(src, rows, n), ref64);
        checkF32("sum_rows", ref64, dst);
    }

    @ParameterizedTest
    @EnumSource(Type.class)
    void sumOfSquaresAndNonFiniteCount(Type t) {
        int n = 100_003;
        float[] x = t.round(randn(82, n, 1));
        Kernels.Launch l = Kernels.get(t.kernel("sum_squares_partial")).launch(MemorySegment.NULL, MemorySegment.NULL, n);
        MemorySegment partials = buf.zeros(Type.F32, l.gridX()), out = buf.zeros(Type.F32, 1), xs = buf.of(t, x);
        emu.launch(t.kernel("sum_squares_partial"), xs, partials, n);
        emu.launch("sum_partials", partials, out, l.gridX());
        checkF32("sum of squares", Tensor.ofDoubles(new double[]{cpu.sumOfSquares(f64(x, n))}, 1), out);

        MemorySegment count = buf.ints(0);
        emu.launch(t.kernel("count_nonfinite"), xs, count, n);
        assertEquals(0, count.get(ValueLayout.JAVA_INT, 0));
        x[3] = Float.NaN;
        x[500] = Float.POSITIVE_INFINITY;
        x[n - 1] = Float.NEGATIVE_INFINITY;
        emu.launch(t.kernel("count_nonfinite"), buf.of(t, x), count, n);
        assertEquals(3, count.get(ValueLayout.JAVA_INT, 0));
    }

    // ------------------------------------------------------------------ bf16 storage, fp32 accumulation

    /**
     * Sums where a bf16 accumulator would stall: bf16 has 8 significant bits, so 256 + 1 rounds back
     * to 256 and a running sum of ones never passes 256. Each kernel gets such a sum and must give
     * the exact fp32 answer; bf16 storage is checked by the guards (a bf16 buffer written as fp32
     * overruns its guard) and by reading the results as bf16.
     */
    @Test
    void bf16VariantsAccumulateInFp32() {
        Type t = Type.BF16;
        int rows = 1024;
        float[] ones = new float[rows * 3];
        java.util.Arrays.fill(ones, 1f);
        MemorySegment dst = buf.zeros(Type.F32, 3);
        emu.launch("sum_rows_bf16", buf.of(t, ones), dst, rows, 3);
        assertArrayEquals(new float[]{1024, 1024, 1024}, readF32(dst, 3), "sum_rows_bf16 of 1024 ones");

        int c = 32 * 300; // each lane sums 300 elements of its row
        float[] row = new float[c];
        java.util.Arrays.fill(row, 1f);
        MemorySegment mean = buf.zeros(Type.F32, 1), rstd = buf.zeros(Type.F32, 1);
        emu.launch("layernorm_forward_bf16", buf.of(t, row), buf.of(t, row), MemorySegment.NULL, buf.zeros(t, c), mean, rstd, 1, c, 1e-5f);
        assertEquals(1f, readF32(mean, 1)[0], "layernorm_forward_bf16 mean of 9600 ones");

        MemorySegment dw = buf.zeros(Type.F32, 3), db = buf.zeros(Type.F32, 3);
        emu.launch("layernorm_backward_params_bf16", buf.of(t, ones), buf.zeros(Type.F32, rows), buf.f32(filled(rows, 1f)), buf.of(t, ones),
                dw, db, rows, 3);
        assertArrayEquals(new float[]{1024, 1024, 1024}, readF32(db, 3), "layernorm_backward_params_bf16 bias grad over 1024 rows");
        assertArrayEquals(new float[]{1024, 1024, 1024}, readF32(dw, 3), "layernorm_backward_params_bf16 weight grad over 1024 rows");

        int n = 2048;
        MemorySegment y = buf.zeros(t, n);
        emu.launch("softmax_forward_bf16", buf.zeros(t, n), y, 1, n, 0);
        for (float p : read(t, y, n)) assertEquals(0x1p-11f, p, "softmax_bf16 of 2048 equal logits");

        MemorySegment probs = buf.zeros(t, n * n);
        emu.launch("attention_softmax_forward_bf16", buf.zeros(t, n * n), probs, n, n, 0.125f);
        float[] last = read(t, probs.asSlice((long) (n - 1) * n * 2), n);
        for (float p : last) assertEquals(0x1p-11f, p, "attention softmax row 2047 over 2048 equal scores");

        MemorySegment lse = buf.zeros(Type.F32, 1);
        emu.launch("crossentropy_forward_bf16", buf.zeros(t, n), buf.ints(0), buf.zeros(Type.F32, 1), lse, buf.ints(Integer.MAX_VALUE),
                1, n, -100, 0f, 0f);
        assertEquals(Math.log(n), readF32(lse, 1)[0], 1e-6, "cross-entropy lse of 2048 zero logits");

        int positions = 1024;
        MemorySegment gw = buf.zeros(Type.F32, 2);
        emu.launch("embedding_backward_bf16", buf.ints(new int[positions]), buf.of(t, filled(positions * 2, 1f)), gw, positions, 2, 1);
        assertArrayEquals(new float[]{1024, 1024}, readF32(gw, 2), "embedding_backward_bf16 of 1024 positions of one id");

        float[] third = filled(4096, 1f / 3);
        MemorySegment partials = buf.zeros(Type.F32, 16), sum = buf.zeros(Type.F32, 1);
        emu.launch("sum_squares_partial_bf16", buf.of(t, third), partials, 4096);
        emu.launch("sum_partials", partials, sum, 16);
        double sq = Type.BF16.round(1f / 3) * (double) Type.BF16.round(1f / 3) * 4096;
        assertEquals(sq, readF32(sum, 1)[0], sq * 1e-6, "sum of squares of 4096 bf16 thirds");
    }

    private static float[] filled(int n, float v) {
        float[] r = new float[n];
        java.util.Arrays.fill(r, v);
        return r;
    }

    // ------------------------------------------------------------------ argument checks

    @Test
    void badArgumentsAreNamed() {
        var e = assertThrows(dev.kiln.KilnException.class, () -> emu.launch("gelu_forward_f32", MemorySegment.NULL, 3));
        assertTrue(e.getMessage().contains("gelu_forward_f32 takes 3 arguments"), e.getMessage());
        var e2 = assertThrows(dev.kiln.KilnException.class, () -> emu.launch("gelu_forward_f32", MemorySegment.NULL, MemorySegment.NULL, 3f));
        assertTrue(e2.getMessage().contains("argument n must be INT"), e2.getMessage());
        var e3 = assertThrows(dev.kiln.KilnException.class, () -> emu.launch("gelu_forward_f64", MemorySegment.NULL));
        assertTrue(e3.getMessage().contains("no CUDA kernel named gelu_forward_f64"), e3.getMessage());
    }
}
