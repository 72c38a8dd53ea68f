package dev.kiln.tensor;

import java.lang.foreign.MemorySegment;

/**
 * A block of memory shared by a tensor and its views: off-heap host memory, or a {@link DeviceBlock} on an
 * accelerator (which the host cannot read: {@link #segment()} refuses it). Once handed back to the
 * allocator the storage is dead: a tensor that outlived its scope fails loudly on use instead of silently
 * reading another tensor's data.
 */
public final class Storage {
    private final MemorySegment block;         // null for device memory
    private final DeviceBlock deviceBlock;     // null for host memory
    private final Device device;
    private MemoryCategory category;
    private boolean released;

    /** Charges the block to this thread's current {@link MemoryCategory}. */
    Storage(MemorySegment block, Device device) {
        this.block = block;
        this.deviceBlock = null;
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
        if (released || block == null) throw unreadable();
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

    /** Bytes of the underlying block. */
    public long byteSize() {
        return block != null ? block.byteSize() : deviceBlock.byteSize();
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
        MemoryTracker.freed(device, category, byteSize());
        MemoryTracker.allocated(device, to, byteSize());
        category = to;
    }

    /** Hands the block back to the allocator (idempotent). */
    void release() {
        if (released) return;
        released = true;
        MemoryTracker.freed(device, category, byteSize());
        if (deviceBlock != null) deviceBlock.free();
        else HostAllocator.free(block);
    }
}
