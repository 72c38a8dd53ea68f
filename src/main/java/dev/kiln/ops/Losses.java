package dev.kiln.ops;

import dev.kiln.autograd.Tape;
import dev.kiln.backend.Backend;
import dev.kiln.tensor.DType;
import dev.kiln.tensor.Device;
import dev.kiln.tensor.Tensor;


/** Fused softmax + cross-entropy: never materialises the probabilities in forward. */
public final class Losses {
    private Losses() {}

    /**
     * Mean over non-ignored rows of −log softmax(logits)[target]. logits [..., V]; targets int32
     * with the leading shape; rows whose target is {@code ignoreIndex} contribute nothing.
     * All rows ignored gives NaN, as in PyTorch.
     */
    public static Tensor crossEntropy(Tensor logits, Tensor targets, int ignoreIndex) {
        return crossEntropy(logits, targets, ignoreIndex, 0, 0);
    }

    /**
     * Cross-entropy with label smoothing and z-loss, mean over non-ignored rows. Per row, with
     * lse = log Σ exp(x):
     * <pre>
     *   loss = (1 − ε)·(lse − x[y]) + ε·(lse − mean(x)) + c·lse²
     *   dloss/dx = softmax(x) − q + 2c·lse·softmax(x),   q = (1 − ε)·onehot(y) + ε/V
     * </pre>
     * The first two terms are {@code torch.nn.functional.cross_entropy(..., label_smoothing=ε)};
     * the last is PaLM's z-loss (Chowdhery et al. 2022), which pulls log Z towards 0.
     * ε = c = 0 is exactly {@link #crossEntropy(Tensor, Tensor, int)}.
     *
     * @param labelSmoothing ε in [0, 1)
     * @param zLoss          c ≥ 0 (finite)
     */
    public static Tensor crossEntropy(Tensor logits, Tensor targets, int ignoreIndex, double labelSmoothing, double zLoss) {
        if (!(labelSmoothing >= 0 && labelSmoothing < 1))
            throw new IllegalArgumentException("cross-entropy: label smoothing must be in [0, 1), got " + labelSmoothing);
        if (!(zLoss >= 0 && Double.isFinite(zLoss)))
            throw new IllegalArgumentException("cross-entropy: z-loss coefficient must be finite and >= 0, got " + zLoss);
        if (targets.dtype() != DType.I32) throw new IllegalArgumentException("targets must be int32, got " + targets.dtype());
        int v = logits.size(-1);
        long rows = logits.numel() / v;
        if (targets.numel() != rows)
            throw new IllegalArgumentException("cross-entropy: " + rows + " rows of logits " + logits.shapeString() + " but targets " + targets.shapeString());
        Tensor lc = logits.contiguous(), tc = targets.contiguous();
        int r = Math.toIntExact(rows);
        Tensor losses = Tensor.empty(logits.device(), logits.dtype(), r), lse = Tensor.empty(logits.device(), logits.dtype(), r);
        Backend be = Backend.of(logits);
        int count = be.crossEntropy(lc.view(r, v), tc.view(r), ignoreIndex, labelSmoothing, zLoss, losses, lse);
        Tensor out;
        if (losses.device().kind() == Device.Kind.CPU) { // summed in double on the host
            double total = 0;
            for (int i = 0; i < r; i++) total += losses.getFlat(i);
            out = Tensor.full(total / count, logits.dtype());
        } else { // on the device, so only the scalar ever comes back: sum (fp32, row order), then the mean
            out = Tensor.zeros(losses.device(), losses.dtype(), 1);
            be.sumRows(losses.view(r, 1), out);
            be.scale(out, 1.0 / count);
            out = out.view();
        }
        return Tape.record(out, (g, grads) -> {
            if (!grads.wants(logits) || count == 0) return;
            Tensor gl = grads.buffer(logits);
            be.crossEntropyBackward(lc.view(r, v), tc.view(r), ignoreIndex, labelSmoothing, zLoss, lse, g.item() / count, gl.view(r, v));
        }, logits);
    }

    /**
     * Plain cross-entropy of every row, unreduced: −log softmax(logits)[target] per row of logits [..., V]
     * (targets with the leading shape; ignored rows give 0). Not recorded on the tape (no gradient): for ranking
     * and scoring samples, e.g. selective backprop and {@code kiln prepare --score}.
     */
    public static Tensor crossEntropyRows(Tensor logits, Tensor targets, int ignoreIndex) {
        if (targets.dtype() != DType.I32) throw new IllegalArgumentException("targets must be int32, got " + targets.dtype());
        int v = logits.size(-1);
        int r = Math.toIntExact(logits.numel() / v);
        if (targets.numel() != r)
            throw new IllegalArgumentException("cross-entropy: " + r + " rows of logits " + logits.shapeString() + " but targets " + targets.shapeString());
        Tensor losses = Tensor.empty(logits.device(), logits.dtype(), r), lse = Tensor.empty(logits.device(), logits.dtype(), r);
        Backend.of(logits).crossEntropy(logits.contiguous().view(r, v), targets.contiguous().view(r), ignoreIndex, 0, 0, losses, lse);
        return losses;
    }
}
