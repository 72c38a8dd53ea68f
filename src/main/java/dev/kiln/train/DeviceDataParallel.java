package dev.kiln.train;

import dev.kiln.backend.cuda.CudaRuntime;
import dev.kiln.dist.DataParallel;
import dev.kiln.dist.LocalProcessGroup;
import dev.kiln.dist.MpiProcessGroup;
import dev.kiln.dist.Nccl;
import dev.kiln.dist.NcclProcessGroup;
import dev.kiln.dist.ProcessGroup;
import dev.kiln.nn.models.CausalLm;
import dev.kiln.tensor.Device;
import dev.kiln.train.config.ParallelConfig;
import dev.kiln.train.config.RunConfig;

import java.io.PrintStream;

/**
 * Data parallelism for a run on a GPU: DDP whose gradient buckets are averaged over NCCL on each rank's GPU
 * ({@link DataParallel#installOverNccl}), with NCCL's unique id, losses and other host scalars over the MPI
 * bootstrap group. It applies under mpirun (parallel.backend auto or nccl; {@link DevicePlacement} gave each rank its
 * local GPU and refused what is not built on a GPU) and, with parallel.backend nccl, in a single process too: world
 * size 1, the whole NCCL path on one GPU, whose training equals the plain device run's bit for bit.
 */
final class DeviceDataParallel {
    private DeviceDataParallel() {}

    /** Whether {@code cfg} trains on a GPU with its gradients averaged over NCCL. */
    static boolean applies(RunConfig cfg) {
        if (Device.parse(cfg.train().device()).kind() == Device.Kind.CPU) return false;
        return ProcessGroup.launchedByMpirun() ? !cfg.parallel().backend().equals("mpi") : cfg.parallel().backend().equals("nccl");
    }

    static DataParallel start(RunConfig cfg, CausalLm model, PrintStream out) {
        ParallelConfig pc = cfg.parallel();
        ProcessGroup bootstrap = LocalProcessGroup.INSTANCE;
        if (ProcessGroup.launchedByMpirun()) {
            MpiProcessGroup.setTimeoutSeconds(pc.timeout_s());
            bootstrap = ParallelRun.layout(cfg).dp(); // tp = pp = 1 on a GPU (DevicePlacement refused the others): the world
        }
        int n = bootstrap.size();
        if (cfg.train().batch_size() % n != 0)
            throw new TrainingException("train.batch_size " + cfg.train().batch_size() + " must be divisible by the " + n + " data-parallel ranks");
        Device device = DevicePlacement.rankDevice(cfg);
        CudaRuntime rt = CudaRuntime.get(device.index());
        NcclProcessGroup nccl = NcclProcessGroup.create(Nccl.system(), rt, bootstrap, pc.timeout_s()); // the unique id over MPI
        DataParallel dp;
        try {
            dp = DataParallel.installOverNccl(bootstrap, nccl, model, pc.bucket_mb());
        } catch (RuntimeException e) {
            nccl.close();
            throw e;
        }
        out.printf("kiln: data parallel over NCCL (%s), %d rank(s), one GPU each, %s MiB gradient buckets averaged on the GPU; each rank trains %d of the %d rows of a batch%n",
                Nccl.system().location(), n, pc.bucket_mb(), cfg.train().batch_size() / n, cfg.train().batch_size());
        return dp;
    }
}
