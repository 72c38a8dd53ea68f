package dev.kiln.train;

import dev.kiln.memory.BlockOffloader;
import dev.kiln.optim.Optimizer;
import dev.kiln.tensor.Tensor;

import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * One optimizer step done block by block, for offload: the parameters outside the transformer blocks (embeddings,
 * final norm) have an optimizer of their own, each block another of the same kind and settings over its parameters.
 * A step updates the rest, then each block in turn with its parameters (and, with optimizer offload, its state)
 * paged in — prefetched {@code depth} blocks ahead — and paged out again after its update. Every optimizer here
 * updates each parameter from its own gradient, state and the shared step count, so splitting the update by block
 * changes no bit of it. The state dict is the union of the parts', under the names one optimizer would use.
 */
public final class OffloadedOptimizer implements Optimizer {
    private final Optimizer rest;
    private final List<Optimizer> blocks;
    private final BlockOffloader params, state; // either may be null (not offloaded)

    /**
     * {@code stateTier}: when not null, each block optimizer's state tensors are moved into an offloader made by it
     * (group i = block i's state).
     */
    OffloadedOptimizer(Optimizer rest, List<Optimizer> blocks, BlockOffloader params,
                       java.util.function.Function<List<List<Tensor>>, BlockOffloader> stateTier) {
        this.rest = rest;
        this.blocks = List.copyOf(blocks);
        this.params = params;
        if (stateTier != null) {
            List<List<Tensor>> groups = new ArrayList<>();
            for (Optimizer o : blocks) groups.add(new ArrayList<>(o.stateDict().values()));
            this.state = stateTier.apply(groups);
        } else {
            this.state = null;
        }
    }

    /** The optimizer-state offloader, or null. */
    BlockOffloader stateOffloader() {
        return state;
    }

    @Override
    public String name() {
        return rest.name();
    }

    @Override
    public void step(double lr) {
        rest.step(lr);
        for (int i = 0; i < blocks.size(); i++) {
            if (params != null) {
                params.acquire(i, true);
                params.prefetchAhead(i, 1);
            }
            if (state != null) {
                state.acquire(i, true);
                state.prefetchAhead(i, 1);
            }
            blocks.get(i).step(lr);
            if (params != null) params.release(i);
            if (state != null) state.release(i);
        }
    }

    @Override
    public long stepCount() {
        return rest.stepCount();
    }

    @Override
    public Map<String, Tensor> stateDict() {
        Map<String, Tensor> out = new LinkedHashMap<>(rest.stateDict());
        for (Optimizer o : blocks) out.putAll(o.stateDict());
        return out;
    }

    /** Each part restores its own tensors from {@code state} (they look theirs up by name). */
    @Override
    public void loadStateDict(Map<String, Tensor> state, long stepCount) {
        rest.loadStateDict(state, stepCount);
        for (Optimizer o : blocks) o.loadStateDict(state, stepCount);
    }
}
