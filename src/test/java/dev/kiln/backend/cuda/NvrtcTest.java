package dev.kiln.backend.cuda;

import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.nio.file.Path;
import java.util.List;
import java.util.Map;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

/**
 * The real NVRTC through FFM, where the library is found (KILN_CUDA_HOME, a toolkit, NVIDIA's wheels):
 * NVRTC compiles without a GPU, so this runs on CI machines that have it and skips cleanly elsewhere.
 */
class NvrtcTest {
    private static Nvrtc nvrtc;
    private static String why = "";

    static final String SAXPY = """
            extern "C" __global__ void saxpy(float a, const float* x, float* y, int n) {
                int i = blockIdx.x * blockDim.x + threadIdx.x;
                if (i < n) y[i] = a * x[i] + y[i];
            }
            """;

    @BeforeAll
    static void load() {
        try {
            nvrtc = Nvrtc.load(CudaLibraries.system());
        } catch (CudaUnavailableException e) {
            why = e.getMessage();
        }
    }

    @Test
    void compilesAKernelToPtxAndCubinForSm90() {
        assumeTrue(nvrtc != null, () -> "NVRTC absent: " + why);
        assertTrue(nvrtc.version().matches("nvrtc 1[2-9]\\.\\d+"), nvrtc.version());
        String ptx = nvrtc.compilePtx(SAXPY, "saxpy.cu", Map.of(), List.of("--gpu-architecture=compute_90"));
        assertTrue(ptx.contains(".visible .entry saxpy("), ptx);
        assertTrue(ptx.contains(".target sm_90"), ptx);
        byte[] cubin = nvrtc.compile(SAXPY, "saxpy.cu", Map.of(), KernelCache.options(9, 0, List.of()));
        // a cubin is an ELF file
        assertTrue(cubin.length > 64);
        assertArrayEquals(new byte[] {0x7f, 'E', 'L', 'F'}, java.util.Arrays.copyOf(cubin, 4));
    }

    @Test
    void compileErrorNamesTheCallAndQuotesTheLog() {
        assumeTrue(nvrtc != null, () -> "NVRTC absent: " + why);
        CudaException e = assertThrows(CudaException.class,
                () -> nvrtc.compile("extern \"C\" __global__ void bad(float* x) { x[0] = undefined_name; }", "bad.cu", Map.of(),
                        KernelCache.options(9, 0, List.of())));
        String m = e.getMessage();
        assertTrue(m.startsWith("nvrtcCompileProgram(bad.cu, --gpu-architecture=sm_90 --std=c++17) failed: NVRTC_ERROR_COMPILATION"), m);
        assertTrue(m.contains("undefined_name"), m);
        assertTrue(!m.contains("\n"), m);
    }

    @Test
    void cacheWithRealNvrtcCompilesOnceThenLoadsFromDisk(@TempDir Path dir) {
        assumeTrue(nvrtc != null, () -> "NVRTC absent: " + why);
        KernelCache c = new KernelCache(dir, nvrtc);
        List<String> opts = KernelCache.options(9, 0, List.of());
        byte[] a = c.cubin(SAXPY, "saxpy.cu", opts);
        byte[] b = new KernelCache(dir, nvrtc).cubin(SAXPY, "saxpy.cu", opts);
        assertArrayEquals(a, b);
        assertEquals(1, c.compiles());
    }

    @Test
    void headersResolveIncludes() {
        assumeTrue(nvrtc != null, () -> "NVRTC absent: " + why);
        String src = "#include \"scale.h\"\nextern \"C\" __global__ void twice(float* x) { x[threadIdx.x] *= KILN_SCALE; }\n";
        String ptx = nvrtc.compilePtx(src, "twice.cu", Map.of("scale.h", "#define KILN_SCALE 2.5f\n"), List.of("--gpu-architecture=compute_90"));
        assertTrue(ptx.contains(".visible .entry twice("), ptx);
        assertTrue(ptx.contains("0f40200000"), "2.5f as a PTX literal: " + ptx);
        CudaException e = assertThrows(CudaException.class,
                () -> nvrtc.compilePtx(src, "twice.cu", Map.of(), List.of("--gpu-architecture=compute_90")));
        assertTrue(e.getMessage().contains("scale.h"), e.getMessage());
    }

    @Test
    void firstLinesKeepsTheErrorOnOneLine() {
        assertEquals("a | b", Nvrtc.firstLines("a\n\n  b  \n", 6));
        assertEquals("1 | 2 | … (2 more lines)", Nvrtc.firstLines("1\n2\n3\n4\n", 2));
    }
}
