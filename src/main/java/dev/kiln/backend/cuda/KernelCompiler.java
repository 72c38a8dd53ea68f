package dev.kiln.backend.cuda;

import java.util.List;

/** Compiles CUDA C to a loadable image: NVRTC on a real machine, a fake in the cache's tests. */
public interface KernelCompiler {
    /** The cubin for {@code source} under {@code options}; throws {@link CudaException} with the log on error. */
    byte[] compile(String source, String name, List<String> options);

    /** Names the compiler and its version; part of the cache key. */
    String version();
}
