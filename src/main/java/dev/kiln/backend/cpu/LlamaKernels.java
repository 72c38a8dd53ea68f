package dev.kiln.backend.cpu;

import dev.kiln.tensor.Tensor;
import jdk.incubator.vector.FloatVector;
import jdk.incubator.vector.VectorSpecies;

import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteOrder;

/**
 * The kernels a Llama block adds to GPT's: RMS norm, rotary position embedding (Hugging Face's
 * rotate_half convention), SiLU and SwiGLU. Each has a dtype-generic reference path (through
 * {@link Buf}, accumulating in double: F64 for gradient checks) and an fp32 path; RMS norm and the
 * activations run on the Vector API. Backward kernels accumulate (+=) into their gradients.
 */
final class LlamaKernels {
    private static final VectorSpecies<Float> SP = FloatVector.SPECIES_PREFERRED;
    private static final int L = SP.length();
    private static final ByteOrder O = ByteOrder.nativeOrder();
    private static final ValueLayout.OfFloat F = ValueLayout.JAVA_FLOAT_UNALIGNED;

    private LlamaKernels() {}

    // ---------------------------------------------------------------- RMS norm
    // y = x·rstd·w, rstd = 1/√(mean(x²) + eps)
    // dx = rstd·dn − x·rstd³·Σ(dn·x)/c with dn = g·w;  dw = Σ_rows g·x·rstd

    static void rmsNorm(CpuBackend be, Tensor x, Tensor w, double eps, Tensor out, Tensor rstd) {
        int c = x.size(-1);
        int rows = Math.toIntExact(x.numel() / c);
        if (Buf.isF32(x, w, out, rstd)) {
            MemorySegment xs = x.segment(), ws = w.segment(), os = out.segment(), rs = rstd.segment();
            long xo = x.offset() * 4, wo = w.offset() * 4, oo = out.offset() * 4, ro = rstd.offset() * 4;
            int bound = SP.loopBound(c);
            be.pool().parallelFor(rows, 8, (s, e) -> {
                for (int r = s; r < e; r++) {
                    long xr = xo + 4L * r * c, or = oo + 4L * r * c;
                    FloatVector acc = FloatVector.zero(SP);
                    int j = 0;
                    for (; j < bound; j += L) {
                        FloatVector v = FloatVector.fromMemorySegment(SP, xs, xr + 4L * j, O);
                        acc = v.fma(v, acc);
                    }
                    float ss = VecMath.sumLanes(acc);
                    for (; j < c; j++) {
                        float v = xs.get(F, xr + 4L * j);
                        ss += v * v;
                    }
                    float k = (float) (1.0 / Math.sqrt(ss / c + eps));
                    rs.set(F, ro + 4L * r, k);
                    for (j = 0; j < bound; j += L)
                        FloatVector.fromMemorySegment(SP, xs, xr + 4L * j, O).mul(k).mul(FloatVector.fromMemorySegment(SP, ws, wo + 4L * j, O))
                                .intoMemorySegment(os, or + 4L * j, O);
                    for (; j < c; j++) os.set(F, or + 4L * j, xs.get(F, xr + 4L * j) * k * ws.get(F, wo + 4L * j));
                }
            });
            return;
        }
        Buf xb = Buf.of(x), wb = Buf.of(w), ob = Buf.of(out), rb = Buf.of(rstd);
        be.pool().parallelFor(rows, 8, (s, e) -> {
            for (int r = s; r < e; r++) {
                long base = x.offset() + (long) r * c, obase = out.offset() + (long) r * c;
                double ss = 0;
                for (int j = 0; j < c; j++) ss += xb.get(base + j) * xb.get(base + j);
                double k = 1.0 / Math.sqrt(ss / c + eps);
                rb.set(rstd.offset() + r, k);
                for (int j = 0; j < c; j++) ob.set(obase + j, xb.get(base + j) * k * wb.get(w.offset() + j));
            }
        });
    }

    static void rmsNormBackward(CpuBackend be, Tensor x, Tensor w, Tensor rstd, Tensor g, Tensor gx, Tensor gw) {
        int c = x.size(-1);
        int rows = Math.toIntExact(x.numel() / c);
        if (Buf.isF32(x, w, rstd, g, gx, gw)) {
            MemorySegment xs = x.segment(), ws = w.segment(), rs = rstd.segment(), gs = g.segment();
            long xo = x.offset() * 4, wo = w.offset() * 4, ro = rstd.offset() * 4, go = g.offset() * 4;
            int bound = SP.loopBound(c);
            if (gx != null) {
                MemorySegment ds = gx.segment();
                long dOff = gx.offset() * 4;
                be.pool().parallelFor(rows, 8, (s, e) -> {
                    for (int r = s; r < e; r++) {
                        long xr = xo + 4L * r * c, gr = go + 4L * r * c, dr = dOff + 4L * r * c;
                        float k = rs.get(F, ro + 4L * r);
                        FloatVector acc = FloatVector.zero(SP);
                        int j = 0;
                        for (; j < bound; j += L) {
                            FloatVector dn = FloatVector.fromMemorySegment(SP, gs, gr + 4L * j, O).mul(FloatVector.fromMemorySegment(SP, ws, wo + 4L * j, O));
                            acc = dn.fma(FloatVector.fromMemorySegment(SP, xs, xr + 4L * j, O), acc);
                        }
                        float dot = VecMath.sumLanes(acc);
                        for (; j < c; j++) dot += gs.get(F, gr + 4L * j) * ws.get(F, wo + 4L * j) * xs.get(F, xr + 4L * j);
                        float coef = k * k * k * dot / c;
                        for (j = 0; j < bound; j += L) {
                            FloatVector dn = FloatVector.fromMemorySegment(SP, gs, gr + 4L * j, O).mul(FloatVector.fromMemorySegment(SP, ws, wo + 4L * j, O));
                            FloatVector xv = FloatVector.fromMemorySegment(SP, xs, xr + 4L * j, O);
                            dn.mul(k).sub(xv.mul(coef)).add(FloatVector.fromMemorySegment(SP, ds, dr + 4L * j, O)).intoMemorySegment(ds, dr + 4L * j, O);
                        }
                        for (; j < c; j++)
                            ds.set(F, dr + 4L * j, ds.get(F, dr + 4L * j) + gs.get(F, gr + 4L * j) * ws.get(F, wo + 4L * j) * k - xs.get(F, xr + 4L * j) * coef);
                    }
                });
            }
            if (gw != null) {
                // split by column block: each column is summed in row order by one thread (deterministic)
                MemorySegment dws = gw.segment();
                long dwo = gw.offset() * 4;
                int blocks = (c + L - 1) / L;
                be.pool().parallelFor(blocks, 1, (s, e) -> {
                    int j = s * L, j1 = Math.min(c, e * L);
                    for (; j + L <= j1; j += L) {
                        FloatVector acc = FloatVector.fromMemorySegment(SP, dws, dwo + 4L * j, O);
                        for (int r = 0; r < rows; r++) {
                            long off = 4L * ((long) r * c + j);
                            acc = FloatVector.fromMemorySegment(SP, gs, go + off, O).mul(FloatVector.fromMemorySegment(SP, xs, xo + off, O))
                                    .fma(FloatVector.broadcast(SP, rs.get(F, ro + 4L * r)), acc);
                        }
                        acc.intoMemorySegment(dws, dwo + 4L * j, O);
                    }
                    for (; j < j1; j++) {
                        float acc = dws.get(F, dwo + 4L * j);
                        for (int r = 0; r < rows; r++) {
                            long off = 4L * ((long) r * c + j);
                            acc += gs.get(F, go + off) * xs.get(F, xo + off) * rs.get(F, ro + 4L * r);
                        }
                        dws.set(F, dwo + 4L * j, acc);
                    }
                });
            }
            return;
        }
        Buf xb = Buf.of(x), wb = Buf.of(w), rb = Buf.of(rstd), gb = Buf.of(g);
        if (gx != null) {
            Buf db = Buf.of(gx);
            be.pool().parallelFor(rows, 8, (s, e) -> {
                for (int r = s; r < e; r++) {
                    long xr = x.offset() + (long) r * c, gr = g.offset() + (long) r * c, dr = gx.offset() + (long) r * c;
                    double k = rb.get(rstd.offset() + r), dot = 0;
                    for (int j = 0; j < c; j++) dot += gb.get(gr + j) * wb.get(w.offset() + j) * xb.get(xr + j);
                    double coef = k * k * k * dot / c;
                    for (int j = 0; j < c; j++) db.add(dr + j, gb.get(gr + j) * wb.get(w.offset() + j) * k - xb.get(xr + j) * coef);
                }
            });
        }
        if (gw != null) {
            Buf wgb = Buf.of(gw);
            for (int j = 0; j < c; j++) {
                double acc = 0;
                for (int r = 0; r < rows; r++)
                    acc += gb.get(g.offset() + (long) r * c + j) * xb.get(x.offset() + (long) r * c + j) * rb.get(rstd.offset() + r);
                wgb.add(gw.offset() + j, acc);
            }
        }
    }

    // ---------------------------------------------------------------- rotary position embedding
    // Per head of D = 2h features at position t, with c = cos(t·θ_i), s = sin(t·θ_i), i < h:
    //   y[i] = x[i]·c − x[i+h]·s,   y[i+h] = x[i+h]·c + x[i]·s      (x·cos + rotate_half(x)·sin)
    // the backward is the inverse rotation:  dx[i] = g[i]·c + g[i+h]·s,  dx[i+h] = g[i+h]·c − g[i]·s

    /**
     * x (rows, W) with W = heads·D, row r at position r mod T; cos and sin (T, D/2). {@code inverse} rotates
     * by −angle (the backward), and then adds into out instead of overwriting it.
     */
    static void rope(CpuBackend be, Tensor x, int d, Tensor cos, Tensor sin, Tensor out, boolean inverse) {
        int w = x.size(-1), h = d / 2, heads = w / d, tLen = cos.size(0);
        int rows = Math.toIntExact(x.numel() / w);
        double sign = inverse ? -1 : 1;
        if (Buf.isF32(x, cos, sin, out)) {
            MemorySegment xs = x.segment(), cs = cos.segment(), ss = sin.segment(), os = out.segment();
            long xo = x.offset() * 4, co = cos.offset() * 4, so = sin.offset() * 4, oo = out.offset() * 4;
            float sg = (float) sign;
            be.pool().parallelFor(rows, 16, (s, e) -> {
                for (int r = s; r < e; r++) {
                    long cr = co + 4L * (r % tLen) * h, sr = so + 4L * (r % tLen) * h;
                    for (int hd = 0; hd < heads; hd++) {
                        long xr = xo + 4L * ((long) r * w + (long) hd * d), or = oo + 4L * ((long) r * w + (long) hd * d);
                        for (int i = 0; i < h; i++) {
                            float c = cs.get(F, cr + 4L * i), sn = sg * ss.get(F, sr + 4L * i);
                            float a = xs.get(F, xr + 4L * i), b = xs.get(F, xr + 4L * (i + h));
                            float y0 = a * c - b * sn, y1 = b * c + a * sn;
                            if (inverse) {
                                y0 += os.get(F, or + 4L * i);
                                y1 += os.get(F, or + 4L * (i + h));
                            }
                            os.set(F, or + 4L * i, y0);
                            os.set(F, or + 4L * (i + h), y1);
                        }
                    }
                }
            });
            return;
        }
        Buf xb = Buf.of(x), cb = Buf.of(cos), sb = Buf.of(sin), ob = Buf.of(out);
        be.pool().parallelFor(rows, 16, (s, e) -> {
            for (int r = s; r < e; r++) {
                long cr = cos.offset() + (long) (r % tLen) * h, sr = sin.offset() + (long) (r % tLen) * h;
                for (int hd = 0; hd < heads; hd++) {
                    long xr = x.offset() + (long) r * w + (long) hd * d, or = out.offset() + (long) r * w + (long) hd * d;
                    for (int i = 0; i < h; i++) {
                        double c = cb.get(cr + i), sn = sign * sb.get(sr + i);
                        double a = xb.get(xr + i), b = xb.get(xr + i + h);
                        double y0 = a * c - b * sn, y1 = b * c + a * sn;
                        if (inverse) {
                            ob.add(or + i, y0);
                            ob.add(or + i + h, y1);
                        } else {
                            ob.set(or + i, y0);
                            ob.set(or + i + h, y1);
                        }
                    }
                }
            }
        });
    }

    // ---------------------------------------------------------------- SiLU and SwiGLU
    // silu(x) = x·σ(x);  silu'(x) = σ(x)·(1 + x·(1 − σ(x)))
    // swiglu(a, u) = silu(a)·u;  da = g·u·silu'(a),  du = g·silu(a)

    /** out = silu(gate)·up, or silu(gate) when up is null. */
    static void swiglu(CpuBackend be, Tensor gate, Tensor up, Tensor out) {
        int n = Math.toIntExact(gate.numel());
        if (Buf.isF32(gate, up, out)) {
            MemorySegment as = gate.segment(), us = up == null ? null : up.segment(), os = out.segment();
            long ao = gate.offset() * 4, uo = up == null ? 0 : up.offset() * 4, oo = out.offset() * 4;
            be.pool().parallelFor(n, 1 << 14, (s, e) -> {
                int i = s;
                for (int bound = s + SP.loopBound(e - s); i < bound; i += L) {
                    FloatVector a = FloatVector.fromMemorySegment(SP, as, ao + 4L * i, O);
                    FloatVector y = a.div(VecMath.exp(a.neg()).add(1f));
                    if (us != null) y = y.mul(FloatVector.fromMemorySegment(SP, us, uo + 4L * i, O));
                    y.intoMemorySegment(os, oo + 4L * i, O);
                }
                for (; i < e; i++) {
                    float a = as.get(F, ao + 4L * i);
                    float y = a / (VecMath.exp(-a) + 1f);
                    if (us != null) y *= us.get(F, uo + 4L * i);
                    os.set(F, oo + 4L * i, y);
                }
            });
            return;
        }
        Buf ab = Buf.of(gate), ub = up == null ? null : Buf.of(up), ob = Buf.of(out);
        for (int i = 0; i < n; i++) {
            double a = ab.get(gate.offset() + i);
            double y = a / (1 + Math.exp(-a));
            ob.set(out.offset() + i, ub == null ? y : y * ub.get(up.offset() + i));
        }
    }

    /** gGate += g·up·silu'(gate), gUp += g·silu(gate); up null means plain silu (gUp unused). Either gradient may be null. */
    static void swigluBackward(CpuBackend be, Tensor gate, Tensor up, Tensor g, Tensor gGate, Tensor gUp) {
        int n = Math.toIntExact(gate.numel());
        if (Buf.isF32(gate, up, g, gGate, gUp)) {
            MemorySegment as = gate.segment(), us = up == null ? null : up.segment(), gs = g.segment();
            MemorySegment das = gGate == null ? null : gGate.segment(), dus = gUp == null ? null : gUp.segment();
            long ao = gate.offset() * 4, uo = up == null ? 0 : up.offset() * 4, go = g.offset() * 4;
            long dao = gGate == null ? 0 : gGate.offset() * 4, duo = gUp == null ? 0 : gUp.offset() * 4;
            be.pool().parallelFor(n, 1 << 14, (s, e) -> {
                int i = s;
                for (int bound = s + SP.loopBound(e - s); i < bound; i += L) {
                    FloatVector a = FloatVector.fromMemorySegment(SP, as, ao + 4L * i, O);
                    FloatVector gv = FloatVector.fromMemorySegment(SP, gs, go + 4L * i, O);
                    FloatVector sig = FloatVector.broadcast(SP, 1f).div(VecMath.exp(a.neg()).add(1f));
                    if (dus != null) gv.mul(a.mul(sig)).add(FloatVector.fromMemorySegment(SP, dus, duo + 4L * i, O)).intoMemorySegment(dus, duo + 4L * i, O);
                    if (das != null) {
                        FloatVector gu = us == null ? gv : gv.mul(FloatVector.fromMemorySegment(SP, us, uo + 4L * i, O));
                        FloatVector deriv = sig.mul(a.mul(sig.neg().add(1f)).add(1f));
                        gu.fma(deriv, FloatVector.fromMemorySegment(SP, das, dao + 4L * i, O)).intoMemorySegment(das, dao + 4L * i, O);
                    }
                }
                for (; i < e; i++) {
                    float a = as.get(F, ao + 4L * i), gv = gs.get(F, go + 4L * i);
                    float sig = 1f / (VecMath.exp(-a) + 1f);
                    if (dus != null) dus.set(F, duo + 4L * i, dus.get(F, duo + 4L * i) + gv * a * sig);
                    if (das != null) {
                        float gu = us == null ? gv : gv * us.get(F, uo + 4L * i);
                        das.set(F, dao + 4L * i, das.get(F, dao + 4L * i) + gu * sig * (1f + a * (1f - sig)));
                    }
                }
            });
            return;
        }
        Buf ab = Buf.of(gate), ub = up == null ? null : Buf.of(up), gb = Buf.of(g);
        Buf dab = gGate == null ? null : Buf.of(gGate), dub = gUp == null ? null : Buf.of(gUp);
        for (int i = 0; i < n; i++) {
            double a = ab.get(gate.offset() + i), gv = gb.get(g.offset() + i);
            double sig = 1 / (1 + Math.exp(-a));
            if (dub != null) dub.add(gUp.offset() + i, gv * a * sig);
            if (dab != null) dab.add(gGate.offset() + i, (ub == null ? gv : gv * ub.get(up.offset() + i)) * sig * (1 + a * (1 - sig)));
        }
    }
}
