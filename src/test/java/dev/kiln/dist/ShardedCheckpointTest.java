package dev.kiln.dist;

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
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * parallel.checkpoint: sharded under ZeRO-3 on 2 ranks (the test GPT of {@link DataParallelTest}): every rank writes
 * its own file of the parameters and optimizer state it owns; consolidated, the checkpoint is bit for bit the one the
 * consolidated mode writes for the same run; a single process resumes it with the losses of an uninterrupted run;
 * a truncated or missing rank file, a gap or an overlap give one-line errors, and --resume falls back past it.
 * Two mpirun jobs (sharded, consolidated), 10 steps each, checkpoints at steps 5 and 10.
 */
class ShardedCheckpointTest {
    @TempDir
    static Path tmp;
    static List<Double> single;
    static Path sharded, consolidated; // the two runs' step-000010

    static List<String> config(String name, String... extra) {
        List<String> o = new ArrayList<>(DataParallelTest.config(tmp, name, "train.checkpoint_interval=5", "train.keep_checkpoints=3"));
        o.addAll(List.of(extra));
        return o;
    }

    @BeforeAll
    static void runs() throws Exception {
        single = new Trainer(ConfigLoader.load(null, config("single")), false, new PrintStream(new ByteArrayOutputStream()), false).run().losses();
        for (String mode : new String[]{"sharded", "consolidated"}) {
            var r = MpiRun.run(2, DistTrainMain.class.getName(), 150,
                    config("zero3_" + mode, "parallel.zero_stage=3", "train.max_iters=10", "parallel.checkpoint=" + mode).toArray(String[]::new));
            assertEquals(0, r.exitCode(), r.output());
        }
        sharded = tmp.resolve("runs/zero3_sharded/checkpoints/step-000010");
        consolidated = tmp.resolve("runs/zero3_consolidated/checkpoints/step-000010");
    }

    static final String R0 = "rank-00000-of-00002.safetensors", R1 = "rank-00001-of-00002.safetensors";

    @Test
    void eachRankWritesItsShareAndConsolidationIsTheConsolidatedCheckpoint() throws Exception {
        assertFalse(Files.exists(sharded.resolve(CheckpointStore.MODEL_FILE)), "no rank writes the whole model");
        assertTrue(ShardedCheckpoint.isSharded(sharded));
        assertEquals(null, CheckpointStore.verify(sharded));
        long b0 = tensorBytes(sharded.resolve(R0)), b1 = tensorBytes(sharded.resolve(R1));
        long whole = tensorBytes(consolidated.resolve(CheckpointStore.MODEL_FILE)) + tensorBytes(consolidated.resolve(CheckpointStore.OPTIMIZER_FILE));
        System.out.printf("sharded ZeRO-3 np 2: rank files hold %d and %d tensor bytes of %d (%.3f, %.3f)%n", b0, b1, whole,
                (double) b0 / whole, (double) b1 / whole);
        assertEquals(whole, b0 + b1, "every tensor is written once");
        assertTrue(Math.abs((double) b0 / whole - 0.5) < 0.1 && Math.abs((double) b1 / whole - 0.5) < 0.1, b0 + " / " + b1 + " of " + whole);

        Path out = ShardedCheckpoint.consolidateTo(sharded, tmp.resolve("consolidated-out"));
        assertArrayEquals(Files.readAllBytes(consolidated.resolve(CheckpointStore.MODEL_FILE)), Files.readAllBytes(out.resolve(CheckpointStore.MODEL_FILE)),
                "model.safetensors is bit for bit the consolidated mode's");
        try (var s = MemoryScope.open()) {
            var want = Safetensors.read(consolidated.resolve(CheckpointStore.OPTIMIZER_FILE));
            var got = Safetensors.read(out.resolve(CheckpointStore.OPTIMIZER_FILE));
            assertEquals(want.metadata(), got.metadata());
            assertEquals(new ArrayList<>(want.tensors().keySet()), new ArrayList<>(got.tensors().keySet()), "same entries in the same order");
            for (var e : want.tensors().entrySet())
                assertArrayEquals(bytes(e.getValue()), bytes(got.tensors().get(e.getKey())), e.getKey());
        }
        assertEquals(null, CheckpointStore.verify(out), "the consolidated directory is an ordinary verified checkpoint");
    }

    /** kiln checkpoint consolidate (default --out beside the run's tokenizer) and kiln export --hf on the sharded run. */
    @Test
    void cliConsolidatesAndExportsTheShardedRun() throws Exception {
        assertEquals(0, dev.kiln.cli.Main.execute("checkpoint", "consolidate", sharded.toString()));
        Path out = tmp.resolve("runs/zero3_sharded/consolidated/step-000010");
        assertArrayEquals(Files.readAllBytes(consolidated.resolve(CheckpointStore.MODEL_FILE)), Files.readAllBytes(out.resolve(CheckpointStore.MODEL_FILE)));
        assertEquals(2, dev.kiln.cli.Main.execute("checkpoint", "consolidate", consolidated.toString()), "a consolidated checkpoint is refused");
        for (String run : new String[]{"zero3_sharded", "zero3_consolidated"})
            assertEquals(0, dev.kiln.cli.Main.execute("export", "--run", tmp.resolve("runs/" + run).toString(), "--hf", "--out", tmp.resolve("hf-" + run).toString()));
        assertArrayEquals(Files.readAllBytes(tmp.resolve("hf-zero3_consolidated/model.safetensors")), Files.readAllBytes(tmp.resolve("hf-zero3_sharded/model.safetensors")),
                "export --hf of the sharded run consolidates on the fly");
    }

    @Test
    void resumesInOneProcessWithTheUninterruptedLosses() throws Exception {
        Path copy = tmp.resolve("runs/resume_one");
        copyTree(tmp.resolve("runs/zero3_sharded"), copy);
        List<Double> rest = new Trainer(ConfigLoader.load(null, config("resume_one", "parallel.zero_stage=3")), true,
                new PrintStream(new ByteArrayOutputStream()), false).run().losses();
        double diff = DataParallelTest.maxRelDiff(rest, single.subList(10, 20));
        System.out.printf("sharded ZeRO-3 np 2 checkpoint at step 10, resumed in one process for 10 more: max relative loss difference %.3g%n", diff);
        assertTrue(diff < DataParallelTest.TOLERANCE, rest + " vs " + single.subList(10, 20));
    }

    /**
     * The ZeRO-3 checkpoint resumed under mpirun at another layout, plain DDP on 2 ranks (replicated model and optimizer),
     * still sharded: losses as uninterrupted; each replicated tensor is written once, by its owner.
     */
    @Test
    void resumesAsDdpOnTwoRanksWritingReplicatedTensorsOnce() throws Exception {
        copyTree(tmp.resolve("runs/zero3_sharded"), tmp.resolve("runs/ddp_resume"));
        List<String> args = new ArrayList<>(config("ddp_resume", "parallel.zero_stage=0", "parallel.checkpoint=sharded"));
        args.add("--resume");
        var r = MpiRun.run(2, DistTrainMain.class.getName(), 150, args.toArray(String[]::new));
        assertEquals(0, r.exitCode(), r.output());
        for (int rank = 0; rank < 2; rank++) {
            String prefix = "LOSSES " + rank + " ";
            String line = Files.readAllLines(tmp.resolve("runs/ddp_resume/result-rank" + rank + ".txt")).stream().filter(l -> l.startsWith(prefix))
                    .findFirst().orElseThrow(() -> new AssertionError(r.output()));
            List<Double> rest = java.util.Arrays.stream(line.substring(prefix.length()).trim().split(" ")).map(Double::parseDouble).toList();
            double diff = DataParallelTest.maxRelDiff(rest, single.subList(10, 20));
            System.out.printf("sharded ZeRO-3 np 2 checkpoint at step 10, resumed as DDP np 2 for 10 more (rank %d): max relative loss difference %.3g%n", rank, diff);
            assertTrue(diff < DataParallelTest.TOLERANCE, rest + " vs " + single.subList(10, 20));
        }
        Path step20 = tmp.resolve("runs/ddp_resume/checkpoints/step-000020");
        assertTrue(ShardedCheckpoint.isSharded(step20));
        long b0 = tensorBytes(step20.resolve(R0)), b1 = tensorBytes(step20.resolve(R1));
        long whole = tensorBytes(consolidated.resolve(CheckpointStore.MODEL_FILE)) + tensorBytes(consolidated.resolve(CheckpointStore.OPTIMIZER_FILE));
        System.out.printf("sharded DDP np 2: rank files hold %d and %d tensor bytes of %d%n", b0, b1, whole);
        assertEquals(whole, b0 + b1, "every replicated tensor is written once");
        assertTrue(Math.abs((double) b0 / whole - 0.5) < 0.1, b0 + " / " + b1 + " of " + whole);
        assertEquals(0, dev.kiln.cli.Main.execute("checkpoint", "consolidate", step20.toString(), "--out", tmp.resolve("ddp20").toString()));
        assertEquals(null, CheckpointStore.verify(tmp.resolve("ddp20")));
    }

    @Test
    void truncatedOrMissingRankFileIsNamedAndResumeFallsBack() throws Exception {
        Path run = tmp.resolve("runs/broken");
        copyTree(tmp.resolve("runs/zero3_sharded"), run);
        Path step10 = run.resolve("checkpoints/step-000010");
        byte[] b = Files.readAllBytes(step10.resolve(R1));
        Files.write(step10.resolve(R1), java.util.Arrays.copyOf(b, b.length / 2));
        var e = assertThrows(TrainingException.class, () -> ShardedCheckpoint.consolidate(step10));
        assertTrue(e.getMessage().contains(R1) && !e.getMessage().contains("\n"), e.getMessage());
        var warn = new ByteArrayOutputStream();
        var store = new CheckpointStore(run);
        assertEquals(run.resolve("checkpoints/step-000005"), store.latestVerified(new PrintStream(warn)).orElseThrow());
        assertTrue(warn.toString().contains(R1), warn.toString());
        Files.delete(step10.resolve(R1));
        e = assertThrows(TrainingException.class, () -> ShardedCheckpoint.consolidate(step10));
        assertTrue(e.getMessage().contains(R1 + " is missing"), e.getMessage());
        // --resume takes step 5 and continues: its steps 6..10 are the uninterrupted run's
        List<Double> rest = new Trainer(ConfigLoader.load(null, config("broken", "parallel.zero_stage=3", "train.max_iters=10")), true,
                new PrintStream(new ByteArrayOutputStream()), false).run().losses();
        assertTrue(DataParallelTest.maxRelDiff(rest, single.subList(5, 10)) < DataParallelTest.TOLERANCE, rest + " vs " + single.subList(5, 10));
    }

    @Test
    void gapsAndOverlapsAreNamed() throws Exception {
        Path dir = tmp.resolve("pieces");
        Files.createDirectories(dir);
        try (var s = MemoryScope.open()) {
            var r1 = Safetensors.read(sharded.resolve(R1));
            var modelNames = r1.tensors().keySet().stream().filter(k -> k.startsWith("model/")).map(k -> k.substring(6)).toList();
            // a whole tensor in no file
            String dropped = "model/" + modelNames.getFirst();
            Map<String, Tensor> less = new LinkedHashMap<>(r1.tensors());
            less.remove(dropped);
            Safetensors.write(dir.resolve(R1), less, r1.metadata());
            var e0 = assertThrows(TrainingException.class, () -> ShardedCheckpoint.assemble(List.of(sharded.resolve(R0), dir.resolve(R1)), modelNames, List.of()));
            assertTrue(e0.getMessage().contains(modelNames.getFirst() + " is in none of the rank files"), e0.getMessage());
            // a gap: the first half of a 2-d tensor's rows only
            String split = r1.tensors().entrySet().stream().filter(x -> x.getKey().startsWith("model/") && x.getValue().shape().length == 2
                    && x.getValue().shape()[0] % 2 == 0).findFirst().orElseThrow().getKey();
            Tensor t = r1.tensors().get(split);
            int rows = t.shape()[0] / 2, cols = t.shape()[1];
            float[] all = t.contiguous().segment().toArray(java.lang.foreign.ValueLayout.JAVA_FLOAT);
            Map<String, Tensor> half = new LinkedHashMap<>(r1.tensors());
            half.put(split, Tensor.of(java.util.Arrays.copyOf(all, rows * cols), rows, cols));
            Safetensors.write(dir.resolve(R1), half, r1.metadata()); // its piece still says the full shape at offset 0
            var e1 = assertThrows(TrainingException.class, () -> ShardedCheckpoint.assemble(List.of(sharded.resolve(R0), dir.resolve(R1)), List.of(), List.of()));
            assertTrue(e1.getMessage().contains(split.substring(6)) && e1.getMessage().contains("cover " + rows * cols + " of its " + 2 * rows * cols),
                    e1.getMessage());
            // an overlap: rank 1's file given twice
            var e = assertThrows(TrainingException.class, () -> ShardedCheckpoint.assemble(
                    List.of(sharded.resolve(R0), sharded.resolve(R1), sharded.resolve(R1)), List.of(), List.of()));
            assertTrue(e.getMessage().contains("overlap") && e.getMessage().contains(R1) && !e.getMessage().contains("\n"), e.getMessage());
        }
    }

    static long tensorBytes(Path file) {
        return Safetensors.readHeader(file).values().stream().mapToLong(h -> h.numel() * h.dtype().byteSize()).sum();
    }

    static byte[] bytes(Tensor t) {
        return t.contiguous().segment().asSlice(0, t.numel() * t.dtype().byteSize()).toArray(java.lang.foreign.ValueLayout.JAVA_BYTE);
    }

    static void copyTree(Path from, Path to) throws java.io.IOException {
        try (var s = Files.walk(from)) {
            for (Path p : s.toList()) {
                Path q = to.resolve(from.relativize(p).toString());
                if (Files.isDirectory(p)) Files.createDirectories(q);
                else Files.copy(p, q);
            }
        }
    }
}
