package dev.kiln.nn.models;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import dev.kiln.autograd.Tape;
import dev.kiln.nn.Parameter;
import dev.kiln.tensor.DType;
import dev.kiln.tensor.MemoryScope;
import dev.kiln.tensor.Tensor;

import java.io.IOException;
import java.io.InputStream;
import java.util.HashMap;
import java.util.Map;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * A float64 PyTorch fixture (scripts/make_fixtures.py, scripts/make_llama_fixtures.py): config, params, idx,
 * targets, logits, loss and every parameter's grad, as JSON under /fixtures. Shared by the models' parity tests.
 */
final class TorchFixture {
    private TorchFixture() {}

    static JsonNode load(String fixture) throws IOException {
        try (InputStream in = TorchFixture.class.getResourceAsStream("/fixtures/" + fixture)) {
            assertNotNull(in, fixture);
            return new ObjectMapper().readTree(in);
        }
    }

    /** The fixture's parameters by name, in {@code dtype}. */
    static Map<String, Tensor> params(JsonNode root, DType dtype) {
        Map<String, Tensor> state = new HashMap<>();
        root.get("params").fields().forEachRemaining(e -> state.put(e.getKey(), tensor(e.getValue(), dtype)));
        return state;
    }

    /**
     * Runs {@code model} (its weights already the fixture's) forward and backward on the fixture's batch and checks
     * logits, loss and every parameter gradient within {@code tol} × each tensor's largest magnitude.
     */
    static void checkForwardBackward(CausalLm model, JsonNode root, double tol) {
        JsonNode c = root.get("config");
        int b = c.get("batch_size").asInt(), t = c.get("seq_len").asInt();
        try (var scope = MemoryScope.open()) {
            Tensor idx = Tensor.ofInts(ints(root.get("idx")), b, t);
            Tensor targets = Tensor.ofInts(ints(root.get("targets")), b, t);
            Tensor logits = model.forward(idx);
            assertClose("logits", tensor(root.get("logits"), DType.F64), logits, tol);
            Tape.clear();
            Tensor loss = model.loss(idx, targets);
            assertEquals(root.get("loss").asDouble(), loss.item(), tol * 10, "loss");
            Tape.backward(loss);
            Map<String, Parameter> params = model.namedParameters();
            assertEquals(root.get("grads").size(), params.size(), "one gradient per parameter");
            root.get("grads").fields().forEachRemaining(e -> {
                Parameter p = params.get(e.getKey());
                assertNotNull(p, "model lacks " + e.getKey());
                assertClose("grad " + e.getKey(), tensor(e.getValue(), DType.F64), p.grad(), tol);
            });
        }
    }

    static void assertClose(String what, Tensor ref, Tensor got, double tol) {
        assertTrue(ref.sameShape(got), what + ": shape " + got.shapeString() + " vs " + ref.shapeString());
        double scale = 0, worst = 0;
        for (long i = 0; i < ref.numel(); i++) scale = Math.max(scale, Math.abs(ref.getFlat(i)));
        for (long i = 0; i < ref.numel(); i++) worst = Math.max(worst, Math.abs(ref.getFlat(i) - got.getFlat(i)));
        assertTrue(scale > 0, what + " is all zeros: the fixture would prove nothing");
        assertTrue(worst <= tol * scale, what + ": max |Δ| " + worst + " > " + tol + " × " + scale);
    }

    static Tensor tensor(JsonNode n, DType dtype) {
        int[] shape = ints(n.get("shape"));
        JsonNode data = n.get("data");
        double[] v = new double[data.size()];
        for (int i = 0; i < v.length; i++) v[i] = data.get(i).asDouble();
        Tensor t = Tensor.ofDoubles(v, shape);
        return dtype == DType.F64 ? t : t.to(dtype);
    }

    static int[] ints(JsonNode n) {
        int[] out = new int[n.size()];
        for (int i = 0; i < out.length; i++) out[i] = n.get(i).asInt();
        return out;
    }
}
