package dev.kiln.dist;

import dev.kiln.tensor.DType;
import dev.kiln.tensor.Tensor;

import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;

/** Copies between fp32 tensors and flat communication buffers. */
final class FlatF32 {
    private static final ValueLayout.OfFloat F = ValueLayout.JAVA_FLOAT;

    private FlatF32() {}

    /** The tensor's own elements as a segment; it must be a contiguous F32 tensor. */
    static MemorySegment data(Tensor t, String what) {
        if (t.dtype() != DType.F32 || !t.isContiguous())
            throw new DistException(what + ": distributed training needs contiguous F32 tensors, got " + t.dtype() + " " + t.shapeString());
        return t.segment().asSlice(t.offset() * 4, t.numel() * 4);
    }

    /** buf[at, at+n) ← t (zeros when t is null). */
    static void pack(Tensor t, long n, MemorySegment buf, long at, String what) {
        if (t == null) buf.asSlice(at * 4, n * 4).fill((byte) 0);
        else MemorySegment.copy(data(t, what), 0, buf, at * 4, n * 4);
    }

    /** t ← buf[at, at+numel) × scale. */
    static void unpack(MemorySegment buf, long at, Tensor t, float scale, String what) {
        MemorySegment dst = data(t, what);
        long n = t.numel();
        if (scale == 1f) {
            MemorySegment.copy(buf, at * 4, dst, 0, n * 4);
            return;
        }
        for (long i = 0; i < n; i++) dst.setAtIndex(F, i, buf.getAtIndex(F, at + i) * scale);
    }
}
