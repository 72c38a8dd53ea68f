package dev.kiln.train;

import com.fasterxml.jackson.databind.ObjectMapper;
import dev.kiln.KilnException;
import dev.kiln.data.BatchSampler;
import dev.kiln.data.PreparedData;
import dev.kiln.data.TokenShard;
import dev.kiln.hf.Gpt2Spec;
import dev.kiln.hf.HfDirectory;
import dev.kiln.hf.HfInterchange;
import dev.kiln.hf.HfModelSpec;
import dev.kiln.nn.models.Gpt;
import dev.kiln.optim.Optimizer;
import dev.kiln.optim.WeightAverage;
import dev.kiln.tensor.MemoryScope;
import dev.kiln.train.config.ConfigLoader;
import dev.kiln.train.config.Mixture;
import dev.kiln.train.config.RunConfig;

import java.io.IOException;
import java.io.PrintStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;

/**
 * {@code kiln import}: a Hugging Face model directory becomes a Kiln run whose only checkpoint, step 0, holds the
 * HF weights with a fresh optimizer, so {@code kiln train --config runs/<name>/config.yaml --resume} fine-tunes it
 * exactly as a run started from those weights would, and {@code kiln eval} / {@code kiln sample} use it as is.
 * The model's shape comes from config.json (a {@code --set} of a shape key is refused); data, optimizer and
 * training keys from the config file and overrides as for {@code kiln train}.
 */
public final class HfImport {
    private HfImport() {}

    /** What an import made: the run directory, its step-0 checkpoint, the resolved config and the model read. */
    public record Result(Path runDir, Path checkpoint, RunConfig config, HfModelSpec spec) {}

    public static Result importRun(Path hfDir, Path configFile, List<String> userOverrides, PrintStream out) {
        HfModelSpec spec = HfDirectory.readSpec(hfDir);
        // LLAMA HOOK: let LlamaSpec through once Kiln has the model (its config keys are LlamaSpec.kilnShapeOverrides)
        if (!(spec instanceof Gpt2Spec))
            throw new KilnException(hfDir.resolve(HfDirectory.CONFIG) + ": model_type " + spec.modelType() + " (" + spec.architecture()
                    + ") is read and validated, but this Kiln has no such model to load it into yet");
        List<String> overrides = new ArrayList<>(spec.kilnDefaultOverrides());
        for (String o : userOverrides) {
            String key = o.contains("=") ? o.substring(0, o.indexOf('=')).strip() : o;
            for (String s : spec.kilnShapeOverrides())
                if (s.startsWith(key + "="))
                    throw new KilnException("--set " + key + ": the model's shape comes from " + hfDir.resolve(HfDirectory.CONFIG) + " (" + s + "); leave it out");
        }
        overrides.addAll(userOverrides);
        overrides.addAll(spec.kilnShapeOverrides());
        RunConfig cfg = ConfigLoader.load(configFile, overrides);

        PreparedData data = Workspace.prepareData(cfg.data());
        int vocab = cfg.model().vocab_size(), tokVocab = data.tokenizer().vocabSize();
        if (vocab < tokVocab)
            throw new KilnException(hfDir.resolve(HfDirectory.CONFIG) + ": vocab_size " + vocab + " is smaller than the vocabulary of " + data.tokenizerPath()
                    + " (" + tokVocab + "); import with data that the model's vocabulary covers (data.corpus, data.tokenizer)");
        Path runDir = Workspace.resolveOut(cfg.train().out_dir()).resolve(cfg.train().name());
        CheckpointStore store = new CheckpointStore(runDir);
        if (!store.list().isEmpty())
            throw new KilnException("run directory " + runDir + " already has checkpoints; import under another name (--name)");

        Path checkpoint;
        try (var scope = MemoryScope.open()) {
            HfDirectory.HfModel hf = HfDirectory.read(hfDir);
            // LLAMA HOOK: for a LlamaSpec, build the Llama from cfg and HfInterchange.loadIntoLlama(m, hf, …); the lines
            // below take the trainer's common model type once it has one
            Gpt model = (Gpt) RunSetup.buildModel(cfg); // a Llama directory is refused earlier (LLAMA HOOK above)
            HfInterchange.loadIntoGpt(model, hf, hfDir.toString());
            Optimizer opt = RunSetup.optimizer(cfg.optim(), model);
            List<WeightAverage> averages = RunSetup.averages(cfg.averaging(), model); // after loading: they start from the HF weights
            long samplerState = initialSamplerState(cfg, data);
            long layerDropState = cfg.train().layer_drop() > 0 ? new LayerDrop(cfg.train().layer_drop(), cfg.train().layer_drop_gamma(), cfg.train().seed()).rngState() : 0;
            writeRunFiles(runDir, cfg, data);
            checkpoint = store.save(model, opt, averages,
                    CheckpointStore.TrainerState.initial(samplerState, model.dropoutRng().state(), model.depth(), layerDropState),
                    new ObjectMapper().readTree(ConfigLoader.toJson(cfg)), cfg.train().keep_checkpoints());
            out.printf("kiln: imported %s (%s, %,d parameters) as %s%n", hfDir, hf.spec().architecture(), model.parameterCount(), checkpoint);
        } catch (IOException e) {
            throw new TrainingException("cannot write run directory " + runDir + ": " + e.getMessage(), e);
        }
        out.println("kiln: continue training with: kiln train --config " + runDir.resolve("config.yaml") + " --resume");
        return new Result(runDir, checkpoint, cfg, spec);
    }

    /** The data sampler's state before its first batch, as Trainer would start it (a function of the data and the seed). */
    private static long initialSamplerState(RunConfig cfg, PreparedData data) {
        int batch = cfg.train().batch_size(), block = cfg.model().block_size();
        long seed = cfg.train().seed();
        if (cfg.data().mixture().isBlank()) {
            try (TokenShard shard = data.openTrain()) {
                return new BatchSampler(shard, batch, block, seed).state();
            }
        }
        List<TokenShard> shards = new ArrayList<>();
        try {
            for (PreparedData m : Workspace.prepareMixture(cfg.data())) shards.add(m.openTrain());
            return BatchSampler.mixture(shards, Mixture.parse(cfg.data().mixture()).weights(), batch, block, seed).state();
        } finally {
            for (TokenShard s : shards) s.close();
        }
    }

    /** The run's resolved config (JSON and YAML) and tokenizer, as Trainer writes them. */
    private static void writeRunFiles(Path runDir, RunConfig cfg, PreparedData data) throws IOException {
        Files.createDirectories(runDir);
        Files.writeString(runDir.resolve("config.json"), ConfigLoader.toJson(cfg));
        Files.writeString(runDir.resolve("config.yaml"), ConfigLoader.toYaml(cfg));
        data.tokenizer().save(runDir.resolve("tokenizer.json"));
    }
}
