package dev.kiln.plan;

import dev.kiln.nn.Recompute;

/**
 * Relative cost of a combination, from FLOPs and host-link bytes. Per token, a block's forward is 24·C² FLOPs of
 * GEMMs (c_attn 3C², attn c_proj C², c_fc 4C², mlp c_proj 4C², × 2) plus 2·T·C for causal attention (QKᵀ and PV
 * at half, the masked half skipped); the head 2·C·V; a training step is 3 forwards (backward ≈ 2). Full recompute
 * adds one forward of every block (≈ +33% of the block FLOPs); selective adds the attention core and the mlp
 * c_proj GEMM. Gradient accumulation and 8-bit state do the same FLOPs (smaller GEMMs' lower efficiency is not
 * modelled: see bench/memory.sh for measured figures). Offload adds the host transfer time at {@code linkBytesPerS}
 * against the compute time at {@code flopsPerS}, without overlap (an upper bound).
 */
public record CostModel(double flopsPerS, double linkBytesPerS) {

    /** FLOPs of one optimizer step of {@code s} without recompute. */
    public static double stepFlops(PlanShape s) {
        return 3 * forwardFlops(s);
    }

    static double forwardFlops(PlanShape s) {
        return s.nLayer() * (blockGemmFlops(s) + attentionFlops(s)) + 2.0 * tokens(s) * s.nEmbd() * s.vocab();
    }

    private static double tokens(PlanShape s) {
        return (double) s.microBatch() * s.accumSteps() * s.seqLen();
    }

    private static double blockGemmFlops(PlanShape s) {
        return 24.0 * tokens(s) * s.nEmbd() * s.nEmbd();
    }

    private static double attentionFlops(PlanShape s) {
        return 2.0 * tokens(s) * s.seqLen() * s.nEmbd();
    }

    /** Extra FLOPs of recomputation per step. */
    static double recomputeFlops(PlanShape s, Recompute r) {
        return switch (r) {
            case NONE -> 0;
            case FULL -> s.nLayer() * (blockGemmFlops(s) + attentionFlops(s));
            case SELECTIVE -> s.nLayer() * (attentionFlops(s) + 8.0 * tokens(s) * s.nEmbd() * s.nEmbd());
        };
    }

    /** Time of a step of {@code s} with {@code state} relative to the same step without recompute or offload. */
    public double relativeCost(PlanShape s, StateOption state) {
        double base = stepFlops(s);
        double flops = base + recomputeFlops(s, s.recompute());
        double transfer = state.hostTransferFactor() * 4.0 * s.parameterCount() / linkBytesPerS;
        return (flops / flopsPerS + transfer) / (base / flopsPerS);
    }
}
