package dev.kiln.backend.cuda;

import dev.kiln.tensor.DType;
import dev.kiln.tensor.Device;
import dev.kiln.tensor.DeviceTensors;
import dev.kiln.tensor.Tensor;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.api.parallel.Isolated;

import java.nio.file.Path;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertSame;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * {@code Tensor}'s own methods on device tensors through {@link CudaTensors} on the {@link EmulatedDevice}: factories
 * on a device, copies host↔device and device↔device (contiguous, strided, permuted destinations, F32↔BF16), fills,
 * item(). Values are exact: copies move bits, and bf16 conversion rounds to nearest even on both sides.
 */
@Isolated
class DeviceTensorsEmulatedTest {
    private CudaRuntime rt;
    private Device gpu;

    @BeforeEach
    void open(@TempDir Path cache) {
        rt = EmulatedDevice.install(cache);
        gpu = rt.device();
    }

    @AfterEach
    void close() {
        EmulatedDevice.uninstall();
    }

    private static float[] ramp(int n) {
        float[] v = new float[n];
        for (int i = 0; i < n; i++) v[i] = (float) Math.sin(0.37 * i) * (1 + i % 7);
        return v;
    }

    @Test
    void factoriesAndCopiesBetweenHostAndDevice() {
        float[] v = ramp(24);
        Tensor d = Tensor.of(gpu, v, 4, 6);
        assertEquals(gpu, d.device());
        assertArrayEquals(v, d.toFloatArray());
        assertArrayEquals(v, d.cpu().toFloatArray());
        assertArrayEquals(new int[] {3, -1, 7}, Tensor.ofInts(gpu, new int[] {3, -1, 7}, 3).toIntArray());
        assertArrayEquals(new float[6], Tensor.zeros(gpu, DType.F32, 2, 3).toFloatArray());
        assertArrayEquals(new float[] {2.5f, 2.5f, 2.5f}, Tensor.full(2.5, gpu, DType.F32, 3).toFloatArray());
        assertEquals(v[9], Tensor.of(gpu, v, 24).sliceView(0, 9, 10).view().item());

        Tensor host = Tensor.of(v, 4, 6);
        Tensor back = Tensor.zeros(gpu, DType.F32, 4, 6);
        back.copyFrom(host);
        assertArrayEquals(v, back.toFloatArray());
        Tensor there = host.to(gpu);
        assertEquals(gpu, there.device());
        assertSame(there, there.to(gpu));   // already there and contiguous
        assertArrayEquals(v, there.to(Device.CPU).toFloatArray());
    }

    @Test
    void stridedViewsPermutedDestinationsAndConversions() {
        float[] v = ramp(24);
        Tensor d = Tensor.of(gpu, v, 4, 6);
        // a transposed device view made contiguous on the device (the strided copy kernel), and brought back
        Tensor t = d.transposeView(0, 1).contiguous();
        assertEquals(gpu, t.device());
        assertArrayEquals(Tensor.of(v, 4, 6).transposeView(0, 1).contiguous().toFloatArray(), t.toFloatArray());
        // into a transposed device view (a Hugging Face Conv1D weight loaded into a Linear's [out, in])
        Tensor dst = Tensor.zeros(gpu, DType.F32, 6, 4);
        dst.transposeView(0, 1).copyFrom(Tensor.of(v, 4, 6));
        assertArrayEquals(t.toFloatArray(), dst.toFloatArray());
        // F32 → BF16 → F32 on the device equals the host's rounding
        Tensor bf = d.to(DType.BF16);
        assertEquals(DType.BF16, bf.dtype());
        assertArrayEquals(Tensor.of(v, 4, 6).to(DType.BF16).to(DType.F32).toFloatArray(), bf.to(DType.F32).toFloatArray());
        // a host destination that is a strided view
        Tensor h = Tensor.zeros(6, 4);
        h.transposeView(0, 1).copyFrom(d);
        assertArrayEquals(t.toFloatArray(), h.toFloatArray());
    }

    @Test
    void fillsAndWhatIsRefused() {
        Tensor x = Tensor.of(gpu, ramp(10), 10);
        x.fill(-1.25);
        for (float f : x.toFloatArray()) assertEquals(-1.25f, f);
        Tensor b = Tensor.empty(gpu, DType.BF16, 5);
        b.fill(3.0);
        for (float f : b.toFloatArray()) assertEquals(3.0f, f);
        x.fill(0);
        assertArrayEquals(new float[10], x.toFloatArray());
        Tensor ids = Tensor.zeros(gpu, DType.I32, 3);
        var e = assertThrows(IllegalArgumentException.class, () -> ids.fill(2));
        assertTrue(e.getMessage().contains("I32") && e.getMessage().contains("cuda:0"), e.getMessage());
        var closed = assertThrows(IllegalStateException.class, () -> DeviceTensors.of(new Device(Device.Kind.CUDA, 5)));
        assertTrue(closed.getMessage().startsWith("cuda:5 is not open"), closed.getMessage());
    }
}
