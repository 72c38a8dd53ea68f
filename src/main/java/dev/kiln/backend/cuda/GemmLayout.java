package dev.kiln.backend.cuda;

/**
 * One Kiln GEMM expressed as a column-major cuBLAS strided-batched call. Kiln's contract is row-major,
 * C[b] (m×n) = A[b] (m×k) · B[b] (k×n) over strided operands; cuBLAS is column-major, so Kiln computes
 * Cᵀ = Bᵀ·Aᵀ: cuBLAS's m is Kiln's n, its "A" is Kiln's B and its "B" Kiln's A. An operand with unit column
 * stride is, read column-major, its own transpose (op N); one with unit row stride is a column-major matrix
 * (op T). Operands with neither unit stride are not expressible and rejected. Pointers are device addresses
 * of element 0 of the operand; leading dimensions and batch strides are in elements.
 */
public record GemmLayout(int transA, int transB, int m, int n, int k,
                         long aPtr, int lda, long strideA, long bPtr, int ldb, long strideB,
                         long cPtr, int ldc, long strideC, int batch) {

    /** A strided row-major operand: element (r, c) of batch b at base + (off + b·bs + r·rs + c·cs)·elemBytes. */
    public record Operand(long base, long off, long bs, long rs, long cs) {}

    /** Column-major view of a rows×cols operand: whether cuBLAS sees it transposed, and its leading dimension. */
    private record Stored(boolean rowMajor, long ld) {}

    private static Stored stored(String name, int rows, int cols, Operand o) {
        if ((cols == 1 || o.cs() == 1) && (rows == 1 || o.rs() >= cols))
            return new Stored(true, rows == 1 ? Math.max(1, cols) : o.rs());
        if ((rows == 1 || o.rs() == 1) && (cols == 1 || o.cs() >= rows))
            return new Stored(false, cols == 1 ? Math.max(1, rows) : o.cs());
        throw new UnsupportedOperationException("CUDA GEMM: operand " + name + " (" + rows + "x" + cols + ", row stride " + o.rs()
                + ", column stride " + o.cs() + ") has no unit stride; make it contiguous first");
    }

    /** The cuBLAS call for row-major C = A·B (batch, m, n, k as in {@code Backend.gemm}). */
    public static GemmLayout of(int batch, int m, int n, int k, Operand a, Operand b, Operand c, int elemBytesAB, int elemBytesC) {
        Stored sa = stored("A", m, k, a), sb = stored("B", k, n, b), sc = stored("C", m, n, c);
        if (!sc.rowMajor() || (n > 1 && c.cs() != 1))
            throw new UnsupportedOperationException("CUDA GEMM: C must have column stride 1, got " + c.cs());
        return new GemmLayout(
                sb.rowMajor() ? Cublas.OP_N : Cublas.OP_T, sa.rowMajor() ? Cublas.OP_N : Cublas.OP_T,
                n, m, k,
                b.base() + b.off() * elemBytesAB, ld(sb.ld()), batch == 1 ? 0 : b.bs(),
                a.base() + a.off() * elemBytesAB, ld(sa.ld()), batch == 1 ? 0 : a.bs(),
                c.base() + c.off() * elemBytesC, ld(sc.ld()), batch == 1 ? 0 : c.bs(),
                batch);
    }

    private static int ld(long ld) {
        ld = Math.max(1, ld);   // cuBLAS wants ld ≥ 1 even for an empty operand (k = 0)
        if (ld > Integer.MAX_VALUE) throw new UnsupportedOperationException("CUDA GEMM: leading dimension " + ld + " exceeds 2^31");
        return (int) ld;
    }

    @Override
    public String toString() {
        return (transA == Cublas.OP_N ? "N" : "T") + (transB == Cublas.OP_N ? "N" : "T") + " m=" + m + " n=" + n + " k=" + k
                + " lda=" + lda + " ldb=" + ldb + " ldc=" + ldc + " batch=" + batch;
    }
}
