package dev.kiln.dist;

import java.util.EnumMap;
import java.util.Map;

/**
 * Bytes each rank handed to each kind of collective, for the bench and the analytic check. The count is the
 * call's payload as MPI's API sees it: the buffer of an all-reduce or broadcast, the full (unscattered) input of a
 * reduce-scatter, the full (gathered) output of an all-gather, the message of a send. What the algorithm then puts
 * on the wire is a multiple of it (a ring all-reduce sends 2(N−1)/N of the buffer per rank: {@link #wireBytes}).
 */
public final class CommStats {
    public enum Kind { ALL_REDUCE, REDUCE_SCATTER, ALL_GATHER, BROADCAST, SEND, RECV, BARRIER }

    private final Map<Kind, long[]> counts = new EnumMap<>(Kind.class); // {calls, bytes}

    synchronized void add(Kind kind, long bytes) {
        long[] c = counts.computeIfAbsent(kind, k -> new long[2]);
        c[0]++;
        c[1] += bytes;
    }

    public synchronized long bytes(Kind kind) {
        long[] c = counts.get(kind);
        return c == null ? 0 : c[1];
    }

    public synchronized long calls(Kind kind) {
        long[] c = counts.get(kind);
        return c == null ? 0 : c[0];
    }

    public synchronized long totalBytes() {
        long s = 0;
        for (long[] c : counts.values()) s += c[1];
        return s;
    }

    /** Bytes one rank sends under ring algorithms for what was counted, in a group of {@code n}. */
    public synchronized double wireBytes(int n) {
        double f = (n - 1.0) / n;
        return 2 * f * bytes(Kind.ALL_REDUCE) + f * bytes(Kind.REDUCE_SCATTER) + f * bytes(Kind.ALL_GATHER)
                + f * bytes(Kind.BROADCAST) + bytes(Kind.SEND);
    }

    public synchronized void reset() {
        counts.clear();
    }

    @Override
    public synchronized String toString() {
        StringBuilder sb = new StringBuilder();
        counts.forEach((k, c) -> sb.append(sb.isEmpty() ? "" : ", ").append(k.name().toLowerCase()).append(' ').append(c[1]).append(" B in ").append(c[0]).append(" calls"));
        return sb.isEmpty() ? "no communication" : sb.toString();
    }
}
