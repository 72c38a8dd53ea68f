package dev.kiln.train.config;

import com.fasterxml.jackson.core.JsonLocation;
import com.fasterxml.jackson.core.JsonProcessingException;
import com.fasterxml.jackson.core.StreamReadFeature;
import com.fasterxml.jackson.databind.DeserializationFeature;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.json.JsonMapper;
import com.fasterxml.jackson.databind.node.BooleanNode;
import com.fasterxml.jackson.databind.node.DoubleNode;
import com.fasterxml.jackson.databind.node.IntNode;
import com.fasterxml.jackson.databind.node.LongNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import com.fasterxml.jackson.databind.node.TextNode;
import com.fasterxml.jackson.dataformat.yaml.YAMLGenerator;
import com.fasterxml.jackson.dataformat.yaml.YAMLMapper;
import java.io.IOException;
import java.lang.reflect.RecordComponent;
import java.math.BigDecimal;
import java.nio.charset.MalformedInputException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;

/**
 * Resolves a {@link RunConfig}: built-in defaults, then a YAML/JSON file merged deeply over them, then
 * {@code key=value} overrides, then {@link RunConfig#validate()}.
 *
 * <p>The accepted keys and their types come from the record components of {@link RunConfig} and its
 * section records, so adding a component adds a key. Every mistake raises a one-line
 * {@link ConfigException} that names the file (or override) and the dotted key at fault.
 */
public final class ConfigLoader {
    private ConfigLoader() {}

    /** Source named in errors about values read by {@link #fromJson(String)}. */
    public static final String RESOLVED_SOURCE = "resolved config";

    private static final ObjectMapper JSON = JsonMapper.builder()
            .enable(StreamReadFeature.STRICT_DUPLICATE_DETECTION)
            .enable(DeserializationFeature.FAIL_ON_TRAILING_TOKENS)
            .enable(DeserializationFeature.FAIL_ON_NULL_FOR_PRIMITIVES)
            .build();

    private static final YAMLMapper YAML = YAMLMapper.builder()
            .enable(StreamReadFeature.STRICT_DUPLICATE_DETECTION)
            .disable(YAMLGenerator.Feature.WRITE_DOC_START_MARKER)
            .build();

    // ---- schema: the key tree, read off the records ------------------------------------------------

    private sealed interface Node permits Section, Leaf {}

    private record Section(Map<String, Node> children) implements Node {}

    private record Leaf(Class<?> type) implements Node {}

    private static final Section ROOT = section(RunConfig.class);

    private static Section section(Class<?> recordType) {
        Map<String, Node> children = new LinkedHashMap<>();
        for (RecordComponent c : recordType.getRecordComponents()) {
            Class<?> t = c.getType();
            Node child;
            if (t.isRecord()) {
                child = section(t);
            } else if (t == int.class || t == long.class || t == double.class || t == boolean.class || t == String.class) {
                child = new Leaf(t);
            } else {
                throw new IllegalStateException("unsupported config type " + t + " of " + recordType.getName() + "." + c.getName());
            }
            children.put(c.getName(), child);
        }
        return new Section(children);
    }

    /** Every settable dotted key, in declaration order (e.g. {@code model.n_layer}, ..., {@code train.sample_tokens}). */
    public static List<String> keys() {
        List<String> out = new ArrayList<>();
        collectKeys(ROOT, "", out);
        return out;
    }

    private static void collectKeys(Section s, String prefix, List<String> out) {
        s.children().forEach((name, child) -> {
            String key = join(prefix, name);
            if (child instanceof Section sub) collectKeys(sub, key, out);
            else out.add(key);
        });
    }

    // ---- public API ----------------------------------------------------------------------------------

    /**
     * Resolves a run configuration.
     *
     * @param fileOrNull a {@code .yaml}, {@code .yml} or {@code .json} file, or null for the built-in defaults
     * @param overrides  {@code dotted.key=value} strings applied in order; each value is read as a YAML
     *                   scalar ({@code 3e-4}, {@code false}, {@code "\n"}); null means none
     * @return the validated configuration
     * @throws ConfigException naming the file or override and the key at fault
     */
    public static RunConfig load(Path fileOrNull, List<String> overrides) {
        ObjectNode tree = defaultsTree();
        Map<String, String> origins = new HashMap<>();
        if (fileOrNull != null) {
            String source = fileOrNull.toString();
            mergeDocument(tree, readFile(fileOrNull), source, origins);
        }
        if (overrides != null) {
            for (String override : overrides) applyOverride(tree, override, origins);
        }
        return bindAndValidate(tree, origins);
    }

    /** The configuration as YAML, every key present, in declaration order. */
    public static String toYaml(RunConfig config) {
        try {
            return YAML.writeValueAsString(config);
        } catch (JsonProcessingException e) {
            throw new IllegalStateException("cannot write config as YAML", e);
        }
    }

    /** The configuration as pretty-printed JSON (ending in a newline), every key present. */
    public static String toJson(RunConfig config) {
        try {
            return JSON.writerWithDefaultPrettyPrinter().writeValueAsString(config) + "\n";
        } catch (JsonProcessingException e) {
            throw new IllegalStateException("cannot write config as JSON", e);
        }
    }

    /** Reads back what {@link #toJson} wrote (keys it lacks take their defaults), validated. */
    public static RunConfig fromJson(String json) {
        return fromJson(json, RESOLVED_SOURCE);
    }

    /**
     * Reads back what {@link #toJson} wrote, naming {@code source} (e.g. the file it came from) in errors.
     */
    public static RunConfig fromJson(String json, String source) {
        ObjectNode tree = defaultsTree();
        Map<String, String> origins = new HashMap<>();
        mergeDocument(tree, parse(JSON, "JSON", json, source), source, origins);
        return bindAndValidate(tree, origins);
    }

    // ---- reading -------------------------------------------------------------------------------------

    private static ObjectNode defaultsTree() {
        return JSON.valueToTree(RunConfig.defaults());
    }

    private static JsonNode readFile(Path file) {
        String source = file.toString();
        if (!Files.exists(file)) throw new ConfigException(source, null, "config file not found");
        if (Files.isDirectory(file)) {
            throw new ConfigException(source, null, "is a directory, expected a .yaml, .yml or .json config file");
        }
        String name = file.getFileName().toString().toLowerCase(Locale.ROOT);
        ObjectMapper mapper;
        String format;
        if (name.endsWith(".yaml") || name.endsWith(".yml")) {
            mapper = YAML;
            format = "YAML";
        } else if (name.endsWith(".json")) {
            mapper = JSON;
            format = "JSON";
        } else {
            throw new ConfigException(source, null, "unsupported config file type; use .yaml, .yml or .json");
        }
        String text;
        try {
            text = Files.readString(file);
        } catch (MalformedInputException e) {
            throw new ConfigException(source, null, "not valid UTF-8 text", e);
        } catch (IOException e) {
            throw new ConfigException(source, null, "cannot read config file: " + oneLine(String.valueOf(e.getMessage())), e);
        }
        return parse(mapper, format, text, source);
    }

    private static JsonNode parse(ObjectMapper mapper, String format, String text, String source) {
        try {
            return mapper.readTree(text);
        } catch (JsonProcessingException e) {
            JsonLocation loc = e.getLocation();
            String where = loc != null && loc.getLineNr() > 0
                    ? " at line " + loc.getLineNr() + ", column " + loc.getColumnNr() : "";
            String why = parseProblem(String.valueOf(e.getOriginalMessage()));
            throw new ConfigException(source, null, "invalid " + format + where + ": " + why, e);
        }
    }

    // ---- merging -------------------------------------------------------------------------------------

    private static void mergeDocument(ObjectNode tree, JsonNode doc, String source, Map<String, String> origins) {
        if (doc == null || doc.isMissingNode() || doc.isNull()) return; // an empty file changes nothing
        if (!doc.isObject()) {
            throw new ConfigException(source, null, "expected a mapping with keys " + keyList(ROOT)
                    + " at the top level, got " + describe(doc));
        }
        mergeSection(ROOT, "", tree, (ObjectNode) doc, source, origins);
    }

    private static void mergeSection(Section schema, String prefix, ObjectNode target, ObjectNode doc,
                                     String source, Map<String, String> origins) {
        for (Map.Entry<String, JsonNode> e : doc.properties()) {
            String name = e.getKey();
            String key = join(prefix, name);
            JsonNode value = e.getValue();
            Node child = schema.children().get(name);
            if (child == null) throw unknownKey(source, key, prefix, schema);
            switch (child) {
                case Section sub -> {
                    if (value.isNull() || value.isMissingNode()) continue; // "train:" with nothing under it
                    if (!value.isObject()) {
                        throw new ConfigException(source, key, "expected a mapping with keys " + keyList(sub)
                                + ", got " + describe(value));
                    }
                    mergeSection(sub, key, (ObjectNode) target.get(name), (ObjectNode) value, source, origins);
                }
                case Leaf leaf -> {
                    target.set(name, coerce(source, key, leaf.type(), value));
                    origins.put(key, source);
                }
            }
        }
    }

    /** Longest value a --set override may have. */
    private static final int MAX_OVERRIDE_CHARS = 1 << 16;

    private static void applyOverride(ObjectNode tree, String override, Map<String, String> origins) {
        if (override == null) return;
        String source = "--set " + override;
        int eq = override.indexOf('=');
        if (eq < 0) throw new ConfigException(source, null, "missing '=': expected key=value, e.g. train.max_iters=100");
        String key = override.substring(0, eq).strip();
        String raw = override.substring(eq + 1);
        if (key.isEmpty()) throw new ConfigException(source, null, "missing key before '=', e.g. train.max_iters=100");
        // no setting needs a long value on the command line, and SnakeYAML takes seconds over megabytes
        if (raw.length() > MAX_OVERRIDE_CHARS)
            throw new ConfigException("--set " + key + "=…", key, "value is " + raw.length() + " characters long; --set takes at most "
                    + MAX_OVERRIDE_CHARS + " (put long values in the config file)");
        String[] parts = key.split("\\.", -1);
        Section schema = ROOT;
        ObjectNode target = tree;
        String prefix = "";
        for (int i = 0; i < parts.length; i++) {
            String name = parts[i];
            if (name.isEmpty()) throw new ConfigException(source, key, "malformed key (empty part)");
            Node child = schema.children().get(name);
            String here = join(prefix, name);
            if (child == null) throw unknownKey(source, here, prefix, schema);
            boolean last = i == parts.length - 1;
            if (child instanceof Leaf leaf) {
                if (!last) {
                    throw new ConfigException(source, key, "unknown key; '" + here + "' is a value and has no keys under it");
                }
                target.set(name, coerceOverride(source, key, leaf.type(), raw));
                origins.put(key, source);
                return;
            }
            Section sub = (Section) child;
            if (last) {
                // A whole section at once, e.g. model={n_layer: 2, n_head: 2}.
                JsonNode value = parseScalar(raw);
                if (value == null || !value.isObject()) {
                    throw new ConfigException(source, key, "is a section; set one of its keys (" + keyList(sub)
                            + "), e.g. " + key + "." + sub.children().keySet().iterator().next() + "=...");
                }
                mergeSection(sub, key, (ObjectNode) target.get(name), (ObjectNode) value, source, origins);
                return;
            }
            schema = sub;
            target = (ObjectNode) target.get(name);
            prefix = here;
        }
    }

    /** The override value read as YAML, or null when it is not valid YAML. */
    private static JsonNode parseScalar(String raw) {
        try {
            return YAML.readTree(raw);
        } catch (JsonProcessingException e) {
            return null;
        }
    }

    private static JsonNode coerceOverride(String source, String key, Class<?> type, String raw) {
        JsonNode parsed = parseScalar(raw);
        if (type == String.class) {
            // Quoted YAML gives escapes ("\n"); anything else (numbers, "a: b", empty) is taken literally.
            return parsed != null && parsed.isTextual() ? parsed : TextNode.valueOf(raw);
        }
        if (parsed == null) {
            throw new ConfigException(source, key, "expected " + typeName(type) + ", got " + quote(raw));
        }
        return coerce(source, key, type, parsed);
    }

    /** Checks a value against the key's type, converting where the meaning is plain (e.g. "1e3" or 1e3 for an int). */
    private static JsonNode coerce(String source, String key, Class<?> type, JsonNode v) {
        if (v == null || v.isNull() || v.isMissingNode()) {
            throw new ConfigException(source, key, "has no value, expected " + typeName(type));
        }
        if (type == String.class) {
            if (v.isTextual()) return v;
            if (v.isNumber() || v.isBoolean()) return TextNode.valueOf(v.asText());
        } else if (type == boolean.class) {
            if (v.isBoolean()) return v;
            if (v.isTextual()) {
                String s = v.asText().strip();
                if (s.equalsIgnoreCase("true")) return BooleanNode.TRUE;
                if (s.equalsIgnoreCase("false")) return BooleanNode.FALSE;
            }
        } else {
            BigDecimal d = decimal(v);
            if (d != null) {
                if (type == double.class) return DoubleNode.valueOf(d.doubleValue());
                try {
                    // stripTrailingZeros throws too: its scale overflows for values like "100e2147483647"
                    boolean integral = d.signum() == 0 || d.stripTrailingZeros().scale() <= 0;
                    if (integral) {
                        return type == int.class ? IntNode.valueOf(d.intValueExact()) : LongNode.valueOf(d.longValueExact());
                    }
                } catch (ArithmeticException e) {
                    throw new ConfigException(source, key, "value " + describe(v) + " is out of range for "
                            + typeName(type));
                }
            }
        }
        throw new ConfigException(source, key, "expected " + typeName(type) + ", got " + describe(v));
    }

    /** Longest text read as a number (Jackson's default limit for number literals). */
    private static final int MAX_NUMBER_CHARS = 1000;

    private static BigDecimal decimal(JsonNode v) {
        if (v.isNumber()) {
            return v.isFloatingPointNumber() && !Double.isFinite(v.doubleValue()) ? null : v.decimalValue();
        }
        if (v.isTextual()) {
            String s = v.asText().strip();
            // BigDecimal parses in time quadratic in the length: a megabyte of digits would hang the loader.
            // No setting needs more digits than Jackson accepts for a number literal (1000).
            if (s.length() > MAX_NUMBER_CHARS) return null;
            try {
                return new BigDecimal(s);
            } catch (NumberFormatException e) {
                return null;
            }
        }
        return null;
    }

    // ---- binding -------------------------------------------------------------------------------------

    private static RunConfig bindAndValidate(ObjectNode tree, Map<String, String> origins) {
        RunConfig config;
        try {
            config = JSON.treeToValue(tree, RunConfig.class);
        } catch (JsonProcessingException | IllegalArgumentException e) {
            throw new ConfigException(null, null, "cannot bind config: " + oneLine(String.valueOf(e.getMessage())), e);
        }
        try {
            return config.validate();
        } catch (ConfigException e) {
            String source = origins.get(e.key());
            for (String related : e.related()) {
                if (source == null) source = origins.get(related);
            }
            throw source == null ? e : e.withSource(source);
        }
    }

    // ---- messages ------------------------------------------------------------------------------------

    private static ConfigException unknownKey(String source, String key, String prefix, Section schema) {
        String name = key.substring(key.lastIndexOf('.') + 1);
        String where = prefix.isEmpty() ? "at the top level" : "under '" + prefix + "'";
        String guess = closest(name, schema.children().keySet());
        String hint = guess == null ? "" : " (did you mean '" + join(prefix, guess) + "'?)";
        return new ConfigException(source, key, "unknown key" + hint + "; valid keys " + where + ": " + keyList(schema));
    }

    private static String closest(String name, Iterable<String> candidates) {
        String best = null;
        int bestDistance = Integer.MAX_VALUE;
        for (String c : candidates) {
            int d = editDistance(name.toLowerCase(Locale.ROOT), c);
            if (d < bestDistance) {
                bestDistance = d;
                best = c;
            }
        }
        return best != null && bestDistance <= Math.max(2, name.length() / 3) ? best : null;
    }

    private static int editDistance(String a, String b) {
        int[] prev = new int[b.length() + 1];
        int[] cur = new int[b.length() + 1];
        for (int j = 0; j <= b.length(); j++) prev[j] = j;
        for (int i = 1; i <= a.length(); i++) {
            cur[0] = i;
            for (int j = 1; j <= b.length(); j++) {
                int sub = prev[j - 1] + (a.charAt(i - 1) == b.charAt(j - 1) ? 0 : 1);
                cur[j] = Math.min(sub, Math.min(prev[j], cur[j - 1]) + 1);
            }
            int[] t = prev;
            prev = cur;
            cur = t;
        }
        return prev[b.length()];
    }

    private static String keyList(Section s) {
        return String.join(", ", s.children().keySet());
    }

    private static String typeName(Class<?> type) {
        if (type == int.class) return "an integer";
        if (type == long.class) return "an integer (64-bit)";
        if (type == double.class) return "a number";
        if (type == boolean.class) return "a boolean (true or false)";
        return "a string";
    }

    private static String describe(JsonNode v) {
        if (v.isObject()) return "a mapping " + abbreviate(v.toString());
        if (v.isArray()) return "a list " + abbreviate(v.toString());
        if (v.isTextual()) return quote(v.asText());
        return abbreviate(v.toString());
    }

    private static String quote(String s) {
        return abbreviate(TextNode.valueOf(s).toString()); // JSON quoting escapes newlines, keeping one line
    }

    private static String abbreviate(String s) {
        return s.length() <= 60 ? s : s.substring(0, 57) + "...";
    }

    /**
     * The problem in a parser message. SnakeYAML's messages span lines: "while parsing X / in 'reader',
     * line..., / snippet / ^ / the problem / in 'reader', ..."; the problem is the last unindented line.
     */
    private static String parseProblem(String message) {
        String problem = null;
        for (String line : message.split("\\R")) {
            if (!line.isBlank() && !Character.isWhitespace(line.charAt(0))) problem = line.strip();
        }
        return problem == null ? oneLine(message) : problem;
    }

    private static String oneLine(String s) {
        int nl = s.indexOf('\n');
        return (nl < 0 ? s : s.substring(0, nl)).strip();
    }

    private static String join(String prefix, String name) {
        return prefix.isEmpty() ? name : prefix + "." + name;
    }
}
