package dev.kiln.train;

import com.fasterxml.jackson.databind.JsonNode;
import dev.kiln.tensor.MemoryScope;
import dev.kiln.tensor.Safetensors;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Set;
import java.util.TreeSet;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** model.arch llama through the trainer, checkpoints, resume, eval, sample and export, on the bundled corpus (seconds). */
class LlamaTrainingTest {
    @TempDir
    Path tmp;

    /** SmallRuns' GPT shape as a Llama: 2 layers, 32 wide, 2 query heads over 1 K/V head, SwiGLU width 88. */
    private static final String[] LLAMA = {"model.arch=llama", "model.bias=false", "model.n_kv_head=1", "model.intermediate_size=88"};

    private static String[] with(String... extra) {
        List<String> o = new ArrayList<>(List.of(LLAMA));
        o.addAll(List.of(extra));
        return o.toArray(new String[0]);
    }

    @Test
    void lossFallsAndCheckpointsHoldHfLlamaNames() throws Exception {
        Trainer.Result r = SmallRuns.train(tmp, "llama", 150, false, LLAMA);
        double first = r.losses().subList(0, 10).stream().mapToDouble(d -> d).average().orElseThrow();
        double last = r.losses().subList(140, 150).stream().mapToDouble(d -> d).average().orElseThrow();
        assertTrue(first > 3.9, "an untrained char model starts near ln(65) = 4.17, got " + first);
        assertTrue(last < first - 1.0, "loss must fall by more than 1 nat in 150 steps: " + first + " -> " + last);
        assertTrue(r.finalValLoss() < first - 0.8, "val loss " + r.finalValLoss());
        Set<String> names;
        try (var scope = MemoryScope.open()) {
            names = new TreeSet<>(Safetensors.read(r.runDir().resolve("checkpoints/step-000150/" + CheckpointStore.MODEL_FILE)).tensors().keySet());
        }
        Set<String> want = new TreeSet<>(List.of("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"));
        for (int i = 0; i < 2; i++)
            for (String s : List.of("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj",
                    "mlp.down_proj", "input_layernorm", "post_attention_layernorm"))
                want.add("model.layers." + i + "." + s + ".weight");
        assertEquals(want, names);
        JsonNode account = SmallRuns.metrics(r).getFirst();
        // V·C embedding + untied head, per layer q, o (C²), k, v (C·16), gate, up, down (C·88), 2 norms; final norm
        assertEquals(2 * 65 * 32 + 2 * (2 * 32 * 32 + 2 * 32 * 16 + 3 * 32 * 88 + 2 * 32) + 32, account.path("params").asLong());

        // eval and sample of the checkpoint; the final evaluation's batches again give the final val loss
        SmallRuns.Cli eval = SmallRuns.cli("eval", "--run", r.runDir().toString());
        assertEquals(0, eval.code(), eval.err());
        assertTrue(eval.out().startsWith(String.format("val loss %.4f over 4 batches", r.finalValLoss())), eval.out());
        SmallRuns.Cli sample = SmallRuns.cli("sample", "--run", r.runDir().toString(), "--tokens", "30", "--prompt", "ROMEO:");
        assertEquals(0, sample.code(), sample.err());
        assertTrue(sample.out().startsWith("ROMEO:") && sample.out().strip().length() >= 30, sample.out());
        SmallRuns.Cli export = SmallRuns.cli("export", "--run", r.runDir().toString(), "--out", tmp.resolve("x.safetensors").toString());
        assertEquals(2, export.code());
        assertTrue(export.err().contains("HF LlamaForCausalLM names") && export.err().strip().lines().count() == 1, export.err());
    }

    @Test
    void resumeReproducesTheUninterruptedRunBitForBit() {
        Trainer.Result straight = SmallRuns.train(tmp, "straight", 120, false, LLAMA);
        Trainer.Result firstHalf = SmallRuns.train(tmp, "halves", 60, false, LLAMA);
        Trainer.Result secondHalf = SmallRuns.train(tmp, "halves", 120, true, LLAMA);
        assertEquals(60, secondHalf.firstStep());
        List<Double> joined = new ArrayList<>(firstHalf.losses());
        joined.addAll(secondHalf.losses());
        assertArrayEquals(straight.losses().stream().mapToDouble(d -> d).toArray(), joined.stream().mapToDouble(d -> d).toArray(), 0.0,
                "losses after resume must be identical");
        assertEquals(straight.finalValLoss(), secondHalf.finalValLoss(), 0.0);
    }

    @Test
    void loraTrainsOnlyAdaptersOnLlamaProjections() {
        Trainer.Result r = SmallRuns.train(tmp, "lora", 20, false, with("lora.rank=4", "lora.targets=q_proj,v_proj"));
        JsonNode account = SmallRuns.metrics(r).getFirst();
        // per layer: q (A 4×32, B 32×4) and v (A 4×32, B 16×4)
        assertEquals(2 * (4 * 32 + 32 * 4 + 4 * 32 + 16 * 4), account.path("trainable_params").asLong());
        assertTrue(r.losses().stream().allMatch(Double::isFinite));
        // GPT's module names are named as missing, with the names the Llama has
        var e = org.junit.jupiter.api.Assertions.assertThrows(TrainingException.class,
                () -> SmallRuns.train(tmp, "lora2", 5, false, with("lora.rank=4", "lora.targets=c_attn")));
        assertTrue(e.getMessage().contains("c_attn") && e.getMessage().contains("q_proj"), e.getMessage());
    }

    @Test
    void qatAndWeightAveragingRunOnLlama() {
        Trainer.Result plain = SmallRuns.train(tmp, "plain", 20, false, LLAMA);
        Trainer.Result r = SmallRuns.train(tmp, "qat", 20, false, with("qat.weights=true", "averaging.ema_decay=0.9"));
        assertTrue(r.losses().stream().allMatch(Double::isFinite));
        // fake-quantised weights change the very first forward: every Linear (lm_head too) runs on int8-grid weights
        assertTrue(r.losses().getFirst() != plain.losses().getFirst().doubleValue(), "QAT had no effect");
        SmallRuns.Cli eval = SmallRuns.cli("eval", "--run", r.runDir().toString(), "--weights", "ema");
        assertEquals(0, eval.code(), eval.err());
        assertTrue(eval.out().contains("ema weights"), eval.out());
    }
}
