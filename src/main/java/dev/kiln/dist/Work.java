package dev.kiln.dist;

/** A collective or point-to-point transfer in flight (a non-blocking call's handle). */
public interface Work {
    /** Makes progress; true once complete. Never blocks. */
    boolean test();

    /** Waits until complete; past the group's timeout every rank is aborted with a message naming this rank and the call. */
    void await();

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
