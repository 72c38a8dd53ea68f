package dev.kiln.optim;

import dev.kiln.KilnException;
import dev.kiln.nn.Parameter;
import dev.kiln.ops.Autocast;
import dev.kiln.tensor.DType;
import dev.kiln.tensor.Device;
import dev.kiln.tensor.MemoryCategory;
import dev.kiln.tensor.MemoryScope;
import dev.kiln.tensor.MemoryTracker;
import dev.kiln.tensor.Tensor;

import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;

/**
 * Mixed-precision training around an fp32 optimizer, in the manner of apex's FP16_Optimizer: the parameters hold
 * the fp32 master weights, which the wrapped optimizer updates; a training step computes with half-precision
 * copies of them and half-precision gradients. On the CPU the half-precision storage is simulated exactly by
 * rounding, so the numerics of fp16/bf16 storage (rounding, fp16's overflow to inf above 65504 and flush of tiny
 * values) are real, only the arithmetic in between stays fp32. The scope, precisely:
 * <ol>
 *   <li>{@link #beginStep}: the master weights are saved and the parameters rounded to fp16/bf16 in place: forward
 *       and backward see half-precision weights;</li>
 *   <li>fp16 only: the loss is multiplied by the {@link GradScaler}'s scale before backward ({@link #lossScale});</li>
 *   <li>{@link #endBackward}: the master weights come back; each parameter gradient is rounded to fp16/bf16 as an
 *       fp16/bf16 gradient buffer would store it (overflow → ±inf); fp16: gradients are unscaled and checked, and a
 *       step with an inf/NaN gradient is reported for skipping and backs the scale off;</li>
 *   <li>{@link #step}: the wrapped optimizer updates the fp32 master weights (after clipping, by the caller).</li>
 * </ol>
 * Activations and activation gradients are not rounded (they stay fp32 inside the ops); evaluation uses the fp32
 * master weights. bf16 needs no loss scaling (fp32's exponent range). The scaler's state is part of this
 * optimizer's state dict ("grad_scaler.scale", "grad_scaler.growth_tracker"), so checkpoints resume it exactly.
 *
 * <p>On a device (parameters on a GPU) bf16 is real rather than simulated: from {@link #beginStep} to
 * {@link #endBackward} the thread is under {@link Autocast}, so every Linear multiplies bf16 copies of its input and
 * weight with fp32 accumulation; the parameters stay fp32 master weights throughout and their gradients fp32 (as
 * PyTorch's autocast keeps them), so nothing is saved, rounded or restored. fp16 on a device is not implemented.
 *
 * <p>With parameter offload ({@link PagedMasters}) the offloaded parameters' masters are the tier's fp32 copies: no resident
 * master is kept for them, and their half-precision working copies are made as they are paged in during the step. Under
 * ZeRO-3 the same holds for the parameters other ranks own: their working copies arrive by all-gather.
 */
public final class MixedPrecisionOptimizer implements Optimizer {
    /** How much an injected fault multiplies the loss scale for one step: overflows fp16 for any gradient above ~1e-12·(1/scale). */
    private static final double FAULT_FACTOR = 0x1p40;

    private final Optimizer inner;
    private final DType half;
    private final GradScaler scaler; // null for bf16
    private final List<Parameter> params = new ArrayList<>();
    private final List<Tensor> master = new ArrayList<>();
    private final boolean onDevice;   // real bf16 (autocast) instead of simulated rounding
    private Autocast autocast;        // open from beginStep to endBackward on a device
    private final List<Parameter> all = new ArrayList<>(); // every trainable parameter: gradients rounded, unscaled, checked
    private final PagedMasters paged; // null: every master is resident
    private boolean injectOverflow;
    private java.util.function.UnaryOperator<Boolean> overflowAnywhere = found -> found;

    /**
     * Data parallelism with sharded gradients (ZeRO-2/3), tensor or pipeline parallelism: each rank checks only the gradients it holds, so the ranks must
     * agree on skipping; {@code anyRank} turns this rank's finding into "some rank found an inf/NaN" (a collective),
     * so every rank skips the same steps and keeps the same loss scale.
     */
    public void agreeOnOverflow(java.util.function.UnaryOperator<Boolean> anyRank) {
        this.overflowAnywhere = anyRank;
    }

    public MixedPrecisionOptimizer(Optimizer inner, Map<String, Parameter> trainable, DType half, GradScaler scaler) {
        this(inner, trainable, half, scaler, null);
    }

    /** {@code paged}: parameters whose masters live in an offload tier (no resident copy; rounded as they are paged in), or null. */
    public MixedPrecisionOptimizer(Optimizer inner, Map<String, Parameter> trainable, DType half, GradScaler scaler, PagedMasters paged) {
        if (half != DType.F16 && half != DType.BF16) throw new IllegalArgumentException("mixed precision needs F16 or BF16, got " + half);
        if (half == DType.F16 && scaler == null) throw new IllegalArgumentException("fp16 needs a loss scaler");
        this.inner = inner;
        this.half = half;
        this.scaler = half == DType.F16 ? scaler : null;
        this.paged = paged;
        this.onDevice = trainable.values().stream().anyMatch(p -> p.device().kind() != Device.Kind.CPU);
        if (onDevice && half != DType.BF16) throw new KilnException("train.precision fp16 is not implemented on a GPU yet (bf16 is)");
        if (onDevice) {
            params.addAll(trainable.values());
            all.addAll(trainable.values());
            return;
        }
        Set<Parameter> elsewhere = paged == null ? Set.of() : paged.pagedParameters();
        // the masters are optimizer state in the memory account (as ZeRO counts fp32 master weights), not temporaries
        try (var s = MemoryScope.persistent(); var a = MemoryTracker.attribute(MemoryCategory.OPTIMIZER_STATE)) {
            for (Parameter p : trainable.values()) {
                if (p.dtype() != DType.F32 || !p.isContiguous())
                    throw new IllegalArgumentException("mixed precision needs contiguous F32 master weights, got " + p.dtype() + " " + p.shapeString());
                all.add(p);
                if (elsewhere.contains(p)) continue;
                params.add(p);
                master.add(Tensor.zerosLike(p));
            }
        }
    }

    /** The wrapped fp32 optimizer (a pipeline stage's checkpoint gathers its state; the scaler's goes alongside, see {@link ScalerEntries}). */
    public Optimizer inner() {
        return inner;
    }

    public DType precision() {
        return half;
    }

    /** The scaler (fp16), or null (bf16). */
    public GradScaler scaler() {
        return scaler;
    }

    /** The factor the loss is multiplied by before backward: the scaler's scale (fp16), 1 for bf16. */
    public double lossScale() {
        double s = scaler == null ? 1.0 : scaler.scale();
        return injectOverflow ? s * FAULT_FACTOR : s;
    }

    /** Fault injection (faults.overflow_steps): the next step's loss is scaled × 2^40 more, so its fp16 gradients overflow for real. */
    public void injectOverflow() {
        if (scaler == null) throw new IllegalStateException("overflow injection needs fp16");
        injectOverflow = true;
    }

    /** Saves the fp32 master weights and rounds the parameters to half precision for forward and backward. */
    public void beginStep() {
        if (onDevice) {
            autocast = Autocast.to(half);
            return;
        }
        if (paged != null) paged.beginHalfPrecision(half);
        for (int i = 0; i < params.size(); i++) {
            master.get(i).copyFrom(params.get(i));
            roundInPlace(params.get(i), half);
        }
    }

    /**
     * Restores the master weights and rounds, unscales and checks the gradients (see the class comment). Returns
     * true when the step must be skipped (an fp16 overflow: the scale has been backed off); false when the caller
     * may clip and {@link #step}. Must follow every {@link #beginStep}, also when backward did not run.
     */
    public boolean endBackward() {
        if (onDevice) {
            if (autocast != null) autocast.close();
            autocast = null;
            return false;
        }
        for (int i = 0; i < params.size(); i++) params.get(i).copyFrom(master.get(i));
        if (paged != null) paged.endHalfPrecision();
        injectOverflow = false;
        roundGradients();
        if (scaler == null) return false;
        boolean foundInf = overflowAnywhere.apply(scaler.unscale(all));
        if (foundInf) scaler.update(true);
        return foundInf;
    }

    /**
     * Rounds the parameter gradients to fp16/bf16 in place: gradient accumulation calls it after each micro-batch, so
     * the running sum is held as a half-precision gradient buffer would hold it ({@link #endBackward} rounds the last).
     */
    public void roundGradients() {
        if (onDevice) return; // autocast keeps fp32 gradients (as PyTorch's does)
        for (Parameter p : all) if (p.grad() != null) roundInPlace(p.grad(), half);
    }

    @Override
    public void step(double lr) {
        inner.step(lr);
        if (scaler != null) scaler.update(false);
    }

    @Override
    public String name() {
        return inner.name();
    }

    @Override
    public long stepCount() {
        return inner.stepCount();
    }

    @Override
    public Map<String, Tensor> stateDict() {
        Map<String, Tensor> out = new LinkedHashMap<>(inner.stateDict());
        if (scaler != null) {
            out.put("grad_scaler.scale", Tensor.ofDoubles(new double[]{scaler.scale()}, 1));
            out.put("grad_scaler.growth_tracker", Tensor.ofDoubles(new double[]{scaler.growthTracker()}, 1));
        }
        return out;
    }

    @Override
    public void loadStateDict(Map<String, Tensor> state, long stepCount) {
        Map<String, Tensor> rest = new LinkedHashMap<>(state);
        Tensor scale = rest.remove("grad_scaler.scale"), tracker = rest.remove("grad_scaler.growth_tracker");
        if (scaler != null) {
            if (scale == null || tracker == null)
                throw new KilnException("optimizer state has no grad_scaler.scale / grad_scaler.growth_tracker (written without train.precision=fp16)");
            double t = tracker.getFlat(0);
            if (t != Math.rint(t)) throw new KilnException("grad_scaler.growth_tracker must be a whole number, got " + t);
            scaler.restore(scale.getFlat(0), (long) t);
        }
        inner.loadStateDict(rest, stepCount);
    }

    /** Rounds a contiguous F32 tensor's values to the nearest fp16 / bf16 value (ties to even), in place. */
    public static void roundInPlace(Tensor t, DType half) {
        if (t.dtype() != DType.F32 || !t.isContiguous()) throw new IllegalArgumentException("rounding needs a contiguous F32 tensor, got " + t.dtype());
        MemorySegment s = t.segment().asSlice(t.offset() * 4, t.numel() * 4);
        ValueLayout.OfFloat f = ValueLayout.JAVA_FLOAT;
        int n = Math.toIntExact(t.numel());
        if (half == DType.F16) {
            for (int i = 0; i < n; i++) s.setAtIndex(f, i, Float.float16ToFloat(Float.floatToFloat16(s.getAtIndex(f, i))));
        } else {
            for (int i = 0; i < n; i++) s.setAtIndex(f, i, DType.bf16ToFloat(DType.floatToBf16(s.getAtIndex(f, i))));
        }
    }
}
