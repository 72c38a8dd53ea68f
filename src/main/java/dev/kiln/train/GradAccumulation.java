package dev.kiln.train;

import dev.kiln.data.Batch;
import dev.kiln.data.BatchSampler;
import dev.kiln.nn.models.CausalLm;
import dev.kiln.nn.models.Gpt;
import dev.kiln.optim.GradClip;
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
        double sum = 0;
        for (Batch mb : microBatches) {
            double loss = TrainStep.forwardBackward(model, mb, labelSmoothing, zLoss, selectFraction, 1.0 / k);
            if (!Double.isFinite(loss)) {
                model.zeroGrad(); // drop what the earlier micro-batches accumulated
                return new TrainStep.StepResult(loss, Double.NaN);
            }
            sum += loss;
        }
        double norm = GradClip.clip(model.parameters(), gradClip);
        if (Double.isFinite(norm)) opt.step(lr);
        model.zeroGrad();
        return new TrainStep.StepResult(sum / k, norm);
    }

    /**
     * Accumulation under mixed precision: the weights are rounded to half precision once for the step, each micro-batch's
     * loss is backpropagated × scale/k (fp16's loss scale; 1 for bf16), and after each micro-batch the accumulated
     * gradients are rounded as a half-precision gradient buffer would hold the running sum. After the last one the
     * masters come back and the accumulated gradient is unscaled and checked: an inf/NaN anywhere skips the whole step
     * and backs the scale off, as one overflowing step does.
     */
    private static TrainStep.StepResult mixedPrecisionStep(CausalLm model, MixedPrecisionOptimizer mp, List<Batch> microBatches, double lr,
                                                           double gradClip, double labelSmoothing, double zLoss, double selectFraction) {
        int k = microBatches.size();
        double sum = 0;
        boolean skip;
        mp.beginStep();
        try {
            for (Batch mb : microBatches) {
                double loss = TrainStep.forwardBackward(model, mb, labelSmoothing, zLoss, selectFraction, mp.lossScale() / k);
                if (!Double.isFinite(loss)) {
                    model.zeroGrad(); // drop what the earlier micro-batches accumulated
                    return new TrainStep.StepResult(loss, Double.NaN);
                }
                mp.roundGradients();
                sum += loss;
            }
        } finally {
            skip = mp.endBackward(); // restores the fp32 master weights whatever happened
        }
        if (skip) {
            model.zeroGrad();
            return new TrainStep.StepResult(sum / k, Double.POSITIVE_INFINITY, true);
        }
        double norm = GradClip.clip(model.parameters(), gradClip);
        if (Double.isFinite(norm)) mp.step(lr);
        model.zeroGrad();
        return new TrainStep.StepResult(sum / k, norm);
    }
}
