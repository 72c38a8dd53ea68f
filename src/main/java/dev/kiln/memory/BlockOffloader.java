package dev.kiln.memory;

import dev.kiln.KilnException;
import dev.kiln.tensor.Pager;
import dev.kiln.tensor.Storage;
import dev.kiln.tensor.Tensor;

import java.util.ArrayList;
import java.util.IdentityHashMap;
import java.util.List;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;

/**
 * Groups of tensors (one per transformer block) kept in an {@link OffloadTier} and made resident group by group:
 * {@link #prefetch} pages a group in on the one background offload thread, {@link #acquire} waits for it (or pages
 * it in now), {@link #release} pages it out again (writing back what changed). The caller walks the groups in
 * order and prefetches {@code depth} groups ahead, so copies overlap compute. Each tensor must own its storage
 * (parameters and optimizer state do). Resident bytes are counted from a group's prefetch (or acquire) to its
 * release, with their peak.
 */
public final class BlockOffloader implements AutoCloseable {
    private final List<List<Storage>> groups = new ArrayList<>();
    private final List<Future<?>> pending = new ArrayList<>();
    private final long[] groupBytes;
    private final boolean[] resident;
    private final int depth;
    private final String what;
    private final ExecutorService io;
    private long residentBytes, peakResidentBytes, totalBytes;

    /**
     * Moves every tensor of {@code tensorGroups} into {@code tier} (group i as "{@code what}-i") and pages it out.
     * {@code depth}: how many groups ahead {@link #prefetchAhead} fetches.
     */
    public BlockOffloader(String what, List<List<Tensor>> tensorGroups, OffloadTier tier, int depth) {
        if (depth < 0) throw new IllegalArgumentException("prefetch depth must be >= 0, got " + depth);
        this.what = what;
        this.depth = depth;
        this.groupBytes = new long[tensorGroups.size()];
        this.resident = new boolean[tensorGroups.size()];
        IdentityHashMap<Storage, Boolean> seen = new IdentityHashMap<>();
        for (int g = 0; g < tensorGroups.size(); g++) {
            List<Storage> storages = new ArrayList<>();
            for (Tensor t : tensorGroups.get(g)) {
                Storage s = t.storage();
                if (seen.put(s, true) != null) throw new KilnException(what + ": a tensor shares its storage with another; offload needs tensors that own their memory");
                storages.add(s);
            }
            long[] sizes = storages.stream().mapToLong(Storage::byteSize).toArray();
            Pager[] slots = tier.slots(String.format("%s-%03d", what, g), sizes);
            for (int i = 0; i < storages.size(); i++) {
                storages.get(i).attachPager(slots[i]);
                storages.get(i).pageOut();
                groupBytes[g] += sizes[i];
            }
            totalBytes += groupBytes[g];
            groups.add(storages);
            pending.add(null);
        }
        this.io = Executors.newSingleThreadExecutor(r -> {
            Thread t = new Thread(r, "kiln-offload-" + what);
            t.setDaemon(true);
            return t;
        });
    }

    public int size() {
        return groups.size();
    }

    public int depth() {
        return depth;
    }

    /** Starts paging group {@code g} in on the offload thread (no-op when it is resident or on its way, or out of range). */
    public synchronized void prefetch(int g) {
        if (g < 0 || g >= groups.size() || resident[g] || pending.get(g) != null) return;
        markResident(g); // its memory is taken from now on: allocated and counted here, copied in on the offload thread
        List<Runnable> copies = new ArrayList<>();
        for (Storage st : groups.get(g)) copies.add(st.reserveForPageIn());
        pending.set(g, io.submit(() -> {
            for (Runnable c : copies) c.run();
        }));
    }

    /** Prefetches the {@code depth} groups after {@code g} in the direction {@code step} (+1 forward, −1 backward). */
    public void prefetchAhead(int g, int step) {
        for (int k = 1; k <= depth; k++) prefetch(g + k * step);
    }

    /** Makes group {@code g} resident (waiting for its prefetch); {@code forWrite}: it will change and is written back at release. */
    public void acquire(int g, boolean forWrite) {
        Future<?> f;
        synchronized (this) {
            f = pending.get(g);
        }
        if (f != null) {
            try {
                f.get();
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                throw new KilnException(what + ": interrupted while fetching group " + g);
            } catch (ExecutionException e) {
                throw new KilnException(what + ": fetching group " + g + " failed: " + e.getCause(), e.getCause());
            }
        }
        synchronized (this) {
            pending.set(g, null);
            for (Storage s : groups.get(g)) s.pageIn(forWrite);
            markResident(g);
        }
    }

    private synchronized void markResident(int g) {
        if (resident[g]) return;
        resident[g] = true;
        residentBytes += groupBytes[g];
        peakResidentBytes = Math.max(peakResidentBytes, residentBytes);
    }

    /** Pages group {@code g} out (after its prefetch, if one is running), writing back what changed. */
    public void release(int g) {
        Future<?> f;
        synchronized (this) {
            f = pending.get(g);
        }
        if (f != null) acquire(g, false); // let a running prefetch finish first
        synchronized (this) {
            for (Storage s : groups.get(g)) s.pageOut();
            if (resident[g]) {
                resident[g] = false;
                residentBytes -= groupBytes[g];
            }
        }
    }

    /** Pages every group out: the state between steps. */
    public void releaseAll() {
        for (int g = 0; g < groups.size(); g++) release(g);
    }

    /** Bytes of this offloader's groups resident now (prefetched or acquired; a demand page-in outside the schedule is not counted). */
    public synchronized long residentBytes() {
        return residentBytes;
    }

    public synchronized long peakResidentBytes() {
        return peakResidentBytes;
    }

    /** Bytes of all groups together (what would be resident without offload). */
    public long totalBytes() {
        return totalBytes;
    }

    /** Storages of group {@code g} that are in memory now, whatever brought them there (tests). */
    public synchronized int residentStorages(int g) {
        int n = 0;
        for (Storage s : groups.get(g)) if (s.isResident()) n++;
        return n;
    }

    /** Stops the offload thread, waiting for a copy in flight (the tier's mappings close after this). */
    @Override
    public void close() {
        io.shutdownNow();
        try {
            if (!io.awaitTermination(30, java.util.concurrent.TimeUnit.SECONDS))
                System.err.println("kiln: warning: the " + what + " offload thread did not stop within 30 s");
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }
}
