package dev.kiln.train.config;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.kiln.KilnException;
import dev.kiln.nn.models.GptConfig;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

class ConfigLoaderTest {
    @TempDir
    Path dir;

    private Path write(String name, String text) throws IOException {
        Path p = dir.resolve(name);
        Files.writeString(p, text);
        return p;
    }

    /** Loads expecting failure; checks the message is one line and contains every fragment. */
    private static ConfigException fails(Path file, List<String> overrides, String... fragments) {
        ConfigException e = assertThrows(ConfigException.class, () -> ConfigLoader.load(file, overrides));
        String m = e.getMessage();
        assertFalse(m.contains("\n"), () -> "message spans lines: " + m);
        for (String f : fragments) assertTrue(m.contains(f), () -> "message lacks '" + f + "': " + m);
        return e;
    }

    // ---- defaults ------------------------------------------------------------------------------------

    @Test
    void defaultsAreNanoGptCpuShakespeareChar() {
        RunConfig d = RunConfig.defaults();
        assertEquals(new GptConfig(4, 4, 128, 64, 0, 0.0, true), d.model());
        assertEquals(new DataConfig("data/tinyshakespeare.txt", "char", "", "", "none"), d.data());
        assertEquals(new OptimConfig(1e-3, 1e-4, 100, 2000, 0.9, 0.99, 1e-8, 0.1, 1.0,
                "adamw", "cosine", 0.2, 0.9, false, 0.001, 0.0, "none", 0), d.optim());
        assertEquals(new TrainingConfig("shakespeare_char", "runs", 2000, 12, 250, 20, 200, 10, 500, 2, 1337L, 0,
                "\n", 300, "", "", true, 0, 0, 0.0, 0.0, 0, 0.0, 0.0, 0.001, 1.0, true, "none", 1, "cpu", "fp32", "dynamic", 2000, "none", "none", "", 2), d.train());
        assertEquals(new AveragingConfig(0.0, 0, 10, 0, 100), d.averaging());
        assertEquals(new GrowthConfig(0, 0, "copy"), d.growth());
        assertEquals("gpt2", d.model().init());
        assertEquals(new CurriculumConfig(0, 500, false, "sqrt", 0.1, 1000), d.curriculum());
        assertEquals(new LoraConfig(0, 8.0, "c_attn", 0.0, ""), d.lora());
        assertEquals(new QatConfig(8, false, false, 0), d.qat());
        assertEquals(new ParallelConfig(0, 0, 4.0, 60.0, 1, 1, "1f1b", 0, "consolidated", "auto"), d.parallel());
        assertEquals(d, d.validate());
        assertTrue(KilnException.class.isAssignableFrom(ConfigException.class));
    }

    @Test
    void noFileNoOverridesGivesDefaults() {
        assertEquals(RunConfig.defaults(), ConfigLoader.load(null, List.of()));
        assertEquals(RunConfig.defaults(), ConfigLoader.load(null, null));
    }

    @Test
    void keysListsEveryLeaf() {
        List<String> keys = ConfigLoader.keys();
        assertEquals(14 + 5 + 18 + 37 + 7 + 5 + 3 + 6 + 5 + 4 + 10, keys.size());
        assertEquals("model.n_layer", keys.getFirst());
        assertTrue(keys.contains("optim.learning_rate"));
        assertTrue(keys.contains("train.sample_tokens"));
        assertTrue(keys.contains("model.init") && keys.contains("train.layer_drop"));
        assertEquals("parallel.backend", keys.getLast());
    }

    @Test
    void dataCentricKeysAreChecked() {
        fails(null, List.of("curriculum.seq_len_start=12"), "--set curriculum.seq_len_start=12: curriculum.seq_len_start: ", "multiple of 8");
        fails(null, List.of("curriculum.seq_len_start=128"), "curriculum.seq_len_start", "model.block_size (64)");
        fails(null, List.of("curriculum.seq_len_start=16", "curriculum.seq_len_iters=0"), "curriculum.seq_len_iters", "> 0");
        fails(null, List.of("curriculum.pacing=cubic"), "curriculum.pacing", "sqrt, linear");
        fails(null, List.of("curriculum.competence_start=0"), "curriculum.competence_start", "(0, 1]");
        fails(null, List.of("train.select_fraction=0"), "train.select_fraction", "(0, 1]");
        fails(null, List.of("train.select_fraction=1.5"), "train.select_fraction");
        fails(null, List.of("train.recompute=some"), "train.recompute", "none, full, selective");
        fails(null, List.of("train.grad_accum_steps=0"), "train.grad_accum_steps");
        fails(null, List.of("data.dedup=fuzzy"), "data.dedup", "none, exact, minhash");
        fails(null, List.of("data.mixture=a.txt:0.5,b.txt:zero"), "data.mixture", "weight \"zero\" of b.txt is not a number");
        fails(null, List.of("data.mixture=a.txt:0,b.txt:0.0"), "data.mixture", "sum to 0");
        fails(null, List.of("data.mixture=a.txt:1,a.txt:2"), "data.mixture", "listed twice");
        RunConfig ok = ConfigLoader.load(null, List.of("curriculum.seq_len_start=16", "data.mixture=a.txt:0.7, b.txt:0.3", "train.select_fraction=0.5"));
        assertEquals(List.of(new Mixture.Member("a.txt", 0.7), new Mixture.Member("b.txt", 0.3)), Mixture.parse(ok.data().mixture()).members());
    }

    // ---- files ---------------------------------------------------------------------------------------

    @Test
    void yamlFileOverridesOnlyWhatItNames() throws IOException {
        Path f = write("small.yaml", """
                # a smaller model, shorter run
                model:
                  n_layer: 2
                  dropout: 0.2
                optim:
                  learning_rate: 3e-4
                train:
                  max_iters: 100
                  name: tiny
                data:            # empty section: keeps the defaults
                """);
        RunConfig c = ConfigLoader.load(f, List.of());
        RunConfig d = RunConfig.defaults();
        assertEquals(new GptConfig(2, 4, 128, 64, 0, 0.2, true), c.model());
        assertEquals(3e-4, c.optim().learning_rate());
        assertEquals(d.optim().min_lr(), c.optim().min_lr());
        assertEquals(100, c.train().max_iters());
        assertEquals("tiny", c.train().name());
        assertEquals(d.train().batch_size(), c.train().batch_size());
        assertEquals(d.data(), c.data());
    }

    @Test
    void ymlExtensionAndEmptyFile() throws IOException {
        assertEquals(RunConfig.defaults(), ConfigLoader.load(write("empty.yml", ""), List.of()));
    }

    @Test
    void jsonFile() throws IOException {
        Path f = write("run.json", """
                {"model": {"n_layer": 6, "n_head": 6, "n_embd": 384, "block_size": 256, "bias": false},
                 "data": {"tokenizer": "gpt2", "dir": "data/cache"},
                 "train": {"seed": 42, "threads": 8}}
                """);
        RunConfig c = ConfigLoader.load(f, List.of());
        assertEquals(new GptConfig(6, 6, 384, 256, 0, 0.0, false), c.model());
        assertEquals(new DataConfig("data/tinyshakespeare.txt", "gpt2", "data/cache", "", "none"), c.data());
        assertEquals(42L, c.train().seed());
        assertEquals(8, c.train().threads());
    }

    @Test
    void missingFileAndUnsupportedType() throws IOException {
        fails(dir.resolve("nope.yaml"), List.of(), "nope.yaml", "not found");
        fails(write("run.toml", "x = 1"), List.of(), "run.toml", ".yaml", ".json");
        fails(dir, List.of(), "directory");
    }

    @Test
    void badYamlSyntaxNamesFileAndLine() throws IOException {
        Path f = write("broken.yaml", "model:\n  n_layer: 2\n  bias: [\ntrain:\n  max_iters: 3\n");
        ConfigException e = fails(f, List.of(), "broken.yaml", "invalid YAML", "line ");
        assertEquals(f.toString(), e.source());
    }

    @Test
    void badJsonSyntaxNamesFileAndLine() throws IOException {
        Path f = write("broken.json", "{\"model\": {\n  \"n_head\": 3,\n}}");
        fails(f, List.of(), "broken.json", "invalid JSON", "line 3");
    }

    @Test
    void duplicateKeyIsAnError() throws IOException {
        fails(write("dup.yaml", "train:\n  max_iters: 1\n  max_iters: 2\n"), List.of(), "dup.yaml", "max_iters");
    }

    @Test
    void unknownKeyInFileNamesDottedKeyAndValidKeys() throws IOException {
        Path f = write("typo.yaml", "train:\n  max_iter: 5\n");
        ConfigException e = fails(f, List.of(), "typo.yaml", "train.max_iter", "unknown key",
                "did you mean 'train.max_iters'", "batch_size", "sample_tokens");
        assertEquals("train.max_iter", e.key());
        fails(write("top.yaml", "optimizer:\n  lr: 1\n"), List.of(), "top.yaml", "optimizer",
                "model, data, optim, train");
        fails(write("lr.yaml", "optim:\n  lr: 1\n"), List.of(), "optim.lr", "learning_rate");
    }

    @Test
    void wrongShapesInFile() throws IOException {
        fails(write("a.yaml", "model: 5\n"), List.of(), "a.yaml", "model", "expected a mapping", "n_layer");
        fails(write("b.yaml", "- 1\n- 2\n"), List.of(), "b.yaml", "top level");
        fails(write("c.yaml", "train:\n  name:\n"), List.of(), "train.name", "no value", "string");
        fails(write("d.yaml", "model:\n  n_layer: [1, 2]\n"), List.of(), "model.n_layer", "list", "integer");
    }

    @Test
    void badTypeNamesKeyValueAndExpectedType() throws IOException {
        fails(write("t.yaml", "model:\n  n_layer: two\n"), List.of(), "t.yaml", "model.n_layer", "\"two\"", "an integer");
        fails(write("f.yaml", "train:\n  batch_size: 2.5\n"), List.of(), "train.batch_size", "2.5", "an integer");
        fails(write("g.json", "{\"optim\": {\"beta1\": true}}"), List.of(), "g.json", "optim.beta1", "true", "a number");
        fails(write("h.yaml", "model:\n  bias: 3\n"), List.of(), "model.bias", "3", "boolean");
        fails(null, List.of("train.max_iters=99999999999"), "train.max_iters", "out of range");
    }

    // ---- overrides -----------------------------------------------------------------------------------

    @Test
    void overridesNestedNumbersBooleansStrings() {
        RunConfig c = ConfigLoader.load(null, List.of(
                "train.max_iters=100", "optim.learning_rate=3e-4", "model.bias=false", "train.name=foo",
                "model.dropout=0.1", "train.seed=12345678901", "optim.lr_decay_iters=5e3",
                "train.sample_prompt=\"\\nROMEO:\"", "data.dir=cache/x: y"));
        assertEquals(100, c.train().max_iters());
        assertEquals(3e-4, c.optim().learning_rate());
        assertFalse(c.model().bias());
        assertEquals("foo", c.train().name());
        assertEquals(0.1, c.model().dropout());
        assertEquals(12345678901L, c.train().seed());
        assertEquals(5000, c.optim().lr_decay_iters());
        assertEquals("\nROMEO:", c.train().sample_prompt());
        assertEquals("cache/x: y", c.data().dir());
    }

    @Test
    void numericLookingStringsStayText() {
        RunConfig c = ConfigLoader.load(null, List.of("train.name=0123", "data.dir="));
        assertEquals("0123", c.train().name());
        assertEquals("", c.data().dir());
    }

    @Test
    void overridesApplyAfterFileAndInOrder() throws IOException {
        Path f = write("base.yaml", "train:\n  max_iters: 500\n  batch_size: 4\n");
        RunConfig c = ConfigLoader.load(f, List.of("train.max_iters=7", "train.max_iters=9"));
        assertEquals(9, c.train().max_iters());
        assertEquals(4, c.train().batch_size());
    }

    @Test
    void overrideCanSetAWholeSection() {
        RunConfig c = ConfigLoader.load(null, List.of("model={n_layer: 2, n_head: 2, n_embd: 64}"));
        assertEquals(new GptConfig(2, 2, 64, 64, 0, 0.0, true), c.model());
        fails(null, List.of("model=3"), "--set model=3", "is a section", "model.n_layer");
    }

    @Test
    void badOverrides() {
        fails(null, List.of("train.max_iters"), "--set train.max_iters", "missing '='");
        ConfigException tooLong = fails(null, List.of("data.corpus=" + "x".repeat(70_000)), "data.corpus", "70000 characters long", "at most 65536");
        assertTrue(tooLong.getMessage().length() < 300, tooLong::getMessage); // the value is not echoed
        assertEquals("x".repeat(65_536), ConfigLoader.load(null, List.of("train.out_dir=" + "x".repeat(65_536))).train().out_dir());
        fails(null, List.of("=3"), "missing key");
        fails(null, List.of("train..x=3"), "train..x", "malformed");
        ConfigException e = fails(null, List.of("train.max_iter=5"), "--set train.max_iter=5", "train.max_iter",
                "unknown key", "did you mean 'train.max_iters'");
        assertEquals("train.max_iter", e.key());
        fails(null, List.of("trainer.max_iters=5"), "trainer", "unknown key", "model, data, optim, train");
        fails(null, List.of("train.max_iters.x=5"), "train.max_iters.x", "unknown key");
        fails(null, List.of("model.bias=maybe"), "model.bias", "\"maybe\"", "boolean");
        fails(null, List.of("train.max_iters=lots"), "train.max_iters", "\"lots\"", "an integer");
        fails(null, List.of("train.max_iters="), "train.max_iters", "no value");
        fails(null, List.of("optim.learning_rate=[1"), "optim.learning_rate", "a number");
    }

    // ---- validation ----------------------------------------------------------------------------------

    @Test
    void headsMustDivideWidth() throws IOException {
        ConfigException e = fails(null, List.of("model.n_head=3"), "--set model.n_head=3", "model.n_embd",
                "divisible by model.n_head");
        assertEquals("model.n_embd", e.key());
        fails(write("heads.yaml", "model:\n  n_embd: 100\n  n_head: 8\n"), List.of(), "heads.yaml", "model.n_embd");
    }

    @Test
    void negativeLearningRate() {
        fails(null, List.of("optim.learning_rate=-1e-3"), "--set optim.learning_rate=-1e-3", "optim.learning_rate",
                "must be > 0");
        fails(null, List.of("optim.learning_rate=1e-5"), "optim.min_lr", "<= optim.learning_rate",
                "--set optim.learning_rate=1e-5");
    }

    @Test
    void otherValidationFailures() {
        fails(null, List.of("train.batch_size=0"), "train.batch_size", "> 0");
        fails(null, List.of("model.n_layer=-2"), "model.n_layer", "> 0");
        fails(null, List.of("model.dropout=1.0"), "model.dropout", "[0, 1)");
        fails(null, List.of("optim.beta2=1"), "optim.beta2", "[0, 1)");
        fails(null, List.of("data.tokenizer=bpe"), "data.tokenizer", "char, gpt2");
        fails(null, List.of("model.vocab_size=-1"), "model.vocab_size", ">= 0");
        fails(null, List.of("train.threads=-1"), "train.threads");
        fails(null, List.of("train.eval_iters=0"), "train.eval_iters");
        fails(null, List.of("optim.warmup_iters=-5"), "optim.warmup_iters");
        fails(null, List.of("optim.warmup_iters=3000"), "optim.lr_decay_iters", "optim.warmup_iters");
        fails(null, List.of("train.name=a/b"), "train.name", "plain directory name");
        fails(null, List.of("train.name="), "train.name", "empty");
    }

    @Test
    void validateOnAHandBuiltConfigNamesTheKey() {
        RunConfig bad = RunConfig.defaults().withModel(new GptConfig(4, 4, 0, 64, 0, 0.0, true));
        ConfigException e = assertThrows(ConfigException.class, bad::validate);
        assertEquals("model.n_embd", e.key());
        assertTrue(e.getMessage().startsWith("model.n_embd: "), e.getMessage());
    }

    // ---- writing and reading back ----------------------------------------------------------------------

    @Test
    void jsonRoundTrip() {
        RunConfig c = ConfigLoader.load(null, List.of("model.n_layer=3", "model.vocab_size=65", "model.bias=false",
                "optim.learning_rate=6e-4", "optim.eps=1e-7", "train.seed=9007199254740993",
                "train.sample_prompt=\"\\tO Romeo \\\"quoted\\\"\\n\"", "data.tokenizer=gpt2"));
        String json = ConfigLoader.toJson(c);
        assertTrue(json.contains("\"learning_rate\""), json);
        assertEquals(c, ConfigLoader.fromJson(json));
        assertEquals(RunConfig.defaults(), ConfigLoader.fromJson(ConfigLoader.toJson(RunConfig.defaults())));
    }

    @Test
    void yamlRoundTripThroughAFile() throws IOException {
        RunConfig c = ConfigLoader.load(null, List.of("train.name=1.50", "train.sample_prompt=\"\\n\"",
                "data.dir=true", "optim.min_lr=0"));
        Path f = write("resolved.yaml", ConfigLoader.toYaml(c));
        assertEquals(c, ConfigLoader.load(f, List.of()));
    }

    @Test
    void fromJsonRejectsBadInput() {
        ConfigException e = assertThrows(ConfigException.class, () -> ConfigLoader.fromJson("{\"model\": {\"layers\": 2}}"));
        assertTrue(e.getMessage().contains("model.layers"), e.getMessage());
        e = assertThrows(ConfigException.class, () -> ConfigLoader.fromJson("{", "runs/x/config.json"));
        assertTrue(e.getMessage().startsWith("runs/x/config.json: invalid JSON"), e.getMessage());
        assertEquals(RunConfig.defaults(), ConfigLoader.fromJson("{}"));
    }
}
