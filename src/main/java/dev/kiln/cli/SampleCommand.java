package dev.kiln.cli;

import dev.kiln.nn.models.Generator;
import dev.kiln.tensor.Rng;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;

import java.nio.file.Path;
import java.util.concurrent.Callable;

@Command(name = "sample", description = "Generate text from a trained run's latest checkpoint.")
final class SampleCommand implements Callable<Integer> {
    @Option(names = "--run", required = true, paramLabel = "DIR", description = "run directory (runs/<name>) or one checkpoint directory")
    Path run;

    @Option(names = "--prompt", defaultValue = "\n", description = "text to continue (default: a newline)")
    String prompt;

    @Option(names = {"--tokens", "--max-new-tokens"}, defaultValue = "500", description = "tokens to generate (default: ${DEFAULT-VALUE})")
    int tokens;

    @Option(names = "--temperature", defaultValue = "0.8", description = "sampling temperature; 0 = greedy (default: ${DEFAULT-VALUE})")
    double temperature;

    @Option(names = "--top-k", defaultValue = "200", description = "sample among the k most likely tokens; 0 = all (default: ${DEFAULT-VALUE})")
    int topK;

    @Option(names = "--seed", defaultValue = "1337")
    long seed;

    @Option(names = "--device", defaultValue = "cpu", description = "cpu, cuda or cuda:N: where to run the model (default: ${DEFAULT-VALUE})")
    String device;

    @Option(names = "--debug", description = "print stack traces of errors")
    boolean debug;

    @Override
    public Integer call() {
        RunCheckpoint rc = RunCheckpoint.load(run);
        dev.kiln.train.DevicePlacement.placeForInference(rc.model(), device);
        int[] seq = Generator.generate(rc.model(), rc.tokenizer().encode(prompt), tokens, temperature, topK, new Rng(seed));
        System.out.println(rc.tokenizer().decode(seq));
        return 0;
    }
}
