package dev.kiln.dist;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import dev.kiln.tensor.MemoryScope;
import dev.kiln.tensor.Safetensors;
import dev.kiln.tensor.Tensor;
import dev.kiln.train.CheckpointStore;
import dev.kiln.train.ShardedCheckpoint;
import dev.kiln.train.Trainer;
import dev.kiln.train.TrainingException;
import dev.kiln.train.config.ConfigLoader;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * parallel.checkpoint: sharded under tensor and pipeline parallelism (the test GPT of {@link DataParallelTest}: 2
 * blocks, 2 heads, C 32): tp 2 (np 2), tp 2 × pp 2 (np 4), dp 2 × tp 2 with ZeRO-3 (np 4: each dp rank holds only
 * the tp-shard parameters it owns, and writes those, ungathered), dp 2 × pp 2 with ZeRO-2 (np 4, 3 blocks, so that
 * wte has different dp owners at the two ends of the pipeline) and dp 2 × tp 2 × pp 2 with ZeRO-2 (np 8), each run
 * twice for 10 steps, sharded and consolidated, checkpoint at step 10. (ZeRO-1 writes the same pieces as ZeRO-2:
 * parameters whole on every dp rank, each written by its owner, which alone holds its optimizer state.) Every rank
 * writes its own blocks, each element once; the sharded checkpoint consolidated is byte for byte the consolidated
 * mode's (model and optimizer, per tensor); it resumes at another layout (every layout → one process,
 * identical to resuming the consolidated one; tp 2 → pp 2 under mpirun) with the uninterrupted losses; a truncated
 * or missing rank file and a missing block are one-line errors. Resuming reshards on load ({@link dev.kiln.train.ShardedLoad}):
 * tp 2 × pp 2 → dp 2 ZeRO-3 and dp 2 × tp 2 ZeRO-3 → tp 2 under mpirun, each rank reading exactly its share.
 */
class ParallelShardedCheckpointTest {
    static final double TOLERANCE = 1e-4; // as TensorPipelineParallelTest: other summation orders over 10 AdamW steps
    static final ObjectMapper JSON = new ObjectMapper();

    @TempDir
    static Path tmp;
    static List<Double> single, single3; // the uninterrupted losses of the 2-block and of the 3-block model

    /** name → its world size, ZeRO stage and the extra settings of the layout (model.* ones are the model's) */
    record Layout(String name, int np, int zero, String... settings) {
        List<String> modelSettings() {
            return Arrays.stream(settings).filter(x -> x.startsWith("model.")).toList();
        }
    }

    static final List<Layout> LAYOUTS = List.of(
            new Layout("tp2", 2, 0, "parallel.tp=2"),
            new Layout("tp2pp2", 4, 0, "parallel.tp=2", "parallel.pp=2"),
            new Layout("dp2tp2z3", 4, 3, "parallel.tp=2", "parallel.zero_stage=3"),
            new Layout("dp2pp2z2", 4, 2, "model.n_layer=3", "parallel.pp=2", "parallel.zero_stage=2"),
            new Layout("dp2tp2pp2z2", 8, 2, "parallel.tp=2", "parallel.pp=2", "parallel.zero_stage=2"));

    static List<String> config(String name, String... extra) {
        return DataParallelTest.config(tmp, name, extra);
    }

    static String[] args(String name, List<String> extra) {
        return config(name, extra.toArray(String[]::new)).toArray(String[]::new);
    }

    static Path step10(String run) {
        return tmp.resolve("runs").resolve(run).resolve("checkpoints/step-000010");
    }

    @BeforeAll
    static void runs() throws Exception {
        single = new Trainer(ConfigLoader.load(null, config("single")), false, new PrintStream(new ByteArrayOutputStream()), false).run().losses();
        single3 = new Trainer(ConfigLoader.load(null, config("single3", "model.n_layer=3")), false, new PrintStream(new ByteArrayOutputStream()), false).run().losses();
        for (Layout l : LAYOUTS)
            for (String mode : new String[]{"sharded", "consolidated"}) {
                List<String> extra = new ArrayList<>(List.of(l.settings()));
                extra.addAll(List.of("train.max_iters=10", "train.checkpoint_interval=10", "parallel.checkpoint=" + mode));
                var r = MpiRun.run(l.np(), DistTrainMain.class.getName(), 400, args(l.name() + "_" + mode, extra));
                assertEquals(0, r.exitCode(), r.output());
                System.out.printf("%s %s np %d: %.1f s%n", l.name(), mode, l.np(), r.seconds());
            }
    }

    static long tensorBytes(Path file) {
        return ShardedCheckpointTest.tensorBytes(file);
    }

    @Test
    void eachRankWritesItsBlocksAndConsolidationIsTheConsolidatedCheckpoint() throws Exception {
        for (Layout l : LAYOUTS) {
            Path sharded = step10(l.name() + "_sharded"), consolidated = step10(l.name() + "_consolidated");
            assertFalse(Files.exists(sharded.resolve(CheckpointStore.MODEL_FILE)), "no rank writes the whole model");
            assertEquals(null, CheckpointStore.verify(sharded));
            JsonNode index = JSON.readTree(sharded.resolve(CheckpointStore.STATE_FILE).toFile()).path("shards");
            int tp = l.name().contains("tp2") ? 2 : 1, pp = l.name().contains("pp2") ? 2 : 1;
            assertEquals(List.of(l.np(), l.np() / tp / pp, tp, pp, l.zero()),
                    List.of(index.path("world_size").asInt(), index.path("dp").asInt(), index.path("tp").asInt(), index.path("pp").asInt(),
                            index.path("zero_stage").asInt()), l.name() + ": the index records the layout");

            long whole = tensorBytes(consolidated.resolve(CheckpointStore.MODEL_FILE)) + tensorBytes(consolidated.resolve(CheckpointStore.OPTIMIZER_FILE));
            long[] bytes = new long[l.np()];
            StringBuilder shares = new StringBuilder();
            for (int r = 0; r < l.np(); r++) {
                bytes[r] = tensorBytes(sharded.resolve(String.format("rank-%05d-of-%05d.safetensors", r, l.np())));
                shares.append(String.format(" %,d (%.3f)", bytes[r], (double) bytes[r] / whole));
            }
            System.out.printf("sharded %s np %d: rank files hold%s of %,d tensor bytes%n", l.name(), l.np(), shares, whole);
            assertEquals(whole, Arrays.stream(bytes).sum(), l.name() + ": every element is written once (no vocabulary padding, replicas once)");
            for (long b : bytes) // pipeline stages are not equal (stage 0 holds wte and wpe): within half of 1/N either way
                assertTrue(b > 0.5 * whole / l.np() && b < 1.5 * whole / l.np(), l.name() + ": " + Arrays.toString(bytes) + " of " + whole);

            Path out = ShardedCheckpoint.consolidateTo(sharded, tmp.resolve("consolidated-" + l.name()));
            assertArrayEquals(Files.readAllBytes(consolidated.resolve(CheckpointStore.MODEL_FILE)), Files.readAllBytes(out.resolve(CheckpointStore.MODEL_FILE)),
                    l.name() + ": model.safetensors is byte for byte the consolidated mode's");
            try (var s = MemoryScope.open()) {
                var want = Safetensors.read(consolidated.resolve(CheckpointStore.OPTIMIZER_FILE));
                var got = Safetensors.read(out.resolve(CheckpointStore.OPTIMIZER_FILE));
                assertEquals(want.metadata(), got.metadata());
                assertEquals(new ArrayList<>(want.tensors().keySet()), new ArrayList<>(got.tensors().keySet()), l.name() + ": same entries in the same order");
                for (var e : want.tensors().entrySet())
                    assertArrayEquals(ShardedCheckpointTest.bytes(e.getValue()), ShardedCheckpointTest.bytes(got.tensors().get(e.getKey())), l.name() + " " + e.getKey());
            }
            assertEquals(null, CheckpointStore.verify(out));
        }
        // kiln export --hf reads the sharded tp × pp run by consolidating in memory
        for (String run : new String[]{"tp2pp2_sharded", "tp2pp2_consolidated"})
            assertEquals(0, dev.kiln.cli.Main.execute("export", "--run", tmp.resolve("runs/" + run).toString(), "--hf", "--out", tmp.resolve("hf-" + run).toString()));
        assertArrayEquals(Files.readAllBytes(tmp.resolve("hf-tp2pp2_consolidated/model.safetensors")), Files.readAllBytes(tmp.resolve("hf-tp2pp2_sharded/model.safetensors")));
    }

    /**
     * Every layout (tp 2, tp 2 × pp 2, dp 2 × tp 2 ZeRO-3, dp 2 × pp 2 ZeRO-2, dp 2 × tp 2 × pp 2 ZeRO-2) sharded →
     * one process (the resharding load: the one rank holds everything): the losses of resuming the consolidated
     * checkpoint, bit for bit, and the uninterrupted run's.
     */
    @Test
    void shardedResumesInOneProcess() throws Exception {
        for (Layout l : LAYOUTS) {
            List<List<Double>> rests = new ArrayList<>();
            for (String mode : new String[]{"sharded", "consolidated"}) {
                String copy = "one_from_" + l.name() + "_" + mode;
                PipelineParallelTest.copyTree(tmp.resolve("runs").resolve(l.name() + "_" + mode), tmp.resolve("runs").resolve(copy));
                rests.add(new Trainer(ConfigLoader.load(null, config(copy, l.modelSettings().toArray(String[]::new))), true,
                        new PrintStream(new ByteArrayOutputStream()), false).run().losses());
            }
            assertEquals(rests.get(1), rests.get(0), l.name() + ": resumed from the sharded and from the consolidated checkpoint");
            List<Double> uninterrupted = (l.modelSettings().isEmpty() ? single : single3).subList(10, 20);
            double diff = DataParallelTest.maxRelDiff(rests.get(0), uninterrupted);
            System.out.printf("sharded %s checkpoint at step 10, resumed in one process: max relative loss difference to uninterrupted %.3g%n", l.name(), diff);
            assertTrue(diff < TOLERANCE, l.name() + ": " + rests.get(0) + " vs " + uninterrupted);
        }
    }

    /** tp 2 sharded → pp 2 on 2 ranks (sharded again): the uninterrupted losses; its step-20 pieces consolidate and verify. */
    @Test
    void tp2ShardedResumesAtPp2() throws Exception {
        PipelineParallelTest.copyTree(tmp.resolve("runs/tp2_sharded"), tmp.resolve("runs/pp2_from_tp2"));
        var r = MpiRun.run(2, DistTrainMain.class.getName(), 400,
                PipelineParallelTest.withResume(config("pp2_from_tp2", "parallel.pp=2", "parallel.checkpoint=sharded", "train.checkpoint_interval=10")));
        assertEquals(0, r.exitCode(), r.output());
        assertTrue(r.output().contains("resumed from") && r.output().contains("kiln: pipeline parallel over"), r.output());
        for (int rank = 0; rank < 2; rank++) {
            String prefix = "LOSSES " + rank + " ";
            String line = Files.readAllLines(tmp.resolve("runs/pp2_from_tp2/result-rank" + rank + ".txt")).stream().filter(x -> x.startsWith(prefix))
                    .findFirst().orElseThrow(() -> new AssertionError(r.output()));
            List<Double> rest = Arrays.stream(line.substring(prefix.length()).trim().split(" ")).map(Double::parseDouble).toList();
            double diff = DataParallelTest.maxRelDiff(rest, single.subList(10, 20));
            System.out.printf("sharded tp 2 checkpoint at step 10, resumed at pp 2 (rank %d): max relative loss difference %.3g%n", rank, diff);
            assertTrue(diff < TOLERANCE, rest + " vs " + single.subList(10, 20));
        }
        Path step20 = tmp.resolve("runs/pp2_from_tp2/checkpoints/step-000020");
        assertTrue(ShardedCheckpoint.isSharded(step20));
        long b0 = tensorBytes(step20.resolve("rank-00000-of-00002.safetensors")), b1 = tensorBytes(step20.resolve("rank-00001-of-00002.safetensors"));
        System.out.printf("sharded pp 2 np 2: stage files hold %,d and %,d tensor bytes%n", b0, b1);
        assertEquals(0, dev.kiln.cli.Main.execute("checkpoint", "consolidate", step20.toString(), "--out", tmp.resolve("pp2c/checkpoints/step-000020").toString()));
        assertEquals(null, CheckpointStore.verify(tmp.resolve("pp2c/checkpoints/step-000020")));
    }

    /**
     * Resharding on resume under mpirun, 2 ranks: tp 2 × pp 2 (np 4) → dp 2 ZeRO-3, and dp 2 × tp 2 ZeRO-3 (np 4) → tp 2.
     * Resuming the sharded checkpoint gives the losses of resuming the consolidated one at the same layout bit for bit
     * (the same values are loaded and the run is the same) and the uninterrupted losses within TOLERANCE; each rank
     * copies out of the rank files exactly the bytes it holds (its share), nothing more: under ZeRO-3 the two shares
     * add up to the checkpoint once, under tp 2 to the tp-split tensors once and the replicated ones (layer norms, wpe,
     * c_proj biases and their optimizer state) on both ranks.
     */
    @Test
    void shardedResumesAtAnotherLayoutReadingOnlyEachRanksShare() throws Exception {
        record Case(String from, String to, String setting) {}
        for (Case c : List.of(new Case("tp2pp2", "dp2z3", "parallel.zero_stage=3"), new Case("dp2tp2z3", "tp2", "parallel.tp=2"))) {
            Path consolidated = step10(c.from() + "_consolidated");
            long whole = tensorBytes(consolidated.resolve(CheckpointStore.MODEL_FILE)) + tensorBytes(consolidated.resolve(CheckpointStore.OPTIMIZER_FILE));
            long replicated = 0; // of the whole checkpoint: tensors every tp rank holds whole
            for (String f : new String[]{CheckpointStore.MODEL_FILE, CheckpointStore.OPTIMIZER_FILE})
                for (var e : Safetensors.readHeader(consolidated.resolve(f)).entrySet())
                    if (e.getKey().contains("ln_") || e.getKey().contains("wpe") || e.getKey().endsWith("c_proj.bias")) replicated += e.getValue().numel() * 4;
            Map<String, List<List<Double>>> losses = new LinkedHashMap<>();
            long[] shares = new long[2];
            for (String mode : new String[]{"sharded", "consolidated"}) {
                String run = c.to() + "_from_" + c.from() + "_" + mode;
                PipelineParallelTest.copyTree(tmp.resolve("runs").resolve(c.from() + "_" + mode), tmp.resolve("runs").resolve(run));
                var r = MpiRun.run(2, DistTrainMain.class.getName(), 400, PipelineParallelTest.withResume(config(run, c.setting())));
                assertEquals(0, r.exitCode(), r.output());
                assertTrue(r.output().contains("resumed from"), r.output());
                for (int rank = 0; rank < 2; rank++) {
                    List<String> lines = Files.readAllLines(tmp.resolve("runs").resolve(run).resolve("result-rank" + rank + ".txt"));
                    String prefix = "LOSSES " + rank + " ";
                    String line = lines.stream().filter(x -> x.startsWith(prefix)).findFirst().orElseThrow(() -> new AssertionError(r.output()));
                    losses.computeIfAbsent(mode, m -> new ArrayList<>()).add(Arrays.stream(line.substring(prefix.length()).trim().split(" ")).map(Double::parseDouble).toList());
                    String loadedPrefix = "LOADED " + rank + " ";
                    var loaded = lines.stream().filter(x -> x.startsWith(loadedPrefix)).findFirst();
                    if (mode.equals("consolidated")) {
                        assertTrue(loaded.isEmpty(), "a consolidated checkpoint loads as before");
                        continue;
                    }
                    long[] v = Arrays.stream(loaded.orElseThrow(() -> new AssertionError(String.join("\n", lines))).split(" ")).skip(2).mapToLong(Long::parseLong).toArray();
                    long read = v[0], checked = v[1], share = v[2];
                    System.out.printf("sharded %s np 4 → %s np 2, rank %d: copied %,d bytes = its share (%.3f of the %,d checkpoint bytes); checksummed %,d bytes of pieces in %d of 4 rank files%n",
                            c.from(), c.to(), rank, read, (double) read / whole, whole, checked, v[3]);
                    assertEquals(share, read, c + " rank " + rank + ": every byte it holds is read once, nothing else");
                    assertTrue(read < 0.6 * whole + replicated, c + " rank " + rank + ": " + read + " of " + whole);
                    shares[rank] = share;
                }
            }
            long expected = c.to().equals("tp2") ? whole + replicated : whole;
            assertEquals(expected, shares[0] + shares[1], c + ": the ranks' shares add up to the checkpoint (the replicated tensors on each tp rank)");
            assertEquals(losses.get("consolidated"), losses.get("sharded"), c + ": resumed from the sharded and from the consolidated checkpoint");
            double diff = DataParallelTest.maxRelDiff(losses.get("sharded").get(0), single.subList(10, 20));
            System.out.printf("sharded %s → %s: max relative loss difference to uninterrupted %.3g%n", c.from(), c.to(), diff);
            assertTrue(diff < TOLERANCE, c + ": " + losses.get("sharded") + " vs " + single.subList(10, 20));
        }
    }

    @Test
    void truncatedMissingOrIncompleteRankFilesAreNamed() throws Exception {
        Path copy = tmp.resolve("broken/checkpoints/step-000010");
        PipelineParallelTest.copyTree(step10("tp2pp2_sharded"), copy);
        String r1 = "rank-00001-of-00004.safetensors";
        // a rank file without one of its blocks (rank 1 is tp rank 1 of stage 0: block 0's c_attn has its q, k, v columns)
        try (var s = MemoryScope.open()) {
            var loaded = Safetensors.read(copy.resolve(r1));
            JsonNode pieces = JSON.readTree(loaded.metadata().get("pieces"));
            String dropped = null;
            for (String k : loaded.tensors().keySet())
                if (pieces.path(k).path("name").asText().equals("transformer.h.0.attn.c_attn.weight") && k.startsWith("model/")) dropped = k;
            assertTrue(dropped != null && dropped.contains("#"), "c_attn is written as several blocks: " + loaded.tensors().keySet());
            Map<String, Tensor> less = new LinkedHashMap<>(loaded.tensors());
            less.remove(dropped);
            Path dir = tmp.resolve("less");
            Files.createDirectories(dir);
            Safetensors.write(dir.resolve(r1), less, loaded.metadata());
            List<Path> files = new ArrayList<>();
            for (int r = 0; r < 4; r++) files.add(r == 1 ? dir.resolve(r1) : copy.resolve(String.format("rank-%05d-of-00004.safetensors", r)));
            var e = assertThrows(TrainingException.class, () -> ShardedCheckpoint.assemble(files, List.of(), List.of()));
            assertTrue(e.getMessage().contains("transformer.h.0.attn.c_attn.weight") && e.getMessage().contains("is in none")
                    && !e.getMessage().contains("\n"), e.getMessage());
        }
        byte[] b = Files.readAllBytes(copy.resolve(r1));
        Files.write(copy.resolve(r1), Arrays.copyOf(b, b.length / 2));
        var e = assertThrows(TrainingException.class, () -> ShardedCheckpoint.consolidate(copy));
        assertTrue(e.getMessage().contains(r1) && !e.getMessage().contains("\n"), e.getMessage());
        Files.delete(copy.resolve(r1));
        e = assertThrows(TrainingException.class, () -> ShardedCheckpoint.consolidate(copy));
        assertTrue(e.getMessage().contains(r1 + " is missing") && !e.getMessage().contains("\n"), e.getMessage());
    }
}
