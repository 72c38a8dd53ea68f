package dev.kiln.nn.models;

import dev.kiln.ops.Arith;
import dev.kiln.ops.Embeddings;
import dev.kiln.tensor.DType;
import dev.kiln.tensor.Tensor;

import java.lang.foreign.MemorySegment;
import java.util.Arrays;

/**
 * The collectives a tensor-parallel {@link Gpt} shard runs with the other shards of its layers (Megatron-LM, Shoeybi
 * et al. 2019), as differentiable ops. The model only calls them; {@code dev.kiln.dist.TensorParallel} implements
 * them over a process group, so nn never depends on dist.
 */
public interface TensorParallelism {
    /** This shard's index in [0, size). */
    int rank();

    /** Shards per layer (parallel.tp). */
    int size();

    /** Megatron's f, before a column-parallel linear: identity forward; backward all-reduces the gradient. */
    Tensor copyToShards(Tensor x);

    /** Megatron's g, after a row-parallel linear: forward all-reduces (sums the partial products); identity backward. */
    Tensor reduceFromShards(Tensor x);

    /**
     * Mean cross-entropy (label smoothing ε, z-loss c, targets −1 ignored) over the full vocabulary of {@code vocab}
     * tokens, from this shard's logits for tokens [vocabStart, vocabStart + localLogits.size(−1)) only: the row max,
     * Σ exp and the target logit are combined across shards by small all-reduces; columns at or past {@code vocab}
     * (padding) are masked out and get zero gradient. The full logits are never built.
     */
    Tensor vocabParallelCrossEntropy(Tensor localLogits, Tensor targets, int vocabStart, int vocab, double labelSmoothing, double zLoss);

    /** The full logits [..., vocab] gathered from every shard's slice, without gradient (evaluation, sampling). */
    Tensor gatherVocab(Tensor localLogits, int vocab);

    /**
     * Vocabulary-parallel embedding: this shard holds rows [vocabStart, vocabStart + rows) of the table; a token
     * outside them gives a zero row here, and the all-reduce ({@link #reduceFromShards}) sums in the one shard that has it.
     */
    default Tensor vocabParallelEmbedding(Tensor idx, Tensor localTable, int vocabStart) {
        int rows = localTable.size(0);
        int n = Math.toIntExact(idx.numel());
        int[] local = new int[n];
        float[] keep = new float[n];
        Tensor ic = idx.contiguous();
        for (int i = 0; i < n; i++) {
            int id = (int) ic.getFlat(i) - vocabStart;
            boolean mine = id >= 0 && id < rows;
            local[i] = mine ? id : 0;
            keep[i] = mine ? 1f : 0f;
        }
        int[] maskShape = Arrays.copyOf(idx.shape(), idx.dim() + 1);
        maskShape[idx.dim()] = 1;
        // the mask zeroes both the borrowed row 0 and its gradient for tokens of other shards
        Tensor mine = Arith.mul(Embeddings.embedding(Tensor.ofInts(local, idx.shape()), localTable), Tensor.of(keep, maskShape));
        return reduceFromShards(mine);
    }

    /**
     * How a parameter is cut: the full tensor, flat, is viewed as (outer, shards, inner) and shard r keeps
     * [:, r, :], shaped {@code localShape}. Rows of a matrix: outer 1; columns: outer = rows; the packed q|k|v rows of
     * c_attn: outer 3, so each shard keeps the q, k and v rows of its own heads. A full tensor with fewer elements
     * than outer·shards·inner (the vocabulary padded to a multiple of the shards) is padded with zeros at the end.
     */
    record Split(int outer, int inner, int... localShape) {
        public Split {
            if ((long) outer * inner != Arrays.stream(localShape).asLongStream().reduce(1, (a, b) -> a * b))
                throw new IllegalArgumentException("split " + outer + "×" + inner + " does not fit " + Arrays.toString(localShape));
        }

        /** This shard's part of {@code full} (contiguous F32) as a new tensor. */
        public Tensor slice(Tensor full, int rank, int shards) {
            Tensor src = full.contiguous();
            check(src, shards);
            Tensor out = Tensor.zeros(DType.F32, localShape);
            MemorySegment s = src.segment(), d = out.segment();
            long have = src.numel();
            for (int o = 0; o < outer; o++) {
                long from = ((long) o * shards + rank) * inner;
                long n = Math.max(0, Math.min(inner, have - from));
                if (n > 0) MemorySegment.copy(s, (src.offset() + from) * 4, d, (out.offset() + (long) o * inner) * 4, n * 4);
            }
            return out;
        }

        /**
         * {@code full} ← the shards' parts, {@code gathered} holding shard 0's part, then shard 1's, … (an all-gather's
         * output); elements past full's size (padding) are dropped.
         */
        public void assemble(MemorySegment gathered, Tensor full, int shards) {
            if (!full.isContiguous()) throw new IllegalArgumentException("assemble into a non-contiguous tensor " + full.shapeString());
            check(full, shards);
            MemorySegment d = full.segment();
            long have = full.numel(), part = (long) outer * inner;
            for (int r = 0; r < shards; r++)
                for (int o = 0; o < outer; o++) {
                    long to = ((long) o * shards + r) * inner;
                    long n = Math.max(0, Math.min(inner, have - to));
                    if (n > 0) MemorySegment.copy(gathered, (r * part + (long) o * inner) * 4, d, (full.offset() + to) * 4, n * 4);
                }
        }

        /** Elements of one shard's part. */
        public long numel() {
            return (long) outer * inner;
        }

        private void check(Tensor full, int shards) {
            if (full.dtype() != DType.F32) throw new IllegalArgumentException("tensor-parallel split needs F32, got " + full.dtype());
            long padded = (long) outer * shards * inner; // only a 1-outer split (rows) may be padded
            if (full.numel() > padded || full.numel() < 1 || outer != 1 && full.numel() != padded)
                throw new IllegalArgumentException("tensor " + full.shapeString() + " does not split into " + shards + " × " + Arrays.toString(localShape));
        }
    }
}
