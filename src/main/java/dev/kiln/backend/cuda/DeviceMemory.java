package dev.kiln.backend.cuda;

/**
 * Raw device memory as the caching allocator sees it: cuMemAlloc/cuMemFree on a GPU, a fake in tests,
 * so the allocator's logic is tested on machines without one.
 */
public interface DeviceMemory {
    /** A new block of exactly {@code bytes}, or 0 when the device has no room (other failures throw). */
    long allocate(long bytes);

    void free(long address);

    /** {free, total} bytes of the device, for error messages. */
    long[] memoryInfo();
}
