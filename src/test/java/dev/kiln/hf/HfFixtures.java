package dev.kiln.hf;

import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import dev.kiln.tensor.MemoryScope;
import dev.kiln.tensor.Safetensors;
import dev.kiln.tensor.Tensor;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.net.URISyntaxException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.function.Consumer;
import java.util.stream.Stream;

/**
 * The model directories transformers 5.18 wrote ({@code scripts/hf_check.py make}, committed under
 * fixtures/hf/) and ways to break copies of them.
 */
public final class HfFixtures {
    private HfFixtures() {}

    /** fixtures/hf/&lt;name&gt; (a directory) or fixtures/hf/&lt;name&gt;_io.safetensors. */
    public static Path fixture(String name) {
        try {
            var url = HfFixtures.class.getResource("/fixtures/hf/" + name);
            if (url == null) throw new IllegalStateException("fixtures/hf/" + name + " missing (see scripts/hf_check.py make)");
            return Path.of(url.toURI());
        } catch (URISyntaxException e) {
            throw new IllegalStateException(e);
        }
    }

    /** A writable copy of fixture directory {@code name} under {@code tmp}. */
    public static Path copy(String name, Path tmp) {
        Path src = fixture(name), dst = tmp.resolve(name + "-" + System.nanoTime());
        try (Stream<Path> s = Files.list(src)) {
            Files.createDirectories(dst);
            for (Path f : s.toList()) Files.copy(f, dst.resolve(f.getFileName()));
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
        return dst;
    }

    /** Rewrites dir/model.safetensors after {@code edit} changed its tensor map. */
    public static void editTensors(Path dir, Consumer<Map<String, Tensor>> edit) {
        Path f = dir.resolve(HfDirectory.WEIGHTS);
        try (var scope = MemoryScope.open()) {
            Map<String, Tensor> t = new LinkedHashMap<>(Safetensors.read(f).tensors());
            edit.accept(t);
            Safetensors.write(f, t, Map.of("format", "pt"));
        }
    }

    /** Rewrites dir/config.json after {@code edit} changed it. */
    public static void editConfig(Path dir, Consumer<ObjectNode> edit) {
        try {
            ObjectMapper json = new ObjectMapper();
            ObjectNode c = (ObjectNode) json.readTree(dir.resolve(HfDirectory.CONFIG).toFile());
            edit.accept(c);
            Files.writeString(dir.resolve(HfDirectory.CONFIG), json.writerWithDefaultPrettyPrinter().writeValueAsString(c));
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }
}
