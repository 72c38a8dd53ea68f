package dev.kiln.hf;

import com.fasterxml.jackson.databind.JsonNode;
import dev.kiln.KilnException;

import java.util.List;

/** Typed reads of a Hugging Face config.json, each fault a one-line KilnException naming the file and the key. */
final class ConfigJson {
    private final JsonNode root;
    private final String source;

    ConfigJson(JsonNode root, String source) {
        this.root = root;
        this.source = source;
    }

    String source() {
        return source;
    }

    boolean has(String key) {
        return root.has(key) && !root.get(key).isNull();
    }

    JsonNode node(String key) {
        return root.get(key);
    }

    /** A required positive integer. */
    int positiveInt(String key) {
        if (!has(key)) throw fail(key, "is missing");
        JsonNode n = root.get(key);
        if (!n.isIntegralNumber() || !n.canConvertToInt() || n.asInt() <= 0) throw fail(key, "must be a positive integer, got " + n);
        return n.asInt();
    }

    /** An optional positive integer ({@code fallback} when absent or null). */
    int positiveInt(String key, int fallback) {
        return has(key) ? positiveInt(key) : fallback;
    }

    /** An optional finite number ≥ 0 ({@code fallback} when absent or null). */
    double nonNegative(String key, double fallback) {
        if (!has(key)) return fallback;
        JsonNode n = root.get(key);
        if (!n.isNumber() || !(n.asDouble() >= 0) || !Double.isFinite(n.asDouble())) throw fail(key, "must be a number >= 0, got " + n);
        return n.asDouble();
    }

    /** An optional boolean that Kiln supports only at one value. */
    boolean requireBoolean(String key, boolean fallback, boolean supported, String why) {
        boolean v = bool(key, fallback);
        if (v != supported) throw fail(key, "is " + v + "; " + why);
        return v;
    }

    /** An optional boolean ({@code fallback} when absent or null). */
    boolean bool(String key, boolean fallback) {
        if (!has(key)) return fallback;
        JsonNode n = root.get(key);
        if (!n.isBoolean()) throw fail(key, "must be true or false, got " + n);
        return n.asBoolean();
    }

    /** An optional string that must be one of {@code allowed}. */
    String oneOf(String key, String fallback, List<String> allowed, String why) {
        if (!has(key)) return fallback;
        JsonNode n = root.get(key);
        if (!n.isTextual()) throw fail(key, "must be a string, got " + n);
        if (!allowed.contains(n.asText())) throw fail(key, "is \"" + n.asText() + "\"; " + why);
        return n.asText();
    }

    /** An optional token id (null when absent). */
    Integer tokenId(String key) {
        if (!has(key)) return null;
        JsonNode n = root.get(key);
        if (!n.isIntegralNumber() || !n.canConvertToInt() || n.asInt() < 0) return null; // a list or other form: not needed by Kiln
        return n.asInt();
    }

    KilnException fail(String key, String problem) {
        return new KilnException(source + ": " + key + " " + problem);
    }
}
