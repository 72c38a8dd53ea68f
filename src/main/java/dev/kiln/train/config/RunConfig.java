package dev.kiln.train.config;

import dev.kiln.nn.models.GptConfig;
import dev.kiln.optim.LrSchedule;
import java.util.List;
import java.util.Set;

/**
 * Everything one training job needs, as read from a YAML/JSON file and {@code --set} overrides by
 * {@link ConfigLoader}. Top-level keys: {@code model}, {@code data}, {@code optim}, {@code train}, {@code faults},
 * {@code averaging}, {@code growth}, {@code curriculum}, {@code lora}, {@code qat}, {@code parallel}.
 */
public record RunConfig(GptConfig model, DataConfig data, OptimConfig optim, TrainingConfig train, FaultConfig faults,
                        AveragingConfig averaging, GrowthConfig growth, CurriculumConfig curriculum,
                        LoraConfig lora, QatConfig qat, ParallelConfig parallel) {

    /** Tokenizers {@code data.tokenizer} may name. */
    public static final Set<String> TOKENIZERS = Set.of("char", "gpt2");

    /** Optimizers {@code optim.optimizer} may name. */
    public static final List<String> OPTIMIZERS = List.of("adamw", "adamw8bit", "sgd", "lamb", "lars", "lion", "adafactor");

    /** Schedules {@code optim.schedule} may name. */
    public static final List<String> SCHEDULES = LrSchedule.KINDS;

    /** Rules {@code optim.lr_scaling} may name. */
    public static final List<String> LR_SCALING = List.of("none", "linear", "sqrt");

    /** Optimizers μP's Adam learning-rate rule ({@code model.init=mup}) applies to. */
    public static final List<String> MUP_OPTIMIZERS = List.of("adamw", "adamw8bit", "lion");

    /** Modes {@code data.dedup} may name. */
    public static final List<String> DEDUP = dev.kiln.data.Dedup.MODES;

    /**
     * The built-in job: nanoGPT's CPU shakespeare-char recipe (4 layers, 4 heads, 128 wide, 64-token
     * context, vocabulary from the tokenizer) on the bundled corpus.
     */
    public static RunConfig defaults() {
        return new RunConfig(new GptConfig(4, 4, 128, 64, 0, 0.0, true),
                DataConfig.defaults(), OptimConfig.defaults(), TrainingConfig.defaults(), FaultConfig.defaults(),
                AveragingConfig.defaults(), GrowthConfig.defaults(), CurriculumConfig.defaults(), LoraConfig.defaults(), QatConfig.defaults(),
                ParallelConfig.defaults());
    }

    public RunConfig withModel(GptConfig model) {
        return new RunConfig(model, data, optim, train, faults, averaging, growth, curriculum, lora, qat, parallel);
    }

    public RunConfig withData(DataConfig data) {
        return new RunConfig(model, data, optim, train, faults, averaging, growth, curriculum, lora, qat, parallel);
    }

    public RunConfig withOptim(OptimConfig optim) {
        return new RunConfig(model, data, optim, train, faults, averaging, growth, curriculum, lora, qat, parallel);
    }

    public RunConfig withTrain(TrainingConfig train) {
        return new RunConfig(model, data, optim, train, faults, averaging, growth, curriculum, lora, qat, parallel);
    }

    /**
     * Semantic checks. Throws a {@link ConfigException} naming the first dotted key at fault
     * (without a source; {@link ConfigLoader} adds where the value came from).
     *
     * @return this, for chaining
     */
    public RunConfig validate() {
        notNull("model", model);
        notNull("data", data);
        notNull("optim", optim);
        notNull("train", train);
        notNull("faults", faults);
        notNull("averaging", averaging);
        notNull("growth", growth);
        notNull("curriculum", curriculum);
        notNull("lora", lora);
        notNull("qat", qat);
        notNull("parallel", parallel);
        if (faults.nan_skip_limit() < 1) fail("faults.nan_skip_limit", "must be >= 1, got " + faults.nan_skip_limit());
        if (faults.max_rollbacks() < 0) fail("faults.max_rollbacks", "must be >= 0, got " + faults.max_rollbacks());
        if (!(faults.rollback_lr_factor() > 0 && faults.rollback_lr_factor() <= 1))
            fail("faults.rollback_lr_factor", "must be in (0, 1], got " + faults.rollback_lr_factor());
        notNull("faults.preempt_file", faults.preempt_file());
        if (faults.host_memory_limit_mib() < 0) fail("faults.host_memory_limit_mib", "must be >= 0, got " + faults.host_memory_limit_mib());

        try {
            dev.kiln.tensor.Device.parse(train.device());
        } catch (IllegalArgumentException e) {
            fail("train.device", e.getMessage());
        }

        GptConfig m = model;
        positive("model.n_layer", m.n_layer());
        positive("model.n_head", m.n_head());
        positive("model.n_embd", m.n_embd());
        positive("model.block_size", m.block_size());
        nonNegative("model.vocab_size", m.vocab_size());
        if (!(m.dropout() >= 0 && m.dropout() < 1)) fail("model.dropout", "must be in [0, 1), got " + m.dropout());
        if (m.n_embd() % m.n_head() != 0) {
            fail("model.n_embd", "must be divisible by model.n_head (" + m.n_head() + "), got " + m.n_embd(),
                    "model.n_head");
        }
        oneOf("model.init", m.init(), GptConfig.INITS);
        nonNegative("model.mup_base_width", m.mup_base_width());
        oneOf("model.arch", m.arch(), GptConfig.ARCHS);
        validateArch(m);

        DataConfig d = data;
        notBlank("data.corpus", d.corpus());
        notNull("data.tokenizer", d.tokenizer());
        if (!TOKENIZERS.contains(d.tokenizer())) {
            fail("data.tokenizer", "must be one of char, gpt2, got \"" + d.tokenizer() + "\"");
        }
        notNull("data.dir", d.dir());
        notNull("data.mixture", d.mixture());
        if (!d.mixture().isBlank()) {
            try {
                Mixture.parse(d.mixture());
            } catch (IllegalArgumentException e) {
                fail("data.mixture", e.getMessage());
            }
        }
        oneOf("data.dedup", d.dedup(), DEDUP);

        OptimConfig o = optim;
        if (!(o.learning_rate() > 0 && Double.isFinite(o.learning_rate()))) {
            fail("optim.learning_rate", "must be > 0, got " + o.learning_rate());
        }
        if (!(o.min_lr() >= 0 && Double.isFinite(o.min_lr()))) fail("optim.min_lr", "must be >= 0, got " + o.min_lr());
        if (o.min_lr() > o.learning_rate()) {
            fail("optim.min_lr", "must be <= optim.learning_rate (" + o.learning_rate() + "), got " + o.min_lr(),
                    "optim.learning_rate");
        }
        nonNegative("optim.warmup_iters", o.warmup_iters());
        positive("optim.lr_decay_iters", o.lr_decay_iters());
        if (o.lr_decay_iters() < o.warmup_iters()) {
            fail("optim.lr_decay_iters", "must be >= optim.warmup_iters (" + o.warmup_iters() + "), got "
                    + o.lr_decay_iters(), "optim.warmup_iters");
        }
        unitInterval("optim.beta1", o.beta1());
        unitInterval("optim.beta2", o.beta2());
        if (!(o.eps() > 0 && Double.isFinite(o.eps()))) fail("optim.eps", "must be > 0, got " + o.eps());
        if (!(o.weight_decay() >= 0 && Double.isFinite(o.weight_decay()))) {
            fail("optim.weight_decay", "must be >= 0, got " + o.weight_decay());
        }
        if (!(o.grad_clip() >= 0 && Double.isFinite(o.grad_clip()))) {
            fail("optim.grad_clip", "must be >= 0 (0 = no clipping), got " + o.grad_clip());
        }
        oneOf("optim.optimizer", o.optimizer(), OPTIMIZERS);
        oneOf("optim.schedule", o.schedule(), SCHEDULES);
        if (!(o.decay_fraction() > 0 && o.decay_fraction() <= 1)) fail("optim.decay_fraction", "must be in (0, 1], got " + o.decay_fraction());
        unitInterval("optim.momentum", o.momentum());
        if (o.nesterov() && o.momentum() == 0) fail("optim.nesterov", "needs optim.momentum > 0", "optim.momentum");
        if (!(o.trust_coefficient() > 0 && Double.isFinite(o.trust_coefficient())))
            fail("optim.trust_coefficient", "must be > 0, got " + o.trust_coefficient());
        if (!(o.no_decay_weight_decay() >= 0 && Double.isFinite(o.no_decay_weight_decay())))
            fail("optim.no_decay_weight_decay", "must be >= 0, got " + o.no_decay_weight_decay());
        oneOf("optim.lr_scaling", o.lr_scaling(), LR_SCALING);
        nonNegative("optim.ref_batch_size", o.ref_batch_size());
        if (!o.lr_scaling().equals("none") && o.ref_batch_size() == 0)
            fail("optim.ref_batch_size", "must be > 0 when optim.lr_scaling is " + o.lr_scaling(), "optim.lr_scaling");
        if (o.schedule().equals("one_cycle") && o.min_lr() >= o.learning_rate() / 25)
            fail("optim.min_lr", "must be below the one-cycle start learning_rate/25 (" + o.learning_rate() / 25 + "), got " + o.min_lr(), "optim.schedule");

        TrainingConfig t = train;
        notBlank("train.name", t.name());
        if (t.name().contains("/") || t.name().contains("\\") || t.name().equals(".") || t.name().equals("..")) {
            fail("train.name", "must be a plain directory name (no '/' or '\\'), got \"" + t.name() + "\"");
        }
        notBlank("train.out_dir", t.out_dir());
        positive("train.max_iters", t.max_iters());
        positive("train.batch_size", t.batch_size());
        positive("train.eval_interval", t.eval_interval());
        positive("train.eval_iters", t.eval_iters());
        nonNegative("train.final_eval_iters", t.final_eval_iters());
        positive("train.log_interval", t.log_interval());
        positive("train.checkpoint_interval", t.checkpoint_interval());
        positive("train.keep_checkpoints", t.keep_checkpoints());
        nonNegative("train.threads", t.threads());
        nonNegative("train.sample_tokens", t.sample_tokens());
        notNull("train.sample_prompt", t.sample_prompt());
        if (t.sample_tokens() > 0 && t.sample_prompt().isEmpty()) {
            fail("train.sample_prompt", "must not be empty when train.sample_tokens > 0", "train.sample_tokens");
        }
        notNull("train.budget_time", t.budget_time());
        notNull("train.budget_tokens", t.budget_tokens());
        if (!t.budget_time().isEmpty()) {
            try {
                Budget.parseSeconds(t.budget_time());
            } catch (IllegalArgumentException e) {
                fail("train.budget_time", e.getMessage());
            }
        }
        if (!t.budget_tokens().isEmpty()) {
            try {
                Budget.parseCount(t.budget_tokens());
            } catch (IllegalArgumentException e) {
                fail("train.budget_tokens", e.getMessage());
            }
        }
        if (!t.budget_time().isEmpty() && !t.budget_tokens().isEmpty())
            fail("train.budget_tokens", "set either train.budget_time or train.budget_tokens, not both", "train.budget_time");
        nonNegative("train.batch_size_start", t.batch_size_start());
        nonNegative("train.batch_ramp_iters", t.batch_ramp_iters());
        if (t.batch_size_start() > t.batch_size())
            fail("train.batch_size_start", "must be <= train.batch_size (" + t.batch_size() + "), got " + t.batch_size_start(), "train.batch_size");
        if (t.batch_size_start() > 0 && t.batch_ramp_iters() == 0)
            fail("train.batch_ramp_iters", "must be > 0 when train.batch_size_start is set", "train.batch_size_start");
        if (!(t.label_smoothing() >= 0 && t.label_smoothing() < 1)) fail("train.label_smoothing", "must be in [0, 1), got " + t.label_smoothing());
        if (!(t.z_loss() >= 0 && Double.isFinite(t.z_loss()))) fail("train.z_loss", "must be >= 0, got " + t.z_loss());
        nonNegative("train.early_stop_patience", t.early_stop_patience());
        if (!(t.early_stop_min_delta() >= 0 && Double.isFinite(t.early_stop_min_delta())))
            fail("train.early_stop_min_delta", "must be >= 0, got " + t.early_stop_min_delta());
        unitInterval("train.layer_drop", t.layer_drop());
        if (!(t.layer_drop_gamma() >= 0 && Double.isFinite(t.layer_drop_gamma()))) fail("train.layer_drop_gamma", "must be >= 0, got " + t.layer_drop_gamma());
        if (!(t.select_fraction() > 0 && t.select_fraction() <= 1))
            fail("train.select_fraction", "must be in (0, 1] (1 = off), got " + t.select_fraction());
        if (dev.kiln.nn.Recompute.parse(t.recompute()) == null)
            fail("train.recompute", "must be one of " + dev.kiln.nn.Recompute.NAMES + ", got " + t.recompute());
        if (m.llama() && !"none".equals(t.recompute()))
            fail("train.recompute", "is implemented for model.arch gpt only, got " + t.recompute() + " with model.arch llama", "model.arch");
        positive("train.grad_accum_steps", t.grad_accum_steps());
        validatePrecision(t, faults, growth);
        if (m.llama() && (!t.offload_params().equals("none") || !t.offload_optimizer().equals("none")))
            fail(!t.offload_params().equals("none") ? "train.offload_params" : "train.offload_optimizer", "is implemented for model.arch gpt only", "model.arch");

        AveragingConfig a = averaging;
        unitInterval("averaging.ema_decay", a.ema_decay());
        nonNegative("averaging.swa_start", a.swa_start());
        positive("averaging.swa_interval", a.swa_interval());
        nonNegative("averaging.lawa_k", a.lawa_k());
        positive("averaging.lawa_interval", a.lawa_interval());

        // the cross-section rules of the model-centric techniques
        if (m.mup() && !MUP_OPTIMIZERS.contains(optim.optimizer()))
            fail("model.init", "mup implements μP's Adam learning-rate rule, which holds for adamw and lion (entrywise-normalised updates); optim.optimizer is \"" + optim.optimizer() + "\"", "optim.optimizer");
        GrowthConfig g = growth;
        nonNegative("growth.at_step", g.at_step());
        nonNegative("growth.to_layers", g.to_layers());
        oneOf("growth.method", g.method(), GrowthConfig.METHODS);
        if (g.on() && g.to_layers() <= m.n_layer())
            fail("growth.to_layers", "must be > model.n_layer (" + m.n_layer() + ") when growth.at_step is set, got " + g.to_layers(), "growth.at_step");
        if (g.on() && (a.ema_decay() > 0 || a.swa_start() > 0 || a.lawa_k() > 0))
            fail("growth.at_step", "cannot be combined with weight averaging (averaging.*) yet: the averages would miss the new blocks", "averaging.ema_decay");
        CurriculumConfig c = curriculum;
        if (c.seq_len_start() != 0) {
            if (c.seq_len_start() < 0 || c.seq_len_start() % 8 != 0)
                fail("curriculum.seq_len_start", "must be 0 (off) or a positive multiple of 8, got " + c.seq_len_start());
            if (c.seq_len_start() > m.block_size())
                fail("curriculum.seq_len_start", "must be <= model.block_size (" + m.block_size() + "), got " + c.seq_len_start(), "model.block_size");
            positive("curriculum.seq_len_iters", c.seq_len_iters());
        }
        oneOf("curriculum.pacing", c.pacing(), CurriculumConfig.PACINGS);
        if (!(c.competence_start() > 0 && c.competence_start() <= 1))
            fail("curriculum.competence_start", "must be in (0, 1], got " + c.competence_start());
        if (c.difficulty()) positive("curriculum.competence_iters", c.competence_iters());
        if (c.difficulty() && !d.mixture().isBlank())
            fail("curriculum.difficulty", "cannot be combined with data.mixture (scores belong to one train.bin)", "data.mixture");

        LoraConfig l = lora;
        nonNegative("lora.rank", l.rank());
        notNull("lora.targets", l.targets());
        notNull("lora.init_from", l.init_from());
        if (!(l.dropout() >= 0 && l.dropout() < 1)) fail("lora.dropout", "must be in [0, 1), got " + l.dropout());
        if (l.rank() > 0) {
            if (!(l.alpha() > 0 && Double.isFinite(l.alpha()))) fail("lora.alpha", "must be > 0, got " + l.alpha());
            if (l.targetList().isEmpty()) fail("lora.targets", "must name at least one Linear layer (e.g. c_attn) when lora.rank > 0", "lora.rank");
            for (String target : l.targetList())
                if (!target.matches("[A-Za-z0-9_]+(\\.[A-Za-z0-9_]+)*"))
                    fail("lora.targets", "\"" + target + "\" is not a module name like c_attn or mlp.c_proj");
        }

        QatConfig q = qat;
        if (q.bits() < 2 || q.bits() > 8) fail("qat.bits", "must be between 2 and 8 (codes are stored as int8), got " + q.bits());
        nonNegative("qat.start_step", q.start_step());
        if (q.enabled() && l.rank() > 0)
            fail(q.weights() ? "qat.weights" : "qat.activations", "cannot be combined with lora.rank > 0 (QAT of a frozen base under adapters is not implemented; "
                    + "export a LoRA run with kiln export --int8 for post-training int8 weights)", "lora.rank");
        if (growth.on() && l.rank() > 0)
            fail("growth.at_step", "cannot be combined with lora.rank > 0 (new blocks would have no adapters)", "lora.rank");
        ParallelConfig pc = parallel;
        nonNegative("parallel.dp", pc.dp());
        if (pc.zero_stage() < 0 || pc.zero_stage() > 3) fail("parallel.zero_stage", "must be 0, 1, 2 or 3, got " + pc.zero_stage());
        if (!(pc.bucket_mb() > 0 && Double.isFinite(pc.bucket_mb()))) fail("parallel.bucket_mb", "must be > 0, got " + pc.bucket_mb());
        if (!(pc.timeout_s() > 0 && Double.isFinite(pc.timeout_s()))) fail("parallel.timeout_s", "must be > 0, got " + pc.timeout_s());
        if (pc.tp() < 1) fail("parallel.tp", "must be >= 1, got " + pc.tp());
        if (pc.pp() < 1) fail("parallel.pp", "must be >= 1, got " + pc.pp());
        if (!pc.pp_schedule().equals("1f1b") && !pc.pp_schedule().equals("gpipe"))
            fail("parallel.pp_schedule", "must be 1f1b or gpipe, got '" + pc.pp_schedule() + "'");
        nonNegative("parallel.micro_batches", pc.micro_batches());
        if (!pc.checkpoint().equals("consolidated") && !pc.checkpoint().equals("sharded"))
            fail("parallel.checkpoint", "must be consolidated or sharded, got '" + pc.checkpoint() + "'");
        if (!java.util.List.of("auto", "mpi", "nccl").contains(pc.backend()))
            fail("parallel.backend", "must be auto, mpi or nccl, got '" + pc.backend() + "'");
        if (pc.backend().equals("nccl") && train.device().trim().equalsIgnoreCase("cpu"))
            fail("parallel.backend", "nccl averages GPU memory and needs train.device cuda[:i]; a CPU run uses auto or mpi", "train.device");
        return this;
    }

    /** model.arch's own keys and the GPT-only techniques: each key belongs to the architecture that reads it. */
    private void validateArch(GptConfig m) {
        if (!m.llama()) {
            if (m.n_kv_head() != 0) fail("model.n_kv_head", "is a Llama key; set model.arch: llama to use it", "model.arch");
            if (m.intermediate_size() != 0) fail("model.intermediate_size", "is a Llama key (GPT's MLP is 4·n_embd); set model.arch: llama to use it", "model.arch");
            if (m.rope_theta() != GptConfig.DEFAULT_ROPE_THETA) fail("model.rope_theta", "is a Llama key (GPT has learned positions); set model.arch: llama to use it", "model.arch");
            if (m.norm_eps() != GptConfig.DEFAULT_NORM_EPS) fail("model.norm_eps", "is a Llama key (GPT's LayerNorm eps is fixed at 1e-5); set model.arch: llama to use it", "model.arch");
            return;
        }
        nonNegative("model.n_kv_head", m.n_kv_head());
        if (m.n_kv_head() > 0 && m.n_head() % m.n_kv_head() != 0)
            fail("model.n_kv_head", "must divide model.n_head (" + m.n_head() + "), got " + m.n_kv_head(), "model.n_head");
        if (m.headSize() % 2 != 0) fail("model.n_embd", "must give an even head size n_embd/n_head for rotary embeddings, got " + m.headSize(), "model.n_head");
        nonNegative("model.intermediate_size", m.intermediate_size());
        if (!(m.rope_theta() > 0 && Double.isFinite(m.rope_theta()))) fail("model.rope_theta", "must be > 0, got " + m.rope_theta());
        if (!(m.norm_eps() > 0 && Double.isFinite(m.norm_eps()))) fail("model.norm_eps", "must be > 0, got " + m.norm_eps());
        if (m.bias()) fail("model.bias", "must be false for model.arch llama (Llama has no biases)", "model.arch");
        if (m.dropout() != 0) fail("model.dropout", "must be 0 for model.arch llama (Llama has no dropout here)", "model.arch");
        if (!m.init().equals("gpt2"))
            fail("model.init", "must stay gpt2 (the default) for model.arch llama, which uses Hugging Face Llama's init (every matrix N(0, 0.02)); got \"" + m.init() + "\"", "model.arch");
        if (growth.on()) fail("growth.at_step", "is implemented for model.arch gpt only", "model.arch");
        if (train.layer_drop() > 0) fail("train.layer_drop", "is implemented for model.arch gpt only", "model.arch");
    }

    /** train.precision, train.loss_scale(_window) and faults.overflow_steps. */
    private static void validatePrecision(TrainingConfig t, FaultConfig f, GrowthConfig g) {
        oneOf("train.precision", t.precision(), TrainingConfig.PRECISIONS);
        notNull("train.loss_scale", t.loss_scale());
        if (!t.loss_scale().equals("dynamic")) {
            double s;
            try {
                s = Double.parseDouble(t.loss_scale().trim());
            } catch (NumberFormatException e) {
                s = Double.NaN;
            }
            if (!(s > 0 && Double.isFinite(s))) fail("train.loss_scale", "must be \"dynamic\" or a positive number, got \"" + t.loss_scale() + "\"");
        }
        positive("train.loss_scale_window", t.loss_scale_window());
        notNull("faults.overflow_steps", f.overflow_steps());
        if (!f.overflow_steps().isBlank()) {
            for (String part : f.overflow_steps().split(",")) {
                long v;
                try {
                    v = Long.parseLong(part.trim());
                } catch (NumberFormatException e) {
                    v = -1;
                }
                if (v < 1) fail("faults.overflow_steps", "must list steps >= 1 separated by commas (e.g. \"5,6\"), got \"" + f.overflow_steps() + "\"");
            }
            if (!t.precision().equals("fp16")) fail("faults.overflow_steps", "injects fp16 gradient overflows; it needs train.precision=fp16, got " + t.precision(), "train.precision");
        }
        oneOf("train.offload_params", t.offload_params(), TrainingConfig.OFFLOAD_TIERS);
        oneOf("train.offload_optimizer", t.offload_optimizer(), TrainingConfig.OFFLOAD_TIERS);
        notNull("train.offload_dir", t.offload_dir());
        nonNegative("train.prefetch_depth", t.prefetch_depth());
        boolean offload = !t.offload_params().equals("none") || !t.offload_optimizer().equals("none");
        if (offload && g.on())
            fail("growth.at_step", "cannot be combined with train.offload_params / train.offload_optimizer yet (the grown blocks are not offloaded)", "train.offload_params");
        if (!t.precision().equals("fp32") && g.on())
            fail("train.precision", t.precision() + " cannot be combined with growth.at_step yet (the grown model's optimizer is rebuilt in fp32)", "growth.at_step");
    }

    private static void positive(String key, int v) {
        if (v <= 0) fail(key, "must be > 0, got " + v);
    }

    private static void nonNegative(String key, int v) {
        if (v < 0) fail(key, "must be >= 0, got " + v);
    }

    private static void unitInterval(String key, double v) {
        if (!(v >= 0 && v < 1)) fail(key, "must be in [0, 1), got " + v);
    }

    private static void oneOf(String key, String v, List<String> allowed) {
        notNull(key, v);
        if (!allowed.contains(v)) fail(key, "must be one of " + String.join(", ", allowed) + ", got \"" + v + "\"");
    }

    private static void notNull(String key, Object v) {
        if (v == null) fail(key, "is missing");
    }

    private static void notBlank(String key, String v) {
        notNull(key, v);
        if (v.isBlank()) fail(key, "must not be empty");
    }

    private static void fail(String key, String problem, String... related) {
        throw new ConfigException(null, key, problem, List.of(related), null);
    }
}
