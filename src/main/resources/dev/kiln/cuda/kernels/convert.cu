// convert.cu — fp32 ↔ bf16 (round to nearest even, as __float2bfloat16).
#include "kiln_cuda.h"

extern "C" __global__ void convert_f32_to_bf16(const float* src, bf16* dst, int n) {
    KILN_GRID_STRIDE(i, n) dst[i] = __float2bfloat16(src[i]);
}
extern "C" __global__ void convert_bf16_to_f32(const bf16* src, float* dst, int n) {
    KILN_GRID_STRIDE(i, n) dst[i] = __bfloat162float(src[i]);
}
