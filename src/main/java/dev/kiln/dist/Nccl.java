package dev.kiln.dist;

import dev.kiln.backend.cuda.CudaLibraries;
import dev.kiln.tensor.DType;

import java.lang.foreign.Arena;
import java.lang.foreign.FunctionDescriptor;
import java.lang.foreign.Linker;
import java.lang.foreign.MemoryLayout;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.StructLayout;
import java.lang.foreign.SymbolLookup;
import java.lang.foreign.ValueLayout;
import java.lang.invoke.MethodHandle;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Optional;

/**
 * The NCCL calls Kiln needs, bound through FFM to {@code libnccl.so.2} (signatures and constants from nccl.h of
 * NCCL 2.30; the same since 2.12 for everything bound here). Handles ({@code ncclComm_t}, {@code cudaStream_t}) and
 * device buffers are pointers, counts are {@code size_t}, enums are ints; {@code ncclUniqueId} is a 128-byte struct
 * that {@code ncclCommInitRank} takes by value. Every call checks its {@code ncclResult_t} and throws a one-line
 * {@link DistException} naming the call, the result's name and NCCL's own words for it.
 *
 * <p>The library is found like the CUDA ones ({@link #find}): {@code $KILN_NCCL_LIB} (the file, or the folder
 * holding it), then {@link CudaLibraries}' folders (the system's {@code /usr/lib/x86_64-linux-gnu}, NVIDIA's
 * wheels' {@code site-packages/nvidia/nccl/lib}, …), then the dynamic linker.
 */
public final class Nccl {
    public static final String SONAME = "libnccl.so.2";
    /** NCCL_UNIQUE_ID_BYTES: the size of {@code ncclUniqueId}. */
    public static final int UNIQUE_ID_BYTES = 128;
    /** ncclResult_t values. */
    public static final int SUCCESS = 0, UNHANDLED_CUDA_ERROR = 1, SYSTEM_ERROR = 2, INTERNAL_ERROR = 3, INVALID_ARGUMENT = 4,
            INVALID_USAGE = 5, REMOTE_ERROR = 6, IN_PROGRESS = 7;
    private static final String[] RESULT_NAMES = {"ncclSuccess", "ncclUnhandledCudaError", "ncclSystemError", "ncclInternalError",
            "ncclInvalidArgument", "ncclInvalidUsage", "ncclRemoteError", "ncclInProgress"};

    /** ncclDataType_t values Kiln communicates in. */
    public enum DataType {
        FLOAT32(7, 4), BFLOAT16(9, 2);

        public final int code, bytes;

        DataType(int code, int bytes) {
            this.code = code;
            this.bytes = bytes;
        }

        /** The NCCL type of a tensor dtype; gradients and weights travel as fp32 or bf16. */
        public static DataType of(DType dtype) {
            return switch (dtype) {
                case F32 -> FLOAT32;
                case BF16 -> BFLOAT16;
                default -> throw new DistException("NCCL collectives take F32 or BF16 tensors, got " + dtype);
            };
        }
    }

    /** ncclRedOp_t values (ncclAvg needs NCCL 2.10+). */
    public enum RedOp {
        SUM(0), MAX(2), AVG(4);

        public final int code;

        RedOp(int code) {
            this.code = code;
        }
    }

    private static final ValueLayout.OfInt I = ValueLayout.JAVA_INT;
    private static final ValueLayout.OfLong SIZE = ValueLayout.JAVA_LONG;   // size_t on x86-64 Linux
    private static final java.lang.foreign.AddressLayout P = ValueLayout.ADDRESS;
    /** {@code typedef struct { char internal[128]; } ncclUniqueId;} */
    static final StructLayout UNIQUE_ID = MemoryLayout.structLayout(MemoryLayout.sequenceLayout(UNIQUE_ID_BYTES, ValueLayout.JAVA_BYTE).withName("internal"));

    /** Every entry point bound, with its C signature as FFM sees it (the binding test compares these with nccl.h). */
    static final Map<String, FunctionDescriptor> SIGNATURES = signatures();

    private static Map<String, FunctionDescriptor> signatures() {
        Map<String, FunctionDescriptor> m = new LinkedHashMap<>();
        m.put("ncclGetVersion", FunctionDescriptor.of(I, P));
        m.put("ncclGetUniqueId", FunctionDescriptor.of(I, P));
        m.put("ncclCommInitRank", FunctionDescriptor.of(I, P, I, UNIQUE_ID, I));   // the id by value
        m.put("ncclCommDestroy", FunctionDescriptor.of(I, P));
        m.put("ncclCommAbort", FunctionDescriptor.of(I, P));
        m.put("ncclCommGetAsyncError", FunctionDescriptor.of(I, P, P));
        m.put("ncclCommCount", FunctionDescriptor.of(I, P, P));
        m.put("ncclCommUserRank", FunctionDescriptor.of(I, P, P));
        m.put("ncclGetErrorString", FunctionDescriptor.of(P, I));
        m.put("ncclGetLastError", FunctionDescriptor.of(P, P));
        m.put("ncclAllReduce", FunctionDescriptor.of(I, P, P, SIZE, I, I, P, P));
        m.put("ncclReduceScatter", FunctionDescriptor.of(I, P, P, SIZE, I, I, P, P));
        m.put("ncclAllGather", FunctionDescriptor.of(I, P, P, SIZE, I, P, P));
        m.put("ncclBroadcast", FunctionDescriptor.of(I, P, P, SIZE, I, I, P, P));
        m.put("ncclReduce", FunctionDescriptor.of(I, P, P, SIZE, I, I, I, P, P));
        m.put("ncclSend", FunctionDescriptor.of(I, P, SIZE, I, I, P, P));
        m.put("ncclRecv", FunctionDescriptor.of(I, P, SIZE, I, I, P, P));
        m.put("ncclGroupStart", FunctionDescriptor.of(I));
        m.put("ncclGroupEnd", FunctionDescriptor.of(I));
        return Collections.unmodifiableMap(m);
    }

    private final String where;
    private final MethodHandle getVersion, getUniqueId, commInitRank, commDestroy, commAbort, commGetAsyncError, commCount, commUserRank,
            getErrorString, getLastError, allReduce, reduceScatter, allGather, broadcast, reduce, send, recv, groupStart, groupEnd;

    /** Binds every entry point of {@code lib}, loaded from {@code where} (named in errors). */
    public Nccl(SymbolLookup lib, String where) {
        this.where = where;
        getVersion = bind(lib, "ncclGetVersion");
        getUniqueId = bind(lib, "ncclGetUniqueId");
        commInitRank = bind(lib, "ncclCommInitRank");
        commDestroy = bind(lib, "ncclCommDestroy");
        commAbort = bind(lib, "ncclCommAbort");
        commGetAsyncError = bind(lib, "ncclCommGetAsyncError");
        commCount = bind(lib, "ncclCommCount");
        commUserRank = bind(lib, "ncclCommUserRank");
        getErrorString = bind(lib, "ncclGetErrorString");
        getLastError = bind(lib, "ncclGetLastError");
        allReduce = bind(lib, "ncclAllReduce");
        reduceScatter = bind(lib, "ncclReduceScatter");
        allGather = bind(lib, "ncclAllGather");
        broadcast = bind(lib, "ncclBroadcast");
        reduce = bind(lib, "ncclReduce");
        send = bind(lib, "ncclSend");
        recv = bind(lib, "ncclRecv");
        groupStart = bind(lib, "ncclGroupStart");
        groupEnd = bind(lib, "ncclGroupEnd");
    }

    private MethodHandle bind(SymbolLookup lib, String name) {
        FunctionDescriptor fd = SIGNATURES.get(name);
        MemorySegment sym = lib.find(name).orElseThrow(() -> new DistException(where + " does not export " + name + ": not NCCL 2.12 or newer?"));
        return Linker.nativeLinker().downcallHandle(sym, fd);
    }

    // ---- finding and loading the library ----

    private static Nccl system;

    /** The machine's NCCL, loaded on first use; a one-line {@link DistException} saying where it looked when there is none. */
    public static synchronized Nccl system() {
        if (system == null) system = load(System.getenv(), Path.of("/"));
        return system;
    }

    /** Makes {@code nccl} the process's NCCL ({@code null}: load the machine's again on next use): for tests, a fake one. */
    static synchronized void useSystem(Nccl nccl) {
        system = nccl;
    }

    /** Loads the library {@link #find} gives, else asks the dynamic linker for libnccl.so.2. */
    static Nccl load(Map<String, String> env, Path root) {
        Optional<Path> file = find(env, root);
        if (file.isPresent()) {
            try {
                return new Nccl(SymbolLookup.libraryLookup(file.get(), Arena.global()), file.get().toString());
            } catch (IllegalArgumentException e) {
                throw new DistException("NCCL was found at " + file.get() + " but cannot be loaded: " + e.getMessage(), e);
            }
        }
        try {
            return new Nccl(SymbolLookup.libraryLookup(SONAME, Arena.global()), SONAME + " (dynamic linker)");
        } catch (IllegalArgumentException e) {
            throw new DistException(notFound(env, root));
        }
    }

    /**
     * The libnccl.so.2 to load: {@code $KILN_NCCL_LIB} when set (the file itself, or a folder holding it; set but
     * holding none is an error, not a fall-through), else the first of {@link CudaLibraries#searchDirs} that holds it.
     */
    public static Optional<Path> find(Map<String, String> env, Path root) {
        String v = env.get("KILN_NCCL_LIB");
        if (v != null && !v.isBlank()) {
            Path p = Path.of(v.trim());
            Path f = Files.isDirectory(p) ? p.resolve(SONAME) : p;
            if (!Files.isRegularFile(f)) throw new DistException("KILN_NCCL_LIB=" + v.trim() + " is neither " + SONAME + " nor a folder holding it");
            return Optional.of(f);
        }
        for (Path dir : new CudaLibraries(env, root).searchDirs()) {
            Path f = dir.resolve(SONAME);
            if (Files.isRegularFile(f)) return Optional.of(f);
        }
        return Optional.empty();
    }

    static String notFound(Map<String, String> env, Path root) {
        List<String> where = new ArrayList<>(List.of("$KILN_NCCL_LIB (unset)"));
        where.addAll(new CudaLibraries(env, root).patterns());
        return "NCCL is not available: " + SONAME + " not found in " + String.join(", ", where) + ", nor by the dynamic linker; "
                + "set KILN_NCCL_LIB to the library or its folder (e.g. site-packages/nvidia/nccl/lib of pip's nvidia-nccl-cu13)";
    }

    /** Where the library was loaded from. */
    public String location() {
        return where;
    }

    // ---- calls ----

    /** A downcall whose checked Throwable (from invokeExact) is rethrown unchecked. */
    @FunctionalInterface
    private interface Call<T> {
        T run() throws Throwable;
    }

    private static <T> T invoke(Call<T> c) {
        try {
            return c.run();
        } catch (RuntimeException | Error e) {
            throw e;
        } catch (Throwable t) {
            throw new IllegalStateException(t);
        }
    }

    /** "ncclInvalidArgument" for 4; unknown codes by number. */
    public static String resultName(int rc) {
        return rc >= 0 && rc < RESULT_NAMES.length ? RESULT_NAMES[rc] : "ncclResult_t " + rc;
    }

    /** Throws unless {@code rc} is ncclSuccess: "ncclAllReduce failed: ncclInvalidArgument (4): invalid argument[; last error]". */
    void check(String call, int rc, MemorySegment comm) {
        if (rc == SUCCESS) return;
        String last = comm == null ? "" : lastError(comm);
        throw new DistException(call + " failed: " + describe(rc) + (last.isBlank() ? "" : "; " + last.strip()));
    }

    /** "ncclRemoteError (6): remote process exited or there was a network error". */
    public String describe(int rc) {
        return resultName(rc) + " (" + rc + "): " + errorString(rc);
    }

    public String errorString(int rc) {
        MemorySegment s = invoke(() -> (MemorySegment) getErrorString.invokeExact(rc));
        return string(s, "no description");
    }

    /** NCCL's last error message for {@code comm} (or the last global one for NULL); empty when none. */
    public String lastError(MemorySegment comm) {
        MemorySegment s = invoke(() -> (MemorySegment) getLastError.invokeExact(comm));
        return string(s, "");
    }


    private static String string(MemorySegment p, String fallback) {
        return p == null || p.address() == 0 ? fallback : p.reinterpret(Long.MAX_VALUE).getString(0);
    }

    /** ncclGetVersion: e.g. 23007 for 2.30.7 (MAJOR·10000 + MINOR·100 + PATCH since 2.9). */
    public int version() {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment v = a.allocate(I);
            check("ncclGetVersion", invoke(() -> (int) getVersion.invokeExact(v)), null);
            return v.get(I, 0);
        }
    }

    /** "2.30.7" from a version code. */
    public static String versionString(int code) {
        return code >= 10000 ? code / 10000 + "." + code / 100 % 100 + "." + code % 100 : code / 1000 + "." + code / 100 % 10 + "." + code % 100;
    }

    /** ncclGetUniqueId: the 128 bytes every rank of a new communicator must pass to {@link #commInitRank}. */
    public byte[] uniqueId() {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment id = a.allocate(UNIQUE_ID);
            check("ncclGetUniqueId", invoke(() -> (int) getUniqueId.invokeExact(id)), null);
            return id.toArray(ValueLayout.JAVA_BYTE);
        }
    }

    /** ncclCommInitRank on the calling thread's current CUDA device; collective over the {@code nranks} ranks. */
    public MemorySegment commInitRank(int nranks, byte[] uniqueId, int rank) {
        if (uniqueId.length != UNIQUE_ID_BYTES) throw new IllegalArgumentException("an NCCL unique id has " + UNIQUE_ID_BYTES + " bytes, got " + uniqueId.length);
        try (Arena a = Arena.ofConfined()) {
            MemorySegment out = a.allocate(P), id = a.allocate(UNIQUE_ID);
            MemorySegment.copy(uniqueId, 0, id, ValueLayout.JAVA_BYTE, 0, UNIQUE_ID_BYTES);
            check("ncclCommInitRank(rank " + rank + " of " + nranks + ")", invoke(() -> (int) commInitRank.invokeExact(out, nranks, id, rank)), null);
            return out.get(P, 0);
        }
    }

    public void commDestroy(MemorySegment comm) {
        check("ncclCommDestroy", invoke(() -> (int) commDestroy.invokeExact(comm)), null);
    }

    /** ncclCommAbort: frees the communicator and stops its operations in flight (a peer died). */
    public void commAbort(MemorySegment comm) {
        check("ncclCommAbort", invoke(() -> (int) commAbort.invokeExact(comm)), null);
    }

    /** ncclCommGetAsyncError: the communicator's asynchronous error, ncclSuccess (0) while healthy. */
    public int asyncError(MemorySegment comm) {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment e = a.allocate(I);
            check("ncclCommGetAsyncError", invoke(() -> (int) commGetAsyncError.invokeExact(comm, e)), null);
            return e.get(I, 0);
        }
    }

    public int commCount(MemorySegment comm) {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment n = a.allocate(I);
            check("ncclCommCount", invoke(() -> (int) commCount.invokeExact(comm, n)), comm);
            return n.get(I, 0);
        }
    }

    public int commUserRank(MemorySegment comm) {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment n = a.allocate(I);
            check("ncclCommUserRank", invoke(() -> (int) commUserRank.invokeExact(comm, n)), comm);
            return n.get(I, 0);
        }
    }

    private static MemorySegment ptr(long address) {
        return MemorySegment.ofAddress(address);
    }

    // The collectives enqueue on {@code stream} and return at once; buffers are device addresses.

    public void allReduce(long send, long recv, long count, DataType type, RedOp op, MemorySegment comm, MemorySegment stream) {
        check("ncclAllReduce", invoke(() -> (int) allReduce.invokeExact(ptr(send), ptr(recv), count, type.code, op.code, comm, stream)), comm);
    }

    /** recv (recvCount elements) ← op over ranks of this rank's block of send (nranks × recvCount elements). */
    public void reduceScatter(long send, long recv, long recvCount, DataType type, RedOp op, MemorySegment comm, MemorySegment stream) {
        check("ncclReduceScatter", invoke(() -> (int) reduceScatter.invokeExact(ptr(send), ptr(recv), recvCount, type.code, op.code, comm, stream)), comm);
    }

    /** recv (nranks × sendCount elements) ← every rank's send, in rank order. */
    public void allGather(long send, long recv, long sendCount, DataType type, MemorySegment comm, MemorySegment stream) {
        check("ncclAllGather", invoke(() -> (int) allGather.invokeExact(ptr(send), ptr(recv), sendCount, type.code, comm, stream)), comm);
    }

    /** recv ← root's send (send is read on the root only). */
    public void broadcast(long send, long recv, long count, DataType type, int root, MemorySegment comm, MemorySegment stream) {
        check("ncclBroadcast", invoke(() -> (int) broadcast.invokeExact(ptr(send), ptr(recv), count, type.code, root, comm, stream)), comm);
    }

    /** root's recv ← op over ranks of send (recv is written on the root only). */
    public void reduce(long send, long recv, long count, DataType type, RedOp op, int root, MemorySegment comm, MemorySegment stream) {
        check("ncclReduce", invoke(() -> (int) reduce.invokeExact(ptr(send), ptr(recv), count, type.code, op.code, root, comm, stream)), comm);
    }

    public void send(long buf, long count, DataType type, int peer, MemorySegment comm, MemorySegment stream) {
        check("ncclSend", invoke(() -> (int) send.invokeExact(ptr(buf), count, type.code, peer, comm, stream)), comm);
    }

    public void recv(long buf, long count, DataType type, int peer, MemorySegment comm, MemorySegment stream) {
        check("ncclRecv", invoke(() -> (int) recv.invokeExact(ptr(buf), count, type.code, peer, comm, stream)), comm);
    }

    /** Calls between groupStart and groupEnd are launched together (needed for send/recv pairs and per-rank loops). */
    public void groupStart() {
        check("ncclGroupStart", invoke(() -> (int) groupStart.invokeExact()), null);
    }

    public void groupEnd() {
        check("ncclGroupEnd", invoke(() -> (int) groupEnd.invokeExact()), MemorySegment.NULL);   // NULL: the last error of any communicator
    }
}
