package dev.kiln.dist;

import dev.kiln.optim.Optimizer;
import dev.kiln.tensor.Tensor;

import java.util.LinkedHashMap;
import java.util.Map;
import java.util.Set;
import java.util.function.Supplier;

/**
 * Pipeline parallelism: the optimizer of one stage (over its parameters only; a {@link ShardedOptimizer} when ZeRO-1
 * also shards them across the stage's data-parallel ranks). Its {@link #stateDict} is what this rank holds, so the
 * memory account shows the stage's share; {@link #loadStateDict} takes a whole model's state (a consolidated
 * checkpoint, written at any pp) and keeps the stage's entries; {@link #whole} builds the optimizer over every
 * parameter, into which {@link PipelineParallel#saveFromLead} gathers the stages' states for a checkpoint.
 */
public final class StageOptimizer implements Optimizer {
    private final Optimizer stage;
    private final Set<String> params;
    private final Supplier<Optimizer> whole;

    /**
     * @param stage  the optimizer over {@code params}
     * @param params the names of this stage's trainable parameters
     * @param whole  builds the same optimizer over all the model's trainable parameters (for a checkpoint's layout)
     */
    public StageOptimizer(Optimizer stage, Set<String> params, Supplier<Optimizer> whole) {
        this.stage = stage;
        this.params = Set.copyOf(params);
        this.whole = whole;
    }

    /** The optimizer over this stage's parameters (a ShardedOptimizer under ZeRO-1). */
    public Optimizer stage() {
        return stage;
    }

    /** A new optimizer over every trainable parameter of the model (state zero), laid out as a single process's. */
    Optimizer whole() {
        return whole.get();
    }

    @Override
    public String name() {
        return stage.name();
    }

    @Override
    public void step(double lr) {
        stage.step(lr);
    }

    @Override
    public long stepCount() {
        return stage.stepCount();
    }

    @Override
    public Map<String, Tensor> stateDict() {
        return stage.stateDict();
    }

    /** Keeps the entries ("kind.param", kinds have no dot) of {@code state} that belong to this stage's parameters. */
    @Override
    public void loadStateDict(Map<String, Tensor> state, long stepCount) {
        Map<String, Tensor> mine = new LinkedHashMap<>();
        state.forEach((k, v) -> {
            if (params.contains(parameterOf(k))) mine.put(k, v);
        });
        stage.loadStateDict(mine, stepCount);
    }

    /** The parameter a state entry belongs to: "exp_avg.transformer.wte.weight" → "transformer.wte.weight". */
    static String parameterOf(String stateKey) {
        int dot = stateKey.indexOf('.');
        return dot < 0 ? stateKey : stateKey.substring(dot + 1);
    }
}
