package dev.kiln.backend.cuda;

import dev.kiln.tensor.DType;
import dev.kiln.tensor.Device;
import dev.kiln.tensor.MemoryScope;
import dev.kiln.tensor.Tensor;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.parallel.Isolated;

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

    @Test
    void deviceTensorsOfAnotherDeviceAreRefused() {
        CudaRuntime rt = open();
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> rt.toHost(Tensor.zeros(3)));
        assertEquals("toHost: tensor on cpu, runtime of cuda:0", e.getMessage());
    }
}
