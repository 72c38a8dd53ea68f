// attention.cu — the non-GEMM parts of causal self-attention; the GEMMs (S = Q·Kᵀ, O = P·V and
// their backward products, batched over B·NH) are cuBLAS's. Layouts: qkv (B, T, 3C) packs q | k | v;
// q, k, v, o are (B, NH, T, D) with C = NH·D; scores and probs are (B, NH, T, T).
//   forward:  permute → S = Q·Kᵀ → attention_softmax_forward (P = causal softmax of S/√D) → O = P·V → unpermute
//   backward: unpermute_backward → dP = dO·Vᵀ, dV = Pᵀ·dO → attention_softmax_backward → dQ = dS·K,
//             dK = dSᵀ·Q → permute_backward (accumulates into dqkv)
#include "kiln_cuda.h"
#include "softmax_rows.h"

// (b, h, t, d) of element i of a (B, NH, T, D) tensor → index of its q in the (B, T, 3C) qkv layout
static __device__ __forceinline__ long packed_index(long i, int t, int nh, int d, int width) {
    long dd = i % d, tt = (i / d) % t, hh = (i / ((long) d * t)) % nh, bb = i / ((long) d * t * nh);
    return bb * t * width + tt * width + hh * d + dd;
}

template <class T>
static __device__ void attention_permute(const T* qkv, T* q, T* k, T* v, int b, int t, int nh, int d) {
    int c = nh * d;
    KILN_GRID_STRIDE(i, (long) b * nh * t * d) {
        long s = packed_index(i, t, nh, d, 3 * c);
        q[i] = qkv[s];
        k[i] = qkv[s + c];
        v[i] = qkv[s + 2 * c];
    }
}
extern "C" __global__ void attention_permute_f32(const float* qkv, float* q, float* k, float* v, int b, int t, int nh, int d) {
    attention_permute(qkv, q, k, v, b, t, nh, d);
}
extern "C" __global__ void attention_permute_bf16(const bf16* qkv, bf16* q, bf16* k, bf16* v, int b, int t, int nh, int d) {
    attention_permute(qkv, q, k, v, b, t, nh, d);
}

// dqkv += (dq | dk | dv) in the packed layout
template <class T>
static __device__ void attention_permute_backward(const T* dq, const T* dk, const T* dv, T* dqkv, int b, int t, int nh, int d) {
    int c = nh * d;
    KILN_GRID_STRIDE(i, (long) b * nh * t * d) {
        long s = packed_index(i, t, nh, d, 3 * c);
        kiln_store(dqkv + s, kiln_load(dqkv + s) + kiln_load(dq + i));
        kiln_store(dqkv + s + c, kiln_load(dqkv + s + c) + kiln_load(dk + i));
        kiln_store(dqkv + s + 2 * c, kiln_load(dqkv + s + 2 * c) + kiln_load(dv + i));
    }
}
extern "C" __global__ void attention_permute_backward_f32(const float* dq, const float* dk, const float* dv, float* dqkv,
                                                          int b, int t, int nh, int d) {
    attention_permute_backward(dq, dk, dv, dqkv, b, t, nh, d);
}
extern "C" __global__ void attention_permute_backward_bf16(const bf16* dq, const bf16* dk, const bf16* dv, bf16* dqkv,
                                                           int b, int t, int nh, int d) {
    attention_permute_backward(dq, dk, dv, dqkv, b, t, nh, d);
}

// out (B, T, C) = o (B, NH, T, D) with heads side by side
template <class T>
static __device__ void attention_unpermute(const T* o, T* out, int b, int t, int nh, int d) {
    KILN_GRID_STRIDE(i, (long) b * nh * t * d) out[packed_index(i, t, nh, d, nh * d)] = o[i];
}
extern "C" __global__ void attention_unpermute_f32(const float* o, float* out, int b, int t, int nh, int d) {
    attention_unpermute(o, out, b, t, nh, d);
}
extern "C" __global__ void attention_unpermute_bf16(const bf16* o, bf16* out, int b, int t, int nh, int d) {
    attention_unpermute(o, out, b, t, nh, d);
}

// dO (B, NH, T, D) = dout (B, T, C) regrouped by head (written: dO is scratch for the next GEMMs)
template <class T>
static __device__ void attention_unpermute_backward(const T* dout, T* dO, int b, int t, int nh, int d) {
    KILN_GRID_STRIDE(i, (long) b * nh * t * d) dO[i] = dout[packed_index(i, t, nh, d, nh * d)];
}
extern "C" __global__ void attention_unpermute_backward_f32(const float* dout, float* dO, int b, int t, int nh, int d) {
    attention_unpermute_backward(dout, dO, b, t, nh, d);
}
extern "C" __global__ void attention_unpermute_backward_bf16(const bf16* dout, bf16* dO, int b, int t, int nh, int d) {
    attention_unpermute_backward(dout, dO, b, t, nh, d);
}

// probs = causal softmax of scale·scores over rows of length t (rows = B·NH·T), 0 above the diagonal
extern "C" __global__ void attention_softmax_forward_f32(const float* scores, float* probs, int rows, int t, float scale) {
    kiln_softmax_rows(scores, probs, rows, t, 1, scale);
}
extern "C" __global__ void attention_softmax_forward_bf16(const bf16* scores, bf16* probs, int rows, int t, float scale) {
    kiln_softmax_rows(scores, probs, rows, t, 1, scale);
}

// dS = scale · P ⊙ (dP − Σ P·dP) on and below the diagonal, 0 above (written: scratch for the GEMMs)
template <class T>
static __device__ void attention_softmax_backward(const T* probs, const T* gradProbs, T* gradScores, int rows, int t, float scale) {
    int lane = threadIdx.x % 32;
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (row >= rows) return;
    int len = row % t + 1;
    const T* pr = probs + (long) row * t;
    const T* gr = gradProbs + (long) row * t;
    T* dr = gradScores + (long) row * t;
    float dot = 0.0f;
    for (int j = lane; j < len; j += 32) dot += kiln_load(pr + j) * kiln_load(gr + j);
    dot = kiln_warp_sum(dot);
    for (int j = lane; j < len; j += 32) kiln_store(dr + j, scale * kiln_load(pr + j) * (kiln_load(gr + j) - dot));
    for (int j = len + lane; j < t; j += 32) kiln_store(dr + j, 0.0f);
}
extern "C" __global__ void attention_softmax_backward_f32(const float* probs, const float* gradProbs, float* gradScores,
                                                          int rows, int t, float scale) {
    attention_softmax_backward(probs, gradProbs, gradScores, rows, t, scale);
}
extern "C" __global__ void attention_softmax_backward_bf16(const bf16* probs, const bf16* gradProbs, bf16* gradScores,
                                                           int rows, int t, float scale) {
    attention_softmax_backward(probs, gradProbs, gradScores, rows, t, scale);
}
