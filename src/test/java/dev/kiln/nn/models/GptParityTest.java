package dev.kiln.nn.models;

import com.fasterxml.jackson.databind.JsonNode;
import dev.kiln.tensor.DType;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

/**
 * GPT loss, logits and every parameter gradient against PyTorch (fixtures written in float64 by
 * scripts/make_fixtures.py with Debian's torch 1.13). Kiln runs in fp32 here, the training
 * precision: with O(1) weights the fp32 rounding of a 2-layer forward/backward stays near 1e-6
 * relative, so we allow 2e-5 × the tensor's largest magnitude (and the run in F64 must match to
 * 1e-9, which checks the formulas without fp32 noise).
 */
class GptParityTest {

    @ParameterizedTest
    @ValueSource(strings = {"gpt_tiny.json", "gpt_tiny_nobias.json"})
    void fp32MatchesPyTorch(String fixture) throws Exception {
        compare(fixture, DType.F32, 2e-5);
    }

    @ParameterizedTest
    @ValueSource(strings = {"gpt_tiny.json", "gpt_tiny_nobias.json"})
    void fp64MatchesPyTorchTightly(String fixture) throws Exception {
        compare(fixture, DType.F64, 1e-9);
    }

    private void compare(String fixture, DType dtype, double tol) throws Exception {
        JsonNode root = TorchFixture.load(fixture);
        JsonNode c = root.get("config");
        GptConfig cfg = new GptConfig(c.get("n_layer").asInt(), c.get("n_head").asInt(), c.get("n_embd").asInt(),
                c.get("block_size").asInt(), c.get("vocab_size").asInt(), 0.0, c.get("bias").asBoolean());
        Gpt model = new Gpt(cfg, 1, dtype);
        model.loadStateDict(TorchFixture.params(root, dtype));
        TorchFixture.checkForwardBackward(model, root, tol);
    }
}
