package dev.kiln.optim;

import dev.kiln.tensor.Tensor;

import java.util.Map;

/**
 * A first-order optimizer over {@link ParamGroup}s. State tensors live in persistent memory, are keyed
 * "<state>.<parameter name>" (PyTorch's state names where PyTorch has the optimizer), and are saved and
 * restored exactly, so a resumed run continues bit for bit.
 */
public interface Optimizer {
    /** The config name ({@code optim.optimizer}): adamw, adamw8bit, sgd, lamb, lars, lion, adafactor. */
    String name();

    /**
     * One update of every parameter that has a gradient. {@code lr} is the schedule's learning rate;
     * each group multiplies it by its {@link ParamGroup#lrScale()}.
     */
    void step(double lr);

    /** Updates made so far (restored by {@link #loadStateDict}). */
    long stepCount();

    /** Every state tensor by name, sharing memory with the optimizer. */
    Map<String, Tensor> stateDict();

    /**
     * Restores what {@link #stateDict()} returned and the step count. Throws a {@link dev.kiln.KilnException}
     * naming the first missing or mis-shaped tensor.
     */
    void loadStateDict(Map<String, Tensor> state, long stepCount);
}
