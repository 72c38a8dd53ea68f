package dev.kiln.backend.cuda;

import dev.kiln.AtomicFile;
import dev.kiln.KilnException;

import java.io.IOException;
import java.io.InputStream;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.NoSuchFileException;
import java.nio.file.Path;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HexFormat;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;

/**
 * Compiled kernels on disk: a cubin per (compiler version, options, source), named by the SHA-256 of those,
 * so a kernel is compiled once per GPU architecture and the next run loads it in microseconds. A file holds
 * a magic, the payload length and the payload's SHA-256 before the payload; a file that does not check out
 * (truncated by a crash, overwritten) is compiled again and replaced, never loaded. Writes are atomic.
 *
 * <p>Folder: {@code $KILN_CUDA_CACHE}, else {@code $XDG_CACHE_HOME/kiln/cuda}, else {@code ~/.cache/kiln/cuda}.
 */
public final class KernelCache {
    private static final byte[] MAGIC = "KILNCUB1".getBytes(StandardCharsets.US_ASCII);
    private static final int HEADER = MAGIC.length + Long.BYTES + 32;

    private final Path dir;
    private final KernelCompiler compiler;
    private int compiles, hits, rejected;

    public KernelCache(Path dir, KernelCompiler compiler) {
        this.dir = dir;
        this.compiler = compiler;
    }

    /** The cache folder the environment asks for. */
    public static Path defaultDir(Map<String, String> env) {
        String own = env.get("KILN_CUDA_CACHE");
        if (own != null && !own.isBlank()) return Path.of(own.trim());
        String xdg = env.get("XDG_CACHE_HOME");
        if (xdg != null && !xdg.isBlank()) return Path.of(xdg.trim(), "kiln", "cuda");
        return Path.of(env.getOrDefault("HOME", System.getProperty("user.home")), ".cache", "kiln", "cuda");
    }

    /** NVRTC options for a device of compute capability major.minor, e.g. 9.0 → --gpu-architecture=sm_90. */
    public static List<String> options(int ccMajor, int ccMinor, List<String> extra) {
        if (ccMajor < 5 || ccMajor > 99 || ccMinor < 0 || ccMinor > 9)
            throw new IllegalArgumentException("not a compute capability: " + ccMajor + "." + ccMinor);
        List<String> o = new ArrayList<>();
        o.add("--gpu-architecture=sm_" + ccMajor + ccMinor);
        o.add("--std=c++17");
        o.addAll(extra);
        return o;
    }

    /** Hex SHA-256 of the compiler version, the options (in order), the headers (by name) and the source. */
    public String key(String source, Map<String, String> headers, List<String> options) {
        MessageDigest d = sha256();
        d.update((compiler.version() + "\0").getBytes(StandardCharsets.UTF_8));
        for (String o : options) d.update((o + "\0").getBytes(StandardCharsets.UTF_8));
        for (var h : new TreeMap<>(headers).entrySet()) {
            // lengths delimit the parts, so no text can pose as another split of the same bytes
            byte[] n = h.getKey().getBytes(StandardCharsets.UTF_8), t = h.getValue().getBytes(StandardCharsets.UTF_8);
            d.update(ByteBuffer.allocate(16).putLong(n.length).putLong(t.length).array());
            d.update(n);
            d.update(t);
        }
        d.update(source.getBytes(StandardCharsets.UTF_8));
        return HexFormat.of().formatHex(d.digest());
    }

    public String key(String source, List<String> options) {
        return key(source, Map.of(), options);
    }

    public Path path(String key) {
        return dir.resolve(key + ".cubin");
    }

    /** The cubin of {@code source}: from the cache if a valid entry exists, else compiled and stored. */
    public byte[] cubin(String source, String name, Map<String, String> headers, List<String> options) {
        Path file = path(key(source, headers, options));
        byte[] cached = read(file);
        if (cached != null) {
            hits++;
            return cached;
        }
        byte[] image = compiler.compile(source, name, headers, options);
        compiles++;
        store(file, image);
        return image;
    }

    public byte[] cubin(String source, String name, List<String> options) {
        return cubin(source, name, Map.of(), options);
    }

    /** Reads a classpath resource (e.g. {@code /dev/kiln/cuda/kernels/gelu.cu}) as source text. */
    public static String resource(String path) {
        try (InputStream in = KernelCache.class.getResourceAsStream(path)) {
            if (in == null) throw new KilnException("CUDA kernel source " + path + " is not on the classpath");
            return new String(in.readAllBytes(), StandardCharsets.UTF_8);
        } catch (IOException e) {
            throw new KilnException("cannot read CUDA kernel source " + path + ": " + e.getMessage(), e);
        }
    }

    /** The payload of a valid entry, or null when absent or damaged (then counted in {@link #rejected()}). */
    private byte[] read(Path file) {
        byte[] all;
        try {
            all = Files.readAllBytes(file);
        } catch (NoSuchFileException e) {
            return null;
        } catch (IOException e) {
            rejected++;
            return null;
        }
        if (all.length < HEADER || !Arrays.equals(all, 0, MAGIC.length, MAGIC, 0, MAGIC.length)) {
            rejected++;
            return null;
        }
        ByteBuffer bb = ByteBuffer.wrap(all);
        long len = bb.getLong(MAGIC.length);
        if (len != all.length - HEADER) {
            rejected++;
            return null;
        }
        byte[] payload = Arrays.copyOfRange(all, HEADER, all.length);
        if (!Arrays.equals(sha256().digest(payload), 0, 32, all, MAGIC.length + Long.BYTES, HEADER)) {
            rejected++;
            return null;
        }
        return payload;
    }

    /** Best effort: a read-only or full disk costs a recompile next time, not the run. */
    private void store(Path file, byte[] image) {
        ByteBuffer buf = ByteBuffer.allocate(HEADER + image.length);
        buf.put(MAGIC).putLong(image.length).put(sha256().digest(image)).put(image).flip();
        try {
            Files.createDirectories(dir);
            AtomicFile.write(file, ch -> {
                while (buf.hasRemaining()) ch.write(buf);
            });
        } catch (IOException e) {
            System.err.println("kiln: warning: cannot write the CUDA kernel cache " + file + ": " + e.getMessage());
        }
    }

    private static MessageDigest sha256() {
        try {
            return MessageDigest.getInstance("SHA-256");
        } catch (NoSuchAlgorithmException e) {
            throw new IllegalStateException("the JDK lacks SHA-256", e);
        }
    }

    /** Kernels compiled by this cache (misses). */
    public int compiles() {
        return compiles;
    }

    /** Kernels loaded from disk. */
    public int hits() {
        return hits;
    }

    /** Damaged entries found and replaced. */
    public int rejected() {
        return rejected;
    }

    public Path dir() {
        return dir;
    }
}
