// adamw.cu — one fused AdamW step over a flat buffer (PyTorch's order, decoupled weight decay):
//   m ← β1·m + (1−β1)·g;  v ← β2·v + (1−β2)·g²;  p ← p − p·(lr·wd);
//   p ← p − (lr/bc1) · m / (√v · (1/√bc2) + eps),  bc_i = 1 − β_iᵗ
// The host forms the step's scalars in double and rounds each once (as CpuBackend does).
// Master weights, moments and gradients are fp32; the mixed-precision variant also writes the
// bf16 copy of the weights that the next forward reads.
#include "kiln_cuda.h"

static __device__ __forceinline__ float adamw_update(float& p, float g, float& m, float& v, float beta1, float beta2,
                                                     float oneMinusBeta1, float oneMinusBeta2, float stepSize, float invSqrtBc2,
                                                     float lrTimesWd, float eps) {
    m = m * beta1 + g * oneMinusBeta1;
    v = v * beta2 + g * g * oneMinusBeta2;
    p = p - p * lrTimesWd;
    p = p - m / (sqrtf(v) * invSqrtBc2 + eps) * stepSize;
    return p;
}

static __device__ __forceinline__ bool kiln_aligned16(const void* ptr) {
    return ((unsigned long long) ptr & 15u) == 0;
}

// With every fp32 buffer 16-byte aligned (whole allocations are), one thread updates four
// consecutive elements through 16-byte loads and stores; the tail and unaligned views go one by one.
static __device__ void adamw(float* p, const float* g, float* m, float* v, bf16* pCopy, int n, float beta1, float beta2,
                             float oneMinusBeta1, float oneMinusBeta2, float stepSize, float invSqrtBc2, float lrTimesWd, float eps) {
    long done = 0;
    if (kiln_aligned16(p) && kiln_aligned16(g) && kiln_aligned16(m) && kiln_aligned16(v)) {
        long n4 = n / 4;
        KILN_GRID_STRIDE(i, n4) {
            float4 pv = reinterpret_cast<float4*>(p)[i], mv = reinterpret_cast<float4*>(m)[i], vv = reinterpret_cast<float4*>(v)[i];
            float4 gv = reinterpret_cast<const float4*>(g)[i];
            adamw_update(pv.x, gv.x, mv.x, vv.x, beta1, beta2, oneMinusBeta1, oneMinusBeta2, stepSize, invSqrtBc2, lrTimesWd, eps);
            adamw_update(pv.y, gv.y, mv.y, vv.y, beta1, beta2, oneMinusBeta1, oneMinusBeta2, stepSize, invSqrtBc2, lrTimesWd, eps);
            adamw_update(pv.z, gv.z, mv.z, vv.z, beta1, beta2, oneMinusBeta1, oneMinusBeta2, stepSize, invSqrtBc2, lrTimesWd, eps);
            adamw_update(pv.w, gv.w, mv.w, vv.w, beta1, beta2, oneMinusBeta1, oneMinusBeta2, stepSize, invSqrtBc2, lrTimesWd, eps);
            reinterpret_cast<float4*>(p)[i] = pv;
            reinterpret_cast<float4*>(m)[i] = mv;
            reinterpret_cast<float4*>(v)[i] = vv;
            if (pCopy != nullptr) {
                pCopy[4 * i] = __float2bfloat16(pv.x);
                pCopy[4 * i + 1] = __float2bfloat16(pv.y);
                pCopy[4 * i + 2] = __float2bfloat16(pv.z);
                pCopy[4 * i + 3] = __float2bfloat16(pv.w);
            }
        }
        done = 4 * n4;
    }
    KILN_GRID_STRIDE(j, n - done) {
        long i = done + j;
        float pi = p[i], mi = m[i], vi = v[i];
        adamw_update(pi, g[i], mi, vi, beta1, beta2, oneMinusBeta1, oneMinusBeta2, stepSize, invSqrtBc2, lrTimesWd, eps);
        p[i] = pi;
        m[i] = mi;
        v[i] = vi;
        if (pCopy != nullptr) pCopy[i] = __float2bfloat16(pi);
    }
}

extern "C" __global__ void adamw_f32(float* p, const float* g, float* m, float* v, int n, float beta1, float beta2,
                                     float oneMinusBeta1, float oneMinusBeta2, float stepSize, float invSqrtBc2,
                                     float lrTimesWd, float eps) {
    adamw(p, g, m, v, nullptr, n, beta1, beta2, oneMinusBeta1, oneMinusBeta2, stepSize, invSqrtBc2, lrTimesWd, eps);
}

extern "C" __global__ void adamw_bf16(float* p, const float* g, float* m, float* v, bf16* pCopy, int n, float beta1, float beta2,
                                      float oneMinusBeta1, float oneMinusBeta2, float stepSize, float invSqrtBc2,
                                      float lrTimesWd, float eps) {
    adamw(p, g, m, v, pCopy, n, beta1, beta2, oneMinusBeta1, oneMinusBeta2, stepSize, invSqrtBc2, lrTimesWd, eps);
}
