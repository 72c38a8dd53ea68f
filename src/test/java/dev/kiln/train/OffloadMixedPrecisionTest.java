package dev.kiln.train;

import com.fasterxml.jackson.databind.JsonNode;
import dev.kiln.data.BatchSampler;
import dev.kiln.data.PreparedData;
import dev.kiln.data.TokenShard;
import dev.kiln.memory.DiskTier;
import dev.kiln.nn.models.Gpt;
import dev.kiln.optim.Optimizer;
import dev.kiln.tensor.MemoryCategory;
import dev.kiln.train.config.RunConfig;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * Parameter offload under mixed precision (ZeRO-Infinity style): the offloaded blocks' fp32 master weights live in the
 * tier and each block's half-precision working copy is made as it is paged in. Training equals resident mixed-precision
 * training bit for bit (losses, loss scales and skipped steps, final weights and optimizer state) for fp16 with injected
 * overflows and for bf16, a resume is exact, and the memory account no longer holds the blocks' parameters and masters.
 */
class OffloadMixedPrecisionTest {
    @TempDir
    static Path tmp;

    private static final String[] FP16 = {"model.n_layer=4", "train.checkpoint_interval=15", "train.sample_tokens=0", "train.precision=fp16",
            "train.loss_scale_window=5", "faults.overflow_steps=8,9,10"};
    private static final String[] BF16 = {"model.n_layer=4", "train.checkpoint_interval=15", "train.sample_tokens=0", "train.precision=bf16"};

    private static String[] with(String[] base, String... extra) {
        List<String> o = new ArrayList<>(List.of(base));
        o.addAll(List.of(extra));
        return o.toArray(String[]::new);
    }

    /** Losses, loss scales and overflow flags of every step, the final val loss, and the step's checkpoint tensors, bitwise. */
    private static void assertSameRun(Trainer.Result ref, Trainer.Result got, int step) {
        assertSameLosses(ref, got);
        SmallRuns.assertSameCheckpoint(ref, got, step);
    }

    private static void assertSameLosses(Trainer.Result ref, Trainer.Result got) {
        List<JsonNode> a = SmallRuns.steps(ref), b = SmallRuns.steps(got);
        assertEquals(a.size(), b.size());
        for (int i = 0; i < a.size(); i++) {
            assertEquals(a.get(i).get("loss").asDouble(), b.get(i).get("loss").asDouble(), "loss at step " + (i + 1));
            assertEquals(a.get(i).path("loss_scale").asDouble(-1), b.get(i).path("loss_scale").asDouble(-1), "loss scale at step " + (i + 1));
            assertEquals(a.get(i).path("overflow").asBoolean(false), b.get(i).path("overflow").asBoolean(false), "overflow at step " + (i + 1));
        }
        assertEquals(ref.finalValLoss(), got.finalValLoss());
    }

    @Test
    void fp16WithInjectedOverflowsEqualsResidentBitwise() {
        Trainer.Result ref = SmallRuns.train(tmp, "fp16-resident", 30, false, FP16);
        long overflows = SmallRuns.steps(ref).stream().filter(s -> s.path("overflow").asBoolean(false)).count();
        assertEquals(3, overflows, "the injected overflows are skipped");
        Trainer.Result off = SmallRuns.train(tmp, "fp16-offloaded", 30, false,
                with(FP16, "train.offload_params=disk", "train.offload_optimizer=disk", "train.prefetch_depth=1"));
        assertSameRun(ref, off, 30);
        Trainer.Result paramsOnly = SmallRuns.train(tmp, "fp16-params", 30, false, with(FP16, "train.offload_params=disk", "train.prefetch_depth=0"));
        assertSameRun(ref, paramsOnly, 30);
    }

    @Test
    void bf16EqualsResidentBitwiseAlsoWithRecomputeAndAccumulation() {
        Trainer.Result ref = SmallRuns.train(tmp, "bf16-resident", 30, false, BF16);
        Trainer.Result off = SmallRuns.train(tmp, "bf16-offloaded", 30, false,
                with(BF16, "train.offload_params=disk", "train.offload_optimizer=disk", "train.prefetch_depth=2"));
        assertSameRun(ref, off, 30);
        String[] more = {"train.recompute=full", "train.batch_size=2", "train.grad_accum_steps=2"};
        Trainer.Result ref2 = SmallRuns.train(tmp, "bf16-resident-acc", 15, false, with(BF16, more));
        Trainer.Result off2 = SmallRuns.train(tmp, "bf16-offloaded-acc", 15, false,
                with(with(BF16, more), "train.offload_params=disk", "train.prefetch_depth=1"));
        assertSameRun(ref2, off2, 15);
    }

    /** LoRA: only the adapters are trainable and rounded; the frozen base weights stay fp32, resident or paged in. */
    @Test
    void loraUnderBf16EqualsResidentBitwise() {
        String[] lora = with(BF16, "lora.rank=4", "lora.alpha=8", "lora.targets=c_attn,c_proj,c_fc", "optim.learning_rate=3e-3");
        Trainer.Result ref = SmallRuns.train(tmp, "lora-resident", 15, false, lora);
        Trainer.Result off = SmallRuns.train(tmp, "lora-offloaded", 15, false, with(lora, "train.offload_params=disk", "train.prefetch_depth=1"));
        assertSameLosses(ref, off);
    }

    /** Stopped at step 15 (a checkpoint, after the overflows) and resumed to 30: the run straight through, bit for bit. */
    @Test
    void resumedOffloadedFp16RunEqualsUninterruptedOne() {
        String[] o = with(FP16, "train.offload_params=disk", "train.offload_optimizer=disk", "train.prefetch_depth=1");
        Trainer.Result whole = SmallRuns.train(tmp, "fp16-off-whole", 30, false, o);
        SmallRuns.train(tmp, "fp16-off-split", 15, false, o);
        Trainer.Result resumed = SmallRuns.train(tmp, "fp16-off-split", 30, true, o);
        List<JsonNode> a = SmallRuns.steps(whole), b = SmallRuns.steps(resumed);
        for (int i = 15; i < 30; i++) {
            assertEquals(a.get(i).get("loss").asDouble(), b.get(i).get("loss").asDouble(), "loss at step " + (i + 1));
            assertEquals(a.get(i).get("loss_scale").asDouble(), b.get(i).get("loss_scale").asDouble(), "scale at step " + (i + 1));
        }
        assertEquals(whole.finalValLoss(), resumed.finalValLoss());
    }

    /**
     * The account's peaks over three bf16 steps of a 4-block model, resident and with the blocks' parameters offloaded
     * (prefetch depth 1, optimizer state resident): the optimizer state's peak drops by exactly the blocks' fp32 masters
     * (the tier holds them), and the parameters' peak by at least the two of four blocks never resident at once.
     */
    @Test
    void offloadedMastersAndParametersLeaveTheResidentPeak() {
        RunConfig cfg = SmallRuns.config(tmp, "mem", 10, "model.n_layer=4", "model.n_embd=64", "train.precision=bf16", "model.dropout=0");
        PreparedData data = Workspace.prepareData(cfg.data());
        RunConfig resolved = cfg.withModel(cfg.model().withVocabSize(data.tokenizer().vocabSize()));
        Peaks resident = measure(resolved, data, false), off = measure(resolved, data, true);
        long blocks = off.offloadedBytes();
        System.out.printf("bf16 peaks resident / offloaded: parameters %,d / %,d, gradients %,d / %,d, optimizer state %,d / %,d, total %,d / %,d; "
                        + "block parameters %,d%n", resident.params(), off.params(), resident.grads(), off.grads(), resident.state(), off.state(),
                resident.total(), off.total(), blocks);
        assertTrue(blocks > 0);
        assertEquals(resident.grads(), off.grads(), "gradients stay resident");
        assertEquals(blocks, resident.state() - off.state(), "the blocks' fp32 masters are not resident");
        assertTrue(resident.params() - off.params() >= blocks / 2, "at most two of four blocks resident");
        assertTrue(resident.total() - off.total() >= blocks + blocks / 2, "total peak " + resident.total() + " vs " + off.total());
    }

    private record Peaks(long params, long grads, long state, long total, long offloadedBytes) {}

    private static Peaks measure(RunConfig cfg, PreparedData data, boolean offload) {
        MemoryPeaks peaks = MemoryPeaks.start();
        Gpt model = (Gpt) RunSetup.buildModel(cfg);
        try (Offload o = offload ? Offload.of(new DiskTier(tmp.resolve("tier" + System.nanoTime())), model, true, false, 1) : null;
             TokenShard shard = data.openTrain()) {
            Optimizer opt = RunSetup.optimizer(cfg, model, o);
            peaks.restart();
            BatchSampler sampler = new BatchSampler(shard, 4, cfg.model().block_size(), 1);
            model.train(true);
            for (int i = 0; i < 3; i++) TrainStep.step(model, opt, sampler, 1e-3, 1.0);
            // read now: the next window resets the tracker's peaks
            return new Peaks(peaks.peak(MemoryCategory.PARAMETERS), peaks.peak(MemoryCategory.GRADIENTS), peaks.peak(MemoryCategory.OPTIMIZER_STATE),
                    peaks.peakTotal(), o == null ? 0 : o.offloadedParameterBytes());
        }
    }
}
