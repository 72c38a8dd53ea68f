package dev.kiln.backend.cuda;

import dev.kiln.backend.Backend;
import dev.kiln.backend.cpu.CpuBackend;
import dev.kiln.tensor.DType;
import dev.kiln.tensor.Device;
import dev.kiln.tensor.MemoryScope;
import dev.kiln.tensor.Tensor;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.parallel.Isolated;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;

import java.lang.foreign.MemorySegment;
import java.nio.file.Path;
import java.util.Map;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * {@link CudaDriver} and {@link CudaRuntime} against {@link FakeDriver}, a libcuda made of FFM upcalls: every
 * downcall's symbol and signature, out-parameters, error names, pinned staging and the allocator are exercised
 * without a GPU (a signature mismatch throws WrongMethodTypeException or fails to bind).
 */
@Isolated
class CudaRuntimeFakeDriverTest {
    private CudaDriver driver;

    @BeforeEach
    void bind() {
        FakeDriver.reset();
        driver = new CudaDriver(FakeDriver.lookup());
    }

    private CudaRuntime open() {
        return CudaRuntime.open(driver, new CudaLibraries(Map.of(), Path.of("/nonexistent-root")), 0);
    }

    @Test
    void opensTheDeviceAndReadsItsFacts() {
        CudaRuntime rt = open();
        assertEquals(new Device(Device.Kind.CUDA, 0), rt.device());
        assertEquals("Fake GPU", rt.name());
        assertEquals(9, rt.computeCapabilityMajor());
        assertEquals(0, rt.computeCapabilityMinor());
        assertEquals(132, rt.multiprocessors());
        assertEquals(1L << 30, rt.totalMemory());
        assertEquals(13000, driver.driverVersion());
        assertEquals("cuda:0: Fake GPU, compute capability 9.0, 132 SMs, 1.00 GiB", rt.toString());
        assertTrue(FakeDriver.calls.contains("cuInit(0)"));
        assertTrue(FakeDriver.calls.contains("cuStreamCreate(1)"), "a non-blocking stream: " + FakeDriver.calls);
        assertEquals(1.5f, driver.elapsedMillis(driver.createEvent(), driver.createEvent()));
    }

    @Test
    void noDeviceIsAOneLineUnavailableError() {
        FakeDriver.initResult = 100;
        CudaUnavailableException e = assertThrows(CudaUnavailableException.class, this::open);
        assertEquals("CUDA is not available: cuInit failed with CUDA_ERROR_NO_DEVICE (100): the driver is installed but sees no GPU; "
                + "train on the CPU with --device cpu", e.getMessage());
        FakeDriver.initResult = 0;
        CudaUnavailableException idx = assertThrows(CudaUnavailableException.class,
                () -> CudaRuntime.open(driver, new CudaLibraries(Map.of(), Path.of("/x")), 3));
        assertEquals("cuda:3 requested but the driver sees 1 GPU(s) (cuda:0 … cuda:0)", idx.getMessage());
    }

    @Test
    void hostDeviceRoundTripsGoThroughPinnedStaging() {
        CudaRuntime rt = open();
        float[] x = new float[3000];
        for (int i = 0; i < x.length; i++) x[i] = i * 0.25f - 7;
        try (MemoryScope s = MemoryScope.open()) {
            Tensor host = Tensor.of(x, 30, 100);
            Tensor dev = rt.toDevice(host.transposeView(0, 1));   // non-contiguous: made contiguous first
            assertEquals(rt.device(), dev.device());
            assertArrayEquals(new int[] {100, 30}, dev.shape());
            assertArrayEquals(host.transposeView(0, 1).contiguous().toFloatArray(), rt.toHost(dev).toFloatArray());
            Tensor bf = rt.toDevice(host.to(DType.BF16));
            assertArrayEquals(host.to(DType.BF16).toFloatArray(), rt.toHost(bf).toFloatArray());
            rt.zero(dev);
            for (float v : rt.toHost(dev).toFloatArray()) assertEquals(0f, v);
        }
        assertTrue(FakeDriver.calls.contains("HtoD(12000)"), FakeDriver.calls.toString());
        assertTrue(FakeDriver.calls.contains("DtoH(12000)"), FakeDriver.calls.toString());
        assertEquals(1, FakeDriver.calls.stream().filter(c -> c.startsWith("cuMemHostAlloc")).count(), "the staging buffer is reused");
        assertTrue(FakeDriver.calls.contains("cuMemHostAlloc(1048576, 1)"), "portable pinned memory: " + FakeDriver.calls);
        assertEquals(0, rt.allocator().allocatedBytes(), "the scope returned every device block");
    }

    @Test
    void stepsOfDeviceTensorsReachASteadyState() {
        CudaRuntime rt = open();
        int after = -1;
        for (int step = 0; step < 4; step++) {
            try (MemoryScope s = MemoryScope.open()) {
                for (int i = 1; i <= 40; i++) rt.empty(DType.F32, i * 1000, 7);
            }
            if (step == 0) after = FakeDriver.memAllocs;
            else assertEquals(after, FakeDriver.memAllocs, "cuMemAlloc in step " + step);
        }
        assertTrue(after > 0);
    }

    @Test
    void deviceOutOfMemoryNamesTheRequest() {
        FakeDriver.capacity = 64L << 20;
        CudaRuntime rt = open();
        CudaAllocator.OutOfDeviceMemory e = assertThrows(CudaAllocator.OutOfDeviceMemory.class, () -> rt.empty(DType.F32, 32 << 20));
        assertTrue(e.getMessage().startsWith("CUDA out of memory on cuda:0 (Fake GPU): allocating 128.0 MiB"), e.getMessage());
        assertTrue(e.getMessage().contains("the device has 64.0 MiB free of 64.0 MiB"), e.getMessage());
    }

    @Test
    void failingCallsAreNamedWithTheDriversErrorName() {
        CudaRuntime rt = open();
        FakeDriver.failCopiesWith = 1;
        CudaException e = assertThrows(CudaException.class, () -> rt.toDevice(Tensor.zeros(4)));
        assertEquals("cuMemcpyHtoDAsync_v2 failed: CUDA_ERROR_INVALID_VALUE (1)", e.getMessage());
        assertEquals(1, e.code());
        assertEquals("unknown CUresult", driver.errorName(999));
        assertThrows(CudaException.class, () -> driver.free(12345));
    }

    @Test
    void launchesPassArgumentsAsPointersToValues() {
        CudaRuntime rt = open();
        MemorySegment module = driver.loadModule("FAKE-CUBIN".getBytes());
        MemorySegment f = driver.function(module, "saxpy");
        assertTrue(FakeDriver.calls.contains("cuModuleLoadData(FAKE-CUBIN)"), FakeDriver.calls.toString());
        assertTrue(FakeDriver.calls.contains("cuModuleGetFunction(saxpy)"));
        rt.launch(f, 4, 2, 256, 1024, 1.75f, 0x1000L, 0x2000L, 77);
        Object[] geometry = FakeDriver.launches.get(0), args = FakeDriver.launches.get(1);
        assertArrayEquals(new Object[] {4, 2, 1, 256, 1, 1, 1024}, java.util.Arrays.copyOf(geometry, 7));
        assertFalse(geometry[7].equals(0L), "params is a real array");
        assertEquals(0L, geometry[8], "extra is NULL");
        assertArrayEquals(new Object[] {1.75f, 0x1000L, 0x2000L, 77}, args);
        assertThrows(IllegalArgumentException.class, () -> rt.launch(f, 1, 1, 1, 0, 1.0));   // a double is not a kernel argument type
    }

    /** Operand rows×cols of batch-contiguous storage, stored as is or transposed. */
    private static Backend.Mat mat(Tensor t, int rows, int cols, boolean transposed) {
        long bs = (long) rows * cols;
        return transposed ? new Backend.Mat(t, 0, bs, 1, rows) : new Backend.Mat(t, 0, bs, cols, 1);
    }

    /**
     * CudaBackend.gemm through the Cublas binding into the fake cuBLAS (column-major semantics on fake device
     * memory), against the CPU GEMM on the same (bf16-rounded) inputs. Tolerance 1e-5·k: fp32 sums of k products of
     * values in (−1, 1) in two different orders.
     */
    @ParameterizedTest
    @CsvSource({"F32,1,7,5,3,false,false", "F32,1,16,9,33,true,false", "F32,2,6,11,8,false,true", "BF16,3,5,4,19,true,true",
            "BF16,1,1,8,8,false,false"})
    void cublasGemmMatchesTheCpuGemm(DType type, int batch, int m, int n, int k, boolean ta, boolean tb) {
        CudaRuntime rt = open();
        FakeCublas.calls.clear();
        rt.bindCublas(FakeCublas.lookup());
        CudaBackend gpu = new CudaBackend(rt);
        try (MemoryScope s = MemoryScope.open()) {
            Tensor a = Tensor.randn(new dev.kiln.tensor.Rng(m), 0.5, DType.F32, batch, ta ? k : m, ta ? m : k);
            Tensor b = Tensor.randn(new dev.kiln.tensor.Rng(n), 0.5, DType.F32, batch, tb ? n : k, tb ? k : n);
            Tensor c0 = Tensor.randn(new dev.kiln.tensor.Rng(k), 0.5, DType.F32, batch, m, n);
            Tensor cCpu = c0.copy();
            CpuBackend.get().gemm(batch, m, n, k, 0.5, mat(a.to(type).to(DType.F32), m, k, ta), mat(b.to(type).to(DType.F32), k, n, tb),
                    0.25, new Backend.Mat(cCpu, 0, (long) m * n, n, 1));
            Tensor dc = rt.toDevice(c0);
            gpu.gemm(batch, m, n, k, 0.5, mat(rt.toDevice(a.to(type)), m, k, ta), mat(rt.toDevice(b.to(type)), k, n, tb), 0.25,
                    new Backend.Mat(dc, 0, (long) m * n, n, 1));
            float[] got = rt.toHost(dc).toFloatArray(), want = cCpu.toFloatArray();
            for (int i = 0; i < got.length; i++) assertEquals(want[i], got[i], 1e-5 * k, "element " + i);
        }
        assertTrue(FakeCublas.calls.contains("setMathMode(0)"), "TF32 off: " + FakeCublas.calls);
        int t = type == DType.F32 ? 0 : 14;
        assertTrue(FakeCublas.calls.stream().anyMatch(c -> c.endsWith(" types " + t + "," + t + ",0 compute 68 algo -1")), FakeCublas.calls.toString());
    }

    @Test
    void gemmRefusesHostOperandsAndUnsupportedTypes() {
        CudaRuntime rt = open();
        rt.bindCublas(FakeCublas.lookup());
        CudaBackend gpu = new CudaBackend(rt);
        Tensor dev = rt.empty(DType.F32, 4, 4), host = Tensor.zeros(4, 4), dev64 = rt.empty(DType.F64, 4, 4);
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> gpu.gemm(1, 4, 4, 4, 1, new Backend.Mat(dev, 0, 0, 4, 1),
                new Backend.Mat(host, 0, 0, 4, 1), 0, new Backend.Mat(dev, 0, 0, 4, 1)));
        assertEquals("CUDA GEMM on cuda:0 got a tensor on cpu", e.getMessage());
        UnsupportedOperationException u = assertThrows(UnsupportedOperationException.class, () -> gpu.gemm(1, 4, 4, 4, 1,
                new Backend.Mat(dev64, 0, 0, 4, 1), new Backend.Mat(dev64, 0, 0, 4, 1), 0, new Backend.Mat(dev, 0, 0, 4, 1)));
        assertEquals("CUDA GEMM: A/B is F64; cuBLAS is wired for F32 and BF16", u.getMessage());
        IllegalArgumentException w = assertThrows(IllegalArgumentException.class, () -> gpu.gelu(dev64, dev64));
        assertEquals("CudaBackend.gelu: F64 tensors have no CUDA kernel (F32 and BF16 do)", w.getMessage());
        dev.release();
        dev64.release();
    }

    /**
     * {@code kiln gpu-check}'s flow on the fakes (the timings' GEMMs excepted: --quick), with the real NVRTC where it is
     * found: every check must pass, so the GPU session does not discover a broken check.
     */
    @Test
    void gpuCheckRunsOnTheFakes(@org.junit.jupiter.api.io.TempDir Path cache) {
        CudaRuntime rt = open();
        rt.bindCublas(FakeCublas.lookup());
        Nvrtc nvrtc;
        try {
            nvrtc = Nvrtc.load(CudaLibraries.system());
        } catch (CudaUnavailableException e) {
            nvrtc = null;
        }
        org.junit.jupiter.api.Assumptions.assumeTrue(nvrtc != null, "NVRTC absent: gpu-check compiles a real kernel");
        rt.useKernelCache(new KernelCache(cache, nvrtc));
        java.io.ByteArrayOutputStream bytes = new java.io.ByteArrayOutputStream();
        java.util.List<String> failed = GpuCheck.run(new java.io.PrintStream(bytes, true), rt, true);
        String out = bytes.toString();
        System.out.print(out);   // the report, for the test log
        assertEquals(java.util.List.of(), failed, out);
        for (String check : java.util.List.of("copies", "allocator", "nvrtc", "kernel_sources", "cublas_f32", "cublas_bf16"))
            assertTrue(out.contains("ok       " + check), check + " in:\n" + out);
        assertTrue(out.contains("saxpy compiled by NVRTC"), out);
        String json = out.strip().lines().reduce((x, y) -> y).orElseThrow();
        assertTrue(json.startsWith("{\"gpu\":\"Fake GPU\",\"compute_capability\":\"9.0\""), json);
        assertTrue(json.endsWith("\"failed\":[]}"), json);
    }

    @Test
    void deviceTensorsOfAnotherDeviceAreRefused() {
        CudaRuntime rt = open();
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> rt.toHost(Tensor.zeros(3)));
        assertEquals("toHost: tensor on cpu, runtime of cuda:0", e.getMessage());
    }
}
