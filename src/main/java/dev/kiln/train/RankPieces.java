package dev.kiln.train;

import dev.kiln.dist.DataParallel;
import dev.kiln.dist.ParameterOwners;
import dev.kiln.dist.PipelineParallel;
import dev.kiln.nn.Parameter;
import dev.kiln.nn.models.Gpt;
import dev.kiln.nn.models.GptHfFormat;
import dev.kiln.nn.models.TensorParallelism;
import dev.kiln.optim.Optimizer;
import dev.kiln.tensor.Tensor;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;

/**
 * What one rank of a GPT run under dp × tp × pp writes into a sharded checkpoint ({@link ShardedCheckpoint}), so that
 * the ranks' files together hold every element of the model and of the optimizer state exactly once:
 * <ul>
 *   <li>pp: the parameters of this rank's stage; the tied wte, held by the first and the last stage, by stage 0 only;
 *   <li>dp: each parameter by its {@link ParameterOwners} owner in the data-parallel group (under ZeRO-1 the only
 *       rank holding its optimizer state);
 *   <li>tp: a sharded parameter by every tensor-parallel rank, its part as blocks of the whole tensor
 *       ({@link #blocks}: c_attn's q, k and v rows are three blocks, a row-parallel c_proj weight one block of
 *       columns; the vocabulary padding of wte is left out); a replicated one (layer norms, wpe, c_proj biases) by
 *       one tensor-parallel rank, balanced over them as ParameterOwners balances.
 * </ul>
 * Model tensors go in Hugging Face layout (Conv1D weights transposed, blocks included), optimizer state in Kiln's
 * (the parameter's), as the consolidated files have them. An optimizer entry "kind.param" goes with its parameter.
 */
final class RankPieces {
    private RankPieces() {}

    private static final String TIED = "transformer.wte.weight";

    /** A block of a whole tensor: its offset and shape there, and the element of the shard (flat) where it starts. */
    record Block(int[] offset, int[] shape, long localStart) {}

    /**
     * This rank's pieces of {@code model} (its shard or stage under tp / pp) and of {@code opt}; see the class comment.
     * {@code dp} and {@code pipe} are null without data / pipeline parallelism, tpRank 0 and tpSize 1 without tp.
     */
    static List<ShardedCheckpoint.Piece> of(Gpt model, Optimizer opt, DataParallel dp, int tpRank, int tpSize, PipelineParallel pipe) {
        Map<String, Parameter> named = model.namedParameters();
        Map<String, TensorParallelism.Split> splits = model.tensorParallelSplits();
        Set<String> held = pipe == null ? named.keySet() : pipe.parameters().keySet();
        Set<String> trainable = dp == null ? Set.of() : dp.parameters().keySet();
        int dpRank = dp == null ? 0 : dp.group().rank();
        Map<String, Parameter> replicated = new LinkedHashMap<>(); // this stage's tensors every tp rank holds whole
        for (String n : held) if (!splits.containsKey(n)) replicated.put(n, named.get(n));
        ParameterOwners tpOwners = tpSize == 1 || replicated.isEmpty() ? null : new ParameterOwners(replicated, tpSize);
        java.util.function.Predicate<String> writes = n -> held.contains(n)
                && !(pipe != null && pipe.stage() != 0 && n.equals(TIED)) // the last stage's copy of the tied wte
                && (trainable.contains(n) ? dp.owners().owner(n) : 0) == dpRank
                && (splits.containsKey(n) || tpOwners == null || tpOwners.owner(n) == tpRank);

        List<ShardedCheckpoint.Piece> out = new ArrayList<>();
        for (var e : named.entrySet()) {
            String n = e.getKey();
            if (!writes.test(n)) continue;
            TensorParallelism.Split split = splits.get(n);
            if (split == null) {
                out.add(ShardedCheckpoint.whole(ShardedCheckpoint.MODEL, n, GptHfFormat.toHf(Map.of(n, e.getValue())).get(n)));
                continue;
            }
            int[] whole = model.tensorParallelWholeShape(n);
            for (Block b : blocks(split, whole, tpRank, tpSize)) out.add(hf(n, whole, b, blockOf(e.getValue(), b)));
        }
        for (var e : opt.stateDict().entrySet()) {
            String k = e.getKey(), param = k.substring(k.indexOf('.') + 1);
            if (!named.containsKey(param)) { // state of no parameter: rank 0 (none of the tp/pp optimizers has any)
                if (dpRank == 0 && tpRank == 0 && (pipe == null || pipe.stage() == 0))
                    out.add(ShardedCheckpoint.whole(ShardedCheckpoint.OPTIMIZER, k, e.getValue()));
                continue;
            }
            if (!writes.test(param)) continue;
            TensorParallelism.Split split = splits.get(param);
            Tensor t = e.getValue();
            if (split == null) {
                out.add(ShardedCheckpoint.whole(ShardedCheckpoint.OPTIMIZER, k, t));
                continue;
            }
            if (t.numel() != split.numel()) // TensorParallelRun admits per-element optimizers only
                throw new TrainingException("optimizer state " + k + " " + t.shapeString() + " is not per element of its tensor-parallel shard "
                        + Arrays.toString(split.localShape()) + "; it cannot be written sharded");
            int[] whole = model.tensorParallelWholeShape(param);
            for (Block b : blocks(split, whole, tpRank, tpSize))
                out.add(new ShardedCheckpoint.Piece(ShardedCheckpoint.OPTIMIZER, k, whole, b.offset(), blockOf(t, b)));
        }
        return out;
    }

    /** A model piece in HF layout: a Conv1D weight's block, offset and shape transposed with it. */
    private static ShardedCheckpoint.Piece hf(String name, int[] whole, Block b, Tensor block) {
        if (!GptHfFormat.isConv1D(name)) return new ShardedCheckpoint.Piece(ShardedCheckpoint.MODEL, name, whole, b.offset(), block);
        return new ShardedCheckpoint.Piece(ShardedCheckpoint.MODEL, name, new int[]{whole[1], whole[0]}, new int[]{b.offset()[1], b.offset()[0]},
                block.transposeView(0, 1));
    }

    /** The block {@code b} of shard {@code local} as a view (no copy). */
    private static Tensor blockOf(Tensor local, Block b) {
        Tensor flat = local.contiguous().view(-1);
        long n = Arrays.stream(b.shape()).asLongStream().reduce(1, (x, y) -> x * y);
        return flat.sliceView(0, Math.toIntExact(b.localStart()), Math.toIntExact(b.localStart() + n)).view(b.shape());
    }

    /**
     * Where shard {@code rank} of {@code shards} cut by {@code split} lies in the whole tensor of shape {@code whole}
     * (Kiln layout, 1-D or 2-D): the whole tensor, flat, is (outer, shards, inner) and the shard holds [:, rank, :].
     * When {@code inner} is whole rows, each of the outer runs is a block of rows (rows past the whole tensor's end,
     * the vocabulary padding, are left out); when the outer runs are the rows themselves and inner·shards a row, the
     * shard is one block of columns. Any other cut is an IllegalArgumentException.
     */
    static List<Block> blocks(TensorParallelism.Split split, int[] whole, int rank, int shards) {
        if (whole.length < 1 || whole.length > 2)
            throw new IllegalArgumentException("tensor-parallel block of a tensor of shape " + Arrays.toString(whole) + ": 1-D or 2-D only");
        int rows = whole[0], rowLength = whole.length == 2 ? whole[1] : 1;
        List<Block> out = new ArrayList<>();
        if (split.inner() % rowLength == 0) {
            int perRun = split.inner() / rowLength;
            for (int o = 0; o < split.outer(); o++) {
                int first = (o * shards + rank) * perRun, n = Math.max(0, Math.min(perRun, rows - first));
                if (n == 0) continue; // all padding
                out.add(new Block(whole.length == 2 ? new int[]{first, 0} : new int[]{first}, whole.length == 2 ? new int[]{n, rowLength} : new int[]{n},
                        (long) o * split.inner()));
            }
            return out;
        }
        if (whole.length == 2 && split.outer() == rows && (long) split.inner() * shards == rowLength) {
            out.add(new Block(new int[]{0, rank * split.inner()}, new int[]{rows, split.inner()}, 0));
            return out;
        }
        throw new IllegalArgumentException("tensor-parallel split " + split.outer() + "×" + split.inner() + " of " + Arrays.toString(whole)
                + " is neither blocks of rows nor a block of columns");
    }
}
