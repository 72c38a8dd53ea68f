package dev.kiln.train;

import dev.kiln.backend.Devices;
import dev.kiln.dist.ProcessGroup;
import dev.kiln.nn.models.CausalLm;
import dev.kiln.tensor.Device;
import dev.kiln.train.config.RunConfig;

import java.util.ArrayList;
import java.util.List;

/**
 * A run on an accelerator ({@code train.device: cuda[:i]}): what runs there, checked before anything is built, and the
 * move of the model onto it. Placement follows from the parameters: the model moves once ({@code Module.to}), each
 * batch is uploaded to the model's device ({@code CausalLm.ids}), every op allocates its outputs on its inputs' device,
 * gradients and optimizer state are made like the parameters, and only scalars (loss, norms) come back to the host.
 * What has not run on a device yet is refused here in one line, naming the keys.
 */
public final class DevicePlacement {
    private DevicePlacement() {}

    /**
     * The run's device, checked: the CPU always; a GPU when present and the config uses only what runs there. Under
     * mpirun each rank takes its own GPU of its node: {@code cuda:i} (i from train.device, 0 for plain cuda) plus its
     * local rank; a node with fewer GPUs than that is one line on every rank.
     */
    public static Device of(RunConfig cfg) {
        Device device = rankDevice(cfg);
        if (device.kind() == Device.Kind.CPU) return device;
        List<String> refused = refusals(cfg);
        if (!refused.isEmpty())
            throw new TrainingException("train.device " + device + ": not on a GPU yet: " + String.join(", ", refused) + "; use train.device cpu for these");
        if (!ProcessGroup.launchedByMpirun()) {
            Devices.requireTrainable(device); // no GPU, driver or library: one line saying what was looked for
            return device;
        }
        int localRank = localEnv("OMPI_COMM_WORLD_LOCAL_RANK"), localSize = localEnv("OMPI_COMM_WORLD_LOCAL_SIZE");
        int first = device.index() - localRank, needed = first + localSize;
        String perRank = "mpirun starts " + localSize + " rank(s) on this node and each trains on its own GPU (cuda:" + first + " … cuda:"
                + (needed - 1) + " for train.device " + cfg.train().device().trim() + ")";
        try {
            Devices.requireTrainable(device);
        } catch (dev.kiln.KilnException e) {
            throw new TrainingException("local rank " + localRank + ": " + perRank + ", but " + e.getMessage());
        }
        int count = Devices.cudaDeviceCount(device);
        if (count < needed) throw new TrainingException(perRank + ", but the driver sees " + count + " GPU(s); start at most " + Math.max(0, count - first) + " ranks per node");
        return device;
    }

    /** train.device, and under mpirun on a GPU: moved up by this rank's local rank (OMPI_COMM_WORLD_LOCAL_RANK). */
    static Device rankDevice(RunConfig cfg) {
        Device device = Device.parse(cfg.train().device());
        if (device.kind() == Device.Kind.CPU || !ProcessGroup.launchedByMpirun()) return device;
        return new Device(Device.Kind.CUDA, device.index() + localEnv("OMPI_COMM_WORLD_LOCAL_RANK"));
    }

    private static int localEnv(String name) {
        String v = System.getenv(name);
        try {
            return v == null ? name.endsWith("SIZE") ? 1 : 0 : Integer.parseInt(v.trim());
        } catch (NumberFormatException e) {
            throw new TrainingException(name + "=" + v + " set by mpirun is not a number");
        }
    }

    /** What the config asks for that does not run on a device yet (empty: all of it does). */
    static List<String> refusals(RunConfig cfg) {
        var tc = cfg.train();
        List<String> out = new ArrayList<>();
        if (cfg.model().llama()) out.add("model.arch llama");
        if (tc.precision().equals("fp16")) out.add("train.precision fp16 (bf16 is)");
        if (!cfg.optim().optimizer().equals("adamw")) out.add("optim.optimizer " + cfg.optim().optimizer() + " (adamw is)");
        if (!tc.offload_params().equals("none") || !tc.offload_optimizer().equals("none")) out.add("train.offload_params/offload_optimizer");
        if (!tc.recompute().equals("none")) out.add("train.recompute " + tc.recompute());
        if (tc.layer_drop() > 0) out.add("train.layer_drop");
        if (tc.select_fraction() < 1) out.add("train.select_fraction");
        if (cfg.qat().enabled()) out.add("qat");
        if (cfg.lora().rank() > 0) out.add("lora");
        if (cfg.growth().on()) out.add("growth");
        var av = cfg.averaging();
        if (av.ema_decay() > 0 || av.swa_start() > 0 || av.lawa_k() > 0) out.add("averaging");
        if (cfg.curriculum().difficulty()) out.add("curriculum.difficulty");
        if (!cfg.faults().overflow_steps().isBlank()) out.add("faults.overflow_steps");
        // data parallelism over NCCL (under mpirun, or parallel.backend nccl at world size 1) is DDP: what else of
        // parallel: runs on a GPU is not built yet
        var pc = cfg.parallel();
        if (ProcessGroup.launchedByMpirun() || pc.backend().equals("nccl")) {
            if (pc.zero_stage() > 0) out.add("parallel.zero_stage " + pc.zero_stage() + " (data parallelism over NCCL is DDP, stage 0)");
            if (pc.tp() > 1) out.add("parallel.tp " + pc.tp());
            if (pc.pp() > 1) out.add("parallel.pp " + pc.pp());
            if (pc.checkpoint().equals("sharded")) out.add("parallel.checkpoint sharded");
        }
        if (ProcessGroup.launchedByMpirun() && pc.backend().equals("mpi"))
            out.add("parallel.backend mpi under mpirun (MPI averages host memory; auto or nccl averages the GPU's over NCCL)");
        return out;
    }

    /**
     * For evaluation and sampling ({@code kiln eval/sample --device}): {@code spec} parsed, the device opened and the
     * model moved there; a bad spec, a missing GPU or a model that does not run there is one line.
     */
    public static Device placeForInference(CausalLm model, String spec) {
        Device device;
        try {
            device = Device.parse(spec);
        } catch (IllegalArgumentException e) {
            throw new TrainingException("--device " + e.getMessage());
        }
        if (device.kind() == Device.Kind.CPU) return device;
        if (model instanceof dev.kiln.nn.models.Llama)
            throw new TrainingException("--device " + device + ": model.arch llama does not run on a GPU yet; use --device cpu");
        Devices.requireTrainable(device);
        place(model, device);
        return device;
    }

    /** Moves the model's parameters to {@code device} (nothing on the CPU). */
    public static void place(CausalLm model, Device device) {
        if (!model.device().equals(device)) model.to(device);
    }
}
