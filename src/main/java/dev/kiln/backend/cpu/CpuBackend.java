package dev.kiln.backend.cpu;

import dev.kiln.backend.Backend;
import dev.kiln.tensor.Tensor;
import jdk.incubator.vector.FloatVector;
import jdk.incubator.vector.VectorSpecies;

import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteOrder;

/**
 * The CPU backend: every kernel has a dtype-generic reference path (F32 or F64 through {@link Buf},
 * accumulating in double) and the hot ones an fp32 path on the Vector API. Row-parallel kernels
 * split rows over the one {@link ComputePool}; reductions across rows are split by column instead,
 * so every sum runs in a fixed order and results do not depend on thread timing.
 */
public final class CpuBackend implements Backend {
    private static final VectorSpecies<Float> SP = FloatVector.SPECIES_PREFERRED;
    private static final ValueLayout.OfFloat F = ValueLayout.JAVA_FLOAT;
    private static final ByteOrder ORDER = ByteOrder.nativeOrder();
    private static final double SQRT_2_OVER_PI = Math.sqrt(2.0 / Math.PI);

    private static volatile CpuBackend instance;
    private final ComputePool pool;
    private final OpenBlas blas; // null: Kiln's own Vector-API GEMM for everything

    /** GEMMs with fewer multiply-adds than this stay on Kiln's kernel: for the small products of the
     * default job, waking OpenBLAS's own threads (which then spin beside the pool's) cost more than it gained. */
    static final long BLAS_MIN_MACS = 1L << 27;

    private CpuBackend(int threads) {
        this.pool = new ComputePool(threads);
        this.blas = chooseBlas(threads);
    }

    /**
     * KILN_GEMM=kiln forces Kiln's kernel; otherwise OpenBLAS is used for large fp32 GEMMs when
     * Debian's libopenblas is installed (it measured faster on these machines: bench/gemm_vs_openblas.sh).
     */
    private static OpenBlas chooseBlas(int threads) {
        String choice = System.getenv().getOrDefault("KILN_GEMM", "auto");
        if (choice.equals("kiln")) return null;
        OpenBlas b = OpenBlas.load().orElse(null);
        if (b == null && choice.equals("openblas"))
            throw new IllegalStateException("KILN_GEMM=openblas but OpenBLAS is unavailable: " + OpenBlas.unavailableReason());
        if (b != null) b.setNumThreads(threads);
        return b;
    }

    /** Which GEMM serves large fp32 products: "openblas (…)" or "kiln". */
    public String gemmEngine() {
        return blas == null ? "kiln" : "openblas " + blas.library();
    }

    /** The process-wide CPU backend (all cores unless {@link #configure} was called first). */
    public static CpuBackend get() {
        CpuBackend b = instance;
        if (b == null) {
            synchronized (CpuBackend.class) {
                if (instance == null) instance = new CpuBackend(Runtime.getRuntime().availableProcessors());
                b = instance;
            }
        }
        return b;
    }

    /** Sets the compute thread count (0 = all cores). Explicit configuration, done once at start-up. */
    public static synchronized void configure(int threads) {
        int n = threads <= 0 ? Runtime.getRuntime().availableProcessors() : threads;
        if (instance == null || instance.pool.threads() != n) instance = new CpuBackend(n);
    }

    public int threads() {
        return pool.threads();
    }

    public ComputePool pool() {
        return pool;
    }

    // ------------------------------------------------------------------ GEMM

    @Override
    public void gemm(int batch, int m, int n, int k, double alpha, Mat a, Mat b, double beta, Mat c) {
        if (batch == 0 || m == 0 || n == 0) return;
        if (blas != null && (long) m * n * k >= BLAS_MIN_MACS && Buf.isF32(a.t(), b.t(), c.t()) && c.cs() == 1
                && (a.cs() == 1 || a.rs() == 1) && (b.cs() == 1 || b.rs() == 1)) {
            for (int i = 0; i < batch; i++) {
                boolean ta = a.cs() != 1, tb = b.cs() != 1;
                blas.sgemm(ta, tb, m, n, k, (float) alpha, a.t().segment(), a.off() + i * a.bs(), (int) (ta ? a.cs() : Math.max(a.rs(), k)),
                        b.t().segment(), b.off() + i * b.bs(), (int) (tb ? b.cs() : Math.max(b.rs(), n)),
                        (float) beta, c.t().segment(), c.off() + i * c.bs(), (int) Math.max(c.rs(), n));
            }
            return;
        }
        if (Buf.isF32(a.t(), b.t(), c.t()) && c.cs() == 1) {
            Sgemm.Mat sa = new Sgemm.Mat(a.t().segment(), a.off(), a.bs(), a.rs(), a.cs());
            Sgemm.Mat sb = new Sgemm.Mat(b.t().segment(), b.off(), b.bs(), b.rs(), b.cs());
            Sgemm.Mat sc = new Sgemm.Mat(c.t().segment(), c.off(), c.bs(), c.rs(), c.cs());
            int rowBlocks = (m + Sgemm.MR - 1) / Sgemm.MR;
            int chunks = batch >= pool.threads() ? 1 : Math.min(rowBlocks, (pool.threads() + batch - 1) / batch);
            float al = (float) alpha, be = (float) beta;
            pool.parallelFor(batch * chunks, (s, e) -> {
                for (int w = s; w < e; w++) {
                    int bi = w / chunks, ci = w % chunks;
                    int r0 = (int) ((long) rowBlocks * ci / chunks) * Sgemm.MR;
                    int r1 = Math.min(m, (int) ((long) rowBlocks * (ci + 1) / chunks) * Sgemm.MR);
                    Sgemm.run(bi, r0, r1, n, k, al, sa, sb, be, sc);
                }
            });
            return;
        }
        referenceGemm(batch, m, n, k, alpha, a, b, beta, c);
    }

    /**
     * Rows [r0, r1) of C = alpha·A·B + beta·C on the calling thread (no pool): the building
     * block of kernels that parallelise at a coarser grain themselves.
     */
    void gemmRows(int r0, int r1, int n, int k, double alpha, Mat a, Mat b, double beta, Mat c) {
        if (r1 <= r0 || n == 0) return;
        if (Buf.isF32(a.t(), b.t(), c.t()) && c.cs() == 1) {
            Sgemm.run(0, r0, r1, n, k, (float) alpha,
                    new Sgemm.Mat(a.t().segment(), a.off(), 0, a.rs(), a.cs()),
                    new Sgemm.Mat(b.t().segment(), b.off(), 0, b.rs(), b.cs()), (float) beta,
                    new Sgemm.Mat(c.t().segment(), c.off(), 0, c.rs(), c.cs()));
            return;
        }
        Mat a2 = new Mat(a.t(), a.off() + r0 * a.rs(), 0, a.rs(), a.cs());
        Mat c2 = new Mat(c.t(), c.off() + r0 * c.rs(), 0, c.rs(), c.cs());
        referenceGemm(1, r1 - r0, n, k, alpha, a2, b, beta, c2);
    }

    @Override
    public void attention(Tensor qkv, int nHead, Tensor out, Tensor probs) {
        requireContiguous(qkv, out, probs);
        if (smallHeads(qkv, nHead, out, probs)) SmallHeadAttention.forward(this, qkv, nHead, out, probs);
        else CausalAttention.forward(this, qkv, nHead, out, probs);
    }

    @Override
    public void attentionBackward(Tensor qkv, int nHead, Tensor probs, Tensor gradOut, Tensor gradQkv) {
        requireContiguous(qkv, probs, gradOut, gradQkv);
        if (smallHeads(qkv, nHead, probs, gradOut, gradQkv)) SmallHeadAttention.backward(this, qkv, nHead, probs, gradOut, gradQkv);
        else CausalAttention.backward(this, qkv, nHead, probs, gradOut, gradQkv);
    }

    /** fp32 heads whose per-head working set (≈ 7·T·D floats) fits in L1/L2 go to the GEMM-free kernel. */
    private static boolean smallHeads(Tensor qkv, int nHead, Tensor... others) {
        int t = qkv.size(1), d = qkv.size(2) / 3 / nHead;
        return Buf.isF32(qkv) && Buf.isF32(others) && (long) t * d <= 64 * 128;
    }

    @Override
    public void fillRows(Tensor row, Tensor dst) {
        requireContiguous(row, dst);
        int n = dst.size(1), rows = dst.size(0);
        if (row.dtype() != dst.dtype() || row.numel() != n) throw new IllegalArgumentException("fillRows " + row.shapeString() + " into " + dst.shapeString());
        long es = dst.dtype().byteSize();
        for (int r = 0; r < rows; r++)
            MemorySegment.copy(row.segment(), row.offset() * es, dst.segment(), (dst.offset() + (long) r * n) * es, n * es);
    }

    @Override
    public void sumRows(Tensor src, Tensor dst) {
        requireContiguous(src, dst);
        int n = src.size(1), rows = src.size(0);
        if (Buf.isF32(src, dst)) {
            MemorySegment ss = src.segment(), ds = dst.segment();
            long so = src.offset() * 4, dOff = dst.offset() * 4;
            // split by column block: each column is summed in row order by one thread
            int lanes = SP.length(), blocks = (n + lanes - 1) / lanes;
            pool.parallelFor(blocks, 4, (s, e) -> {
                int j = s * lanes, j1 = Math.min(n, e * lanes);
                for (; j + lanes <= j1; j += lanes) {
                    FloatVector acc = FloatVector.fromMemorySegment(SP, ds, dOff + 4L * j, ORDER);
                    for (int r = 0; r < rows; r++)
                        acc = acc.add(FloatVector.fromMemorySegment(SP, ss, so + 4L * ((long) r * n + j), ORDER));
                    acc.intoMemorySegment(ds, dOff + 4L * j, ORDER);
                }
                for (; j < j1; j++) {
                    float acc = ds.get(F, dOff + 4L * j);
                    for (int r = 0; r < rows; r++) acc += ss.get(F, so + 4L * ((long) r * n + j));
                    ds.set(F, dOff + 4L * j, acc);
                }
            });
            return;
        }
        Buf sb = Buf.of(src), db = Buf.of(dst);
        for (int j = 0; j < n; j++) {
            double acc = 0;
            for (int r = 0; r < rows; r++) acc += sb.get(src.offset() + (long) r * n + j);
            db.add(dst.offset() + j, acc);
        }
    }

    static void referenceGemm(int batch, int m, int n, int k, double alpha, Mat a, Mat b, double beta, Mat c) {
        Buf ab = Buf.of(a.t()), bb = Buf.of(b.t()), cb = Buf.of(c.t());
        for (int bi = 0; bi < batch; bi++) {
            for (int i = 0; i < m; i++) {
                for (int j = 0; j < n; j++) {
                    double s = 0;
                    long ai = a.off() + bi * a.bs() + i * a.rs(), bj = b.off() + bi * b.bs() + j * b.cs();
                    for (int p = 0; p < k; p++) s += ab.get(ai + p * a.cs()) * bb.get(bj + p * b.rs());
                    long ci = c.off() + bi * c.bs() + i * c.rs() + j * c.cs();
                    cb.set(ci, alpha * s + (beta == 0 ? 0 : beta * cb.get(ci)));
                }
            }
        }
    }

    // ------------------------------------------------------------------ elementwise

    @Override
    public void binary(BinaryOp op, Tensor a, Tensor b, Tensor out) {
        if (Buf.isF32(a, b, out) && a.isContiguous() && b.isContiguous() && out.isContiguous() && a.sameShape(b)) {
            binaryF32(op, a, b, out);
            return;
        }
        Buf ab = Buf.of(a), bb = Buf.of(b), ob = Buf.of(out);
        Rows.forEach(out.shape(), a, b, out, (n, oa, sa, obb, sb, oo, so) -> {
            for (int j = 0; j < n; j++) {
                double x = ab.get(oa + j * sa), y = bb.get(obb + j * sb);
                ob.set(oo + j * so, switch (op) {
                    case ADD -> x + y;
                    case SUB -> x - y;
                    case MUL -> x * y;
                    case DIV -> x / y;
                });
            }
        });
    }

    private void binaryF32(BinaryOp op, Tensor a, Tensor b, Tensor out) {
        MemorySegment as = a.segment(), bs = b.segment(), os = out.segment();
        long ao = a.offset() * 4, bo = b.offset() * 4, oo = out.offset() * 4;
        int n = Math.toIntExact(out.numel());
        // one loop per operator: a lanewise op chosen at run time is not intrinsified (vectors get boxed)
        pool.parallelFor(n, 1 << 15, (s, e) -> {
            int i = s, bound = s + SP.loopBound(e - s);
            switch (op) {
                case ADD -> {
                    for (; i < bound; i += SP.length())
                        FloatVector.fromMemorySegment(SP, as, ao + 4L * i, ORDER).add(FloatVector.fromMemorySegment(SP, bs, bo + 4L * i, ORDER))
                                .intoMemorySegment(os, oo + 4L * i, ORDER);
                }
                case SUB -> {
                    for (; i < bound; i += SP.length())
                        FloatVector.fromMemorySegment(SP, as, ao + 4L * i, ORDER).sub(FloatVector.fromMemorySegment(SP, bs, bo + 4L * i, ORDER))
                                .intoMemorySegment(os, oo + 4L * i, ORDER);
                }
                case MUL -> {
                    for (; i < bound; i += SP.length())
                        FloatVector.fromMemorySegment(SP, as, ao + 4L * i, ORDER).mul(FloatVector.fromMemorySegment(SP, bs, bo + 4L * i, ORDER))
                                .intoMemorySegment(os, oo + 4L * i, ORDER);
                }
                case DIV -> {
                    for (; i < bound; i += SP.length())
                        FloatVector.fromMemorySegment(SP, as, ao + 4L * i, ORDER).div(FloatVector.fromMemorySegment(SP, bs, bo + 4L * i, ORDER))
                                .intoMemorySegment(os, oo + 4L * i, ORDER);
                }
            }
            for (; i < e; i++) {
                float x = as.get(F, ao + 4L * i), y = bs.get(F, bo + 4L * i);
                os.set(F, oo + 4L * i, switch (op) {
                    case ADD -> x + y;
                    case SUB -> x - y;
                    case MUL -> x * y;
                    case DIV -> x / y;
                });
            }
        });
    }

    @Override
    public void accumulate(Tensor dst, Tensor src) {
        if (!dst.sameShape(src)) throw new IllegalArgumentException("accumulate " + src.shapeString() + " into " + dst.shapeString());
        if (dst.isContiguous() && src.isContiguous() && dst.dtype() == src.dtype()) {
            axpy(1.0, src, dst);
            return;
        }
        Buf d = Buf.of(dst), s = Buf.of(src);
        Rows.forEach(dst.shape(), dst, src, null, (n, od, sd, os, ss, o2, s2) -> {
            for (int j = 0; j < n; j++) d.add(od + j * sd, s.get(os + j * ss));
        });
    }

    @Override
    public void axpy(double alpha, Tensor src, Tensor dst) {
        requireContiguous(src, dst);
        int n = Math.toIntExact(dst.numel());
        if (Buf.isF32(src, dst)) {
            MemorySegment ss = src.segment(), ds = dst.segment();
            long so = src.offset() * 4, dOff = dst.offset() * 4;
            float al = (float) alpha;
            pool.parallelFor(n, 1 << 15, (s, e) -> {
                int i = s;
                for (int bound = s + SP.loopBound(e - s); i < bound; i += SP.length()) {
                    FloatVector x = FloatVector.fromMemorySegment(SP, ss, so + 4L * i, ORDER);
                    FloatVector y = FloatVector.fromMemorySegment(SP, ds, dOff + 4L * i, ORDER);
                    x.fma(FloatVector.broadcast(SP, al), y).intoMemorySegment(ds, dOff + 4L * i, ORDER);
                }
                for (; i < e; i++) ds.set(F, dOff + 4L * i, Math.fma(al, ss.get(F, so + 4L * i), ds.get(F, dOff + 4L * i)));
            });
            return;
        }
        Buf s = Buf.of(src), d = Buf.of(dst);
        long so = src.offset(), dOff = dst.offset();
        for (int i = 0; i < n; i++) d.add(dOff + i, alpha * s.get(so + i));
    }

    @Override
    public void scale(Tensor x, double alpha) {
        requireContiguous(x);
        if (Buf.isF32(x)) {
            MemorySegment xs = x.segment();
            long xo = x.offset() * 4;
            float a = (float) alpha;
            pool.parallelFor(Math.toIntExact(x.numel()), 1 << 15, (s, e) -> {
                int i = s;
                for (int bound = s + SP.loopBound(e - s); i < bound; i += SP.length())
                    FloatVector.fromMemorySegment(SP, xs, xo + 4L * i, ORDER).mul(a).intoMemorySegment(xs, xo + 4L * i, ORDER);
                for (; i < e; i++) xs.set(F, xo + 4L * i, xs.get(F, xo + 4L * i) * a);
            });
            return;
        }
        Buf b = Buf.of(x);
        long o = x.offset(), n = x.numel();
        for (long i = 0; i < n; i++) b.set(o + i, alpha * b.get(o + i));
    }

    @Override
    public double sumOfSquares(Tensor x) {
        requireContiguous(x);
        if (Buf.isF32(x)) {
            // fixed 4096-element blocks, each summed in lane order, then added in block order:
            // the same result for any thread count
            int n = Math.toIntExact(x.numel()), blk = 4096, blocks = (n + blk - 1) / blk;
            double[] partial = new double[blocks];
            MemorySegment xs = x.segment();
            long xo = x.offset() * 4;
            pool.parallelFor(blocks, 8, (s, e) -> {
                for (int bi = s; bi < e; bi++) {
                    int i = bi * blk, end = Math.min(n, i + blk);
                    FloatVector acc = FloatVector.zero(SP);
                    for (int bound = i + SP.loopBound(end - i); i < bound; i += SP.length()) {
                        FloatVector v = FloatVector.fromMemorySegment(SP, xs, xo + 4L * i, ORDER);
                        acc = v.fma(v, acc);
                    }
                    double sum = VecMath.sumLanes(acc);
                    for (; i < end; i++) {
                        double v = xs.get(F, xo + 4L * i);
                        sum += v * v;
                    }
                    partial[bi] = sum;
                }
            });
            double total = 0;
            for (double p : partial) total += p;
            return total;
        }
        Buf b = Buf.of(x);
        long o = x.offset(), n = x.numel();
        double s = 0;
        for (long i = 0; i < n; i++) {
            double v = b.get(o + i);
            s += v * v;
        }
        return s;
    }

    @Override
    public boolean allFinite(Tensor x) {
        requireContiguous(x);
        Buf b = Buf.of(x);
        long o = x.offset(), n = x.numel();
        for (long i = 0; i < n; i++) if (!Double.isFinite(b.get(o + i))) return false;
        return true;
    }

    // ------------------------------------------------------------------ GELU (tanh form)
    // y = 0.5·x·(1 + tanh(u)), u = √(2/π)·(x + 0.044715·x³)
    // dy/dx = 0.5·(1 + tanh u) + 0.5·x·(1 − tanh² u)·√(2/π)·(1 + 3·0.044715·x²)

    @Override
    public void gelu(Tensor x, Tensor out) {
        requireContiguous(x, out);
        int n = Math.toIntExact(x.numel());
        if (Buf.isF32(x, out)) {
            MemorySegment xs = x.segment(), os = out.segment();
            long xo = x.offset() * 4, oo = out.offset() * 4;
            float c = (float) SQRT_2_OVER_PI;
            pool.parallelFor(n, 1 << 14, (s, e) -> {
                int i = s;
                for (int bound = s + SP.loopBound(e - s); i < bound; i += SP.length()) {
                    FloatVector v = FloatVector.fromMemorySegment(SP, xs, xo + 4L * i, ORDER);
                    FloatVector u = v.mul(v).mul(v).mul(0.044715f).add(v).mul(c);
                    FloatVector t = VecMath.tanh(u);
                    v.mul(0.5f).mul(t.add(1f)).intoMemorySegment(os, oo + 4L * i, ORDER);
                }
                for (; i < e; i++) {
                    float v = xs.get(F, xo + 4L * i);
                    os.set(F, oo + 4L * i, (float) (0.5 * v * (1 + Math.tanh(c * (v + 0.044715 * v * v * v)))));
                }
            });
            return;
        }
        Buf xb = Buf.of(x), ob = Buf.of(out);
        for (int i = 0; i < n; i++) {
            double v = xb.get(x.offset() + i);
            ob.set(out.offset() + i, 0.5 * v * (1 + Math.tanh(SQRT_2_OVER_PI * (v + 0.044715 * v * v * v))));
        }
    }

    @Override
    public void geluBackward(Tensor x, Tensor gradOut, Tensor gradIn) {
        requireContiguous(x, gradOut, gradIn);
        int n = Math.toIntExact(x.numel());
        if (Buf.isF32(x, gradOut, gradIn)) {
            MemorySegment xs = x.segment(), gs = gradOut.segment(), ds = gradIn.segment();
            long xo = x.offset() * 4, go = gradOut.offset() * 4, dOff = gradIn.offset() * 4;
            float c = (float) SQRT_2_OVER_PI;
            pool.parallelFor(n, 1 << 14, (s, e) -> {
                int i = s;
                for (int bound = s + SP.loopBound(e - s); i < bound; i += SP.length()) {
                    FloatVector v = FloatVector.fromMemorySegment(SP, xs, xo + 4L * i, ORDER);
                    FloatVector v2 = v.mul(v);
                    FloatVector t = VecMath.tanh(v2.mul(v).mul(0.044715f).add(v).mul(c));
                    FloatVector du = v2.mul(3 * 0.044715f).add(1f).mul(c);
                    FloatVector sech2 = t.mul(t).neg().add(1f);
                    FloatVector d = t.add(1f).mul(0.5f).add(v.mul(0.5f).mul(sech2).mul(du));
                    FloatVector g = FloatVector.fromMemorySegment(SP, gs, go + 4L * i, ORDER);
                    FloatVector acc = FloatVector.fromMemorySegment(SP, ds, dOff + 4L * i, ORDER);
                    g.fma(d, acc).intoMemorySegment(ds, dOff + 4L * i, ORDER);
                }
                for (; i < e; i++) {
                    double v = xs.get(F, xo + 4L * i);
                    double d = geluDerivative(v);
                    ds.set(F, dOff + 4L * i, (float) (ds.get(F, dOff + 4L * i) + gs.get(F, go + 4L * i) * d));
                }
            });
            return;
        }
        Buf xb = Buf.of(x), gb = Buf.of(gradOut), db = Buf.of(gradIn);
        for (int i = 0; i < n; i++) {
            double v = xb.get(x.offset() + i);
            db.add(gradIn.offset() + i, gb.get(gradOut.offset() + i) * geluDerivative(v));
        }
    }

    private static double geluDerivative(double v) {
        double t = Math.tanh(SQRT_2_OVER_PI * (v + 0.044715 * v * v * v));
        return 0.5 * (1 + t) + 0.5 * v * (1 - t * t) * SQRT_2_OVER_PI * (1 + 3 * 0.044715 * v * v);
    }

    // ------------------------------------------------------------------ LayerNorm
    // y = (x − μ)·rstd·w + b, rstd = 1/√(var + eps) (population variance)
    // dx = rstd·(dn − mean(dn) − n̂·mean(dn·n̂)), dn = dy·w, n̂ = (x − μ)·rstd; dw = Σ dy·n̂; db = Σ dy

    @Override
    public void layerNorm(Tensor x, Tensor weight, Tensor bias, double eps, Tensor out, Tensor mean, Tensor rstd) {
        requireContiguous(x, weight, out, mean, rstd);
        if (bias != null) requireContiguous(bias);
        int c = x.size(-1);
        int rows = Math.toIntExact(x.numel() / c);
        if (Buf.isF32(x, weight, bias, out, mean, rstd)) {
            MemorySegment xs = x.segment(), ws = weight.segment(), bs = bias == null ? null : bias.segment(), ys = out.segment();
            long bo = bias == null ? 0 : bias.offset() * 4;
            pool.parallelFor(rows, 16, (s, e) -> {
                float[] st = new float[2];
                for (int r = s; r < e; r++) {
                    long ro = 4L * r * c;
                    FusedF32.layerNormRow(xs, x.offset() * 4 + ro, ws, weight.offset() * 4, bs, bo, ys, out.offset() * 4 + ro, c, (float) eps, st);
                    mean.segment().setAtIndex(F, mean.offset() + r, st[0]);
                    rstd.segment().setAtIndex(F, rstd.offset() + r, st[1]);
                }
            });
            return;
        }
        Buf xb = Buf.of(x), wb = Buf.of(weight), bb = bias == null ? null : Buf.of(bias), ob = Buf.of(out),
                mb = Buf.of(mean), rb = Buf.of(rstd);
        long xo = x.offset(), wo = weight.offset(), bo = bias == null ? 0 : bias.offset(), oo = out.offset();
        pool.parallelFor(rows, 16, (s, e) -> {
            for (int r = s; r < e; r++) {
                long base = (long) r * c;
                double sum = 0;
                for (int j = 0; j < c; j++) sum += xb.get(xo + base + j);
                double mu = sum / c;
                double var = 0;
                for (int j = 0; j < c; j++) {
                    double d = xb.get(xo + base + j) - mu;
                    var += d * d;
                }
                double rs = 1.0 / Math.sqrt(var / c + eps);
                for (int j = 0; j < c; j++) {
                    double y = (xb.get(xo + base + j) - mu) * rs * wb.get(wo + j);
                    if (bb != null) y += bb.get(bo + j);
                    ob.set(oo + base + j, y);
                }
                mb.set(mean.offset() + r, mu);
                rb.set(rstd.offset() + r, rs);
            }
        });
    }

    @Override
    public void layerNormBackward(Tensor x, Tensor weight, Tensor mean, Tensor rstd, Tensor gradOut,
                                  Tensor gradX, Tensor gradWeight, Tensor gradBias) {
        requireContiguous(x, weight, mean, rstd, gradOut);
        int c = x.size(-1);
        int rows = Math.toIntExact(x.numel() / c);
        if (Buf.isF32(x, weight, mean, rstd, gradOut, gradX, gradWeight, gradBias)) {
            layerNormBackwardF32(x, weight, mean, rstd, gradOut, gradX, gradWeight, gradBias, rows, c);
            return;
        }
        Buf xb = Buf.of(x), wb = Buf.of(weight), mb = Buf.of(mean), rb = Buf.of(rstd), gb = Buf.of(gradOut);
        long xo = x.offset(), wo = weight.offset(), go = gradOut.offset(), mo = mean.offset(), ro = rstd.offset();
        if (gradX != null) {
            requireContiguous(gradX);
            Buf dxb = Buf.of(gradX);
            long dxo = gradX.offset();
            pool.parallelFor(rows, 16, (s, e) -> {
                for (int r = s; r < e; r++) {
                    long base = (long) r * c;
                    double mu = mb.get(mo + r), rs = rb.get(ro + r);
                    double meanDn = 0, meanDnN = 0;
                    for (int j = 0; j < c; j++) {
                        double dn = gb.get(go + base + j) * wb.get(wo + j);
                        double nh = (xb.get(xo + base + j) - mu) * rs;
                        meanDn += dn;
                        meanDnN += dn * nh;
                    }
                    meanDn /= c;
                    meanDnN /= c;
                    for (int j = 0; j < c; j++) {
                        double dn = gb.get(go + base + j) * wb.get(wo + j);
                        double nh = (xb.get(xo + base + j) - mu) * rs;
                        dxb.add(dxo + base + j, rs * (dn - meanDn - nh * meanDnN));
                    }
                }
            });
        }
        if (gradWeight == null && gradBias == null) return;
        Buf dwb = gradWeight == null ? null : Buf.of(gradWeight), dbb = gradBias == null ? null : Buf.of(gradBias);
        long dwo = gradWeight == null ? 0 : gradWeight.offset(), dbo = gradBias == null ? 0 : gradBias.offset();
        pool.parallelFor(c, 8, (s, e) -> {
            for (int j = s; j < e; j++) {
                double dw = 0, db = 0;
                for (int r = 0; r < rows; r++) {
                    long i = (long) r * c + j;
                    double g = gb.get(go + i);
                    dw += g * (xb.get(xo + i) - mb.get(mo + r)) * rb.get(ro + r);
                    db += g;
                }
                if (dwb != null) dwb.add(dwo + j, dw);
                if (dbb != null) dbb.add(dbo + j, db);
            }
        });
    }

    private void layerNormBackwardF32(Tensor x, Tensor weight, Tensor mean, Tensor rstd, Tensor gradOut,
                                      Tensor gradX, Tensor gradWeight, Tensor gradBias, int rows, int c) {
        float[] mu = mean.toFloatArray(), rs = rstd.toFloatArray();
        MemorySegment xs = x.segment(), gs = gradOut.segment();
        long xo = x.offset() * 4, go = gradOut.offset() * 4;
        if (gradX != null) {
            requireContiguous(gradX);
            MemorySegment ws = weight.segment(), ds = gradX.segment();
            pool.parallelFor(rows, 16, (s, e) -> {
                for (int r = s; r < e; r++) {
                    long ro = 4L * r * c;
                    FusedF32.layerNormBackwardRow(xs, xo + ro, ws, weight.offset() * 4, gs, go + ro, ds, gradX.offset() * 4 + ro, c, mu[r], rs[r]);
                }
            });
        }
        if (gradWeight == null && gradBias == null) return;
        int lanes = FusedF32.SP.length(), blocks = (c + lanes - 1) / lanes;
        MemorySegment dws = gradWeight == null ? null : gradWeight.segment(), dbs = gradBias == null ? null : gradBias.segment();
        long dwo = gradWeight == null ? 0 : gradWeight.offset() * 4, dbo = gradBias == null ? 0 : gradBias.offset() * 4;
        pool.parallelFor(blocks, 1, (s, e) ->
                FusedF32.layerNormParamGrads(xs, xo, gs, go, mu, rs, rows, c, s * lanes, Math.min(c, e * lanes), dws, dwo, dbs, dbo));
    }

    // ------------------------------------------------------------------ Llama's ops (kernels in LlamaKernels)

    @Override
    public void rmsNorm(Tensor x, Tensor weight, double eps, Tensor out, Tensor rstd) {
        requireContiguous(x, weight, out, rstd);
        LlamaKernels.rmsNorm(this, x, weight, eps, out, rstd);
    }

    @Override
    public void rmsNormBackward(Tensor x, Tensor weight, Tensor rstd, Tensor gradOut, Tensor gradX, Tensor gradWeight) {
        requireContiguous(x, weight, rstd, gradOut);
        if (gradX != null) requireContiguous(gradX);
        if (gradWeight != null) requireContiguous(gradWeight);
        LlamaKernels.rmsNormBackward(this, x, weight, rstd, gradOut, gradX, gradWeight);
    }

    @Override
    public void rope(Tensor x, int headDim, Tensor cos, Tensor sin, Tensor out) {
        requireContiguous(x, cos, sin, out);
        LlamaKernels.rope(this, x, headDim, cos, sin, out, false);
    }

    @Override
    public void ropeBackward(Tensor gradOut, int headDim, Tensor cos, Tensor sin, Tensor gradX) {
        requireContiguous(gradOut, cos, sin, gradX);
        LlamaKernels.rope(this, gradOut, headDim, cos, sin, gradX, true);
    }

    @Override
    public void silu(Tensor x, Tensor out) {
        requireContiguous(x, out);
        LlamaKernels.swiglu(this, x, null, out);
    }

    @Override
    public void siluBackward(Tensor x, Tensor gradOut, Tensor gradIn) {
        requireContiguous(x, gradOut, gradIn);
        LlamaKernels.swigluBackward(this, x, null, gradOut, gradIn, null);
    }

    @Override
    public void swiglu(Tensor gate, Tensor up, Tensor out) {
        requireContiguous(gate, up, out);
        LlamaKernels.swiglu(this, gate, up, out);
    }

    @Override
    public void swigluBackward(Tensor gate, Tensor up, Tensor gradOut, Tensor gradGate, Tensor gradUp) {
        requireContiguous(gate, up, gradOut);
        if (gradGate != null) requireContiguous(gradGate);
        if (gradUp != null) requireContiguous(gradUp);
        LlamaKernels.swigluBackward(this, gate, up, gradOut, gradGate, gradUp);
    }

    // ------------------------------------------------------------------ softmax

    @Override
    public void softmax(Tensor x, Tensor out, boolean causal) {
        requireContiguous(x, out);
        int n = x.size(-1);
        int rows = Math.toIntExact(x.numel() / n);
        Buf xb = Buf.of(x), ob = Buf.of(out);
        long xo = x.offset(), oo = out.offset();
        pool.parallelFor(rows, 16, (s, e) -> {
            for (int r = s; r < e; r++) {
                long base = (long) r * n;
                int len = causal ? (r % n) + 1 : n;
                double max = Double.NEGATIVE_INFINITY;
                for (int j = 0; j < len; j++) max = Math.max(max, xb.get(xo + base + j));
                double sum = 0;
                for (int j = 0; j < len; j++) {
                    double ev = Math.exp(xb.get(xo + base + j) - max);
                    ob.set(oo + base + j, ev);
                    sum += ev;
                }
                double inv = 1.0 / sum;
                for (int j = 0; j < len; j++) ob.set(oo + base + j, ob.get(oo + base + j) * inv);
                for (int j = len; j < n; j++) ob.set(oo + base + j, 0);
            }
        });
    }

    // dx = y ⊙ (dy − Σ y·dy)
    @Override
    public void softmaxBackward(Tensor y, Tensor gradOut, Tensor gradIn) {
        requireContiguous(y, gradOut, gradIn);
        int n = y.size(-1);
        int rows = Math.toIntExact(y.numel() / n);
        Buf yb = Buf.of(y), gb = Buf.of(gradOut), db = Buf.of(gradIn);
        long yo = y.offset(), go = gradOut.offset(), dOff = gradIn.offset();
        pool.parallelFor(rows, 16, (s, e) -> {
            for (int r = s; r < e; r++) {
                long base = (long) r * n;
                double dot = 0;
                for (int j = 0; j < n; j++) dot += yb.get(yo + base + j) * gb.get(go + base + j);
                for (int j = 0; j < n; j++) {
                    double yv = yb.get(yo + base + j);
                    if (yv != 0) db.add(dOff + base + j, yv * (gb.get(go + base + j) - dot));
                }
            }
        });
    }

    // ------------------------------------------------------------------ cross-entropy
    // loss_r = logsumexp(x_r) − x_r[t_r];  dx_r = softmax(x_r) − onehot(t_r)
    // with smoothing ε and z-loss c: q_r = (1 − ε)·onehot(t_r) + ε/V,
    // loss_r = (1 − ε)·(lse_r − x_r[t_r]) + ε·(lse_r − mean(x_r)) + c·lse_r²;  dx_r = (1 + 2c·lse_r)·softmax(x_r) − q_r

    @Override
    public int crossEntropy(Tensor logits, Tensor targets, int ignoreIndex, double labelSmoothing, double zLoss,
                            Tensor losses, Tensor logSumExp) {
        requireContiguous(logits, targets, losses, logSumExp);
        int v = logits.size(-1);
        int rows = Math.toIntExact(logits.numel() / v);
        int[] tg = targets.toIntArray();
        for (int r = 0; r < rows; r++) {
            if (tg[r] != ignoreIndex && (tg[r] < 0 || tg[r] >= v))
                throw new IllegalArgumentException("target " + tg[r] + " at row " + r + " is outside the vocabulary [0, " + v + ")");
        }
        // ε = c = 0 keeps the plain expression lse − x[y], bit for bit
        boolean plain = labelSmoothing == 0 && zLoss == 0, smooth = labelSmoothing != 0;
        if (Buf.isF32(logits, losses, logSumExp)) {
            MemorySegment xs = logits.segment();
            pool.parallelFor(rows, 8, (s, e) -> {
                for (int r = s; r < e; r++) {
                    long base = (logits.offset() + (long) r * v) * 4;
                    float lse = FusedF32.logSumExp(xs, base, v);
                    logSumExp.segment().setAtIndex(F, logSumExp.offset() + r, lse);
                    float loss;
                    if (tg[r] == ignoreIndex) loss = 0f;
                    else if (plain) loss = lse - xs.get(F, base + 4L * tg[r]);
                    else loss = (float) smoothedZLoss(lse, xs.get(F, base + 4L * tg[r]),
                                smooth ? (double) FusedF32.sum(xs, base, v) / v : 0, labelSmoothing, zLoss);
                    losses.segment().setAtIndex(F, losses.offset() + r, loss);
                }
            });
            int count = 0;
            for (int t : tg) if (t != ignoreIndex) count++;
            return count;
        }
        Buf xb = Buf.of(logits), lb = Buf.of(losses), sb = Buf.of(logSumExp);
        long xo = logits.offset();
        pool.parallelFor(rows, 8, (s, e) -> {
            for (int r = s; r < e; r++) {
                long base = xo + (long) r * v;
                double max = Double.NEGATIVE_INFINITY;
                for (int j = 0; j < v; j++) max = Math.max(max, xb.get(base + j));
                double sum = 0;
                for (int j = 0; j < v; j++) sum += Math.exp(xb.get(base + j) - max);
                double lse = max + Math.log(sum);
                sb.set(logSumExp.offset() + r, lse);
                double loss;
                if (tg[r] == ignoreIndex) loss = 0;
                else if (plain) loss = lse - xb.get(base + tg[r]);
                else {
                    double xsum = 0;
                    if (smooth) for (int j = 0; j < v; j++) xsum += xb.get(base + j);
                    loss = smoothedZLoss(lse, xb.get(base + tg[r]), xsum / v, labelSmoothing, zLoss);
                }
                lb.set(losses.offset() + r, loss);
            }
        });
        int count = 0;
        for (int t : tg) if (t != ignoreIndex) count++;
        return count;
    }

    /** One row's (1 − ε)·(lse − x[y]) + ε·(lse − mean(x)) + c·lse². */
    private static double smoothedZLoss(double lse, double xTarget, double meanX, double eps, double c) {
        return (1 - eps) * (lse - xTarget) + eps * (lse - meanX) + c * lse * lse;
    }

    @Override
    public void crossEntropyBackward(Tensor logits, Tensor targets, int ignoreIndex, double labelSmoothing, double zLoss,
                                     Tensor logSumExp, double scale, Tensor gradLogits) {
        requireContiguous(logits, targets, logSumExp, gradLogits);
        int v = logits.size(-1);
        int rows = Math.toIntExact(logits.numel() / v);
        int[] tg = targets.toIntArray();
        boolean plain = labelSmoothing == 0 && zLoss == 0;
        // per row: g += scale·((1 + 2c·lse)·p − ε/v) everywhere, then −scale·(1 − ε) at the target
        double uniform = scale * labelSmoothing / v, onTarget = scale * (1 - labelSmoothing);
        if (Buf.isF32(logits, logSumExp, gradLogits)) {
            MemorySegment xs = logits.segment(), gs = gradLogits.segment();
            float sc = (float) scale, un = (float) uniform, ot = (float) onTarget;
            pool.parallelFor(rows, 8, (s, e) -> {
                for (int r = s; r < e; r++) {
                    if (tg[r] == ignoreIndex) continue;
                    long xb = (logits.offset() + (long) r * v) * 4, gb = (gradLogits.offset() + (long) r * v) * 4;
                    float lse = logSumExp.segment().getAtIndex(F, logSumExp.offset() + r);
                    if (plain) {
                        FusedF32.softmaxGradRow(xs, xb, lse, sc, gs, gb, v);
                        gs.set(F, gb + 4L * tg[r], gs.get(F, gb + 4L * tg[r]) - sc);
                    } else {
                        FusedF32.softmaxGradRowShifted(xs, xb, lse, (float) (scale * (1 + 2 * zLoss * lse)), un, gs, gb, v);
                        gs.set(F, gb + 4L * tg[r], gs.get(F, gb + 4L * tg[r]) - ot);
                    }
                }
            });
            return;
        }
        Buf xb = Buf.of(logits), sb = Buf.of(logSumExp), gb = Buf.of(gradLogits);
        long xo = logits.offset(), go = gradLogits.offset();
        pool.parallelFor(rows, 8, (s, e) -> {
            for (int r = s; r < e; r++) {
                if (tg[r] == ignoreIndex) continue;
                long base = (long) r * v;
                double lse = sb.get(logSumExp.offset() + r);
                if (plain) {
                    for (int j = 0; j < v; j++) gb.add(go + base + j, scale * Math.exp(xb.get(xo + base + j) - lse));
                    gb.add(go + base + tg[r], -scale);
                } else {
                    double ps = scale * (1 + 2 * zLoss * lse);
                    for (int j = 0; j < v; j++) gb.add(go + base + j, ps * Math.exp(xb.get(xo + base + j) - lse) - uniform);
                    gb.add(go + base + tg[r], -onTarget);
                }
            }
        });
    }

    // ------------------------------------------------------------------ embedding

    @Override
    public void embedding(Tensor idx, Tensor weight, Tensor out) {
        requireContiguous(idx, weight, out);
        int c = weight.size(1), v = weight.size(0);
        int[] ids = idx.toIntArray();
        for (int i = 0; i < ids.length; i++)
            if (ids[i] < 0 || ids[i] >= v)
                throw new IllegalArgumentException("token id " + ids[i] + " at position " + i + " is outside the embedding table [0, " + v + ")");
        if (weight.dtype() == out.dtype()) {
            int es = weight.dtype().byteSize();
            for (int i = 0; i < ids.length; i++)
                MemorySegment.copy(weight.segment(), (weight.offset() + (long) ids[i] * c) * es,
                        out.segment(), (out.offset() + (long) i * c) * es, (long) c * es);
            return;
        }
        Buf wb = Buf.of(weight), ob = Buf.of(out);
        for (int i = 0; i < ids.length; i++)
            for (int j = 0; j < c; j++) ob.set(out.offset() + (long) i * c + j, wb.get(weight.offset() + (long) ids[i] * c + j));
    }

    @Override
    public void embeddingBackward(Tensor idx, Tensor gradOut, Tensor gradWeight) {
        requireContiguous(idx, gradOut, gradWeight);
        int c = gradWeight.size(1);
        int[] ids = idx.toIntArray();
        Buf gb = Buf.of(gradOut), wb = Buf.of(gradWeight);
        // split by column so rows sharing a token id never race
        pool.parallelFor(c, 16, (s, e) -> {
            for (int i = 0; i < ids.length; i++) {
                long src = gradOut.offset() + (long) i * c, dst = gradWeight.offset() + (long) ids[i] * c;
                for (int j = s; j < e; j++) wb.add(dst + j, gb.get(src + j));
            }
        });
    }

    // ------------------------------------------------------------------ AdamW (PyTorch's order)
    // p ← p·(1 − lr·wd);  m ← β1·m + (1−β1)·g;  v ← β2·v + (1−β2)·g²;
    // p ← p − lr·(m / (1−β1ᵗ)) / (√(v / (1−β2ᵗ)) + eps)

    @Override
    public void adamw(Tensor param, Tensor grad, Tensor m, Tensor v, double lr, double beta1, double beta2,
                      double eps, double weightDecay, long step) {
        requireContiguous(param, grad, m, v);
        int n = Math.toIntExact(param.numel());
        double bc1 = 1 - Math.pow(beta1, step), bc2 = 1 - Math.pow(beta2, step);
        double decay = 1 - lr * weightDecay;
        if (Buf.isF32(param, grad, m, v)) {
            pool.parallelFor(n, 1 << 14, (s, e) -> FusedF32.adamw(param.segment(), param.offset() * 4, grad.segment(), grad.offset() * 4,
                    m.segment(), m.offset() * 4, v.segment(), v.offset() * 4, s, e, lr, beta1, beta2, eps, lr * weightDecay, bc1, bc2));
            return;
        }
        Buf pb = Buf.of(param), gb = Buf.of(grad), mb = Buf.of(m), vb = Buf.of(v);
        long po = param.offset(), go = grad.offset(), mo = m.offset(), vo = v.offset();
        pool.parallelFor(n, 1 << 14, (s, e) -> {
            for (int i = s; i < e; i++) {
                double g = gb.get(go + i);
                double mi = beta1 * mb.get(mo + i) + (1 - beta1) * g;
                double vi = beta2 * vb.get(vo + i) + (1 - beta2) * g * g;
                mb.set(mo + i, mi);
                vb.set(vo + i, vi);
                double p = pb.get(po + i) * decay;
                pb.set(po + i, p - lr * (mi / bc1) / (Math.sqrt(vi / bc2) + eps));
            }
        });
    }

    @Override
    public void rowMaxAbs(Tensor x, Tensor out) {
        requireContiguous(x, out);
        int rows = Math.toIntExact(out.numel());
        long n = x.numel() / rows;
        Buf xb = Buf.of(x), ob = Buf.of(out);
        long xo = x.offset(), oo = out.offset();
        pool.parallelFor(rows, 1, (s, e) -> {
            for (int r = s; r < e; r++) {
                double m = 0;
                for (long j = 0, base = xo + r * n; j < n; j++) m = Math.max(m, Math.abs(xb.get(base + j)));
                ob.set(oo + r, m);
            }
        });
    }

    @Override
    public void fakeQuant(Tensor x, Tensor scales, int qmax, Tensor out) {
        requireContiguous(x, scales, out);
        long n = x.numel() / scales.numel();
        Buf xb = Buf.of(x), sb = Buf.of(scales), ob = Buf.of(out);
        long xo = x.offset(), so = scales.offset(), oo = out.offset();
        // elementwise, so split by element (a per-tensor scale is one row of the whole activation)
        pool.parallelFor(Math.toIntExact(x.numel()), 1 << 14, (s, e) -> {
            for (int i = s; i < e; i++) {
                double sc = sb.get(so + i / n);
                ob.set(oo + i, Backend.quantCode(xb.get(xo + i), sc, qmax) * sc); // |code| ≤ 127: the product is exact in double
            }
        });
    }

    @Override
    public void fakeQuantBackward(Tensor x, Tensor scales, int qmax, Tensor gradOut, Tensor gradIn) {
        requireContiguous(x, scales, gradOut, gradIn);
        long n = x.numel() / scales.numel();
        Buf xb = Buf.of(x), sb = Buf.of(scales), gb = Buf.of(gradOut), ib = Buf.of(gradIn);
        long xo = x.offset(), so = scales.offset(), go = gradOut.offset(), io = gradIn.offset();
        pool.parallelFor(Math.toIntExact(x.numel()), 1 << 14, (s, e) -> {
            for (int i = s; i < e; i++) {
                double sc = sb.get(so + i / n);
                if (sc == 0 || Math.abs(Math.rint(xb.get(xo + i) / sc)) <= qmax) ib.add(io + i, gb.get(go + i));
            }
        });
    }

    private static void requireContiguous(Tensor... ts) {
        for (Tensor t : ts)
            if (!t.isContiguous()) throw new IllegalArgumentException("kernel needs a contiguous tensor, got strides of " + t.shapeString());
    }
}
