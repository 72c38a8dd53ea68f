package dev.kiln.train;

import dev.kiln.data.Batch;
import dev.kiln.data.BatchSampler;
import dev.kiln.dist.DataParallel;
import dev.kiln.nn.models.CausalLm;
import dev.kiln.nn.models.Gpt;
import dev.kiln.optim.MixedPrecisionOptimizer;
import dev.kiln.optim.Optimizer;

import java.util.ArrayList;
import java.util.List;

/**
 * Gradient accumulation ({@code train.grad_accum_steps} = k): one optimizer step over k micro-batches of
 * {@code batch_size} sequences each, drawn one after another from the sampler (nanoGPT's convention: a step trains on
 * k·batch_size·T tokens, and memory is that of one micro-batch). Each micro-batch's loss is backpropagated × 1/k, so
 * the summed gradient is that of the mean loss over all k·batch_size sequences: the update equals one step on a
 * k-times-larger batch up to fp32 rounding. Clipping and the update see the accumulated gradient only; under fp16 so
 * does the overflow check (one inf in any micro-batch skips the whole step).
 * <p>Under data parallelism each rank accumulates its rows of every micro-batch locally and only the last micro-batch's
 * backward reduces the gradients in buckets ({@link DataParallel#noSync}, PyTorch's no_sync), so a step communicates
 * the same bytes as without accumulation; the earlier micro-batches' losses are reduced with the last one's, so every
 * rank decides together whether the step is skipped.
 * <p>Under tensor parallelism every micro-batch runs its tp collectives (they are part of forward and backward); only
 * the data-parallel reduction waits for the last micro-batch, and the clipping norm sums the shards' squares.
 * Pipeline parallelism does not come here: it runs the k micro-batches' pipeline micro-batches in one schedule
 * ({@link dev.kiln.dist.PipelineParallel#step}).
 */
public final class GradAccumulation {
    private GradAccumulation() {}

    /** The k micro-batches of one step, in sampler order (all of {@code batch} sequences of {@code seqLen}). */
    public static List<Batch> draw(BatchSampler sampler, int k, int batch, int seqLen, double competence) {
        List<Batch> out = new ArrayList<>(k);
        for (int i = 0; i < k; i++) out.add(sampler.next(batch, seqLen, competence));
        return out;
    }

    /**
     * One optimizer step over {@code microBatches}; the loss reported is their mean. A non-finite micro-batch loss
     * or gradient norm returns before the update (gradients zeroed), as {@link TrainStep#step} does. One micro-batch
     * is exactly {@link TrainStep#step}.
     */
    public static TrainStep.StepResult step(CausalLm model, Optimizer opt, List<Batch> microBatches, double lr, double gradClip,
                                            double labelSmoothing, double zLoss, double selectFraction) {
        int k = microBatches.size();
        if (k == 1) return TrainStep.step(model, opt, microBatches.getFirst(), lr, gradClip, labelSmoothing, zLoss, selectFraction);
        if (opt instanceof MixedPrecisionOptimizer mp) return mixedPrecisionStep(model, mp, microBatches, lr, gradClip, labelSmoothing, zLoss, selectFraction);
        DataParallel dp = DataParallel.active();
        double sum = 0;
        try {
            for (int i = 0; i < k; i++) {
                boolean local = dp != null && i < k - 1; // no_sync: a local loss, reduced with the last micro-batch's
                if (dp != null) dp.noSync(local);
                double loss = TrainStep.forwardBackward(model, microBatches.get(i), labelSmoothing, zLoss, selectFraction, 1.0 / k);
                if (local) continue;
                if (!Double.isFinite(loss)) {
                    model.zeroGrad(); // drop what the earlier micro-batches accumulated
                    return new TrainStep.StepResult(loss, Double.NaN);
                }
                sum += dp != null ? loss * k : loss; // data parallel: the last loss is already the mean over all k
            }
        } finally {
            if (dp != null) dp.noSync(false);
        }
        double norm = TrainStep.clip(model, gradClip); // tensor parallel: over the shards
        if (Double.isFinite(norm)) opt.step(lr);
        model.zeroGrad();
        return new TrainStep.StepResult(sum / k, norm);
    }

    /**
     * Accumulation under mixed precision: the weights are rounded to half precision once for the step, each micro-batch's
     * loss is backpropagated × scale/k (fp16's loss scale; 1 for bf16), and after each micro-batch the accumulated
     * gradients are rounded as a half-precision gradient buffer would hold the running sum. After the last one the
     * masters come back and the accumulated gradient is unscaled and checked: an inf/NaN anywhere skips the whole step
     * and backs the scale off, as one overflowing step does. Under data parallelism the running sum is rounded only
     * once it has been reduced (after the last micro-batch): rounding each rank's partial sums would round before the
     * reduction, which the single process never does.
     */
    private static TrainStep.StepResult mixedPrecisionStep(CausalLm model, MixedPrecisionOptimizer mp, List<Batch> microBatches, double lr,
                                                           double gradClip, double labelSmoothing, double zLoss, double selectFraction) {
        int k = microBatches.size();
        DataParallel dp = DataParallel.active();
        double sum = 0;
        boolean skip;
        mp.beginStep();
        try {
            for (int i = 0; i < k; i++) {
                boolean local = dp != null && i < k - 1; // no_sync, as in step()
                if (dp != null) dp.noSync(local);
                double loss = TrainStep.forwardBackward(model, microBatches.get(i), labelSmoothing, zLoss, selectFraction, mp.lossScale() / k);
                if (local) continue;
                if (!Double.isFinite(loss)) {
                    model.zeroGrad(); // drop what the earlier micro-batches accumulated
                    return new TrainStep.StepResult(loss, Double.NaN);
                }
                mp.roundGradients();
                sum += dp != null ? loss * k : loss;
            }
        } finally {
            if (dp != null) dp.noSync(false);
            skip = mp.endBackward(); // restores the fp32 master weights whatever happened
        }
        if (skip) {
            model.zeroGrad();
            return new TrainStep.StepResult(sum / k, Double.POSITIVE_INFINITY, true);
        }
        double norm = TrainStep.clip(model, gradClip); // tensor parallel: over the shards
        if (Double.isFinite(norm)) mp.step(lr);
        model.zeroGrad();
        return new TrainStep.StepResult(sum / k, norm);
    }
}
