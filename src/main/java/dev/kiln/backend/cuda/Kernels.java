package dev.kiln.backend.cuda;

import dev.kiln.KilnException;

import java.io.IOException;
import java.io.InputStream;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * The catalog of Kiln's CUDA kernels: for each {@code extern "C" __global__} kernel its name, the
 * source file under {@value #RESOURCE_DIR} that defines it, its launch geometry rule and its
 * parameters, so that NVRTC (on a GPU) and the host emulator (in tests) compile and launch kernels
 * by name. Arguments are packed as cuLaunchKernel's {@code kernelParams}: an array of pointers, the
 * i-th pointing at argument i's value. Most kernels come as a pair: {@code <name>_f32} (fp32
 * storage) and {@code <name>_bf16} (bf16 storage, fp32 arithmetic and accumulation; statistics,
 * losses and parameter gradients stay fp32 — each source file's header comment says which).
 */
public final class Kernels {
    /** Class-path folder of the kernel sources and the headers they include. */
    public static final String RESOURCE_DIR = "/dev/kiln/cuda/kernels/";
    /** Headers the sources include: kiln_cuda.h (always), kiln_emu.h (host builds only), softmax_rows.h. */
    public static final List<String> HEADERS = List.of("kiln_cuda.h", "kiln_emu.h", "softmax_rows.h");
    /** Threads per block for every rule. */
    public static final int BLOCK = 256;
    /** Grid cap for grid-stride kernels: enough blocks to fill an H100 (132 SMs) many times over. */
    public static final int MAX_GRID = 8192;
    /** Grid cap (so partial count) of {@link Rule#PARTIALS} kernels. */
    public static final int MAX_PARTIALS = 256;

    private Kernels() {}

    /** A parameter's C type class: a pointer (host or device address), an int or a float. */
    public enum Kind {
        PTR('P'), INT('I'), FLOAT('F');

        final char code;

        Kind(char code) {
            this.code = code;
        }
    }

    public record Param(String name, Kind kind) {}

    /** How a kernel's launch geometry follows from its size (the product of its size parameters). */
    public enum Rule {
        /** One thread per element, grid-stride loop: grid = min(⌈size/256⌉, MAX_GRID). */
        ELEMENTS,
        /** One warp per row, 8 rows per block: grid = ⌈size/8⌉. */
        WARP_ROWS,
        /** One block per row (long rows, e.g. a vocabulary): grid = size. */
        BLOCK_ROWS,
        /** One thread per column, rows walked in order: grid = ⌈size/256⌉. */
        COLUMNS,
        /** Grid-stride with one partial result per block: grid = min(⌈size/256⌉, MAX_PARTIALS). */
        PARTIALS,
        /** A single block. */
        ONE_BLOCK
    }

    /** A one-dimensional launch: gridX blocks of blockX threads with sharedBytes of dynamic shared memory. */
    public record Launch(int gridX, int blockX, int sharedBytes) {}

    public record Kernel(String name, String source, Rule rule, List<String> sizeParams, List<Param> params) {
        /** The parameter kinds as letters, e.g. "PPIF" (the host build checks it against the C signature). */
        public String signature() {
            StringBuilder sb = new StringBuilder();
            for (Param p : params) sb.append(p.kind.code);
            return sb.toString();
        }

        /** The launch geometry for these arguments (in parameter order). */
        public Launch launch(Object... args) {
            check(args);
            long size = 1;
            for (String s : sizeParams) size *= (Integer) args[indexOf(s)];
            if (size <= 0) throw new KilnException("kernel " + name + ": launch size " + size + " from " + sizeParams + " must be positive");
            long grid = switch (rule) {
                case ELEMENTS -> Math.min(ceilDiv(size, BLOCK), MAX_GRID);
                case WARP_ROWS -> ceilDiv(size, BLOCK / 32);
                case BLOCK_ROWS -> size;
                case COLUMNS -> ceilDiv(size, BLOCK);
                case PARTIALS -> Math.min(ceilDiv(size, BLOCK), MAX_PARTIALS);
                case ONE_BLOCK -> 1;
            };
            if (grid > Integer.MAX_VALUE) throw new KilnException("kernel " + name + ": grid of " + grid + " blocks is too large");
            return new Launch((int) grid, BLOCK, 0);
        }

        /**
         * cuLaunchKernel's kernelParams for these arguments, allocated in arena: PTR takes a
         * MemorySegment (its address; NULL for an absent optional buffer) or a Long device address,
         * INT an Integer, FLOAT a Float or Double (rounded to float).
         */
        public MemorySegment pack(Arena arena, Object... args) {
            check(args);
            int n = params.size();
            MemorySegment values = arena.allocate(8L * Math.max(n, 1), 8), pointers = arena.allocate(ValueLayout.ADDRESS, Math.max(n, 1));
            for (int i = 0; i < n; i++) {
                MemorySegment slot = values.asSlice(8L * i, 8);
                switch (params.get(i).kind) {
                    case PTR -> slot.set(ValueLayout.JAVA_LONG, 0, args[i] instanceof MemorySegment m ? m.address() : (Long) args[i]);
                    case INT -> slot.set(ValueLayout.JAVA_INT, 0, (Integer) args[i]);
                    case FLOAT -> slot.set(ValueLayout.JAVA_FLOAT, 0, ((Number) args[i]).floatValue());
                }
                pointers.setAtIndex(ValueLayout.ADDRESS, i, slot);
            }
            return pointers;
        }

        private void check(Object[] args) {
            if (args.length != params.size())
                throw new KilnException("kernel " + name + " takes " + params.size() + " arguments " + describe() + ", got " + args.length);
            for (int i = 0; i < args.length; i++) {
                Param p = params.get(i);
                Object a = args[i];
                boolean ok = switch (p.kind) {
                    case PTR -> a instanceof MemorySegment || a instanceof Long;
                    case INT -> a instanceof Integer;
                    case FLOAT -> a instanceof Float || a instanceof Double;
                };
                if (!ok) throw new KilnException("kernel " + name + ": argument " + p.name + " must be " + p.kind + ", got "
                        + (a == null ? "null" : a.getClass().getSimpleName()));
            }
        }

        private int indexOf(String param) {
            for (int i = 0; i < params.size(); i++) if (params.get(i).name.equals(param)) return i;
            throw new IllegalStateException("kernel " + name + " has no parameter " + param);
        }

        private String describe() {
            StringBuilder sb = new StringBuilder("(");
            for (Param p : params) sb.append(sb.length() > 1 ? ", " : "").append(p.name).append(':').append(p.kind.code);
            return sb.append(')').toString();
        }
    }

    private static long ceilDiv(long a, long b) {
        return (a + b - 1) / b;
    }

    private static final Map<String, Kernel> BY_NAME = new LinkedHashMap<>();

    static {
        // params: "name:K …" with K = P (pointer), I (int), F (float); "T" marks a _f32/_bf16 pair
        String el = "elementwise.cu";
        pair(el, "binary", Rule.ELEMENTS, "n", "op:I a:P b:P out:P n:I d1:I d2:I d3:I as0:I as1:I as2:I as3:I bs0:I bs1:I bs2:I bs3:I");
        pair(el, "axpy", Rule.ELEMENTS, "n", "alpha:F src:P dst:P n:I");
        pair(el, "scale", Rule.ELEMENTS, "n", "x:P alpha:F n:I");

        pair("gelu.cu", "gelu_forward", Rule.ELEMENTS, "n", "x:P out:P n:I");
        pair("gelu.cu", "gelu_backward", Rule.ELEMENTS, "n", "x:P gradOut:P gradIn:P n:I");
        pair("gelu.cu", "bias_gelu_forward", Rule.ELEMENTS, "n", "pre:P bias:P out:P n:I c:I");

        String ln = "layernorm.cu";
        pair(ln, "layernorm_forward", Rule.WARP_ROWS, "rows", "x:P w:P b:P out:P mean:P rstd:P rows:I c:I eps:F");
        pair(ln, "layernorm_backward", Rule.WARP_ROWS, "rows", "x:P w:P mean:P rstd:P gradOut:P gradX:P rows:I c:I");
        pair(ln, "layernorm_backward_params", Rule.COLUMNS, "c", "x:P mean:P rstd:P gradOut:P gradW:P gradB:P rows:I c:I");

        pair("softmax.cu", "softmax_forward", Rule.WARP_ROWS, "rows", "x:P out:P rows:I n:I causal:I");
        pair("softmax.cu", "softmax_backward", Rule.WARP_ROWS, "rows", "y:P gradOut:P gradIn:P rows:I n:I");

        String ce = "crossentropy.cu";
        pair(ce, "crossentropy_forward", Rule.BLOCK_ROWS, "rows",
                "logits:P targets:P losses:P lse:P error:P rows:I v:I ignoreIndex:I smoothing:F zLoss:F");
        pair(ce, "crossentropy_backward", Rule.BLOCK_ROWS, "rows",
                "logits:P targets:P lse:P gradLogits:P rows:I v:I ignoreIndex:I smoothing:F zLoss:F scale:F");

        String em = "embedding.cu";
        pair(em, "embedding_forward", Rule.ELEMENTS, "n c", "idx:P weight:P out:P error:P n:I c:I v:I");
        pair(em, "embedding_backward", Rule.ELEMENTS, "n c", "idx:P gradOut:P gradW:P n:I c:I v:I");
        pair(em, "embedding_backward_deterministic", Rule.COLUMNS, "c", "idx:P gradOut:P gradW:P n:I c:I v:I");

        String at = "attention.cu";
        pair(at, "attention_permute", Rule.ELEMENTS, "b t nh d", "qkv:P q:P k:P v:P b:I t:I nh:I d:I");
        pair(at, "attention_permute_backward", Rule.ELEMENTS, "b t nh d", "dq:P dk:P dv:P dqkv:P b:I t:I nh:I d:I");
        pair(at, "attention_unpermute", Rule.ELEMENTS, "b t nh d", "o:P out:P b:I t:I nh:I d:I");
        pair(at, "attention_unpermute_backward", Rule.ELEMENTS, "b t nh d", "dout:P dO:P b:I t:I nh:I d:I");
        pair(at, "attention_softmax_forward", Rule.WARP_ROWS, "rows", "scores:P probs:P rows:I t:I scale:F");
        pair(at, "attention_softmax_backward", Rule.WARP_ROWS, "rows", "probs:P gradProbs:P gradScores:P rows:I t:I scale:F");

        String ll = "llama.cu";
        pair(ll, "rmsnorm_forward", Rule.WARP_ROWS, "rows", "x:P w:P out:P rstd:P rows:I c:I eps:F");
        pair(ll, "rmsnorm_backward", Rule.WARP_ROWS, "rows", "x:P w:P rstd:P gradOut:P gradX:P rows:I c:I");
        pair(ll, "rmsnorm_backward_weight", Rule.COLUMNS, "c", "x:P rstd:P gradOut:P gradW:P rows:I c:I");
        pair(ll, "rope", Rule.ELEMENTS, "pairs", "x:P cos:P sin:P out:P pairs:I w:I d:I tLen:I inverse:I");
        pair(ll, "swiglu_forward", Rule.ELEMENTS, "n", "gate:P up:P out:P n:I");
        pair(ll, "swiglu_backward", Rule.ELEMENTS, "n", "gate:P up:P gradOut:P gradGate:P gradUp:P n:I");

        String optimizerScalars = " beta1:F beta2:F oneMinusBeta1:F oneMinusBeta2:F stepSize:F invSqrtBc2:F lrTimesWd:F eps:F";
        one("adamw.cu", "adamw_f32", Rule.ELEMENTS, "n", "p:P g:P m:P v:P n:I" + optimizerScalars);
        one("adamw.cu", "adamw_bf16", Rule.ELEMENTS, "n", "p:P g:P m:P v:P pCopy:P n:I" + optimizerScalars);

        one("convert.cu", "convert_f32_to_bf16", Rule.ELEMENTS, "n", "src:P dst:P n:I");
        one("convert.cu", "convert_bf16_to_f32", Rule.ELEMENTS, "n", "src:P dst:P n:I");

        pair("reduce.cu", "sum_rows", Rule.COLUMNS, "n", "src:P dst:P rows:I n:I");
        pair("reduce.cu", "sum_squares_partial", Rule.PARTIALS, "n", "x:P partials:P n:I");
        one("reduce.cu", "sum_partials", Rule.ONE_BLOCK, "", "partials:P out:P count:I");
        pair("reduce.cu", "count_nonfinite", Rule.ELEMENTS, "n", "x:P count:P n:I");
    }

    private static void pair(String source, String base, Rule rule, String size, String params) {
        one(source, base + "_f32", rule, size, params);
        one(source, base + "_bf16", rule, size, params);
    }

    private static void one(String source, String name, Rule rule, String size, String params) {
        List<Param> ps = new ArrayList<>();
        for (String p : params.trim().split("\\s+")) {
            String[] nk = p.split(":");
            Kind k = switch (nk[1]) {
                case "P" -> Kind.PTR;
                case "I" -> Kind.INT;
                case "F" -> Kind.FLOAT;
                default -> throw new IllegalStateException("bad kind in " + p);
            };
            ps.add(new Param(nk[0], k));
        }
        List<String> sizes = size.isBlank() ? List.of() : Arrays.asList(size.trim().split("\\s+"));
        Kernel k = new Kernel(name, source, rule, List.copyOf(sizes), List.copyOf(ps));
        for (String s : sizes) k.indexOf(s); // a size must be a parameter
        if (BY_NAME.put(name, k) != null) throw new IllegalStateException("kernel " + name + " listed twice");
    }

    /** Every kernel, in catalog order. */
    public static List<Kernel> all() {
        return List.copyOf(BY_NAME.values());
    }

    public static Kernel get(String name) {
        Kernel k = BY_NAME.get(name);
        if (k == null) throw new KilnException("no CUDA kernel named " + name + " in the catalog (dev.kiln.backend.cuda.Kernels)");
        return k;
    }

    /** The distinct source files, in catalog order. */
    public static List<String> sources() {
        return BY_NAME.values().stream().map(Kernel::source).distinct().toList();
    }

    /**
     * The headers NVRTC needs (name → text, for nvrtcCreateProgram's headers/includeNames):
     * every header but the host-only kiln_emu.h. Compile with {@code --gpu-architecture=sm_XY}
     * (sm_80 or newer: bf16) and {@code -std=c++17}; with the toolkit's include directory passed as
     * {@code --include-path}, cuda_bf16.h is used, otherwise kiln_cuda.h's own bf16 type.
     */
    public static Map<String, String> nvrtcHeaders() {
        Map<String, String> h = new LinkedHashMap<>();
        for (String name : HEADERS) if (!name.equals("kiln_emu.h")) h.put(name, text(name));
        return h;
    }

    /** The text of a kernel source or header from the class path. */
    public static String text(String file) {
        try (InputStream in = Kernels.class.getResourceAsStream(RESOURCE_DIR + file)) {
            if (in == null) throw new KilnException("CUDA kernel source " + RESOURCE_DIR + file + " is missing from the class path");
            return new String(in.readAllBytes(), StandardCharsets.UTF_8);
        } catch (IOException e) {
            throw new KilnException("cannot read CUDA kernel source " + file + ": " + e.getMessage(), e);
        }
    }
}
