package dev.kiln.tensor;

import java.lang.foreign.MemorySegment;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;

/**
 * What the tensor layer needs from a device whose memory the host cannot address: allocation, copies and fills.
 * The backend of such a device implements it and registers it when the device is opened, so that {@link Tensor}'s
 * own methods ({@code empty(device, …)}, {@code contiguous()}, {@code copyFrom}, {@code fill}, {@code to(device)},
 * {@code item()}) work on device tensors without the tensor layer knowing about CUDA (dependencies point down).
 */
public interface DeviceTensors {

    /** An uninitialised contiguous tensor in this device's memory, owned by the current {@link MemoryScope} if any. */
    Tensor empty(DType dtype, int... shape);

    /**
     * dst = src (same shape) where at least one of them is on this device: host↔device or device↔device, with
     * dtype conversion. Throws an IllegalArgumentException naming what it cannot do.
     */
    void copy(Tensor src, Tensor dst);

    /** Sets every element of a tensor of this device to {@code value}. */
    void fill(Tensor t, double value);

    /** Copies {@code host.byteSize()} bytes into the contiguous device tensor {@code dst} (host memory, not a tensor). */
    void upload(MemorySegment host, Tensor dst);

    /** Copies the contiguous device tensor {@code src} into {@code host} (its byte size), waiting for the device. */
    void download(Tensor src, MemorySegment host);

    /** The open devices' implementations: the same state as the backends' table of open devices, kept in step by them. */
    final class Registry {
        private static final Map<Device, DeviceTensors> OPEN = new ConcurrentHashMap<>();

        private Registry() {}
    }

    /** Makes {@code tensors} serve {@code device} ({@code null} forgets it): called by a backend when it opens or closes a device. */
    static void register(Device device, DeviceTensors tensors) {
        if (device.kind() == Device.Kind.CPU) throw new IllegalArgumentException("the host needs no device tensors");
        if (tensors == null) Registry.OPEN.remove(device);
        else Registry.OPEN.put(device, tensors);
    }

    /** The implementation serving {@code device}; fails in one line when the device was never opened. */
    static DeviceTensors of(Device device) {
        DeviceTensors d = Registry.OPEN.get(device);
        if (d == null)
            throw new IllegalStateException(device + " is not open: open its backend first (e.g. Backend.of(device)) before creating tensors on it");
        return d;
    }
}
