package dev.kiln.tensor;

import java.lang.foreign.MemorySegment;

/**
 * A block of memory shared by a tensor and its views: off-heap host memory, or a {@link DeviceBlock} on an
 * accelerator (which the host cannot read: {@link #segment()} refuses it). Once handed back to the
 * allocator the storage is dead: a tensor that outlived its scope fails loudly on use instead of silently
 * reading another tensor's data.
 *
 * <p>Offload (parameters and optimizer state in an offload tier): once a {@link Pager} is attached, the block can be
 * paged out (written back if dirty, handed to the allocator) and paged in again (a fresh block filled from the
 * pager), so the tensor and all its views keep working while their bytes are resident only when needed. An access to
 * a paged-out storage pages it in on demand (and counts it dirty, since the caller may write); the offload schedule
 * pages blocks in ahead of use and out after it.
 */
public final class Storage {
    private volatile MemorySegment block;      // host memory; null for device memory and while paged out
    private final DeviceBlock deviceBlock;     // null for host memory
    private final long bytes;
    private final Device device;
    private MemoryCategory category;
    private boolean released, evicted;
    private Pager pager;
    private boolean dirty;

    /** Charges the block to this thread's current {@link MemoryCategory}. */
    Storage(MemorySegment block, Device device) {
        this.block = block;
        this.deviceBlock = null;
        this.bytes = block.byteSize();
        this.device = device;
        this.category = MemoryTracker.current();
        MemoryTracker.allocated(device, category, block.byteSize());
    }

    /** What the memory was attributed to when it was allocated. */
    public MemoryCategory category() {
        return category;
    }

    private Storage(DeviceBlock block, Device device) {
        this.block = null;
        this.deviceBlock = block;
        this.bytes = block.byteSize();
        this.device = device;
        this.category = MemoryTracker.current();
        MemoryTracker.allocated(device, category, block.byteSize());
    }

    /** Storage for memory on {@code device} (not the host), returned to its allocator on release. */
    public static Storage onDevice(DeviceBlock block, Device device) {
        if (device.kind() == Device.Kind.CPU) throw new IllegalArgumentException("device memory on the host device " + device);
        return new Storage(block, device);
    }

    /** The host memory; device memory has none the host can read, so that fails naming the device. */
    public MemorySegment segment() {
        MemorySegment b = block;
        if (b != null && !released) return b;
        if (released || deviceBlock != null) throw unreadable();
        if (evicted) throw new IllegalStateException("tensor memory is evicted (a parameter sharded away by ZeRO-3 and not gathered)");
        pageIn(true);
        return block;
    }

    private IllegalStateException unreadable() {
        if (released) return new IllegalStateException("tensor memory was released (used after its scope closed)");
        return new IllegalStateException("tensor memory is on " + device + ": the host cannot read it; copy the tensor to the CPU first");
    }

    /** The device memory, for backends of that device; fails for host storage. */
    public DeviceBlock deviceBlock() {
        if (released) throw unreadable();
        if (deviceBlock == null) throw new IllegalStateException("tensor memory is on the host, not a device");
        return deviceBlock;
    }

    /** Size of the block in bytes (resident or not). */
    public long byteSize() {
        return bytes;
    }

    /** Whether the bytes are there to use: not released, not paged out, not evicted. */
    public boolean isResident() {
        return !released && (block != null || deviceBlock != null);
    }

    /**
     * Hands the block back to the allocator while the tensors on it live on (ZeRO-3 frees a parameter another rank
     * owns between uses); any use before {@link #restore} fails. Idempotent.
     */
    public synchronized void evict() {
        if (released || evicted) return;
        if (block == null) throw new IllegalStateException("only resident host memory can be evicted");
        if (pager != null) throw new IllegalStateException("offloaded (paged) memory cannot also be evicted");
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

    /** Makes {@code pager} this storage's backing slot and saves the current contents to it. */
    public synchronized void attachPager(Pager pager) {
        if (this.pager != null) throw new IllegalStateException("storage already has a pager");
        if (evicted) throw new IllegalStateException("evicted memory cannot be paged");
        if (deviceBlock != null) throw new IllegalStateException("device memory is offloaded by its backend, not paged by the host");
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
            MemoryTracker.allocated(device, category, bytes); // the account counts resident bytes
        }
        dirty |= forWrite;
    }

    /**
     * The first half of a page-in run on another thread (a prefetch): the block is allocated and counted in the memory
     * account now, on the calling thread, so the account sees the memory from the moment the schedule takes it, however
     * late the copy runs; the returned copy fills it. Nothing may read the block before the copy has run (the offloader
     * waits for it before handing the group out). A no-op copy when the bytes are already in.
     */
    public synchronized Runnable reserveForPageIn() {
        if (pager == null) throw new IllegalStateException("storage has no pager to page in from");
        if (block != null) return () -> {};
        MemorySegment b = HostAllocator.allocate(bytes);
        block = b;
        MemoryTracker.allocated(device, category, bytes);
        Pager from = pager;
        return () -> from.load(b);
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
        MemoryTracker.freed(device, category, bytes);
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
        if (isResident()) { // paged-out or evicted bytes are not in the account
            MemoryTracker.freed(device, category, bytes);
            MemoryTracker.allocated(device, to, bytes);
        }
        category = to;
    }

    /** Hands the block back to the allocator (idempotent). */
    synchronized void release() {
        if (released) return;
        released = true;
        if (deviceBlock != null) {
            deviceBlock.free();
            MemoryTracker.freed(device, category, bytes);
        } else if (block != null) {
            HostAllocator.free(block);
            MemoryTracker.freed(device, category, bytes); // paged-out or evicted bytes were uncounted already
        }
        block = null;
    }
}
