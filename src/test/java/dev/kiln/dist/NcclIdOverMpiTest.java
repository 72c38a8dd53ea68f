package dev.kiln.dist;

import org.junit.jupiter.api.Test;

import java.util.List;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;

/** The NCCL unique id's exchange over Open MPI (what a multi-GPU job does before ncclCommInitRank), under mpirun -np 2. */
class NcclIdOverMpiTest {
    @Test
    void rankZerosIdReachesRankOneBitForBit() throws Exception {
        var r = MpiRun.run(2, NcclIdOverMpiMain.class.getName(), 60);
        assertEquals(0, r.exitCode(), r.output());
        List<String> ids = r.output().lines().filter(l -> l.startsWith("rank ")).map(l -> l.replaceFirst("^rank \\d+ id ", "")).toList();
        assertEquals(2, ids.size(), r.output());
        assertEquals(ids.get(0), ids.get(1), "rank 1 holds rank 0's id");
        assertEquals(2 * Nccl.UNIQUE_ID_BYTES, ids.get(0).length());
        assertFalse(ids.get(0).matches("0+"), "not the zeros rank 1 started from");
    }
}
