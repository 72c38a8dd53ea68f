package dev.kiln.train;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;

import java.io.BufferedWriter;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.ArrayList;
import java.util.List;

/**
 * runs/&lt;name&gt;/metrics.jsonl: one JSON object per logged step or evaluation, flushed as written; each
 * record also goes, as scalars, to the TensorBoard event file when one is given ({@link TbEvents}).
 */
public final class MetricsLog implements AutoCloseable {
    private static final ObjectMapper JSON = new ObjectMapper();
    private final BufferedWriter out;
    private final TbEvents tb;

    /** Opens for appending; on resume, first drops records past {@code keepUpToStep} (they will be redone). */
    public MetricsLog(Path file, long keepUpToStep, boolean resume) {
        this(file, keepUpToStep, resume, null);
    }

    /**
     * As above, copying every record to {@code tb} too (null: none); {@code tb} stays open on {@link #close}, its owner
     * closes it. A null {@code file} writes nothing (the ranks of a data-parallel job other than rank 0).
     */
    public MetricsLog(Path file, long keepUpToStep, boolean resume, TbEvents tb) {
        this.tb = tb;
        if (file == null) {
            out = null;
            return;
        }
        try {
            if (resume && Files.exists(file)) {
                List<String> kept = new ArrayList<>();
                for (String line : Files.readAllLines(file, StandardCharsets.UTF_8)) {
                    if (line.isBlank()) continue;
                    try {
                        JsonNode n = JSON.readTree(line);
                        // records past the resume point will be redone; a final evaluation will be redone too
                        if (n.path("step").asLong(Long.MAX_VALUE) <= keepUpToStep && !n.path("final").asBoolean()) kept.add(line);
                    } catch (IOException bad) {
                        // a line torn by a crash mid-write: drop it
                    }
                }
                // replaced atomically: a kill during resume must never leave a truncated history
                byte[] bytes = (String.join("\n", kept) + (kept.isEmpty() ? "" : "\n")).getBytes(StandardCharsets.UTF_8);
                dev.kiln.AtomicFile.write(file, ch -> ch.write(java.nio.ByteBuffer.wrap(bytes)));
            } else {
                Files.deleteIfExists(file);
            }
            out = Files.newBufferedWriter(file, StandardCharsets.UTF_8, StandardOpenOption.CREATE, StandardOpenOption.APPEND);
        } catch (IOException e) {
            throw new TrainingException("cannot open metrics file " + file + ": " + e.getMessage(), e);
        }
    }

    public ObjectNode record() {
        return JSON.createObjectNode();
    }

    public void write(ObjectNode rec) {
        if (out == null) return;
        try {
            out.write(JSON.writeValueAsString(rec));
            out.newLine();
            out.flush();
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
        if (tb != null) tb.write(rec);
    }

    /** Reads every record of a metrics file (for reports and tests). */
    public static List<JsonNode> readAll(Path file) throws IOException {
        List<JsonNode> out = new ArrayList<>();
        for (String line : Files.readAllLines(file, StandardCharsets.UTF_8)) if (!line.isBlank()) out.add(JSON.readTree(line));
        return out;
    }

    @Override
    public void close() {
        if (out == null) return;
        try {
            out.close();
        } catch (IOException ignored) {
            // nothing left to lose: every record was flushed when written
        }
    }
}
