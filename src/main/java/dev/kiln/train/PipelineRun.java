package dev.kiln.train;

import dev.kiln.dist.DataParallel;
import dev.kiln.dist.DistException;
import dev.kiln.dist.ParallelLayout;
import dev.kiln.dist.PipelineParallel;
import dev.kiln.dist.PipelineSchedule;
import dev.kiln.nn.models.CausalLm;
import dev.kiln.nn.models.Gpt;
import dev.kiln.train.config.ParallelConfig;
import dev.kiln.train.config.RunConfig;

import java.io.PrintStream;

/**
 * Sets up pipeline parallelism ({@code parallel.pp > 1}) for {@link ParallelRun}: refuses, one line each, what the
 * pipeline does not reproduce or support, installs {@link PipelineParallel} over this rank's stage and, with dp > 1,
 * {@link DataParallel} over the stage's parameters.
 */
final class PipelineRun {
    private PipelineRun() {}

    static DataParallel start(RunConfig cfg, ParallelLayout layout, CausalLm model, PrintStream out) {
        ParallelConfig pc = cfg.parallel();
        var tc = cfg.train();
        int p = layout.ppSize(), dpSize = layout.dpSize();
        int m = pc.micro_batches() == 0 ? p : pc.micro_batches();
        if (!(model instanceof Gpt gpt)) throw refuse("model.arch " + cfg.model().arch() + " (GPT only)");
        if (cfg.lora().rank() > 0) throw refuse("lora.rank > 0");
        if (cfg.growth().on()) throw refuse("growth.at_step (the stages' blocks would change)");
        if (tc.layer_drop() > 0) throw refuse("train.layer_drop");
        if (!tc.recompute().equals("none")) throw refuse("train.recompute " + tc.recompute());
        if (cfg.model().dropout() > 0)
            throw refuse("model.dropout > 0 (micro-batches cannot reproduce a single process's batch-wide dropout masks; set model.dropout=0)");
        if (!tc.offload_params().equals("none") || !tc.offload_optimizer().equals("none")) throw refuse("train.offload_params / train.offload_optimizer");
        if (tc.select_fraction() < 1) throw refuse("train.select_fraction < 1");
        if (cfg.qat().enabled()) throw refuse("qat");
        var av = cfg.averaging();
        if (av.ema_decay() > 0 || av.swa_start() > 0 || av.lawa_k() > 0) throw refuse("averaging (the averages would need every stage's weights)");
        if (dpSize > 1 && pc.zero_stage() == 3)
            throw refuse("parallel.zero_stage 3 (as in DeepSpeed: it would all-gather the stage's parameters again for every micro-batch; use 0, 1 or 2)");
        if (tc.batch_size() % (dpSize * m) != 0)
            throw new TrainingException("train.batch_size " + tc.batch_size() + " must be divisible by the " + dpSize + " data-parallel ranks × "
                    + m + " micro-batches (parallel.micro_batches, 0 = pp)");
        PipelineParallel pipe;
        try {
            pipe = PipelineParallel.install(layout, gpt, pc.pp_schedule(), pc.micro_batches());
        } catch (DistException e) {
            throw new TrainingException(e.getMessage());
        }
        long held = pipe.parameters().values().stream().mapToLong(dev.kiln.nn.Parameter::numel).sum();
        out.printf("kiln: pipeline parallel over %d stages (%s), %s schedule, %d micro-batches of %d rows; ideal bubble %.1f%%; %s, %,d of the %,d parameters%n",
                p, layout.describe(), pc.pp_schedule(), m, tc.batch_size() / dpSize / m, 100 * PipelineSchedule.bubbleFraction(p, m), pipe.describe(),
                held, model.parameterCount());
        if (dpSize == 1) return null;
        if (tc.batch_size() % dpSize != 0)
            throw new TrainingException("train.batch_size " + tc.batch_size() + " must be divisible by the " + dpSize + " data-parallel ranks");
        DataParallel dp = DataParallel.install(layout.dp(), pipe.parameters(), pc.zero_stage(), pc.bucket_mb());
        out.printf("kiln: data parallel over %d ranks per stage, ZeRO stage %d; each pipeline trains %d of the %d rows of a batch%n",
                dpSize, pc.zero_stage(), tc.batch_size() / dpSize, tc.batch_size());
        return dp;
    }

    private static TrainingException refuse(String what) {
        return new TrainingException(what + " cannot be combined with pipeline parallelism (parallel.pp > 1)");
    }
}
