package dev.kiln.ops;

import dev.kiln.autograd.Tape;
import dev.kiln.backend.Backend;
import dev.kiln.backend.Backend.Mat;
import dev.kiln.tensor.DType;
import dev.kiln.tensor.Shape;
import dev.kiln.tensor.Tensor;

import java.util.Arrays;

/** Matrix products: batched matmul with strided (e.g. transposed) operands, and Linear. */
public final class Linalg {
    private Linalg() {}

    /**
     * a [..., M, K] · b [..., K, N] → [..., M, N]. Batch dimensions must be equal, or one side 2-D
     * (broadcast). Transposed or sliced views are consumed through their strides, without copies.
     */
    public static Tensor matmul(Tensor a, Tensor b) {
        if (a.dim() < 2 || b.dim() < 2) throw new IllegalArgumentException("matmul needs rank >= 2, got " + a.shapeString() + " and " + b.shapeString());
        int m = a.size(-2), k = a.size(-1), n = b.size(-1);
        if (b.size(-2) != k) throw new IllegalArgumentException("matmul shapes " + a.shapeString() + " and " + b.shapeString() + " do not align");
        int[] batchA = Arrays.copyOf(a.shape(), a.dim() - 2), batchB = Arrays.copyOf(b.shape(), b.dim() - 2);
        int[] batchShape;
        if (a.dim() == 2) batchShape = batchB;
        else if (b.dim() == 2 || Arrays.equals(batchA, batchB)) batchShape = batchA;
        else throw new IllegalArgumentException("matmul batch dimensions " + Shape.str(batchA) + " and " + Shape.str(batchB) + " differ");
        int batch = Math.toIntExact(Shape.numel(batchShape));
        Tensor A = flattenable(a), B = flattenable(b);
        int[] outShape = Arrays.copyOf(batchShape, batchShape.length + 2);
        outShape[batchShape.length] = m;
        outShape[batchShape.length + 1] = n;
        Tensor out = Tensor.empty(a.device(), a.dtype(), outShape);
        Backend be = Backend.of(a);
        be.gemm(batch, m, n, k, 1.0, mat(A), mat(B), 0.0, mat(out));
        return Tape.record(out, (g, grads) -> {
            if (grads.wants(a)) { // dA = dC · Bᵀ (a 2-D `a` shared by the batch sums over it)
                Tensor ga = grads.buffer(a);
                if (A.dim() == 2 && batch > 1) {
                    for (int i = 0; i < batch; i++)
                        be.gemm(1, m, k, n, 1.0, batchOf(mat(g), i), batchOf(mat(B), i).transpose(), 1.0, mat(ga));
                } else {
                    be.gemm(batch, m, k, n, 1.0, mat(g), mat(B).transpose(), 1.0, mat(ga));
                }
            }
            if (grads.wants(b)) { // dB = Aᵀ · dC
                Tensor gb = grads.buffer(b);
                if (B.dim() == 2 && batch > 1 && A.isContiguous()) {
                    // one GEMM sums over the batch: (batch·M, K)ᵀ · (batch·M, N)
                    Tensor a2 = A.view(batch * m, k), g2 = g.view(batch * m, n);
                    be.gemm(1, k, n, batch * m, 1.0, mat(a2).transpose(), mat(g2), 1.0, mat(gb));
                } else if (B.dim() == 2 && batch > 1) {
                    for (int i = 0; i < batch; i++)
                        be.gemm(1, k, n, m, 1.0, batchOf(mat(A), i).transpose(), batchOf(mat(g), i), 1.0, mat(gb));
                } else {
                    be.gemm(batch, k, n, m, 1.0, mat(A).transpose(), mat(g), 1.0, mat(gb));
                }
            }
        }, a, b);
    }

    /** y = x · Wᵀ + bias, with W of shape [out, in] (PyTorch's nn.Linear layout); bias may be null. */
    public static Tensor linear(Tensor x, Tensor w, Tensor bias) {
        int in = x.size(-1), outF = w.size(0);
        if (w.dim() != 2 || w.size(1) != in)
            throw new IllegalArgumentException("linear: input " + x.shapeString() + " does not match weight " + w.shapeString());
        if (bias != null && (bias.dim() != 1 || bias.size(0) != outF))
            throw new IllegalArgumentException("linear: bias " + bias.shapeString() + " does not match weight " + w.shapeString());
        DType cast = Autocast.matmulDtype(x);
        if (cast != null) return linearCast(x, w, bias, cast);
        Tensor xc = x.contiguous();
        int rows = Math.toIntExact(x.numel() / in);
        int[] outShape = x.shape();
        outShape[outShape.length - 1] = outF;
        Tensor out = Tensor.empty(x.device(), x.dtype(), outShape);
        Backend be = Backend.of(x);
        Mat xm = new Mat(xc, xc.offset(), 0, in, 1);
        Mat wt = new Mat(w, w.offset(), 0, 1, w.stride(0)); // element (k, j) = W[j, k]
        Mat om = new Mat(out, 0, 0, outF, 1);
        if (bias != null) be.fillRows(bias, out.view(rows, outF));
        be.gemm(1, rows, outF, in, 1.0, xm, wt, bias == null ? 0.0 : 1.0, om);
        return Tape.record(out, (g, grads) -> {
            Mat gm = new Mat(g, 0, 0, outF, 1);
            if (grads.wants(x)) { // dx = dy · W
                Tensor gx = grads.buffer(x);
                be.gemm(1, rows, in, outF, 1.0, gm, wt.transpose(), 1.0, new Mat(gx, 0, 0, in, 1));
            }
            if (grads.wants(w)) { // dW = dyᵀ · x
                Tensor gw = grads.buffer(w);
                be.gemm(1, outF, in, rows, 1.0, gm.transpose(), xm, 1.0, new Mat(gw, 0, 0, in, 1));
            }
            if (grads.wants(bias)) be.sumRows(g.view(rows, outF), grads.buffer(bias)); // db = Σ_rows dy
        }, x, w, bias);
    }

    /**
     * {@link #linear} under {@link Autocast}: x and W cast to {@code cast} (bf16) for the GEMMs, fp32 out; backward casts
     * dy likewise, and dx, dW (fp32) accumulate bf16 × bf16 products in fp32. The bf16 copies are what backward keeps.
     */
    private static Tensor linearCast(Tensor x, Tensor w, Tensor bias, DType cast) {
        int in = x.size(-1), outF = w.size(0);
        int rows = Math.toIntExact(x.numel() / in);
        Tensor xh = x.contiguous().to(cast), wh = w.contiguous().to(cast);
        int[] outShape = x.shape();
        outShape[outShape.length - 1] = outF;
        Tensor out = Tensor.empty(x.device(), x.dtype(), outShape);
        Backend be = Backend.of(x);
        Mat xm = new Mat(xh, 0, 0, in, 1);
        Mat wt = new Mat(wh, 0, 0, 1, in); // element (k, j) = W[j, k]
        if (bias != null) be.fillRows(bias, out.view(rows, outF));
        be.gemm(1, rows, outF, in, 1.0, xm, wt, bias == null ? 0.0 : 1.0, new Mat(out, 0, 0, outF, 1));
        return Tape.record(out, (g, grads) -> {
            Tensor gh = g.contiguous().to(cast);
            Mat gm = new Mat(gh, 0, 0, outF, 1);
            if (grads.wants(x)) be.gemm(1, rows, in, outF, 1.0, gm, wt.transpose(), 1.0, new Mat(grads.buffer(x), 0, 0, in, 1));
            if (grads.wants(w)) be.gemm(1, outF, in, rows, 1.0, gm.transpose(), xm, 1.0, new Mat(grads.buffer(w), 0, 0, in, 1));
            if (grads.wants(bias)) be.sumRows(g.contiguous().view(rows, outF), grads.buffer(bias));
            gh.release();
        }, x, w, bias);
    }

    /** The tensor itself if its batch dimensions flatten to one stride, else a contiguous copy. */
    private static Tensor flattenable(Tensor t) {
        int lead = t.dim() - 2;
        for (int i = 0; i < lead - 1; i++)
            if (t.size(i) > 1 && t.stride(i) != t.stride(i + 1) * t.size(i + 1)) return t.contiguous();
        return t;
    }

    static Mat mat(Tensor t) {
        int r = t.dim();
        long bs = r > 2 ? t.stride(r - 3) : 0;
        return new Mat(t, t.offset(), bs, t.stride(r - 2), t.stride(r - 1));
    }

    private static Mat batchOf(Mat m, int i) {
        return new Mat(m.t(), m.off() + i * m.bs(), 0, m.rs(), m.cs());
    }
}
