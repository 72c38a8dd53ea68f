package dev.kiln.backend.cuda;

import dev.kiln.backend.cuda.Kernels.Kernel;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Set;
import java.util.TreeSet;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * The kernel sources as CUDA sees them: the catalog and the sources agree, every source compiles
 * to PTX for sm_90 with nvcc (with the toolkit's cuda_bf16.h and with Kiln's NVRTC fallback for
 * bf16), and under NVRTC (__CUDACC_RTC__) no source pulls in a host or standard-library header —
 * NVRTC has none. The PTX step needs nvcc (CI machines have it at /usr/local/cuda/bin/nvcc) and the
 * NVRTC step g++'s preprocessor; each skips where its tool is missing. Not covered here: NVRTC
 * itself (no libnvrtc on CI machines; the GPU backend compiles the same text with it at run time).
 */
class KernelSourcesTest {
    private static final Pattern KERNEL = Pattern.compile("extern \"C\" __global__ void (\\w+)\\(");
    private static final Pattern ENTRY = Pattern.compile("\\.entry (\\w+)\\(");

    @Test
    void catalogAndSourcesAgree() {
        Set<String> inSources = new TreeSet<>(), inCatalog = new TreeSet<>();
        for (String s : Kernels.sources()) {
            Matcher m = KERNEL.matcher(Kernels.text(s));
            while (m.find()) inSources.add(s + ":" + m.group(1));
        }
        for (Kernel k : Kernels.all()) inCatalog.add(k.source() + ":" + k.name());
        assertEquals(inSources, inCatalog, "every extern \"C\" __global__ kernel is in the catalog under its file, and only those");
        assertTrue(inCatalog.size() >= 50, "catalog has " + inCatalog.size() + " kernels");
    }

    @Test
    void everyQuotedIncludeIsAKilnHeaderThatNvrtcIsGiven() {
        Pattern include = Pattern.compile("#\\s*include \"([^\"]+)\"");
        List<String> files = new ArrayList<>(Kernels.sources());
        files.addAll(Kernels.HEADERS);
        for (String f : files) {
            Matcher m = include.matcher(Kernels.text(f));
            while (m.find()) {
                String h = m.group(1);
                assertTrue(Kernels.HEADERS.contains(h), f + " includes " + h + ", which Kernels.HEADERS does not list");
                if (!h.equals("kiln_emu.h")) assertTrue(Kernels.nvrtcHeaders().containsKey(h), h + " is missing from Kernels.nvrtcHeaders()");
            }
        }
    }

    @Test
    void everySourceCompilesToPtxForSm90(@TempDir Path dir) throws IOException {
        String nvcc = KernelToolchain.nvcc();
        KernelToolchain.writeSources(dir);
        for (String variant : List.of("cuda_bf16.h", "KILN_NO_CUDA_BF16_H")) {
            Path out = Files.createDirectories(dir.resolve(variant.replace('.', '_')));
            List<String> cmd = new ArrayList<>(List.of(nvcc, "-ptx", "-arch=sm_90", "--output-directory", out.toString()));
            if (variant.startsWith("KILN")) cmd.add("-D" + variant);
            cmd.addAll(Kernels.sources());
            KernelToolchain.Result r = KernelToolchain.run(dir, cmd);
            assertEquals(0, r.exit(), "nvcc (" + variant + ") failed:\n" + r.output());
            for (String s : Kernels.sources()) {
                String ptx = Files.readString(out.resolve(s.replace(".cu", ".ptx")));
                Set<String> entries = new TreeSet<>();
                Matcher m = ENTRY.matcher(ptx);
                while (m.find()) entries.add(m.group(1));
                Set<String> want = new TreeSet<>();
                for (Kernel k : Kernels.all()) if (k.source().equals(s)) want.add(k.name());
                assertEquals(want, entries, s + " (" + variant + "): PTX entry points, unmangled");
            }
        }
    }

    @Test
    void underNvrtcNoSourceIncludesAHostHeader(@TempDir Path dir) throws IOException {
        String gxx = KernelToolchain.gxx();
        KernelToolchain.writeSources(dir);
        for (String s : Kernels.sources()) {
            // -nostdinc: any <…> include fails, so success means only Kiln's own headers were read
            // (and __has_include(<cuda_bf16.h>) is false, so the bf16 fallback is taken)
            KernelToolchain.Result r = KernelToolchain.run(dir, List.of(gxx, "-E", "-nostdinc", "-D__CUDACC__", "-D__CUDACC_RTC__", s, "-o", "/dev/null"));
            assertEquals(0, r.exit(), s + " under __CUDACC_RTC__ includes a header NVRTC lacks:\n" + r.output());
        }
    }
}
