package dev.kiln.train;

import dev.kiln.nn.models.Gpt;
import dev.kiln.nn.models.GptConfig;
import dev.kiln.nn.models.GptHfFormat;
import dev.kiln.nn.models.TensorParallelism;
import dev.kiln.optim.AdamW;
import dev.kiln.tensor.DType;
import dev.kiln.tensor.MemoryScope;
import dev.kiln.tensor.Rng;
import dev.kiln.tensor.Safetensors;
import dev.kiln.tensor.Tensor;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.lang.foreign.ValueLayout;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * The tensor-parallel geometry of sharded checkpoints in one process: a GPT cut into 3 shards (vocabulary 67, padded
 * to 69), each shard's pieces ({@link RankPieces}) written as its rank file and assembled ({@link ShardedCheckpoint#assemble})
 * give the whole model in HF layout and the whole AdamW state bit for bit, each element written once (the padding
 * rows not at all); a missing q/k/v block is named with its first missing element. No collectives are needed: a
 * shard is built from the whole model by {@link Gpt#Gpt(Gpt, TensorParallelism)}.
 */
class RankPiecesTest {
    @TempDir
    Path tmp;

    static final GptConfig CFG = new GptConfig(2, 3, 24, 8, 67, 0.0, true);
    static final int T = 3;

    /** Only rank and size are read when a shard is built. */
    static TensorParallelism shardIndex(int rank, int size) {
        return new TensorParallelism() {
            public int rank() { return rank; }
            public int size() { return size; }
            public Tensor copyToShards(Tensor x) { throw new UnsupportedOperationException(); }
            public Tensor reduceFromShards(Tensor x) { throw new UnsupportedOperationException(); }
            public Tensor vocabParallelCrossEntropy(Tensor l, Tensor t, int s, int v, double e, double z) { throw new UnsupportedOperationException(); }
            public Tensor gatherVocab(Tensor l, int v) { throw new UnsupportedOperationException(); }
        };
    }

    static byte[] bytes(Tensor t) {
        Tensor c = t.contiguous();
        return c.segment().asSlice(c.offset() * 4, c.numel() * 4).toArray(ValueLayout.JAVA_BYTE);
    }

    @Test
    void threeShardsAssembleIntoTheWholeModelAndOptimizerBitForBit() {
        try (var scope = MemoryScope.open()) {
            Gpt whole = new Gpt(CFG, 7, DType.F32);
            AdamW wholeOpt = new AdamW(whole.namedParameters(), 0.9, 0.95, 1e-8, 0.1);
            Rng rng = new Rng(11);
            Map<String, Tensor> state = new LinkedHashMap<>();
            wholeOpt.stateDict().forEach((k, v) -> state.put(k, Tensor.randn(rng, 1, DType.F32, v.shape())));
            List<Path> files = new ArrayList<>();
            long written = 0;
            for (int r = 0; r < T; r++) {
                Gpt shard = new Gpt(whole, shardIndex(r, T));
                AdamW opt = new AdamW(shard.namedParameters(), 0.9, 0.95, 1e-8, 0.1);
                Map<String, Tensor> mine = new LinkedHashMap<>();
                int rank = r;
                state.forEach((k, v) -> {
                    var split = shard.tensorParallelSplits().get(k.substring(k.indexOf('.') + 1));
                    mine.put(k, split == null ? v : split.slice(v, rank, T));
                });
                opt.loadStateDict(mine, 3);
                Path f = tmp.resolve(ShardedCheckpoint.rankFile(r, T));
                ShardedCheckpoint.write(f, RankPieces.of(shard, opt, null, r, T, null), opt, r, T);
                written += Safetensors.readHeader(f).values().stream().mapToLong(h -> h.numel()).sum();
                files.add(f);
            }
            long total = whole.parameterCount() * 3; // parameters, exp_avg, exp_avg_sq
            assertEquals(total, written, "every element written once, the vocabulary padding not at all");

            List<String> names = new ArrayList<>(whole.namedParameters().keySet());
            List<String> paramOrder = new ArrayList<>(); // the whole optimizer's: group by group (decay, then no decay), as the index records it
            for (var g : dev.kiln.optim.ParamGroup.standard(whole.namedParameters(), 0.1, 0)) paramOrder.addAll(g.params().keySet());
            ShardedCheckpoint.Whole got = ShardedCheckpoint.assemble(files, names, paramOrder);
            Map<String, Tensor> want = GptHfFormat.export(whole);
            assertEquals(new ArrayList<>(want.keySet()), new ArrayList<>(got.model().keySet()));
            for (var e : want.entrySet()) {
                assertArrayEquals(e.getValue().shape(), got.model().get(e.getKey()).shape(), e.getKey());
                assertArrayEquals(bytes(e.getValue()), bytes(got.model().get(e.getKey())), e.getKey());
            }
            assertEquals(new ArrayList<>(state.keySet()), new ArrayList<>(got.optimizer().tensors().keySet()), "the whole optimizer's order");
            for (var e : state.entrySet()) assertArrayEquals(bytes(e.getValue()), bytes(got.optimizer().tensors().get(e.getKey())), e.getKey());
            assertEquals("3", got.optimizer().metadata().get("step"));
        }
    }

    /** Rows (c_attn: q, k, v; wte with padding) and columns (row-parallel c_proj) of the whole tensor. */
    @Test
    void blocksOfRowsAndColumns() {
        var qkv = RankPieces.blocks(new TensorParallelism.Split(3, 8 * 24, 24, 24), new int[]{72, 24}, 1, 3);
        assertEquals(3, qkv.size());
        for (int o = 0; o < 3; o++) {
            assertArrayEquals(new int[]{o * 24 + 8, 0}, qkv.get(o).offset());
            assertArrayEquals(new int[]{8, 24}, qkv.get(o).shape());
            assertEquals(o * 8 * 24L, qkv.get(o).localStart());
        }
        var proj = RankPieces.blocks(new TensorParallelism.Split(24, 8, 24, 8), new int[]{24, 24}, 2, 3);
        assertEquals(1, proj.size());
        assertArrayEquals(new int[]{0, 16}, proj.getFirst().offset());
        assertArrayEquals(new int[]{24, 8}, proj.getFirst().shape());
        var wte = RankPieces.blocks(new TensorParallelism.Split(1, 23 * 24, 23, 24), new int[]{67, 24}, 2, 3);
        assertArrayEquals(new int[]{46, 0}, wte.getFirst().offset());
        assertArrayEquals(new int[]{21, 24}, wte.getFirst().shape(), "the two padding rows are left out");
        assertThrows(IllegalArgumentException.class, () -> RankPieces.blocks(new TensorParallelism.Split(2, 5, 10), new int[]{4, 7}, 0, 3));
    }

    @Test
    void aMissingQkvBlockIsNamedWithItsFirstMissingElement() {
        try (var scope = MemoryScope.open()) {
            Gpt whole = new Gpt(CFG, 7, DType.F32);
            List<Path> files = new ArrayList<>();
            for (int r = 0; r < T; r++) {
                Gpt shard = new Gpt(whole, shardIndex(r, T));
                AdamW opt = new AdamW(shard.namedParameters(), 0.9, 0.95, 1e-8, 0.1);
                var pieces = new ArrayList<>(RankPieces.of(shard, opt, null, r, T, null));
                if (r == 1) // drop rank 1's k rows of block 0's c_attn (HF layout: columns 24+8 .. 24+16)
                    assertTrue(pieces.removeIf(p -> p.kind().equals(ShardedCheckpoint.MODEL) && p.name().equals("transformer.h.0.attn.c_attn.weight")
                            && p.offset()[1] == 32));
                Path f = tmp.resolve(ShardedCheckpoint.rankFile(r, T));
                ShardedCheckpoint.write(f, pieces, opt, r, T);
                files.add(f);
            }
            var e = assertThrows(TrainingException.class, () -> ShardedCheckpoint.assemble(files, List.of(), List.of()));
            assertTrue(e.getMessage().contains("transformer.h.0.attn.c_attn.weight [24, 72]") && e.getMessage().contains("element [0, 32] is in none")
                    && !e.getMessage().contains("\n"), e.getMessage());
        }
    }
}
