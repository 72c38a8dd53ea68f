package dev.kiln.backend.cuda;

import dev.kiln.tensor.DType;
import dev.kiln.tensor.Device;
import dev.kiln.tensor.DeviceTensors;
import dev.kiln.tensor.Storage;
import dev.kiln.tensor.Tensor;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

/**
 * One GPU as Kiln uses it: the driver bound through FFM, the device's primary context (shared with the
 * runtime API and cuBLAS), one compute stream on which everything is issued in order, the caching
 * allocator, cuBLAS and NVRTC (bound on first use), the kernel cache, and pinned staging for host↔device
 * copies. Opened once per device per process by {@link #get(int)}; without a driver or GPU that throws a
 * one-line {@link CudaUnavailableException} saying what was looked for.
 *
 * <p>Threads: a CUDA context is current per thread; every entry point makes it current on the calling
 * thread first (cheap after the first time on that thread).
 */
public final class CudaRuntime implements DeviceMemory {
    private static final Map<Integer, CudaRuntime> OPEN = new HashMap<>();

    private final CudaLibraries libs;
    private final CudaDriver driver;
    private final Device device;
    private final int cuDevice;
    private final MemorySegment context, stream;
    private final String name;
    private final int ccMajor, ccMinor, multiprocessors;
    private final long totalMemory;
    private final CudaAllocator allocator;
    private final PinnedStaging staging;
    private final ThreadLocal<Boolean> current = ThreadLocal.withInitial(() -> false);
    private Cublas cublas;
    private MemorySegment cublasHandle;
    private KernelCache kernels;
    private final Map<String, MemorySegment> modules = new HashMap<>();

    /** The runtime of GPU {@code index}, opened on first use with the machine's libraries. */
    public static synchronized CudaRuntime get(int index) {
        CudaRuntime rt = OPEN.get(index);
        if (rt == null) {
            rt = open(CudaLibraries.system(), index);
            OPEN.put(index, rt);
            DeviceTensors.register(rt.device, new CudaTensors(rt));
        }
        return rt;
    }

    /**
     * Makes {@code rt} the runtime of GPU {@code index} for this process ({@code null} forgets it), so that
     * {@link #get} and the backend use it: for tests, which run the backend on a fake driver with emulated kernels.
     */
    static synchronized void install(int index, CudaRuntime rt) {
        if (rt == null) OPEN.remove(index);
        else OPEN.put(index, rt);
        DeviceTensors.register(new Device(Device.Kind.CUDA, index), rt == null ? null : new CudaTensors(rt));
    }

    /** Opens GPU {@code index}: driver, cuInit, primary context, a non-blocking compute stream. */
    public static CudaRuntime open(CudaLibraries libs, int index) {
        return open(new CudaDriver(libs.open(CudaLibraries.Library.DRIVER)), libs, index);
    }

    /** Opens GPU {@code index} through an already bound driver (a fake one in tests). */
    static CudaRuntime open(CudaDriver driver, CudaLibraries libs, int index) {
        int rc = driver.init();
        if (rc != CudaDriver.CUDA_SUCCESS)
            throw new CudaUnavailableException("CUDA is not available: cuInit failed with " + driver.errorName(rc) + " (" + rc + ")"
                    + (rc == CudaDriver.CUDA_ERROR_NO_DEVICE ? ": the driver is installed but sees no GPU" : "")
                    + "; train on the CPU with --device cpu");
        int count = driver.deviceCount();
        if (index < 0 || index >= count)
            throw new CudaUnavailableException("cuda:" + index + " requested but the driver sees " + count + " GPU(s) (cuda:0 … cuda:" + (count - 1) + ")");
        return new CudaRuntime(libs, driver, index);
    }

    private CudaRuntime(CudaLibraries libs, CudaDriver driver, int index) {
        this.libs = libs;
        this.driver = driver;
        this.device = new Device(Device.Kind.CUDA, index);
        this.cuDevice = driver.device(index);
        this.context = driver.primaryContext(cuDevice);
        driver.setCurrent(context);
        current.set(true);
        this.stream = driver.createStream();
        this.name = driver.deviceName(cuDevice);
        this.ccMajor = driver.attribute(cuDevice, CudaDriver.ATTR_CC_MAJOR);
        this.ccMinor = driver.attribute(cuDevice, CudaDriver.ATTR_CC_MINOR);
        this.multiprocessors = driver.attribute(cuDevice, CudaDriver.ATTR_MULTIPROCESSOR_COUNT);
        this.totalMemory = driver.totalMemory(cuDevice);
        this.allocator = new CudaAllocator(this, device + " (" + name + ")");
        this.staging = new PinnedStaging(driver);
    }

    /** Makes this device's context current on the calling thread. */
    public void makeCurrent() {
        if (!current.get()) {
            driver.setCurrent(context);
            current.set(true);
        }
    }

    // ---- DeviceMemory, for the allocator ----

    @Override
    public long allocate(long bytes) {
        makeCurrent();
        return driver.malloc(bytes);
    }

    @Override
    public void free(long address) {
        makeCurrent();
        driver.free(address);
    }

    @Override
    public long[] memoryInfo() {
        makeCurrent();
        return driver.memoryInfo();
    }

    // ---- tensors ----

    /** An uninitialised contiguous tensor in this GPU's memory (from the caching allocator). */
    public Tensor empty(DType dtype, int... shape) {
        long bytes = 1;
        for (int d : shape) bytes *= d;
        bytes *= dtype.byteSize();
        return Tensor.wrap(Storage.onDevice(allocator.allocate(bytes), device), dtype, shape);
    }

    /** A copy of a host tensor on this GPU (same dtype), through pinned staging, asynchronous on the compute stream. */
    public Tensor toDevice(Tensor host) {
        if (host.device().kind() != Device.Kind.CPU) throw new IllegalArgumentException("toDevice of a tensor already on " + host.device());
        Tensor src = host.contiguous();
        Tensor dst = empty(src.dtype(), src.shape());
        makeCurrent();
        long bytes = src.numel() * src.dtype().byteSize();
        staging.hostToDevice(src.segment().asSlice(src.offset() * src.dtype().byteSize(), bytes), address(dst), stream);
        return dst;
    }

    /** Enqueues the upload of {@code host}'s bytes into the contiguous device tensor {@code dst} (through pinned staging). */
    public void upload(MemorySegment host, Tensor dst) {
        checkOwn(dst, "upload");
        if (!dst.isContiguous()) throw new IllegalArgumentException("upload into a non-contiguous device tensor " + dst.shapeString());
        long bytes = dst.numel() * dst.dtype().byteSize();
        if (host.byteSize() != bytes)
            throw new IllegalArgumentException("upload of " + host.byteSize() + " bytes into " + dst + " of " + bytes + " bytes");
        makeCurrent();
        staging.hostToDevice(host, address(dst), stream);
    }

    /** Copies the contiguous device tensor {@code src} into {@code host} (its byte size, at most the tensor's); waits for the copy. */
    public void download(Tensor src, MemorySegment host) {
        checkOwn(src, "download");
        if (!src.isContiguous()) throw new IllegalArgumentException("download of a non-contiguous device tensor " + src.shapeString());
        if (host.byteSize() > src.numel() * src.dtype().byteSize())
            throw new IllegalArgumentException("download of " + host.byteSize() + " bytes from " + src);
        makeCurrent();
        staging.deviceToHost(address(src), host, stream);
    }

    /** The first I32 of a device tensor, read back without a host tensor (waits for the stream). */
    int readInt(Tensor src) {
        int[] one = new int[1];
        download(src, MemorySegment.ofArray(one));
        return one[0];
    }

    /** The first F32 of a device tensor, read back without a host tensor (waits for the stream). */
    float readFloat(Tensor src) {
        float[] one = new float[1];
        download(src, MemorySegment.ofArray(one));
        return one[0];
    }

    /** A host copy of a contiguous device tensor; waits for the compute stream up to the copy. */
    public Tensor toHost(Tensor dev) {
        checkOwn(dev, "toHost");
        if (!dev.isContiguous()) throw new IllegalArgumentException("toHost of a non-contiguous device tensor " + dev.shapeString());
        Tensor dst = Tensor.empty(dev.dtype(), dev.shape());
        makeCurrent();
        long bytes = dev.numel() * dev.dtype().byteSize();
        staging.deviceToHost(address(dev), dst.segment().asSlice(0, bytes), stream);
        return dst;
    }

    /** Sets every byte of a contiguous device tensor to zero, on the compute stream. */
    public void zero(Tensor dev) {
        checkOwn(dev, "zero");
        makeCurrent();
        driver.memsetAsync(address(dev), (byte) 0, dev.numel() * dev.dtype().byteSize(), stream);
    }

    /** Device address of element 0 of the tensor's view. */
    public long address(Tensor t) {
        checkOwn(t, "address");
        return t.storage().deviceBlock().address() + t.offset() * t.dtype().byteSize();
    }

    private void checkOwn(Tensor t, String what) {
        if (!t.device().equals(device)) throw new IllegalArgumentException(what + ": tensor on " + t.device() + ", runtime of " + device);
    }

    /** Waits until all work issued so far on the compute stream has finished. */
    public void synchronize() {
        makeCurrent();
        driver.synchronize(stream);
    }

    // ---- libraries on first use ----

    /** cuBLAS with a handle on the compute stream (TF32 off: fp32 GEMMs are exact fp32 unless asked). */
    public synchronized Cublas cublas() {
        if (cublas == null) bindCublas(libs.open(CudaLibraries.Library.CUBLAS));
        return cublas;
    }

    /** Binds cuBLAS from {@code lib} (a fake one in tests) with a handle on the compute stream. */
    synchronized void bindCublas(java.lang.foreign.SymbolLookup lib) {
        makeCurrent();
        Cublas c = new Cublas(lib);
        cublasHandle = c.createHandle(stream);
        c.setTf32(cublasHandle, false);
        cublas = c;
    }

    public synchronized MemorySegment cublasHandle() {
        cublas();
        return cublasHandle;
    }

    /** The NVRTC-backed cache of compiled kernels ({@link KernelCache#defaultDir}). */
    public synchronized KernelCache kernels() {
        if (kernels == null) kernels = new KernelCache(KernelCache.defaultDir(System.getenv()), Nvrtc.load(libs));
        return kernels;
    }

    /** Uses {@code cache} for kernels (tests: a temporary folder and a chosen compiler). */
    synchronized void useKernelCache(KernelCache cache) {
        kernels = cache;
    }

    /**
     * A kernel function of {@code source} with its {@code headers} (compiled for this GPU, cached on disk, its module
     * loaded once per process).
     */
    public synchronized MemorySegment function(String source, String sourceName, Map<String, String> headers, String kernelName) {
        makeCurrent();
        List<String> options = KernelCache.options(ccMajor, ccMinor, List.of());
        String key = kernels().key(source, headers, options);
        MemorySegment module = modules.get(key);
        if (module == null) {
            module = driver.loadModule(kernels().cubin(source, sourceName, headers, options));
            modules.put(key, module);
        }
        return driver.function(module, kernelName);
    }

    /**
     * Launches {@code function} on the compute stream; {@code args} are the kernel's parameters in order,
     * each a Long (a pointer or 64-bit integer), Integer or Float.
     */
    public void launch(MemorySegment function, int gridX, int gridY, int blockX, int sharedBytes, Object... args) {
        makeCurrent();
        try (Arena a = Arena.ofConfined()) {
            MemorySegment params = a.allocate(Native.PTR, Math.max(1, args.length));
            for (int i = 0; i < args.length; i++) {
                MemorySegment v = switch (args[i]) {
                    case Long l -> a.allocateFrom(Native.LONG, l);
                    case Integer n -> a.allocateFrom(Native.INT, n);
                    case Float f -> a.allocateFrom(Native.FLOAT, f);
                    default -> throw new IllegalArgumentException("kernel argument " + i + " of type " + args[i].getClass().getSimpleName());
                };
                params.setAtIndex(Native.PTR, i, v);
            }
            driver.launch(function, gridX, gridY, 1, blockX, 1, 1, sharedBytes, stream, params);
        }
    }

    // ---- facts ----

    public CudaDriver driver() {
        return driver;
    }

    public MemorySegment stream() {
        return stream;
    }

    public Device device() {
        return device;
    }

    public String name() {
        return name;
    }

    public int computeCapabilityMajor() {
        return ccMajor;
    }

    public int computeCapabilityMinor() {
        return ccMinor;
    }

    public int multiprocessors() {
        return multiprocessors;
    }

    public long totalMemory() {
        return totalMemory;
    }

    public CudaAllocator allocator() {
        return allocator;
    }

    public CudaLibraries libraries() {
        return libs;
    }

    @Override
    public String toString() {
        return String.format("%s: %s, compute capability %d.%d, %d SMs, %s", device, name, ccMajor, ccMinor, multiprocessors,
                CudaAllocator.size(totalMemory));
    }
}
