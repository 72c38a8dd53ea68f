package dev.kiln.optim;

import dev.kiln.tensor.Tensor;

import java.util.LinkedHashMap;
import java.util.Map;

/**
 * The loss scaler's entries ("grad_scaler.scale", "grad_scaler.growth_tracker") of a {@link MixedPrecisionOptimizer}'s
 * state, carried past the whole-model optimizer into which tensor- and pipeline-parallel checkpoints gather the
 * shards' and stages' state: that optimizer is a plain fp32 one (no masters, no scaler), so {@link #around} adds the
 * entries to what it saves and takes them out of what it loads. The checkpoint is then the single process's. The
 * values are held as numbers, not tensors: a loaded state's tensors live only as long as the load's scope.
 */
public final class ScalerEntries {
    private static final String PREFIX = "grad_scaler.";

    private record Entry(double[] values, int[] shape) {
        static Entry of(Tensor t) {
            return new Entry(t.toDoubleArray(), t.shape().clone());
        }

        Tensor tensor() {
            return Tensor.ofDoubles(values, shape);
        }
    }

    private final Map<String, Entry> entries = new LinkedHashMap<>();

    /** No entries yet: {@link #around}'s loadStateDict fills them. */
    public ScalerEntries() {}

    /** The scaler entries of {@code opt}'s state (none unless it is an fp16 {@link MixedPrecisionOptimizer}). */
    public static ScalerEntries of(Optimizer opt) {
        ScalerEntries out = new ScalerEntries();
        if (opt instanceof MixedPrecisionOptimizer)
            opt.stateDict().forEach((k, v) -> {
                if (isScalerKey(k)) out.entries.put(k, Entry.of(v));
            });
        return out;
    }

    /** Whether a state key is the scaler's (not a per-parameter tensor of the wrapped optimizer). */
    public static boolean isScalerKey(String key) {
        return key.startsWith(PREFIX);
    }

    /**
     * The entries held (those of {@link #of}, or those the last load through {@link #around} took out), as new
     * tensors in the caller's scope.
     */
    public Map<String, Tensor> entries() {
        Map<String, Tensor> out = new LinkedHashMap<>();
        entries.forEach((k, e) -> out.put(k, e.tensor()));
        return out;
    }

    /**
     * {@code whole} with these entries: its stateDict adds them; its loadStateDict keeps the state's scaler entries
     * here and gives {@code whole} the rest. Updates go to {@code whole}.
     */
    public Optimizer around(Optimizer whole) {
        return new Optimizer() {
            @Override
            public String name() {
                return whole.name();
            }

            @Override
            public void step(double lr) {
                whole.step(lr);
            }

            @Override
            public long stepCount() {
                return whole.stepCount();
            }

            @Override
            public Map<String, Tensor> stateDict() {
                Map<String, Tensor> out = new LinkedHashMap<>(whole.stateDict());
                out.putAll(entries());
                return out;
            }

            @Override
            public void loadStateDict(Map<String, Tensor> state, long stepCount) {
                Map<String, Tensor> rest = new LinkedHashMap<>();
                entries.clear();
                state.forEach((k, v) -> {
                    if (isScalerKey(k)) entries.put(k, Entry.of(v));
                    else rest.put(k, v);
                });
                whole.loadStateDict(rest, stepCount);
            }
        };
    }
}
