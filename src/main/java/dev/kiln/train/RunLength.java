package dev.kiln.train;

import dev.kiln.train.config.Budget;
import dev.kiln.train.config.OptimConfig;
import dev.kiln.train.config.TrainingConfig;

/**
 * How long a run is and how big each step's batch: a fixed {@code max_iters}, a token budget or a
 * wall-clock budget; the batch-size ramp; and the step count the learning-rate schedule is laid over.
 * For a time budget that count is re-fitted after every step from the measured throughput of the
 * recent steps (evaluations and checkpoints included, since they spend the same clock), so the
 * schedule reaches its floor as the budget runs out; the run stops when the next step would end
 * further past the budget than it now falls short of it.
 */
final class RunLength {
    private static final int WINDOW = 50;

    private final int blockSize, batchSize, batchStart, rampIters, warmup;
    private final int accum; // micro-batches per step (gradient accumulation): a step's tokens are accum × batch × T
    private final Curriculum curriculum;
    private final long maxIters, decayIters, tokenBudget;
    private final double timeBudget;
    private final boolean fitSchedule;
    private final double[] stepSeconds = new double[WINDOW];
    private final long[] stepTokens = new long[WINDOW];
    private int observed;

    RunLength(TrainingConfig tc, OptimConfig oc, int blockSize) {
        this(tc, oc, blockSize, new Curriculum(dev.kiln.train.config.CurriculumConfig.defaults(), blockSize));
    }

    /** With a sequence-length warm-up, a step holds batch × T_s tokens: budgets count those. */
    RunLength(TrainingConfig tc, OptimConfig oc, int blockSize, Curriculum curriculum) {
        this.blockSize = blockSize;
        this.curriculum = curriculum;
        this.batchSize = tc.batch_size();
        this.accum = tc.grad_accum_steps();
        this.batchStart = tc.batch_size_start();
        this.rampIters = tc.batch_ramp_iters();
        this.warmup = oc.warmup_iters();
        this.maxIters = tc.max_iters();
        this.decayIters = oc.lr_decay_iters();
        this.tokenBudget = tc.budget_tokens().isEmpty() ? 0 : Budget.parseCount(tc.budget_tokens());
        this.timeBudget = tc.budget_time().isEmpty() ? 0 : Budget.parseSeconds(tc.budget_time());
        this.fitSchedule = tc.budget_fit_schedule();
    }

    boolean budgeted() {
        return tokenBudget > 0 || timeBudget > 0;
    }

    /** What ends the run: "max_iters", "budget_tokens" or "budget_time". */
    String limit() {
        return tokenBudget > 0 ? "budget_tokens" : timeBudget > 0 ? "budget_time" : "max_iters";
    }

    /** Sequences in 0-based step {@code step}: the ramp from batch_size_start to batch_size, then batch_size. */
    int batchSize(long step) {
        if (batchStart == 0 || step >= rampIters) return batchSize;
        return batchStart + (int) ((long) (batchSize - batchStart) * step / rampIters);
    }

    /** Tokens in 0-based step {@code step}: its micro-batches × batch size × sequence length. */
    long stepTokens(long step) {
        return (long) accum * batchSize(step) * curriculum.seqLen(step);
    }

    /** The first step from which every step has batch_size × block_size tokens (after both ramps). */
    private long rampEnd() {
        return Math.max(batchStart == 0 ? 0 : rampIters, curriculum.lengthWarmupEnd());
    }

    /** Tokens in the first {@code steps} steps. */
    long tokensThrough(long steps) {
        long t = 0;
        long ramped = Math.min(steps, rampEnd());
        for (long s = 0; s < ramped; s++) t += stepTokens(s);
        return t + (steps - ramped) * (long) accum * batchSize * blockSize;
    }

    /** Records the wall time of the step just finished (from the previous step's end, so overheads count). */
    void observe(double seconds, long tokens) {
        stepSeconds[observed % WINDOW] = seconds;
        stepTokens[observed % WINDOW] = tokens;
        observed++;
    }

    /**
     * The step count the schedule decays over, given {@code done} steps and {@code elapsed} seconds so
     * far: lr_decay_iters without a budget; the steps the budget holds (token budget: exactly; time
     * budget: predicted from the recent throughput) otherwise, unless train.budget_fit_schedule is
     * off. Never below warm-up + 1.
     */
    long scheduleTotal(long done, double elapsed) {
        long total = budgeted() && fitSchedule ? budgetSteps(done, elapsed) : decayIters;
        return Math.max(total, warmup + 1L);
    }

    /** Steps the run is expected to take in all (progress display, ETA). */
    long expectedSteps(long done, double elapsed) {
        return budgeted() ? Math.max(done, budgetSteps(done, elapsed)) : maxIters;
    }

    /** The steps a budget holds: exact for tokens; for time, from the recent throughput (max_iters before any is measured). */
    private long budgetSteps(long done, double elapsed) {
        if (tokenBudget > 0) return stepsForTokens(tokenBudget);
        if (observed == 0) return Math.max(done, maxIters);
        return stepsForTokens(tokensThrough(done) + predictedTokens(timeBudget - elapsed));
    }

    /** Whether the run ends after {@code done} steps, having seen {@code tokens} tokens in {@code elapsed} seconds. */
    boolean finished(long done, long tokens, double elapsed) {
        if (tokenBudget > 0) return tokens >= tokenBudget;
        if (timeBudget > 0) return elapsed + 0.5 * recentSecondsPerStep() >= timeBudget;
        return done >= maxIters;
    }

    private long stepsForTokens(long tokens) {
        long end = rampEnd();
        long rampTokens = tokensThrough(end);
        if (tokens <= rampTokens) {
            long s = 0, t = 0;
            while (t < tokens) t += stepTokens(s++);
            return s;
        }
        long perStep = (long) accum * batchSize * blockSize;
        return end + (tokens - rampTokens + perStep - 1) / perStep;
    }

    private long predictedTokens(double seconds) {
        if (seconds <= 0) return 0;
        double s = 0;
        long t = 0;
        for (int i = 0; i < Math.min(observed, WINDOW); i++) {
            s += stepSeconds[i];
            t += stepTokens[i];
        }
        return s <= 0 ? 0 : (long) (seconds * t / s);
    }

    private double recentSecondsPerStep() {
        int n = Math.min(observed, WINDOW);
        if (n == 0) return 0;
        double s = 0;
        for (int i = 0; i < n; i++) s += stepSeconds[i];
        return s / n;
    }
}
