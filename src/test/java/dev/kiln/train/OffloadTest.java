package dev.kiln.train;

import com.fasterxml.jackson.databind.JsonNode;
import dev.kiln.data.BatchSampler;
import dev.kiln.data.PreparedData;
import dev.kiln.data.TokenShard;
import dev.kiln.memory.DiskTier;
import dev.kiln.nn.models.Gpt;
import dev.kiln.optim.Optimizer;
import dev.kiln.tensor.HostAllocator;
import dev.kiln.train.config.ConfigException;
import dev.kiln.train.config.RunConfig;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * Parameter and optimizer-state offload to disk: training with blocks' parameters and optimizer state in
 * memory-mapped files gives bit for bit the run without offload (losses, final weights, optimizer state, also after a
 * resume), and between steps exactly the offloaded bytes are not resident; during a step only the blocks in use and
 * those prefetched are.
 */
class OffloadTest {
    @TempDir
    static Path tmp;

    private static final String[] BASE = {"model.n_layer=4", "train.checkpoint_interval=15", "train.sample_tokens=0"};

    private static String[] with(String... extra) {
        String[] out = new String[BASE.length + extra.length];
        System.arraycopy(BASE, 0, out, 0, BASE.length);
        System.arraycopy(extra, 0, out, BASE.length, extra.length);
        return out;
    }

    private static void assertSameRun(Trainer.Result ref, Trainer.Result got, int step) {
        List<JsonNode> a = SmallRuns.steps(ref), b = SmallRuns.steps(got);
        assertEquals(a.size(), b.size());
        for (int i = 0; i < a.size(); i++)
            assertEquals(a.get(i).get("loss").asDouble(), b.get(i).get("loss").asDouble(), "loss at step " + (i + 1));
        assertEquals(ref.finalValLoss(), got.finalValLoss());
        SmallRuns.assertSameCheckpoint(ref, got, step);
    }

    @Test
    void offloadedTrainingEqualsResidentTrainingBitwise() {
        Trainer.Result ref = SmallRuns.train(tmp, "resident", 30, false, BASE);
        Trainer.Result off = SmallRuns.train(tmp, "offloaded", 30, false,
                with("train.offload_params=disk", "train.offload_optimizer=disk", "train.prefetch_depth=1"));
        assertSameRun(ref, off, 30);
        assertFalse(Files.exists(off.runDir().resolve("offload/params-000.bin")), "offload files are scratch, removed at the end");
        assertFalse(Files.exists(off.runDir().resolve("offload")), "and the directory the tier made");
    }

    @Test
    void eightBitStateAndDepthZeroAlsoMatch() {
        Trainer.Result ref = SmallRuns.train(tmp, "resident8", 20, false, with("optim.optimizer=adamw8bit", "model.n_embd=64"));
        Trainer.Result off = SmallRuns.train(tmp, "offloaded8", 20, false,
                with("optim.optimizer=adamw8bit", "model.n_embd=64", "train.offload_optimizer=disk", "train.offload_params=disk", "train.prefetch_depth=0"));
        assertSameRun(ref, off, 20);
    }

    @Test
    void resumedOffloadedRunEqualsUninterruptedOne() {
        String[] o = with("train.offload_params=disk", "train.offload_optimizer=disk", "train.prefetch_depth=2");
        Trainer.Result whole = SmallRuns.train(tmp, "off-whole", 30, false, o);
        SmallRuns.train(tmp, "off-split", 15, false, o);
        Trainer.Result resumed = SmallRuns.train(tmp, "off-split", 30, true, o);
        List<JsonNode> a = SmallRuns.steps(whole), b = SmallRuns.steps(resumed);
        for (int i = 15; i < 30; i++) assertEquals(a.get(i).get("loss").asDouble(), b.get(i).get("loss").asDouble(), "loss at step " + (i + 1));
        assertEquals(whole.finalValLoss(), resumed.finalValLoss());
    }

    /**
     * Resident tensor memory (the host allocator's bytes in use), measured between steps, with and without offload of a
     * 4-block model: lower by exactly the offloaded parameter and state bytes. Within a step, with prefetch depth 1, at most
     * two of the four blocks are resident (the one in use and the one being prefetched).
     */
    @Test
    void residentMemoryIsLowerByTheOffloadedBytes() {
        RunConfig cfg = SmallRuns.config(tmp, "mem", 10, "model.n_layer=4", "model.n_embd=64");
        PreparedData data = Workspace.prepareData(cfg.data());
        RunConfig resolved = cfg.withModel(cfg.model().withVocabSize(data.tokenizer().vocabSize()));
        fiveSteps(resolved, data, (Gpt) RunSetup.buildModel(resolved), null); // warm-up: lazily created kernels' buffers and caches
        long b0 = HostAllocator.bytesInUse();
        Gpt plainModel = (Gpt) RunSetup.buildModel(resolved);
        fiveSteps(resolved, data, plainModel, RunSetup.optimizer(resolved.optim(), plainModel));
        long plain = HostAllocator.bytesInUse() - b0;
        long b1 = HostAllocator.bytesInUse();
        Gpt model = (Gpt) RunSetup.buildModel(resolved);
        try (Offload off = Offload.of(new DiskTier(tmp.resolve("memtier")), model, true, true, 1)) {
            fiveSteps(resolved, data, model, off.optimizer(resolved.optim(), model));
            long offloaded = HostAllocator.bytesInUse() - b1;
            long params = off.offloadedParameterBytes(), state = off.offloadedOptimizerBytes();
            System.out.printf("resident between steps: %,d bytes without offload, %,d with (parameters %,d and optimizer state %,d offloaded); "
                            + "peak resident within a step: parameters %,d, optimizer state %,d%n",
                    plain, offloaded, params, state, off.peakResidentParameterBytes(), off.peakResidentOptimizerBytes());
            assertTrue(params > 0 && state == 2 * params, "AdamW state is two moments per parameter");
            assertEquals(plain - params - state, offloaded);
            long block = params / 4;
            assertTrue(off.peakResidentParameterBytes() <= 2 * block, "peak parameter residency " + off.peakResidentParameterBytes());
            assertTrue(off.peakResidentOptimizerBytes() <= 2 * 2 * block, "peak state residency " + off.peakResidentOptimizerBytes());
            for (int i = 0; i < 4; i++) {
                assertEquals(0, off.parameterOffloader().residentStorages(i), "block " + i + " parameters paged out between steps");
                assertEquals(0, off.optimizerOffloader().residentStorages(i), "block " + i + " state paged out between steps");
            }
        }
    }

    private static void fiveSteps(RunConfig cfg, PreparedData data, Gpt model, Optimizer opt) {
        if (opt == null) opt = RunSetup.optimizer(cfg.optim(), model);
        try (TokenShard shard = data.openTrain()) {
            BatchSampler sampler = new BatchSampler(shard, 4, cfg.model().block_size(), 1);
            model.train(true);
            for (int i = 0; i < 5; i++) TrainStep.step(model, opt, sampler, 1e-3, 1.0);
        }
    }

    @Test
    void badOffloadSettingsAreNamed() {
        var e = assertThrows(ConfigException.class, () -> SmallRuns.config(tmp, "x", 5, "train.offload_params=ssd"));
        assertTrue(e.getMessage().contains("train.offload_params"), e.getMessage());
        e = assertThrows(ConfigException.class, () -> SmallRuns.config(tmp, "x", 5, "train.prefetch_depth=-1"));
        assertTrue(e.getMessage().contains("train.prefetch_depth"), e.getMessage());
    }
}
