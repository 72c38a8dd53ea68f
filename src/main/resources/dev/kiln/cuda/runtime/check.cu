// Kernels of `kiln gpu-check`: they test the runtime (NVRTC, module loading, launches), not the model's math.

// y[i] = a * x[i] + y[i]
extern "C" __global__ void saxpy(float a, const float* x, float* y, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = a * x[i] + y[i];
}

// does nothing: timing it measures the cost of a launch from Java
extern "C" __global__ void empty_kernel() {}
