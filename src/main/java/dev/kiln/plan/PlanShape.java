package dev.kiln.plan;

import dev.kiln.nn.Recompute;

import java.util.ArrayList;
import java.util.List;

/**
 * What the memory of a GPT training step depends on: the model's shape, the micro-batch, the techniques, and the
 * sizes of the parameter and optimizer-state tensors (elements, one entry per tensor, as they are allocated).
 *
 * @param microBatch sequences per forward/backward (train.batch_size)
 * @param accumSteps micro-batches per optimizer step (train.grad_accum_steps)
 * @param dropout    whether dropout is on (p > 0): each dropout keeps a mask and an output
 */
public record PlanShape(int nLayer, int nHead, int nEmbd, int seqLen, int vocab, int microBatch, int accumSteps, boolean dropout,
                        boolean bias, Recompute recompute, String optimizer, double momentum) {

    /** Every parameter tensor of the GPT, in elements (wte, wpe; per block ln_1, c_attn, c_proj, ln_2, c_fc, c_proj; ln_f). */
    public List<Long> parameterTensors() {
        long c = nEmbd;
        List<Long> out = new ArrayList<>(List.of((long) vocab * c, (long) seqLen * c));
        for (int l = 0; l < nLayer; l++) {
            layerNorm(out);
            linear(out, 3 * c, c);
            linear(out, c, c);
            layerNorm(out);
            linear(out, 4 * c, c);
            linear(out, c, 4 * c);
        }
        layerNorm(out);
        return out;
    }

    private void layerNorm(List<Long> out) {
        out.add((long) nEmbd);
        if (bias) out.add((long) nEmbd);
    }

    private void linear(List<Long> out, long rows, long cols) {
        out.add(rows * cols);
        if (bias) out.add(rows);
    }

    public long parameterCount() {
        return parameterTensors().stream().mapToLong(Long::longValue).sum();
    }

    /**
     * The optimizer's state tensors: adamw and lamb two moments per parameter; sgd a momentum buffer (when momentum
     * &gt; 0); lars and lion one buffer; adafactor a row and a column statistic per matrix, a full one per vector.
     */
    public List<Long> optimizerStateTensors() {
        List<Long> out = new ArrayList<>();
        for (long p : parameterTensors()) {
            switch (optimizer) {
                case "adamw", "lamb" -> {
                    out.add(p);
                    out.add(p);
                }
                case "sgd" -> {
                    if (momentum != 0) out.add(p);
                }
                case "lars", "lion" -> out.add(p);
                case "adafactor" -> out.add(p); // refined below for matrices
                default -> throw new IllegalArgumentException("no optimizer-state model for " + optimizer);
            }
        }
        if (optimizer.equals("adafactor")) return adafactorState();
        return out;
    }

    private List<Long> adafactorState() {
        List<Long> out = new ArrayList<>();
        long c = nEmbd;
        out.add((long) vocab);
        out.add(c); // wte rows, cols
        out.add((long) seqLen);
        out.add(c);
        for (int l = 0; l < nLayer; l++) {
            for (long[] m : new long[][] {{3 * c, c}, {c, c}, {4 * c, c}, {c, 4 * c}}) {
                out.add(m[0]);
                out.add(m[1]);
                if (bias) out.add(m[0]);
            }
            for (int i = 0; i < (bias ? 4 : 2); i++) out.add(c);
        }
        for (int i = 0; i < (bias ? 2 : 1); i++) out.add(c);
        return out;
    }

    /** Whether the CPU backend takes the small-head attention kernel (T·D ≤ 8192), which needs no T×T scratch. */
    boolean smallHeadAttention() {
        return (long) seqLen * (nEmbd / nHead) <= 64 * 128;
    }

    public PlanShape with(Recompute r, int micro, int accum) {
        return new PlanShape(nLayer, nHead, nEmbd, seqLen, vocab, micro, accum, dropout, bias, r, optimizer, momentum);
    }
}
