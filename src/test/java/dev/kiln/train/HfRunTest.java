package dev.kiln.train;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import dev.kiln.autograd.Tape;
import dev.kiln.hf.HfDirectory;
import dev.kiln.hf.HfFixtures;
import dev.kiln.hf.HfInterchange;
import dev.kiln.KilnException;
import dev.kiln.nn.models.Gpt;
import dev.kiln.nn.models.GptConfig;
import dev.kiln.tensor.MemoryScope;
import dev.kiln.tensor.Safetensors;
import dev.kiln.tensor.Tensor;
import dev.kiln.train.config.ConfigLoader;
import dev.kiln.train.config.RunConfig;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.PrintStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * kiln export --hf and kiln import through the CLI: a Kiln run goes to a Hugging Face directory and back bit for
 * bit (weights, logits, evaluation), an HF directory written by transformers becomes a run that evaluates, samples
 * and continues training.
 */
class HfRunTest {
    @TempDir
    Path tmp;

    /** Import options like SmallRuns' run (data and runs under tmp), without the model keys config.json fixes. */
    private List<String> importArgs(Path hfDir, String name, int maxIters) {
        List<String> a = new ArrayList<>(List.of("import", hfDir.toString(), "--name", name));
        for (String s : List.of("train.batch_size=4", "train.max_iters=" + maxIters, "train.eval_interval=50", "train.eval_iters=2",
                "train.final_eval_iters=4", "train.checkpoint_interval=50", "train.sample_tokens=20", "train.threads=2",
                "train.out_dir=" + tmp.resolve("runs"), "data.dir=" + tmp.resolve("data"), "optim.warmup_iters=10", "optim.lr_decay_iters=300")) {
            a.add("--set");
            a.add(s);
        }
        return a;
    }

    /** A run's latest checkpoint loaded into a GPT built from its own config. */
    private static Gpt load(Path checkpoint) {
        RunConfig cfg = ConfigLoader.fromJson(CheckpointStore.config(checkpoint).toString(), checkpoint.toString());
        Gpt m = (Gpt) RunSetup.buildModel(cfg);
        CheckpointStore.load(checkpoint, m, null, List.of());
        return m;
    }

    private static int[] rawBits(Tensor t) {
        float[] f = t.toFloatArray();
        int[] b = new int[f.length];
        for (int i = 0; i < f.length; i++) b[i] = Float.floatToRawIntBits(f[i]);
        return b;
    }

    private static double evalLoss(String out) {
        Matcher m = Pattern.compile("val loss ([0-9.]+) over").matcher(out);
        assertTrue(m.find(), out);
        return Double.parseDouble(m.group(1));
    }

    private static Trainer.Result resume(Path runDir) {
        RunConfig cfg = ConfigLoader.load(runDir.resolve("config.yaml"), List.of());
        return new Trainer(cfg, true, new PrintStream(new ByteArrayOutputStream()), false).run();
    }

    private static double mean(List<Double> xs) {
        return xs.stream().mapToDouble(Double::doubleValue).average().orElseThrow();
    }

    @Test
    void aKilnRunGoesToHuggingFaceAndBackBitForBit() throws IOException {
        Trainer.Result base = SmallRuns.train(tmp, "base", 30, false);
        Path hf = tmp.resolve("hf-out");
        SmallRuns.Cli c = SmallRuns.cli("export", "--run", base.runDir().toString(), "--hf", "--out", hf.toString());
        assertEquals(0, c.code(), c.err());
        JsonNode config = new ObjectMapper().readTree(hf.resolve("config.json").toFile());
        assertEquals("GPT2LMHeadModel", config.path("architectures").get(0).asText());
        assertEquals(2, config.path("n_layer").asInt());
        assertEquals(32, config.path("n_embd").asInt());
        assertEquals(32, config.path("n_positions").asInt());
        assertEquals(65, config.path("vocab_size").asInt());
        assertEquals("gelu_new", config.path("activation_function").asText());
        assertTrue(Files.isRegularFile(hf.resolve("generation_config.json")));

        c = SmallRuns.cli(importArgs(hf, "back", 60).toArray(String[]::new));
        assertEquals(0, c.code(), c.err());
        assertTrue(c.out().contains("kiln train --config"), c.out());
        Path orig = new CheckpointStore(base.runDir()).latest().orElseThrow();
        Path back = new CheckpointStore(tmp.resolve("runs/back")).latest().orElseThrow();
        assertTrue(back.endsWith("step-000000"), back.toString());

        // every parameter, raw bits
        try (var scope = MemoryScope.open()) {
            Map<String, Tensor> a = Safetensors.read(orig.resolve(CheckpointStore.MODEL_FILE)).tensors();
            Map<String, Tensor> b = Safetensors.read(back.resolve(CheckpointStore.MODEL_FILE)).tensors();
            assertEquals(a.keySet(), b.keySet());
            a.forEach((k, t) -> assertArrayEquals(rawBits(t), rawBits(b.get(k)), k));
        }
        // the same logits, exactly
        try (var scope = MemoryScope.open(); var ng = Tape.noGradScope()) {
            int[] ids = new int[2 * 32];
            for (int i = 0; i < ids.length; i++) ids[i] = (i * 7 + 3) % 65;
            Tensor idx = Tensor.ofInts(ids, 2, 32);
            Gpt m1 = load(orig), m2 = load(back);
            m1.train(false);
            m2.train(false);
            assertArrayEquals(rawBits(m1.forward(idx)), rawBits(m2.forward(idx)));
        }
        // kiln eval gives the same loss; kiln sample works on the imported run
        SmallRuns.Cli e1 = SmallRuns.cli("eval", "--run", base.runDir().toString()), e2 = SmallRuns.cli("eval", "--run", tmp.resolve("runs/back").toString());
        assertEquals(0, e2.code(), e2.err());
        assertEquals(evalLoss(e1.out()), evalLoss(e2.out()));
        SmallRuns.Cli s = SmallRuns.cli("sample", "--run", tmp.resolve("runs/back").toString(), "--tokens", "20");
        assertEquals(0, s.code(), s.err());
        assertTrue(s.out().strip().length() > 0);

        // training continues from the imported weights: the first loss is that of the trained model, and it keeps falling
        Trainer.Result r = resume(tmp.resolve("runs/back"));
        assertEquals(0, r.firstStep());
        assertEquals(60, r.losses().size());
        assertTrue(r.losses().stream().allMatch(Double::isFinite));
        double firstBack = r.losses().getFirst(), lastBase = base.losses().getLast();
        System.out.printf("HfRunTest: base run's last loss %.4f; the imported run's first %.4f, mean of its last 10 %.4f%n",
                lastBase, firstBack, mean(r.losses().subList(50, 60)));
        assertTrue(Math.abs(firstBack - lastBase) < 0.5, "the imported model starts where the base run ended, not from scratch: " + firstBack + " vs " + lastBase);
        assertTrue(mean(r.losses().subList(50, 60)) < mean(r.losses().subList(0, 10)), r.losses().toString());
        // … exactly as a fine-tune started from the exported directory in one go (lora.init_from with rank 0)
        Trainer.Result ft = SmallRuns.train(tmp, "ft", 60, false, "lora.init_from=" + hf);
        assertEquals(ft.losses(), r.losses());
        assertEquals(ft.finalValLoss(), r.finalValLoss());
    }

    @Test
    void aTransformersDirectoryBecomesARunThatTrains() throws IOException {
        Path hf = HfFixtures.fixture("gpt2");
        SmallRuns.Cli c = SmallRuns.cli(importArgs(hf, "fromhf", 100).toArray(String[]::new));
        assertEquals(0, c.code(), c.err());
        Path ckpt = new CheckpointStore(tmp.resolve("runs/fromhf")).latest().orElseThrow();
        RunConfig cfg = ConfigLoader.load(tmp.resolve("runs/fromhf/config.yaml"), List.of());
        assertEquals(new GptConfig(2, 4, 32, 32, 65, 0.1, true), cfg.model(), "the shape from config.json, dropout from resid_pdrop");
        // the checkpoint computes transformers' logits
        try (var scope = MemoryScope.open(); var ng = Tape.noGradScope()) {
            Gpt m = load(ckpt);
            m.train(false);
            Map<String, Tensor> io = Safetensors.read(HfFixtures.fixture("gpt2_io.safetensors")).tensors();
            float[] kiln = m.forward(io.get("tokens")).toFloatArray(), want = io.get("logits").toFloatArray();
            double max = 0;
            for (int i = 0; i < want.length; i++) max = Math.max(max, Math.abs(kiln[i] - want[i]));
            assertTrue(max <= 1e-4, "max |Δlogit| " + max);
        }
        assertEquals(0, SmallRuns.cli("eval", "--run", tmp.resolve("runs/fromhf").toString()).code());
        assertEquals(0, SmallRuns.cli("sample", "--run", tmp.resolve("runs/fromhf").toString(), "--tokens", "10").code());

        Trainer.Result r = resume(tmp.resolve("runs/fromhf"));
        assertEquals(100, r.losses().size());
        double first = mean(r.losses().subList(0, 10)), last = mean(r.losses().subList(90, 100));
        System.out.printf("HfRunTest: transformers' random GPT-2 fine-tuned on Shakespeare: loss %.4f (first 10 steps) -> %.4f (last 10), final val %.4f%n",
                first, last, r.finalValLoss());
        assertTrue(first > 3.5 && first < 6, "a random 65-token model starts near ln 65 = 4.17: " + first);
        assertTrue(last < first - 0.5, "the loss falls: " + first + " -> " + last);
    }

    @Test
    void loraFineTunesAHuggingFaceDirectoryOverItsFrozenWeights() {
        Path hf = HfFixtures.fixture("gpt2");
        Trainer.Result r = SmallRuns.train(tmp, "lora", 40, false, "model.n_head=4", "lora.rank=4", "lora.targets=c_attn,c_proj,c_fc",
                "lora.init_from=" + hf, "optim.learning_rate=3e-3");
        assertTrue(r.losses().stream().allMatch(Double::isFinite));
        assertTrue(mean(r.losses().subList(30, 40)) < mean(r.losses().subList(0, 10)), r.losses().toString());
        try (var scope = MemoryScope.open()) { // the frozen base is transformers' weights, bit for bit
            Map<String, Tensor> want = HfDirectory.read(hf).tensors();
            Map<String, Tensor> got = Safetensors.read(new CheckpointStore(r.runDir()).latest().orElseThrow().resolve(CheckpointStore.MODEL_FILE)).tensors();
            want.forEach((k, t) -> assertArrayEquals(rawBits(t), rawBits(got.get(k)), k));
            assertTrue(got.keySet().stream().anyMatch(k -> k.endsWith("lora_A.weight")));
        }
        TrainingException e = assertThrows(TrainingException.class, () -> SmallRuns.train(tmp, "lora2", 5, false, "lora.rank=4", "lora.init_from=" + hf));
        assertTrue(e.getMessage().contains("lora.init_from") && e.getMessage().contains("n_head 4") && e.getMessage().contains("model.n_head 2"), e.getMessage());
    }

    @Test
    void importRefusesWhatItCannotHonour() {
        Path hf = HfFixtures.fixture("gpt2");
        List<String> args = importArgs(hf, "x", 10);
        args.addAll(List.of("--set", "model.n_layer=3"));
        SmallRuns.Cli c = SmallRuns.cli(args.toArray(String[]::new));
        assertEquals(2, c.code());
        assertTrue(c.err().contains("--set model.n_layer") && c.err().contains("config.json"), c.err());
        assertEquals(1, c.err().strip().lines().count(), c.err());

        assertEquals(0, SmallRuns.cli(importArgs(hf, "y", 10).toArray(String[]::new)).code());
        c = SmallRuns.cli(importArgs(hf, "y", 10).toArray(String[]::new));
        assertEquals(2, c.code());
        assertTrue(c.err().contains("already has checkpoints"), c.err());

        c = SmallRuns.cli(importArgs(HfFixtures.fixture("llama"), "l", 10).toArray(String[]::new));
        assertEquals(2, c.code());
        assertTrue(c.err().contains("model_type llama (LlamaForCausalLM) is read and validated"), c.err());

        c = SmallRuns.cli(importArgs(tmp.resolve("missing"), "z", 10).toArray(String[]::new));
        assertEquals(2, c.code());
        assertTrue(c.err().contains("not a directory"), c.err());

        KilnException e = assertThrows(KilnException.class, () -> HfInterchange.gpt2Spec(new GptConfig(2, 2, 32, 32, 65, 0, true).withInit("mup", 16), 2, null));
        assertTrue(e.getMessage().contains("model.init is mup"), e.getMessage());
        e = assertThrows(KilnException.class, () -> HfInterchange.gpt2Spec(new GptConfig(2, 2, 32, 32, 65, 0, false), 2, null));
        assertTrue(e.getMessage().contains("model.bias is false"), e.getMessage());
        c = SmallRuns.cli("export", "--run", tmp.resolve("runs/y").toString(), "--hf", "--out", hf.resolve("config.json").toString());
        assertEquals(2, c.code());
        assertTrue(c.err().contains("is a file"), c.err());
    }
}
