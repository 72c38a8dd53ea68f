package dev.kiln.tensor;

/**
 * Memory on an accelerator, owned by that device's allocator: an address the host must not dereference,
 * a size, and the way back to the allocator. {@link Storage} holds one for tensors not on the host.
 */
public interface DeviceBlock {
    /** The device address of the first byte. */
    long address();

    long byteSize();

    /** Returns the block to its allocator (called once, by {@link Storage}). */
    void free();
}
