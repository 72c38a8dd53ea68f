package dev.kiln.backend.cuda;

import java.util.List;
import java.util.Map;

/** Compiles CUDA C to a loadable image: NVRTC on a real machine, a fake in the cache's tests. */
public interface KernelCompiler {
    /**
     * The cubin for {@code source} under {@code options}, with {@code headers} (include name → text) resolving its
     * {@code #include "…"}s; throws {@link CudaException} with the log on error.
     */
    byte[] compile(String source, String name, Map<String, String> headers, List<String> options);

    /** Names the compiler and its version; part of the cache key. */
    String version();
}
