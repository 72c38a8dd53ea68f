package dev.kiln.dist;

import dev.kiln.backend.cuda.CudaDriver;
import dev.kiln.backend.cuda.CudaRuntime;
import dev.kiln.nn.Parameter;
import dev.kiln.tensor.DType;
import dev.kiln.tensor.MemoryScope;
import dev.kiln.tensor.Tensor;

import java.util.ArrayList;
import java.util.IdentityHashMap;
import java.util.List;
import java.util.Map;

/**
 * {@link DataParallel}'s buckets on a GPU, averaged over NCCL: a bucket's gradients are copied device to device into
 * one device buffer on the compute stream (where backward made them), the buffer is all-reduced with ncclAvg on the
 * NCCL group's own stream (which first waits for the compute stream: {@link NcclProcessGroup}), and once that is done
 * the averages are copied back on the compute stream. Nothing crosses to the host. The buffers come back to a pool as
 * soon as their bucket is unpacked, as the host transport's do, so a rank holds only those of the buckets in flight.
 *
 * <p>At world size 1 ncclAvg of one rank is the buffer itself, and the copies are exact: the gradients, and so the
 * whole run, are those of the plain device run bit for bit.
 */
final class NcclBuckets implements BucketTransport {
    private final NcclProcessGroup nccl;
    private final CudaRuntime rt;
    private final CudaDriver driver;
    private final Map<Parameter, String> names = new IdentityHashMap<>();
    private final List<Tensor> free = new ArrayList<>();

    NcclBuckets(NcclProcessGroup nccl, Map<String, Parameter> params) {
        this.nccl = nccl;
        this.rt = nccl.runtime();
        this.driver = rt.driver();
        params.forEach((n, p) -> {
            if (p.dtype() != DType.F32 || !p.isContiguous())
                throw new DistException(n + ": data parallelism over NCCL needs contiguous F32 parameters, got " + p.dtype() + " " + p.shapeString());
            names.put(p, n);
        });
    }

    @Override
    public Pending allReduceMean(List<Parameter> params, long elements) {
        Tensor buf = buffer(elements);
        long base = rt.address(buf), at = 0;
        rt.makeCurrent();
        for (Parameter p : params) {
            long bytes = p.numel() * 4;
            if (p.grad() == null) driver.memsetAsync(base + at * 4, (byte) 0, bytes, rt.stream());
            else driver.copyDtoDAsync(base + at * 4, address(p.grad(), p), bytes, rt.stream());
            at += p.numel();
        }
        Work work = nccl.allReduceAsync(base, elements, Nccl.DataType.FLOAT32, Nccl.RedOp.AVG);
        return new Pending() {
            @Override
            public Work work() {
                return work;
            }

            @Override
            public void unpack() {
                rt.makeCurrent();
                long from = 0;
                for (Parameter p : params) {
                    if (p.grad() == null) p.setGrad(persistentZerosLike(p));
                    driver.copyDtoDAsync(address(p.grad(), p), base + from * 4, p.numel() * 4, rt.stream());
                    from += p.numel();
                }
                free.add(buf);
            }
        };
    }

    /** The device address of a gradient, which must be a contiguous F32 tensor on this group's GPU. */
    private long address(Tensor grad, Parameter p) {
        if (!rt.device().equals(grad.device()) || grad.dtype() != DType.F32 || !grad.isContiguous())
            throw new DistException(names.get(p) + ": data parallelism over NCCL on " + rt.device() + " needs contiguous F32 gradients there, got "
                    + grad.dtype() + " " + grad.shapeString() + " on " + grad.device());
        return rt.address(grad);
    }

    /** The smallest free buffer of at least {@code elements} floats, or a new one (outside the step's memory scope). */
    private Tensor buffer(long elements) {
        int best = -1;
        for (int i = 0; i < free.size(); i++)
            if (free.get(i).numel() >= elements && (best < 0 || free.get(i).numel() < free.get(best).numel())) best = i;
        if (best >= 0) return free.remove(best);
        if (elements > Integer.MAX_VALUE) throw new DistException("a gradient bucket of " + elements + " floats is too large; lower parallel.bucket_mb");
        try (var s = MemoryScope.persistent()) {
            return rt.empty(DType.F32, (int) elements);
        }
    }

    private static Tensor persistentZerosLike(Tensor t) {
        try (var s = MemoryScope.persistent()) {
            return Tensor.zerosLike(t);
        }
    }

    /** Waits for the calls in flight and frees the communicator and the buffers. */
    @Override
    public void close() {
        try {
            nccl.close();
        } finally {
            for (Tensor t : free) t.release();
            free.clear();
        }
    }

    /** What the NCCL group was handed, for the communication report. */
    CommStats stats() {
        return nccl.stats();
    }
}
