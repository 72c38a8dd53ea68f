package dev.kiln.train;

import dev.kiln.nn.models.CausalLm;
import dev.kiln.tensor.DType;
import dev.kiln.train.config.ConfigLoader;
import org.junit.jupiter.api.Test;

import java.util.ArrayList;
import java.util.List;

import static org.junit.jupiter.api.Assertions.assertDoesNotThrow;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** What tensor parallelism refuses, each with one line naming the key (checked before any rank builds a shard). */
class TensorParallelRunTest {

    private static void check(String expectedKey, String... overrides) {
        List<String> o = new ArrayList<>(List.of("parallel.tp=2", "model.n_layer=1", "model.n_head=2", "model.n_embd=16", "model.block_size=8"));
        o.addAll(List.of(overrides));
        var cfg = ConfigLoader.load(null, o);
        CausalLm model = CausalLm.build(cfg.model().withVocabSize(65), 1, DType.F32);
        if (expectedKey == null) {
            assertDoesNotThrow(() -> TensorParallelRun.refuseUnsupported(cfg, model));
            return;
        }
        var e = assertThrows(TrainingException.class, () -> TensorParallelRun.refuseUnsupported(cfg, model));
        assertTrue(e.getMessage().startsWith("parallel.tp 2: ") && e.getMessage().contains(expectedKey), e.getMessage());
        assertEquals(1, e.getMessage().lines().count(), e.getMessage());
    }

    @Test
    void supportedSettingsPass() {
        check(null);
        check(null, "parallel.zero_stage=1", "train.label_smoothing=0.1", "train.z_loss=1e-4", "optim.optimizer=lion", "model.dropout=0.1");
        check(null, "parallel.zero_stage=2");
        check(null, "parallel.zero_stage=3");
        check(null, "train.precision=fp16", "train.grad_accum_steps=2");
        check(null, "train.precision=bf16");
    }

    @Test
    void unsupportedSettingsAreRefusedByName() {
        check("model.arch llama", "model.arch=llama", "model.bias=false");
        check("lora", "lora.rank=4");
        check("train.recompute", "train.recompute=full");
        check("optim.optimizer lamb", "optim.optimizer=lamb");
        check("averaging", "averaging.ema_decay=0.99");
        check("train.layer_drop", "train.layer_drop=0.1");
    }
}
