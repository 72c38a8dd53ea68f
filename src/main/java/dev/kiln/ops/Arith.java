package dev.kiln.ops;

import dev.kiln.autograd.Tape;
import dev.kiln.backend.Backend;
import dev.kiln.backend.Backend.BinaryOp;
import dev.kiln.tensor.Shape;
import dev.kiln.tensor.Tensor;

/**
 * Elementwise arithmetic with NumPy broadcasting. The gradient of a broadcast operand is summed
 * over the broadcast dimensions by accumulating into a stride-0 view of its gradient buffer.
 */
public final class Arith {
    private Arith() {}

    public static Tensor add(Tensor a, Tensor b) {
        return binary(BinaryOp.ADD, a, b);
    }

    public static Tensor sub(Tensor a, Tensor b) {
        return binary(BinaryOp.SUB, a, b);
    }

    public static Tensor mul(Tensor a, Tensor b) {
        return binary(BinaryOp.MUL, a, b);
    }

    public static Tensor div(Tensor a, Tensor b) {
        return binary(BinaryOp.DIV, a, b);
    }

    /** x · s for a constant s. */
    public static Tensor mul(Tensor x, double s) {
        Tensor xc = x.contiguous();
        Tensor out = xc.copy();
        Backend be = Backend.of(x);
        be.scale(out, s);
        return Tape.record(out, (g, grads) -> {
            if (grads.wants(x)) be.axpy(s, g, grads.buffer(x));
        }, x);
    }

    private static Tensor binary(BinaryOp op, Tensor a, Tensor b) {
        if (a.dtype() != b.dtype()) throw new IllegalArgumentException(op + " of " + a.dtype() + " and " + b.dtype());
        int[] shape = Shape.broadcast(a.shape(), b.shape());
        Tensor ae = a.expandView(shape), bx = b.expandView(shape);
        Tensor out = Tensor.empty(a.device(), a.dtype(), shape);
        Backend be = Backend.of(a);
        if (op == BinaryOp.ADD && a.isContiguous() && a.sameShape(out) && isTrailing(b, shape)) {
            // x + y with y broadcast over leading dimensions (bias, positions): copy rows of y, add x
            int n = Math.toIntExact(b.numel()), rows = Math.toIntExact(out.numel() / Math.max(1, n));
            be.fillRows(b.contiguous().view(n), out.view(rows, n));
            be.axpy(1.0, a, out);
        } else {
            be.binary(op, ae, bx, out);
        }
        return Tape.record(out, (g, grads) -> {
            if (grads.wants(a)) {
                Tensor da = switch (op) {
                    case ADD, SUB -> g;
                    case MUL -> tmp(be, BinaryOp.MUL, g, bx);
                    case DIV -> tmp(be, BinaryOp.DIV, g, bx);
                };
                be.accumulate(grads.buffer(a).expandView(shape), da);
            }
            if (grads.wants(b)) {
                Tensor db = switch (op) {
                    case ADD -> g;
                    case SUB -> scaled(g, -1);
                    case MUL -> tmp(be, BinaryOp.MUL, g, ae);
                    case DIV -> { // −g·a/b²
                        Tensor t = tmp(be, BinaryOp.DIV, tmp(be, BinaryOp.MUL, g, ae), bx);
                        Tensor u = tmp(be, BinaryOp.DIV, t, bx);
                        be.scale(u, -1);
                        yield u;
                    }
                };
                if (isTrailing(b, shape) && db.isContiguous()) { // sum over the broadcast leading dimensions
                    int n = Math.toIntExact(b.numel());
                    be.sumRows(db.view(Math.toIntExact(db.numel() / Math.max(1, n)), n), grads.buffer(b).view(n));
                } else {
                    be.accumulate(grads.buffer(b).expandView(shape), db);
                }
            }
        }, a, b);
    }

    /** True when t's shape equals the trailing dimensions of {@code shape} (it broadcasts over the leading ones only). */
    private static boolean isTrailing(Tensor t, int[] shape) {
        int[] ts = t.shape();
        if (ts.length == 0 || ts.length > shape.length || t.numel() == 0) return false;
        for (int i = 0; i < ts.length; i++) if (ts[ts.length - 1 - i] != shape[shape.length - 1 - i]) return false;
        return true;
    }

    private static Tensor tmp(Backend be, BinaryOp op, Tensor x, Tensor y) {
        Tensor out = Tensor.empty(x.device(), x.dtype(), x.shape());
        be.binary(op, x, y, out);
        return out;
    }

    private static Tensor scaled(Tensor g, double s) {
        Tensor t = g.copy();
        Backend.of(g).scale(t, s);
        return t;
    }
}
