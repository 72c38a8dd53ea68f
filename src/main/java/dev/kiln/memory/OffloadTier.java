package dev.kiln.memory;

import dev.kiln.tensor.Pager;

/**
 * Where offloaded tensors live while they are not resident: here memory-mapped files ({@link DiskTier}); a GPU
 * backend adds pinned host memory as another tier behind the same interface, with the same prefetch/release
 * schedule ({@link BlockOffloader}).
 */
public interface OffloadTier extends AutoCloseable {
    /** Slots of the given byte sizes for one group of tensors (a transformer block's parameters, say), named {@code group}. */
    Pager[] slots(String group, long[] bytes);

    /** Bytes held in the tier. */
    long bytes();

    @Override
    void close();
}
