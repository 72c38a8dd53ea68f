package dev.kiln.dist;

import dev.kiln.optim.Optimizer;
import dev.kiln.tensor.MemoryScope;
import dev.kiln.tensor.Tensor;

import java.lang.foreign.MemorySegment;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.function.Supplier;

/**
 * ZeRO stage ≥ 1: an optimizer over the parameters this rank owns (its state is this rank's shard), followed by
 * the all-gather of the updated parameters. {@link #stateDict} is the shard, so the memory account shows what this
 * rank holds; {@link #consolidated} gathers the whole state on rank 0 for a checkpoint, and {@link #loadStateDict}
 * takes a whole (consolidated) state and keeps this rank's part, so a checkpoint resumes at any number of ranks.
 */
public final class ShardedOptimizer implements Optimizer {
    private final Optimizer shard;
    private final DataParallel dp;
    private final Supplier<Optimizer> unsharded;

    /**
     * @param shard     the optimizer over this rank's parameters
     * @param unsharded builds the same optimizer over all trainable parameters (rank 0, for a checkpoint's layout)
     */
    public ShardedOptimizer(Optimizer shard, DataParallel dp, Supplier<Optimizer> unsharded) {
        this.shard = shard;
        this.dp = dp;
        this.unsharded = unsharded;
    }

    @Override
    public String name() {
        return shard.name();
    }

    @Override
    public void step(double lr) {
        shard.step(lr);
        dp.gatherParameters();
    }

    @Override
    public long stepCount() {
        return shard.stepCount();
    }

    /** This rank's shard of the state. */
    @Override
    public Map<String, Tensor> stateDict() {
        return shard.stateDict();
    }

    /** Keeps the entries of {@code state} that belong to this rank's parameters ("kind.param", kinds have no dot). */
    @Override
    public void loadStateDict(Map<String, Tensor> state, long stepCount) {
        Map<String, Tensor> mine = new LinkedHashMap<>();
        var owned = dp.optimizerShard(dp.parameters()).keySet();
        state.forEach((k, v) -> {
            int dot = k.indexOf('.');
            if (dot > 0 && owned.contains(k.substring(dot + 1))) mine.put(k, v);
        });
        shard.loadStateDict(mine, stepCount);
    }

    /** A whole optimizer state gathered for saving; {@link #close} frees it. */
    public interface Consolidated extends Optimizer, AutoCloseable {
        @Override
        void close();
    }

    /**
     * The whole optimizer state, on rank 0 (collective: every rank calls it; the others get null): rank 0 lays out
     * the unsharded optimizer's tensors and receives each from the rank that owns its parameter, in that order.
     */
    public Consolidated consolidated() {
        ProcessGroup g = dp.group();
        ParameterOwners owners = dp.owners();
        if (g.rank() != 0) {
            int tag = 0;
            for (var e : shard.stateDict().entrySet()) {
                MemorySegment data = FlatF32.data(e.getValue().contiguous(), e.getKey());
                g.send(data, (int) e.getValue().numel(), 0, tag++);
            }
            return null;
        }
        Optimizer all;
        try (var s = MemoryScope.persistent()) {
            all = unsharded.get();
        }
        Map<String, Tensor> own = shard.stateDict();
        int[] tags = new int[g.size()];
        for (var e : all.stateDict().entrySet()) {
            String k = e.getKey();
            int from = owners.owner(k.substring(k.indexOf('.') + 1));
            if (from == 0) e.getValue().copyFrom(own.get(k));
            else g.recv(FlatF32.data(e.getValue(), k), (int) e.getValue().numel(), from, tags[from]++);
        }
        Map<String, Tensor> state = all.stateDict();
        long steps = shard.stepCount();
        String name = shard.name();
        return new Consolidated() {
            @Override
            public void close() {
                state.values().forEach(Tensor::release);
            }

            @Override
            public String name() {
                return name;
            }

            @Override
            public void step(double lr) {
                throw new UnsupportedOperationException("a consolidated optimizer state is for saving only");
            }

            @Override
            public long stepCount() {
                return steps;
            }

            @Override
            public Map<String, Tensor> stateDict() {
                return state;
            }

            @Override
            public void loadStateDict(Map<String, Tensor> s, long c) {
                throw new UnsupportedOperationException("a consolidated optimizer state is for saving only");
            }
        };
    }
}
