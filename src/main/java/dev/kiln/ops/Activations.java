package dev.kiln.ops;

import dev.kiln.autograd.Tape;
import dev.kiln.backend.Backend;
import dev.kiln.backend.Backend.BinaryOp;
import dev.kiln.tensor.DType;
import dev.kiln.tensor.Device;
import dev.kiln.tensor.Rng;
import dev.kiln.tensor.Tensor;

/** GELU (tanh form), SiLU and SwiGLU, softmax over the last dimension, dropout. */
public final class Activations {
    private Activations() {}

    public static Tensor gelu(Tensor x) {
        Tensor xc = x.contiguous();
        Tensor out = Tensor.empty(x.device(), x.dtype(), x.shape());
        Backend be = Backend.of(x);
        be.gelu(xc, out);
        return Tape.record(out, (g, grads) -> {
            if (grads.wants(x)) be.geluBackward(xc, g, grads.buffer(x));
        }, x);
    }

    /** silu(x) = x·σ(x) (a.k.a. swish). */
    public static Tensor silu(Tensor x) {
        Tensor xc = x.contiguous();
        Tensor out = Tensor.empty(x.device(), x.dtype(), x.shape());
        Backend be = Backend.of(x);
        be.silu(xc, out);
        return Tape.record(out, (g, grads) -> {
            if (grads.wants(x)) be.siluBackward(xc, g, grads.buffer(x));
        }, x);
    }

    /** silu(gate)·up elementwise in one kernel: the gated unit of Llama's MLP (Shazeer 2020's SwiGLU). */
    public static Tensor swiglu(Tensor gate, Tensor up) {
        if (!gate.sameShape(up)) throw new IllegalArgumentException("swiglu needs gate and up of equal shape, got " + gate.shapeString() + " and " + up.shapeString());
        Tensor gc = gate.contiguous(), uc = up.contiguous();
        Tensor out = Tensor.empty(gate.device(), gate.dtype(), gate.shape());
        Backend be = Backend.of(gate);
        be.swiglu(gc, uc, out);
        return Tape.record(out, (g, grads) -> be.swigluBackward(gc, uc, g,
                grads.wants(gate) ? grads.buffer(gate) : null, grads.wants(up) ? grads.buffer(up) : null), gate, up);
    }

    public static Tensor softmax(Tensor x) {
        Tensor xc = x.contiguous();
        Tensor out = Tensor.empty(x.device(), x.dtype(), x.shape());
        Backend be = Backend.of(x);
        be.softmax(xc, out, false);
        return Tape.record(out, (g, grads) -> {
            if (grads.wants(x)) be.softmaxBackward(out, g, grads.buffer(x));
        }, x);
    }

    /**
     * Inverted dropout: zeroes each element with probability p and scales the rest by 1/(1−p). Under data parallelism
     * the mask is this rank's rows of the global batch's mask ({@link DropoutRows}).
     * Identity when p = 0 or not training. The mask comes from {@code rng}, so it is reproducible.
     */
    public static Tensor dropout(Tensor x, double p, boolean training, Rng rng) {
        if (!training || p == 0) return x;
        if (p < 0 || p >= 1) throw new IllegalArgumentException("dropout probability must be in [0, 1), got " + p);
        double keep = 1.0 / (1 - p);
        long n = x.numel();
        int part = DropoutRows.part(), parts = DropoutRows.parts();
        rng.skip(part * n); // data parallel: the draws of the rows before this rank's (see DropoutRows)
        Tensor mask;
        if (x.device().kind() == Device.Kind.CPU) {
            mask = Tensor.empty(x.dtype(), x.shape());
            for (long i = 0; i < n; i++) mask.setFlat(i, rng.nextDouble() < p ? 0 : keep);
        } else { // drawn on the host in the same order (the same masks as on the CPU), uploaded from a Java array
            float[] m = new float[Math.toIntExact(n)];
            for (int i = 0; i < m.length; i++) m[i] = rng.nextDouble() < p ? 0 : (float) keep;
            Tensor m32 = Tensor.of(x.device(), m, x.shape());
            mask = x.dtype() == DType.F32 ? m32 : m32.to(x.dtype());
        }
        rng.skip((parts - 1 - part) * n); // and after them, so the stream continues where one process's does
        Tensor out = Tensor.empty(x.device(), x.dtype(), x.shape());
        Backend be = Backend.of(x);
        be.binary(BinaryOp.MUL, x, mask, out);
        return Tape.record(out, (g, grads) -> {
            if (!grads.wants(x)) return;
            Tensor t = Tensor.empty(x.device(), x.dtype(), x.shape());
            be.binary(BinaryOp.MUL, g, mask, t);
            be.accumulate(grads.buffer(x), t);
        }, x);
    }
}
