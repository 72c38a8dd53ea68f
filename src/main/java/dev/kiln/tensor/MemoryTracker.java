package dev.kiln.tensor;

import java.util.ArrayDeque;
import java.util.HashMap;
import java.util.Map;

/**
 * The memory account by category and device: live and peak bytes of every category, the peak of
 * their sum, and (from the device's caching allocator) the bytes reserved but free. A {@link Storage}
 * is charged to the category current on its thread when it is created and credited back when it is
 * released, so the account counts allocator blocks (64-byte rounded), exactly what the device holds.
 *
 * <pre>{@code try (var a = MemoryTracker.attribute(MemoryCategory.OPTIMIZER_STATE)) { ...allocate... }}</pre>
 *
 * Attribution is per thread and nests (the innermost wins), like {@link MemoryScope}.
 */
public final class MemoryTracker {
    private static final ThreadLocal<ArrayDeque<MemoryCategory>> CURRENT = ThreadLocal.withInitial(ArrayDeque::new);
    private static final Map<Device, Account> ACCOUNTS = new HashMap<>();
    private static final int N = MemoryCategory.values().length;

    private MemoryTracker() {}

    /** Live, peak and the peak of the sum for one device (one slot per category ordinal). */
    private static final class Account {
        final long[] live = new long[N], peak = new long[N];
        long liveTotal, peakTotal;
    }

    /** Attributes this thread's allocations to {@code category} until closed. */
    public static Attribution attribute(MemoryCategory category) {
        ArrayDeque<MemoryCategory> stack = CURRENT.get();
        stack.push(category);
        return new Attribution(stack);
    }

    /** An open attribution; closing it restores the enclosing one (never throws). */
    public static final class Attribution implements AutoCloseable {
        private final ArrayDeque<MemoryCategory> stack;
        private boolean closed;

        private Attribution(ArrayDeque<MemoryCategory> stack) {
            this.stack = stack;
        }

        @Override
        public void close() {
            if (!closed) {
                closed = true;
                stack.pop();
            }
        }
    }

    /** The category this thread's allocations go to now. */
    public static MemoryCategory current() {
        MemoryCategory c = CURRENT.get().peek();
        return c == null ? MemoryCategory.TEMPORARIES : c;
    }

    /** Charges {@code t}'s memory to {@code category} from now on (its role changed after allocation). */
    public static void reattribute(Tensor t, MemoryCategory category) {
        t.storage().reattribute(category);
    }

    static synchronized void allocated(Device device, MemoryCategory category, long bytes) {
        Account a = ACCOUNTS.computeIfAbsent(device, d -> new Account());
        int i = category.ordinal();
        a.live[i] += bytes;
        a.peak[i] = Math.max(a.peak[i], a.live[i]);
        a.liveTotal += bytes;
        a.peakTotal = Math.max(a.peakTotal, a.liveTotal);
    }

    static synchronized void freed(Device device, MemoryCategory category, long bytes) {
        Account a = ACCOUNTS.get(device);
        a.live[category.ordinal()] -= bytes;
        a.liveTotal -= bytes;
    }

    /** Starts a new peak window on every device: each peak becomes what is live now. */
    public static synchronized void resetPeaks() {
        for (Account a : ACCOUNTS.values()) {
            System.arraycopy(a.live, 0, a.peak, 0, N);
            a.peakTotal = a.liveTotal;
        }
    }

    /** The account of {@code device} now (all zero if it never allocated). */
    public static synchronized MemoryUsage usage(Device device) {
        Account a = ACCOUNTS.getOrDefault(device, new Account());
        long reserved = device.kind() == Device.Kind.CPU ? HostAllocator.bytesCached() : 0;
        return new MemoryUsage(device, a.live.clone(), a.peak.clone(), a.liveTotal, a.peakTotal, reserved);
    }
}
