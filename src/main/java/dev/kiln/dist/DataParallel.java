package dev.kiln.dist;

import dev.kiln.autograd.Tape;
import dev.kiln.backend.Backend;
import dev.kiln.data.Batch;
import dev.kiln.nn.Module;
import dev.kiln.nn.Parameter;
import dev.kiln.optim.MixedPrecisionOptimizer;
import dev.kiln.optim.ScalerEntries;
import dev.kiln.tensor.MemoryScope;
import dev.kiln.tensor.Tensor;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.ArrayList;
import java.util.Collection;
import java.util.IdentityHashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * Data parallelism with optional ZeRO sharding (Rajbhandari et al. 2020) over a {@link ProcessGroup}: every rank
 * trains on its own slice of the global batch ({@link #slice}); gradients are averaged in buckets that start
 * reducing while backward still runs (a {@link Tape#setGradReadyHook grad-ready hook} adds each parameter to the
 * open bucket as soon as its gradient is final, and a bucket is sent once it holds {@code bucketBytes}).
 * <ul>
 *   <li>stage 0 (DDP) and 1: buckets are all-reduced; every rank holds the whole averaged gradient;</li>
 *   <li>stage 1: each rank updates only the parameters it owns ({@link ParameterOwners}, {@link ShardedOptimizer}),
 *       then the parameters are all-gathered;</li>
 *   <li>stage 2: buckets are reduce-scattered instead, so each rank receives only the gradients it owns; the others
 *       are freed as soon as they are packed into a bucket; the clipping norm is summed across ranks.</li>
 *   <li>stage 3: as stage 2, and each rank also keeps only its own parameters: a block's are all-gathered just before
 *       it runs, in forward and in backward, and freed after ({@link ParameterSharding}).</li>
 * </ul>
 * Under tensor parallelism the group is the dp group of a {@link ParallelLayout} and the parameters are this rank's
 * tp shard: each ZeRO stage shards that shard (the shards of a tp group have equal shapes, so they agree on owners), and
 * {@link #clip} adds the tp group's sum.
 * On a GPU ({@link #installOverNccl}, DDP only) the same buckets are packed on the device and averaged over NCCL
 * ({@link BucketTransport}, {@link NcclBuckets}); losses and norms stay on the host group.
 * The trainer reaches it through {@link #active()} (null in a single process, unless parallel.backend nccl asks for
 * the NCCL path at world size 1), so a plain run is untouched.
 */
public final class DataParallel {
    private static DataParallel active;

    private final ProcessGroup group;
    private final int stage, rank, ranks;
    private final long bucketBytes;
    private final Map<String, Parameter> params;     // trainable, model order
    private final IdentityHashMap<Tensor, String> names = new IdentityHashMap<>();
    private final ParameterOwners owners;

    private final List<Parameter> open = new ArrayList<>(); // the bucket being filled
    private long openElements;
    private final List<BucketTransport.Pending> inFlight = new ArrayList<>();
    private final IdentityHashMap<Parameter, Boolean> queued = new IdentityHashMap<>();
    // communication buffers come back to this pool as soon as their bucket is unpacked, so a rank holds only
    // those of the buckets in flight (a few bucket_mb), not a flat copy of every gradient
    private final List<MemorySegment> freeBuffers = new ArrayList<>();
    private ParameterSharding sharding; // ZeRO-3
    // gradient accumulation (PyTorch's no_sync): micro-batches before the last only accumulate locally; their local
    // losses wait here and are reduced together with the last one's, in the one 8-byte all-reduce of the step
    private boolean noSync;
    private double deferredLoss;
    private int deferredCount;

    // how all-reduced buckets travel: host buffers over MPI (this class's own), or GPU buffers over NCCL
    private final BucketTransport transport;

    /** A host bucket in flight; {@link #unpack()} writes back its averages (stage ≥ 2: the owned ones). */
    private record Bucket(DataParallel dp, List<Parameter> params, MemorySegment send, MemorySegment buf, Work work) implements BucketTransport.Pending {
        @Override
        public void unpack() {
            dp.unpack(this);
        }
    }

    private DataParallel(ProcessGroup group, Map<String, Parameter> params, int stage, double bucketMb) {
        this(group, params, stage, bucketMb, null);
    }

    /** {@code transport} null: host buffers over {@code group} (MPI); otherwise only stage 0, the buckets over it. */
    private DataParallel(ProcessGroup group, Map<String, Parameter> params, int stage, double bucketMb, BucketTransport transport) {
        this.group = group;
        this.stage = stage;
        this.rank = group.rank();
        this.ranks = group.size();
        this.bucketBytes = Math.max(4, (long) (bucketMb * (1 << 20)));
        this.params = new LinkedHashMap<>(params);
        params.forEach((k, p) -> names.put(p, k));
        this.owners = new ParameterOwners(params, ranks);
        this.transport = transport != null ? transport : this::allReduceOnHost;
        if (transport == null) for (var e : params.entrySet()) FlatF32.data(e.getValue(), e.getKey()); // fail now on a tensor MPI cannot take
    }

    /**
     * Makes data parallelism over {@code group} the active one for {@code model}'s trainable parameters (the
     * trainer's hooks then use it), after checking every rank starts from the same weights; null (nothing
     * installed) when the group has a single rank.
     */
    public static DataParallel install(ProcessGroup group, Module model, int zeroStage, double bucketMb) {
        if (zeroStage < 0 || zeroStage > 3) throw new DistException("parallel.zero_stage must be 0, 1, 2 or 3, got " + zeroStage);
        active = null;
        if (group.size() == 1) return null;
        DataParallel dp = new DataParallel(group, model.trainableParameters(), zeroStage, bucketMb);
        dp.checkSameWeights();
        if (zeroStage == 3) {
            if (!(model instanceof dev.kiln.nn.models.Gpt gpt)) throw new DistException("ZeRO-3 shards GPT models by block; got " + model.getClass().getSimpleName());
            dp.sharding = new ParameterSharding(group, gpt, dp.params, dp.owners);
            gpt.setUnitHook(dp.sharding);
        }
        active = dp;
        dev.kiln.ops.DropoutRows.set(dp.rank, dp.ranks); // dropout masks: this rank's rows of the global batch's
        return dp;
    }

    /**
     * {@link #install(ProcessGroup, Module, int, double)} over some of a model's parameters (a pipeline stage's),
     * ZeRO stage 0, 1 or 2 (stage 3 shards a whole GPT by block).
     */
    public static DataParallel install(ProcessGroup group, Map<String, Parameter> params, int zeroStage, double bucketMb) {
        if (zeroStage < 0 || zeroStage > 2) throw new DistException("parallel.zero_stage must be 0, 1 or 2 over part of a model, got " + zeroStage);
        active = null;
        if (group.size() == 1) return null;
        DataParallel dp = new DataParallel(group, params, zeroStage, bucketMb);
        dp.checkSameWeights();
        active = dp;
        return dp;
    }

    /**
     * Data parallelism (DDP, no ZeRO) for a model on a GPU: gradient buckets are packed on the GPU and averaged over
     * {@code nccl}; losses and other host scalars go over {@code bootstrap} (the MPI group NCCL's unique id came over, or
     * the single local rank), whose ranks must be {@code nccl}'s. Installed at every world size, 1 included (the whole
     * NCCL path on one GPU); the parameters may still be on the host here and must be on {@code nccl}'s GPU by the
     * first backward. {@link #uninstall} closes the communicator.
     */
    public static DataParallel installOverNccl(ProcessGroup bootstrap, NcclProcessGroup nccl, Module model, double bucketMb) {
        if (nccl.size() != bootstrap.size() || nccl.rank() != bootstrap.rank())
            throw new DistException("NCCL group is rank " + nccl.rank() + " of " + nccl.size() + " but its bootstrap group rank " + bootstrap.rank() + " of " + bootstrap.size());
        uninstall();
        DataParallel dp = new DataParallel(bootstrap, model.trainableParameters(), 0, bucketMb, new NcclBuckets(nccl, model.trainableParameters()));
        dp.checkSameWeights();
        active = dp;
        dev.kiln.ops.DropoutRows.set(dp.rank, dp.ranks);
        return dp;
    }

    /** The data parallelism the trainer runs under, or null (single process). */
    public static DataParallel active() {
        return active;
    }

    public static void uninstall() {
        if (active != null) active.transport.close(); // an NCCL communicator; nothing for MPI's host buffers
        active = null;
        dev.kiln.ops.DropoutRows.clear();
    }

    public ProcessGroup group() {
        return group;
    }

    /** What the NCCL group was handed on a GPU run (its gradients do not go over {@link #group()}), or null. */
    public CommStats ncclStats() {
        return transport instanceof NcclBuckets nb ? nb.stats() : null;
    }

    public int zeroStage() {
        return stage;
    }

    public ParameterOwners owners() {
        return owners;
    }

    /** Whether this rank writes the run's files (metrics, checkpoints, logs): rank 0 only. */
    public boolean isLead() {
        return rank == 0;
    }

    /**
     * This rank's rows of the global batch: rows [r·b/n, (r+1)·b/n), so the ranks together train on exactly the rows
     * a single process would (every rank draws the same global batch from the same sampler state).
     */
    public Batch slice(Batch global) {
        int b = global.batchSize();
        if (b % ranks != 0)
            throw new DistException("batch size " + b + " is not divisible by the " + ranks + " data-parallel ranks (train.batch_size, or a batch-size ramp step)");
        int per = b / ranks;
        int[] rows = new int[per];
        for (int i = 0; i < per; i++) rows[i] = rank * per + i;
        return global.rows(rows);
    }

    /**
     * The global batch's mean loss from this rank's mean over its (equal-sized) slice; every rank gets the same value.
     * Under {@link #noSync} it returns {@code local} without communicating and keeps it; the next call outside no_sync
     * returns the mean over all those micro-batches and ranks (non-finite on every rank when any rank's loss of any
     * of them was), from one all-reduce as without accumulation.
     */
    public double meanLoss(double local) {
        if (noSync) {
            deferredLoss += local;
            deferredCount++;
            return local;
        }
        double[] v = {deferredLoss + local};
        int micro = deferredCount + 1;
        deferredLoss = 0;
        deferredCount = 0;
        group.allReduceSum(v);
        return v[0] / ranks / micro;
    }

    /**
     * Gradient accumulation (PyTorch DDP's no_sync): while on, backward only accumulates this rank's gradients locally
     * (no hook, no bucket, no communication) and {@link #meanLoss} defers; the first backward after it is switched off
     * reduces the accumulated gradients in buckets as usual, so a step moves the same bytes whatever the number of
     * micro-batches. At ZeRO-2/3 every rank keeps the full local gradient until then (the gradients of parameters
     * it does not own are freed once packed into the last micro-batch's buckets): accumulation costs 4 bytes per
     * parameter per rank between micro-batches, as DDP's does.
     */
    public void noSync(boolean on) {
        noSync = on;
    }

    /** Whether {@code local} is true on any rank (a collective: one 8-byte all-reduce). */
    public boolean anyRank(boolean local) {
        double[] v = {local ? 1 : 0};
        group.allReduceMax(v);
        return v[0] > 0;
    }

    /** Starts watching backward: from now on each finished gradient joins a bucket (nothing under {@link #noSync}). */
    public void beforeBackward() {
        if (noSync) return;
        open.clear();
        openElements = 0;
        inFlight.clear();
        queued.clear();
        Tape.setGradReadyHook(this::ready);
    }

    private void ready(Tensor leaf) {
        if (!(leaf instanceof Parameter p) || !names.containsKey(p) || queued.put(p, Boolean.TRUE) != null) return;
        open.add(p);
        openElements += p.numel();
        if (openElements * 4 >= bucketBytes) launch();
        poll();
    }

    /** Lets MPI progress (Open MPI moves transfers only inside MPI calls) and unpacks the buckets that completed. */
    private void poll() {
        for (var it = inFlight.iterator(); it.hasNext(); ) {
            BucketTransport.Pending b = it.next();
            if (b.work().test()) {
                b.unpack();
                it.remove();
            }
        }
    }

    /** Writes a completed bucket's averaged gradients back (stage ≥ 2: the owned ones) and frees its buffers. */
    private void unpack(Bucket b) {
        long at = 0;
        float scale = 1f / ranks;
        for (Parameter p : b.params) {
            if (p.grad() == null) p.setGrad(persistentZerosLike(p));
            FlatF32.unpack(b.buf, at, p.grad(), scale, names.get(p));
            at += p.numel();
        }
        freeBuffers.add(b.send);
        if (b.buf != b.send) freeBuffers.add(b.buf);
    }

    private void launch() {
        if (open.isEmpty()) return;
        List<Parameter> order = new ArrayList<>(open);
        if (stage < 2) {
            inFlight.add(transport.allReduceMean(order, openElements));
        } else {
            MemorySegment send = buffer(openElements);
            order.sort(java.util.Comparator.comparingInt(p -> owners.owner(names.get(p)))); // stable: ready order within a rank
            int[] counts = new int[ranks];
            long at = 0;
            List<Parameter> mine = new ArrayList<>();
            for (Parameter p : order) {
                int o = owners.owner(names.get(p));
                counts[o] += (int) p.numel();
                FlatF32.pack(p.grad(), p.numel(), send, at, names.get(p));
                at += p.numel();
                if (o == rank) mine.add(p);
                else if (p.grad() != null) { // ZeRO-2: a gradient this rank does not own is not kept past its bucket
                    p.grad().release();
                    p.setGrad(null);
                }
            }
            MemorySegment recv = buffer(Math.max(1, counts[rank]));
            inFlight.add(new Bucket(this, mine, send, recv, group.reduceScatterAsync(send, recv, counts)));
        }
        open.clear();
        openElements = 0;
    }

    /** The host transport: the bucket packed into a host buffer and all-reduced over MPI (averaged at unpack). */
    private BucketTransport.Pending allReduceOnHost(List<Parameter> order, long elements) {
        MemorySegment send = buffer(elements);
        long at = 0;
        for (Parameter p : order) {
            FlatF32.pack(p.grad(), p.numel(), send, at, names.get(p));
            at += p.numel();
        }
        return new Bucket(this, order, send, send, group.allReduceAsync(send, (int) elements));
    }

    /** A free buffer of at least {@code elements} floats (the smallest that fits), or a new one. */
    private MemorySegment buffer(long elements) {
        int best = -1;
        for (int i = 0; i < freeBuffers.size(); i++) {
            long size = freeBuffers.get(i).byteSize();
            if (size >= elements * 4 && (best < 0 || size < freeBuffers.get(best).byteSize())) best = i;
        }
        if (best >= 0) return freeBuffers.remove(best);
        return Arena.ofAuto().allocate(Math.max(elements * 4, Math.min(bucketBytes, 4L * Integer.MAX_VALUE / 2)), 64);
    }

    /**
     * Ends backward: parameters no node used join the last bucket (in model order), every bucket is waited on and
     * the averaged gradients written back (stage 2: only the owned ones).
     */
    public void afterBackward() {
        if (noSync) {
            if (sharding != null) sharding.evictRoot();
            return;
        }
        Tape.setGradReadyHook(null);
        for (Parameter p : params.values()) if (!queued.containsKey(p)) ready(p);
        launch();
        for (BucketTransport.Pending b : inFlight) {
            b.work().await();
            b.unpack();
        }
        inFlight.clear();
        queued.clear();
        if (sharding != null) sharding.evictRoot();
    }

    private static Tensor persistentZerosLike(Tensor t) {
        try (var s = MemoryScope.persistent()) {
            return Tensor.zerosLike(t);
        }
    }

    /**
     * Global-norm clipping as {@link dev.kiln.optim.GradClip#clip}: below stage 2 every rank holds the whole averaged
     * gradient, so the local norm is the global one (under tensor parallelism {@link TensorParallel#clip}'s, which
     * adds the shards'); at stage 2 each rank sums the squares of the gradients it owns and the sums are added across
     * ranks. Under tensor parallelism too (ZeRO-2/3 over each shard's data-parallel group): the squares of tp-sharded
     * and of replicated gradients are summed apart over dp, then the sharded sum is added over the tp group (each
     * shard's part once) while the replicated one, equal on every shard, is counted once. The ownership of a name is
     * the same on every shard (equal shapes), so every rank of the job gets the same norm.
     */
    public double clip(Collection<Parameter> all, double maxNorm) {
        TensorParallel tp = TensorParallel.active();
        if (stage < 2) return tp != null ? tp.clip(all, maxNorm) : dev.kiln.optim.GradClip.clip(all, maxNorm);
        double[] sq = new double[tp == null ? 1 : 2]; // [all] without tp (one double on the wire, as ever); [tp-sharded, replicated]
        for (Parameter p : all)
            if (p.grad() != null && owns(p)) sq[tp != null && !tp.isSharded(p) ? 1 : 0] += Backend.of(p).sumOfSquares(p.grad());
        group.allReduceSum(sq);
        double norm = Math.sqrt(tp == null ? sq[0] : tp.sumOverShards(sq[0]) + sq[1]);
        if (maxNorm > 0 && Double.isFinite(norm)) {
            double coef = maxNorm / (norm + 1e-6);
            if (coef < 1) for (Parameter p : all) if (p.grad() != null && owns(p)) Backend.of(p).scale(p.grad(), coef);
        }
        return norm;
    }

    private boolean owns(Parameter p) {
        String n = names.get(p);
        return n != null && owners.owner(n) == rank;
    }

    /** The parameters (by name) this rank's optimizer updates: all below stage 1, its own shard from stage 1. */
    public <T> Map<String, T> optimizerShard(Map<String, T> trainable) {
        return stage == 0 ? trainable : owners.ownedBy(rank, trainable);
    }

    /**
     * After each rank updated its own parameters: every rank receives every parameter, in all-gathers of about
     * bucket_mb each (consecutive parameters in model order, each rank's block packed by owner), so the buffers
     * stay the size of a bucket.
     */
    public void gatherParameters() {
        if (sharding != null) return; // ZeRO-3: each rank keeps only its own; units are gathered when they run
        List<String> chunk = new ArrayList<>();
        long elements = 0;
        for (var e : params.entrySet()) {
            chunk.add(e.getKey());
            elements += e.getValue().numel();
            if (elements * 4 >= bucketBytes) {
                gatherChunk(chunk, elements);
                chunk.clear();
                elements = 0;
            }
        }
        if (!chunk.isEmpty()) gatherChunk(chunk, elements);
    }

    private void gatherChunk(List<String> chunk, long elements) {
        int[] counts = new int[ranks];
        for (String n : chunk) counts[owners.owner(n)] += (int) params.get(n).numel();
        MemorySegment send = buffer(Math.max(1, counts[rank])), recv = buffer(elements);
        long at = 0;
        for (String n : chunk)
            if (owners.owner(n) == rank) {
                FlatF32.pack(params.get(n), params.get(n).numel(), send, at, n);
                at += params.get(n).numel();
            }
        group.allGather(send, recv, counts);
        at = 0;
        for (int r = 0; r < ranks; r++)
            for (String n : chunk) {
                if (owners.owner(n) != r) continue;
                if (r != rank) FlatF32.unpack(recv, at, params.get(n), 1f, n);
                at += params.get(n).numel();
            }
        freeBuffers.add(send);
        freeBuffers.add(recv);
    }

    /** Every rank must start from the same weights (same seed, same checkpoint): compares a checksum of all of them. */
    private void checkSameWeights() {
        double sum = 0, sq = 0;
        for (Parameter p : params.values()) {
            float[] v = p.toFloatArray();
            for (int i = 0; i < v.length; i++) {
                sum += v[i] * (1 + (i % 7));
                sq += (double) v[i] * v[i];
            }
        }
        double[] mine = {sum, sq}, lo = {-sum, -sq}, hi = {sum, sq};
        group.allReduceMax(hi);
        group.allReduceMax(lo);
        if (hi[0] != -lo[0] || hi[1] != -lo[1])
            throw new DistException("rank " + rank + ": the ranks do not start from the same weights (checksum " + mine[0]
                    + "); every rank must use the same train.seed and checkpoint");
    }

    /** Names of the trainable parameters in model order (the order of every collective here). */
    public Map<String, Parameter> parameters() {
        return new LinkedHashMap<>(params);
    }

    /**
     * Saves a checkpoint from rank 0 (collective): a sharded optimizer's state is first gathered there
     * ({@link ShardedOptimizer#consolidated}), then rank 0 calls {@code save} and returns what it returned; the other
     * ranks return {@code otherwise}. (They cannot read it before it exists: the next collective waits for rank 0.)
     */
    public <T> T saveFromLead(dev.kiln.optim.Optimizer opt, java.util.function.Function<dev.kiln.optim.Optimizer, T> save, T otherwise) {
        if (opt instanceof MixedPrecisionOptimizer mp) { // the wrapped (sharded) state is gathered; fp16's scaler entries go alongside
            ScalerEntries scaler = ScalerEntries.of(mp);
            return saveFromLead(mp.inner(), o -> save.apply(scaler.around(o)), otherwise);
        }
        if (sharding != null) { // ZeRO-3: the whole model on every rank while rank 0 writes it, then the shards again
            sharding.gatherAll();
            try {
                return saveSharded(opt, save, otherwise);
            } finally {
                sharding.evictAll();
            }
        }
        return saveSharded(opt, save, otherwise);
    }

    /**
     * ZeRO-3 under mixed precision: the parameters other ranks own, whose fp32 masters this rank does not keep, and the
     * switch of the just-in-time all-gathers to half-precision working copies during a step; null below stage 3.
     */
    public dev.kiln.optim.PagedMasters pagedMasters() {
        return sharding;
    }

    /**
     * ZeRO-3: gathers every parameter on every rank (a collective), e.g. before a checkpoint is loaded into them;
     * the next forward shards them again. No-op below stage 3.
     */
    public void gatherAllParameters() {
        if (sharding != null) sharding.gatherAll();
    }

    /**
     * ZeRO-3: frees the parameters this rank does not own (no communication), e.g. before a resharding load fills
     * only the owned ones; each unit is gathered from its owners when it next runs. No-op below stage 3.
     */
    public void evictUnownedParameters() {
        if (sharding != null) sharding.evictAll();
    }

    private <T> T saveSharded(dev.kiln.optim.Optimizer opt, java.util.function.Function<dev.kiln.optim.Optimizer, T> save, T otherwise) {
        if (opt instanceof ShardedOptimizer so) {
            try (ShardedOptimizer.Consolidated all = so.consolidated()) {
                return isLead() ? save.apply(all) : otherwise;
            }
        }
        return isLead() ? save.apply(opt) : otherwise;
    }
}
