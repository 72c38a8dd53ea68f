package dev.kiln.backend.cuda;

import java.lang.foreign.Arena;
import java.lang.foreign.FunctionDescriptor;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.SymbolLookup;
import java.lang.invoke.MethodHandle;

import static dev.kiln.backend.cuda.Native.INT;
import static dev.kiln.backend.cuda.Native.LONG;
import static dev.kiln.backend.cuda.Native.PTR;

/**
 * cuBLAS ({@code libcublas.so.13}) through FFM: a handle bound to a stream, and
 * {@code cublasGemmStridedBatchedEx} with fp32 or bf16 operands and fp32 compute. Symbols as exported
 * (cublas_v2.h maps {@code cublasCreate} to {@code cublasCreate_v2} …). Status codes become a one-line
 * {@link CudaException} named by {@code cublasGetStatusName}. cuBLAS is column-major; {@link GemmLayout}
 * maps Kiln's row-major strided operands onto it.
 */
public final class Cublas {
    public static final int OP_N = 0, OP_T = 1;
    /** cudaDataType (library_types.h). */
    public static final int CUDA_R_32F = 0, CUDA_R_16BF = 14;
    /** cublasComputeType_t: fp32 accumulate; the _FAST_TF32 variant lets fp32 inputs use TF32 tensor cores. */
    public static final int COMPUTE_32F = 68, COMPUTE_32F_FAST_TF32 = 77;
    static final int GEMM_DEFAULT = -1, DEFAULT_MATH = 0, TF32_TENSOR_OP_MATH = 3;

    private final MethodHandle create, setStream, setMathMode, setWorkspace, gemmStridedBatchedEx, statusName;

    public Cublas(SymbolLookup lib) {
        String l = "libcublas";
        statusName = Native.bind(lib, l, FunctionDescriptor.of(PTR, INT), "cublasGetStatusName");
        create = Native.bind(lib, l, FunctionDescriptor.of(INT, PTR), "cublasCreate_v2");
        setStream = Native.bind(lib, l, FunctionDescriptor.of(INT, PTR, PTR), "cublasSetStream_v2");
        setMathMode = Native.bind(lib, l, FunctionDescriptor.of(INT, PTR, INT), "cublasSetMathMode");
        setWorkspace = Native.bind(lib, l, FunctionDescriptor.of(INT, PTR, LONG, LONG), "cublasSetWorkspace_v2");
        // handle, transa, transb, m, n, k, alpha*, A, Atype, lda, strideA, B, Btype, ldb, strideB, beta*, C, Ctype, ldc, strideC, batch, compute, algo
        gemmStridedBatchedEx = Native.bind(lib, l, FunctionDescriptor.of(INT, PTR, INT, INT, INT, INT, INT, PTR,
                LONG, INT, INT, LONG, LONG, INT, INT, LONG, PTR, LONG, INT, INT, LONG, INT, INT, INT), "cublasGemmStridedBatchedEx");
    }

    void check(String call, int status) {
        if (status != 0) throw CudaException.of(call, status, statusName(status), null);
    }

    public String statusName(int status) {
        try {
            return Native.string((MemorySegment) statusName.invokeExact(status), "cublasStatus " + status);
        } catch (Throwable t) {
            throw Native.rethrow(t);
        }
    }

    /** A new handle (in the current context), its work on {@code stream}. */
    public MemorySegment createHandle(MemorySegment stream) {
        MemorySegment h;
        try (Arena a = Arena.ofConfined()) {
            MemorySegment out = a.allocate(PTR);
            check("cublasCreate_v2", (int) create.invokeExact(out));
            h = out.get(PTR, 0);
            check("cublasSetStream_v2", (int) setStream.invokeExact(h, stream));
        } catch (Throwable t) {
            throw Native.rethrow(t);
        }
        return h;
    }

    /** Allows (TF32) or forbids (exact fp32) tensor-core math for fp32 GEMMs. */
    public void setTf32(MemorySegment handle, boolean on) {
        try {
            int mode = on ? TF32_TENSOR_OP_MATH : DEFAULT_MATH;
            check("cublasSetMathMode", (int) setMathMode.invokeExact(handle, mode));
        } catch (Throwable t) {
            throw Native.rethrow(t);
        }
    }

    /** Gives cuBLAS a workspace from Kiln's allocator, so it never allocates on its own during a step. */
    public void setWorkspace(MemorySegment handle, long devicePtr, long bytes) {
        try {
            check("cublasSetWorkspace_v2", (int) setWorkspace.invokeExact(handle, devicePtr, bytes));
        } catch (Throwable t) {
            throw Native.rethrow(t);
        }
    }

    /**
     * Column-major C[b] = alpha·op(A[b])·op(B[b]) + beta·C[b], op(A) m×k, op(B) k×n; alpha and beta are host
     * fp32 scalars (the handle's default pointer mode), types are cudaDataType values, compute a cublasComputeType_t.
     */
    public void gemmStridedBatched(MemorySegment handle, GemmLayout g, float alpha, float beta, int abType, int cType, int compute) {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment al = a.allocateFrom(Native.FLOAT, alpha), be = a.allocateFrom(Native.FLOAT, beta);
            int rc = (int) gemmStridedBatchedEx.invokeExact(handle, g.transA(), g.transB(), g.m(), g.n(), g.k(), al,
                    g.aPtr(), abType, g.lda(), g.strideA(), g.bPtr(), abType, g.ldb(), g.strideB(), be,
                    g.cPtr(), cType, g.ldc(), g.strideC(), g.batch(), compute, GEMM_DEFAULT);
            if (rc != 0) check("cublasGemmStridedBatchedEx(" + g + ")", rc);
        } catch (Throwable t) {
            throw Native.rethrow(t);
        }
    }
}
