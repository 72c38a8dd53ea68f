package dev.kiln.nn;

import java.util.Locale;

/**
 * Which activations a transformer recomputes in backward instead of keeping from the forward
 * ({@code train.recompute}); see {@link dev.kiln.autograd.Checkpoint} for the mechanism.
 * <ul>
 * <li>{@code none}: every activation of the forward is kept.</li>
 * <li>{@code full}: per-block checkpointing. Each block keeps only its input; backward runs the block's forward
 *     again, then backpropagates through it. Costs one more forward of every block.</li>
 * <li>{@code selective}: inside each block, two regions are recomputed: the attention core (packed qkv → heads'
 *     output, dropping the B·H·T·T softmax probabilities) and GELU together with the MLP's c_proj (c_fc output →
 *     c_proj output, dropping the B·T·4C GELU output, which c_proj would otherwise keep). Costs the attention
 *     core's forward and the c_proj GEMM again.</li>
 * </ul>
 */
public enum Recompute {
    NONE, FULL, SELECTIVE;

    public static final String NAMES = "none, full, selective";

    /** The mode a config names (none, full or selective); null for an unknown name. */
    public static Recompute parse(String name) {
        return switch (name == null ? "" : name.toLowerCase(Locale.ROOT)) {
            case "none" -> NONE;
            case "full" -> FULL;
            case "selective" -> SELECTIVE;
            default -> null;
        };
    }

    public String key() {
        return name().toLowerCase(Locale.ROOT);
    }
}
