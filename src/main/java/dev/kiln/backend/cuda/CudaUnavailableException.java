package dev.kiln.backend.cuda;

import dev.kiln.KilnException;

/**
 * CUDA cannot be used on this machine: a library is missing, there is no driver, or no GPU. The
 * message is one line saying what was looked for and how to fix it; the CPU backend is unaffected.
 */
public final class CudaUnavailableException extends KilnException {
    public CudaUnavailableException(String message) {
        super(message);
    }

    public CudaUnavailableException(String message, Throwable cause) {
        super(message, cause);
    }
}
