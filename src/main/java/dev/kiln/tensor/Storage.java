package dev.kiln.tensor;

import java.lang.foreign.MemorySegment;

/**
 * A block of off-heap memory shared by a tensor and its views. Once handed back to the allocator
 * the storage is dead: a tensor that outlived its scope fails loudly on use instead of silently
 * reading another tensor's data.
 */
public final class Storage {
    private final MemorySegment block;
    private final Device device;
    private MemoryCategory category;
    private boolean released;

    /** Charges the block to this thread's current {@link MemoryCategory}. */
    Storage(MemorySegment block, Device device) {
        this.block = block;
        this.device = device;
        this.category = MemoryTracker.current();
        MemoryTracker.allocated(device, category, block.byteSize());
    }

    /** What the memory was attributed to when it was allocated. */
    public MemoryCategory category() {
        return category;
    }

    public MemorySegment segment() {
        if (released) throw new IllegalStateException("tensor memory was released (used after its scope closed)");
        return block;
    }

    public Device device() {
        return device;
    }

    public boolean isReleased() {
        return released;
    }

    /** Moves the block's bytes to another category (memory whose role changed, e.g. a kept recompute output). */
    void reattribute(MemoryCategory to) {
        if (released || to == category) return;
        MemoryTracker.freed(device, category, block.byteSize());
        MemoryTracker.allocated(device, to, block.byteSize());
        category = to;
    }

    /** Hands the block back to the allocator (idempotent). */
    void release() {
        if (released) return;
        released = true;
        MemoryTracker.freed(device, category, block.byteSize());
        HostAllocator.free(block);
    }
}
