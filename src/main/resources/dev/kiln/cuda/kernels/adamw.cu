// adamw.cu — one fused AdamW step over a flat buffer (PyTorch's order, decoupled weight decay):
//   m ← β1·m + (1−β1)·g;  v ← β2·v + (1−β2)·g²;  p ← p − p·(lr·wd);
//   p ← p − (lr/bc1) · m / (√v · (1/√bc2) + eps),  bc_i = 1 − β_iᵗ
// The host forms the step's scalars in double and rounds each once (as CpuBackend does).
// Master weights, moments and gradients are fp32; the mixed-precision variant also writes the
// bf16 copy of the weights that the next forward reads.
#include "kiln_cuda.h"

static __device__ __forceinline__ float adamw_update(long i, float* p, const float* g, float* m, float* v, float beta1, float beta2,
                                                     float oneMinusBeta1, float oneMinusBeta2, float stepSize, float invSqrtBc2,
                                                     float lrTimesWd, float eps) {
    float gi = g[i];
    float mi = m[i] * beta1 + gi * oneMinusBeta1;
    float vi = v[i] * beta2 + gi * gi * oneMinusBeta2;
    m[i] = mi;
    v[i] = vi;
    float pi = p[i];
    pi = pi - pi * lrTimesWd;
    pi = pi - mi / (sqrtf(vi) * invSqrtBc2 + eps) * stepSize;
    p[i] = pi;
    return pi;
}

extern "C" __global__ void adamw_f32(float* p, const float* g, float* m, float* v, int n, float beta1, float beta2,
                                     float oneMinusBeta1, float oneMinusBeta2, float stepSize, float invSqrtBc2,
                                     float lrTimesWd, float eps) {
    KILN_GRID_STRIDE(i, n) adamw_update(i, p, g, m, v, beta1, beta2, oneMinusBeta1, oneMinusBeta2, stepSize, invSqrtBc2, lrTimesWd, eps);
}

extern "C" __global__ void adamw_bf16(float* p, const float* g, float* m, float* v, bf16* pCopy, int n, float beta1, float beta2,
                                      float oneMinusBeta1, float oneMinusBeta2, float stepSize, float invSqrtBc2,
                                      float lrTimesWd, float eps) {
    KILN_GRID_STRIDE(i, n) {
        float pi = adamw_update(i, p, g, m, v, beta1, beta2, oneMinusBeta1, oneMinusBeta2, stepSize, invSqrtBc2, lrTimesWd, eps);
        pCopy[i] = __float2bfloat16(pi);
    }
}
