// gelu.cu — GELU, tanh form, and the fused bias + GELU that follows a GEMM.
// y = 0.5·x·(1 + tanh u), u = √(2/π)·(x + 0.044715·x³)
// dy/dx = 0.5·(1 + tanh u) + 0.5·x·(1 − tanh² u)·√(2/π)·(1 + 3·0.044715·x²)
#include "kiln_cuda.h"

#define KILN_SQRT_2_OVER_PI 0.7978845608028654f

static __device__ __forceinline__ float gelu(float x) {
    return 0.5f * x * (1.0f + tanhf(KILN_SQRT_2_OVER_PI * (x + 0.044715f * x * x * x)));
}

static __device__ __forceinline__ float gelu_derivative(float x) {
    float t = tanhf(KILN_SQRT_2_OVER_PI * (x + 0.044715f * x * x * x));
    return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * KILN_SQRT_2_OVER_PI * (1.0f + 3.0f * 0.044715f * x * x);
}

template <class T>
static __device__ void gelu_forward(const T* x, T* out, int n) {
    KILN_GRID_STRIDE(i, n) kiln_store(out + i, gelu(kiln_load(x + i)));
}
extern "C" __global__ void gelu_forward_f32(const float* x, float* out, int n) { gelu_forward(x, out, n); }
extern "C" __global__ void gelu_forward_bf16(const bf16* x, bf16* out, int n) { gelu_forward(x, out, n); }

// gradIn += gradOut · gelu'(x)
template <class T>
static __device__ void gelu_backward(const T* x, const T* gradOut, T* gradIn, int n) {
    KILN_GRID_STRIDE(i, n) kiln_store(gradIn + i, kiln_load(gradIn + i) + kiln_load(gradOut + i) * gelu_derivative(kiln_load(x + i)));
}
extern "C" __global__ void gelu_backward_f32(const float* x, const float* gradOut, float* gradIn, int n) { gelu_backward(x, gradOut, gradIn, n); }
extern "C" __global__ void gelu_backward_bf16(const bf16* x, const bf16* gradOut, bf16* gradIn, int n) { gelu_backward(x, gradOut, gradIn, n); }

// pre (rows × c, from a GEMM without bias) += bias per column, in place, and out = gelu(pre):
// one pass instead of a bias add and a GELU; pre is what the backward needs.
template <class T>
static __device__ void bias_gelu_forward(T* pre, const T* bias, T* out, int n, int c) {
    KILN_GRID_STRIDE(i, n) {
        float x = kiln_load(pre + i) + kiln_load(bias + i % c);
        kiln_store(pre + i, x);
        kiln_store(out + i, gelu(kiln_load(pre + i))); // GELU of the stored value, as an unfused pair computes it
    }
}
extern "C" __global__ void bias_gelu_forward_f32(float* pre, const float* bias, float* out, int n, int c) { bias_gelu_forward(pre, bias, out, n, c); }
extern "C" __global__ void bias_gelu_forward_bf16(bf16* pre, const bf16* bias, bf16* out, int n, int c) { bias_gelu_forward(pre, bias, out, n, c); }
