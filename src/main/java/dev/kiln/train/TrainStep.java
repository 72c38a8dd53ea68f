package dev.kiln.train;

import dev.kiln.autograd.Tape;
import dev.kiln.data.Batch;
import dev.kiln.data.BatchSampler;
import dev.kiln.dist.DataParallel;
import dev.kiln.nn.models.CausalLm;
import dev.kiln.ops.Arith;
import dev.kiln.optim.GradClip;
import dev.kiln.optim.MixedPrecisionOptimizer;
import dev.kiln.optim.Optimizer;
import dev.kiln.tensor.MemoryCategory;
import dev.kiln.tensor.MemoryScope;
import dev.kiln.tensor.MemoryTracker;
import dev.kiln.tensor.Tensor;

import java.util.Comparator;
import java.util.stream.IntStream;

/**
 * One optimizer step: forward, backward (of the hardest rows only under selective backprop), clip,
 * update. Every step runs in its own {@link MemoryScope}, so activations return to the allocator's
 * cache. Used by the {@link Trainer} and by {@link Bench}, so the benchmark times exactly what trains.
 */
public final class TrainStep {
    private TrainStep() {}

    /**
     * Loss and pre-clipping gradient norm of one step; when either is not finite, nothing was updated. {@code overflow}:
     * an fp16 step skipped by loss scaling (its gradients overflowed; the scale was backed off), a normal event, not a fault.
     */
    public record StepResult(double loss, double gradNorm, boolean overflow) {
        public StepResult(double loss, double gradNorm) {
            this(loss, gradNorm, false);
        }
    }

    /** {@link #step(CausalLm, Optimizer, BatchSampler, int, double, double, double, double)} with the sampler's batch size and plain cross-entropy. */
    public static StepResult step(CausalLm model, Optimizer opt, BatchSampler sampler, double lr, double gradClip) {
        return step(model, opt, sampler, sampler.batchSize(), lr, gradClip, 0, 0);
    }

    /** {@link #step(CausalLm, Optimizer, Batch, double, double, double, double, double)} on the sampler's next batch of {@code b} sequences, no selection. */
    public static StepResult step(CausalLm model, Optimizer opt, BatchSampler sampler, int b, double lr, double gradClip,
                                  double labelSmoothing, double zLoss) {
        return step(model, opt, sampler.next(b), lr, gradClip, labelSmoothing, zLoss, 1.0);
    }

    /**
     * One optimizer step on {@code batch}: forward (cross-entropy with label smoothing and z-loss as given) →
     * backward (of the hardest rows only, with selective backprop: see {@link #forwardBackward}) → clip → update.
     * A non-finite loss or gradient norm returns before the update, leaving parameters and optimizer state untouched.
     * Under mixed precision ({@link MixedPrecisionOptimizer}) forward and backward see half-precision weights, the loss
     * is scaled (fp16), and an overflowing step is skipped with {@code overflow} set.
     */
    public static StepResult step(CausalLm model, Optimizer opt, Batch batch, double lr, double gradClip,
                                  double labelSmoothing, double zLoss, double selectFraction) {
        MixedPrecisionOptimizer mp = opt instanceof MixedPrecisionOptimizer m ? m : null;
        double loss;
        if (mp == null) {
            loss = forwardBackward(model, batch, labelSmoothing, zLoss, selectFraction, 1.0);
        } else {
            mp.beginStep();
            boolean skip = false;
            try {
                loss = forwardBackward(model, batch, labelSmoothing, zLoss, selectFraction, mp.lossScale());
            } finally {
                skip = mp.endBackward(); // restores the fp32 master weights whatever happened
            }
            if (skip && Double.isFinite(loss)) {
                model.zeroGrad();
                return new StepResult(loss, Double.POSITIVE_INFINITY, true);
            }
        }
        if (!Double.isFinite(loss)) return new StepResult(loss, Double.NaN);
        double norm = clip(model, gradClip);
        if (Double.isFinite(norm)) opt.step(lr);
        model.zeroGrad();
        return new StepResult(loss, norm);
    }

    /**
     * Global-norm clipping of {@code model}'s gradients to {@code gradClip} (0: none), returning the pre-clipping norm:
     * under tensor parallelism the sharded gradients' squares are summed over the shards, at ZeRO-2 over the
     * data-parallel ranks; otherwise every rank holds the whole gradient.
     */
    static double clip(CausalLm model, double gradClip) {
        DataParallel dp = DataParallel.active();
        var tp = dev.kiln.dist.TensorParallel.active();
        return dp != null ? dp.clip(model.parameters(), gradClip) // (dp × tp: over dp, then over the shards)
                : tp != null ? tp.clip(model.parameters(), gradClip) : GradClip.clip(model.parameters(), gradClip);
    }

    /**
     * Forward and backward of one batch, leaving the gradients in the parameters; returns the loss that was
     * backpropagated (when it is not finite, nothing was: the gradients are zero). With {@code selectFraction < 1},
     * selective backprop (Jiang et al. 2019): the whole batch is first forwarded without grad to get each
     * sequence's loss, then only the {@link #selectCount} hardest sequences are forwarded again and backpropagated,
     * as a batch of their own (in batch order), so the gradient is exactly that of a batch made of those rows.
     */
    public static double forwardBackward(CausalLm model, Batch batch, double labelSmoothing, double zLoss, double selectFraction) {
        return forwardBackward(model, batch, labelSmoothing, zLoss, selectFraction, 1.0);
    }

    /**
     * {@link #forwardBackward(CausalLm, Batch, double, double, double)} with the backpropagated loss multiplied by
     * {@code gradScale} (gradient accumulation's 1/k, fp16 loss scaling's scale); returns the unscaled loss.
     */
    public static double forwardBackward(CausalLm model, Batch batch, double labelSmoothing, double zLoss, double selectFraction, double gradScale) {
        Batch trained = selectFraction < 1 ? batch.rows(hardestRows(model, batch, selectCount(batch.batchSize(), selectFraction))) : batch;
        int b = trained.batchSize(), t = trained.blockSize();
        try (var scope = MemoryScope.open()) {
            Tensor lossT;
            try (var a = MemoryTracker.attribute(MemoryCategory.ACTIVATIONS)) {
                lossT = model.loss(model.ids(trained.inputs(), b, t), model.ids(trained.targets(), b, t), labelSmoothing, zLoss);
            }
            double loss = lossT.item();
            DataParallel dp = DataParallel.active(); // data parallel: the global batch's loss, and gradients averaged across ranks
            if (dp != null) loss = dp.meanLoss(loss);
            if (!Double.isFinite(loss)) {
                Tape.clear();
                model.zeroGrad();
                return loss;
            }
            if (dp != null) dp.beforeBackward();
            Tape.backward(gradScale == 1.0 ? lossT : Arith.mul(lossT, gradScale));
            if (dp != null) dp.afterBackward();
            return loss;
        }
    }

    /** Sequences selective backprop keeps of a batch of {@code b}: round(f·b), at least 1. */
    public static int selectCount(int b, double fraction) {
        return (int) Math.max(1, Math.min(b, Math.round(fraction * b)));
    }

    /**
     * The {@code k} rows of {@code batch} with the highest mean loss (plain cross-entropy, eval mode so no dropout
     * RNG is drawn), ties to the lower row, returned in ascending row order.
     */
    public static int[] hardestRows(CausalLm model, Batch batch, int k) {
        int b = batch.batchSize(), t = batch.blockSize();
        double[] losses;
        boolean was = model.isTraining();
        model.eval();
        try (var scope = MemoryScope.open()) {
            losses = model.sequenceLosses(model.ids(batch.inputs(), b, t), model.ids(batch.targets(), b, t));
        } finally {
            model.train(was);
        }
        double[] l = losses;
        return IntStream.range(0, b).boxed()
                .sorted(Comparator.<Integer>comparingDouble(i -> -l[i]).thenComparingInt(i -> i))
                .limit(k).mapToInt(Integer::intValue).sorted().toArray();
    }
}
