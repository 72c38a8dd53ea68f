package dev.kiln.backend;

import dev.kiln.backend.cuda.CudaRuntime;
import dev.kiln.tensor.Device;

/** What a run may train on, checked before it starts. */
public final class Devices {
    private Devices() {}

    /**
     * Returns if a run can train on {@code device}, having opened it (so tensors can be made there); otherwise throws a
     * one-line {@link dev.kiln.KilnException}: without a GPU, driver or CUDA library it says what was looked for
     * ({@link dev.kiln.backend.cuda.CudaUnavailableException}). What of a config runs on a GPU is the trainer's check.
     */
    public static void requireTrainable(Device device) {
        if (device.kind() == Device.Kind.CPU) return;
        CudaRuntime.get(device.index());
    }

    /** How many GPUs the driver of the opened {@code device} sees (all of them, not only those free). */
    public static int cudaDeviceCount(Device device) {
        return CudaRuntime.get(device.index()).driver().deviceCount();
    }
}
