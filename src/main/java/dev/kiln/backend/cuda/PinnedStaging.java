package dev.kiln.backend.cuda;

import java.lang.foreign.MemorySegment;

/**
 * A page-locked host buffer through which host↔device copies go, so the copies are truly asynchronous
 * (the DMA engine reads pinned memory while the host and the GPU go on). It grows by doubling and is
 * reused: an event recorded after each copy tells when the buffer may be overwritten.
 */
final class PinnedStaging {
    private final CudaDriver driver;
    private MemorySegment buffer;       // null until first use
    private MemorySegment lastCopy;     // event after the last copy through the buffer, null before any

    PinnedStaging(CudaDriver driver) {
        this.driver = driver;
    }

    private synchronized MemorySegment buffer(long bytes) {
        if (lastCopy != null) driver.synchronizeEvent(lastCopy);   // the previous copy must be done with it
        if (buffer == null || buffer.byteSize() < bytes) {
            if (buffer != null) driver.freeHost(buffer);
            long size = Math.max(1L << 20, Long.highestOneBit(Math.max(1, bytes - 1)) << 1);
            buffer = driver.mallocHost(size);
        }
        if (lastCopy == null) lastCopy = driver.createEvent();
        return buffer;
    }

    /** Copies {@code src} into the staging buffer and enqueues its upload; returns before the upload ends. */
    synchronized void hostToDevice(MemorySegment src, long dst, MemorySegment stream) {
        if (src.byteSize() == 0) return;
        MemorySegment b = buffer(src.byteSize());
        MemorySegment.copy(src, 0, b, 0, src.byteSize());
        driver.copyHtoDAsync(dst, b, src.byteSize(), stream);
        driver.record(lastCopy, stream);
    }

    /** Enqueues the download behind the stream's earlier work, waits for it, and copies into {@code dst}. */
    synchronized void deviceToHost(long src, MemorySegment dst, MemorySegment stream) {
        if (dst.byteSize() == 0) return;
        MemorySegment b = buffer(dst.byteSize());
        driver.copyDtoHAsync(b, src, dst.byteSize(), stream);
        driver.record(lastCopy, stream);
        driver.synchronizeEvent(lastCopy);
        MemorySegment.copy(b, 0, dst, 0, dst.byteSize());
    }
}
