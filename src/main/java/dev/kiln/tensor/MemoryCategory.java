package dev.kiln.tensor;

import java.util.Locale;

/**
 * What a block of tensor memory is for. Every allocation is attributed to exactly one category
 * (see {@link MemoryTracker#attribute}); unattributed ones are {@link #TEMPORARIES}.
 */
public enum MemoryCategory {
    /** Model weights. */
    PARAMETERS,
    /** The parameters' .grad buffers (they live across steps). */
    GRADIENTS,
    /** Optimizer state (moments, factored statistics) and weight averages. */
    OPTIMIZER_STATE,
    /** What a forward that autograd records allocates: held until backward has read it. */
    ACTIVATIONS,
    /** Everything else: backward's interior gradients, evaluation, no-grad forwards, scratch. */
    TEMPORARIES,
    /** Buffers of collectives (all-reduce, gather) once data parallelism allocates them. */
    COMMUNICATION;

    /** The lower-case name used in metrics.jsonl and {@code kiln plan} (e.g. optimizer_state). */
    public String key() {
        return name().toLowerCase(Locale.ROOT);
    }
}
