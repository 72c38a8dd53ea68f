package dev.kiln.nn.models;

/**
 * Llama hyper-parameters under Hugging Face LlamaConfig's names, so a config.json reads across directly.
 * Kiln's {@code model:} section maps onto it ({@link #of}): n_embd → hidden_size, n_layer → num_hidden_layers,
 * n_head → num_attention_heads, n_kv_head → num_key_value_heads, block_size → max_position_embeddings,
 * norm_eps → rms_norm_eps.
 *
 * @param tie_word_embeddings the LM head shares the token embedding (no lm_head.weight), as HF's option
 * @param initializer_range   std of the normal init of every matrix and embedding (HF: 0.02)
 */
public record LlamaConfig(int vocab_size, int hidden_size, int intermediate_size, int num_hidden_layers, int num_attention_heads,
                          int num_key_value_heads, int max_position_embeddings, double rope_theta, double rms_norm_eps,
                          boolean tie_word_embeddings, double initializer_range) {

    public LlamaConfig {
        if (vocab_size <= 0) throw new IllegalArgumentException("vocab_size must be set, got " + vocab_size);
        if (hidden_size <= 0 || intermediate_size <= 0 || num_hidden_layers <= 0 || num_attention_heads <= 0 || max_position_embeddings <= 0)
            throw new IllegalArgumentException("Llama sizes must be positive: " + this);
        if (hidden_size % num_attention_heads != 0)
            throw new IllegalArgumentException("hidden_size " + hidden_size + " is not divisible by num_attention_heads " + num_attention_heads);
        if (num_key_value_heads <= 0 || num_attention_heads % num_key_value_heads != 0)
            throw new IllegalArgumentException("num_attention_heads " + num_attention_heads + " is not divisible by num_key_value_heads " + num_key_value_heads);
        if ((hidden_size / num_attention_heads) % 2 != 0)
            throw new IllegalArgumentException("rotary embedding needs an even head size, got " + hidden_size / num_attention_heads);
        if (!(rope_theta > 0) || !(rms_norm_eps > 0)) throw new IllegalArgumentException("rope_theta and rms_norm_eps must be > 0: " + this);
    }

    /** The Llama a {@code model:} section with arch llama describes (vocab_size resolved). */
    public static LlamaConfig of(GptConfig m) {
        int kv = m.n_kv_head() == 0 ? m.n_head() : m.n_kv_head();
        int inter = m.intermediate_size() == 0 ? defaultIntermediateSize(m.n_embd()) : m.intermediate_size();
        return new LlamaConfig(m.vocab_size(), m.n_embd(), inter, m.n_layer(), m.n_head(), kv, m.block_size(), m.rope_theta(), m.norm_eps(), false, 0.02);
    }

    /** Meta's rule for the SwiGLU width: 8·hidden/3 (the 4× MLP's parameters in three matrices), rounded up to a multiple of 256. */
    public static int defaultIntermediateSize(int hidden) {
        int h = 8 * hidden / 3;
        return (h + 255) / 256 * 256;
    }

    /** TinyLlama-1.1B's shape (TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T's config.json). */
    public static LlamaConfig tinyLlama1B() {
        return new LlamaConfig(32000, 2048, 5632, 22, 32, 4, 2048, 10000, 1e-5, false, 0.02);
    }

    public int headDim() {
        return hidden_size / num_attention_heads;
    }

    public LlamaConfig withTiedEmbeddings(boolean tied) {
        return new LlamaConfig(vocab_size, hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, num_key_value_heads,
                max_position_embeddings, rope_theta, rms_norm_eps, tied, initializer_range);
    }
}
