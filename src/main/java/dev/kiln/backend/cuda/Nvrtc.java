package dev.kiln.backend.cuda;

import java.lang.foreign.Arena;
import java.lang.foreign.FunctionDescriptor;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.SymbolLookup;
import java.lang.invoke.MethodHandle;
import java.util.List;
import java.util.Map;

import static dev.kiln.backend.cuda.Native.INT;
import static dev.kiln.backend.cuda.Native.LONG;
import static dev.kiln.backend.cuda.Native.PTR;

/**
 * NVRTC ({@code libnvrtc.so.13}) through FFM: compiles CUDA C source to a cubin (or PTX) at run time, for
 * the GPU at hand. Needs no GPU itself, so it is tested wherever the library is found. A compile error
 * becomes a {@link CudaException} whose message carries the first lines of NVRTC's log.
 */
public final class Nvrtc implements KernelCompiler {
    private static final int NVRTC_SUCCESS = 0;

    private final MethodHandle version, errorString, create, destroy, compile, logSize, log, cubinSize, cubin, ptxSize, ptx;
    private final String versionString;

    public Nvrtc(SymbolLookup lib) {
        String l = "libnvrtc";
        version = Native.bind(lib, l, FunctionDescriptor.of(INT, PTR, PTR), "nvrtcVersion");
        errorString = Native.bind(lib, l, FunctionDescriptor.of(PTR, INT), "nvrtcGetErrorString");
        // prog*, src, name, numHeaders, headers, includeNames
        create = Native.bind(lib, l, FunctionDescriptor.of(INT, PTR, PTR, PTR, INT, PTR, PTR), "nvrtcCreateProgram");
        destroy = Native.bind(lib, l, FunctionDescriptor.of(INT, PTR), "nvrtcDestroyProgram");
        compile = Native.bind(lib, l, FunctionDescriptor.of(INT, PTR, INT, PTR), "nvrtcCompileProgram");
        logSize = Native.bind(lib, l, FunctionDescriptor.of(INT, PTR, PTR), "nvrtcGetProgramLogSize");
        log = Native.bind(lib, l, FunctionDescriptor.of(INT, PTR, PTR), "nvrtcGetProgramLog");
        cubinSize = Native.bind(lib, l, FunctionDescriptor.of(INT, PTR, PTR), "nvrtcGetCUBINSize");
        cubin = Native.bind(lib, l, FunctionDescriptor.of(INT, PTR, PTR), "nvrtcGetCUBIN");
        ptxSize = Native.bind(lib, l, FunctionDescriptor.of(INT, PTR, PTR), "nvrtcGetPTXSize");
        ptx = Native.bind(lib, l, FunctionDescriptor.of(INT, PTR, PTR), "nvrtcGetPTX");
        try (Arena a = Arena.ofConfined()) {
            MemorySegment major = a.allocate(INT), minor = a.allocate(INT);
            check("nvrtcVersion", (int) version.invokeExact(major, minor));
            versionString = "nvrtc " + major.get(INT, 0) + "." + minor.get(INT, 0);
        } catch (Throwable t) {
            throw Native.rethrow(t);
        }
    }

    /** Loads NVRTC from {@link CudaLibraries}; throws {@link CudaUnavailableException} when it is not found. */
    public static Nvrtc load(CudaLibraries libs) {
        return new Nvrtc(libs.open(CudaLibraries.Library.NVRTC));
    }

    /** e.g. "nvrtc 13.0": part of the kernel cache key, since another compiler may emit other code. */
    @Override
    public String version() {
        return versionString;
    }

    private void check(String call, int rc) {
        if (rc != NVRTC_SUCCESS) throw CudaException.of(call, rc, errorName(rc), null);
    }

    private String errorName(int rc) {
        try {
            return Native.string((MemorySegment) errorString.invokeExact(rc), "nvrtcResult " + rc);
        } catch (Throwable t) {
            throw Native.rethrow(t);
        }
    }

    /** Compiles to a cubin; {@code options} must name a real architecture ({@code --gpu-architecture=sm_90}). */
    @Override
    public byte[] compile(String source, String name, Map<String, String> headers, List<String> options) {
        return build(source, name, headers, options, true);
    }

    /** Compiles to PTX (options with {@code compute_XX} or {@code sm_XX}); the text, without its trailing NUL. */
    public String compilePtx(String source, String name, Map<String, String> headers, List<String> options) {
        byte[] b = build(source, name, headers, options, false);
        int n = b.length;
        while (n > 0 && b[n - 1] == 0) n--;
        return new String(b, 0, n, java.nio.charset.StandardCharsets.UTF_8);
    }

    private byte[] build(String source, String name, Map<String, String> headers, List<String> options, boolean wantCubin) {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment progOut = a.allocate(PTR);
            int nh = headers.size();
            MemorySegment texts = a.allocate(PTR, Math.max(1, nh)), names = a.allocate(PTR, Math.max(1, nh));
            int h = 0;
            for (var e : headers.entrySet()) {
                texts.setAtIndex(PTR, h, a.allocateFrom(e.getValue()));
                names.setAtIndex(PTR, h++, a.allocateFrom(e.getKey()));
            }
            // locals, not ?: inside invokeExact: a conditional there is typed Object and breaks the exact signature
            MemorySegment headerTexts = nh == 0 ? MemorySegment.NULL : texts, includeNames = nh == 0 ? MemorySegment.NULL : names;
            check("nvrtcCreateProgram(" + name + ")", (int) create.invokeExact(progOut, a.allocateFrom(source), a.allocateFrom(name),
                    nh, headerTexts, includeNames));
            MemorySegment prog = progOut.get(PTR, 0);
            try {
                MemorySegment opts = a.allocate(PTR, Math.max(1, options.size()));
                for (int i = 0; i < options.size(); i++) opts.setAtIndex(PTR, i, a.allocateFrom(options.get(i)));
                int rc = (int) compile.invokeExact(prog, options.size(), opts);
                if (rc != NVRTC_SUCCESS)
                    throw CudaException.of("nvrtcCompileProgram(" + name + ", " + String.join(" ", options) + ")", rc, errorName(rc),
                            firstLines(programLog(a, prog), 6));
                MemorySegment size = a.allocate(LONG);
                check(wantCubin ? "nvrtcGetCUBINSize" : "nvrtcGetPTXSize",
                        wantCubin ? (int) cubinSize.invokeExact(prog, size) : (int) ptxSize.invokeExact(prog, size));
                long n = size.get(LONG, 0);
                if (wantCubin && n == 0)
                    throw new CudaException("nvrtcGetCUBIN(" + name + "): no cubin; options must name a real architecture (sm_XX), got "
                            + options, 0);
                MemorySegment out = a.allocate(Math.max(1, n));
                check(wantCubin ? "nvrtcGetCUBIN" : "nvrtcGetPTX",
                        wantCubin ? (int) cubin.invokeExact(prog, out) : (int) ptx.invokeExact(prog, out));
                return out.asSlice(0, n).toArray(Native.BYTE);
            } finally {
                MemorySegment p = a.allocate(PTR);
                p.set(PTR, 0, prog);
                int ignored = (int) destroy.invokeExact(p);   // best effort: a failing destroy must not hide the real error
            }
        } catch (Throwable t) {
            throw Native.rethrow(t);
        }
    }

    private String programLog(Arena a, MemorySegment prog) throws Throwable {
        MemorySegment size = a.allocate(LONG);
        if ((int) logSize.invokeExact(prog, size) != NVRTC_SUCCESS) return "";
        long n = size.get(LONG, 0);
        if (n <= 1) return "";
        MemorySegment buf = a.allocate(n);
        if ((int) log.invokeExact(prog, buf) != NVRTC_SUCCESS) return "";
        return buf.getString(0);
    }

    /** The log's first lines joined by " | ", so the error stays one line. */
    static String firstLines(String log, int max) {
        List<String> lines = log.lines().map(String::strip).filter(s -> !s.isEmpty()).toList();
        String head = String.join(" | ", lines.subList(0, Math.min(max, lines.size())));
        return lines.size() > max ? head + " | … (" + (lines.size() - max) + " more lines)" : head;
    }
}
