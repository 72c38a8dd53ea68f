package dev.kiln.train;

import com.fasterxml.jackson.databind.JsonNode;
import dev.kiln.cli.Main;
import dev.kiln.train.config.ConfigLoader;
import dev.kiln.train.config.RunConfig;
import dev.kiln.tensor.MemoryScope;
import dev.kiln.tensor.Safetensors;
import dev.kiln.tensor.Tensor;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.PrintStream;
import java.io.UncheckedIOException;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;

/** Shared by the trainer tests: a small GPT run on the bundled corpus (seconds), its metrics, and the CLI in-process. */
public final class SmallRuns {
    private SmallRuns() {}

    /** 2 layers, 32 wide, 32-token context, batch 4; runs and data under {@code tmp}; {@code extra} overrides. */
    public static RunConfig config(Path tmp, String name, int maxIters, String... extra) {
        List<String> o = new ArrayList<>(List.of("model.n_layer=2", "model.n_head=2", "model.n_embd=32", "model.block_size=32",
                "train.batch_size=4", "train.max_iters=" + maxIters, "train.eval_interval=50", "train.eval_iters=2",
                "train.final_eval_iters=4", "train.checkpoint_interval=50", "train.sample_tokens=20", "train.threads=2",
                "train.out_dir=" + tmp.resolve("runs"), "train.name=" + name, "data.dir=" + tmp.resolve("data"),
                "optim.warmup_iters=10", "optim.lr_decay_iters=300"));
        o.addAll(List.of(extra));
        return ConfigLoader.load(null, o);
    }

    /** Trains {@link #config} to the end (or resumes it), its console output discarded. */
    public static Trainer.Result train(Path tmp, String name, int maxIters, boolean resume, String... extra) {
        return new Trainer(config(tmp, name, maxIters, extra), resume, new PrintStream(new ByteArrayOutputStream()), false).run();
    }

    /** Every record of the run's metrics.jsonl. */
    public static List<JsonNode> metrics(Trainer.Result r) {
        try {
            return MetricsLog.readAll(r.runDir().resolve("metrics.jsonl"));
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }

    /** The run's per-step records (those with a training loss). */
    public static List<JsonNode> steps(Trainer.Result r) {
        return metrics(r).stream().filter(m -> m.has("loss")).toList();
    }

    public record Cli(int code, String out, String err) {}

    /** Runs {@code kiln <args>} in this JVM, capturing stdout and stderr. */
    /** The model and optimizer tensors of both runs' checkpoints at {@code step} are equal, bit for bit. */
    public static void assertSameCheckpoint(Trainer.Result ref, Trainer.Result got, int step) {
        String ck = String.format("checkpoints/step-%06d/", step);
        try (var s = MemoryScope.open()) {
            for (String f : List.of("model.safetensors", "optimizer.safetensors")) {
                Map<String, Tensor> x = Safetensors.read(ref.runDir().resolve(ck + f)).tensors(), y = Safetensors.read(got.runDir().resolve(ck + f)).tensors();
                assertEquals(x.keySet(), y.keySet(), f);
                for (String k : x.keySet()) assertArrayEquals(x.get(k).toDoubleArray(), y.get(k).toDoubleArray(), f + " " + k);
            }
        }
    }

    public static Cli cli(String... args) {
        PrintStream oldOut = System.out, oldErr = System.err;
        ByteArrayOutputStream out = new ByteArrayOutputStream(), err = new ByteArrayOutputStream();
        try {
            System.setOut(new PrintStream(out));
            System.setErr(new PrintStream(err));
            int code = Main.execute(args);
            return new Cli(code, out.toString(), err.toString());
        } finally {
            System.setOut(oldOut);
            System.setErr(oldErr);
        }
    }
}
