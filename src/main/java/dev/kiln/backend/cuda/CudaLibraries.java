package dev.kiln.backend.cuda;

import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.SymbolLookup;
import java.nio.file.DirectoryStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * Finds the CUDA libraries Kiln binds through FFM. Folders are searched in this order, and the first
 * folder holding one of a library's sonames wins (CUDA 13 before 12 within a folder):
 * <ol>
 *   <li>{@code $KILN_CUDA_HOME}, then {@code $CUDA_HOME}, then {@code $CUDA_PATH}: each the folder itself and its
 *       {@code lib64}, {@code lib}, {@code targets/x86_64-linux/lib};</li>
 *   <li>the toolkit: {@code /usr/local/cuda}, then {@code /usr/local/cuda-*} newest first ({@code targets/x86_64-linux/lib}, {@code lib64});</li>
 *   <li>the system: {@code /usr/lib/x86_64-linux-gnu}, {@code /usr/lib64}, {@code /usr/lib}, {@code /usr/lib/wsl/lib} (where the driver's {@code libcuda.so.1} lives);</li>
 *   <li>NVIDIA's Python wheels ({@code site-packages/nvidia/<pkg>/lib}: {@code cu13/lib} for CUDA 13, {@code cublas/lib} … for 12)
 *       under {@code $VIRTUAL_ENV}, {@code $CONDA_PREFIX}, {@code /opt/*}{@code /.venv} and {@code /opt/*}{@code /venv}, {@code ~/.venv},
 *       {@code ~/.local}, {@code /usr/local/lib/python3*} and {@code /usr/lib/python3/dist-packages}.</li>
 * </ol>
 * Failing all of these, {@link #open} asks the dynamic linker for the soname (ld.so.cache, {@code LD_LIBRARY_PATH}).
 * The search is a pure function of the environment and a file-system root, so tests lay out fake trees.
 */
public final class CudaLibraries {

    /** A library Kiln uses, with the sonames it accepts in order of preference. */
    public enum Library {
        DRIVER("the NVIDIA driver", "libcuda.so.1"),
        CUDART("the CUDA runtime", "libcudart.so.13", "libcudart.so.12"),
        CUBLAS("cuBLAS", "libcublas.so.13", "libcublas.so.12"),
        CUBLASLT("cuBLASLt", "libcublasLt.so.13", "libcublasLt.so.12"),
        NVRTC("NVRTC", "libnvrtc.so.13", "libnvrtc.so.12");

        private final String what;
        private final List<String> sonames;

        Library(String what, String... sonames) {
            this.what = what;
            this.sonames = List.of(sonames);
        }

        public List<String> sonames() {
            return sonames;
        }

        /** e.g. "cuBLAS (libcublas.so.13 or libcublas.so.12)". */
        public String describe() {
            return what + " (" + String.join(" or ", sonames) + ")";
        }
    }

    private static final List<String> ENV_VARS = List.of("KILN_CUDA_HOME", "CUDA_HOME", "CUDA_PATH");
    private static final List<String> HOME_SUBDIRS = List.of("", "lib64", "lib", "targets/x86_64-linux/lib");
    private static final String WHEELS = "lib/python3*/site-packages/nvidia/*/lib";

    private final Map<String, String> env;
    private final Path root;

    /** The search as seen from {@code root} ("/" for the real machine) with the given environment variables. */
    public CudaLibraries(Map<String, String> env, Path root) {
        this.env = Map.copyOf(env);
        this.root = root;
    }

    /** The real machine's search. */
    public static CudaLibraries system() {
        return new CudaLibraries(System.getenv(), Path.of("/"));
    }

    /** The folder patterns searched, in order, as written in error messages (env vars shown with their values). */
    public List<String> patterns() {
        List<String> p = new ArrayList<>();
        for (String var : ENV_VARS) {
            String v = env(var);
            if (v == null) continue;
            for (String sub : HOME_SUBDIRS) p.add(sub.isEmpty() ? v : v + "/" + sub);
        }
        p.add("/usr/local/cuda/targets/x86_64-linux/lib");
        p.add("/usr/local/cuda/lib64");
        p.add("/usr/local/cuda-*/targets/x86_64-linux/lib");
        p.add("/usr/local/cuda-*/lib64");
        p.add("/usr/lib/x86_64-linux-gnu");
        p.add("/usr/lib64");
        p.add("/usr/lib");
        p.add("/usr/lib/wsl/lib");
        if (env("VIRTUAL_ENV") != null) p.add(env("VIRTUAL_ENV") + "/" + WHEELS);
        if (env("CONDA_PREFIX") != null) {
            p.add(env("CONDA_PREFIX") + "/lib");
            p.add(env("CONDA_PREFIX") + "/" + WHEELS);
        }
        p.add("/opt/*/.venv/" + WHEELS);
        p.add("/opt/*/venv/" + WHEELS);
        if (env("HOME") != null) {
            p.add(env("HOME") + "/.venv/" + WHEELS);
            p.add(env("HOME") + "/.local/" + WHEELS);
        }
        p.add("/usr/local/lib/python3*/dist-packages/nvidia/*/lib");
        p.add("/usr/local/lib/python3*/site-packages/nvidia/*/lib");
        p.add("/usr/lib/python3/dist-packages/nvidia/*/lib");
        return p;
    }

    private String env(String name) {
        String v = env.get(name);
        return v == null || v.isBlank() ? null : v.trim();
    }

    /** Existing folders, in search order, without repeats. */
    public List<Path> searchDirs() {
        LinkedHashSet<Path> dirs = new LinkedHashSet<>();
        for (String pattern : patterns()) {
            for (Path d : expand(pattern)) if (Files.isDirectory(d)) dirs.add(d.normalize());
        }
        return List.copyOf(dirs);
    }

    /** The file of the first folder that holds one of the library's sonames. */
    public Optional<Path> find(Library lib) {
        for (Path dir : searchDirs()) {
            for (String so : lib.sonames()) {
                Path f = dir.resolve(so);
                if (Files.isRegularFile(f)) return Optional.of(f);   // follows symlinks, as sonames usually are
            }
        }
        return Optional.empty();
    }

    /** {@link #find} or a one-line {@link CudaUnavailableException} saying what was looked for where. */
    public Path require(Library lib) {
        return find(lib).orElseThrow(() -> new CudaUnavailableException(notFound(lib, false)));
    }

    /**
     * Loads the library: the file {@link #find} gives, else the soname through the dynamic linker. The
     * lookup lives as long as the process (the libraries are never unloaded).
     */
    public SymbolLookup open(Library lib) {
        Optional<Path> file = find(lib);
        if (file.isPresent()) {
            try {
                preloadCompanions(lib, file.get().getParent());
                return SymbolLookup.libraryLookup(file.get(), Arena.global());
            } catch (IllegalArgumentException | IllegalCallerException e) {
                throw new CudaUnavailableException(lib.describe() + " was found at " + file.get() + " but cannot be loaded: " + e.getMessage(), e);
            }
        }
        for (String so : lib.sonames()) {
            try {
                return SymbolLookup.libraryLookup(so, Arena.global());
            } catch (IllegalArgumentException e) {
                // not known to the dynamic linker either: try the next soname, then fail below
            }
        }
        throw new CudaUnavailableException(notFound(lib, true));
    }

    /**
     * NVRTC dlopens {@code libnvrtc-builtins.so.<major>.<minor>} by soname, and libnvrtc has no RUNPATH: outside
     * the dynamic linker's path (NVIDIA's wheels, KILN_CUDA_HOME) that fails. Loading the builtins from the
     * same folder first makes the later dlopen find the already-loaded library by its soname.
     */
    private static void preloadCompanions(Library lib, Path dir) {
        if (lib != Library.NVRTC || dir == null) return;
        try (DirectoryStream<Path> ds = Files.newDirectoryStream(dir, "libnvrtc-builtins.so.*")) {
            for (Path p : ds) {
                try {
                    SymbolLookup.libraryLookup(p, Arena.global());
                } catch (IllegalArgumentException e) {
                    // not loadable (another version's leftovers): NVRTC will report what it misses
                }
            }
        } catch (IOException e) {
            // unreadable folder: NVRTC will report what it misses
        }
    }

    /** The one-line message for a library found nowhere. */
    String notFound(Library lib, boolean askedLinker) {
        StringBuilder unset = new StringBuilder();
        for (String var : ENV_VARS) if (env(var) == null) unset.append(unset.isEmpty() ? "" : ", ").append(var);
        return "CUDA is not available: " + lib.describe() + " not found in " + String.join(", ", patterns())
                + (unset.isEmpty() ? "" : " (" + unset + " unset)")
                + (askedLinker ? ", nor by the dynamic linker" : "")
                + (lib == Library.DRIVER ? "; is there an NVIDIA GPU and driver? " : "; ")
                + "set KILN_CUDA_HOME to the folder holding " + lib.sonames().getFirst() + ", or train on the CPU (--device cpu)";
    }

    // ---- globbing: '*' within a path segment, matches sorted newest version first ----

    private List<Path> expand(String pattern) {
        Path start = pattern.startsWith("/") && !isFromEnv(pattern) ? root : Path.of("/");
        List<Path> current = List.of(start);
        for (String seg : pattern.split("/")) {
            if (seg.isEmpty()) continue;
            List<Path> next = new ArrayList<>();
            for (Path base : current) {
                if (!seg.contains("*")) {
                    next.add(base.resolve(seg));
                    continue;
                }
                if (!Files.isDirectory(base)) continue;
                List<Path> matches = new ArrayList<>();
                try (DirectoryStream<Path> ds = Files.newDirectoryStream(base, seg)) {
                    for (Path m : ds) if (Files.isDirectory(m)) matches.add(m);
                } catch (IOException e) {
                    continue;   // unreadable folder: nothing to find there
                }
                matches.sort(Comparator.comparing((Path m) -> m.getFileName().toString(), CudaLibraries::compareVersions).reversed());
                next.addAll(matches);
            }
            current = next;
        }
        return current;
    }

    /** Env-var values are real paths even when the standard folders are read under a test root. */
    private boolean isFromEnv(String pattern) {
        for (String var : List.of("KILN_CUDA_HOME", "CUDA_HOME", "CUDA_PATH", "VIRTUAL_ENV", "CONDA_PREFIX", "HOME")) {
            String v = env(var);
            if (v != null && (pattern.equals(v) || pattern.startsWith(v + "/"))) return true;
        }
        return false;
    }

    private static final Pattern NUMBER = Pattern.compile("\\d+");

    /** Compares names by their numeric runs as numbers ("cuda-12.10" after "cuda-12.9"), then as text. */
    static int compareVersions(String a, String b) {
        Matcher ma = NUMBER.matcher(a), mb = NUMBER.matcher(b);
        while (ma.find() && mb.find()) {
            String x = ma.group().replaceFirst("^0+(?=.)", ""), y = mb.group().replaceFirst("^0+(?=.)", "");
            int c = x.length() != y.length() ? Integer.compare(x.length(), y.length()) : x.compareTo(y);
            if (c != 0) return c;
        }
        return a.compareTo(b);
    }
}
