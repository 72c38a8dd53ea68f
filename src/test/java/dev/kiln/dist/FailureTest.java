package dev.kiln.dist;

import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;

import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** A rank that dies or hangs ends every rank of the job with an error naming a rank, within 60 s: never a hang. */
class FailureTest {
    @TempDir
    Path tmp;

    List<String> longRun(String name, String... extra) {
        List<String> o = new ArrayList<>(DataParallelTest.config(tmp, name, "train.max_iters=100000", "optim.lr_decay_iters=100000",
                "train.checkpoint_interval=100000"));
        o.addAll(List.of(extra));
        return o;
    }

    @Test
    void killingOneRankEndsAllRanks() throws Exception {
        var job = MpiRun.start(2, DistTrainMain.class.getName(), longRun("kill").toArray(String[]::new));
        assertTrue(job.awaitOutput("TRAINING 1", 120), "rank 1 never started training:\n" + job.output);
        String pidLine = job.output.toString().lines().filter(l -> l.startsWith("PID 1 ")).findFirst().orElseThrow();
        long pid = Long.parseLong(pidLine.substring(6).trim());
        long t0 = System.nanoTime();
        new ProcessBuilder("kill", "-9", Long.toString(pid)).start().waitFor();
        var r = job.finish(90);
        double seconds = (System.nanoTime() - t0) / 1e9;
        System.out.printf("kill -9 of rank 1: mpirun exited with %d after %.1f s%n", r.exitCode(), seconds);
        r.output().lines().filter(l -> l.contains("rank 1") || l.contains("noticed")).forEach(l -> System.out.println("  | " + l));
        assertNotEquals(0, r.exitCode(), r.output());
        assertTrue(seconds < 60, "took " + seconds + " s");
        assertTrue(r.output().contains("process rank 1"), "mpirun names the dead rank:\n" + r.output());
    }

    @Test
    void aStuckRankMakesTheOthersTimeOutAndAbort() throws Exception {
        var job = MpiRun.start(2, DistTrainMain.class.getName(), longRun("stall", "parallel.timeout_s=5", "--stall=1@3").toArray(String[]::new));
        assertTrue(job.awaitOutput("TRAINING 0", 120), "rank 0 never started training:\n" + job.output);
        long t0 = System.nanoTime();
        var r = job.finish(90);
        double seconds = (System.nanoTime() - t0) / 1e9;
        System.out.printf("rank 1 stuck at step 3, timeout 5 s: mpirun exited with %d %.1f s after training began%n", r.exitCode(), seconds);
        r.output().lines().filter(l -> l.contains("kiln: rank")).forEach(l -> System.out.println("  | " + l));
        assertNotEquals(0, r.exitCode(), r.output());
        assertTrue(seconds < 60, "took " + seconds + " s");
        assertTrue(r.output().contains("kiln: rank 0 of 2: ") && r.output().contains("did not complete within 5 s"), r.output());
    }
}
