package dev.kiln.cli;

import dev.kiln.data.Tokenizer;
import dev.kiln.nn.models.CausalLm;
import dev.kiln.nn.Qat;
import dev.kiln.train.CheckpointStore;
import dev.kiln.train.RunSetup;
import dev.kiln.train.TrainingException;
import dev.kiln.train.config.ConfigLoader;
import dev.kiln.train.config.RunConfig;

import java.nio.file.Files;
import java.nio.file.Path;

/** A trained model loaded from a run directory (or a checkpoint directory inside one). */
record RunCheckpoint(RunConfig config, CausalLm model, Tokenizer tokenizer, Path checkpoint) {

    static RunCheckpoint load(Path runOrCheckpoint) {
        Path checkpoint = runOrCheckpoint;
        Path runDir = runOrCheckpoint;
        if (Files.isRegularFile(runOrCheckpoint.resolve(CheckpointStore.STATE_FILE))) {
            runDir = runOrCheckpoint.toAbsolutePath().getParent().getParent();
        } else {
            checkpoint = new CheckpointStore(runOrCheckpoint).latest().orElseThrow(() ->
                    new TrainingException("no checkpoint found in " + runOrCheckpoint + " (expected " + runOrCheckpoint.resolve("checkpoints/step-*") + ")"));
        }
        RunConfig cfg = ConfigLoader.fromJson(CheckpointStore.config(checkpoint).toString(), checkpoint.resolve(CheckpointStore.STATE_FILE).toString());
        Path tokFile = runDir.resolve("tokenizer.json");
        if (!Files.exists(tokFile)) throw new TrainingException("tokenizer " + tokFile + " not found next to the checkpoints");
        Tokenizer tok = Tokenizer.load(tokFile);
        if (cfg.model().vocab_size() <= 0)
            throw new TrainingException(checkpoint.resolve(CheckpointStore.STATE_FILE) + ": config has model.vocab_size " + cfg.model().vocab_size() + "; a trained model needs its vocabulary size");
        CausalLm model = RunSetup.buildModel(cfg); // with its LoRA adapters and fake quantisation, as it was trained
        int depth = CheckpointStore.depth(checkpoint, model.depth());
        if (depth > model.depth()) model.grow(depth, cfg.growth().method(), cfg.train().seed()); // a run that grew (growth:): its weights overwrite these
        var state = CheckpointStore.load(checkpoint, model, null, java.util.List.of());
        if (cfg.qat().enabled()) Qat.setActive(model, cfg.qat().activeAfter(state.step()));
        return new RunCheckpoint(cfg, model, tok, checkpoint);
    }
}
