package dev.kiln.backend.cuda;

import dev.kiln.backend.Backend;
import dev.kiln.backend.cpu.CpuBackend;
import dev.kiln.tensor.DType;
import dev.kiln.tensor.Device;
import dev.kiln.tensor.DeviceBlock;
import dev.kiln.tensor.MemoryScope;
import dev.kiln.tensor.Storage;
import dev.kiln.tensor.Tensor;
import org.junit.jupiter.api.Test;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertSame;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

/** Tensors over device memory, with blocks from the caching allocator on a fake device (no GPU needed). */
class DeviceTensorTest {
    private static final Device CUDA0 = new Device(Device.Kind.CUDA, 0);

    private static boolean gpuPresent() {
        try {
            CudaRuntime.get(0);
            return true;
        } catch (CudaUnavailableException e) {
            return false;
        }
    }

    @Test
    void deviceTensorsAreOwnedByScopesAndReturnTheirBlocks() {
        var dev = new CudaAllocatorTest.FakeDevice(1L << 30);
        CudaAllocator alloc = new CudaAllocator(dev, "fake:0");
        Tensor t;
        try (MemoryScope s = MemoryScope.open()) {
            t = Tensor.wrap(Storage.onDevice(alloc.allocate(4 * 6 * 4), CUDA0), DType.F32, 4, 6);
            assertEquals(CUDA0, t.device());
            assertEquals(512, alloc.allocatedBytes());
            Tensor v = t.transposeView(0, 1);
            assertSame(t.storage().deviceBlock(), v.storage().deviceBlock());
        }
        assertEquals(0, alloc.allocatedBytes(), "closing the scope freed the device block");
        assertTrue(t.storage().isReleased());
        assertEquals(1, dev.allocs);
    }

    @Test
    void theHostCannotReadDeviceMemory() {
        DeviceBlock block = new CudaAllocator(new CudaAllocatorTest.FakeDevice(1L << 30), "fake:0").allocate(64);
        Tensor t = Tensor.wrap(Storage.onDevice(block, CUDA0), DType.F32, 16);
        IllegalStateException e = assertThrows(IllegalStateException.class, () -> t.getFlat(0));
        assertEquals("tensor memory is on cuda:0: the host cannot read it; copy the tensor to the CPU first", e.getMessage());
        IllegalArgumentException tooBig = assertThrows(IllegalArgumentException.class,
                () -> Tensor.wrap(Storage.onDevice(block, CUDA0), DType.F32, 200));
        assertEquals("[200] F32 needs 800 bytes, storage has 512", tooBig.getMessage());   // the block is rounded up to 512
        assertThrows(IllegalArgumentException.class, () -> Storage.onDevice(block, Device.CPU));
        Tensor host = Tensor.zeros(3);
        assertThrows(IllegalStateException.class, () -> host.storage().deviceBlock());
        t.release();
    }

    @Test
    void backendDispatchesByDevice() {
        Tensor host = Tensor.zeros(2, 2);
        assertSame(CpuBackend.get(), Backend.of(host));
        DeviceBlock block = new CudaAllocator(new CudaAllocatorTest.FakeDevice(1L << 30), "fake:0").allocate(16);
        Tensor dev = Tensor.wrap(Storage.onDevice(block, CUDA0), DType.F32, 2, 2);
        if (gpuPresent()) {
            assertTrue(Backend.of(dev) instanceof CudaBackend);
        } else {
            // without a GPU the CUDA backend cannot open: the dispatch reaches it and it says why, in one line
            CudaUnavailableException e = assertThrows(CudaUnavailableException.class, () -> Backend.of(dev));
            assertTrue(e.getMessage().startsWith("CUDA is not available: "), e.getMessage());
            assertFalse(e.getMessage().contains("\n"));
        }
        dev.release();
    }

    @Test
    void notWiredKernelsSaySo() {
        assumeTrue(gpuPresent(), "needs a GPU to build a CudaBackend");
        Tensor x = CudaRuntime.get(0).empty(DType.F32, 4);
        UnsupportedOperationException e = assertThrows(UnsupportedOperationException.class,
                () -> Backend.of(x).gelu(x, x));
        assertTrue(e.getMessage().contains("CudaBackend.gelu: the CUDA kernel is not wired yet"), e.getMessage());
        x.release();
    }
}
