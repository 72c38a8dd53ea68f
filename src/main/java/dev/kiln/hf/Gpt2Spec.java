package dev.kiln.hf;

import com.fasterxml.jackson.databind.node.JsonNodeFactory;
import com.fasterxml.jackson.databind.node.ObjectNode;
import dev.kiln.KilnException;
import dev.kiln.nn.LayerNorm;
import dev.kiln.tensor.Safetensors;

import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * GPT2LMHeadModel (transformers' GPT2Config) as Kiln's GPT builds it: learned positions, LayerNorm ε 1e-5,
 * tanh GELU ("gelu_new"), 4·n_embd MLP, biases everywhere, LM head tied to transformer.wte.weight.
 * Conv1D weights are [in, out] in HF's files.
 *
 * @param dropout     resid_pdrop / embd_pdrop (Kiln's model.dropout; Kiln has no attention-probability dropout,
 *                    so attn_pdrop is written as 0 and ignored on import)
 * @param bosTokenId  bos/eos token id for generation_config.json, null when the vocabulary has none (a char
 *                    vocabulary); GPT-2 BPE's is 50256 (&lt;|endoftext|&gt;)
 */
public record Gpt2Spec(int vocab_size, int n_positions, int n_embd, int n_layer, int n_head, double dropout, Integer bosTokenId)
        implements HfModelSpec {

    public static final String ARCHITECTURE = "GPT2LMHeadModel";
    /** GPT-2 BPE's &lt;|endoftext|&gt;, its bos and eos token. */
    public static final int GPT2_EOT = 50256;

    @Override
    public String modelType() {
        return "gpt2";
    }

    @Override
    public String architecture() {
        return ARCHITECTURE;
    }

    @Override
    public Map<String, int[]> tensorShapes() {
        int c = n_embd;
        Map<String, int[]> s = new LinkedHashMap<>();
        s.put("transformer.wte.weight", new int[]{vocab_size, c});
        s.put("transformer.wpe.weight", new int[]{n_positions, c});
        for (int i = 0; i < n_layer; i++) {
            String p = "transformer.h." + i + ".";
            s.put(p + "ln_1.weight", new int[]{c});
            s.put(p + "ln_1.bias", new int[]{c});
            s.put(p + "attn.c_attn.weight", new int[]{c, 3 * c}); // Conv1D: [in, out]
            s.put(p + "attn.c_attn.bias", new int[]{3 * c});
            s.put(p + "attn.c_proj.weight", new int[]{c, c});
            s.put(p + "attn.c_proj.bias", new int[]{c});
            s.put(p + "ln_2.weight", new int[]{c});
            s.put(p + "ln_2.bias", new int[]{c});
            s.put(p + "mlp.c_fc.weight", new int[]{c, 4 * c});
            s.put(p + "mlp.c_fc.bias", new int[]{4 * c});
            s.put(p + "mlp.c_proj.weight", new int[]{4 * c, c});
            s.put(p + "mlp.c_proj.bias", new int[]{c});
        }
        s.put("transformer.ln_f.weight", new int[]{c});
        s.put("transformer.ln_f.bias", new int[]{c});
        return s;
    }

    @Override
    public Map<String, String> tiedCopies() {
        return Map.of("lm_head.weight", "transformer.wte.weight");
    }

    @Override
    public String canonicalName(String name) {
        if (name.matches("(transformer\\.)?h\\.\\d+\\.attn\\.(bias|masked_bias)")) return null;
        return name.startsWith("transformer.") || name.equals("lm_head.weight") ? name : "transformer." + name;
    }

    @Override
    public ObjectNode configJson() {
        ObjectNode c = JsonNodeFactory.instance.objectNode();
        c.putArray("architectures").add(ARCHITECTURE);
        c.put("model_type", "gpt2");
        c.put("vocab_size", vocab_size);
        c.put("n_positions", n_positions);
        c.put("n_ctx", n_positions);
        c.put("n_embd", n_embd);
        c.put("n_layer", n_layer);
        c.put("n_head", n_head);
        c.putNull("n_inner"); // 4·n_embd
        c.put("activation_function", "gelu_new");
        c.put("layer_norm_epsilon", LayerNorm.EPS);
        c.put("resid_pdrop", dropout);
        c.put("embd_pdrop", dropout);
        c.put("attn_pdrop", 0.0);
        c.put("initializer_range", 0.02);
        c.put("scale_attn_weights", true);
        c.put("scale_attn_by_inverse_layer_idx", false);
        c.put("reorder_and_upcast_attn", false);
        c.put("add_cross_attention", false);
        c.put("tie_word_embeddings", true);
        c.put("use_cache", true);
        if (bosTokenId != null) {
            c.put("bos_token_id", bosTokenId);
            c.put("eos_token_id", bosTokenId);
        } else {
            c.putNull("bos_token_id");
            c.putNull("eos_token_id");
        }
        c.put("dtype", "float32");
        c.put("torch_dtype", "float32");
        return c;
    }

    @Override
    public ObjectNode generationConfigJson() {
        ObjectNode g = JsonNodeFactory.instance.objectNode();
        g.put("_from_model_config", true);
        if (bosTokenId != null) {
            g.put("bos_token_id", bosTokenId);
            g.put("eos_token_id", bosTokenId);
        }
        return g;
    }

    @Override
    public List<String> kilnShapeOverrides() {
        return List.of("model.n_layer=" + n_layer, "model.n_head=" + n_head, "model.n_embd=" + n_embd,
                "model.block_size=" + n_positions, "model.vocab_size=" + vocab_size, "model.bias=true");
    }

    @Override
    public List<String> kilnDefaultOverrides() {
        return List.of("model.dropout=" + dropout);
    }

    @Override
    public void checkAgainstTensors(Map<String, Safetensors.Header> tensors, String configSource, String tensorSource) {
        int[] wte = HfModelSpec.shapeOf(tensors, "transformer.wte.weight", tensorSource);
        int[] wpe = HfModelSpec.shapeOf(tensors, "transformer.wpe.weight", tensorSource);
        String in = " (" + tensorSource + ")";
        if (wte.length == 2 && wte[0] != vocab_size)
            throw new KilnException(configSource + ": vocab_size is " + vocab_size + " but transformer.wte.weight has " + wte[0] + " rows" + in);
        if (wte.length == 2 && wte[1] != n_embd)
            throw new KilnException(configSource + ": n_embd is " + n_embd + " but transformer.wte.weight is " + wte[1] + " wide" + in);
        if (wpe.length == 2 && wpe[0] != n_positions)
            throw new KilnException(configSource + ": n_positions is " + n_positions + " but transformer.wpe.weight has " + wpe[0] + " rows" + in);
        int blocks = HfModelSpec.blockCount(tensors, "transformer.h.");
        if (blocks != n_layer)
            throw new KilnException(configSource + ": n_layer is " + n_layer + " but the tensors hold " + blocks + " blocks"
                    + (blocks > 0 ? " (transformer.h.0 … transformer.h." + (blocks - 1) + ")" : "") + in);
    }

    /** GPT2Config fields, with the few Kiln's GPT cannot compute refused by name. */
    static Gpt2Spec fromConfigJson(ConfigJson c) {
        HfModelSpec.checkArchitecture(c, ARCHITECTURE);
        int vocab = c.positiveInt("vocab_size"), positions = c.positiveInt("n_positions"), embd = c.positiveInt("n_embd"),
                layers = c.positiveInt("n_layer"), heads = c.positiveInt("n_head");
        if (embd % heads != 0) throw c.fail("n_head", "is " + heads + " but n_embd " + embd + " is not divisible by it");
        if (c.has("n_inner")) {
            int inner = c.positiveInt("n_inner");
            if (inner != 4 * embd) throw c.fail("n_inner", "is " + inner + "; Kiln's GPT MLP is 4·n_embd = " + 4 * embd + " wide");
        }
        c.oneOf("activation_function", "gelu_new", List.of("gelu_new", "gelu_pytorch_tanh"), "Kiln's GPT uses the tanh GELU (gelu_new)");
        double eps = c.nonNegative("layer_norm_epsilon", 1e-5);
        if (eps != LayerNorm.EPS) throw c.fail("layer_norm_epsilon", "is " + eps + "; Kiln's LayerNorm uses " + LayerNorm.EPS);
        c.requireBoolean("scale_attn_weights", true, true, "Kiln's attention always scales scores by 1/sqrt(head size)");
        c.requireBoolean("scale_attn_by_inverse_layer_idx", false, false, "Kiln's attention does not scale by layer index");
        c.requireBoolean("add_cross_attention", false, false, "Kiln's GPT has no cross-attention");
        c.requireBoolean("tie_word_embeddings", true, true, "Kiln's GPT ties its LM head to transformer.wte.weight");
        double dropout = c.nonNegative("resid_pdrop", 0.1);
        if (dropout >= 1) throw c.fail("resid_pdrop", "must be < 1, got " + dropout);
        return new Gpt2Spec(vocab, positions, embd, layers, heads, dropout, c.tokenId("bos_token_id"));
    }
}
