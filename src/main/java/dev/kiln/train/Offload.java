package dev.kiln.train;

import dev.kiln.autograd.Tape;
import dev.kiln.memory.BlockOffloader;
import dev.kiln.memory.DiskTier;
import dev.kiln.memory.OffloadTier;
import dev.kiln.nn.Parameter;
import dev.kiln.nn.models.Gpt;
import dev.kiln.optim.MixedPrecisionOptimizer;
import dev.kiln.optim.Optimizer;
import dev.kiln.optim.PagedMasters;
import dev.kiln.tensor.DType;
import dev.kiln.tensor.Tensor;
import dev.kiln.train.config.OptimConfig;
import dev.kiln.train.config.TrainingConfig;

import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Collections;
import java.util.IdentityHashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;

/**
 * A run's parameter and optimizer-state offload (ZeRO-Infinity style; {@code train.offload_params},
 * {@code train.offload_optimizer}): transformer blocks' parameters and/or optimizer state live in an
 * {@link OffloadTier} (memory-mapped files under {@code train.offload_dir}) and are resident only around their use.
 * <ul>
 *   <li>forward: block i is acquired before it runs, blocks i+1..i+depth are prefetched, and block i is released
 *       after it; after the last block, the last {@code depth} are prefetched again for backward;</li>
 *   <li>backward: identity ops at each block's output and input acquire block i (prefetching i−1..i−depth) before
 *       its backward and release it after;</li>
 *   <li>optimizer step: {@link OffloadedOptimizer} updates block by block with parameters and state paged in.</li>
 * </ul>
 * Gradients, activations and the parameters outside the blocks (embeddings, final norm) stay resident. Anything that
 * touches an offloaded tensor outside this schedule (checkpoints, weight averages) pages it in on demand; the next
 * scheduled release pages it out again.
 * <p>
 * Under mixed precision ({@link PagedMasters}) the tier's copies of the blocks' parameters are the fp32 master
 * weights: during a step each block is rounded to half precision right after it is paged in for forward or backward
 * (a read-only page-in, so the rounded working copy is dropped at release, never written back), and the block-by-block
 * update pages the fp32 masters in for writing.
 */
public final class Offload implements AutoCloseable, PagedMasters {
    private final OffloadTier tier;
    private final int depth;
    private final BlockOffloader params;
    private final boolean optimizerState;
    private BlockOffloader state;
    private final Set<Parameter> offloadedParameters = Collections.newSetFromMap(new IdentityHashMap<>());
    private final List<List<Tensor>> blockTensors = new ArrayList<>();
    private volatile DType half; // null: page-ins for compute stay fp32

    private Offload(OffloadTier tier, Gpt model, boolean offloadParams, boolean offloadOptimizer, int depth) {
        this.tier = tier;
        this.depth = depth;
        this.optimizerState = offloadOptimizer;
        if (offloadParams) {
            List<List<Tensor>> groups = new ArrayList<>();
            for (int i = 0; i < model.depth(); i++) groups.add(new ArrayList<>(blockParameters(model, i).values()));
            for (List<Tensor> g : groups) for (Tensor t : g) offloadedParameters.add((Parameter) t);
            blockTensors.addAll(groups);
            this.params = new BlockOffloader("params", groups, tier, depth);
            model.setBlockHooks(new Hooks(params, this::roundWorkingCopy));
        } else {
            this.params = null;
        }
    }

    /** The offload {@code tc} asks for (files under {@code train.offload_dir}, default {@code <run dir>/offload}), or null when off. */
    public static Offload open(TrainingConfig tc, Path runDir, dev.kiln.nn.models.CausalLm model) {
        boolean p = tc.offload_params().equals("disk"), o = tc.offload_optimizer().equals("disk");
        if (!p && !o) return null;
        if (!(model instanceof Gpt gpt)) throw new dev.kiln.KilnException("train.offload_params / train.offload_optimizer: implemented for model.arch gpt only");
        Path dir = tc.offload_dir().isBlank() ? runDir.resolve("offload") : Workspace.resolve(tc.offload_dir());
        return new Offload(new DiskTier(dir), gpt, p, o, tc.prefetch_depth());
    }

    /** For tests: offload into {@code tier}. */
    static Offload of(OffloadTier tier, Gpt model, boolean offloadParams, boolean offloadOptimizer, int depth) {
        return new Offload(tier, model, offloadParams, offloadOptimizer, depth);
    }

    /** Block {@code i}'s parameters by name ("transformer.h.i.…"). */
    static Map<String, Parameter> blockParameters(Gpt model, int i) {
        String prefix = "transformer.h." + i + ".";
        Map<String, Parameter> out = new LinkedHashMap<>();
        model.namedParameters().forEach((k, p) -> {
            if (k.startsWith(prefix)) out.put(k, p);
        });
        return out;
    }

    /**
     * The optimizer {@code optim.optimizer} names, split by block ({@link OffloadedOptimizer}): one over the trainable
     * parameters outside the blocks, one per block; its state offloaded when {@code train.offload_optimizer} is disk.
     */
    public Optimizer optimizer(OptimConfig oc, Gpt model) {
        Map<String, Parameter> rest = new LinkedHashMap<>(model.trainableParameters());
        List<Optimizer> blocks = new ArrayList<>();
        for (int i = 0; i < model.depth(); i++) {
            Map<String, Parameter> mine = new LinkedHashMap<>();
            for (String k : blockParameters(model, i).keySet()) if (rest.containsKey(k)) mine.put(k, rest.remove(k));
            blocks.add(RunSetup.optimizer(oc, model, mine));
        }
        if (state != null) throw new IllegalStateException("the offloaded optimizer is built once per run");
        OffloadedOptimizer opt = new OffloadedOptimizer(RunSetup.optimizer(oc, model, rest), blocks, params,
                optimizerState ? groups -> new BlockOffloader("optimizer", groups, tier, depth) : null);
        state = opt.stateOffloader();
        return opt;
    }

    @Override
    public Set<Parameter> pagedParameters() {
        return Collections.unmodifiableSet(offloadedParameters);
    }

    @Override
    public void beginHalfPrecision(DType half) {
        if (params != null) params.releaseAll(); // writes back whatever a demand page-in changed (a resume), so page-ins are clean
        this.half = half;
    }

    @Override
    public void endHalfPrecision() {
        this.half = null;
        if (params != null) params.releaseAll(); // clean page-ins: the rounded copies are dropped, the masters stay in the tier
    }

    /**
     * Block {@code i} was just paged in for forward or backward: under mixed precision, round its trainable parameters to
     * the working copy (as MixedPrecisionOptimizer rounds the resident ones; frozen weights, e.g. under LoRA, stay fp32).
     */
    private void roundWorkingCopy(int i) {
        DType h = half;
        if (h == null) return;
        for (Tensor t : blockTensors.get(i)) if (t.requiresGrad()) MixedPrecisionOptimizer.roundInPlace(t, h);
    }

    /** Peak resident bytes of the offloaded parameters (of {@link #offloadedParameterBytes()}), or -1 when they are not offloaded. */
    public long peakResidentParameterBytes() {
        return params == null ? -1 : params.peakResidentBytes();
    }

    public long offloadedParameterBytes() {
        return params == null ? 0 : params.totalBytes();
    }

    /** Peak resident bytes of the offloaded optimizer state, or -1 when it is not offloaded. */
    public long peakResidentOptimizerBytes() {
        return state == null ? -1 : state.peakResidentBytes();
    }

    public long offloadedOptimizerBytes() {
        return state == null ? 0 : state.totalBytes();
    }

    BlockOffloader parameterOffloader() {
        return params;
    }

    BlockOffloader optimizerOffloader() {
        return state;
    }

    /** One line for the run's console: what is offloaded where. */
    public String describe() {
        StringBuilder s = new StringBuilder("offload to " + (tier instanceof DiskTier ? "disk" : "tier") + ", prefetch depth " + depth + ":");
        if (params != null) s.append(String.format(" parameters of %d blocks (%,d bytes)", params.size(), params.totalBytes()));
        if (state != null) s.append(String.format("%s optimizer state of %d blocks (%,d bytes)", params != null ? ";" : "", state.size(), state.totalBytes()));
        return s.toString();
    }

    /** Peak residency, for the end of a run. */
    public String summary() {
        StringBuilder s = new StringBuilder("offload peak resident:");
        if (params != null) s.append(String.format(" parameters %,d of %,d bytes", params.peakResidentBytes(), params.totalBytes()));
        if (state != null) s.append(String.format("%s optimizer state %,d of %,d bytes", params != null ? ";" : "", state.peakResidentBytes(), state.totalBytes()));
        return s.toString();
    }

    @Override
    public void close() {
        if (params != null) params.close();
        if (state != null) state.close();
        tier.close();
    }

    /** The forward/backward schedule of parameter offload (see the class comment). */
    private record Hooks(BlockOffloader off, java.util.function.IntConsumer pagedIn) implements Gpt.BlockHooks {
        @Override
        public Tensor beforeBlock(int i, Tensor x) {
            if (i >= off.size()) return x; // not offloaded
            off.acquire(i, false);
            pagedIn.accept(i);
            off.prefetchAhead(i, 1);
            return marker(x, () -> off.release(i)); // backward: after block i's backward
        }

        @Override
        public Tensor afterBlock(int i, Tensor y) {
            if (i >= off.size()) return y;
            off.release(i);
            boolean grad = Tape.isGradEnabled() && y.requiresGrad();
            if (grad && i == off.size() - 1) {
                off.prefetch(i); // backward starts here
                off.prefetchAhead(i, -1);
            }
            return marker(y, () -> { // backward: before block i's backward
                off.acquire(i, false);
                pagedIn.accept(i);
                off.prefetchAhead(i, -1);
            });
        }

        /** x through an identity op whose backward runs {@code onBackward} first. */
        private static Tensor marker(Tensor x, Runnable onBackward) {
            if (!Tape.isGradEnabled() || !x.requiresGrad()) return x;
            Tensor out = x.contiguous().view(x.shape());
            return Tape.record(out, (g, grads) -> {
                onBackward.run();
                grads.accumulate(x, g);
            }, x);
        }
    }
}
