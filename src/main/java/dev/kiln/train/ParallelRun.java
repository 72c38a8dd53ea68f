package dev.kiln.train;

import dev.kiln.dist.DataParallel;
import dev.kiln.dist.DistException;
import dev.kiln.dist.ParallelLayout;
import dev.kiln.dist.MpiProcessGroup;
import dev.kiln.dist.PipelineParallel;
import dev.kiln.dist.ProcessGroup;
import dev.kiln.nn.models.CausalLm;
import dev.kiln.train.config.ParallelConfig;
import dev.kiln.train.config.RunConfig;

import java.io.PrintStream;

/**
 * Sets up data-parallel training when the trainer runs under {@code mpirun -np N}: checks that the config is one
 * data parallelism reproduces (the ranks together must train on exactly the single-process batch), sets the
 * collective timeout and installs {@link DataParallel} for the model. A process not started by mpirun gets nothing.
 */
final class ParallelRun {
    private ParallelRun() {}

    /** True unless this is a rank other than 0 of an mpirun job (read from the environment, before MPI starts). */
    static boolean isLeadProcess() {
        return !ProcessGroup.launchedByMpirun() || "0".equals(System.getenv("OMPI_COMM_WORLD_RANK"));
    }

    /**
     * Runs {@code work} on rank 0 first and on the other ranks after it (a barrier between), e.g. preparing the data
     * cache, which the other ranks then only open; in a single process simply runs it.
     */
    static <T> T leadFirst(java.util.function.Supplier<T> work) {
        if (!ProcessGroup.launchedByMpirun()) return work.get();
        ProcessGroup world = ProcessGroup.world();
        T out = null;
        if (world.rank() == 0) out = work.get();
        world.barrier();
        if (world.rank() != 0) out = work.get();
        return out;
    }

    private static ParallelLayout layout;

    /** The job's dp × tp × pp layout for {@code cfg}: split once per process and sizes (the splits are collective). */
    static ParallelLayout layout(RunConfig cfg) {
        ParallelConfig pc = cfg.parallel();
        ProcessGroup world = ProcessGroup.world();
        int dp = pc.dp() == 0 ? world.size() / Math.max(1, pc.tp() * pc.pp()) : pc.dp();
        if (layout != null && layout.tpSize() == pc.tp() && layout.ppSize() == pc.pp() && layout.dpSize() == dp) return layout;
        try {
            layout = ParallelLayout.of(world, pc.dp(), pc.tp(), pc.pp());
        } catch (DistException e) {
            throw new TrainingException(e.getMessage());
        }
        return layout;
    }

    static DataParallel start(RunConfig cfg, CausalLm model, PrintStream out) {
        DataParallel.uninstall();
        PipelineParallel.uninstall();
        if (DeviceDataParallel.applies(cfg)) return DeviceDataParallel.start(cfg, model, out); // a GPU run: DDP over NCCL
        if (!ProcessGroup.launchedByMpirun()) return null;
        ParallelConfig pc = cfg.parallel();
        MpiProcessGroup.setTimeoutSeconds(pc.timeout_s());
        ParallelLayout layout = layout(cfg);
        if (layout.tpSize() > 1 && !TensorParallelRun.active()) // the Trainer shards the model first (TensorParallelRun.shard)
            throw new TrainingException("parallel.tp > 1: the model was not sharded for tensor parallelism");
        if (layout.ppSize() > 1) return PipelineRun.start(cfg, layout, model, out);
        ProcessGroup world = layout.dp();
        int n = world.size();
        if (n == 1) return null;
        if (cfg.train().batch_size() % n != 0)
            throw new TrainingException("train.batch_size " + cfg.train().batch_size() + " must be divisible by the " + n + " data-parallel ranks");
        if (cfg.train().select_fraction() < 1)
            throw new TrainingException("train.select_fraction < 1 cannot be combined with data parallelism (each rank would pick its own hardest rows)");
        if (cfg.growth().on())
            throw new TrainingException("growth.at_step cannot be combined with data parallelism yet (the sharded parameters would change)");
        if (!cfg.train().offload_params().equals("none") || !cfg.train().offload_optimizer().equals("none"))
            throw new TrainingException("train.offload_params / train.offload_optimizer cannot be combined with data parallelism yet");
        var av = cfg.averaging();
        if (pc.zero_stage() == 3 && (av.ema_decay() > 0 || av.swa_start() > 0 || av.lawa_k() > 0))
            throw new TrainingException("averaging: cannot be combined with parallel.zero_stage 3 (the averages would need every parameter on every rank)");
        DataParallel dp = DataParallel.install(world, model, pc.zero_stage(), pc.bucket_mb());
        out.printf("kiln: data parallel over %d ranks, ZeRO stage %d, %s MiB gradient buckets; each rank trains %d of the %d rows of a batch%n",
                n, pc.zero_stage(), pc.bucket_mb(), cfg.train().batch_size() / n, cfg.train().batch_size());
        return dp;
    }

    /**
     * Under data or pipeline parallelism, one line of what this rank handed to each kind of collective in the whole run (payload
     * bytes, see {@link dev.kiln.dist.CommStats}) and the ring-algorithm estimate of what it sent: bench/dist.sh
     * takes the difference of two runs of different lengths to get the bytes per step.
     */
    static void reportCommunication(PrintStream out) {
        DataParallel dp = DataParallel.active();
        var tp = dev.kiln.dist.TensorParallel.active();
        PipelineParallel pipe = PipelineParallel.active();
        if (dp == null && tp == null && pipe == null) return;
        var st = (dp != null ? dp.group() : tp != null ? tp.group() : pipe.group()).stats(); // every group's calls: one count per process
        var k = dev.kiln.dist.CommStats.Kind.class;
        StringBuilder sb = new StringBuilder("kiln: communication {");
        for (var kind : k.getEnumConstants())
            sb.append('"').append(kind.name().toLowerCase()).append("\": ").append(st.bytes(kind)).append(", ");
        // ring estimate with every collective in a group of the data-parallel size (pp without dp: 2, the tied wte's group)
        int n = dp != null ? dp.group().size() : pipe != null ? 2 : 1;
        double wire = st.wireBytes(n);
        if (tp != null) { // the tensor-parallel share on its own, and on the wire over its own group's size
            var ts = tp.stats();
            wire += ts.wireBytes(tp.size()) - ts.wireBytes(n);
            sb.append("\"tp\": {");
            for (var kind : k.getEnumConstants())
                if (ts.calls(kind) > 0) sb.append('"').append(kind.name().toLowerCase()).append("\": ").append(ts.bytes(kind)).append(", ");
            sb.append("\"calls\": ").append(java.util.Arrays.stream(k.getEnumConstants()).mapToLong(ts::calls).sum()).append("}, ");
        }
        var nccl = dp != null ? dp.ncclStats() : null;
        if (nccl != null) { // a GPU run: the gradients went over NCCL, only host scalars over the group above
            wire += nccl.wireBytes(n);
            sb.append("\"nccl\": {\"all_reduce\": ").append(nccl.bytes(dev.kiln.dist.CommStats.Kind.ALL_REDUCE))
                    .append(", \"calls\": ").append(nccl.calls(dev.kiln.dist.CommStats.Kind.ALL_REDUCE)).append("}, ");
        }
        sb.append("\"ring_wire_bytes\": ").append(Math.round(wire));
        if (pipe != null) { // collective: every stage adds what it sent point to point
            double[] sent = {st.bytes(dev.kiln.dist.CommStats.Kind.SEND)};
            pipe.group().allReduceSum(sent);
            sb.append(", \"pipeline_send_all_stages\": ").append(Math.round(sent[0]));
        }
        sb.append('}');
        out.println(sb);
    }
}
