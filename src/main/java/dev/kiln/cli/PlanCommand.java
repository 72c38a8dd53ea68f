package dev.kiln.cli;

import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import dev.kiln.KilnException;
import dev.kiln.plan.CostModel;
import dev.kiln.plan.MemoryPlanner;
import dev.kiln.plan.PlanRow;
import dev.kiln.plan.PlanShape;
import dev.kiln.plan.Prediction;
import dev.kiln.tensor.MemoryCategory;
import dev.kiln.train.Workspace;
import dev.kiln.train.config.RunConfig;
import picocli.CommandLine.Command;
import picocli.CommandLine.Mixin;
import picocli.CommandLine.Option;
import picocli.CommandLine.Parameters;

import java.nio.file.Path;
import java.util.List;
import java.util.Locale;
import java.util.concurrent.Callable;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/** kiln plan: predicted memory per category of a config's training step, and which technique combinations fit. */
@Command(name = "plan", description = "Predict a config's peak memory per category and list the combinations of recompute, gradient "
        + "accumulation, 8-bit optimizer state and offload that fit a device, with their relative cost.")
final class PlanCommand implements Callable<Integer> {
    @Parameters(arity = "0..1", paramLabel = "CONFIG", description = "YAML or JSON config (same as --config)")
    Path configFile;

    @Mixin
    RunOptions run;

    @Option(names = "--device-memory", defaultValue = "80GiB", paramLabel = "SIZE", description = "device memory, e.g. 80GiB, 16GB, 512MiB (default: ${DEFAULT-VALUE})")
    String deviceMemory;

    @Option(names = "--json", description = "print one JSON object instead of tables")
    boolean json;

    @Option(names = "--all", description = "list every combination, not only those that fit")
    boolean all;

    @Option(names = "--device-tflops", defaultValue = "400", description = "achieved device TFLOP/s for the offload cost (default: ${DEFAULT-VALUE})")
    double tflops;

    @Option(names = "--link-gbps", defaultValue = "25", description = "host link GB/s for the offload cost (default: ${DEFAULT-VALUE})")
    double linkGbps;

    @Override
    public Integer call() throws Exception {
        if (configFile != null && run.config != null) throw new KilnException("give the config either as CONFIG or as --config, not both");
        if (configFile != null) run.config = configFile;
        long device = parseSize(deviceMemory);
        RunConfig cfg = run.load(List.of());
        if (cfg.model().vocab_size() <= 0) // the tokenizer's vocabulary, as a run resolves it
            cfg = cfg.withModel(cfg.model().withVocabSize(Workspace.prepareData(cfg.data()).tokenizer().vocabSize()));
        PlanShape shape = MemoryPlanner.shape(cfg);
        Prediction own = MemoryPlanner.predict(shape);
        CostModel cost = new CostModel(tflops * 1e12, linkGbps * 1e9);
        List<PlanRow> rows = MemoryPlanner.combinations(cfg, cost);
        if (json) {
            System.out.println(new ObjectMapper().writeValueAsString(toJson(shape, own, rows, device)));
            return 0;
        }
        String offloaded = shape.offloadParams() ? (shape.offloadOptimizer() ? "parameters + optimizer state" : "parameters")
                : shape.offloadOptimizer() ? "optimizer state" : null;
        System.out.printf("kiln plan: %s %d layers, %d heads%s, %d embd, block %d, vocab %d; %,d parameters; %s; %s; batch %d × %d micro-batch(es)%s%s%n",
                shape.llama() ? "Llama" : "GPT", shape.nLayer(), shape.nHead(),
                shape.llama() ? String.format(" (%d kv), intermediate %d", shape.nKvHead(), shape.intermediate()) : "", shape.nEmbd(),
                shape.seqLen(), shape.vocab(), shape.parameterCount(), shape.optimizer(), shape.precision(), shape.microBatch(), shape.accumSteps(),
                shape.dropout() ? ", dropout on" : "",
                offloaded == null ? "" : String.format("; offload %s, prefetch depth %d", offloaded, shape.prefetchDepth()));
        System.out.printf("this config (recompute %s): predicted peak memory of a training step%n", shape.recompute().key());
        for (MemoryCategory c : MemoryCategory.values()) System.out.printf("  %-16s %12s%n", c.key(), size(own.peak(c)));
        System.out.printf("  %-16s %12s   %s %s%n", "total (peak)", size(own.peakTotal()), own.peakTotal() <= device ? "fits" : "does NOT fit", size(device));
        System.out.println("  (the allocator's cache of free blocks comes on top: a run reports it as mem_reserved)");
        List<PlanRow> shown = all ? rows : rows.stream().filter(r -> r.fits(device)).toList();
        System.out.printf("%ncombinations at %d sequences × %d tokens per step, cheapest first; %s in %s:%n",
                shape.microBatch() * shape.accumSteps(), shape.seqLen(), all ? "all" : "those that fit", size(device));
        if (shown.isEmpty()) {
            System.out.println("  none fits; the smallest needs " + size(rows.stream().mapToLong(PlanRow::peakTotal).min().orElse(0)) + " (--all lists them)");
            return 0;
        }
        System.out.printf("  %-10s %-8s %-29s %10s %10s %10s %10s %10s %10s %6s %s%n", "recompute", "micro×k", "params/optimizer state",
                "params", "grads", "optim", "activ", "temps", "total", "cost", all ? "fits" : "");
        for (PlanRow r : shown)
            System.out.printf("  %-10s %-8s %-29s %10s %10s %10s %10s %10s %10s %6.2f %s%n", r.recompute().key(), r.microBatch() + "×" + r.accumSteps(),
                    r.state().name() + (r.implemented() ? "" : " *"), size(r.peak(MemoryCategory.PARAMETERS)), size(r.peak(MemoryCategory.GRADIENTS)),
                    size(r.peak(MemoryCategory.OPTIMIZER_STATE)), size(r.peak(MemoryCategory.ACTIVATIONS)), size(r.peak(MemoryCategory.TEMPORARIES)),
                    size(r.peakTotal()), r.relativeCost(), all ? (r.fits(device) ? "yes" : "no") : "");
        System.out.printf("cost: time per step relative to this config without recompute or offload; recompute from FLOPs, offload adds host transfers at %s GB/s "
                + "against %s TFLOP/s, not overlapped%n", fmt(linkGbps), fmt(tflops));
        if (shown.stream().anyMatch(r -> !r.implemented()))
            System.out.println("* not trained yet: kiln train refuses this combination (an estimate of what it would take)");
        System.out.println("select a row with --set for each of its settings, e.g. " + shown.getFirst().settings());
        return 0;
    }

    private static ObjectNode toJson(PlanShape shape, Prediction own, List<PlanRow> rows, long device) {
        ObjectMapper m = new ObjectMapper();
        ObjectNode root = m.createObjectNode();
        root.putPOJO("shape", shape);
        root.put("device_memory", device);
        ObjectNode self = root.putObject("config");
        for (MemoryCategory c : MemoryCategory.values()) self.put(c.key(), own.peak(c));
        self.put("peak_total", own.peakTotal()).put("fits", own.peakTotal() <= device);
        ArrayNode list = root.putArray("combinations");
        for (PlanRow r : rows) {
            ObjectNode o = list.addObject().put("recompute", r.recompute().key()).put("micro_batch", r.microBatch()).put("grad_accum_steps", r.accumSteps())
                    .put("state", r.state().name()).put("implemented", r.implemented());
            for (MemoryCategory c : MemoryCategory.values()) o.put(c.key(), r.peak(c));
            o.put("peak_total", r.peakTotal()).put("relative_cost", r.relativeCost()).put("fits", r.fits(device)).put("settings", r.settings());
        }
        return root;
    }

    private static final Pattern SIZE = Pattern.compile("\\s*([0-9]+(?:\\.[0-9]+)?)\\s*([KMGT]i?B|B)?\\s*", Pattern.CASE_INSENSITIVE);

    /** "80GiB", "16GB", "512MiB", "1048576" → bytes (KiB/MiB/GiB/TiB powers of 1024; KB/MB/GB/TB of 1000). */
    static long parseSize(String s) {
        Matcher m = SIZE.matcher(s);
        if (!m.matches()) throw new KilnException("--device-memory: \"" + s + "\" is not a size such as 80GiB, 16GB or 512MiB");
        double v = Double.parseDouble(m.group(1));
        String unit = m.group(2) == null ? "B" : m.group(2).toUpperCase(Locale.ROOT);
        double mult = switch (unit) {
            case "B" -> 1;
            case "KB" -> 1e3;
            case "MB" -> 1e6;
            case "GB" -> 1e9;
            case "TB" -> 1e12;
            case "KIB" -> 1024.0;
            case "MIB" -> 1024.0 * 1024;
            case "GIB" -> 1024.0 * 1024 * 1024;
            case "TIB" -> 1024.0 * 1024 * 1024 * 1024;
            default -> throw new KilnException("--device-memory: unknown unit " + m.group(2));
        };
        long bytes = (long) (v * mult);
        if (bytes <= 0) throw new KilnException("--device-memory must be > 0, got " + s);
        return bytes;
    }

    static String size(long bytes) {
        if (bytes >= 10L << 30) return String.format("%.1f GiB", bytes / (double) (1L << 30));
        return String.format("%.1f MiB", bytes / (double) (1L << 20));
    }

    private static String fmt(double v) {
        return v == Math.rint(v) ? Long.toString((long) v) : Double.toString(v);
    }
}
