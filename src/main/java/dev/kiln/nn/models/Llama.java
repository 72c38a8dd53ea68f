package dev.kiln.nn.models;

import dev.kiln.KilnException;
import dev.kiln.nn.Embedding;
import dev.kiln.nn.Linear;
import dev.kiln.nn.Lora;
import dev.kiln.nn.Module;
import dev.kiln.nn.Parameter;
import dev.kiln.nn.RmsNorm;
import dev.kiln.ops.Activations;
import dev.kiln.ops.Arith;
import dev.kiln.ops.Attention;
import dev.kiln.ops.Linalg;
import dev.kiln.ops.Rope;
import dev.kiln.tensor.DType;
import dev.kiln.tensor.Rng;
import dev.kiln.tensor.Tensor;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * Llama (Touvron et al. 2023) as Hugging Face's LlamaForCausalLM computes it: token embedding, pre-norm blocks
 * of RMSNorm → grouped-query causal attention with rotary positions → residual, RMSNorm → SwiGLU MLP
 * (down(silu(gate(x))·up(x))) → residual; a final RMSNorm and an untied LM head; no biases anywhere.
 * Parameter names and layouts are HF's state-dict names ({@code model.layers.0.self_attn.q_proj.weight} …,
 * every weight [out, in] as nn.Linear), so a checkpoint's model.safetensors is an HF Llama file.
 * Init is HF's {@code _init_weights}: every Linear and the embedding N(0, initializer_range), norms 1.
 */
public final class Llama extends CausalLm {
    public final LlamaConfig config;
    public final Embedding embedTokens;
    public final List<Layer> layers = new ArrayList<>();
    public final RmsNorm norm;
    /** Null with tie_word_embeddings: the head is then embed_tokens' weight. */
    public final Linear lmHead;
    private final Rope.Tables rope;
    private final Rng dropoutRng;

    public Llama(LlamaConfig config, long seed, DType dtype) {
        this.config = config;
        Rng rng = new Rng(seed);
        this.dropoutRng = new Rng(seed ^ 0x5DEECE66DL); // Llama has no dropout; kept for LoRA's adapter dropout and checkpoints
        double std = config.initializer_range();
        int c = config.hidden_size();
        Module model = registerModule("model", new Container());
        embedTokens = model.registerModuleIn("embed_tokens", new Embedding(Tensor.randn(rng, std, dtype, config.vocab_size(), c)));
        Module hl = model.registerModuleIn("layers", new Container());
        for (int i = 0; i < config.num_hidden_layers(); i++) layers.add(hl.registerModuleIn(Integer.toString(i), new Layer(config, rng, dtype)));
        norm = model.registerModuleIn("norm", new RmsNorm(c, config.rms_norm_eps(), dtype));
        lmHead = config.tie_word_embeddings() ? null : registerModule("lm_head", linear(rng, config.vocab_size(), c, std, dtype));
        rope = Rope.tables(config.max_position_embeddings(), config.headDim(), config.rope_theta(), dtype);
    }

    @Override
    public Tensor forward(Tensor idx) {
        int t = idx.size(1);
        if (t > config.max_position_embeddings())
            throw new IllegalArgumentException("sequence length " + t + " exceeds block_size " + config.max_position_embeddings());
        Tensor x = embedTokens.forward(idx);
        for (Layer l : layers) x = l.forward(x, rope);
        x = norm.forward(x);
        return lmHead != null ? lmHead.forward(x) : Linalg.linear(x, embedTokens.weight, null);
    }

    /** One decoder layer: x + o_proj(attn(input_layernorm(x))), then x + mlp(post_attention_layernorm(x)). */
    public static final class Layer extends Module {
        final RmsNorm inputLayernorm, postAttentionLayernorm;
        final Linear qProj, kProj, vProj, oProj, gateProj, upProj, downProj;
        final int nHead, nKvHead;

        Layer(LlamaConfig cfg, Rng rng, DType dtype) {
            int c = cfg.hidden_size(), kv = cfg.num_key_value_heads() * cfg.headDim(), inter = cfg.intermediate_size();
            double std = cfg.initializer_range();
            nHead = cfg.num_attention_heads();
            nKvHead = cfg.num_key_value_heads();
            Module attn = registerModule("self_attn", new Container());
            qProj = attn.registerModuleIn("q_proj", linear(rng, c, c, std, dtype));
            kProj = attn.registerModuleIn("k_proj", linear(rng, kv, c, std, dtype));
            vProj = attn.registerModuleIn("v_proj", linear(rng, kv, c, std, dtype));
            oProj = attn.registerModuleIn("o_proj", linear(rng, c, c, std, dtype));
            Module mlp = registerModule("mlp", new Container());
            gateProj = mlp.registerModuleIn("gate_proj", linear(rng, inter, c, std, dtype));
            upProj = mlp.registerModuleIn("up_proj", linear(rng, inter, c, std, dtype));
            downProj = mlp.registerModuleIn("down_proj", linear(rng, c, inter, std, dtype));
            inputLayernorm = registerModule("input_layernorm", new RmsNorm(c, cfg.rms_norm_eps(), dtype));
            postAttentionLayernorm = registerModule("post_attention_layernorm", new RmsNorm(c, cfg.rms_norm_eps(), dtype));
        }

        Tensor forward(Tensor x, Rope.Tables rope) {
            Tensor h = inputLayernorm.forward(x);
            Tensor q = Rope.apply(qProj.forward(h), rope), k = Rope.apply(kProj.forward(h), rope);
            Tensor a = Attention.causalGroupedQueryAttention(q, k, vProj.forward(h), nHead, nKvHead);
            x = Arith.add(x, oProj.forward(a));
            h = postAttentionLayernorm.forward(x);
            return Arith.add(x, downProj.forward(Activations.swiglu(gateProj.forward(h), upProj.forward(h))));
        }
    }

    @Override
    public int blockSize() {
        return config.max_position_embeddings();
    }

    @Override
    public int vocabSize() {
        return config.vocab_size();
    }

    @Override
    public int depth() {
        return layers.size();
    }

    @Override
    public Rng dropoutRng() {
        return dropoutRng;
    }

    @Override
    public Parameter finalNormWeight() {
        return norm.weight;
    }

    @Override
    public String describe() {
        return String.format("Llama %d layers, %d heads (%d kv), %d hidden, %d intermediate, block %d, vocab %d", depth(),
                config.num_attention_heads(), config.num_key_value_heads(), config.hidden_size(), config.intermediate_size(),
                config.max_position_embeddings(), config.vocab_size());
    }

    /** Kiln's layout is HF's (nn.Linear weights are [out, in] in both): the parameters themselves, adapters under PEFT's module names. */
    @Override
    public Map<String, Tensor> hfStateDict() {
        return new LinkedHashMap<>(namedParameters());
    }

    @Override
    public void loadHfStateDict(Map<String, Tensor> hf, String source) {
        load(namedParameters(), hf, source);
    }

    @Override
    public void loadHfBase(Map<String, Tensor> hf, String source) {
        for (String k : hf.keySet())
            if (Lora.isAdapter(k)) throw new KilnException(source + ": holds LoRA adapter " + k + "; start from a file without adapters");
        Map<String, Parameter> base = namedParameters();
        base.keySet().removeIf(Lora::isAdapter);
        load(base, hf, source);
    }

    private void load(Map<String, Parameter> params, Map<String, Tensor> hf, String source) {
        params.forEach((k, p) -> {
            Tensor t = hf.get(k);
            if (t == null) throw new KilnException(source + ": missing tensor " + k);
            if (!t.sameShape(p))
                throw new KilnException(source + ": tensor " + k + " has shape " + t.shapeString() + " but the model needs " + Arrays.toString(p.shape())
                        + " (check n_layer/n_head/n_kv_head/n_embd/intermediate_size/vocab_size)");
        });
        for (String k : hf.keySet()) // a tied model ignores an lm_head.weight some writers store anyway
            if (!params.containsKey(k) && !(lmHead == null && k.equals("lm_head.weight"))) throw new KilnException(source + ": unexpected tensor " + k);
        params.forEach((k, p) -> p.copyFrom(hf.get(k)));
    }

    /**
     * Parameters of a Llama of this shape, without building it: V·C embedding (+ V·C untied head), per layer
     * q, o (C·C), k, v (C·kv each), gate, up, down (C·I each) and two norms (C), plus the final norm.
     */
    public static long parameterCount(LlamaConfig c) {
        long h = c.hidden_size(), kv = (long) c.num_key_value_heads() * c.headDim(), i = c.intermediate_size(), v = c.vocab_size();
        long layer = 2 * h * h + 2 * h * kv + 3 * h * i + 2 * h;
        return v * h * (c.tie_word_embeddings() ? 1 : 2) + c.num_hidden_layers() * layer + h;
    }

    private static Linear linear(Rng rng, int out, int in, double std, DType dtype) {
        return new Linear(Tensor.randn(rng, std, dtype, out, in), null);
    }

    /** A named grouping with no computation of its own (HF's "model", "layers", "self_attn", "mlp"). */
    private static final class Container extends Module {}
}
