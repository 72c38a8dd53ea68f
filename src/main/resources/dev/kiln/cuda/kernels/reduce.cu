// reduce.cu — column sums (bias gradients), sum of squares (gradient norms), non-finite counts.
// All sums are fp32 and in a fixed order, so results are deterministic for a given geometry.
#include "kiln_cuda.h"

// dst[j] += Σ_r src[r, j], rows summed in order by one thread per column; dst is fp32 (a bias grad)
template <class T>
static __device__ void sum_rows(const T* src, float* dst, int rows, int n) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= n) return;
    float acc = dst[j];
    for (int r = 0; r < rows; r++) acc += kiln_load(src + (long) r * n + j);
    dst[j] = acc;
}
extern "C" __global__ void sum_rows_f32(const float* src, float* dst, int rows, int n) { sum_rows(src, dst, rows, n); }
extern "C" __global__ void sum_rows_bf16(const bf16* src, float* dst, int rows, int n) { sum_rows(src, dst, rows, n); }

// partials[block] = Σ x² over the block's grid-stride share; finish with sum_partials
template <class T>
static __device__ void sum_squares_partial(const T* x, float* partials, int n) {
    __shared__ float scratch[32];
    float acc = 0.0f;
    KILN_GRID_STRIDE(i, n) {
        float v = kiln_load(x + i);
        acc += v * v;
    }
    acc = kiln_block_sum(acc, scratch);
    if (threadIdx.x == 0) partials[blockIdx.x] = acc;
}
extern "C" __global__ void sum_squares_partial_f32(const float* x, float* partials, int n) { sum_squares_partial(x, partials, n); }
extern "C" __global__ void sum_squares_partial_bf16(const bf16* x, float* partials, int n) { sum_squares_partial(x, partials, n); }

// out[0] = Σ partials (one block)
extern "C" __global__ void sum_partials(const float* partials, float* out, int count) {
    __shared__ float scratch[32];
    float acc = 0.0f;
    for (int i = threadIdx.x; i < count; i += blockDim.x) acc += partials[i];
    acc = kiln_block_sum(acc, scratch);
    if (threadIdx.x == 0) out[0] = acc;
}

// *count += number of NaN/±inf elements (Backend.allFinite is *count == 0)
template <class T>
static __device__ void count_nonfinite(const T* x, int* count, int n) {
    KILN_GRID_STRIDE(i, n) {
        if ((__float_as_uint(kiln_load(x + i)) & 0x7f800000u) == 0x7f800000u) atomicAdd(count, 1);
    }
}
extern "C" __global__ void count_nonfinite_f32(const float* x, int* count, int n) { count_nonfinite(x, count, n); }
extern "C" __global__ void count_nonfinite_bf16(const bf16* x, int* count, int n) { count_nonfinite(x, count, n); }
