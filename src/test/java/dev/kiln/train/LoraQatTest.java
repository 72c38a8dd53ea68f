package dev.kiln.train;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import dev.kiln.autograd.Tape;
import dev.kiln.data.TokenShard;
import dev.kiln.nn.Linear;
import dev.kiln.nn.Lora;
import dev.kiln.nn.Parameter;
import dev.kiln.nn.Qat;
import dev.kiln.nn.models.Gpt;
import dev.kiln.nn.models.GptConfig;
import dev.kiln.nn.models.GptHfFormat;
import dev.kiln.ops.FakeQuant;
import dev.kiln.tensor.DType;
import dev.kiln.tensor.MemoryScope;
import dev.kiln.tensor.Safetensors;
import dev.kiln.tensor.Tensor;
import dev.kiln.train.config.ConfigException;
import dev.kiln.train.config.ConfigLoader;
import dev.kiln.train.config.RunConfig;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.PrintStream;
import java.io.UncheckedIOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.TreeSet;
import java.util.stream.Collectors;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * LoRA fine-tuning and quantization-aware training through the real trainer and {@code kiln export}: the
 * frozen base stays bit-identical, only adapters get optimizer state, the memory account, resume, the
 * merged / adapter-only / int8 exports, and QAT's int8 export reproducing the trained model exactly.
 */
class LoraQatTest {
    @TempDir
    Path tmp;

    private final PrintStream quiet = new PrintStream(new ByteArrayOutputStream());
    private static final String[] LORA = {"lora.rank=4", "lora.alpha=8", "lora.targets=c_attn,c_proj,c_fc", "optim.learning_rate=3e-3"};

    private RunConfig config(String name, int maxIters, String... extra) {
        return SmallRuns.config(tmp, name, maxIters, extra);
    }

    private Trainer.Result train(String name, int maxIters, boolean resume, String... extra) {
        return new Trainer(config(name, maxIters, extra), resume, quiet, false).run();
    }

    private static String[] plus(String[] a, String... b) {
        List<String> out = new ArrayList<>(List.of(a));
        out.addAll(List.of(b));
        return out.toArray(String[]::new);
    }

    private static JsonNode account(Trainer.Result r) {
        try {
            return MetricsLog.readAll(r.runDir().resolve("metrics.jsonl")).stream().filter(m -> m.has("trainable_params")).findFirst().orElseThrow();
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }

    private static Path last(Trainer.Result r) {
        return r.runDir().resolve(String.format("checkpoints/step-%06d", r.lastStep()));
    }

    private static double mean(List<Double> xs) {
        return xs.stream().mapToDouble(Double::doubleValue).average().orElseThrow();
    }

    /** The trained model of a run (its config's LoRA / QAT as trained), from its newest checkpoint. */
    private Gpt load(Trainer.Result r, RunConfig cfg) {
        RunConfig c = cfg.withModel(cfg.model().withVocabSize(65));
        Gpt m = (Gpt) RunSetup.buildModel(c);
        var st = CheckpointStore.load(last(r), m, null, List.of());
        if (c.qat().enabled()) Qat.setActive(m, c.qat().activeAfter(st.step()));
        return m;
    }

    private double valLoss(Gpt m, String... data) {
        RunConfig c = config("eval", 1, data);
        try (TokenShard val = Workspace.prepareData(c.data()).openVal()) {
            return Evaluation.evaluate(m, val, c.train().batch_size(), c.model().block_size(), c.train().final_eval_iters(), c.train().seed() + 1);
        }
    }

    /**
     * The fine-tuning task: Shakespeare with every line reversed. Same characters, so the same vocabulary, but a
     * base trained on the forward text does badly on it: there is something for the adapters to learn.
     */
    private String[] reversedData() throws IOException {
        Path rev = tmp.resolve("reversed.txt");
        if (!Files.exists(rev))
            Files.writeString(rev, Files.readAllLines(Workspace.resolve("data/tinyshakespeare.txt")).stream()
                    .map(l -> new StringBuilder(l).reverse().toString()).collect(Collectors.joining("\n")) + "\n");
        return new String[]{"data.corpus=" + rev, "data.dir=" + tmp.resolve("data-reversed")};
    }

    @Test
    void loraFineTuneTrainsOnlyTheAdaptersOverABitIdenticalBaseAndLowersTheLoss() throws IOException {
        String[] rev = reversedData();
        Trainer.Result base = train("base", 200, false);
        String[] ftArgs = plus(plus(LORA, rev), "lora.init_from=" + base.runDir());
        Trainer.Result ft = train("ft", 100, false, ftArgs);
        Trainer.Result full = train("full", 100, false, plus(rev, "lora.init_from=" + base.runDir(), "optim.learning_rate=3e-4", "optim.min_lr=3e-5"));

        // fine-tuning lowers the loss on the new text: the base's val loss there vs the fine-tuned models', same batches
        double baseRev = valLoss(load(base, config("base", 200)), rev);
        System.out.printf("LoraQatTest: reversed-text val loss: base %.4f (%.4f on its own text) → LoRA r4 %.4f, full fine-tune %.4f; LoRA train loss first 10 %.4f, last 10 %.4f%n",
                baseRev, base.finalValLoss(), ft.finalValLoss(), full.finalValLoss(), mean(ft.losses().subList(0, 10)), mean(ft.losses().subList(90, 100)));
        assertTrue(ft.finalValLoss() < baseRev - 0.2, "LoRA fine-tune val " + ft.finalValLoss() + " vs base " + baseRev);
        assertTrue(full.finalValLoss() < baseRev - 0.2, "full fine-tune val " + full.finalValLoss() + " vs base " + baseRev);
        assertTrue(mean(ft.losses().subList(90, 100)) < mean(ft.losses().subList(0, 10)) - 0.1);

        // the base is bit-identical after training; adapters moved
        Map<String, Tensor> before = Safetensors.read(last(base).resolve(CheckpointStore.MODEL_FILE)).tensors();
        Map<String, Tensor> after = Safetensors.read(last(ft).resolve(CheckpointStore.MODEL_FILE)).tensors();
        Set<String> adapters = new TreeSet<>(after.keySet());
        adapters.removeIf(k -> !Lora.isAdapter(k));
        assertEquals(2 * 4 * 2, adapters.size(), "A and B on 4 Linear layers of 2 blocks");
        before.forEach((k, t) -> assertArrayEquals(t.toFloatArray(), after.get(k).toFloatArray(), "base tensor " + k + " changed"));
        assertEquals(before.size() + adapters.size(), after.size());
        assertTrue(Arrays.stream(after.get("transformer.h.0.attn.c_attn.lora_B.weight").toDoubleArray()).anyMatch(v -> v != 0), "B trained");

        // only adapters have optimizer state
        Set<String> state = new TreeSet<>(Safetensors.readHeader(last(ft).resolve(CheckpointStore.OPTIMIZER_FILE)).keySet());
        Set<String> want = new TreeSet<>();
        for (String a : adapters) want.addAll(List.of("exp_avg." + a, "exp_avg_sq." + a));
        assertEquals(want, state);

        // the memory account: r·(in + out) per adapted layer = 16·r·C per block; AdamW holds two fp32 moments per trainable value
        JsonNode lora = account(ft), all = account(full);
        long params = all.get("params").asLong();
        assertEquals(2 * 16 * 4 * 32, lora.get("trainable_params").asLong());
        assertEquals(params + 2 * 16 * 4 * 32, lora.get("params").asLong());
        assertEquals(8 * lora.get("trainable_params").asLong(), lora.get("optimizer_state_bytes").asLong());
        assertEquals(4 * lora.get("trainable_params").asLong(), lora.get("grad_bytes").asLong());
        assertEquals(params, all.get("trainable_params").asLong());
        assertEquals(8 * params, all.get("optimizer_state_bytes").asLong());
        System.out.printf("LoraQatTest: memory account (L2 C32): LoRA r4 %,d trainable of %,d, optimizer state %,d bytes; full fine-tune %,d trainable, %,d bytes (%.1f× more)%n",
                lora.get("trainable_params").asLong(), lora.get("params").asLong(), lora.get("optimizer_state_bytes").asLong(),
                all.get("trainable_params").asLong(), all.get("optimizer_state_bytes").asLong(),
                all.get("optimizer_state_bytes").asDouble() / lora.get("optimizer_state_bytes").asDouble());

        // a resumed LoRA run continues exactly (the base comes from the checkpoint, not init_from)
        Trainer.Result half = train("ft-resumed", 50, false, ftArgs);
        Trainer.Result rest = train("ft-resumed", 100, true, ftArgs);
        List<Double> joined = new ArrayList<>(half.losses());
        joined.addAll(rest.losses());
        assertEquals(ft.losses(), joined, "50 + resume 50 = 100 in one go, bit for bit");
        assertEquals(Double.doubleToRawLongBits(ft.finalValLoss()), Double.doubleToRawLongBits(rest.finalValLoss()));

        // kiln export --merged: a plain GPT-2 file computing what base + adapters compute
        Path merged = tmp.resolve("export/merged.safetensors");
        SmallRuns.Cli c = SmallRuns.cli("export", "--run", ft.runDir().toString(), "--out", merged.toString(), "--merged");
        assertEquals(0, c.code(), c.err());
        GptConfig mc = config("x", 1).model().withVocabSize(65);
        Gpt plain = new Gpt(mc, 0, DType.F32);
        try (var scope = MemoryScope.open()) {
            Map<String, Tensor> m = Safetensors.read(merged).tensors();
            assertTrue(m.keySet().stream().noneMatch(Lora::isAdapter));
            GptHfFormat.load(plain, m, merged.toString());
        }
        double mergedVal = valLoss(plain, rev);
        System.out.printf("LoraQatTest: merged export val loss %.7f vs the LoRA run's %.7f%n", mergedVal, ft.finalValLoss());
        assertEquals(ft.finalValLoss(), mergedVal, 1e-5);

        // kiln export --adapter-only: PEFT names and shapes, adapter_config.json
        Path peft = tmp.resolve("export/peft/adapter_model.safetensors");
        c = SmallRuns.cli("export", "--run", ft.runDir().toString(), "--out", peft.toString(), "--adapter-only");
        assertEquals(0, c.code(), c.err());
        Map<String, List<Integer>> got = new LinkedHashMap<>();
        Safetensors.readHeader(peft).forEach((k, h) -> got.put(k, Arrays.stream(h.shape()).boxed().toList()));
        Map<String, List<Integer>> expected = new LinkedHashMap<>();
        for (int l = 0; l < 2; l++) {
            String p = "base_model.model.transformer.h." + l + ".";
            expected.put(p + "attn.c_attn.lora_A.weight", List.of(4, 32));
            expected.put(p + "attn.c_attn.lora_B.weight", List.of(96, 4));
            expected.put(p + "attn.c_proj.lora_A.weight", List.of(4, 32));
            expected.put(p + "attn.c_proj.lora_B.weight", List.of(32, 4));
            expected.put(p + "mlp.c_fc.lora_A.weight", List.of(4, 32));
            expected.put(p + "mlp.c_fc.lora_B.weight", List.of(128, 4));
            expected.put(p + "mlp.c_proj.lora_A.weight", List.of(4, 128));
            expected.put(p + "mlp.c_proj.lora_B.weight", List.of(32, 4));
        }
        assertEquals(new TreeSet<>(expected.keySet()), new TreeSet<>(got.keySet()));
        expected.forEach((k, s) -> assertEquals(s, got.get(k), k));
        JsonNode ac = new ObjectMapper().readTree(peft.resolveSibling("adapter_config.json").toFile());
        assertEquals(4, ac.get("r").asInt());
        assertEquals(8.0, ac.get("lora_alpha").asDouble());
        assertEquals(List.of("c_attn", "c_proj", "c_fc"), List.of(ac.get("target_modules").get(0).asText(), ac.get("target_modules").get(1).asText(),
                ac.get("target_modules").get(2).asText()));
        assertEquals("LORA", ac.get("peft_type").asText());
        c = SmallRuns.cli("export", "--run", base.runDir().toString(), "--out", tmp.resolve("x.safetensors").toString(), "--adapter-only");
        assertEquals(2, c.code());
        assertTrue(c.err().contains("no LoRA adapters"), c.err());

        // init_from: a run that holds adapters is refused (merge it first); its merged export works
        TrainingException e = assertThrows(TrainingException.class, () -> train("ft2", 5, false, plus(plus(LORA, rev), "lora.init_from=" + ft.runDir())));
        assertTrue(e.getMessage().contains("lora.init_from") && e.getMessage().contains("kiln export --merged"), e.getMessage());
        Trainer.Result again = train("ft3", 5, false, plus(plus(LORA, rev), "lora.init_from=" + merged));
        Gpt fromMerged = (Gpt) RunSetup.buildModel(config("y", 1, LORA).withModel(mc)); // B = 0: computes the merged model exactly
        RunSetup.loadBase(fromMerged, merged.toString(), quiet);
        assertEquals(Double.doubleToRawLongBits(mergedVal), Double.doubleToRawLongBits(valLoss(fromMerged, rev)));
        assertTrue(Double.isFinite(again.finalValLoss()));
    }

    /** The numbers the README quotes: the default job's model (L4 C128, vocab 65) with rank-4 adapters vs full fine-tuning. */
    @Test
    void memoryAccountOfTheDefaultModel() {
        try (var scope = MemoryScope.open()) {
            RunConfig full = ConfigLoader.load(null, List.of("model.vocab_size=65"));
            RunConfig lora = ConfigLoader.load(null, List.of("model.vocab_size=65", "lora.rank=4", "lora.targets=c_attn,c_proj,c_fc"));
            Gpt fm = (Gpt) RunSetup.buildModel(full), lm = (Gpt) RunSetup.buildModel(lora);
            MemoryAccount f = MemoryAccount.of(fm, RunSetup.optimizer(full.optim(), fm)), l = MemoryAccount.of(lm, RunSetup.optimizer(lora.optim(), lm));
            System.out.println("LoraQatTest: default model, full fine-tune: " + f);
            System.out.println("LoraQatTest: default model, LoRA r=4 on c_attn,c_proj,c_fc: " + l);
            assertEquals(809_856, f.parameters());
            assertEquals(809_856, f.trainableParameters());
            assertEquals(6_478_848, f.optimizerStateBytes());
            assertEquals(809_856 + 32_768, l.parameters());
            assertEquals(32_768, l.trainableParameters()); // 4 blocks × 16·r·C = 4 × 16 × 4 × 128
            assertEquals(262_144, l.optimizerStateBytes());
            assertEquals(131_072, l.gradientBytes());
        }
    }

    @Test
    void qatInt8ExportReproducesTheTrainedWeightsAndValLossExactly() throws IOException {
        Trainer.Result plain = train("plain", 60, false);
        Trainer.Result qat = train("qat", 60, false, "qat.weights=true");
        assertTrue(qat.losses().stream().allMatch(Double::isFinite));
        assertNotEquals(plain.losses(), qat.losses(), "fake quantisation changes what is computed");
        assertTrue(mean(qat.losses().subList(50, 60)) < mean(qat.losses().subList(0, 10)) - 0.1, "QAT trains");
        System.out.printf("LoraQatTest: 60 steps, val loss fp32 %.4f, QAT int8 weights %.4f%n", plain.finalValLoss(), qat.finalValLoss());

        Path file = tmp.resolve("export/int8.safetensors");
        SmallRuns.Cli c = SmallRuns.cli("export", "--run", qat.runDir().toString(), "--out", file.toString(), "--int8");
        assertEquals(0, c.code(), c.err());
        var header = Safetensors.readHeader(file);
        long int8 = header.values().stream().filter(h -> h.dtype() == DType.I8).count();
        assertEquals(2 * 4, int8, "c_attn, attn.c_proj, c_fc, mlp.c_proj of 2 blocks");
        assertEquals(DType.I8, header.get("transformer.h.1.mlp.c_fc.weight").dtype());
        assertArrayEquals(new int[]{32, 128}, header.get("transformer.h.1.mlp.c_fc.weight").shape()); // HF Conv1D layout [in, out]
        assertArrayEquals(new int[]{128}, header.get("transformer.h.1.mlp.c_fc.weight_scale").shape()); // one per output channel
        assertEquals(DType.F32, header.get("transformer.h.1.mlp.c_fc.weight_scale").dtype());
        assertEquals(DType.F32, header.get("transformer.wte.weight").dtype());
        assertTrue(Files.size(file) < Files.size(last(qat).resolve(CheckpointStore.MODEL_FILE)), "int8 is smaller");

        // dequantised, the file holds exactly the weights the QAT model computed with
        Gpt trained = load(qat, config("qat", 60, "qat.weights=true"));
        Gpt exported = new Gpt(trained.config, 0, DType.F32);
        try (var scope = MemoryScope.open(); var ng = Tape.noGradScope()) {
            GptHfFormat.load(exported, GptHfFormat.dequantizeInt8(Safetensors.read(file).tensors(), file.toString()), file.toString());
            Map<String, Linear> tl = Lora.linears(trained), el = Lora.linears(exported);
            assertEquals(8, tl.size());
            tl.forEach((path, l) -> assertArrayEquals(FakeQuant.perChannel(l.weight, 8).toFloatArray(), el.get(path).weight.toFloatArray(), path));
            Map<String, Parameter> tp = trained.namedParameters();
            exported.namedParameters().forEach((k, p) -> {
                if (!tl.containsKey(k.substring(0, k.lastIndexOf('.'))) || k.endsWith(".bias"))
                    assertArrayEquals(tp.get(k).toFloatArray(), p.toFloatArray(), k + " is exported as is");
            });
        }
        // … so the exported model's val loss is the QAT model's, bit for bit
        double exportedVal = valLoss(exported), trainedVal = valLoss(trained);
        System.out.printf("LoraQatTest: val loss of the int8 export %.17g, of the QAT model %.17g, reported by the run %.17g%n", exportedVal, trainedVal, qat.finalValLoss());
        assertEquals(Double.doubleToRawLongBits(qat.finalValLoss()), Double.doubleToRawLongBits(trainedVal));
        assertEquals(Double.doubleToRawLongBits(trainedVal), Double.doubleToRawLongBits(exportedVal));
    }

    @Test
    void qatStartsAtStartStepAndQuantisesActivationsToo() {
        Trainer.Result plain = train("plain", 20, false);
        Trainer.Result qat = train("qat-act", 20, false, "qat.weights=true", "qat.activations=true", "qat.start_step=10");
        assertEquals(plain.losses().subList(0, 10), qat.losses().subList(0, 10), "full precision before qat.start_step, bit for bit");
        // from step 11 on the model is quantised: the losses move (by little: int8 rounding of a young model's small weights
        // and activations; one step's fp32 loss may even round to the same value)
        long differing = 0;
        for (int i = 10; i < 20; i++) if (!plain.losses().get(i).equals(qat.losses().get(i))) differing++;
        System.out.printf("LoraQatTest: qat.start_step=10: steps 11-20 differ from fp32 in %d of 10; e.g. step 20 %.7f vs %.7f%n", differing,
                qat.losses().get(19), plain.losses().get(19));
        assertTrue(differing >= 8, differing + " of 10 quantised steps differ");
        assertNotEquals(plain.finalValLoss(), qat.finalValLoss());
        assertTrue(qat.losses().stream().allMatch(Double::isFinite));
    }

    @Test
    void badSettingsNameTheirKey() {
        ConfigException e = assertThrows(ConfigException.class, () -> config("bad", 1, "qat.weights=true", "lora.rank=4"));
        assertEquals("qat.weights", e.key());
        assertEquals("qat.bits", assertThrows(ConfigException.class, () -> config("bad", 1, "qat.bits=9")).key());
        assertEquals("lora.rank", assertThrows(ConfigException.class, () -> config("bad", 1, "lora.rank=-1")).key());
        assertEquals("lora.targets", assertThrows(ConfigException.class, () -> config("bad", 1, "lora.rank=2", "lora.targets=''")).key());
        TrainingException t = assertThrows(TrainingException.class, () -> train("bad", 1, false, "lora.rank=2", "lora.targets=c_attn,q_proj"));
        assertTrue(t.getMessage().startsWith("lora.targets: ") && t.getMessage().contains("q_proj"), t.getMessage());
        t = assertThrows(TrainingException.class, () -> train("bad2", 1, false, "lora.rank=2", "lora.init_from=" + tmp.resolve("nowhere")));
        assertTrue(t.getMessage().startsWith("lora.init_from: ") && t.getMessage().contains("nowhere"), t.getMessage());
    }
}
