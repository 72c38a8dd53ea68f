package dev.kiln.backend.cuda;

import dev.kiln.tensor.DType;

import java.lang.foreign.Arena;
import java.lang.foreign.FunctionDescriptor;
import java.lang.foreign.Linker;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.SymbolLookup;
import java.lang.foreign.ValueLayout;
import java.lang.invoke.MethodHandles;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Optional;

import static dev.kiln.backend.cuda.Native.FLOAT;
import static dev.kiln.backend.cuda.Native.INT;
import static dev.kiln.backend.cuda.Native.LONG;
import static dev.kiln.backend.cuda.Native.PTR;

/**
 * A libcublas stand-in of FFM upcalls for {@link CudaRuntimeFakeDriverTest}: cublasGemmStridedBatchedEx runs
 * cuBLAS's documented column-major semantics on the fake driver's "device memory" (host memory), for fp32 and
 * bf16 operands, so {@link CudaBackend#gemm} is tested end to end without a GPU. Signatures are written from
 * cublas_api.h, independently of {@link Cublas}.
 */
final class FakeCublas {
    static final List<String> calls = new ArrayList<>();
    private static final Map<Integer, MemorySegment> NAMES = new HashMap<>();

    static SymbolLookup lookup() {
        Map<String, FunctionDescriptor> sigs = new HashMap<>();
        sigs.put("cublasGetStatusName", FunctionDescriptor.of(PTR, INT));
        sigs.put("cublasCreate_v2", FunctionDescriptor.of(INT, PTR));
        sigs.put("cublasSetStream_v2", FunctionDescriptor.of(INT, PTR, PTR));
        sigs.put("cublasSetMathMode", FunctionDescriptor.of(INT, PTR, INT));
        sigs.put("cublasSetWorkspace_v2", FunctionDescriptor.of(INT, PTR, PTR, LONG));
        sigs.put("cublasGemmStridedBatchedEx", FunctionDescriptor.of(INT, PTR, INT, INT, INT, INT, INT, PTR, PTR, INT, INT, LONG,
                PTR, INT, INT, LONG, PTR, PTR, INT, INT, LONG, INT, INT, INT));
        Map<String, MemorySegment> stubs = new HashMap<>();
        for (var e : sigs.entrySet()) {
            try {
                var target = MethodHandles.lookup().findStatic(FakeCublas.class, e.getKey(), e.getValue().toMethodType());
                stubs.put(e.getKey(), Linker.nativeLinker().upcallStub(target, e.getValue(), Arena.global()));
            } catch (ReflectiveOperationException ex) {
                throw new AssertionError(ex);
            }
        }
        return name -> Optional.ofNullable(stubs.get(name));
    }

    static MemorySegment cublasGetStatusName(int status) {
        return NAMES.computeIfAbsent(status, s -> Arena.global().allocateFrom(s == 0 ? "CUBLAS_STATUS_SUCCESS"
                : s == 7 ? "CUBLAS_STATUS_INVALID_VALUE" : "CUBLAS_STATUS_" + s));
    }

    static int cublasCreate_v2(MemorySegment handle) {
        handle.reinterpret(8).set(PTR, 0, Arena.global().allocate(8));
        return 0;
    }

    static int cublasSetStream_v2(MemorySegment handle, MemorySegment stream) {
        calls.add("setStream");
        return stream.address() == 0 ? 7 : 0;
    }

    static int cublasSetMathMode(MemorySegment handle, int mode) {
        calls.add("setMathMode(" + mode + ")");
        return 0;
    }

    static int cublasSetWorkspace_v2(MemorySegment handle, MemorySegment ws, long bytes) {
        return 0;
    }

    private static double read(MemorySegment base, int type, long index) {
        return type == Cublas.CUDA_R_32F ? base.getAtIndex(ValueLayout.JAVA_FLOAT, index)
                : DType.bf16ToFloat(base.getAtIndex(ValueLayout.JAVA_SHORT, index));
    }

    static int cublasGemmStridedBatchedEx(MemorySegment h, int ta, int tb, int m, int n, int k, MemorySegment alphaP,
                                          MemorySegment a, int aType, int lda, long sa, MemorySegment b, int bType, int ldb, long sb,
                                          MemorySegment betaP, MemorySegment c, int cType, int ldc, long sc, int batch, int compute, int algo) {
        calls.add("gemm " + (ta == 0 ? "N" : "T") + (tb == 0 ? "N" : "T") + " " + m + "x" + n + "x" + k + " types " + aType + "," + bType + "," + cType
                + " compute " + compute + " algo " + algo);
        if (aType != bType || compute != Cublas.COMPUTE_32F || lda < Math.max(1, ta == 0 ? m : k) || ldb < Math.max(1, tb == 0 ? k : n)
                || ldc < Math.max(1, m)) return 7;
        float alpha = alphaP.reinterpret(4).get(FLOAT, 0), beta = betaP.reinterpret(4).get(FLOAT, 0);
        MemorySegment A = a.reinterpret(Long.MAX_VALUE), B = b.reinterpret(Long.MAX_VALUE), C = c.reinterpret(Long.MAX_VALUE);
        for (int p = 0; p < batch; p++)
            for (int j = 0; j < n; j++)
                for (int i = 0; i < m; i++) {
                    float s = 0;
                    for (int l = 0; l < k; l++)
                        s += (float) (read(A, aType, p * sa + (ta == 0 ? i + (long) l * lda : l + (long) i * lda))
                                * read(B, bType, p * sb + (tb == 0 ? l + (long) j * ldb : j + (long) l * ldb)));
                    long ci = p * sc + i + (long) j * ldc;
                    double old = beta == 0 ? 0 : read(C, cType, ci);
                    float v = (float) (alpha * s + beta * old);
                    if (cType == Cublas.CUDA_R_32F) C.setAtIndex(ValueLayout.JAVA_FLOAT, ci, v);
                    else C.setAtIndex(ValueLayout.JAVA_SHORT, ci, DType.floatToBf16(v));
                }
        return 0;
    }
}
