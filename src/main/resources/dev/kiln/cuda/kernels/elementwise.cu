// elementwise.cu — broadcasting binary ops, axpy, scale. One thread per output element
// (grid-stride), fp32 arithmetic whatever the storage type.
#include "kiln_cuda.h"

// out[i] = a ∘ b over a contiguous out of shape (d0, d1, d2, d3); a and b are read through their
// own element strides (0 on broadcast dimensions). op: 0 add, 1 sub, 2 mul, 3 div (Backend.BinaryOp).
template <class T>
static __device__ void binary(int op, const T* a, const T* b, T* out, int n, int d1, int d2, int d3,
                              int as0, int as1, int as2, int as3, int bs0, int bs1, int bs2, int bs3) {
    KILN_GRID_STRIDE(i, n) {
        long r = i;
        long i3 = r % d3; r /= d3;
        long i2 = r % d2; r /= d2;
        long i1 = r % d1; long i0 = r / d1;
        float x = kiln_load(a + i0 * as0 + i1 * as1 + i2 * as2 + i3 * as3);
        float y = kiln_load(b + i0 * bs0 + i1 * bs1 + i2 * bs2 + i3 * bs3);
        float z = op == 0 ? x + y : op == 1 ? x - y : op == 2 ? x * y : x / y;
        kiln_store(out + i, z);
    }
}

extern "C" __global__ void binary_f32(int op, const float* a, const float* b, float* out, int n, int d1, int d2, int d3,
                                      int as0, int as1, int as2, int as3, int bs0, int bs1, int bs2, int bs3) {
    binary(op, a, b, out, n, d1, d2, d3, as0, as1, as2, as3, bs0, bs1, bs2, bs3);
}
extern "C" __global__ void binary_bf16(int op, const bf16* a, const bf16* b, bf16* out, int n, int d1, int d2, int d3,
                                       int as0, int as1, int as2, int as3, int bs0, int bs1, int bs2, int bs3) {
    binary(op, a, b, out, n, d1, d2, d3, as0, as1, as2, as3, bs0, bs1, bs2, bs3);
}

// dst += alpha · src (Backend.axpy; alpha = 1 is Backend.accumulate for equal shapes)
template <class T>
static __device__ void axpy(float alpha, const T* src, T* dst, int n) {
    KILN_GRID_STRIDE(i, n) kiln_store(dst + i, kiln_load(dst + i) + alpha * kiln_load(src + i));
}
extern "C" __global__ void axpy_f32(float alpha, const float* src, float* dst, int n) { axpy(alpha, src, dst, n); }
extern "C" __global__ void axpy_bf16(float alpha, const bf16* src, bf16* dst, int n) { axpy(alpha, src, dst, n); }

// x *= alpha
template <class T>
static __device__ void scale(T* x, float alpha, int n) {
    KILN_GRID_STRIDE(i, n) kiln_store(x + i, kiln_load(x + i) * alpha);
}
extern "C" __global__ void scale_f32(float* x, float alpha, int n) { scale(x, alpha, n); }
extern "C" __global__ void scale_bf16(bf16* x, float alpha, int n) { scale(x, alpha, n); }
