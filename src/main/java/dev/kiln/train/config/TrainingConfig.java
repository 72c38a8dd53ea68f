package dev.kiln.train.config;

/**
 * The training loop: length, batch, evaluation, logging, checkpoints, sampling. Keys under {@code train:}.
 *
 * @param name                run name; the run writes {@code <out_dir>/<name>/}
 * @param out_dir             parent directory of run directories
 * @param max_iters           optimizer steps
 * @param batch_size          sequences per step (each {@code model.block_size} tokens)
 * @param eval_interval       evaluate train/val loss every this many steps
 * @param eval_iters          batches per periodic evaluation
 * @param final_eval_iters    batches for the evaluation after the last step; 0 = skip it
 * @param log_interval        log the training loss every this many steps
 * @param checkpoint_interval save a checkpoint every this many steps (and at the end)
 * @param keep_checkpoints    how many recent checkpoints to keep
 * @param seed                seed of every random stream (init, batches, dropout, sampling)
 * @param threads             compute threads; 0 = all cores
 * @param sample_prompt       prompt of the sample printed after training
 * @param sample_tokens       tokens to generate for that sample; 0 = no sample
 * @param budget_time         train for this wall-clock time ("90s", "10m", "1h30m"; "" = no time budget):
 *                            the schedule is laid over the budget and the run stops as it ends
 * @param budget_tokens       train on this many tokens ("5M", "2.5e6", "1G"; "" = none), likewise
 * @param budget_fit_schedule lay the learning-rate schedule over the budget (true), or keep it over
 *                            {@code optim.lr_decay_iters} and only stop when the budget ends (false)
 * @param batch_size_start    batch-size ramp-up: start at this many sequences and grow linearly to
 *                            {@code batch_size} over {@code batch_ramp_iters}; 0 = no ramp
 * @param batch_ramp_iters    steps of the batch-size ramp
 * @param label_smoothing     mix this much of the uniform distribution into the targets (0 = none)
 * @param z_loss              add this × log²Z (the softmax normaliser) to the loss, as in PaLM (0 = none)
 * @param early_stop_patience stop after this many evaluations without a val-loss improvement of at
 *                            least {@code early_stop_min_delta}; 0 = never
 * @param early_stop_min_delta the smallest val-loss decrease that counts as an improvement
 * @param layer_drop          progressive layer drop (Zhang &amp; He 2020): the keep-probability floor θ̄ of the schedule
 *                            θ(t) = (1 − θ̄)·e^(−γ·t) + θ̄; block l of L (1-based) is skipped in a training step with
 *                            probability l/L·(1 − θ(t)); 0 = off
 * @param layer_drop_gamma    γ, how fast θ(t) falls from 1 to θ̄ (per step)
 * @param select_fraction     selective backprop (Jiang et al. 2019): forward the whole batch without grad,
 *                            then forward and backpropagate only this fraction of its sequences, those with the
 *                            highest loss; 1 = off
 * @param tensorboard         also write the metrics as TensorBoard scalars under runs/&lt;name&gt;/tb/ (a TFRecord
 *                            file of tensorflow.Event protos, a new file per process); true = on
 * @param recompute           activation recomputation: none, full (per-block checkpointing) or selective (the attention
 *                            core and GELU + MLP c_proj); see {@link dev.kiln.nn.Recompute}
 * @param grad_accum_steps    gradient accumulation: each optimizer step sums the gradients of this many micro-batches of
 *                            {@code batch_size} sequences (nanoGPT's convention: a step trains on k·batch_size·block_size
 *                            tokens); 1 = off
 * @param device              where to train: cpu, cuda (= cuda:0) or cuda:N
 * @param precision           fp32, or mixed precision fp16 / bf16: forward and backward with half-precision weights and
 *                            gradients, fp32 master weights and optimizer (see MixedPrecisionOptimizer for the exact scope)
 * @param loss_scale          fp16 only: "dynamic" (torch GradScaler: start 2^16, × 2 after {@code loss_scale_window}
 *                            good steps, × 0.5 and skip the step on overflow) or a fixed number (overflowing steps are still skipped)
 * @param loss_scale_window   good steps in a row before dynamic loss scaling doubles the scale
 * @param offload_params      none, or disk: transformer blocks' parameters live in memory-mapped files and are paged
 *                            in ahead of use (forward, backward, update) and out after it; under fp16/bf16 the files hold
 *                            the blocks' fp32 master weights, rounded to half precision as they are paged in for compute
 * @param offload_optimizer   none, or disk: the blocks' optimizer state likewise, paged in block by block for the update
 * @param offload_dir         directory of the offload files ("" = &lt;run dir&gt;/offload); scratch, deleted at the end
 * @param prefetch_depth      how many blocks ahead offload pages in (0 = fetch each block when it is needed)
 */
public record TrainingConfig(String name, String out_dir, int max_iters, int batch_size, int eval_interval,
                             int eval_iters, int final_eval_iters, int log_interval, int checkpoint_interval,
                             int keep_checkpoints, long seed, int threads, String sample_prompt, int sample_tokens,
                             String budget_time, String budget_tokens, boolean budget_fit_schedule, int batch_size_start, int batch_ramp_iters,
                             double label_smoothing, double z_loss, int early_stop_patience, double early_stop_min_delta,
                             double layer_drop, double layer_drop_gamma, double select_fraction, boolean tensorboard,
                             String recompute, int grad_accum_steps, String device,
                             String precision, String loss_scale, int loss_scale_window,
                             String offload_params, String offload_optimizer, String offload_dir, int prefetch_depth) {
    /** Values {@code train.precision} may take. */
    public static final java.util.List<String> PRECISIONS = java.util.List.of("fp32", "fp16", "bf16");

    /** Values {@code train.offload_params} and {@code train.offload_optimizer} may take. */
    public static final java.util.List<String> OFFLOAD_TIERS = java.util.List.of("none", "disk");

    public static TrainingConfig defaults() {
        return new TrainingConfig("shakespeare_char", "runs", 2000, 12, 250, 20, 200, 10, 500, 2, 1337L, 0,
                "\n", 300,
                "", "", true, 0, 0, 0.0, 0.0, 0, 0.0, 0.0, 0.001, 1.0, true, "none", 1, "cpu", "fp32", "dynamic", 2000,
                "none", "none", "", 2);
    }
}
