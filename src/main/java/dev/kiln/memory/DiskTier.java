package dev.kiln.memory;

import dev.kiln.KilnException;
import dev.kiln.tensor.Pager;

import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.nio.channels.FileChannel;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.ArrayList;
import java.util.List;

/**
 * ZeRO-Infinity's NVMe tier on a CPU machine: each group of tensors is one file {@code <dir>/<group>.bin}, memory-
 * mapped read-write; its tensors are 64-byte aligned slices. Paging in copies from the mapping (the OS reads the
 * pages from disk when they are not cached), paging out copies into it (the OS writes dirty pages back). The files
 * are scratch space: deleted on {@link #close()}.
 */
public final class DiskTier implements OffloadTier {
    private final Path dir;
    private final Arena arena = Arena.ofShared();
    private final List<Path> files = new ArrayList<>();
    private final boolean created;
    private long bytes;

    public DiskTier(Path dir) {
        this.dir = dir;
        this.created = !Files.exists(dir);
        try {
            Files.createDirectories(dir);
        } catch (IOException e) {
            throw new KilnException("train.offload_dir: cannot create " + dir + ": " + e.getMessage());
        }
    }

    @Override
    public synchronized Pager[] slots(String group, long[] sizes) {
        long total = 0;
        long[] offsets = new long[sizes.length];
        for (int i = 0; i < sizes.length; i++) {
            offsets[i] = total;
            total += (sizes[i] + 63) & ~63L;
        }
        Path file = dir.resolve(group + ".bin");
        MemorySegment map;
        try (FileChannel ch = FileChannel.open(file, StandardOpenOption.CREATE, StandardOpenOption.READ, StandardOpenOption.WRITE,
                StandardOpenOption.TRUNCATE_EXISTING)) {
            map = total == 0 ? MemorySegment.NULL : ch.map(FileChannel.MapMode.READ_WRITE, 0, total, arena);
        } catch (IOException e) {
            throw new KilnException("train.offload_dir: cannot map " + file + " (" + total + " bytes): " + e.getMessage());
        }
        files.add(file);
        bytes += total;
        Pager[] out = new Pager[sizes.length];
        for (int i = 0; i < sizes.length; i++) {
            MemorySegment slot = map.asSlice(offsets[i], sizes[i]);
            out[i] = new Pager() {
                @Override
                public void load(MemorySegment dst) {
                    MemorySegment.copy(slot, 0, dst, 0, slot.byteSize());
                }

                @Override
                public void save(MemorySegment src) {
                    MemorySegment.copy(src, 0, slot, 0, slot.byteSize());
                }
            };
        }
        return out;
    }

    @Override
    public synchronized long bytes() {
        return bytes;
    }

    /** The files written so far (tests). */
    public synchronized List<Path> files() {
        return List.copyOf(files);
    }

    @Override
    public synchronized void close() {
        arena.close();
        for (Path f : files) {
            try {
                Files.deleteIfExists(f);
            } catch (IOException e) {
                System.err.println("kiln: warning: could not delete offload file " + f + ": " + e.getMessage());
            }
        }
        files.clear();
        if (created) {
            try {
                Files.deleteIfExists(dir); // only when empty: a directory this tier made
            } catch (IOException ignored) {
                // not empty (someone else's files) or not removable: leave it
            }
        }
    }
}
