package dev.kiln.train;

import dev.kiln.KilnException;
import dev.kiln.dist.DataParallel;
import dev.kiln.dist.PipelineParallel;
import dev.kiln.dist.ProcessGroup;
import dev.kiln.dist.StageOptimizer;
import dev.kiln.dist.TensorParallel;
import dev.kiln.dist.ShardedOptimizer;
import dev.kiln.nn.Parameter;
import dev.kiln.hf.HfDirectory;
import dev.kiln.hf.HfInterchange;
import dev.kiln.nn.Lora;
import dev.kiln.nn.Qat;
import dev.kiln.nn.models.CausalLm;
import dev.kiln.nn.models.Gpt;
import dev.kiln.nn.models.GptHfFormat;
import dev.kiln.optim.Adafactor;
import dev.kiln.optim.AdamW;
import dev.kiln.optim.AdamW8bit;
import dev.kiln.optim.GradScaler;
import dev.kiln.optim.Lamb;
import dev.kiln.optim.Lars;
import dev.kiln.optim.Lion;
import dev.kiln.optim.MixedPrecisionOptimizer;
import dev.kiln.optim.Optimizer;
import dev.kiln.optim.PagedMasters;
import dev.kiln.optim.ParamGroup;
import dev.kiln.optim.Sgd;
import dev.kiln.optim.WeightAverage;
import dev.kiln.tensor.DType;
import dev.kiln.tensor.MemoryCategory;
import dev.kiln.tensor.MemoryScope;
import dev.kiln.tensor.MemoryTracker;
import dev.kiln.tensor.Rng;
import dev.kiln.tensor.Safetensors;
import dev.kiln.tensor.Tensor;
import dev.kiln.train.config.AveragingConfig;
import dev.kiln.train.config.LoraConfig;
import dev.kiln.train.config.OptimConfig;
import dev.kiln.train.config.QatConfig;
import dev.kiln.train.config.RunConfig;

import java.io.PrintStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;

/**
 * What a run is built from, as its config describes it: the model (with LoRA adapters and fake
 * quantisation), the base weights a fine-tune starts from, the optimizer over the parameter groups
 * (and its extension after growth), the weight averages, the batch-size learning-rate rule.
 */
public final class RunSetup {
    private RunSetup() {}

    /**
     * The run's optimizer: {@link #optimizer(OptimConfig, CausalLm)}, wrapped for mixed precision when {@code train.precision}
     * is fp16 (with the loss scaler {@code train.loss_scale} describes) or bf16.
     */
    public static Optimizer optimizer(RunConfig cfg, CausalLm model) {
        return optimizer(cfg, model, null);
    }

    /**
     * {@link #optimizer(RunConfig, CausalLm)}, split by block for {@code offload} when it is not null ({@link Offload#optimizer};
     * GPT only, which config validation enforces).
     */
    public static Optimizer optimizer(RunConfig cfg, CausalLm model, Offload offload) {
        Optimizer opt = offload == null ? optimizer(cfg.optim(), model) : offload.optimizer(cfg.optim(), (Gpt) model);
        var tc = cfg.train();
        PipelineParallel pipe = PipelineParallel.active(); // pipeline parallel: masters of this stage's parameters only
        Map<String, Parameter> local = pipe == null ? model.trainableParameters() : pipe.parameters();
        DataParallel dp = DataParallel.active();
        // parameter offload: the offloaded blocks' fp32 masters are the tier's copies (Offload is their PagedMasters);
        // ZeRO-3: the parameters other ranks own have their masters there (offload and data parallelism exclude each other)
        PagedMasters paged = offload != null ? offload : dp != null ? dp.pagedMasters() : null;
        Optimizer out = switch (tc.precision()) {
            case "fp16" -> new MixedPrecisionOptimizer(opt, local, DType.F16, tc.loss_scale().equals("dynamic")
                    ? GradScaler.dynamic(GradScaler.DEFAULT_INIT_SCALE, tc.loss_scale_window())
                    : GradScaler.fixed(Double.parseDouble(tc.loss_scale().trim())), paged);
            case "bf16" -> new MixedPrecisionOptimizer(opt, local, DType.BF16, null, paged);
            default -> opt;
        };
        // ZeRO-2/3: each rank holds only its own gradients, so the ranks vote on overflow
        // tensor / pipeline parallel: a rank sees only its shard's or stage's gradients, so the whole world votes
        if (out instanceof MixedPrecisionOptimizer mp && (pipe != null || TensorParallel.active() != null))
            mp.agreeOnOverflow(ProcessGroup.world()::anyRank);
        else if (out instanceof MixedPrecisionOptimizer mp && dp != null && dp.zeroStage() >= 2) mp.agreeOnOverflow(dp::anyRank);
        return out;
    }

    /**
     * The optimizer {@code optim.optimizer} names, over the standard decay / no-decay groups of the trainable parameters
     * (LoRA: the adapters only); under ZeRO (parallel.zero_stage >= 1) this rank's optimizer covers only the parameters it owns,
     * under pipeline parallelism only its stage's.
     */
    public static Optimizer optimizer(OptimConfig oc, CausalLm model) {
        try (var a = MemoryTracker.attribute(MemoryCategory.OPTIMIZER_STATE)) {
            PipelineParallel pipe = PipelineParallel.active(); // pipeline parallel: this stage's parameters only
            Map<String, Parameter> trainable = pipe == null ? model.trainableParameters() : pipe.parameters();
            DataParallel dp = DataParallel.active();
            Optimizer opt = dp == null || dp.zeroStage() == 0 ? newOptimizer(oc, model, trainable)
                    : new ShardedOptimizer(newOptimizer(oc, model, dp.optimizerShard(trainable)), dp, () -> newOptimizer(oc, model, trainable));
            return pipe == null ? opt : new StageOptimizer(opt, trainable.keySet(), () -> newOptimizer(oc, model, model.trainableParameters()));
        }
    }

    /** {@link #optimizer(OptimConfig, CausalLm)} over some of the model's trainable parameters (offload: one block's). */
    static Optimizer optimizer(OptimConfig oc, CausalLm model, Map<String, dev.kiln.nn.Parameter> params) {
        try (var a = MemoryTracker.attribute(MemoryCategory.OPTIMIZER_STATE)) {
            return newOptimizer(oc, model, params);
        }
    }

    /** The optimizer's parameter groups over {@code params} (their order is the order of its state). */
    static List<ParamGroup> paramGroups(OptimConfig oc, CausalLm model, Map<String, dev.kiln.nn.Parameter> params) {
        // μP (model.init=mup): hidden matrices get learning rate × base_width/n_embd; see Gpt
        return model instanceof Gpt gpt && gpt.config.mup()
                ? ParamGroup.widthScaled(params, Gpt::isHiddenMatrix, gpt.config.mupRatio(), oc.weight_decay(), oc.no_decay_weight_decay())
                : ParamGroup.standard(params, oc.weight_decay(), oc.no_decay_weight_decay());
    }

    private static Optimizer newOptimizer(OptimConfig oc, CausalLm model, Map<String, dev.kiln.nn.Parameter> params) {
        List<ParamGroup> groups = paramGroups(oc, model, params);
        return switch (oc.optimizer()) {
            case "adamw" -> new AdamW(groups, oc.beta1(), oc.beta2(), oc.eps());
            case "adamw8bit" -> new AdamW8bit(groups, oc.beta1(), oc.beta2(), oc.eps());
            case "sgd" -> new Sgd(groups, oc.momentum(), oc.nesterov());
            case "lamb" -> new Lamb(groups, oc.beta1(), oc.beta2(), oc.eps());
            case "lars" -> new Lars(groups, oc.momentum(), oc.trust_coefficient(), oc.eps());
            case "lion" -> new Lion(groups, oc.beta1(), oc.beta2());
            // Hugging Face's defaults: β2 decay exponent −0.8, ε1 1e-30, ε2 1e-3, update clipping 1
            case "adafactor" -> new Adafactor(groups, -0.8, 1e-30, 1e-3, 1.0);
            default -> throw new TrainingException("optim.optimizer " + oc.optimizer() + " is not one of " + RunConfig.OPTIMIZERS);
        };
    }

    /**
     * The model a run config describes ({@code model.vocab_size} resolved): the GPT or Llama ({@code model.arch}) with its seed's
     * initialisation, LoRA adapters over a frozen base when {@code lora.rank > 0} (adapter init from a stream of
     * its own, so the base init is the same with and without), and fake quantisation when {@code qat:} asks for it
     * (active from the start when {@code qat.start_step} is 0). Base weights from {@code lora.init_from} are
     * loaded separately ({@link #loadBase}), since a checkpoint of the run replaces them anyway.
     */
    public static CausalLm buildModel(RunConfig cfg) {
        // the scope frees the initial values (randn, zeros) that each Parameter copies into persistent memory
        try (var scope = MemoryScope.open()) {
            return newModel(cfg);
        }
    }

    private static CausalLm newModel(RunConfig cfg) {
        CausalLm model = CausalLm.build(cfg.model(), cfg.train().seed(), DType.F32);
        LoraConfig lc = cfg.lora();
        if (lc.rank() > 0) {
            try {
                Lora.apply(model, lc.targetList(), lc.rank(), lc.alpha(), lc.dropout(), new Rng(cfg.train().seed() ^ 0x10AA_10AAL), model.dropoutRng());
            } catch (KilnException e) {
                throw new TrainingException("lora.targets: " + e.getMessage(), e);
            }
        }
        model.setRecompute(dev.kiln.nn.Recompute.parse(cfg.train().recompute()));
        QatConfig qc = cfg.qat();
        if (qc.enabled()) {
            Qat.apply(model, qc.bits(), qc.weights(), qc.activations());
            Qat.setActive(model, qc.activeAfter(0));
        }
        return model;
    }

    /**
     * Loads the base weights named by {@code lora.init_from} into the model's base parameters: a .safetensors
     * file in HF GPT-2 layout (int8 exports are dequantised), a Hugging Face model directory (config.json +
     * model.safetensors, validated), a checkpoint directory, or a run directory (its newest checkpoint that verifies).
     */
    public static void loadBase(CausalLm model, String initFrom, PrintStream out) {
        Path p = Workspace.resolve(initFrom);
        Path file;
        if (HfDirectory.isModelDirectory(p) && !Files.isRegularFile(p.resolve(CheckpointStore.STATE_FILE))) {
            try (var scope = MemoryScope.open()) { // a Hugging Face model directory: checked against its config.json
                HfInterchange.loadInto(model, HfDirectory.read(p), p.toString());
            } catch (KilnException e) {
                throw new TrainingException("lora.init_from: " + e.getMessage(), e);
            }
            out.println("kiln: base weights from the Hugging Face model " + p);
            return;
        }
        if (Files.isRegularFile(p)) {
            file = p;
        } else if (Files.isRegularFile(p.resolve(CheckpointStore.MODEL_FILE))) {
            String fault = CheckpointStore.verify(p);
            if (fault != null) throw new TrainingException("lora.init_from: checkpoint " + p + " failed verification: " + fault);
            file = p.resolve(CheckpointStore.MODEL_FILE);
        } else if (Files.isDirectory(p)) {
            Path ckpt = new CheckpointStore(p).latestVerified(out).orElseThrow(() -> new TrainingException(
                    "lora.init_from: " + p + " has no checkpoint that verifies (expected " + p.resolve("checkpoints/step-*") + ")"));
            file = ckpt.resolve(CheckpointStore.MODEL_FILE);
        } else {
            throw new TrainingException("lora.init_from: " + p + " not found (a run directory, a checkpoint directory or a .safetensors file)");
        }
        try (var scope = MemoryScope.open()) {
            Map<String, Tensor> tensors = Safetensors.read(file).tensors();
            if (GptHfFormat.isInt8(tensors)) tensors = GptHfFormat.dequantizeInt8(tensors, file.toString());
            model.loadHfBase(tensors, file.toString());
        } catch (TrainingException e) {
            throw e;
        } catch (KilnException e) {
            throw new TrainingException("lora.init_from: " + e.getMessage(), e);
        }
        out.println("kiln: base weights from " + file);
    }

    /** The weight averages {@code averaging:} switches on, in the order ema, swa, lawa. */
    public static List<WeightAverage> averages(AveragingConfig ac, CausalLm model) {
        List<WeightAverage> out = new ArrayList<>();
        // averaged weights are training state, like the optimizer's moments
        try (var a = MemoryTracker.attribute(MemoryCategory.OPTIMIZER_STATE)) {
            if (ac.ema_decay() > 0) out.add(WeightAverage.ema(model.namedParameters(), ac.ema_decay()));
            if (ac.swa_start() > 0) out.add(WeightAverage.swa(model.namedParameters(), ac.swa_start(), ac.swa_interval()));
            if (ac.lawa_k() > 0) out.add(WeightAverage.lawa(model.namedParameters(), ac.lawa_k(), ac.lawa_interval()));
        }
        return out;
    }

    /**
     * The optimizer over the model's parameters after growth: what {@code old} holds (moments by parameter
     * name, step count) carries over; the parameters not in {@code before} (the new blocks') start from zero
     * state, and under AdamW count their own steps from 1 for bias correction, as PyTorch's per-parameter
     * state does (other optimizers keep their one shared count).
     */
    public static Optimizer extended(OptimConfig oc, CausalLm model, Optimizer old, Set<String> before) {
        Optimizer opt = optimizer(oc, model);
        Map<String, Tensor> had = old.stateDict();
        try (var scope = MemoryScope.open()) {
            Map<String, Tensor> merged = new LinkedHashMap<>();
            opt.stateDict().forEach((k, v) -> merged.put(k, had.containsKey(k) ? had.get(k) : Tensor.zerosLike(v)));
            had.forEach(merged::putIfAbsent); // e.g. AdamW's own step counts of parameters that joined earlier
            opt.loadStateDict(merged, old.stepCount());
        }
        if (opt instanceof AdamW adam)
            adam.joinedAt(model.namedParameters().keySet().stream().filter(k -> !before.contains(k)).toList(), old.stepCount());
        return opt;
    }

    /** optim.lr_scaling: the learning-rate multiplier for a batch of {@code batch} sequences. */
    static double lrScaling(OptimConfig oc, int batch) {
        return switch (oc.lr_scaling()) {
            case "linear" -> (double) batch / oc.ref_batch_size();
            case "sqrt" -> Math.sqrt((double) batch / oc.ref_batch_size());
            default -> 1.0;
        };
    }
}
