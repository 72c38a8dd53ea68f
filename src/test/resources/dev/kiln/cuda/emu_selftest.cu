// emu_selftest.cu — kernels that test the host emulation itself (EmulatorSelfTest), not Kiln ops.
#include "kiln_cuda.h"

// Inclusive scan of each block's values in shared memory (Hillis–Steele): two barriers inside a
// loop of log2(blockDim) rounds. Correct only if every thread stops at each barrier.
extern "C" __global__ void block_scan(const float* x, float* out, int n) {
    __shared__ float s[1024];
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    s[threadIdx.x] = i < n ? x[i] : 0.0f;
    __syncthreads();
    for (int off = 1; off < (int) blockDim.x; off <<= 1) {
        float v = (int) threadIdx.x >= off ? s[threadIdx.x - off] : 0.0f;
        __syncthreads();
        s[threadIdx.x] += v;
        __syncthreads();
    }
    if (i < n) out[i] = s[threadIdx.x];
}

// out[4i + 0..3] = x of lane ^ 1, x of lane + 5 (own value past the warp), x of lane 7, the warp's sum
extern "C" __global__ void warp_shuffles(const float* x, float* out, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    float v = i < n ? x[i] : 0.0f;
    float a = __shfl_xor_sync(KILN_FULL_MASK, v, 1);
    float b = __shfl_down_sync(KILN_FULL_MASK, v, 5);
    float c = __shfl_sync(KILN_FULL_MASK, v, 7);
    float d = kiln_warp_sum(v);
    if (i < n) {
        out[4 * i] = a;
        out[4 * i + 1] = b;
        out[4 * i + 2] = c;
        out[4 * i + 3] = d;
    }
}

// Lanes below 16 wait at the block barrier, the others at a warp barrier: neither can complete.
extern "C" __global__ void diverged_barrier(int* out, int n) {
    if (threadIdx.x % 32 < 16) __syncthreads();
    else __syncwarp();
    out[0] = n;
}

// Every thread adds one to an int and to a float: blocks run on several host threads at once.
extern "C" __global__ void count_threads(int* count, float* sum, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        atomicAdd(count, 1);
        atomicAdd(sum, 1.0f);
    }
}
