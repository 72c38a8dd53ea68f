package dev.kiln.backend.cuda;

import dev.kiln.backend.Backend.Mat;
import dev.kiln.backend.cpu.CpuBackend;
import dev.kiln.tensor.DType;
import dev.kiln.tensor.MemoryScope;
import dev.kiln.tensor.Tensor;

import java.io.IOException;
import java.io.PrintStream;
import java.lang.foreign.MemorySegment;
import java.net.URI;
import java.net.URISyntaxException;
import java.net.URL;
import java.nio.charset.StandardCharsets;
import java.nio.file.FileSystem;
import java.nio.file.FileSystemAlreadyExistsException;
import java.nio.file.FileSystems;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.SplittableRandom;
import java.util.TreeMap;
import java.util.stream.Stream;

/**
 * {@code kiln gpu-check}: exercises the CUDA runtime on a real GPU and prints what it finds — library
 * discovery, the device, host↔device copies, the caching allocator's steady state, NVRTC compiling and
 * launching a kernel (and every kernel source on the class path), cuBLAS GEMMs against the CPU GEMM, and a
 * few timings (launch cost, GEMM TFLOP/s, NVRTC compile time). The last line is one JSON object.
 */
public final class GpuCheck {
    /** Where kernel sources live on the class path (the kernels' own branch puts them there). */
    static final String KERNEL_DIR = "/dev/kiln/cuda/kernels/";
    static final String CHECK_SOURCE = "/dev/kiln/cuda/runtime/check.cu";

    private final PrintStream out;
    private final Map<String, Object> json = new LinkedHashMap<>();
    private final List<String> failed = new ArrayList<>();
    private Map<String, Extra> extras = Map.of();

    private GpuCheck(PrintStream out) {
        this.out = out;
    }

    /**
     * Runs every check on GPU {@code index}; returns the names of the checks that failed (empty = all passed).
     * Throws {@link CudaUnavailableException} when there is no GPU to check.
     */
    public static List<String> run(PrintStream out, int index, boolean quick) {
        return run(out, index, quick, Map.of());
    }

    /** The checks on an opened runtime (a fake one in tests). */
    static List<String> run(PrintStream out, CudaRuntime rt, boolean quick) {
        return run(out, rt, quick, Map.of());
    }

    /**
     * A check that lives in a package above this one (the NCCL check, in dist): its one-line result ("FAIL …" when it
     * failed); it may add fields to the JSON line.
     */
    @FunctionalInterface
    public interface Extra {
        String run(CudaRuntime rt, Map<String, Object> json) throws Exception;
    }

    /** {@link #run(PrintStream, int, boolean)}, then the {@code extras} in order, before the summary and the JSON line. */
    public static List<String> run(PrintStream out, int index, boolean quick, Map<String, Extra> extras) {
        CudaLibraries libs = CudaLibraries.system();
        for (CudaLibraries.Library l : CudaLibraries.Library.values())
            out.printf("library  %-9s %s%n", l.name().toLowerCase(Locale.ROOT),
                    libs.find(l).map(Path::toString).orElse("not in the searched folders (the dynamic linker may still find it)"));
        return run(out, CudaRuntime.get(index), quick, extras);
    }

    static List<String> run(PrintStream out, CudaRuntime rt, boolean quick, Map<String, Extra> extras) {
        GpuCheck c = new GpuCheck(out);
        c.extras = extras;
        c.all(rt, quick);
        return c.failed;
    }

    private void all(CudaRuntime rt, boolean quick) {
        long[] mem = rt.memoryInfo();
        out.printf("device   %s; driver %d; %s free%n", rt, rt.driver().driverVersion(), CudaAllocator.size(mem[0]));
        json.put("gpu", rt.name());
        json.put("compute_capability", rt.computeCapabilityMajor() + "." + rt.computeCapabilityMinor());
        check("copies", () -> copies(rt));
        check("allocator", () -> allocator(rt));
        check("nvrtc", () -> nvrtcSaxpy(rt));
        check("kernel_sources", () -> kernelSources(rt));
        check("cublas_f32", () -> gemmAgainstCpu(rt, DType.F32));
        check("cublas_bf16", () -> gemmAgainstCpu(rt, DType.BF16));
        if (!quick) {
            check("launch_time", () -> launchTime(rt));
            check("gemm_speed", () -> gemmSpeed(rt));
        }
        extras.forEach((name, extra) -> check(name, () -> extra.run(rt, json)));
        out.printf("%s%n", failed.isEmpty() ? "all GPU checks passed" : "FAILED: " + String.join(", ", failed));
        json.put("failed", failed);
        out.println(toJson(json));
    }

    @FunctionalInterface
    private interface Check {
        String run() throws Exception;
    }

    private void check(String name, Check c) {
        String result;
        boolean ok;
        try (MemoryScope s = MemoryScope.open()) {
            result = c.run();
            ok = !result.startsWith("FAIL");
        } catch (Exception | AssertionError e) {
            result = "FAIL " + e;
            ok = false;
        }
        out.printf("%-8s %-14s %s%n", ok ? "ok" : "FAIL", name, result);
        if (!ok) failed.add(name);
    }

    private static float[] random(SplittableRandom r, int n) {
        float[] x = new float[n];
        for (int i = 0; i < n; i++) x[i] = (float) (r.nextDouble() * 2 - 1);
        return x;
    }

    private String copies(CudaRuntime rt) {
        float[] x = random(new SplittableRandom(1), 1 << 20);
        Tensor dev = rt.toDevice(Tensor.of(x, 1 << 20));
        float[] back = rt.toHost(dev).toFloatArray();
        if (!java.util.Arrays.equals(x, back)) return "FAIL fp32 round trip host → device → host changed values";
        Tensor bf = Tensor.of(x, 1 << 20).to(DType.BF16);
        float[] bfBack = rt.toHost(rt.toDevice(bf)).toFloatArray();
        if (!java.util.Arrays.equals(bf.toFloatArray(), bfBack)) return "FAIL bf16 round trip changed values";
        rt.zero(dev);
        for (float v : rt.toHost(dev).toFloatArray()) if (v != 0) return "FAIL zero() left a non-zero value";
        // bandwidth of the staged upload of 256 MiB (includes the copy into pinned memory)
        Tensor big = Tensor.zeros(64 << 20);
        rt.toDevice(big).release();
        rt.synchronize();
        long t0 = System.nanoTime();
        Tensor d = rt.toDevice(big);
        rt.synchronize();
        double gbs = (256.0 * (1 << 20)) / (System.nanoTime() - t0);
        d.release();
        big.release();
        json.put("upload_gb_per_s", round(gbs, 1));
        return String.format("fp32 and bf16 round trips exact, memset ok; 256 MiB upload through pinned staging %.1f GB/s", gbs);
    }

    private String allocator(CudaRuntime rt) {
        CudaAllocator a = rt.allocator();
        long[] sizes = {4096, 3 << 20, 768 * 1024, 12 << 20, 512, 50 << 20, 8 << 20, 1000};
        long rawAfterFirst = -1;
        for (int step = 0; step < 5; step++) {
            try (MemoryScope s = MemoryScope.open()) {
                for (int rep = 0; rep < 6; rep++) for (long b : sizes) rt.empty(DType.F32, (int) (b / 4) + rep);
            }
            if (step == 0) rawAfterFirst = a.rawAllocations();
            else if (a.rawAllocations() != rawAfterFirst)
                return "FAIL step " + step + " made raw allocations: " + rawAfterFirst + " → " + a.rawAllocations();
        }
        json.put("allocator_raw_allocations", a.rawAllocations());
        return "no cuMemAlloc after the first of 5 steps; " + a;
    }

    private String nvrtcSaxpy(CudaRuntime rt) {
        String src = KernelCache.resource(CHECK_SOURCE);
        int before = rt.kernels().compiles();
        long t0 = System.nanoTime();
        MemorySegment saxpy = rt.function(src, "check.cu", Map.of(), "saxpy");
        double ms = (System.nanoTime() - t0) / 1e6;
        boolean compiled = rt.kernels().compiles() > before;
        int n = 1_000_003;
        SplittableRandom r = new SplittableRandom(2);
        float[] x = random(r, n), y = random(r, n);
        Tensor dx = rt.toDevice(Tensor.of(x, n)), dy = rt.toDevice(Tensor.of(y, n));
        float a = 1.75f;
        rt.launch(saxpy, (n + 255) / 256, 1, 256, 0, a, rt.address(dx), rt.address(dy), n);
        float[] got = rt.toHost(dy).toFloatArray();
        double worst = 0;
        for (int i = 0; i < n; i++) {
            float expect = Math.fma(a, x[i], y[i]);   // NVRTC contracts a*x+y to one FMA by default
            worst = Math.max(worst, Math.abs(got[i] - expect) / (Math.abs(a * x[i]) + Math.abs(y[i]) + 1e-30));
        }
        if (worst > 1e-6) return String.format("FAIL saxpy differs from the CPU by %.2e (relative)", worst);
        json.put(compiled ? "nvrtc_compile_ms" : "nvrtc_cache_load_ms", round(ms, 1));
        return String.format("saxpy %s in %.1f ms (%s), launched on %,d elements, matches the CPU (max rel. diff %.1e)",
                compiled ? "compiled by NVRTC" : "loaded from the kernel cache", ms, rt.kernels().dir(), n, worst);
    }

    private String kernelSources(CudaRuntime rt) throws IOException {
        Map<String, String> files = resources(KERNEL_DIR);
        Map<String, String> headers = new TreeMap<>();
        files.forEach((name, text) -> {
            if (name.endsWith(".h") || name.endsWith(".cuh")) headers.put(name, text);
        });
        List<String> compiled = new ArrayList<>(), errors = new ArrayList<>();
        List<String> options = KernelCache.options(rt.computeCapabilityMajor(), rt.computeCapabilityMinor(), List.of());
        for (var f : files.entrySet()) {
            if (!f.getKey().endsWith(".cu")) continue;
            try {
                byte[] cubin = rt.kernels().cubin(f.getValue(), f.getKey(), headers, options);
                rt.makeCurrent();
                rt.driver().loadModule(cubin);
                compiled.add(f.getKey());
            } catch (RuntimeException e) {
                errors.add(f.getKey() + ": " + e.getMessage());
            }
        }
        json.put("kernel_sources_compiled", compiled.size());
        if (!errors.isEmpty()) return "FAIL " + String.join("; ", errors);
        if (compiled.isEmpty()) return "no kernel sources under " + KERNEL_DIR + " on the class path (nothing to compile)";
        return "compiled and loaded " + compiled.size() + " sources: " + String.join(" ", compiled);
    }

    /**
     * cuBLAS against the CPU GEMM on the same inputs (bf16 inputs are rounded first, and the CPU multiplies the
     * rounded values in fp32: products of bf16 are exact in fp32, so only the summation order differs).
     * Tolerance 4e-6·k: fp32 sums of k products of values in (−1, 1) differ by about k·2⁻²⁴ between orders.
     */
    private String gemmAgainstCpu(CudaRuntime rt, DType type) {
        CudaBackend gpu = new CudaBackend(rt);
        int[][] cases = {{1, 128, 96, 64, 0, 0}, {1, 77, 50, 129, 1, 0}, {1, 33, 65, 17, 0, 1}, {3, 40, 24, 31, 1, 1}};
        double worst = 0;
        SplittableRandom r = new SplittableRandom(3);
        for (int[] cs : cases) {
            int batch = cs[0], m = cs[1], n = cs[2], k = cs[3];
            boolean ta = cs[4] == 1, tb = cs[5] == 1;
            // stored shapes: A is m×k, or k×m read transposed; B is k×n, or n×k read transposed
            Tensor a = Tensor.of(random(r, batch * m * k), batch, ta ? k : m, ta ? m : k);
            Tensor b = Tensor.of(random(r, batch * k * n), batch, tb ? n : k, tb ? k : n);
            Tensor aIn = a.to(type).to(DType.F32), bIn = b.to(type).to(DType.F32);   // what the GPU will see
            Tensor cCpu = Tensor.zeros(batch, m, n);
            CpuBackend.get().gemm(batch, m, n, k, 1.0, mat(aIn, m, k, ta), mat(bIn, k, n, tb), 0.0,
                    new Mat(cCpu, 0, (long) m * n, n, 1));
            Tensor da = rt.toDevice(a.to(type)), db = rt.toDevice(b.to(type));
            Tensor dc = rt.empty(DType.F32, batch, m, n);
            gpu.gemm(batch, m, n, k, 1.0, mat(da, m, k, ta), mat(db, k, n, tb), 0.0, new Mat(dc, 0, (long) m * n, n, 1));
            float[] got = rt.toHost(dc).toFloatArray(), want = cCpu.toFloatArray();
            for (int i = 0; i < got.length; i++) worst = Math.max(worst, Math.abs(got[i] - want[i]) / k);
        }
        if (worst > 4e-6) return String.format("FAIL cuBLAS differs from the CPU GEMM by %.2e·k", worst);
        return String.format("%d cases (transposes, batch 3) match the CPU GEMM; max |diff|/k %.1e", cases.length, worst);
    }

    /** Operand rows×cols of batch-contiguous storage, stored as is or transposed. */
    private static Mat mat(Tensor t, int rows, int cols, boolean transposed) {
        long bs = (long) rows * cols;
        return transposed ? new Mat(t, 0, bs, 1, rows) : new Mat(t, 0, bs, cols, 1);
    }

    private String launchTime(CudaRuntime rt) {
        MemorySegment empty = rt.function(KernelCache.resource(CHECK_SOURCE), "check.cu", Map.of(), "empty_kernel");
        for (int i = 0; i < 1000; i++) rt.launch(empty, 1, 1, 32, 0);
        rt.synchronize();
        int n = 20_000;
        long t0 = System.nanoTime();
        for (int i = 0; i < n; i++) rt.launch(empty, 1, 1, 32, 0);
        rt.synchronize();
        double us = (System.nanoTime() - t0) / 1e3 / n;
        json.put("launch_us", round(us, 2));
        return String.format("%.2f µs per launch (%,d back-to-back launches of an empty kernel, host wall time)", us, n);
    }

    private String gemmSpeed(CudaRuntime rt) {
        StringBuilder sb = new StringBuilder();
        for (DType t : List.of(DType.BF16, DType.F32)) {
            int s = t == DType.BF16 ? 8192 : 4096;
            SplittableRandom r = new SplittableRandom(4);
            Tensor a = rt.toDevice(Tensor.of(random(r, s * s), s, s).to(t)), b = rt.toDevice(Tensor.of(random(r, s * s), s, s).to(t));
            Tensor c = rt.empty(DType.F32, s, s);
            CudaBackend gpu = new CudaBackend(rt);
            Mat ma = new Mat(a, 0, 0, s, 1), mb = new Mat(b, 0, 0, s, 1), mc = new Mat(c, 0, 0, s, 1);
            for (int i = 0; i < 3; i++) gpu.gemm(1, s, s, s, 1, ma, mb, 0, mc);
            CudaDriver d = rt.driver();
            MemorySegment e0 = d.createEvent(), e1 = d.createEvent();
            int iters = 20;
            d.record(e0, rt.stream());
            for (int i = 0; i < iters; i++) gpu.gemm(1, s, s, s, 1, ma, mb, 0, mc);
            d.record(e1, rt.stream());
            d.synchronizeEvent(e1);
            double ms = d.elapsedMillis(e0, e1) / iters;
            d.destroyEvent(e0);
            d.destroyEvent(e1);
            double tflops = 2.0 * s * s * s / (ms * 1e-3) / 1e12;
            String key = "gemm_" + t.name().toLowerCase(Locale.ROOT) + "_" + s + "_tflops";
            json.put(key, round(tflops, 1));
            sb.append(String.format("%s%s %d³ %.1f TFLOP/s (%.2f ms)", sb.isEmpty() ? "" : "; ", t, s, tflops, ms));
        }
        return sb + " — fp32 without TF32";
    }

    /** The files directly under a class-path folder (a directory or a folder inside the jar), by name. */
    static Map<String, String> resources(String dir) throws IOException {
        Map<String, String> files = new TreeMap<>();
        URL url = GpuCheck.class.getResource(dir);
        if (url == null) return files;
        try {
            URI uri = url.toURI();
            Path folder;
            if (uri.getScheme().equals("jar")) {
                FileSystem fs;
                try {
                    fs = FileSystems.newFileSystem(uri, Map.of());
                } catch (FileSystemAlreadyExistsException e) {
                    fs = FileSystems.getFileSystem(uri);
                }
                folder = fs.getPath(dir);
            } else {
                folder = Path.of(uri);
            }
            try (Stream<Path> s = Files.list(folder)) {
                for (Path p : s.toList())
                    if (Files.isRegularFile(p)) files.put(p.getFileName().toString(), Files.readString(p, StandardCharsets.UTF_8));
            }
        } catch (URISyntaxException e) {
            throw new IOException("bad class-path URL " + url, e);
        }
        return files;
    }

    private static double round(double v, int digits) {
        double f = Math.pow(10, digits);
        return Math.round(v * f) / f;
    }

    private static String toJson(Map<String, Object> m) {
        try {
            return new com.fasterxml.jackson.databind.ObjectMapper().writeValueAsString(m);
        } catch (com.fasterxml.jackson.core.JsonProcessingException e) {
            throw new IllegalStateException(e);
        }
    }
}
