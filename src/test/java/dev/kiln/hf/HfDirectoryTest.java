package dev.kiln.hf;

import dev.kiln.KilnException;
import dev.kiln.autograd.Tape;
import dev.kiln.nn.models.Gpt;
import dev.kiln.nn.models.GptConfig;
import dev.kiln.tensor.DType;
import dev.kiln.tensor.MemoryScope;
import dev.kiln.tensor.Safetensors;
import dev.kiln.tensor.Tensor;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.function.Executable;
import org.junit.jupiter.api.io.TempDir;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

import static dev.kiln.hf.HfFixtures.copy;
import static dev.kiln.hf.HfFixtures.editConfig;
import static dev.kiln.hf.HfFixtures.editTensors;
import static dev.kiln.hf.HfFixtures.fixture;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertInstanceOf;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * Reading Hugging Face model directories: the GPT-2 and Llama directories transformers 5.18 wrote (committed
 * fixtures), GPT-2's logits against transformers' own, the Llama mapping as plain numbers, and every kind of bad
 * input with its one-line error.
 */
class HfDirectoryTest {
    @TempDir
    Path tmp;

    /** A Kiln GPT holding the weights of an HF GPT-2 directory. */
    static Gpt gptFrom(HfDirectory.HfModel hf, String source) {
        Gpt2Spec s = (Gpt2Spec) hf.spec();
        Gpt model = new Gpt(new GptConfig(s.n_layer(), s.n_head(), s.n_embd(), s.n_positions(), s.vocab_size(), 0.0, true), 0, DType.F32);
        HfInterchange.loadIntoGpt(model, hf, source);
        return model;
    }

    /** max |Kiln − transformers| over the logits of the io file's tokens. */
    static double maxLogitDiff(Gpt model, Path io) {
        try (var scope = MemoryScope.open(); var ng = Tape.noGradScope()) {
            Map<String, Tensor> t = Safetensors.read(io).tensors();
            float[] kiln = model.forward(t.get("tokens")).toFloatArray(), hf = t.get("logits").toFloatArray();
            assertEquals(hf.length, kiln.length);
            double max = 0;
            for (int i = 0; i < hf.length; i++) max = Math.max(max, Math.abs(kiln[i] - hf[i]));
            return max;
        }
    }

    @Test
    void readsTheGpt2DirectoryTransformersWroteAndComputesItsLogits() {
        try (var scope = MemoryScope.open()) {
            HfDirectory.HfModel hf = HfDirectory.read(fixture("gpt2"));
            Gpt2Spec s = assertInstanceOf(Gpt2Spec.class, hf.spec());
            assertEquals(new Gpt2Spec(65, 32, 32, 2, 4, 0.1, null), s); // transformers' GPT2Config defaults for dropout
            assertEquals(2 + 12 * 2 + 2, hf.tensors().size(), "no lm_head.weight (tied) and no attn.bias buffers in a 5.18 file");
            // fp32 logits of a 2-layer model: the summation orders differ (Kiln's GEMM vs torch's); 1e-4 is the bar
            double diff = maxLogitDiff(gptFrom(hf, "gpt2"), fixture("gpt2_io.safetensors"));
            System.out.printf("HfDirectoryTest: GPT-2 from transformers 5.18, Kiln logits max |diff| %.3g%n", diff);
            assertTrue(diff <= 1e-4, "max |Δlogit| " + diff);
        }
    }

    @Test
    void readsTheLlamaDirectoryTransformersWrote() {
        try (var scope = MemoryScope.open()) {
            HfDirectory.HfModel hf = HfDirectory.read(fixture("llama"));
            LlamaSpec s = assertInstanceOf(LlamaSpec.class, hf.spec());
            assertEquals(new LlamaSpec(65, 32, 96, 2, 4, 2, 32, 1e-5, 10000.0, false, null, null), s);
            assertEquals(s.tensorShapes().keySet(), hf.tensors().keySet(), "every tensor transformers wrote is in the list, and only those");
            hf.tensors().forEach((k, t) -> assertArrayEquals(s.tensorShapes().get(k), t.shape(), k));
            assertEquals(List.of("model.arch=llama", "model.n_layer=2", "model.n_head=4", "model.n_kv_head=2", "model.n_embd=32",
                    "model.intermediate_size=96", "model.block_size=32", "model.vocab_size=65", "model.rope_theta=10000.0", "model.norm_eps=1.0E-5"),
                    s.kilnShapeOverrides());
        }
    }

    @Test
    void specsSurviveTheirOwnConfigJson() {
        for (HfModelSpec s : List.of(new Gpt2Spec(50304, 1024, 768, 12, 12, 0.0, Gpt2Spec.GPT2_EOT), new Gpt2Spec(65, 64, 128, 4, 4, 0.1, null),
                new LlamaSpec(32000, 2048, 5632, 22, 32, 4, 2048, 1e-5, 10000.0, false, 1, 2), new LlamaSpec(65, 64, 160, 2, 4, 1, 128, 1e-6, 500000.0, true, null, null)))
            assertEquals(s, HfModelSpec.fromConfigJson(s.configJson(), "test"), s.toString());
    }

    @Test
    void llamaTensorListCountsTinyLlamasParameters() {
        // TinyLlama-1.1B's shape; 1,100,048,384 is its published parameter count (and the llama branch's test)
        LlamaSpec tiny = new LlamaSpec(32000, 2048, 5632, 22, 32, 4, 2048, 1e-5, 10000.0, false, 1, 2);
        long n = tiny.tensorShapes().values().stream().mapToLong(s -> Arrays.stream(s).asLongStream().reduce(1, (a, b) -> a * b)).sum();
        assertEquals(1_100_048_384L, n);
        assertEquals(2 + 9 * 22 + 1, tiny.tensorShapes().size());
        assertFalse(new LlamaSpec(65, 32, 96, 2, 4, 2, 32, 1e-5, 1e4, true, null, null).tensorShapes().containsKey("lm_head.weight"), "a tied head is not stored");
    }

    @Test
    void acceptsShardsBuffersUnprefixedNamesAndATiedHeadCopy() throws IOException {
        float[] want;
        try (var scope = MemoryScope.open()) {
            want = HfDirectory.read(fixture("gpt2")).tensors().get("transformer.h.1.mlp.c_fc.weight").toFloatArray();
        }
        // sharded: two files and model.safetensors.index.json
        Path sharded = copy("gpt2", tmp);
        try (var scope = MemoryScope.open()) {
            Map<String, Tensor> all = Safetensors.read(sharded.resolve(HfDirectory.WEIGHTS)).tensors();
            Map<String, Tensor> a = new LinkedHashMap<>(), b = new LinkedHashMap<>();
            StringBuilder index = new StringBuilder("{\"metadata\": {}, \"weight_map\": {");
            all.forEach((k, t) -> {
                boolean first = k.startsWith("transformer.h.0.") || k.startsWith("transformer.w");
                (first ? a : b).put(k, t);
                index.append(index.charAt(index.length() - 1) == '{' ? "" : ", ").append('"').append(k).append("\": \"model-0000").append(first ? 1 : 2).append("-of-00002.safetensors\"");
            });
            Safetensors.write(sharded.resolve("model-00001-of-00002.safetensors"), a, Map.of("format", "pt"));
            Safetensors.write(sharded.resolve("model-00002-of-00002.safetensors"), b, Map.of("format", "pt"));
            Files.writeString(sharded.resolve(HfDirectory.INDEX), index.append("}}").toString());
            Files.delete(sharded.resolve(HfDirectory.WEIGHTS));
            assertArrayEquals(want, HfDirectory.read(sharded).tensors().get("transformer.h.1.mlp.c_fc.weight").toFloatArray());
        }
        // older transformers: GPT2Model names without "transformer.", the causal-mask buffers, lm_head stored
        Path old = copy("gpt2", tmp);
        editTensors(old, t -> {
            Map<String, Tensor> renamed = new LinkedHashMap<>();
            t.forEach((k, v) -> renamed.put(k.substring("transformer.".length()), v));
            renamed.put("h.0.attn.bias", Tensor.full(1, DType.F32, 1, 1, 32, 32));
            renamed.put("h.0.attn.masked_bias", Tensor.full(-1e4, DType.F32));
            renamed.put("lm_head.weight", t.get("transformer.wte.weight"));
            t.clear();
            t.putAll(renamed);
        });
        try (var scope = MemoryScope.open()) {
            HfDirectory.HfModel hf = HfDirectory.read(old);
            assertArrayEquals(want, hf.tensors().get("transformer.h.1.mlp.c_fc.weight").toFloatArray());
            assertFalse(hf.tensors().containsKey("lm_head.weight"));
        }
        // bf16 weights are widened to fp32
        Path bf16 = copy("gpt2", tmp);
        editTensors(bf16, t -> t.replaceAll((k, v) -> v.to(DType.BF16)));
        try (var scope = MemoryScope.open()) {
            Tensor w = HfDirectory.read(bf16).tensors().get("transformer.h.1.mlp.c_fc.weight");
            assertEquals(DType.F32, w.dtype());
            float[] got = w.toFloatArray();
            for (int i = 0; i < got.length; i++) assertEquals(DType.bf16ToFloat(DType.floatToBf16(want[i])), got[i]);
        }
    }

    @Test
    void sameLayoutLoadingCopiesByNameAndNamesWhatDoesNotFit() {
        // the Llama path (names and layouts HF's own), exercised on a GPT's parameters
        try (var scope = MemoryScope.open()) {
            GptConfig c = new GptConfig(1, 2, 16, 8, 11, 0.0, true);
            Gpt a = new Gpt(c, 1, DType.F32), b = new Gpt(c, 2, DType.F32);
            Map<String, Tensor> hf = new LinkedHashMap<>();
            a.namedParameters().forEach((k, p) -> hf.put(k, p.copy()));
            HfInterchange.loadSameLayout(b.namedParameters(), hf, "x");
            a.namedParameters().forEach((k, p) -> assertArrayEquals(p.toFloatArray(), b.namedParameters().get(k).toFloatArray(), k));

            Map<String, Tensor> missing = new LinkedHashMap<>(hf);
            missing.remove("transformer.ln_f.bias");
            refused(() -> HfInterchange.loadSameLayout(b.namedParameters(), missing, "x"), "x: missing tensor transformer.ln_f.bias");
            Map<String, Tensor> shaped = new LinkedHashMap<>(hf);
            shaped.put("transformer.wpe.weight", Tensor.zeros(DType.F32, 16, 8));
            refused(() -> HfInterchange.loadSameLayout(b.namedParameters(), shaped, "x"), "tensor transformer.wpe.weight has shape [16, 8]", "needs [8, 16]");
            Map<String, Tensor> extra = new LinkedHashMap<>(hf);
            extra.put("lm_head.weight", Tensor.zeros(DType.F32, 11, 16));
            refused(() -> HfInterchange.loadSameLayout(b.namedParameters(), extra, "x"), "unexpected tensor lm_head.weight");
        }
    }

    /** The one-line error {@code read} gives, which must mention every one of {@code words}. */
    private static void refused(Path dir, String... words) {
        refused(() -> {
            try (var scope = MemoryScope.open()) {
                HfDirectory.read(dir);
            }
        }, words);
    }

    private static void refused(Executable e, String... words) {
        KilnException ex = assertThrows(KilnException.class, e);
        String m = ex.getMessage();
        assertFalse(m.contains("\n"), "one line: " + m);
        for (String w : words) assertTrue(m.contains(w), "'" + w + "' in: " + m);
    }

    @Test
    void badTensorsAreNamed() {
        Path d = copy("gpt2", tmp);
        editTensors(d, t -> t.remove("transformer.h.1.ln_2.bias"));
        refused(d, "missing tensor transformer.h.1.ln_2.bias", "model.safetensors");

        d = copy("gpt2", tmp);
        editTensors(d, t -> t.put("transformer.h.0.attn.c_attn.lora_A.weight", Tensor.zeros(DType.F32, 4, 32)));
        refused(d, "unexpected tensor transformer.h.0.attn.c_attn.lora_A.weight");

        d = copy("gpt2", tmp);
        editTensors(d, t -> t.put("transformer.h.1.attn.c_attn.weight", Tensor.zeros(DType.F32, 96, 32))); // nn.Linear's layout, not Conv1D's
        refused(d, "tensor transformer.h.1.attn.c_attn.weight has shape [96, 32]", "needs [32, 96]");

        d = copy("gpt2", tmp);
        editTensors(d, t -> t.put("transformer.ln_f.weight", Tensor.zeros(DType.I32, 32)));
        refused(d, "tensor transformer.ln_f.weight has dtype I32");

        d = copy("gpt2", tmp);
        editTensors(d, t -> t.put("lm_head.weight", Tensor.zeros(DType.F32, 65, 32)));
        refused(d, "lm_head.weight differs from transformer.wte.weight", "tie_word_embeddings");

        d = copy("llama", tmp);
        editTensors(d, t -> t.remove("lm_head.weight"));
        refused(d, "tie_word_embeddings is false but there is no lm_head.weight");

        d = copy("llama", tmp);
        editTensors(d, t -> t.put("model.layers.1.mlp.down_proj.weight", Tensor.zeros(DType.F32, 96, 32)));
        refused(d, "tensor model.layers.1.mlp.down_proj.weight has shape [96, 32]", "needs [32, 96]");
    }

    @Test
    void configThatDisagreesWithTheTensorsNamesTheKey() {
        Path d = copy("gpt2", tmp);
        editConfig(d, c -> c.put("n_embd", 64));
        refused(d, "config.json: n_embd is 64 but transformer.wte.weight is 32 wide");
        d = copy("gpt2", tmp);
        editConfig(d, c -> c.put("n_layer", 3));
        refused(d, "config.json: n_layer is 3 but the tensors hold 2 blocks");
        d = copy("gpt2", tmp);
        editConfig(d, c -> c.put("vocab_size", 50257));
        refused(d, "config.json: vocab_size is 50257 but transformer.wte.weight has 65 rows");
        d = copy("gpt2", tmp);
        editConfig(d, c -> c.put("n_positions", 1024));
        refused(d, "config.json: n_positions is 1024 but transformer.wpe.weight has 32 rows");
        d = copy("llama", tmp);
        editConfig(d, c -> c.put("num_key_value_heads", 4));
        refused(d, "config.json: num_key_value_heads is 4 but model.layers.0.self_attn.k_proj.weight has 16 rows");
        d = copy("llama", tmp);
        editConfig(d, c -> c.put("intermediate_size", 128));
        refused(d, "config.json: intermediate_size is 128 but model.layers.0.mlp.gate_proj.weight has 96 rows");
        d = copy("llama", tmp);
        editConfig(d, c -> c.put("num_hidden_layers", 1));
        refused(d, "config.json: num_hidden_layers is 1 but the tensors hold 2 layers");
    }

    @Test
    void badOrUnsupportedConfigJsonIsNamed() throws IOException {
        refused(tmp.resolve("nowhere"), "not a directory");
        Path d = copy("gpt2", tmp);
        Files.delete(d.resolve("config.json"));
        refused(d, "no config.json");
        d = copy("gpt2", tmp);
        Files.writeString(d.resolve("config.json"), "{\"model_type\": \"gpt2\", \"n_embd\": 32,");
        refused(d, "config.json: not valid JSON");
        d = copy("gpt2", tmp);
        Files.delete(d.resolve("model.safetensors"));
        refused(d, "no model.safetensors");

        d = copy("gpt2", tmp);
        editConfig(d, c -> c.remove("n_head"));
        refused(d, "config.json: n_head is missing");
        d = copy("gpt2", tmp);
        editConfig(d, c -> c.put("n_layer", "two"));
        refused(d, "config.json: n_layer must be a positive integer");
        d = copy("gpt2", tmp);
        editConfig(d, c -> c.remove("model_type"));
        refused(d, "config.json: model_type is missing");
        d = copy("gpt2", tmp);
        editConfig(d, c -> c.put("model_type", "bert"));
        refused(d, "config.json: model_type is \"bert\"", "gpt2 and llama");
        d = copy("gpt2", tmp);
        editConfig(d, c -> c.putArray("architectures").add("GPT2ForSequenceClassification"));
        refused(d, "config.json: architectures", "GPT2LMHeadModel");
        d = copy("gpt2", tmp);
        editConfig(d, c -> c.put("activation_function", "relu"));
        refused(d, "config.json: activation_function is \"relu\"");
        d = copy("gpt2", tmp);
        editConfig(d, c -> c.put("layer_norm_epsilon", 1e-6));
        refused(d, "config.json: layer_norm_epsilon is 1.0E-6");
        d = copy("gpt2", tmp);
        editConfig(d, c -> c.put("tie_word_embeddings", false));
        refused(d, "config.json: tie_word_embeddings is false");
        d = copy("gpt2", tmp);
        editConfig(d, c -> c.put("n_inner", 100));
        refused(d, "config.json: n_inner is 100");
        d = copy("llama", tmp);
        editConfig(d, c -> c.put("hidden_act", "gelu"));
        refused(d, "config.json: hidden_act is \"gelu\"");
        d = copy("llama", tmp);
        editConfig(d, c -> c.put("attention_bias", true));
        refused(d, "config.json: attention_bias is true");
        d = copy("llama", tmp);
        editConfig(d, c -> c.putObject("rope_parameters").put("rope_type", "yarn"));
        refused(d, "rope_parameters: rope_type is \"yarn\"");
    }
}
