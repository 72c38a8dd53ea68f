package dev.kiln.dist;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;

/**
 * Run under mpirun by {@link MpiProcessGroupTest}: every collective of {@link ProcessGroup} on rank-dependent data,
 * each result checked against the value computed by hand; prints "rank R ok <stats>" or exits non-zero naming the check.
 */
public final class CollectivesMain {
    static void expect(boolean ok, String what) {
        if (!ok) throw new AssertionError(what);
    }

    public static void main(String[] args) {
        ProcessGroup g = ProcessGroup.world();
        int r = g.rank(), n = g.size();
        expect(g instanceof MpiProcessGroup, "world under mpirun is MPI");
        expect(n == Integer.parseInt(System.getenv("OMPI_COMM_WORLD_SIZE")), "size");
        Arena a = Arena.ofAuto();
        ValueLayout.OfFloat F = ValueLayout.JAVA_FLOAT;

        // all-reduce: element i of rank r holds r + i; the sum is n·i + n(n−1)/2
        int count = 1000;
        MemorySegment buf = a.allocate(4L * count);
        for (int i = 0; i < count; i++) buf.setAtIndex(F, i, r + i);
        Work w = g.allReduceAsync(buf, count);
        w.await();
        for (int i = 0; i < count; i++) expect(buf.getAtIndex(F, i) == n * i + n * (n - 1) / 2f, "all-reduce element " + i);

        // reduce-scatter with uneven blocks: rank q's block has q + 2 elements; every rank contributes (rank+1)·(j+1)
        int[] counts = new int[n];
        int total = 0;
        for (int q = 0; q < n; q++) total += counts[q] = q + 2;
        MemorySegment send = a.allocate(4L * total), recv = a.allocate(4L * counts[r]);
        for (int j = 0; j < total; j++) send.setAtIndex(F, j, (r + 1) * (j + 1));
        g.reduceScatter(send, recv, counts);
        int off = 0;
        for (int q = 0; q < r; q++) off += counts[q];
        float ranksum = n * (n + 1) / 2f;
        for (int j = 0; j < counts[r]; j++) expect(recv.getAtIndex(F, j) == ranksum * (off + j + 1), "reduce-scatter element " + j);

        // all-gather with uneven blocks: rank q sends q + 2 copies of 10q
        MemorySegment mine = a.allocate(4L * counts[r]), all = a.allocate(4L * total);
        for (int j = 0; j < counts[r]; j++) mine.setAtIndex(F, j, 10 * r);
        g.allGather(mine, all, counts);
        int k = 0;
        for (int q = 0; q < n; q++) for (int j = 0; j < counts[q]; j++) expect(all.getAtIndex(F, k++) == 10 * q, "all-gather block " + q);

        // broadcast from the last rank
        MemorySegment b = a.allocate(4L * 3);
        for (int j = 0; j < 3; j++) b.setAtIndex(F, j, r == n - 1 ? 7 + j : -1);
        g.broadcast(b, 3, n - 1);
        for (int j = 0; j < 3; j++) expect(b.getAtIndex(F, j) == 7 + j, "broadcast");

        // ring send/recv: each rank sends its rank to the next
        MemorySegment s1 = a.allocate(4), r1 = a.allocate(4);
        s1.setAtIndex(F, 0, r);
        Work rw = g.recvAsync(r1, 1, (r + n - 1) % n, 5);
        g.send(s1, 1, (r + 1) % n, 5);
        rw.await();
        expect(r1.getAtIndex(F, 0) == (r + n - 1) % n, "ring recv");

        // doubles, and a split into even and odd ranks
        double[] d = {r, 1.5};
        g.allReduceSum(d);
        expect(d[0] == n * (n - 1) / 2.0 && d[1] == 1.5 * n, "allReduceSum");
        double[] m = {r};
        g.allReduceMax(m);
        expect(m[0] == n - 1, "allReduceMax");
        ProcessGroup half = g.split(r % 2, r);
        expect(half.size() == (n + 1 - r % 2) / 2 && half.rank() == r / 2, "split size/rank");
        double[] h = {r};
        half.allReduceSum(h);
        double want = 0;
        for (int q = r % 2; q < n; q += 2) want += q;
        expect(h[0] == want, "split all-reduce");
        g.barrier();
        System.out.println("rank " + r + " ok " + g.stats());
        MpiProcessGroup.finish();
    }
}
