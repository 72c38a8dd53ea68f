package dev.kiln.cli;

import dev.kiln.backend.cuda.CudaRuntime;
import dev.kiln.backend.cuda.CudaUnavailableException;
import dev.kiln.train.SmallRuns;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.nio.file.Files;
import java.nio.file.Path;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeFalse;

/** {@code kiln train --device}: a bad value or a missing GPU is one line and exit code 2; cpu trains as before. */
class TrainDeviceTest {
    @TempDir
    Path tmp;

    private static boolean gpuPresent() {
        try {
            CudaRuntime.get(0);
            return true;
        } catch (CudaUnavailableException e) {
            return false;
        }
    }

    private String[] args(String device, String name, int iters) {
        return new String[] {"train", "--device", device, "--name", name, "--set", "train.out_dir=" + tmp.resolve("runs"),
                "--set", "data.dir=" + tmp.resolve("data"), "--set", "model.n_layer=1", "--set", "model.n_embd=16",
                "--set", "model.n_head=2", "--set", "model.block_size=16", "--set", "train.batch_size=2",
                "--set", "train.max_iters=" + iters, "--set", "train.final_eval_iters=1", "--set", "train.eval_iters=1",
                "--set", "train.sample_tokens=0", "--set", "train.threads=1", "--set", "optim.warmup_iters=1",
                "--set", "optim.lr_decay_iters=10"};
    }

    @Test
    void cudaWithoutAGpuIsOneLineExitTwoAndWritesNothing() {
        assumeFalse(gpuPresent(), "this machine has a GPU");
        SmallRuns.Cli r = SmallRuns.cli(args("cuda", "gpu_run", 3));
        assertEquals(2, r.code(), r.err());
        String err = r.err().strip();
        assertFalse(err.contains("\n"), err);
        assertTrue(err.startsWith("kiln: error: CUDA is not available: the NVIDIA driver (libcuda.so.1) not found in "), err);
        assertTrue(err.contains("--device cpu"), err);
        assertFalse(Files.exists(tmp.resolve("runs/gpu_run")), "nothing is written for a run that cannot start");
    }

    @Test
    void badDeviceNamesTheKey() {
        SmallRuns.Cli r = SmallRuns.cli(args("tpu", "x", 3));
        assertEquals(2, r.code());
        assertTrue(r.err().contains("train.device") && r.err().contains("must be cpu, cuda or cuda:N, got \"tpu\""), r.err());
    }

    @Test
    void cpuTrainsAsBefore() {
        SmallRuns.Cli r = SmallRuns.cli(args("cpu", "cpu_run", 3));
        assertEquals(0, r.code(), r.err());
        assertTrue(Files.exists(tmp.resolve("runs/cpu_run/metrics.jsonl")));
        assertTrue(readsDevice(tmp.resolve("runs/cpu_run/config.json")), "the resolved config records the device");
    }

    private static boolean readsDevice(Path configJson) {
        try {
            return new com.fasterxml.jackson.databind.ObjectMapper().readTree(configJson.toFile()).path("train").path("device").asText().equals("cpu");
        } catch (java.io.IOException e) {
            throw new java.io.UncheckedIOException(e);
        }
    }
}
