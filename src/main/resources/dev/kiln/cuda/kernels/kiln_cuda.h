// kiln_cuda.h — the one header every Kiln kernel includes.
// Under nvcc and NVRTC (__CUDACC__) it is real CUDA; otherwise the kernels are being built for the
// host by the tests, and kiln_emu.h supplies the CUDA subset they use. NVRTC has no standard
// library headers, so nothing here includes one under __CUDACC__.
#pragma once

#if defined(__CUDACC__)
#  if defined(KILN_NO_CUDA_BF16_H) || (defined(__CUDACC_RTC__) && defined(__has_include) && !__has_include(<cuda_bf16.h>))
// NVRTC without the toolkit's include path: a minimal bf16 storage type, converted by the
// hardware's round-to-nearest-even instruction (what __float2bfloat16 compiles to on sm_80+).
struct __align__(2) __nv_bfloat16 {
    unsigned short __x;
};
static __device__ __forceinline__ __nv_bfloat16 __float2bfloat16(float f) {
    __nv_bfloat16 r;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r.__x) : "f"(f));
    return r;
}
static __device__ __forceinline__ float __bfloat162float(__nv_bfloat16 b) {
    return __uint_as_float(((unsigned) b.__x) << 16);
}
#  else
#    include <cuda_bf16.h>
#  endif
#  define KILN_DYNAMIC_SHARED(T, name) extern __shared__ T name[]
#else
#  include "kiln_emu.h"
#  define KILN_DYNAMIC_SHARED(T, name) T* name = static_cast<T*>(kiln_emu::dynamic_shared())
#endif

typedef __nv_bfloat16 bf16;

#define KILN_FULL_MASK 0xffffffffu
#define KILN_INF __int_as_float(0x7f800000)

// Loads widen to fp32 and stores round from fp32: every kernel computes and accumulates in fp32,
// whatever its storage type.
static __device__ __forceinline__ float kiln_load(const float* p) { return *p; }
static __device__ __forceinline__ float kiln_load(const bf16* p) { return __bfloat162float(*p); }
static __device__ __forceinline__ void kiln_store(float* p, float v) { *p = v; }
static __device__ __forceinline__ void kiln_store(bf16* p, float v) { *p = __float2bfloat16(v); }

static __device__ __forceinline__ float kiln_warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(KILN_FULL_MASK, v, o);
    return v;
}

static __device__ __forceinline__ float kiln_warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(KILN_FULL_MASK, v, o));
    return v;
}

/**
 * Sum over the whole block (blockDim.x a multiple of 32, at most 1024), returned to every thread.
 * scratch: 32 floats of shared memory; the trailing barrier lets the caller reuse it at once.
 */
static __device__ __forceinline__ float kiln_block_sum(float v, float* scratch) {
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    v = kiln_warp_sum(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : 0.0f;
    v = kiln_warp_sum(v);
    __syncthreads();
    return v;
}

static __device__ __forceinline__ float kiln_block_max(float v, float* scratch) {
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    v = kiln_warp_max(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : -KILN_INF;
    v = kiln_warp_max(v);
    __syncthreads();
    return v;
}

/** The global index of this thread's first element and the grid-stride step, for flat loops. */
#define KILN_GRID_STRIDE(i, n) \
    for (long i = (long) blockIdx.x * blockDim.x + threadIdx.x; i < (long) (n); i += (long) gridDim.x * blockDim.x)
