package dev.kiln.train.config;

/**
 * What the trainer does when something goes wrong. Keys under {@code faults:}.
 *
 * @param nan_skip_limit               consecutive steps with a NaN/Inf loss or gradient that are skipped
 *                                     (no update) before rolling back to the last good checkpoint
 * @param max_rollbacks                rollbacks allowed before the run gives up with an error
 * @param rollback_lr_factor           each rollback multiplies the learning rate by this (0 < f ≤ 1)
 * @param preempt_file                 if this file appears, the run checkpoints and exits 0, as on SIGTERM ("" = none)
 * @param continue_on_checkpoint_error a checkpoint that cannot be written (disk full, unwritable) is
 *                                     reported and training goes on, instead of stopping
 * @param host_memory_limit_mib        cap on Kiln's off-heap tensor memory, 0 = none; exceeding it is a
 *                                     clear out-of-memory error instead of the machine swapping or dying
 * @param overflow_steps               fault injection for fp16 loss scaling: steps (1-based, comma-separated, e.g. "5,6,7")
 *                                     whose loss is scaled × 2^40 more, so their fp16 gradients overflow ("" = none)
 */
public record FaultConfig(int nan_skip_limit, int max_rollbacks, double rollback_lr_factor, String preempt_file,
                          boolean continue_on_checkpoint_error, long host_memory_limit_mib,
                          String overflow_steps) {
    public static FaultConfig defaults() {
        return new FaultConfig(3, 3, 0.5, "", false, 0, "");
    }

    /** The steps {@code overflow_steps} lists (validated by RunConfig). */
    public java.util.Set<Long> overflowStepSet() {
        java.util.Set<Long> out = new java.util.TreeSet<>();
        if (overflow_steps.isBlank()) return out;
        for (String part : overflow_steps.split(",")) out.add(Long.parseLong(part.trim()));
        return out;
    }
}
