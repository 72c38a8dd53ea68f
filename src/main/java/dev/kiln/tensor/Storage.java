package dev.kiln.tensor;

import java.lang.foreign.MemorySegment;

/**
 * A block of off-heap memory shared by a tensor and its views. Once handed back to the allocator
 * the storage is dead: a tensor that outlived its scope fails loudly on use instead of silently
 * reading another tensor's data.
 *
 * <p>Offload (parameters and optimizer state in an offload tier): once a {@link Pager} is attached, the block can be
 * paged out (written back if dirty, handed to the allocator) and paged in again (a fresh block filled from the
 * pager), so the tensor and all its views keep working while their bytes are resident only when needed. An access to
 * a paged-out storage pages it in on demand (and counts it dirty, since the caller may write); the offload schedule
 * pages blocks in ahead of use and out after it.
 */
public final class Storage {
    private volatile MemorySegment block; // null while paged out
    private final long bytes;
    private final Device device;
    private boolean released;
    private Pager pager;
    private boolean dirty;

    Storage(MemorySegment block, Device device) {
        this.block = block;
        this.bytes = block.byteSize();
        this.device = device;
    }

    public MemorySegment segment() {
        MemorySegment b = block;
        if (b != null && !released) return b;
        if (released) throw new IllegalStateException("tensor memory was released (used after its scope closed)");
        pageIn(true);
        return block;
    }

    /** Size of the block in bytes (resident or not). */
    public long byteSize() {
        return bytes;
    }

    /** Whether the bytes are in memory (false only while paged out). */
    public boolean isResident() {
        return block != null;
    }

    /** Makes {@code pager} this storage's backing slot and saves the current contents to it. */
    public synchronized void attachPager(Pager pager) {
        if (this.pager != null) throw new IllegalStateException("storage already has a pager");
        this.pager = pager;
        pager.save(segment());
        dirty = false;
    }

    /** Brings the bytes back from the pager if they are paged out; {@code forWrite}: they will change (write back at page-out). */
    public synchronized void pageIn(boolean forWrite) {
        if (pager == null) throw new IllegalStateException("storage has no pager to page in from");
        if (block == null) {
            MemorySegment b = HostAllocator.allocate(bytes);
            pager.load(b);
            block = b;
        }
        dirty |= forWrite;
    }

    /** Writes the bytes back if they changed and frees the block; a no-op when already paged out. */
    public synchronized void pageOut() {
        if (pager == null) throw new IllegalStateException("storage has no pager to page out to");
        MemorySegment b = block;
        if (b == null || released) return;
        if (dirty) pager.save(b);
        dirty = false;
        block = null;
        HostAllocator.free(b);
    }

    public Device device() {
        return device;
    }

    public boolean isReleased() {
        return released;
    }

    /** Hands the block back to the allocator (idempotent). */
    synchronized void release() {
        if (released) return;
        released = true;
        if (block != null) HostAllocator.free(block);
    }
}
