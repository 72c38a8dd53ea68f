package dev.kiln.train.config;

/**
 * Data-parallel training across the ranks of {@code mpirun -np N bin/kiln train}. Keys under {@code parallel:}; a
 * single process (not started by mpirun) ignores them.
 *
 * @param dp         data-parallel ranks; 0 = every rank of the job (the only layout until tensor/pipeline parallelism)
 * @param zero_stage ZeRO sharding: 0 = plain DDP (gradients all-reduced), 1 = optimizer state sharded,
 *                   2 = + gradients reduce-scattered, 3 = + parameters gathered per block just in time
 * @param bucket_mb  gradients are reduced in buckets of this many MiB, each started as soon as it fills during backward
 * @param timeout_s  a collective or transfer that takes longer ends every rank with an error naming the rank (a dead or stuck peer)
 */
public record ParallelConfig(int dp, int zero_stage, double bucket_mb, double timeout_s) {
    public static ParallelConfig defaults() {
        return new ParallelConfig(0, 0, 4.0, 60.0);
    }
}
