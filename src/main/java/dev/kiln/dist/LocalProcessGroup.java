package dev.kiln.dist;

import java.lang.foreign.MemorySegment;

/** The one-rank group of a process not started by mpirun: every collective is a copy or nothing; no MPI is loaded. */
public final class LocalProcessGroup implements ProcessGroup {
    public static final LocalProcessGroup INSTANCE = new LocalProcessGroup();
    private final CommStats stats = new CommStats();

    private LocalProcessGroup() {}

    @Override
    public int rank() {
        return 0;
    }

    @Override
    public int size() {
        return 1;
    }

    @Override
    public CommStats stats() {
        return stats;
    }

    @Override
    public Work allReduceAsync(MemorySegment buf, int count) {
        return Work.DONE;
    }

    @Override
    public Work reduceScatterAsync(MemorySegment send, MemorySegment recv, int[] counts) {
        checkCounts(counts);
        if (send.address() != recv.address()) MemorySegment.copy(send, 0, recv, 0, 4L * counts[0]);
        return Work.DONE;
    }

    @Override
    public Work allGatherAsync(MemorySegment send, MemorySegment recv, int[] counts) {
        checkCounts(counts);
        if (send.address() != recv.address()) MemorySegment.copy(send, 0, recv, 0, 4L * counts[0]);
        return Work.DONE;
    }

    private static void checkCounts(int[] counts) {
        if (counts.length != 1) throw new IllegalArgumentException("a one-rank group takes one count, got " + counts.length);
    }

    @Override
    public Work broadcastAsync(MemorySegment buf, int count, int root) {
        if (root != 0) throw new IllegalArgumentException("broadcast root " + root + " outside a one-rank group");
        return Work.DONE;
    }

    @Override
    public Work sendAsync(MemorySegment buf, int count, int peer, int tag) {
        throw new IllegalArgumentException("send to rank " + peer + " in a one-rank group");
    }

    @Override
    public Work recvAsync(MemorySegment buf, int count, int peer, int tag) {
        throw new IllegalArgumentException("recv from rank " + peer + " in a one-rank group");
    }

    @Override
    public Work barrierAsync() {
        return Work.DONE;
    }

    @Override
    public void allReduceSum(double[] values) {}

    @Override
    public void allReduceMax(double[] values) {}

    @Override
    public ProcessGroup split(int color, int key) {
        return this;
    }

    @Override
    public void abort(String message) {
        System.err.println(message);
        System.err.flush();
        Runtime.getRuntime().halt(3);
    }
}
