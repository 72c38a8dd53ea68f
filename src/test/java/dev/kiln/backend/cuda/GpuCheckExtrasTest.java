package dev.kiln.backend.cuda;

import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.parallel.Isolated;

import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** Checks added from packages above this one (the NCCL check) run inside gpu-check's report: ok/FAIL lines, failures, JSON. */
@Isolated
class GpuCheckExtrasTest {
    @Test
    void extrasAreReportedCountedAndAddToTheJsonLine() {
        CudaRuntime rt = FakeGpu.open();
        rt.bindCublas(FakeCublas.lookup());
        Map<String, GpuCheck.Extra> extras = new LinkedHashMap<>();
        extras.put("extra_ok", (r, json) -> {
            json.put("extra_value", 7);
            return "fine on " + r.device();
        });
        extras.put("extra_bad", (r, json) -> "FAIL it broke");
        extras.put("extra_throws", (r, json) -> {
            throw new IllegalStateException("boom");
        });
        ByteArrayOutputStream bytes = new ByteArrayOutputStream();
        List<String> failed = GpuCheck.run(new PrintStream(bytes, true), rt, true, extras);
        String out = bytes.toString();
        assertTrue(out.contains("ok       extra_ok       fine on cuda:0"), out);
        assertTrue(out.contains("FAIL     extra_bad      FAIL it broke"), out);
        assertTrue(out.contains("FAIL     extra_throws   FAIL java.lang.IllegalStateException: boom"), out);
        assertTrue(failed.contains("extra_bad") && failed.contains("extra_throws"), failed.toString());
        assertFalse(failed.contains("extra_ok"), failed.toString());
        String json = out.strip().lines().reduce((x, y) -> y).orElseThrow();
        assertTrue(json.contains("\"extra_value\":7"), json);
    }
}
