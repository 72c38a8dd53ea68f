package dev.kiln.plan;

import dev.kiln.nn.Recompute;
import dev.kiln.nn.models.LlamaConfig;
import dev.kiln.train.config.RunConfig;

import java.util.ArrayList;
import java.util.Comparator;
import java.util.List;

/** Predicts the per-category memory of a run config's training step (see {@link StepSimulation}). */
public final class MemoryPlanner {
    private MemoryPlanner() {}

    /** The shape a resolved run config (model.vocab_size set) trains. */
    public static PlanShape shape(RunConfig cfg) {
        var m = cfg.model();
        if (m.vocab_size() <= 0) throw new IllegalArgumentException("model.vocab_size must be resolved before planning");
        var t = cfg.train();
        return new PlanShape(m.n_layer(), m.n_head(), m.n_embd(), m.block_size(), m.vocab_size(), t.batch_size(), t.grad_accum_steps(),
                m.dropout() > 0, m.bias(), Recompute.parse(t.recompute()), cfg.optim().optimizer(), cfg.optim().momentum(), t.precision(),
                t.offload_params().equals("disk"), t.offload_optimizer().equals("disk"), t.prefetch_depth(), m.llama(),
                m.llama() ? LlamaConfig.of(m).num_key_value_heads() : 0, m.llama() ? LlamaConfig.of(m).intermediate_size() : 0);
    }

    public static Prediction predict(RunConfig cfg) {
        return predict(shape(cfg));
    }

    public static Prediction predict(PlanShape shape) {
        return StepSimulation.run(shape);
    }

    /**
     * Every combination of recompute (none, selective, full), gradient accumulation at the config's tokens per step
     * (micro-batches of batch_size·k/j for every power-of-two j that divides it) and state option, each simulated,
     * cheapest first.
     */
    public static List<PlanRow> combinations(RunConfig cfg, CostModel cost) {
        PlanShape base = shape(cfg);
        int sequences = base.microBatch() * base.accumSteps();
        List<PlanRow> rows = new ArrayList<>();
        // Llama trains without recompute and offload so far: its rows vary accumulation and the optimizer state
        for (Recompute r : base.llama() ? List.of(Recompute.NONE) : List.of(Recompute.values()))
            for (int k = 1; k <= sequences; k *= 2) {
                if (sequences % k != 0) break;
                for (StateOption o : StateOption.all(base)) {
                    if (base.llama() && o.offloadOptimizer()) continue;
                    PlanShape s = o.apply(base.with(r, sequences / k, k));
                    Prediction p = predict(s);
                    rows.add(new PlanRow(r, s.microBatch(), s.accumSteps(), o, o.settings(base), s.implemented(), p.peakBytes(), p.peakTotal(),
                            cost.relativeCost(s, o)));
                }
            }
        rows.sort(Comparator.comparingDouble(PlanRow::relativeCost).thenComparingLong(PlanRow::peakTotal));
        return rows;
    }
}
