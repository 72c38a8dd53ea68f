package dev.kiln.dist;

import java.lang.foreign.MemorySegment;

/**
 * A group of ranks that run collectives together (PyTorch's ProcessGroup). Buffers are off-heap fp32 arrays
 * ({@code MemorySegment}s of at least count × 4 bytes); sums are element-wise. Every call has a non-blocking form
 * returning a {@link Work}, so gradient buckets can be reduced while backward runs; the blocking forms wait on it.
 * Every wait is bounded by the group's timeout: a peer that died or hangs ends all ranks with an error, never a hang.
 * {@link #world()} is the whole job: an {@link MpiProcessGroup} under mpirun, a {@link LocalProcessGroup} otherwise
 * (no libmpi loaded).
 */
public interface ProcessGroup {
    int rank();

    int size();

    /** Bytes handed to each kind of call so far (shared by the world group and its sub-groups). */
    CommStats stats();

    /** buf ← Σ over ranks of buf, in place. */
    Work allReduceAsync(MemorySegment buf, int count);

    /**
     * Each rank's {@code recv} (counts[rank] floats) ← Σ over ranks of its block of {@code send}; {@code send} holds
     * the blocks of ranks 0..n−1 one after another (Σ counts floats).
     */
    Work reduceScatterAsync(MemorySegment send, MemorySegment recv, int[] counts);

    /** {@code recv} ← the {@code send} of ranks 0..n−1 one after another; rank r sends counts[r] floats. */
    Work allGatherAsync(MemorySegment send, MemorySegment recv, int[] counts);

    /** buf ← root's buf. */
    Work broadcastAsync(MemorySegment buf, int count, int root);

    Work sendAsync(MemorySegment buf, int count, int peer, int tag);

    Work recvAsync(MemorySegment buf, int count, int peer, int tag);

    Work barrierAsync();

    /** Sums doubles across ranks (losses, norms): a small blocking all-reduce in fp64. */
    void allReduceSum(double[] values);

    /** Element-wise maximum across ranks, in fp64. */
    void allReduceMax(double[] values);

    /** Whether {@code local} is true on any rank: one 8-byte all-reduce (max). Collective. */
    default boolean anyRank(boolean local) {
        double[] v = {local ? 1 : 0};
        allReduceMax(v);
        return v[0] > 0;
    }

    /** The sub-group of the ranks that pass the same {@code color}, ordered by {@code key} (MPI_Comm_split). Collective. */
    ProcessGroup split(int color, int key);

    /** Ends every rank of the job now with {@code message} (the launcher's own abort). Never returns. */
    void abort(String message);

    default void allReduce(MemorySegment buf, int count) {
        allReduceAsync(buf, count).await();
    }

    default void reduceScatter(MemorySegment send, MemorySegment recv, int[] counts) {
        reduceScatterAsync(send, recv, counts).await();
    }

    default void allGather(MemorySegment send, MemorySegment recv, int[] counts) {
        allGatherAsync(send, recv, counts).await();
    }

    default void broadcast(MemorySegment buf, int count, int root) {
        broadcastAsync(buf, count, root).await();
    }

    default void send(MemorySegment buf, int count, int peer, int tag) {
        sendAsync(buf, count, peer, tag).await();
    }

    default void recv(MemorySegment buf, int count, int peer, int tag) {
        recvAsync(buf, count, peer, tag).await();
    }

    default void barrier() {
        barrierAsync().await();
    }

    /** Whether this process was started by Open MPI's launcher (mpirun sets OMPI_COMM_WORLD_SIZE). */
    static boolean launchedByMpirun() {
        return System.getenv("OMPI_COMM_WORLD_SIZE") != null;
    }

    /** The job's group: MPI's world under mpirun (MPI initialised on first call), one local rank otherwise. */
    static ProcessGroup world() {
        return launchedByMpirun() ? MpiProcessGroup.world() : LocalProcessGroup.INSTANCE;
    }
}
