package dev.kiln.plan;

import dev.kiln.nn.Recompute;
import dev.kiln.optim.AdamW8bit;

import java.util.ArrayList;
import java.util.List;

/**
 * What the memory of a GPT or Llama training step depends on: the model's shape, the micro-batch, the techniques, and the
 * sizes of the parameter and optimizer-state tensors (elements, one entry per tensor, as they are allocated).
 *
 * @param microBatch sequences per forward/backward (train.batch_size)
 * @param accumSteps micro-batches per optimizer step (train.grad_accum_steps)
 * @param dropout    whether dropout is on (p > 0): each dropout keeps a mask and an output
 * @param precision  train.precision: fp32, or fp16 / bf16 (on the CPU: fp32 tensors rounded, plus an fp32 master copy
 *                   of every weight)
 * @param offloadParams    train.offload_params=disk: blocks' parameters resident only around their use
 * @param offloadOptimizer train.offload_optimizer=disk: blocks' optimizer state resident only in their update
 * @param prefetchDepth    train.prefetch_depth: blocks paged in ahead of the one in use
 * @param llama            model.arch llama: RMSNorm, rotary positions, grouped-query attention with {@code nKvHead}
 *                         K/V heads, a SwiGLU MLP of width {@code intermediate}, untied head, no biases
 */
public record PlanShape(int nLayer, int nHead, int nEmbd, int seqLen, int vocab, int microBatch, int accumSteps, boolean dropout,
                        boolean bias, Recompute recompute, String optimizer, double momentum, String precision, boolean offloadParams,
                        boolean offloadOptimizer, int prefetchDepth, boolean llama, int nKvHead, int intermediate) {

    /** Every parameter tensor of the GPT, in elements (wte, wpe; per block ln_1, c_attn, c_proj, ln_2, c_fc, c_proj; ln_f). */
    public List<Long> parameterTensors() {
        List<Long> out = new ArrayList<>();
        for (long[] shape : parameterShapes()) out.add(elements(shape));
        return out;
    }

    /** Every parameter tensor's shape: those outside the blocks, then each block's. */
    List<long[]> parameterShapes() {
        List<long[]> out = new ArrayList<>(restParameterShapes());
        for (int l = 0; l < nLayer; l++) out.addAll(blockParameterShapes());
        return out;
    }

    /** The parameters outside the transformer blocks (GPT: wte, wpe, ln_f; Llama: embed_tokens, norm, lm_head): never offloaded. */
    List<long[]> restParameterShapes() {
        if (llama) return List.of(new long[]{vocab, nEmbd}, new long[]{nEmbd}, new long[]{vocab, nEmbd});
        List<long[]> out = new ArrayList<>(List.of(new long[]{vocab, nEmbd}, new long[]{seqLen, nEmbd}));
        layerNorm(out);
        return out;
    }

    /** One transformer block's parameters: the unit of parameter and optimizer-state offload. */
    List<long[]> blockParameterShapes() {
        long c = nEmbd;
        if (llama) { // q, k, v, o, gate, up, down, the two RMSNorm gains
            long kv = kvWidth(), in = intermediate;
            return List.of(new long[]{c, c}, new long[]{kv, c}, new long[]{kv, c}, new long[]{c, c}, new long[]{in, c}, new long[]{in, c},
                    new long[]{c, in}, new long[]{c}, new long[]{c});
        }
        List<long[]> out = new ArrayList<>();
        layerNorm(out);
        linear(out, 3 * c, c);
        linear(out, c, c);
        layerNorm(out);
        linear(out, 4 * c, c);
        linear(out, c, 4 * c);
        return out;
    }

    /** Width of Llama's K and V projections: n_kv_head · head size. */
    long kvWidth() {
        return (long) nKvHead * (nEmbd / nHead);
    }

    static long elements(long[] shape) {
        long n = 1;
        for (long d : shape) n *= d;
        return n;
    }

    private void layerNorm(List<long[]> out) {
        out.add(new long[]{nEmbd});
        if (bias) out.add(new long[]{nEmbd});
    }

    private void linear(List<long[]> out, long rows, long cols) {
        out.add(new long[]{rows, cols});
        if (bias) out.add(new long[]{rows});
    }

    public long parameterCount() {
        return parameterTensors().stream().mapToLong(Long::longValue).sum();
    }

    /**
     * The bytes of each optimizer-state tensor of all parameters (see {@link #stateBytes}).
     */
    public List<Long> optimizerStateBytes() {
        List<Long> out = new ArrayList<>();
        for (long[] shape : parameterShapes()) out.addAll(stateBytes(shape));
        return out;
    }

    /**
     * The optimizer-state tensors one parameter of {@code shape} gets, in bytes: adamw and lamb two fp32 moments; adamw8bit
     * two 1-byte code tensors and two fp32 per-256-block absmax tensors (fp32 moments under {@code AdamW8bit.MIN_8BIT_SIZE}
     * elements); sgd a momentum buffer (when momentum &gt; 0); lars and lion one buffer; adafactor a row and a column
     * statistic per matrix, a full one per vector.
     */
    List<Long> stateBytes(long[] shape) {
        long p = elements(shape);
        return switch (optimizer) {
            case "adamw", "lamb" -> List.of(4 * p, 4 * p);
            case "adamw8bit" -> {
                if (p < AdamW8bit.MIN_8BIT_SIZE) yield List.of(4 * p, 4 * p);
                long scales = 4 * ((p + AdamW8bit.BLOCK - 1) / AdamW8bit.BLOCK);
                yield List.of(p, scales, p, scales);
            }
            case "sgd" -> momentum != 0 ? List.of(4 * p) : List.of();
            case "lars", "lion" -> List.of(4 * p);
            case "adafactor" -> shape.length == 2 ? List.of(4 * shape[0], 4 * shape[1]) : List.of(4 * p);
            default -> throw new IllegalArgumentException("no optimizer-state model for " + optimizer);
        };
    }

    /** Whether mixed precision (fp16 / bf16) is on: an fp32 master copy of every resident weight is kept (offloaded blocks' masters are the tier's). */
    boolean mixedPrecision() {
        return !precision.equals("fp32");
    }

    /** Whether Kiln trains this combination today (config validation refuses the others as "not yet"). */
    public boolean implemented() {
        return !(llama && (recompute != Recompute.NONE || offloadParams || offloadOptimizer));
    }

    /** Whether the CPU backend takes the small-head attention kernel (T·D ≤ 8192), which needs no T×T scratch. */
    boolean smallHeadAttention() {
        return (long) seqLen * (nEmbd / nHead) <= 64 * 128;
    }

    public PlanShape with(Recompute r, int micro, int accum) {
        return new PlanShape(nLayer, nHead, nEmbd, seqLen, vocab, micro, accum, dropout, bias, r, optimizer, momentum, precision, offloadParams,
                offloadOptimizer, prefetchDepth, llama, nKvHead, intermediate);
    }

    /** The same step with optimizer {@code opt} and parameters / optimizer state offloaded as given. */
    public PlanShape withState(String opt, boolean params, boolean optimizerState) {
        return new PlanShape(nLayer, nHead, nEmbd, seqLen, vocab, microBatch, accumSteps, dropout, bias, recompute, opt, momentum, precision, params,
                optimizerState, prefetchDepth, llama, nKvHead, intermediate);
    }
}
