package dev.kiln.backend.cuda;

import dev.kiln.backend.cuda.Kernels.Kernel;
import dev.kiln.backend.cuda.Kernels.Launch;
import org.junit.jupiter.api.Assumptions;

import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.FunctionDescriptor;
import java.lang.foreign.Linker;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.SymbolLookup;
import java.lang.foreign.ValueLayout;
import java.lang.invoke.MethodHandle;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.MessageDigest;
import java.util.ArrayList;
import java.util.HexFormat;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.TimeUnit;

/**
 * Builds every kernel source of the {@link Kernels} catalog for the host with g++ and Kiln's
 * emulation header (kiln_emu.h), into target/kiln-emu/&lt;content hash&gt;/libkilnemu.so, and launches
 * kernels by name through FFM with the same packed arguments cuLaunchKernel takes. The generated
 * launcher of each kernel static_asserts that the C signature matches the catalog's, so a catalog
 * that disagrees with a source fails the build. Tests skip (with a message) where g++ is missing.
 */
final class KernelEmulator {
    static final List<String> FLAGS = List.of("-std=c++17", "-O2", "-shared", "-fPIC", "-pthread", "-Wall", "-Werror");
    private static KernelEmulator instance;
    private static String unavailable;

    private final Linker linker = Linker.nativeLinker();
    private final SymbolLookup lib;
    private final MethodHandle lastError;
    private final Map<String, MethodHandle> launchers = new ConcurrentHashMap<>();
    private final Map<String, Kernel> kernels = new java.util.LinkedHashMap<>();
    private static final FunctionDescriptor LAUNCH = FunctionDescriptor.of(ValueLayout.JAVA_INT,
            ValueLayout.JAVA_INT, ValueLayout.JAVA_INT, ValueLayout.JAVA_INT, ValueLayout.JAVA_INT, ValueLayout.JAVA_INT,
            ValueLayout.JAVA_INT, ValueLayout.JAVA_INT, ValueLayout.ADDRESS);

    private KernelEmulator(Path so, List<Kernel> kernels) {
        for (Kernel k : kernels) this.kernels.put(k.name(), k);
        lib = SymbolLookup.libraryLookup(so, Arena.global());
        lastError = linker.downcallHandle(lib.findOrThrow("kiln_emu_last_error"), FunctionDescriptor.of(ValueLayout.ADDRESS));
    }

    /** The emulator, built on first use; aborts the calling test (skip) when g++ is absent. */
    static synchronized KernelEmulator get() {
        if (instance == null && unavailable == null) {
            try {
                Map<String, String> files = new java.util.TreeMap<>();
                for (String h : Kernels.HEADERS) files.put(h, Kernels.text(h));
                for (String src : Kernels.sources()) files.put(src, Kernels.text(src));
                instance = new KernelEmulator(build(files, Kernels.all()), Kernels.all());
            } catch (CompilerMissing e) {
                unavailable = e.getMessage();
            }
        }
        Assumptions.assumeTrue(instance != null, () -> "kernel emulation skipped: " + unavailable);
        return instance;
    }

    /**
     * An emulator of extra kernels (tests of the emulation itself): files are extra sources by
     * name, built together with Kiln's headers; kernels describes them as the catalog would.
     */
    static KernelEmulator of(Map<String, String> sources, List<Kernel> kernels) {
        get(); // skips when g++ is missing, as for the catalog's kernels
        Map<String, String> files = new java.util.TreeMap<>(sources);
        for (String h : Kernels.HEADERS) files.put(h, Kernels.text(h));
        try {
            return new KernelEmulator(build(files, kernels), kernels);
        } catch (CompilerMissing e) {
            throw new IllegalStateException(e);
        }
    }

    /** Launches kernel name over host buffers with the catalog's geometry for these arguments. */
    void launch(String name, Object... args) {
        Kernel k = kernels.containsKey(name) ? kernels.get(name) : Kernels.get(name); // the catalog names unknown kernels
        Launch l = k.launch(args);
        MethodHandle h = launchers.computeIfAbsent(name, n -> linker.downcallHandle(lib.findOrThrow("kiln_emu_launch_" + n), LAUNCH));
        try (Arena arena = Arena.ofConfined()) {
            int rc = (int) h.invokeExact(l.gridX(), 1, 1, l.blockX(), 1, 1, l.sharedBytes(), k.pack(arena, args));
            if (rc != 0) {
                String msg = ((MemorySegment) lastError.invokeExact()).reinterpret(4096).getString(0);
                throw new IllegalStateException("emulated kernel " + name + " failed: " + msg);
            }
        } catch (RuntimeException | Error e) {
            throw e;
        } catch (Throwable t) {
            throw new IllegalStateException(t);
        }
    }

    /**
     * Launches kernel name with cuLaunchKernel's own arguments (geometry and the kernelParams array as packed by
     * the caller), as the emulated device of {@link FakeDriver} does; returns null on success, else the error.
     */
    String launchPacked(String name, int gx, int gy, int gz, int bx, int by, int bz, int shared, MemorySegment params) {
        if (!kernels.containsKey(name)) return "no emulated kernel " + name;
        MethodHandle h = launchers.computeIfAbsent(name, n -> linker.downcallHandle(lib.findOrThrow("kiln_emu_launch_" + n), LAUNCH));
        try {
            int rc = (int) h.invokeExact(gx, gy, gz, bx, by, bz, shared, params);
            return rc == 0 ? null : ((MemorySegment) lastError.invokeExact()).reinterpret(4096).getString(0);
        } catch (Throwable t) {
            return t.toString();
        }
    }

    static final class CompilerMissing extends Exception {
        CompilerMissing(String message) {
            super(message);
        }
    }

    /** The launcher translation unit of one source: the source itself, then a checked launcher per kernel. */
    static String launcherSource(String source, List<Kernel> kernels) {
        StringBuilder sb = new StringBuilder("// generated by KernelEmulator from the Kernels catalog\n#include \"" + source + "\"\n\n");
        for (Kernel k : kernels) {
            if (!k.source().equals(source)) continue;
            sb.append("static_assert(kiln_emu::kinds_match(&").append(k.name()).append(", \"").append(k.signature())
                    .append("\"), \"the Kernels catalog says ").append(k.name()).append(" takes ").append(k.signature()).append("\");\n");
            sb.append("extern \"C\" int kiln_emu_launch_").append(k.name())
                    .append("(int gx, int gy, int gz, int bx, int by, int bz, int shmem, void** args) {\n")
                    .append("    return kiln_emu::launch_kernel(&").append(k.name()).append(", gx, gy, gz, bx, by, bz, shmem, args);\n}\n\n");
        }
        return sb.toString();
    }

    private static Path build(Map<String, String> sources, List<Kernel> kernels) throws CompilerMissing {
        String gxx = System.getenv().getOrDefault("CXX", "g++");
        try {
            Map<String, String> files = new java.util.TreeMap<>(sources);
            for (String s : kernels.stream().map(Kernel::source).distinct().toList())
                files.put("launch_" + s.replace(".cu", ".cpp"), launcherSource(s, kernels));
            files.put("last_error.cpp", "#include \"kiln_emu.h\"\nextern \"C\" const char* kiln_emu_last_error() { return kiln_emu::lastError.c_str(); }\n");
            MessageDigest md = MessageDigest.getInstance("SHA-256");
            md.update((gxx + FLAGS).getBytes(StandardCharsets.UTF_8));
            for (var e : files.entrySet()) {
                md.update(e.getKey().getBytes(StandardCharsets.UTF_8));
                md.update(e.getValue().getBytes(StandardCharsets.UTF_8));
            }
            String hash = HexFormat.of().formatHex(md.digest()).substring(0, 16);
            Path dir = Path.of("target", "kiln-emu", hash).toAbsolutePath();
            Path so = dir.resolve("libkilnemu.so");
            if (Files.exists(so)) return so;
            Files.createDirectories(dir);
            List<String> cmd = new ArrayList<>(List.of(gxx));
            cmd.addAll(FLAGS);
            for (var e : files.entrySet()) {
                Files.writeString(dir.resolve(e.getKey()), e.getValue());
                if (e.getKey().endsWith(".cpp")) cmd.add(e.getKey());
            }
            Path tmp = dir.resolve("libkilnemu.so.tmp");
            cmd.addAll(List.of("-o", tmp.getFileName().toString()));
            Process p;
            try {
                p = new ProcessBuilder(cmd).directory(dir.toFile()).redirectErrorStream(true).start();
            } catch (IOException e) {
                throw new CompilerMissing(gxx + " not found (" + e.getMessage() + "); CI machines have gcc");
            }
            String out = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
            if (!p.waitFor(10, TimeUnit.MINUTES) || p.exitValue() != 0)
                throw new IllegalStateException("host build of the CUDA kernels failed (" + String.join(" ", cmd) + " in " + dir + "):\n" + out);
            Files.move(tmp, so, java.nio.file.StandardCopyOption.ATOMIC_MOVE);
            return so;
        } catch (IOException | InterruptedException | java.security.NoSuchAlgorithmException e) {
            throw new IllegalStateException("host build of the CUDA kernels failed: " + e, e);
        }
    }
}
