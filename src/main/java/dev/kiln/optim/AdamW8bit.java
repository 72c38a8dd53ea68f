package dev.kiln.optim;

import dev.kiln.backend.Backend;
import dev.kiln.backend.cpu.AdamW8bitKernel;
import dev.kiln.backend.cpu.CpuBackend;
import dev.kiln.nn.Parameter;
import dev.kiln.tensor.DType;
import dev.kiln.tensor.MemoryScope;
import dev.kiln.tensor.Tensor;

import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * 8-bit AdamW (Dettmers et al. 2022, "8-bit Optimizers via Block-wise Quantization"; bitsandbytes' AdamW8bit):
 * the same update as {@link AdamW}, but both moments are stored block-wise quantised — one byte per element,
 * an index into {@link DynamicQuantMap#SIGNED} (first moment) or {@link DynamicQuantMap#UNSIGNED} (second
 * moment), and one fp32 absmax per block of {@link #BLOCK} elements. Each step dequantises a block, updates the
 * moments and the parameter in fp32 (the parameter update uses the new moments before they are re-quantised, as
 * bitsandbytes does), then re-quantises the block against its new absmax. The step runs on the Vector API
 * ({@link AdamW8bitKernel}), threaded over blocks, bitwise equal to the plain scalar loop kept here as its reference. State is ≈ 2.03 bytes per parameter
 * instead of 8.
 *
 * <p>Block size 256 (bitsandbytes' optimizers use 256 since 0.38; the paper's 2048): one outlier then coarsens
 * only 256 neighbours, the absmax overhead is 4/256 = 1.6% of the state, and blocks are the unit of parallel
 * work. Tensors of fewer than {@link #MIN_8BIT_SIZE} elements (biases, norm gains) keep fp32 moments, as
 * bitsandbytes' {@code min_8bit_size} does: they cost little and are the most sensitive.
 *
 * <p>One shared step count (parameters that join late through model growth count from the run's step, unlike
 * {@link AdamW#joinedAt}). State names: "exp_avg.&lt;p&gt;", "exp_avg_sq.&lt;p&gt;" for fp32 moments of small
 * tensors; "exp_avg_q8.&lt;p&gt;", "exp_avg_absmax.&lt;p&gt;", "exp_avg_sq_q8.&lt;p&gt;",
 * "exp_avg_sq_absmax.&lt;p&gt;" (I8 codes, F32 per-block scales) for quantised ones.
 */
public final class AdamW8bit extends BaseOptimizer {
    public static final int BLOCK = 256;
    public static final int MIN_8BIT_SIZE = 4096;

    /** One block-wise quantised moment: code indices (as unsigned bytes) and one absmax per block. */
    record Quantized(Tensor codes, Tensor absmax) {}

    private final double beta1, beta2, eps;
    private final Map<String, Tensor> expAvg = new LinkedHashMap<>(), expAvgSq = new LinkedHashMap<>();
    private final Map<String, Quantized> expAvgQ = new LinkedHashMap<>(), expAvgSqQ = new LinkedHashMap<>();
    private boolean scalarReference; // tests: run the plain scalar loop instead of the vector kernel

    public AdamW8bit(List<ParamGroup> groups, double beta1, double beta2, double eps) {
        super(groups);
        this.beta1 = beta1;
        this.beta2 = beta2;
        this.eps = eps;
        try (var s = MemoryScope.persistent()) {
            for (ParamGroup g : groups)
                for (var e : g.params().entrySet()) {
                    Parameter p = e.getValue();
                    if (p.numel() < MIN_8BIT_SIZE) {
                        expAvg.put(e.getKey(), Tensor.zerosLike(p));
                        expAvgSq.put(e.getKey(), Tensor.zerosLike(p));
                        continue;
                    }
                    if (p.dtype() != DType.F32 || !p.isContiguous())
                        throw new IllegalArgumentException("adamw8bit: parameter " + e.getKey() + " must be a contiguous F32 tensor, got " + p.dtype() + " " + p.shapeString());
                    int n = Math.toIntExact(p.numel()), blocks = blocks(n);
                    expAvgQ.put(e.getKey(), new Quantized(Tensor.zeros(DType.I8, n), Tensor.zeros(DType.F32, blocks)));
                    expAvgSqQ.put(e.getKey(), new Quantized(Tensor.zeros(DType.I8, n), Tensor.zeros(DType.F32, blocks)));
                }
        }
    }

    /** The same optimizer stepping with the plain scalar loop, the reference the vector kernel is tested against. */
    static AdamW8bit scalarReference(List<ParamGroup> groups, double beta1, double beta2, double eps) {
        AdamW8bit o = new AdamW8bit(groups, beta1, beta2, eps);
        o.scalarReference = true;
        return o;
    }

    static int blocks(int n) {
        return (n + BLOCK - 1) / BLOCK;
    }

    @Override
    public String name() {
        return "adamw8bit";
    }

    @Override
    public void step(double lr) {
        step++;
        for (ParamGroup g : groups)
            for (var e : g.params().entrySet()) {
                Parameter p = e.getValue();
                if (p.grad() == null) continue;
                String n = e.getKey();
                double lrG = lr * g.lrScale();
                if (expAvg.containsKey(n))
                    Backend.of(p).adamw(p, p.grad(), expAvg.get(n), expAvgSq.get(n), lrG, beta1, beta2, eps, g.weightDecay(), step);
                else
                    updateQuantized(n, p, lrG, g.weightDecay());
            }
    }

    private void updateQuantized(String name, Parameter p, double lr, double weightDecay) {
        Tensor grad = p.grad();
        if (grad.dtype() != DType.F32 || !grad.isContiguous())
            throw new IllegalArgumentException("adamw8bit: gradient of " + name + " must be a contiguous F32 tensor, got " + grad.dtype() + " " + grad.shapeString());
        int n = Math.toIntExact(p.numel());
        MemorySegment ps = slice(p, 4), gs = slice(grad, 4);
        Quantized mq = expAvgQ.get(name), vq = expAvgSqQ.get(name);
        MemorySegment mc = slice(mq.codes(), 1), ma = slice(mq.absmax(), 4), vc = slice(vq.codes(), 1), va = slice(vq.absmax(), 4);
        // the scalars exactly as FusedF32.adamw forms them, so a step from zero state equals fp32 AdamW's bit for bit
        double bc1 = 1 - Math.pow(beta1, step), bc2 = 1 - Math.pow(beta2, step);
        var s = new AdamW8bitKernel.Scalars((float) beta1, (float) beta2, (float) (1 - beta1), (float) (1 - beta2),
                (float) (lr / bc1), (float) (1.0 / Math.sqrt(bc2)), (float) (lr * weightDecay), (float) eps);
        var sm = DynamicQuantMap.SIGNED.codebook();
        var um = DynamicQuantMap.UNSIGNED.codebook();
        CpuBackend.get().pool().parallelFor(blocks(n), 8, (b0, b1) -> {
            if (scalarReference) updateBlocksScalar(b0, b1, n, ps, gs, mc, ma, vc, va, s);
            else AdamW8bitKernel.blocks(b0, b1, BLOCK, n, ps, gs, mc, ma, vc, va, sm, um, s);
        });
    }

    /**
     * The plain scalar loop the vector kernel must equal bit for bit (tests run both): dequantise, update the moments
     * and the parameter in fp32, then re-quantise each moment against its block's new absmax.
     */
    private static void updateBlocksScalar(int blockStart, int blockEnd, int n, MemorySegment ps, MemorySegment gs, MemorySegment mc,
                                           MemorySegment ma, MemorySegment vc, MemorySegment va, AdamW8bitKernel.Scalars s) {
        DynamicQuantMap sm = DynamicQuantMap.SIGNED, um = DynamicQuantMap.UNSIGNED;
        float[] m = new float[BLOCK], v = new float[BLOCK];
        for (int blk = blockStart; blk < blockEnd; blk++) {
            int i0 = blk * BLOCK, len = Math.min(BLOCK, n - i0);
            float mScale = ma.getAtIndex(F, blk), vScale = va.getAtIndex(F, blk), mMax = 0, vMax = 0;
            for (int j = 0; j < len; j++) {
                int i = i0 + j;
                float g = gs.getAtIndex(F, i);
                float mi = sm.decode(mc.get(B, i) & 0xff) * mScale * s.b1() + g * s.c1();
                float vi = um.decode(vc.get(B, i) & 0xff) * vScale * s.b2() + g * g * s.c2();
                m[j] = mi;
                v[j] = vi;
                mMax = Math.max(mMax, Math.abs(mi));
                vMax = Math.max(vMax, vi);
                float pv = ps.getAtIndex(F, i);
                pv = pv - pv * s.wd();
                ps.setAtIndex(F, i, pv - mi / ((float) Math.sqrt(vi) * s.invSqrtBc2() + s.eps()) * s.stepSize());
            }
            ma.setAtIndex(F, blk, mMax);
            va.setAtIndex(F, blk, vMax);
            for (int j = 0; j < len; j++) {
                mc.set(B, i0 + j, (byte) sm.encode(mMax == 0 ? 0 : m[j] / mMax));
                vc.set(B, i0 + j, (byte) um.encodePositive(vMax == 0 ? 0 : v[j] / vMax));
            }
        }
    }

    private static final ValueLayout.OfFloat F = ValueLayout.JAVA_FLOAT;
    private static final ValueLayout.OfByte B = ValueLayout.JAVA_BYTE;

    private static MemorySegment slice(Tensor t, int bytes) {
        return t.segment().asSlice(t.offset() * bytes, t.numel() * bytes);
    }

    /** Dequantised copy of a quantised moment (tests, inspection): code × block absmax, in fp32. */
    static float[] dequantize(Tensor codes, Tensor absmax, DynamicQuantMap map) {
        int n = Math.toIntExact(codes.numel());
        float[] out = new float[n];
        MemorySegment c = slice(codes, 1), a = slice(absmax, 4);
        for (int i = 0; i < n; i++) out[i] = map.decode(c.get(B, i) & 0xff) * a.getAtIndex(F, i / BLOCK);
        return out;
    }

    /** The dequantised first and second moment of parameter {@code name} (fp32 state for small tensors), for tests. */
    float[][] moments(String name) {
        if (expAvg.containsKey(name)) return new float[][]{expAvg.get(name).toFloatArray(), expAvgSq.get(name).toFloatArray()};
        Quantized m = expAvgQ.get(name), v = expAvgSqQ.get(name);
        return new float[][]{dequantize(m.codes(), m.absmax(), DynamicQuantMap.SIGNED), dequantize(v.codes(), v.absmax(), DynamicQuantMap.UNSIGNED)};
    }

    @Override
    public Map<String, Tensor> stateDict() {
        Map<String, Tensor> out = new LinkedHashMap<>();
        putNamed(out, "exp_avg", expAvg);
        putNamed(out, "exp_avg_sq", expAvgSq);
        expAvgQ.forEach((k, q) -> {
            out.put("exp_avg_q8." + k, q.codes());
            out.put("exp_avg_absmax." + k, q.absmax());
        });
        expAvgSqQ.forEach((k, q) -> {
            out.put("exp_avg_sq_q8." + k, q.codes());
            out.put("exp_avg_sq_absmax." + k, q.absmax());
        });
        return out;
    }
}
