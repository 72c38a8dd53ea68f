package dev.kiln.dist;

import dev.kiln.backend.cuda.CudaRuntime;
import dev.kiln.backend.cuda.FakeGpu;
import dev.kiln.tensor.DType;
import dev.kiln.tensor.Tensor;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.parallel.Isolated;

import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.CyclicBarrier;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import java.util.function.IntFunction;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * {@link NcclProcessGroup} and the {@link Nccl} binding against {@link FakeNccl} (a libnccl of upcalls over host
 * memory) on {@link FakeGpu} (a libcuda of upcalls whose device memory is host memory): argument packing, dtype and
 * op enums, the unique id passed by value, streams and events, several ranks as threads, and the error and timeout
 * paths — all without a GPU. What only a GPU shows (NCCL's kernels, real streams) is `kiln gpu-check`'s NCCL check.
 */
@Isolated
class NcclProcessGroupTest {
    private CudaRuntime rt;
    private Nccl nccl;
    private final List<NcclProcessGroup> open = new ArrayList<>();

    @BeforeEach
    void fakes() {
        rt = FakeGpu.open();
        FakeNccl.reset();
        nccl = new Nccl(FakeNccl.lookup(), "fake libnccl");
    }

    @AfterEach
    void closeGroups() {
        for (NcclProcessGroup g : open) g.close();
        FakeGpu.eventsNeverComplete(false);
        assertEquals(List.of(), FakeNccl.errors, "the fake library saw no misuse");
    }

    private NcclProcessGroup single(double timeout) {
        NcclProcessGroup g = NcclProcessGroup.single(nccl, rt, timeout);
        open.add(g);
        return g;
    }

    private Tensor upload(DType dtype, float... values) {
        return rt.toDevice(Tensor.of(values, values.length).to(dtype));
    }

    private float[] download(Tensor t) {
        return rt.toHost(t).toFloatArray();
    }

    private static String hex(MemorySegment s) {
        return "0x" + Long.toHexString(s.address());
    }

    @Test
    void worldSizeOneRunsEveryCollectiveOnTheGroupsStreamAfterTheComputeStream() {
        NcclProcessGroup g = single(60);
        assertEquals(0, g.rank());
        assertEquals(1, g.size());
        assertTrue(FakeNccl.calls.getFirst().startsWith("ncclCommInitRank(1, id "), FakeNccl.calls.toString());
        Tensor x = upload(DType.F32, 1, -2, 3.5f, 4, 5, 6);
        g.allReduceAsync(x).await();
        assertArrayEquals(new float[] {1, -2, 3.5f, 4, 5, 6}, download(x), "one rank: the sum is the buffer itself");
        String expected = "ncclAllReduce(rank 0, count 6, type 7, op 0, root -1, stream " + hex(g.stream()) + ")";
        assertEquals(expected, FakeNccl.calls.getLast());
        // ordering: the compute stream's event, the group's stream waiting for it, the done event on the group's stream
        List<String> driver = FakeGpu.calls();
        int waited = driver.lastIndexOf("cuStreamWaitEvent(stream " + hex(g.stream()) + ")");
        assertTrue(waited > 0 && driver.get(waited - 1).equals("cuEventRecord(stream " + hex(rt.stream()) + ")"), driver.toString());
        assertEquals("cuEventRecord(stream " + hex(g.stream()) + ")", driver.get(waited + 1), driver.toString());
        assertFalse(g.stream().address() == rt.stream().address(), "collectives have their own stream");

        Tensor send = upload(DType.F32, 7, 8, 9), recv = rt.empty(DType.F32, 3), gathered = rt.empty(DType.F32, 3);
        g.reduceScatterAsync(rt.address(send), rt.address(recv), new long[] {3}, Nccl.DataType.FLOAT32).await();
        assertArrayEquals(new float[] {7, 8, 9}, download(recv));
        g.allGatherAsync(rt.address(recv), rt.address(gathered), new long[] {3}, Nccl.DataType.FLOAT32).await();
        assertArrayEquals(new float[] {7, 8, 9}, download(gathered));
        g.broadcastAsync(rt.address(gathered), 3, Nccl.DataType.FLOAT32, 0).await();
        assertArrayEquals(new float[] {7, 8, 9}, download(gathered));
        assertTrue(FakeNccl.calls.contains("ncclReduceScatter(rank 0, count 3, type 7, op 0, root -1, stream " + hex(g.stream()) + ")"), FakeNccl.calls.toString());
        assertTrue(FakeNccl.calls.contains("ncclAllGather(rank 0, count 3, type 7, op -1, root -1, stream " + hex(g.stream()) + ")"));
        assertTrue(FakeNccl.calls.contains("ncclBroadcast(rank 0, count 3, type 7, op -1, root 0, stream " + hex(g.stream()) + ")"));

        CommStats s = g.stats();
        assertEquals(24, s.bytes(CommStats.Kind.ALL_REDUCE));
        assertEquals(12, s.bytes(CommStats.Kind.REDUCE_SCATTER));
        assertEquals(12, s.bytes(CommStats.Kind.ALL_GATHER));
        assertEquals(12, s.bytes(CommStats.Kind.BROADCAST));
        assertEquals(1, s.calls(CommStats.Kind.ALL_REDUCE));
    }

    @Test
    void bf16TravelsAsNcclBfloat16AndCountsTwoBytesPerElement() {
        NcclProcessGroup g = single(60);
        Tensor x = upload(DType.BF16, 1.5f, -0.25f, 3);
        g.allReduceAsync(x).await();
        assertArrayEquals(new float[] {1.5f, -0.25f, 3}, download(x));
        assertTrue(FakeNccl.calls.getLast().startsWith("ncclAllReduce(rank 0, count 3, type 9, op 0,"), FakeNccl.calls.getLast());
        assertEquals(6, g.stats().bytes(CommStats.Kind.ALL_REDUCE));
        assertThrows(DistException.class, () -> g.allReduceAsync(rt.empty(DType.F16, 4)), "F16 is not a communication dtype");
    }

    /** The job's ranks as threads, each with its own group on the (shared) fake GPU, all joined through {@code bootstrap}. */
    private <T> List<T> ranks(int n, IntFunction<T> body) throws Exception {
        ExecutorService pool = Executors.newFixedThreadPool(n);
        try {
            List<Future<T>> fs = new ArrayList<>();
            for (int r = 0; r < n; r++) {
                int rank = r;
                fs.add(pool.submit(() -> body.apply(rank)));
            }
            List<T> out = new ArrayList<>();
            for (Future<T> f : fs) out.add(f.get(30, TimeUnit.SECONDS));
            return out;
        } finally {
            pool.shutdownNow();
        }
    }

    @Test
    void twoRanksReduceGatherBroadcastAndExchangeInFp32AndBf16() throws Exception {
        int n = 2;
        ThreadBootstrap boot = new ThreadBootstrap(n);
        // every buffer is made on this thread (the fake driver's allocator is not thread-safe, a real one is per process)
        float[][] grads = {{1, 2, 3, 4, 5}, {10, 20, 30, 40, 50}};
        Tensor[] g32 = new Tensor[n], g16 = new Tensor[n], rsSend = new Tensor[n], rsRecv = new Tensor[n], rsUneven = new Tensor[n],
                agRecv = new Tensor[n], agUneven = new Tensor[n], bcast = new Tensor[n], p2p = new Tensor[n], p2pIn = new Tensor[n], mx = new Tensor[n];
        for (int r = 0; r < n; r++) {
            g32[r] = upload(DType.F32, grads[r]);
            g16[r] = upload(DType.BF16, grads[r]);
            rsSend[r] = upload(DType.F32, r + 1, 2 * (r + 1), 3 * (r + 1), 4 * (r + 1), 5 * (r + 1));
            rsRecv[r] = rt.empty(DType.F32, 2);
            rsUneven[r] = rt.empty(DType.F32, r == 0 ? 3 : 2);
            agRecv[r] = rt.empty(DType.F32, 4);
            agUneven[r] = rt.empty(DType.F32, 5);
            bcast[r] = upload(DType.F32, r == 1 ? new float[] {42, 43} : new float[] {0, 0});
            p2p[r] = upload(DType.F32, 100 * r + 1, 100 * r + 2);
            p2pIn[r] = rt.empty(DType.F32, 2);
            mx[r] = upload(DType.F32, r, -r, 0.5f);
        }
        List<long[]> bytes = ranks(n, rank -> {
            NcclProcessGroup g = NcclProcessGroup.create(nccl, rt, boot.rank(rank), 60);
            try {
                assertEquals(rank, g.rank());
                g.allReduceAsync(g32[rank]).await();
                g.allReduceAsync(g16[rank]).await();
                g.allReduceAsync(rt.address(mx[rank]), 3, Nccl.DataType.FLOAT32, Nccl.RedOp.MAX).await();
                // even reduce-scatter: one ncclReduceScatter of 2 per rank (the first 4 elements)
                g.reduceScatterAsync(rt.address(rsSend[rank]), rt.address(rsRecv[rank]), new long[] {2, 2}, Nccl.DataType.FLOAT32).await();
                // uneven: 3 + 2, a group of ncclReduce
                g.reduceScatterAsync(rt.address(rsSend[rank]), rt.address(rsUneven[rank]), new long[] {3, 2}, Nccl.DataType.FLOAT32).await();
                g.allGatherAsync(rt.address(rsRecv[rank]), rt.address(agRecv[rank]), new long[] {2, 2}, Nccl.DataType.FLOAT32).await();
                g.allGatherAsync(rt.address(rsUneven[rank]), rt.address(agUneven[rank]), new long[] {3, 2}, Nccl.DataType.FLOAT32).await();
                g.broadcastAsync(rt.address(bcast[rank]), 2, Nccl.DataType.FLOAT32, 1).await();
                // point to point as pipeline stages use it: rank 0 sends first, rank 1 receives first (no group needed)
                if (rank == 0) {
                    g.sendAsync(rt.address(p2p[0]), 2, Nccl.DataType.FLOAT32, 1).await();
                    g.recvAsync(rt.address(p2pIn[0]), 2, Nccl.DataType.FLOAT32, 1).await();
                } else {
                    g.recvAsync(rt.address(p2pIn[1]), 2, Nccl.DataType.FLOAT32, 0).await();
                    g.sendAsync(rt.address(p2p[1]), 2, Nccl.DataType.FLOAT32, 0).await();
                }
                return new long[] {g.stats().bytes(CommStats.Kind.ALL_REDUCE), g.stats().bytes(CommStats.Kind.REDUCE_SCATTER),
                        g.stats().bytes(CommStats.Kind.ALL_GATHER), g.stats().bytes(CommStats.Kind.SEND)};
            } finally {
                g.close();
            }
        });
        for (int r = 0; r < n; r++) {
            assertArrayEquals(new float[] {11, 22, 33, 44, 55}, download(g32[r]), "fp32 all-reduce on rank " + r);
            assertArrayEquals(new float[] {11, 22, 33, 44, 55}, download(g16[r]), "bf16 all-reduce on rank " + r + " (all exact in bf16)");
            assertArrayEquals(new float[] {42, 43}, download(bcast[r]), "broadcast from rank 1");
            assertArrayEquals(new float[] {1, 0, 0.5f}, download(mx[r]), "max over ranks");
            assertArrayEquals(new float[] {100 * (1 - r) + 1, 100 * (1 - r) + 2}, download(p2pIn[r]), "rank " + r + " received its peer's floats");
            // the sums over ranks of (r+1)·[1..5] are 3·[1..5]
            assertArrayEquals(new float[] {3, 6, 9, 12}, download(agRecv[r]), "all-gather of the even (2 + 2) reduce-scatter's blocks");
            assertArrayEquals(new float[] {3, 6, 9, 12, 15}, download(agUneven[r]), "all-gather of the uneven (3 + 2) blocks");
            assertArrayEquals(new long[] {5 * 4 + 5 * 2 + 3 * 4, 4 * 4 + 5 * 4, 4 * 4 + 5 * 4, 2 * 4}, bytes.get(r), "CommStats of rank " + r);
        }
        assertArrayEquals(new float[] {3, 6}, download(rsRecv[0]));
        assertArrayEquals(new float[] {9, 12}, download(rsRecv[1]));
        assertArrayEquals(new float[] {3, 6, 9}, download(rsUneven[0]));
        assertArrayEquals(new float[] {12, 15}, download(rsUneven[1]));
        long reduces = FakeNccl.calls.stream().filter(c -> c.startsWith("ncclReduce(")).count();
        assertEquals(4, reduces, "uneven reduce-scatter: one ncclReduce per rank per rank: " + FakeNccl.calls);
        long groups = FakeNccl.calls.stream().filter(c -> c.equals("ncclGroupStart")).count();
        assertEquals(4, groups, "uneven calls are grouped (reduce-scatter and all-gather on 2 ranks)");
        assertEquals(1, FakeNccl.calls.stream().filter(c -> c.startsWith("ncclCommInitRank(2,")).map(c -> c.substring(0, 30)).distinct().count(),
                "both ranks joined with the id rank 0 made: " + FakeNccl.calls);
    }

    @Test
    void anAsynchronousErrorAbortsTheCommunicatorAndNamesTheRank() {
        NcclProcessGroup g = single(60);
        Tensor x = upload(DType.F32, 1, 2);
        FakeNccl.hang = true;                 // the collective is enqueued but never finishes ...
        FakeGpu.eventsNeverComplete(true);
        FakeNccl.asyncError = Nccl.REMOTE_ERROR; // ... and NCCL's proxy thread reports the peer gone
        long t0 = System.nanoTime();
        Work w = g.allReduceAsync(x);
        DistException e = assertThrows(DistException.class, w::await);
        assertTrue((System.nanoTime() - t0) / 1e9 < 5, "reported at once, not at the timeout");
        assertEquals("kiln: rank 0 of 1 (cuda:0): NCCL all-reduce (sum) of 2 float32 failed: ncclRemoteError (6): remote process exited or "
                + "there was a network error (NCCL: fake: peer rank 1 unreachable); communicator aborted", e.getMessage());
        assertTrue(FakeNccl.calls.contains("ncclCommAbort(rank 0)"), FakeNccl.calls.toString());
        DistException later = assertThrows(DistException.class, () -> g.allReduceAsync(x));
        assertTrue(later.getMessage().contains("aborted earlier"), later.getMessage());
        assertThrows(DistException.class, w::test);
    }

    @Test
    void aCollectiveThatNeverCompletesTimesOutAbortsAndNamesTheRank() {
        NcclProcessGroup g = single(0.3);
        Tensor x = upload(DType.F32, 1, 2, 3);
        FakeNccl.hang = true;
        FakeGpu.eventsNeverComplete(true);
        Work w = g.allReduceAsync(x);
        assertFalse(w.test(), "not done, not failed");
        long t0 = System.nanoTime();
        DistException e = assertThrows(DistException.class, w::await);
        double s = (System.nanoTime() - t0) / 1e9;
        assertTrue(s >= 0.25 && s < 5, "waited about the timeout: " + s + " s");
        assertEquals("kiln: rank 0 of 1 (cuda:0): NCCL all-reduce (sum) of 3 float32 did not complete within 0.3 s (parallel.timeout_s): "
                + "a peer rank died or is stuck; communicator aborted", e.getMessage());
        assertTrue(FakeNccl.calls.contains("ncclCommAbort(rank 0)"));
        assertFalse(FakeNccl.calls.contains("ncclCommDestroy(rank 0)"));
    }

    @Test
    void closingWithACollectiveStuckInFlightIsBoundedToo() {
        NcclProcessGroup g = NcclProcessGroup.single(nccl, rt, 0.2);
        FakeNccl.hang = true;
        FakeGpu.eventsNeverComplete(true);
        g.allReduceAsync(upload(DType.F32, 1));   // never awaited
        DistException e = assertThrows(DistException.class, g::close);
        assertTrue(e.getMessage().startsWith("kiln: rank 0 of 1 (cuda:0): NCCL the calls in flight at close() did not complete within 0.2 s"), e.getMessage());
        assertTrue(FakeNccl.calls.contains("ncclCommAbort(rank 0)"));
        g.close();   // closed now: nothing more to do
    }

    @Test
    void aFailingCallIsOneLineNamingTheCallAndNcclsWords() {
        NcclProcessGroup g = single(60);
        Tensor x = upload(DType.F32, 1);
        FakeNccl.failNextWith = Nccl.INVALID_USAGE;
        DistException e = assertThrows(DistException.class, () -> g.allReduceAsync(x));
        assertEquals("ncclAllReduce failed: ncclInvalidUsage (5): invalid usage (run with NCCL_DEBUG=WARN for details)", e.getMessage());
        g.allReduceAsync(x).await();   // the group is still usable after a refused call
    }

    @Test
    void badArgumentsAreRefusedBeforeNccl() {
        NcclProcessGroup g = single(60);
        int before = FakeNccl.calls.size();
        assertThrows(IllegalArgumentException.class, () -> g.reduceScatterAsync(0, 0, new long[] {1, 1}, Nccl.DataType.FLOAT32));
        assertThrows(IllegalArgumentException.class, () -> g.broadcastAsync(0, 4, Nccl.DataType.FLOAT32, 1));
        assertThrows(IllegalArgumentException.class, () -> g.allReduceAsync(0, -1, Nccl.DataType.FLOAT32));
        assertThrows(IllegalArgumentException.class, () -> nccl.commInitRank(1, new byte[16], 0));
        assertEquals(before, FakeNccl.calls.size(), "nothing reached NCCL");
    }

    @Test
    void closeDestroysTheCommunicatorAndRefusesLaterCalls() {
        NcclProcessGroup g = NcclProcessGroup.single(nccl, rt, 60);
        g.close();
        assertTrue(FakeNccl.calls.contains("ncclCommDestroy(rank 0)"));
        DistException e = assertThrows(DistException.class, () -> g.allReduceAsync(0, 1, Nccl.DataType.FLOAT32));
        assertTrue(e.getMessage().contains("after close()"), e.getMessage());
    }

    @Test
    void theUniqueIdReachesEveryRankBitForBit() throws Exception {
        ThreadBootstrap boot = new ThreadBootstrap(3);
        byte[] id = new byte[Nccl.UNIQUE_ID_BYTES];
        for (int i = 0; i < id.length; i++) id[i] = (byte) (i * 37 + 1);   // includes NaN bit patterns as floats
        List<byte[]> got = ranks(3, r -> NcclProcessGroup.broadcastId(boot.rank(r), r == 0 ? id : new byte[Nccl.UNIQUE_ID_BYTES]));
        for (byte[] b : got) assertArrayEquals(id, b);
        assertEquals(23007, nccl.version());
        assertEquals("2.30.7", Nccl.versionString(23007));
        assertEquals("2.8.4", Nccl.versionString(2804));
    }

    @Test
    void gpuChecksNcclLineRunsEveryCollectiveAndReportsOrSkipsCleanly() {
        java.util.Map<String, Object> json = new java.util.LinkedHashMap<>();
        String line = NcclCheck.run(rt, () -> nccl, json, 1001, 1 << 12);
        assertTrue(line.startsWith("NCCL 2.30.7 (fake libnccl), world size 1 on cuda:0: all-reduce fp32 and bf16 (sum, avg), reduce-scatter, "
                + "all-gather and broadcast of 1,001 elements exact"), line);
        assertEquals("2.30.7", json.get("nccl_version"));
        assertTrue(json.get("nccl_allreduce_ms") instanceof Double);
        assertTrue(FakeNccl.calls.stream().anyMatch(c -> c.startsWith("ncclAllReduce(rank 0, count 1001, type 9, op 4,")), "bf16 avg: " + FakeNccl.calls);
        assertTrue(FakeNccl.calls.contains("ncclCommDestroy(rank 0)"), "the check's group is closed");
        // a library that is not there: skipped with the one-line reason, not a failure
        String skipped = NcclCheck.run(rt, () -> { throw new DistException(Nccl.notFound(java.util.Map.of(), java.nio.file.Path.of("/nonexistent"))); },
                new java.util.HashMap<>(), 10, 64);
        assertTrue(skipped.startsWith("skipped: NCCL is not available: libnccl.so.2 not found in $KILN_NCCL_LIB (unset)"), skipped);
    }

    @Test
    void gpuCheckNamesAFailingNcclCollective() {
        // NCCL refusing the first all-reduce: the check must end in that one-line error (GpuCheck prints it as FAIL)
        FakeNccl.failNextWith = Nccl.INVALID_ARGUMENT;
        DistException e = assertThrows(DistException.class, () -> NcclCheck.run(rt, () -> nccl, new java.util.HashMap<>(), 16, 64));
        assertTrue(e.getMessage().startsWith("ncclAllReduce failed: ncclInvalidArgument (4)"), e.getMessage());
    }

    /**
     * The host group of n threads, for the unique id's broadcast only (all the bootstrap's job is here): the root's
     * bytes are copied to every rank's buffer between two barriers.
     */
    static final class ThreadBootstrap {
        final int n;
        final CyclicBarrier barrier;
        volatile MemorySegment rootBuffer;

        ThreadBootstrap(int n) {
            this.n = n;
            this.barrier = new CyclicBarrier(n);
        }

        ProcessGroup rank(int rank) {
            return new ProcessGroup() {
                public int rank() {
                    return rank;
                }

                public int size() {
                    return n;
                }

                public CommStats stats() {
                    return new CommStats();
                }

                public Work broadcastAsync(MemorySegment buf, int count, int root) {
                    try {
                        if (rank == root) rootBuffer = buf;
                        barrier.await(10, TimeUnit.SECONDS);
                        // by address, as MPI would: the root's buffer belongs to the root thread's confined arena
                        if (rank != root) MemorySegment.copy(MemorySegment.ofAddress(rootBuffer.address()).reinterpret(4L * count), 0, buf, 0, 4L * count);
                        barrier.await(10, TimeUnit.SECONDS);
                    } catch (Exception e) {
                        throw new AssertionError(e);
                    }
                    return Work.DONE;
                }

                public Work allReduceAsync(MemorySegment buf, int count) {
                    throw new UnsupportedOperationException();
                }

                public Work reduceScatterAsync(MemorySegment send, MemorySegment recv, int[] counts) {
                    throw new UnsupportedOperationException();
                }

                public Work allGatherAsync(MemorySegment send, MemorySegment recv, int[] counts) {
                    throw new UnsupportedOperationException();
                }

                public Work sendAsync(MemorySegment buf, int count, int peer, int tag) {
                    throw new UnsupportedOperationException();
                }

                public Work recvAsync(MemorySegment buf, int count, int peer, int tag) {
                    throw new UnsupportedOperationException();
                }

                public Work barrierAsync() {
                    throw new UnsupportedOperationException();
                }

                public void allReduceSum(double[] values) {
                    throw new UnsupportedOperationException();
                }

                public void allReduceMax(double[] values) {
                    throw new UnsupportedOperationException();
                }

                public ProcessGroup split(int color, int key) {
                    throw new UnsupportedOperationException();
                }

                public void abort(String message) {
                    throw new UnsupportedOperationException();
                }
            };
        }
    }
}
