package dev.kiln.backend;

import dev.kiln.KilnException;
import dev.kiln.backend.cuda.CudaRuntime;
import dev.kiln.tensor.Device;

/** What a run may train on, checked before it starts. */
public final class Devices {
    private Devices() {}

    /**
     * Returns if a run can train on {@code device}; otherwise throws a one-line {@link KilnException}: without a
     * GPU, driver or CUDA library it says what was looked for ({@link dev.kiln.backend.cuda.CudaUnavailableException});
     * with one, that GPU training is not wired yet (the ops are, {@code kiln gpu-check --ops} tests them; the trainer's placement is not).
     */
    public static void requireTrainable(Device device) {
        if (device.kind() == Device.Kind.CPU) return;
        CudaRuntime rt = CudaRuntime.get(device.index());
        throw new KilnException("training on " + rt.device() + " (" + rt.name() + ") is not available yet: every op runs on the GPU "
                + "(kiln gpu-check --ops) but the trainer does not place the model, optimizer state and batches there; use --device cpu");
    }
}
