package dev.kiln.backend.cuda;

import java.lang.foreign.AddressLayout;
import java.lang.foreign.FunctionDescriptor;
import java.lang.foreign.Linker;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.SymbolLookup;
import java.lang.foreign.ValueLayout;
import java.lang.invoke.MethodHandle;

/** FFM plumbing shared by the CUDA bindings: layouts and symbol binding with a named failure. */
final class Native {
    static final ValueLayout.OfInt INT = ValueLayout.JAVA_INT;
    static final ValueLayout.OfLong LONG = ValueLayout.JAVA_LONG;    // size_t, CUdeviceptr, long long on x86-64 Linux
    static final ValueLayout.OfFloat FLOAT = ValueLayout.JAVA_FLOAT;
    static final ValueLayout.OfByte BYTE = ValueLayout.JAVA_BYTE;
    static final AddressLayout PTR = ValueLayout.ADDRESS;             // handles (CUcontext, CUstream …) and pointers

    private Native() {}

    /**
     * A downcall for the first of {@code names} the library exports (CUDA versions entry points, e.g.
     * {@code cuMemAlloc_v2}: the header's macro name is listed after the real symbol as a fallback).
     */
    static MethodHandle bind(SymbolLookup lib, String libName, FunctionDescriptor fd, String... names) {
        for (String n : names) {
            var sym = lib.find(n);
            if (sym.isPresent()) return Linker.nativeLinker().downcallHandle(sym.get(), fd);
        }
        throw new CudaUnavailableException(libName + " does not export " + String.join(" or ", names)
                + ": the library is too old or not the one Kiln expects (CUDA 12 or 13)");
    }

    /** The NUL-terminated C string at {@code p}, or {@code fallback} for NULL. */
    static String string(MemorySegment p, String fallback) {
        if (p == null || p.equals(MemorySegment.NULL)) return fallback;
        return p.reinterpret(Long.MAX_VALUE).getString(0);
    }

    /** Unwraps what a downcall can throw into an unchecked exception (downcalls themselves do not throw). */
    static RuntimeException rethrow(Throwable t) {
        if (t instanceof RuntimeException r) return r;
        if (t instanceof Error e) throw e;
        return new IllegalStateException(t);
    }
}
