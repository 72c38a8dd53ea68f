package dev.kiln.nn.models;

import dev.kiln.KilnException;
import dev.kiln.nn.Lora;
import dev.kiln.nn.Parameter;
import dev.kiln.ops.FakeQuant;
import dev.kiln.tensor.DType;
import dev.kiln.tensor.Tensor;

import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.Map;

/**
 * Hugging Face GPT-2 tensor layout. Names already match (Kiln's module paths are HF's); the one
 * difference is that HF's GPT-2 uses Conv1D, whose weight is [in, out] where nn.Linear's is
 * [out, in], so c_attn, c_proj and c_fc weights are transposed on the way in and out.
 * The LM head is tied to transformer.wte.weight and is not stored, as in HF's own files.
 *
 * <p>Two more layouts for export: PEFT's adapter-only file ({@link #exportAdapters}) and an int8 file
 * ({@link #exportInt8}): each Linear weight as int8 codes (HF layout) plus "&lt;name&gt;_scale", fp32 per
 * output channel, everything else fp32.
 */
public final class GptHfFormat {
    private GptHfFormat() {}

    /** Prefix of every tensor in a PEFT adapter file (PeftModel wraps the base model twice). */
    public static final String PEFT_PREFIX = "base_model.model.";
    /** Suffix of the per-channel scale stored beside an int8 weight. */
    public static final String SCALE_SUFFIX = "_scale";

    /** HF Conv1D weights (adapters' lora_A/lora_B are plain nn.Linear in PEFT and are not transposed). */
    public static boolean isConv1D(String name) {
        return name.endsWith(".attn.c_attn.weight") || name.endsWith(".attn.c_proj.weight")
                || name.endsWith(".mlp.c_fc.weight") || name.endsWith(".mlp.c_proj.weight");
    }

    /** Views of the model's parameters in HF layout (no copies); LoRA adapters, if any, under their PEFT module names. */
    public static Map<String, Tensor> export(Gpt model) {
        return toHf(model.namedParameters());
    }

    /** Views of Kiln-layout tensors in HF layout (Conv1D weights transposed). */
    public static Map<String, Tensor> toHf(Map<String, ? extends Tensor> kiln) {
        Map<String, Tensor> out = new LinkedHashMap<>();
        kiln.forEach((k, p) -> out.put(k, isConv1D(k) ? p.transposeView(0, 1) : p));
        return out;
    }

    /** The base model with LoRA adapters merged in, HF layout: a plain GPT-2 file. */
    public static Map<String, Tensor> exportMerged(Gpt model) {
        return toHf(Lora.merged(model));
    }

    /** PEFT's adapter file: "base_model.model.&lt;module&gt;.lora_A.weight" [r, in] and "….lora_B.weight" [out, r]. */
    public static Map<String, Tensor> exportAdapters(Gpt model) {
        Map<String, Tensor> out = new LinkedHashMap<>();
        Lora.adapters(model).forEach((k, t) -> out.put(PEFT_PREFIX + k, t));
        return out;
    }

    /**
     * The merged model with every Linear weight as int8 codes (HF layout) plus an fp32 per-output-channel
     * scale "&lt;name&gt;_scale"; the rest fp32. The scales are those of {@link FakeQuant#channelScales}, so
     * codes · scales equals the weights a QAT model computed with, bit for bit.
     */
    public static Map<String, Tensor> exportInt8(Gpt model, int bits) {
        Map<String, Tensor> merged = Lora.merged(model), out = new LinkedHashMap<>();
        var linears = Lora.linears(model).keySet();
        merged.forEach((k, t) -> {
            boolean linearWeight = k.endsWith(".weight") && linears.contains(k.substring(0, k.length() - ".weight".length()));
            if (!linearWeight) {
                out.put(k, isConv1D(k) ? t.transposeView(0, 1) : t);
                return;
            }
            Tensor w = t.dtype() == DType.F32 ? t : t.to(DType.F32);
            Tensor scales = FakeQuant.channelScales(w, bits);
            Tensor codes = FakeQuant.codes(w, scales, bits);
            out.put(k, isConv1D(k) ? codes.transposeView(0, 1) : codes);
            out.put(k + SCALE_SUFFIX, scales);
        });
        return out;
    }

    /** Whether a file's tensors are {@link #exportInt8}'s layout (any int8 tensor). */
    public static boolean isInt8(Map<String, Tensor> hf) {
        return hf.values().stream().anyMatch(t -> t.dtype() == DType.I8);
    }

    /**
     * {@link #exportInt8}'s tensors back to fp32 HF layout: code · scale per output channel (the last
     * dimension of a Conv1D weight, the first of any other), computed exactly as the fake quantiser does.
     */
    public static Map<String, Tensor> dequantizeInt8(Map<String, Tensor> hf, String source) {
        Map<String, Tensor> out = new LinkedHashMap<>();
        hf.forEach((k, t) -> {
            if (k.endsWith(SCALE_SUFFIX) && hf.containsKey(k.substring(0, k.length() - SCALE_SUFFIX.length()))) return;
            if (t.dtype() != DType.I8) {
                out.put(k, t);
                return;
            }
            Tensor s = hf.get(k + SCALE_SUFFIX);
            int channelDim = isConv1D(k) ? 1 : 0;
            if (s == null) throw new KilnException(source + ": int8 tensor " + k + " has no " + k + SCALE_SUFFIX);
            if (t.dim() != 2 || s.dim() != 1 || s.size(0) != t.size(channelDim))
                throw new KilnException(source + ": " + k + SCALE_SUFFIX + " has shape " + s.shapeString() + " but " + k + " " + t.shapeString()
                        + " needs one scale per output channel");
            Tensor w = Tensor.empty(DType.F32, t.shape());
            int cols = t.size(1);
            for (int i = 0; i < t.size(0); i++)
                for (int j = 0; j < cols; j++)
                    w.set(t.get(i, j) * s.getFlat(channelDim == 1 ? j : i), i, j); // code · scale is exact in double; one rounding to fp32
            out.put(k, w);
        });
        return out;
    }

    /** The HF shape each tensor must have, by name. */
    public static Map<String, int[]> expectedShapes(Gpt model) {
        return expectedShapes(model.namedParameters());
    }

    private static Map<String, int[]> expectedShapes(Map<String, Parameter> params) {
        Map<String, int[]> out = new LinkedHashMap<>();
        params.forEach((k, p) -> {
            int[] s = p.shape();
            out.put(k, isConv1D(k) ? new int[]{s[1], s[0]} : s);
        });
        return out;
    }

    /**
     * Loads HF-layout tensors into the model (adapters included, if it has them). A missing, unexpected or
     * mis-shaped tensor is a KilnException naming it (and {@code source}, the file it came from).
     */
    public static void load(Gpt model, Map<String, Tensor> hf, String source) {
        load(model.namedParameters(), hf, source);
    }

    /**
     * Loads a plain GPT-2 file into the model's base parameters, leaving LoRA adapters alone: the frozen base
     * of a fine-tune. A file that itself holds adapters is refused (merge it first: kiln export --merged).
     */
    public static void loadBase(Gpt model, Map<String, Tensor> hf, String source) {
        for (String k : hf.keySet())
            if (Lora.isAdapter(k))
                throw new KilnException(source + ": holds LoRA adapter " + k + "; export that run merged (kiln export --merged) and start from the merged file");
        Map<String, Parameter> base = model.namedParameters();
        base.keySet().removeIf(Lora::isAdapter);
        load(base, hf, source);
    }

    private static void load(Map<String, Parameter> params, Map<String, Tensor> hf, String source) {
        for (var e : expectedShapes(params).entrySet()) {
            Tensor t = hf.get(e.getKey());
            if (t == null) throw new KilnException(source + ": missing tensor " + e.getKey());
            if (!Arrays.equals(t.shape(), e.getValue()))
                throw new KilnException(source + ": tensor " + e.getKey() + " has shape " + t.shapeString() + " but the model needs "
                        + Arrays.toString(e.getValue()) + " (check n_layer/n_head/n_embd/block_size/vocab_size)");
        }
        for (String k : hf.keySet())
            if (!params.containsKey(k) && !k.equals("lm_head.weight")) throw new KilnException(source + ": unexpected tensor " + k);
        params.forEach((k, p) -> {
            Tensor t = hf.get(k);
            p.copyFrom(isConv1D(k) ? t.transposeView(0, 1) : t);
        });
    }
}
