package dev.kiln.dist;

import org.junit.jupiter.api.Test;

import java.util.ArrayList;
import java.util.List;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** The schedules' order per stage, their in-flight limits, and the stage split. */
class PipelineScheduleTest {
    static String order(String kind, int p, int s, int m) {
        return String.join(" ", PipelineSchedule.of(kind, p, s, m).stream().map(PipelineSchedule.Action::toString).toList());
    }

    @Test
    void oneFOneBHasWarmUpSteadyStateAndCoolDown() {
        // p 4, m 6 (Narayanan et al. 2021, fig. 4): stage s warms up with p − s − 1 forwards
        assertEquals("F0 F1 F2 F3 B0 F4 B1 F5 B2 B3 B4 B5", order("1f1b", 4, 0, 6));
        assertEquals("F0 F1 F2 B0 F3 B1 F4 B2 F5 B3 B4 B5", order("1f1b", 4, 1, 6));
        assertEquals("F0 F1 B0 F2 B1 F3 B2 F4 B3 F5 B4 B5", order("1f1b", 4, 2, 6));
        assertEquals("F0 B0 F1 B1 F2 B2 F3 B3 F4 B4 F5 B5", order("1f1b", 4, 3, 6));
        // fewer micro-batches than stages: the warm-up is cut to m
        assertEquals("F0 F1 B0 B1", order("1f1b", 4, 0, 2));
    }

    @Test
    void gpipeRunsAllForwardsThenAllBackwards() {
        for (int s = 0; s < 3; s++) assertEquals("F0 F1 F2 F3 B0 B1 B2 B3", order("gpipe", 3, s, 4));
    }

    @Test
    void everyMicroBatchRunsForwardThenBackwardOnceInOrder() {
        for (String kind : List.of("1f1b", "gpipe"))
            for (int p = 1; p <= 5; p++)
                for (int m = 1; m <= 9; m++)
                    for (int s = 0; s < p; s++) {
                        var actions = PipelineSchedule.of(kind, p, s, m);
                        assertEquals(2 * m, actions.size());
                        List<Integer> f = new ArrayList<>(), b = new ArrayList<>();
                        for (var a : actions) {
                            if (a.forward()) f.add(a.micro());
                            else {
                                assertTrue(f.contains(a.micro()), kind + ": B" + a.micro() + " before its forward");
                                b.add(a.micro());
                            }
                        }
                        List<Integer> inOrder = java.util.stream.IntStream.range(0, m).boxed().toList();
                        assertEquals(inOrder, f);
                        assertEquals(inOrder, b);
                        int inFlight = PipelineSchedule.maxInFlight(actions);
                        // 1F1B holds at most p − s micro-batches' activations on stage s; GPipe all m
                        assertEquals(kind.equals("1f1b") ? Math.min(p - s, m) : m, inFlight, kind + " p " + p + " s " + s + " m " + m);
                    }
    }

    @Test
    void theStagesSplitTheBlocksEvenlyExtraOnesFirst() {
        assertArrayEquals(new int[]{0, 3}, PipelineParallel.blockRange(5, 2, 0));
        assertArrayEquals(new int[]{3, 5}, PipelineParallel.blockRange(5, 2, 1));
        for (int n = 1; n <= 12; n++)
            for (int p = 1; p <= n; p++) {
                int at = 0;
                for (int s = 0; s < p; s++) {
                    int[] r = PipelineParallel.blockRange(n, p, s);
                    assertEquals(at, r[0], "contiguous");
                    int size = r[1] - r[0];
                    assertTrue(size == n / p || size == n / p + 1, "balanced");
                    at = r[1];
                }
                assertEquals(n, at, "every block in a stage");
            }
    }

    @Test
    void bubbleFractionAndBadInput() {
        assertEquals(3.0 / 11, PipelineSchedule.bubbleFraction(4, 8), 1e-15);
        assertEquals(0.0, PipelineSchedule.bubbleFraction(1, 8));
        var e = assertThrows(DistException.class, () -> PipelineSchedule.of("interleaved", 2, 0, 2));
        assertTrue(e.getMessage().contains("parallel.pp_schedule"), e.getMessage());
        assertThrows(DistException.class, () -> PipelineSchedule.of("1f1b", 2, 2, 2));
    }
}
