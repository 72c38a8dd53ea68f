package dev.kiln.plan;

import dev.kiln.tensor.MemoryCategory;

import java.util.ArrayList;
import java.util.List;
import java.util.function.Supplier;

import static dev.kiln.tensor.MemoryCategory.ACTIVATIONS;
import static dev.kiln.tensor.MemoryCategory.GRADIENTS;
import static dev.kiln.tensor.MemoryCategory.OPTIMIZER_STATE;
import static dev.kiln.tensor.MemoryCategory.PARAMETERS;
import static dev.kiln.tensor.MemoryCategory.TEMPORARIES;

/**
 * The memory of one GPT training step, predicted from the shapes alone: a walk of the step's allocations in the
 * order Kiln's CPU code makes them (Gpt.forward, the ops' saved tensors, Tape.backward's interior gradient buffers
 * released node by node, {@link dev.kiln.autograd.Checkpoint}'s recompute scopes), charged to the categories the
 * {@link dev.kiln.tensor.MemoryTracker} uses. Steady state: parameters, their gradients and the optimizer state
 * are live throughout. Not modelled: μP's extra multiplies, LoRA adapters, fake quantisation, layer drop (the plan
 * is for the full model), the size-class cache of the allocator (reported separately as reserved).
 */
final class StepSimulation {
    private final PlanShape s;
    private final Timeline tl = new Timeline();
    private final List<Timeline.Block> stepScope = new ArrayList<>();
    private List<Timeline.Block> scope = stepScope;
    private final long n, nc; // tokens of a micro-batch; its activations' width-C tensor size (elements)

    private StepSimulation(PlanShape s) {
        this.s = s;
        this.n = (long) s.microBatch() * s.seqLen();
        this.nc = n * s.nEmbd();
    }

    /** Peak bytes per category and of the total for one optimizer step of {@code shape}. */
    static Prediction run(PlanShape shape) {
        StepSimulation sim = new StepSimulation(shape);
        sim.persistent();
        for (int i = 0; i < shape.accumSteps(); i++) sim.microStep();
        long[] peaks = new long[MemoryCategory.values().length];
        for (MemoryCategory c : MemoryCategory.values()) peaks[c.ordinal()] = sim.tl.peak(c);
        return new Prediction(peaks, sim.tl.peakTotal());
    }

    private Timeline.Block f32(long elements) {
        Timeline.Block b = tl.f32(elements);
        scope.add(b);
        return b;
    }

    /** An interior gradient buffer: released when its node has run, not at the end of the scope. */
    private Timeline.Block grad(long elements) {
        return tl.f32(elements);
    }

    private void persistent() {
        tl.attribute(PARAMETERS);
        for (long p : s.parameterTensors()) tl.f32(p);
        tl.attribute(GRADIENTS);
        for (long p : s.parameterTensors()) tl.f32(p);
        tl.attribute(OPTIMIZER_STATE);
        for (long p : s.optimizerStateTensors()) tl.f32(p);
        tl.attribute(TEMPORARIES);
    }

    private long probs() {
        return (long) s.microBatch() * s.nHead() * s.seqLen() * s.seqLen();
    }

    private void microStep() {
        int c = s.nEmbd(), t = s.seqLen();
        boolean drop = s.dropout();
        // forward, recorded: activations
        tl.attribute(ACTIVATIONS);
        f32(n);
        f32(n); // idx, targets (int32)
        f32(t); // positions
        f32(nc);
        f32((long) t * c);
        f32(nc); // wte(idx), wpe(pos), their sum
        if (drop) dropoutForward();
        for (int l = 0; l < s.nLayer(); l++) {
            switch (s.recompute()) {
                case NONE -> blockForward(false);
                case SELECTIVE -> blockForward(true);
                case FULL -> checkpointed(() -> blockForward(false));
            }
        }
        layerNormForward();
        f32(n * s.vocab()); // logits
        f32(n);
        f32(n);
        f32(1); // cross-entropy: per-row losses, log-sum-exp, the mean
        // backward: temporaries
        tl.attribute(TEMPORARIES);
        Timeline.Block g;
        if (s.accumSteps() > 1) {
            f32(1); // loss × 1/k
            f32(1); // backward's seed
            g = grad(1); // d(loss) from the scaling node; the seed itself stays until the step ends
        } else {
            f32(1);
            g = null; // the seed is the cross-entropy's incoming gradient: kept, not released
        }
        Timeline.Block dLogits = grad(n * s.vocab());
        tl.free(g);
        Timeline.Block dLnF = grad(nc); // head: dx of the tied wte linear
        tl.free(dLogits);
        Timeline.Block dx = grad(nc); // ln_f
        tl.free(dLnF);
        for (int l = s.nLayer() - 1; l >= 0; l--) {
            dx = switch (s.recompute()) {
                case NONE -> blockBackward(dx, false, true, null);
                case SELECTIVE -> blockBackward(dx, true, true, null);
                case FULL -> checkpointBackward(dx, nc, () -> blockForward(false), (in, gIn) -> blockBackward(gIn, false, false, in));
            };
        }
        if (drop) {
            f32(nc); // dropout backward's product, kept until the step ends
            Timeline.Block d = grad(nc);
            tl.free(dx);
            dx = d;
        }
        Timeline.Block dWte = grad(nc), dPos = grad((long) t * c); // the add's two operands, released by the embeddings
        tl.free(dx);
        tl.free(dPos);
        tl.free(dWte);
        for (Timeline.Block b : stepScope) tl.free(b);
        stepScope.clear();
    }

    private void dropoutForward() {
        f32(nc);
        f32(nc); // mask, output
    }

    private void layerNormForward() {
        f32(nc);
        f32(n);
        f32(n); // output, mean, rstd
    }

    /** One block's forward; {@code selective}: the attention core and GELU + c_proj as checkpointed regions. Returns its output. */
    private Timeline.Block blockForward(boolean selective) {
        boolean drop = s.dropout();
        layerNormForward();
        f32(3 * nc); // c_attn
        if (selective) checkpointed(this::attentionCore);
        else attentionCore();
        f32(nc); // attn c_proj
        if (drop) dropoutForward();
        f32(nc); // residual add
        layerNormForward();
        f32(4 * nc); // c_fc
        if (selective) checkpointed(this::geluProj);
        else geluProj();
        if (drop) dropoutForward();
        return f32(nc); // residual add
    }

    private Timeline.Block attentionCore() {
        Timeline.Block out = f32(nc);
        f32(probs()); // softmax probabilities, saved for backward
        return out;
    }

    private Timeline.Block geluProj() {
        f32(4 * nc); // GELU output
        return f32(nc); // mlp c_proj output
    }

    /** A region run without recording in a scope of its own: all freed but its output, kept as an activation. */
    private void checkpointed(Supplier<Timeline.Block> forward) {
        List<Timeline.Block> outer = scope;
        scope = new ArrayList<>();
        MemoryCategory was = tl.attribute(TEMPORARIES);
        Timeline.Block out = forward.get();
        scope.remove(out);
        for (Timeline.Block b : scope) tl.free(b);
        scope = outer;
        scope.add(out);
        tl.reattribute(out, was);
        tl.attribute(was);
    }

    private interface RegionBackward {
        /** Backward through the recomputed region; {@code inputGrad} is its input's .grad, {@code g} the incoming gradient (not released). */
        void run(Timeline.Block inputGrad, Timeline.Block g);
    }

    /**
     * The backward of a checkpointed region of input size {@code inputElements}: the outer dL/dx buffer, then in a
     * scope of its own the input's .grad, the recomputed forward (activations) and its nested backward; all of it
     * freed, then the incoming gradient {@code g}. Returns dL/dx.
     */
    private Timeline.Block checkpointBackward(Timeline.Block g, long inputElements, Supplier<Timeline.Block> forward, RegionBackward backward) {
        Timeline.Block dx = grad(inputElements);
        List<Timeline.Block> outer = scope;
        scope = new ArrayList<>();
        Timeline.Block inputGrad = f32(inputElements);
        tl.attribute(ACTIVATIONS);
        forward.get();
        tl.attribute(TEMPORARIES);
        backward.run(inputGrad, g);
        for (Timeline.Block b : scope) tl.free(b);
        scope = outer;
        tl.free(g);
        return dx;
    }

    /**
     * Backward of one block from dL/d(output) {@code g}; {@code releaseG}: whether g is freed after its node (not
     * when it is a nested backward's incoming gradient); {@code inputGrad}: the block input's existing .grad, or null
     * to allocate an interior buffer. Returns dL/d(input).
     */
    private Timeline.Block blockBackward(Timeline.Block g, boolean selective, boolean releaseG, Timeline.Block inputGrad) {
        boolean drop = s.dropout();
        Timeline.Block dx2 = grad(nc), dm = grad(nc); // residual add: both operands
        if (releaseG) tl.free(g);
        if (drop) dm = dropoutBackward(dm);
        Timeline.Block dFc;
        if (selective) {
            dFc = checkpointBackward(dm, 4 * nc, this::geluProj, (in, gIn) -> {
                Timeline.Block dGelu = grad(4 * nc); // c_proj's dx; GELU's backward writes into the input's .grad
                tl.free(dGelu);
            });
        } else {
            Timeline.Block dGelu = grad(4 * nc);
            tl.free(dm);
            dFc = grad(4 * nc);
            tl.free(dGelu);
        }
        Timeline.Block dLn2 = grad(nc); // c_fc's dx
        tl.free(dFc);
        tl.free(dLn2); // ln_2 accumulates into dx2
        Timeline.Block dx = inputGrad != null ? inputGrad : grad(nc);
        Timeline.Block da = grad(nc); // residual add
        tl.free(dx2);
        if (drop) da = dropoutBackward(da);
        Timeline.Block dAtt = grad(nc); // attn c_proj's dx
        tl.free(da);
        Timeline.Block dQkv;
        if (selective) {
            dQkv = checkpointBackward(dAtt, 3 * nc, this::attentionCore, (in, gIn) -> attentionScratch());
        } else {
            dQkv = grad(3 * nc);
            attentionScratch();
            tl.free(dAtt);
        }
        Timeline.Block dLn1 = grad(nc); // c_attn's dx
        tl.free(dQkv);
        tl.free(dLn1); // ln_1 accumulates into dx
        return dx;
    }

    /** The general attention kernel's dS scratch (B·H·T·T), freed at once; the small-head kernel uses none. */
    private void attentionScratch() {
        if (s.smallHeadAttention()) return;
        tl.free(tl.f32(probs()));
    }

    /** Dropout's backward: a product kept until the scope ends, and dL/d(input); frees dL/d(output). */
    private Timeline.Block dropoutBackward(Timeline.Block g) {
        f32(nc);
        Timeline.Block d = grad(nc);
        tl.free(g);
        return d;
    }
}
