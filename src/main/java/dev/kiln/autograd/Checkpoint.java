package dev.kiln.autograd;

import dev.kiln.tensor.MemoryCategory;
import dev.kiln.tensor.MemoryScope;
import dev.kiln.tensor.MemoryTracker;
import dev.kiln.tensor.Rng;
import dev.kiln.tensor.Tensor;

import java.util.List;
import java.util.function.UnaryOperator;

/**
 * Activation recomputation (gradient checkpointing): {@code y = fn(x)} whose intermediate tensors are not kept
 * for backward. The forward runs without recording, in a memory scope of its own that is freed at once; only
 * {@code x} (held by the caller anyway) and {@code y} stay. Backward runs {@code fn} again on {@code x}, recording
 * on a {@link Tape#nested nested} tape, backpropagates the incoming gradient through it (parameter gradients
 * accumulate into their .grad as usual; dL/dx into the outer pass) and frees the recomputed tensors.
 *
 * <p>Gradients are bit-for-bit those of running {@code fn} directly: the recomputed forward runs the same
 * kernels on the same inputs, draws the same dropout masks ({@code rng} is rewound to its state before the first
 * forward and restored afterwards), and backpropagates in the same order into freshly zeroed buffers.
 */
public final class Checkpoint {
    private Checkpoint() {}

    /**
     * {@code fn(x)}, recomputed in backward. {@code fn} must be deterministic given {@code x}, its {@code weights}
     * and {@code rng} (null when it draws no random numbers), and return a new tensor (not {@code x} or a view of
     * it). {@code weights} are the parameters {@code fn} reads: backward must run when any of them needs a gradient,
     * even if {@code x} does not.
     */
    public static Tensor apply(UnaryOperator<Tensor> fn, Tensor x, Rng rng, List<? extends Tensor> weights) {
        if (!Tape.isGradEnabled()) return fn.apply(x);
        long rngBefore = rng == null ? 0 : rng.state();
        MemoryCategory kept = MemoryTracker.current();
        Tensor y;
        MemoryScope scope = MemoryScope.open();
        try (var ng = Tape.noGradScope(); var a = MemoryTracker.attribute(MemoryCategory.TEMPORARIES)) {
            y = fn.apply(x);
            if (y.storage() == x.storage()) throw new IllegalArgumentException("a checkpointed function must return a new tensor, not its input or a view of it");
            scope.detach(y);
        } finally {
            scope.close();
        }
        MemoryScope.adopt(y);
        MemoryTracker.reattribute(y, kept); // the output is kept, as the activation it is; the rest is gone
        Tensor[] inputs = new Tensor[weights.size() + 1];
        inputs[0] = x;
        for (int i = 0; i < weights.size(); i++) inputs[i + 1] = weights.get(i);
        return Tape.record(y, (g, grads) -> recomputeBackward(fn, x, rng, rngBefore, g, grads), inputs);
    }

    private static void recomputeBackward(UnaryOperator<Tensor> fn, Tensor x, Rng rng, long rngBefore, Tensor g, Tape.Grads grads) {
        long rngNow = rng == null ? 0 : rng.state();
        if (rng != null) rng.setState(rngBefore);
        boolean wantsX = grads.wants(x);
        if (wantsX) grads.buffer(x); // the outer pass's buffer for dL/dx belongs to the outer scope, not the recomputation's
        try (var scope = MemoryScope.open(); var tape = Tape.nested()) {
            // a fresh leaf over x's memory: the recomputed graph ends there, and its .grad collects dL/dx
            Tensor input = x.isContiguous() ? x.view(x.shape()) : x.contiguous();
            if (wantsX) {
                input.requiresGrad(true);
                input.setGrad(Tensor.zeros(x.device(), x.dtype(), x.shape())); // scope-owned, so freed with the recomputation
            }
            Tensor y;
            try (var a = MemoryTracker.attribute(MemoryCategory.ACTIVATIONS)) {
                y = fn.apply(input);
            }
            if (y.requiresGrad()) Tape.backward(y, g);
            if (wantsX) grads.accumulate(x, input.grad());
        } finally {
            if (rng != null) rng.setState(rngNow);
        }
    }
}
