package dev.kiln.dist;

import dev.kiln.backend.cuda.CudaDriver;
import dev.kiln.backend.cuda.CudaRuntime;
import dev.kiln.tensor.Tensor;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.ArrayDeque;
import java.util.Arrays;

/**
 * Collectives over GPU memory through NCCL ({@link Nccl}), one communicator per group on one GPU.
 *
 * <p><b>How it fits {@link ProcessGroup}</b>: it does not implement it. ProcessGroup's buffers are host
 * {@code MemorySegment}s that MPI reads and writes; these buffers are device addresses (with a dtype: fp32 or bf16),
 * and a host segment handed to NCCL would be a crash, not an error. So the calls mirror ProcessGroup's (same names,
 * per-rank counts, the same {@link Work} handles and {@link CommStats} accounting) over {@code long} device
 * addresses, and what stays on the host — the unique id's exchange, loss and norm sums, sub-groups — stays with the
 * bootstrap ProcessGroup the group was made from (MPI under mpirun; none at world size 1).
 *
 * <p><b>Streams</b>: collectives run on the group's own stream, so they overlap with compute (e.g. gradient buckets
 * during backward). Each call first makes that stream wait for the compute stream's work so far (an event), so it
 * sees the buffers as the compute stream left them; its {@link Work} is a CUDA event recorded after it.
 *
 * <p><b>Failures</b>: {@link Work#await} polls the event and {@code ncclCommGetAsyncError}; an asynchronous error or
 * the timeout aborts the communicator ({@code ncclCommAbort}, which stops its kernels) and throws a one-line
 * {@link DistException} naming this rank and the call — the caller's error path then ends the job (under mpirun,
 * MpiProcessGroup's abort), never a hang. Communicator set-up ({@code ncclCommInitRank}) is blocking and not bounded
 * by the timeout.
 */
public final class NcclProcessGroup implements AutoCloseable {
    private final Nccl nccl;
    private final CudaRuntime rt;
    private final CudaDriver driver;
    private final MemorySegment comm, stream, ready;
    private final int rank, size;
    private final double timeoutSeconds;
    private final CommStats stats = new CommStats();
    private final ArrayDeque<MemorySegment> freeEvents = new ArrayDeque<>();
    private String failure;   // set once the communicator was aborted: every later call refuses
    private boolean closed;

    private NcclProcessGroup(Nccl nccl, CudaRuntime rt, int rank, int size, byte[] uniqueId, double timeoutSeconds) {
        if (!(timeoutSeconds > 0)) throw new IllegalArgumentException("timeout must be > 0 s, got " + timeoutSeconds);
        this.nccl = nccl;
        this.rt = rt;
        this.driver = rt.driver();
        this.rank = rank;
        this.size = size;
        this.timeoutSeconds = timeoutSeconds;
        rt.makeCurrent();   // NCCL takes the device from the calling thread's current context
        this.comm = nccl.commInitRank(size, uniqueId, rank);
        int n = nccl.commCount(comm), r = nccl.commUserRank(comm);
        if (n != size || r != rank) throw new DistException("NCCL communicator reports rank " + r + " of " + n + ", asked for rank " + rank + " of " + size);
        this.stream = driver.createStream();
        this.ready = driver.createEvent();
    }

    /**
     * The group of {@code bootstrap}'s ranks, one GPU each ({@code rt}): rank 0 makes the unique id and {@code bootstrap}
     * broadcasts it (at world size 1 it is made locally and no MPI is involved). Collective over {@code bootstrap}.
     */
    public static NcclProcessGroup create(Nccl nccl, CudaRuntime rt, ProcessGroup bootstrap, double timeoutSeconds) {
        byte[] id = bootstrap.rank() == 0 ? nccl.uniqueId() : new byte[Nccl.UNIQUE_ID_BYTES];
        if (bootstrap.size() > 1) id = broadcastId(bootstrap, id);
        return new NcclProcessGroup(nccl, rt, bootstrap.rank(), bootstrap.size(), id, timeoutSeconds);
    }

    /** One rank on one GPU: the whole NCCL path (communicator, stream, events) without MPI. */
    public static NcclProcessGroup single(Nccl nccl, CudaRuntime rt, double timeoutSeconds) {
        return create(nccl, rt, LocalProcessGroup.INSTANCE, timeoutSeconds);
    }

    /** Rank {@code rank} of {@code size} joining the communicator of {@code uniqueId} (for tests: ranks as threads). */
    static NcclProcessGroup join(Nccl nccl, CudaRuntime rt, int rank, int size, byte[] uniqueId, double timeoutSeconds) {
        return new NcclProcessGroup(nccl, rt, rank, size, uniqueId, timeoutSeconds);
    }

    /** The 128 id bytes go through the host group as 32 floats: MPI copies them bit for bit. */
    static byte[] broadcastId(ProcessGroup bootstrap, byte[] id) {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment buf = a.allocate(Nccl.UNIQUE_ID_BYTES, 4);
            MemorySegment.copy(id, 0, buf, ValueLayout.JAVA_BYTE, 0, Nccl.UNIQUE_ID_BYTES);
            bootstrap.broadcast(buf, Nccl.UNIQUE_ID_BYTES / 4, 0);
            return buf.toArray(ValueLayout.JAVA_BYTE);
        }
    }

    public int rank() {
        return rank;
    }

    public int size() {
        return size;
    }

    /** Bytes handed to each kind of call, counted as {@link CommStats} documents (element bytes of the dtype used). */
    public CommStats stats() {
        return stats;
    }

    /** The GPU the group runs on (its compute stream is the one collectives wait for). */
    public CudaRuntime runtime() {
        return rt;
    }

    /** The stream the collectives run on. */
    public MemorySegment stream() {
        return stream;
    }

    // ---- collectives over device addresses ----

    /** buf ← Σ over ranks of buf, in place. */
    public Work allReduceAsync(long buf, long count, Nccl.DataType type) {
        return allReduceAsync(buf, count, type, Nccl.RedOp.SUM);
    }

    public Work allReduceAsync(long buf, long count, Nccl.DataType type, Nccl.RedOp op) {
        checkCount(count);
        return enqueue("all-reduce (" + op.name().toLowerCase() + ") of " + count + " " + type.name().toLowerCase(), CommStats.Kind.ALL_REDUCE,
                count * type.bytes, () -> nccl.allReduce(buf, buf, count, type, op, comm, stream));
    }

    /** The whole of a contiguous fp32 or bf16 tensor on this group's GPU, summed in place. */
    public Work allReduceAsync(Tensor t) {
        if (!t.isContiguous()) throw new DistException("NCCL all-reduce needs a contiguous tensor, got " + t.shapeString());
        return allReduceAsync(rt.address(t), t.numel(), Nccl.DataType.of(t.dtype()));
    }

    /**
     * Each rank's {@code recv} (counts[rank] elements) ← Σ over ranks of its block of {@code send} (the blocks of ranks
     * 0..n−1 one after another). Equal counts are one ncclReduceScatter; unequal ones a group of ncclReduce, one per rank.
     */
    public Work reduceScatterAsync(long send, long recv, long[] counts, Nccl.DataType type) {
        long total = checkCounts(counts);
        return enqueue("reduce-scatter of " + total + " " + type.name().toLowerCase(), CommStats.Kind.REDUCE_SCATTER, total * type.bytes, () -> {
            if (equal(counts)) {
                nccl.reduceScatter(send, recv, counts[0], type, Nccl.RedOp.SUM, comm, stream);
                return;
            }
            grouped(counts, (r, offset) -> nccl.reduce(send + offset * type.bytes, recv, counts[r], type, Nccl.RedOp.SUM, r, comm, stream));
        });
    }

    /**
     * {@code recv} ← the {@code send} of ranks 0..n−1 one after another (rank r sends counts[r] elements). Equal counts
     * are one ncclAllGather; unequal ones a group of ncclBroadcast, one per rank.
     */
    public Work allGatherAsync(long send, long recv, long[] counts, Nccl.DataType type) {
        long total = checkCounts(counts);
        return enqueue("all-gather of " + total + " " + type.name().toLowerCase(), CommStats.Kind.ALL_GATHER, total * type.bytes, () -> {
            if (equal(counts)) {
                nccl.allGather(send, recv, counts[0], type, comm, stream);
                return;
            }
            grouped(counts, (r, offset) -> nccl.broadcast(send, recv + offset * type.bytes, counts[r], type, r, comm, stream));
        });
    }

    /** buf ← root's buf. */
    public Work broadcastAsync(long buf, long count, Nccl.DataType type, int root) {
        checkCount(count);
        checkRank(root, "root");
        return enqueue("broadcast of " + count + " " + type.name().toLowerCase() + " from rank " + root, CommStats.Kind.BROADCAST,
                count * type.bytes, () -> nccl.broadcast(buf, buf, count, type, root, comm, stream));
    }

    /**
     * Point to point on the group's one stream, in the order called: a send waits there for its matching receive, so
     * two ranks that both send first deadlock (NCCL would need the pair in one group); pipeline stages that send and
     * receive in matching order — rank 0 sends then receives, rank 1 receives then sends — need nothing more.
     */
    public Work sendAsync(long buf, long count, Nccl.DataType type, int peer) {
        checkCount(count);
        checkRank(peer, "peer");
        return enqueue("send of " + count + " " + type.name().toLowerCase() + " to rank " + peer, CommStats.Kind.SEND, count * type.bytes,
                () -> nccl.send(buf, count, type, peer, comm, stream));
    }

    public Work recvAsync(long buf, long count, Nccl.DataType type, int peer) {
        checkCount(count);
        checkRank(peer, "peer");
        return enqueue("receive of " + count + " " + type.name().toLowerCase() + " from rank " + peer, CommStats.Kind.RECV, count * type.bytes,
                () -> nccl.recv(buf, count, type, peer, comm, stream));
    }

    @FunctionalInterface
    private interface PerRank {
        void call(int rank, long offset);
    }

    /** One call per rank with a non-empty block (its element offset), launched together as one NCCL group. */
    private void grouped(long[] counts, PerRank call) {
        nccl.groupStart();
        try {
            long offset = 0;
            for (int r = 0; r < size; r++) {
                if (counts[r] > 0) call.call(r, offset);
                offset += counts[r];
            }
        } finally {
            nccl.groupEnd();
        }
    }

    private static boolean equal(long[] counts) {
        return Arrays.stream(counts).allMatch(c -> c == counts[0]);
    }

    private static void checkCount(long count) {
        if (count < 0) throw new IllegalArgumentException("element count must be >= 0, got " + count);
    }

    private long checkCounts(long[] counts) {
        if (counts.length != size) throw new IllegalArgumentException("need one count per rank of the NCCL group (" + size + "), got " + counts.length);
        long total = 0;
        for (long c : counts) {
            checkCount(c);
            total += c;
        }
        return total;
    }

    private void checkRank(int r, String what) {
        if (r < 0 || r >= size) throw new IllegalArgumentException(what + " rank " + r + " outside the NCCL group's 0.." + (size - 1));
    }

    // ---- enqueueing and completion ----

    private synchronized Work enqueue(String what, CommStats.Kind kind, long bytes, Runnable calls) {
        if (closed) throw new DistException("NCCL group (rank " + rank + " of " + size + ") used after close()");
        if (failure != null) throw new DistException("NCCL group was aborted earlier (" + failure + "); " + what + " refused");
        rt.makeCurrent();
        driver.record(ready, rt.stream());   // the buffers as the compute stream leaves them ...
        driver.waitEvent(stream, ready);     // ... are what the collective reads (the event may be re-recorded now)
        calls.run();
        MemorySegment done = freeEvents.isEmpty() ? driver.createEvent() : freeEvents.pop();
        driver.record(done, stream);
        stats.add(kind, bytes);
        return new Pending(what, done);
    }

    /** A collective on the group's stream; done when its event is. */
    private final class Pending implements Work {
        private final String what;
        private final MemorySegment event;
        private boolean done;

        Pending(String what, MemorySegment event) {
            this.what = what;
            this.event = event;
        }

        @Override
        public boolean test() {
            synchronized (NcclProcessGroup.this) {
                if (done) return true;
                if (failure != null) throw new DistException("NCCL group was aborted (" + failure + "); " + what + " will not complete");
                rt.makeCurrent();
                int err = nccl.asyncError(comm);
                if (err != Nccl.SUCCESS && err != Nccl.IN_PROGRESS) fail(what + " failed: " + nccl.describe(err));
                if (!driver.eventDone(event)) return false;
                done = true;
                freeEvents.push(event);
                return true;
            }
        }

        @Override
        public void await() {
            pollUntilDone(timeoutSeconds, () -> {
                synchronized (NcclProcessGroup.this) {
                    fail(String.format("%s did not complete within %.1f s (parallel.timeout_s): a peer rank died or is stuck", what, timeoutSeconds));
                }
            });
        }
    }

    /** Aborts the communicator and throws the one-line error naming this rank (caller holds the lock). */
    private void fail(String reason) {
        String last = nccl.lastError(comm).strip();
        String msg = String.format("kiln: rank %d of %d (%s): NCCL %s%s; communicator aborted", rank, size, rt.device(), reason,
                last.isEmpty() ? "" : " (NCCL: " + last + ")");
        failure = msg;
        try {
            nccl.commAbort(comm);
        } catch (DistException e) {
            msg += " (" + e.getMessage() + ")";
        }
        throw new DistException(msg);
    }

    /**
     * Waits for every call issued so far (bounded by the timeout, like any wait: past it the communicator is
     * aborted and the error thrown) and frees the communicator; after an abort there is nothing left to free.
     */
    @Override
    public synchronized void close() {
        if (closed) return;
        rt.makeCurrent();
        try {
            if (failure == null) {
                MemorySegment end = freeEvents.isEmpty() ? driver.createEvent() : freeEvents.pop();
                driver.record(end, stream);
                new Pending("the calls in flight at close()", end).await();
                nccl.commDestroy(comm);
            }
        } finally {
            closed = true;
            for (MemorySegment e : freeEvents) driver.destroyEvent(e);
            driver.destroyEvent(ready);
            freeEvents.clear();
        }
    }

    @Override
    public String toString() {
        return "NCCL group rank " + rank + " of " + size + " on " + rt.device() + " (" + nccl.location() + ")";
    }
}
