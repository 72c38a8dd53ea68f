package dev.kiln.backend.cuda;

import dev.kiln.tensor.DType;
import dev.kiln.tensor.Device;
import dev.kiln.tensor.DeviceTensors;
import dev.kiln.tensor.Tensor;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.Arrays;
import java.util.Comparator;
import java.util.stream.IntStream;

/**
 * {@link DeviceTensors} for one GPU: device tensors from the caching allocator, copies host↔device through pinned
 * staging, device↔device with cuMemcpyDtoDAsync (contiguous), the strided binary kernel (views) or the convert kernels
 * (F32↔BF16), and fills with cuMemsetD8 (zero) or a broadcast of one uploaded value. Registered by {@link CudaRuntime}
 * when the device opens, so {@code Tensor}'s own methods work on its tensors. Everything is on the compute stream,
 * in order; only downloads wait for it.
 */
final class CudaTensors implements DeviceTensors {
    private final CudaRuntime rt;

    CudaTensors(CudaRuntime rt) {
        this.rt = rt;
    }

    private CudaBackend backend() {
        return CudaBackend.of(rt.device());
    }

    private boolean here(Tensor t) {
        return t.device().equals(rt.device());
    }

    @Override
    public Tensor empty(DType dtype, int... shape) {
        return rt.empty(dtype, shape);
    }

    @Override
    public void copy(Tensor src, Tensor dst) {
        if (!dst.isContiguous() && dst.device().kind() == Device.Kind.CPU) { // any host view: a host copy, then the host's strided copy
            dst.copyFrom(src.cpu());
            return;
        }
        if (!dst.isContiguous()) { // a permuted device view (e.g. a transposed weight in Hugging Face layout): copy in its storage order
            int[] order = storageOrder(dst);
            if (order == null || !dst.permuteView(order).isContiguous())
                throw new IllegalArgumentException("copy into a strided view " + dst.shapeString() + " with strides "
                        + Arrays.toString(dst.strides()) + " on " + dst.device() + ": only contiguous or permuted destinations are supported");
            copy(src.permuteView(order), dst.permuteView(order));
            return;
        }
        if (!here(src)) {   // host → device: convert and lay out on the host, then one upload
            if (src.device().kind() != Device.Kind.CPU || !here(dst))
                throw new IllegalArgumentException("copy from " + src.device() + " to " + dst.device() + " through " + rt.device() + " is not supported");
            Tensor h = src.dtype() == dst.dtype() ? src.contiguous() : src.to(dst.dtype());
            long bytes = h.numel() * h.dtype().byteSize();
            rt.upload(h.segment().asSlice(h.offset() * h.dtype().byteSize(), bytes), dst);
            return;
        }
        if (!here(dst)) {   // device → host: lay out on the device, download, convert on the host if needed
            if (dst.device().kind() != Device.Kind.CPU)
                throw new IllegalArgumentException("copy from " + src.device() + " to " + dst.device() + " is not supported (go through the host)");
            Tensor d = src.contiguous();
            if (d.dtype() == dst.dtype()) {
                long bytes = d.numel() * d.dtype().byteSize();
                rt.download(d, dst.segment().asSlice(dst.offset() * dst.dtype().byteSize(), bytes));
            } else {
                Tensor h = Tensor.empty(d.dtype(), d.shape());
                rt.download(d, h.segment().asSlice(0, h.numel() * h.dtype().byteSize()));
                dst.copyFrom(h);
            }
            return;
        }
        // device → device
        if (src.dtype() == dst.dtype()) {
            if (src.isContiguous()) {
                rt.makeCurrent();
                long bytes = src.numel() * src.dtype().byteSize();
                if (bytes > 0) rt.driver().copyDtoDAsync(rt.address(dst), rt.address(src), bytes, rt.stream());
            } else {
                backend().copyStrided(src, dst);
            }
        } else {
            backend().convert(src.contiguous(), dst);
        }
    }

    /** The dimensions of t ordered by decreasing stride (its storage order), or null when strides tie in a way that matters. */
    private static int[] storageOrder(Tensor t) {
        long[] st = t.strides();
        int[] shape = t.shape();
        return IntStream.range(0, st.length).boxed()
                .sorted(Comparator.<Integer>comparingLong(i -> -st[i]).thenComparingInt(i -> -shape[i]))
                .mapToInt(Integer::intValue).toArray();
    }

    @Override
    public void fill(Tensor t, double value) {
        if (!t.isContiguous()) throw new IllegalArgumentException("fill of a strided view " + t.shapeString() + " on " + t.device() + " is not supported");
        if (t.numel() == 0) return;
        if (value == 0 && !(1 / value < 0)) {   // +0.0: all-zero bytes in every dtype
            rt.zero(t);
            return;
        }
        Tensor one = rt.empty(t.dtype(), 1);   // the value on the device, then broadcast by the strided copy kernel
        try (Arena a = Arena.ofConfined()) {
            MemorySegment v = a.allocate(8, 8);
            switch (t.dtype()) {
                case F32 -> v.set(ValueLayout.JAVA_FLOAT, 0, (float) value);
                case BF16 -> v.set(ValueLayout.JAVA_SHORT, 0, DType.floatToBf16((float) value));
                default -> throw new IllegalArgumentException("fill of a " + t.dtype() + " tensor on " + t.device() + " with " + value
                        + ": only F32 and BF16 have a kernel (zero fills any dtype)");
            }
            rt.upload(v.asSlice(0, t.dtype().byteSize()), one);
            backend().copyStrided(one.view().expandView(t.shape()), t);
        } finally {
            one.release();   // later work on the stream runs after the fill, so the block may be reused at once
        }
    }

    @Override
    public void upload(MemorySegment host, Tensor dst) {
        rt.upload(host, dst);
    }

    @Override
    public void download(Tensor src, MemorySegment host) {
        rt.download(src, host);
    }
}
