package dev.kiln.report;

import com.fasterxml.jackson.databind.JsonNode;
import dev.kiln.KilnException;
import dev.kiln.train.SmallRuns;
import dev.kiln.train.Trainer;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.knowm.xchart.XYChart;

import javax.imageio.ImageIO;
import java.awt.image.BufferedImage;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.PrintStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** Reports and comparisons of two small real runs (40 steps, evaluations at 20 and 40 plus the final one). */
class RunReportTest {
    @TempDir
    static Path tmp;
    static Path runA, runB;

    @BeforeAll
    static void train() {
        PrintStream quiet = new PrintStream(new ByteArrayOutputStream());
        runA = new Trainer(SmallRuns.config(tmp, "a", 40, "train.eval_interval=20"), false, quiet, false).run().runDir();
        runB = new Trainer(SmallRuns.config(tmp, "b", 30, "train.eval_interval=20", "optim.learning_rate=3e-3"), false, quiet, false).run().runDir();
    }

    @Test
    void reportWritesDecodablePngsAndAnIndexShowingThemAndTheConfig() throws IOException {
        SmallRuns.Cli r = SmallRuns.cli("report", runA.toString());
        assertEquals(0, r.code(), r.err());
        Path dir = runA.resolve("report");
        List<String> pngs = List.of("loss.png", "lr.png", "throughput.png", "memory.png", "memory_account.png", "memory_peaks.png");
        for (String p : pngs) {
            BufferedImage img = ImageIO.read(dir.resolve(p).toFile());
            assertNotNull(img, p);
            assertEquals(Charts.WIDTH, img.getWidth(), p);
            assertEquals(Charts.HEIGHT, img.getHeight(), p);
        }
        String html = Files.readString(dir.resolve("index.html"));
        for (String p : pngs) assertTrue(html.contains("src=\"" + p + "\""), p);
        String yaml = Files.readString(runA.resolve("config.yaml"));
        assertTrue(html.contains(Charts.esc(yaml)), "the config, escaped");
        assertTrue(html.contains("ended by"), "summary table");
        assertTrue(html.contains(">40<"), "steps in the summary");
    }

    @Test
    void memoryPeaksChartHasABarPerCategoryThatHeldMemory() {
        RunMetrics m = RunMetrics.load(runA);
        var peaks = (org.knowm.xchart.CategoryChart) RunReport.charts(m).get("memory_peaks.png");
        assertNotNull(peaks);
        var bars = peaks.getSeriesMap().get("peak");
        List<?> cats = List.copyOf(bars.getXData());
        assertEquals(List.of("parameters", "gradients", "optimizer state", "activations", "temporaries", "total"), cats,
                "no collectives in one process: no communication bar");
        List<? extends Number> mib = List.copyOf(bars.getYData());
        JsonNode last = m.evals().getLast();
        assertEquals(last.path("mem_peak_parameters").asDouble() / (1 << 20), mib.get(0).doubleValue(), 1e-9);
        assertEquals(last.path("mem_peak_total").asDouble() / (1 << 20), mib.get(5).doubleValue(), 1e-9);
        assertTrue(mib.get(5).doubleValue() > mib.get(0).doubleValue(), "the total peak is above the parameters");
    }

    @Test
    void reportLossChartHasRawSmoothedAndValidationSeries() {
        RunMetrics m = RunMetrics.load(runA);
        XYChart loss = (XYChart) RunReport.charts(m).get("loss.png");
        assertEquals(List.of("train loss", "train loss (smoothed)", "val_loss"), List.copyOf(loss.getSeriesMap().keySet()));
        assertEquals(40, loss.getSeriesMap().get("train loss").getXData().length);
        assertEquals(m.evals().size(), loss.getSeriesMap().get("val_loss").getXData().length);
        assertTrue(m.evals().size() >= 2);
        RunMetrics.Summary s = m.summary();
        assertEquals(40, s.steps());
        assertFalse(Double.isNaN(s.finalValLoss()));
        assertFalse(s.endedBy().isEmpty());
        assertTrue(s.tokens() > 0);
    }

    @Test
    void compareHasOneSeriesPerRunOnEveryChartAndWritesItsFiles() throws IOException {
        List<RunMetrics> runs = List.of(RunMetrics.load(runA), RunMetrics.load(runB));
        for (RunComparison.XAxis x : RunComparison.XAxis.values()) {
            Map<String, XYChart> charts = RunComparison.charts(runs, x);
            assertEquals(List.of("loss.png", "val_loss.png", "lr.png", "throughput.png"), List.copyOf(charts.keySet()));
            for (var e : charts.entrySet()) assertEquals(List.of("a", "b"), List.copyOf(e.getValue().getSeriesMap().keySet()), e.getKey() + " " + x);
        }
        Path out = tmp.resolve("cmp");
        SmallRuns.Cli r = SmallRuns.cli("compare", runA.toString(), runB.toString(), "--out", out.toString(), "--x", "tokens");
        assertEquals(0, r.code(), r.err());
        String html = Files.readString(out.resolve("index.html"));
        for (String p : List.of("loss.png", "val_loss.png", "lr.png", "throughput.png")) {
            BufferedImage img = ImageIO.read(out.resolve(p).toFile());
            assertEquals(Charts.WIDTH, img.getWidth(), p);
            assertTrue(html.contains("src=\"" + p + "\""), p);
        }
        assertTrue(html.contains("<td>a</td>") && html.contains("<td>b</td>"));
        assertEquals(List.of("a", "a #2"), RunComparison.labels(List.of(runs.get(0), runs.get(0))));
    }

    @Test
    void missingOrBrokenMetricsIsAOneLineErrorNamingTheFile() throws IOException {
        Path empty = Files.createDirectories(tmp.resolve("empty"));
        KilnException e = assertThrows(KilnException.class, () -> RunReport.write(empty, empty.resolve("report")));
        assertTrue(e.getMessage().contains(empty.resolve("metrics.jsonl").toString()), e.getMessage());
        assertFalse(e.getMessage().contains("\n"));

        SmallRuns.Cli r = SmallRuns.cli("report", empty.toString());
        assertEquals(2, r.code());
        assertEquals(1, r.err().strip().lines().count(), r.err());
        assertTrue(r.err().contains("metrics.jsonl"));

        Path bad = Files.createDirectories(tmp.resolve("bad"));
        Files.writeString(bad.resolve("metrics.jsonl"), "{\"step\": 1, \"loss\": 3.0}\nnot json\n{\"step\": 2, \"loss\": 2.9}\n");
        e = assertThrows(KilnException.class, () -> RunMetrics.load(bad));
        assertTrue(e.getMessage().contains(bad.resolve("metrics.jsonl") + ": line 2"), e.getMessage());
        assertFalse(e.getMessage().contains("\n"), e.getMessage());

        Files.writeString(bad.resolve("metrics.jsonl"), "{\"step\": 1, \"loss\": 3.0}\n{\"step\": 2, \"lo");   // torn last line: dropped
        assertEquals(1, RunMetrics.load(bad).steps().size());
    }

    @Test
    void smoothingIsABiasCorrectedEmaAndTheXAxisIsNamed() {
        double[] sm = Charts.smooth(new double[]{4, Double.NaN, 2}, 0.5);
        assertEquals(4, sm[0], 0.0);                                   // bias-corrected: starts at the first value
        assertTrue(Double.isNaN(sm[1]));
        assertEquals((0.5 * 0.5 * 4 + 0.5 * 2) / (0.5 * 0.5 + 0.5), sm[2], 1e-12);
        assertEquals(RunComparison.XAxis.TIME, RunComparison.XAxis.parse("time"));
        KilnException e = assertThrows(KilnException.class, () -> RunComparison.XAxis.parse("epoch"));
        assertTrue(e.getMessage().contains("--x"));
    }
}
