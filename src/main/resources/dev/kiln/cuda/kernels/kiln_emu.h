// kiln_emu.h — runs Kiln's CUDA kernels on the host, for tests (never used under nvcc/NVRTC).
//
// A launch runs its blocks on a few OS worker threads; inside a block every CUDA thread is a
// ucontext fiber with its own stack, scheduled cooperatively on the worker: a fiber runs until it
// reaches __syncthreads / __syncwarp / a warp shuffle, then the next one runs. So kernels that sync
// inside loops behave as on the GPU, and a barrier that some live thread never reaches is reported
// as a deadlock instead of hanging. Threads that have returned count as arrived (as on sm_70+).
// __shared__ variables are per worker (static thread_local): one block runs at a time per worker.
// atomicAdd & co are real atomics, since blocks run in parallel.
//
// Not emulated (named in the tests): tensor-core instructions, timing, real warp divergence and
// independent thread scheduling, partial shuffle masks, the memory model (races between threads of a
// block without a barrier are serialised here, so they go unseen), the approximate __expf family.
#pragma once

#include <cmath>
#include <math.h>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>
#include <ucontext.h>

struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

struct alignas(16) float4 {
    float x, y, z, w;
};

inline thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;
constexpr int warpSize = 32;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)
#define __shared__ static thread_local

namespace kiln_emu {

constexpr size_t STACK_BYTES = 128 * 1024;

struct Barrier {
    int arrived = 0;
    unsigned gen = 0;
};

struct Fiber {
    ucontext_t ctx;
    dim3 tid;
    int warp = 0, lane = 0;
    bool done = false;
};

struct Block {
    std::vector<Fiber> fibers;
    std::unique_ptr<char[]> stacks; // uninitialised: only the pages a fiber touches are ever mapped
    std::vector<unsigned char> dynamicShared;
    std::vector<Barrier> warpBarriers;
    std::vector<int> warpLive;
    std::vector<uint64_t> slots; // one shuffle slot per thread
    Barrier blockBarrier;
    ucontext_t scheduler;
    int current = 0, live = 0, idleYields = 0;
    bool deadlock = false;
    const std::function<void()>* body = nullptr;
};

inline thread_local Block* tlsBlock = nullptr;

inline Fiber& self() { return tlsBlock->fibers[tlsBlock->current]; }

inline void yield() {
    Block* b = tlsBlock;
    if (++b->idleYields > 2 * b->live + 2) b->deadlock = true;
    swapcontext(&b->fibers[b->current].ctx, &b->scheduler);
    if (b->deadlock) swapcontext(&b->fibers[b->current].ctx, &b->scheduler); // never resumed again
}

inline void arrive(Barrier& br, int expected) {
    Block* b = tlsBlock;
    b->idleYields = 0;
    unsigned gen = br.gen;
    if (++br.arrived >= expected) {
        br.arrived = 0;
        br.gen++;
        return;
    }
    while (br.gen == gen) yield();
}

/** A returned thread no longer holds up barriers that everyone else has reached. */
inline void release_if_complete(Barrier& br, int expected) {
    if (br.arrived > 0 && br.arrived >= expected) {
        br.arrived = 0;
        br.gen++;
    }
}

inline void syncthreads() { arrive(tlsBlock->blockBarrier, tlsBlock->live); }

inline void syncwarp() {
    Fiber& f = self();
    arrive(tlsBlock->warpBarriers[f.warp], tlsBlock->warpLive[f.warp]);
}

/** Every live lane of the warp posts its value, then reads lane src's (or keeps its own if src < 0). */
template <class T>
inline T shuffle(T v, int srcLane) {
    static_assert(sizeof(T) <= 8, "shuffle of a type wider than 8 bytes");
    Block* b = tlsBlock;
    Fiber& f = self();
    int base = f.warp * 32;
    std::memcpy(&b->slots[base + f.lane], &v, sizeof(T));
    syncwarp();
    T r = v;
    if (srcLane >= 0) std::memcpy(&r, &b->slots[base + srcLane], sizeof(T));
    syncwarp();
    return r;
}

inline void fiber_entry() {
    Block* b = tlsBlock;
    (*b->body)();
    Fiber& f = self();
    f.done = true;
    b->live--;
    b->warpLive[f.warp]--;
    b->idleYields = 0;
    release_if_complete(b->blockBarrier, b->live);
    release_if_complete(b->warpBarriers[f.warp], b->warpLive[f.warp]);
    swapcontext(&f.ctx, &b->scheduler);
}

/** Runs one block: all its threads as fibers until every one has returned (or they deadlock). */
inline bool run_block(Block& b) {
    int n = (int) b.fibers.size();
    int warps = (n + 31) / 32;
    b.live = n;
    b.idleYields = 0;
    b.deadlock = false;
    b.blockBarrier = Barrier{};
    b.warpBarriers.assign(warps, Barrier{});
    b.warpLive.assign(warps, 0);
    for (int i = 0; i < n; i++) {
        Fiber& f = b.fibers[i];
        f.tid = dim3(i % blockDim.x, (i / blockDim.x) % blockDim.y, i / (blockDim.x * blockDim.y));
        f.warp = i / 32;
        f.lane = i % 32;
        f.done = false;
        b.warpLive[f.warp]++;
        getcontext(&f.ctx);
        f.ctx.uc_stack.ss_sp = b.stacks.get() + (size_t) i * STACK_BYTES;
        f.ctx.uc_stack.ss_size = STACK_BYTES;
        f.ctx.uc_link = nullptr;
        makecontext(&f.ctx, fiber_entry, 0);
    }
    while (b.live > 0) {
        for (int i = 0; i < n && !b.deadlock; i++) {
            if (b.fibers[i].done) continue;
            b.current = i;
            threadIdx = b.fibers[i].tid;
            swapcontext(&b.scheduler, &b.fibers[i].ctx);
        }
        if (b.deadlock) return false;
    }
    return true;
}

inline thread_local std::string lastError;

/** Runs body for every thread of the grid; false (with lastError set) if a block deadlocked. */
inline bool launch(dim3 grid, dim3 block, size_t sharedBytes, const std::function<void()>& body) {
    long blocks = (long) grid.x * grid.y * grid.z;
    int threads = (int) (block.x * block.y * block.z);
    if (blocks <= 0 || threads <= 0 || threads > 1024) {
        lastError = "bad launch geometry: " + std::to_string(blocks) + " blocks of " + std::to_string(threads) + " threads";
        return false;
    }
    const char* env = std::getenv("KILN_EMU_THREADS");
    int workers = env ? std::atoi(env) : (int) std::thread::hardware_concurrency();
    if (workers < 1) workers = 1;
    if (workers > blocks) workers = (int) blocks;
    std::atomic<long> next{0};
    std::atomic<long> failedBlock{-1};
    auto work = [&] {
        Block b;
        b.fibers.resize(threads);
        b.stacks.reset(new char[(size_t) threads * STACK_BYTES]);
        b.slots.assign(((threads + 31) / 32) * 32, 0);
        b.dynamicShared.assign(sharedBytes, 0);
        b.body = &body;
        tlsBlock = &b;
        blockDim = block;
        gridDim = grid;
        for (long i; (i = next.fetch_add(1)) < blocks && failedBlock.load() < 0;) {
            blockIdx = dim3(i % grid.x, (i / grid.x) % grid.y, i / ((long) grid.x * grid.y));
            if (!run_block(b)) failedBlock.store(i);
        }
        tlsBlock = nullptr;
    };
    std::vector<std::thread> pool;
    for (int w = 1; w < workers; w++) pool.emplace_back(work);
    work();
    for (auto& t : pool) t.join();
    if (failedBlock.load() >= 0) {
        lastError = "deadlock in block " + std::to_string(failedBlock.load()) +
                    ": a barrier or shuffle was not reached by every live thread";
        return false;
    }
    return true;
}

inline void* dynamic_shared() { return tlsBlock->dynamicShared.data(); }

} // namespace kiln_emu

inline void __syncthreads() { kiln_emu::syncthreads(); }
inline void __syncwarp(unsigned = 0xffffffffu) { kiln_emu::syncwarp(); }

// Warp shuffles: every live lane of the warp must take part (full mask), as in Kiln's kernels.
template <class T>
inline T __shfl_sync(unsigned, T v, int src, int width = 32) {
    int lane = kiln_emu::self().lane;
    return kiln_emu::shuffle(v, (lane / width) * width + src % width);
}
template <class T>
inline T __shfl_xor_sync(unsigned, T v, int laneMask, int width = 32) {
    int lane = kiln_emu::self().lane, src = lane ^ laneMask;
    return kiln_emu::shuffle(v, src / width == lane / width ? src : lane);
}
template <class T>
inline T __shfl_down_sync(unsigned, T v, unsigned delta, int width = 32) {
    int lane = kiln_emu::self().lane, src = lane + (int) delta;
    return kiln_emu::shuffle(v, src / width == lane / width ? src : -1);
}

// Atomics: real ones, since blocks run on several OS threads.
inline float atomicAdd(float* p, float v) {
    uint32_t* u = reinterpret_cast<uint32_t*>(p);
    uint32_t old = __atomic_load_n(u, __ATOMIC_RELAXED), want;
    do {
        float f, g;
        std::memcpy(&f, &old, 4);
        g = f + v;
        std::memcpy(&want, &g, 4);
    } while (!__atomic_compare_exchange_n(u, &old, want, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
    float r;
    std::memcpy(&r, &old, 4);
    return r;
}
inline int atomicAdd(int* p, int v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
inline int atomicMin(int* p, int v) {
    int old = __atomic_load_n(p, __ATOMIC_RELAXED);
    while (v < old && !__atomic_compare_exchange_n(p, &old, v, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {}
    return old;
}

// Bit casts and the math CUDA has beyond <cmath>.
inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
inline int __float_as_int(float f) { int i; std::memcpy(&i, &f, 4); return i; }
inline float __uint_as_float(unsigned i) { float f; std::memcpy(&f, &i, 4); return f; }
inline unsigned __float_as_uint(float f) { unsigned i; std::memcpy(&i, &f, 4); return i; }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
template <class T> inline T __ldg(const T* p) { return *p; }
// expf, logf, tanhf, sqrtf, fmaxf, … come from <math.h> (glibc), not the GPU's libdevice

// bf16 as a storage type; conversions bit for bit as CUDA's __float2bfloat16 (round to nearest
// even, every NaN to the canonical 0x7fff) and __bfloat162float.
struct __nv_bfloat16 {
    unsigned short __x;
};
inline __nv_bfloat16 __float2bfloat16(float f) {
    unsigned x = __float_as_uint(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return __nv_bfloat16{0x7fffu};
    unsigned short r = (unsigned short) (x >> 16);
    unsigned remainder = x << 16;
    if (remainder > 0x80000000u || (remainder == 0x80000000u && (r & 1u))) r++;
    return __nv_bfloat16{r};
}
inline float __bfloat162float(__nv_bfloat16 b) { return __uint_as_float(((unsigned) b.__x) << 16); }

// Launchers: args follows cuLaunchKernel's kernelParams (args[i] points at argument i's value).
namespace kiln_emu {
template <class T>
constexpr char kind_of() {
    if constexpr (std::is_pointer_v<T>) return 'P';
    else if constexpr (std::is_same_v<T, int>) return 'I';
    else if constexpr (std::is_same_v<T, float>) return 'F';
    else return '?';
}
/** Whether a kernel's parameter list matches a catalog signature such as "PPIF". */
template <class... A>
constexpr bool kinds_match(void (*)(A...), const char* s) {
    constexpr char k[] = {kind_of<A>()..., 0};
    for (size_t i = 0; i <= sizeof...(A); i++)
        if (k[i] != s[i]) return false;
    return true;
}
template <class... A, size_t... I>
void call_with(void (*k)(A...), void** args, std::index_sequence<I...>) {
    k(*static_cast<std::remove_reference_t<A>*>(args[I])...);
}
template <class... A>
int launch_kernel(void (*k)(A...), int gx, int gy, int gz, int bx, int by, int bz, int shmem, void** args) {
    std::function<void()> body = [&] { call_with(k, args, std::index_sequence_for<A...>{}); };
    return launch(dim3(gx, gy, gz), dim3(bx, by, bz), (size_t) shmem, body) ? 0 : 1;
}
} // namespace kiln_emu
