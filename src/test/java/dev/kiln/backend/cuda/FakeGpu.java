package dev.kiln.backend.cuda;

import java.nio.file.Path;
import java.util.List;
import java.util.Map;

/**
 * {@link FakeDriver}'s GPU for tests outside this package (the NCCL process group's, in dev.kiln.dist): a
 * {@link CudaRuntime} whose "device memory" is host memory, so a device address is also a host address the fakes
 * can read. Tests using it must be {@code @Isolated} (the fake driver's state is static, as a C library's is).
 */
public final class FakeGpu {
    private FakeGpu() {}

    /** A fresh fake driver and cuda:0 opened on it (not installed as the process's cuda:0). */
    public static CudaRuntime open() {
        FakeDriver.reset();
        return CudaRuntime.open(new CudaDriver(FakeDriver.lookup()), new CudaLibraries(Map.of(), Path.of("/nonexistent-root")), 0);
    }

    /**
     * The {@link EmulatedDevice} (kernels emulated on the host, fake cuBLAS) installed as this process's cuda:0, for
     * training on it from other packages' tests; {@link #uninstallEmulated} when done. Skips where g++ is missing.
     */
    public static CudaRuntime installEmulated(Path kernelCacheDir) {
        return EmulatedDevice.install(kernelCacheDir);
    }

    /** The emulated cuda:{@code index} of a driver reporting {@code devices} GPUs (a rank's local GPU under mpirun). */
    public static CudaRuntime installEmulated(Path kernelCacheDir, int index, int devices) {
        return EmulatedDevice.install(kernelCacheDir, index, devices);
    }

    public static void uninstallEmulated() {
        EmulatedDevice.uninstall();
    }

    /** The driver calls made so far, in order (e.g. "cuEventRecord(stream 0x…)", "cuStreamWaitEvent(stream 0x…)"). */
    public static List<String> calls() {
        synchronized (FakeDriver.calls) {
            return List.copyOf(FakeDriver.calls);
        }
    }

    /** From now on cuEventQuery answers CUDA_ERROR_NOT_READY (true: work that never finishes) or CUDA_SUCCESS. */
    public static void eventsNeverComplete(boolean never) {
        FakeDriver.eventQueryResult = never ? CudaDriver.CUDA_ERROR_NOT_READY : CudaDriver.CUDA_SUCCESS;
    }
}
