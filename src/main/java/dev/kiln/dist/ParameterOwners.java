package dev.kiln.dist;

import dev.kiln.nn.Parameter;

import java.util.ArrayList;
import java.util.Comparator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * Which rank owns which parameter under ZeRO: whole parameters, as PyTorch's ZeroRedundancyOptimizer partitions
 * them (so every optimizer, LAMB's per-tensor trust ratio and Adafactor's factored moments included, updates
 * exactly as unsharded), balanced greedily: largest first, each to the rank holding the fewest elements so far
 * (ties to the lower rank, then model order), the same on every rank.
 */
public final class ParameterOwners {
    private final Map<String, Integer> owner = new LinkedHashMap<>();
    private final long[] elements;

    public ParameterOwners(Map<String, Parameter> params, int ranks) {
        elements = new long[ranks];
        List<String> names = new ArrayList<>(params.keySet());
        List<String> bySize = new ArrayList<>(names);
        bySize.sort(Comparator.<String>comparingLong(n -> -params.get(n).numel()).thenComparingInt(names::indexOf));
        Map<String, Integer> assigned = new LinkedHashMap<>();
        for (String n : bySize) {
            int best = 0;
            for (int r = 1; r < ranks; r++) if (elements[r] < elements[best]) best = r;
            assigned.put(n, best);
            elements[best] += params.get(n).numel();
        }
        for (String n : names) owner.put(n, assigned.get(n)); // model order
    }

    public int owner(String name) {
        Integer r = owner.get(name);
        if (r == null) throw new IllegalArgumentException("no owner for parameter " + name);
        return r;
    }

    /** Elements owned by {@code rank}. */
    public long elements(int rank) {
        return elements[rank];
    }

    /** The entries of {@code params} that {@code rank} owns, in their order. */
    public <T> Map<String, T> ownedBy(int rank, Map<String, T> params) {
        Map<String, T> out = new LinkedHashMap<>();
        params.forEach((k, v) -> {
            if (owner(k) == rank) out.put(k, v);
        });
        return out;
    }
}
