package dev.kiln.dist;

import dev.kiln.tensor.DType;
import dev.kiln.tensor.Tensor;

import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;

/**
 * Copies between fp32 tensors that hold fp16/bf16 values (mixed precision's working copies) and communication buffers
 * of 16-bit elements: the conversion is exact both ways for such values, so a gather of working copies carries half
 * the bytes and delivers the same values.
 */
final class HalfWire {
    private static final ValueLayout.OfShort S = ValueLayout.JAVA_SHORT_UNALIGNED;
    private static final ValueLayout.OfFloat F = ValueLayout.JAVA_FLOAT;

    private HalfWire() {}

    /** buf's 16-bit elements [at, at+numel) ← t's values as {@code half} bits. */
    static void pack(Tensor t, MemorySegment buf, long at, DType half, String what) {
        MemorySegment src = FlatF32.data(t, what);
        long n = t.numel();
        if (half == DType.F16) for (long i = 0; i < n; i++) buf.setAtIndex(S, at + i, Float.floatToFloat16(src.getAtIndex(F, i)));
        else for (long i = 0; i < n; i++) buf.setAtIndex(S, at + i, DType.floatToBf16(src.getAtIndex(F, i)));
    }

    /** t ← buf's 16-bit elements [at, at+numel), read as {@code half}. */
    static void unpack(MemorySegment buf, long at, Tensor t, DType half, String what) {
        MemorySegment dst = FlatF32.data(t, what);
        long n = t.numel();
        if (half == DType.F16) for (long i = 0; i < n; i++) dst.setAtIndex(F, i, Float.float16ToFloat(buf.getAtIndex(S, at + i)));
        else for (long i = 0; i < n; i++) dst.setAtIndex(F, i, DType.bf16ToFloat(buf.getAtIndex(S, at + i)));
    }
}
