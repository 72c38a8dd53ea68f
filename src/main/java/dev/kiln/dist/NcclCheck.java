package dev.kiln.dist;

import dev.kiln.backend.cuda.CudaRuntime;
import dev.kiln.tensor.DType;
import dev.kiln.tensor.Tensor;

import java.util.Arrays;
import java.util.Map;
import java.util.SplittableRandom;
import java.util.function.Supplier;

/**
 * {@code kiln gpu-check}'s NCCL line: the whole NCCL path at world size 1 on one GPU — the library found and bound,
 * a communicator made from a fresh unique id, every collective (all-reduce fp32/bf16 with sum and avg,
 * reduce-scatter, all-gather, broadcast) enqueued on the group's stream and completed through its event, the results
 * compared with the inputs (one rank: each collective must give its input back bit for bit), and the time of a
 * 64 MiB all-reduce. Without libnccl.so.2 the check is skipped, saying where it looked.
 */
public final class NcclCheck {
    private NcclCheck() {}

    /** The check on {@code rt} with the machine's NCCL ({@link Nccl#system}). */
    public static String run(CudaRuntime rt, Map<String, Object> json) {
        return run(rt, Nccl::system, json, (1 << 20) + 3, 64 << 20);
    }

    /** The check with the given library, {@code n} elements per collective and an all-reduce of {@code timedBytes} timed. */
    static String run(CudaRuntime rt, Supplier<Nccl> library, Map<String, Object> json, int n, int timedBytes) {
        Nccl nccl;
        try {
            nccl = library.get();
        } catch (DistException e) {
            json.put("nccl", "not found");
            return "skipped: " + e.getMessage();
        }
        String version = Nccl.versionString(nccl.version());
        json.put("nccl_version", version);
        try (NcclProcessGroup g = NcclProcessGroup.single(nccl, rt, 60)) {
            float[] x = new float[n];
            SplittableRandom r = new SplittableRandom(3);
            for (int i = 0; i < n; i++) x[i] = (float) (r.nextDouble() * 2 - 1);
            Tensor host = Tensor.of(x, n);
            for (DType dt : new DType[] {DType.F32, DType.BF16}) {
                float[] expect = host.to(dt).toFloatArray();
                Tensor t = rt.toDevice(host.to(dt));
                g.allReduceAsync(t).await();
                if (!Arrays.equals(expect, rt.toHost(t).toFloatArray())) return "FAIL " + dt + " all-reduce (sum) of one rank changed values";
                g.allReduceAsync(rt.address(t), n, Nccl.DataType.of(dt), Nccl.RedOp.AVG).await();
                if (!Arrays.equals(expect, rt.toHost(t).toFloatArray())) return "FAIL " + dt + " all-reduce (avg) of one rank changed values";
            }
            Tensor send = rt.toDevice(host), recv = rt.empty(DType.F32, n), gathered = rt.empty(DType.F32, n);
            g.reduceScatterAsync(rt.address(send), rt.address(recv), new long[] {n}, Nccl.DataType.FLOAT32).await();
            if (!Arrays.equals(x, rt.toHost(recv).toFloatArray())) return "FAIL reduce-scatter of one rank: its block differs from its input";
            g.allGatherAsync(rt.address(recv), rt.address(gathered), new long[] {n}, Nccl.DataType.FLOAT32).await();
            if (!Arrays.equals(x, rt.toHost(gathered).toFloatArray())) return "FAIL all-gather of one rank differs from its input";
            g.broadcastAsync(rt.address(gathered), n, Nccl.DataType.FLOAT32, 0).await();
            if (!Arrays.equals(x, rt.toHost(gathered).toFloatArray())) return "FAIL broadcast from rank 0 changed its own buffer";
            long expectBytes = 4L * n * 5 + 2L * n * 2;   // fp32: 2 all-reduces, reduce-scatter, all-gather, broadcast; bf16: 2 all-reduces
            if (g.stats().totalBytes() != expectBytes)
                return "FAIL CommStats counted " + g.stats().totalBytes() + " bytes, expected " + expectBytes + ": " + g.stats();

            int m = timedBytes / 4;
            Tensor big = rt.empty(DType.F32, m);
            rt.zero(big);
            g.allReduceAsync(big).await();   // warm-up: NCCL sets up its buffers on the first call
            int reps = 10;
            long t0 = System.nanoTime();
            Work last = null;
            for (int i = 0; i < reps; i++) last = g.allReduceAsync(big);
            last.await();   // one stream: the last done means all are
            double ms = (System.nanoTime() - t0) / 1e6 / reps;
            json.put("nccl_allreduce_ms", Math.round(ms * 1000) / 1000.0);
            return String.format("NCCL %s (%s), world size 1 on %s: all-reduce fp32 and bf16 (sum, avg), reduce-scatter, all-gather and "
                    + "broadcast of %,d elements exact through the group's stream and events; %d MiB fp32 all-reduce %.3f ms",
                    version, nccl.location(), rt.device(), n, timedBytes >> 20, ms);
        }
    }
}
