// layernorm.cu — row-wise layer norm over the last dimension c, one warp per row.
// y = (x − μ)·rstd·w + b, rstd = 1/√(var + eps) (population variance); μ and rstd saved (fp32).
// dx += rstd·(dn − mean(dn) − n̂·mean(dn·n̂)), dn = dy·w, n̂ = (x − μ)·rstd;  dw += Σ dy·n̂;  db += Σ dy
// Parameter gradients are fp32 in both variants (fp32 master weights); the bf16 variant reads
// x, w, b, dy and writes y, dx in bf16. Statistics and sums are fp32.
#include "kiln_cuda.h"

template <class T>
static __device__ void layernorm_forward(const T* x, const T* w, const T* b, T* out, float* mean, float* rstd,
                                         int rows, int c, float eps) {
    int lane = threadIdx.x % 32;
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (row >= rows) return; // whole warps leave together, so no shuffle is split
    const T* xr = x + (long) row * c;
    T* yr = out + (long) row * c;
    float sum = 0.0f;
    for (int j = lane; j < c; j += 32) sum += kiln_load(xr + j);
    float mu = kiln_warp_sum(sum) / c;
    float var = 0.0f;
    for (int j = lane; j < c; j += 32) {
        float d = kiln_load(xr + j) - mu;
        var += d * d;
    }
    float rs = rsqrtf(kiln_warp_sum(var) / c + eps);
    for (int j = lane; j < c; j += 32) {
        float y = (kiln_load(xr + j) - mu) * rs * kiln_load(w + j);
        if (b != nullptr) y += kiln_load(b + j);
        kiln_store(yr + j, y);
    }
    if (lane == 0) {
        mean[row] = mu;
        rstd[row] = rs;
    }
}
extern "C" __global__ void layernorm_forward_f32(const float* x, const float* w, const float* b, float* out, float* mean, float* rstd,
                                                 int rows, int c, float eps) { layernorm_forward(x, w, b, out, mean, rstd, rows, c, eps); }
extern "C" __global__ void layernorm_forward_bf16(const bf16* x, const bf16* w, const bf16* b, bf16* out, float* mean, float* rstd,
                                                  int rows, int c, float eps) { layernorm_forward(x, w, b, out, mean, rstd, rows, c, eps); }

template <class T>
static __device__ void layernorm_backward(const T* x, const T* w, const float* mean, const float* rstd, const T* gradOut,
                                          T* gradX, int rows, int c) {
    int lane = threadIdx.x % 32;
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (row >= rows) return;
    const T* xr = x + (long) row * c;
    const T* gr = gradOut + (long) row * c;
    T* dr = gradX + (long) row * c;
    float mu = mean[row], rs = rstd[row];
    float sumDn = 0.0f, sumDnN = 0.0f;
    for (int j = lane; j < c; j += 32) {
        float dn = kiln_load(gr + j) * kiln_load(w + j);
        sumDn += dn;
        sumDnN += dn * (kiln_load(xr + j) - mu) * rs;
    }
    float meanDn = kiln_warp_sum(sumDn) / c, meanDnN = kiln_warp_sum(sumDnN) / c;
    for (int j = lane; j < c; j += 32) {
        float dn = kiln_load(gr + j) * kiln_load(w + j);
        float nh = (kiln_load(xr + j) - mu) * rs;
        kiln_store(dr + j, kiln_load(dr + j) + rs * (dn - meanDn - nh * meanDnN));
    }
}
extern "C" __global__ void layernorm_backward_f32(const float* x, const float* w, const float* mean, const float* rstd,
                                                  const float* gradOut, float* gradX, int rows, int c) {
    layernorm_backward(x, w, mean, rstd, gradOut, gradX, rows, c);
}
extern "C" __global__ void layernorm_backward_bf16(const bf16* x, const bf16* w, const float* mean, const float* rstd,
                                                   const bf16* gradOut, bf16* gradX, int rows, int c) {
    layernorm_backward(x, w, mean, rstd, gradOut, gradX, rows, c);
}

// One thread per column, rows summed in order: deterministic, and adjacent threads read adjacent
// columns. gradW or gradB may be null (not needed).
template <class T>
static __device__ void layernorm_backward_params(const T* x, const float* mean, const float* rstd, const T* gradOut,
                                                 float* gradW, float* gradB, int rows, int c) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= c) return;
    float dw = 0.0f, db = 0.0f;
    for (int r = 0; r < rows; r++) {
        long i = (long) r * c + j;
        float g = kiln_load(gradOut + i);
        dw += g * (kiln_load(x + i) - mean[r]) * rstd[r];
        db += g;
    }
    if (gradW != nullptr) gradW[j] += dw;
    if (gradB != nullptr) gradB[j] += db;
}
extern "C" __global__ void layernorm_backward_params_f32(const float* x, const float* mean, const float* rstd, const float* gradOut,
                                                         float* gradW, float* gradB, int rows, int c) {
    layernorm_backward_params(x, mean, rstd, gradOut, gradW, gradB, rows, c);
}
extern "C" __global__ void layernorm_backward_params_bf16(const bf16* x, const float* mean, const float* rstd, const bf16* gradOut,
                                                          float* gradW, float* gradB, int rows, int c) {
    layernorm_backward_params(x, mean, rstd, gradOut, gradW, gradB, rows, c);
}
