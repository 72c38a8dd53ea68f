package dev.kiln.plan;

import java.util.ArrayList;
import java.util.List;

/**
 * How optimizer state and parameters are held: the axis of the plan that 8-bit optimizer state and offload add. Each
 * option is a change of the config ({@link #apply}), and its row is simulated like any other step.
 *
 * @param optimizer          the optimizer the option trains with (the config's, or adamw8bit / adamw for the 8-bit axis)
 * @param offloadOptimizer   blocks' optimizer state offloaded (train.offload_optimizer=disk)
 * @param offloadParams      blocks' parameters offloaded too (train.offload_params=disk)
 * @param hostTransferFactor bytes over the host link per step, in units of the fp32 parameter bytes
 */
public record StateOption(String name, String optimizer, boolean offloadOptimizer, boolean offloadParams, double hostTransferFactor,
                          String costNote) {

    /**
     * The options for a config: its optimizer's state in full precision and, for AdamW, in 8 bits ({@code
     * optim.optimizer=adamw8bit}: two 1-byte moments per parameter plus an fp32 scale per 256-element block, tensors
     * under 4096 elements in fp32; Dettmers et al. 2022), each resident, with the blocks' optimizer state offloaded
     * (ZeRO-Offload: gradients go out and parameters come back every step), and with the blocks' parameters offloaded
     * as well (streamed in for forward and backward, {@code train.prefetch_depth} blocks ahead).
     */
    public static List<StateOption> all(PlanShape base) {
        String full = base.optimizer().equals("adamw8bit") ? "adamw" : base.optimizer();
        List<String[]> states = new ArrayList<>();
        states.add(new String[]{"fp32", full});
        if (full.equals("adamw")) states.add(new String[]{"8-bit", "adamw8bit"});
        List<StateOption> out = new ArrayList<>();
        for (String[] st : states) {
            out.add(new StateOption(st[0], st[1], false, false, 0, ""));
            out.add(new StateOption(st[0] + "+offload-optimizer", st[1], true, false, 2, "gradients to the host, parameters back"));
            out.add(new StateOption(st[0] + "+offload-optimizer+parameters", st[1], true, true, 4, "also weights streamed in for forward and backward"));
        }
        return out;
    }

    /** {@code s} trained with this option. */
    public PlanShape apply(PlanShape s) {
        return s.withState(optimizer, offloadParams, offloadOptimizer);
    }

    /** The overrides that select this option, relative to {@code base} (empty when it is the base's own). */
    public String settings(PlanShape base) {
        List<String> out = new ArrayList<>();
        if (!optimizer.equals(base.optimizer())) out.add("optim.optimizer=" + optimizer);
        if (offloadOptimizer != base.offloadOptimizer()) out.add("train.offload_optimizer=" + (offloadOptimizer ? "disk" : "none"));
        if (offloadParams != base.offloadParams()) out.add("train.offload_params=" + (offloadParams ? "disk" : "none"));
        return String.join(" ", out);
    }
}
