package dev.kiln.dist;

import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.BrokenBarrierException;
import java.util.concurrent.CyclicBarrier;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;
import java.util.function.Function;

/**
 * A process group of threads in one JVM, for unit tests of collectives-based code without mpirun: rank r is the
 * r-th thread of {@link #run}. All-reduce, all-gather and the fp64 reductions exchange through shared slots between
 * two barriers; every rank adds the slots in rank order, so all ranks get bit-identical sums, as MPI's do.
 */
final class ThreadGroup implements ProcessGroup {
    private final Shared shared;
    private final int rank;
    private final CommStats stats = new CommStats();

    private static final class Shared {
        final int size;
        final CyclicBarrier barrier;
        final Object[] slots;

        Shared(int size) {
            this.size = size;
            this.barrier = new CyclicBarrier(size);
            this.slots = new Object[size];
        }

        void await() {
            try {
                barrier.await(60, TimeUnit.SECONDS);
            } catch (InterruptedException | BrokenBarrierException | TimeoutException e) {
                throw new IllegalStateException("thread group barrier: " + e, e);
            }
        }
    }

    private ThreadGroup(Shared shared, int rank) {
        this.shared = shared;
        this.rank = rank;
    }

    /** Runs {@code body} on {@code size} threads, each with its rank's group; returns the results in rank order. */
    static <T> List<T> run(int size, Function<ThreadGroup, T> body) throws Exception {
        Shared shared = new Shared(size);
        ExecutorService pool = Executors.newFixedThreadPool(size);
        try {
            List<Future<T>> fs = new ArrayList<>();
            for (int r = 0; r < size; r++) {
                ThreadGroup g = new ThreadGroup(shared, r);
                fs.add(pool.submit(() -> body.apply(g)));
            }
            List<T> out = new ArrayList<>();
            for (Future<T> f : fs) out.add(f.get(120, TimeUnit.SECONDS));
            return out;
        } finally {
            pool.shutdownNow();
        }
    }

    /** Every rank's {@code mine}, in rank order (collective). */
    private Object[] exchange(Object mine) {
        shared.slots[rank] = mine;
        shared.await();
        Object[] all = shared.slots.clone();
        shared.await(); // nobody refills the slots before all have read them
        return all;
    }

    @Override
    public int rank() {
        return rank;
    }

    @Override
    public int size() {
        return shared.size;
    }

    @Override
    public CommStats stats() {
        return stats;
    }

    private static float[] floats(MemorySegment buf, int count) {
        return buf.asSlice(0, 4L * count).toArray(ValueLayout.JAVA_FLOAT);
    }

    @Override
    public Work allReduceAsync(MemorySegment buf, int count) {
        stats.add(CommStats.Kind.ALL_REDUCE, 4L * count);
        Object[] all = exchange(floats(buf, count));
        float[] sum = new float[count];
        for (Object o : all) {
            float[] v = (float[]) o;
            for (int i = 0; i < count; i++) sum[i] += v[i];
        }
        MemorySegment.copy(sum, 0, buf, ValueLayout.JAVA_FLOAT, 0, count);
        return Work.DONE;
    }

    @Override
    public Work allGatherAsync(MemorySegment send, MemorySegment recv, int[] counts) {
        long total = 0;
        for (int c : counts) total += c;
        stats.add(CommStats.Kind.ALL_GATHER, 4L * total);
        Object[] all = exchange(floats(send, counts[rank]));
        long at = 0;
        for (int r = 0; r < all.length; r++) {
            MemorySegment.copy((float[]) all[r], 0, recv, ValueLayout.JAVA_FLOAT, at * 4, counts[r]);
            at += counts[r];
        }
        return Work.DONE;
    }

    @Override
    public void allReduceSum(double[] values) {
        stats.add(CommStats.Kind.ALL_REDUCE, 8L * values.length);
        Object[] all = exchange(values.clone());
        java.util.Arrays.fill(values, 0);
        for (Object o : all) for (int i = 0; i < values.length; i++) values[i] += ((double[]) o)[i];
    }

    @Override
    public void allReduceMax(double[] values) {
        stats.add(CommStats.Kind.ALL_REDUCE, 8L * values.length);
        Object[] all = exchange(values.clone());
        java.util.Arrays.fill(values, Double.NEGATIVE_INFINITY);
        for (Object o : all) for (int i = 0; i < values.length; i++) values[i] = Math.max(values[i], ((double[]) o)[i]);
    }

    @Override
    public Work barrierAsync() {
        shared.await();
        return Work.DONE;
    }

    @Override
    public Work reduceScatterAsync(MemorySegment send, MemorySegment recv, int[] counts) {
        throw new UnsupportedOperationException("reduce-scatter in a thread group");
    }

    @Override
    public Work broadcastAsync(MemorySegment buf, int count, int root) {
        throw new UnsupportedOperationException("broadcast in a thread group");
    }

    @Override
    public Work sendAsync(MemorySegment buf, int count, int peer, int tag) {
        throw new UnsupportedOperationException("send in a thread group");
    }

    @Override
    public Work recvAsync(MemorySegment buf, int count, int peer, int tag) {
        throw new UnsupportedOperationException("recv in a thread group");
    }

    @Override
    public ProcessGroup split(int color, int key) {
        throw new UnsupportedOperationException("split of a thread group");
    }

    @Override
    public void abort(String message) {
        throw new IllegalStateException(message);
    }
}
