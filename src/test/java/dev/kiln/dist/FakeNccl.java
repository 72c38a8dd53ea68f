package dev.kiln.dist;

import dev.kiln.tensor.DType;

import java.lang.foreign.Arena;
import java.lang.foreign.FunctionDescriptor;
import java.lang.foreign.Linker;
import java.lang.foreign.MemoryLayout;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.SymbolLookup;
import java.lang.foreign.ValueLayout;
import java.lang.invoke.MethodHandles;
import java.util.ArrayDeque;
import java.util.ArrayList;
import java.util.Collections;
import java.util.HashMap;
import java.util.HexFormat;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.CyclicBarrier;
import java.util.concurrent.TimeUnit;

/**
 * A libnccl stand-in of FFM upcalls over host memory (the fake GPU's "device memory" is host memory): NCCL's
 * documented semantics for all-reduce, reduce-scatter, all-gather, broadcast, reduce and send/recv in fp32 and bf16,
 * with any number of ranks in one process (each rank a thread with its own communicator; a collective completes when
 * every rank of the clique has called it, as on GPUs). Signatures and enum values are written here from nccl.h,
 * independently of {@link Nccl}, so a mismatch fails the tests; an upcall never throws (that would end the JVM), it
 * returns ncclInternalError and keeps the reason in {@link #errors}. Static state, as a C library has: tests using it
 * are {@code @Isolated} and call {@link #reset}.
 */
final class FakeNccl {
    static final int SUCCESS = 0, INTERNAL = 3, INVALID_ARGUMENT = 4, INVALID_USAGE = 5;
    static final int FLOAT32 = 7, BFLOAT16 = 9;           // ncclFloat32, ncclBfloat16
    static final int SUM = 0, MAX = 2, AVG = 4;           // ncclSum, ncclMax, ncclAvg

    /** One line per call: "ncclAllReduce(rank 0, count 6, type 7, op 0, stream 0x…)". */
    static final List<String> calls = Collections.synchronizedList(new ArrayList<>());
    static final List<String> errors = Collections.synchronizedList(new ArrayList<>());
    /** Injected failures: what ncclCommGetAsyncError reports; collectives that enqueue nothing (a hung peer); the next call's result. */
    static volatile int asyncError;
    static volatile boolean hang;
    static volatile int failNextWith;
    /**
     * Over-MPI mode, for one rank per process under mpirun ({@link NcclDistTrainMain}): a communicator is this process's
     * rank alone, and a (sum or avg) all-reduce reads this rank's buffer, sums it over this MPI group, and writes
     * the result back, as NCCL would across the processes' GPUs. Null: ranks are threads of this process.
     */
    static volatile ProcessGroup overMpi;

    private static final Map<String, Clique> cliques = new ConcurrentHashMap<>();
    private static final Map<Long, Comm> comms = new ConcurrentHashMap<>();
    private static final Map<String, ArrayDeque<byte[]>> mailboxes = new HashMap<>();
    private static final ThreadLocal<List<Runnable>> groupedRecvs = new ThreadLocal<>();
    private static final Map<String, MemorySegment> strings = new ConcurrentHashMap<>();
    private static int ids;

    private record Args(String kind, long send, long recv, long count, int type, int op, int root) {}

    private static final class Clique {
        final int n;
        final Comm[] members;
        final CountDownLatch joined;
        final Args[] slots;
        final CyclicBarrier barrier;
        volatile String mismatch;

        Clique(int n) {
            this.n = n;
            this.members = new Comm[n];
            this.joined = new CountDownLatch(n);
            this.slots = new Args[n];
            this.barrier = new CyclicBarrier(n, this::run);
        }

        /** The collective every rank has now called, on all ranks' buffers at once (the last rank to arrive runs it). */
        private void run() {
            Args a = slots[0];
            for (Args s : slots)
                if (!s.kind.equals(a.kind) || s.count != a.count || s.type != a.type || s.op != a.op || s.root != a.root)
                    mismatch = "ranks called different collectives: " + List.of(slots);
            if (mismatch != null) return;
            int size = a.type == FLOAT32 ? 4 : 2;
            switch (a.kind) {
                case "allReduce" -> {
                    float[] r = reduce(i -> i, a);
                    for (Args s : slots) write(s.recv, 0, r, a.type);
                }
                case "reduce" -> write(slots[a.root].recv, 0, reduce(i -> i, a), a.type);
                case "reduceScatter" -> {
                    for (int q = 0; q < n; q++) {
                        long off = q * a.count;
                        write(slots[q].recv, 0, reduce(i -> off + i, a), a.type);
                    }
                }
                case "allGather" -> {
                    for (int q = 0; q < n; q++) {
                        float[] part = read(slots[q].send, 0, a.count, a.type);
                        for (Args s : slots) write(s.recv, q * a.count * size, part, a.type);
                    }
                }
                case "broadcast" -> {
                    float[] v = read(slots[a.root].send, 0, a.count, a.type);
                    for (Args s : slots) write(s.recv, 0, v, a.type);
                }
                default -> mismatch = "unknown collective " + a.kind;
            }
        }

        interface Index {
            long at(long i);
        }

        private float[] reduce(Index index, Args a) {
            float[] r = new float[(int) a.count];
            for (int i = 0; i < a.count; i++) {
                float acc = a.op == MAX ? Float.NEGATIVE_INFINITY : 0;
                for (Args s : slots) {
                    float v = read(s.send, index.at(i), 1, a.type)[0];
                    acc = a.op == MAX ? Math.max(acc, v) : acc + v;
                }
                r[i] = a.op == AVG ? acc / n : acc;
            }
            return r;
        }
    }

    private record Comm(long handle, Clique clique, int rank) {}

    static synchronized void reset() {
        calls.clear();
        errors.clear();
        asyncError = 0;
        hang = false;
        failNextWith = 0;
        overMpi = null;
        cliques.clear();
        comms.clear();
        mailboxes.clear();
        known.clear();
    }

    static SymbolLookup lookup() {
        var P = ValueLayout.ADDRESS;
        var I = ValueLayout.JAVA_INT;
        var L = ValueLayout.JAVA_LONG;
        var id = MemoryLayout.structLayout(MemoryLayout.sequenceLayout(128, ValueLayout.JAVA_BYTE));
        Map<String, FunctionDescriptor> sigs = new HashMap<>();
        sigs.put("ncclGetVersion", FunctionDescriptor.of(I, P));
        sigs.put("ncclGetUniqueId", FunctionDescriptor.of(I, P));
        sigs.put("ncclCommInitRank", FunctionDescriptor.of(I, P, I, id, I));
        sigs.put("ncclCommDestroy", FunctionDescriptor.of(I, P));
        sigs.put("ncclCommAbort", FunctionDescriptor.of(I, P));
        sigs.put("ncclCommGetAsyncError", FunctionDescriptor.of(I, P, P));
        sigs.put("ncclCommCount", FunctionDescriptor.of(I, P, P));
        sigs.put("ncclCommUserRank", FunctionDescriptor.of(I, P, P));
        sigs.put("ncclGetErrorString", FunctionDescriptor.of(P, I));
        sigs.put("ncclGetLastError", FunctionDescriptor.of(P, P));
        sigs.put("ncclAllReduce", FunctionDescriptor.of(I, P, P, L, I, I, P, P));
        sigs.put("ncclReduceScatter", FunctionDescriptor.of(I, P, P, L, I, I, P, P));
        sigs.put("ncclAllGather", FunctionDescriptor.of(I, P, P, L, I, P, P));
        sigs.put("ncclBroadcast", FunctionDescriptor.of(I, P, P, L, I, I, P, P));
        sigs.put("ncclReduce", FunctionDescriptor.of(I, P, P, L, I, I, I, P, P));
        sigs.put("ncclSend", FunctionDescriptor.of(I, P, L, I, I, P, P));
        sigs.put("ncclRecv", FunctionDescriptor.of(I, P, L, I, I, P, P));
        sigs.put("ncclGroupStart", FunctionDescriptor.of(I));
        sigs.put("ncclGroupEnd", FunctionDescriptor.of(I));
        Map<String, MemorySegment> stubs = new HashMap<>();
        for (var e : sigs.entrySet()) {
            try {
                var target = MethodHandles.lookup().findStatic(FakeNccl.class, e.getKey(), e.getValue().toMethodType());
                stubs.put(e.getKey(), Linker.nativeLinker().upcallStub(target, e.getValue(), Arena.global()));
            } catch (ReflectiveOperationException ex) {
                throw new AssertionError("fake NCCL lacks " + e.getKey(), ex);
            }
        }
        return name -> Optional.ofNullable(stubs.get(name));
    }

    // ---- helpers ----

    private static MemorySegment mem(long address, long bytes) {
        return MemorySegment.ofAddress(address).reinterpret(bytes);
    }

    static float[] read(long address, long index, long count, int type) {
        float[] v = new float[(int) count];
        for (int i = 0; i < count; i++)
            v[i] = type == FLOAT32 ? mem(address, 4 * (index + count)).getAtIndex(ValueLayout.JAVA_FLOAT, index + i)
                    : DType.bf16ToFloat(mem(address, 2 * (index + count)).getAtIndex(ValueLayout.JAVA_SHORT, index + i));
        return v;
    }

    static void write(long address, long byteOffset, float[] v, int type) {
        MemorySegment m = mem(address + byteOffset, (long) v.length * (type == FLOAT32 ? 4 : 2));
        for (int i = 0; i < v.length; i++)
            if (type == FLOAT32) m.setAtIndex(ValueLayout.JAVA_FLOAT, i, v[i]);
            else m.setAtIndex(ValueLayout.JAVA_SHORT, i, DType.floatToBf16(v[i]));
    }

    private static int failed(String why) {
        errors.add(why);
        return INTERNAL;
    }

    private static int injected() {
        int rc = failNextWith;
        failNextWith = 0;
        return rc;
    }

    private static Comm comm(MemorySegment handle) {
        Comm c = comms.get(handle.address());
        if (c == null) throw new IllegalStateException("unknown communicator 0x" + Long.toHexString(handle.address()));
        return c;
    }

    private static MemorySegment cString(String s) {
        return strings.computeIfAbsent(s, Arena.global()::allocateFrom);
    }

    private static boolean badType(int type) {
        return type != FLOAT32 && type != BFLOAT16;
    }

    private static boolean badOp(int op) {
        return op != SUM && op != MAX && op != AVG;
    }

    /** Runs the collective once every rank has called it (bounded: a test must not hang). */
    private static int collective(MemorySegment commH, MemorySegment stream, Args a) {
        try {
            int rc = injected();
            if (rc != 0) return rc;
            Comm c = comm(commH);
            calls.add("nccl" + Character.toUpperCase(a.kind.charAt(0)) + a.kind.substring(1) + "(rank " + c.rank + ", count " + a.count + ", type "
                    + a.type + ", op " + a.op + ", root " + a.root + ", stream 0x" + Long.toHexString(stream.address()) + ")");
            if (badType(a.type) || a.op >= 0 && badOp(a.op)) return INVALID_ARGUMENT;
            if (stream.address() == 0) return INVALID_USAGE;
            if (hang) return SUCCESS;   // enqueued, but a peer never joins: the stream's event never completes
            if (overMpi != null) return allReduceOverMpi(a, c.clique.n);
            Clique q = c.clique;
            q.slots[c.rank] = a;
            q.barrier.await(10, TimeUnit.SECONDS);
            return q.mismatch == null ? SUCCESS : failed(q.mismatch);
        } catch (Exception e) {
            return failed(a.kind + ": " + e);
        }
    }

    // ---- the library ----

    static int ncclGetVersion(MemorySegment v) {
        v.reinterpret(4).set(ValueLayout.JAVA_INT, 0, 23007);
        return SUCCESS;
    }

    static synchronized int ncclGetUniqueId(MemorySegment id) {
        byte[] b = new byte[128];
        new java.util.Random(++ids).nextBytes(b);
        MemorySegment.copy(b, 0, id.reinterpret(128), ValueLayout.JAVA_BYTE, 0, 128);
        known.add(HexFormat.of().formatHex(b));
        return SUCCESS;
    }

    private static final java.util.Set<String> known = ConcurrentHashMap.newKeySet();

    static int ncclCommInitRank(MemorySegment out, int nranks, MemorySegment id, int rank) {
        try {
            String key = HexFormat.of().formatHex(id.toArray(ValueLayout.JAVA_BYTE));
            calls.add("ncclCommInitRank(" + nranks + ", id " + key.substring(0, 8) + "…, " + rank + ")");
            if (overMpi != null) return joinOverMpi(out, nranks, rank);
            if (!known.contains(key)) {   // e.g. a rank that did not receive rank 0's id
                errors.add("ncclCommInitRank: an id ncclGetUniqueId never made");
                return INVALID_ARGUMENT;
            }
            if (nranks < 1 || rank < 0 || rank >= nranks) return INVALID_ARGUMENT;
            Clique q = cliques.computeIfAbsent(key, k -> new Clique(nranks));
            if (q.n != nranks || q.members[rank] != null) return INVALID_USAGE;
            long h = Arena.global().allocate(8).address();
            Comm c = new Comm(h, q, rank);
            q.members[rank] = c;
            comms.put(h, c);
            q.joined.countDown();
            if (!q.joined.await(10, TimeUnit.SECONDS)) return failed("ncclCommInitRank: not every rank joined");
            out.reinterpret(8).set(ValueLayout.ADDRESS, 0, MemorySegment.ofAddress(h));
            return SUCCESS;
        } catch (Exception e) {
            return failed("ncclCommInitRank: " + e);
        }
    }

    private static int joinOverMpi(MemorySegment out, int nranks, int rank) {
        if (nranks != overMpi.size() || rank != overMpi.rank()) return failed("ncclCommInitRank: rank " + rank + " of " + nranks + " but MPI rank "
                + overMpi.rank() + " of " + overMpi.size());
        long h = Arena.global().allocate(8).address();
        comms.put(h, new Comm(h, new Clique(nranks), rank));
        out.reinterpret(8).set(ValueLayout.ADDRESS, 0, MemorySegment.ofAddress(h));
        return SUCCESS;
    }

    /** Over-MPI mode's all-reduce: this rank's buffer summed over the MPI group (fp32 on the wire), averaged for ncclAvg. */
    private static int allReduceOverMpi(Args a, int n) {
        if (!a.kind.equals("allReduce") || a.op == MAX) return failed("over MPI the fake runs only sum and avg all-reduces, got " + a.kind + " op " + a.op);
        float[] v = read(a.send, 0, a.count, a.type);
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment buf = arena.allocate(4L * Math.max(1, v.length), 4);
            MemorySegment.copy(v, 0, buf, ValueLayout.JAVA_FLOAT, 0, v.length);
            overMpi.allReduce(buf, v.length);
            float[] r = buf.asSlice(0, 4L * v.length).toArray(ValueLayout.JAVA_FLOAT);
            if (a.op == AVG) for (int i = 0; i < r.length; i++) r[i] /= n;
            write(a.recv, 0, r, a.type);
        }
        return SUCCESS;
    }

    static int ncclCommDestroy(MemorySegment comm) {
        Comm c = comms.remove(comm.address());
        calls.add("ncclCommDestroy" + (c == null ? "(unknown)" : "(rank " + c.rank + ")"));
        return c == null ? INVALID_ARGUMENT : SUCCESS;
    }

    static int ncclCommAbort(MemorySegment comm) {
        Comm c = comms.remove(comm.address());
        calls.add("ncclCommAbort" + (c == null ? "(unknown)" : "(rank " + c.rank + ")"));
        return c == null ? INVALID_ARGUMENT : SUCCESS;
    }

    static int ncclCommGetAsyncError(MemorySegment comm, MemorySegment err) {
        if (!comms.containsKey(comm.address())) return INVALID_ARGUMENT;
        err.reinterpret(4).set(ValueLayout.JAVA_INT, 0, asyncError);
        return SUCCESS;
    }

    static int ncclCommCount(MemorySegment comm, MemorySegment n) {
        Comm c = comms.get(comm.address());
        if (c == null) return INVALID_ARGUMENT;
        n.reinterpret(4).set(ValueLayout.JAVA_INT, 0, c.clique.n);
        return SUCCESS;
    }

    static int ncclCommUserRank(MemorySegment comm, MemorySegment r) {
        Comm c = comms.get(comm.address());
        if (c == null) return INVALID_ARGUMENT;
        r.reinterpret(4).set(ValueLayout.JAVA_INT, 0, c.rank);
        return SUCCESS;
    }

    static MemorySegment ncclGetErrorString(int rc) {
        return cString(switch (rc) {
            case 0 -> "no error";
            case 4 -> "invalid argument (run with NCCL_DEBUG=WARN for details)";
            case 5 -> "invalid usage (run with NCCL_DEBUG=WARN for details)";
            case 6 -> "remote process exited or there was a network error";
            default -> "unknown result code";
        });
    }

    static MemorySegment ncclGetLastError(MemorySegment comm) {
        return cString(asyncError != 0 ? "fake: peer rank 1 unreachable" : "");
    }

    static int ncclAllReduce(MemorySegment send, MemorySegment recv, long count, int type, int op, MemorySegment comm, MemorySegment stream) {
        return collective(comm, stream, new Args("allReduce", send.address(), recv.address(), count, type, op, -1));
    }

    static int ncclReduceScatter(MemorySegment send, MemorySegment recv, long recvCount, int type, int op, MemorySegment comm, MemorySegment stream) {
        return collective(comm, stream, new Args("reduceScatter", send.address(), recv.address(), recvCount, type, op, -1));
    }

    static int ncclAllGather(MemorySegment send, MemorySegment recv, long sendCount, int type, MemorySegment comm, MemorySegment stream) {
        return collective(comm, stream, new Args("allGather", send.address(), recv.address(), sendCount, type, -1, -1));
    }

    static int ncclBroadcast(MemorySegment send, MemorySegment recv, long count, int type, int root, MemorySegment comm, MemorySegment stream) {
        return collective(comm, stream, new Args("broadcast", send.address(), recv.address(), count, type, -1, root));
    }

    static int ncclReduce(MemorySegment send, MemorySegment recv, long count, int type, int op, int root, MemorySegment comm, MemorySegment stream) {
        return collective(comm, stream, new Args("reduce", send.address(), recv.address(), count, type, op, root));
    }

    private static String box(int from, int to) {
        return from + "->" + to;
    }

    static int ncclSend(MemorySegment buf, long count, int type, int peer, MemorySegment comm, MemorySegment stream) {
        try {
            Comm c = comm(comm);
            calls.add("ncclSend(rank " + c.rank + ", count " + count + ", type " + type + ", peer " + peer + ")");
            if (badType(type) || peer < 0 || peer >= c.clique.n) return INVALID_ARGUMENT;
            byte[] msg = mem(buf.address(), count * (type == FLOAT32 ? 4 : 2)).toArray(ValueLayout.JAVA_BYTE);
            synchronized (mailboxes) {
                mailboxes.computeIfAbsent(box(c.rank, peer), k -> new ArrayDeque<>()).add(msg);
                mailboxes.notifyAll();
            }
            return SUCCESS;
        } catch (Exception e) {
            return failed("ncclSend: " + e);
        }
    }

    static int ncclRecv(MemorySegment buf, long count, int type, int peer, MemorySegment comm, MemorySegment stream) {
        try {
            Comm c = comm(comm);
            calls.add("ncclRecv(rank " + c.rank + ", count " + count + ", type " + type + ", peer " + peer + ")");
            if (badType(type) || peer < 0 || peer >= c.clique.n) return INVALID_ARGUMENT;
            long bytes = count * (type == FLOAT32 ? 4 : 2), address = buf.address();
            Runnable take = () -> {
                synchronized (mailboxes) {
                    long end = System.nanoTime() + 10_000_000_000L;
                    ArrayDeque<byte[]> q;
                    while ((q = mailboxes.get(box(peer, c.rank))) == null || q.isEmpty()) {
                        if (System.nanoTime() > end) throw new IllegalStateException("no message from rank " + peer);
                        try {
                            mailboxes.wait(100);
                        } catch (InterruptedException e) {
                            throw new IllegalStateException(e);
                        }
                    }
                    byte[] msg = q.poll();
                    if (msg.length != bytes) throw new IllegalStateException("message of " + msg.length + " bytes for a receive of " + bytes);
                    MemorySegment.copy(msg, 0, mem(address, bytes), ValueLayout.JAVA_BYTE, 0, msg.length);
                }
            };
            List<Runnable> group = groupedRecvs.get();
            if (group != null) group.add(take);   // inside a group: receives complete at ncclGroupEnd, after this rank's sends
            else take.run();
            return SUCCESS;
        } catch (Exception e) {
            return failed("ncclRecv: " + e);
        }
    }

    static int ncclGroupStart() {
        calls.add("ncclGroupStart");
        if (groupedRecvs.get() == null) groupedRecvs.set(new ArrayList<>());
        return SUCCESS;
    }

    static int ncclGroupEnd() {
        calls.add("ncclGroupEnd");
        List<Runnable> group = groupedRecvs.get();
        if (group == null) return INVALID_USAGE;
        groupedRecvs.remove();
        try {
            for (Runnable r : group) r.run();
            return SUCCESS;
        } catch (Exception e) {
            return failed("ncclGroupEnd: " + e);
        }
    }
}
