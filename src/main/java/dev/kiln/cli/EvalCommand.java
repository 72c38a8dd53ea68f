package dev.kiln.cli;

import dev.kiln.data.PreparedData;
import dev.kiln.data.TokenShard;
import dev.kiln.optim.WeightAverage;
import dev.kiln.tensor.Tensor;
import dev.kiln.train.CheckpointStore;
import dev.kiln.train.DevicePlacement;
import dev.kiln.train.RunSetup;
import dev.kiln.train.Evaluation;
import dev.kiln.train.TrainingException;
import dev.kiln.train.Workspace;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;

import java.nio.file.Path;
import java.util.List;
import java.util.Map;
import java.util.concurrent.Callable;

@Command(name = "eval", description = "Print the validation loss of a trained run's latest checkpoint (its weights or an average it kept).")
final class EvalCommand implements Callable<Integer> {
    @Option(names = "--run", required = true, paramLabel = "DIR", description = "run directory (runs/<name>) or one checkpoint directory")
    Path run;

    @Option(names = "--batches", description = "validation batches (default: the run's train.final_eval_iters)")
    Integer batches;

    @Option(names = "--weights", defaultValue = "model", paramLabel = "KIND",
            description = "which weights to evaluate: model (the trained weights), ema, swa or lawa (an average kept by the run; default: ${DEFAULT-VALUE})")
    String weights;

    @Option(names = "--device", defaultValue = "cpu", description = "cpu, cuda or cuda:N: where to evaluate (default: ${DEFAULT-VALUE})")
    String device;

    @Option(names = "--debug", description = "print stack traces of errors")
    boolean debug;

    @Override
    public Integer call() {
        RunCheckpoint rc = RunCheckpoint.load(run);
        if (!weights.equals("model")) useAverage(rc, weights);
        DevicePlacement.placeForInference(rc.model(), device);
        PreparedData data = Workspace.prepareData(rc.config().data());
        int n = batches != null ? batches : rc.config().train().final_eval_iters();
        try (TokenShard val = data.openVal()) {
            double loss = Evaluation.evaluate(rc.model(), val, rc.config().train().batch_size(), rc.model().blockSize(), n, rc.config().train().seed() + 1);
            System.out.printf("val loss %.4f over %d batches (%s, %s weights)%n", loss, n, rc.checkpoint(), weights);
        }
        return 0;
    }

    /** Replaces the model's weights by the named average stored in the checkpoint. */
    private static void useAverage(RunCheckpoint rc, String kind) {
        if (!List.of("ema", "swa", "lawa").contains(kind))
            throw new TrainingException("--weights must be model, ema, swa or lawa, got \"" + kind + "\"");
        WeightAverage avg = RunSetup.averages(rc.config().averaging(), rc.model()).stream().filter(a -> a.name().equals(kind)).findFirst()
                .orElseThrow(() -> new TrainingException("run of " + rc.checkpoint() + " kept no " + kind + " weights (see its averaging: config)"));
        CheckpointStore.loadAverages(rc.checkpoint(), List.of(avg));
        if (!avg.ready()) throw new TrainingException(rc.checkpoint() + ": the " + kind + " average has no samples yet (averaging.swa_start / lawa_interval not reached)");
        Map<String, Tensor> w = avg.weights();
        rc.model().namedParameters().forEach((name, p) -> p.copyFrom(w.get(name)));
    }
}
