// embedding.cu — out[i, :] = weight[idx[i], :] and its backward gradW[idx[i], :] += gradOut[i, :].
// Weight gradients are fp32 in both variants. An id outside [0, v) makes the forward atomicMin
// its position into *error (which the caller sets to INT_MAX) and leave that row unwritten.
#include "kiln_cuda.h"

template <class T>
static __device__ void embedding_forward(const int* idx, const T* weight, T* out, int* error, int n, int c, int v) {
    KILN_GRID_STRIDE(i, (long) n * c) {
        long pos = i / c;
        int id = idx[pos];
        if (id < 0 || id >= v) atomicMin(error, (int) pos);
        else out[i] = weight[(long) id * c + i % c];
    }
}
extern "C" __global__ void embedding_forward_f32(const int* idx, const float* weight, float* out, int* error, int n, int c, int v) {
    embedding_forward(idx, weight, out, error, n, c, v);
}
extern "C" __global__ void embedding_forward_bf16(const int* idx, const bf16* weight, bf16* out, int* error, int n, int c, int v) {
    embedding_forward(idx, weight, out, error, n, c, v);
}

// One thread per element, atomics where positions share an id: fast, order not fixed.
template <class T>
static __device__ void embedding_backward(const int* idx, const T* gradOut, float* gradW, int n, int c, int v) {
    KILN_GRID_STRIDE(i, (long) n * c) {
        int id = idx[i / c];
        if (id >= 0 && id < v) atomicAdd(gradW + (long) id * c + i % c, kiln_load(gradOut + i));
    }
}
extern "C" __global__ void embedding_backward_f32(const int* idx, const float* gradOut, float* gradW, int n, int c, int v) {
    embedding_backward(idx, gradOut, gradW, n, c, v);
}
extern "C" __global__ void embedding_backward_bf16(const int* idx, const bf16* gradOut, float* gradW, int n, int c, int v) {
    embedding_backward(idx, gradOut, gradW, n, c, v);
}

// Deterministic: one thread per column walks the positions in order (the CPU reference's order),
// so results are the same bits on every run; parallel over c only.
template <class T>
static __device__ void embedding_backward_deterministic(const int* idx, const T* gradOut, float* gradW, int n, int c, int v) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= c) return;
    for (int i = 0; i < n; i++) {
        int id = idx[i];
        if (id >= 0 && id < v) gradW[(long) id * c + j] += kiln_load(gradOut + (long) i * c + j);
    }
}
extern "C" __global__ void embedding_backward_deterministic_f32(const int* idx, const float* gradOut, float* gradW, int n, int c, int v) {
    embedding_backward_deterministic(idx, gradOut, gradW, n, c, v);
}
extern "C" __global__ void embedding_backward_deterministic_bf16(const int* idx, const bf16* gradOut, float* gradW, int n, int c, int v) {
    embedding_backward_deterministic(idx, gradOut, gradW, n, c, v);
}
