package dev.kiln.ops;

import dev.kiln.autograd.Tape;
import dev.kiln.backend.Backend;
import dev.kiln.tensor.DType;
import dev.kiln.tensor.Tensor;

import java.util.Arrays;

/** Table lookup: out[..., :] = weight[idx[...], :]. */
public final class Embeddings {
    private Embeddings() {}

    public static Tensor embedding(Tensor idx, Tensor weight) {
        if (idx.dtype() != DType.I32) throw new IllegalArgumentException("embedding indices must be int32, got " + idx.dtype());
        if (weight.dim() != 2) throw new IllegalArgumentException("embedding table must be 2-D, got " + weight.shapeString());
        int c = weight.size(1);
        int[] shape = Arrays.copyOf(idx.shape(), idx.dim() + 1);
        shape[idx.dim()] = c;
        Tensor ic = idx.contiguous();
        Tensor out = Tensor.empty(weight.device(), weight.dtype(), shape);
        Backend be = Backend.of(weight);
        int n = Math.toIntExact(idx.numel());
        be.embedding(ic.view(n), weight, out.view(n, c));
        return Tape.record(out, (g, grads) -> {
            if (grads.wants(weight)) be.embeddingBackward(ic.view(n), g.view(n, c), grads.buffer(weight));
        }, weight);
    }
}
