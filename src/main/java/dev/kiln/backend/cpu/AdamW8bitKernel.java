package dev.kiln.backend.cpu;

import jdk.incubator.vector.ByteVector;
import jdk.incubator.vector.FloatVector;
import jdk.incubator.vector.IntVector;
import jdk.incubator.vector.VectorMask;
import jdk.incubator.vector.VectorOperators;
import jdk.incubator.vector.VectorShape;
import jdk.incubator.vector.VectorSpecies;

import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteOrder;

/**
 * The 8-bit AdamW update of a range of quantisation blocks on the Vector API (dev.kiln.optim.AdamW8bit holds the
 * state and the plain scalar reference). Per block: dequantise both moments (gather of the code table), update them
 * and the parameter in fp32, take the new absmax, re-quantise to the nearest code. Every lane does the scalar
 * reference's float operations in the same order (no FMA), and max is exact in any order, so results are bitwise the
 * scalar loop's for finite inputs. Nearest code: one gather from a 33 KiB table by the float's top 16 bits, then a
 * masked step past the one midpoint the bucket may hold ({@link Codebook}) — gathers are what this loop pays for on
 * x86, so it does one per encoded value instead of a lookup plus a dependent midpoint lookup.
 */
public final class AdamW8bitKernel {
    private static final VectorSpecies<Float> SP = FloatVector.SPECIES_PREFERRED;
    private static final VectorSpecies<Integer> IS = IntVector.SPECIES_PREFERRED;
    private static final VectorSpecies<Byte> BS = VectorSpecies.of(byte.class, VectorShape.forBitSize(SP.length() * 8));
    private static final int L = SP.length();
    private static final ByteOrder O = ByteOrder.nativeOrder();
    private static final ValueLayout.OfFloat F = ValueLayout.JAVA_FLOAT;
    private static final ValueLayout.OfByte B = ValueLayout.JAVA_BYTE;

    private AdamW8bitKernel() {}

    /**
     * A quantisation map in the form the kernel reads: {@code code}, the 256 ascending values, {@code zero}, the index
     * of code 0, and {@code entries}, one int per bucket of floats sharing their top 16 bits (sign, exponent, 7 mantissa
     * bits): bits 0–7 the nearest code of the bucket's smallest value, bit 24 set when the next rounding midpoint lies
     * inside the bucket, bits 8–23 that midpoint's low 16 bits. The map's midpoints are far enough apart that a bucket
     * holds at most one, so the nearest code is the entry's code, plus one if x ≥ that midpoint — for two floats with
     * the same top 16 bits, an integer comparison of the low 16 bits (reversed for negative floats). Exponents are
     * clamped to [{@link #MIN_EXPONENT}, {@link #MAX_EXPONENT}], whose buckets stand for all below and above (values
     * under 2⁻³¹ all round to code 0, and 2 and more, ±∞ and NaN to an end code), so the table is 33 KiB, not 256.
     */
    public record Codebook(float[] code, int[] entries, int zero) {
        public static final int MIN_EXPONENT = 96, MAX_EXPONENT = 128;
        private static final int PER_SIGN = (MAX_EXPONENT - MIN_EXPONENT + 1) << 7;
        public static final int ENTRIES = 2 * PER_SIGN;

        public Codebook {
            if (code.length != 256 || entries.length != ENTRIES)
                throw new IllegalArgumentException("codebook: 256 codes and " + ENTRIES + " bucket entries expected, got " + code.length + " and " + entries.length);
        }

        /** The entry index of the bucket with top 16 bits {@code key}. */
        public static int index(int key) {
            int e = Math.min(Math.max((key >>> 7) & 0xFF, MIN_EXPONENT), MAX_EXPONENT);
            return (key >>> 15) * PER_SIGN + ((e - MIN_EXPONENT) << 7) + (key & 0x7F);
        }

        /** An entry: the bucket's first code, and the midpoint to step past if it lies in the bucket (NaN when none). */
        public static int entry(int firstCode, float midpointInBucket) {
            if (Float.isNaN(midpointInBucket)) return firstCode;
            return firstCode | (Float.floatToRawIntBits(midpointInBucket) & 0xFFFF) << 8 | 1 << 24;
        }

        /** Index of the code nearest x: the scalar form of the kernel's lookup. */
        public int encode(float x) {
            int bits = Float.floatToRawIntBits(x), e = entries[index(bits >>> 16)];
            int low = bits & 0xFFFF, t = (e >>> 8) & 0xFFFF;
            boolean up = (e & 1 << 24) != 0 && (bits < 0 ? low <= t : low >= t);
            return (e & 0xFF) + (up ? 1 : 0);
        }
    }

    /** The update's scalars, formed once per step and tensor exactly as the scalar reference forms them. */
    public record Scalars(float b1, float b2, float c1, float c2, float stepSize, float invSqrtBc2, float wd, float eps) {}

    /**
     * Updates blocks [blockStart, blockEnd) of an {@code n}-element tensor: parameter {@code p}, gradient {@code g}
     * (F32), first moment codes {@code mc} (signed map {@code sm}) with per-block absmax {@code ma}, second moment codes
     * {@code vc} (unsigned map {@code um}) with absmax {@code va}. All segments start at element 0 of their tensor.
     */
    public static void blocks(int blockStart, int blockEnd, int blockSize, int n, MemorySegment p, MemorySegment g,
                              MemorySegment mc, MemorySegment ma, MemorySegment vc, MemorySegment va,
                              Codebook sm, Codebook um, Scalars s) {
        float[] m = new float[blockSize], v = new float[blockSize];
        int[] idx = new int[L];
        float b1 = s.b1, b2 = s.b2, c1 = s.c1, c2 = s.c2, stepSize = s.stepSize, invSqrtBc2 = s.invSqrtBc2, wd = s.wd, ep = s.eps;
        float[] sCode = sm.code, uCode = um.code;
        for (int blk = blockStart; blk < blockEnd; blk++) {
            int i0 = blk * blockSize, len = Math.min(blockSize, n - i0);
            float mScale = ma.getAtIndex(F, blk), vScale = va.getAtIndex(F, blk);
            FloatVector mMaxV = FloatVector.zero(SP), vMaxV = FloatVector.zero(SP);
            int j = 0;
            for (; j + L <= len; j += L) {
                long i = i0 + j;
                ByteVector.fromMemorySegment(BS, mc, i, O).convertShape(VectorOperators.B2I, IS, 0).reinterpretAsInts()
                        .and(0xff).intoArray(idx, 0);
                FloatVector mDec = FloatVector.fromArray(SP, sCode, 0, idx, 0);
                ByteVector.fromMemorySegment(BS, vc, i, O).convertShape(VectorOperators.B2I, IS, 0).reinterpretAsInts()
                        .and(0xff).intoArray(idx, 0);
                FloatVector vDec = FloatVector.fromArray(SP, uCode, 0, idx, 0);
                FloatVector gv = FloatVector.fromMemorySegment(SP, g, 4 * i, O);
                FloatVector mi = mDec.mul(mScale).mul(b1).add(gv.mul(c1));
                FloatVector vi = vDec.mul(vScale).mul(b2).add(gv.mul(gv).mul(c2));
                mi.intoArray(m, j);
                vi.intoArray(v, j);
                mMaxV = mMaxV.max(mi.abs());
                vMaxV = vMaxV.max(vi);
                FloatVector pv = FloatVector.fromMemorySegment(SP, p, 4 * i, O);
                pv = pv.sub(pv.mul(wd));
                FloatVector denom = vi.lanewise(VectorOperators.SQRT).mul(invSqrtBc2).add(ep);
                pv.sub(mi.div(denom).mul(stepSize)).intoMemorySegment(p, 4 * i, O);
            }
            float mMax = mMaxV.reduceLanes(VectorOperators.MAX), vMax = vMaxV.reduceLanes(VectorOperators.MAX);
            for (; j < len; j++) { // the scalar reference's body
                int i = i0 + j;
                float gi = g.getAtIndex(F, i);
                float mi = sCode[mc.get(B, i) & 0xff] * mScale * b1 + gi * c1;
                float vi = uCode[vc.get(B, i) & 0xff] * vScale * b2 + gi * gi * c2;
                m[j] = mi;
                v[j] = vi;
                mMax = Math.max(mMax, Math.abs(mi));
                vMax = Math.max(vMax, vi);
                float pv = p.getAtIndex(F, i);
                pv = pv - pv * wd;
                p.setAtIndex(F, i, pv - mi / ((float) Math.sqrt(vi) * invSqrtBc2 + ep) * stepSize);
            }
            ma.setAtIndex(F, blk, mMax);
            va.setAtIndex(F, blk, vMax);
            encodeBlock(m, len, mMax, sm, false, mc, i0, idx);
            encodeBlock(v, len, vMax, um, true, vc, i0, idx);
        }
    }

    /**
     * codes[offset + j] ← index of the code nearest x[j] / absmax for j &lt; len, as the update re-quantises a moment
     * (0 when absmax is 0; {@code positive}: a value &gt; 0 never takes code 0, for second moments).
     */
    public static void quantize(float[] x, int len, float absmax, Codebook cb, boolean positive, MemorySegment codes, int offset) {
        encodeBlock(x, len, absmax, cb, positive, codes, offset, new int[L]);
    }

    /** codes[i0 + j] ← nearest code of x[j] / absmax (0 when absmax is 0); {@code positive}: a value > 0 never takes code 0. */
    private static void encodeBlock(float[] x, int len, float absmax, Codebook cb, boolean positive, MemorySegment codes, int i0, int[] idx) {
        if (absmax == 0) { // the reference encodes 0 then (x / 0 would be NaN for −0 entries)
            codes.asSlice(i0, len).fill((byte) cb.encode(0f));
            return;
        }
        int[] entries = cb.entries;
        int zero = cb.zero;
        int j = 0;
        for (; j + L <= len; j += L) {
            FloatVector xv = FloatVector.fromArray(SP, x, j).div(absmax);
            IntVector bits = (IntVector) xv.reinterpretAsInts();
            IntVector key = bits.lanewise(VectorOperators.LSHR, 16);
            IntVector e = key.lanewise(VectorOperators.LSHR, 7).and(0xFF).max(Codebook.MIN_EXPONENT).min(Codebook.MAX_EXPONENT);
            key.lanewise(VectorOperators.LSHR, 15).mul(Codebook.PER_SIGN).add(e.sub(Codebook.MIN_EXPONENT).lanewise(VectorOperators.LSHL, 7))
                    .add(key.and(0x7F)).intoArray(idx, 0);
            IntVector ent = IntVector.fromArray(IS, entries, 0, idx, 0);
            IntVector low = bits.and(0xFFFF), t = ent.lanewise(VectorOperators.LSHR, 8).and(0xFFFF);
            VectorMask<Integer> negative = bits.compare(VectorOperators.LT, 0);
            VectorMask<Integer> up = low.compare(VectorOperators.GE, t).andNot(negative).or(low.compare(VectorOperators.LE, t).and(negative))
                    .and(ent.and(1 << 24).compare(VectorOperators.NE, 0));
            IntVector q = ent.and(0xFF).add(1, up);
            if (positive) q = q.add(1, q.eq(zero).and(xv.compare(VectorOperators.GT, 0f).cast(IS)));
            ((ByteVector) q.convertShape(VectorOperators.I2B, BS, 0)).intoMemorySegment(codes, i0 + j, O);
        }
        for (; j < len; j++) {
            float xj = x[j] / absmax;
            int q = cb.encode(xj);
            if (positive && q == zero && xj > 0) q++;
            codes.set(B, i0 + j, (byte) q);
        }
    }
}
