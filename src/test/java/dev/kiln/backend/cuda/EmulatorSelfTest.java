package dev.kiln.backend.cuda;

import dev.kiln.backend.cuda.Kernels.Kernel;
import dev.kiln.backend.cuda.Kernels.Kind;
import dev.kiln.backend.cuda.Kernels.Param;
import dev.kiln.backend.cuda.Kernels.Rule;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;

import java.io.IOException;
import java.io.InputStream;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.charset.StandardCharsets;
import java.util.List;
import java.util.Map;

import static dev.kiln.backend.cuda.HostBuffers.readF32;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * The host emulation itself (kiln_emu.h), on kernels made to test it: barriers inside loops,
 * every warp shuffle, atomics from blocks running in parallel, and a barrier that cannot complete
 * reported as a deadlock rather than hanging the test run.
 */
class EmulatorSelfTest {
    private static final String SOURCE = "emu_selftest.cu";
    private static KernelEmulator emu;

    private static Kernel kernel(String name, Rule rule, String size, Param... params) {
        return new Kernel(name, SOURCE, rule, List.of(size), List.of(params));
    }

    private static Param p(String name) {
        return new Param(name, Kind.PTR);
    }

    private static Param i(String name) {
        return new Param(name, Kind.INT);
    }

    @BeforeEach
    void build() throws IOException {
        if (emu != null) return;
        String text;
        try (InputStream in = EmulatorSelfTest.class.getResourceAsStream("/dev/kiln/cuda/" + SOURCE)) {
            text = new String(in.readAllBytes(), StandardCharsets.UTF_8);
        }
        emu = KernelEmulator.of(Map.of(SOURCE, text), List.of(
                kernel("block_scan", Rule.COLUMNS, "n", p("x"), p("out"), i("n")),
                kernel("warp_shuffles", Rule.COLUMNS, "n", p("x"), p("out"), i("n")),
                kernel("diverged_barrier", Rule.ONE_BLOCK, "n", p("out"), i("n")),
                kernel("count_threads", Rule.COLUMNS, "n", p("count"), p("sum"), i("n"))));
    }

    @Test
    void barriersInsideLoopsSeparateTheRounds() {
        try (HostBuffers buf = new HostBuffers()) {
            int n = 1000; // four blocks, the last one partial
            float[] x = new float[n];
            for (int i = 0; i < n; i++) x[i] = i % 7 + 1;
            MemorySegment out = buf.zeros(HostBuffers.Type.F32, n);
            emu.launch("block_scan", buf.f32(x), out, n);
            float[] want = new float[n];
            for (int i = 0; i < n; i++) want[i] = (i % Kernels.BLOCK == 0 ? 0 : want[i - 1]) + x[i];
            assertArrayEquals(want, readF32(out, n));
            buf.checkGuards();
        }
    }

    @Test
    void warpShufflesReadTheRightLanes() {
        try (HostBuffers buf = new HostBuffers()) {
            int n = 320;
            float[] x = new float[n];
            for (int i = 0; i < n; i++) x[i] = i * 3 % 11;
            MemorySegment out = buf.zeros(HostBuffers.Type.F32, 4 * n);
            emu.launch("warp_shuffles", buf.f32(x), out, n);
            float[] got = readF32(out, 4 * n);
            for (int i = 0; i < n; i++) {
                int lane = i % 32, base = i - lane;
                float sum = 0;
                for (int l = 0; l < 32; l++) sum += x[base + l];
                assertEquals(x[i ^ 1], got[4 * i], "xor 1 at " + i);
                assertEquals(lane + 5 < 32 ? x[i + 5] : x[i], got[4 * i + 1], "down 5 at " + i);
                assertEquals(x[base + 7], got[4 * i + 2], "broadcast of lane 7 at " + i);
                assertEquals(sum, got[4 * i + 3], "warp sum at " + i);
            }
        }
    }

    @Test
    void atomicsFromParallelBlocksAllLand() {
        try (HostBuffers buf = new HostBuffers()) {
            int n = 256 * 37 - 5;
            MemorySegment count = buf.ints(0), sum = buf.zeros(HostBuffers.Type.F32, 1);
            emu.launch("count_threads", count, sum, n);
            assertEquals(n, count.get(ValueLayout.JAVA_INT, 0));
            assertEquals(n, readF32(sum, 1)[0]);
        }
    }

    @Test
    void aBarrierThatCannotCompleteIsReportedAsADeadlock() {
        try (HostBuffers buf = new HostBuffers()) {
            var e = assertThrows(IllegalStateException.class, () -> emu.launch("diverged_barrier", buf.ints(0), 1));
            assertTrue(e.getMessage().contains("deadlock in block 0"), e.getMessage());
        }
    }
}
