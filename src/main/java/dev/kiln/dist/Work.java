package dev.kiln.dist;

import java.util.concurrent.locks.LockSupport;

/** A collective or point-to-point transfer in flight (a non-blocking call's handle). */
public interface Work {
    /** Makes progress; true once complete. Never blocks. */
    boolean test();

    /** Waits until complete; past the group's timeout every rank is aborted with a message naming this rank and the call. */
    void await();

    /**
     * Polls {@link #test} until it is complete: spinning at first (most transfers finish within microseconds), then
     * parking for longer and longer; runs {@code onTimeout} (which should not return) once {@code timeoutSeconds} pass.
     */
    default void pollUntilDone(double timeoutSeconds, Runnable onTimeout) {
        long deadline = System.nanoTime() + (long) (timeoutSeconds * 1e9);
        int polls = 0;
        while (!test()) {
            if (++polls > 200) LockSupport.parkNanos(polls > 2000 ? 500_000 : 20_000);
            if (System.nanoTime() > deadline) onTimeout.run();
        }
    }

    /** A transfer that is already complete (single process, empty buffers). */
    Work DONE = new Work() {
        @Override
        public boolean test() {
            return true;
        }

        @Override
        public void await() {}
    };
}
