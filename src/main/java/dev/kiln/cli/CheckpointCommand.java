package dev.kiln.cli;

import dev.kiln.train.ShardedCheckpoint;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;
import picocli.CommandLine.Parameters;

import java.nio.file.Path;
import java.util.concurrent.Callable;

/** {@code kiln checkpoint …}: operations on a run's checkpoints. */
@Command(name = "checkpoint", mixinStandardHelpOptions = true, description = "Operations on checkpoints.",
        subcommands = {CheckpointCommand.Consolidate.class})
final class CheckpointCommand implements Runnable {
    @Override
    public void run() {
        new picocli.CommandLine(this).usage(System.out);
    }

    /**
     * {@code kiln checkpoint consolidate STEP_DIR [--out DIR]}: assembles a sharded checkpoint (parallel.checkpoint:
     * sharded) into an ordinary single-process one; prints the directory written.
     */
    @Command(name = "consolidate", mixinStandardHelpOptions = true,
            description = "Assemble a sharded checkpoint's per-rank files into one checkpoint (model.safetensors with Hugging Face names, optimizer.safetensors, trainer.json).")
    static final class Consolidate implements Callable<Integer> {
        @Parameters(index = "0", paramLabel = "STEP_DIR", description = "a sharded checkpoint: RUN/checkpoints/step-NNNNNN")
        Path step;

        @Option(names = "--out", paramLabel = "DIR", description = "where to write it (default: RUN/consolidated/step-NNNNNN, next to the run's tokenizer, so kiln export/eval/sample take it)")
        Path out;

        @Override
        public Integer call() {
            Path abs = step.toAbsolutePath().normalize();
            if (!ShardedCheckpoint.isSharded(abs))
                throw new dev.kiln.train.TrainingException("checkpoint consolidate: " + step + " is not a sharded checkpoint (no trainer.json with a 'shards' index)");
            Path target = out != null ? out : abs.getParent().getParent().resolve("consolidated").resolve(abs.getFileName());
            System.out.println(ShardedCheckpoint.consolidateTo(abs, target));
            return 0;
        }
    }
}
