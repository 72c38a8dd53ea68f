package dev.kiln.nn.models;

import com.fasterxml.jackson.databind.JsonNode;
import dev.kiln.autograd.Tape;
import dev.kiln.nn.Parameter;
import dev.kiln.tensor.DType;
import dev.kiln.tensor.MemoryScope;
import dev.kiln.tensor.Rng;
import dev.kiln.tensor.Tensor;
import dev.kiln.train.Workspace;
import dev.kiln.train.config.ConfigException;
import dev.kiln.train.config.ConfigLoader;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

/**
 * The Llama model: PyTorch parity of logits, loss and every parameter gradient (fixtures written in float64
 * by scripts/make_llama_fixtures.py, HF LlamaForCausalLM's math in plain torch 1.13), finite differences of
 * the whole model's loss, HF names, parameter counts (TinyLlama-1.1B's included) and init.
 * Tolerances as GptParityTest: fp32 2e-5 × the tensor's largest magnitude (fp32 rounding of a 2-layer
 * forward/backward stays near 1e-6 relative), F64 1e-9 (the formulas, without fp32 noise).
 */
class LlamaTest {

    @ParameterizedTest
    @ValueSource(strings = {"llama_tiny.json", "llama_tiny_mqa.json"})
    void fp32MatchesPyTorch(String fixture) throws Exception {
        compare(fixture, DType.F32, 2e-5);
    }

    @ParameterizedTest
    @ValueSource(strings = {"llama_tiny.json", "llama_tiny_mqa.json"})
    void fp64MatchesPyTorchTightly(String fixture) throws Exception {
        compare(fixture, DType.F64, 1e-9);
    }

    private void compare(String fixture, DType dtype, double tol) throws Exception {
        JsonNode root = TorchFixture.load(fixture);
        JsonNode c = root.get("config");
        LlamaConfig cfg = new LlamaConfig(c.get("vocab_size").asInt(), c.get("n_embd").asInt(), c.get("intermediate_size").asInt(),
                c.get("n_layer").asInt(), c.get("n_head").asInt(), c.get("n_kv_head").asInt(), c.get("block_size").asInt(),
                c.get("rope_theta").asDouble(), c.get("norm_eps").asDouble(), c.get("tie_word_embeddings").asBoolean(), 0.02);
        Llama model = new Llama(cfg, 1, dtype);
        // HF's state-dict names, in HF's order
        List<String> names = new ArrayList<>();
        root.get("params").fieldNames().forEachRemaining(names::add);
        assertEquals(names, new ArrayList<>(model.hfStateDict().keySet()));
        model.loadHfStateDict(TorchFixture.params(root, dtype), fixture);
        TorchFixture.checkForwardBackward(model, root, tol);
    }

    /** Central differences of the whole tiny Llama's loss (F64, h = 1e-6) against backward, on every 5th entry of every parameter. */
    @Test
    void wholeModelLossMatchesFiniteDifferences() {
        LlamaConfig cfg = new LlamaConfig(13, 8, 12, 2, 4, 2, 6, 50, 1e-5, false, 0.3); // large init: every path matters
        Llama model = new Llama(cfg, 5, DType.F64);
        for (Parameter p : model.parameters()) // norm gains away from 1 too
            if (p.dim() == 1) for (int i = 0; i < p.numel(); i++) p.setFlat(i, 1 + 0.2 * Math.sin(3 * i + p.numel()));
        Rng rng = new Rng(9);
        int b = 2, t = 6;
        int[] x = new int[b * t], y = new int[b * t];
        for (int i = 0; i < x.length; i++) {
            x[i] = (int) (rng.nextDouble() * 13);
            y[i] = (int) (rng.nextDouble() * 13);
        }
        y[4] = -1;
        Tensor idx = Tensor.ofInts(x, b, t), targets = Tensor.ofInts(y, b, t);
        try (var scope = MemoryScope.open()) {
            Tape.backward(model.loss(idx, targets));
        }
        int checked = 0;
        for (var e : model.namedParameters().entrySet()) {
            Parameter p = e.getValue();
            assertNotNull(p.grad(), e.getKey() + " got no gradient");
            for (long i = 0; i < p.numel(); i += 5) {
                double orig = p.getFlat(i), h = 1e-6;
                p.setFlat(i, orig + h);
                double lp = lossOf(model, idx, targets);
                p.setFlat(i, orig - h);
                double lm = lossOf(model, idx, targets);
                p.setFlat(i, orig);
                double numeric = (lp - lm) / (2 * h), analytic = p.grad().getFlat(i);
                if (Math.abs(numeric - analytic) > 1e-6 * Math.max(1, Math.abs(numeric)))
                    fail(e.getKey() + "[" + i + "]: analytic " + analytic + " vs numeric " + numeric);
                checked++;
            }
        }
        assertTrue(checked > 100, "checked " + checked);
    }

    private static double lossOf(Llama model, Tensor idx, Tensor targets) {
        try (var ng = Tape.noGradScope(); var scope = MemoryScope.open()) {
            return model.loss(idx, targets).item();
        }
    }

    @Test
    void tinyLlamaParameterCount() {
        assertEquals(1_100_048_384L, Llama.parameterCount(LlamaConfig.tinyLlama1B()));
        assertEquals(5632, LlamaConfig.defaultIntermediateSize(2048)); // Meta's rule gives TinyLlama's width
        // the 1B preset's config file describes exactly that shape
        var rc = ConfigLoader.load(Workspace.resolve("configs/llama-1b.yaml"), List.of());
        assertEquals(LlamaConfig.tinyLlama1B(), LlamaConfig.of(rc.model()));
    }

    @Test
    void builtModelsHaveTheCountedParametersAndHfInit() {
        for (LlamaConfig cfg : List.of(new LlamaConfig(37, 32, 88, 3, 4, 2, 16, 10000, 1e-5, false, 0.02),
                new LlamaConfig(37, 32, 88, 2, 4, 1, 16, 10000, 1e-5, true, 0.02),
                new LlamaConfig(37, 32, 88, 2, 4, 4, 16, 10000, 1e-5, false, 0.02))) {
            Llama m = new Llama(cfg, 3, DType.F32);
            assertEquals(Llama.parameterCount(cfg), m.parameterCount(), cfg.toString());
            assertEquals(!cfg.tie_word_embeddings(), m.namedParameters().containsKey("lm_head.weight"));
        }
        Llama m = new Llama(new LlamaConfig(500, 64, 176, 2, 4, 2, 16, 10000, 1e-5, false, 0.02), 3, DType.F32);
        m.namedParameters().forEach((name, p) -> {
            assertTrue(!name.endsWith(".bias"), "no biases: " + name);
            if (name.endsWith("norm.weight") || name.endsWith("layernorm.weight")) {
                for (long i = 0; i < p.numel(); i++) assertEquals(1.0, p.getFlat(i), 0.0, name);
            } else {
                double ss = 0;
                for (long i = 0; i < p.numel(); i++) ss += p.getFlat(i) * p.getFlat(i);
                double std = Math.sqrt(ss / p.numel());
                assertEquals(0.02, std, 0.02 * 5 / Math.sqrt(p.numel()), name + " std"); // 5 standard errors of a std estimate (≈ σ/√(2n))
            }
        });
        assertEquals(List.of("model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight",
                        "model.layers.0.self_attn.v_proj.weight", "model.layers.0.self_attn.o_proj.weight", "model.layers.0.mlp.gate_proj.weight",
                        "model.layers.0.mlp.up_proj.weight", "model.layers.0.mlp.down_proj.weight", "model.layers.0.input_layernorm.weight",
                        "model.layers.0.post_attention_layernorm.weight"),
                m.namedParameters().keySet().stream().filter(k -> k.startsWith("model.layers.0.")).toList());
        assertEquals(32, m.namedParameters().get("model.layers.0.self_attn.k_proj.weight").size(0)); // 2 kv heads of 16
        assertEquals(List.of(500, 64), List.of(m.namedParameters().get("lm_head.weight").shape()[0], m.namedParameters().get("lm_head.weight").shape()[1]));
    }

    @Test
    void hfLoadNamesWhatIsWrong() {
        Llama m = new Llama(new LlamaConfig(11, 8, 12, 1, 2, 1, 8, 10000, 1e-5, false, 0.02), 1, DType.F32);
        Map<String, Tensor> hf = new HashMap<>(m.hfStateDict());
        hf.remove("model.norm.weight");
        var e = assertThrows(dev.kiln.KilnException.class, () -> m.loadHfStateDict(hf, "x.safetensors"));
        assertEquals("x.safetensors: missing tensor model.norm.weight", e.getMessage());
        hf.put("model.norm.weight", Tensor.zeros(DType.F32, 9));
        e = assertThrows(dev.kiln.KilnException.class, () -> m.loadHfStateDict(hf, "x.safetensors"));
        assertTrue(e.getMessage().startsWith("x.safetensors: tensor model.norm.weight has shape [9]"), e.getMessage());
        hf.put("model.norm.weight", Tensor.zeros(DType.F32, 8));
        hf.put("model.layers.0.self_attn.q_proj.bias", Tensor.zeros(DType.F32, 8));
        e = assertThrows(dev.kiln.KilnException.class, () -> m.loadHfStateDict(hf, "x.safetensors"));
        assertEquals("x.safetensors: unexpected tensor model.layers.0.self_attn.q_proj.bias", e.getMessage());
    }

    @Test
    void configSelectsTheArchitectureAndRefusesWhatDoesNotApply() {
        var rc = ConfigLoader.load(Workspace.resolve("configs/llama-tiny.yaml"), List.of("model.vocab_size=65"));
        CausalLm m = CausalLm.build(rc.model(), 1, DType.F32);
        assertTrue(m instanceof Llama, m.describe());
        assertEquals("Llama 4 layers, 4 heads (2 kv), 128 hidden, 352 intermediate, block 64, vocab 65", m.describe());
        assertTrue(CausalLm.build(ConfigLoader.load(null, List.of("model.vocab_size=65")).model(), 1, DType.F32) instanceof Gpt);
        String[][] bad = {
                {"model.arch=mamba"}, {"model.arch"},
                {"model.arch=llama"}, {"model.bias"}, // the default bias: true is GPT's
                {"model.n_kv_head=2"}, {"model.n_kv_head"}, // a Llama key on a GPT
                {"model.rope_theta=500"}, {"model.rope_theta"},
                {"model.arch=llama", "model.bias=false", "model.n_kv_head=3"}, {"model.n_kv_head"},
                {"model.arch=llama", "model.bias=false", "growth.at_step=10", "growth.to_layers=8"}, {"growth.at_step"},
                {"model.arch=llama", "model.bias=false", "train.layer_drop=0.5"}, {"train.layer_drop"},
                {"model.arch=llama", "model.bias=false", "model.init=mup"}, {"model.init"},
                {"model.arch=llama", "model.bias=false", "model.norm_eps=0"}, {"model.norm_eps"},
        };
        for (int i = 0; i < bad.length; i += 2) {
            List<String> overrides = List.of(bad[i]);
            var e = assertThrows(ConfigException.class, () -> ConfigLoader.load(null, overrides), overrides.toString());
            assertEquals(bad[i + 1][0], e.key(), overrides + ": " + e.getMessage());
        }
    }
}
