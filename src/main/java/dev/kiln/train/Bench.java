package dev.kiln.train;

import dev.kiln.backend.cpu.CpuBackend;
import dev.kiln.data.BatchSampler;
import dev.kiln.data.PreparedData;
import dev.kiln.data.TokenShard;
import dev.kiln.nn.models.CausalLm;
import dev.kiln.nn.models.GptConfig;
import dev.kiln.optim.Optimizer;
import dev.kiln.optim.LrSchedule;
import dev.kiln.tensor.HostAllocator;
import dev.kiln.train.config.OptimConfig;
import dev.kiln.train.config.RunConfig;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.LinkedHashMap;
import java.util.Map;

/**
 * Training throughput of the configured model and recipe: warm-up steps, then timed steps of the
 * exact training step the Trainer runs (no checkpoints, no evaluation). The side-by-side
 * comparison with PyTorch lives in bench/cpu_vs_pytorch.sh, which runs both in one go.
 */
public final class Bench {
    private Bench() {}

    public static Map<String, Object> run(RunConfig cfg, int warmupSteps, int steps) {
        CpuBackend.configure(cfg.train().threads());
        MemoryPeaks memory = MemoryPeaks.start(); // from before the model: parameters and optimizer state count too
        PreparedData data = Workspace.prepareData(cfg.data());
        GptConfig mc = cfg.model().vocab_size() > 0 ? cfg.model() : cfg.model().withVocabSize(data.tokenizer().vocabSize());
        CausalLm model = RunSetup.buildModel(cfg.withModel(mc)); // LoRA and QAT as configured (lora.init_from is not loaded: speed does not depend on it)
        // offload as training does it, its files in a scratch directory (train.offload_dir, when set, as given)
        Path scratch;
        try {
            scratch = Files.createTempDirectory("kiln-bench-");
        } catch (IOException e) {
            throw new TrainingException("kiln bench: cannot create a scratch directory for offload: " + e.getMessage());
        }
        try (Offload offload = Offload.open(cfg.train(), scratch, model)) {
            return run(cfg, mc, data, model, offload, memory, warmupSteps, steps);
        } finally {
            try {
                Files.deleteIfExists(scratch);
            } catch (IOException e) {
                System.err.println("kiln: warning: could not delete " + scratch + ": " + e.getMessage());
            }
        }
    }

    private static Map<String, Object> run(RunConfig cfg, GptConfig mc, PreparedData data, CausalLm model, Offload offload, MemoryPeaks memory,
                                           int warmupSteps, int steps) {
        OptimConfig oc = cfg.optim();
        Optimizer opt = RunSetup.optimizer(cfg, model, offload); // with train.precision's mixed precision and offload, as training runs them
        MemoryAccount account = MemoryAccount.of(model, opt);
        memory.restart();
        LrSchedule schedule = LrSchedule.of(oc.schedule(), oc.learning_rate(), oc.min_lr(), oc.warmup_iters(), oc.decay_fraction());
        int b = cfg.train().batch_size(), t = mc.block_size(), k = cfg.train().grad_accum_steps();
        try (TokenShard shard = data.openTrain()) {
            BatchSampler sampler = new BatchSampler(shard, b, t, cfg.train().seed());
            double lossFirst = Double.NaN, lossLast = Double.NaN;
            for (int i = 0; i < warmupSteps; i++) {
                double l = step(model, opt, sampler, k, b, t, schedule.lr(i, oc.lr_decay_iters()), oc.grad_clip());
                if (i == 0) lossFirst = l;
            }
            long fresh0 = HostAllocator.freshAllocations(), gc0 = Trainer.gcMillis();
            long t0 = System.nanoTime();
            for (int i = 0; i < steps; i++) {
                lossLast = step(model, opt, sampler, k, b, t, schedule.lr(warmupSteps + i, oc.lr_decay_iters()), oc.grad_clip());
                if (warmupSteps == 0 && i == 0) lossFirst = lossLast;
            }
            double seconds = (System.nanoTime() - t0) / 1e9;
            Map<String, Object> r = new LinkedHashMap<>();
            r.put("impl", "kiln");
            r.put("tok_per_s", steps * (double) k * b * t / seconds);
            r.put("ms_per_step", seconds * 1000 / steps);
            r.put("peak_rss_mib", peakRssMib());
            r.put("steps", steps);
            r.put("loss_first", lossFirst);
            r.put("loss_last", lossLast);
            r.put("threads", CpuBackend.get().threads());
            r.put("gemm", CpuBackend.get().gemmEngine());
            r.put("gc_ms_per_step", (Trainer.gcMillis() - gc0) / (double) Math.max(1, steps));
            r.put("fresh_allocations_in_timed_steps", HostAllocator.freshAllocations() - fresh0);
            r.put("n_layer", mc.n_layer());
            r.put("n_head", mc.n_head());
            r.put("n_embd", mc.n_embd());
            r.put("block_size", mc.block_size());
            r.put("batch_size", b);
            r.put("grad_accum_steps", k);
            r.put("recompute", model.recompute().key());
            r.put("optimizer", oc.optimizer());
            r.put("precision", cfg.train().precision());
            r.put("offload_params", cfg.train().offload_params());
            r.put("offload_optimizer", cfg.train().offload_optimizer());
            for (var c : dev.kiln.tensor.MemoryCategory.values()) r.put("mem_peak_" + c.key(), memory.peak(c));
            r.put("mem_peak_total", memory.peakTotal());
            r.put("vocab_size", mc.vocab_size());
            r.put("params", model.parameterCount());
            r.put("trainable_params", account.trainableParameters());
            r.put("optimizer_state_bytes", account.optimizerStateBytes());
            r.put("grad_bytes", account.gradientBytes());
            return r;
        }
    }

    /** One optimizer step over k micro-batches of b sequences (plain cross-entropy), as the Trainer runs it; its loss. */
    private static double step(CausalLm model, Optimizer opt, BatchSampler sampler, int k, int b, int t, double lr, double clip) {
        return GradAccumulation.step(model, opt, GradAccumulation.draw(sampler, k, b, t, 1.0), lr, clip, 0, 0, 1.0).loss();
    }

    /** VmHWM from /proc (Linux): the process's peak resident set, Java heap and off-heap alike. */
    static double peakRssMib() {
        try {
            for (String line : Files.readAllLines(Path.of("/proc/self/status")))
                if (line.startsWith("VmHWM:")) return Long.parseLong(line.replaceAll("\\D", "")) / 1024.0;
        } catch (IOException | NumberFormatException ignored) {
            // not Linux: report unknown
        }
        return Double.NaN;
    }
}
