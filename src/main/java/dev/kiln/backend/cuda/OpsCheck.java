package dev.kiln.backend.cuda;

import dev.kiln.backend.Backend;
import dev.kiln.backend.Backend.BinaryOp;
import dev.kiln.backend.cpu.CpuBackend;
import dev.kiln.tensor.DType;
import dev.kiln.tensor.Tensor;

import java.io.PrintStream;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.SplittableRandom;

/**
 * {@code kiln gpu-check --ops}: every {@link Backend} op that has a CUDA kernel, forward and backward, run through
 * {@link CudaBackend} in fp32 and bf16 and against {@link CpuBackend} in double precision on the same inputs (bf16
 * inputs rounded first), one line per op and dtype with the worst error. Tolerances (as the kernel tests'):
 * fp32 outputs |err| ≤ 1e-5·|ref| + 1e-5·max|ref|; bf16 outputs 2⁻⁸ + 1e-5 relative (one rounding) with the same
 * floor; bf16 attention, which rounds its intermediates between kernels and GEMMs, 2⁻⁶ relative + 2⁻⁸·max|ref|.
 */
public final class OpsCheck {
    static final double F32_RTOL = 1e-5, BF16_RTOL = 0x1p-8 + 1e-5, BF16_CHAIN_RTOL = 0x1p-6, BF16_CHAIN_FLOOR = 0x1p-8;

    private OpsCheck() {}

    /** One side of the comparison: the CPU in F64, or the GPU in the dtype under test. */
    static final class Side {
        final Backend be;
        final DType act;
        final CudaRuntime rt;   // null: the CPU side
        final Map<String, Object[]> outs = new LinkedHashMap<>();   // name → {tensor or Double, fp32?}

        Side(Backend be, DType act, CudaRuntime rt) {
            this.be = be;
            this.act = act;
            this.rt = rt;
        }

        static float[] rand(long seed, int n, double std) {
            SplittableRandom r = new SplittableRandom(seed);
            float[] v = new float[n];
            for (int i = 0; i < n; i++) v[i] = (float) (std * (r.nextDouble() * 2 - 1) * 1.7320508);
            return v;
        }

        /** An activation-dtype input holding v (rounded to bf16 on both sides when testing bf16). */
        Tensor in(float[] v, int... shape) {
            Tensor h = Tensor.of(v, shape).to(act);
            return rt == null ? h.to(DType.F64) : rt.toDevice(h);
        }

        /** An input that is fp32 in both kernel variants (statistics, parameter gradients, tables). */
        Tensor f32(float[] v, int... shape) {
            return rt == null ? Tensor.of(v, shape).to(DType.F64) : rt.toDevice(Tensor.of(v, shape));
        }

        Tensor ints(int[] v) {
            Tensor h = Tensor.ofInts(v, v.length);
            return rt == null ? h : rt.toDevice(h);
        }

        Tensor zeros(boolean fp32, int... shape) {
            if (rt == null) return Tensor.zeros(DType.F64, shape);
            Tensor t = rt.empty(fp32 ? DType.F32 : act, shape);
            rt.zero(t);
            return t;
        }

        /** Registers an output to compare; fp32 outputs get the fp32 tolerance in both variants. */
        void out(String name, Tensor t, boolean fp32) {
            outs.put(name, new Object[] {t, fp32});
        }

        void out(String name, double v) {
            outs.put(name, new Object[] {v, true});
        }

        double[] values(String name) {
            Object v = outs.get(name)[0];
            if (v instanceof Double d) return new double[] {d};
            Tensor t = (Tensor) v;
            return (rt == null ? t : rt.toHost(t)).toDoubleArray();
        }
    }

    interface Case {
        void run(Side s);
    }

    /** The cases, by op name (forward and backward together). */
    static Map<String, Case> cases() {
        Map<String, Case> c = new LinkedHashMap<>();
        c.put("binary", s -> {
            int[] shape = {3, 5, 7, 9};
            float[] b = Side.rand(2, 45, 1);
            for (int i = 0; i < b.length; i++) b[i] = 0.5f + Math.abs(b[i]);
            for (BinaryOp op : BinaryOp.values()) {
                Tensor out = s.zeros(false, shape);
                s.be.binary(op, s.in(Side.rand(1, 945, 1), shape), s.in(b, 1, 5, 1, 9).expandView(shape), out);
                s.out(op.name(), out, false);
            }
        });
        c.put("axpy/scale/accumulate", s -> {
            Tensor d = s.in(Side.rand(3, 945, 1), 35, 27);
            s.be.axpy(-0.75, s.in(Side.rand(4, 945, 1), 35, 27), d);
            s.out("axpy", d, false);
            Tensor x = s.in(Side.rand(5, 945, 1), 945);
            s.be.scale(x, 1.5);
            s.out("scale", x, false);
            Tensor a = s.in(Side.rand(6, 945, 1), 27, 35);
            s.be.accumulate(a, s.in(Side.rand(7, 945, 1), 35, 27).transposeView(0, 1));
            s.out("accumulate", a, false);
        });
        c.put("fillRows/sumRows", s -> {
            Tensor rows = s.zeros(false, 21, 45);
            s.be.fillRows(s.in(Side.rand(8, 45, 1), 45), rows);
            s.out("fillRows", rows, false);
            Tensor dst = s.f32(Side.rand(9, 301, 1), 301);
            s.be.sumRows(s.in(Side.rand(10, 37 * 301, 1), 37, 301), dst);
            s.out("sumRows", dst, true);
        });
        c.put("sumOfSquares/allFinite", s -> {
            Tensor x = s.in(Side.rand(11, 10007, 1), 10007);
            s.out("sumOfSquares", s.be.sumOfSquares(x));
            float[] bad = Side.rand(12, 1001, 1);
            bad[1000] = Float.NaN;
            s.out("allFinite", (s.be.allFinite(x) ? 1 : 0) + (s.be.allFinite(s.in(bad, 1001)) ? 2 : 0));
        });
        c.put("gelu", s -> {
            int n = 5003;
            Tensor y = s.zeros(false, n), gi = s.in(Side.rand(13, n, 1), n);
            s.be.gelu(s.in(Side.rand(14, n, 2), n), y);
            s.be.geluBackward(s.in(Side.rand(14, n, 2), n), s.in(Side.rand(15, n, 1), n), gi);
            s.out("forward", y, false);
            s.out("backward", gi, false);
        });
        c.put("layerNorm", s -> {
            int rows = 37, ch = 773, n = rows * ch;
            Tensor out = s.zeros(false, rows, ch), mean = s.zeros(true, rows), rstd = s.zeros(true, rows);
            s.be.layerNorm(s.in(Side.rand(16, n, 2), rows, ch), s.in(Side.rand(17, ch, 1), ch), s.in(Side.rand(18, ch, 1), ch), 1e-5, out, mean, rstd);
            s.out("out", out, false);
            s.out("mean", mean, true);
            s.out("rstd", rstd, true);
            float[] m = Side.rand(19, rows, 0.3), r = Side.rand(20, rows, 0.2);
            for (int i = 0; i < rows; i++) r[i] = 0.8f + Math.abs(r[i]);
            Tensor dx = s.in(Side.rand(21, n, 1), rows, ch), dw = s.f32(Side.rand(22, ch, 1), ch), db = s.f32(Side.rand(23, ch, 1), ch);
            s.be.layerNormBackward(s.in(Side.rand(16, n, 2), rows, ch), s.in(Side.rand(17, ch, 1), ch), s.f32(m, rows), s.f32(r, rows),
                    s.in(Side.rand(24, n, 1), rows, ch), dx, dw, db);
            s.out("dx", dx, false);
            s.out("dw", dw, true);
            s.out("db", db, true);
        });
        c.put("rmsNorm", s -> {
            int rows = 37, ch = 773, n = rows * ch;
            Tensor out = s.zeros(false, rows, ch), rstd = s.zeros(true, rows);
            s.be.rmsNorm(s.in(Side.rand(25, n, 2), rows, ch), s.in(Side.rand(26, ch, 1), ch), 1e-6, out, rstd);
            s.out("out", out, false);
            s.out("rstd", rstd, true);
            float[] r = Side.rand(27, rows, 0.2);
            for (int i = 0; i < rows; i++) r[i] = 0.8f + Math.abs(r[i]);
            Tensor dx = s.in(Side.rand(28, n, 1), rows, ch), dw = s.f32(Side.rand(29, ch, 1), ch);
            s.be.rmsNormBackward(s.in(Side.rand(25, n, 2), rows, ch), s.in(Side.rand(26, ch, 1), ch), s.f32(r, rows),
                    s.in(Side.rand(30, n, 1), rows, ch), dx, dw);
            s.out("dx", dx, false);
            s.out("dw", dw, true);
        });
        c.put("softmax", s -> {
            for (boolean causal : new boolean[] {false, true}) {
                int rows = 3 * 45, len = 45, n = rows * len;
                Tensor y = s.zeros(false, rows, len), gi = s.in(Side.rand(31, n, 1), rows, len);
                s.be.softmax(s.in(Side.rand(32, n, 2), rows, len), y, causal);
                s.be.softmaxBackward(s.in(Side.rand(33, n, 0.5), rows, len), s.in(Side.rand(34, n, 1), rows, len), gi);
                s.out("forward causal=" + causal, y, false);
                s.out("backward causal=" + causal, gi, false);
            }
        });
        c.put("crossEntropy", s -> {
            int rows = 13, v = 1000;
            int[] tg = new int[rows];
            for (int r = 0; r < rows; r++) tg[r] = (r * 37) % v;
            tg[4] = -100;
            Tensor losses = s.zeros(true, rows), lse = s.zeros(true, rows), gl = s.in(Side.rand(35, rows * v, 0.1), rows, v);
            int counted = s.be.crossEntropy(s.in(Side.rand(36, rows * v, 2), rows, v), s.ints(tg), -100, 0.1, 1e-4, losses, lse);
            s.out("count", counted);
            s.out("losses", losses, true);
            s.out("lse", lse, true);
            float[] l = Side.rand(37, rows, 0.5);
            for (int i = 0; i < rows; i++) l[i] += 7;
            s.be.crossEntropyBackward(s.in(Side.rand(36, rows * v, 2), rows, v), s.ints(tg), -100, 0.1, 1e-4, s.f32(l, rows), 1.0 / 12, gl);
            s.out("backward", gl, false);
        });
        c.put("embedding", s -> {
            int n = 29, ch = 67, v = 40;
            int[] ids = new int[n];
            for (int i = 0; i < n; i++) ids[i] = (i * 11) % v;
            Tensor out = s.zeros(false, n, ch), gw = s.f32(Side.rand(38, v * ch, 1), v, ch);
            s.be.embedding(s.ints(ids), s.in(Side.rand(39, v * ch, 1), v, ch), out);
            s.be.embeddingBackward(s.ints(ids), s.in(Side.rand(40, n * ch, 1), n, ch), gw);
            s.out("forward", out, false);
            s.out("backward", gw, true);
        });
        c.put("attention", s -> {
            int b = 2, t = 37, nh = 3, d = 16, ch = nh * d;
            Tensor out = s.zeros(false, b, t, ch), probs = s.zeros(false, b, nh, t, t), g = s.in(Side.rand(41, b * t * 3 * ch, 1), b, t, 3 * ch);
            Tensor qkv = s.in(Side.rand(42, b * t * 3 * ch, 1), b, t, 3 * ch);
            s.be.attention(qkv, nh, out, probs);
            s.be.attentionBackward(qkv, nh, probs, s.in(Side.rand(43, b * t * ch, 1), b, t, ch), g);
            s.out("probs", probs, false);
            s.out("out", out, false);
            s.out("backward", g, false);
        });
        c.put("rope", s -> {
            int rows = 22, w = 42, d = 14, tLen = 11, h = d / 2;
            float[] cos = new float[tLen * h], sin = new float[tLen * h];
            for (int i = 0; i < cos.length; i++) {
                double angle = (i / h) * Math.pow(10000, -2.0 * (i % h) / d);
                cos[i] = (float) Math.cos(angle);
                sin[i] = (float) Math.sin(angle);
            }
            Tensor out = s.zeros(false, rows, w), gx = s.in(Side.rand(44, rows * w, 1), rows, w);
            s.be.rope(s.in(Side.rand(45, rows * w, 1), rows, w), d, s.f32(cos, tLen, h), s.f32(sin, tLen, h), out);
            s.be.ropeBackward(s.in(Side.rand(46, rows * w, 1), rows, w), d, s.f32(cos, tLen, h), s.f32(sin, tLen, h), gx);
            s.out("forward", out, false);
            s.out("backward", gx, false);
        });
        c.put("silu/swiglu", s -> {
            int n = 5003;
            Tensor y = s.zeros(false, n), sw = s.zeros(false, n), gs = s.in(Side.rand(47, n, 1), n), ga = s.in(Side.rand(48, n, 1), n), gu = s.in(Side.rand(49, n, 1), n);
            s.be.silu(s.in(Side.rand(50, n, 2), n), y);
            s.be.swiglu(s.in(Side.rand(50, n, 2), n), s.in(Side.rand(51, n, 1), n), sw);
            s.be.siluBackward(s.in(Side.rand(50, n, 2), n), s.in(Side.rand(52, n, 1), n), gs);
            s.be.swigluBackward(s.in(Side.rand(50, n, 2), n), s.in(Side.rand(51, n, 1), n), s.in(Side.rand(52, n, 1), n), ga, gu);
            s.out("silu", y, false);
            s.out("swiglu", sw, false);
            s.out("silu backward", gs, false);
            s.out("swiglu backward gate", ga, false);
            s.out("swiglu backward up", gu, false);
        });
        c.put("adamw", s -> {
            if (s.act != DType.F32) return;   // fp32 master weights only
            int n = 1031;
            float[] v0 = Side.rand(53, n, 0.01);
            for (int i = 0; i < n; i++) v0[i] = Math.abs(v0[i]);
            Tensor p = s.f32(Side.rand(54, n, 1), n), m = s.f32(Side.rand(55, n, 0.1), n), v = s.f32(v0, n);
            for (int step = 1; step <= 3; step++) s.be.adamw(p, s.f32(Side.rand(56 + step, n, 1), n), m, v, 1e-2, 0.9, 0.95, 1e-8, 0.1, step);
            s.out("param", p, true);
            s.out("m", m, true);
            s.out("v", v, true);
        });
        return c;
    }

    /**
     * The largest share of its tolerance any element uses: |got − ref| / (rtol·|ref| + floor·max|ref|); at most 1
     * passes. Infinite for a length mismatch or a non-finite result where the reference is finite.
     */
    static double toleranceUsed(double[] ref, double[] got, double rtol, double floor) {
        if (ref.length != got.length) return Double.POSITIVE_INFINITY;
        double max = 0, worst = 0;
        for (double r : ref) max = Math.max(max, Math.abs(r));
        for (int i = 0; i < ref.length; i++) {
            double err = Math.abs(got[i] - ref[i]), bound = rtol * Math.abs(ref[i]) + floor * max;
            if (Double.isNaN(err)) return Double.POSITIVE_INFINITY;
            if (err > 0) worst = Math.max(worst, bound == 0 ? Double.POSITIVE_INFINITY : err / bound);
        }
        return worst;
    }

    /** Runs every case on rt in F32 and BF16; prints a line per op, dtype and output; returns the failures. */
    public static List<String> run(PrintStream out, CudaRuntime rt) {
        List<String> failed = new ArrayList<>();
        CudaBackend gpu = CudaBackend.of(rt.device());
        for (DType act : List.of(DType.F32, DType.BF16)) {
            for (var e : cases().entrySet()) {
                Side cpu = new Side(CpuBackend.get(), act, null), dev = new Side(gpu, act, rt);
                String op = e.getKey() + " " + act;
                try {
                    e.getValue().run(cpu);
                    e.getValue().run(dev);
                    rt.synchronize();
                } catch (RuntimeException ex) {
                    out.printf("FAIL     op %-28s %s%n", op, ex.getMessage());
                    failed.add(op);
                    continue;
                }
                for (String name : cpu.outs.keySet()) {
                    boolean fp32 = (Boolean) cpu.outs.get(name)[1] || act == DType.F32;
                    boolean chain = e.getKey().equals("attention") && !fp32;
                    double rtol = fp32 ? F32_RTOL : chain ? BF16_CHAIN_RTOL : BF16_RTOL, floor = chain ? BF16_CHAIN_FLOOR : F32_RTOL;
                    double worst = toleranceUsed(cpu.values(name), dev.values(name), rtol, floor);
                    boolean ok = worst <= 1;
                    out.printf("%-8s op %-28s %-24s worst error %.3f of its tolerance (%.1e·|ref| + %.1e·max|ref|)%n", ok ? "ok" : "FAIL", op, name,
                            worst, rtol, floor);
                    if (!ok) failed.add(op + " " + name);
                }
            }
        }
        return failed;
    }
}
