package dev.kiln.hf;

import com.fasterxml.jackson.core.JsonProcessingException;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import dev.kiln.AtomicFile;
import dev.kiln.KilnException;
import dev.kiln.tensor.DType;
import dev.kiln.tensor.Safetensors;
import dev.kiln.tensor.Tensor;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;

/**
 * A Hugging Face model directory, as {@code save_pretrained} writes it: config.json, model.safetensors (or shards
 * listed in model.safetensors.index.json) and generation_config.json. Reading validates everything before any
 * weight is used; each fault is one line naming the file and the key or tensor: a missing, unexpected,
 * mis-shaped or wrongly typed tensor, a config.json field that disagrees with the tensors, a malformed or
 * unsupported config.json.
 */
public final class HfDirectory {
    public static final String CONFIG = "config.json", WEIGHTS = "model.safetensors", INDEX = "model.safetensors.index.json",
            GENERATION = "generation_config.json";
    /** Weight dtypes read (fp16 and bf16 are widened to fp32 exactly). */
    public static final Set<DType> READ_DTYPES = Set.of(DType.F32, DType.F16, DType.BF16);
    private static final ObjectMapper JSON = new ObjectMapper();

    private HfDirectory() {}

    /** A validated model: its architecture and hyper-parameters, and its tensors (fp32, HF names and layouts). */
    public record HfModel(HfModelSpec spec, Map<String, Tensor> tensors) {}

    /**
     * Whether {@code dir} looks like a model directory (config.json beside model.safetensors or its index), not a
     * Kiln run (config.json, no weights at the top) or checkpoint (model.safetensors and trainer.json, no config.json).
     */
    public static boolean isModelDirectory(Path dir) {
        return Files.isRegularFile(dir.resolve(CONFIG)) && (Files.isRegularFile(dir.resolve(WEIGHTS)) || Files.isRegularFile(dir.resolve(INDEX)));
    }

    /** config.json alone: which model the directory holds (no tensor is read). */
    public static HfModelSpec readSpec(Path dir) {
        if (!Files.isDirectory(dir)) throw new KilnException(dir + ": not a directory (a Hugging Face model directory holds " + CONFIG + " and " + WEIGHTS + ")");
        Path file = dir.resolve(CONFIG);
        if (!Files.isRegularFile(file)) throw new KilnException(dir + ": no " + CONFIG + " (a Hugging Face model directory holds " + CONFIG + " and " + WEIGHTS + ")");
        JsonNode root;
        try {
            root = JSON.readTree(file.toFile());
        } catch (JsonProcessingException e) {
            throw new KilnException(file + ": not valid JSON (" + e.getOriginalMessage().lines().findFirst().orElse("")
                    + (e.getLocation() != null ? " at line " + e.getLocation().getLineNr() : "") + ")");
        } catch (IOException e) {
            throw new KilnException(file + ": cannot read (" + e.getMessage() + ")", e);
        }
        return HfModelSpec.fromConfigJson(root, file.toString());
    }

    /**
     * Reads and validates the whole directory. Tensors are allocated in the caller's MemoryScope, if one is open.
     * A tied copy (lm_head.weight of a tied model) must equal its source bit for bit and is dropped.
     */
    public static HfModel read(Path dir) {
        HfModelSpec spec = readSpec(dir);
        String configSource = dir.resolve(CONFIG).toString();
        Map<String, Path> fileOf = new LinkedHashMap<>(); // canonical name → the file holding it
        Map<String, String> storedName = new LinkedHashMap<>(); // canonical name → its name in that file
        Map<String, Safetensors.Header> headers = new LinkedHashMap<>();
        for (Path f : weightFiles(dir)) {
            for (var e : Safetensors.readHeader(f).entrySet()) {
                String name = spec.canonicalName(e.getKey());
                if (name == null) continue; // a buffer transformers ignores too
                if (fileOf.containsKey(name))
                    throw new KilnException(f + ": tensor " + e.getKey() + " is also in " + fileOf.get(name) + " (as " + storedName.get(name) + ")");
                fileOf.put(name, f);
                storedName.put(name, e.getKey());
                headers.put(name, e.getValue());
            }
        }
        String tensorSource = fileOf.isEmpty() ? dir.resolve(WEIGHTS).toString()
                : fileOf.values().stream().distinct().count() == 1 ? fileOf.values().iterator().next().toString() : dir.resolve(INDEX).toString();
        validate(spec, headers, configSource, tensorSource, n -> fileOf.get(n).toString());

        Map<String, Tensor> tensors = new LinkedHashMap<>();
        for (Path f : fileOf.values().stream().distinct().toList()) {
            Map<String, Tensor> loaded = Safetensors.read(f).tensors();
            loaded.forEach((k, t) -> {
                String name = spec.canonicalName(k);
                if (name == null) {
                    t.release();
                    return;
                }
                tensors.put(name, t.dtype() == DType.F32 ? t : t.to(DType.F32));
            });
        }
        for (var e : spec.tiedCopies().entrySet()) {
            Tensor copy = tensors.remove(e.getKey());
            if (copy != null && !Arrays.equals(copy.toFloatArray(), tensors.get(e.getValue()).toFloatArray()))
                throw new KilnException(fileOf.get(e.getKey()) + ": tensor " + e.getKey() + " differs from " + e.getValue() + " but " + configSource
                        + " ties them (tie_word_embeddings true)");
        }
        Map<String, Tensor> ordered = new LinkedHashMap<>();
        for (String k : spec.tensorShapes().keySet()) ordered.put(k, tensors.get(k));
        return new HfModel(spec, ordered);
    }

    /**
     * Checks tensor headers (canonical names) against the spec: config against tensors first (so a wrong n_layer
     * names n_layer, not a tensor), then every tensor's presence, shape and dtype, then unexpected ones.
     */
    public static void validate(HfModelSpec spec, Map<String, Safetensors.Header> headers, String configSource, String tensorSource,
                                java.util.function.Function<String, String> sourceOf) {
        spec.checkAgainstTensors(headers, configSource, tensorSource);
        String model = spec.architecture();
        for (var e : spec.tensorShapes().entrySet()) {
            Safetensors.Header h = headers.get(e.getKey());
            if (h == null) throw new KilnException(tensorSource + ": missing tensor " + e.getKey() + " (" + model + " as " + configSource + " describes it needs it)");
            String where = sourceOf.apply(e.getKey());
            if (!Arrays.equals(h.shape(), e.getValue()))
                throw new KilnException(where + ": tensor " + e.getKey() + " has shape " + Arrays.toString(h.shape()) + " but " + model + " as "
                        + configSource + " describes it needs " + Arrays.toString(e.getValue()));
            if (!READ_DTYPES.contains(h.dtype()))
                throw new KilnException(where + ": tensor " + e.getKey() + " has dtype " + h.dtype().safetensorsName() + "; weights must be F32, F16 or BF16");
        }
        for (var e : headers.entrySet()) {
            String name = e.getKey();
            if (spec.tensorShapes().containsKey(name)) continue;
            String tiedTo = spec.tiedCopies().get(name);
            if (tiedTo == null)
                throw new KilnException(sourceOf.apply(name) + ": unexpected tensor " + name + " (not part of " + model + " as " + configSource + " describes it)");
            int[] want = spec.tensorShapes().get(tiedTo);
            if (!Arrays.equals(e.getValue().shape(), want))
                throw new KilnException(sourceOf.apply(name) + ": tensor " + name + " has shape " + Arrays.toString(e.getValue().shape()) + " but it is tied to "
                        + tiedTo + " " + Arrays.toString(want));
            if (!READ_DTYPES.contains(e.getValue().dtype()))
                throw new KilnException(sourceOf.apply(name) + ": tensor " + name + " has dtype " + e.getValue().dtype().safetensorsName() + "; weights must be F32, F16 or BF16");
        }
    }

    /** model.safetensors, or the shards model.safetensors.index.json lists. */
    private static List<Path> weightFiles(Path dir) {
        Path single = dir.resolve(WEIGHTS), index = dir.resolve(INDEX);
        if (Files.isRegularFile(single)) return List.of(single);
        if (!Files.isRegularFile(index))
            throw new KilnException(dir + ": no " + WEIGHTS + " or " + INDEX + " (Kiln reads safetensors weights; convert a pytorch_model.bin with save_pretrained)");
        JsonNode map;
        try {
            map = JSON.readTree(index.toFile()).path("weight_map");
        } catch (IOException e) {
            throw new KilnException(index + ": not valid JSON (" + e.getMessage().lines().findFirst().orElse("") + ")", e);
        }
        if (!map.isObject() || map.isEmpty()) throw new KilnException(index + ": weight_map is missing or empty");
        Map<String, Path> shards = new LinkedHashMap<>();
        for (var it = map.fields(); it.hasNext(); ) {
            var e = it.next();
            String name = e.getValue().asText();
            if (!e.getValue().isTextual() || !name.matches("[^/\\\\\u0000]+") || name.equals(".") || name.equals(".."))
                throw new KilnException(index + ": weight_map entry " + e.getKey() + " must name a shard file in the directory, got " + e.getValue());
            Path shard;
            try {
                shard = dir.resolve(name);
            } catch (java.nio.file.InvalidPathException bad) {
                throw new KilnException(index + ": weight_map entry " + e.getKey() + " names no possible file (" + bad.getReason() + ")");
            }
            shards.putIfAbsent(name, shard);
            if (!Files.isRegularFile(shard)) throw new KilnException(index + ": shard " + shard + " (holding " + e.getKey() + ") not found");
        }
        for (var it = map.fields(); it.hasNext(); ) {
            var e = it.next();
            Path shard = shards.get(e.getValue().asText());
            if (!Safetensors.readHeader(shard).containsKey(e.getKey()))
                throw new KilnException(index + ": weight_map puts tensor " + e.getKey() + " in " + shard.getFileName() + ", which does not hold it");
        }
        return List.copyOf(shards.values());
    }

    /**
     * Writes a model directory: model.safetensors (fp32, {@code tensors} in HF names and layouts, checked against
     * the spec first), config.json and generation_config.json, each atomically.
     */
    public static void write(Path dir, HfModelSpec spec, Map<String, Tensor> tensors) {
        Map<String, Safetensors.Header> headers = new LinkedHashMap<>();
        tensors.forEach((k, t) -> headers.put(k, new Safetensors.Header(t.dtype(), t.shape())));
        validate(spec, headers, "the model's config", "the model's tensors", k -> "the model's tensors");
        for (var e : tensors.entrySet())
            if (e.getValue().dtype() != DType.F32) throw new IllegalArgumentException("tensor " + e.getKey() + " is " + e.getValue().dtype() + ", not F32");
        try {
            Files.createDirectories(dir);
            Safetensors.write(dir.resolve(WEIGHTS), tensors, Map.of("format", "pt"));
            writeJson(dir.resolve(CONFIG), spec.configJson());
            writeJson(dir.resolve(GENERATION), spec.generationConfigJson());
        } catch (IOException e) {
            throw new KilnException("cannot write " + dir + ": " + e.getMessage(), e);
        }
    }

    private static void writeJson(Path file, ObjectNode node) throws IOException {
        byte[] bytes = (JSON.writerWithDefaultPrettyPrinter().writeValueAsString(node) + "\n").getBytes(StandardCharsets.UTF_8);
        AtomicFile.write(file, ch -> ch.write(ByteBuffer.wrap(bytes)));
    }
}
