package dev.kiln.dist;

import dev.kiln.autograd.Tape;
import dev.kiln.backend.Backend;
import dev.kiln.data.Batch;
import dev.kiln.nn.Parameter;
import dev.kiln.nn.models.Gpt;
import dev.kiln.nn.models.TensorParallelism;
import dev.kiln.ops.Arith;
import dev.kiln.optim.MixedPrecisionOptimizer;
import dev.kiln.optim.Optimizer;
import dev.kiln.optim.ScalerEntries;
import dev.kiln.tensor.DType;
import dev.kiln.tensor.MemoryCategory;
import dev.kiln.tensor.MemoryScope;
import dev.kiln.tensor.MemoryTracker;
import dev.kiln.tensor.Tensor;

import java.util.ArrayList;
import java.util.IdentityHashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.function.Function;

/**
 * Pipeline parallelism for GPT ({@code parallel.pp} = p stages over the ranks of {@link ParallelLayout#pp()}). Stage s
 * holds a contiguous range of blocks ({@link #blockRange}); stage 0 also the embeddings (wte, wpe, dropout), the last
 * stage the final norm and the head tied to wte, and the loss. A rank keeps the memory of its stage's parameters
 * only (the others are evicted right after the model is built from the common seed), and its optimizer covers those
 * only ({@link StageOptimizer}). The tied wte lives on the first and the last stage: their gradients are summed
 * after each step's flush (Megatron-LM's embedding group), so both copies take the same update and stay equal.
 *
 * <p>A step splits this rank's rows into m micro-batches and runs them in the order {@link PipelineSchedule} gives
 * (GPipe or 1F1B): each forward records its own autograd graph ({@link Tape#take}) and sends its output (B/m, T, C)
 * to the next stage; each backward runs a graph from the gradient the next stage sent back and sends its input's
 * gradient to the previous stage. Sends are asynchronous (so two neighbours sending to each other never wait on
 * each other), receives blocking. The last stage backpropagates loss_i / m (k·m under gradient accumulation), so
 * the accumulated gradient is that of the whole batch's mean loss, as in a single process. After the flush: data-parallel averaging of the stage's
 * gradients (when dp > 1), the wte sum, the clipping norm summed over the stages (wte counted once), loss and norm
 * made known on every rank, clip, update. ZeRO-2 reduce-scatters the accumulated gradients once, after the flush
 * (the wte sum before it), and sums the norm over dp; while the micro-batches accumulate every rank holds its
 * stage's whole gradient, so it saves gradient memory only between the reduce-scatter and the next step's backward,
 * and a third of the dp bytes on the wire (reduce-scatter instead of ZeRO-1's all-reduce).
 *
 * <p>Under tensor parallelism (tp × pp) the model is this rank's {@link Gpt} shard: its pipeline group links the
 * same tp rank of every stage, so activations go shard to shard (they are whole, (B/m, T, C), after each block's g);
 * stage 0 runs the vocabulary-parallel embedding, the last stage the vocabulary-parallel head and cross-entropy
 * ({@link Gpt#headLoss}), the wte shards are summed between the two ends of the same tp rank, and the clipping norm
 * adds the sharded gradients' squares over the tp group as well.
 *
 * <p>Dropout is refused under pp (see {@code ParallelRun}): a single process draws one batch-wide mask per dropout
 * in forward order, which micro-batches run stage by stage cannot reproduce.
 */
public final class PipelineParallel {
    private static final int SAVE_TAG = 1 << 14; // point-to-point tags below are 2·micro (+1 for gradients)

    private static PipelineParallel active;

    private final ProcessGroup group;      // this rank's pipeline, ordered by stage
    private final ProcessGroup embedding;  // the first and the last stage of this pipeline (the tied wte); null on middle stages
    private final Gpt model;
    private final String schedule;
    private final int stage, stages, firstBlock, endBlock, microBatches;
    private final Map<String, Parameter> all = new LinkedHashMap<>();   // the model's trainable parameters, model order
    private final Map<String, Integer> owner = new LinkedHashMap<>();   // the stage holding each (wte: 0, copied on the last)
    private final Map<String, Parameter> mine = new LinkedHashMap<>();  // this stage's, model order
    private final Parameter tied;
    private final TensorParallel tp;  // tp × pp: this stage's blocks are tensor-parallel shards (null without)
    private final List<Work> sends = new ArrayList<>();
    private final List<Tensor> sentGradients = new ArrayList<>();

    /**
     * Loss (the mean over the micro-batches, and under dp over the ranks) and pre-clipping gradient norm of one step;
     * {@code overflow}: an fp16 step skipped by loss scaling (norm +inf), as {@code TrainStep.StepResult}'s.
     */
    public record StepResult(double loss, double gradNorm, boolean overflow) {}

    /**
     * What one micro-batch left for its backward: its graph, the received input (null on stage 0), the output to seed,
     * the send of its output (null on the last stage), and the handle that frees its activations.
     */
    private record Micro(Tape.Graph graph, Tensor input, Tensor output, double loss, Work sent, Runnable free) {}

    private PipelineParallel(ParallelLayout layout, ProcessGroup embedding, Gpt model, String schedule, int microBatches) {
        this.group = layout.pp();
        this.embedding = embedding;
        this.model = model;
        this.schedule = schedule;
        this.stage = layout.stage();
        this.stages = layout.ppSize();
        int[] range = blockRange(model.depth(), stages, stage);
        this.firstBlock = range[0];
        this.endBlock = range[1];
        this.microBatches = microBatches;
        this.tied = model.wte.weight;
        this.tp = TensorParallel.active();
        IdentityHashMap<Parameter, Integer> stageOf = new IdentityHashMap<>();
        stageOf.put(model.wte.weight, 0);
        stageOf.put(model.wpe.weight, 0);
        for (int s = 0; s < stages; s++) {
            int[] r = blockRange(model.depth(), stages, s);
            for (int b = r[0]; b < r[1]; b++) for (Parameter p : model.blocks.get(b).parameters()) stageOf.put(p, s);
        }
        for (Parameter p : model.lnF.parameters()) stageOf.put(p, stages - 1);
        model.trainableParameters().forEach((name, p) -> {
            Integer s = stageOf.get(p);
            if (s == null) throw new DistException("pipeline parallelism: parameter " + name + " is in no stage");
            all.put(name, p);
            owner.put(name, s);
            if (s == stage || (p == tied && stage == stages - 1)) mine.put(name, p);
        });
        evictOthers();
    }

    /**
     * Splits {@code model} into {@code layout.ppSize()} stages and makes this rank's stage the active pipeline (the
     * trainer, evaluation and checkpoints then go through it); collective over the world (it forms the embedding
     * groups). {@code microBatches} 0 means p.
     */
    public static PipelineParallel install(ParallelLayout layout, Gpt model, String schedule, int microBatches) {
        active = null;
        int p = layout.ppSize();
        if (model.depth() < p)
            throw new DistException("parallel.pp " + p + " needs at least one block per stage; model.n_layer is " + model.depth());
        PipelineSchedule.of(schedule, p, 0, 1); // a wrong schedule name fails here
        int m = microBatches == 0 ? p : microBatches;
        if (2 * m >= SAVE_TAG) throw new DistException("parallel.micro_batches " + m + " is too large (at most " + (SAVE_TAG / 2 - 1) + ")");
        // every rank of the world takes part in the split; the two ends of each pipeline share a color, the middle
        // stages get one each (rank = stage·(tp·dp) + index of the pipeline)
        ProcessGroup world = layout.world();
        int line = world.rank() % (layout.tpSize() * layout.dpSize());
        boolean end = layout.firstStage() || layout.lastStage();
        ProcessGroup emb = world.split(end ? line : world.size() + world.rank(), layout.stage());
        active = new PipelineParallel(layout, end ? emb : null, model, schedule, m);
        return active;
    }

    /** The pipeline the trainer runs under, or null. */
    public static PipelineParallel active() {
        return active;
    }

    public static void uninstall() {
        active = null;
    }

    /**
     * Blocks [from, to) of stage {@code s}: a balanced split, ⌊n/p⌋ each and one more for the first n mod p stages
     * (stage 0's embeddings cost little; the last stage's head and loss a lot, so the extra blocks go early).
     */
    public static int[] blockRange(int blocks, int stages, int s) {
        int base = blocks / stages, extra = blocks % stages;
        int from = s * base + Math.min(s, extra);
        return new int[]{from, from + base + (s < extra ? 1 : 0)};
    }

    /** This stage's trainable parameters by name (the last stage's include its copy of the tied wte). */
    public Map<String, Parameter> parameters() {
        return new LinkedHashMap<>(mine);
    }

    public ProcessGroup group() {
        return group;
    }

    public int stage() {
        return stage;
    }

    public int microBatches() {
        return microBatches;
    }

    public String schedule() {
        return schedule;
    }

    /** "stage 1 of 2: blocks 2..3, ln_f, head (tied wte)" */
    public String describe() {
        StringBuilder sb = new StringBuilder("stage " + stage + " of " + stages + ": ");
        if (stage == 0) sb.append("wte, wpe, ");
        sb.append("blocks ").append(firstBlock).append("..").append(endBlock - 1);
        if (stage == stages - 1) sb.append(", ln_f, head (tied wte)");
        return sb.toString();
    }

    /**
     * One optimizer step on this rank's rows of {@code batches} through the pipeline; see the class comment. Gradient
     * accumulation (k = {@code batches.size()} > 1) runs the k·m micro-batches of all of them in one schedule, each
     * seeded with loss / (k·m), so the accumulated gradient is that of the mean loss over the k batches, as a single
     * process's k accumulation micro-steps give.
     * <p>Under mixed precision ({@link MixedPrecisionOptimizer}) the stage's parameters are rounded to half precision
     * for the schedule, the last stage seeds with the loss scale, and after the flush (data-parallel reduction and the
     * wte sum, so each gradient is rounded once it is whole, as a single process rounds it) the masters come back and
     * the gradients are rounded, unscaled and checked; the overflow vote is over the world (the optimizer's
     * {@link MixedPrecisionOptimizer#agreeOnOverflow}), so one stage's inf skips the step on every rank. Accumulating
     * without dp, the running sum is also rounded after each batch's last backward, as the single process rounds it
     * after each micro-step (the tied wte's halves are rounded apart there: they meet only after the flush).
     */
    public StepResult step(Optimizer opt, List<Batch> batches, double lr, double gradClip, double labelSmoothing, double zLoss) {
        List<Batch> parts = new ArrayList<>();
        for (Batch b : batches) parts.addAll(split(b));
        int m = parts.size();
        if (2 * m >= SAVE_TAG)
            throw new DistException(m + " pipeline micro-batches per step (train.grad_accum_steps × parallel.micro_batches) are too many (at most " + (SAVE_TAG / 2 - 1) + ")");
        if (Tape.size() != 0) throw new IllegalStateException("pipeline step: the tape already holds " + Tape.size() + " nodes");
        MixedPrecisionOptimizer mp = opt instanceof MixedPrecisionOptimizer o ? o : null;
        double seedScale = mp == null ? 1.0 / m : mp.lossScale() / m;
        double lossSum = 0;
        boolean overflow = false;
        int perBatch = m / batches.size();
        boolean roundPartialSums = mp != null && DataParallel.active() == null && batches.size() > 1;
        // ZeRO-2: after the reduce-scatter a rank holds only the gradients it owns, and the two ends of the pipeline
        // may own wte on different dp ranks, so its two halves are summed first (the sum and the dp mean commute)
        boolean zero2 = DataParallel.active() != null && DataParallel.active().zeroStage() >= 2;
        if (mp != null) mp.beginStep();
        try {
            try (var scope = MemoryScope.open()) {
                Micro[] inFlight = new Micro[m];
                for (PipelineSchedule.Action a : PipelineSchedule.of(schedule, stages, stage, m)) {
                    int i = a.micro();
                    if (a.forward()) {
                        inFlight[i] = forward(parts.get(i), i, labelSmoothing, zLoss, seedScale);
                        lossSum += inFlight[i].loss();
                    } else {
                        backward(inFlight[i], i);
                        inFlight[i] = null;
                        // accumulation under mixed precision: a batch's last backward (they run in order) ends a micro-step,
                        // whose running sum the single process holds rounded to half precision (see GradAccumulation)
                        if (roundPartialSums && (i + 1) % perBatch == 0 && i + 1 < m) mp.roundGradients();
                    }
                }
                finishSends();
            }
            DataParallel dp = DataParallel.active();
            if (zero2) sumTiedGradient();
            if (dp != null) { // this stage's gradients averaged over its data-parallel ranks, once, after the flush
                dp.beforeBackward();
                dp.afterBackward();
            }
            if (!zero2) sumTiedGradient();
        } finally {
            if (mp != null) overflow = mp.endBackward(); // restores the masters whatever happened; a world vote
        }
        boolean last = stage == stages - 1;
        double loss = last ? lossSum / m : 0;
        DataParallel dp = DataParallel.active();
        if (dp != null && last) loss = dp.meanLoss(loss);
        double sq = 0, shardSq = 0;
        if (!overflow) {
            for (Parameter p : mine.values()) {
                if (p.grad() == null || p == tied && stage != 0) continue; // wte once
                double s = Backend.of(p).sumOfSquares(p.grad());
                if (tp != null && tp.isSharded(p)) shardSq += s;
                else sq += s;
            }
            if (zero2) { // each dp rank has the squares of the gradients it owns: summed over dp (sharded and replicated apart)
                double[] d = {shardSq, sq};
                dp.group().allReduceSum(d);
                shardSq = d[0];
                sq = d[1];
            }
            if (tp != null) sq += tp.sumOverShards(shardSq); // tp × pp: sharded gradients once per shard, replicated once
        }
        double[] v = {loss, sq}; // only the last stage knows the loss: the sum hands it to every stage
        group.allReduceSum(v);
        loss = v[0];
        if (overflow) { // fp16: skipped on every rank alike (the scale has been backed off)
            model.zeroGrad();
            return new StepResult(loss, Double.POSITIVE_INFINITY, true);
        }
        double norm = Math.sqrt(v[1]);
        if (!Double.isFinite(loss)) {
            model.zeroGrad();
            return new StepResult(loss, Double.NaN, false);
        }
        if (gradClip > 0 && Double.isFinite(norm)) { // as GradClip.clip, with the norm of every stage's gradients
            double coef = gradClip / (norm + 1e-6);
            if (coef < 1) for (Parameter p : mine.values()) if (p.grad() != null) Backend.of(p).scale(p.grad(), coef);
        }
        if (Double.isFinite(norm)) opt.step(lr);
        model.zeroGrad();
        return new StepResult(loss, norm, false);
    }

    /** The tied wte: embedding gradient (stage 0) + head gradient (last stage), on both; nothing on middle stages. */
    private void sumTiedGradient() {
        if (embedding == null) return;
        if (tied.grad() == null) tied.setGrad(persistentZerosLike(tied));
        embedding.allReduce(FlatF32.data(tied.grad(), "transformer.wte.weight gradient"), (int) tied.numel());
    }

    /**
     * The plain cross-entropy of {@code batch} through the pipeline without grad, known on every stage: evaluation
     * runs this way, micro-batch after micro-batch (each freed before the next), the loss their mean.
     */
    public double evalLoss(Batch batch) {
        List<Batch> parts = split(batch);
        double sum = 0;
        try (var ng = Tape.noGradScope()) {
            for (int i = 0; i < parts.size(); i++) {
                try (var scope = MemoryScope.open()) {
                    sum += forward(parts.get(i), i, 0, 0, 1.0).loss();
                    finishSends(); // before the scope frees what was sent
                }
            }
        }
        double[] v = {stage == stages - 1 ? sum / parts.size() : 0};
        group.allReduceSum(v);
        return v[0];
    }

    private List<Batch> split(Batch batch) {
        int b = batch.batchSize();
        if (b % microBatches != 0)
            throw new DistException("this rank's batch of " + b + " rows is not divisible by the " + microBatches + " micro-batches (parallel.micro_batches)");
        int per = b / microBatches;
        List<Batch> out = new ArrayList<>(microBatches);
        for (int i = 0; i < microBatches; i++) {
            int[] rows = new int[per];
            for (int j = 0; j < per; j++) rows[j] = i * per + j;
            out.add(batch.rows(rows));
        }
        return out;
    }

    /** Forward of micro-batch {@code i} through this stage; on the last stage the loss (its backward seed is loss × seedScale). */
    private Micro forward(Batch part, int i, double labelSmoothing, double zLoss, double seedScale) {
        int b = part.batchSize(), t = part.blockSize(), c = model.config.n_embd();
        Tensor input = null, x, out = null;
        Work sent = null;
        Runnable free;
        double loss = 0;
        MemoryScope activations = MemoryScope.open(); // kept past this forward, freed after this micro-batch's backward
        try (var a = MemoryTracker.attribute(MemoryCategory.ACTIVATIONS)) {
            if (stage == 0) {
                x = model.embed(Tensor.ofInts(part.inputs(), b, t));
            } else {
                input = receive(new int[]{b, t, c}, stage - 1, 2 * i);
                if (Tape.isGradEnabled()) input.requiresGrad(true); // a leaf: its gradient goes back to the previous stage
                x = input;
            }
            for (int j = firstBlock; j < endBlock; j++) x = model.block(j, x);
            if (stage == stages - 1) {
                Tensor l = model.headLoss(x, Tensor.ofInts(part.targets(), b, t), labelSmoothing, zLoss); // tp: vocab-parallel
                loss = l.item();
                out = seedScale == 1.0 ? l : Arith.mul(l, seedScale);
            } else {
                sent = send(x, stage + 1, 2 * i);
                out = x;
            }
        } finally {
            free = activations.closeKeeping();
            if (out == null) free.run(); // the forward failed: nothing is kept
        }
        return new Micro(Tape.take(), input, out, loss, sent, free);
    }

    /** Backward of micro-batch {@code i}: from the next stage's gradient (the last stage: from its loss). */
    private void backward(Micro mb, int i) {
        Tensor gradOut = stage == stages - 1 ? Tensor.full(1.0, mb.output().dtype(), mb.output().shape())
                : receive(mb.output().shape(), stage + 1, 2 * i + 1);
        mb.graph().backward(mb.output(), gradOut);
        gradOut.release(); // backward copied what it needed (the tape never keeps the seed)
        if (stage > 0) {
            Tensor g = mb.input().grad();
            send(g, stage - 1, 2 * i + 1);
            sentGradients.add(g);
            mb.input().setGrad(null);
        }
        if (mb.sent() != null) mb.sent().await(); // (long done: the next stage sent this micro-batch's gradient back)
        mb.free().run();
    }

    private Tensor receive(int[] shape, int from, int tag) {
        Tensor x = Tensor.zeros(DType.F32, shape);
        group.recv(FlatF32.data(x, "pipeline activation from stage " + from), (int) x.numel(), from, tag);
        return x;
    }

    private Work send(Tensor x, int to, int tag) {
        Tensor c = x.isContiguous() ? x : x.contiguous();
        Work w = group.sendAsync(FlatF32.data(c, "pipeline activation to stage " + to), (int) c.numel(), to, tag);
        sends.add(w);
        return w;
    }

    /** Waits for this rank's sends (their buffers live until then), then frees the input gradients that were sent. */
    private void finishSends() {
        for (Work w : sends) w.await();
        sends.clear();
        for (Tensor g : sentGradients) g.release();
        sentGradients.clear();
    }

    private static Tensor persistentZerosLike(Tensor t) {
        try (var s = MemoryScope.persistent(); var a = MemoryTracker.attribute(MemoryCategory.GRADIENTS)) {
            return Tensor.zerosLike(t);
        }
    }

    // ---- the whole model: checkpoints and sampling ----------------------------------------------------------------

    /** Frees the parameters of the other stages (this rank keeps its stage's memory only). */
    public void evictOthers() {
        all.forEach((n, p) -> {
            if (!mine.containsKey(n)) p.storage().evict();
        });
    }

    /** Gives every evicted parameter memory again (contents undefined), e.g. before a whole checkpoint is loaded into them. */
    public void restoreAll() {
        for (Parameter p : all.values()) p.storage().restore();
    }

    /**
     * Every rank of the pipeline receives every parameter (collective), so the whole model runs on each, e.g. to
     * generate the run's final sample.
     */
    public void gatherModel() {
        for (var e : all.entrySet()) {
            Parameter p = e.getValue();
            p.storage().restore();
            group.broadcast(FlatF32.data(p, e.getKey()), (int) p.numel(), owner.get(e.getKey()));
        }
    }

    /**
     * Saves a checkpoint of the whole model from the job's rank 0 (stage 0 of the first data-parallel pipeline;
     * collective): under ZeRO-1 each stage's optimizer state is first consolidated on its data-parallel rank 0, then
     * the stages send their parameters and state to stage 0, which lays them out as a single process's (HF names and
     * shapes, {@link StageOptimizer#whole}), calls {@code save} and frees them again. Other ranks return {@code otherwise}.
     */
    public <T> T saveFromLead(Optimizer opt, Function<Optimizer, T> save, T otherwise) {
        if (opt instanceof MixedPrecisionOptimizer mp) { // the stage's fp32 state is gathered; fp16's scaler entries go alongside
            ScalerEntries scaler = ScalerEntries.of(mp);
            return saveFromLead(mp.inner(), o -> save.apply(scaler.around(o)), otherwise);
        }
        if (!(opt instanceof StageOptimizer so)) throw new IllegalArgumentException("pipeline checkpoints need the StageOptimizer, got " + opt.getClass().getSimpleName());
        ShardedOptimizer.Consolidated gathered = so.stage() instanceof ShardedOptimizer sh ? sh.consolidated() : null; // null off dp rank 0
        try {
            DataParallel dp = DataParallel.active();
            if (dp != null && dp.group().rank() != 0) return otherwise;
            Map<String, Tensor> state = (gathered != null ? gathered : so.stage()).stateDict();
            if (stage != 0) {
                sendStage(state);
                return otherwise;
            }
            return gatherAndSave(so, state, save);
        } finally {
            if (gathered != null) gathered.close();
        }
    }

    /** A whole (unsharded) model and its optimizer, into which a tp × pp checkpoint is gathered. */
    public record WholeModel(Gpt model, Optimizer optimizer) {
        void release() {
            for (Parameter p : model.parameters()) p.release();
            for (Tensor t : optimizer.stateDict().values()) t.release();
        }
    }

    /**
     * {@link #saveFromLead} for tp × pp (collective over the ranks of data-parallel rank 0, after ZeRO-1's
     * consolidation): in each stage the tp shards of the stage's parameters and optimizer state are gathered into
     * whole tensors on tp rank 0 (the collector, which builds {@code whole} for their shapes); the collectors of the
     * other stages send theirs to stage 0's, which fills its whole model and optimizer (single-process names and
     * shapes) and calls {@code save}. Ranks other than that lead return {@code otherwise}.
     */
    public <T> T saveFromLeadSharded(Optimizer opt, java.util.function.Supplier<WholeModel> whole, Function<WholeModel, T> save, T otherwise) {
        if (opt instanceof MixedPrecisionOptimizer mp) return saveFromLeadSharded(mp.inner(), whole, save, otherwise); // the caller adds the scaler's entries
        if (!(opt instanceof StageOptimizer so)) throw new IllegalArgumentException("pipeline checkpoints need the StageOptimizer, got " + opt.getClass().getSimpleName());
        if (tp == null) throw new IllegalStateException("saveFromLeadSharded: the pipeline's stages are not tensor-parallel");
        ShardedOptimizer.Consolidated gathered = so.stage() instanceof ShardedOptimizer sh ? sh.consolidated() : null; // null off dp rank 0
        WholeModel w = null;
        try {
            DataParallel dp = DataParallel.active();
            if (dp != null && dp.group().rank() != 0) return otherwise;
            Map<String, Tensor> own = (gathered != null ? gathered : so.stage()).stateDict();
            boolean collector = tp.rank() == 0, lead = collector && stage == 0;
            if (collector) {
                try (var s = MemoryScope.persistent()) {
                    w = whole.get();
                }
            }
            var splits = model.tensorParallelSplits();
            Map<String, Parameter> wp = collector ? w.model().namedParameters() : null;
            for (var e : all.entrySet()) { // model order on every stage
                String n = e.getKey();
                int from = owner.get(n);
                if (from == stage) {
                    Tensor target = collector ? wp.get(n) : null;
                    collect(e.getValue(), splits.get(n), target);
                    if (collector && stage != 0) group.send(FlatF32.data(target, n), (int) target.numel(), 0, SAVE_TAG + 1);
                } else if (lead) {
                    Tensor target = wp.get(n);
                    group.recv(FlatF32.data(target, n), (int) target.numel(), from, SAVE_TAG + 1);
                }
            }
            Map<String, Tensor> template = collector ? w.optimizer().stateDict() : null, state = new LinkedHashMap<>();
            try (var s = MemoryScope.open()) {
                for (String k : stateKeysOf(own.keySet(), stage)) { // the same keys, sorted, on every tp rank of the stage
                    Tensor local = own.get(k);
                    TensorParallelism.Split split = splits.get(StageOptimizer.parameterOf(k));
                    if (split != null && local.numel() != split.numel()) split = null; // not a per-element state tensor
                    Tensor target = collector ? Tensor.zeros(DType.F32, template.get(k).shape()) : null;
                    collect(local.contiguous(), split, target);
                    if (collector && stage != 0) group.send(FlatF32.data(target, k), (int) target.numel(), 0, SAVE_TAG + 1);
                    if (lead) state.put(k, target);
                }
                if (!lead) return otherwise;
                for (int from = 1; from < stages; from++)
                    for (String k : stateKeysOf(template.keySet(), from)) {
                        Tensor target = Tensor.zeros(DType.F32, template.get(k).shape());
                        group.recv(FlatF32.data(target, k), (int) target.numel(), from, SAVE_TAG + 1);
                        state.put(k, target);
                    }
                w.optimizer().loadStateDict(state, so.stepCount());
            }
            return save.apply(w);
        } finally {
            if (gathered != null) gathered.close();
            if (w != null) w.release();
        }
    }

    /** {@code target} ← the whole tensor of {@code local}: gathered over the tp group when it is a shard; null off the collector. */
    private void collect(Tensor local, TensorParallelism.Split split, Tensor target) {
        if (split != null) tp.gatherInto(local, split, target);
        else if (target != null) target.copyFrom(local);
    }

    private int ownerOfState(String key) {
        return owner.getOrDefault(StageOptimizer.parameterOf(key), 0);
    }

    /** The keys of {@code state} stage {@code s} sends for a checkpoint, in the order both sides use (sorted). */
    private List<String> stateKeysOf(Iterable<String> keys, int s) {
        List<String> out = new ArrayList<>();
        for (String k : keys) if (ownerOfState(k) == s) out.add(k);
        out.sort(null);
        return out;
    }

    private void sendStage(Map<String, Tensor> state) {
        for (var e : all.entrySet())
            if (owner.get(e.getKey()) == stage) group.send(FlatF32.data(e.getValue(), e.getKey()), (int) e.getValue().numel(), 0, SAVE_TAG);
        for (String k : stateKeysOf(state.keySet(), stage)) {
            Tensor v = state.get(k).contiguous();
            group.send(FlatF32.data(v, k), (int) v.numel(), 0, SAVE_TAG);
        }
    }

    private <T> T gatherAndSave(StageOptimizer so, Map<String, Tensor> own, Function<Optimizer, T> save) {
        List<Parameter> restored = new ArrayList<>();
        Map<String, Tensor> state = null;
        try {
            for (var e : all.entrySet()) {
                int from = owner.get(e.getKey());
                if (from == 0) continue;
                Parameter p = e.getValue();
                p.storage().restore();
                restored.add(p);
                group.recv(FlatF32.data(p, e.getKey()), (int) p.numel(), from, SAVE_TAG);
            }
            Optimizer whole;
            try (var s = MemoryScope.persistent(); var a = MemoryTracker.attribute(MemoryCategory.OPTIMIZER_STATE)) {
                whole = so.whole();
            }
            state = whole.stateDict();
            for (var e : state.entrySet()) {
                if (ownerOfState(e.getKey()) != 0) continue;
                Tensor mineT = own.get(e.getKey());
                if (mineT == null) throw new DistException("stage 0's optimizer state has no " + e.getKey());
                e.getValue().copyFrom(mineT);
            }
            for (int s = 1; s < stages; s++)
                for (String k : stateKeysOf(state.keySet(), s))
                    group.recv(FlatF32.data(state.get(k), k), (int) state.get(k).numel(), s, SAVE_TAG);
            return save.apply(new SavedState(so.name(), so.stepCount(), state));
        } finally {
            if (state != null) state.values().forEach(Tensor::release);
            for (Parameter p : restored) p.storage().evict();
        }
    }

    /** A whole optimizer state gathered for a checkpoint: for saving only. */
    private record SavedState(String name, long stepCount, Map<String, Tensor> stateDict) implements Optimizer {
        @Override
        public void step(double lr) {
            throw new UnsupportedOperationException("a gathered optimizer state is for saving only");
        }

        @Override
        public void loadStateDict(Map<String, Tensor> s, long c) {
            throw new UnsupportedOperationException("a gathered optimizer state is for saving only");
        }
    }
}
