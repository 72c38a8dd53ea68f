package dev.kiln.ops;

import dev.kiln.autograd.Tape;
import dev.kiln.backend.Backend;
import dev.kiln.tensor.DType;
import dev.kiln.tensor.MemoryScope;
import dev.kiln.tensor.Tensor;

/**
 * Rotary position embedding (Su et al. 2021) in Hugging Face Llama's convention: a head of D features is
 * rotated as x·cos + rotate_half(x)·sin, rotate_half(x) = (−x[D/2:], x[:D/2]), with angle t·θ_i for the
 * pair (i, i + D/2) at position t and θ_i = rope_theta^(−2i/D).
 */
public final class Rope {
    private Rope() {}

    /** cos and sin of every position's angles, (maxPositions, D/2) each; built once per model. */
    public record Tables(Tensor cos, Tensor sin, int headDim) {
        public int positions() {
            return cos.size(0);
        }
    }

    /**
     * The tables for positions [0, maxPositions). In F32 the angles are rounded as Hugging Face computes them
     * in float32 (θ_i, then t·θ_i, each rounded to float), so long positions get HF's very angles; in F64
     * everything is exact double.
     */
    public static Tables tables(int maxPositions, int headDim, double theta, DType dtype) {
        if (headDim % 2 != 0) throw new IllegalArgumentException("rotary embedding needs an even head size, got " + headDim);
        if (!(theta > 0)) throw new IllegalArgumentException("rope_theta must be > 0, got " + theta);
        int h = headDim / 2;
        try (var s = MemoryScope.persistent()) {
            Tensor cos = Tensor.empty(dtype, maxPositions, h), sin = Tensor.empty(dtype, maxPositions, h);
            for (int i = 0; i < h; i++) {
                double inv = 1.0 / Math.pow(theta, 2.0 * i / headDim);
                if (dtype != DType.F64) inv = (float) inv;
                for (int t = 0; t < maxPositions; t++) {
                    double angle = dtype == DType.F64 ? t * inv : (float) (t * inv);
                    cos.set(Math.cos(angle), t, i);
                    sin.set(Math.sin(angle), t, i);
                }
            }
            return new Tables(cos, sin, headDim);
        }
    }

    /** x (B, T, heads·D) with positions 0..T−1 along dimension 1 → the rotated x (every head rotated alike). */
    public static Tensor apply(Tensor x, Tables tables) {
        int d = tables.headDim();
        if (x.dim() != 3 || x.size(2) % d != 0)
            throw new IllegalArgumentException("rotary embedding needs (B, T, heads·" + d + "), got " + x.shapeString());
        int t = x.size(1);
        if (t > tables.positions())
            throw new IllegalArgumentException("sequence length " + t + " exceeds the " + tables.positions() + " positions of the rotary tables");
        Tensor cos = tables.cos().sliceView(0, 0, t), sin = tables.sin().sliceView(0, 0, t);
        Tensor xc = x.contiguous();
        Tensor out = Tensor.empty(x.device(), x.dtype(), x.shape());
        Backend be = Backend.of(x);
        be.rope(xc, d, cos, sin, out);
        return Tape.record(out, (g, grads) -> {
            if (grads.wants(x)) be.ropeBackward(g, d, cos, sin, grads.buffer(x));
        }, x);
    }
}
