// llama.cu — the ops a Llama block adds to GPT's: RMS norm, rotary position embedding (Hugging Face's
// rotate_half convention), SiLU and SwiGLU; the same formulas as CpuBackend's LlamaKernels.
//   rms norm:  y = x·rstd·w, rstd = 1/√(mean(x²) + eps) saved (fp32)
//              dx += rstd·dn − x·rstd³·Σ(dn·x)/c with dn = dy·w;  dw += Σ_rows dy·x·rstd (fp32, rows in order)
//   rope:      per head of D = 2h at position t = row mod T, c = cos[t, i], s = sin[t, i] (i < h):
//              y[i] = x[i]·c − x[i+h]·s,  y[i+h] = x[i+h]·c + x[i]·s;  the backward adds the inverse rotation
//   swiglu:    y = silu(a)·u (u NULL: y = silu(a)), silu(a) = a·σ(a);  da += g·u·σ(a)·(1 + a·(1 − σ(a))),  du += g·silu(a)
// The bf16 variants read and write activations in bf16; rstd, the weight gradient and the cos/sin tables
// are fp32 in both. Arithmetic is fp32.
#include "kiln_cuda.h"

template <class T>
static __device__ void rmsnorm_forward(const T* x, const T* w, T* out, float* rstd, int rows, int c, float eps) {
    int lane = threadIdx.x % 32;
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (row >= rows) return; // whole warps leave together
    const T* xr = x + (long) row * c;
    T* yr = out + (long) row * c;
    float ss = 0.0f;
    for (int j = lane; j < c; j += 32) {
        float v = kiln_load(xr + j);
        ss += v * v;
    }
    float rs = rsqrtf(kiln_warp_sum(ss) / c + eps);
    for (int j = lane; j < c; j += 32) kiln_store(yr + j, kiln_load(xr + j) * rs * kiln_load(w + j));
    if (lane == 0) rstd[row] = rs;
}
extern "C" __global__ void rmsnorm_forward_f32(const float* x, const float* w, float* out, float* rstd, int rows, int c, float eps) {
    rmsnorm_forward(x, w, out, rstd, rows, c, eps);
}
extern "C" __global__ void rmsnorm_forward_bf16(const bf16* x, const bf16* w, bf16* out, float* rstd, int rows, int c, float eps) {
    rmsnorm_forward(x, w, out, rstd, rows, c, eps);
}

template <class T>
static __device__ void rmsnorm_backward(const T* x, const T* w, const float* rstd, const T* gradOut, T* gradX, int rows, int c) {
    int lane = threadIdx.x % 32;
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (row >= rows) return;
    const T* xr = x + (long) row * c;
    const T* gr = gradOut + (long) row * c;
    T* dr = gradX + (long) row * c;
    float k = rstd[row], dot = 0.0f;
    for (int j = lane; j < c; j += 32) dot += kiln_load(gr + j) * kiln_load(w + j) * kiln_load(xr + j);
    float coef = k * k * k * kiln_warp_sum(dot) / c;
    for (int j = lane; j < c; j += 32)
        kiln_store(dr + j, kiln_load(dr + j) + kiln_load(gr + j) * kiln_load(w + j) * k - kiln_load(xr + j) * coef);
}
extern "C" __global__ void rmsnorm_backward_f32(const float* x, const float* w, const float* rstd, const float* gradOut, float* gradX,
                                                int rows, int c) {
    rmsnorm_backward(x, w, rstd, gradOut, gradX, rows, c);
}
extern "C" __global__ void rmsnorm_backward_bf16(const bf16* x, const bf16* w, const float* rstd, const bf16* gradOut, bf16* gradX,
                                                 int rows, int c) {
    rmsnorm_backward(x, w, rstd, gradOut, gradX, rows, c);
}

// gradW[j] += Σ_r dy[r, j]·x[r, j]·rstd[r], one thread per column, rows in order (deterministic)
template <class T>
static __device__ void rmsnorm_backward_weight(const T* x, const float* rstd, const T* gradOut, float* gradW, int rows, int c) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= c) return;
    float acc = 0.0f;
    for (int r = 0; r < rows; r++) acc += kiln_load(gradOut + (long) r * c + j) * kiln_load(x + (long) r * c + j) * rstd[r];
    gradW[j] += acc;
}
extern "C" __global__ void rmsnorm_backward_weight_f32(const float* x, const float* rstd, const float* gradOut, float* gradW, int rows, int c) {
    rmsnorm_backward_weight(x, rstd, gradOut, gradW, rows, c);
}
extern "C" __global__ void rmsnorm_backward_weight_bf16(const bf16* x, const float* rstd, const bf16* gradOut, float* gradW, int rows, int c) {
    rmsnorm_backward_weight(x, rstd, gradOut, gradW, rows, c);
}

// one thread per rotated pair: pairs = rows·(w/2); x, out (rows, w) with w = heads·d; cos, sin (tLen, d/2).
// inverse: out += the rotation by −angle (the backward of a rotation is its inverse).
template <class T>
static __device__ void rope(const T* x, const float* cos, const float* sin, T* out, int pairs, int w, int d, int tLen, int inverse) {
    int h = d / 2, half = w / 2;
    KILN_GRID_STRIDE(p, pairs) {
        long r = p / half;
        int rem = (int) (p % half), head = rem / h, i = rem % h;
        long base = r * w + (long) head * d;
        long t = r % tLen;
        float c = cos[t * h + i], s = sin[t * h + i];
        if (inverse) s = -s;
        float a = kiln_load(x + base + i), b = kiln_load(x + base + i + h);
        float y0 = a * c - b * s, y1 = b * c + a * s;
        if (inverse) {
            y0 += kiln_load(out + base + i);
            y1 += kiln_load(out + base + i + h);
        }
        kiln_store(out + base + i, y0);
        kiln_store(out + base + i + h, y1);
    }
}
extern "C" __global__ void rope_f32(const float* x, const float* cos, const float* sin, float* out, int pairs, int w, int d, int tLen,
                                    int inverse) {
    rope(x, cos, sin, out, pairs, w, d, tLen, inverse);
}
extern "C" __global__ void rope_bf16(const bf16* x, const float* cos, const float* sin, bf16* out, int pairs, int w, int d, int tLen,
                                     int inverse) {
    rope(x, cos, sin, out, pairs, w, d, tLen, inverse);
}

static __device__ __forceinline__ float kiln_sigmoid(float a) {
    return 1.0f / (1.0f + expf(-a));
}

// out = silu(gate)·up, or silu(gate) when up is NULL
template <class T>
static __device__ void swiglu_forward(const T* gate, const T* up, T* out, int n) {
    KILN_GRID_STRIDE(i, n) {
        float a = kiln_load(gate + i);
        float y = a * kiln_sigmoid(a);
        if (up != nullptr) y *= kiln_load(up + i);
        kiln_store(out + i, y);
    }
}
extern "C" __global__ void swiglu_forward_f32(const float* gate, const float* up, float* out, int n) { swiglu_forward(gate, up, out, n); }
extern "C" __global__ void swiglu_forward_bf16(const bf16* gate, const bf16* up, bf16* out, int n) { swiglu_forward(gate, up, out, n); }

// gradGate += g·u·silu'(a), gradUp += g·silu(a); up NULL is plain silu; either gradient may be NULL
template <class T>
static __device__ void swiglu_backward(const T* gate, const T* up, const T* gradOut, T* gradGate, T* gradUp, int n) {
    KILN_GRID_STRIDE(i, n) {
        float a = kiln_load(gate + i), g = kiln_load(gradOut + i), sig = kiln_sigmoid(a);
        if (gradUp != nullptr) kiln_store(gradUp + i, kiln_load(gradUp + i) + g * a * sig);
        if (gradGate != nullptr) {
            float gu = up == nullptr ? g : g * kiln_load(up + i);
            kiln_store(gradGate + i, kiln_load(gradGate + i) + gu * sig * (1.0f + a * (1.0f - sig)));
        }
    }
}
extern "C" __global__ void swiglu_backward_f32(const float* gate, const float* up, const float* gradOut, float* gradGate, float* gradUp,
                                               int n) {
    swiglu_backward(gate, up, gradOut, gradGate, gradUp, n);
}
extern "C" __global__ void swiglu_backward_bf16(const bf16* gate, const bf16* up, const bf16* gradOut, bf16* gradGate, bf16* gradUp,
                                                int n) {
    swiglu_backward(gate, up, gradOut, gradGate, gradUp, n);
}
