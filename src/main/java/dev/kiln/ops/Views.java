package dev.kiln.ops;

import dev.kiln.autograd.Tape;
import dev.kiln.backend.Backend;
import dev.kiln.tensor.Shape;
import dev.kiln.tensor.Tensor;

import java.util.List;

/** Shape ops. Views share memory; their backward adds the gradient into the matching view of the input's gradient. */
public final class Views {
    private Views() {}

    /** Same data, new shape (-1 infers one dimension); copies only when x is not contiguous. */
    public static Tensor reshape(Tensor x, int... shape) {
        Tensor out = x.contiguous().view(shape);
        int[] inShape = x.shape();
        return Tape.record(out, (g, grads) -> grads.accumulate(x, g.view(inShape)), x);
    }

    /** Like {@link #reshape} but refuses to copy: x must be contiguous. */
    public static Tensor view(Tensor x, int... shape) {
        if (!x.isContiguous()) throw new IllegalArgumentException("view of non-contiguous " + x.shapeString() + "; use reshape");
        return reshape(x, shape);
    }

    public static Tensor transpose(Tensor x, int d0, int d1) {
        Tensor out = x.transposeView(d0, d1);
        return Tape.record(out, (g, grads) -> {
            if (grads.wants(x)) Backend.of(x).accumulate(grads.buffer(x).transposeView(d0, d1), g);
        }, x);
    }

    public static Tensor permute(Tensor x, int... order) {
        Tensor out = x.permuteView(order);
        return Tape.record(out, (g, grads) -> {
            if (grads.wants(x)) Backend.of(x).accumulate(grads.buffer(x).permuteView(order), g);
        }, x);
    }

    /** Elements [start, end) along {@code dim} (a view). */
    public static Tensor slice(Tensor x, int dim, int start, int end) {
        Tensor out = x.sliceView(dim, start, end);
        return Tape.record(out, (g, grads) -> {
            if (grads.wants(x)) Backend.of(x).accumulate(grads.buffer(x).sliceView(dim, start, end), g);
        }, x);
    }

    /** The slice at {@code index} of {@code dim}, with the dimension removed (a view). */
    public static Tensor select(Tensor x, int dim, int index) {
        Tensor out = x.selectView(dim, index);
        return Tape.record(out, (g, grads) -> {
            if (grads.wants(x)) Backend.of(x).accumulate(grads.buffer(x).selectView(dim, index), g);
        }, x);
    }

    /** Splits {@code dim} into equal chunks of {@code size} (views), like torch.split. */
    public static List<Tensor> split(Tensor x, int size, int dim) {
        int d = Shape.dim(dim, x.dim());
        if (x.size(d) % size != 0) throw new IllegalArgumentException("cannot split dimension " + d + " of " + x.shapeString() + " into chunks of " + size);
        java.util.ArrayList<Tensor> parts = new java.util.ArrayList<>();
        for (int s = 0; s < x.size(d); s += size) parts.add(slice(x, d, s, s + size));
        return parts;
    }

    public static Tensor concat(List<Tensor> xs, int dim) {
        if (xs.isEmpty()) throw new IllegalArgumentException("concat of nothing");
        Tensor first = xs.get(0);
        int d = Shape.dim(dim, first.dim());
        int[] shape = first.shape();
        int total = 0;
        for (Tensor t : xs) {
            int[] s = t.shape();
            if (s.length != shape.length) throw new IllegalArgumentException("concat of ranks " + first.dim() + " and " + t.dim());
            for (int i = 0; i < s.length; i++)
                if (i != d && s[i] != shape[i]) throw new IllegalArgumentException("concat shapes " + first.shapeString() + " and " + t.shapeString() + " differ outside dimension " + d);
            total += s[d];
        }
        shape[d] = total;
        Tensor out = Tensor.empty(first.device(), first.dtype(), shape);
        int[] starts = new int[xs.size()];
        int at = 0;
        for (int i = 0; i < xs.size(); i++) {
            starts[i] = at;
            int len = xs.get(i).size(d);
            out.sliceView(d, at, at + len).copyFrom(xs.get(i));
            at += len;
        }
        Tensor[] inputs = xs.toArray(new Tensor[0]);
        return Tape.record(out, (g, grads) -> {
            for (int i = 0; i < inputs.length; i++) {
                if (grads.wants(inputs[i]))
                    Backend.of(g).accumulate(grads.buffer(inputs[i]), g.sliceView(d, starts[i], starts[i] + inputs[i].size(d)));
            }
        }, inputs);
    }

    /** x itself when contiguous, else a contiguous copy (differentiable). */
    public static Tensor contiguous(Tensor x) {
        if (x.isContiguous()) return x;
        Tensor out = x.contiguous();
        return Tape.record(out, (g, grads) -> grads.accumulate(x, g), x);
    }
}
