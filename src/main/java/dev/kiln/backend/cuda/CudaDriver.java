package dev.kiln.backend.cuda;

import java.lang.foreign.Arena;
import java.lang.foreign.FunctionDescriptor;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.SymbolLookup;
import java.lang.invoke.MethodHandle;

import static dev.kiln.backend.cuda.Native.FLOAT;
import static dev.kiln.backend.cuda.Native.INT;
import static dev.kiln.backend.cuda.Native.LONG;
import static dev.kiln.backend.cuda.Native.PTR;

/**
 * The CUDA driver API ({@code libcuda.so.1}) through FFM: what Kiln needs of devices, contexts, memory,
 * streams, events, modules and launches. Every call checks its CUresult and throws a one-line
 * {@link CudaException} naming the call and the error ({@code cuGetErrorName}).
 *
 * <p>Symbols are the exported names, not cuda.h's macros: cuda.h maps e.g. {@code cuMemAlloc} to
 * {@code cuMemAlloc_v2} and {@code cuEventElapsedTime} to {@code cuEventElapsedTime_v2} (CUDA 13), so those
 * are bound first (the unversioned name is a fallback for older drivers where the header did not rename).
 * Handles (CUcontext, CUstream, CUevent, CUmodule, CUfunction) are pointers, CUdeviceptr is 64-bit, CUdevice an int.
 */
public final class CudaDriver {
    /** CUresult codes Kiln reacts to (cuda.h). */
    public static final int CUDA_SUCCESS = 0, CUDA_ERROR_OUT_OF_MEMORY = 2, CUDA_ERROR_NO_DEVICE = 100;
    /** cuEventQuery's answer for work not yet done (cuda.h): not an error. */
    public static final int CUDA_ERROR_NOT_READY = 600;
    /** CUdevice_attribute values (cuda.h). */
    public static final int ATTR_MULTIPROCESSOR_COUNT = 16, ATTR_CC_MAJOR = 75, ATTR_CC_MINOR = 76;
    static final int CU_STREAM_NON_BLOCKING = 1, CU_MEMHOSTALLOC_PORTABLE = 1, CU_EVENT_DEFAULT = 0;

    private final MethodHandle getErrorName, init, driverGetVersion, deviceGetCount, deviceGet, deviceGetName, deviceGetAttribute,
            deviceTotalMem, primaryCtxRetain, ctxSetCurrent, ctxSynchronize, memGetInfo, memAlloc, memFree, memHostAlloc,
            memFreeHost, memcpyHtoDAsync, memcpyDtoHAsync, memcpyDtoDAsync, memsetD8Async, streamCreate, streamSynchronize,
            streamWaitEvent, eventCreate, eventRecord, eventSynchronize, eventElapsedTime, eventDestroy, moduleLoadData,
            moduleGetFunction, launchKernel;
    private final MethodHandle eventQuery;

    /** Binds every entry point (throws {@link CudaUnavailableException} naming a missing one). */
    public CudaDriver(SymbolLookup lib) {
        String l = "libcuda";
        getErrorName = Native.bind(lib, l, FunctionDescriptor.of(INT, INT, PTR), "cuGetErrorName");
        init = Native.bind(lib, l, FunctionDescriptor.of(INT, INT), "cuInit");
        driverGetVersion = Native.bind(lib, l, FunctionDescriptor.of(INT, PTR), "cuDriverGetVersion");
        deviceGetCount = Native.bind(lib, l, FunctionDescriptor.of(INT, PTR), "cuDeviceGetCount");
        deviceGet = Native.bind(lib, l, FunctionDescriptor.of(INT, PTR, INT), "cuDeviceGet");
        deviceGetName = Native.bind(lib, l, FunctionDescriptor.of(INT, PTR, INT, INT), "cuDeviceGetName");
        deviceGetAttribute = Native.bind(lib, l, FunctionDescriptor.of(INT, PTR, INT, INT), "cuDeviceGetAttribute");
        deviceTotalMem = Native.bind(lib, l, FunctionDescriptor.of(INT, PTR, INT), "cuDeviceTotalMem_v2", "cuDeviceTotalMem");
        primaryCtxRetain = Native.bind(lib, l, FunctionDescriptor.of(INT, PTR, INT), "cuDevicePrimaryCtxRetain");
        ctxSetCurrent = Native.bind(lib, l, FunctionDescriptor.of(INT, PTR), "cuCtxSetCurrent");
        ctxSynchronize = Native.bind(lib, l, FunctionDescriptor.of(INT), "cuCtxSynchronize");
        memGetInfo = Native.bind(lib, l, FunctionDescriptor.of(INT, PTR, PTR), "cuMemGetInfo_v2", "cuMemGetInfo");
        memAlloc = Native.bind(lib, l, FunctionDescriptor.of(INT, PTR, LONG), "cuMemAlloc_v2", "cuMemAlloc");
        memFree = Native.bind(lib, l, FunctionDescriptor.of(INT, LONG), "cuMemFree_v2", "cuMemFree");
        memHostAlloc = Native.bind(lib, l, FunctionDescriptor.of(INT, PTR, LONG, INT), "cuMemHostAlloc");
        memFreeHost = Native.bind(lib, l, FunctionDescriptor.of(INT, PTR), "cuMemFreeHost");
        memcpyHtoDAsync = Native.bind(lib, l, FunctionDescriptor.of(INT, LONG, PTR, LONG, PTR), "cuMemcpyHtoDAsync_v2", "cuMemcpyHtoDAsync");
        memcpyDtoHAsync = Native.bind(lib, l, FunctionDescriptor.of(INT, PTR, LONG, LONG, PTR), "cuMemcpyDtoHAsync_v2", "cuMemcpyDtoHAsync");
        memcpyDtoDAsync = Native.bind(lib, l, FunctionDescriptor.of(INT, LONG, LONG, LONG, PTR), "cuMemcpyDtoDAsync_v2", "cuMemcpyDtoDAsync");
        memsetD8Async = Native.bind(lib, l, FunctionDescriptor.of(INT, LONG, Native.BYTE, LONG, PTR), "cuMemsetD8Async");
        streamCreate = Native.bind(lib, l, FunctionDescriptor.of(INT, PTR, INT), "cuStreamCreate");
        streamSynchronize = Native.bind(lib, l, FunctionDescriptor.of(INT, PTR), "cuStreamSynchronize");
        streamWaitEvent = Native.bind(lib, l, FunctionDescriptor.of(INT, PTR, PTR, INT), "cuStreamWaitEvent");
        eventCreate = Native.bind(lib, l, FunctionDescriptor.of(INT, PTR, INT), "cuEventCreate");
        eventRecord = Native.bind(lib, l, FunctionDescriptor.of(INT, PTR, PTR), "cuEventRecord");
        eventSynchronize = Native.bind(lib, l, FunctionDescriptor.of(INT, PTR), "cuEventSynchronize");
        eventQuery = Native.bind(lib, l, FunctionDescriptor.of(INT, PTR), "cuEventQuery");
        eventElapsedTime = Native.bind(lib, l, FunctionDescriptor.of(INT, PTR, PTR, PTR), "cuEventElapsedTime_v2", "cuEventElapsedTime");
        eventDestroy = Native.bind(lib, l, FunctionDescriptor.of(INT, PTR), "cuEventDestroy_v2", "cuEventDestroy");
        moduleLoadData = Native.bind(lib, l, FunctionDescriptor.of(INT, PTR, PTR), "cuModuleLoadData");
        moduleGetFunction = Native.bind(lib, l, FunctionDescriptor.of(INT, PTR, PTR, PTR), "cuModuleGetFunction");
        launchKernel = Native.bind(lib, l, FunctionDescriptor.of(INT, PTR, INT, INT, INT, INT, INT, INT, INT, PTR, PTR, PTR),
                "cuLaunchKernel");
    }

    /** Throws a {@link CudaException} naming {@code call} unless {@code rc} is CUDA_SUCCESS. */
    void check(String call, int rc) {
        if (rc != CUDA_SUCCESS) throw CudaException.of(call, rc, errorName(rc), null);
    }

    /** cuGetErrorName, e.g. "CUDA_ERROR_OUT_OF_MEMORY". */
    public String errorName(int rc) {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment out = a.allocate(PTR);
            int r = (int) getErrorName.invokeExact(rc, out);
            return r == CUDA_SUCCESS ? Native.string(out.get(PTR, 0), "CUresult " + rc) : "unknown CUresult";
        } catch (Throwable t) {
            throw Native.rethrow(t);
        }
    }

    /** cuInit(0); returns the CUresult unchecked so the caller can turn "no device" into {@link CudaUnavailableException}. */
    public int init() {
        try {
            return (int) init.invokeExact(0);
        } catch (Throwable t) {
            throw Native.rethrow(t);
        }
    }

    public int driverVersion() {
        return outInt("cuDriverGetVersion", out -> (int) driverGetVersion.invokeExact(out));
    }

    public int deviceCount() {
        return outInt("cuDeviceGetCount", out -> (int) deviceGetCount.invokeExact(out));
    }

    public int device(int ordinal) {
        return outInt("cuDeviceGet", out -> (int) deviceGet.invokeExact(out, ordinal));
    }

    public String deviceName(int device) {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment buf = a.allocate(256);
            check("cuDeviceGetName", (int) deviceGetName.invokeExact(buf, 256, device));
            return buf.getString(0);
        } catch (Throwable t) {
            throw Native.rethrow(t);
        }
    }

    public int attribute(int device, int attribute) {
        return outInt("cuDeviceGetAttribute(" + attribute + ")", out -> (int) deviceGetAttribute.invokeExact(out, attribute, device));
    }

    public long totalMemory(int device) {
        return outLong("cuDeviceTotalMem_v2", out -> (int) deviceTotalMem.invokeExact(out, device));
    }

    /** Retains the device's primary context (the one the runtime API and cuBLAS use too). */
    public MemorySegment primaryContext(int device) {
        return outPtr("cuDevicePrimaryCtxRetain", out -> (int) primaryCtxRetain.invokeExact(out, device));
    }

    public void setCurrent(MemorySegment context) {
        call("cuCtxSetCurrent", () -> (int) ctxSetCurrent.invokeExact(context));
    }

    public void synchronizeContext() {
        call("cuCtxSynchronize", () -> (int) ctxSynchronize.invokeExact());
    }

    /** {free, total} bytes of the current context's device. */
    public long[] memoryInfo() {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment free = a.allocate(LONG), total = a.allocate(LONG);
            check("cuMemGetInfo_v2", (int) memGetInfo.invokeExact(free, total));
            return new long[] {free.get(LONG, 0), total.get(LONG, 0)};
        } catch (Throwable t) {
            throw Native.rethrow(t);
        }
    }

    /** cuMemAlloc_v2; returns 0 when the device is out of memory (the allocator reacts), throws on other errors. */
    public long malloc(long bytes) {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment out = a.allocate(LONG);
            int rc = (int) memAlloc.invokeExact(out, bytes);
            if (rc == CUDA_ERROR_OUT_OF_MEMORY) return 0;
            check("cuMemAlloc_v2(" + bytes + " bytes)", rc);
            return out.get(LONG, 0);
        } catch (Throwable t) {
            throw Native.rethrow(t);
        }
    }

    public void free(long devicePtr) {
        call("cuMemFree_v2", () -> (int) memFree.invokeExact(devicePtr));
    }

    /** Page-locked host memory (portable across contexts), for async copies; free with {@link #freeHost}. */
    public MemorySegment mallocHost(long bytes) {
        MemorySegment p = outPtr("cuMemHostAlloc(" + bytes + " bytes)", out -> (int) memHostAlloc.invokeExact(out, bytes, CU_MEMHOSTALLOC_PORTABLE));
        return p.reinterpret(bytes);
    }

    public void freeHost(MemorySegment pinned) {
        call("cuMemFreeHost", () -> (int) memFreeHost.invokeExact(pinned));
    }

    public void copyHtoDAsync(long dst, MemorySegment src, long bytes, MemorySegment stream) {
        call("cuMemcpyHtoDAsync_v2", () -> (int) memcpyHtoDAsync.invokeExact(dst, src, bytes, stream));
    }

    public void copyDtoHAsync(MemorySegment dst, long src, long bytes, MemorySegment stream) {
        call("cuMemcpyDtoHAsync_v2", () -> (int) memcpyDtoHAsync.invokeExact(dst, src, bytes, stream));
    }

    public void copyDtoDAsync(long dst, long src, long bytes, MemorySegment stream) {
        call("cuMemcpyDtoDAsync_v2", () -> (int) memcpyDtoDAsync.invokeExact(dst, src, bytes, stream));
    }

    public void memsetAsync(long dst, byte value, long bytes, MemorySegment stream) {
        call("cuMemsetD8Async", () -> (int) memsetD8Async.invokeExact(dst, value, bytes, stream));
    }

    /** A stream that does not synchronise with the legacy default stream. */
    public MemorySegment createStream() {
        return outPtr("cuStreamCreate", out -> (int) streamCreate.invokeExact(out, CU_STREAM_NON_BLOCKING));
    }

    public void synchronize(MemorySegment stream) {
        call("cuStreamSynchronize", () -> (int) streamSynchronize.invokeExact(stream));
    }

    public void waitEvent(MemorySegment stream, MemorySegment event) {
        call("cuStreamWaitEvent", () -> (int) streamWaitEvent.invokeExact(stream, event, 0));
    }

    public MemorySegment createEvent() {
        return outPtr("cuEventCreate", out -> (int) eventCreate.invokeExact(out, CU_EVENT_DEFAULT));
    }

    public void record(MemorySegment event, MemorySegment stream) {
        call("cuEventRecord", () -> (int) eventRecord.invokeExact(event, stream));
    }

    public void synchronizeEvent(MemorySegment event) {
        call("cuEventSynchronize", () -> (int) eventSynchronize.invokeExact(event));
    }

    /** cuEventQuery: whether the work before the event's last record has finished, without blocking (pollers bound their waits). */
    public boolean eventDone(MemorySegment event) {
        int rc;
        try {
            rc = (int) eventQuery.invokeExact(event);
        } catch (Throwable t) {
            throw Native.rethrow(t);
        }
        if (rc == CUDA_ERROR_NOT_READY) return false;
        check("cuEventQuery", rc);
        return true;
    }

    /** Milliseconds between two recorded (and completed) events. */
    public float elapsedMillis(MemorySegment start, MemorySegment end) {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment out = a.allocate(FLOAT);
            check("cuEventElapsedTime_v2", (int) eventElapsedTime.invokeExact(out, start, end));
            return out.get(FLOAT, 0);
        } catch (Throwable t) {
            throw Native.rethrow(t);
        }
    }

    public void destroyEvent(MemorySegment event) {
        call("cuEventDestroy_v2", () -> (int) eventDestroy.invokeExact(event));
    }

    /** Loads a cubin (or NUL-terminated PTX) image into the current context. */
    public MemorySegment loadModule(byte[] image) {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment img = a.allocate(image.length + 1L);   // +1: a PTX image must end in NUL
            MemorySegment.copy(image, 0, img, Native.BYTE, 0, image.length);
            return outPtr("cuModuleLoadData", out -> (int) moduleLoadData.invokeExact(out, img));
        }
    }

    public MemorySegment function(MemorySegment module, String name) {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment cname = a.allocateFrom(name);
            return outPtr("cuModuleGetFunction(" + name + ")", out -> (int) moduleGetFunction.invokeExact(out, module, cname));
        }
    }

    /**
     * cuLaunchKernel with {@code params} an array of pointers to the argument values (as CUDA wants);
     * {@code extra} is always NULL.
     */
    public void launch(MemorySegment function, int gx, int gy, int gz, int bx, int by, int bz, int sharedBytes,
                       MemorySegment stream, MemorySegment params) {
        try {
            int rc = (int) launchKernel.invokeExact(function, gx, gy, gz, bx, by, bz, sharedBytes, stream, params, MemorySegment.NULL);
            if (rc != CUDA_SUCCESS) check("cuLaunchKernel(grid " + gx + "x" + gy + "x" + gz + ", block " + bx + "x" + by + "x" + bz + ")", rc);
        } catch (Throwable t) {
            throw Native.rethrow(t);
        }
    }

    // ---- small helpers for out-parameters ----

    @FunctionalInterface
    private interface Call {
        int run() throws Throwable;
    }

    @FunctionalInterface
    private interface OutCall {
        int run(MemorySegment out) throws Throwable;
    }

    private void call(String name, Call c) {
        int rc;
        try {
            rc = c.run();
        } catch (Throwable t) {
            throw Native.rethrow(t);
        }
        check(name, rc);
    }

    private int outInt(String name, OutCall c) {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment out = a.allocate(INT);
            check(name, c.run(out));
            return out.get(INT, 0);
        } catch (Throwable t) {
            throw Native.rethrow(t);
        }
    }

    private long outLong(String name, OutCall c) {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment out = a.allocate(LONG);
            check(name, c.run(out));
            return out.get(LONG, 0);
        } catch (Throwable t) {
            throw Native.rethrow(t);
        }
    }

    private MemorySegment outPtr(String name, OutCall c) {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment out = a.allocate(PTR);
            check(name, c.run(out));
            return out.get(PTR, 0);
        } catch (Throwable t) {
            throw Native.rethrow(t);
        }
    }
}
