package dev.kiln.dist;

import java.lang.foreign.Arena;
import java.lang.foreign.FunctionDescriptor;
import java.lang.foreign.Linker;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.SymbolLookup;
import java.lang.foreign.ValueLayout;
import java.lang.invoke.MethodHandle;

/**
 * The few Open MPI calls Kiln needs, bound through FFM to {@code libmpi.so.40} (Open MPI 4.x ABI: communicators,
 * datatypes, ops and requests are pointers; the predefined handles are the addresses of the globals
 * {@code ompi_mpi_comm_world}, {@code ompi_mpi_float}, …). Loaded only when a process was started by mpirun.
 */
final class Mpi {
    static final ValueLayout.OfInt I = ValueLayout.JAVA_INT;
    static final java.lang.foreign.AddressLayout A = ValueLayout.ADDRESS;
    static final MemorySegment IN_PLACE = MemorySegment.ofAddress(1); // Open MPI's MPI_IN_PLACE is (void *) 1
    static final int THREAD_MULTIPLE = 3;

    final MemorySegment commWorld, typeFloat, typeDouble, opSum, opMax;
    private final MethodHandle initThread, initialized, finalized, finalize, commRank, commSize, commSplit, abort,
            iallreduce, ireduceScatter, iallgatherv, ibcast, isend, irecv, ibarrier, test, requestFree, cancel;

    private static Mpi instance;

    /** The binding, loaded on first use; throws a {@link DistException} saying what is missing. */
    static synchronized Mpi get() {
        if (instance == null) instance = new Mpi();
        return instance;
    }

    private Mpi() {
        SymbolLookup lib;
        try {
            lib = SymbolLookup.libraryLookup("libmpi.so.40", Arena.global());
        } catch (IllegalArgumentException e) {
            throw new DistException("cannot load libmpi.so.40 (Open MPI 4.x): install openmpi-bin and libopenmpi-dev (" + e.getMessage() + ")");
        }
        Linker linker = Linker.nativeLinker();
        commWorld = global(lib, "ompi_mpi_comm_world");
        typeFloat = global(lib, "ompi_mpi_float");
        typeDouble = global(lib, "ompi_mpi_double");
        opSum = global(lib, "ompi_mpi_op_sum");
        opMax = global(lib, "ompi_mpi_op_max");
        initThread = fn(lib, linker, "MPI_Init_thread", FunctionDescriptor.of(I, A, A, I, A));
        initialized = fn(lib, linker, "MPI_Initialized", FunctionDescriptor.of(I, A));
        finalized = fn(lib, linker, "MPI_Finalized", FunctionDescriptor.of(I, A));
        finalize = fn(lib, linker, "MPI_Finalize", FunctionDescriptor.of(I));
        commRank = fn(lib, linker, "MPI_Comm_rank", FunctionDescriptor.of(I, A, A));
        commSize = fn(lib, linker, "MPI_Comm_size", FunctionDescriptor.of(I, A, A));
        commSplit = fn(lib, linker, "MPI_Comm_split", FunctionDescriptor.of(I, A, I, I, A));
        abort = fn(lib, linker, "MPI_Abort", FunctionDescriptor.of(I, A, I));
        iallreduce = fn(lib, linker, "MPI_Iallreduce", FunctionDescriptor.of(I, A, A, I, A, A, A, A));
        ireduceScatter = fn(lib, linker, "MPI_Ireduce_scatter", FunctionDescriptor.of(I, A, A, A, A, A, A, A));
        iallgatherv = fn(lib, linker, "MPI_Iallgatherv", FunctionDescriptor.of(I, A, I, A, A, A, A, A, A, A));
        ibcast = fn(lib, linker, "MPI_Ibcast", FunctionDescriptor.of(I, A, I, A, I, A, A));
        isend = fn(lib, linker, "MPI_Isend", FunctionDescriptor.of(I, A, I, A, I, I, A, A));
        irecv = fn(lib, linker, "MPI_Irecv", FunctionDescriptor.of(I, A, I, A, I, I, A, A));
        ibarrier = fn(lib, linker, "MPI_Ibarrier", FunctionDescriptor.of(I, A, A));
        test = fn(lib, linker, "MPI_Test", FunctionDescriptor.of(I, A, A, A));
        requestFree = fn(lib, linker, "MPI_Request_free", FunctionDescriptor.of(I, A));
        cancel = fn(lib, linker, "MPI_Cancel", FunctionDescriptor.of(I, A));
    }

    private static MemorySegment global(SymbolLookup lib, String name) {
        return lib.find(name).orElseThrow(() -> new DistException("libmpi.so.40 lacks " + name + ": not Open MPI 4.x?"));
    }

    private static MethodHandle fn(SymbolLookup lib, Linker linker, String name, FunctionDescriptor d) {
        return linker.downcallHandle(global(lib, name), d);
    }

    /** Throws on a non-zero MPI return code (the default error handler aborts before that, but be explicit). */
    static void check(int rc, String what) {
        if (rc != 0) throw new DistException(what + " failed with MPI error code " + rc);
    }

    private static int call(MethodHandle h, String what, Object... args) {
        try {
            int rc = (int) h.invokeWithArguments(args);
            check(rc, what);
            return rc;
        } catch (DistException e) {
            throw e;
        } catch (Throwable t) {
            throw new DistException(what + ": " + t, t);
        }
    }

    void init() {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment flag = a.allocate(I);
            call(initialized, "MPI_Initialized", flag);
            if (flag.get(I, 0) != 0) return;
            call(initThread, "MPI_Init_thread", MemorySegment.NULL, MemorySegment.NULL, THREAD_MULTIPLE, a.allocate(I));
        }
    }

    void finalizeOnce() {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment flag = a.allocate(I);
            call(finalized, "MPI_Finalized", flag);
            if (flag.get(I, 0) == 0) call(finalize, "MPI_Finalize");
        }
    }

    int rank(MemorySegment comm) {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment r = a.allocate(I);
            call(commRank, "MPI_Comm_rank", comm, r);
            return r.get(I, 0);
        }
    }

    int size(MemorySegment comm) {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment r = a.allocate(I);
            call(commSize, "MPI_Comm_size", comm, r);
            return r.get(I, 0);
        }
    }

    MemorySegment split(MemorySegment comm, int color, int key) {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment out = a.allocate(A);
            call(commSplit, "MPI_Comm_split", comm, color, key, out);
            return out.get(A, 0);
        }
    }

    void abort(MemorySegment comm, int code) {
        call(abort, "MPI_Abort", comm, code);
    }

    // The non-blocking calls write their request handle into {@code req} (one pointer of memory the caller keeps).

    void iallreduce(MemorySegment send, MemorySegment recv, int count, MemorySegment type, MemorySegment op, MemorySegment comm, MemorySegment req) {
        call(iallreduce, "MPI_Iallreduce", send, recv, count, type, op, comm, req);
    }

    void ireduceScatter(MemorySegment send, MemorySegment recv, MemorySegment counts, MemorySegment type, MemorySegment op, MemorySegment comm, MemorySegment req) {
        call(ireduceScatter, "MPI_Ireduce_scatter", send, recv, counts, type, op, comm, req);
    }

    void iallgatherv(MemorySegment send, int sendCount, MemorySegment type, MemorySegment recv, MemorySegment counts, MemorySegment displs,
                     MemorySegment comm, MemorySegment req) {
        call(iallgatherv, "MPI_Iallgatherv", send, sendCount, type, recv, counts, displs, type, comm, req);
    }

    void ibcast(MemorySegment buf, int count, MemorySegment type, int root, MemorySegment comm, MemorySegment req) {
        call(ibcast, "MPI_Ibcast", buf, count, type, root, comm, req);
    }

    void isend(MemorySegment buf, int count, MemorySegment type, int peer, int tag, MemorySegment comm, MemorySegment req) {
        call(isend, "MPI_Isend", buf, count, type, peer, tag, comm, req);
    }

    void irecv(MemorySegment buf, int count, MemorySegment type, int peer, int tag, MemorySegment comm, MemorySegment req) {
        call(irecv, "MPI_Irecv", buf, count, type, peer, tag, comm, req);
    }

    void ibarrier(MemorySegment comm, MemorySegment req) {
        call(ibarrier, "MPI_Ibarrier", comm, req);
    }

    /** MPI_Test with MPI_STATUS_IGNORE (NULL in Open MPI): whether the request completed (it is then freed). */
    boolean test(MemorySegment req, MemorySegment flag) {
        call(test, "MPI_Test", req, flag, MemorySegment.NULL);
        return flag.get(I, 0) != 0;
    }
}
