package dev.kiln.backend.cuda;

import dev.kiln.backend.Backend;
import dev.kiln.tensor.DType;
import dev.kiln.tensor.Device;
import dev.kiln.tensor.Tensor;

/**
 * The {@link Backend} of tensors in GPU memory. GEMMs go through cuBLAS ({@code cublasGemmStridedBatchedEx},
 * fp32 or bf16 operands, fp32 compute, laid out by {@link GemmLayout}). The other ops are CUDA C kernels
 * compiled by NVRTC; until those sources are wired in, each of them throws an
 * {@link UnsupportedOperationException} that says so — training on a GPU is not available yet.
 */
public final class CudaBackend implements Backend {
    private static final CudaBackend[] BY_INDEX = new CudaBackend[64];

    private final CudaRuntime rt;

    CudaBackend(CudaRuntime rt) {
        this.rt = rt;
    }

    /** The backend of a CUDA device (opening it on first use; throws {@link CudaUnavailableException} without one). */
    public static CudaBackend of(Device device) {
        if (device.kind() != Device.Kind.CUDA) throw new IllegalArgumentException("not a CUDA device: " + device);
        int i = device.index();
        if (i < 0 || i >= BY_INDEX.length) throw new IllegalArgumentException("CUDA device index out of range: " + device);
        CudaBackend b = BY_INDEX[i];
        if (b == null) {
            synchronized (BY_INDEX) {
                b = BY_INDEX[i];
                if (b == null) BY_INDEX[i] = b = new CudaBackend(CudaRuntime.get(i));
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

    private static UnsupportedOperationException notWired(String op) {
        return new UnsupportedOperationException("CudaBackend." + op + ": the CUDA kernel is not wired yet (only gemm runs on the GPU so far)");
    }

    @Override
    public void binary(BinaryOp op, Tensor a, Tensor b, Tensor out) {
        throw notWired("binary");
    }

    @Override
    public void accumulate(Tensor dst, Tensor src) {
        throw notWired("accumulate");
    }

    @Override
    public void axpy(double alpha, Tensor src, Tensor dst) {
        throw notWired("axpy");
    }

    @Override
    public void scale(Tensor x, double alpha) {
        throw notWired("scale");
    }

    @Override
    public double sumOfSquares(Tensor x) {
        throw notWired("sumOfSquares");
    }

    @Override
    public boolean allFinite(Tensor x) {
        throw notWired("allFinite");
    }

    @Override
    public void gelu(Tensor x, Tensor out) {
        throw notWired("gelu");
    }

    @Override
    public void geluBackward(Tensor x, Tensor gradOut, Tensor gradIn) {
        throw notWired("geluBackward");
    }

    @Override
    public void layerNorm(Tensor x, Tensor weight, Tensor bias, double eps, Tensor out, Tensor mean, Tensor rstd) {
        throw notWired("layerNorm");
    }

    @Override
    public void layerNormBackward(Tensor x, Tensor weight, Tensor mean, Tensor rstd, Tensor gradOut, Tensor gradX,
                                  Tensor gradWeight, Tensor gradBias) {
        throw notWired("layerNormBackward");
    }

    @Override
    public void softmax(Tensor x, Tensor out, boolean causal) {
        throw notWired("softmax");
    }

    @Override
    public void softmaxBackward(Tensor y, Tensor gradOut, Tensor gradIn) {
        throw notWired("softmaxBackward");
    }

    @Override
    public int crossEntropy(Tensor logits, Tensor targets, int ignoreIndex, double labelSmoothing, double zLoss, Tensor losses,
                            Tensor logSumExp) {
        throw notWired("crossEntropy");
    }

    @Override
    public void crossEntropyBackward(Tensor logits, Tensor targets, int ignoreIndex, double labelSmoothing, double zLoss,
                                     Tensor logSumExp, double scale, Tensor gradLogits) {
        throw notWired("crossEntropyBackward");
    }

    @Override
    public void embedding(Tensor idx, Tensor weight, Tensor out) {
        throw notWired("embedding");
    }

    @Override
    public void embeddingBackward(Tensor idx, Tensor gradOut, Tensor gradWeight) {
        throw notWired("embeddingBackward");
    }

    @Override
    public void fillRows(Tensor row, Tensor dst) {
        throw notWired("fillRows");
    }

    @Override
    public void sumRows(Tensor src, Tensor dst) {
        throw notWired("sumRows");
    }

    @Override
    public void attention(Tensor qkv, int nHead, Tensor out, Tensor probs) {
        throw notWired("attention");
    }

    @Override
    public void attentionBackward(Tensor qkv, int nHead, Tensor probs, Tensor gradOut, Tensor gradQkv) {
        throw notWired("attentionBackward");
    }

    @Override
    public void adamw(Tensor param, Tensor grad, Tensor m, Tensor v, double lr, double beta1, double beta2, double eps,
                      double weightDecay, long step) {
        throw notWired("adamw");
    }

    @Override
    public void rowMaxAbs(Tensor x, Tensor out) {
        throw notWired("rowMaxAbs");
    }

    @Override
    public void fakeQuant(Tensor x, Tensor scales, int qmax, Tensor out) {
        throw notWired("fakeQuant");
    }

    @Override
    public void fakeQuantBackward(Tensor x, Tensor scales, int qmax, Tensor gradOut, Tensor gradIn) {
        throw notWired("fakeQuantBackward");
    }

    @Override
    public void rmsNorm(Tensor x, Tensor weight, double eps, Tensor out, Tensor rstd) {
        throw notWired("rmsNorm");
    }

    @Override
    public void rmsNormBackward(Tensor x, Tensor weight, Tensor rstd, Tensor gradOut, Tensor gradX, Tensor gradWeight) {
        throw notWired("rmsNormBackward");
    }

    @Override
    public void rope(Tensor x, int headDim, Tensor cos, Tensor sin, Tensor out) {
        throw notWired("rope");
    }

    @Override
    public void ropeBackward(Tensor gradOut, int headDim, Tensor cos, Tensor sin, Tensor gradX) {
        throw notWired("ropeBackward");
    }

    @Override
    public void silu(Tensor x, Tensor out) {
        throw notWired("silu");
    }

    @Override
    public void siluBackward(Tensor x, Tensor gradOut, Tensor gradIn) {
        throw notWired("siluBackward");
    }

    @Override
    public void swiglu(Tensor gate, Tensor up, Tensor out) {
        throw notWired("swiglu");
    }

    @Override
    public void swigluBackward(Tensor gate, Tensor up, Tensor gradOut, Tensor gradGate, Tensor gradUp) {
        throw notWired("swigluBackward");
    }
}
