package dev.kiln.ops;

import dev.kiln.autograd.Tape;
import dev.kiln.tensor.DType;
import dev.kiln.tensor.Tensor;
import org.junit.jupiter.api.Test;

import static dev.kiln.ops.GradCheck.check;
import static dev.kiln.ops.GradCheck.rand;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** Llama's ops (RMSNorm, rotary embedding, SiLU/SwiGLU, grouped-query attention) against finite differences and plain compositions, in double precision. */
class LlamaOpsGradientTest {

    @Test
    void rmsNorm() {
        Tensor w = rand(2, 6);
        for (int i = 0; i < 6; i++) w.setFlat(i, 1 + 0.3 * w.getFlat(i));
        check("rmsnorm", x -> Norms.rmsNorm(x[0], x[1], 1e-5), rand(1, 2, 3, 6), w);
        check("rmsnorm wide eps", x -> Norms.rmsNorm(x[0], x[1], 0.5), rand(3, 4, 6), w);
    }

    @Test
    void rmsNormValues() {
        Tensor x = Tensor.ofDoubles(new double[]{1, -2, 3, 0.5, 0.5, 0.5}, 2, 3).to(DType.F64);
        Tensor w = Tensor.ofDoubles(new double[]{1, 2, -1}, 3).to(DType.F64);
        Tensor y = Norms.rmsNorm(x, w, 1e-6);
        double r0 = 1 / Math.sqrt((1 + 4 + 9) / 3.0 + 1e-6), r1 = 1 / Math.sqrt(0.25 + 1e-6);
        double[] want = {r0, -4 * r0, -3 * r0, 0.5 * r1, r1, -0.5 * r1};
        for (int i = 0; i < 6; i++) assertEquals(want[i], y.getFlat(i), 1e-14);
    }

    @Test
    void rotaryEmbedding() {
        Rope.Tables tables = Rope.tables(16, 4, 10000, DType.F64);
        check("rope", x -> Rope.apply(x[0], tables), rand(1, 2, 5, 12)); // 3 heads of 4
        Rope.Tables big = Rope.tables(40, 6, 500, DType.F64);
        check("rope theta 500", x -> Rope.apply(x[0], big), rand(2, 1, 37, 6));
    }

    @Test
    void rotaryEmbeddingIsRotateHalf() {
        int d = 6, h = 3, t = 5;
        double theta = 10000;
        Tensor x = rand(4, 2, t, 2 * d);
        Tensor y = Rope.apply(x, Rope.tables(8, d, theta, DType.F64));
        Tape.clear();
        for (int b = 0; b < 2; b++)
            for (int p = 0; p < t; p++)
                for (int head = 0; head < 2; head++)
                    for (int j = 0; j < d; j++) {
                        int i = j % h;
                        double ang = p * Math.pow(theta, -2.0 * i / d);
                        double rot = j < h ? -x.get(b, p, head * d + j + h) : x.get(b, p, head * d + j - h); // rotate_half
                        double want = x.get(b, p, head * d + j) * Math.cos(ang) + rot * Math.sin(ang);
                        assertEquals(want, y.get(b, p, head * d + j), 1e-13);
                    }
        // position 0 is not rotated
        for (int j = 0; j < 2 * d; j++) assertEquals(x.get(1, 0, j), y.get(1, 0, j), 0.0);
    }

    @Test
    void siluAndSwiglu() {
        check("silu", x -> Activations.silu(x[0]), rand(1, 3, 7));
        check("swiglu", x -> Activations.swiglu(x[0], x[1]), rand(1, 3, 7), rand(2, 3, 7));
        Tensor a = rand(3, 5), u = rand(4, 5);
        Tensor y = Activations.swiglu(a, u), s = Activations.silu(a);
        Tape.clear();
        for (int i = 0; i < 5; i++) {
            double av = a.getFlat(i);
            assertEquals(av / (1 + Math.exp(-av)), s.getFlat(i), 1e-15);
            assertEquals(s.getFlat(i) * u.getFlat(i), y.getFlat(i), 1e-15);
        }
    }

    @Test
    void groupedQueryAttention() {
        // 4 query heads sharing 2 K/V heads of size 3; T = 19 spans two causal row blocks
        check("gqa", x -> Attention.causalGroupedQueryAttention(x[0], x[1], x[2], 4, 2), rand(1, 2, 19, 12), rand(2, 2, 19, 6), rand(3, 2, 19, 6));
        check("mqa", x -> Attention.causalGroupedQueryAttention(x[0], x[1], x[2], 3, 1), rand(4, 1, 7, 6), rand(5, 1, 7, 2), rand(6, 1, 7, 2));
    }

    @Test
    void groupedQueryAttentionIsAttentionWithRepeatedKv() {
        int b = 2, t = 9, h = 4, kvh = 2, d = 3, c = h * d;
        Tensor q = rand(1, b, t, c), k = rand(2, b, t, kvh * d), v = rand(3, b, t, kvh * d);
        Tensor y = Attention.causalGroupedQueryAttention(q, k, v, h, kvh);
        Tensor qkv = Tensor.empty(DType.F64, b, t, 3 * c);
        for (int bi = 0; bi < b; bi++)
            for (int p = 0; p < t; p++)
                for (int head = 0; head < h; head++)
                    for (int j = 0; j < d; j++) {
                        int kvHead = head / (h / kvh); // repeat_kv: query heads 0,1 → kv 0; 2,3 → kv 1
                        qkv.set(q.get(bi, p, head * d + j), bi, p, head * d + j);
                        qkv.set(k.get(bi, p, kvHead * d + j), bi, p, c + head * d + j);
                        qkv.set(v.get(bi, p, kvHead * d + j), bi, p, 2 * c + head * d + j);
                    }
        Tensor want = Attention.causalSelfAttentionPacked(qkv, h);
        Tape.clear();
        for (long i = 0; i < want.numel(); i++) assertEquals(want.getFlat(i), y.getFlat(i), 1e-14);
        // n_kv_head = n_head is multi-head attention
        Tensor full = rand(4, b, t, 3 * c);
        Tensor mha = Attention.causalGroupedQueryAttention(Views.slice(full, 2, 0, c), Views.slice(full, 2, c, 2 * c), Views.slice(full, 2, 2 * c, 3 * c), h, h);
        Tensor packed = Attention.causalSelfAttentionPacked(full, h);
        Tape.clear();
        for (long i = 0; i < packed.numel(); i++) assertEquals(packed.getFlat(i), mha.getFlat(i), 0.0);
    }

    @Test
    void badShapesAreNamed() {
        var e = assertThrows(IllegalArgumentException.class, () -> Attention.causalGroupedQueryAttention(rand(1, 1, 4, 12), rand(2, 1, 4, 6), rand(3, 1, 4, 6), 4, 3));
        assertTrue(e.getMessage().contains("n_kv_head"), e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> Rope.apply(rand(1, 1, 20, 8), Rope.tables(16, 4, 10000, DType.F64)));
        assertTrue(e.getMessage().contains("exceeds"), e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> Norms.rmsNorm(rand(1, 2, 5), rand(2, 4), 1e-5));
        assertTrue(e.getMessage().contains("rmsNorm"), e.getMessage());
        Tape.clear();
    }
}
