package dev.kiln.dist;

import dev.kiln.autograd.Tape;
import dev.kiln.nn.Parameter;
import dev.kiln.nn.models.Gpt;
import dev.kiln.nn.models.GptConfig;
import dev.kiln.tensor.DType;
import dev.kiln.tensor.MemoryScope;
import dev.kiln.tensor.Tensor;
import org.junit.jupiter.api.Test;

import java.util.ArrayList;
import java.util.IdentityHashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** The single-process pieces data parallelism stands on: the grad-ready hook, tape marks, ownership, eviction. */
class ShardingPiecesTest {
    static Gpt tinyGpt() {
        return new Gpt(new GptConfig(2, 2, 16, 8, 11, 0.0, true), 7, DType.F32);
    }

    static Tensor loss(Gpt model) {
        int[] x = new int[2 * 8], y = new int[2 * 8];
        for (int i = 0; i < x.length; i++) {
            x[i] = (i * 5) % 11;
            y[i] = (i * 3 + 1) % 11;
        }
        return model.loss(Tensor.ofInts(x, 2, 8), Tensor.ofInts(y, 2, 8));
    }

    /** The hook fires once per parameter, and what the gradient holds then is its final value (no node adds later). */
    @Test
    void gradReadyHookFiresOncePerParameterWithItsFinalGradient() {
        Gpt model = tinyGpt();
        Map<Tensor, float[]> atFire = new IdentityHashMap<>();
        List<String> order = new ArrayList<>();
        Map<Tensor, String> names = new IdentityHashMap<>();
        model.namedParameters().forEach((k, p) -> names.put(p, k));
        try (var scope = MemoryScope.open()) {
            Tensor l = loss(model);
            Tape.setGradReadyHook(t -> {
                assertFalse(atFire.containsKey(t), "fired twice: " + names.get(t));
                atFire.put(t, t.grad().toFloatArray());
                order.add(names.get(t));
            });
            try {
                Tape.backward(l);
            } finally {
                Tape.setGradReadyHook(null);
            }
        }
        assertEquals(model.namedParameters().size(), atFire.size(), "every parameter fired");
        for (Parameter p : model.parameters()) assertArrayEquals(p.grad().toFloatArray(), atFire.get(p), names.get(p));
        // backward order: the last block's parameters are final before the first block's; the tied wte comes last
        assertTrue(order.indexOf("transformer.h.1.mlp.c_proj.weight") < order.indexOf("transformer.h.0.mlp.c_proj.weight"), order.toString());
        assertEquals("transformer.wte.weight", order.getLast(), order.toString());
    }

    /** A mark runs in backward after the nodes recorded after it and before those recorded before it. */
    @Test
    void tapeMarksRunAtTheirPlaceInBackward() {
        List<String> log = new ArrayList<>();
        try (var scope = MemoryScope.open()) {
            Tensor w = Tensor.of(new float[]{2f}, 1).requiresGrad(true);
            Tensor a = Tape.record(Tensor.of(new float[]{2f}, 1), (g, grads) -> log.add("a"), w);
            Tape.mark(() -> log.add("mark"));
            Tensor b = Tape.record(Tensor.of(new float[]{2f}, 1), (g, grads) -> {
                log.add("b");
                grads.accumulate(a, g);
            }, a);
            Tape.backward(b);
        }
        assertEquals(List.of("b", "mark", "a"), log);
        try (var ng = Tape.noGradScope()) {
            int before = Tape.size();
            Tape.mark(() -> log.add("never"));
            assertEquals(before, Tape.size(), "no mark is recorded without grad");
        }
    }

    @Test
    void ownersPartitionWholeParametersEvenlyAndTheSameWay() {
        Map<String, Parameter> params = tinyGpt().trainableParameters();
        long total = params.values().stream().mapToLong(Tensor::numel).sum();
        long largest = params.values().stream().mapToLong(Tensor::numel).max().orElseThrow();
        for (int n : new int[]{1, 2, 3, 4}) {
            ParameterOwners a = new ParameterOwners(params, n), b = new ParameterOwners(new LinkedHashMap<>(params), n);
            long sum = 0;
            for (int r = 0; r < n; r++) {
                sum += a.elements(r);
                assertTrue(Math.abs(a.elements(r) - total / (double) n) <= largest, "rank " + r + " of " + n + ": " + a.elements(r));
                assertEquals(a.ownedBy(r, params).keySet(), b.ownedBy(r, params).keySet(), "deterministic");
            }
            assertEquals(total, sum);
            for (String k : params.keySet()) assertEquals(a.owner(k), b.owner(k));
        }
    }

    @Test
    void evictedParameterFailsLoudlyUntilRestored() {
        Parameter p = new Parameter(Tensor.of(new float[]{1f, 2f, 3f}, 3));
        p.storage().evict();
        assertFalse(p.storage().isResident());
        var e = assertThrows(IllegalStateException.class, () -> p.getFlat(0));
        assertTrue(e.getMessage().contains("evicted"), e.getMessage());
        p.storage().restore();
        p.fill(5);
        assertEquals(5.0, p.getFlat(2));
        assertTrue(p.storage().isResident());
    }

    @Test
    void unitsAreTheBlocksAndTheRest() {
        assertEquals(-1, ParameterSharding.unitOf("transformer.wte.weight"));
        assertEquals(-1, ParameterSharding.unitOf("transformer.ln_f.bias"));
        assertEquals(0, ParameterSharding.unitOf("transformer.h.0.attn.c_attn.weight"));
        assertEquals(11, ParameterSharding.unitOf("transformer.h.11.mlp.c_fc.bias"));
    }
}
