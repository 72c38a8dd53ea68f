package dev.kiln.dist;

import dev.kiln.nn.Parameter;

import java.util.List;

/**
 * How {@link DataParallel}'s all-reduced gradient buckets travel: one bucket's gradients are packed into one buffer
 * and averaged across the data-parallel ranks, then written back. The bucketing itself (the grad-ready hook, the
 * bucket size, the order, no_sync) is DataParallel's whatever the transport: host buffers over MPI (DataParallel's
 * own, for CPU tensors) or GPU buffers over NCCL ({@link NcclBuckets}, for a run on a GPU).
 */
@FunctionalInterface
interface BucketTransport {
    /**
     * Packs the gradients of {@code params} (in order; zeros for one without a gradient) into a buffer of
     * {@code elements} floats and starts averaging it across the ranks.
     */
    Pending allReduceMean(List<Parameter> params, long elements);

    /** Frees what the transport holds (a communicator, device buffers); nothing for the host's. */
    default void close() {}

    /** A bucket whose average is on its way. */
    interface Pending {
        Work work();

        /** Once {@link #work} is done: writes the averages into the parameters' gradients and recycles the buffer. */
        void unpack();
    }
}
