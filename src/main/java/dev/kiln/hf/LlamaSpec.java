package dev.kiln.hf;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.node.JsonNodeFactory;
import com.fasterxml.jackson.databind.node.ObjectNode;
import dev.kiln.KilnException;
import dev.kiln.tensor.Safetensors;

import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * LlamaForCausalLM (transformers' LlamaConfig): RMSNorm, rotary positions (default rope, rope_theta), SwiGLU MLP,
 * grouped-query attention, no biases, LM head untied unless tie_word_embeddings. Weights are nn.Linear's
 * [out, in] in HF's files and in Kiln's Llama alike, so names and layouts map one to one.
 *
 * <p>Everything here is a function of the numbers, testable without a Llama model; the Kiln model is wired in
 * {@link HfInterchange} (see LLAMA HOOK there).
 */
public record LlamaSpec(int vocab_size, int hidden_size, int intermediate_size, int num_hidden_layers, int num_attention_heads,
                        int num_key_value_heads, int max_position_embeddings, double rms_norm_eps, double rope_theta,
                        boolean tie_word_embeddings, Integer bosTokenId, Integer eosTokenId) implements HfModelSpec {

    public static final String ARCHITECTURE = "LlamaForCausalLM";

    public LlamaSpec {
        if (hidden_size % num_attention_heads != 0)
            throw new IllegalArgumentException("hidden_size " + hidden_size + " is not divisible by num_attention_heads " + num_attention_heads);
        if (num_attention_heads % num_key_value_heads != 0)
            throw new IllegalArgumentException("num_attention_heads " + num_attention_heads + " is not divisible by num_key_value_heads " + num_key_value_heads);
    }

    public int headDim() {
        return hidden_size / num_attention_heads;
    }

    @Override
    public String modelType() {
        return "llama";
    }

    @Override
    public String architecture() {
        return ARCHITECTURE;
    }

    @Override
    public Map<String, int[]> tensorShapes() {
        int h = hidden_size, kv = num_key_value_heads * headDim(), f = intermediate_size;
        Map<String, int[]> s = new LinkedHashMap<>();
        s.put("model.embed_tokens.weight", new int[]{vocab_size, h});
        for (int i = 0; i < num_hidden_layers; i++) {
            String p = "model.layers." + i + ".";
            s.put(p + "input_layernorm.weight", new int[]{h});
            s.put(p + "self_attn.q_proj.weight", new int[]{h, h});
            s.put(p + "self_attn.k_proj.weight", new int[]{kv, h});
            s.put(p + "self_attn.v_proj.weight", new int[]{kv, h});
            s.put(p + "self_attn.o_proj.weight", new int[]{h, h});
            s.put(p + "post_attention_layernorm.weight", new int[]{h});
            s.put(p + "mlp.gate_proj.weight", new int[]{f, h});
            s.put(p + "mlp.up_proj.weight", new int[]{f, h});
            s.put(p + "mlp.down_proj.weight", new int[]{h, f});
        }
        s.put("model.norm.weight", new int[]{h});
        if (!tie_word_embeddings) s.put("lm_head.weight", new int[]{vocab_size, h});
        return s;
    }

    @Override
    public Map<String, String> tiedCopies() {
        return tie_word_embeddings ? Map.of("lm_head.weight", "model.embed_tokens.weight") : Map.of();
    }

    @Override
    public String canonicalName(String name) {
        if (name.endsWith(".rotary_emb.inv_freq")) return null;
        return name.startsWith("model.") || name.equals("lm_head.weight") ? name : "model." + name;
    }

    @Override
    public ObjectNode configJson() {
        ObjectNode c = JsonNodeFactory.instance.objectNode();
        c.putArray("architectures").add(ARCHITECTURE);
        c.put("model_type", "llama");
        c.put("vocab_size", vocab_size);
        c.put("hidden_size", hidden_size);
        c.put("intermediate_size", intermediate_size);
        c.put("num_hidden_layers", num_hidden_layers);
        c.put("num_attention_heads", num_attention_heads);
        c.put("num_key_value_heads", num_key_value_heads);
        c.put("head_dim", headDim());
        c.put("max_position_embeddings", max_position_embeddings);
        c.put("rms_norm_eps", rms_norm_eps);
        c.put("rope_theta", rope_theta); // transformers < 5
        ObjectNode rope = c.putObject("rope_parameters"); // transformers 5
        rope.put("rope_theta", rope_theta);
        rope.put("rope_type", "default");
        c.put("tie_word_embeddings", tie_word_embeddings);
        c.put("hidden_act", "silu");
        c.put("attention_bias", false);
        c.put("attention_dropout", 0.0);
        c.put("mlp_bias", false);
        c.put("initializer_range", 0.02);
        c.put("pretraining_tp", 1);
        c.put("use_cache", true);
        if (bosTokenId != null) c.put("bos_token_id", bosTokenId); else c.putNull("bos_token_id");
        if (eosTokenId != null) c.put("eos_token_id", eosTokenId); else c.putNull("eos_token_id");
        c.put("dtype", "float32");
        c.put("torch_dtype", "float32");
        return c;
    }

    @Override
    public ObjectNode generationConfigJson() {
        ObjectNode g = JsonNodeFactory.instance.objectNode();
        g.put("_from_model_config", true);
        if (bosTokenId != null) g.put("bos_token_id", bosTokenId);
        if (eosTokenId != null) g.put("eos_token_id", eosTokenId);
        return g;
    }

    /**
     * LLAMA HOOK (config keys): the Kiln keys of the Llama model (branch llama). Check these names against its
     * LlamaConfig when merging; a key Kiln does not know fails on import with ConfigLoader's one-line error.
     */
    @Override
    public List<String> kilnShapeOverrides() {
        List<String> o = new ArrayList<>(List.of("model.arch=llama", "model.n_layer=" + num_hidden_layers, "model.n_head=" + num_attention_heads,
                "model.n_kv_head=" + num_key_value_heads, "model.n_embd=" + hidden_size, "model.intermediate_size=" + intermediate_size,
                "model.block_size=" + max_position_embeddings, "model.vocab_size=" + vocab_size, "model.rope_theta=" + rope_theta,
                "model.norm_eps=" + rms_norm_eps));
        if (tie_word_embeddings) o.add("model.tie_word_embeddings=true");
        return o;
    }

    @Override
    public List<String> kilnDefaultOverrides() {
        return List.of();
    }

    @Override
    public void checkAgainstTensors(Map<String, Safetensors.Header> tensors, String configSource, String tensorSource) {
        String in = " (" + tensorSource + ")";
        int[] emb = HfModelSpec.shapeOf(tensors, "model.embed_tokens.weight", tensorSource);
        if (emb.length == 2 && emb[0] != vocab_size)
            throw new KilnException(configSource + ": vocab_size is " + vocab_size + " but model.embed_tokens.weight has " + emb[0] + " rows" + in);
        if (emb.length == 2 && emb[1] != hidden_size)
            throw new KilnException(configSource + ": hidden_size is " + hidden_size + " but model.embed_tokens.weight is " + emb[1] + " wide" + in);
        int layers = HfModelSpec.blockCount(tensors, "model.layers.");
        if (layers != num_hidden_layers)
            throw new KilnException(configSource + ": num_hidden_layers is " + num_hidden_layers + " but the tensors hold " + layers + " layers"
                    + (layers > 0 ? " (model.layers.0 … model.layers." + (layers - 1) + ")" : "") + in);
        int[] gate = HfModelSpec.shapeOf(tensors, "model.layers.0.mlp.gate_proj.weight", tensorSource);
        if (gate.length == 2 && gate[0] != intermediate_size)
            throw new KilnException(configSource + ": intermediate_size is " + intermediate_size + " but model.layers.0.mlp.gate_proj.weight has " + gate[0] + " rows" + in);
        int[] k = HfModelSpec.shapeOf(tensors, "model.layers.0.self_attn.k_proj.weight", tensorSource);
        if (k.length == 2 && k[0] != num_key_value_heads * headDim())
            throw new KilnException(configSource + ": num_key_value_heads is " + num_key_value_heads + " but model.layers.0.self_attn.k_proj.weight has " + k[0]
                    + " rows, " + (double) k[0] / headDim() + " heads of head_dim " + headDim() + in);
        if (!tie_word_embeddings && !tensors.containsKey("lm_head.weight"))
            throw new KilnException(configSource + ": tie_word_embeddings is false but there is no lm_head.weight" + in);
    }

    /** LlamaConfig fields (transformers 4 and 5 spellings of rope_theta), the unsupported ones refused by name. */
    static LlamaSpec fromConfigJson(ConfigJson c) {
        HfModelSpec.checkArchitecture(c, ARCHITECTURE);
        int vocab = c.positiveInt("vocab_size"), hidden = c.positiveInt("hidden_size"), inter = c.positiveInt("intermediate_size"),
                layers = c.positiveInt("num_hidden_layers"), heads = c.positiveInt("num_attention_heads");
        int kv = c.positiveInt("num_key_value_heads", heads);
        int positions = c.positiveInt("max_position_embeddings");
        if (hidden % heads != 0) throw c.fail("num_attention_heads", "is " + heads + " but hidden_size " + hidden + " is not divisible by it");
        if (heads % kv != 0) throw c.fail("num_key_value_heads", "is " + kv + " but num_attention_heads " + heads + " is not divisible by it");
        if (c.has("head_dim") && c.positiveInt("head_dim") != hidden / heads)
            throw c.fail("head_dim", "is " + c.positiveInt("head_dim") + "; Kiln's Llama uses hidden_size / num_attention_heads = " + hidden / heads);
        double eps = c.nonNegative("rms_norm_eps", 1e-6);
        if (eps == 0) throw c.fail("rms_norm_eps", "must be > 0");
        double theta = c.nonNegative("rope_theta", 10000.0);
        if (c.has("rope_parameters")) {
            JsonNode rp = c.node("rope_parameters");
            if (!rp.isObject()) throw c.fail("rope_parameters", "must be an object, got " + rp);
            ConfigJson r = new ConfigJson(rp, c.source() + ": rope_parameters");
            r.oneOf("rope_type", "default", List.of("default"), "Kiln's rotary embedding is the default rope (no scaling)");
            theta = r.nonNegative("rope_theta", theta);
        }
        if (c.has("rope_scaling")) throw c.fail("rope_scaling", "is set (" + c.node("rope_scaling") + "); Kiln's rotary embedding has no scaling");
        if (!(theta > 0)) throw c.fail("rope_theta", "must be > 0");
        c.oneOf("hidden_act", "silu", List.of("silu"), "Kiln's Llama MLP is SwiGLU (silu)");
        c.requireBoolean("attention_bias", false, false, "Kiln's Llama has no biases");
        c.requireBoolean("mlp_bias", false, false, "Kiln's Llama has no biases");
        boolean tie = c.bool("tie_word_embeddings", false);
        return new LlamaSpec(vocab, hidden, inter, layers, heads, kv, positions, eps, theta, tie, c.tokenId("bos_token_id"), c.tokenId("eos_token_id"));
    }
}
