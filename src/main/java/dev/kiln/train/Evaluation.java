package dev.kiln.train;

import dev.kiln.autograd.Tape;
import dev.kiln.data.Batch;
import dev.kiln.data.BatchSampler;
import dev.kiln.data.TokenShard;
import dev.kiln.dist.PipelineParallel;
import dev.kiln.nn.models.CausalLm;
import dev.kiln.tensor.MemoryScope;
import dev.kiln.tensor.Tensor;

import java.util.LinkedHashMap;
import java.util.Map;

/** Validation loss: of the model's weights, or of other weights (an average) put in their place for the evaluation. */
public final class Evaluation {
    private Evaluation() {}

    /**
     * {@link #evaluate} with the model's weights temporarily replaced by {@code weights} (an average),
     * restored afterwards.
     */
    public static double evaluateWith(CausalLm model, Map<String, Tensor> weights, TokenShard shard, int b, int t, int iters, long seed) {
        var params = model.namedParameters();
        try (var scope = MemoryScope.open()) {
            Map<String, Tensor> saved = new LinkedHashMap<>();
            params.forEach((n, p) -> {
                saved.put(n, p.copy());
                p.copyFrom(weights.get(n));
            });
            try {
                return evaluate(model, shard, b, t, iters, seed);
            } finally {
                params.forEach((n, p) -> p.copyFrom(saved.get(n)));
            }
        }
    }

    /** Mean loss over {@code iters} validation batches drawn with a fixed seed (the same batches every time). */
    public static double evaluate(CausalLm model, TokenShard shard, int b, int t, int iters, long seed) {
        BatchSampler s = new BatchSampler(shard, b, t, seed);
        boolean was = model.isTraining();
        model.eval();
        double sum = 0;
        try (var ng = Tape.noGradScope()) {
            for (int i = 0; i < iters; i++) {
                try (var scope = MemoryScope.open()) {
                    Batch batch = s.next();
                    PipelineParallel pipe = PipelineParallel.active(); // pipeline parallel: through the stages
                    sum += pipe != null ? pipe.evalLoss(batch) : model.loss(model.ids(batch.inputs(), b, t), model.ids(batch.targets(), b, t)).item();
                }
            }
        } finally {
            model.train(was);
        }
        return sum / iters;
    }
}
