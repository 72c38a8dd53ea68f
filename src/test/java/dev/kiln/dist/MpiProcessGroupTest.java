package dev.kiln.dist;

import org.junit.jupiter.api.Test;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertSame;
import static org.junit.jupiter.api.Assertions.assertTrue;

class MpiProcessGroupTest {
    @Test
    void withoutMpirunTheWorldIsOneLocalRank() {
        assertFalse(ProcessGroup.launchedByMpirun(), "the test JVM itself is not started by mpirun");
        ProcessGroup g = ProcessGroup.world();
        assertSame(LocalProcessGroup.INSTANCE, g);
        assertEquals(0, g.rank());
        assertEquals(1, g.size());
        MemorySegment in = Arena.ofAuto().allocateFrom(ValueLayout.JAVA_FLOAT, 1f, 2f, 3f), out = Arena.ofAuto().allocate(12);
        g.allReduce(in, 3);
        g.allGather(in, out, new int[]{3});
        assertEquals(3f, out.getAtIndex(ValueLayout.JAVA_FLOAT, 2));
        double[] d = {4};
        g.allReduceSum(d);
        assertEquals(4, d[0]);
    }

    @Test
    void everyCollectiveOnTwoRanks() throws Exception {
        var r = MpiRun.run(2, CollectivesMain.class.getName(), 60);
        assertEquals(0, r.exitCode(), r.output());
        assertTrue(r.output().contains("rank 0 ok") && r.output().contains("rank 1 ok"), r.output());
    }

    @Test
    void everyCollectiveOnFourOversubscribedRanks() throws Exception {
        var r = MpiRun.run(4, CollectivesMain.class.getName(), 90);
        assertEquals(0, r.exitCode(), r.output());
        for (int i = 0; i < 4; i++) assertTrue(r.output().contains("rank " + i + " ok"), r.output());
    }
}
