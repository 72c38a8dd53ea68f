package dev.kiln.backend.cuda;

import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;

import java.lang.foreign.MemorySegment;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

/**
 * cuBLAS's exported names and status names through FFM, where libcublas is found: it loads without a GPU,
 * so the binding (every symbol Kiln uses) is checked on CI machines that have the library; skips elsewhere.
 */
class CublasBindingTest {
    private static Cublas cublas;
    private static String why = "";

    @BeforeAll
    static void load() {
        try {
            cublas = new Cublas(CudaLibraries.system().open(CudaLibraries.Library.CUBLAS));
        } catch (CudaUnavailableException e) {
            why = e.getMessage();
        }
    }

    @Test
    void everySymbolBindsAndStatusNamesComeFromTheLibrary() {
        assumeTrue(cublas != null, () -> "cuBLAS absent: " + why);
        assertEquals("CUBLAS_STATUS_SUCCESS", cublas.statusName(0));
        assertEquals("CUBLAS_STATUS_NOT_INITIALIZED", cublas.statusName(1));
        assertEquals("CUBLAS_STATUS_EXECUTION_FAILED", cublas.statusName(13));
    }

    @Test
    void withoutAGpuCreatingAHandleIsANamedError() {
        assumeTrue(cublas != null, () -> "cuBLAS absent: " + why);
        boolean gpu;
        try {
            CudaRuntime.get(0);
            gpu = true;
        } catch (CudaUnavailableException e) {
            gpu = false;
        }
        assumeTrue(!gpu, "a GPU is present: handles are created for real (kiln gpu-check)");
        CudaException e = assertThrows(CudaException.class, () -> cublas.createHandle(MemorySegment.NULL));
        assertTrue(e.getMessage().startsWith("cublasCreate_v2 failed: CUBLAS_STATUS_"), e.getMessage());
    }
}
