package dev.kiln.tensor;

import com.fasterxml.jackson.core.JsonProcessingException;
import com.fasterxml.jackson.core.StreamReadFeature;
import com.fasterxml.jackson.databind.DeserializationFeature;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.json.JsonMapper;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import dev.kiln.AtomicFile;
import dev.kiln.KilnException;

import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.channels.FileChannel;
import java.nio.charset.CharacterCodingException;
import java.nio.charset.CodingErrorAction;
import java.nio.charset.StandardCharsets;
import java.nio.file.AccessDeniedException;
import java.nio.file.FileSystemException;
import java.nio.file.Files;
import java.nio.file.NoSuchFileException;
import java.nio.file.NotDirectoryException;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Comparator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * Reads and writes the Hugging Face safetensors format, so checkpoints move between Kiln and PyTorch.
 *
 * <pre>
 * u64 little-endian N | N bytes of UTF-8 JSON header, space-padded so the data starts 8-byte aligned | data
 * header: {"__metadata__": {str: str}, "name": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}, ...}
 * </pre>
 * Offsets are relative to the start of the data section; tensors are stored little-endian, row-major, back to back
 * in the order of the map given to {@link #write}. Every fault is a {@link KilnException} naming the file and,
 * where it applies, the tensor.
 */
public final class Safetensors {
    /** Largest header accepted (the limit of the reference implementation): anything bigger is corruption. */
    static final long MAX_HEADER_BYTES = 100_000_000L;
    private static final String METADATA = "__metadata__";
    /** Bytes handed to one {@code FileChannel.write} call: keeps each ByteBuffer view well under 2 GiB. */
    private static final long WRITE_CHUNK = 64L << 20;
    private static final boolean LITTLE_ENDIAN_HOST = ByteOrder.nativeOrder() == ByteOrder.LITTLE_ENDIAN;

    private static final JsonMapper JSON = JsonMapper.builder()
            .enable(StreamReadFeature.STRICT_DUPLICATE_DETECTION)
            .enable(DeserializationFeature.FAIL_ON_TRAILING_TOKENS)
            .build();

    private Safetensors() {}

    /** The tensors of a file (in file order, owned by the caller's {@link MemoryScope} if one is open) and its metadata. */
    public record Loaded(Map<String, Tensor> tensors, Map<String, String> metadata) {}

    /** What the header says about one tensor, without its data. */
    public record Header(DType dtype, int[] shape) {
        public Header {
            shape = shape.clone();
        }

        @Override
        public int[] shape() {
            return shape.clone();
        }

        public long numel() {
            return Shape.numel(shape);
        }

        @Override
        public boolean equals(Object o) {
            return o instanceof Header h && h.dtype == dtype && Arrays.equals(h.shape, shape);
        }

        @Override
        public int hashCode() {
            return 31 * dtype.hashCode() + Arrays.hashCode(shape);
        }

        @Override
        public String toString() {
            return dtype + Shape.str(shape);
        }
    }

    /** One validated header entry; offsets are absolute file positions. */
    private record Entry(String name, DType dtype, int[] shape, long begin, long end) {}

    // ---------------------------------------------------------------- write

    /**
     * Writes {@code tensors} (map iteration order is file order; views are written as their contiguous data) and
     * {@code metadata} to {@code file} atomically: a temp file in the same directory is written, forced to disk and
     * renamed over the target, so a crash or an I/O error leaves any previous file intact.
     */
    public static void write(Path file, Map<String, Tensor> tensors, Map<String, String> metadata) {
        if (metadata == null) metadata = Map.of();
        // Validate and lay out everything before touching the disk.
        ObjectNode header = JSON.createObjectNode();
        if (!metadata.isEmpty()) {
            ObjectNode meta = header.putObject(METADATA);
            for (Map.Entry<String, String> m : metadata.entrySet()) {
                if (m.getKey() == null || m.getValue() == null)
                    throw new KilnException("cannot write checkpoint " + file + ": metadata entry " + m.getKey() + " = "
                            + m.getValue() + " has a null key or value");
                meta.put(m.getKey(), m.getValue());
            }
        }
        List<MemorySegment> data = new ArrayList<>(tensors.size());
        List<DType> dtypes = new ArrayList<>(tensors.size());
        List<Tensor> copies = new ArrayList<>();
        long offset = 0;
        try {
            for (Map.Entry<String, Tensor> e : tensors.entrySet()) {
                String name = e.getKey();
                Tensor t = e.getValue();
                if (name == null || name.equals(METADATA))
                    throw new KilnException("cannot write checkpoint " + file + ": invalid tensor name " + name);
                if (t == null) throw new KilnException("cannot write checkpoint " + file + ": tensor \"" + name + "\" is null");
                Tensor c = t.cpu().contiguous(); // a device tensor comes to the host (a checkpoint saved from the GPU)
                if (c != t) copies.add(c);
                long bytes = c.numel() * c.dtype().byteSize();
                data.add(c.segment().asSlice(c.offset() * c.dtype().byteSize(), bytes));
                dtypes.add(c.dtype());
                ObjectNode entry = header.putObject(name);
                entry.put("dtype", c.dtype().safetensorsName());
                ArrayNode shape = entry.putArray("shape");
                for (int d : c.shape()) shape.add(d);
                entry.putArray("data_offsets").add(offset).add(offset + bytes);
                offset += bytes;
            }
            byte[] json;
            try {
                json = JSON.writeValueAsBytes(header);
            } catch (JsonProcessingException e) {
                throw new KilnException("cannot write checkpoint " + file + ": cannot encode header: " + e.getOriginalMessage(), e);
            }
            int padded = (json.length + 7) & ~7;
            ByteBuffer head = ByteBuffer.allocate(8 + padded).order(ByteOrder.LITTLE_ENDIAN);
            head.putLong(padded).put(json);
            while (head.hasRemaining()) head.put((byte) ' ');
            head.flip();
            atomicWrite(file, out -> {
                writeFully(out, head);
                for (int i = 0; i < data.size(); i++) writeLittleEndian(out, data.get(i), dtypes.get(i));
            });
        } finally {
            for (Tensor c : copies) c.release();
        }
    }


    private static void atomicWrite(Path file, AtomicFile.Body body) {
        try {
            AtomicFile.write(file, body);
        } catch (IOException e) {
            throw new KilnException("cannot write checkpoint " + file + ": " + describe(e), e);
        }
    }

    private static void writeFully(FileChannel out, ByteBuffer buf) throws IOException {
        while (buf.hasRemaining()) out.write(buf);
    }

    /** Streams a tensor's bytes straight from its memory (through a small staging buffer on big-endian hosts). */
    private static void writeLittleEndian(FileChannel out, MemorySegment src, DType dtype) throws IOException {
        long n = src.byteSize();
        if (LITTLE_ENDIAN_HOST || dtype.byteSize() == 1) {
            for (long pos = 0; pos < n; pos += WRITE_CHUNK)
                writeFully(out, src.asSlice(pos, Math.min(WRITE_CHUNK, n - pos)).asByteBuffer());
            return;
        }
        ValueLayout nat = elementLayout(dtype), little = nat.withOrder(ByteOrder.LITTLE_ENDIAN);
        long chunk = 1L << 20;
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment stage = arena.allocate(chunk, 8);
            for (long pos = 0; pos < n; pos += chunk) {
                long len = Math.min(chunk, n - pos);
                MemorySegment.copy(src, nat, pos, stage, little, 0, len / dtype.byteSize());
                writeFully(out, stage.asSlice(0, len).asByteBuffer());
            }
        }
    }

    private static ValueLayout elementLayout(DType dtype) {
        return switch (dtype.byteSize()) {
            case 1 -> ValueLayout.JAVA_BYTE;
            case 2 -> ValueLayout.JAVA_SHORT_UNALIGNED;
            case 4 -> ValueLayout.JAVA_INT_UNALIGNED;
            case 8 -> ValueLayout.JAVA_LONG_UNALIGNED;
            default -> throw new IllegalStateException("element size " + dtype.byteSize());
        };
    }

    // ---------------------------------------------------------------- read

    /**
     * Loads every tensor of {@code file}. Tensors are allocated with {@link Tensor#empty} (so an open
     * {@link MemoryScope} owns them) and returned in file order; the header is fully validated first.
     */
    public static Loaded read(Path file) {
        try (FileChannel ch = open(file)) {
            Map<String, String> metadata = new LinkedHashMap<>();
            List<Entry> entries = parseHeader(file, ch, metadata);
            Map<String, Tensor> tensors = new LinkedHashMap<>();
            try (Arena arena = Arena.ofConfined()) {
                long first = entries.stream().mapToLong(Entry::begin).min().orElse(0);
                long last = entries.stream().mapToLong(Entry::end).max().orElse(0);
                MemorySegment mapped = last > first ? ch.map(FileChannel.MapMode.READ_ONLY, first, last - first, arena) : null;
                for (Entry e : entries) {
                    Tensor t = Tensor.empty(e.dtype, e.shape);
                    tensors.put(e.name, t);
                    long bytes = e.end - e.begin;
                    if (bytes == 0) continue;
                    if (LITTLE_ENDIAN_HOST || e.dtype.byteSize() == 1) {
                        MemorySegment.copy(mapped, e.begin - first, t.segment(), 0, bytes);
                    } else {
                        ValueLayout nat = elementLayout(e.dtype);
                        MemorySegment.copy(mapped, nat.withOrder(ByteOrder.LITTLE_ENDIAN), e.begin - first,
                                t.segment(), nat, 0, bytes / e.dtype.byteSize());
                    }
                }
            } catch (IOException | RuntimeException | Error ex) {
                for (Tensor t : tensors.values()) t.release();
                throw ex;
            }
            return new Loaded(tensors, metadata);
        } catch (IOException e) {
            throw new KilnException("cannot read checkpoint " + file + ": " + describe(e), e);
        }
    }

    /** The dtype and shape of every tensor in {@code file}, in file order, after the same validation as {@link #read}. */
    public static Map<String, Header> readHeader(Path file) {
        try (FileChannel ch = open(file)) {
            Map<String, Header> out = new LinkedHashMap<>();
            for (Entry e : parseHeader(file, ch, new LinkedHashMap<>())) out.put(e.name, new Header(e.dtype, e.shape));
            return out;
        } catch (IOException e) {
            throw new KilnException("cannot read checkpoint " + file + ": " + describe(e), e);
        }
    }

    /** Where one tensor's bytes lie in its file: absolute positions [begin, end), little-endian, row-major. */
    public record Span(DType dtype, int[] shape, long begin, long end) {}

    /**
     * Every tensor of {@code file} with the position of its bytes (file order), after the same validation as
     * {@link #read}, and the metadata into {@code metadata}: for ranged or memory-mapped reads of part of a file.
     */
    public static Map<String, Span> locate(Path file, Map<String, String> metadata) {
        try (FileChannel ch = open(file)) {
            Map<String, Span> out = new LinkedHashMap<>();
            for (Entry e : parseHeader(file, ch, metadata)) out.put(e.name, new Span(e.dtype, e.shape, e.begin, e.end));
            return out;
        } catch (IOException e) {
            throw new KilnException("cannot read checkpoint " + file + ": " + describe(e), e);
        }
    }

    /** The {@code __metadata__} map of {@code file} (empty when it has none). */
    public static Map<String, String> readMetadata(Path file) {
        try (FileChannel ch = open(file)) {
            Map<String, String> metadata = new LinkedHashMap<>();
            parseHeader(file, ch, metadata);
            return metadata;
        } catch (IOException e) {
            throw new KilnException("cannot read checkpoint " + file + ": " + describe(e), e);
        }
    }

    private static FileChannel open(Path file) throws IOException {
        if (!Files.exists(file)) throw new KilnException("cannot read checkpoint " + file + ": no such file");
        if (!Files.isRegularFile(file)) throw new KilnException("cannot read checkpoint " + file + ": not a regular file");
        return FileChannel.open(file, StandardOpenOption.READ);
    }

    /** Reads and validates the header; fills {@code metadata}; returns entries sorted by data position. */
    private static List<Entry> parseHeader(Path file, FileChannel ch, Map<String, String> metadata) throws IOException {
        long size = ch.size();
        if (size < 8)
            throw bad(file, "file is " + size + " bytes, shorter than the 8-byte header length; not a safetensors file");
        ByteBuffer lenBuf = ByteBuffer.allocate(8).order(ByteOrder.LITTLE_ENDIAN);
        readFully(ch, lenBuf, 0);
        long n = lenBuf.getLong(0); // u64: a negative value here is simply huge
        if (n < 0 || n > MAX_HEADER_BYTES)
            throw bad(file, "header length " + Long.toUnsignedString(n) + " bytes is absurd (limit " + MAX_HEADER_BYTES
                    + "); not a safetensors file");
        if (n > size - 8)
            throw bad(file, "header length " + n + " bytes is larger than the rest of the file (" + (size - 8)
                    + " bytes); truncated or not a safetensors file");
        ByteBuffer headBuf = ByteBuffer.allocate((int) n);
        readFully(ch, headBuf, 8);
        headBuf.flip();
        String text;
        try {
            text = StandardCharsets.UTF_8.newDecoder().onMalformedInput(CodingErrorAction.REPORT)
                    .onUnmappableCharacter(CodingErrorAction.REPORT).decode(headBuf).toString();
        } catch (CharacterCodingException e) {
            throw bad(file, "header is not valid UTF-8");
        }
        JsonNode root;
        try {
            root = JSON.readTree(text);
        } catch (JsonProcessingException e) {
            throw bad(file, "header is not valid JSON: " + e.getOriginalMessage());
        }
        if (root == null || root.isMissingNode()) throw bad(file, "header is empty, not a JSON object");
        if (!root.isObject())
            throw bad(file, "header is not a JSON object but " + root.getNodeType().toString().toLowerCase(java.util.Locale.ROOT));

        long dataStart = 8 + n, dataSize = size - dataStart;
        List<Entry> entries = new ArrayList<>();
        for (Map.Entry<String, JsonNode> f : root.properties()) {
            String name = f.getKey();
            JsonNode v = f.getValue();
            if (name.equals(METADATA)) {
                if (!v.isObject()) throw bad(file, METADATA + " is not a JSON object");
                for (Map.Entry<String, JsonNode> kv : v.properties()) {
                    if (!kv.getValue().isTextual())
                        throw bad(file, METADATA + " value of \"" + kv.getKey() + "\" is not a string");
                    metadata.put(kv.getKey(), kv.getValue().textValue());
                }
                continue;
            }
            entries.add(parseEntry(file, name, v, dataStart, dataSize));
        }

        // File order is data order (stable on header order for ties such as empty tensors).
        entries.sort(Comparator.comparingLong(Entry::begin).thenComparingLong(Entry::end));
        Entry prev = null;
        for (Entry e : entries) {
            if (e.end == e.begin) continue; // an empty tensor occupies no bytes
            if (prev != null && e.begin < prev.end)
                throw bad(file, "tensors \"" + prev.name + "\" " + rel(prev, dataStart) + " and \"" + e.name + "\" "
                        + rel(e, dataStart) + " overlap");
            prev = e;
        }
        return entries;
    }

    private static String rel(Entry e, long dataStart) {
        return "[" + (e.begin - dataStart) + ", " + (e.end - dataStart) + "]";
    }

    private static Entry parseEntry(Path file, String name, JsonNode v, long dataStart, long dataSize) {
        String where = "tensor \"" + name + "\": ";
        if (!v.isObject()) throw bad(file, where + "entry is not a JSON object");
        JsonNode dt = v.get("dtype"), sh = v.get("shape"), off = v.get("data_offsets");
        if (dt == null) throw bad(file, where + "missing \"dtype\"");
        if (sh == null) throw bad(file, where + "missing \"shape\"");
        if (off == null) throw bad(file, where + "missing \"data_offsets\"");
        if (!dt.isTextual()) throw bad(file, where + "\"dtype\" is not a string: " + dt);
        DType dtype;
        try {
            dtype = DType.fromSafetensorsName(dt.textValue());
        } catch (IllegalArgumentException e) {
            StringBuilder ok = new StringBuilder();
            for (DType d : DType.values()) ok.append(ok.isEmpty() ? "" : ", ").append(d.safetensorsName());
            throw bad(file, where + "unsupported dtype \"" + dt.textValue() + "\" (Kiln reads " + ok + ")");
        }
        if (!sh.isArray()) throw bad(file, where + "\"shape\" is not an array: " + sh);
        int[] shape = new int[sh.size()];
        long numel = 1;
        for (int i = 0; i < shape.length; i++) {
            JsonNode d = sh.get(i);
            if (!d.isIntegralNumber()) throw bad(file, where + "shape " + sh + " has a non-integer dimension");
            if (d.bigIntegerValue().signum() < 0) throw bad(file, where + "shape " + sh + " has a negative dimension");
            if (!d.canConvertToInt()) throw bad(file, where + "shape " + sh + " has a dimension too large for Kiln (max " + Integer.MAX_VALUE + ")");
            shape[i] = d.intValue();
            try {
                numel = Math.multiplyExact(numel, shape[i]);
            } catch (ArithmeticException e) {
                throw bad(file, where + "shape " + sh + " has too many elements");
            }
        }
        if (!off.isArray() || off.size() != 2 || !off.get(0).isIntegralNumber() || !off.get(1).isIntegralNumber())
            throw bad(file, where + "\"data_offsets\" is not a pair of integers: " + off);
        if (off.get(0).bigIntegerValue().signum() < 0 || off.get(1).bigIntegerValue().signum() < 0)
            throw bad(file, where + "data_offsets " + off + " are negative");
        if (!off.get(0).canConvertToLong() || !off.get(1).canConvertToLong())
            throw bad(file, where + "data_offsets " + off + " lie past the end of the data section (" + dataSize + " bytes)");
        long begin = off.get(0).longValue(), end = off.get(1).longValue();
        if (begin > end) throw bad(file, where + "data_offsets " + off + " are not [begin, end] with begin <= end");
        long expected;
        try {
            expected = Math.multiplyExact(numel, dtype.byteSize());
        } catch (ArithmeticException e) {
            throw bad(file, where + "shape " + sh + " has too many elements");
        }
        if (end - begin != expected)
            throw bad(file, where + "byte length does not match shape " + Shape.str(shape) + " of " + dtype.safetensorsName()
                    + ": expected " + numel + " x " + dtype.byteSize() + " = " + expected + " bytes, data_offsets "
                    + off + " give " + (end - begin));
        if (end > dataSize)
            throw bad(file, where + "data_offsets " + off + " lie past the end of the data section (" + dataSize
                    + " bytes); the file is truncated");
        return new Entry(name, dtype, shape, dataStart + begin, dataStart + end);
    }

    private static void readFully(FileChannel ch, ByteBuffer buf, long pos) throws IOException {
        while (buf.hasRemaining()) {
            int r = ch.read(buf, pos);
            if (r < 0) throw new IOException("unexpected end of file");
            pos += r;
        }
    }

    private static KilnException bad(Path file, String what) {
        return new KilnException("cannot read checkpoint " + file + ": " + what);
    }

    /** A one-line cause: "No space left on device", "permission denied: /x", "no such directory: /x". */
    private static String describe(IOException e) {
        if (e instanceof NoSuchFileException f) return "no such file or directory: " + f.getFile();
        if (e instanceof AccessDeniedException f) return "permission denied: " + f.getFile();
        if (e instanceof NotDirectoryException f) return "not a directory: " + f.getFile();
        if (e instanceof FileSystemException f && f.getReason() != null)
            return f.getReason() + (f.getFile() != null ? ": " + f.getFile() : "");
        return e.getMessage() != null ? e.getMessage() : e.toString();
    }
}
