package dev.kiln.train;

import com.fasterxml.jackson.databind.JsonNode;
import dev.kiln.dist.DataParallel;
import dev.kiln.dist.MpiProcessGroup;
import dev.kiln.dist.ParallelLayout;
import dev.kiln.dist.PipelineParallel;
import dev.kiln.dist.ProcessGroup;
import dev.kiln.dist.TensorParallel;
import dev.kiln.nn.Parameter;
import dev.kiln.nn.models.CausalLm;
import dev.kiln.nn.models.Gpt;
import dev.kiln.nn.models.TensorParallelism;
import dev.kiln.optim.Optimizer;
import dev.kiln.optim.ScalerEntries;
import dev.kiln.tensor.DType;
import dev.kiln.tensor.MemoryScope;
import dev.kiln.tensor.Tensor;
import dev.kiln.train.config.OptimConfig;
import dev.kiln.train.config.RunConfig;

import java.io.PrintStream;
import java.nio.file.Path;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.function.Function;

/**
 * Tensor parallelism in a run ({@code parallel.tp > 1} under mpirun): refuses what it does not support, replaces the
 * model by this rank's shard ({@link Gpt#Gpt(Gpt, TensorParallelism)}) and installs {@link TensorParallel} over the
 * layout's tp group; checkpoints hold the consolidated whole model and optimizer state, in the single-process
 * format, so they load at any world size and any tp, and resuming slices them again.
 */
final class TensorParallelRun {
    /** Optimizers whose state is one tensor of its parameter's shape per kind, and whose update is element-wise. */
    static final Set<String> OPTIMIZERS = Set.of("adamw", "sgd", "lion");

    private static OptimConfig optim; // of the run under tensor parallelism, for the whole-model optimizer of checkpoints

    private TensorParallelRun() {}

    /** Whether this process trains a tensor-parallel shard. */
    static boolean active() {
        return TensorParallel.active() != null;
    }

    /**
     * This rank's shard of {@code model} when the run is under mpirun with parallel.tp > 1 ({@code model}, the whole
     * model with the run's initialisation, is freed); otherwise {@code model} itself.
     */
    static CausalLm shard(RunConfig cfg, CausalLm model, PrintStream out) {
        TensorParallel.install(null);
        int t = cfg.parallel().tp();
        if (!ProcessGroup.launchedByMpirun() || t <= 1) return model;
        refuseUnsupported(cfg, model);
        MpiProcessGroup.setTimeoutSeconds(cfg.parallel().timeout_s());
        ParallelLayout layout = ParallelRun.layout(cfg);
        TensorParallel tp = new TensorParallel(layout.tp());
        Gpt full = (Gpt) model, shard;
        try (var scope = MemoryScope.open()) { // frees the slices the shard's Parameters copied
            shard = new Gpt(full, tp);
        } catch (IllegalArgumentException e) {
            throw new TrainingException(e.getMessage());
        }
        for (Parameter p : full.parameters()) p.release();
        tp.shardsOf(shard);
        TensorParallel.install(tp);
        optim = cfg.optim();
        int v = full.config.vocab_size(), rows = shard.wte.weight.size(0);
        out.printf("kiln: tensor parallel over %d ranks (%s): %d of %d heads and %d of %d vocabulary rows (padded to %d) per rank; %,d of %,d parameters on this rank%n",
                t, layout.describe(), full.config.n_head() / t, full.config.n_head(), rows, v, rows * t, shard.parameterCount(), full.parameterCount());
        return shard;
    }

    /** A one-line TrainingException for the first setting tensor parallelism does not support. */
    static void refuseUnsupported(RunConfig cfg, CausalLm model) {
        String why = null;
        var tc = cfg.train();
        if (!(model instanceof Gpt)) why = "model.arch " + cfg.model().arch() + ": tensor parallelism is built for the GPT only";
        else if (cfg.lora().rank() > 0 || !cfg.lora().init_from().isEmpty()) why = "lora: is not supported with tensor parallelism";
        else if (cfg.qat().enabled()) why = "qat: is not supported with tensor parallelism";
        else if (cfg.growth().on()) why = "growth.at_step is not supported with tensor parallelism (the shards would change)";
        else if (tc.layer_drop() > 0) why = "train.layer_drop is not supported with tensor parallelism";
        else if (!tc.recompute().equals("none")) why = "train.recompute " + tc.recompute() + " is not supported with tensor parallelism";
        else if (tc.select_fraction() < 1) why = "train.select_fraction < 1 is not supported with tensor parallelism";
        else if (!tc.offload_params().equals("none") || !tc.offload_optimizer().equals("none"))
            why = "train.offload_params / train.offload_optimizer are not supported with tensor parallelism";
        else if (cfg.averaging().ema_decay() > 0 || cfg.averaging().swa_start() > 0 || cfg.averaging().lawa_k() > 0)
            why = "averaging: is not supported with tensor parallelism (the averages are not consolidated into checkpoints)";
        else if (!OPTIMIZERS.contains(cfg.optim().optimizer()))
            why = "optim.optimizer " + cfg.optim().optimizer() + " is not supported with tensor parallelism (its state or update is not per element); use one of " + OPTIMIZERS;
        if (why != null) throw new TrainingException("parallel.tp " + cfg.parallel().tp() + ": " + why);
    }

    /**
     * Saves the checkpoint of {@code state}: the shards' parameters and optimizer state are gathered into a whole model
     * and optimizer on tp rank 0 of data-parallel rank 0 (ZeRO-1: the optimizer gathered over dp first), which writes
     * it as a single process would; under pipeline parallelism each stage's shards are gathered and the stages sent to
     * world rank 0 ({@link PipelineParallel#saveFromLeadSharded}). Collective over the ranks that hold a part; returns
     * the checkpoint's directory.
     */
    static Path save(CheckpointStore store, CausalLm model, Optimizer opt, CheckpointStore.TrainerState state, JsonNode config, int keep) {
        TensorParallel tp = TensorParallel.active();
        Path dir = store.stepDirectory(state.step());
        PipelineParallel pipe = PipelineParallel.active();
        ScalerEntries scaler = ScalerEntries.of(opt); // fp16: saved beside the whole model's fp32 optimizer state
        if (pipe != null) // tp × pp: gathered over tp within each stage, then over the stages, on world rank 0
            return pipe.saveFromLeadSharded(opt, () -> {
                Gpt m = new Gpt(((Gpt) model).config, 0, DType.F32); // its random init is overwritten
                return new PipelineParallel.WholeModel(m, RunSetup.optimizer(optim, m, m.trainableParameters()));
            }, w -> store.save(w.model(), scaler.around(w.optimizer()), List.of(), state, config, keep), dir);
        Function<Optimizer, Path> write = o -> {
            Whole whole = consolidate((Gpt) model, o, tp);
            if (whole == null) return dir;
            try {
                return store.save(whole.model, scaler.around(whole.opt), List.of(), state, config, keep);
            } finally {
                whole.release();
            }
        };
        DataParallel dp = DataParallel.active();
        return dp == null ? write.apply(opt) : dp.saveFromLead(opt, write, dir);
    }

    /** A whole (unsharded) model and its optimizer, for a checkpoint. */
    private record Whole(Gpt model, Optimizer opt) {
        void release() {
            for (Parameter p : model.parameters()) p.release();
            for (Tensor t : opt.stateDict().values()) t.release();
        }
    }

    /** The whole model and optimizer state on tp rank 0 (null on the others, which only send their shards). */
    private static Whole consolidate(Gpt local, Optimizer opt, TensorParallel tp) {
        boolean lead = tp.rank() == 0;
        var splits = local.tensorParallelSplits();
        Whole whole = null;
        if (lead) {
            try (var scope = MemoryScope.open()) {
                Gpt model = new Gpt(local.config, 0, DType.F32); // its random init is overwritten below
                whole = new Whole(model, RunSetup.optimizer(optim, model, model.trainableParameters()));
            }
        }
        Map<String, Parameter> wholeParams = lead ? whole.model.namedParameters() : null;
        for (var e : local.namedParameters().entrySet()) {
            TensorParallelism.Split split = splits.get(e.getKey());
            Tensor target = lead ? wholeParams.get(e.getKey()) : null;
            if (split != null) tp.gatherInto(e.getValue(), split, target);
            else if (lead) target.copyFrom(e.getValue());
        }
        try (var scope = MemoryScope.open()) {
            Map<String, Tensor> template = lead ? whole.opt.stateDict() : null, state = new LinkedHashMap<>();
            for (var e : opt.stateDict().entrySet()) {
                String k = e.getKey();
                if (ScalerEntries.isScalerKey(k)) continue; // not the whole optimizer's: save() adds them
                TensorParallelism.Split split = splitOfState(k, e.getValue(), splits);
                Tensor target = lead ? Tensor.zeros(DType.F32, template.get(k).shape()) : null;
                if (split != null) tp.gatherInto(e.getValue(), split, target);
                else if (lead) target.copyFrom(e.getValue());
                if (lead) state.put(k, target);
            }
            if (lead) whole.opt.loadStateDict(state, opt.stepCount());
        }
        return whole;
    }

    /** The split of a "kind.param" optimizer tensor: its parameter's, when it has the parameter's shard shape. */
    private static TensorParallelism.Split splitOfState(String key, Tensor t, Map<String, TensorParallelism.Split> splits) {
        TensorParallelism.Split s = splits.get(key.substring(key.indexOf('.') + 1));
        return s != null && t.numel() == s.numel() ? s : null;
    }

    /**
     * Restores a checkpoint (written by any run: whole-model format) into this shard: loads it into a whole model and
     * optimizer, then keeps this rank's slices of the parameters and of the optimizer state (under pipeline
     * parallelism the trainer restores the other stages' parameters around this call, and the stage optimizer keeps
     * its stage's entries).
     */
    static CheckpointStore.TrainerState load(Path checkpoint, CausalLm model, Optimizer opt) {
        TensorParallel tp = TensorParallel.active();
        Gpt local = (Gpt) model;
        var splits = local.tensorParallelSplits();
        Whole whole;
        try (var scope = MemoryScope.open()) {
            Gpt m = new Gpt(local.config, 0, DType.F32);
            whole = new Whole(m, RunSetup.optimizer(optim, m, m.trainableParameters()));
        }
        ScalerEntries scaler = new ScalerEntries(); // fp16: the checkpoint's loss-scaler state, handed to opt below
        try (var scope = MemoryScope.open()) {
            CheckpointStore.TrainerState st = CheckpointStore.load(checkpoint, whole.model, scaler.around(whole.opt), List.of());
            Map<String, Parameter> wp = whole.model.namedParameters();
            local.namedParameters().forEach((k, p) -> {
                TensorParallelism.Split s = splits.get(k);
                p.copyFrom(s == null ? wp.get(k) : s.slice(wp.get(k), tp.rank(), tp.size()));
            });
            Map<String, Tensor> state = new LinkedHashMap<>();
            whole.opt.stateDict().forEach((k, v) -> {
                TensorParallelism.Split s = splits.get(k.substring(k.indexOf('.') + 1));
                boolean cut = s != null && v.numel() == wp.get(k.substring(k.indexOf('.') + 1)).numel();
                state.put(k, cut ? s.slice(v, tp.rank(), tp.size()) : v);
            });
            state.putAll(scaler.entries());
            opt.loadStateDict(state, whole.opt.stepCount());
            return st;
        } finally {
            whole.release();
        }
    }
}
