package dev.kiln.dist;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;

/**
 * A {@link ProcessGroup} over an Open MPI communicator, through FFM ({@link Mpi}). Every blocking call is a
 * non-blocking MPI call plus {@link Work#await}, which polls MPI_Test (Open MPI makes progress only inside MPI
 * calls, so polling is also what moves overlapped buckets along) until the group's timeout; past it the rank prints
 * which call on which rank timed out and calls MPI_Abort, which ends every rank of the job. A rank that dies is
 * caught by mpirun itself, which then ends the others and names the rank.
 */
public final class MpiProcessGroup implements ProcessGroup {
    private static MpiProcessGroup world;
    private static volatile double timeoutSeconds = 60;

    private final Mpi mpi;
    private final MemorySegment comm;
    private final String name;
    private final int rank, size, worldRank;
    private final CommStats stats;

    private MpiProcessGroup(Mpi mpi, MemorySegment comm, String name, CommStats stats, int worldRank) {
        this.mpi = mpi;
        this.comm = comm;
        this.name = name;
        this.rank = mpi.rank(comm);
        this.size = mpi.size(comm);
        this.stats = stats;
        this.worldRank = worldRank < 0 ? rank : worldRank;
    }

    /** MPI's world, initialised on first use (MPI_Init_thread); MPI_Finalize runs at exit. */
    public static synchronized MpiProcessGroup world() {
        if (world == null) {
            Mpi mpi = Mpi.get();
            mpi.init();
            world = new MpiProcessGroup(mpi, mpi.commWorld, "world", new CommStats(), -1);
            Runtime.getRuntime().addShutdownHook(new Thread(MpiProcessGroup::finish, "mpi-finalize"));
        }
        return world;
    }

    /** MPI_Finalize, once (mpirun counts a rank that exits without it as failed). */
    public static synchronized void finish() {
        if (world != null) world.mpi.finalizeOnce();
    }

    /** Ends every rank with {@code message} when MPI was started in this process and the job has more than one rank. */
    public static synchronized void abortIfStarted(String message) {
        if (world != null && world.size > 1) world.abort(message);
    }

    /** How long any wait may take before every rank is aborted (parallel.timeout_s). */
    public static void setTimeoutSeconds(double seconds) {
        if (!(seconds > 0)) throw new IllegalArgumentException("timeout must be > 0 s, got " + seconds);
        timeoutSeconds = seconds;
    }

    @Override
    public int rank() {
        return rank;
    }

    @Override
    public int size() {
        return size;
    }

    @Override
    public CommStats stats() {
        return stats;
    }

    /** A request in flight; the arena keeps the request slot and any count arrays alive until it completes. */
    private final class Request implements Work {
        final Arena arena = Arena.ofAuto();
        final MemorySegment req = arena.allocate(ValueLayout.ADDRESS);
        final MemorySegment flag = arena.allocate(ValueLayout.JAVA_INT);
        final String what;
        boolean done;

        Request(String what) {
            this.what = what;
        }

        @Override
        public boolean test() {
            if (!done) done = mpi.test(req, flag);
            return done;
        }

        @Override
        public void await() {
            pollUntilDone(timeoutSeconds, () -> abort(String.format("kiln: rank %d of %d: %s on group %s did not complete within %.0f s "
                    + "(parallel.timeout_s): a peer rank died or is stuck; aborting all ranks", worldRank, world().size, what, name, timeoutSeconds)));
        }
    }

    private static void checkCount(long count) {
        if (count < 0 || count > Integer.MAX_VALUE) throw new IllegalArgumentException("element count " + count + " out of MPI's int range");
    }

    private static MemorySegment ints(Arena arena, int[] values) {
        return arena.allocateFrom(ValueLayout.JAVA_INT, values);
    }

    private void checkRanks(int[] counts) {
        if (counts.length != size) throw new IllegalArgumentException("need one count per rank of " + name + " (" + size + "), got " + counts.length);
    }

    @Override
    public Work allReduceAsync(MemorySegment buf, int count) {
        checkCount(count);
        stats.add(CommStats.Kind.ALL_REDUCE, 4L * count);
        Request r = new Request("all-reduce of " + count + " floats");
        mpi.iallreduce(Mpi.IN_PLACE, buf, count, mpi.typeFloat, mpi.opSum, comm, r.req);
        return r;
    }

    @Override
    public Work reduceScatterAsync(MemorySegment send, MemorySegment recv, int[] counts) {
        checkRanks(counts);
        long total = 0;
        for (int c : counts) total += c;
        checkCount(total);
        stats.add(CommStats.Kind.REDUCE_SCATTER, 4L * total);
        Request r = new Request("reduce-scatter of " + total + " floats");
        mpi.ireduceScatter(send, recv, ints(r.arena, counts), mpi.typeFloat, mpi.opSum, comm, r.req);
        return r;
    }

    @Override
    public Work allGatherAsync(MemorySegment send, MemorySegment recv, int[] counts) {
        checkRanks(counts);
        int[] displs = new int[size];
        long total = 0;
        for (int i = 0; i < size; i++) {
            displs[i] = (int) total;
            total += counts[i];
        }
        checkCount(total);
        stats.add(CommStats.Kind.ALL_GATHER, 4L * total);
        Request r = new Request("all-gather of " + total + " floats");
        mpi.iallgatherv(send, counts[rank], mpi.typeFloat, recv, ints(r.arena, counts), ints(r.arena, displs), comm, r.req);
        return r;
    }

    @Override
    public Work broadcastAsync(MemorySegment buf, int count, int root) {
        checkCount(count);
        stats.add(CommStats.Kind.BROADCAST, 4L * count);
        Request r = new Request("broadcast of " + count + " floats from rank " + root);
        mpi.ibcast(buf, count, mpi.typeFloat, root, comm, r.req);
        return r;
    }

    @Override
    public Work sendAsync(MemorySegment buf, int count, int peer, int tag) {
        checkCount(count);
        stats.add(CommStats.Kind.SEND, 4L * count);
        Request r = new Request("send of " + count + " floats to rank " + peer);
        mpi.isend(buf, count, mpi.typeFloat, peer, tag, comm, r.req);
        return r;
    }

    @Override
    public Work recvAsync(MemorySegment buf, int count, int peer, int tag) {
        checkCount(count);
        stats.add(CommStats.Kind.RECV, 4L * count);
        Request r = new Request("receive of " + count + " floats from rank " + peer);
        mpi.irecv(buf, count, mpi.typeFloat, peer, tag, comm, r.req);
        return r;
    }

    @Override
    public Work barrierAsync() {
        stats.add(CommStats.Kind.BARRIER, 0);
        Request r = new Request("barrier");
        mpi.ibarrier(comm, r.req);
        return r;
    }

    @Override
    public void allReduceSum(double[] values) {
        allReduceDoubles(values, mpi.opSum, "sum");
    }

    @Override
    public void allReduceMax(double[] values) {
        allReduceDoubles(values, mpi.opMax, "max");
    }

    private void allReduceDoubles(double[] values, MemorySegment op, String what) {
        stats.add(CommStats.Kind.ALL_REDUCE, 8L * values.length);
        Request r = new Request("all-reduce (" + what + ") of " + values.length + " doubles");
        MemorySegment buf = r.arena.allocateFrom(ValueLayout.JAVA_DOUBLE, values);
        mpi.iallreduce(Mpi.IN_PLACE, buf, values.length, mpi.typeDouble, op, comm, r.req);
        r.await();
        MemorySegment.copy(buf, ValueLayout.JAVA_DOUBLE, 0, values, 0, values.length);
    }

    @Override
    public ProcessGroup split(int color, int key) {
        return new MpiProcessGroup(mpi, mpi.split(comm, color, key), name + "/" + color, stats, worldRank);
    }

    @Override
    public void abort(String message) {
        System.err.println(message);
        System.err.flush();
        mpi.abort(mpi.commWorld, 3);
        Runtime.getRuntime().halt(3); // MPI_Abort does not return; in case it does
    }
}
