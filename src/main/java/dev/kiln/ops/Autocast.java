package dev.kiln.ops;

import dev.kiln.tensor.DType;
import dev.kiln.tensor.Device;
import dev.kiln.tensor.Tensor;

/**
 * Mixed precision of the real kind on a device (PyTorch's autocast, for matmuls): while open on a thread, the
 * {@link Linalg#linear} of an F32 input on an accelerator casts its input and weight to bf16, multiplies them with
 * bf16 operands and fp32 accumulation (cuBLAS, tensor cores), and writes fp32 outputs; its backward casts the output
 * gradient to bf16 likewise and accumulates fp32 weight and input gradients. Parameters, their gradients and the
 * optimizer state stay fp32 (the master weights); every other op keeps fp32. On the CPU, which has no bf16 GEMM,
 * it does nothing (mixed precision there is simulated by rounding, see MixedPrecisionOptimizer).
 *
 * <p>The setting is per thread, like grad mode ({@code Tape.noGrad}): the thread's explicit context, closed in order.
 */
public final class Autocast implements AutoCloseable {
    private static final ThreadLocal<DType> CURRENT = new ThreadLocal<>();

    private final DType previous;
    private boolean closed;

    private Autocast(DType previous) {
        this.previous = previous;
    }

    /** Matmul inputs in {@code dtype} (BF16) until closed. */
    public static Autocast to(DType dtype) {
        if (dtype != DType.BF16) throw new IllegalArgumentException("autocast is implemented for BF16, not " + dtype);
        DType prev = CURRENT.get();
        CURRENT.set(dtype);
        return new Autocast(prev);
    }

    /** The dtype a matmul of {@code x} casts its operands to now, or null (off, or x is not an F32 device tensor). */
    static DType matmulDtype(Tensor x) {
        DType d = CURRENT.get();
        return d != null && x.dtype() == DType.F32 && x.device().kind() != Device.Kind.CPU ? d : null;
    }

    @Override
    public void close() {
        if (closed) return;
        closed = true;
        CURRENT.set(previous);
    }
}
