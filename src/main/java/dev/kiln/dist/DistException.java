package dev.kiln.dist;

import dev.kiln.KilnException;

/** A failure of distributed training: MPI missing, a bad parallel layout, a collective that timed out. */
public class DistException extends KilnException {
    public DistException(String message) {
        super(message);
    }

    public DistException(String message, Throwable cause) {
        super(message, cause);
    }
}
