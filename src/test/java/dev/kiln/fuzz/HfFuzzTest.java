package dev.kiln.fuzz;

import dev.kiln.hf.Gpt2Spec;
import dev.kiln.hf.HfDirectory;
import dev.kiln.hf.HfFixtures;
import dev.kiln.hf.LlamaSpec;
import dev.kiln.tensor.MemoryScope;
import dev.kiln.tensor.Safetensors;
import dev.kiln.tensor.Tensor;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * Fuzzes the Hugging Face directory reader ({@code HfDirectory.read}): a mutated config.json beside the GPT-2
 * weights transformers wrote (seeds: that config.json and the one Kiln writes; Llama's in the dictionary), and a mutated
 * model.safetensors.index.json over two shards. Every input must load or fail with a KilnException.
 */
class HfFuzzTest extends ReaderFuzzTest {
    HfFuzzTest() {
        super("hf");
    }

    @Override
    List<Fuzz.Target> targets(Path dir) throws Exception {
        Path model = HfFixtures.copy("gpt2", dir);
        // seeds must load: the config.json of these weights as transformers and as Kiln write it; Llama's keys come in through the dictionary
        List<byte[]> configSeeds = List.of(Files.readAllBytes(model.resolve(HfDirectory.CONFIG)),
                Fuzz.bytes(new Gpt2Spec(65, 32, 32, 2, 4, 0.0, null).configJson().toPrettyString()));
        List<String> dict = List.of(new LlamaSpec(65, 32, 96, 2, 4, 2, 32, 1e-5, 1e4, false, null, null).configJson().toString(),
                "\"hidden_size\": 32", "\"num_hidden_layers\": 2", "\"model_type\": \"llama\"", "\"n_layer\": 3", "\"n_embd\": 64", "null", "true", "false", "[]", "{}",
                "\"architectures\": []", "\"n_inner\": 128", "\"rope_parameters\": {}", "-1", "1e999", "\"vocab_size\": 0");

        Path sharded = HfFixtures.copy("gpt2", dir);
        StringBuilder index = new StringBuilder("{\"metadata\": {\"total_size\": 0}, \"weight_map\": {");
        try (var scope = MemoryScope.open()) {
            Map<String, Tensor> all = Safetensors.read(sharded.resolve(HfDirectory.WEIGHTS)).tensors();
            Map<String, Tensor> a = new LinkedHashMap<>(), b = new LinkedHashMap<>();
            all.forEach((k, t) -> {
                String shard = k.startsWith("transformer.h.1.") ? "model-00002-of-00002.safetensors" : "model-00001-of-00002.safetensors";
                (shard.startsWith("model-00001") ? a : b).put(k, t);
                index.append(index.charAt(index.length() - 1) == '{' ? "" : ", ").append('"').append(k).append("\": \"").append(shard).append('"');
            });
            Safetensors.write(sharded.resolve("model-00001-of-00002.safetensors"), a, Map.of());
            Safetensors.write(sharded.resolve("model-00002-of-00002.safetensors"), b, Map.of());
        }
        Files.delete(sharded.resolve(HfDirectory.WEIGHTS));
        List<byte[]> indexSeeds = List.of(Fuzz.bytes(index.append("}}").toString()));
        List<String> indexDict = List.of("\"../model.safetensors\"", "\"model-00002-of-00002.safetensors\"", "\"weight_map\": []", "null", "\"x\": 1");

        return List.of(
                new Fuzz.Target("hf-config", List.of(HfDirectory.CONFIG, HfDirectory.WEIGHTS), Mutator.Mode.TEXT, configSeeds, dict, in -> {
                    Files.write(model.resolve(HfDirectory.CONFIG), in);
                    try (var scope = MemoryScope.open()) {
                        HfDirectory.read(model);
                    }
                }),
                new Fuzz.Target("hf-index", List.of(HfDirectory.INDEX, "model-0000"), Mutator.Mode.TEXT, indexSeeds, indexDict, in -> {
                    Files.write(sharded.resolve(HfDirectory.INDEX), in);
                    try (var scope = MemoryScope.open()) {
                        HfDirectory.read(sharded);
                    }
                }));
    }
}
