package dev.kiln.train.config;

/**
 * The optimizer and its learning-rate schedule. Keys under {@code optim:}. The defaults are nanoGPT's:
 * AdamW, linear warm-up then cosine decay to {@code min_lr}.
 *
 * @param learning_rate         peak learning rate, reached after {@code warmup_iters}
 * @param min_lr                the schedule's floor, reached at {@code lr_decay_iters} (or at the end of a budget)
 * @param warmup_iters          steps of linear warm-up
 * @param lr_decay_iters        step at which the decay reaches {@code min_lr}; a budgeted run replaces it
 *                              with the step count predicted for the budget
 * @param beta1                 first-moment decay (AdamW, LAMB, Lion's interpolation β1)
 * @param beta2                 second-moment decay (AdamW, LAMB; Lion's momentum β2)
 * @param eps                   denominator epsilon (AdamW, LAMB)
 * @param weight_decay          weight decay of tensors with ≥ 2 dims (matrices, embeddings)
 * @param grad_clip             clip the global gradient norm to this; 0 = no clipping
 * @param optimizer             adamw, adamw8bit (block-wise 8-bit moments), sgd, lamb, lars, lion or adafactor
 * @param schedule              constant, cosine, linear, inverse_sqrt, one_cycle or wsd (warmup-stable-decay)
 * @param decay_fraction        wsd: the fraction of the steps spent in the final decay to {@code min_lr}
 * @param momentum              SGD and LARS momentum
 * @param nesterov              SGD: Nesterov momentum
 * @param trust_coefficient     LARS trust coefficient η
 * @param no_decay_weight_decay weight decay of 1-D tensors (biases, norm gains): the second parameter group
 * @param lr_scaling            none, linear or sqrt: scale {@code learning_rate} by (batch tokens /
 *                              reference)^1 or ^½ (Goyal et al.; Krizhevsky / Hoffer et al.)
 * @param ref_batch_size        the batch size (sequences) {@code learning_rate} was tuned at, for {@code lr_scaling}
 */
public record OptimConfig(double learning_rate, double min_lr, int warmup_iters, int lr_decay_iters,
                          double beta1, double beta2, double eps, double weight_decay, double grad_clip,
                          String optimizer, String schedule, double decay_fraction, double momentum, boolean nesterov,
                          double trust_coefficient, double no_decay_weight_decay, String lr_scaling, int ref_batch_size) {
    public static OptimConfig defaults() {
        return new OptimConfig(1e-3, 1e-4, 100, 2000, 0.9, 0.99, 1e-8, 0.1, 1.0,
                "adamw", "cosine", 0.2, 0.9, false, 0.001, 0.0, "none", 0);
    }
}
