package dev.kiln.tensor;

import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.Arrays;

/**
 * An n-dimensional array in off-heap memory: a {@link Storage} block plus shape, strides and an
 * element offset (so views share memory). It holds no math; ops live in {@code dev.kiln.ops}.
 * The autograd fields ({@link #requiresGrad()}, {@link #grad()}) are metadata read by the tape.
 */
public class Tensor {
    private static final ValueLayout.OfFloat F = ValueLayout.JAVA_FLOAT;
    private static final ValueLayout.OfDouble D = ValueLayout.JAVA_DOUBLE;
    private static final ValueLayout.OfInt I = ValueLayout.JAVA_INT;
    private static final ValueLayout.OfShort S = ValueLayout.JAVA_SHORT;

    private Storage storage;   // replaced only by moveStorageTo (a Parameter moving to another device)
    private final DType dtype;
    private final int[] shape;
    private final long[] strides;
    private final long offset;
    private boolean requiresGrad;
    private boolean leaf = true;
    private Tensor grad;

    protected Tensor(Storage storage, DType dtype, int[] shape, long[] strides, long offset) {
        this.storage = storage;
        this.dtype = dtype;
        this.shape = shape;
        this.strides = strides;
        this.offset = offset;
    }

    /** Shares the memory of {@code other} (used by subclasses such as Parameter). */
    protected Tensor(Tensor other) {
        this(other.storage, other.dtype, other.shape, other.strides, other.offset);
    }

    // ---------------------------------------------------------------- creation

    /** Uninitialised contiguous tensor on the host, owned by the current {@link MemoryScope} if any. */
    public static Tensor empty(DType dtype, int... shape) {
        for (int d : shape) if (d < 0) throw new IllegalArgumentException("negative dimension in " + Shape.str(shape));
        long bytes = Shape.numel(shape) * dtype.byteSize();
        Storage s = new Storage(HostAllocator.allocate(bytes), Device.CPU);
        MemoryScope.register(s);
        return new Tensor(s, dtype, shape.clone(), Shape.contiguousStrides(shape), 0);
    }

    /**
     * A contiguous tensor over {@code storage} (e.g. device memory from a backend's allocator), owned by the
     * current {@link MemoryScope} if any.
     */
    public static Tensor wrap(Storage storage, DType dtype, int... shape) {
        for (int d : shape) if (d < 0) throw new IllegalArgumentException("negative dimension in " + Shape.str(shape));
        long bytes = Shape.numel(shape) * dtype.byteSize();
        if (bytes > storage.byteSize())
            throw new IllegalArgumentException(Shape.str(shape) + " " + dtype + " needs " + bytes + " bytes, storage has " + storage.byteSize());
        MemoryScope.register(storage);
        return new Tensor(storage, dtype, shape.clone(), Shape.contiguousStrides(shape), 0);
    }

    public static Tensor empty(int... shape) {
        return empty(DType.F32, shape);
    }

    /** Uninitialised contiguous tensor on {@code device} (the host, or an open accelerator: see {@link DeviceTensors}). */
    public static Tensor empty(Device device, DType dtype, int... shape) {
        return device.kind() == Device.Kind.CPU ? empty(dtype, shape) : DeviceTensors.of(device).empty(dtype, shape);
    }

    public static Tensor zeros(Device device, DType dtype, int... shape) {
        Tensor t = empty(device, dtype, shape);
        t.fill(0);
        return t;
    }

    public static Tensor full(double value, Device device, DType dtype, int... shape) {
        Tensor t = empty(device, dtype, shape);
        t.fill(value);
        return t;
    }

    /** F32 values on {@code device}, uploaded straight from the array (no host tensor in between). */
    public static Tensor of(Device device, float[] data, int... shape) {
        if (device.kind() == Device.Kind.CPU) return of(data, shape);
        check(data.length, shape);
        Tensor t = empty(device, DType.F32, shape);
        DeviceTensors.of(device).upload(MemorySegment.ofArray(data), t);
        return t;
    }

    /** I32 values (token ids) on {@code device}, uploaded straight from the array (no host tensor in between). */
    public static Tensor ofInts(Device device, int[] data, int... shape) {
        if (device.kind() == Device.Kind.CPU) return ofInts(data, shape);
        check(data.length, shape);
        Tensor t = empty(device, DType.I32, shape);
        DeviceTensors.of(device).upload(MemorySegment.ofArray(data), t);
        return t;
    }

    public static Tensor zeros(DType dtype, int... shape) {
        Tensor t = empty(dtype, shape);
        t.fill(0);
        return t;
    }

    public static Tensor zeros(int... shape) {
        return zeros(DType.F32, shape);
    }

    public static Tensor full(double value, DType dtype, int... shape) {
        Tensor t = empty(dtype, shape);
        t.fill(value);
        return t;
    }

    /** Zeros of t's shape and dtype on t's device. */
    public static Tensor zerosLike(Tensor t) {
        return zeros(t.device(), t.dtype, t.shape);
    }

    public static Tensor of(float[] data, int... shape) {
        check(data.length, shape);
        Tensor t = empty(DType.F32, shape);
        MemorySegment.copy(data, 0, t.segment(), F, 0, data.length);
        return t;
    }

    public static Tensor ofDoubles(double[] data, int... shape) {
        check(data.length, shape);
        Tensor t = empty(DType.F64, shape);
        MemorySegment.copy(data, 0, t.segment(), D, 0, data.length);
        return t;
    }

    public static Tensor ofInts(int[] data, int... shape) {
        check(data.length, shape);
        Tensor t = empty(DType.I32, shape);
        MemorySegment.copy(data, 0, t.segment(), I, 0, data.length);
        return t;
    }

    /** Normal(0, std) samples drawn in row-major order from {@code rng}. */
    public static Tensor randn(Rng rng, double std, DType dtype, int... shape) {
        Tensor t = empty(dtype, shape);
        long n = t.numel();
        for (long i = 0; i < n; i++) t.setFlat(i, rng.nextGaussian() * std);
        return t;
    }

    private static void check(int len, int[] shape) {
        if (Shape.numel(shape) != len)
            throw new IllegalArgumentException(len + " values do not fill shape " + Shape.str(shape));
    }

    // ---------------------------------------------------------------- metadata

    public DType dtype() {
        return dtype;
    }

    public int[] shape() {
        return shape.clone();
    }

    public int dim() {
        return shape.length;
    }

    public int size(int d) {
        return shape[Shape.dim(d, shape.length)];
    }

    public long numel() {
        return Shape.numel(shape);
    }

    public long[] strides() {
        return strides.clone();
    }

    public long stride(int d) {
        return strides[Shape.dim(d, shape.length)];
    }

    /** Offset of element 0, in elements, within the storage. */
    public long offset() {
        return offset;
    }

    public Storage storage() {
        return storage;
    }

    public Device device() {
        return storage.device();
    }

    /** The whole storage block (views index into it with {@link #offset()} and strides). */
    public MemorySegment segment() {
        return storage.segment();
    }

    public boolean isContiguous() {
        long expect = 1;
        for (int i = shape.length - 1; i >= 0; i--) {
            if (shape[i] != 1 && strides[i] != expect) return false;
            expect *= shape[i];
        }
        return true;
    }

    public boolean sameShape(Tensor o) {
        return Arrays.equals(shape, o.shape);
    }

    public String shapeString() {
        return Shape.str(shape);
    }

    // ---------------------------------------------------------------- autograd metadata

    public boolean requiresGrad() {
        return requiresGrad;
    }

    public Tensor requiresGrad(boolean on) {
        if (on && !dtype.isFloating()) throw new IllegalArgumentException("only floating tensors can require grad");
        this.requiresGrad = on;
        return this;
    }

    /** True unless produced by a recorded op. Gradients of leaves accumulate into {@link #grad()}. */
    public boolean isLeaf() {
        return leaf;
    }

    public void markNonLeaf() {
        this.leaf = false;
    }

    public Tensor grad() {
        return grad;
    }

    public void setGrad(Tensor g) {
        this.grad = g;
    }

    // ---------------------------------------------------------------- element access (slow path)

    /** Element offset in the storage of the {@code i}-th element in row-major order of this view. */
    public long storageIndex(long i) {
        if (strides.length == 0) return offset;
        long off = offset;
        for (int d = shape.length - 1; d >= 0; d--) {
            long idx = i % shape[d];
            i /= shape[d];
            off += idx * strides[d];
        }
        return off;
    }

    public double getFlat(long i) {
        return readAt(storageIndex(i));
    }

    public void setFlat(long i, double v) {
        writeAt(storageIndex(i), v);
    }

    public double get(int... index) {
        return readAt(indexOf(index));
    }

    public void set(double v, int... index) {
        writeAt(indexOf(index), v);
    }

    private long indexOf(int[] index) {
        if (index.length != shape.length) throw new IllegalArgumentException("index rank " + index.length + " != " + shape.length);
        long off = offset;
        for (int d = 0; d < index.length; d++) {
            if (index[d] < 0 || index[d] >= shape[d]) throw new IndexOutOfBoundsException("index " + Arrays.toString(index) + " out of " + shapeString());
            off += index[d] * strides[d];
        }
        return off;
    }

    /** Reads the element at storage element index {@code e} as a double, whatever the dtype. */
    public double readAt(long e) {
        MemorySegment s = segment();
        return switch (dtype) {
            case F32 -> s.getAtIndex(F, e);
            case F64 -> s.getAtIndex(D, e);
            case BF16 -> DType.bf16ToFloat(s.getAtIndex(S, e));
            case F16 -> DType.f16ToFloat(s.getAtIndex(S, e));
            case I32 -> s.getAtIndex(I, e);
            case I8 -> s.get(ValueLayout.JAVA_BYTE, e);
        };
    }

    public void writeAt(long e, double v) {
        MemorySegment s = segment();
        switch (dtype) {
            case F32 -> s.setAtIndex(F, e, (float) v);
            case F64 -> s.setAtIndex(D, e, v);
            case BF16 -> s.setAtIndex(S, e, DType.floatToBf16((float) v));
            case F16 -> s.setAtIndex(S, e, DType.floatToF16((float) v));
            case I32 -> s.setAtIndex(I, e, (int) v);
            case I8 -> s.set(ValueLayout.JAVA_BYTE, e, (byte) v);
        }
    }

    /** The single value of a one-element tensor. */
    public double item() {
        if (numel() != 1) throw new IllegalStateException("item() of a tensor with shape " + shapeString());
        if (onHost()) return getFlat(0);
        try (java.lang.foreign.Arena a = java.lang.foreign.Arena.ofConfined()) { // one scalar back, no host tensor
            MemorySegment word = a.allocate(8, 8);
            DeviceTensors.of(device()).download(this, word.asSlice(0, dtype.byteSize()));
            return switch (dtype) {
                case F32 -> word.get(F, 0);
                case F64 -> word.get(D, 0);
                case BF16 -> DType.bf16ToFloat(word.get(S, 0));
                case F16 -> DType.f16ToFloat(word.get(S, 0));
                case I32 -> word.get(I, 0);
                case I8 -> word.get(ValueLayout.JAVA_BYTE, 0);
            };
        }
    }

    private boolean onHost() {
        return storage.device().kind() == Device.Kind.CPU;
    }

    public void fill(double v) {
        if (!onHost()) {
            DeviceTensors.of(device()).fill(this, v);
            return;
        }
        if (isContiguous() && v == 0) {
            segment().asSlice(offset * dtype.byteSize(), numel() * dtype.byteSize()).fill((byte) 0);
            return;
        }
        long n = numel();
        for (long i = 0; i < n; i++) setFlat(i, v);
    }

    public float[] toFloatArray() {
        if (!onHost()) return cpu().toFloatArray();
        long n = numel();
        float[] out = new float[Math.toIntExact(n)];
        if (dtype == DType.F32 && isContiguous()) {
            MemorySegment.copy(segment(), F, offset * 4, out, 0, out.length);
        } else {
            for (int i = 0; i < out.length; i++) out[i] = (float) getFlat(i);
        }
        return out;
    }

    public double[] toDoubleArray() {
        if (!onHost()) return cpu().toDoubleArray();
        double[] out = new double[Math.toIntExact(numel())];
        for (int i = 0; i < out.length; i++) out[i] = getFlat(i);
        return out;
    }

    public int[] toIntArray() {
        if (!onHost()) return cpu().toIntArray();
        int[] out = new int[Math.toIntExact(numel())];
        for (int i = 0; i < out.length; i++) out[i] = (int) getFlat(i);
        return out;
    }

    // ---------------------------------------------------------------- views and copies (no autograd)

    /** A view with new shape; requires a contiguous tensor (use {@link #contiguous()} first). */
    public Tensor view(int... newShape) {
        int[] s = inferShape(newShape);
        if (!isContiguous()) throw new IllegalStateException("view of a non-contiguous tensor " + shapeString());
        return new Tensor(storage, dtype, s, Shape.contiguousStrides(s), offset);
    }

    private int[] inferShape(int[] newShape) {
        int[] s = newShape.clone();
        int infer = -1;
        long known = 1;
        for (int i = 0; i < s.length; i++) {
            if (s[i] == -1) {
                if (infer >= 0) throw new IllegalArgumentException("only one -1 allowed in " + Shape.str(newShape));
                infer = i;
            } else known *= s[i];
        }
        if (infer >= 0) s[infer] = (int) (numel() / Math.max(known, 1));
        if (Shape.numel(s) != numel())
            throw new IllegalArgumentException("cannot view " + shapeString() + " as " + Shape.str(newShape));
        return s;
    }

    public Tensor transposeView(int d0, int d1) {
        int a = Shape.dim(d0, shape.length), b = Shape.dim(d1, shape.length);
        int[] s = shape.clone();
        long[] st = strides.clone();
        s[a] = shape[b];
        s[b] = shape[a];
        st[a] = strides[b];
        st[b] = strides[a];
        return new Tensor(storage, dtype, s, st, offset);
    }

    public Tensor permuteView(int... order) {
        if (order.length != shape.length) throw new IllegalArgumentException("permutation " + Arrays.toString(order) + " for rank " + shape.length);
        int[] s = new int[order.length];
        long[] st = new long[order.length];
        boolean[] seen = new boolean[order.length];
        for (int i = 0; i < order.length; i++) {
            int o = Shape.dim(order[i], shape.length);
            if (seen[o]) throw new IllegalArgumentException("not a permutation: " + Arrays.toString(order));
            seen[o] = true;
            s[i] = shape[o];
            st[i] = strides[o];
        }
        return new Tensor(storage, dtype, s, st, offset);
    }

    /** Elements [start, end) along dimension {@code d}. */
    public Tensor sliceView(int d, int start, int end) {
        int dd = Shape.dim(d, shape.length);
        if (start < 0 || end > shape[dd] || start > end)
            throw new IllegalArgumentException("slice [" + start + ", " + end + ") out of dimension " + dd + " of " + shapeString());
        int[] s = shape.clone();
        s[dd] = end - start;
        return new Tensor(storage, dtype, s, strides.clone(), offset + start * strides[dd]);
    }

    /** The sub-tensor at {@code index} of dimension {@code d}, with that dimension removed. */
    public Tensor selectView(int d, int index) {
        int dd = Shape.dim(d, shape.length);
        if (index < 0 || index >= shape[dd]) throw new IndexOutOfBoundsException("index " + index + " out of dimension " + dd + " of " + shapeString());
        int[] s = new int[shape.length - 1];
        long[] st = new long[shape.length - 1];
        for (int i = 0, j = 0; i < shape.length; i++) {
            if (i == dd) continue;
            s[j] = shape[i];
            st[j++] = strides[i];
        }
        return new Tensor(storage, dtype, s, st, offset + index * strides[dd]);
    }

    /** Broadcast view (stride 0 on expanded dimensions). */
    public Tensor expandView(int... target) {
        if (target.length < shape.length) throw new IllegalArgumentException("cannot expand " + shapeString() + " to " + Shape.str(target));
        long[] st = new long[target.length];
        int lead = target.length - shape.length;
        for (int i = 0; i < target.length; i++) {
            if (i < lead) { st[i] = 0; continue; }
            int src = shape[i - lead];
            if (src == target[i]) st[i] = strides[i - lead];
            else if (src == 1) st[i] = 0;
            else throw new IllegalArgumentException("cannot expand " + shapeString() + " to " + Shape.str(target));
        }
        return new Tensor(storage, dtype, target.clone(), st, offset);
    }

    /** This tensor if contiguous, else a contiguous copy (same dtype). */
    public Tensor contiguous() {
        if (isContiguous()) return this;
        Tensor out = empty(device(), dtype, shape);
        out.copyFrom(this);
        return out;
    }

    /** Copies values (with dtype conversion) from a tensor of the same shape. */
    public void copyFrom(Tensor src) {
        if (!Arrays.equals(shape, src.shape))
            throw new IllegalArgumentException("copy from " + src.shapeString() + " into " + shapeString());
        if (!onHost()) {
            DeviceTensors.of(device()).copy(src, this);
            return;
        }
        if (!src.onHost()) {
            DeviceTensors.of(src.device()).copy(src, this);
            return;
        }
        if (dtype == src.dtype && isContiguous() && src.isContiguous()) {
            long bytes = numel() * dtype.byteSize();
            MemorySegment.copy(src.segment(), src.offset * dtype.byteSize(), segment(), offset * dtype.byteSize(), bytes);
            return;
        }
        if (dtype == DType.F32 && src.dtype == DType.F32 && shape.length > 0) {
            copyStridedF32(src);
            return;
        }
        long n = numel();
        for (long i = 0; i < n; i++) setFlat(i, src.getFlat(i));
    }

    /** Strided fp32 copy: walks the last dimension in a tight loop (transposes, slices). */
    private void copyStridedF32(Tensor src) {
        MemorySegment d = segment(), s = src.segment();
        int last = shape.length - 1;
        int inner = shape[last];
        long outer = numel() / Math.max(inner, 1);
        long ds = strides[last], ss = src.strides[last];
        int[] idx = new int[shape.length];
        for (long o = 0; o < outer; o++) {
            long db = offset, sb = src.offset;
            for (int k = 0; k < last; k++) {
                db += idx[k] * strides[k];
                sb += idx[k] * src.strides[k];
            }
            for (int j = 0; j < inner; j++) d.setAtIndex(F, db + j * ds, s.getAtIndex(F, sb + j * ss));
            for (int k = last - 1; k >= 0; k--) {
                if (++idx[k] < shape[k]) break;
                idx[k] = 0;
            }
        }
    }

    /** A contiguous copy converted to {@code target} (bf16/fp16 round to nearest even). */
    public Tensor to(DType target) {
        Tensor out = empty(device(), target, shape);
        out.copyFrom(this);
        return out;
    }

    /** A contiguous copy on {@code target} (same dtype); this tensor itself when it is there and contiguous. */
    public Tensor to(Device target) {
        if (target.equals(device())) return contiguous();
        Tensor out = empty(target, dtype, shape);
        out.copyFrom(this);
        return out;
    }

    /** This tensor on the host: itself when it is there (maybe not contiguous), else a contiguous host copy. */
    public Tensor cpu() {
        return onHost() ? this : to(Device.CPU);
    }

    /**
     * Moves this tensor's memory to {@code target} in place (PyTorch's {@code param.data = param.data.to(device)}):
     * for a contiguous tensor that owns its whole storage, such as a {@code Parameter}; the old memory is released.
     * The new memory is allocated in the caller's current memory scope and category.
     */
    protected void moveStorageTo(Device target) {
        if (target.equals(device())) return;
        if (!isContiguous() || offset != 0)
            throw new IllegalStateException("only a contiguous tensor owning its storage can move to " + target + ", not " + this);
        Tensor moved = to(target);
        Storage old = storage;
        storage = moved.storage;
        old.release();
    }

    /** A contiguous copy that does not share memory (or autograd history). */
    public Tensor copy() {
        return to(dtype);
    }

    /** Returns this tensor's memory to the allocator now (for its owner only: views die with it). */
    public void release() {
        storage.release();
    }

    @Override
    public String toString() {
        return "Tensor" + shapeString() + " " + dtype;
    }
}
