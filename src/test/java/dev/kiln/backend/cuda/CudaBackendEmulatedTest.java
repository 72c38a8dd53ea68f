package dev.kiln.backend.cuda;

import dev.kiln.backend.Backend;
import dev.kiln.backend.Backend.BinaryOp;
import dev.kiln.backend.cpu.CpuBackend;
import dev.kiln.backend.cuda.HostBuffers.Type;
import dev.kiln.tensor.DType;
import dev.kiln.tensor.Tensor;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.api.parallel.Isolated;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.EnumSource;

import java.nio.file.Path;

import static dev.kiln.backend.cuda.HostBuffers.randn;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertSame;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * Every wired {@link Backend} op through {@link CudaBackend} on the {@link EmulatedDevice} — NVRTC module, function
 * lookup, kernelParams packing, launch geometry, cuBLAS GEMMs, scratch buffers, error read-back: the production path
 * down to cuLaunchKernel — against {@link CpuBackend} in double precision on the same (bf16-rounded) inputs.
 * Tolerances are KernelEmulationTest's: fp32 outputs within {@value KernelEmulationTest#F32_RTOL} relative plus
 * that fraction of the largest |value|; bf16 outputs within 2⁻⁸ + 1e-5 relative plus the same floor. Attention in
 * bf16 rounds its intermediates (scores, probabilities, the head outputs and their gradients) to bf16 between kernels
 * and GEMMs, so it gets {@value #BF16_CHAIN_RTOL} relative plus 2⁻⁸ of the largest |value| (a few bf16 roundings).
 */
@Isolated
class CudaBackendEmulatedTest {
    static final double BF16_CHAIN_RTOL = 0x1p-6;
    private CudaRuntime rt;
    private CudaBackend gpu;
    private final CpuBackend cpu = CpuBackend.get();

    @BeforeEach
    void open(@TempDir Path cache) {
        rt = EmulatedDevice.install(cache);
        gpu = CudaBackend.of(rt.device());
    }

    @AfterEach
    void close() {
        EmulatedDevice.uninstall();
    }

    private static DType dtype(Type t) {
        return t == Type.F32 ? DType.F32 : DType.BF16;
    }

    /** A device tensor of t holding v (rounded to t). */
    private Tensor dev(Type t, float[] v, int... shape) {
        return rt.toDevice(Tensor.of(v, shape).to(dtype(t)));
    }

    private Tensor devF32(float[] v, int... shape) {
        return rt.toDevice(Tensor.of(v, shape));
    }

    private static Tensor ref(float[] v, int... shape) {
        return Tensor.ofDoubles(HostBuffers.toDouble(v), shape);
    }

    private float[] host(Tensor d) {
        return rt.toHost(d).toFloatArray();
    }

    private static double rtol(Type t) {
        return t == Type.F32 ? KernelEmulationTest.F32_RTOL : KernelEmulationTest.BF16_RTOL;
    }

    private void check(String what, Type t, Tensor ref, Tensor got) {
        HostBuffers.assertClose(what + " (" + t + ")", ref.toDoubleArray(), host(got), rtol(t), KernelEmulationTest.F32_RTOL);
    }

    private void checkF32(String what, Tensor ref, Tensor got) {
        check(what, Type.F32, ref, got);
    }

    @Test
    void backendOfADeviceTensorIsTheEmulatedGpu() {
        Tensor x = rt.empty(DType.F32, 3);
        assertSame(gpu, Backend.of(x));
        assertSame(rt, gpu.runtime());
    }

    @ParameterizedTest
    @EnumSource(Type.class)
    void elementwise(Type t) {
        int[] shape = {3, 5, 7, 9};
        int n = 945;
        float[] a = t.round(randn(1, n, 1)), b = t.round(randn(2, 45, 1));
        for (int i = 0; i < b.length; i++) b[i] = t.round(0.5f + Math.abs(b[i]));
        for (BinaryOp op : BinaryOp.values()) {
            Tensor out = rt.empty(dtype(t), shape), r = Tensor.zeros(DType.F64, shape);
            gpu.binary(op, dev(t, a, shape), dev(t, b, 1, 5, 1, 9).expandView(shape), out);
            cpu.binary(op, ref(a, shape), ref(b, 1, 5, 1, 9).expandView(shape), r);
            check("binary " + op, t, r, out);
        }
        // axpy, scale, accumulate of a transposed (strided) source, fillRows
        float[] c = t.round(randn(3, n, 1));
        Tensor d = dev(t, c, 35, 27), r = ref(c, 35, 27);
        gpu.axpy(-0.75, dev(t, a, 35, 27), d);
        cpu.axpy(-0.75, ref(a, 35, 27), r);
        check("axpy", t, r, d);
        r = ref(host(d), 35, 27);   // scale alone: from the values as stored (bf16-rounded by axpy)
        gpu.scale(d, 1.5);
        cpu.scale(r, 1.5);
        check("scale", t, r, d);
        Tensor d2 = dev(t, c, 27, 35), r2 = ref(c, 27, 35);
        gpu.accumulate(d2, dev(t, a, 35, 27).transposeView(0, 1));
        cpu.accumulate(r2, ref(a, 35, 27).transposeView(0, 1));
        check("accumulate (strided source)", t, r2, d2);
        Tensor rows = rt.empty(dtype(t), 21, 45), rowsRef = Tensor.zeros(DType.F64, 21, 45);
        gpu.fillRows(dev(t, b, 45), rows);
        cpu.fillRows(ref(b, 45), rowsRef);
        check("fillRows", t, rowsRef, rows);
    }

    @ParameterizedTest
    @EnumSource(Type.class)
    void reductions(Type t) {
        int rows = 37, n = 301;
        float[] x = t.round(randn(4, rows * n, 1)), acc = randn(5, n, 1);
        Tensor dst = devF32(acc, n), r = ref(acc, n);
        gpu.sumRows(dev(t, x, rows, n), dst);
        cpu.sumRows(ref(x, rows, n), r);
        checkF32("sumRows", r, dst);
        // a bias gradient through accumulate: a stride-0 (broadcast over rows) fp32 destination
        if (t == Type.F32) {
            Tensor dst2 = devF32(acc, n), r2 = ref(acc, n);
            gpu.accumulate(dst2.view(1, n).expandView(rows, n), dev(t, x, rows, n));
            cpu.accumulate(r2.view(1, n).expandView(rows, n), ref(x, rows, n));
            checkF32("accumulate into a broadcast", r2, dst2);
        }
        Tensor xs = dev(t, x, rows * n);
        double ss = gpu.sumOfSquares(xs), ssRef = cpu.sumOfSquares(ref(x, rows * n));
        assertEquals(ssRef, ss, KernelEmulationTest.F32_RTOL * ssRef, "sumOfSquares");
        assertTrue(gpu.allFinite(xs));
        x[rows * n - 1] = Float.NaN;
        assertFalse(gpu.allFinite(dev(t, x, rows * n)));
        x[rows * n - 1] = Float.NEGATIVE_INFINITY;
        assertFalse(gpu.allFinite(dev(t, x, rows * n)));
    }

    @ParameterizedTest
    @EnumSource(Type.class)
    void geluLayerNormSoftmax(Type t) {
        int rows = 37, c = 53, n = rows * c;
        float[] x = t.round(randn(6, n, 2)), g = t.round(randn(7, n, 1)), acc = t.round(randn(8, n, 1));
        float[] w = t.round(randn(9, c, 1)), b = t.round(randn(10, c, 1));
        Tensor y = rt.empty(dtype(t), rows, c), yRef = Tensor.zeros(DType.F64, rows, c);
        gpu.gelu(dev(t, x, rows, c), y);
        cpu.gelu(ref(x, rows, c), yRef);
        check("gelu", t, yRef, y);
        Tensor gi = dev(t, acc, rows, c), giRef = ref(acc, rows, c);
        gpu.geluBackward(dev(t, x, rows, c), dev(t, g, rows, c), gi);
        cpu.geluBackward(ref(x, rows, c), ref(g, rows, c), giRef);
        check("geluBackward", t, giRef, gi);

        Tensor out = rt.empty(dtype(t), rows, c), mean = rt.empty(DType.F32, rows), rstd = rt.empty(DType.F32, rows);
        Tensor outRef = Tensor.zeros(DType.F64, rows, c), meanRef = Tensor.zeros(DType.F64, rows), rstdRef = Tensor.zeros(DType.F64, rows);
        gpu.layerNorm(dev(t, x, rows, c), dev(t, w, c), dev(t, b, c), 1e-5, out, mean, rstd);
        cpu.layerNorm(ref(x, rows, c), ref(w, c), ref(b, c), 1e-5, outRef, meanRef, rstdRef);
        check("layerNorm", t, outRef, out);
        checkF32("layerNorm mean", meanRef, mean);
        checkF32("layerNorm rstd", rstdRef, rstd);
        float[] dw0 = randn(11, c, 1), db0 = randn(12, c, 1);
        Tensor dx = dev(t, acc, rows, c), dw = devF32(dw0, c), db = devF32(db0, c);
        Tensor dxRef = ref(acc, rows, c), dwRef = ref(dw0, c), dbRef = ref(db0, c);
        gpu.layerNormBackward(dev(t, x, rows, c), dev(t, w, c), mean, rstd, dev(t, g, rows, c), dx, dw, db);
        // the reference takes the kernel's fp32 statistics, as the kernels do
        cpu.layerNormBackward(ref(x, rows, c), ref(w, c), ref(host(mean), rows), ref(host(rstd), rows), ref(g, rows, c), dxRef, dwRef, dbRef);
        check("layerNormBackward dx", t, dxRef, dx);
        checkF32("layerNormBackward dw", dwRef, dw);
        checkF32("layerNormBackward db", dbRef, db);

        for (boolean causal : new boolean[] {false, true}) {
            int blocks = 3, len = 45;   // causal: rows grouped in blocks of len
            float[] s = t.round(randn(13, blocks * len * len, 2)), gs = t.round(randn(14, blocks * len * len, 1));
            Tensor p = rt.empty(dtype(t), blocks * len, len), pRef = Tensor.zeros(DType.F64, blocks * len, len);
            gpu.softmax(dev(t, s, blocks * len, len), p, causal);
            cpu.softmax(ref(s, blocks * len, len), pRef, causal);
            check("softmax causal=" + causal, t, pRef, p);
            float[] stored = host(p);
            Tensor gIn = rt.empty(dtype(t), blocks * len, len), gInRef = Tensor.zeros(DType.F64, blocks * len, len);
            rt.zero(gIn);
            gpu.softmaxBackward(p, dev(t, gs, blocks * len, len), gIn);
            cpu.softmaxBackward(ref(stored, blocks * len, len), ref(gs, blocks * len, len), gInRef);
            check("softmaxBackward causal=" + causal, t, gInRef, gIn);
        }
    }

    @ParameterizedTest
    @EnumSource(Type.class)
    void crossEntropyAndEmbedding(Type t) {
        int rows = 13, v = 300;
        float[] logits = t.round(randn(15, rows * v, 2)), acc = t.round(randn(16, rows * v, 0.1));
        int[] targets = new int[rows];
        for (int r = 0; r < rows; r++) targets[r] = (r * 37) % v;
        targets[4] = -100;   // ignored
        Tensor tg = rt.toDevice(Tensor.ofInts(targets, rows)), tgRef = Tensor.ofInts(targets, rows);
        Tensor losses = rt.empty(DType.F32, rows), lse = rt.empty(DType.F32, rows);
        Tensor lossesRef = Tensor.zeros(DType.F64, rows), lseRef = Tensor.zeros(DType.F64, rows);
        int counted = gpu.crossEntropy(dev(t, logits, rows, v), tg, -100, 0.1, 1e-4, losses, lse);
        assertEquals(cpu.crossEntropy(ref(logits, rows, v), tgRef, -100, 0.1, 1e-4, lossesRef, lseRef), counted);
        assertEquals(rows - 1, counted);
        checkF32("crossEntropy losses", lossesRef, losses);
        checkF32("crossEntropy lse", lseRef, lse);
        Tensor gl = dev(t, acc, rows, v), glRef = ref(acc, rows, v);
        gpu.crossEntropyBackward(dev(t, logits, rows, v), tg, -100, 0.1, 1e-4, lse, 1.0 / counted, gl);
        cpu.crossEntropyBackward(ref(logits, rows, v), tgRef, -100, 0.1, 1e-4, ref(host(lse), rows), 1.0 / counted, glRef);
        check("crossEntropyBackward", t, glRef, gl);

        int[] bad = targets.clone();
        bad[7] = v;
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                () -> gpu.crossEntropy(dev(t, logits, rows, v), rt.toDevice(Tensor.ofInts(bad, rows)), -100, 0, 0, losses, lse));
        assertEquals("CudaBackend.crossEntropy: target 300 at row 7 is outside the vocabulary [0, 300)", e.getMessage());

        int n = 29, c = 67;
        int[] ids = new int[n];
        for (int i = 0; i < n; i++) ids[i] = (i * 11) % 40;   // repeats: the backward sums them
        float[] table = t.round(randn(17, 40 * c, 1)), go = t.round(randn(18, n * c, 1)), gw0 = randn(19, 40 * c, 1);
        Tensor out = rt.empty(dtype(t), n, c), outRef = Tensor.zeros(DType.F64, n, c);
        gpu.embedding(rt.toDevice(Tensor.ofInts(ids, n)), dev(t, table, 40, c), out);
        cpu.embedding(Tensor.ofInts(ids, n), ref(table, 40, c), outRef);
        check("embedding", t, outRef, out);
        Tensor gw = devF32(gw0, 40, c), gwRef = ref(gw0, 40, c);
        gpu.embeddingBackward(rt.toDevice(Tensor.ofInts(ids, n)), dev(t, go, n, c), gw);
        cpu.embeddingBackward(Tensor.ofInts(ids, n), ref(go, n, c), gwRef);
        checkF32("embeddingBackward", gwRef, gw);
        ids[5] = -3;
        IllegalArgumentException e2 = assertThrows(IllegalArgumentException.class,
                () -> gpu.embedding(rt.toDevice(Tensor.ofInts(ids, n)), dev(t, table, 40, c), out));
        assertEquals("CudaBackend.embedding: token id -3 at position 5 is outside the embedding table [0, 40)", e2.getMessage());
    }

    @ParameterizedTest
    @EnumSource(Type.class)
    void attentionForwardAndBackward(Type t) {
        int b = 2, tt = 37, nh = 3, d = 8, c = nh * d;
        float[] qkv = t.round(randn(20, b * tt * 3 * c, 1)), go = t.round(randn(21, b * tt * c, 1)), acc = t.round(randn(22, b * tt * 3 * c, 1));
        Tensor out = rt.empty(dtype(t), b, tt, c), probs = rt.empty(dtype(t), b, nh, tt, tt);
        Tensor outRef = Tensor.zeros(DType.F64, b, tt, c), probsRef = Tensor.zeros(DType.F64, b, nh, tt, tt);
        gpu.attention(dev(t, qkv, b, tt, 3 * c), nh, out, probs);
        cpu.attention(ref(qkv, b, tt, 3 * c), nh, outRef, probsRef);
        double r = t == Type.F32 ? KernelEmulationTest.F32_RTOL : BF16_CHAIN_RTOL, floor = t == Type.F32 ? KernelEmulationTest.F32_RTOL : 0x1p-8;
        HostBuffers.assertClose("attention probs (" + t + ")", probsRef.toDoubleArray(), host(probs), r, floor);
        HostBuffers.assertClose("attention out (" + t + ")", outRef.toDoubleArray(), host(out), r, floor);
        Tensor gq = dev(t, acc, b, tt, 3 * c), gqRef = ref(acc, b, tt, 3 * c);
        gpu.attentionBackward(dev(t, qkv, b, tt, 3 * c), nh, probs, dev(t, go, b, tt, c), gq);
        cpu.attentionBackward(ref(qkv, b, tt, 3 * c), nh, probsRef, ref(go, b, tt, c), gqRef);
        HostBuffers.assertClose("attentionBackward (" + t + ")", gqRef.toDoubleArray(), host(gq), r, floor);
    }

    @Test
    void adamwUpdatesFp32MasterWeights() {
        int n = 1031;
        float[] p = randn(23, n, 1), m0 = randn(24, n, 0.1), v0 = new float[n];
        for (int i = 0; i < n; i++) v0[i] = Math.abs(randn(25, n, 0.01f)[i]);
        Tensor pd = devF32(p, n), md = devF32(m0, n), vd = devF32(v0, n), pr = ref(p, n), mr = ref(m0, n), vr = ref(v0, n);
        for (int step = 1; step <= 3; step++) {
            float[] g = randn(30 + step, n, 1);
            gpu.adamw(pd, devF32(g, n), md, vd, 1e-2, 0.9, 0.95, 1e-8, 0.1, step);
            cpu.adamw(pr, ref(g, n), mr, vr, 1e-2, 0.9, 0.95, 1e-8, 0.1, step);
        }
        checkF32("adamw param", pr, pd);
        checkF32("adamw m", mr, md);
        checkF32("adamw v", vr, vd);
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                () -> gpu.adamw(dev(Type.BF16, p, n), devF32(p, n), md, vd, 1e-2, 0.9, 0.95, 1e-8, 0.1, 1));
        assertEquals("CudaBackend.adamw: param (fp32 master weights) must be F32 (kernels keep it fp32), got BF16", e.getMessage());
    }

    @ParameterizedTest
    @EnumSource(Type.class)
    void llamaOps(Type t) {
        int rows = 2 * 11, c = 42, d = 14, n = rows * c, tLen = 11;
        float[] x = t.round(randn(60, n, 2)), w = t.round(randn(61, c, 1)), g = t.round(randn(62, n, 1)), acc = t.round(randn(63, n, 1));
        float[] dw0 = randn(64, c, 1);
        Tensor out = rt.empty(dtype(t), rows, c), rstd = rt.empty(DType.F32, rows);
        Tensor outRef = Tensor.zeros(DType.F64, rows, c), rstdRef = Tensor.zeros(DType.F64, rows);
        gpu.rmsNorm(dev(t, x, rows, c), dev(t, w, c), 1e-6, out, rstd);
        cpu.rmsNorm(ref(x, rows, c), ref(w, c), 1e-6, outRef, rstdRef);
        check("rmsNorm", t, outRef, out);
        checkF32("rmsNorm rstd", rstdRef, rstd);
        Tensor dx = dev(t, acc, rows, c), dw = devF32(dw0, c), dxRef = ref(acc, rows, c), dwRef = ref(dw0, c);
        gpu.rmsNormBackward(dev(t, x, rows, c), dev(t, w, c), rstd, dev(t, g, rows, c), dx, dw);
        cpu.rmsNormBackward(ref(x, rows, c), ref(w, c), ref(host(rstd), rows), ref(g, rows, c), dxRef, dwRef);
        check("rmsNormBackward dx", t, dxRef, dx);
        checkF32("rmsNormBackward dw", dwRef, dw);

        float[] cos = new float[tLen * d / 2], sin = new float[tLen * d / 2];
        for (int i = 0; i < cos.length; i++) {
            double angle = (i / (d / 2)) * Math.pow(10000, -2.0 * (i % (d / 2)) / d);
            cos[i] = (float) Math.cos(angle);
            sin[i] = (float) Math.sin(angle);
        }
        Tensor r = rt.empty(dtype(t), rows, c), rRef = Tensor.zeros(DType.F64, rows, c);
        gpu.rope(dev(t, x, rows, c), d, devF32(cos, tLen, d / 2), devF32(sin, tLen, d / 2), r);
        cpu.rope(ref(x, rows, c), d, ref(cos, tLen, d / 2), ref(sin, tLen, d / 2), rRef);
        check("rope", t, rRef, r);
        Tensor rg = dev(t, acc, rows, c), rgRef = ref(acc, rows, c);
        gpu.ropeBackward(dev(t, g, rows, c), d, devF32(cos, tLen, d / 2), devF32(sin, tLen, d / 2), rg);
        cpu.ropeBackward(ref(g, rows, c), d, ref(cos, tLen, d / 2), ref(sin, tLen, d / 2), rgRef);
        check("ropeBackward", t, rgRef, rg);

        Tensor s = rt.empty(dtype(t), n), sRef = Tensor.zeros(DType.F64, n), sw = rt.empty(dtype(t), n), swRef = Tensor.zeros(DType.F64, n);
        gpu.silu(dev(t, x, n), s);
        cpu.silu(ref(x, n), sRef);
        check("silu", t, sRef, s);
        gpu.swiglu(dev(t, x, n), dev(t, g, n), sw);
        cpu.swiglu(ref(x, n), ref(g, n), swRef);
        check("swiglu", t, swRef, sw);
        Tensor gs = dev(t, acc, n), gsRef = ref(acc, n), ga = dev(t, acc, n), gaRef = ref(acc, n), gu = dev(t, acc, n), guRef = ref(acc, n);
        gpu.siluBackward(dev(t, x, n), dev(t, g, n), gs);
        cpu.siluBackward(ref(x, n), ref(g, n), gsRef);
        check("siluBackward", t, gsRef, gs);
        gpu.swigluBackward(dev(t, x, n), dev(t, g, n), dev(t, acc, n), ga, gu);
        cpu.swigluBackward(ref(x, n), ref(g, n), ref(acc, n), gaRef, guRef);
        check("swigluBackward gate", t, gaRef, ga);
        check("swigluBackward up", t, guRef, gu);
    }

    /** {@code kiln gpu-check --ops}'s comparison, run on the emulated device: every op passes, and it can fail. */
    @Test
    void opsCheckPassesOnTheEmulatedDevice() {
        java.io.ByteArrayOutputStream bytes = new java.io.ByteArrayOutputStream();
        java.util.List<String> failed = OpsCheck.run(new java.io.PrintStream(bytes, true), rt);
        String out = bytes.toString();
        System.out.print(out);
        assertEquals(java.util.List.of(), failed, out);
        for (String op : OpsCheck.cases().keySet())
            for (String dt : new String[] {"F32", "BF16"})
                if (!(op.equals("adamw") && dt.equals("BF16"))) assertTrue(out.contains("ok       op " + op + " " + dt), op + " " + dt + " in:\n" + out);
        // and its comparison can fail: 2e-5 relative is outside the fp32 tolerance, NaN and a short result too
        double[] ref = {1, -2, 3};
        assertTrue(OpsCheck.toleranceUsed(ref, new double[] {1, -2, 3 * (1 + 0.9e-5)}, 1e-5, 0) <= 1);
        assertTrue(OpsCheck.toleranceUsed(ref, new double[] {1, -2, 3 * (1 + 2e-5)}, 1e-5, 0) > 1);
        assertTrue(OpsCheck.toleranceUsed(ref, new double[] {1, Double.NaN, 3}, 1e-5, 1e-5) > 1);
        assertTrue(OpsCheck.toleranceUsed(ref, new double[] {1, -2}, 1e-5, 1e-5) > 1);
    }

    @Test
    void opsWithoutAKernelSaySo() {
        Tensor x = rt.empty(DType.F32, 4, 8);
        UnsupportedOperationException e = assertThrows(UnsupportedOperationException.class, () -> gpu.rowMaxAbs(x, rt.empty(DType.F32, 4)));
        assertEquals("CudaBackend.rowMaxAbs is not wired to a CUDA kernel yet (QAT has no CUDA kernel); use --device cpu", e.getMessage());
        IllegalArgumentException f = assertThrows(IllegalArgumentException.class, () -> gpu.scale(rt.empty(DType.F64, 3), 2));
        assertEquals("CudaBackend.scale: F64 tensors have no CUDA kernel (F32 and BF16 do)", f.getMessage());
    }
}
