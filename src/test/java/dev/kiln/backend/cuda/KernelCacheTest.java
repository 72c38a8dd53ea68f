package dev.kiln.backend.cuda;

import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Map;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** The on-disk kernel cache with a fake compiler: keys, paths, hits, and damaged entries recompiled. */
class KernelCacheTest {
    @TempDir
    Path dir;

    /** "Compiles" to a deterministic image derived from source and options, and counts its calls. */
    static final class FakeCompiler implements KernelCompiler {
        final List<String> calls = new ArrayList<>();
        String version = "fake 1.0";

        @Override
        public byte[] compile(String source, String name, Map<String, String> headers, List<String> options) {
            calls.add(name);
            return ("CUBIN[" + options + "]" + headers + source).repeat(50).getBytes(StandardCharsets.UTF_8);
        }

        @Override
        public String version() {
            return version;
        }
    }

    private static final String SRC = "extern \"C\" __global__ void k(float* x) { x[threadIdx.x] *= 2.0f; }";

    @Test
    void secondRequestIsAHitAndReturnsTheSameImage() {
        FakeCompiler fc = new FakeCompiler();
        KernelCache c = new KernelCache(dir, fc);
        List<String> opts = KernelCache.options(9, 0, List.of());
        byte[] first = c.cubin(SRC, "k.cu", opts);
        byte[] second = new KernelCache(dir, fc).cubin(SRC, "k.cu", opts);   // a new process: from disk
        assertArrayEquals(first, second);
        assertEquals(List.of("k.cu"), fc.calls);
        assertTrue(Files.exists(c.path(c.key(SRC, opts))));
    }

    @Test
    void keyDependsOnSourceOptionsArchitectureAndCompilerVersion() {
        FakeCompiler fc = new FakeCompiler();
        KernelCache c = new KernelCache(dir, fc);
        List<String> sm90 = KernelCache.options(9, 0, List.of()), sm80 = KernelCache.options(8, 0, List.of());
        String k = c.key(SRC, sm90);
        assertTrue(k.matches("[0-9a-f]{64}"), k);
        assertEquals(k, c.key(SRC, sm90));
        assertNotEquals(k, c.key(SRC + " ", sm90));
        assertNotEquals(k, c.key(SRC, sm80));
        assertNotEquals(k, c.key(SRC, KernelCache.options(9, 0, List.of("-lineinfo"))));
        assertNotEquals(k, c.key(SRC, Map.of("k.h", "#define X 1"), sm90), "headers are part of the key");
        assertNotEquals(c.key(SRC, Map.of("k.h", "#define X 1"), sm90), c.key(SRC, Map.of("k.h", "#define X 2"), sm90));
        assertNotEquals(c.key(SRC, Map.of("a.h", "bc"), sm90), c.key(SRC, Map.of("a.hb", "c"), sm90), "name/text boundaries count");
        assertEquals(c.key(SRC, Map.of("a.h", "1", "b.h", "2"), sm90), c.key(SRC, new java.util.LinkedHashMap<>(Map.of("b.h", "2", "a.h", "1")), sm90));
        fc.version = "fake 1.1";
        assertNotEquals(k, c.key(SRC, sm90));
        assertEquals(dir.resolve(k + ".cubin"), new KernelCache(dir, new FakeCompiler()).path(k));
    }

    @Test
    void optionsNameTheArchitecture() {
        assertEquals(List.of("--gpu-architecture=sm_90", "--std=c++17"), KernelCache.options(9, 0, List.of()));
        assertEquals("--gpu-architecture=sm_86", KernelCache.options(8, 6, List.of()).getFirst());
        assertEquals("--gpu-architecture=sm_100", KernelCache.options(10, 0, List.of()).getFirst());
        assertThrows(IllegalArgumentException.class, () -> KernelCache.options(0, 0, List.of()));
    }

    @Test
    void truncatedOrCorruptEntriesAreRecompiledNotTrusted() throws IOException {
        FakeCompiler fc = new FakeCompiler();
        KernelCache c = new KernelCache(dir, fc);
        List<String> opts = KernelCache.options(9, 0, List.of());
        byte[] good = c.cubin(SRC, "k.cu", opts);
        Path file = c.path(c.key(SRC, opts));
        byte[] onDisk = Files.readAllBytes(file);

        Files.write(file, Arrays.copyOf(onDisk, onDisk.length / 2));          // a crash mid-write
        assertArrayEquals(good, c.cubin(SRC, "k.cu", opts));
        byte[] flipped = onDisk.clone();
        flipped[flipped.length - 3] ^= 0x40;                                  // one bit of the payload
        Files.write(file, flipped);
        assertArrayEquals(good, c.cubin(SRC, "k.cu", opts));
        Files.write(file, new byte[0]);                                       // empty
        assertArrayEquals(good, c.cubin(SRC, "k.cu", opts));
        Files.write(file, "not a cubin at all".getBytes(StandardCharsets.UTF_8));
        assertArrayEquals(good, c.cubin(SRC, "k.cu", opts));

        assertEquals(4, c.rejected());
        assertEquals(5, fc.calls.size(), "every damaged entry was compiled again");
        assertArrayEquals(onDisk, Files.readAllBytes(file), "and replaced by a good entry");
        assertArrayEquals(good, c.cubin(SRC, "k.cu", opts));
        assertEquals(5, fc.calls.size());
        assertEquals(1, c.hits());
    }

    @Test
    void unwritableCacheStillCompiles() throws IOException {
        Path blocker = Files.writeString(dir.resolve("file"), "x");      // the cache "folder" is a file
        FakeCompiler fc = new FakeCompiler();
        KernelCache c = new KernelCache(blocker.resolve("sub"), fc);
        byte[] img = c.cubin(SRC, "k.cu", KernelCache.options(9, 0, List.of()));
        assertTrue(img.length > 0);
        assertEquals(1, fc.calls.size());
    }

    @Test
    void folderFromTheEnvironment() {
        assertEquals(Path.of("/c/k"), KernelCache.defaultDir(Map.of("KILN_CUDA_CACHE", "/c/k", "HOME", "/h")));
        assertEquals(Path.of("/x/kiln/cuda"), KernelCache.defaultDir(Map.of("XDG_CACHE_HOME", "/x", "HOME", "/h")));
        assertEquals(Path.of("/h/.cache/kiln/cuda"), KernelCache.defaultDir(Map.of("HOME", "/h")));
    }
}
