package dev.kiln.dist;

import dev.kiln.autograd.Tape;
import dev.kiln.nn.models.Gpt;
import dev.kiln.nn.models.GptConfig;
import dev.kiln.nn.models.TensorParallelism;
import dev.kiln.ops.Embeddings;
import dev.kiln.ops.Losses;
import dev.kiln.tensor.DType;
import dev.kiln.tensor.MemoryScope;
import dev.kiln.tensor.Rng;
import dev.kiln.tensor.Tensor;
import org.junit.jupiter.api.Test;

import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * The pieces of tensor parallelism in one process, the shards being threads of a {@link ThreadGroup}: Megatron's
 * f and g, the vocabulary-parallel embedding and cross-entropy against the unsharded ops, and a whole sharded GPT
 * against the single-process model (loss, every gradient, gathered logits, consolidation). Tolerances: the shards
 * sum partial products in another order than one GEMM does, so results agree to fp32 rounding (≈1e-6 relative),
 * not bit for bit; a wrong slice, mask or missing all-reduce is off at the 1e-1 level.
 */
class TensorParallelPiecesTest {

    private static Tensor leaf(Tensor t) {
        Tensor c = t.copy();
        c.requiresGrad(true);
        return c;
    }

    private static float[] f(Tensor t) {
        return t.contiguous().toFloatArray();
    }

    private static double maxAbsDiff(float[] a, float[] b) {
        assertEquals(a.length, b.length);
        double m = 0;
        for (int i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
        return m;
    }

    @Test
    void fIsIdentityForwardAllReduceBackwardAndGTheReverse() throws Exception {
        int t = 3;
        List<float[]> xs = new ArrayList<>(), gs = new ArrayList<>();
        for (int r = 0; r < t; r++) {
            xs.add(f(Tensor.randn(new Rng(10 + r), 1, DType.F32, 2, 3, 4)));
            gs.add(f(Tensor.randn(new Rng(20 + r), 1, DType.F32, 2, 3, 4)));
        }
        float[] xSum = new float[24], gSum = new float[24];
        for (int r = 0; r < t; r++)
            for (int i = 0; i < 24; i++) {
                xSum[i] += xs.get(r)[i];
                gSum[i] += gs.get(r)[i];
            }
        var results = ThreadGroup.run(t, g -> {
            try (var s = MemoryScope.open()) {
                TensorParallel tp = new TensorParallel(g);
                int r = g.rank();
                Tensor x = leaf(Tensor.of(xs.get(r), 2, 3, 4));
                Tensor y = tp.reduceFromShards(x);
                Tape.backward(y, Tensor.of(gs.get(r), 2, 3, 4));
                float[] gY = f(y), gX = f(x.grad());
                Tensor x2 = leaf(Tensor.of(xs.get(r), 2, 3, 4));
                Tensor y2 = tp.copyToShards(x2);
                Tape.backward(y2, Tensor.of(gs.get(r), 2, 3, 4));
                return new float[][]{gY, gX, f(y2), f(x2.grad())};
            }
        });
        for (int r = 0; r < t; r++) {
            float[][] got = results.get(r);
            assertTrue(maxAbsDiff(xSum, got[0]) < 1e-6, "g forward sums the shards");
            assertArrayEquals(gs.get(r), got[1], "g backward is the identity");
            assertArrayEquals(xs.get(r), got[2], "f forward is the identity");
            assertTrue(maxAbsDiff(gSum, got[3]) < 1e-6, "f backward sums the gradients");
        }
    }

    @Test
    void vocabParallelEmbeddingMatchesTheWholeTable() throws Exception {
        int v = 7, c = 5, t = 2, rows = 4; // padded to 8 rows: shard 1's last row is padding
        Tensor w = Tensor.randn(new Rng(3), 1, DType.F32, v, c);
        int[] ids = {0, 6, 3, 4, 4, 1};
        Tensor gOut = Tensor.randn(new Rng(4), 1, DType.F32, 2, 3, c);
        Tensor wl = leaf(w);
        Tensor want = Embeddings.embedding(Tensor.ofInts(ids, 2, 3), wl);
        Tape.backward(want, gOut);
        var split = new TensorParallelism.Split(1, rows * c, rows, c);
        var results = ThreadGroup.run(t, g -> {
            try (var s = MemoryScope.open()) {
                TensorParallel tp = new TensorParallel(g);
                Tensor local = leaf(split.slice(w, g.rank(), t));
                Tensor out = tp.vocabParallelEmbedding(Tensor.ofInts(ids, 2, 3), local, g.rank() * rows);
                Tape.backward(out, gOut);
                return new float[][]{f(out), f(local.grad())};
            }
        });
        for (int r = 0; r < t; r++) {
            assertArrayEquals(f(want), results.get(r)[0], "every shard gets the whole lookup");
            assertArrayEquals(f(split.slice(wl.grad(), r, t)), results.get(r)[1], "shard " + r + " gets its rows' gradient");
        }
        for (int j = 0; j < c; j++) assertEquals(0f, results.get(1)[1][3 * c + j], "the padding row gets no gradient");
    }

    @Test
    void vocabParallelCrossEntropyMatchesTheFullLoss() throws Exception {
        int n = 6, v = 7, t = 2, cols = 4;
        Tensor x = Tensor.randn(new Rng(5), 3, DType.F32, n, v);
        int[] y = {0, 6, 3, -1, 4, 5};
        for (double[] sz : new double[][]{{0, 0}, {0.1, 1e-3}}) {
            Tensor xl = leaf(x);
            Tensor want = Losses.crossEntropy(xl, Tensor.ofInts(y, n), -1, sz[0], sz[1]);
            Tape.backward(want);
            float[] full = f(x), fullGrad = f(xl.grad());
            var results = ThreadGroup.run(t, g -> {
                try (var s = MemoryScope.open()) {
                    TensorParallel tp = new TensorParallel(g);
                    float[] mine = new float[n * cols];
                    for (int i = 0; i < n; i++)
                        for (int j = 0; j < cols; j++) {
                            int col = g.rank() * cols + j;
                            mine[i * cols + j] = col < v ? full[i * v + col] : 1000f; // a huge padding logit must not count
                        }
                    Tensor local = leaf(Tensor.of(mine, n, cols));
                    Tensor loss = tp.vocabParallelCrossEntropy(local, Tensor.ofInts(y, n), g.rank() * cols, v, sz[0], sz[1]);
                    Tape.backward(loss);
                    return new float[][]{{(float) loss.item()}, f(local.grad())};
                }
            });
            for (int r = 0; r < t; r++) {
                assertEquals(want.item(), results.get(r)[0][0], 1e-6 * Math.abs(want.item()), "loss, ε " + sz[0] + ", z " + sz[1]);
                float[] g = results.get(r)[1];
                for (int i = 0; i < n; i++)
                    for (int j = 0; j < cols; j++) {
                        int col = r * cols + j;
                        float expect = col < v ? fullGrad[i * v + col] : 0f;
                        assertEquals(expect, g[i * cols + j], 1e-7, "gradient of logit (" + i + ", " + col + ")");
                    }
            }
        }
    }

    static final GptConfig TINY = new GptConfig(2, 4, 16, 8, 65, 0.0, true);
    /** μP at width ratio 1/2: the q columns of c_attn carry 1/√d scales, cut with the heads; logits × 1/2. */
    static final GptConfig TINY_MUP = new GptConfig(2, 4, 16, 8, 65, 0.0, true, "mup", 8);

    /** Per shard: loss, gradients by name, gathered logits, consolidated parameters, parameter count. */
    private record ShardResult(double loss, Map<String, float[]> grads, float[] logits, Map<String, float[]> whole, long params) {}

    @Test
    void shardedGptMatchesTheWholeModelAtTp2AndTp4() throws Exception {
        shardedGptMatchesTheWholeModel(TINY);
    }

    @Test
    void shardedMupGptMatchesTheWholeModel() throws Exception {
        shardedGptMatchesTheWholeModel(TINY_MUP);
    }

    private static void shardedGptMatchesTheWholeModel(GptConfig config) throws Exception {
        int b = 2, tt = 8;
        Rng rng = new Rng(11);
        int[] idx = new int[b * tt], tgt = new int[b * tt];
        for (int i = 0; i < idx.length; i++) {
            idx[i] = (int) (rng.nextDouble() * 65);
            tgt[i] = (int) (rng.nextDouble() * 65);
        }
        tgt[3] = 64; // the last real token: next to the padding rows
        try (var scope = MemoryScope.open()) {
            Gpt full = new Gpt(config, 7, DType.F32);
            full.eval();
            Tensor loss = full.loss(Tensor.ofInts(idx, b, tt), Tensor.ofInts(tgt, b, tt));
            Tape.backward(loss);
            Map<String, float[]> fullGrads = new LinkedHashMap<>();
            full.namedParameters().forEach((k, p) -> fullGrads.put(k, f(p.grad())));
            float[] fullLogits;
            try (var ng = Tape.noGradScope()) {
                fullLogits = f(full.forward(Tensor.ofInts(idx, b, tt)));
            }
            for (int t : new int[]{2, 4}) {
                var results = ThreadGroup.run(t, g -> {
                    try (var s = MemoryScope.open()) {
                        TensorParallel tp = new TensorParallel(g);
                        Gpt shard = new Gpt(full, tp);
                        shard.eval();
                        tp.shardsOf(shard);
                        Tensor l = shard.loss(Tensor.ofInts(idx, b, tt), Tensor.ofInts(tgt, b, tt));
                        Tape.backward(l);
                        Map<String, float[]> grads = new LinkedHashMap<>(), whole = new LinkedHashMap<>();
                        shard.namedParameters().forEach((k, p) -> grads.put(k, f(p.grad())));
                        float[] logits;
                        try (var ng = Tape.noGradScope()) {
                            logits = f(shard.forward(Tensor.ofInts(idx, b, tt)));
                        }
                        var named = shard.namedParameters();
                        shard.tensorParallelSplits().forEach((k, split) -> {
                            Tensor w = Tensor.zeros(DType.F32, full.namedParameters().get(k).shape());
                            tp.gatherInto(named.get(k), split, w);
                            whole.put(k, f(w));
                        });
                        assertThrows(IllegalStateException.class, () -> shard.forward(Tensor.ofInts(idx, b, tt)), "full logits have no gradient");
                        return new ShardResult(l.item(), grads, logits, whole, shard.parameterCount());
                    }
                });
                checkShards(t, full, loss.item(), fullGrads, fullLogits, results);
            }
        }
    }

    private static void checkShards(int t, Gpt full, double loss, Map<String, float[]> fullGrads, float[] fullLogits, List<ShardResult> results) {
        int c = TINY.n_embd(), rowsPerShard = (65 + t - 1) / t;
        double worstAll = 0;
        for (int r = 0; r < t; r++) {
            ShardResult res = results.get(r);
            assertEquals(loss, res.loss(), 1e-6 * loss, "tp " + t + ": loss of shard " + r);
            assertTrue(maxAbsDiff(fullLogits, res.logits()) < 1e-5, "tp " + t + ": gathered logits");
            double worst = 0;
            for (var e : res.grads().entrySet()) {
                String k = e.getKey();
                float[] want = fullGrads.get(k);
                float[] got = e.getValue();
                if (res.whole().containsKey(k)) { // sharded: compare with this shard's slice of the full gradient
                    Tensor fg = Tensor.of(want, full.namedParameters().get(k).shape());
                    want = f(splitOf(k, t, c, rowsPerShard).slice(fg, r, t));
                    assertArrayEquals(f(full.namedParameters().get(k)), res.whole().get(k), "tp " + t + ": consolidated " + k);
                } else {
                    assertArrayEquals(results.getFirst().grads().get(k), got, "tp " + t + ": replicated " + k + " has the same gradient on every shard");
                }
                double scale = 1e-6 + maxAbs(want);
                worst = Math.max(worst, maxAbsDiff(want, got) / scale);
            }
            assertTrue(worst < 1e-4, "tp " + t + " shard " + r + ": worst relative gradient difference " + worst);
            worstAll = Math.max(worstAll, worst);
            float[] wte = res.grads().get("transformer.wte.weight");
            for (int row = 0; row < rowsPerShard; row++)
                if (r * rowsPerShard + row >= 65) for (int j = 0; j < c; j++) assertEquals(0f, wte[row * c + j], "padding row gradient");
        }
        // memory: each shard holds the replicated part and 1/t of the (padded) sharded part
        long l = TINY.n_layer(), tokens = TINY.block_size();
        long replicated = tokens * c + 2L * c + l * (4L * c + 2L * c);
        long sharded = (long) rowsPerShard * t * c + l * (12L * c * c + 7L * c);
        for (ShardResult res : results) assertEquals(replicated + sharded / t, res.params(), "tp " + t + ": parameters per shard");
        System.out.printf("tp %d: loss %.12f on every shard (whole model %.12f); worst gradient difference %.2e of the largest; parameters per shard %d = %d replicated + %d/%d sharded%n",
                t, results.getFirst().loss(), loss, worstAll, results.getFirst().params(), replicated, sharded, t);
    }

    @Test
    void headsMustDivideAmongTheShards() throws Exception {
        Gpt full = new Gpt(TINY, 7, DType.F32); // 4 heads
        var messages = ThreadGroup.run(3, g -> assertThrows(IllegalArgumentException.class, () -> new Gpt(full, new TensorParallel(g))).getMessage());
        assertTrue(messages.getFirst().contains("model.n_head 4 is not divisible by parallel.tp 3"), messages.getFirst());
    }

    private static double maxAbs(float[] a) {
        double m = 0;
        for (float v : a) m = Math.max(m, Math.abs(v));
        return m;
    }

    /** The cut of each sharded parameter, written out independently of Gpt's code. */
    private static TensorParallelism.Split splitOf(String name, int t, int c, int vocabRows) {
        int cs = c / t, fs = 4 * c / t;
        if (name.equals("transformer.wte.weight")) return new TensorParallelism.Split(1, vocabRows * c, vocabRows, c);
        if (name.endsWith("attn.c_attn.weight")) return new TensorParallelism.Split(3, cs * c, 3 * cs, c);
        if (name.endsWith("attn.c_attn.bias")) return new TensorParallelism.Split(3, cs, 3 * cs);
        if (name.endsWith("attn.c_proj.weight")) return new TensorParallelism.Split(c, cs, c, cs);
        if (name.endsWith("mlp.c_fc.weight")) return new TensorParallelism.Split(1, fs * c, fs, c);
        if (name.endsWith("mlp.c_fc.bias")) return new TensorParallelism.Split(1, fs, fs);
        if (name.endsWith("mlp.c_proj.weight")) return new TensorParallelism.Split(c, fs, c, fs);
        throw new AssertionError("not a sharded parameter: " + name);
    }
}
