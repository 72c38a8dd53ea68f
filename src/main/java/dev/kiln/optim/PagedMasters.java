package dev.kiln.optim;

import dev.kiln.nn.Parameter;
import dev.kiln.tensor.DType;

import java.util.Set;

/**
 * Parameters whose fp32 master weights live outside resident memory (parameter offload: in the offload tier; ZeRO-3:
 * on the rank that owns them), for {@link MixedPrecisionOptimizer}: it keeps no resident master copy of them; instead, between
 * {@link #beginHalfPrecision} and {@link #endHalfPrecision}, whoever pages them in for forward and backward rounds the
 * paged-in copy to half precision (the working copy) and never writes it back, so the tier keeps the fp32 masters that
 * the optimizer update pages in (ZeRO-3: the owner's update, gathered as fp32 outside the step).
 */
public interface PagedMasters {
    /** The parameters whose masters are paged (no resident master copy is kept for them). */
    Set<Parameter> pagedParameters();

    /** From now on, a page-in for compute yields a copy rounded to {@code half}; pages everything out first (clean slate). */
    void beginHalfPrecision(DType half);

    /** Back to fp32 page-ins; drops any half-precision working copy still resident (it is never written back). */
    void endHalfPrecision();
}
