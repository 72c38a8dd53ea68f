package dev.kiln.ops;

import dev.kiln.autograd.Tape;
import dev.kiln.backend.Backend;
import dev.kiln.backend.Backend.Mat;
import dev.kiln.tensor.Tensor;

/**
 * Causal scaled dot-product attention as one op: softmax(Q·Kᵀ/√D + causal mask)·V over
 * (B, H, T, D) inputs. The T×T probabilities are saved for backward (the plain reference; a
 * flash-style kernel that never stores them comes with the fast backends).
 */
public final class Attention {
    private Attention() {}

    public static Tensor causalSelfAttention(Tensor q, Tensor k, Tensor v) {
        if (q.dim() != 4 || !q.sameShape(k) || !q.sameShape(v))
            throw new IllegalArgumentException("attention needs q, k, v of equal shape (B, H, T, D), got " + q.shapeString() + ", " + k.shapeString() + ", " + v.shapeString());
        int b = q.size(0), h = q.size(1), t = q.size(2), d = q.size(3);
        int bh = b * h;
        double scale = 1.0 / Math.sqrt(d);
        Tensor qc = q.contiguous(), kc = k.contiguous(), vc = v.contiguous();
        Backend be = Backend.of(q);
        Tensor scores = Tensor.empty(q.device(), q.dtype(), b, h, t, t);
        // S = scale · Q·Kᵀ ; P = causal-softmax(S) ; O = P·V
        be.gemm(bh, t, t, d, scale, rows(qc, t, d), rows(kc, t, d).transpose(), 0, rows(scores, t, t));
        Tensor probs = Tensor.empty(q.device(), q.dtype(), b, h, t, t);
        be.softmax(scores, probs, true);
        scores.release();
        Tensor out = Tensor.empty(q.device(), q.dtype(), b, h, t, d);
        be.gemm(bh, t, d, t, 1.0, rows(probs, t, t), rows(vc, t, d), 0, rows(out, t, d));
        return Tape.record(out, (g, grads) -> {
            Mat gm = rows(g, t, d), pm = rows(probs, t, t);
            if (grads.wants(v)) // dV = Pᵀ·dO
                be.gemm(bh, t, d, t, 1.0, pm.transpose(), gm, 1.0, rows(grads.buffer(v), t, d));
            if (!grads.wants(q) && !grads.wants(k)) return;
            Tensor dp = Tensor.empty(q.device(), q.dtype(), b, h, t, t); // dP = dO·Vᵀ
            be.gemm(bh, t, t, d, 1.0, gm, rows(vc, t, d).transpose(), 0, rows(dp, t, t));
            Tensor ds = Tensor.zeros(q.device(), q.dtype(), b, h, t, t); // dS = P ⊙ (dP − Σ P·dP); masked P = 0 ⇒ dS = 0
            be.softmaxBackward(probs, dp, ds);
            dp.release();
            if (grads.wants(q)) // dQ = scale · dS·K
                be.gemm(bh, t, d, t, scale, rows(ds, t, t), rows(kc, t, d), 1.0, rows(grads.buffer(q), t, d));
            if (grads.wants(k)) // dK = scale · dSᵀ·Q
                be.gemm(bh, t, d, t, scale, rows(ds, t, t).transpose(), rows(qc, t, d), 1.0, rows(grads.buffer(k), t, d));
            ds.release();
        }, q, k, v);
    }

    /**
     * The same attention on packed projections, as a GPT block produces them: qkv (B, T, 3C) →
     * (B, T, C) with heads side by side. One fused kernel: no head split/merge copies, and the
     * masked half of the score matrix is skipped (see CausalAttention in the CPU backend).
     */
    public static Tensor causalSelfAttentionPacked(Tensor qkv, int nHead) {
        if (qkv.dim() != 3 || qkv.size(2) % (3 * nHead) != 0)
            throw new IllegalArgumentException("packed attention needs (B, T, 3C) with C divisible by " + nHead + " heads, got " + qkv.shapeString());
        int b = qkv.size(0), t = qkv.size(1), c = qkv.size(2) / 3;
        Tensor x = qkv.contiguous();
        Tensor out = Tensor.empty(qkv.device(), qkv.dtype(), b, t, c);
        Tensor probs = Tensor.empty(qkv.device(), qkv.dtype(), b, nHead, t, t);
        Backend be = Backend.of(qkv);
        be.attention(x, nHead, out, probs);
        return Tape.record(out, (g, grads) -> {
            if (grads.wants(qkv)) be.attentionBackward(x, nHead, probs, g, grads.buffer(qkv));
        }, qkv);
    }

    /**
     * Causal grouped-query attention (Ainslie et al. 2023) on unpacked projections: q (B, T, nHead·D), k and
     * v (B, T, nKvHead·D) → (B, T, nHead·D), query head h attending with K/V head h / (nHead/nKvHead), as
     * Hugging Face's repeat_kv. It reuses the packed kernel: K/V heads are repeated into a (B, T, 3C) buffer
     * (a copy of 3C per token, small beside the projections), and the backward sums each repeated head's
     * gradient back into its K/V head. nKvHead = nHead is plain multi-head attention.
     */
    public static Tensor causalGroupedQueryAttention(Tensor q, Tensor k, Tensor v, int nHead, int nKvHead) {
        if (q.dim() != 3 || k.dim() != 3 || !k.sameShape(v) || q.size(0) != k.size(0) || q.size(1) != k.size(1))
            throw new IllegalArgumentException("grouped-query attention needs q (B, T, H·D) and k, v (B, T, Hkv·D), got "
                    + q.shapeString() + ", " + k.shapeString() + ", " + v.shapeString());
        if (nKvHead < 1 || nHead % nKvHead != 0)
            throw new IllegalArgumentException("grouped-query attention needs n_head (" + nHead + ") divisible by n_kv_head (" + nKvHead + ")");
        int b = q.size(0), t = q.size(1), c = q.size(2);
        if (c % nHead != 0 || k.size(2) * nHead != c * nKvHead)
            throw new IllegalArgumentException("grouped-query attention: q width " + c + " for " + nHead + " heads and k width " + k.size(2)
                    + " for " + nKvHead + " heads do not give one head size");
        int d = c / nHead, group = nHead / nKvHead;
        Tensor qkv = Tensor.empty(q.device(), q.dtype(), b, t, 3 * c);
        qkv.sliceView(2, 0, c).copyFrom(q);
        for (int h = 0; h < nHead; h++) { // query head h reads K/V head h / group
            int kv = h / group;
            qkv.sliceView(2, c + h * d, c + (h + 1) * d).copyFrom(k.sliceView(2, kv * d, (kv + 1) * d));
            qkv.sliceView(2, 2 * c + h * d, 2 * c + (h + 1) * d).copyFrom(v.sliceView(2, kv * d, (kv + 1) * d));
        }
        Tensor out = Tensor.empty(q.device(), q.dtype(), b, t, c);
        Tensor probs = Tensor.empty(q.device(), q.dtype(), b, nHead, t, t);
        Backend be = Backend.of(q);
        be.attention(qkv, nHead, out, probs);
        return Tape.record(out, (g, grads) -> {
            if (!grads.wants(q) && !grads.wants(k) && !grads.wants(v)) return;
            Tensor gqkv = Tensor.zeros(q.device(), q.dtype(), b, t, 3 * c);
            be.attentionBackward(qkv, nHead, probs, g, gqkv);
            if (grads.wants(q)) be.accumulate(grads.buffer(q), gqkv.sliceView(2, 0, c));
            for (int h = 0; h < nHead; h++) { // the group's gradients add up in its K/V head
                int kv = h / group;
                if (grads.wants(k)) be.accumulate(grads.buffer(k).sliceView(2, kv * d, (kv + 1) * d), gqkv.sliceView(2, c + h * d, c + (h + 1) * d));
                if (grads.wants(v)) be.accumulate(grads.buffer(v).sliceView(2, kv * d, (kv + 1) * d), gqkv.sliceView(2, 2 * c + h * d, 2 * c + (h + 1) * d));
            }
            gqkv.release();
        }, q, k, v);
    }

    /** A contiguous (B, H, r, c) tensor as B·H matrices of r × c. */
    private static Mat rows(Tensor x, int r, int c) {
        return new Mat(x, x.offset(), (long) r * c, c, 1);
    }
}
