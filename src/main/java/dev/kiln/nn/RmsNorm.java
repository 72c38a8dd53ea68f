package dev.kiln.nn;

import dev.kiln.ops.Norms;
import dev.kiln.tensor.DType;
import dev.kiln.tensor.Tensor;

/** RMS norm over the last dimension (Llama's): a gain, no bias; weight 1 at init. */
public final class RmsNorm extends Module {
    public final Parameter weight;
    private final double eps;

    public RmsNorm(int dim, double eps, DType dtype) {
        this.weight = registerParameter("weight", new Parameter(Tensor.full(1.0, dtype, dim)));
        this.eps = eps;
    }

    public Tensor forward(Tensor x) {
        return Norms.rmsNorm(x, weight, eps);
    }
}
