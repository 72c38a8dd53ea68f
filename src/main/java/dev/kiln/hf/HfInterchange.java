package dev.kiln.hf;

import dev.kiln.KilnException;
import dev.kiln.nn.Lora;
import dev.kiln.nn.Parameter;
import dev.kiln.nn.models.Gpt;
import dev.kiln.nn.models.GptConfig;
import dev.kiln.nn.models.GptHfFormat;
import dev.kiln.tensor.Tensor;

import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.Map;

/**
 * Kiln models to and from their Hugging Face form ({@link HfDirectory.HfModel}). GPT: names are HF's already,
 * Conv1D weights transposed by {@link GptHfFormat}. Llama: names and layouts are HF's one to one
 * ({@link #loadSameLayout}); the model itself lives on another branch, see LLAMA HOOK.
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

    // LLAMA HOOK (after merging branch llama): the Kiln side of Llama interchange is two short methods,
    //   static HfDirectory.HfModel fromLlama(Llama m) {
    //       LlamaConfig c = m.config;   // LlamaSpec's numbers: vocab, hidden, intermediate, layers, heads, kv heads, context, eps, theta, tie
    //       return new HfDirectory.HfModel(new LlamaSpec(...), new LinkedHashMap<>(m.namedParameters())); // HF names and layouts already
    //   }
    //   static void loadIntoLlama(Llama m, HfDirectory.HfModel hf, String source) { loadSameLayout(m.namedParameters(), hf.tensors(), source); }
    // (with a tied head, drop lm_head.weight from the parameters if Llama registers it); the call sites marked
    // LLAMA HOOK in ExportCommand and HfImport (its up-front refusal of a non-GPT-2 spec, and the model build) pick
    // them by the model's class, and LlamaSpec.kilnShapeOverrides names Kiln's Llama config keys. LlamaSpec (config.json both
    // ways, tensor list, checks) and scripts/hf_check.py (model_type llama) are ready and tested without the model.
}
