package dev.kiln.dist;

import dev.kiln.autograd.Tape;
import dev.kiln.backend.Backend;
import dev.kiln.nn.Parameter;
import dev.kiln.nn.models.Gpt;
import dev.kiln.nn.models.TensorParallelism;
import dev.kiln.tensor.DType;
import dev.kiln.tensor.Tensor;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.Collection;
import java.util.IdentityHashMap;

/**
 * Megatron-style tensor parallelism over a process group (the tp group of a {@link ParallelLayout}): the f and g
 * collectives of {@link TensorParallelism} as autograd ops, the vocabulary-parallel cross-entropy and the logits
 * gather; the gradient-norm clipping that counts sharded parameters once per shard and replicated ones once; and
 * the gather / slice of whole tensors for checkpoints. Every call is collective over the group.
 * Besides the group's shared {@link CommStats} it counts its own calls ({@link #stats}), so a run can tell the
 * tensor-parallel bytes from the data-parallel ones.
 */
public final class TensorParallel implements TensorParallelism {
    private static final ValueLayout.OfFloat F = ValueLayout.JAVA_FLOAT;
    private static TensorParallel active;

    private final ProcessGroup group;
    private final CommStats stats = new CommStats();
    private final IdentityHashMap<Parameter, Boolean> sharded = new IdentityHashMap<>();
    private Gpt model;

    public TensorParallel(ProcessGroup group) {
        this.group = group;
    }

    /** Makes {@code tp} the one the trainer clips gradients with (null: none). */
    public static void install(TensorParallel tp) {
        active = tp;
    }

    /** The tensor parallelism the trainer runs under, or null. */
    public static TensorParallel active() {
        return active;
    }

    /** Records which of {@code model}'s parameters are shards (the rest are replicated), for {@link #clip}. */
    public void shardsOf(Gpt model) {
        this.model = model;
        sharded.clear();
        var named = model.namedParameters();
        for (String n : model.tensorParallelSplits().keySet()) sharded.put(named.get(n), Boolean.TRUE);
    }

    public ProcessGroup group() {
        return group;
    }

    /** This object's own collective calls: the tensor-parallel bytes of the run. */
    public CommStats stats() {
        return stats;
    }

    @Override
    public int rank() {
        return group.rank();
    }

    @Override
    public int size() {
        return group.size();
    }

    /** buf ← Σ over the shards (in place), counted. */
    private void allReduce(Tensor t) {
        stats.add(CommStats.Kind.ALL_REDUCE, 4L * t.numel());
        group.allReduce(FlatF32.data(t, "tensor-parallel all-reduce"), Math.toIntExact(t.numel()));
    }

    private void sum(double[] v) {
        stats.add(CommStats.Kind.ALL_REDUCE, 8L * v.length);
        group.allReduceSum(v);
    }

    private void max(double[] v) {
        stats.add(CommStats.Kind.ALL_REDUCE, 8L * v.length);
        group.allReduceMax(v);
    }

    /** {@code x} summed over the shards (one counted all-reduce of one double), e.g. the squared norm of sharded gradients. */
    public double sumOverShards(double x) {
        double[] v = {x};
        sum(v);
        return v[0];
    }

    @Override
    public Tensor copyToShards(Tensor x) {
        Tensor out = x.copy();
        return Tape.record(out, (g, grads) -> {
            if (!grads.wants(x)) return;
            Tensor sum = g.copy();
            allReduce(sum);
            Backend.of(x).axpy(1.0, sum, grads.buffer(x));
        }, x);
    }

    @Override
    public Tensor reduceFromShards(Tensor x) {
        Tensor out = x.copy();
        allReduce(out);
        return Tape.record(out, (g, grads) -> {
            if (grads.wants(x)) Backend.of(x).axpy(1.0, g, grads.buffer(x));
        }, x);
    }

    /**
     * Per row, over the full vocabulary V of which this shard holds columns [s, s + v) (those ≥ V masked):
     * <pre>
     *   M = max over shards of the local max;  S = Σ_shards Σ_j exp(x_j − M);  lse = M + log S
     *   loss = (1 − ε)·(lse − x[y]) + ε·(lse − Σ_j x_j / V) + c·lse²      (x[y] and Σ x_j summed over the shards)
     *   dloss/dx_j = p_j·(1 + 2c·lse) − (1 − ε)·[j = y] − ε/V,  p_j = exp(x_j − lse)
     * </pre>
     * as {@link dev.kiln.ops.Losses#crossEntropy(Tensor, Tensor, int, double, double)}, accumulated in fp64; the
     * backward needs no communication (the f before the head sums the hidden-state gradient).
     */
    @Override
    public Tensor vocabParallelCrossEntropy(Tensor localLogits, Tensor targets, int vocabStart, int vocab, double labelSmoothing, double zLoss) {
        if (!(labelSmoothing >= 0 && labelSmoothing < 1))
            throw new IllegalArgumentException("cross-entropy: label smoothing must be in [0, 1), got " + labelSmoothing);
        if (!(zLoss >= 0 && Double.isFinite(zLoss)))
            throw new IllegalArgumentException("cross-entropy: z-loss coefficient must be finite and >= 0, got " + zLoss);
        if (targets.dtype() != DType.I32) throw new IllegalArgumentException("targets must be int32, got " + targets.dtype());
        int v = localLogits.size(-1);
        int rows = Math.toIntExact(localLogits.numel() / v);
        if (targets.numel() != rows)
            throw new IllegalArgumentException("cross-entropy: " + rows + " rows of logits " + localLogits.shapeString() + " but targets " + targets.shapeString());
        Tensor x = localLogits.dtype() == DType.F32 ? localLogits.contiguous() : localLogits.to(DType.F32);
        MemorySegment xs = FlatF32.data(x, "vocab-parallel logits");
        int valid = Math.max(0, Math.min(v, vocab - vocabStart)); // columns past the vocabulary are padding
        int[] y = new int[rows];
        Tensor tc = targets.contiguous();
        for (int i = 0; i < rows; i++) y[i] = (int) tc.getFlat(i);
        double[] m = new double[rows];
        for (int i = 0; i < rows; i++) {
            double best = Double.NEGATIVE_INFINITY;
            long at = (long) i * v;
            for (int j = 0; j < valid; j++) best = Math.max(best, xs.getAtIndex(F, at + j));
            m[i] = best;
        }
        max(m);
        boolean smooth = labelSmoothing > 0;
        double[] s = new double[(smooth ? 3 : 2) * rows]; // Σ exp, target logit, (Σ x): one all-reduce
        for (int i = 0; i < rows; i++) {
            long at = (long) i * v;
            double e = 0, sx = 0;
            for (int j = 0; j < valid; j++) {
                double xj = xs.getAtIndex(F, at + j);
                e += Math.exp(xj - m[i]);
                sx += xj;
            }
            s[i] = e;
            int local = y[i] - vocabStart;
            if (local >= 0 && local < valid) s[rows + i] = xs.getAtIndex(F, at + local);
            if (smooth) s[2 * rows + i] = sx;
        }
        sum(s);
        double[] lse = new double[rows];
        double total = 0;
        int count = 0;
        for (int i = 0; i < rows; i++) {
            lse[i] = m[i] + Math.log(s[i]);
            if (y[i] == -1) continue;
            if (y[i] < 0 || y[i] >= vocab) throw new IllegalArgumentException("cross-entropy: target " + y[i] + " outside the vocabulary of " + vocab);
            double loss = (1 - labelSmoothing) * (lse[i] - s[rows + i]) + zLoss * lse[i] * lse[i];
            if (smooth) loss += labelSmoothing * (lse[i] - s[2 * rows + i] / vocab);
            total += loss;
            count++;
        }
        Tensor out = Tensor.full(total / count, localLogits.dtype());
        int n = count;
        return Tape.record(out, (g, grads) -> {
            if (!grads.wants(localLogits) || n == 0) return;
            double scale = g.item() / n;
            Tensor gl = Tensor.zeros(DType.F32, localLogits.shape());
            MemorySegment gs = FlatF32.data(gl, "vocab-parallel logits gradient");
            for (int i = 0; i < rows; i++) {
                if (y[i] == -1) continue;
                long at = (long) i * v;
                double zs = 1 + 2 * zLoss * lse[i];
                for (int j = 0; j < valid; j++) {
                    double p = Math.exp(xs.getAtIndex(F, at + j) - lse[i]);
                    double d = p * zs - labelSmoothing / vocab - (j == y[i] - vocabStart ? 1 - labelSmoothing : 0);
                    gs.setAtIndex(F, at + j, (float) (d * scale));
                }
            }
            Backend.of(localLogits).axpy(1.0, gl, grads.buffer(localLogits));
        }, localLogits);
    }

    @Override
    public Tensor gatherVocab(Tensor localLogits, int vocab) {
        if (Tape.isGradEnabled() && localLogits.requiresGrad())
            throw new IllegalStateException("the gathered logits of a tensor-parallel model have no gradient: train through loss(), or run under no-grad");
        int v = localLogits.size(-1), t = size();
        if (vocab > v * t) throw new IllegalArgumentException("vocabulary " + vocab + " exceeds " + t + " shards of " + v);
        Tensor x = localLogits.contiguous();
        int rows = Math.toIntExact(x.numel() / v);
        int[] shape = x.shape().clone();
        shape[shape.length - 1] = vocab;
        Tensor out = Tensor.empty(DType.F32, shape);
        MemorySegment recv = gather(x);
        // recv holds shard 0's (rows, v), then shard 1's, …: row i of the full logits takes column block r from shard r
        MemorySegment d = FlatF32.data(out, "gathered logits");
        for (int r = 0; r < t; r++) {
            int cols = Math.max(0, Math.min(v, vocab - r * v));
            for (int i = 0; i < rows; i++)
                MemorySegment.copy(recv, ((long) r * rows * v + (long) i * v) * 4, d, ((long) i * vocab + (long) r * v) * 4, (long) cols * 4);
        }
        return out;
    }

    /** Every shard's {@code local} (contiguous F32, the same size on every shard), shard 0's first: an all-gather. */
    private MemorySegment gather(Tensor local) {
        int n = Math.toIntExact(local.numel()), t = size();
        int[] counts = new int[t];
        java.util.Arrays.fill(counts, n);
        MemorySegment recv = Arena.ofAuto().allocate(4L * n * t, 64);
        stats.add(CommStats.Kind.ALL_GATHER, 4L * n * t);
        group.allGather(FlatF32.data(local, "tensor-parallel all-gather"), recv, counts);
        return recv;
    }

    /**
     * {@code full} ← the whole tensor whose shard {@code local} is on this rank, cut by {@code split} (collective; a
     * rank that passes null for {@code full} only contributes its shard).
     */
    public void gatherInto(Tensor local, TensorParallelism.Split split, Tensor full) {
        MemorySegment all = gather(local.contiguous());
        if (full != null) split.assemble(all, full, size());
    }

    /**
     * Global-norm clipping as {@link dev.kiln.optim.GradClip#clip} of the whole model: the squared norms of the
     * sharded gradients are summed over the shards (one all-reduce of one double), the replicated ones (equal on every
     * shard) counted once. Every shard gets the same norm and scales its gradients alike.
     */
    public double clip(Collection<Parameter> all, double maxNorm) {
        double[] shardSq = {0};
        double replicatedSq = 0;
        for (Parameter p : all) {
            if (p.grad() == null) continue;
            double sq = Backend.of(p).sumOfSquares(p.grad());
            if (sharded.containsKey(p)) shardSq[0] += sq;
            else replicatedSq += sq;
        }
        sum(shardSq);
        double norm = Math.sqrt(shardSq[0] + replicatedSq);
        if (maxNorm > 0 && Double.isFinite(norm)) {
            double coef = maxNorm / (norm + 1e-6);
            if (coef < 1) for (Parameter p : all) if (p.grad() != null) Backend.of(p).scale(p.grad(), coef);
        }
        return norm;
    }

    /** The shard {@link #shardsOf} registered (null before). */
    public Gpt model() {
        return model;
    }

    /** Whether {@code p} is a shard (not replicated) of the registered model. */
    public boolean isSharded(Parameter p) {
        return sharded.containsKey(p);
    }
}
