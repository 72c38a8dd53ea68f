package dev.kiln.plan;

import java.util.List;

/**
 * How parameters and optimizer state are held: the axis of the plan that 8-bit optimizer state and offload
 * add. Each option scales the device's optimizer-state bytes and says what stays on the device; the rest of
 * the step is unchanged, so its prediction is the full-precision one shifted by the bytes moved.
 * <p>Extension point: an option whose technique Kiln implements sets {@code implemented} and the config
 * {@code settings} that switch it on; until then its rows are marked "planned".
 *
 * @param optimizerStateFactor device optimizer-state bytes relative to fp32 state (0 = all on the host)
 * @param parametersOnDevice   fraction of parameter bytes resident on the device (1 = all; streaming keeps a few blocks)
 * @param hostTransferFactor   bytes over the host link per step, in units of the fp32 parameter bytes
 */
public record StateOption(String name, String settings, boolean implemented, double optimizerStateFactor, double parametersOnDevice,
                          double hostTransferFactor, String costNote) {

    /** fp32 optimizer state on the device: what Kiln trains with today. */
    public static final StateOption FP32 = new StateOption("fp32", "", true, 1.0, 1.0, 0, "");

    /**
     * The options the plan considers. 8-bit state: two 1-byte moments per parameter plus an fp32 scale per
     * 2048-element block (Dettmers et al. 2022) instead of two fp32 moments. Optimizer offload (ZeRO-Offload):
     * state and the update on the host; gradients go out and parameters come back every step. Parameter offload
     * adds streaming the weights in per block (two blocks resident, double-buffered) in forward and backward.
     */
    public static List<StateOption> all(int nLayer) {
        double twoBlocks = Math.min(1.0, 2.0 / Math.max(1, nLayer));
        return List.of(FP32,
                new StateOption("8-bit", "", false, (2 * 1 + 2 * 4.0 / 2048) / 8, 1.0, 0, "quantise/dequantise in the update: memory-bound, ≈ free"),
                new StateOption("offload-optimizer", "", false, 0.0, 1.0, 2, "gradients to the host, parameters back"),
                new StateOption("offload-optimizer+parameters", "", false, 0.0, twoBlocks, 4, "also weights streamed in for forward and backward"));
    }
}
