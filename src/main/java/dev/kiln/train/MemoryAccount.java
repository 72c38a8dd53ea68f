package dev.kiln.train;

import com.fasterxml.jackson.databind.node.ObjectNode;
import dev.kiln.nn.Module;
import dev.kiln.nn.Parameter;
import dev.kiln.optim.Optimizer;
import dev.kiln.tensor.MemoryScope;
import dev.kiln.tensor.Tensor;

/**
 * What a run's weights and their training state hold in memory, as printed at the start of a run and written
 * to metrics.jsonl: all parameters, the trainable ones (LoRA freezes the base), the gradient buffers those
 * need, and the optimizer's state tensors (e.g. AdamW's two moments per trainable parameter).
 */
public record MemoryAccount(long parameters, long parameterBytes, long trainableParameters, long gradientBytes, long optimizerStateBytes,
                            String optimizer) {

    public static MemoryAccount of(Module model, Optimizer opt) {
        long n = 0, bytes = 0, trainable = 0, gradBytes = 0, state = 0;
        for (Parameter p : model.parameters()) {
            n += p.numel();
            bytes += p.numel() * p.dtype().byteSize();
            if (p.requiresGrad()) {
                trainable += p.numel();
                gradBytes += p.numel() * p.dtype().byteSize();
            }
        }
        state = stateBytes(opt);
        return new MemoryAccount(n, bytes, trainable, gradBytes, state, opt.name());
    }

    /**
     * What this process holds right now, measured rather than implied: parameters whose memory is live, gradient
     * buffers that exist, optimizer state tensors. Under ZeRO a rank holds only its shard of the last two (and of
     * the first at stage 3); in a single process after a step it equals {@link #of}.
     */
    public static MemoryAccount measured(Module model, Optimizer opt) {
        long n = 0, bytes = 0, trainable = 0, gradBytes = 0, state = 0;
        for (Parameter p : model.parameters()) {
            n += p.numel();
            if (p.storage().isResident()) bytes += p.numel() * p.dtype().byteSize();
            if (p.requiresGrad()) trainable += p.numel();
            if (p.grad() != null) gradBytes += p.grad().numel() * p.grad().dtype().byteSize();
        }
        state = stateBytes(opt);
        return new MemoryAccount(n, bytes, trainable, gradBytes, state, opt.name());
    }

    /**
     * Bytes of the optimizer's state dict. In a scope of its own: a state dict may make small tensors of its own (fp16's
     * loss-scaler scalars, AdamW's per-tensor step counts after growth) which would otherwise stay live as temporaries
     * into the training step's peak (the 128 bytes the account once showed above {@code kiln plan} with fp16).
     */
    private static long stateBytes(Optimizer opt) {
        long state = 0;
        try (var s = MemoryScope.open()) {
            for (Tensor t : opt.stateDict().values()) state += t.numel() * t.dtype().byteSize();
        }
        return state;
    }

    /** Parameter, gradient and optimizer-state bytes together. */
    public long trainingStateBytes() {
        return parameterBytes + gradientBytes + optimizerStateBytes;
    }

    /** Adds the account's fields to a metrics record. */
    public ObjectNode record(ObjectNode rec) {
        return rec.put("params", parameters).put("param_bytes", parameterBytes).put("trainable_params", trainableParameters)
                .put("grad_bytes", gradientBytes).put("optimizer_state_bytes", optimizerStateBytes);
    }

    @Override
    public String toString() {
        return String.format("memory account: %,d of %,d parameters trainable (%.2f%%); weights %,d bytes, gradients %,d bytes, %s state %,d bytes",
                trainableParameters, parameters, 100.0 * trainableParameters / Math.max(1, parameters), parameterBytes, gradientBytes,
                optimizer, optimizerStateBytes);
    }
}
