package dev.kiln.autograd;

import dev.kiln.tensor.MemoryCategory;
import dev.kiln.tensor.MemoryScope;
import dev.kiln.tensor.MemoryTracker;
import dev.kiln.tensor.Tensor;

import java.util.ArrayList;
import java.util.IdentityHashMap;
import java.util.List;
import java.util.function.Consumer;

/**
 * Tape-based reverse-mode autograd. Each differentiable op that sees an input requiring grad
 * appends a node (output, inputs, backward closure) to the calling thread's tape; since nodes are
 * appended in execution order, walking the tape backwards is a valid topological order.
 * {@link #backward(Tensor)} propagates, accumulates leaf gradients into {@link Tensor#grad()}, then
 * clears the tape so the closures (and the activations they saved) are released.
 *
 * <p>Recording state is per thread, like PyTorch's grad mode: the thread's explicit context.
 */
public final class Tape {
    /** The backward of one node: given dL/d(output), accumulate dL/d(input) into {@code grads}. */
    @FunctionalInterface
    public interface Backward {
        void apply(Tensor gradOut, Grads grads);
    }

    private record Node(Tensor output, Backward fn, Tensor[] inputs, Runnable marker) {
        Node(Tensor output, Backward fn, Tensor[] inputs) {
            this(output, fn, inputs, null);
        }
    }

    private static final ThreadLocal<Tape> CURRENT = ThreadLocal.withInitial(Tape::new);

    private final List<Node> nodes = new ArrayList<>();
    private int noGradDepth;
    private Consumer<Tensor> gradReady; // called with each leaf once no later node can add to its gradient

    private Tape() {}

    /** True when ops on this thread record for backward. */
    public static boolean isGradEnabled() {
        return CURRENT.get().noGradDepth == 0;
    }

    /** Disables recording until closed (nests). */
    public static AutoCloseable noGrad() {
        Tape t = CURRENT.get();
        t.noGradDepth++;
        return new NoGrad(t);
    }

    /** Closing a no-grad region never throws. */
    public static final class NoGrad implements AutoCloseable {
        private final Tape tape;
        private boolean closed;

        private NoGrad(Tape tape) {
            this.tape = tape;
        }

        @Override
        public void close() {
            if (!closed) {
                closed = true;
                tape.noGradDepth--;
            }
        }
    }

    /** Typed variant of {@link #noGrad()} for try-with-resources without a checked exception. */
    public static NoGrad noGradScope() {
        return (NoGrad) noGrad();
    }

    /**
     * Records {@code fn} as the backward of {@code out} if grad mode is on and any input requires
     * grad; marks {@code out} as requiring grad. Returns {@code out}.
     */
    public static Tensor record(Tensor out, Backward fn, Tensor... inputs) {
        Tape t = CURRENT.get();
        if (t.noGradDepth > 0) return out;
        boolean any = false;
        for (Tensor in : inputs) if (in != null && in.requiresGrad()) { any = true; break; }
        if (!any) return out;
        out.requiresGrad(true);
        out.markNonLeaf();
        t.nodes.add(new Node(out, fn, inputs));
        return out;
    }

    /**
     * Records a point in the tape: backward runs {@code atBackward} when it reaches it, i.e. after every node recorded
     * later and before every node recorded earlier. ZeRO-3 marks each block's start and end, to gather the block's
     * parameters before its backward nodes run and to free them after. Nothing is recorded in no-grad mode.
     */
    public static void mark(Runnable atBackward) {
        Tape t = CURRENT.get();
        if (t.noGradDepth > 0) return;
        t.nodes.add(new Node(null, null, new Tensor[0], atBackward));
    }

    /**
     * Until cleared (null), every backward on this thread calls {@code hook} with each leaf that requires grad as
     * soon as its gradient is final: right after the earliest recorded node that takes it as an input has run
     * (nodes run in reverse, so no later one can add to it). Data parallelism uses it to start reducing a
     * gradient bucket while backward goes on (PyTorch DDP's autograd hooks).
     */
    public static void setGradReadyHook(Consumer<Tensor> hook) {
        CURRENT.get().gradReady = hook;
    }

    /**
     * Records on a fresh tape of this thread's own, with grad mode on, until closed; then the enclosing tape is
     * current again. A recomputation inside backward records and backpropagates its nodes there, apart from
     * the tape being walked.
     */
    public static Nested nested() {
        Tape outer = CURRENT.get();
        CURRENT.set(new Tape());
        return new Nested(outer);
    }

    /** An open nested tape; closing it drops what it still holds and restores the enclosing tape. */
    public static final class Nested implements AutoCloseable {
        private final Tape outer;
        private boolean closed;

        private Nested(Tape outer) {
            this.outer = outer;
        }

        @Override
        public void close() {
            if (!closed) {
                closed = true;
                CURRENT.set(outer);
            }
        }
    }

    /** Number of recorded nodes on this thread's tape (for tests and diagnostics). */
    public static int size() {
        return CURRENT.get().nodes.size();
    }

    /** Drops everything recorded on this thread without running it (e.g. after an aborted step). */
    public static void clear() {
        CURRENT.get().nodes.clear();
    }

    /** Backpropagates from a scalar {@code loss} (seed 1). */
    public static void backward(Tensor loss) {
        if (loss.numel() != 1) throw new IllegalArgumentException("backward() needs a scalar loss, got " + loss.shapeString());
        Tensor seed = Tensor.full(1.0, loss.device(), loss.dtype(), loss.shape());
        backward(loss, seed);
    }

    /** Backpropagates {@code gradOut} = dL/d(output) through everything recorded before. */
    public static void backward(Tensor output, Tensor gradOut) {
        Tape t = CURRENT.get();
        if (!output.requiresGrad()) throw new IllegalStateException("backward() on a tensor that does not require grad");
        try {
            run(t.nodes, t.gradReady, output, gradOut);
        } finally {
            t.nodes.clear();
        }
    }

    /**
     * Takes what this thread's tape recorded so far out as a {@link Graph} of its own and leaves the tape empty: a
     * pipeline stage records one graph per micro-batch, keeps several in flight and runs the backward of each later,
     * when its output gradient arrives.
     */
    public static Graph take() {
        Tape t = CURRENT.get();
        Graph g = new Graph(new ArrayList<>(t.nodes));
        t.nodes.clear();
        return g;
    }

    /** Recorded nodes taken off the tape ({@link #take}); their backward runs once, later. */
    public static final class Graph {
        private List<Node> nodes;

        private Graph(List<Node> nodes) {
            this.nodes = nodes;
        }

        /** Number of recorded nodes (0 once backward ran or the graph was dropped). */
        public int size() {
            return nodes == null ? 0 : nodes.size();
        }

        /**
         * Backpropagates {@code gradOut} = dL/d(output) through this graph's nodes, as {@link Tape#backward(Tensor, Tensor)}
         * does through the tape's (leaf gradients accumulate, the thread's grad-ready hook is called); then drops them.
         */
        public void backward(Tensor output, Tensor gradOut) {
            if (nodes == null) throw new IllegalStateException("backward() on a graph whose backward already ran or that was dropped");
            try {
                run(nodes, CURRENT.get().gradReady, output, gradOut);
            } finally {
                nodes = null;
            }
        }

        /** Drops the nodes without running them (the closures and what they saved are released). */
        public void drop() {
            nodes = null;
        }
    }

    private static void run(List<Node> nodes, Consumer<Tensor> gradReady, Tensor output, Tensor gradOut) {
        if (!output.requiresGrad()) throw new IllegalStateException("backward() on a tensor that does not require grad");
        Grads grads = new Grads();
        try (var ignored = noGradScope(); var a = MemoryTracker.attribute(MemoryCategory.TEMPORARIES)) {
            if (output.isLeaf()) {
                grads.accumulate(output, gradOut);
                return;
            }
            grads.seed(output, gradOut);
            List<List<Tensor>> readyAfter = gradReady == null ? null : leavesByEarliestUse(nodes);
            for (int i = nodes.size() - 1; i >= 0; i--) {
                Node n = nodes.get(i);
                if (n.marker != null) {
                    n.marker.run();
                    continue;
                }
                Tensor g = grads.take(n.output);
                if (g != null) {
                    n.fn.apply(g, grads);
                    if (g != gradOut) g.release();
                }
                if (readyAfter != null && readyAfter.get(i) != null) for (Tensor leaf : readyAfter.get(i)) gradReady.accept(leaf);
            }
        }
    }

    /** For each node index, the grad-requiring leaves whose earliest use is that node (null where none). */
    private static List<List<Tensor>> leavesByEarliestUse(List<Node> nodes) {
        IdentityHashMap<Tensor, Integer> earliest = new IdentityHashMap<>();
        for (int i = nodes.size() - 1; i >= 0; i--)
            for (Tensor in : nodes.get(i).inputs)
                if (in != null && in.isLeaf() && in.requiresGrad()) earliest.put(in, i);
        List<List<Tensor>> out = new ArrayList<>(java.util.Collections.nCopies(nodes.size(), (List<Tensor>) null));
        // in order of the nodes' inputs, so every rank of a data-parallel job sees the same order
        for (int i = 0; i < nodes.size(); i++)
            for (Tensor in : nodes.get(i).inputs)
                if (in != null && earliest.get(in) != null && earliest.get(in) == i) {
                    if (out.get(i) == null) out.set(i, new ArrayList<>());
                    if (!out.get(i).contains(in)) out.get(i).add(in);
                }
        return out;
    }

    /** Gradient buffers of one backward pass: interior ones in a map, leaves in {@link Tensor#grad()}. */
    public static final class Grads {
        private final IdentityHashMap<Tensor, Tensor> interior = new IdentityHashMap<>();

        private Grads() {}

        /** Whether backward should compute a gradient for {@code t}. */
        public boolean wants(Tensor t) {
            return t != null && t.requiresGrad();
        }

        /**
         * The contiguous buffer (same shape and dtype as {@code t}) into which dL/dt accumulates;
         * created zeroed on first use. Leaf buffers outlive the step (they are the .grad).
         */
        public Tensor buffer(Tensor t) {
            if (t.isLeaf()) {
                Tensor g = t.grad();
                if (g == null) {
                    try (var s = MemoryScope.persistent(); var a = MemoryTracker.attribute(MemoryCategory.GRADIENTS)) {
                        g = Tensor.zeros(t.device(), t.dtype(), t.shape());
                    }
                    t.setGrad(g);
                }
                return g;
            }
            Tensor g = interior.get(t);
            if (g == null) {
                g = Tensor.zeros(t.device(), t.dtype(), t.shape());
                interior.put(t, g);
            }
            return g;
        }

        /** buffer(t) += g. */
        public void accumulate(Tensor t, Tensor g) {
            if (!wants(t)) return;
            dev.kiln.backend.Backend.of(t).accumulate(buffer(t), g);
        }

        private void seed(Tensor t, Tensor g) {
            interior.put(t, g);
        }

        private Tensor take(Tensor t) {
            return interior.remove(t);
        }
    }
}
