package dev.kiln.report;

import com.fasterxml.jackson.databind.JsonNode;
import dev.kiln.KilnException;
import org.knowm.xchart.CategoryChart;
import org.knowm.xchart.CategoryChartBuilder;
import org.knowm.xchart.XYChart;
import org.knowm.xchart.XYSeries;
import org.knowm.xchart.internal.chartpart.Chart;
import org.knowm.xchart.style.Styler;

import java.awt.Color;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * {@code kiln report runs/<name>}: PNG charts of one run's {@code metrics.jsonl} (loss, learning rate,
 * throughput, memory) and an {@code index.html} showing them with a summary table and the run's
 * resolved {@code config.yaml}.
 */
public final class RunReport {
    private static final double MIB = 1024.0 * 1024.0;
    private static final Color LOSS = new Color(31, 119, 180);
    private static final Color[] VAL = {new Color(214, 39, 40), new Color(44, 160, 44), new Color(148, 103, 189), new Color(255, 127, 14)};

    private RunReport() {}

    /** The charts of {@code m} by PNG file name, in the order the page shows them; charts without data are left out. */
    public static Map<String, Chart<?, ?>> charts(RunMetrics m) {
        Map<String, Chart<?, ?>> out = new LinkedHashMap<>();
        double[] step = RunMetrics.column(m.steps(), "step");
        String name = m.name();

        XYChart loss = Charts.line(name + ": loss", "step", "loss");
        double[] raw = RunMetrics.column(m.steps(), "loss");
        XYSeries r = Charts.addLine(loss, "train loss", step, raw);
        if (r != null) {
            r.setLineColor(Charts.light(LOSS));
            r.setLineWidth(1f);
            XYSeries sm = Charts.addLine(loss, "train loss (smoothed)", step, Charts.smooth(raw, Charts.smoothingFor(raw.length)));
            sm.setLineColor(LOSS);
        }
        double[] evalStep = RunMetrics.column(m.evals(), "step");
        List<String> valKeys = new ArrayList<>(List.of("val_loss"));
        for (String a : List.of("ema", "swa", "lawa")) if (RunMetrics.has(m.evals(), "val_loss_" + a)) valKeys.add("val_loss_" + a);
        for (int i = 0; i < valKeys.size(); i++) {
            XYSeries v = Charts.addPoints(loss, valKeys.get(i), evalStep, RunMetrics.column(m.evals(), valKeys.get(i)));
            if (v != null) { v.setMarkerColor(VAL[i % VAL.length]); v.setLineColor(VAL[i % VAL.length]); }
        }
        if (!loss.getSeriesMap().isEmpty()) out.put("loss.png", loss);

        XYChart lr = Charts.line(name + ": learning rate", "step", "learning rate");
        lr.getStyler().setLegendVisible(false);
        if (Charts.addLine(lr, "lr", step, RunMetrics.column(m.steps(), "lr")) != null) out.put("lr.png", lr);

        XYChart tps = Charts.line(name + ": throughput", "step", "tokens / s");
        double[] t = RunMetrics.column(m.steps(), "tok_per_s");
        XYSeries tr = Charts.addLine(tps, "tok/s", step, t);
        if (tr != null) {
            tr.setLineColor(Charts.light(LOSS));
            tr.setLineWidth(1f);
            Charts.addLine(tps, "tok/s (smoothed)", step, Charts.smooth(t, Charts.smoothingFor(t.length))).setLineColor(LOSS);
            out.put("throughput.png", tps);
        }

        if (RunMetrics.has(m.steps(), "host_bytes_in_use")) {
            XYChart mem = Charts.line(name + ": host memory in use (off-heap tensors)", "step", "MiB");
            mem.getStyler().setLegendVisible(false);
            double[] b = RunMetrics.column(m.steps(), "host_bytes_in_use");
            for (int i = 0; i < b.length; i++) b[i] /= MIB;
            Charts.addLine(mem, "host bytes in use", step, b);
            out.put("memory.png", mem);
        }
        if (m.account() != null) out.put("memory_account.png", accountChart(name, m.account()));
        CategoryChart peaks = memoryPeaksChart(name, m.evals());
        if (peaks != null) out.put("memory_peaks.png", peaks);
        return out;
    }

    /**
     * Bars of the peak memory by category over the whole run (the memory account's {@code mem_peak_<category>} on the
     * last evaluation record, in MiB), categories that never held memory left out, and the peak of the total (less
     * than the sum: the categories peak at different moments); null when the run has none.
     */
    static CategoryChart memoryPeaksChart(String name, List<JsonNode> evals) {
        JsonNode last = null;
        for (JsonNode e : evals) if (e.has("mem_peak_total")) last = e;
        if (last == null) return null;
        CategoryChart c = new CategoryChartBuilder().width(Charts.WIDTH).height(Charts.HEIGHT)
                .title(name + ": peak memory by category (to step " + last.path("step").asLong() + ")")
                .xAxisTitle("category").yAxisTitle("MiB").build();
        var st = c.getStyler();
        st.setLegendVisible(false);
        st.setLabelsVisible(true);
        st.setChartBackgroundColor(Color.WHITE);
        st.setAntiAlias(true);
        st.setyAxisTickLabelsFormattingFunction(Charts::num);
        st.setDecimalPattern("#,##0.#");
        List<String> cats = new ArrayList<>();
        List<Double> mib = new ArrayList<>();
        List<String> keys = new ArrayList<>();
        for (var cat : dev.kiln.tensor.MemoryCategory.values()) keys.add(cat.key());
        keys.add("total");
        for (String k : keys) {
            double v = last.path("mem_peak_" + k).asDouble(0);
            if (v > 0) {
                cats.add(k.replace('_', ' '));
                mib.add(v / MIB);
            }
        }
        c.addSeries("peak", cats, mib).setFillColor(LOSS);
        return c;
    }

    /** Bars of the memory account: weights, gradients and optimizer state, in KiB, MiB or GiB by size, each labelled. */
    static CategoryChart accountChart(String name, JsonNode acc) {
        CategoryChart c = new CategoryChartBuilder().width(Charts.WIDTH).height(Charts.HEIGHT)
                .title(name + ": memory account (" + String.format(java.util.Locale.ROOT, "%,d", acc.path("params").asLong()) + " parameters)")
                .xAxisTitle("category").yAxisTitle(unit(acc)).build();
        var st = c.getStyler();
        st.setLegendVisible(false);
        st.setLabelsVisible(true);
        st.setChartBackgroundColor(Color.WHITE);
        st.setAntiAlias(true);
        st.setLegendPosition(Styler.LegendPosition.InsideNE);
        st.setyAxisTickLabelsFormattingFunction(Charts::num);
        st.setDecimalPattern("#,##0.###");
        List<String> cats = new ArrayList<>();
        List<Double> mib = new ArrayList<>();
        double scale = unit(acc).equals("GiB") ? MIB * 1024 : unit(acc).equals("MiB") ? MIB : 1024;
        for (String[] k : new String[][]{{"param_bytes", "weights"}, {"grad_bytes", "gradients"}, {"optimizer_state_bytes", "optimizer state"}})
            if (acc.path(k[0]).isNumber()) { cats.add(k[1]); mib.add(acc.path(k[0]).asDouble() / scale); }
        c.addSeries("bytes", cats, mib).setFillColor(LOSS);
        return c;
    }

    private static String unit(JsonNode acc) {
        double max = Math.max(acc.path("param_bytes").asDouble(), Math.max(acc.path("grad_bytes").asDouble(), acc.path("optimizer_state_bytes").asDouble()));
        return max >= MIB * 1024 ? "GiB" : max >= MIB ? "MiB" : "KiB";
    }

    /** Writes the charts and {@code index.html} of the run at {@code runDir} to {@code outDir}; returns the files written. */
    public static List<Path> write(Path runDir, Path outDir) {
        RunMetrics m = RunMetrics.load(runDir);
        Map<String, Chart<?, ?>> charts = charts(m);
        List<Path> written = new ArrayList<>();
        for (var e : charts.entrySet()) {
            Path f = outDir.resolve(e.getKey());
            Charts.write(Charts.png(e.getValue()), f);
            written.add(f);
        }
        StringBuilder html = new StringBuilder(Charts.htmlHead("Kiln run " + m.name()));
        html.append("<h2>Summary</h2>\n").append(Charts.summaryTable(List.of(m.summary())));
        html.append("<h2>Charts</h2>\n");
        for (var e : charts.entrySet()) html.append(Charts.img(e.getKey(), e.getValue().getTitle()));
        html.append("<h2>Config</h2>\n");
        Path cfg = runDir.resolve("config.yaml");
        if (Files.isRegularFile(cfg)) {
            try {
                html.append("<pre>").append(Charts.esc(Files.readString(cfg, StandardCharsets.UTF_8))).append("</pre>\n");
            } catch (IOException e) {
                throw new KilnException("cannot read " + cfg + ": " + e.getMessage(), e);
            }
        } else {
            html.append("<p>(no config.yaml in ").append(Charts.esc(runDir.toString())).append(")</p>\n");
        }
        html.append("</body></html>\n");
        Path index = outDir.resolve("index.html");
        Charts.write(html.toString().getBytes(StandardCharsets.UTF_8), index);
        written.add(index);
        return written;
    }
}
