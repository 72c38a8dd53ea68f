package dev.kiln.nn.models;

import java.util.List;

/**
 * The {@code model:} section: GPT hyper-parameters, named as in nanoGPT / llm.c, and which architecture
 * they build ({@code arch}: gpt or llama; Llama reads them through {@link LlamaConfig#of}).
 *
 * @param vocab_size     0 means "take it from the tokenizer of the data"
 * @param init           the parametrisation: gpt2 (N(0, 0.02), residual projections ÷√(2·n_layer)),
 *                       small (small-init, Nguyen &amp; Salazar 2019: every matrix N(0, √(2/(5·n_embd))))
 *                       or mup (μP, Yang et al. 2022: see {@link Gpt})
 * @param mup_base_width μP's base width: the n_embd at which mup equals gpt2 (bar the attention scale);
 *                       0 = n_embd itself
 * @param arch           gpt (this GPT-2) or llama ({@link Llama}); the keys below are Llama's only
 * @param n_kv_head      Llama's key/value heads (grouped-query attention); 0 = n_head
 * @param intermediate_size Llama's MLP width; 0 = Meta's rule, 8·n_embd/3 rounded up to a multiple of 256
 * @param rope_theta     Llama's rotary base θ
 * @param norm_eps       Llama's RMSNorm epsilon
 */
public record GptConfig(int n_layer, int n_head, int n_embd, int block_size, int vocab_size, double dropout, boolean bias,
                        String init, int mup_base_width, String arch, int n_kv_head, int intermediate_size, double rope_theta,
                        double norm_eps) {

    /** Values {@code model.init} may take. */
    public static final List<String> INITS = List.of("gpt2", "small", "mup");

    /** Values {@code model.arch} may take. */
    public static final List<String> ARCHS = List.of("gpt", "llama");

    /** Defaults of the Llama-only keys (Hugging Face LlamaConfig's rope_theta; TinyLlama's rms_norm_eps). */
    public static final double DEFAULT_ROPE_THETA = 10000.0, DEFAULT_NORM_EPS = 1e-5;

    /** The GPT-2 parametrisation (what every config had before model.init existed). */
    public GptConfig(int n_layer, int n_head, int n_embd, int block_size, int vocab_size, double dropout, boolean bias) {
        this(n_layer, n_head, n_embd, block_size, vocab_size, dropout, bias, "gpt2", 0);
    }

    /** A GPT (what every config had before model.arch existed). */
    public GptConfig(int n_layer, int n_head, int n_embd, int block_size, int vocab_size, double dropout, boolean bias,
                     String init, int mup_base_width) {
        this(n_layer, n_head, n_embd, block_size, vocab_size, dropout, bias, init, mup_base_width, "gpt", 0, 0, DEFAULT_ROPE_THETA, DEFAULT_NORM_EPS);
    }

    public boolean llama() {
        return "llama".equals(arch);
    }

    public int headSize() {
        return n_embd / n_head;
    }

    public GptConfig withVocabSize(int v) {
        return new GptConfig(n_layer, n_head, n_embd, block_size, v, dropout, bias, init, mup_base_width, arch, n_kv_head, intermediate_size, rope_theta, norm_eps);
    }

    public GptConfig withInit(String init, int mupBaseWidth) {
        return new GptConfig(n_layer, n_head, n_embd, block_size, vocab_size, dropout, bias, init, mupBaseWidth, arch, n_kv_head, intermediate_size, rope_theta, norm_eps);
    }

    public boolean mup() {
        return "mup".equals(init);
    }

    /**
     * μP's width ratio base_width / n_embd (1 unless init is mup): the output-logit multiplier and the
     * hidden matrices' learning-rate multiplier; hidden init variances scale by it too.
     */
    public double mupRatio() {
        return mup() && mup_base_width > 0 ? (double) mup_base_width / n_embd : 1.0;
    }
}
