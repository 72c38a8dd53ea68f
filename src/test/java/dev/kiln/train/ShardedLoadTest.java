package dev.kiln.train;

import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import dev.kiln.dist.ParameterOwners;
import dev.kiln.nn.Parameter;
import dev.kiln.nn.models.Gpt;
import dev.kiln.optim.AdamW;
import dev.kiln.tensor.DType;
import dev.kiln.tensor.MemoryScope;
import dev.kiln.tensor.Rng;
import dev.kiln.tensor.Tensor;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.lang.foreign.MemorySegment;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * The resharding load in one process, without MPI: pieces written by a tp 3 layout (vocabulary 67 padded to 69,
 * {@link RankPieces}) are loaded ({@link ShardedLoad#fill}) into every rank of a tp 2 × ZeRO-3-over-3 layout
 * (vocabulary padded to 68; whole parameters owned unevenly by {@link ParameterOwners}) and into one process: each
 * rank gets exactly its parameters' tp shards and its optimizer entries, bit for bit, the padding rows zero, reading
 * exactly the bytes it holds; a missing piece, a corrupt piece and a missing rank file are one-line errors.
 */
class ShardedLoadTest {
    @TempDir
    Path tmp;

    static final int A = 3, B = 2, DP = 3;
    /** 6 heads (whole heads for tp 2 and 3), vocabulary 67: padded to 69 under tp 3, to 68 under tp 2 */
    static final dev.kiln.nn.models.GptConfig CFG = new dev.kiln.nn.models.GptConfig(2, 6, 24, 8, 67, 0.0, true);

    /** The whole model, its random AdamW state, and a checkpoint directory of it written by a tp A layout. */
    record Written(Gpt whole, Map<String, Tensor> state, Path dir) {}

    Written write(Rng rng) throws Exception {
        Gpt whole = new Gpt(CFG, 7, DType.F32);
        AdamW wholeOpt = new AdamW(whole.namedParameters(), 0.9, 0.95, 1e-8, 0.1);
        Map<String, Tensor> state = new LinkedHashMap<>();
        wholeOpt.stateDict().forEach((k, v) -> state.put(k, Tensor.randn(rng, 1, DType.F32, v.shape())));
        Path dir = tmp.resolve("step-000003");
        Files.createDirectories(dir);
        ObjectMapper json = new ObjectMapper();
        ObjectNode manifest = json.createObjectNode(), sums = json.createObjectNode();
        var files = manifest.putObject(ShardedCheckpoint.INDEX_KEY).putArray("files");
        for (int r = 0; r < A; r++) {
            Gpt shard = new Gpt(whole, RankPiecesTest.shardIndex(r, A));
            AdamW opt = new AdamW(shard.namedParameters(), 0.9, 0.95, 1e-8, 0.1);
            Map<String, Tensor> mine = new LinkedHashMap<>();
            int rank = r;
            state.forEach((k, v) -> {
                var split = shard.tensorParallelSplits().get(k.substring(k.indexOf('.') + 1));
                mine.put(k, split == null ? v : split.slice(v, rank, A));
            });
            opt.loadStateDict(mine, 3);
            String f = ShardedCheckpoint.rankFile(r, A);
            ShardedCheckpoint.write(dir.resolve(f), RankPieces.of(shard, opt, null, r, A, null), opt, r, A);
            files.add(f);
            sums.set(f, json.valueToTree(Checksums.of(dir.resolve(f))));
        }
        manifest.set("checksums", sums);
        json.writeValue(dir.resolve(CheckpointStore.STATE_FILE).toFile(), manifest);
        return new Written(whole, state, dir);
    }

    static byte[] bytes(Tensor t) {
        return RankPiecesTest.bytes(t);
    }

    @Test
    void tp3PiecesLoadIntoEachRankOfTp2WithZero3OverThreeRanks() throws Exception {
        try (var scope = MemoryScope.open()) {
            Written w = write(new Rng(5));
            long wholeBytes = 3 * w.whole().parameterCount() * 4, replicated = 0, sum = 0;
            for (int t = 0; t < B; t++) {
                Gpt probe = new Gpt(w.whole(), RankPiecesTest.shardIndex(t, B));
                for (var e : probe.namedParameters().entrySet())
                    if (!probe.tensorParallelSplits().containsKey(e.getKey())) replicated += 3 * e.getValue().numel() * 4; // param + 2 moments
                for (int d = 0; d < DP; d++) {
                    Gpt shard = new Gpt(w.whole(), RankPiecesTest.shardIndex(t, B));
                    Map<String, Parameter> named = shard.namedParameters();
                    ParameterOwners owners = new ParameterOwners(named, DP);
                    Map<String, Parameter> owned = owners.ownedBy(d, named);
                    for (Parameter p : named.values()) p.fill(Double.NaN); // what the load does not fill stays NaN
                    AdamW opt = new AdamW(owned, 0.9, 0.95, 1e-8, 0.1); // ZeRO: the optimizer over the owned parameters
                    ShardedLoad.Report r = ShardedLoad.fill(w.dir(), shard, owned.keySet(), t, B, opt, 3);
                    assertEquals(r.share(), r.bytesRead(), "tp " + t + " dp " + d + ": every element it holds is read once, nothing else");
                    sum += r.share();
                    for (var e : named.entrySet()) {
                        String n = e.getKey();
                        var split = shard.tensorParallelSplits().get(n);
                        Tensor want = split == null ? w.whole().namedParameters().get(n) : split.slice(w.whole().namedParameters().get(n), t, B);
                        if (owned.containsKey(n)) assertArrayEquals(bytes(want), bytes(e.getValue()), "tp " + t + " dp " + d + ": " + n);
                        else assertTrue(Double.isNaN(e.getValue().getFlat(0)), n + " is not this rank's: not filled");
                    }
                    assertEquals(3, opt.stepCount());
                    for (var e : opt.stateDict().entrySet()) {
                        String k = e.getKey();
                        var split = shard.tensorParallelSplits().get(k.substring(k.indexOf('.') + 1));
                        Tensor want = split == null ? w.state().get(k) : split.slice(w.state().get(k), t, B);
                        assertArrayEquals(bytes(want), bytes(e.getValue()), "tp " + t + " dp " + d + ": " + k);
                    }
                    // the vocabulary padding: 67 rows of 68, the last on tp rank 1, is zero (if this rank owns wte)
                    Parameter wte = named.get("transformer.wte.weight");
                    if (t == 1 && owned.containsKey("transformer.wte.weight"))
                        for (int c = 0; c < wte.size(1); c++) assertEquals(0.0, wte.get(wte.size(0) - 1, c), "padding row");
                }
            }
            // over all ranks: the tp-split tensors once per tp group, the replicated ones once per tp rank
            assertEquals(wholeBytes + replicated / B * (B - 1), sum, "each dp group of a tp rank reads its tp shard once");
        }
    }

    @Test
    void tp3PiecesLoadIntoOneProcessBitForBit() throws Exception {
        try (var scope = MemoryScope.open()) {
            Written w = write(new Rng(6));
            Gpt one = new Gpt(CFG, 99, DType.F32); // another init: every value must come from the checkpoint
            AdamW opt = new AdamW(one.namedParameters(), 0.9, 0.95, 1e-8, 0.1);
            ShardedLoad.Report r = ShardedLoad.fill(w.dir(), one, one.namedParameters().keySet(), 0, 1, opt, 3);
            assertEquals(3 * one.parameterCount() * 4, r.bytesRead());
            assertEquals(A, r.filesRead());
            for (var e : w.whole().namedParameters().entrySet())
                assertArrayEquals(bytes(e.getValue()), bytes(one.namedParameters().get(e.getKey())), e.getKey());
            for (var e : w.state().entrySet()) assertArrayEquals(bytes(e.getValue()), bytes(opt.stateDict().get(e.getKey())), e.getKey());
        }
    }

    /** A box copied between two row-major blocks of a 3-d tensor of odd sizes; no overlap gives null. */
    @Test
    void boxCopyBetweenBlocks() {
        int[] whole = {5, 7, 3};
        float[] all = new float[5 * 7 * 3];
        for (int i = 0; i < all.length; i++) all[i] = i;
        int[] so = {1, 2, 0}, ss = {4, 5, 3}, dOff = {0, 4, 1}, ds = {3, 3, 2};
        MemorySegment src = MemorySegment.ofArray(new float[4 * 5 * 3]), dst = MemorySegment.ofArray(new float[3 * 3 * 2]);
        for (int i = 0; i < 4; i++)
            for (int j = 0; j < 5; j++)
                for (int k = 0; k < 3; k++) src.setAtIndex(java.lang.foreign.ValueLayout.JAVA_FLOAT, (i * 5 + j) * 3 + k, all[((so[0] + i) * 7 + so[1] + j) * 3 + k]);
        int[][] box = BlockOverlap.intersect(so, ss, dOff, ds);
        assertArrayEquals(new int[]{1, 4, 1}, box[0]);
        assertArrayEquals(new int[]{2, 3, 2}, box[1]);
        assertEquals(2 * 3 * 2 * 4, BlockOverlap.copy(src, 0, so, ss, dst, 0, dOff, ds, box, 4));
        for (int i = 0; i < 3; i++)
            for (int j = 0; j < 3; j++)
                for (int k = 0; k < 2; k++) {
                    int gi = dOff[0] + i, gj = dOff[1] + j, gk = dOff[2] + k;
                    boolean inBox = gi >= 1 && gi < 3;
                    float want = inBox ? all[(gi * 7 + gj) * 3 + gk] : 0;
                    assertEquals(want, dst.getAtIndex(java.lang.foreign.ValueLayout.JAVA_FLOAT, (i * 3 + j) * 2 + k), Arrays.toString(new int[]{gi, gj, gk}));
                }
        assertNull(BlockOverlap.intersect(new int[]{0, 0}, new int[]{2, 3}, new int[]{2, 0}, new int[]{1, 3}), "touching boxes share nothing");
    }

    @Test
    void aMissingPieceACorruptPieceAndAMissingFileAreNamed() throws Exception {
        try (var scope = MemoryScope.open()) {
            Written w = write(new Rng(7));
            Gpt one = new Gpt(CFG, 99, DType.F32);
            Set<String> all = one.namedParameters().keySet();
            // corrupt one byte inside the data of rank 2's file (its last tensor's last byte: optimizer state, read only with the optimizer)
            Path f2 = w.dir().resolve(ShardedCheckpoint.rankFile(2, A));
            byte[] b = Files.readAllBytes(f2);
            b[b.length - 1] ^= 0x40;
            Files.write(f2, b);
            AdamW opt = new AdamW(one.namedParameters(), 0.9, 0.95, 1e-8, 0.1);
            var e = assertThrows(TrainingException.class, () -> ShardedLoad.fill(w.dir(), one, all, 0, 1, opt, 3));
            assertTrue(e.getMessage().contains(ShardedCheckpoint.rankFile(2, A)) && e.getMessage().contains("fails its checksum")
                    && !e.getMessage().contains("\n"), e.getMessage());
            ShardedLoad.fill(w.dir(), one, all, 0, 1, null, 3); // the model alone: the corrupt piece is not read, so not checked
            b[b.length - 1] ^= 0x40;
            Files.write(f2, b);
            // a missing rank file is named
            Files.move(f2, w.dir().resolve("moved"));
            e = assertThrows(TrainingException.class, () -> ShardedLoad.fill(w.dir(), one, all, 0, 1, null, 3));
            assertTrue(e.getMessage().contains(ShardedCheckpoint.rankFile(2, A) + " is missing") && !e.getMessage().contains("\n"), e.getMessage());
            Files.move(w.dir().resolve("moved"), f2);
            // a piece missing from a file (its checksums rewritten to match): the tensor and the elements are named
            Path f1 = w.dir().resolve(ShardedCheckpoint.rankFile(1, A));
            var loaded = dev.kiln.tensor.Safetensors.read(f1);
            Map<String, Tensor> less = new LinkedHashMap<>(loaded.tensors());
            var pieces = (ObjectNode) new ObjectMapper().readTree(loaded.metadata().get("pieces"));
            String dropped = less.keySet().stream().filter(k -> k.startsWith("model/transformer.h.1.mlp.c_fc.weight")).findFirst().orElseThrow();
            less.remove(dropped);
            pieces.remove(dropped);
            Map<String, String> meta = new LinkedHashMap<>(loaded.metadata());
            meta.put("pieces", pieces.toString());
            dev.kiln.tensor.Safetensors.write(f1, less, meta);
            ObjectMapper json = new ObjectMapper();
            ObjectNode manifest = (ObjectNode) json.readTree(w.dir().resolve(CheckpointStore.STATE_FILE).toFile());
            ((ObjectNode) manifest.get("checksums")).set(f1.getFileName().toString(), json.valueToTree(Checksums.of(f1)));
            json.writeValue(w.dir().resolve(CheckpointStore.STATE_FILE).toFile(), manifest);
            e = assertThrows(TrainingException.class, () -> ShardedLoad.fill(w.dir(), one, all, 0, 1, null, 3));
            assertTrue(e.getMessage().contains("model tensor transformer.h.1.mlp.c_fc.weight") && e.getMessage().contains("a piece is missing")
                    && !e.getMessage().contains("\n"), e.getMessage());
        }
    }
}
