package dev.kiln.cli;

import dev.kiln.train.Trainer;
import dev.kiln.train.config.RunConfig;
import picocli.CommandLine.Command;
import picocli.CommandLine.Mixin;
import picocli.CommandLine.Option;

import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.Callable;

@Command(name = "train", description = "Train a model (default: a small GPT on the bundled Shakespeare corpus) and print a sample.")
final class TrainCommand implements Callable<Integer> {
    @Mixin
    RunOptions run;

    @Option(names = "--resume", description = "continue the run from its latest checkpoint")
    boolean resume;

    @Option(names = "--name", description = "run name (train.name): the run writes runs/<name>/")
    String name;

    @Option(names = "--device", paramLabel = "DEVICE", description = "where to train (train.device): cpu, cuda or cuda:N")
    String device;

    @Option(names = "--budget-time", paramLabel = "DURATION",
            description = "train for this wall-clock time (train.budget_time), e.g. 90s, 10m, 1h30m: the schedule is laid over it")
    String budgetTime;

    @Option(names = "--budget-tokens", paramLabel = "COUNT",
            description = "train on this many tokens (train.budget_tokens), e.g. 5M, 2.5e6")
    String budgetTokens;

    @Option(names = "--budget-steps", paramLabel = "N", description = "train for this many steps (train.max_iters and optim.lr_decay_iters)")
    Integer budgetSteps;

    @Override
    public Integer call() {
        List<String> extra = new ArrayList<>();
        if (name != null) extra.add("train.name=" + name);
        if (device != null) extra.add("train.device=" + device);
        if (budgetTime != null) extra.add("train.budget_time=" + budgetTime);
        if (budgetTokens != null) extra.add("train.budget_tokens=" + budgetTokens);
        if (budgetSteps != null) {
            extra.add("train.max_iters=" + budgetSteps);
            extra.add("optim.lr_decay_iters=" + budgetSteps);
        }
        RunConfig cfg = run.load(extra);
        new Trainer(cfg, resume, System.out, System.console() != null && System.console().isTerminal()).run();
        return 0;
    }
}
