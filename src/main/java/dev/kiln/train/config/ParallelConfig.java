package dev.kiln.train.config;

/**
 * Parallel training across the ranks of {@code mpirun -np N bin/kiln train}: dp × tp × pp = N. Keys under
 * {@code parallel:}; a single process (not started by mpirun) ignores them, except {@code backend: nccl} on a GPU.
 *
 * @param dp           data-parallel ranks; 0 = every rank left over, N / (tp · pp)
 * @param zero_stage   ZeRO sharding over the data-parallel ranks: 0 = plain DDP (gradients all-reduced), 1 = optimizer
 *                     state sharded, 2 = + gradients reduce-scattered, 3 = + parameters gathered per block just in time
 * @param bucket_mb    gradients are reduced in buckets of this many MiB, each started as soon as it fills during backward
 * @param timeout_s    a collective or transfer that takes longer ends every rank with an error naming the rank (a dead or stuck peer)
 * @param tp           tensor-parallel ranks (Megatron-style: attention heads, MLP columns and the vocabulary split across them)
 * @param pp           pipeline stages (consecutive blocks per stage; activations passed point to point)
 * @param pp_schedule  the pipeline schedule: 1f1b (PipeDream-Flush: at most pp micro-batches in flight) or gpipe (all forwards, then all backwards)
 * @param micro_batches micro-batches per step in the pipeline; 0 = pp
 * @param checkpoint   consolidated (rank 0 writes the single-process checkpoint) or sharded (every rank writes the
 *                     pieces it owns; see ShardedCheckpoint)
 * @param backend      what averages the gradients: auto (MPI for a CPU run, NCCL for a run on a GPU), mpi, or nccl
 *                     (a GPU run only; also in a single process: the NCCL data-parallel path at world size 1)
 */
public record ParallelConfig(int dp, int zero_stage, double bucket_mb, double timeout_s, int tp, int pp, String pp_schedule, int micro_batches, String checkpoint, String backend) {
    public static ParallelConfig defaults() {
        return new ParallelConfig(0, 0, 4.0, 60.0, 1, 1, "1f1b", 0, "consolidated", "auto");
    }
}
