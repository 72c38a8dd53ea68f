package dev.kiln.ops;

import dev.kiln.autograd.Tape;
import dev.kiln.backend.Backend;
import dev.kiln.tensor.Tensor;

import java.util.Arrays;

/** Layer normalisation and RMS normalisation over the last dimension (fused forward and backward). */
public final class Norms {
    private Norms() {}

    /** (x − mean) / √(var + eps) · weight + bias; bias may be null (nanoGPT's bias=False). */
    public static Tensor layerNorm(Tensor x, Tensor weight, Tensor bias, double eps) {
        int c = x.size(-1);
        if (weight.numel() != c || bias != null && bias.numel() != c)
            throw new IllegalArgumentException("layerNorm over " + c + " features with weight " + weight.shapeString());
        Tensor xc = x.contiguous();
        int[] rowShape = Arrays.copyOf(x.shape(), x.dim() - 1);
        Tensor out = Tensor.empty(x.device(), x.dtype(), x.shape());
        Tensor mean = Tensor.empty(x.device(), x.dtype(), rowShape), rstd = Tensor.empty(x.device(), x.dtype(), rowShape);
        Backend be = Backend.of(x);
        be.layerNorm(xc, weight, bias, eps, out, mean, rstd);
        return Tape.record(out, (g, grads) -> be.layerNormBackward(xc, weight, mean, rstd, g,
                grads.wants(x) ? grads.buffer(x) : null,
                grads.wants(weight) ? grads.buffer(weight) : null,
                grads.wants(bias) ? grads.buffer(bias) : null), x, weight, bias);
    }

    /**
     * RMSNorm (Zhang &amp; Sennrich 2019; Llama): x / √(mean(x²) + eps) · weight, as Hugging Face's LlamaRMSNorm
     * computes it (no mean subtraction, no bias). Saves 1/rms per row for the backward.
     */
    public static Tensor rmsNorm(Tensor x, Tensor weight, double eps) {
        int c = x.size(-1);
        if (weight.numel() != c)
            throw new IllegalArgumentException("rmsNorm over " + c + " features with weight " + weight.shapeString());
        if (!(eps > 0)) throw new IllegalArgumentException("rmsNorm eps must be > 0, got " + eps);
        Tensor xc = x.contiguous();
        Tensor out = Tensor.empty(x.device(), x.dtype(), x.shape());
        Tensor rstd = Tensor.empty(x.device(), x.dtype(), Arrays.copyOf(x.shape(), x.dim() - 1));
        Backend be = Backend.of(x);
        be.rmsNorm(xc, weight, eps, out, rstd);
        return Tape.record(out, (g, grads) -> be.rmsNormBackward(xc, weight, rstd, g,
                grads.wants(x) ? grads.buffer(x) : null,
                grads.wants(weight) ? grads.buffer(weight) : null), x, weight);
    }
}
