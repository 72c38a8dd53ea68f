package dev.kiln.hf;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import dev.kiln.KilnException;
import dev.kiln.tensor.Safetensors;

import java.util.List;
import java.util.Map;

/**
 * One Hugging Face architecture with its hyper-parameters, as plain numbers: the config.json that describes it
 * (both ways), the complete list of tensors (HF names, HF shapes) its model.safetensors must hold, the
 * config-against-tensors check, and the Kiln config keys that build the same model. One record per
 * architecture: {@link Gpt2Spec} (GPT2LMHeadModel), {@link LlamaSpec} (LlamaForCausalLM).
 */
public sealed interface HfModelSpec permits Gpt2Spec, LlamaSpec {
    /** The model_type values Kiln reads. */
    List<String> MODEL_TYPES = List.of("gpt2", "llama");

    /** config.json's model_type. */
    String modelType();

    /** The transformers class that loads it (config.json's architectures[0]). */
    String architecture();

    /** Every tensor the model file must hold: HF name → HF shape, in a stable order. */
    Map<String, int[]> tensorShapes();

    /**
     * Tensors a file may hold beyond {@link #tensorShapes} because they are tied to one it must hold (name → the
     * tensor it must equal bit for bit): transformers leaves a tied LM head out of its files, but other writers
     * keep it.
     */
    Map<String, String> tiedCopies();

    /**
     * The name a tensor of a file has in {@link #tensorShapes}, or null for a buffer transformers itself ignores
     * (GPT-2's causal-mask attn.bias / attn.masked_bias, Llama's rotary inv_freq, written by older versions). Files
     * saved from the base model (GPT2Model, LlamaModel) lack the prefix; transformers adds it, and so does this.
     */
    String canonicalName(String fileName);

    /** config.json as transformers writes it for this architecture (fp32). */
    ObjectNode configJson();

    /** generation_config.json: the special token ids, where the model has them. */
    ObjectNode generationConfigJson();

    /**
     * The Kiln config overrides ({@code --set} form, {@code model.key=value}) that build this model: the model's
     * shape. A user may not override these on import (the tensors fix them).
     */
    List<String> kilnShapeOverrides();

    /** Kiln config overrides that only set a default from config.json (dropout): a user's --set wins. */
    List<String> kilnDefaultOverrides();

    /**
     * Checks config.json against the sizes the tensors imply (embedding rows and width, number of blocks, …) and
     * names the config.json key that disagrees; a tensor that the check needs and the file lacks is named as
     * missing.
     */
    void checkAgainstTensors(Map<String, Safetensors.Header> tensors, String configSource, String tensorSource);

    /** Reads config.json (parsed): model_type picks the architecture; unsupported or malformed fields name their key. */
    static HfModelSpec fromConfigJson(JsonNode root, String source) {
        if (root == null || !root.isObject()) throw new KilnException(source + ": not a JSON object");
        ConfigJson c = new ConfigJson(root, source);
        String type = c.oneOf("model_type", null, MODEL_TYPES, "Kiln imports " + String.join(" and ", MODEL_TYPES) + " models");
        if (type == null) throw c.fail("model_type", "is missing (Kiln imports " + String.join(" and ", MODEL_TYPES) + " models)");
        return switch (type) {
            case "gpt2" -> Gpt2Spec.fromConfigJson(c);
            case "llama" -> LlamaSpec.fromConfigJson(c);
            default -> throw new IllegalStateException(type);
        };
    }

    /** The architectures list must name {@code expected} when present (e.g. GPT2Model has other tensor names). */
    static void checkArchitecture(ConfigJson c, String expected) {
        if (!c.has("architectures")) return;
        JsonNode a = c.node("architectures");
        if (!a.isArray()) throw c.fail("architectures", "must be a list, got " + a);
        for (JsonNode n : a) if (n.isTextual() && n.asText().equals(expected)) return;
        throw c.fail("architectures", "is " + a + "; Kiln imports " + expected + " (a model with its LM head) for model_type " + c.node("model_type").asText());
    }

    /** The header of a tensor a check needs, or a "missing tensor" error. */
    static int[] shapeOf(Map<String, Safetensors.Header> tensors, String name, String tensorSource) {
        Safetensors.Header h = tensors.get(name);
        if (h == null) throw new KilnException(tensorSource + ": missing tensor " + name);
        return h.shape();
    }

    /** The block indices present under {@code prefix} ("transformer.h." → 0, 1, …), counted as max index + 1. */
    static int blockCount(Map<String, Safetensors.Header> tensors, String prefix) {
        int n = 0;
        for (String k : tensors.keySet()) {
            if (!k.startsWith(prefix)) continue;
            String rest = k.substring(prefix.length());
            int dot = rest.indexOf('.');
            if (dot <= 0) continue;
            try {
                n = Math.max(n, Integer.parseInt(rest.substring(0, dot)) + 1);
            } catch (NumberFormatException ignored) {
                // not a block index: reported as an unexpected tensor later
            }
        }
        return n;
    }
}
