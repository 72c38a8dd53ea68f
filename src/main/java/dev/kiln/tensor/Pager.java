package dev.kiln.tensor;

import java.lang.foreign.MemorySegment;

/**
 * Where a paged-out {@link Storage} keeps its bytes: a slot of an offload tier (a memory-mapped file; pinned host
 * memory for a GPU backend). The slot holds exactly the storage's block size.
 */
public interface Pager {
    /** Copies the slot's bytes into {@code dst}. */
    void load(MemorySegment dst);

    /** Copies {@code src} into the slot. */
    void save(MemorySegment src);
}
