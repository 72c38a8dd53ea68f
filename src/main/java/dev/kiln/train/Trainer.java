package dev.kiln.train;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import dev.kiln.backend.cpu.CpuBackend;
import dev.kiln.data.Batch;
import dev.kiln.data.BatchSampler;
import dev.kiln.data.Dedup;
import dev.kiln.data.WindowScores;
import dev.kiln.data.PreparedData;
import dev.kiln.data.TokenShard;
import dev.kiln.dist.DataParallel;
import dev.kiln.dist.PipelineParallel;
import dev.kiln.nn.Qat;
import dev.kiln.nn.models.Generator;
import dev.kiln.nn.models.CausalLm;
import dev.kiln.nn.models.Gpt;
import dev.kiln.nn.models.GptConfig;
import dev.kiln.optim.MixedPrecisionOptimizer;
import dev.kiln.optim.Optimizer;
import dev.kiln.optim.WeightAverage;
import dev.kiln.optim.LrSchedule;
import dev.kiln.tensor.Device;
import dev.kiln.tensor.HostAllocator;
import dev.kiln.tensor.MemoryScope;
import dev.kiln.tensor.Rng;
import dev.kiln.tensor.Tensor;
import dev.kiln.train.config.ConfigLoader;
import dev.kiln.train.config.GrowthConfig;
import dev.kiln.train.config.Mixture;
import dev.kiln.train.config.OptimConfig;
import dev.kiln.train.config.RunConfig;
import dev.kiln.train.config.TrainingConfig;

import java.io.IOException;
import java.io.PrintStream;
import java.lang.management.GarbageCollectorMXBean;
import java.lang.management.ManagementFactory;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.function.BiConsumer;

/**
 * The training loop, readable top to bottom: data → model → optimizer and schedule → per step: sample a
 * batch (its size from the ramp; its length and windows from the curricula; rows from the mixture), forward,
 * backward (of the hardest rows, with selective backprop), clip, update, update the weight averages;
 * periodic evaluation (with early stopping) and checkpoints; the run ends at max_iters, at the end of
 * a token or time budget ({@link RunLength}) or on early stopping, with a final evaluation, a
 * checkpoint and a generated sample. What the run is built from comes from {@link RunSetup}, each
 * step is a {@link TrainStep}, evaluations are {@link Evaluation}s; this class keeps the run's
 * bookkeeping (resume, rollback, growth, checkpoints, metrics, progress).
 */
public final class Trainer {
    private static final ObjectMapper JSON = new ObjectMapper();

    /**
     * What a run produced. {@code losses} holds the training loss of every step this invocation ran;
     * {@code stoppedBy} names a signal or preemption that interrupted it (null otherwise); {@code endedBy}
     * what ended a run that finished: max_iters, budget_tokens, budget_time or early_stop.
     */
    public record Result(Path runDir, long firstStep, long lastStep, List<Double> losses, double finalValLoss,
                         double seconds, double tokensPerSecond, String sample, String stoppedBy, String endedBy,
                         MemoryAccount memory) {}

    private final RunConfig cfg;
    private final boolean resume;
    private final PrintStream out;
    private final boolean interactive;
    private final boolean lead;
    private long corruptAtStep = -1;
    private int corruptionsLeft;
    private BiConsumer<Long, Batch> batchObserver;
    private MemoryPeaks memory;

    public Trainer(RunConfig cfg, boolean resume, PrintStream out, boolean interactive) {
        this.cfg = cfg;
        this.resume = resume;
        this.lead = ParallelRun.isLeadProcess(); // under mpirun only rank 0 prints and writes the run's files
        this.out = lead ? out : new PrintStream(java.io.OutputStream.nullOutputStream());
        this.interactive = interactive && lead;
    }

    /**
     * Fault injection for tests: before step {@code step} (1-based) one weight is overwritten with
     * NaN, as a diverged update would leave it, at most {@code times} times (a rollback replays the
     * step); the real detection, skip and rollback paths must then handle it.
     */
    public Trainer corruptWeightsBeforeStep(long step, int times) {
        this.corruptAtStep = step;
        this.corruptionsLeft = times;
        return this;
    }

    /** Calls {@code observer} with every training batch drawn (0-based step, batch) before it is trained on: tests record what a run trains on. */
    public Trainer observeBatches(BiConsumer<Long, Batch> observer) {
        this.batchObserver = observer;
        return this;
    }

    public Path runDir() {
        return Workspace.resolveOut(cfg.train().out_dir()).resolve(cfg.train().name());
    }

    public Result run() {
        TrainingConfig tc = cfg.train();
        OptimConfig oc = cfg.optim();
        CpuBackend.configure(tc.threads());
        Device device = DevicePlacement.of(cfg);   // before anything is written: no GPU, or what does not run there, is one line
        memory = MemoryPeaks.start(device);
        // under mpirun rank 0 prepares the data cache first, then the other ranks open it
        PreparedData data = ParallelRun.leadFirst(() -> Workspace.prepareData(cfg.data()));
        // a mixture: every member's training shard (member 0 is `data`: its validation split and tokenizer are the run's)
        List<PreparedData> members = cfg.data().mixture().isBlank() ? List.of(data) : Workspace.prepareMixture(cfg.data());
        GptConfig mc = cfg.model().vocab_size() > 0 ? cfg.model() : cfg.model().withVocabSize(data.tokenizer().vocabSize());
        if (mc.vocab_size() < data.tokenizer().vocabSize())
            throw new TrainingException("model.vocab_size " + mc.vocab_size() + " is smaller than the tokenizer's vocabulary " + data.tokenizer().vocabSize());
        RunConfig resolved = cfg.withModel(mc);
        JsonNode configJson = readTree(ConfigLoader.toJson(resolved));

        Path runDir = runDir();
        CheckpointStore store = new CheckpointStore(runDir);
        if (!resume && !store.list().isEmpty())
            throw new TrainingException("run directory " + runDir + " already has checkpoints; use --resume to continue it, or pick another name (--set train.name=…)");
        if (lead) {
            writeRunFiles(runDir, resolved, data);
            store.removeUnfinished();
        }

        CausalLm model = TensorParallelRun.shard(cfg, RunSetup.buildModel(resolved), out); // parallel.tp > 1: this rank's shard
        ParallelRun.start(cfg, model, out); // data parallelism under mpirun (DataParallel.active()); nothing in a single process
        if (!cfg.lora().init_from().isEmpty() && !(resume && !store.list().isEmpty())) RunSetup.loadBase(model, cfg.lora().init_from(), out);
        DevicePlacement.place(model, device); // before the optimizer, whose state is made like the parameters
        Offload offload = Offload.open(resolved.train(), runDir, model); // closed with the shards below
        Optimizer opt;
        try {
            opt = RunSetup.optimizer(cfg, model, offload);
        } catch (RuntimeException e) {
            if (offload != null) offload.close();
            throw e;
        }
        LayerDrop layerDrop = tc.layer_drop() > 0 ? new LayerDrop(tc.layer_drop(), tc.layer_drop_gamma(), tc.seed()) : null;
        List<WeightAverage> averages = RunSetup.averages(cfg.averaging(), model);
        LrSchedule schedule = LrSchedule.of(oc.schedule(), oc.learning_rate(), oc.min_lr(), oc.warmup_iters(), oc.decay_fraction());

        List<TokenShard> trainShards = new ArrayList<>();
        try (TokenShard valShard = data.openVal()) {
            for (PreparedData m : members) trainShards.add(m.openTrain());
            BatchSampler sampler = cfg.data().mixture().isBlank()
                    ? new BatchSampler(trainShards.getFirst(), tc.batch_size(), mc.block_size(), tc.seed())
                    : BatchSampler.mixture(trainShards, Mixture.parse(cfg.data().mixture()).weights(), tc.batch_size(), mc.block_size(), tc.seed());
            if (cfg.curriculum().difficulty()) {
                Path scores = data.dir().resolve(WindowScores.FILE);
                if (!Files.exists(scores))
                    throw new TrainingException("curriculum.difficulty needs window scores: " + scores + " not found; make them with kiln prepare --out "
                            + data.dir() + " --score <reference run>");
                sampler.useScores(WindowScores.read(scores));
            }
            new BatchSampler(valShard, tc.batch_size(), mc.block_size(), tc.seed()); // fail now, not at the first evaluation
            CheckpointStore.TrainerState initial = CheckpointStore.TrainerState.initial(sampler.state(), model.dropoutRng().state(), model.depth(),
                    layerDrop == null ? 0 : layerDrop.rngState());
            Path resumedFrom = null;
            if (resume) {
                var latest = store.latestVerified(out);
                if (latest.isEmpty()) {
                    if (!store.list().isEmpty())
                        throw new TrainingException("no checkpoint in " + store.directory() + " passes verification (see the warnings above); nothing was loaded or changed");
                    out.println("kiln: no checkpoint in " + store.directory() + " yet; starting from step 0");
                } else {
                    int depth = CheckpointStore.depth(latest.get(), model.depth());
                    if (depth != model.depth()) { // a checkpoint written after growth: rebuild the grown model
                        resize(model, depth, cfg.growth().method(), tc.seed());
                        opt = RunSetup.optimizer(cfg, model);
                    }
                    initial = restore(latest.get(), model, opt, averages, sampler, layerDrop);
                    resumedFrom = latest.get();
                    out.println("kiln: resumed from " + latest.get() + " at step " + initial.step());
                }
            }
            out.printf("kiln: %s: %,d parameters; %s; %d threads; data %s (%,d train / %,d val tokens)%n",
                    model.describe(), model.parameterCount(), opt.name(),
                    CpuBackend.get().threads(), data.dir(), data.trainTokens(), data.valTokens());
            for (PreparedData m : members) Dedup.Report.read(m.dir()).ifPresent(r -> out.println("kiln: " + m.dir() + ": " + r.summary()));
            if (!cfg.data().mixture().isBlank())
                out.println("kiln: mixture " + cfg.data().mixture() + " over " + members.stream()
                        .map(m -> String.format("%s (%,d train tokens)", m.dir(), m.trainTokens())).toList());
            MemoryAccount account = MemoryAccount.of(model, opt);
            memory.restart();
            out.println("kiln: " + account);
            if (offload != null) out.println("kiln: " + offload.describe());
            if (cfg.lora().rank() > 0)
                out.printf("kiln: LoRA rank %d, alpha %s on %s; base %s, frozen%n", cfg.lora().rank(), cfg.lora().alpha(), cfg.lora().targets(),
                        cfg.lora().init_from().isEmpty() ? "from this run's initialisation" : "from " + cfg.lora().init_from());
            if (cfg.qat().enabled())
                out.printf("kiln: quantization-aware training: int%d fake quantisation of Linear %s from step %d%n", cfg.qat().bits(),
                        cfg.qat().weights() && cfg.qat().activations() ? "weights and inputs" : cfg.qat().weights() ? "weights" : "inputs", cfg.qat().start_step());
            HostAllocator.setLimit(cfg.faults().host_memory_limit_mib() * 1024 * 1024);
            // one TensorBoard event file per process, shared by the step log and the final evaluation's record
            TbEvents tb = cfg.train().tensorboard() && lead ? TbEvents.open(runDir.resolve("tb"), initial.step(), resume) : null;
            try (StopRequests stops = StopRequests.install(cfg.faults().preempt_file().isEmpty() ? null : Path.of(cfg.faults().preempt_file()), out)) {
                return loop(model, opt, layerDrop, averages, schedule, sampler, valShard, store, configJson, initial, resumedFrom, runDir, data, stops, account, tb);
            } finally {
                HostAllocator.setLimit(0);
                if (tb != null) tb.close();
            }
        } finally {
            for (TokenShard s : trainShards) s.close();
            if (offload != null) {
                out.println("kiln: " + offload.summary());
                offload.close();
            }
        }
    }

    private static CheckpointStore.TrainerState restore(Path checkpoint, CausalLm model, Optimizer opt, List<WeightAverage> averages, BatchSampler sampler,
                                                        LayerDrop layerDrop) {
        CheckpointStore.TrainerState st = ShardedLoad.applies(checkpoint, model) ? ShardedLoad.load(checkpoint, (Gpt) model, opt, averages) // this rank's share only
                : loadWhole(checkpoint, model, opt, averages);
        sampler.restore(st.samplerState());
        long[] counts = st.memberTokens();
        int members = sampler.memberTokens().length;
        if (counts.length > 0 && counts.length != members)
            throw new TrainingException(checkpoint + " counts tokens for " + counts.length + " mixture members but data.mixture has " + members
                    + "; resume with the run's data.mixture");
        sampler.setMemberTokens(counts.length == 0 ? new long[members] : counts);
        model.dropoutRng().setState(st.dropoutRngState());
        if (layerDrop != null) layerDrop.setRngState(st.layerDropRngState());
        return st;
    }

    /** A consolidated checkpoint (or a non-GPT model's): loaded whole, then cut to this rank's share. */
    private static CheckpointStore.TrainerState loadWhole(Path checkpoint, CausalLm model, Optimizer opt, List<WeightAverage> averages) {
        DataParallel dp = DataParallel.active();
        if (dp != null) dp.gatherAllParameters(); // ZeRO-3: the checkpoint is loaded into whole parameters
        PipelineParallel pipe = PipelineParallel.active(); // pipeline: loaded whole, then cut to this stage again
        if (pipe != null) pipe.restoreAll();
        CheckpointStore.TrainerState st = TensorParallelRun.active() ? TensorParallelRun.load(checkpoint, model, opt)
                : CheckpointStore.load(checkpoint, model, opt, averages);
        if (pipe != null) pipe.evictOthers();
        return st;
    }

    /** Sets the model to {@code depth} blocks: grown (before a checkpoint's weights are loaded into it) or cut back (a rollback to before growth). */
    private static void resize(CausalLm model, int depth, String growthMethod, long seed) {
        if (depth > model.depth()) model.grow(depth, growthMethod, seed);
        else model.truncate(depth);
    }

    private Result loop(CausalLm model, Optimizer opt, LayerDrop layerDrop, List<WeightAverage> averages, LrSchedule schedule, BatchSampler sampler, TokenShard valShard,
                        CheckpointStore store, JsonNode configJson, CheckpointStore.TrainerState initial, Path resumedFrom,
                        Path runDir, PreparedData data, StopRequests stops, MemoryAccount account, TbEvents tb) {
        long start = initial.step(), lastDone = start;
        double lrScale = initial.lrScale();
        int rollbacks = initial.rollbacks(), badSteps = 0;
        long tokensSeen = initial.tokensSeen();
        double bestVal = initial.bestValLoss();
        int staleEvals = initial.staleEvals();
        String stopReason = null, endedBy = null;
        var faults = cfg.faults();
        TrainingConfig tc = cfg.train();
        OptimConfig oc = cfg.optim();
        int t = model.blockSize();
        GrowthConfig growth = cfg.growth();
        var overflowSteps = faults.overflowStepSet();
        Curriculum curriculum = new Curriculum(cfg.curriculum(), t);
        RunLength length = new RunLength(tc, oc, t, curriculum);
        List<Double> losses = new ArrayList<>();
        long runStart = System.nanoTime(), lastEnd = runStart;
        double budgetClock0 = initial.trainSeconds(); // budget time spent by earlier processes of this run
        double emaMs = 0;
        long tokensThisProcess = 0;
        Path lastCheckpoint = resumedFrom; // the last checkpoint known good: verified on resume, or written by this run
        try (MetricsLog metrics = new MetricsLog(lead ? runDir.resolve("metrics.jsonl") : null, start, resume, tb);
             Progress progress = new Progress(out, start, length.expectedSteps(start, budgetClock0), interactive)) {
            model.train(true);
            metrics.write(account.record(metrics.record().put("step", start)));
            var qat = cfg.qat();
            if (qat.enabled()) Qat.setActive(model, qat.activeAfter(start));
            for (long step = start; ; step++) {
                double elapsed = budgetClock0 + (System.nanoTime() - runStart) / 1e9;
                if (step == start && length.finished(step, tokensSeen, elapsed)) {
                    endedBy = length.limit();
                    break;
                }
                if (growth.on() && step >= growth.at_step() && model.depth() < growth.to_layers()) {
                    int from = model.depth();
                    var before = new java.util.HashSet<>(model.namedParameters().keySet());
                    model.grow(growth.to_layers(), growth.method(), tc.seed());
                    opt = RunSetup.extended(oc, model, opt, before);
                    // logged under the step it precedes, so a resume from a checkpoint at at_step drops it with the steps it redoes
                    metrics.write(metrics.record().put("step", step + 1).put("grew_from", from).put("grew_to", model.depth()));
                    progress.message(String.format("kiln: step %d: grew from %d to %d blocks (%s), %,d parameters", step, from, model.depth(), growth.method(), model.parameterCount()));
                }
                long t0 = System.nanoTime();
                long gc0 = gcMillis();
                int b = length.batchSize(step);
                int k = tc.grad_accum_steps();
                double lr = schedule.lr(step, length.scheduleTotal(step, elapsed)) * RunSetup.lrScaling(oc, k * b) * lrScale;
                if (step + 1 == corruptAtStep && corruptionsLeft-- > 0) model.finalNormWeight().setFlat(0, Double.NaN);
                if (overflowSteps.contains(step + 1) && opt instanceof MixedPrecisionOptimizer mp) mp.injectOverflow();
                LayerDrop.Plan plan = layerDrop == null ? null : layerDrop.plan(step, model.depth());
                if (plan != null) {
                    // a dropped block gets a zero gradient, not none, so its optimizer update (momentum, decay) is the same
                    // whether this process has run it before or not (after a resume or growth its buffers may not exist yet)
                    for (var p : model.parameters()) if (p.grad() == null) p.setGrad(persistentZerosLike(p));
                    model.setLayerPlan(plan.keep(), plan.keepProb());
                }
                if (qat.enabled()) Qat.setActive(model, qat.activeAfter(step));
                int seqLen = curriculum.seqLen(step);
                double competence = curriculum.competence(step);
                List<Batch> micro = GradAccumulation.draw(sampler, k, b, seqLen, competence);
                if (batchObserver != null) for (Batch mb : micro) batchObserver.accept(step, mb);
                DataParallel dp = DataParallel.active();
                if (dp != null) micro = micro.stream().map(dp::slice).toList(); // this rank's rows of each global micro-batch
                PipelineParallel pipe = PipelineParallel.active(); // pipeline parallel: the stages run this rank's rows in micro-batches
                TrainStep.StepResult r = pipe == null ? GradAccumulation.step(model, opt, micro, lr, oc.grad_clip(), tc.label_smoothing(), tc.z_loss(), tc.select_fraction())
                        : pipelineStep(pipe, opt, micro, lr, oc.grad_clip(), tc.label_smoothing(), tc.z_loss());
                model.setLayerPlan(null, null);
                long done = step + 1;
                if (!r.overflow() && (!Double.isFinite(r.loss()) || !Double.isFinite(r.gradNorm()))) {
                    // skip: no update was made; after too many in a row, roll back to the last good checkpoint
                    badSteps++;
                    String what = !Double.isFinite(r.loss()) ? "loss is " + r.loss() : "gradient norm is " + r.gradNorm();
                    metrics.write(metrics.record().put("step", done).put("skipped", true).put("reason", what));
                    progress.message(String.format("kiln: step %d: %s; step skipped (%d in a row, limit %d)", done, what, badSteps, faults.nan_skip_limit()));
                    if (badSteps < faults.nan_skip_limit()) continue;
                    if (rollbacks >= faults.max_rollbacks())
                        throw new TrainingException(String.format("%s at step %d after %d rollback(s) (faults.max_rollbacks); giving up. Nothing was corrupted: the last good checkpoint is %s; try a lower optim.learning_rate",
                                what, done, rollbacks, lastCheckpoint == null ? "none" : lastCheckpoint));
                    if (lastCheckpoint == null)
                        throw new TrainingException(String.format("%s for %d steps in a row at step %d and there is no checkpoint to roll back to yet; try a lower optim.learning_rate or a shorter train.checkpoint_interval",
                                what, badSteps, done));
                    rollbacks++;
                    lrScale *= faults.rollback_lr_factor();
                    int depth = CheckpointStore.depth(lastCheckpoint, model.depth());
                    if (depth != model.depth()) { // back across growth: the model shrinks, and grows again at growth.at_step
                        resize(model, depth, cfg.growth().method(), tc.seed());
                        opt = RunSetup.optimizer(cfg, model);
                    }
                    CheckpointStore.TrainerState back = restore(lastCheckpoint, model, opt, averages, sampler, layerDrop);
                    tokensSeen = back.tokensSeen();
                    bestVal = back.bestValLoss();
                    staleEvals = back.staleEvals();
                    metrics.write(metrics.record().put("step", done).put("rollback_to", back.step()).put("lr_scale", lrScale));
                    progress.message(String.format("kiln: rolled back to %s (step %d), learning rate × %.3g; rollback %d of %d",
                            lastCheckpoint, back.step(), lrScale, rollbacks, faults.max_rollbacks()));
                    badSteps = 0;
                    step = back.step() - 1;
                    continue;
                }
                badSteps = 0;
                lastDone = done;
                if (qat.enabled()) Qat.setActive(model, qat.activeAfter(done)); // evaluations and checkpoints see the model of the next step
                long stepTokens = (long) k * b * seqLen; // every row drawn counts, also those selective backprop leaves out
                tokensSeen += stepTokens;
                tokensThisProcess += stepTokens;
                for (WeightAverage a : averages) a.update(done);
                double loss = r.loss(), norm = r.gradNorm();
                long now = System.nanoTime();
                double ms = (now - t0) / 1e6;
                length.observe((now - lastEnd) / 1e9, stepTokens);
                lastEnd = now;
                elapsed = budgetClock0 + (now - runStart) / 1e9;
                emaMs = step == start ? ms : 0.9 * emaMs + 0.1 * ms;
                losses.add(loss);
                ObjectNode rec = metrics.record();
                rec.put("step", done).put("loss", loss).put("lr", lr);
                if (Double.isFinite(norm)) rec.put("grad_norm", norm); // not on an fp16 overflow step
                rec.put("ms", ms)
                        .put("tok_per_s", stepTokens * 1000.0 / ms).put("batch_size", b).put("tokens", tokensSeen)
                        .put("elapsed_s", elapsed).put("gc_ms", gcMillis() - gc0)
                        .put("host_bytes_in_use", HostAllocator.bytesInUse());
                if (opt instanceof MixedPrecisionOptimizer mp && mp.scaler() != null) {
                    rec.put("loss_scale", mp.scaler().scale());
                    if (r.overflow()) rec.put("overflow", true); // fp16 gradients overflowed: no update, scale backed off
                }
                if (plan != null) rec.put("blocks_skipped", plan.skipped());
                if (curriculum.lengthWarmup()) rec.put("seq_len", seqLen);
                if (curriculum.difficulty()) rec.put("competence", competence).put("windows", sampler.eligibleWindows(competence));
                if (tc.select_fraction() < 1) rec.put("selected", TrainStep.selectCount(b, tc.select_fraction()));
                metrics.write(rec);
                boolean last = length.finished(done, tokensSeen, elapsed);
                long expected = last ? done : length.expectedSteps(done, elapsed);
                progress.step(done, expected, loss, lr, stepTokens * 1000.0 / emaMs, emaMs, done % tc.log_interval() == 0 || last);

                String stop = last ? null : stops.reason();
                if (done % tc.eval_interval() == 0 && !last && stop == null) {
                    double val = Evaluation.evaluate(model, valShard, tc.batch_size(), t, tc.eval_iters(), tc.seed() + 1);
                    ObjectNode ev = metrics.record().put("step", done).put("val_loss", val).put("eval_batches", tc.eval_iters())
                            .put("tokens", tokensSeen).put("elapsed_s", elapsed);
                    putMemberTokens(ev, sampler);
                    memory.record(ev);
                    StringBuilder line = new StringBuilder(String.format("step %d: val loss %.4f", done, val));
                    for (WeightAverage a : averages) {
                        if (!a.ready()) continue;
                        double av = Evaluation.evaluateWith(model, a.weights(), valShard, tc.batch_size(), t, tc.eval_iters(), tc.seed() + 1);
                        ev.put("val_loss_" + a.name(), av);
                        line.append(String.format(", %s %.4f", a.name(), av));
                    }
                    metrics.write(ev);
                    progress.message(line.append(String.format(" (%d batches)", tc.eval_iters())).toString());
                    if (val < bestVal - tc.early_stop_min_delta()) {
                        bestVal = val;
                        staleEvals = 0;
                    } else {
                        staleEvals++;
                    }
                    if (tc.early_stop_patience() > 0 && staleEvals >= tc.early_stop_patience()) {
                        last = true;
                        endedBy = "early_stop";
                        progress.message(String.format("kiln: early stop at step %d: val loss has not improved on %.4f by %s for %d evaluations",
                                done, bestVal, tc.early_stop_min_delta(), staleEvals));
                    }
                }
                if (done % tc.checkpoint_interval() == 0 || last || stop != null) {
                    double spent = budgetClock0 + (System.nanoTime() - runStart) / 1e9;
                    try {
                        var state = new CheckpointStore.TrainerState(done, sampler.state(),
                                model.dropoutRng().state(), opt.stepCount(), lrScale, rollbacks, tokensSeen, spent, bestVal, staleEvals,
                                model.depth(), layerDrop == null ? 0 : layerDrop.rngState(),
                                cfg.data().mixture().isBlank() ? new long[0] : sampler.memberTokens());
                        boolean sharded = cfg.parallel().checkpoint().equals("sharded") && (dp != null || pipe != null || TensorParallelRun.active());
                        lastCheckpoint = sharded ? ShardedCheckpoint.save(store, model, opt, cfg.optim(), averages, state, configJson, tc.keep_checkpoints())
                                : TensorParallelRun.active() ? TensorParallelRun.save(store, model, opt, state, configJson, tc.keep_checkpoints())
                                : pipe != null ? pipe.saveFromLead(opt, o -> store.save(model, o, averages, state, configJson, tc.keep_checkpoints()), store.stepDirectory(done))
                                : dp == null ? store.save(model, opt, averages, state, configJson, tc.keep_checkpoints())
                                : dp.saveFromLead(opt, o -> store.save(model, o, averages, state, configJson, tc.keep_checkpoints()), store.stepDirectory(done));
                    } catch (TrainingException e) {
                        if (!faults.continue_on_checkpoint_error() || stop != null) throw e;
                        metrics.write(metrics.record().put("step", done).put("checkpoint_error", e.getMessage()));
                        progress.message("kiln: warning: " + e.getMessage() + "; training continues (faults.continue_on_checkpoint_error)");
                    }
                }
                if (stop != null) {
                    stopReason = stop;
                    progress.message(String.format("kiln: stopped after step %d on %s; checkpoint %s; continue with --resume", done, stop, lastCheckpoint));
                    break;
                }
                if (last) {
                    if (endedBy == null) endedBy = length.limit();
                    break;
                }
            }
        }
        double seconds = (System.nanoTime() - runStart) / 1e9;
        if (stopReason != null) {
            return new Result(runDir, start, lastDone, losses, Double.NaN, seconds, 0, "", stopReason, null, MemoryAccount.measured(model, opt));
        }
        double tokPerSec = losses.isEmpty() ? 0 : tokensThisProcess / seconds;
        MemoryAccount held = MemoryAccount.measured(model, opt); // after the last step, before evaluation and sampling
        double finalVal = Double.NaN;
        if (tc.final_eval_iters() > 0) {
            finalVal = Evaluation.evaluate(model, valShard, tc.batch_size(), t, tc.final_eval_iters(), tc.seed() + 1);
            try (MetricsLog metrics = new MetricsLog(lead ? runDir.resolve("metrics.jsonl") : null, Long.MAX_VALUE, true, tb)) {
                ObjectNode rec = metrics.record().put("step", lastDone).put("val_loss", finalVal).put("eval_batches", tc.final_eval_iters())
                        .put("tokens", tokensSeen).put("elapsed_s", budgetClock0 + seconds).put("final", true).put("ended_by", endedBy);
                putMemberTokens(rec, sampler);
                memory.record(rec);
                for (WeightAverage a : averages) {
                    if (!a.ready()) continue;
                    double av = Evaluation.evaluateWith(model, a.weights(), valShard, tc.batch_size(), t, tc.final_eval_iters(), tc.seed() + 1);
                    rec.put("val_loss_" + a.name(), av);
                    out.printf("kiln: final val loss of the %s weights %.4f%n", a.name(), av);
                }
                metrics.write(rec);
            }
        }
        out.printf("kiln: %d steps in %s (%,.0f tok/s), ended by %s; final val loss %.4f over %d batches; checkpoint %s%n",
                losses.size(), Progress.formatDuration(Math.round(seconds)), tokPerSec, endedBy, finalVal, tc.final_eval_iters(),
                lastCheckpoint == null ? "none" : lastCheckpoint);
        out.println("kiln: " + memory.summary());
        ParallelRun.reportCommunication(out);
        if (!cfg.data().mixture().isBlank()) {
            long[] mt = sampler.memberTokens();
            long all = java.util.Arrays.stream(mt).sum();
            var names = Mixture.parse(cfg.data().mixture()).members();
            StringBuilder line = new StringBuilder("kiln: tokens per mixture member:");
            for (int i = 0; i < mt.length; i++)
                line.append(String.format(" %s %,d (%.1f%%, weight %s)", names.get(i).corpus(), mt[i], all == 0 ? 0.0 : 100.0 * mt[i] / all, names.get(i).weight()));
            out.println(line);
        }
        String sample = "";
        if (tc.sample_tokens() > 0) {
            if (PipelineParallel.active() != null) PipelineParallel.active().gatherModel(); // every rank samples from the whole model
            int[] prompt = data.tokenizer().encode(tc.sample_prompt());
            int[] seq = Generator.generate(model, prompt, tc.sample_tokens(), 0.8, 200, new Rng(tc.seed() + 2));
            sample = data.tokenizer().decode(seq);
            out.println("---- sample ----");
            out.println(sample);
            out.println("----------------");
        }
        return new Result(runDir, start, lastDone, losses, finalVal, seconds, tokPerSec, sample, null, endedBy, held);
    }

    private static TrainStep.StepResult pipelineStep(PipelineParallel pipe, Optimizer opt, List<Batch> micro, double lr, double clip, double smoothing, double zLoss) {
        PipelineParallel.StepResult r = pipe.step(opt, micro, lr, clip, smoothing, zLoss); // accumulation: all k batches in one schedule
        return new TrainStep.StepResult(r.loss(), r.gradNorm(), r.overflow());
    }

    /** With a mixture, the input tokens drawn from each member so far, as {@code member_tokens: [..]}. */
    private static void putMemberTokens(ObjectNode rec, BatchSampler sampler) {
        long[] mt = sampler.memberTokens();
        if (mt.length < 2) return;
        var a = rec.putArray("member_tokens");
        for (long v : mt) a.add(v);
    }

    private void writeRunFiles(Path runDir, RunConfig resolved, PreparedData data) {
        try {
            Files.createDirectories(runDir);
            Files.writeString(runDir.resolve("config.json"), ConfigLoader.toJson(resolved));
            Files.writeString(runDir.resolve("config.yaml"), ConfigLoader.toYaml(resolved));
            data.tokenizer().save(runDir.resolve("tokenizer.json"));
        } catch (IOException e) {
            throw new TrainingException("cannot write run directory " + runDir + ": " + e.getMessage(), e);
        }
    }

    private static JsonNode readTree(String json) {
        try {
            return JSON.readTree(json);
        } catch (IOException e) {
            throw new IllegalStateException(e);
        }
    }

    private static Tensor persistentZerosLike(Tensor t) {
        try (var s = MemoryScope.persistent(); var a = dev.kiln.tensor.MemoryTracker.attribute(dev.kiln.tensor.MemoryCategory.GRADIENTS)) {
            return Tensor.zerosLike(t);
        }
    }

    /** Total GC time so far (all collectors), for GC-per-step figures. */
    static long gcMillis() {
        long total = 0;
        for (GarbageCollectorMXBean gc : ManagementFactory.getGarbageCollectorMXBeans()) total += Math.max(0, gc.getCollectionTime());
        return total;
    }
}
