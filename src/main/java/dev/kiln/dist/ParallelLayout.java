package dev.kiln.dist;

/**
 * How the ranks of a job are arranged for {@code dp × tp × pp} parallelism (Megatron-LM's order: tensor-parallel
 * ranks are neighbours, then data-parallel, pipeline stages farthest apart), and the sub-group of each dimension.
 * Rank r has coordinates tp = r mod tp, dp = (r / tp) mod dp, pp = r / (tp·dp). Tensor-parallel groups exchange the
 * most bytes, so on a real cluster they land inside one machine when mpirun fills machines rank by rank.
 *
 * @param world the job's group
 * @param tp    the group of ranks holding the other shards of this rank's layers (same dp and pp coordinates)
 * @param dp    the group of ranks training the same model part on other rows of the batch (same tp and pp)
 * @param pp    the group of ranks holding the other stages of this rank's pipeline (same tp and dp), ordered by stage
 */
public record ParallelLayout(ProcessGroup world, ProcessGroup tp, ProcessGroup dp, ProcessGroup pp) {

    /**
     * Splits {@code world} (collective) into {@code dpSize × tpSize × ppSize} ranks; {@code dpSize} 0 means every rank
     * left over: world size / (tp·pp). A size that does not divide the world is a one-line error.
     */
    public static ParallelLayout of(ProcessGroup world, int dpSize, int tpSize, int ppSize) {
        int n = world.size();
        if (tpSize < 1 || ppSize < 1 || dpSize < 0)
            throw new DistException("parallel sizes must be positive: dp " + dpSize + ", tp " + tpSize + ", pp " + ppSize);
        if (n % (tpSize * ppSize) != 0)
            throw new DistException("parallel.tp " + tpSize + " × parallel.pp " + ppSize + " does not divide the " + n + " ranks (mpirun -np)");
        int dpEff = dpSize == 0 ? n / (tpSize * ppSize) : dpSize;
        if (dpEff * tpSize * ppSize != n)
            throw new DistException("parallel.dp " + dpEff + " × tp " + tpSize + " × pp " + ppSize + " = " + dpEff * tpSize * ppSize
                    + " but the job has " + n + " ranks (mpirun -np); set parallel.dp to 0 to use every rank left over");
        int r = world.rank();
        int tpRank = r % tpSize, dpRank = (r / tpSize) % dpEff, ppRank = r / (tpSize * dpEff);
        // every rank calls split three times in the same order (MPI_Comm_split is collective over the whole world)
        ProcessGroup tp = world.split(ppRank * dpEff + dpRank, tpRank);
        ProcessGroup dp = world.split(ppRank * tpSize + tpRank, dpRank);
        ProcessGroup pp = world.split(dpRank * tpSize + tpRank, ppRank);
        return new ParallelLayout(world, tp, dp, pp);
    }

    public int tpSize() {
        return tp.size();
    }

    public int dpSize() {
        return dp.size();
    }

    public int ppSize() {
        return pp.size();
    }

    /** This rank's pipeline stage (0 holds the embeddings, the last the final norm, head and loss). */
    public int stage() {
        return pp.rank();
    }

    public boolean firstStage() {
        return pp.rank() == 0;
    }

    public boolean lastStage() {
        return pp.rank() == pp.size() - 1;
    }

    /** "dp 2 × tp 2 × pp 1" */
    public String describe() {
        return "dp " + dpSize() + " × tp " + tpSize() + " × pp " + ppSize();
    }
}
