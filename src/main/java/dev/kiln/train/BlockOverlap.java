package dev.kiln.train;

import dev.kiln.tensor.Shape;

import java.lang.foreign.MemorySegment;

/**
 * The geometry of resharding: boxes (an offset and a shape in a whole tensor) and the copy of the part two boxes
 * share from one row-major block to another. A sharded checkpoint's pieces are boxes of layout A; what a rank holds
 * under layout B is boxes too; {@link ShardedLoad} copies each intersection once, innermost runs at a time.
 */
final class BlockOverlap {
    private BlockOverlap() {}

    /** The intersection of box (o1, s1) and box (o2, s2) as {offset, shape}, or null when they share no element. */
    static int[][] intersect(int[] o1, int[] s1, int[] o2, int[] s2) {
        if (o1.length != o2.length) throw new IllegalArgumentException("boxes of rank " + o1.length + " and " + o2.length);
        int[] o = new int[o1.length], s = new int[o1.length];
        for (int d = 0; d < o1.length; d++) {
            int lo = Math.max(o1[d], o2[d]), hi = Math.min(o1[d] + s1[d], o2[d] + s2[d]);
            if (hi <= lo) return null;
            o[d] = lo;
            s[d] = hi - lo;
        }
        return new int[][]{o, s};
    }

    static long numel(int[] shape) {
        long n = 1;
        for (int d : shape) n *= d;
        return n;
    }

    /**
     * Copies box {@code box} = {offset, shape} (whole-tensor coordinates, inside both blocks) from the row-major block
     * at {@code srcOffset} of shape {@code srcShape}, stored from byte {@code srcBase} of {@code src}, into the
     * row-major block at {@code dstOffset} of shape {@code dstShape} stored from byte {@code dstBase} of {@code dst}:
     * one {@link MemorySegment#copy} per run of the last dimension. Returns the bytes copied.
     */
    static long copy(MemorySegment src, long srcBase, int[] srcOffset, int[] srcShape,
                     MemorySegment dst, long dstBase, int[] dstOffset, int[] dstShape, int[][] box, long elementBytes) {
        int[] at = box[0], shape = box[1];
        int rank = shape.length;
        long total = numel(shape);
        if (total == 0) return 0;
        if (rank == 0) {
            MemorySegment.copy(src, srcBase, dst, dstBase, elementBytes);
            return elementBytes;
        }
        long[] ss = Shape.contiguousStrides(srcShape), ds = Shape.contiguousStrides(dstShape);
        long run = shape[rank - 1] * elementBytes, runs = total / shape[rank - 1];
        int[] idx = new int[rank - 1];
        for (long r = 0; r < runs; r++) {
            long s = 0, d = 0;
            for (int k = 0; k < rank; k++) {
                int coord = at[k] + (k < rank - 1 ? idx[k] : 0);
                s += (coord - srcOffset[k]) * ss[k];
                d += (coord - dstOffset[k]) * ds[k];
            }
            MemorySegment.copy(src, srcBase + s * elementBytes, dst, dstBase + d * elementBytes, run);
            for (int k = rank - 2; k >= 0; k--) {
                if (++idx[k] < shape[k]) break;
                idx[k] = 0;
            }
        }
        return total * elementBytes;
    }
}
