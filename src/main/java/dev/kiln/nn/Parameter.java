package dev.kiln.nn;

import dev.kiln.tensor.Device;
import dev.kiln.tensor.MemoryCategory;
import dev.kiln.tensor.MemoryScope;
import dev.kiln.tensor.MemoryTracker;
import dev.kiln.tensor.Tensor;

/** A trainable tensor: its own persistent memory (never owned by a step's scope), grad enabled. */
public final class Parameter extends Tensor {

    /** Copies {@code init} into persistent memory, charged to {@link MemoryCategory#PARAMETERS} (the caller still owns {@code init}). */
    public Parameter(Tensor init) {
        super(persistentCopy(init));
        requiresGrad(true);
    }

    private static Tensor persistentCopy(Tensor init) {
        try (var s = MemoryScope.persistent(); var a = MemoryTracker.attribute(MemoryCategory.PARAMETERS)) {
            return init.copy();
        }
    }

    /**
     * Moves this parameter (and its gradient, if it has one) to {@code device} in place, in persistent memory charged to
     * parameters (gradients), so every module holding it sees the moved tensor; PyTorch's {@code module.to(device)}.
     */
    public void moveTo(Device device) {
        try (var s = MemoryScope.persistent(); var a = MemoryTracker.attribute(MemoryCategory.PARAMETERS)) {
            moveStorageTo(device);
        }
        Tensor g = grad();
        if (g != null && !g.device().equals(device)) {
            try (var s = MemoryScope.persistent(); var a = MemoryTracker.attribute(MemoryCategory.GRADIENTS)) {
                setGrad(g.to(device));
            }
            g.release();
        }
    }

    /** Clears the gradient to zero (keeps the buffer). */
    public void zeroGrad() {
        if (grad() != null) grad().fill(0);
    }
}
