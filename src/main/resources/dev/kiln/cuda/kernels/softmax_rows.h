// softmax_rows.h — the warp-per-row softmax shared by softmax.cu and attention.cu.
#pragma once
#include "kiln_cuda.h"

// out[r, j] = exp(scale·x[r, j] − max) / Σ for j < len (len = n, or r % n + 1 when causal), 0 beyond.
template <class T>
static __device__ void kiln_softmax_rows(const T* x, T* out, int rows, int n, int causal, float scale) {
    int lane = threadIdx.x % 32;
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (row >= rows) return; // whole warps leave together
    const T* xr = x + (long) row * n;
    T* yr = out + (long) row * n;
    int len = causal ? row % n + 1 : n;
    float max = -KILN_INF;
    for (int j = lane; j < len; j += 32) max = fmaxf(max, scale * kiln_load(xr + j));
    max = kiln_warp_max(max);
    float sum = 0.0f;
    for (int j = lane; j < len; j += 32) sum += expf(scale * kiln_load(xr + j) - max);
    float inv = 1.0f / kiln_warp_sum(sum);
    for (int j = lane; j < len; j += 32) kiln_store(yr + j, expf(scale * kiln_load(xr + j) - max) * inv);
    for (int j = len + lane; j < n; j += 32) kiln_store(yr + j, 0.0f);
}
