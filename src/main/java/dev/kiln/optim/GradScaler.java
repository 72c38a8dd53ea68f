package dev.kiln.optim;

import dev.kiln.KilnException;
import dev.kiln.backend.Backend;
import dev.kiln.nn.Parameter;

import java.util.Collection;

/**
 * Loss scaling for fp16 training, with torch.cuda.amp.GradScaler's semantics: the loss is multiplied by
 * {@link #scale()} before backward so small gradients survive fp16's range; {@link #unscale} divides the gradients
 * back (before clipping) and reports whether any is inf/NaN; {@link #update} then either skips the step and backs
 * the scale off (× 0.5, counter reset) or counts a good step, growing the scale × 2 after {@code growthInterval} good
 * steps in a row. A fixed scale never changes but still skips steps that overflow. Backend-neutral: it only needs
 * per-tensor scale and a finiteness test, so a GPU backend reuses it as is.
 */
public final class GradScaler {
    public static final double DEFAULT_INIT_SCALE = 65536.0, GROWTH_FACTOR = 2.0, BACKOFF_FACTOR = 0.5;
    public static final int DEFAULT_GROWTH_INTERVAL = 2000;

    private final boolean dynamic;
    private final int growthInterval;
    private double scale;
    private int growthTracker; // good steps in a row since the scale last changed (torch: _growth_tracker)

    private GradScaler(double scale, boolean dynamic, int growthInterval) {
        if (!(scale > 0 && Double.isFinite(scale))) throw new IllegalArgumentException("loss scale must be a positive finite number, got " + scale);
        if (growthInterval < 1) throw new IllegalArgumentException("growth interval must be >= 1, got " + growthInterval);
        this.scale = scale;
        this.dynamic = dynamic;
        this.growthInterval = growthInterval;
    }

    /** Dynamic scaling from {@code initScale}, × 2 after {@code growthInterval} good steps, × 0.5 on overflow. */
    public static GradScaler dynamic(double initScale, int growthInterval) {
        return new GradScaler(initScale, true, growthInterval);
    }

    /** A constant scale: overflowing steps are still skipped. */
    public static GradScaler fixed(double scale) {
        return new GradScaler(scale, false, 1);
    }

    public double scale() {
        return scale;
    }

    public int growthTracker() {
        return growthTracker;
    }

    public boolean isDynamic() {
        return dynamic;
    }

    /**
     * Multiplies every gradient by 1/scale (exact for the powers of two dynamic scaling uses) and returns whether any
     * gradient holds an inf or NaN (torch: found_inf). Gradients are unscaled either way; on overflow the step is skipped.
     */
    public boolean unscale(Collection<Parameter> params) {
        double inv = 1.0 / scale;
        boolean foundInf = false;
        for (Parameter p : params) {
            if (p.grad() == null) continue;
            Backend b = Backend.of(p);
            if (!Double.isFinite(b.sumOfSquares(p.grad()))) foundInf = true;
            b.scale(p.grad(), inv);
        }
        return foundInf;
    }

    /** After a step: back off on overflow, else count the good step and grow at the interval (dynamic scaling only). */
    public void update(boolean foundInf) {
        if (!dynamic) return;
        if (foundInf) {
            scale *= BACKOFF_FACTOR;
            growthTracker = 0;
        } else if (++growthTracker == growthInterval) {
            scale *= GROWTH_FACTOR;
            growthTracker = 0;
        }
    }

    /** Restores a checkpoint's scale and good-step counter. */
    public void restore(double scale, long growthTracker) {
        if (!(scale > 0 && Double.isFinite(scale))) throw new KilnException("loss scale in the checkpoint must be positive and finite, got " + scale);
        if (growthTracker < 0 || growthTracker >= growthInterval && dynamic)
            throw new KilnException("loss-scale growth tracker in the checkpoint must be in [0, " + growthInterval + "), got " + growthTracker);
        this.scale = scale;
        this.growthTracker = (int) growthTracker;
    }
}
