package dev.kiln.backend;

import dev.kiln.backend.cpu.CpuBackend;
import dev.kiln.tensor.Tensor;

/**
 * The kernel contract: what an op needs a device to compute. Ops are written once against it.
 * Conventions: outputs are preallocated by the op; a method named {@code …Backward} ACCUMULATES
 * (+=) into its gradient outputs, so gradients flowing from several uses add up without copies.
 * Float tensors are F32 (fast paths) or F64 (reference precision for gradient checks).
 */
public interface Backend {

    /** The backend that owns this tensor's memory. */
    static Backend of(Tensor t) {
        return CpuBackend.get();
    }

    /** A matrix operand: element (r, c) of batch b sits at storage index off + b·bs + r·rs + c·cs of t. */
    record Mat(Tensor t, long off, long bs, long rs, long cs) {
        public Mat transpose() {
            return new Mat(t, off, bs, cs, rs);
        }
    }

    /** C[b] = alpha · A[b] · B[b] + beta · C[b] for b in [0, batch); C must have column stride 1. */
    void gemm(int batch, int m, int n, int k, double alpha, Mat a, Mat b, double beta, Mat c);

    enum BinaryOp { ADD, SUB, MUL, DIV }

    /** out = a ∘ b elementwise; a and b are views of out's shape (stride 0 on broadcast dimensions). */
    void binary(BinaryOp op, Tensor a, Tensor b, Tensor out);

    /** dst += src elementwise for equal shapes; dst may have stride-0 dimensions (then it sums). */
    void accumulate(Tensor dst, Tensor src);

    /** dst += alpha · src for contiguous tensors of equal size. */
    void axpy(double alpha, Tensor src, Tensor dst);

    /** x *= alpha in place (contiguous). */
    void scale(Tensor x, double alpha);

    /** Σ x² over all elements, accumulated in double. */
    double sumOfSquares(Tensor x);

    /** True if every element is finite. */
    boolean allFinite(Tensor x);

    /** out = gelu(x), tanh form. */
    void gelu(Tensor x, Tensor out);

    void geluBackward(Tensor x, Tensor gradOut, Tensor gradIn);

    /** Row-wise layer norm over the last dimension of size c; saves mean and 1/std per row. */
    void layerNorm(Tensor x, Tensor weight, Tensor bias, double eps, Tensor out, Tensor mean, Tensor rstd);

    /** weight/bias grads may be null (not needed); bias may be absent in forward (null). */
    void layerNormBackward(Tensor x, Tensor weight, Tensor mean, Tensor rstd, Tensor gradOut,
                           Tensor gradX, Tensor gradWeight, Tensor gradBias);

    /** Row-wise RMS norm over the last dimension: out = x·rstd·weight, rstd = 1/√(mean(x²) + eps) saved per row. */
    void rmsNorm(Tensor x, Tensor weight, double eps, Tensor out, Tensor rstd);

    /** Accumulates into gradX and gradWeight; either may be null (not needed). */
    void rmsNormBackward(Tensor x, Tensor weight, Tensor rstd, Tensor gradOut, Tensor gradX, Tensor gradWeight);

    /**
     * Rotary position embedding, Hugging Face's rotate_half convention: x (…, T, W) with W = heads·headDim,
     * each head's halves rotated by the angles of its row's position (the row index mod T): out = x·cos +
     * rotate_half(x)·sin with cos, sin (T, headDim/2) (the second half of a head reuses the first's angles).
     */
    void rope(Tensor x, int headDim, Tensor cos, Tensor sin, Tensor out);

    /** gradX += the inverse rotation of gradOut. */
    void ropeBackward(Tensor gradOut, int headDim, Tensor cos, Tensor sin, Tensor gradX);

    /** out = silu(x) = x·σ(x). */
    void silu(Tensor x, Tensor out);

    void siluBackward(Tensor x, Tensor gradOut, Tensor gradIn);

    /** out = silu(gate)·up elementwise (Llama's SwiGLU MLP, fused). */
    void swiglu(Tensor gate, Tensor up, Tensor out);

    /** gradGate += gradOut·up·silu'(gate), gradUp += gradOut·silu(gate); either may be null. */
    void swigluBackward(Tensor gate, Tensor up, Tensor gradOut, Tensor gradGate, Tensor gradUp);

    /**
     * Row-wise softmax over the last dimension (rows of length n). With {@code causal}, rows are
     * grouped in blocks of n and row i of a block sees only columns 0..i (the rest are 0).
     */
    void softmax(Tensor x, Tensor out, boolean causal);

    void softmaxBackward(Tensor y, Tensor gradOut, Tensor gradIn);

    /**
     * Per-row cross-entropy of logits (rows × v) against int targets; ignored rows get loss 0.
     * With lse = log Σ exp(x), smoothing ε and z-loss coefficient c (PyTorch's label_smoothing;
     * PaLM's z-loss), a row's loss is (1 − ε)·(lse − x[y]) + ε·(lse − mean(x)) + c·lse², i.e.
     * −Σ q·log softmax(x) with q = (1 − ε)·onehot(y) + ε/v, plus c·lse². ε = c = 0 is plain
     * cross-entropy. Callers validate ε ∈ [0, 1) and c ≥ 0. Saves the log-sum-exp per row.
     * Returns the number of rows not ignored.
     */
    int crossEntropy(Tensor logits, Tensor targets, int ignoreIndex, double labelSmoothing, double zLoss,
                     Tensor losses, Tensor logSumExp);

    /**
     * gradLogits += scale · ((1 + 2c·lse)·softmax(logits) − q) for non-ignored rows, with
     * q = (1 − ε)·onehot(target) + ε/v as in {@link #crossEntropy}.
     */
    void crossEntropyBackward(Tensor logits, Tensor targets, int ignoreIndex, double labelSmoothing, double zLoss,
                              Tensor logSumExp, double scale, Tensor gradLogits);

    /** out[i, :] = weight[idx[i], :]; throws naming the index when out of range. */
    void embedding(Tensor idx, Tensor weight, Tensor out);

    void embeddingBackward(Tensor idx, Tensor gradOut, Tensor gradWeight);

    /** dst[r, :] = row for every row of the 2-D dst (e.g. a bias before a GEMM with beta 1). */
    void fillRows(Tensor row, Tensor dst);

    /** dst += Σ_r src[r, :] for a 2-D src (e.g. a bias gradient), summed in row order. */
    void sumRows(Tensor src, Tensor dst);

    /**
     * Causal self-attention over packed projections: qkv (B, T, 3C) holds q | k | v, each split
     * into nHead heads of D = C/nHead; out (B, T, C) gets softmax(q·kᵀ/√D + mask)·v per head, heads
     * side by side; probs (B, H, T, T) keeps the probabilities for backward. Masked (future)
     * positions are never computed.
     */
    void attention(Tensor qkv, int nHead, Tensor out, Tensor probs);

    /** gradQkv += d(attention)/d(qkv) · gradOut, from the saved probabilities. */
    void attentionBackward(Tensor qkv, int nHead, Tensor probs, Tensor gradOut, Tensor gradQkv);

    /** One AdamW step on a parameter (decoupled weight decay), bias-corrected by {@code step}. */
    void adamw(Tensor param, Tensor grad, Tensor m, Tensor v, double lr, double beta1, double beta2,
               double eps, double weightDecay, long step);

    /**
     * The rounding rule of symmetric integer quantisation, shared by every backend and by int8 export
     * so both produce the same codes: clamp(rint(x / s), −qmax, qmax), rint rounding half to even;
     * a zero scale (an all-zero row) gives code 0. The code is never −0, so a code stored as an int8 and
     * multiplied back gives the very same bits.
     */
    static double quantCode(double x, double s, int qmax) {
        if (s == 0) return 0;
        return Math.clamp(Math.rint(x / s), -qmax, qmax) + 0.0;
    }

    /** out[r] = max |x[r, :]| with x (contiguous) viewed as [out.numel(), x.numel() / out.numel()]. */
    void rowMaxAbs(Tensor x, Tensor out);

    /**
     * Fake quantisation: out = quantCode(x, s_r, qmax) · s_r, with x and out (contiguous) viewed as
     * [scales.numel(), rest] and s_r the scale of row r.
     */
    void fakeQuant(Tensor x, Tensor scales, int qmax, Tensor out);

    /**
     * The straight-through estimator of {@link #fakeQuant}: gradIn += gradOut where x/s_r rounds inside
     * [−qmax, qmax] (rint(|x/s_r|) ≤ qmax), nothing where the clamp cut it.
     */
    void fakeQuantBackward(Tensor x, Tensor scales, int qmax, Tensor gradOut, Tensor gradIn);
}
