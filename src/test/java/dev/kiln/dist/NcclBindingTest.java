package dev.kiln.dist;

import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.FunctionDescriptor;
import java.lang.foreign.MemoryLayout;
import java.lang.foreign.StructLayout;
import java.lang.foreign.SymbolLookup;
import java.lang.foreign.ValueLayout;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

/**
 * {@link Nccl} against a real libnccl.so.2 and its nccl.h where this machine has them (skipped elsewhere): point
 * {@code KILN_NCCL_LIB} at the library, e.g. unzipped from pip's nvidia-nccl-cu13 wheel (which ships
 * {@code nvidia/nccl/include/nccl.h} next to {@code lib/}). Every bound symbol must be exported, every signature must
 * match the header's prototype, and the enum values Kiln passes (and the fake library uses) must be the header's.
 * Library discovery is tested over fake trees and always runs.
 */
class NcclBindingTest {
    @TempDir
    Path tmp;

    private static Optional<Path> realLibrary() {
        try {
            return Nccl.find(System.getenv(), Path.of("/"));
        } catch (DistException e) {
            return Optional.empty();   // KILN_NCCL_LIB pointing nowhere: the discovery tests cover that message
        }
    }

    /** nccl.h next to the library (the wheel's include/, the system's /usr/include). */
    private static Optional<Path> header(Path lib) {
        for (Path h : List.of(lib.getParent().resolveSibling("include").resolve("nccl.h"), Path.of("/usr/include/nccl.h")))
            if (Files.isRegularFile(h)) return Optional.of(h);
        return Optional.empty();
    }

    private static Path requireLibrary() {
        Optional<Path> lib = realLibrary();
        assumeTrue(lib.isPresent(), "no libnccl.so.2 here (set KILN_NCCL_LIB to one to run this test)");
        return lib.get();
    }

    @Test
    void everyBoundSymbolIsExportedAndTheVersionIsRead() {
        Path lib = requireLibrary();
        SymbolLookup l = SymbolLookup.libraryLookup(lib, Arena.global());
        List<String> missing = new ArrayList<>();
        for (String name : Nccl.SIGNATURES.keySet()) if (l.find(name).isEmpty()) missing.add(name);
        assertEquals(List.of(), missing, "symbols Kiln binds that " + lib + " lacks");
        Nccl nccl = new Nccl(l, lib.toString());
        int v = nccl.version();
        assertTrue(v >= 21200, "NCCL 2.12 or newer, got " + v);
        System.out.println("NCCL binding: " + lib + " version " + v + " (" + Nccl.versionString(v) + "), " + Nccl.SIGNATURES.size() + " symbols bound");
        header(lib).ifPresent(h -> assertEquals(headerValue(read(h), "#define\\s+NCCL_VERSION_CODE\\s+(\\d+)"), v, "the library is the header's version"));
        assertTrue(nccl.errorString(Nccl.REMOTE_ERROR).toLowerCase().contains("remote"), nccl.errorString(Nccl.REMOTE_ERROR));
        assertEquals("ncclRemoteError (6): " + nccl.errorString(6), nccl.describe(6));
    }

    /** ncclGetUniqueId needs no GPU (it opens a bootstrap socket); on a machine without a network interface it may fail. */
    @Test
    void uniqueIdsAre128FreshBytes() {
        Nccl nccl = new Nccl(SymbolLookup.libraryLookup(requireLibrary(), Arena.global()), "libnccl");
        byte[] a, b;
        try {
            a = nccl.uniqueId();
            b = nccl.uniqueId();
        } catch (DistException e) {
            assumeTrue(false, "ncclGetUniqueId failed here: " + e.getMessage());
            return;
        }
        assertEquals(Nccl.UNIQUE_ID_BYTES, a.length);
        assertFalse(java.util.Arrays.equals(a, b), "two ids differ");
        assertFalse(java.util.Arrays.equals(a, new byte[Nccl.UNIQUE_ID_BYTES]), "an id is not all zeros");
    }

    private static String read(Path p) {
        try {
            return Files.readString(p);
        } catch (IOException e) {
            throw new java.io.UncheckedIOException(e);
        }
    }

    private static int headerValue(String text, String regex) {
        Matcher m = Pattern.compile(regex).matcher(text);
        assertTrue(m.find(), "nccl.h has no match for " + regex);
        return Integer.parseInt(m.group(1));
    }

    /** An enum constant of nccl.h: "ncclFloat32 = 7". */
    private static int enumValue(String text, String name) {
        return headerValue(text, "\\b" + name + "\\s*=\\s*(\\d+)");
    }

    @Test
    void constantsAndSignaturesMatchNcclH() {
        Path lib = requireLibrary();
        Optional<Path> h = header(lib);
        assumeTrue(h.isPresent(), "no nccl.h next to " + lib + " or in /usr/include");
        String text = read(h.get());
        assertEquals(headerValue(text, "#define\\s+NCCL_UNIQUE_ID_BYTES\\s+(\\d+)"), Nccl.UNIQUE_ID_BYTES);
        assertEquals(enumValue(text, "ncclFloat32"), Nccl.DataType.FLOAT32.code);
        assertEquals(enumValue(text, "ncclBfloat16"), Nccl.DataType.BFLOAT16.code);
        assertEquals(enumValue(text, "ncclSum"), Nccl.RedOp.SUM.code);
        assertEquals(enumValue(text, "ncclMax"), Nccl.RedOp.MAX.code);
        assertEquals(enumValue(text, "ncclAvg"), Nccl.RedOp.AVG.code);
        assertEquals(enumValue(text, "ncclRemoteError"), Nccl.REMOTE_ERROR);
        assertEquals(enumValue(text, "ncclInProgress"), Nccl.IN_PROGRESS);
        for (String r : List.of("ncclSuccess", "ncclUnhandledCudaError", "ncclSystemError", "ncclInternalError", "ncclInvalidArgument",
                "ncclInvalidUsage", "ncclRemoteError", "ncclInProgress"))
            assertEquals(r, Nccl.resultName(enumValue(text, r)), "the name Kiln prints for " + r);
        // the fake library's values are checked too, so the fake tests test NCCL's numbering
        assertEquals(enumValue(text, "ncclFloat32"), FakeNccl.FLOAT32);
        assertEquals(enumValue(text, "ncclBfloat16"), FakeNccl.BFLOAT16);
        assertEquals(enumValue(text, "ncclSum"), FakeNccl.SUM);
        assertEquals(enumValue(text, "ncclMax"), FakeNccl.MAX);
        assertEquals(enumValue(text, "ncclAvg"), FakeNccl.AVG);
        assertEquals(enumValue(text, "ncclInvalidUsage"), FakeNccl.INVALID_USAGE);

        List<String> wrong = new ArrayList<>();
        Nccl.SIGNATURES.forEach((name, fd) -> {
            FunctionDescriptor fromHeader = prototype(text, name);
            if (!fromHeader.equals(fd)) wrong.add(name + ": nccl.h " + fromHeader + ", Kiln " + fd);
        });
        assertEquals(List.of(), wrong, "signatures that differ from " + h.get());
    }

    private static final StructLayout UNIQUE_ID = MemoryLayout.structLayout(MemoryLayout.sequenceLayout(128, ValueLayout.JAVA_BYTE).withName("internal"));

    /** The FFM descriptor of nccl.h's prototype of {@code name} (x86-64 Linux: size_t is 64-bit, enums are ints). */
    private static FunctionDescriptor prototype(String text, String name) {
        Matcher m = Pattern.compile("(ncclResult_t|const char\\*)\\s+" + name + "\\s*\\(([^)]*)\\)\\s*;").matcher(text);
        assertTrue(m.find(), "nccl.h declares no " + name);
        List<MemoryLayout> args = new ArrayList<>();
        String params = m.group(2).strip();
        if (!params.isEmpty() && !params.equals("void")) {
            for (String p : params.split(",")) {
                String t = p.replaceAll("\\s*\\*\\s*", "* ").strip().replaceAll("\\s+\\w+$", "").replaceFirst("^const\\s+", "").strip();
                args.add(switch (t) {
                    case "int", "ncclDataType_t", "ncclRedOp_t", "ncclResult_t" -> ValueLayout.JAVA_INT;
                    case "size_t" -> ValueLayout.JAVA_LONG;
                    case "ncclComm_t", "cudaStream_t" -> ValueLayout.ADDRESS;
                    case "ncclUniqueId" -> UNIQUE_ID;
                    default -> {
                        if (t.endsWith("*")) yield ValueLayout.ADDRESS;
                        throw new AssertionError(name + ": parameter type '" + t + "' not understood in '" + p + "'");
                    }
                });
            }
        }
        MemoryLayout ret = m.group(1).equals("ncclResult_t") ? ValueLayout.JAVA_INT : ValueLayout.ADDRESS;
        return FunctionDescriptor.of(ret, args.toArray(MemoryLayout[]::new));
    }

    // ---- discovery over fake trees ----

    private Path file(String dir, String name) throws IOException {
        Path d = tmp.resolve(dir.replaceFirst("^/", ""));
        Files.createDirectories(d);
        return Files.createFile(d.resolve(name));
    }

    @Test
    void findsTheSystemLibraryThenWheelsAndKilnNcclLibFirst() throws IOException {
        Map<String, String> env = new HashMap<>();
        assertEquals(Optional.empty(), Nccl.find(env, tmp));
        Path wheel = file("/opt/torch/.venv/lib/python3.12/site-packages/nvidia/nccl/lib", "libnccl.so.2");
        assertEquals(Optional.of(wheel), Nccl.find(env, tmp).map(Path::normalize), "a wheel's nvidia/nccl/lib");
        Path system = file("/usr/lib/x86_64-linux-gnu", "libnccl.so.2");
        assertEquals(Optional.of(system), Nccl.find(env, tmp).map(Path::normalize), "the system's folder before wheels");
        Path mine = file("/somewhere/else", "libnccl.so.2");
        env.put("KILN_NCCL_LIB", mine.toString());
        assertEquals(Optional.of(mine), Nccl.find(env, tmp), "KILN_NCCL_LIB (the file) first");
        env.put("KILN_NCCL_LIB", mine.getParent().toString());
        assertEquals(Optional.of(mine), Nccl.find(env, tmp), "KILN_NCCL_LIB (its folder)");
    }

    @Test
    void aWrongKilnNcclLibOrNoLibraryAtAllIsOneLineSayingWhere() {
        Map<String, String> env = Map.of("KILN_NCCL_LIB", tmp.resolve("nope").toString());
        DistException e = assertThrows(DistException.class, () -> Nccl.find(env, tmp));
        assertEquals("KILN_NCCL_LIB=" + tmp.resolve("nope") + " is neither libnccl.so.2 nor a folder holding it", e.getMessage());
        String msg = Nccl.notFound(Map.of(), tmp);
        assertTrue(msg.startsWith("NCCL is not available: libnccl.so.2 not found in $KILN_NCCL_LIB (unset), "), msg);
        assertTrue(msg.contains("/usr/lib/x86_64-linux-gnu") && msg.contains("site-packages/nvidia/*/lib"), msg);
        assertFalse(msg.contains("\n"));
    }
}
