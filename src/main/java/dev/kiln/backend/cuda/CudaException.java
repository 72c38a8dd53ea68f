package dev.kiln.backend.cuda;

import dev.kiln.KilnException;

/** A CUDA, cuBLAS or NVRTC call returned an error: one line naming the call, the code and its name. */
public final class CudaException extends KilnException {
    private final int code;

    public CudaException(String message, int code) {
        super(message);
        this.code = code;
    }

    /** "cuMemAlloc_v2 failed: CUDA_ERROR_OUT_OF_MEMORY (2)" plus an optional detail. */
    static CudaException of(String call, int code, String errorName, String detail) {
        String msg = call + " failed: " + errorName + " (" + code + ")" + (detail == null || detail.isBlank() ? "" : ": " + detail);
        return new CudaException(msg, code);
    }

    /** The library's status code (CUresult, cublasStatus_t or nvrtcResult). */
    public int code() {
        return code;
    }
}
