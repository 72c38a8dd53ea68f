package dev.kiln.ops;

import dev.kiln.autograd.Tape;
import dev.kiln.backend.Backend;
import dev.kiln.tensor.Shape;
import dev.kiln.tensor.Tensor;

/** Sums and means, over everything or over one dimension. */
public final class Reduce {
    private Reduce() {}

    /** Sum of all elements, as a rank-0 tensor. */
    public static Tensor sum(Tensor x) {
        int[] ones = new int[x.dim()];
        java.util.Arrays.fill(ones, 1);
        return reduce(x, ones, new int[0], 1.0);
    }

    public static Tensor mean(Tensor x) {
        int[] ones = new int[x.dim()];
        java.util.Arrays.fill(ones, 1);
        return reduce(x, ones, new int[0], 1.0 / x.numel());
    }

    public static Tensor sum(Tensor x, int dim, boolean keepDim) {
        return reduceDim(x, dim, keepDim, false);
    }

    public static Tensor mean(Tensor x, int dim, boolean keepDim) {
        return reduceDim(x, dim, keepDim, true);
    }

    private static Tensor reduceDim(Tensor x, int dim, boolean keepDim, boolean mean) {
        int d = Shape.dim(dim, x.dim());
        int[] kept = x.shape();
        kept[d] = 1;
        int[] outShape = keepDim ? kept : removeDim(x.shape(), d);
        return reduce(x, kept, outShape, mean ? 1.0 / x.size(d) : 1.0);
    }

    /** Sums x into shape {@code kept} (same rank, 1 on reduced dims), scales, and views as {@code outShape}. */
    private static Tensor reduce(Tensor x, int[] kept, int[] outShape, double scale) {
        Backend be = Backend.of(x);
        int[] xs = x.shape();
        Tensor acc = Tensor.zeros(x.device(), x.dtype(), kept);
        be.accumulate(acc.expandView(xs), x);
        if (scale != 1.0) be.scale(acc, scale);
        Tensor out = acc.view(outShape);
        return Tape.record(out, (g, grads) -> {
            if (!grads.wants(x)) return;
            Tensor gk = g.view(kept).expandView(xs);
            if (scale == 1.0) {
                be.accumulate(grads.buffer(x), gk);
            } else {
                Tensor t = gk.contiguous();
                be.scale(t, scale);
                be.accumulate(grads.buffer(x), t);
            }
        }, x);
    }

    private static int[] removeDim(int[] s, int d) {
        int[] out = new int[s.length - 1];
        for (int i = 0, j = 0; i < s.length; i++) if (i != d) out[j++] = s[i];
        return out;
    }
}
