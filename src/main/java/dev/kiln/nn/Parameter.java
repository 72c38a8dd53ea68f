package dev.kiln.nn;

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

    /** Clears the gradient to zero (keeps the buffer). */
    public void zeroGrad() {
        if (grad() != null) grad().fill(0);
    }
}
