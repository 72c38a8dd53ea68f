package dev.kiln.backend.cuda;

import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;

/**
 * A whole "GPU" on the host, for running {@link CudaBackend} end to end without one: {@link FakeDriver} (device
 * memory is host memory) whose cuLaunchKernel runs the g++-built host emulation of the catalog's kernels
 * ({@link KernelEmulator}) with the very kernelParams the backend packed, {@link FakeCublas} for the GEMMs, and a
 * fake NVRTC whose "cubin" is a token the fake cuModuleLoadData accepts. Installed as cuda:0 of this process
 * ({@link CudaRuntime#install}) so {@code Backend.of} of a cuda:0 tensor dispatches to it, as in production; tests
 * using it must be {@code @Isolated} (the fakes have static state, as C libraries do). Skips where g++ is missing.
 */
final class EmulatedDevice {
    private EmulatedDevice() {}

    /** A compiler standing in for NVRTC: a fixed token (the fake driver loads any image; launches go by function name). */
    static final class TokenCompiler implements KernelCompiler {
        @Override
        public byte[] compile(String source, String name, Map<String, String> headers, List<String> options) {
            return "EMU-KERNELS".getBytes(StandardCharsets.US_ASCII);   // the fake reads ≤ 15 characters
        }

        @Override
        public String version() {
            return "emulated-kernels";
        }
    }

    /** Opens the emulated cuda:0 and installs it for this process; {@link #uninstall} when done. */
    static CudaRuntime install(Path kernelCacheDir) {
        return install(kernelCacheDir, 0, 1);
    }

    /**
     * Opens the emulated cuda:{@code index} of a fake driver reporting {@code devices} GPUs and installs it for this
     * process (e.g. a rank's local GPU under mpirun: each process emulates its own).
     */
    static CudaRuntime install(Path kernelCacheDir, int index, int devices) {
        KernelEmulator emu = KernelEmulator.get();   // skips the test where g++ is missing
        FakeDriver.reset();
        FakeDriver.emulator = emu;
        FakeDriver.devices = devices;
        CudaRuntime rt = CudaRuntime.open(new CudaDriver(FakeDriver.lookup()), new CudaLibraries(Map.of(), Path.of("/nonexistent-root")), index);
        rt.bindCublas(FakeCublas.lookup());
        rt.useKernelCache(new KernelCache(kernelCacheDir, new TokenCompiler()));
        installed = index;
        CudaRuntime.install(index, rt);
        return rt;
    }

    private static int installed;

    static void uninstall() {
        CudaRuntime.install(installed, null);
        FakeDriver.reset();
    }
}
