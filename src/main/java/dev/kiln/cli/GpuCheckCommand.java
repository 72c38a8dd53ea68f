package dev.kiln.cli;

import dev.kiln.backend.cuda.CudaRuntime;
import dev.kiln.backend.cuda.GpuCheck;
import dev.kiln.backend.cuda.OpsCheck;
import dev.kiln.dist.NcclCheck;
import dev.kiln.tensor.Device;
import dev.kiln.train.config.ConfigException;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;

import java.util.List;
import java.util.Map;
import java.util.concurrent.Callable;

@Command(name = "gpu-check", description = "Test the CUDA runtime on this machine's GPU: libraries, copies, allocator, NVRTC, cuBLAS vs CPU GEMM, NCCL (world size 1), timings.")
final class GpuCheckCommand implements Callable<Integer> {
    @Option(names = "--device", paramLabel = "DEVICE", description = "the GPU to check: cuda or cuda:N (default cuda:0)")
    String device = "cuda:0";

    @Option(names = "--quick", description = "skip the timings (launch cost, GEMM TFLOP/s)")
    boolean quick;

    @Option(names = "--ops", description = "instead: every backend op with a CUDA kernel (fp32 and bf16, forward and backward) against the CPU backend")
    boolean ops;

    @Option(names = "--debug", description = "print stack traces of errors")
    boolean debug;

    @Override
    public Integer call() {
        Device d;
        try {
            d = Device.parse(device);
        } catch (IllegalArgumentException e) {
            throw new ConfigException("--device", null, e.getMessage());
        }
        if (d.kind() != Device.Kind.CUDA) throw new ConfigException("--device", null, "gpu-check needs a CUDA device, got " + d);
        List<String> failed = ops ? OpsCheck.run(System.out, CudaRuntime.get(d.index()))
                : GpuCheck.run(System.out, d.index(), quick, Map.of("nccl", NcclCheck::run));
        if (ops) System.out.println(failed.isEmpty() ? "every op matches the CPU backend" : "ops that differ from the CPU backend: " + failed);
        return failed.isEmpty() ? 0 : 1;
    }
}
