// softmax.cu — row-wise softmax over rows of length n, one warp per row (rows of any length:
// each lane strides over the row). With causal, rows are grouped in blocks of n and row i of a
// block sees columns 0..i only (the rest are written 0). Max, sums and exp in fp32.
// dx += y ⊙ (dy − Σ y·dy)
#include "kiln_cuda.h"
#include "softmax_rows.h"

extern "C" __global__ void softmax_forward_f32(const float* x, float* out, int rows, int n, int causal) {
    kiln_softmax_rows(x, out, rows, n, causal, 1.0f);
}
extern "C" __global__ void softmax_forward_bf16(const bf16* x, bf16* out, int rows, int n, int causal) {
    kiln_softmax_rows(x, out, rows, n, causal, 1.0f);
}

template <class T>
static __device__ void softmax_backward(const T* y, const T* gradOut, T* gradIn, int rows, int n) {
    int lane = threadIdx.x % 32;
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (row >= rows) return;
    const T* yr = y + (long) row * n;
    const T* gr = gradOut + (long) row * n;
    T* dr = gradIn + (long) row * n;
    float dot = 0.0f;
    for (int j = lane; j < n; j += 32) dot += kiln_load(yr + j) * kiln_load(gr + j);
    dot = kiln_warp_sum(dot);
    for (int j = lane; j < n; j += 32) kiln_store(dr + j, kiln_load(dr + j) + kiln_load(yr + j) * (kiln_load(gr + j) - dot));
}
extern "C" __global__ void softmax_backward_f32(const float* y, const float* gradOut, float* gradIn, int rows, int n) {
    softmax_backward(y, gradOut, gradIn, rows, n);
}
extern "C" __global__ void softmax_backward_bf16(const bf16* y, const bf16* gradOut, bf16* gradIn, int rows, int n) {
    softmax_backward(y, gradOut, gradIn, rows, n);
}
