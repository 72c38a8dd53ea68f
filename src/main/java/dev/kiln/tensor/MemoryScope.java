package dev.kiln.tensor;

import java.util.ArrayDeque;
import java.util.ArrayList;
import java.util.List;

/**
 * Explicit lifetime for temporaries: every tensor allocated on this thread while a scope is open
 * belongs to the innermost scope and its memory returns to the cache when the scope closes.
 * A training step runs in one scope; parameters, gradients and optimizer state are allocated
 * outside any scope (or inside {@link #persistent()}) and live until released or collected.
 *
 * <p>The stack of open scopes is thread-local, like autograd's grad mode: it is the calling thread's
 * explicit context, not shared state.
 */
public final class MemoryScope implements AutoCloseable {
    private static final ThreadLocal<ArrayDeque<MemoryScope>> STACK = ThreadLocal.withInitial(ArrayDeque::new);

    private final List<Storage> owned = new ArrayList<>();
    private final boolean persistent;
    private boolean closed;

    private MemoryScope(boolean persistent) {
        this.persistent = persistent;
    }

    /** Opens a scope whose allocations are freed at {@link #close()}. */
    public static MemoryScope open() {
        MemoryScope s = new MemoryScope(false);
        STACK.get().push(s);
        return s;
    }

    /** Opens a region in which allocations outlive every enclosing scope (e.g. lazily created gradients). */
    public static MemoryScope persistent() {
        MemoryScope s = new MemoryScope(true);
        STACK.get().push(s);
        return s;
    }

    static void register(Storage storage) {
        MemoryScope top = STACK.get().peek();
        if (top != null && !top.persistent) top.owned.add(storage);
    }

    /** Keeps a tensor's memory alive past this scope (the caller takes over its lifetime). */
    public void detach(Tensor t) {
        owned.remove(t.storage());
    }

    /** Hands {@code t}'s memory to the innermost open scope (after {@link #detach} from an inner one that closed). */
    public static void adopt(Tensor t) {
        register(t.storage());
    }

    /**
     * Closes this scope without freeing what it owns: that moves to the enclosing scope (freed when it closes, at the
     * latest), and the returned handle frees it earlier. A pipeline stage keeps each micro-batch's activations so
     * until that micro-batch's backward ran (1F1B's memory bound), then frees them.
     */
    public Runnable closeKeeping() {
        if (closed) throw new IllegalStateException("memory scope already closed");
        ArrayDeque<MemoryScope> stack = STACK.get();
        if (stack.peek() != this) throw new IllegalStateException("memory scopes must close in reverse order of opening");
        closed = true;
        stack.pop();
        List<Storage> kept = new ArrayList<>(owned);
        owned.clear();
        MemoryScope outer = stack.peek();
        if (outer != null && !outer.persistent) outer.owned.addAll(kept);
        return () -> kept.forEach(Storage::release); // release is idempotent: the enclosing scope's close skips them
    }

    @Override
    public void close() {
        if (closed) return;
        closed = true;
        ArrayDeque<MemoryScope> stack = STACK.get();
        if (stack.peek() != this) throw new IllegalStateException("memory scopes must close in reverse order of opening");
        stack.pop();
        for (Storage s : owned) s.release();
        owned.clear();
    }
}
