package dev.kiln.dist;

import dev.kiln.backend.cuda.FakeGpu;

import java.nio.file.Files;

/**
 * Run under mpirun by {@link NcclDataParallelEmulatedTest}: each process emulates its local GPU (the fake driver
 * reports 2, the process opens cuda:{@code OMPI_COMM_WORLD_LOCAL_RANK}) and uses {@link FakeNccl} in over-MPI mode
 * as libnccl, then trains as {@link DistTrainMain} does (same arguments, same result files). {@code --gpus=N}: the
 * fake driver reports N GPUs instead (a rank whose GPU is not among them installs none).
 */
public final class NcclDistTrainMain {
    public static void main(String[] args) throws Exception {
        int local = Integer.parseInt(System.getenv().getOrDefault("OMPI_COMM_WORLD_LOCAL_RANK", "0"));
        int gpus = java.util.Arrays.stream(args).filter(a -> a.startsWith("--gpus=")).mapToInt(a -> Integer.parseInt(a.substring(7))).findFirst().orElse(2);
        if (local < gpus) FakeGpu.installEmulated(Files.createTempDirectory("kiln-emu-kernels"), local, gpus);
        FakeNccl.reset();
        FakeNccl.overMpi = ProcessGroup.world();
        Nccl.useSystem(new Nccl(FakeNccl.lookup(), "fake libnccl over MPI"));
        DistTrainMain.main(args);
    }
}
