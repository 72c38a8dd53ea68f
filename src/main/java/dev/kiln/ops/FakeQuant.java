package dev.kiln.ops;

import dev.kiln.autograd.Tape;
import dev.kiln.backend.Backend;
import dev.kiln.tensor.DType;
import dev.kiln.tensor.Tensor;

/**
 * Fake quantisation for quantization-aware training (Jacob et al. 2018): values are rounded to a
 * symmetric signed {@code bits}-bit grid and immediately scaled back, so training sees the int8 model's
 * numbers while staying in floating point. Codes are clamp(rint(x/s), −qmax, qmax) with qmax = 2^(bits−1)−1
 * (127 for 8 bits; −128 is never used, so the grid is symmetric) and rint rounding half to even.
 * Backward is the straight-through estimator (Bengio et al. 2013): the gradient passes unchanged where
 * the code was not clamped and is zero where it was.
 *
 * <p>Scales come from the data: per output channel (row) of a weight, s = max|w_row|/qmax; per tensor of
 * an activation, s = max|x|/qmax of the current batch (dynamic quantisation). Scales are computed in the
 * tensor's dtype, so an fp32 scale exported beside int8 codes reproduces the fake-quantised weights bit for bit.
 */
public final class FakeQuant {
    private FakeQuant() {}

    /** The largest code of a symmetric {@code bits}-bit grid: 2^(bits−1) − 1. */
    public static int qmax(int bits) {
        if (bits < 2 || bits > 8) throw new IllegalArgumentException("quantisation bits must be 2..8 (int8 storage), got " + bits);
        return (1 << (bits - 1)) - 1;
    }

    /** Per-row scales max|w_r|/qmax of a 2-D weight [out, in] (one per output channel), in w's dtype; no gradient. */
    public static Tensor channelScales(Tensor w, int bits) {
        if (w.dim() != 2) throw new IllegalArgumentException("per-channel scales need a 2-D weight, got " + w.shapeString());
        return scales(w, w.size(0), bits);
    }

    /** The per-tensor scale max|x|/qmax, shape [1], in x's dtype; no gradient. */
    public static Tensor tensorScale(Tensor x, int bits) {
        return scales(x, 1, bits);
    }

    private static Tensor scales(Tensor x, int rows, int bits) {
        int qmax = qmax(bits);
        Tensor s = Tensor.empty(x.device(), x.dtype(), rows);
        Backend.of(x).rowMaxAbs(x.contiguous(), s);
        for (int r = 0; r < rows; r++) s.setFlat(r, s.getFlat(r) / qmax); // rounded into the dtype here, once
        return s;
    }

    /**
     * The differentiable op: x viewed as [scales.numel(), rest] (one scale per row, or one for all),
     * fake-quantised; backward is the straight-through estimator. Scales are constants (no gradient).
     */
    public static Tensor fakeQuantize(Tensor x, Tensor scales, int bits) {
        int qmax = qmax(bits);
        if (x.numel() % scales.numel() != 0)
            throw new IllegalArgumentException("fake quantisation: " + scales.numel() + " scales do not divide " + x.shapeString());
        Tensor xc = x.contiguous(), sc = scales.contiguous();
        Tensor out = Tensor.empty(x.device(), x.dtype(), x.shape());
        Backend be = Backend.of(x);
        be.fakeQuant(xc, sc, qmax, out);
        return Tape.record(out, (g, grads) -> {
            if (grads.wants(x)) be.fakeQuantBackward(xc, sc, qmax, g, grads.buffer(x));
        }, x);
    }

    /** A weight [out, in] fake-quantised per output channel. */
    public static Tensor perChannel(Tensor w, int bits) {
        return fakeQuantize(w, channelScales(w, bits), bits);
    }

    /** An activation fake-quantised per tensor with the batch's own range. */
    public static Tensor perTensor(Tensor x, int bits) {
        return fakeQuantize(x, tensorScale(x, bits), bits);
    }

    /** The integer codes of {@link #fakeQuantize} as an int8 tensor of x's shape (for export): codes · scales = the fake-quantised x. */
    public static Tensor codes(Tensor x, Tensor scales, int bits) {
        int qmax = qmax(bits);
        Tensor xc = x.contiguous();
        long n = xc.numel() / scales.numel();
        Tensor out = Tensor.empty(DType.I8, x.shape());
        for (long i = 0; i < xc.numel(); i++) out.setFlat(i, Backend.quantCode(xc.getFlat(i), scales.getFlat(i / n), qmax));
        return out;
    }
}
