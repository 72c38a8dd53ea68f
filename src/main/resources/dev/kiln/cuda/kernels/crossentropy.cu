// crossentropy.cu — per-row cross-entropy of logits (rows × v) against int targets, one block per
// row (vocabulary rows are long: 50257 for GPT-2). With lse = log Σ exp(x), smoothing ε and z-loss c:
//   loss = (1 − ε)·(lse − x[y]) + ε·(lse − mean(x)) + c·lse²   (ε = c = 0: lse − x[y]);  ignored rows: 0
//   dx += scale·((1 + 2c·lse)·softmax(x) − q),  q = (1 − ε)·onehot(y) + ε/v
// Losses and lse are fp32 in both variants; sums are fp32. A target outside [0, v) (and not the
// ignore index) makes the forward atomicMin its row into *error (which the caller sets to INT_MAX).
#include "kiln_cuda.h"

template <class T>
static __device__ void crossentropy_forward(const T* logits, const int* targets, float* losses, float* lse, int* error,
                                            int rows, int v, int ignoreIndex, float smoothing, float zLoss) {
    __shared__ float scratch[32];
    int row = blockIdx.x;
    if (row >= rows) return; // uniform across the block
    const T* xr = logits + (long) row * v;
    float max = -KILN_INF;
    for (int j = threadIdx.x; j < v; j += blockDim.x) max = fmaxf(max, kiln_load(xr + j));
    max = kiln_block_max(max, scratch);
    float sum = 0.0f;
    for (int j = threadIdx.x; j < v; j += blockDim.x) sum += expf(kiln_load(xr + j) - max);
    float l = max + logf(kiln_block_sum(sum, scratch));
    float meanX = 0.0f;
    if (smoothing != 0.0f) { // uniform across the block, so the block sum below is reached by all
        float xs = 0.0f;
        for (int j = threadIdx.x; j < v; j += blockDim.x) xs += kiln_load(xr + j);
        meanX = kiln_block_sum(xs, scratch) / v;
    }
    if (threadIdx.x != 0) return;
    int t = targets[row];
    float loss = 0.0f;
    if (t != ignoreIndex) {
        if (t < 0 || t >= v) {
            atomicMin(error, row);
        } else {
            float xt = kiln_load(xr + t);
            if (smoothing == 0.0f && zLoss == 0.0f) loss = l - xt;
            else loss = (1.0f - smoothing) * (l - xt) + smoothing * (l - meanX) + zLoss * l * l;
        }
    }
    losses[row] = loss;
    lse[row] = l;
}
extern "C" __global__ void crossentropy_forward_f32(const float* logits, const int* targets, float* losses, float* lse, int* error,
                                                    int rows, int v, int ignoreIndex, float smoothing, float zLoss) {
    crossentropy_forward(logits, targets, losses, lse, error, rows, v, ignoreIndex, smoothing, zLoss);
}
extern "C" __global__ void crossentropy_forward_bf16(const bf16* logits, const int* targets, float* losses, float* lse, int* error,
                                                     int rows, int v, int ignoreIndex, float smoothing, float zLoss) {
    crossentropy_forward(logits, targets, losses, lse, error, rows, v, ignoreIndex, smoothing, zLoss);
}

template <class T>
static __device__ void crossentropy_backward(const T* logits, const int* targets, const float* lse, T* gradLogits,
                                             int rows, int v, int ignoreIndex, float smoothing, float zLoss, float scale) {
    int row = blockIdx.x;
    if (row >= rows) return;
    int t = targets[row];
    if (t == ignoreIndex || t < 0 || t >= v) return; // bad targets were reported by the forward
    const T* xr = logits + (long) row * v;
    T* gr = gradLogits + (long) row * v;
    float l = lse[row];
    float ps = scale * (1.0f + 2.0f * zLoss * l), uniform = scale * smoothing / v, onTarget = scale * (1.0f - smoothing);
    for (int j = threadIdx.x; j < v; j += blockDim.x) {
        float g = ps * expf(kiln_load(xr + j) - l) - uniform;
        if (j == t) g -= onTarget;
        kiln_store(gr + j, kiln_load(gr + j) + g);
    }
}
extern "C" __global__ void crossentropy_backward_f32(const float* logits, const int* targets, const float* lse, float* gradLogits,
                                                     int rows, int v, int ignoreIndex, float smoothing, float zLoss, float scale) {
    crossentropy_backward(logits, targets, lse, gradLogits, rows, v, ignoreIndex, smoothing, zLoss, scale);
}
extern "C" __global__ void crossentropy_backward_bf16(const bf16* logits, const int* targets, const float* lse, bf16* gradLogits,
                                                      int rows, int v, int ignoreIndex, float smoothing, float zLoss, float scale) {
    crossentropy_backward(logits, targets, lse, gradLogits, rows, v, ignoreIndex, smoothing, zLoss, scale);
}
