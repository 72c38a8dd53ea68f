package dev.kiln.hf;

import dev.kiln.KilnException;
import dev.kiln.nn.Lora;
import dev.kiln.nn.Parameter;
import dev.kiln.nn.models.CausalLm;
import dev.kiln.nn.models.Gpt;
import dev.kiln.nn.models.GptConfig;
import dev.kiln.nn.models.GptHfFormat;
import dev.kiln.nn.models.Llama;
import dev.kiln.nn.models.LlamaConfig;
import dev.kiln.tensor.Tensor;

import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.Map;

/**
 * Kiln models to and from their Hugging Face form ({@link HfDirectory.HfModel}). GPT: names are HF's already,
 * Conv1D weights transposed by {@link GptHfFormat}. Llama: names and layouts are HF's one to one
 * ({@link #loadSameLayout}). {@link #fromModel} / {@link #loadInto} pick the architecture by the model's class.
 */
public final class HfInterchange {
    private HfInterchange() {}

    /** The GPT2Config of a Kiln GPT of {@code depth} blocks; {@code bosTokenId} null for a vocabulary without one. */
    public static Gpt2Spec gpt2Spec(GptConfig c, int depth, Integer bosTokenId) {
        if (c.mup())
            throw new KilnException("model.init is mup: its attention scale (q·k/d_head) and logit multiplier have no GPT2Config equivalent; "
                    + "transformers would compute another model");
        if (!c.bias())
            throw new KilnException("model.bias is false: transformers' GPT2LMHeadModel always has biases (export would need zero biases; not done)");
        return new Gpt2Spec(c.vocab_size(), c.block_size(), c.n_embd(), depth, c.n_head(), c.dropout(), bosTokenId);
    }

    /**
     * A Kiln GPT in HF form: LoRA adapters merged into the weights (W + (α/r)·B·A), Conv1D weights as views in
     * HF's [in, out] layout.
     */
    public static HfDirectory.HfModel fromGpt(Gpt model, Integer bosTokenId) {
        Gpt2Spec spec = gpt2Spec(model.config, model.depth(), bosTokenId);
        Map<String, Tensor> kiln = Lora.merged(model);
        Map<String, Tensor> hf = new LinkedHashMap<>();
        GptHfFormat.toHf(kiln).forEach((k, t) -> {
            if (!Lora.isAdapter(k)) hf.put(k, t);
        });
        return new HfDirectory.HfModel(spec, hf);
    }

    /**
     * Loads {@code hf}'s GPT-2 weights into a Kiln GPT's base parameters (LoRA adapters, if any, stay as they are).
     * The GPT must have the same shape (an import builds it from the spec's own config keys; lora.init_from takes the
     * run's); the first key that differs is named.
     */
    public static void loadIntoGpt(Gpt model, HfDirectory.HfModel hf, String source) {
        if (!(hf.spec() instanceof Gpt2Spec g))
            throw new KilnException(source + ": holds a " + hf.spec().architecture() + ", not a GPT-2 model");
        GptConfig c = model.config;
        int[][] pairs = {{g.vocab_size(), c.vocab_size()}, {g.n_positions(), c.block_size()}, {g.n_embd(), c.n_embd()}, {g.n_layer(), model.depth()},
                {g.n_head(), c.n_head()}};
        String[][] keys = {{"vocab_size", "model.vocab_size"}, {"n_positions", "model.block_size"}, {"n_embd", "model.n_embd"}, {"n_layer", "model.n_layer"},
                {"n_head", "model.n_head"}};
        for (int i = 0; i < pairs.length; i++)
            if (pairs[i][0] != pairs[i][1])
                throw new KilnException(source + ": config.json has " + keys[i][0] + " " + pairs[i][0] + " but the Kiln model has " + keys[i][1] + " " + pairs[i][1]);
        gpt2Spec(c, model.depth(), null); // refuses what GPT2LMHeadModel cannot compute (mup, no biases)
        GptHfFormat.loadBase(model, hf.tensors(), source);
    }

    /** Copies HF tensors into parameters of the same names and shapes (Llama); names a missing or mis-shaped one. */
    public static void loadSameLayout(Map<String, Parameter> params, Map<String, Tensor> hf, String source) {
        params.forEach((k, p) -> {
            Tensor t = hf.get(k);
            if (t == null) throw new KilnException(source + ": missing tensor " + k);
            if (!Arrays.equals(t.shape(), p.shape()))
                throw new KilnException(source + ": tensor " + k + " has shape " + t.shapeString() + " but the model needs " + p.shapeString());
        });
        for (String k : hf.keySet()) if (!params.containsKey(k)) throw new KilnException(source + ": unexpected tensor " + k);
        params.forEach((k, p) -> p.copyFrom(hf.get(k)));
    }

    /**
     * The LlamaConfig of a Kiln Llama; {@code bosTokenId} (bos and eos) null for a vocabulary without one. Kiln's
     * Llama config has no tied-head key, so a Kiln Llama is always untied.
     */
    public static LlamaSpec llamaSpec(LlamaConfig c, Integer bosTokenId) {
        return new LlamaSpec(c.vocab_size(), c.hidden_size(), c.intermediate_size(), c.num_hidden_layers(), c.num_attention_heads(),
                c.num_key_value_heads(), c.max_position_embeddings(), c.rms_norm_eps(), c.rope_theta(), c.tie_word_embeddings(), bosTokenId, bosTokenId);
    }

    /** A Kiln Llama in HF form: names and layouts are HF's already; LoRA adapters merged into the weights. */
    public static HfDirectory.HfModel fromLlama(Llama model, Integer bosTokenId) {
        return new HfDirectory.HfModel(llamaSpec(model.config, bosTokenId), Lora.merged(model));
    }

    /**
     * Loads {@code hf}'s Llama weights into a Kiln Llama's base parameters (LoRA adapters stay as they are). The
     * config.json numbers must be the model's own, rope_theta and rms_norm_eps included (they are not in the
     * tensors); the first key that differs is named.
     */
    public static void loadIntoLlama(Llama model, HfDirectory.HfModel hf, String source) {
        if (!(hf.spec() instanceof LlamaSpec s))
            throw new KilnException(source + ": holds a " + hf.spec().architecture() + ", not a Llama model");
        refuseUnsupported(s, source);
        LlamaConfig c = model.config;
        int[][] pairs = {{s.vocab_size(), c.vocab_size()}, {s.max_position_embeddings(), c.max_position_embeddings()}, {s.hidden_size(), c.hidden_size()},
                {s.num_hidden_layers(), model.depth()}, {s.num_attention_heads(), c.num_attention_heads()},
                {s.num_key_value_heads(), c.num_key_value_heads()}, {s.intermediate_size(), c.intermediate_size()}};
        String[][] keys = {{"vocab_size", "model.vocab_size"}, {"max_position_embeddings", "model.block_size"}, {"hidden_size", "model.n_embd"},
                {"num_hidden_layers", "model.n_layer"}, {"num_attention_heads", "model.n_head"}, {"num_key_value_heads", "model.n_kv_head"},
                {"intermediate_size", "model.intermediate_size"}};
        for (int i = 0; i < pairs.length; i++)
            if (pairs[i][0] != pairs[i][1])
                throw new KilnException(source + ": config.json has " + keys[i][0] + " " + pairs[i][0] + " but the Kiln model has " + keys[i][1] + " " + pairs[i][1]);
        if (s.rope_theta() != c.rope_theta())
            throw new KilnException(source + ": config.json has rope_theta " + s.rope_theta() + " but the Kiln model has model.rope_theta " + c.rope_theta());
        if (s.rms_norm_eps() != c.rms_norm_eps())
            throw new KilnException(source + ": config.json has rms_norm_eps " + s.rms_norm_eps() + " but the Kiln model has model.norm_eps " + c.rms_norm_eps());
        Map<String, Parameter> base = model.namedParameters();
        base.keySet().removeIf(Lora::isAdapter);
        loadSameLayout(base, hf.tensors(), source);
    }

    /**
     * Refuses, before anything is built, an HF model Kiln reads but cannot build: a Llama with a tied LM head (Kiln's
     * Llama config has no key for tying; its model does, so adding model.tie_word_embeddings would lift this).
     */
    public static void refuseUnsupported(HfModelSpec spec, String source) {
        if (spec instanceof LlamaSpec s && s.tie_word_embeddings())
            throw new KilnException(source + ": tie_word_embeddings is true; Kiln's Llama config has no tied-head key, so Kiln imports untied Llamas only");
    }

    /** {@link #fromGpt} or {@link #fromLlama}, by the model's class. */
    public static HfDirectory.HfModel fromModel(CausalLm model, Integer bosTokenId) {
        return switch (model) {
            case Gpt g -> fromGpt(g, bosTokenId);
            case Llama l -> fromLlama(l, bosTokenId);
            default -> throw new KilnException("no Hugging Face form for " + model.describe());
        };
    }

    /** {@link #loadIntoGpt} or {@link #loadIntoLlama}, by the model's class. */
    public static void loadInto(CausalLm model, HfDirectory.HfModel hf, String source) {
        switch (model) {
            case Gpt g -> loadIntoGpt(g, hf, source);
            case Llama l -> loadIntoLlama(l, hf, source);
            default -> throw new KilnException(source + ": no Hugging Face form for " + model.describe());
        }
    }
}
