package dev.kiln.train;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import dev.kiln.autograd.Tape;
import dev.kiln.hf.HfDirectory;
import dev.kiln.hf.HfInterchange;
import dev.kiln.hf.LlamaSpec;
import dev.kiln.nn.models.Gpt;
import dev.kiln.nn.models.GptConfig;
import dev.kiln.tensor.DType;
import dev.kiln.tensor.MemoryScope;
import dev.kiln.tensor.Rng;
import dev.kiln.tensor.Safetensors;
import dev.kiln.tensor.Tensor;
import dev.kiln.train.config.ConfigLoader;
import dev.kiln.train.config.RunConfig;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * Kiln ↔ transformers itself, through scripts/hf_check.py: Kiln-exported GPT-2 directories load in
 * GPT2LMHeadModel with the same fp32 logits (max |Δ| ≤ 1e-4, the bar), a random transformers GPT-2 imported
 * by kiln import gives transformers' logits, and the Llama directory Kiln writes (config.json and tensor list, from
 * LlamaSpec alone) loads in LlamaForCausalLM with every weight used and the config read as written. Runs only when
 * KILN_HF_PYTHON names a python with transformers, torch and safetensors (not in CI).
 */
class HfTransformersTest {
    private static String python;

    @TempDir
    Path tmp;

    @BeforeAll
    static void needsPython() {
        python = System.getenv("KILN_HF_PYTHON");
        Assumptions.assumeTrue(python != null && !python.isBlank(),
                "KILN_HF_PYTHON is not set: skipping the transformers checks (set it to a python with transformers, e.g. /work/hfenv/bin/python)");
    }

    /** Runs scripts/hf_check.py and returns its JSON line. */
    private static JsonNode hfCheck(String... args) throws IOException, InterruptedException {
        List<String> cmd = new ArrayList<>(List.of(python, "scripts/hf_check.py"));
        cmd.addAll(List.of(args));
        Path err = Files.createTempFile("hf_check", ".err");
        try {
            Process p = new ProcessBuilder(cmd).redirectError(err.toFile()).start(); // stderr to a file: a full pipe cannot stall it
            p.getOutputStream().close();
            String out = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
            assertTrue(p.waitFor(600, TimeUnit.SECONDS), "hf_check.py did not finish");
            assertEquals(0, p.exitValue(), "hf_check.py " + String.join(" ", args) + ":\n" + out + Files.readString(err));
            String last = out.strip().lines().reduce((a, b) -> b).orElseThrow();
            return new ObjectMapper().readTree(last);
        } finally {
            Files.deleteIfExists(err);
        }
    }

    /** Fixed token ids (B, T) below {@code vocab}. */
    private static Tensor tokens(int b, int t, int vocab, long seed) {
        Rng rng = new Rng(seed);
        int[] ids = new int[b * t];
        for (int i = 0; i < ids.length; i++) ids[i] = (int) Math.floorMod(rng.nextLong(), (long) vocab);
        return Tensor.ofInts(ids, b, t);
    }

    /** Writes tokens and Kiln's logits of them, as hf_check.py compare reads them. */
    private static void writeIo(Path io, Gpt model, Tensor tokens) {
        try (var ng = Tape.noGradScope()) {
            model.train(false);
            Map<String, Tensor> t = new LinkedHashMap<>();
            t.put("tokens", tokens);
            t.put("logits", model.forward(tokens));
            Safetensors.write(io, t, Map.of());
        }
    }

    private static double compare(Path dir, Path io, String what) throws IOException, InterruptedException {
        JsonNode r = hfCheck("compare", dir.toString(), io.toString());
        assertEquals("GPT2LMHeadModel", r.path("model").asText());
        double d = r.path("max_abs_diff").asDouble(Double.NaN);
        System.out.printf("HfTransformersTest: %s: Kiln -> transformers %s, max |Δlogit| %.3g (max |logit| %.3g)%n", what, r.path("model").asText(), d,
                r.path("max_abs_logit").asDouble());
        assertTrue(d <= 1e-4, what + ": max |Δlogit| " + d);
        return d;
    }

    @Test
    void kilnExportsLoadInTransformersWithTheSameLogits() throws Exception {
        // a trained run, exported by the CLI
        Trainer.Result run = SmallRuns.train(tmp, "base", 60, false);
        Path hf = tmp.resolve("hf-run");
        assertEquals(0, SmallRuns.cli("export", "--run", run.runDir().toString(), "--hf", "--out", hf.toString()).code());
        try (var scope = MemoryScope.open()) {
            Path ckpt = new CheckpointStore(run.runDir()).latest().orElseThrow();
            RunConfig cfg = ConfigLoader.fromJson(CheckpointStore.config(ckpt).toString(), ckpt.toString());
            Gpt m = (Gpt) RunSetup.buildModel(cfg);
            CheckpointStore.load(ckpt, m, null, List.of());
            writeIo(tmp.resolve("run-io.safetensors"), m, tokens(2, 32, 65, 1));
        }
        compare(hf, tmp.resolve("run-io.safetensors"), "trained run L2 C32 T32 V65 (kiln export --hf)");

        // the default job's shape and a GPT-2 BPE vocabulary, random weights with every tensor perturbed
        for (GptConfig c : List.of(new GptConfig(4, 4, 128, 64, 65, 0.0, true), new GptConfig(2, 2, 64, 64, 50257, 0.0, true))) {
            try (var scope = MemoryScope.open()) {
                Gpt m = new Gpt(c, 7, DType.F32);
                Rng rng = new Rng(3);
                m.namedParameters().values().forEach(p -> {
                    for (long i = 0; i < p.numel(); i++) p.setFlat(i, p.getFlat(i) + 0.05 * rng.nextGaussian());
                });
                Path dir = tmp.resolve("hf-" + c.n_embd());
                HfDirectory.HfModel out = HfInterchange.fromGpt(m, c.vocab_size() > 50256 ? 50256 : null);
                HfDirectory.write(dir, out.spec(), out.tensors());
                writeIo(tmp.resolve("io-" + c.n_embd() + ".safetensors"), m, tokens(2, c.block_size(), c.vocab_size(), 2));
                compare(dir, tmp.resolve("io-" + c.n_embd() + ".safetensors"),
                        String.format("random L%d C%d T%d V%d", c.n_layer(), c.n_embd(), c.block_size(), c.vocab_size()));
            }
        }
    }

    @Test
    void aTransformersGpt2ImportsWithTheSameLogits() throws Exception {
        Path dir = tmp.resolve("made"), io = tmp.resolve("made-io.safetensors");
        JsonNode made = hfCheck("make", dir.toString(), io.toString(), "--model-type", "gpt2", "--seed", "5", "--width", "128", "--layers", "4",
                "--heads", "4", "--context", "64");
        assertEquals("GPT2LMHeadModel", made.path("model").asText());
        SmallRuns.Cli c = SmallRuns.cli("import", dir.toString(), "--name", "made", "--set", "train.out_dir=" + tmp.resolve("runs"),
                "--set", "data.dir=" + tmp.resolve("data"));
        assertEquals(0, c.code(), c.err());
        try (var scope = MemoryScope.open(); var ng = Tape.noGradScope()) {
            Path ckpt = new CheckpointStore(tmp.resolve("runs/made")).latest().orElseThrow();
            RunConfig cfg = ConfigLoader.fromJson(CheckpointStore.config(ckpt).toString(), ckpt.toString());
            Gpt m = (Gpt) RunSetup.buildModel(cfg);
            CheckpointStore.load(ckpt, m, null, List.of());
            m.train(false);
            Map<String, Tensor> t = Safetensors.read(io).tensors();
            float[] kiln = m.forward(t.get("tokens")).toFloatArray(), want = t.get("logits").toFloatArray();
            double max = 0;
            for (int i = 0; i < want.length; i++) max = Math.max(max, Math.abs(kiln[i] - want[i]));
            System.out.printf("HfTransformersTest: random transformers GPT2LMHeadModel L4 C128 T64 V65 -> kiln import, max |Δlogit| %.3g%n", max);
            assertTrue(max <= 1e-4, "max |Δlogit| " + max);
        }
    }

    @Test
    void theLlamaDirectoryKilnWritesLoadsInTransformers() throws Exception {
        for (boolean tied : new boolean[]{false, true}) {
            LlamaSpec spec = new LlamaSpec(65, 64, 160, 2, 4, 2, 64, 1e-5, 500000.0, tied, null, null);
            Path dir = tmp.resolve("llama-" + tied);
            try (var scope = MemoryScope.open()) {
                Rng rng = new Rng(9);
                Map<String, Tensor> w = new LinkedHashMap<>();
                spec.tensorShapes().forEach((k, s) -> w.put(k, Tensor.randn(rng, 0.05, DType.F32, s)));
                HfDirectory.write(dir, spec, w);
                Safetensors.write(tmp.resolve("llama-io.safetensors"), Map.of("tokens", tokens(1, 16, 65, 4)), Map.of());
            }
            JsonNode r = hfCheck("compare", dir.toString(), tmp.resolve("llama-io.safetensors").toString());
            assertEquals("LlamaForCausalLM", r.path("model").asText());
            assertTrue(r.path("loaded").asBoolean(), r.toString());
            JsonNode cfg = r.path("config");
            assertEquals(2, cfg.path("num_key_value_heads").asInt());
            assertEquals(160, cfg.path("intermediate_size").asInt());
            assertEquals(1e-5, cfg.path("rms_norm_eps").asDouble());
            assertEquals(tied, cfg.path("tie_word_embeddings").asBoolean());
            double theta = cfg.has("rope_parameters") ? cfg.path("rope_parameters").path("rope_theta").asDouble() : cfg.path("rope_theta").asDouble();
            assertEquals(500000.0, theta, "rope_theta as written, not transformers' default");
            System.out.printf("HfTransformersTest: Llama directory from LlamaSpec (tied %s) loads in transformers %s: every weight used, config read as written%n",
                    tied, r.path("model").asText());
        }
    }
}
