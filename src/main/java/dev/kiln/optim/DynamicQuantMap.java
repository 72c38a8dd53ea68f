package dev.kiln.optim;

import dev.kiln.backend.cpu.AdamW8bitKernel;

import java.util.Arrays;

/**
 * Dettmers' dynamic 8-bit quantisation map ("8-bit Optimizers via Block-wise Quantization", 2022; bitsandbytes'
 * {@code create_dynamic_map(signed, max_exponent_bits=7, total_bits=8)}): 256 codes in [−1, 1] whose magnitudes
 * span seven decades, 10^(k−6)·(means of linspace(0.1, 1, 2^k + 1)) for k = 0..6 (2^(k+1) + 1 points unsigned),
 * plus 0 and 1. Each decade has twice the codes of the one below, so a block normalised by its absmax keeps
 * ~2–3 significant digits for large entries and still represents entries 10⁶ times smaller — what optimizer
 * moments, with their heavy tails, need. The signed map serves Adam's first moment, the unsigned one (twice
 * the resolution, no sign) its second. Codes are computed in double and rounded to fp32 once.
 */
public final class DynamicQuantMap {
    public static final DynamicQuantMap SIGNED = new DynamicQuantMap(true), UNSIGNED = new DynamicQuantMap(false);

    private final float[] code = new float[256]; // ascending
    private final float[] mid = new float[255];  // mid[i] = midpoint of code[i], code[i+1]: the rounding thresholds
    private final int zero;                       // index of the code 0
    // encode's shortcut: for each value of a float's top 16 bits (sign, exponent, 7 mantissa bits), the code index of
    // the smallest float with those bits; encode then moves up past the (at most two) midpoints inside that bucket
    private final byte[] bucketStart = new byte[1 << 16];
    private final boolean signed;
    private final AdamW8bitKernel.Codebook codebook;

    private DynamicQuantMap(boolean signed) {
        this.signed = signed;
        double[] data = new double[256];
        int n = 0;
        for (int k = 0; k < 7; k++) {
            int items = signed ? (1 << k) + 1 : (1 << (k + 1)) + 1;
            double scale = Math.pow(10, k - 6);
            for (int j = 0; j + 1 < items; j++) {
                double lo = 0.1 + 0.9 * j / (items - 1), hi = 0.1 + 0.9 * (j + 1) / (items - 1);
                double mean = (lo + hi) / 2 * scale;
                data[n++] = mean;
                if (signed) data[n++] = -mean;
            }
        }
        data[n++] = 0;
        data[n++] = 1;
        if (n != 256) throw new IllegalStateException("dynamic map has " + n + " codes");
        Arrays.sort(data);
        for (int i = 0; i < 256; i++) code[i] = (float) data[i];
        for (int i = 0; i < 255; i++) mid[i] = (float) ((data[i] + data[i + 1]) / 2);
        zero = Arrays.binarySearch(code, 0f);
        for (int key = 0; key < 1 << 16; key++) {
            // the smallest value in the bucket: low bits 0 for positive floats, all ones for negative ones
            float lowest = Float.intBitsToFloat(key < 0x8000 ? key << 16 : (key << 16) | 0xFFFF);
            if (Float.isNaN(lowest)) lowest = key < 0x8000 ? Float.POSITIVE_INFINITY : Float.NEGATIVE_INFINITY; // −inf's bucket, or NaNs only
            bucketStart[key] = (byte) encodeBySearch(lowest);
        }
        codebook = buildCodebook();
    }

    /**
     * The tables in the vector kernel's form. Built from every one of the 65,536 buckets and checked on the way: each
     * bucket holds at most one midpoint, and buckets that share a clamped entry have equal entries, so the kernel's
     * lookup equals {@link #encode} for every float.
     */
    private AdamW8bitKernel.Codebook buildCodebook() {
        int[] entries = new int[AdamW8bitKernel.Codebook.ENTRIES];
        boolean[] filled = new boolean[entries.length];
        for (int key = 0; key < 1 << 16; key++) {
            int first = bucketStart[key] & 0xff;
            // the bucket's largest value: low bits all ones for positive floats, 0 for negative ones
            float highest = Float.intBitsToFloat(key < 0x8000 ? (key << 16) | 0xFFFF : key << 16);
            boolean inside = first < 255 && !Float.isNaN(highest) && mid[first] <= highest;
            if (inside && first + 1 < 255 && mid[first + 1] <= highest)
                throw new IllegalStateException("dynamic map: bucket " + Integer.toHexString(key) + " holds two midpoints");
            int entry = AdamW8bitKernel.Codebook.entry(first, inside ? mid[first] : Float.NaN), at = AdamW8bitKernel.Codebook.index(key);
            if (filled[at] && entries[at] != entry)
                throw new IllegalStateException("dynamic map: bucket " + Integer.toHexString(key) + " differs from the clamped bucket it shares");
            entries[at] = entry;
            filled[at] = true;
        }
        return new AdamW8bitKernel.Codebook(code.clone(), entries, zero);
    }

    /** The map as the vectorised 8-bit AdamW kernel reads it. */
    public AdamW8bitKernel.Codebook codebook() {
        return codebook;
    }

    public boolean signed() {
        return signed;
    }

    /** The value of code {@code index} (0..255), in [−1, 1]. */
    public float decode(int index) {
        return code[index];
    }

    /** A copy of the 256 codes, ascending. */
    public float[] codes() {
        return code.clone();
    }

    /**
     * The index of the code nearest {@code x} (ties to the larger code), for x in [−1, 1] (out-of-range values take
     * the end codes): the number of midpoints ≤ x. A table lookup by the float's top 16 bits and at most a few steps
     * up, equal to {@link #encodeBySearch} for every float but NaN (the binary search's unpredictable branches made the
     * optimizer step 30× slower than fp32 AdamW's).
     */
    public int encode(float x) {
        int i = bucketStart[Float.floatToRawIntBits(x) >>> 16] & 0xff;
        while (i < 255 && x >= mid[i]) i++;
        return i;
    }

    /** {@link #encode} by binary search over the 255 midpoints (eight comparisons): the reference. */
    int encodeBySearch(float x) {
        int lo = 0, hi = 255; // answer in [lo, hi]
        while (lo < hi) {
            int m = (lo + hi) >>> 1;
            if (x < mid[m]) hi = m;
            else lo = m + 1;
        }
        return lo;
    }

    /**
     * {@link #encode} for a non-negative value that must not become 0 unless it is 0: an Adam second moment rounded
     * to 0 under a first moment that is not would divide by ε alone. Values below the smallest positive code take it.
     */
    public int encodePositive(float x) {
        int i = encode(x);
        return i == zero && x > 0 ? zero + 1 : i;
    }
}
