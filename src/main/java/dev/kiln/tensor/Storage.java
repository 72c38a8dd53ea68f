package dev.kiln.tensor;

import java.lang.foreign.MemorySegment;

/**
 * A block of off-heap memory shared by a tensor and its views. Once handed back to the allocator
 * the storage is dead: a tensor that outlived its scope fails loudly on use instead of silently
 * reading another tensor's data.
 */
public final class Storage {
    private MemorySegment block;
    private final long bytes;
    private final Device device;
    private MemoryCategory category;
    private boolean released, evicted;

    /** Charges the block to this thread's current {@link MemoryCategory}. */
    Storage(MemorySegment block, Device device) {
        this.block = block;
        this.bytes = block.byteSize();
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
        if (evicted) throw new IllegalStateException("tensor memory is evicted (a parameter sharded away by ZeRO-3 and not gathered)");
        return block;
    }

    public Device device() {
        return device;
    }

    public boolean isReleased() {
        return released;
    }

    /** Whether the memory is there to use: neither released nor evicted. */
    public boolean isResident() {
        return !released && !evicted;
    }

    /**
     * Hands the block back to the allocator while the tensors on it live on (ZeRO-3 frees a parameter another rank
     * owns between uses); any use before {@link #restore} fails. Idempotent.
     */
    public synchronized void evict() {
        if (released || evicted) return;
        evicted = true;
        MemoryTracker.freed(device, category, bytes);
        HostAllocator.free(block);
        block = null;
    }

    /** Gives an evicted storage a block again (contents undefined: the caller fills it). No-op when resident. */
    public synchronized void restore() {
        if (released) throw new IllegalStateException("tensor memory was released; it cannot be restored");
        if (!evicted) return;
        block = HostAllocator.allocate(bytes);
        MemoryTracker.allocated(device, category, bytes);
        evicted = false;
    }

    /** Moves the block's bytes to another category (memory whose role changed, e.g. a kept recompute output). */
    void reattribute(MemoryCategory to) {
        if (released || evicted || to == category) return;
        MemoryTracker.freed(device, category, bytes);
        MemoryTracker.allocated(device, to, bytes);
        category = to;
    }

    /** Hands the block back to the allocator (idempotent). */
    void release() {
        if (released) return;
        released = true;
        if (!evicted) {
            MemoryTracker.freed(device, category, bytes);
            HostAllocator.free(block);
        }
        block = null;
    }
}
