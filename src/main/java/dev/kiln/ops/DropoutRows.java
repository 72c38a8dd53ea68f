package dev.kiln.ops;

/**
 * Which rows of the global batch this process's dropout masks stand for. Under data parallelism rank r of n trains rows
 * [r·b, (r+1)·b) of a global batch of n·b rows; {@link Activations#dropout} then draws exactly the random numbers one
 * process draws for those rows and skips (in O(1), {@link dev.kiln.tensor.Rng#skip}) those of the other ranks' rows,
 * so every mask equals the single-process mask of the same rows and the generator ends where the single process's
 * does. Costs nothing: no extra draws, no communication. A single process (the default, share 0 of 1) is untouched.
 * The masks are drawn in row-major order over a tensor whose first dimension is the batch, as every dropout of the
 * models is ((B, T, C) activations).
 */
public final class DropoutRows {
    private static volatile int part = 0, parts = 1;

    private DropoutRows() {}

    /** From now on this process's batches are share {@code part} of {@code parts} equal, consecutive row ranges. */
    public static void set(int part, int parts) {
        if (parts < 1 || part < 0 || part >= parts) throw new IllegalArgumentException("dropout row share " + part + " of " + parts);
        DropoutRows.part = part;
        DropoutRows.parts = parts;
    }

    /** Back to the whole batch (a single process). */
    public static void clear() {
        set(0, 1);
    }

    static int part() {
        return part;
    }

    static int parts() {
        return parts;
    }
}
