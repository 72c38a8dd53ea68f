package dev.kiln.backend.cuda;

import dev.kiln.backend.Backend;
import dev.kiln.tensor.DType;
import dev.kiln.tensor.Device;
import dev.kiln.tensor.Tensor;

import java.lang.foreign.MemorySegment;

/**
 * The {@link Backend} of tensors in GPU memory. GEMMs go through cuBLAS ({@code cublasGemmStridedBatchedEx},
 * fp32 or bf16 operands, fp32 compute, laid out by {@link GemmLayout}). The other ops launch the CUDA C kernels of
 * the {@link Kernels} catalog (compiled by NVRTC, see {@link KernelLauncher}) on the compute stream: the
 * {@code _f32} variant for F32 tensors, the {@code _bf16} one for BF16 tensors, whose statistics (layer-norm mean
 * and rstd), losses and parameter gradients (layer-norm weight/bias, embedding table, bias sums) must be F32 tensors.
 * Everything is issued asynchronously except the ops that return a value to the host (sums, finiteness, the
 * cross-entropy count) and the id checks of embedding and cross-entropy, which read back a word.
 *
 * <p>Not wired (no kernel yet; each throws an {@link UnsupportedOperationException} that names it): QAT's
 * rowMaxAbs/fakeQuant, and accumulate into a stride-0 destination other than an fp32 broadcast over leading
 * dimensions (a bias gradient). RoPE's cos/sin tables are F32 in both variants.
 */
public final class CudaBackend implements Backend {
    private static final CudaBackend[] BY_INDEX = new CudaBackend[64];

    private final CudaRuntime rt;
    private final KernelLauncher kernels;
    private final Tensor[] zeroScalar = new Tensor[DType.values().length];   // a device 0 per dtype, for fillRows

    CudaBackend(CudaRuntime rt) {
        this.rt = rt;
        this.kernels = new KernelLauncher(rt);
    }

    /** The backend of a CUDA device (opening it on first use; throws {@link CudaUnavailableException} without one). */
    public static CudaBackend of(Device device) {
        if (device.kind() != Device.Kind.CUDA) throw new IllegalArgumentException("not a CUDA device: " + device);
        int i = device.index();
        if (i < 0 || i >= BY_INDEX.length) throw new IllegalArgumentException("CUDA device index out of range: " + device);
        CudaBackend b = BY_INDEX[i];
        if (b == null || b.rt != CudaRuntime.get(i)) {
            synchronized (BY_INDEX) {
                b = BY_INDEX[i];
                CudaRuntime rt = CudaRuntime.get(i);
                if (b == null || b.rt != rt) BY_INDEX[i] = b = new CudaBackend(rt);
            }
        }
        return b;
    }

    public CudaRuntime runtime() {
        return rt;
    }

    @Override
    public void gemm(int batch, int m, int n, int k, double alpha, Mat a, Mat b, double beta, Mat c) {
        if (batch == 0 || m == 0 || n == 0) return;
        DType ab = a.t().dtype();
        if (b.t().dtype() != ab) throw new IllegalArgumentException("CUDA GEMM: A is " + ab + " but B is " + b.t().dtype());
        int abType = cudaType(ab, "A/B"), cType = cudaType(c.t().dtype(), "C");
        GemmLayout g = GemmLayout.of(batch, m, n, k, operand(a), operand(b), operand(c), ab.byteSize(), c.t().dtype().byteSize());
        rt.makeCurrent();
        rt.cublas().gemmStridedBatched(rt.cublasHandle(), g, (float) alpha, (float) beta, abType, cType, Cublas.COMPUTE_32F);
    }

    private GemmLayout.Operand operand(Mat x) {
        if (!x.t().device().equals(rt.device()))
            throw new IllegalArgumentException("CUDA GEMM on " + rt.device() + " got a tensor on " + x.t().device());
        return new GemmLayout.Operand(x.t().storage().deviceBlock().address(), x.off(), x.bs(), x.rs(), x.cs());
    }

    private static int cudaType(DType t, String which) {
        return switch (t) {
            case F32 -> Cublas.CUDA_R_32F;
            case BF16 -> Cublas.CUDA_R_16BF;
            default -> throw new UnsupportedOperationException("CUDA GEMM: " + which + " is " + t + "; cuBLAS is wired for F32 and BF16");
        };
    }

    // ---------------------------------------------------------------- argument checks

    private static UnsupportedOperationException notWired(String op, String why) {
        return new UnsupportedOperationException("CudaBackend." + op + " is not wired to a CUDA kernel yet (" + why + "); use --device cpu");
    }

    /** The kernel name of base for t's storage type: base_f32 or base_bf16. */
    private static String variant(String base, Tensor t, String op) {
        return switch (t.dtype()) {
            case F32 -> base + "_f32";
            case BF16 -> base + "_bf16";
            default -> throw new IllegalArgumentException("CudaBackend." + op + ": " + t.dtype() + " tensors have no CUDA kernel (F32 and BF16 do)");
        };
    }

    /** The device address of a contiguous tensor of this GPU, checked. */
    private long ptr(Tensor t, String op, String what) {
        if (!t.device().equals(rt.device()))
            throw new IllegalArgumentException("CudaBackend." + op + ": " + what + " is on " + t.device() + ", not " + rt.device());
        if (!t.isContiguous()) throw new IllegalArgumentException("CudaBackend." + op + ": " + what + " " + t.shapeString() + " must be contiguous");
        return rt.address(t);
    }

    /** As {@link #ptr}, and of the same dtype as {@code like}. */
    private long same(Tensor t, Tensor like, String op, String what) {
        if (t.dtype() != like.dtype())
            throw new IllegalArgumentException("CudaBackend." + op + ": " + what + " is " + t.dtype() + " but the input is " + like.dtype());
        return ptr(t, op, what);
    }

    /** As {@link #ptr}, for the buffers that are fp32 in both kernel variants (statistics, losses, parameter gradients). */
    private long f32(Tensor t, String op, String what) {
        if (t.dtype() != DType.F32)
            throw new IllegalArgumentException("CudaBackend." + op + ": " + what + " must be F32 (kernels keep it fp32), got " + t.dtype());
        return ptr(t, op, what);
    }

    private static int count(long n, String op) {
        if (n > Integer.MAX_VALUE) throw new IllegalArgumentException("CudaBackend." + op + ": " + n + " elements exceed the kernels' int range");
        return (int) n;
    }

    private static void sameSize(Tensor a, Tensor b, String op) {
        if (a.numel() != b.numel()) throw new IllegalArgumentException("CudaBackend." + op + ": sizes differ, " + a.shapeString() + " vs " + b.shapeString());
    }

    private static int lastDim(Tensor t) {
        return t.size(t.dim() - 1);
    }

    /** The first word of a device scratch tensor, read back into a Java int (no host tensor; waits for the stream). */
    private int readInt(Tensor dev) {
        return rt.readInt(dev);
    }

    /** A one-word I32 device scratch tensor holding {@code value} (uploaded from a Java array, no host tensor). */
    private Tensor deviceWord(int value) {
        return Tensor.ofInts(rt.device(), new int[] {value}, 1);
    }

    /** dst = src for a view src of dst's shape and dtype (rank ≤ 4) into a contiguous dst: the strided binary kernel adding 0. */
    void copyStrided(Tensor src, Tensor dst) {
        if (src.dtype() != dst.dtype() || !src.sameShape(dst))
            throw new IllegalArgumentException("CudaBackend.copy: " + src + " into " + dst);
        if (dst.numel() == 0) return;
        launchBinary("copy", BinaryOp.ADD, src, zero(dst.dtype()).view().expandView(dst.shape()), dst);
    }

    /** dst = src converted between F32 and BF16 (contiguous, equal sizes; round to nearest even). */
    void convert(Tensor src, Tensor dst) {
        sameSize(src, dst, "convert");
        int n = count(dst.numel(), "convert");
        if (n == 0) return;
        String k;
        if (src.dtype() == DType.F32 && dst.dtype() == DType.BF16) k = "convert_f32_to_bf16";
        else if (src.dtype() == DType.BF16 && dst.dtype() == DType.F32) k = "convert_bf16_to_f32";
        else throw new IllegalArgumentException("CudaBackend.convert: " + src.dtype() + " to " + dst.dtype() + " has no kernel (F32↔BF16 do)");
        kernels.launch(k, ptr(src, "convert", "src"), ptr(dst, "convert", "dst"), n);
    }

    // ---------------------------------------------------------------- elementwise

    @Override
    public void binary(BinaryOp op, Tensor a, Tensor b, Tensor out) {
        int n = count(out.numel(), "binary");
        if (n == 0) return;
        if (!a.sameShape(out) || !b.sameShape(out))
            throw new IllegalArgumentException("CudaBackend.binary: operands " + a.shapeString() + ", " + b.shapeString() + " must be views of out " + out.shapeString());
        if (out.dtype() != a.dtype()) throw new IllegalArgumentException("CudaBackend.binary: out is " + out.dtype() + " but a is " + a.dtype());
        launchBinary("binary", op, a, b, out);
    }

    /** out = a ∘ b through the strided binary kernel (a, b any views of out's shape, rank ≤ 4). */
    private void launchBinary(String opName, BinaryOp op, Tensor a, Tensor b, Tensor out) {
        int r = out.dim();
        if (r > 4) throw new IllegalArgumentException("CudaBackend." + opName + ": rank " + r + " > 4 (the binary kernel is 4-D)");
        if (b.dtype() != a.dtype()) throw new IllegalArgumentException("CudaBackend." + opName + ": a is " + a.dtype() + " but b is " + b.dtype());
        long o = ptr(out, opName, "out");
        int[] d = {1, 1, 1, 1};
        int[] as = new int[4], bs = new int[4];
        for (int i = 0; i < r; i++) {
            int j = 4 - r + i;
            d[j] = out.size(i);
            as[j] = Math.toIntExact(a.stride(i));
            bs[j] = Math.toIntExact(b.stride(i));
        }
        kernels.launch(variant("binary", out, opName), op.ordinal(), viewAddress(a, opName), viewAddress(b, opName), o,
                count(out.numel(), opName), d[1], d[2], d[3], as[0], as[1], as[2], as[3], bs[0], bs[1], bs[2], bs[3]);
    }

    private long viewAddress(Tensor t, String op) {
        if (!t.device().equals(rt.device()))
            throw new IllegalArgumentException("CudaBackend." + op + ": a tensor is on " + t.device() + ", not " + rt.device());
        return rt.address(t);
    }

    @Override
    public void accumulate(Tensor dst, Tensor src) {
        if (!dst.sameShape(src)) throw new IllegalArgumentException("CudaBackend.accumulate: " + dst.shapeString() + " += " + src.shapeString());
        if (dst.numel() == 0) return;
        if (dst.isContiguous()) {
            if (src.isContiguous()) axpy(1.0, src, dst);
            else launchBinary("accumulate", BinaryOp.ADD, dst, src, dst);   // in place: element i reads dst[i], then writes it
            return;
        }
        // dst broadcast over leading dimensions of a contiguous trailing block (a bias gradient): column sums
        int[] shape = dst.shape();
        int k = shape.length;
        long expect = 1;
        while (k > 0 && (shape[k - 1] == 1 || dst.stride(k - 1) == expect)) expect *= shape[--k];
        for (int i = 0; i < k; i++)
            if (shape[i] != 1 && dst.stride(i) != 0)
                throw notWired("accumulate", "a destination with strides " + java.util.Arrays.toString(dst.strides()) + " that is neither contiguous nor a leading broadcast");
        int n = count(expect, "accumulate"), rows = count(src.numel() / expect, "accumulate");
        String what = "the broadcast destination";
        if (dst.dtype() != DType.F32) throw notWired("accumulate", "a " + dst.dtype() + " broadcast destination (sum_rows writes fp32)");
        long d = viewAddress(dst, "accumulate");
        Tensor s = src.isContiguous() ? src : null;
        if (s == null) throw notWired("accumulate", "a non-contiguous source into " + what);
        kernels.launch(variant("sum_rows", s, "accumulate"), ptr(s, "accumulate", "src"), d, rows, n);
    }

    @Override
    public void axpy(double alpha, Tensor src, Tensor dst) {
        sameSize(src, dst, "axpy");
        int n = count(dst.numel(), "axpy");
        if (n == 0) return;
        kernels.launch(variant("axpy", dst, "axpy"), (float) alpha, same(src, dst, "axpy", "src"), ptr(dst, "axpy", "dst"), n);
    }

    @Override
    public void scale(Tensor x, double alpha) {
        int n = count(x.numel(), "scale");
        if (n == 0) return;
        kernels.launch(variant("scale", x, "scale"), ptr(x, "scale", "x"), (float) alpha, n);
    }

    @Override
    public double sumOfSquares(Tensor x) {
        int n = count(x.numel(), "sumOfSquares");
        if (n == 0) return 0;
        String k = variant("sum_squares_partial", x, "sumOfSquares");
        Tensor partials = rt.empty(DType.F32, Kernels.MAX_PARTIALS), out = rt.empty(DType.F32, 1);
        try {
            long xp = ptr(x, "sumOfSquares", "x"), pp = rt.address(partials);
            int blocks = Kernels.get(k).launch(xp, pp, n).gridX();   // one partial per block
            kernels.launch(k, xp, pp, n);
            kernels.launch("sum_partials", pp, rt.address(out), blocks);
            return rt.readFloat(out);
        } finally {
            partials.release();
            out.release();
        }
    }

    @Override
    public boolean allFinite(Tensor x) {
        int n = count(x.numel(), "allFinite");
        if (n == 0) return true;
        Tensor c = rt.empty(DType.I32, 1);
        try {
            rt.zero(c);
            kernels.launch(variant("count_nonfinite", x, "allFinite"), ptr(x, "allFinite", "x"), rt.address(c), n);
            return readInt(c) == 0;
        } finally {
            c.release();
        }
    }

    @Override
    public void gelu(Tensor x, Tensor out) {
        sameSize(x, out, "gelu");
        int n = count(x.numel(), "gelu");
        if (n == 0) return;
        kernels.launch(variant("gelu_forward", x, "gelu"), ptr(x, "gelu", "x"), same(out, x, "gelu", "out"), n);
    }

    @Override
    public void geluBackward(Tensor x, Tensor gradOut, Tensor gradIn) {
        sameSize(x, gradOut, "geluBackward");
        sameSize(x, gradIn, "geluBackward");
        int n = count(x.numel(), "geluBackward");
        if (n == 0) return;
        kernels.launch(variant("gelu_backward", x, "geluBackward"), ptr(x, "geluBackward", "x"),
                same(gradOut, x, "geluBackward", "gradOut"), same(gradIn, x, "geluBackward", "gradIn"), n);
    }

    // ---------------------------------------------------------------- normalisation, softmax

    @Override
    public void layerNorm(Tensor x, Tensor weight, Tensor bias, double eps, Tensor out, Tensor mean, Tensor rstd) {
        String op = "layerNorm";
        int c = lastDim(x), rows = count(x.numel() / Math.max(1, c), op);
        if (rows == 0) return;
        sameSize(x, out, op);
        kernels.launch(variant("layernorm_forward", x, op), ptr(x, op, "x"), same(weight, x, op, "weight"),
                bias == null ? 0L : same(bias, x, op, "bias"), same(out, x, op, "out"), f32(mean, op, "mean"), f32(rstd, op, "rstd"),
                rows, c, (float) eps);
    }

    @Override
    public void layerNormBackward(Tensor x, Tensor weight, Tensor mean, Tensor rstd, Tensor gradOut, Tensor gradX,
                                  Tensor gradWeight, Tensor gradBias) {
        String op = "layerNormBackward";
        int c = lastDim(x), rows = count(x.numel() / Math.max(1, c), op);
        if (rows == 0) return;
        long xp = ptr(x, op, "x"), mp = f32(mean, op, "mean"), rp = f32(rstd, op, "rstd"), gp = same(gradOut, x, op, "gradOut");
        if (gradX != null)
            kernels.launch(variant("layernorm_backward", x, op), xp, same(weight, x, op, "weight"), mp, rp, gp,
                    same(gradX, x, op, "gradX"), rows, c);
        if (gradWeight != null || gradBias != null)
            kernels.launch(variant("layernorm_backward_params", x, op), xp, mp, rp, gp,
                    gradWeight == null ? 0L : f32(gradWeight, op, "gradWeight"), gradBias == null ? 0L : f32(gradBias, op, "gradBias"), rows, c);
    }

    @Override
    public void softmax(Tensor x, Tensor out, boolean causal) {
        int n = lastDim(x), rows = count(x.numel() / Math.max(1, n), "softmax");
        if (rows == 0) return;
        sameSize(x, out, "softmax");
        kernels.launch(variant("softmax_forward", x, "softmax"), ptr(x, "softmax", "x"), same(out, x, "softmax", "out"), rows, n, causal ? 1 : 0);
    }

    @Override
    public void softmaxBackward(Tensor y, Tensor gradOut, Tensor gradIn) {
        String op = "softmaxBackward";
        int n = lastDim(y), rows = count(y.numel() / Math.max(1, n), op);
        if (rows == 0) return;
        kernels.launch(variant("softmax_backward", y, op), ptr(y, op, "y"), same(gradOut, y, op, "gradOut"), same(gradIn, y, op, "gradIn"), rows, n);
    }

    // ---------------------------------------------------------------- loss, embedding

    @Override
    public int crossEntropy(Tensor logits, Tensor targets, int ignoreIndex, double labelSmoothing, double zLoss, Tensor losses,
                            Tensor logSumExp) {
        String op = "crossEntropy";
        int v = lastDim(logits), rows = count(logits.numel() / Math.max(1, v), op);
        if (targets.dtype() != DType.I32 || targets.numel() != rows)
            throw new IllegalArgumentException("CudaBackend.crossEntropy: targets must be " + rows + " I32 ids, got " + targets.dtype() + targets.shapeString());
        if (rows == 0) return 0;
        Tensor error = deviceWord(Integer.MAX_VALUE);
        try {
            long tp = ptr(targets, op, "targets");
            kernels.launch(variant("crossentropy_forward", logits, op), ptr(logits, op, "logits"), tp, f32(losses, op, "losses"),
                    f32(logSumExp, op, "logSumExp"), rt.address(error), rows, v, ignoreIndex, (float) labelSmoothing, (float) zLoss);
            int bad = readInt(error);
            int[] ids = new int[rows];   // to count the rows not ignored (a Java array, no host tensor)
            rt.download(targets.contiguous(), MemorySegment.ofArray(ids));
            if (bad != Integer.MAX_VALUE)
                throw new IllegalArgumentException("CudaBackend.crossEntropy: target " + ids[bad] + " at row " + bad + " is outside the vocabulary [0, " + v + ")");
            int counted = 0;
            for (int id : ids) if (id != ignoreIndex) counted++;
            return counted;
        } finally {
            error.release();
        }
    }

    @Override
    public void crossEntropyBackward(Tensor logits, Tensor targets, int ignoreIndex, double labelSmoothing, double zLoss,
                                     Tensor logSumExp, double scale, Tensor gradLogits) {
        String op = "crossEntropyBackward";
        int v = lastDim(logits), rows = count(logits.numel() / Math.max(1, v), op);
        if (rows == 0) return;
        kernels.launch(variant("crossentropy_backward", logits, op), ptr(logits, op, "logits"), ptr(targets, op, "targets"),
                f32(logSumExp, op, "logSumExp"), same(gradLogits, logits, op, "gradLogits"), rows, v, ignoreIndex,
                (float) labelSmoothing, (float) zLoss, (float) scale);
    }

    @Override
    public void embedding(Tensor idx, Tensor weight, Tensor out) {
        String op = "embedding";
        int n = count(idx.numel(), op), c = weight.size(1), v = weight.size(0);
        if (n == 0 || c == 0) return;
        if (idx.dtype() != DType.I32) throw new IllegalArgumentException("CudaBackend.embedding: ids must be I32, got " + idx.dtype());
        Tensor error = deviceWord(Integer.MAX_VALUE);
        try {
            long ip = ptr(idx, op, "idx");
            kernels.launch(variant("embedding_forward", weight, op), ip, ptr(weight, op, "weight"), same(out, weight, op, "out"),
                    rt.address(error), n, c, v);
            int bad = readInt(error);
            if (bad != Integer.MAX_VALUE)
                throw new IllegalArgumentException("CudaBackend.embedding: token id " + idx.toIntArray()[bad] + " at position " + bad
                        + " is outside the embedding table [0, " + v + ")");
        } finally {
            error.release();
        }
    }

    @Override
    public void embeddingBackward(Tensor idx, Tensor gradOut, Tensor gradWeight) {
        String op = "embeddingBackward";
        int n = count(idx.numel(), op), c = gradWeight.size(1), v = gradWeight.size(0);
        if (n == 0 || c == 0) return;
        // the deterministic kernel: each column sums its positions in order, as the CPU does (no atomics)
        kernels.launch(variant("embedding_backward_deterministic", gradOut, op), ptr(idx, op, "idx"), ptr(gradOut, op, "gradOut"),
                f32(gradWeight, op, "gradWeight"), n, c, v);
    }

    @Override
    public void fillRows(Tensor row, Tensor dst) {
        if (dst.dim() != 2 || row.numel() != dst.size(1))
            throw new IllegalArgumentException("CudaBackend.fillRows: row " + row.shapeString() + " into " + dst.shapeString());
        if (dst.numel() == 0) return;
        if (!row.isContiguous()) throw new IllegalArgumentException("CudaBackend.fillRows: row " + row.shapeString() + " must be contiguous");
        // dst = row (broadcast over rows) + 0: the strided binary kernel is the row copy
        Tensor zero = zero(row.dtype());
        launchBinary("fillRows", BinaryOp.ADD, row.view(1, dst.size(1)).expandView(dst.shape()), zero.expandView(dst.shape()), dst);
    }

    private synchronized Tensor zero(DType t) {
        Tensor z = zeroScalar[t.ordinal()];
        if (z == null) {
            try (var keep = dev.kiln.tensor.MemoryScope.persistent()) {   // lives with the backend, not the caller's step
                z = rt.empty(t, 1, 1);
            }
            rt.zero(z);
            zeroScalar[t.ordinal()] = z;
        }
        return z;
    }

    @Override
    public void sumRows(Tensor src, Tensor dst) {
        String op = "sumRows";
        if (src.dim() != 2 || dst.numel() != src.size(1))
            throw new IllegalArgumentException("CudaBackend.sumRows: " + src.shapeString() + " into " + dst.shapeString());
        if (src.numel() == 0) return;
        kernels.launch(variant("sum_rows", src, op), ptr(src, op, "src"), f32(dst, op, "dst"), src.size(0), src.size(1));
    }

    // ---------------------------------------------------------------- attention

    /** (B, T, 3C) packed projections split into q, k, v scratch of shape (B, NH, T, D). */
    private Tensor[] permute(Tensor qkv, int nHead, String op) {
        int b = qkv.size(0), t = qkv.size(1), c = qkv.size(2) / 3, d = c / nHead;
        if (qkv.dim() != 3 || qkv.size(2) != 3 * c || c != nHead * d)
            throw new IllegalArgumentException("CudaBackend." + op + ": qkv " + qkv.shapeString() + " is not (B, T, 3·" + nHead + "·D)");
        Tensor q = rt.empty(qkv.dtype(), b, nHead, t, d), k = rt.empty(qkv.dtype(), b, nHead, t, d), v = rt.empty(qkv.dtype(), b, nHead, t, d);
        kernels.launch(variant("attention_permute", qkv, op), ptr(qkv, op, "qkv"), rt.address(q), rt.address(k), rt.address(v), b, t, nHead, d);
        return new Tensor[] {q, k, v};
    }

    private static Mat rows(Tensor t, int r, int c) {
        return new Mat(t, 0, (long) r * c, c, 1);
    }

    @Override
    public void attention(Tensor qkv, int nHead, Tensor out, Tensor probs) {
        String op = "attention";
        int b = qkv.size(0), t = qkv.size(1), c = qkv.size(2) / 3, d = c / nHead, bh = b * nHead;
        if (b == 0 || t == 0) return;
        Tensor[] qkvs = permute(qkv, nHead, op);
        Tensor scores = rt.empty(qkv.dtype(), b, nHead, t, t), o = rt.empty(qkv.dtype(), b, nHead, t, d);
        try {
            gemm(bh, t, t, d, 1.0, rows(qkvs[0], t, d), rows(qkvs[1], t, d).transpose(), 0.0, rows(scores, t, t));   // S = Q·Kᵀ
            kernels.launch(variant("attention_softmax_forward", qkv, op), rt.address(scores), same(probs, qkv, op, "probs"),
                    bh * t, t, (float) (1.0 / Math.sqrt(d)));
            gemm(bh, t, d, t, 1.0, rows(probs, t, t), rows(qkvs[2], t, d), 0.0, rows(o, t, d));                    // O = P·V
            kernels.launch(variant("attention_unpermute", qkv, op), rt.address(o), same(out, qkv, op, "out"), b, t, nHead, d);
        } finally {
            for (Tensor s : qkvs) s.release();
            scores.release();
            o.release();
        }
    }

    @Override
    public void attentionBackward(Tensor qkv, int nHead, Tensor probs, Tensor gradOut, Tensor gradQkv) {
        String op = "attentionBackward";
        int b = qkv.size(0), t = qkv.size(1), c = qkv.size(2) / 3, d = c / nHead, bh = b * nHead;
        if (b == 0 || t == 0) return;
        Tensor[] qkvs = permute(qkv, nHead, op);
        DType dt = qkv.dtype();
        Tensor dO = rt.empty(dt, b, nHead, t, d), dP = rt.empty(dt, b, nHead, t, t), dS = rt.empty(dt, b, nHead, t, t);
        Tensor dq = rt.empty(dt, b, nHead, t, d), dk = rt.empty(dt, b, nHead, t, d), dv = rt.empty(dt, b, nHead, t, d);
        try {
            kernels.launch(variant("attention_unpermute_backward", qkv, op), same(gradOut, qkv, op, "gradOut"), rt.address(dO), b, t, nHead, d);
            gemm(bh, t, t, d, 1.0, rows(dO, t, d), rows(qkvs[2], t, d).transpose(), 0.0, rows(dP, t, t));      // dP = dO·Vᵀ
            gemm(bh, t, d, t, 1.0, rows(probs, t, t).transpose(), rows(dO, t, d), 0.0, rows(dv, t, d));          // dV = Pᵀ·dO
            kernels.launch(variant("attention_softmax_backward", qkv, op), same(probs, qkv, op, "probs"), rt.address(dP), rt.address(dS),
                    bh * t, t, (float) (1.0 / Math.sqrt(d)));
            gemm(bh, t, d, t, 1.0, rows(dS, t, t), rows(qkvs[1], t, d), 0.0, rows(dq, t, d));                    // dQ = dS·K
            gemm(bh, t, d, t, 1.0, rows(dS, t, t).transpose(), rows(qkvs[0], t, d), 0.0, rows(dk, t, d));        // dK = dSᵀ·Q
            kernels.launch(variant("attention_permute_backward", qkv, op), rt.address(dq), rt.address(dk), rt.address(dv),
                    same(gradQkv, qkv, op, "gradQkv"), b, t, nHead, d);
        } finally {
            for (Tensor s : qkvs) s.release();
            for (Tensor s : new Tensor[] {dO, dP, dS, dq, dk, dv}) s.release();
        }
    }

    // ---------------------------------------------------------------- optimizer

    @Override
    public void adamw(Tensor param, Tensor grad, Tensor m, Tensor v, double lr, double beta1, double beta2, double eps,
                      double weightDecay, long step) {
        String op = "adamw";
        sameSize(param, grad, op);
        sameSize(param, m, op);
        sameSize(param, v, op);
        int n = count(param.numel(), op);
        if (n == 0) return;
        // the step's scalars in double, each rounded once (as CpuBackend forms them)
        double bc1 = 1 - Math.pow(beta1, step), bc2 = 1 - Math.pow(beta2, step);
        kernels.launch("adamw_f32", f32(param, op, "param (fp32 master weights)"), f32(grad, op, "grad"), f32(m, op, "m"), f32(v, op, "v"), n,
                (float) beta1, (float) beta2, (float) (1 - beta1), (float) (1 - beta2), (float) (lr / bc1),
                (float) (1.0 / Math.sqrt(bc2)), (float) (lr * weightDecay), (float) eps);
    }

    // ---------------------------------------------------------------- not wired: no kernel yet

    @Override
    public void rowMaxAbs(Tensor x, Tensor out) {
        throw notWired("rowMaxAbs", "QAT has no CUDA kernel");
    }

    @Override
    public void fakeQuant(Tensor x, Tensor scales, int qmax, Tensor out) {
        throw notWired("fakeQuant", "QAT has no CUDA kernel");
    }

    @Override
    public void fakeQuantBackward(Tensor x, Tensor scales, int qmax, Tensor gradOut, Tensor gradIn) {
        throw notWired("fakeQuantBackward", "QAT has no CUDA kernel");
    }

    // ---------------------------------------------------------------- Llama ops

    @Override
    public void rmsNorm(Tensor x, Tensor weight, double eps, Tensor out, Tensor rstd) {
        String op = "rmsNorm";
        int c = lastDim(x), rows = count(x.numel() / Math.max(1, c), op);
        if (rows == 0) return;
        sameSize(x, out, op);
        kernels.launch(variant("rmsnorm_forward", x, op), ptr(x, op, "x"), same(weight, x, op, "weight"), same(out, x, op, "out"),
                f32(rstd, op, "rstd"), rows, c, (float) eps);
    }

    @Override
    public void rmsNormBackward(Tensor x, Tensor weight, Tensor rstd, Tensor gradOut, Tensor gradX, Tensor gradWeight) {
        String op = "rmsNormBackward";
        int c = lastDim(x), rows = count(x.numel() / Math.max(1, c), op);
        if (rows == 0) return;
        long xp = ptr(x, op, "x"), rp = f32(rstd, op, "rstd"), gp = same(gradOut, x, op, "gradOut");
        if (gradX != null)
            kernels.launch(variant("rmsnorm_backward", x, op), xp, same(weight, x, op, "weight"), rp, gp, same(gradX, x, op, "gradX"), rows, c);
        if (gradWeight != null)
            kernels.launch(variant("rmsnorm_backward_weight", x, op), xp, rp, gp, f32(gradWeight, op, "gradWeight"), rows, c);
    }

    @Override
    public void rope(Tensor x, int headDim, Tensor cos, Tensor sin, Tensor out) {
        sameSize(x, out, "rope");
        launchRope("rope", x, headDim, cos, sin, same(out, x, "rope", "out"), 0);
    }

    @Override
    public void ropeBackward(Tensor gradOut, int headDim, Tensor cos, Tensor sin, Tensor gradX) {
        sameSize(gradOut, gradX, "ropeBackward");
        launchRope("ropeBackward", gradOut, headDim, cos, sin, same(gradX, gradOut, "ropeBackward", "gradX"), 1);
    }

    private void launchRope(String op, Tensor x, int d, Tensor cos, Tensor sin, long out, int inverse) {
        int w = lastDim(x), tLen = cos.size(0);
        if (d <= 0 || d % 2 != 0 || w % d != 0 || cos.numel() != (long) tLen * (d / 2) || sin.numel() != cos.numel())
            throw new IllegalArgumentException("CudaBackend." + op + ": rows of " + w + " in heads of " + d + " with cos " + cos.shapeString()
                    + " and sin " + sin.shapeString() + " (T, headDim/2)");
        int pairs = count(x.numel() / 2, op);
        if (pairs == 0) return;
        kernels.launch(variant("rope", x, op), ptr(x, op, "x"), f32(cos, op, "cos"), f32(sin, op, "sin"), out, pairs, w, d, tLen, inverse);
    }

    @Override
    public void silu(Tensor x, Tensor out) {
        swiglu("silu", x, null, out);
    }

    @Override
    public void siluBackward(Tensor x, Tensor gradOut, Tensor gradIn) {
        swigluBackward("siluBackward", x, null, gradOut, gradIn, null);
    }

    @Override
    public void swiglu(Tensor gate, Tensor up, Tensor out) {
        swiglu("swiglu", gate, up, out);
    }

    @Override
    public void swigluBackward(Tensor gate, Tensor up, Tensor gradOut, Tensor gradGate, Tensor gradUp) {
        swigluBackward("swigluBackward", gate, up, gradOut, gradGate, gradUp);
    }

    /** out = silu(gate)·up, or silu(gate) when up is null (one kernel for both). */
    private void swiglu(String op, Tensor gate, Tensor up, Tensor out) {
        sameSize(gate, out, op);
        if (up != null) sameSize(gate, up, op);
        int n = count(gate.numel(), op);
        if (n == 0) return;
        kernels.launch(variant("swiglu_forward", gate, op), ptr(gate, op, "gate"), up == null ? 0L : same(up, gate, op, "up"),
                same(out, gate, op, "out"), n);
    }

    private void swigluBackward(String op, Tensor gate, Tensor up, Tensor gradOut, Tensor gradGate, Tensor gradUp) {
        sameSize(gate, gradOut, op);
        int n = count(gate.numel(), op);
        if (n == 0 || (gradGate == null && gradUp == null)) return;
        kernels.launch(variant("swiglu_backward", gate, op), ptr(gate, op, "gate"), up == null ? 0L : same(up, gate, op, "up"),
                same(gradOut, gate, op, "gradOut"), gradGate == null ? 0L : same(gradGate, gate, op, "gradGate"),
                gradUp == null || up == null ? 0L : same(gradUp, gate, op, "gradUp"), n);
    }
}
