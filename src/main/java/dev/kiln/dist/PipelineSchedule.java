package dev.kiln.dist;

import java.util.ArrayList;
import java.util.List;

/**
 * The order in which one pipeline stage runs the forwards (F) and backwards (B) of a step's m micro-batches; every
 * step ends with a flush (all backwards done) before the optimizer update, so both schedules compute exactly the
 * gradient of the whole batch.
 * <ul>
 *   <li>GPipe (Huang et al. 2019): F0 … F(m−1), then B0 … B(m−1); a stage holds all m micro-batches' activations.</li>
 *   <li>1F1B (PipeDream-Flush, Narayanan et al. 2021; Megatron-LM's default): a warm-up of w = min(p − s − 1, m)
 *       forwards, then alternately one forward and one backward, then the w backwards left (cool-down); stage s holds
 *       at most min(p − s, m) micro-batches' activations at once.</li>
 * </ul>
 * Both keep micro-batches in order (B i before B i+1), so the activations and gradients a stage sends arrive in the
 * order the neighbour expects them.
 */
public final class PipelineSchedule {
    /** One forward or backward of micro-batch {@code micro}. */
    public record Action(boolean forward, int micro) {
        @Override
        public String toString() {
            return (forward ? "F" : "B") + micro;
        }
    }

    private PipelineSchedule() {}

    /** The actions of {@code stage} (0-based) of {@code stages} over {@code micro} micro-batches under {@code kind} (gpipe or 1f1b). */
    public static List<Action> of(String kind, int stages, int stage, int micro) {
        if (stages < 1 || stage < 0 || stage >= stages || micro < 1)
            throw new DistException("pipeline schedule needs 0 <= stage < stages and micro-batches >= 1, got stage " + stage + " of " + stages + ", " + micro + " micro-batches");
        List<Action> out = new ArrayList<>(2 * micro);
        switch (kind) {
            case "gpipe" -> {
                for (int i = 0; i < micro; i++) out.add(new Action(true, i));
                for (int i = 0; i < micro; i++) out.add(new Action(false, i));
            }
            case "1f1b" -> {
                int warmup = Math.min(stages - stage - 1, micro);
                for (int i = 0; i < warmup; i++) out.add(new Action(true, i));
                for (int i = 0; i < micro - warmup; i++) {
                    out.add(new Action(true, warmup + i));
                    out.add(new Action(false, i));
                }
                for (int i = micro - warmup; i < micro; i++) out.add(new Action(false, i));
            }
            default -> throw new DistException("parallel.pp_schedule must be 1f1b or gpipe, got '" + kind + "'");
        }
        return out;
    }

    /** The most micro-batches whose forward ran and backward did not yet, at any point of {@code actions}. */
    public static int maxInFlight(List<Action> actions) {
        int now = 0, max = 0;
        for (Action a : actions) {
            now += a.forward() ? 1 : -1;
            max = Math.max(max, now);
        }
        return max;
    }

    /** The idle fraction of an ideal pipeline (equal stage times, free communication): (p − 1) / (m + p − 1), both schedules. */
    public static double bubbleFraction(int stages, int micro) {
        return (stages - 1.0) / (micro + stages - 1.0);
    }
}
