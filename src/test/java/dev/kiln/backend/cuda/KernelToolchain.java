package dev.kiln.backend.cuda;

import org.junit.jupiter.api.Assumptions;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.concurrent.TimeUnit;

/** Finding and running the compilers that the kernel-source tests need (each skips cleanly without). */
final class KernelToolchain {
    private KernelToolchain() {}

    /** nvcc from $CUDA_HOME, /usr/local/cuda or the PATH; skips the test when there is none. */
    static String nvcc() {
        for (String home : new String[]{System.getenv("CUDA_HOME"), System.getenv("CUDA_PATH"), "/usr/local/cuda"}) {
            if (home != null && Files.isExecutable(Path.of(home, "bin", "nvcc"))) return Path.of(home, "bin", "nvcc").toString();
        }
        Assumptions.assumeTrue(works("nvcc"), "nvcc not found ($CUDA_HOME, /usr/local/cuda, PATH): PTX checks skipped");
        return "nvcc";
    }

    /** g++ (or $CXX); skips the test when there is none. */
    static String gxx() {
        String gxx = System.getenv().getOrDefault("CXX", "g++");
        Assumptions.assumeTrue(works(gxx), gxx + " not found: host-compiler checks skipped");
        return gxx;
    }

    private static boolean works(String exe) {
        try {
            Process p = new ProcessBuilder(exe, "--version").redirectErrorStream(true).start();
            p.getInputStream().readAllBytes();
            return p.waitFor(60, TimeUnit.SECONDS) && p.exitValue() == 0;
        } catch (IOException | InterruptedException e) {
            return false;
        }
    }

    record Result(int exit, String output) {}

    static Result run(Path dir, List<String> cmd) {
        try {
            Process p = new ProcessBuilder(cmd).directory(dir.toFile()).redirectErrorStream(true).start();
            String out = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
            if (!p.waitFor(10, TimeUnit.MINUTES)) {
                p.destroyForcibly();
                return new Result(-1, "timed out: " + String.join(" ", cmd));
            }
            return new Result(p.exitValue(), out);
        } catch (IOException | InterruptedException e) {
            throw new IllegalStateException("cannot run " + cmd + ": " + e, e);
        }
    }

    /** The kernel sources and headers written out to dir (from the class path, as NVRTC gets them). */
    static void writeSources(Path dir) throws IOException {
        Files.createDirectories(dir);
        for (String h : Kernels.HEADERS) Files.writeString(dir.resolve(h), Kernels.text(h));
        for (String s : Kernels.sources()) Files.writeString(dir.resolve(s), Kernels.text(s));
    }
}
