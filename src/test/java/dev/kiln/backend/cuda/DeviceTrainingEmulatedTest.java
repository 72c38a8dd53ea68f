package dev.kiln.backend.cuda;

import dev.kiln.KilnException;
import dev.kiln.data.BatchSampler;
import dev.kiln.data.PreparedData;
import dev.kiln.data.TokenShard;
import dev.kiln.nn.Parameter;
import dev.kiln.nn.models.CausalLm;
import dev.kiln.optim.Optimizer;
import dev.kiln.tensor.Device;
import dev.kiln.tensor.HostAllocator;
import dev.kiln.tensor.Tensor;
import dev.kiln.train.DevicePlacement;
import dev.kiln.train.RunSetup;
import dev.kiln.train.SmallRuns;
import dev.kiln.train.TrainStep;
import dev.kiln.train.Trainer;
import dev.kiln.train.TrainingException;
import dev.kiln.train.Workspace;
import dev.kiln.train.config.RunConfig;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.api.parallel.Isolated;

import java.nio.file.Path;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * Training on cuda:0 end to end on the {@link EmulatedDevice}: the trainer places the model, gradients, optimizer state
 * and batches on the device, every op runs through {@link CudaBackend} (host-built kernels, fake cuBLAS), evaluation
 * and sampling run there, checkpoints are written from it and resumed onto it. The run is SmallRuns' tiny GPT
 * (L2 H2 C32 T32, character vocabulary, batch 4).
 */
@Isolated
class DeviceTrainingEmulatedTest {
    /**
     * Per-step |loss(cuda) − loss(cpu)| bound over 20 fp32 steps. The kernels sum in other orders than the CPU
     * backend (GEMMs, layer-norm and softmax rows, the loss mean in fp32 on the device vs double on the host), so each
     * op differs by a few fp32 ulps (≈1e-7 relative) and AdamW carries those differences from step to step; the
     * losses are ≈4, so 2e-5 is ≈5e-6 relative (≈40 fp32 ulps; measured: 1.7e-6), yet far below what one wrong op
     * (a missing gradient, a wrong scale) moves a loss in 20 steps (the loss falls by ≈0.45 over them).
     */
    static final double FP32_LOSS_TOL = 2e-5;

    /**
     * Per-step |loss(cuda, bf16 autocast) − loss(cpu, fp32)| bound over the same 20 steps. Every Linear's input, weight
     * and output gradient is rounded to bf16 (8 significant bits: relative error up to 2⁻⁹ ≈ 2e-3 per element) before
     * fp32 accumulation; over sums of 32–128 products those errors mostly cancel, and the loss, a mean over 128 rows,
     * averages them further (measured: 7.3e-5 at most over the 20 steps, 44× the fp32 run's 1.7e-6). 1e-3 is 0.03% of
     * the loss; a wrong cast (fp16 bits read as bf16, a transposed weight) moves it by whole units.
     */
    static final double BF16_LOSS_TOL = 1e-3;

    private CudaRuntime rt;

    @BeforeEach
    void open(@TempDir Path cache) {
        rt = EmulatedDevice.install(cache);
    }

    @AfterEach
    void close() {
        EmulatedDevice.uninstall();
    }

    @Test
    void fp32AndBf16TrainingMatchTheCpuRun(@TempDir Path tmp) {
        Trainer.Result cpu = SmallRuns.train(tmp, "cpu", 20, false);
        Trainer.Result gpu = SmallRuns.train(tmp, "gpu", 20, false, "train.device=cuda:0");
        assertEquals(20, gpu.losses().size());
        double worst = maxDifference(cpu, gpu);
        System.out.printf("fp32 on emulated cuda:0 vs cpu, 20 steps: max |Δloss| %.3g (first %.6f, last %.6f)%n",
                worst, gpu.losses().getFirst(), gpu.losses().getLast());
        assertTrue(worst <= FP32_LOSS_TOL, "max |Δloss| " + worst);
        assertTrue(gpu.losses().getLast() < gpu.losses().getFirst() - 0.3, "the loss falls: " + gpu.losses());
        assertEquals(cpu.finalValLoss(), gpu.finalValLoss(), FP32_LOSS_TOL, "final evaluation, on the device");
        assertFalse(gpu.sample().isEmpty(), "sampling ran on the device");

        FakeCublas.calls.clear();
        Trainer.Result bf16 = SmallRuns.train(tmp, "bf16", 20, false, "train.device=cuda:0", "train.precision=bf16", "train.sample_tokens=0");
        String bf16Gemm = "types " + Cublas.CUDA_R_16BF + "," + Cublas.CUDA_R_16BF + "," + Cublas.CUDA_R_32F;
        long castGemms = FakeCublas.calls.stream().filter(c -> c.contains(bf16Gemm)).count();
        assertTrue(castGemms > 0, "bf16 × bf16 → fp32 GEMMs ran: " + castGemms);
        double worstBf16 = maxDifference(cpu, bf16);
        System.out.printf("bf16 autocast on emulated cuda:0 vs fp32 cpu, 20 steps: max |Δloss| %.3g (last %.6f vs %.6f); %d bf16 GEMMs%n",
                worstBf16, bf16.losses().getLast(), cpu.losses().getLast(), castGemms);
        assertTrue(worstBf16 <= BF16_LOSS_TOL, "max |Δloss| " + worstBf16);
        assertTrue(worstBf16 > 0, "bf16 rounding shows in the losses");
        assertEquals(cpu.finalValLoss(), bf16.finalValLoss(), BF16_LOSS_TOL, "final evaluation (fp32 master weights)");
    }

    private static double maxDifference(Trainer.Result a, Trainer.Result b) {
        double worst = 0;
        for (int i = 0; i < a.losses().size(); i++) worst = Math.max(worst, Math.abs(a.losses().get(i) - b.losses().get(i)));
        return worst;
    }

    @Test
    void deviceCheckpointResumesOnTheDeviceAndLoadsOnTheCpu(@TempDir Path tmp) {
        // short runs: every emulated kernel launch runs on the host's threads
        // with dropout: its masks (drawn on the host, uploaded) and their generator's state resume too
        String[] dev = {"train.device=cuda:0", "train.checkpoint_interval=3", "train.sample_tokens=0", "train.final_eval_iters=2",
                "model.dropout=0.1"};
        Trainer.Result whole = SmallRuns.train(tmp, "whole", 6, false, dev);
        Trainer.Result first = SmallRuns.train(tmp, "split", 3, false, dev);
        Trainer.Result rest = SmallRuns.train(tmp, "split", 6, true, dev);
        assertEquals(3, first.losses().size());
        assertEquals(3, rest.losses().size());
        // the device is deterministic (no atomics in the kernels used), so resuming continues bit for bit
        assertEquals(whole.losses().subList(0, 3), first.losses());
        assertEquals(whole.losses().subList(3, 6), rest.losses());
        assertEquals(whole.finalValLoss(), rest.finalValLoss());

        // kiln eval of the device checkpoint, on the CPU: the same weights, CPU kernels
        SmallRuns.Cli eval = SmallRuns.cli("eval", "--run", whole.runDir().toString(), "--batches", "2");
        assertEquals(0, eval.code(), eval.err());
        double cpuVal = Double.parseDouble(eval.out().replaceAll("(?s).*?val loss ([0-9.]+).*", "$1"));
        assertEquals(whole.finalValLoss(), cpuVal, FP32_LOSS_TOL + 5e-5, eval.out()); // kiln eval prints 4 decimals
        // and on the device: the run's own final evaluation, to the 4 decimals printed
        SmallRuns.Cli evalDev = SmallRuns.cli("eval", "--run", whole.runDir().toString(), "--batches", "2", "--device", "cuda:0");
        assertEquals(0, evalDev.code(), evalDev.err());
        assertEquals(whole.finalValLoss(), Double.parseDouble(evalDev.out().replaceAll("(?s).*?val loss ([0-9.]+).*", "$1")), 5.1e-5, evalDev.out());
        // kiln sample on the device, greedy: the same text as on the CPU (logits a few ulps apart do not change an argmax here)
        String[] greedy = {"sample", "--run", whole.runDir().toString(), "--tokens", "12", "--temperature", "0"};
        SmallRuns.Cli cpuText = SmallRuns.cli(greedy);
        SmallRuns.Cli devText = SmallRuns.cli(java.util.stream.Stream.concat(java.util.Arrays.stream(greedy), java.util.stream.Stream.of("--device", "cuda:0"))
                .toArray(String[]::new));
        assertEquals(0, devText.code(), devText.err());
        assertEquals(cpuText.out(), devText.out());
    }

    @Test
    void aDeviceStepCreatesNoHostTensor(@TempDir Path tmp) {
        RunConfig cfg = SmallRuns.config(tmp, "alloc", 5, "train.device=cuda:0");
        PreparedData data = Workspace.prepareData(cfg.data());
        RunConfig resolved = cfg.withModel(cfg.model().withVocabSize(data.tokenizer().vocabSize()));
        Device device = DevicePlacement.of(resolved);
        CausalLm model = RunSetup.buildModel(resolved);
        DevicePlacement.place(model, device);
        Optimizer opt = RunSetup.optimizer(resolved, model);
        for (Parameter p : model.parameters()) assertEquals(device, p.device());
        try (TokenShard shard = data.openTrain()) {
            BatchSampler sampler = new BatchSampler(shard, 4, 32, 7);
            TrainStep.step(model, opt, sampler, 1e-3, 1.0); // the first step makes the gradients
            for (Parameter p : model.parameters()) assertEquals(device, p.grad().device());
            for (Tensor s : opt.stateDict().values()) assertEquals(device, s.device());
            long host = HostAllocator.allocations(), deviceRequests = rt.allocator().requests();
            TrainStep.StepResult r = TrainStep.step(model, opt, sampler, 1e-3, 1.0);
            assertTrue(Double.isFinite(r.loss()) && Double.isFinite(r.gradNorm()), r.toString());
            assertEquals(host, HostAllocator.allocations(), "host tensors allocated during a device step");
            // the step did allocate: on the device (activations, gradients of activations, scratch)
            assertTrue(rt.allocator().requests() > deviceRequests + 100, "device allocations " + (rt.allocator().requests() - deviceRequests));
        }
    }

    @Test
    void whatDoesNotRunOnTheDeviceIsRefusedInOneLine(@TempDir Path tmp) {
        RunConfig cfg = SmallRuns.config(tmp, "refused", 5, "train.device=cuda:0", "optim.optimizer=sgd", "train.recompute=full");
        TrainingException e = assertThrows(TrainingException.class, () -> DevicePlacement.of(cfg));
        assertTrue(e.getMessage().contains("optim.optimizer sgd") && e.getMessage().contains("train.recompute full"), e.getMessage());
        assertFalse(e.getMessage().contains("\n"), e.getMessage());
        // a GPU that is not there (the emulation is cuda:0 only): one line saying what was looked for
        KilnException none = assertThrows(KilnException.class, () -> DevicePlacement.of(SmallRuns.config(tmp, "none", 5, "train.device=cuda:7")));
        assertFalse(none.getMessage().contains("\n"), none.getMessage());
        assertTrue(none.getMessage().contains("cuda"), none.getMessage());
    }
}
