package dev.kiln.tensor;

/**
 * A small, fast, splittable-free random generator (SplitMix64) whose whole state is one long,
 * so that data order, dropout masks and sampling can be checkpointed and resumed bit for bit.
 * Not thread-safe: each consumer owns its own instance.
 */
public final class Rng {
    private long state;
    private double spareGaussian = Double.NaN;

    public Rng(long seed) {
        this.state = seed;
    }

    /** The complete state; {@link #setState} with it reproduces the same future stream. */
    public long state() {
        return state;
    }

    public void setState(long state) {
        this.state = state;
        this.spareGaussian = Double.NaN;
    }

    /**
     * Advances the stream by {@code n} draws of {@link #nextLong} (and so of {@link #nextDouble}) in O(1): SplitMix64's
     * state moves by a constant per draw. Data-parallel dropout uses it to skip the other ranks' rows.
     */
    public void skip(long n) {
        if (n == 0) return;
        state += n * 0x9E3779B97F4A7C15L;
        spareGaussian = Double.NaN;
    }

    public long nextLong() {
        long z = (state += 0x9E3779B97F4A7C15L);
        z = (z ^ (z >>> 30)) * 0xBF58476D1CE4E5B9L;
        z = (z ^ (z >>> 27)) * 0x94D049BB133111EBL;
        return z ^ (z >>> 31);
    }

    /** Uniform in [0, bound). */
    public int nextInt(int bound) {
        if (bound <= 0) throw new IllegalArgumentException("bound must be positive: " + bound);
        return (int) Math.floorMod(nextLong() >>> 1, (long) bound);
    }

    /** Uniform in [0, bound). */
    public long nextLong(long bound) {
        if (bound <= 0) throw new IllegalArgumentException("bound must be positive: " + bound);
        return Math.floorMod(nextLong() >>> 1, bound);
    }

    /** Uniform in [0, 1) with 24 random bits. */
    public float nextFloat() {
        return (nextLong() >>> 40) * 0x1.0p-24f;
    }

    /** Uniform in [0, 1) with 53 random bits. */
    public double nextDouble() {
        return (nextLong() >>> 11) * 0x1.0p-53;
    }

    /** Standard normal (Box-Muller, both values used). The spare value is not part of {@link #state()}. */
    public double nextGaussian() {
        if (!Double.isNaN(spareGaussian)) {
            double g = spareGaussian;
            spareGaussian = Double.NaN;
            return g;
        }
        double u1 = nextDouble(), u2 = nextDouble();
        double r = Math.sqrt(-2.0 * Math.log(1.0 - u1));
        spareGaussian = r * Math.sin(2 * Math.PI * u2);
        return r * Math.cos(2 * Math.PI * u2);
    }
}
