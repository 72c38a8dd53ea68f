package dev.kiln.backend.cuda;

import dev.kiln.backend.cuda.Kernels.Kernel;
import dev.kiln.backend.cuda.Kernels.Launch;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.HashMap;
import java.util.Map;

/**
 * Launches the {@link Kernels} catalog's kernels by name on one GPU's compute stream: the kernel's source is
 * compiled by NVRTC through the runtime's {@link KernelCache} (once per source, cached on disk), its module loaded
 * with cuModuleLoadData, the function found with cuModuleGetFunction (both once per process), and it is launched with
 * cuLaunchKernel with the catalog's geometry and packed arguments.
 */
final class KernelLauncher {
    private final CudaRuntime rt;
    private final Map<String, MemorySegment> functions = new HashMap<>();

    KernelLauncher(CudaRuntime rt) {
        this.rt = rt;
    }

    /** Launches kernel {@code name} with {@code args} in parameter order (pointers as Long device addresses). */
    void launch(String name, Object... args) {
        Kernel k = Kernels.get(name);
        Launch l = k.launch(args);
        MemorySegment f = function(k);
        rt.makeCurrent();
        try (Arena arena = Arena.ofConfined()) {
            rt.driver().launch(f, l.gridX(), 1, 1, l.blockX(), 1, 1, l.sharedBytes(), rt.stream(), k.pack(arena, args));
        }
    }

    private synchronized MemorySegment function(Kernel k) {
        MemorySegment f = functions.get(k.name());
        if (f == null) {
            f = rt.function(Kernels.text(k.source()), k.source(), Kernels.nvrtcHeaders(), k.name());
            functions.put(k.name(), f);
        }
        return f;
    }
}
