package dev.kiln.dist;

import dev.kiln.backend.cuda.CudaRuntime;
import dev.kiln.backend.cuda.FakeGpu;
import dev.kiln.nn.models.CausalLm;
import dev.kiln.train.RunSetup;
import dev.kiln.train.SmallRuns;
import dev.kiln.train.Trainer;
import dev.kiln.train.TrainingException;
import dev.kiln.train.config.ConfigException;
import dev.kiln.train.config.ConfigLoader;
import dev.kiln.train.config.RunConfig;
import dev.kiln.train.DevicePlacement;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.api.parallel.Isolated;

import java.nio.file.Path;
import java.util.List;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * Data parallelism over NCCL for a run on a GPU, at world size 1 in one process ({@code parallel.backend: nccl}):
 * the trainer on the emulated cuda:0 ({@link FakeGpu#installEmulated}: fake driver, kernels emulated on the host, fake
 * cuBLAS) with {@link FakeNccl} as libnccl. The gradient buckets are packed on the device, all-reduced (ncclAvg) on
 * the NCCL group's stream and copied back; averaging over one rank changes nothing, so the run must equal the plain
 * device run bit for bit, and FakeNccl's call log shows one all-reduce per bucket per step.
 */
@Isolated
class NcclDataParallelEmulatedTest {
    private static final int STEPS = 4;
    private CudaRuntime rt;

    @BeforeEach
    void open(@TempDir Path cache) {
        rt = FakeGpu.installEmulated(cache);
        FakeNccl.reset();
        Nccl.useSystem(new Nccl(FakeNccl.lookup(), "fake libnccl"));
    }

    @AfterEach
    void close() {
        DataParallel.uninstall(); // closes the communicator, on the emulated device
        Nccl.useSystem(null);
        FakeGpu.uninstallEmulated();
        assertEquals(List.of(), FakeNccl.errors, "the fake library saw no misuse");
    }

    private static Trainer.Result run(Path tmp, String name, String... extra) {
        List<String> o = new java.util.ArrayList<>(List.of("train.device=cuda:0", "train.sample_tokens=0", "train.final_eval_iters=2"));
        o.addAll(List.of(extra));
        return SmallRuns.train(tmp, name, STEPS, false, o.toArray(String[]::new));
    }

    private static List<String> allReduces() {
        synchronized (FakeNccl.calls) {
            return FakeNccl.calls.stream().filter(c -> c.startsWith("ncclAllReduce(")).toList();
        }
    }

    @Test
    void worldSizeOneOverNcclEqualsThePlainDeviceRunBitForBit(@TempDir Path tmp) {
        Trainer.Result plain = run(tmp, "plain");
        assertTrue(FakeNccl.calls.isEmpty(), "a plain device run makes no NCCL call: " + FakeNccl.calls);

        // bucket_mb tiny: every parameter fills a bucket on its own, so a step makes one all-reduce per parameter
        Trainer.Result each = run(tmp, "each", "parallel.backend=nccl", "parallel.bucket_mb=1e-9");
        assertEquals(plain.losses(), each.losses(), "losses, bit for bit");
        assertEquals(plain.finalValLoss(), each.finalValLoss(), "final evaluation: the same weights");
        RunConfig cfg = SmallRuns.config(tmp, "model", STEPS, "model.vocab_size=" + vocab(tmp));
        CausalLm model = RunSetup.buildModel(cfg);
        var trainable = model.trainableParameters();
        List<String> calls = allReduces();
        assertEquals(STEPS * trainable.size(), calls.size(), "one all-reduce per bucket (here per parameter) per step: " + calls.size());
        long perStep = trainable.values().stream().mapToLong(p -> p.numel()).sum();
        long reduced = calls.stream().mapToLong(c -> Long.parseLong(c.replaceAll(".*count (\\d+),.*", "$1"))).sum();
        assertEquals(STEPS * perStep, reduced, "every gradient element reduced once per step");
        var sizes = trainable.values().stream().map(p -> p.numel()).sorted().toList();
        var firstStep = calls.subList(0, trainable.size()).stream().map(c -> Long.parseLong(c.replaceAll(".*count (\\d+),.*", "$1"))).sorted().toList();
        assertEquals(sizes, firstStep, "a bucket per parameter, of its size");
        String stream = "stream 0x" + Long.toHexString(rt.stream().address()) + ")";
        for (String c : calls) {
            assertTrue(c.contains("type 7, op 4,"), "fp32 ncclAvg: " + c);
            assertFalse(c.endsWith(stream), "on the NCCL group's stream, not the compute stream: " + c);
        }
        assertEquals(1, FakeNccl.calls.stream().filter(c -> c.startsWith("ncclCommInitRank(1, ")).count(), FakeNccl.calls.toString());

        // the default 4 MiB holds the whole tiny model: one bucket, one all-reduce of every gradient per step
        FakeNccl.calls.clear();
        Trainer.Result one = run(tmp, "one", "parallel.backend=nccl");
        assertEquals(plain.losses(), one.losses());
        assertEquals(java.util.Collections.nCopies(STEPS, "count " + perStep), allReduces().stream().map(c -> c.replaceAll(".*(count \\d+),.*", "$1")).toList());
        assertTrue(FakeNccl.calls.contains("ncclCommDestroy(rank 0)"), "the previous run's communicator was destroyed: " + FakeNccl.calls);
    }

    @Test
    void gradientAccumulationReducesOnlyTheLastMicroBatch(@TempDir Path tmp) {
        Trainer.Result plain = run(tmp, "plain", "train.grad_accum_steps=2");
        Trainer.Result nccl = run(tmp, "nccl", "train.grad_accum_steps=2", "parallel.backend=nccl");
        // the gradients are the plain run's bit for bit, so are the weights and their evaluation; the reported loss is
        // the micro-batches' mean through one more division and multiplication by k: equal to a few ulps
        assertEquals(plain.finalValLoss(), nccl.finalValLoss());
        for (int i = 0; i < STEPS; i++) assertEquals(plain.losses().get(i), nccl.losses().get(i), 1e-12 * plain.losses().get(i));
        assertEquals(STEPS, allReduces().size(), "no_sync: one bucket per step (the last micro-batch's), not one per micro-batch");
    }

    @Test
    void whatIsNotBuiltOverNcclIsRefusedInOneLine(@TempDir Path tmp) {
        for (String[] c : List.of(new String[] {"parallel.zero_stage=1", "parallel.zero_stage 1"}, new String[] {"parallel.checkpoint=sharded", "parallel.checkpoint sharded"})) {
            RunConfig cfg = SmallRuns.config(tmp, "refused", STEPS, "train.device=cuda:0", "parallel.backend=nccl", c[0]);
            TrainingException e = assertThrows(TrainingException.class, () -> DevicePlacement.of(cfg));
            assertTrue(e.getMessage().contains(c[1]) && !e.getMessage().contains("\n"), e.getMessage());
        }
        ConfigException cpu = assertThrows(ConfigException.class, () -> SmallRuns.config(tmp, "cpu", STEPS, "parallel.backend=nccl"));
        assertTrue(cpu.getMessage().contains("parallel.backend") && cpu.getMessage().contains("train.device"), cpu.getMessage());
        ConfigException bad = assertThrows(ConfigException.class, () -> SmallRuns.config(tmp, "bad", STEPS, "parallel.backend=gloo"));
        assertTrue(bad.getMessage().contains("auto, mpi or nccl"), bad.getMessage());
    }

    /**
     * mpirun -np 2, each process on its own emulated GPU (cuda:0 and cuda:1 of a 2-GPU fake driver) with FakeNccl
     * reducing over MPI ({@link NcclDistTrainMain}), against one process's plain device run on the same global batch
     * (4 rows: 2 per rank), 5 steps, buckets of 0.01 MiB (several per step). Tolerance as the CPU data-parallel tests'
     * ({@link DataParallelTest#TOLERANCE}): each rank's gradient is the mean over its 2 rows, then the two are
     * averaged, so the sums run in another order than one process's over 4 rows.
     */
    @Test
    void twoRanksUnderMpirunMatchOneProcessOnTheSameGlobalBatch(@TempDir Path tmp) throws Exception {
        MpiRun.assumeMpirun();
        String[] onDevice = {"train.device=cuda:0", "train.max_iters=5", "train.batch_size=4", "optim.lr_decay_iters=5"};
        var singleRun = new Trainer(ConfigLoader.load(null, DataParallelTest.config(tmp, "single", onDevice)), false,
                new java.io.PrintStream(java.io.OutputStream.nullOutputStream()), false).run();
        var single = singleRun.losses();
        MpiRun.Result r = MpiRun.run(2, NcclDistTrainMain.class.getName(), 900, DataParallelTest.config(tmp, "np2", onDevice).toArray(String[]::new));
        assertEquals(0, r.exitCode(), r.output());
        assertTrue(r.output().contains("kiln: data parallel over NCCL (fake libnccl over MPI), 2 rank(s)"), r.output());
        for (int rank = 0; rank < 2; rank++) {
            String line = java.nio.file.Files.readAllLines(tmp.resolve("runs/np2/result-rank" + rank + ".txt")).stream()
                    .filter(l -> l.startsWith("LOSSES ")).findFirst().orElseThrow(() -> new AssertionError(r.output()));
            List<Double> losses = java.util.Arrays.stream(line.split(" ")).skip(2).map(Double::parseDouble).toList();
            assertEquals(single.size(), losses.size(), line);
            double worst = DataParallelTest.maxRelDiff(single, losses);
            System.out.printf("DDP over (fake) NCCL, mpirun -np 2 on emulated GPUs, rank %d: max relative loss difference to one process over %d steps %.2e (%.1f s)%n",
                    rank, losses.size(), worst, r.seconds());
            assertTrue(worst <= DataParallelTest.TOLERANCE, "rank " + rank + ": " + losses + " vs " + single);
        }
        // AdamW barely sees a gradient's scale (a sum in place of the mean would train almost alike): the pre-clipping
        // norms, which do, must be the single process's too
        List<Double> norms = gradNorms(tmp.resolve("runs/np2/metrics.jsonl")), singleNorms = gradNorms(singleRun.runDir().resolve("metrics.jsonl"));
        assertEquals(single.size(), norms.size(), norms.toString());
        assertTrue(DataParallelTest.maxRelDiff(singleNorms, norms) <= DataParallelTest.TOLERANCE, norms + " vs " + singleNorms);
    }

    /** More ranks on a node than GPUs: every rank ends at once with one line, before training (no hang in a collective). */
    @Test
    void fewerGpusThanRanksOnANodeIsOneLine(@TempDir Path tmp) throws Exception {
        List<String> args = new java.util.ArrayList<>(DataParallelTest.config(tmp, "short", "train.device=cuda"));
        args.add("--gpus=1");
        MpiRun.Result r = MpiRun.run(2, NcclDistTrainMain.class.getName(), 120, args.toArray(String[]::new));
        assertTrue(r.exitCode() != 0, r.output());
        assertTrue(r.output().contains("mpirun starts 2 rank(s) on this node and each trains on its own GPU (cuda:0 … cuda:1 for train.device cuda), "
                + "but the driver sees 1 GPU(s); start at most 1 ranks per node"), r.output());
        assertTrue(r.output().contains("local rank 1: mpirun starts 2 rank(s)"), r.output());
        assertFalse(r.output().contains("TRAINING"), "no rank started training: " + r.output());
    }

    private static List<Double> gradNorms(Path metrics) throws java.io.IOException {
        var json = new com.fasterxml.jackson.databind.ObjectMapper();
        List<Double> out = new java.util.ArrayList<>();
        for (String l : java.nio.file.Files.readAllLines(metrics))
            if (!l.isBlank() && json.readTree(l).has("grad_norm")) out.add(json.readTree(l).get("grad_norm").asDouble());
        return out;
    }

    private static int vocab(Path tmp) {
        return dev.kiln.train.Workspace.prepareData(SmallRuns.config(tmp, "v", STEPS).data()).tokenizer().vocabSize();
    }
}
