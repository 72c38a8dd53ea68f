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
 * The memory of one GPT or Llama training step, predicted from the shapes alone: a walk of the step's allocations in the
 * order Kiln's CPU code makes them (Gpt.forward, the ops' saved tensors, Tape.backward's interior gradient buffers
 * released node by node, {@link dev.kiln.autograd.Checkpoint}'s recompute scopes), charged to the categories the
 * {@link dev.kiln.tensor.MemoryTracker} uses. Steady state: parameters, their gradients and the optimizer state
 * are live throughout, except offloaded blocks' parameters and optimizer state, paged in and out on
 * {@link dev.kiln.train.Offload}'s schedule (forward, backward, and the block-by-block update). Llama has a walk of its
 * own ({@link #llamaMicroStep}). Not modelled: μP's extra multiplies, LoRA adapters, fake quantisation, layer drop
 * (the plan is for the full model), the size-class cache of the allocator (reported separately as reserved).
 */
final class StepSimulation {
    private final PlanShape s;
    private final Timeline tl = new Timeline();
    private final List<Timeline.Block> stepScope = new ArrayList<>();
    private List<Timeline.Block> scope = stepScope;
    private final long n, nc; // tokens of a micro-batch; its activations' width-C tensor size (elements)
    private final Paging params, state; // offloaded blocks' parameters / optimizer state, or null

    private StepSimulation(PlanShape s) {
        this.s = s;
        this.n = (long) s.microBatch() * s.seqLen();
        this.nc = n * s.nEmbd();
        this.params = s.offloadParams() ? new Paging(blockParameterBytes(s), PARAMETERS) : null;
        this.state = s.offloadOptimizer() ? new Paging(blockStateBytes(s), OPTIMIZER_STATE) : null;
    }

    /** Peak bytes per category and of the total for one optimizer step of {@code shape}. */
    static Prediction run(PlanShape shape) {
        StepSimulation sim = new StepSimulation(shape);
        sim.persistent();
        for (int i = 0; i < shape.accumSteps(); i++) sim.microStep();
        sim.offloadedUpdate();
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

    /**
     * Parameters, gradients, optimizer state and (mixed precision) the fp32 master copies, live throughout; offloaded
     * blocks' parameters or optimizer state start paged out ({@link Paging}).
     */
    private void persistent() {
        tl.attribute(PARAMETERS);
        for (long[] p : s.restParameterShapes()) tl.f32(PlanShape.elements(p));
        if (!s.offloadParams()) for (int l = 0; l < s.nLayer(); l++) for (long[] p : s.blockParameterShapes()) tl.f32(PlanShape.elements(p));
        tl.attribute(GRADIENTS);
        for (long p : s.parameterTensors()) tl.f32(p);
        tl.attribute(OPTIMIZER_STATE);
        for (long[] p : s.restParameterShapes()) for (long bytes : s.stateBytes(p)) tl.alloc(bytes);
        if (!s.offloadOptimizer()) for (int l = 0; l < s.nLayer(); l++) for (long[] p : s.blockParameterShapes()) for (long bytes : s.stateBytes(p)) tl.alloc(bytes);
        if (s.mixedPrecision()) { // MixedPrecisionOptimizer's fp32 masters; offloaded blocks' masters are the tier's copies
            for (long[] p : s.restParameterShapes()) tl.f32(PlanShape.elements(p));
            if (!s.offloadParams()) for (int l = 0; l < s.nLayer(); l++) for (long[] p : s.blockParameterShapes()) tl.f32(PlanShape.elements(p));
        }
        tl.attribute(TEMPORARIES);
        if (s.llama()) { // the rotary cos and sin tables (block_size × head size/2), made with the model outside any category
            tl.f32((long) s.seqLen() * (s.nEmbd() / s.nHead() / 2));
            tl.f32((long) s.seqLen() * (s.nEmbd() / s.nHead() / 2));
        }
    }

    /**
     * BlockOffloader's residency: a block's tensors are allocated (in their category) when it is prefetched or acquired
     * and freed when it is released. The simulation charges a prefetch at once, where the offload thread pages it in
     * shortly after: the prediction is the schedule's bound, which the measured peak meets when the copies keep up.
     */
    private final class Paging {
        private final List<List<Timeline.Block>> resident = new ArrayList<>();
        private final List<Long> bytes;
        private final MemoryCategory category;

        Paging(List<Long> bytes, MemoryCategory category) {
            this.bytes = bytes;
            this.category = category;
            for (int l = 0; l < s.nLayer(); l++) resident.add(null);
        }

        void prefetch(int g) {
            if (g < 0 || g >= s.nLayer() || resident.get(g) != null) return;
            List<Timeline.Block> blocks = new ArrayList<>();
            for (long b : bytes) blocks.add(tl.alloc(b, category));
            resident.set(g, blocks);
        }

        /** acquire(g) then prefetchAhead(g, step), as the offload schedule calls them. */
        void acquire(int g, int step) {
            prefetch(g);
            for (int k = 1; k <= s.prefetchDepth(); k++) prefetch(g + k * step);
        }

        void release(int g) {
            List<Timeline.Block> blocks = resident.set(g, null);
            if (blocks != null) for (Timeline.Block b : blocks) tl.free(b);
        }
    }

    private static List<Long> blockParameterBytes(PlanShape s) {
        List<Long> out = new ArrayList<>();
        for (long[] p : s.blockParameterShapes()) out.add(4 * PlanShape.elements(p));
        return out;
    }

    private static List<Long> blockStateBytes(PlanShape s) {
        List<Long> out = new ArrayList<>();
        for (long[] p : s.blockParameterShapes()) out.addAll(s.stateBytes(p));
        return out;
    }

    /** OffloadedOptimizer's step: block by block, parameters and state paged in (prefetched ahead) and out again. */
    private void offloadedUpdate() {
        for (int l = 0; l < s.nLayer(); l++) {
            if (params != null) params.acquire(l, 1);
            if (state != null) state.acquire(l, 1);
            if (params != null) params.release(l);
            if (state != null) state.release(l);
        }
    }

    private long probs() {
        return (long) s.microBatch() * s.nHead() * s.seqLen() * s.seqLen();
    }

    private void microStep() {
        if (s.llama()) {
            llamaMicroStep();
            return;
        }
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
            if (params != null) params.acquire(l, 1);
            switch (s.recompute()) {
                case NONE -> blockForward(false);
                case SELECTIVE -> blockForward(true);
                case FULL -> checkpointed(() -> blockForward(false));
            }
            if (params != null) {
                params.release(l);
                if (l == s.nLayer() - 1) params.acquire(l, -1); // prefetched again for backward
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
        if (s.accumSteps() > 1 || s.precision().equals("fp16")) {
            f32(1); // loss × 1/k (accumulation) or × the loss scale (fp16)
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
            if (params != null) params.acquire(l, -1);
            dx = switch (s.recompute()) {
                case NONE -> blockBackward(dx, false, true, null);
                case SELECTIVE -> blockBackward(dx, true, true, null);
                case FULL -> checkpointBackward(dx, nc, () -> blockForward(false), (in, gIn) -> blockBackward(gIn, false, false, in));
            };
            if (params != null) params.release(l);
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

    // ---------------------------------------------------------------- Llama

    /**
     * One Llama micro-batch (Llama.forward, then Tape.backward node by node in reverse): no recompute, offload or
     * dropout, which Llama does not train with yet.
     */
    private void llamaMicroStep() {
        tl.attribute(ACTIVATIONS);
        f32(n);
        f32(n); // idx, targets (int32)
        f32(nc); // embed_tokens(idx)
        for (int l = 0; l < s.nLayer(); l++) llamaLayerForward();
        rmsNormForward(); // norm
        f32(n * s.vocab()); // lm_head: logits
        f32(n);
        f32(n);
        f32(1); // cross-entropy: per-row losses, log-sum-exp, the mean
        tl.attribute(TEMPORARIES);
        Timeline.Block g;
        if (s.accumSteps() > 1 || s.precision().equals("fp16")) {
            f32(1); // loss × 1/k or × the loss scale
            f32(1); // backward's seed
            g = grad(1);
        } else {
            f32(1);
            g = null;
        }
        Timeline.Block dLogits = grad(n * s.vocab());
        tl.free(g);
        Timeline.Block dNorm = grad(nc); // lm_head's dx
        tl.free(dLogits);
        Timeline.Block dx = grad(nc); // norm's dx
        tl.free(dNorm);
        for (int l = s.nLayer() - 1; l >= 0; l--) dx = llamaLayerBackward(dx);
        tl.free(dx); // embed_tokens accumulates into its weight's gradient
        for (Timeline.Block b : stepScope) tl.free(b);
        stepScope.clear();
    }

    private void rmsNormForward() {
        f32(nc);
        f32(n); // output, rstd
    }

    /** Llama.Layer.forward's saved tensors, in order. */
    private void llamaLayerForward() {
        long kv = n * s.kvWidth(), inter = n * s.intermediate();
        rmsNormForward(); // input_layernorm
        f32(nc);
        f32(nc); // q_proj, its rotary output
        f32(kv);
        f32(kv); // k_proj, its rotary output
        f32(kv); // v_proj
        f32(3 * nc);
        f32(nc);
        f32(probs()); // attention: K/V heads repeated into a packed (B, T, 3C) copy, the output, the probabilities
        f32(nc);
        f32(nc); // o_proj, residual add
        rmsNormForward(); // post_attention_layernorm
        f32(inter);
        f32(inter);
        f32(inter); // gate_proj, up_proj, SwiGLU
        f32(nc);
        f32(nc); // down_proj, residual add
    }

    /** Backward of one Llama layer from dL/d(output) {@code g} (released); returns dL/d(input). */
    private Timeline.Block llamaLayerBackward(Timeline.Block g) {
        long kv = n * s.kvWidth(), inter = n * s.intermediate();
        Timeline.Block dx2 = grad(nc), dDown = grad(nc); // residual add: both operands
        tl.free(g);
        Timeline.Block dSwiglu = grad(inter); // down_proj's dx
        tl.free(dDown);
        Timeline.Block dGate = grad(inter), dUp = grad(inter); // SwiGLU
        tl.free(dSwiglu);
        Timeline.Block dH2 = grad(nc); // up_proj's dx; gate_proj accumulates into it
        tl.free(dUp);
        tl.free(dGate);
        tl.free(dH2); // post_attention_layernorm accumulates into dx2
        Timeline.Block dx = grad(nc), dO = grad(nc); // residual add
        tl.free(dx2);
        Timeline.Block dA = grad(nc); // o_proj's dx
        tl.free(dO);
        Timeline.Block gqkv = tl.f32(3 * nc); // attention backward's packed gradient
        attentionScratch();
        Timeline.Block dQ = grad(nc), dK = grad(kv), dV = grad(kv);
        tl.free(gqkv);
        tl.free(dA);
        Timeline.Block dH1 = grad(nc); // v_proj's dx; k_proj and q_proj accumulate into it
        tl.free(dV);
        Timeline.Block dK0 = grad(kv); // rotary backward of k
        tl.free(dK);
        tl.free(dK0);
        Timeline.Block dQ0 = grad(nc); // rotary backward of q
        tl.free(dQ);
        tl.free(dQ0);
        tl.free(dH1); // input_layernorm accumulates into dx
        return dx;
    }
}
