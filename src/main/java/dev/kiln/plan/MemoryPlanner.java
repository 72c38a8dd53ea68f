package dev.kiln.plan;

import dev.kiln.nn.Recompute;
import dev.kiln.train.config.RunConfig;

/** Predicts the per-category memory of a run config's training step (see {@link StepSimulation}). */
public final class MemoryPlanner {
    private MemoryPlanner() {}

    /** The shape a resolved run config (model.vocab_size set) trains. */
    public static PlanShape shape(RunConfig cfg) {
        var m = cfg.model();
        if (m.vocab_size() <= 0) throw new IllegalArgumentException("model.vocab_size must be resolved before planning");
        var t = cfg.train();
        return new PlanShape(m.n_layer(), m.n_head(), m.n_embd(), m.block_size(), m.vocab_size(), t.batch_size(), t.grad_accum_steps(),
                m.dropout() > 0, m.bias(), Recompute.parse(t.recompute()), cfg.optim().optimizer(), cfg.optim().momentum());
    }

    public static Prediction predict(RunConfig cfg) {
        return predict(shape(cfg));
    }

    public static Prediction predict(PlanShape shape) {
        return StepSimulation.run(shape);
    }
}
