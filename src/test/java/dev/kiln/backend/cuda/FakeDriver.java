package dev.kiln.backend.cuda;

import java.lang.foreign.Arena;
import java.lang.foreign.FunctionDescriptor;
import java.lang.foreign.Linker;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.SymbolLookup;
import java.lang.invoke.MethodHandle;
import java.lang.invoke.MethodHandles;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Optional;

import static dev.kiln.backend.cuda.Native.FLOAT;
import static dev.kiln.backend.cuda.Native.INT;
import static dev.kiln.backend.cuda.Native.LONG;
import static dev.kiln.backend.cuda.Native.PTR;

/**
 * A libcuda stand-in made of FFM upcalls, so {@link CudaDriver}'s downcalls (symbol names, argument types,
 * out-parameters) and {@link CudaRuntime}'s wiring run end to end on a machine without a GPU. "Device memory" is
 * host memory, so copies move real bytes; kernels are not run, their launches are recorded. Signatures are written
 * here from cuda.h, independently of CudaDriver's, so a mismatch fails the tests. One instance at a time (static
 * state, as a C library has).
 */
final class FakeDriver {
    static int initResult = 0;
    static int failCopiesWith = 0;                 // a CUresult the next async copy returns (0 = succeed)
    static long capacity = 1L << 30, used;
    /** How many GPUs the fake driver reports (ordinals 0 … devices−1, CUdevice 40 + ordinal). */
    static int devices = 1;
    static final Map<Long, Long> live = new HashMap<>();
    static final List<String> calls = java.util.Collections.synchronizedList(new ArrayList<>());   // ranks' threads call too (NCCL fakes)
    static final List<Object[]> launches = new ArrayList<>();
    static final Arena ARENA = Arena.global();
    static int memAllocs;
    static final Map<Long, String> functions = new HashMap<>();   // function handle → kernel name
    /** When set, the fake device runs launches of catalog kernels on this host build of them (see {@link EmulatedDevice}). */
    static KernelEmulator emulator;
    static String lastLaunchError;
    /** What cuEventQuery answers (0 = done; 600 = CUDA_ERROR_NOT_READY, for work that never finishes). */
    static int eventQueryResult;

    private static final Map<String, MemorySegment> ERROR_NAMES = new HashMap<>();

    static void reset() {
        initResult = 0;
        failCopiesWith = 0;
        capacity = 1L << 30;
        devices = 1;
        used = 0;
        live.clear();
        calls.clear();
        launches.clear();
        memAllocs = 0;
        functions.clear();
        emulator = null;
        lastLaunchError = null;
        eventQueryResult = 0;
    }

    /** The fake library: every symbol CudaDriver binds, as upcall stubs. */
    static SymbolLookup lookup() {
        Map<String, FunctionDescriptor> sigs = new HashMap<>();
        sigs.put("cuGetErrorName", FunctionDescriptor.of(INT, INT, PTR));
        sigs.put("cuInit", FunctionDescriptor.of(INT, INT));
        sigs.put("cuDriverGetVersion", FunctionDescriptor.of(INT, PTR));
        sigs.put("cuDeviceGetCount", FunctionDescriptor.of(INT, PTR));
        sigs.put("cuDeviceGet", FunctionDescriptor.of(INT, PTR, INT));
        sigs.put("cuDeviceGetName", FunctionDescriptor.of(INT, PTR, INT, INT));
        sigs.put("cuDeviceGetAttribute", FunctionDescriptor.of(INT, PTR, INT, INT));
        sigs.put("cuDeviceTotalMem_v2", FunctionDescriptor.of(INT, PTR, INT));
        sigs.put("cuDevicePrimaryCtxRetain", FunctionDescriptor.of(INT, PTR, INT));
        sigs.put("cuCtxSetCurrent", FunctionDescriptor.of(INT, PTR));
        sigs.put("cuCtxSynchronize", FunctionDescriptor.of(INT));
        sigs.put("cuMemGetInfo_v2", FunctionDescriptor.of(INT, PTR, PTR));
        sigs.put("cuMemAlloc_v2", FunctionDescriptor.of(INT, PTR, LONG));
        sigs.put("cuMemFree_v2", FunctionDescriptor.of(INT, LONG));
        sigs.put("cuMemHostAlloc", FunctionDescriptor.of(INT, PTR, LONG, INT));
        sigs.put("cuMemFreeHost", FunctionDescriptor.of(INT, PTR));
        sigs.put("cuMemcpyHtoDAsync_v2", FunctionDescriptor.of(INT, LONG, PTR, LONG, PTR));
        sigs.put("cuMemcpyDtoHAsync_v2", FunctionDescriptor.of(INT, PTR, LONG, LONG, PTR));
        sigs.put("cuMemcpyDtoDAsync_v2", FunctionDescriptor.of(INT, LONG, LONG, LONG, PTR));
        sigs.put("cuMemsetD8Async", FunctionDescriptor.of(INT, LONG, Native.BYTE, LONG, PTR));
        sigs.put("cuStreamCreate", FunctionDescriptor.of(INT, PTR, INT));
        sigs.put("cuStreamSynchronize", FunctionDescriptor.of(INT, PTR));
        sigs.put("cuStreamWaitEvent", FunctionDescriptor.of(INT, PTR, PTR, INT));
        sigs.put("cuEventCreate", FunctionDescriptor.of(INT, PTR, INT));
        sigs.put("cuEventRecord", FunctionDescriptor.of(INT, PTR, PTR));
        sigs.put("cuEventSynchronize", FunctionDescriptor.of(INT, PTR));
        sigs.put("cuEventQuery", FunctionDescriptor.of(INT, PTR));
        sigs.put("cuEventElapsedTime_v2", FunctionDescriptor.of(INT, PTR, PTR, PTR));
        sigs.put("cuEventDestroy_v2", FunctionDescriptor.of(INT, PTR));
        sigs.put("cuModuleLoadData", FunctionDescriptor.of(INT, PTR, PTR));
        sigs.put("cuModuleGetFunction", FunctionDescriptor.of(INT, PTR, PTR, PTR));
        sigs.put("cuLaunchKernel", FunctionDescriptor.of(INT, PTR, INT, INT, INT, INT, INT, INT, INT, PTR, PTR, PTR));
        Map<String, MemorySegment> stubs = new HashMap<>();
        MethodHandles.Lookup l = MethodHandles.lookup();
        for (var e : sigs.entrySet()) {
            try {
                MethodHandle target = l.findStatic(FakeDriver.class, e.getKey(), e.getValue().toMethodType());
                stubs.put(e.getKey(), Linker.nativeLinker().upcallStub(target, e.getValue(), ARENA));
            } catch (ReflectiveOperationException ex) {
                throw new AssertionError("fake driver lacks " + e.getKey(), ex);
            }
        }
        return name -> Optional.ofNullable(stubs.get(name));
    }

    private static MemorySegment out(MemorySegment p, long bytes) {
        return p.reinterpret(bytes);
    }

    private static long handle(String what) {
        return ARENA.allocate(8).address();   // a distinct non-null pointer per handle
    }

    static int cuGetErrorName(int rc, MemorySegment pStr) {
        String name = switch (rc) {
            case 1 -> "CUDA_ERROR_INVALID_VALUE";
            case 2 -> "CUDA_ERROR_OUT_OF_MEMORY";
            case 100 -> "CUDA_ERROR_NO_DEVICE";
            default -> null;
        };
        if (name == null) return 1;
        out(pStr, 8).set(PTR, 0, ERROR_NAMES.computeIfAbsent(name, ARENA::allocateFrom));
        return 0;
    }

    static int cuInit(int flags) {
        calls.add("cuInit(" + flags + ")");
        return initResult;
    }

    static int cuDriverGetVersion(MemorySegment v) {
        out(v, 4).set(INT, 0, 13000);
        return 0;
    }

    static int cuDeviceGetCount(MemorySegment n) {
        out(n, 4).set(INT, 0, devices);
        return 0;
    }

    static int cuDeviceGet(MemorySegment dev, int ordinal) {
        out(dev, 4).set(INT, 0, 40 + ordinal);   // a CUdevice need not equal the ordinal
        return 0;
    }

    static int cuDeviceGetName(MemorySegment buf, int len, int dev) {
        if (dev < 40 || dev >= 40 + devices) return 1;
        out(buf, len).setString(0, "Fake GPU");
        return 0;
    }

    static int cuDeviceGetAttribute(MemorySegment v, int attr, int dev) {
        int value = switch (attr) {
            case 75 -> 9;
            case 76 -> 0;
            case 16 -> 132;
            default -> -1;
        };
        if (value < 0 || dev < 40 || dev >= 40 + devices) return 1;
        out(v, 4).set(INT, 0, value);
        return 0;
    }

    static int cuDeviceTotalMem_v2(MemorySegment bytes, int dev) {
        out(bytes, 8).set(LONG, 0, capacity);
        return 0;
    }

    static int cuDevicePrimaryCtxRetain(MemorySegment ctx, int dev) {
        out(ctx, 8).set(PTR, 0, MemorySegment.ofAddress(handle("ctx")));
        return 0;
    }

    static int cuCtxSetCurrent(MemorySegment ctx) {
        calls.add("cuCtxSetCurrent");
        return ctx.address() == 0 ? 1 : 0;
    }

    static int cuCtxSynchronize() {
        return 0;
    }

    static int cuMemGetInfo_v2(MemorySegment free, MemorySegment total) {
        out(free, 8).set(LONG, 0, capacity - used);
        out(total, 8).set(LONG, 0, capacity);
        return 0;
    }

    static int cuMemAlloc_v2(MemorySegment dptr, long bytes) {
        if (used + bytes > capacity) return 2;
        long a = ARENA.allocate(bytes, 256).address();
        live.put(a, bytes);
        used += bytes;
        memAllocs++;
        out(dptr, 8).set(LONG, 0, a);
        return 0;
    }

    static int cuMemFree_v2(long dptr) {
        Long b = live.remove(dptr);
        if (b == null) return 1;
        used -= b;
        return 0;
    }

    static int cuMemHostAlloc(MemorySegment pp, long bytes, int flags) {
        calls.add("cuMemHostAlloc(" + bytes + ", " + flags + ")");
        out(pp, 8).set(PTR, 0, ARENA.allocate(bytes, 4096));
        return 0;
    }

    static int cuMemFreeHost(MemorySegment p) {
        calls.add("cuMemFreeHost");
        return 0;
    }

    private static MemorySegment device(long address, long bytes) {
        for (var e : live.entrySet())
            if (address >= e.getKey() && address + bytes <= e.getKey() + e.getValue()) return MemorySegment.ofAddress(address).reinterpret(bytes);
        throw new AssertionError("access outside device memory at 0x" + Long.toHexString(address) + " (" + bytes + " bytes)");
    }

    private static int copyResult() {
        int rc = failCopiesWith;
        failCopiesWith = 0;
        return rc;
    }

    static int cuMemcpyHtoDAsync_v2(long dst, MemorySegment src, long bytes, MemorySegment stream) {
        int rc = copyResult();
        if (rc != 0) return rc;
        calls.add("HtoD(" + bytes + ")");
        MemorySegment.copy(src.reinterpret(bytes), 0, device(dst, bytes), 0, bytes);
        return stream.address() == 0 ? 1 : 0;
    }

    static int cuMemcpyDtoHAsync_v2(MemorySegment dst, long src, long bytes, MemorySegment stream) {
        int rc = copyResult();
        if (rc != 0) return rc;
        calls.add("DtoH(" + bytes + ")");
        MemorySegment.copy(device(src, bytes), 0, dst.reinterpret(bytes), 0, bytes);
        return stream.address() == 0 ? 1 : 0;
    }

    static int cuMemcpyDtoDAsync_v2(long dst, long src, long bytes, MemorySegment stream) {
        MemorySegment.copy(device(src, bytes), 0, device(dst, bytes), 0, bytes);
        return 0;
    }

    static int cuMemsetD8Async(long dst, byte value, long n, MemorySegment stream) {
        device(dst, n).fill(value);
        return 0;
    }

    static int cuStreamCreate(MemorySegment s, int flags) {
        calls.add("cuStreamCreate(" + flags + ")");
        out(s, 8).set(PTR, 0, MemorySegment.ofAddress(handle("stream")));
        return 0;
    }

    static int cuStreamSynchronize(MemorySegment s) {
        calls.add("cuStreamSynchronize");
        return 0;
    }

    static int cuStreamWaitEvent(MemorySegment s, MemorySegment e, int flags) {
        calls.add("cuStreamWaitEvent(stream 0x" + Long.toHexString(s.address()) + ")");
        return s.address() == 0 || e.address() == 0 ? 1 : 0;
    }

    static int cuEventCreate(MemorySegment e, int flags) {
        out(e, 8).set(PTR, 0, MemorySegment.ofAddress(handle("event")));
        return 0;
    }

    static int cuEventRecord(MemorySegment e, MemorySegment s) {
        calls.add("cuEventRecord(stream 0x" + Long.toHexString(s.address()) + ")");
        return 0;
    }

    static int cuEventSynchronize(MemorySegment e) {
        calls.add("cuEventSynchronize");
        return 0;
    }

    static int cuEventQuery(MemorySegment e) {
        calls.add("cuEventQuery");
        return e.address() == 0 ? 1 : eventQueryResult;
    }

    static int cuEventElapsedTime_v2(MemorySegment ms, MemorySegment a, MemorySegment b) {
        out(ms, 4).set(FLOAT, 0, 1.5f);
        return 0;
    }

    static int cuEventDestroy_v2(MemorySegment e) {
        return 0;
    }

    static int cuModuleLoadData(MemorySegment module, MemorySegment image) {
        calls.add("cuModuleLoadData(" + image.reinterpret(16).getString(0) + ")");
        out(module, 8).set(PTR, 0, MemorySegment.ofAddress(handle("module")));
        return 0;
    }

    static int cuModuleGetFunction(MemorySegment f, MemorySegment module, MemorySegment name) {
        String n = name.reinterpret(256).getString(0);
        calls.add("cuModuleGetFunction(" + n + ")");
        long h = handle(n);
        functions.put(h, n);
        out(f, 8).set(PTR, 0, MemorySegment.ofAddress(h));
        return 0;
    }

    static int cuLaunchKernel(MemorySegment f, int gx, int gy, int gz, int bx, int by, int bz, int shared, MemorySegment stream,
                              MemorySegment params, MemorySegment extra) {
        String kernel = functions.getOrDefault(f.address(), "?");
        if (kernel.equals("empty_kernel")) return 0;
        if (emulator != null && !kernel.equals("saxpy")) {
            // the emulated kernels take the same kernelParams; "device memory" is host memory, so pointers pass through
            lastLaunchError = emulator.launchPacked(kernel, gx, gy, gz, bx, by, bz, shared, params);
            return lastLaunchError == null ? 0 : 1;
        }
        if (!kernel.equals("saxpy")) return 1;
        launches.add(new Object[] {gx, gy, gz, bx, by, bz, shared, params.address(), extra.address()});
        // saxpy(float a, const float* x, float* y, int n): read the values through the params array now
        MemorySegment p = params.reinterpret(8 * 4);
        float a = p.get(PTR, 0).reinterpret(4).get(FLOAT, 0);
        long x = p.get(PTR, 8).reinterpret(8).get(LONG, 0), y = p.get(PTR, 16).reinterpret(8).get(LONG, 0);
        int n = p.get(PTR, 24).reinterpret(4).get(INT, 0);
        launches.add(new Object[] {a, x, y, n});
        if (x < 0x10000) return 0;   // symbolic pointers of the marshalling test: nothing to run
        // run it, as the GPU would, with the FMA NVRTC contracts a*x+y to
        if ((long) gx * bx < n) return 1;
        MemorySegment xs = device(x, 4L * n), ys = device(y, 4L * n);
        for (int i = 0; i < n; i++)
            ys.setAtIndex(FLOAT, i, Math.fma(a, xs.getAtIndex(FLOAT, i), ys.getAtIndex(FLOAT, i)));
        return 0;
    }
}
