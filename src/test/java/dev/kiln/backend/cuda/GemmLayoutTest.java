package dev.kiln.backend.cuda;

import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;
import org.junit.jupiter.api.Test;

import java.util.SplittableRandom;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * The row-major → column-major mapping of GEMMs, checked without a GPU: the layout is executed by an
 * emulator of cublasGemmStridedBatchedEx's documented column-major semantics and compared with the
 * row-major product computed directly. Exact comparison is fair: both sum the same products in the same
 * order (over l) in double.
 */
class GemmLayoutTest {

    /** Column-major C[p] = alpha·op(A[p])·op(B[p]) + beta·C[p]; pointers are byte offsets into the memories a, b, c. */
    static void cublasEmulated(GemmLayout g, double alpha, double beta, double[] a, double[] b, double[] c) {
        for (int p = 0; p < g.batch(); p++)
            for (int j = 0; j < g.n(); j++)
                for (int i = 0; i < g.m(); i++) {
                    double s = 0;
                    for (int l = 0; l < g.k(); l++) {
                        long ai = g.aPtr() / 4 + p * g.strideA() + (g.transA() == Cublas.OP_N ? i + (long) l * g.lda() : l + (long) i * g.lda());
                        long bi = g.bPtr() / 4 + p * g.strideB() + (g.transB() == Cublas.OP_N ? l + (long) j * g.ldb() : j + (long) l * g.ldb());
                        s += a[(int) ai] * b[(int) bi];
                    }
                    int ci = (int) (g.cPtr() / 4 + p * g.strideC() + i + (long) j * g.ldc());
                    c[ci] = alpha * s + (beta == 0 ? 0 : beta * c[ci]);
                }
    }

    /**
     * batch × (m×k · k×n). transA/transB: the operand is stored transposed (unit row stride); pad: extra
     * elements per stored row; shareB: B has batch stride 0 (one weight for every batch entry).
     */
    @ParameterizedTest
    @CsvSource({"1,1,1,1,false,false,0,false", "1,7,5,3,false,false,0,false", "1,7,5,3,true,false,0,false",
            "1,7,5,3,false,true,0,false", "1,7,5,3,true,true,0,false", "3,4,6,5,false,false,2,false",
            "3,4,6,5,true,true,3,true", "2,1,9,4,false,true,0,true", "2,6,1,4,true,false,1,false", "4,8,8,1,false,false,0,false"})
    void mappedCallComputesTheRowMajorProduct(int batch, int m, int n, int k, boolean transA, boolean transB, int pad, boolean shareB) {
        SplittableRandom r = new SplittableRandom(batch * 1000 + m * 100 + n * 10 + k);
        // A: m×k logical; stored rows of length (transA ? m : k) + pad
        int aRows = transA ? k : m, aCols = transA ? m : k, aLd = aCols + pad;
        int bRows = transB ? n : k, bCols = transB ? k : n, bLd = bCols + pad;
        int cLd = n + pad;
        long aBs = (long) aRows * aLd, bBs = shareB ? 0 : (long) bRows * bLd, cBs = (long) m * cLd;
        int aOff = 3, bOff = 5, cOff = 2;
        double[] a = random(r, aOff + batch * aBs), b = random(r, bOff + Math.max(1, batch * bBs) + bRows * bLd);
        double[] c = random(r, cOff + batch * cBs);
        double[] expect = c.clone();
        double alpha = 0.75, beta = 0.5;
        GemmLayout.Operand ao = new GemmLayout.Operand(0, aOff, aBs, transA ? 1 : aLd, transA ? aLd : 1);
        GemmLayout.Operand bo = new GemmLayout.Operand(0, bOff, bBs, transB ? 1 : bLd, transB ? bLd : 1);
        GemmLayout.Operand co = new GemmLayout.Operand(0, cOff, cBs, cLd, 1);
        for (int p = 0; p < batch; p++)
            for (int i = 0; i < m; i++)
                for (int j = 0; j < n; j++) {
                    double s = 0;
                    for (int l = 0; l < k; l++)
                        s += a[(int) (aOff + p * aBs + i * ao.rs() + l * ao.cs())] * b[(int) (bOff + p * bBs + l * bo.rs() + j * bo.cs())];
                    int ci = (int) (cOff + p * cBs + (long) i * cLd + j);
                    expect[ci] = alpha * s + beta * expect[ci];
                }
        GemmLayout g = GemmLayout.of(batch, m, n, k, ao, bo, co, 4, 4);
        assertEquals(n, g.m(), "cuBLAS computes Cᵀ: its m is Kiln's n");
        cublasEmulated(g, alpha, beta, b, a, c);   // cuBLAS's A is Kiln's B
        for (int i = 0; i < c.length; i++) assertEquals(expect[i], c[i], 0.0, "element " + i + " with " + g);
        // cuBLAS requires lda ≥ rows of the stored (column-major) matrix
        assertTrue(g.lda() >= Math.max(1, g.transA() == Cublas.OP_N ? g.m() : g.k()), g.toString());
        assertTrue(g.ldb() >= Math.max(1, g.transB() == Cublas.OP_N ? g.k() : g.n()), g.toString());
        assertTrue(g.ldc() >= Math.max(1, g.m()), g.toString());
    }

    private static double[] random(SplittableRandom r, long n) {
        double[] x = new double[(int) n];
        for (int i = 0; i < x.length; i++) x[i] = r.nextInt(-8, 9) / 4.0;
        return x;
    }

    @Test
    void pointersAreElementOffsetsTimesElementSize() {
        GemmLayout g = GemmLayout.of(1, 2, 3, 4, new GemmLayout.Operand(1000, 10, 0, 4, 1),
                new GemmLayout.Operand(2000, 20, 0, 3, 1), new GemmLayout.Operand(3000, 30, 0, 3, 1), 2, 4);
        assertEquals(2000 + 40, g.aPtr());   // cuBLAS's A is Kiln's B (bf16: 2 bytes)
        assertEquals(1000 + 20, g.bPtr());
        assertEquals(3000 + 120, g.cPtr());  // C in fp32
    }

    @Test
    void operandsWithoutAUnitStrideAreRejectedWithTheirStrides() {
        UnsupportedOperationException e = assertThrows(UnsupportedOperationException.class, () -> GemmLayout.of(1, 4, 4, 4,
                new GemmLayout.Operand(0, 0, 0, 8, 2), new GemmLayout.Operand(0, 0, 0, 4, 1), new GemmLayout.Operand(0, 0, 0, 4, 1), 4, 4));
        assertTrue(e.getMessage().contains("operand A (4x4, row stride 8, column stride 2)"), e.getMessage());
        assertThrows(UnsupportedOperationException.class, () -> GemmLayout.of(1, 4, 4, 4,
                new GemmLayout.Operand(0, 0, 0, 4, 1), new GemmLayout.Operand(0, 0, 0, 4, 1), new GemmLayout.Operand(0, 0, 0, 1, 4), 4, 4));
    }
}
