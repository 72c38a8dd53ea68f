package dev.kiln.cli;

import dev.kiln.train.HfImport;
import picocli.CommandLine.Command;
import picocli.CommandLine.Mixin;
import picocli.CommandLine.Option;
import picocli.CommandLine.Parameters;

import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.Callable;

@Command(name = "import", description = "Make a Kiln run from a Hugging Face model directory (config.json + model.safetensors): "
        + "its step-0 checkpoint holds the HF weights; continue with kiln train --config runs/<name>/config.yaml --resume, or kiln eval / sample it.")
final class ImportCommand implements Callable<Integer> {
    @Parameters(index = "0", paramLabel = "HF_DIR", description = "the model directory (save_pretrained / kiln export --hf output)")
    Path dir;

    @Mixin
    RunOptions run;

    @Option(names = "--name", required = true, description = "run name (train.name): the run is written to runs/<name>/")
    String name;

    @Override
    public Integer call() {
        List<String> overrides = new ArrayList<>(run.overrides);
        overrides.add("train.name=" + name);
        HfImport.importRun(dir, run.config, overrides, System.out);
        return 0;
    }
}
