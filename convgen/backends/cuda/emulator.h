// convgen's CUDA emulator: runs CUDA C++ (.cu text) on the CPU.
//
// The build force-includes this header (g++ -include emulator.h -DCONVGEN_CUDA_EMULATOR)
// before the .cu text, which stays exactly what nvcc compiles. Each thread of a block is a
// fiber (ucontext) with its own stack; __syncthreads() switches back to the block's
// scheduler, which starts the next phase once every thread has arrived. A block's fibers
// run between barriers in forward, reverse or shuffled order (cg_emu_set_order), so a
// missing barrier or a shared-memory race changes the result from one order to the other.
// A barrier that only some threads reach, or threads waiting at different barriers, is an
// error the launch returns (never a hang). Blocks spread over OpenMP threads; __shared__
// variables are thread_local, so each OS thread (one block in flight) has its own.
//
// Every array access of the generated kernels goes through CG_AT, which the emulator checks
// against the array's size (global, shared and __constant__ arrays alike): an access out
// of bounds fails the launch with a message naming the array, index, line and thread.
//
// Not emulated (yet): dynamic shared memory (extern __shared__), warp intrinsics
// (__shfl_*, __ballot_sync, ...), __syncthreads_count/_and/_or, cooperative groups.

#ifndef CONVGEN_CUDA_EMULATOR_H
#define CONVGEN_CUDA_EMULATOR_H

#include <cmath>
#include <cstdarg>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <type_traits>

#include <pthread.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#endif

#ifndef CG_EMU_STACK_SIZE
#define CG_EMU_STACK_SIZE (64 * 1024)  // bytes of stack per GPU thread (fiber)
#endif

// ---- qualifiers -------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __constant__
// thread_local at block scope implies static: one instance per OS thread, i.e. per block in
// flight (a block's fibers share their OS thread; blocks on one OS thread run one by one)
#define __shared__ thread_local
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __restrict__ __restrict
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(...)
#define __grid_constant__

// ---- built-in types -----------------------------------------------------------------------
struct uint3 { unsigned int x, y, z; };
struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1)
        : x(x_), y(y_), z(z_) {}
    constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
    constexpr operator uint3() const { return uint3{x, y, z}; }
};
struct __attribute__((aligned(8))) float2 { float x, y; };
struct __attribute__((aligned(16))) float4 { float x, y, z, w; };
struct __attribute__((aligned(8))) int2 { int x, y; };
struct __attribute__((aligned(16))) int4 { int x, y, z, w; };
static inline float2 make_float2(float x, float y) { return float2{x, y}; }
static inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }
static inline int2 make_int2(int x, int y) { return int2{x, y}; }
static inline int4 make_int4(int x, int y, int z, int w) { return int4{x, y, z, w}; }
static inline uint3 make_uint3(unsigned x, unsigned y, unsigned z) { return uint3{x, y, z}; }

// ---- the emulator's state -------------------------------------------------------------------
namespace cg_emu {
enum { RUNNABLE = 0, AT_BARRIER = 1, DONE = 2 };
enum { ORDER_FORWARD = 0, ORDER_REVERSE = 1, ORDER_SHUFFLE = 2 };

struct Fiber {
    ucontext_t ctx;
    uint3 tid;
    int state;
    int line;  // the source line of the __syncthreads() it waits at
#if defined(__SANITIZE_ADDRESS__)
    void* fake_stack;  // AddressSanitizer's fake stack while switched out
#endif
};

struct Scheduler {
    ucontext_t main;
    Fiber* fibers;
    int* perm;
    char* stacks;       // capacity slots of (guard page + CG_EMU_STACK_SIZE)
    size_t slot_bytes;
    int capacity;
    int current;
    int active;  // a block is running on this OS thread
    void (*invoke)(const void*);
    const void* closure;
#if defined(__SANITIZE_ADDRESS__)
    void* main_fake_stack;   // AddressSanitizer: the OS thread's own stack, to switch back to
    const void* main_bottom;
    size_t main_size;
#endif
};
}  // namespace cg_emu

// External linkage on purpose: the compiler must assume a call into swapcontext can change
// them, so threadIdx is read again after every __syncthreads().
thread_local cg_emu::Scheduler* cg_emu_sched = nullptr;
thread_local uint3 cg_emu_thread_idx;
thread_local uint3 cg_emu_block_idx;
thread_local dim3 cg_emu_block_dim;
thread_local dim3 cg_emu_grid_dim;

int cg_emu_order = cg_emu::ORDER_FORWARD;
unsigned int cg_emu_seed = 0;
int cg_emu_num_threads = 0;  // 0: OpenMP's default
char cg_emu_error[1024];
int cg_emu_error_set = 0;
long long cg_emu_error_block = -1;  // the linear block the kept error came from (-1: none, host)
pthread_mutex_t cg_emu_error_lock = PTHREAD_MUTEX_INITIALIZER;

#define threadIdx (cg_emu_thread_idx)
#define blockIdx (cg_emu_block_idx)
#define blockDim (cg_emu_block_dim)
#define gridDim (cg_emu_grid_dim)
#define warpSize 32

// ---- the C API the Python loader calls ---------------------------------------------------------
extern "C" {
// order: 0 forward, 1 reverse, 2 shuffled (by seed, block and phase)
int cg_emu_set_order(int order, unsigned int seed) {
    if (order < 0 || order > 2) return 1;
    cg_emu_order = order;
    cg_emu_seed = seed;
    return 0;
}
int cg_emu_set_num_threads(int n) { cg_emu_num_threads = n > 0 ? n : 0; return 0; }
const char* cg_emu_last_error(void) { return cg_emu_error; }
void cg_emu_clear_error(void) {
    pthread_mutex_lock(&cg_emu_error_lock);
    cg_emu_error[0] = '\0';
    cg_emu_error_set = 0;
    cg_emu_error_block = -1;
    pthread_mutex_unlock(&cg_emu_error_lock);
}
}

namespace cg_emu {

// Keep one error per launch: the one from the lowest-numbered block, so the message does not
// depend on which OS thread got there first (blocks are dealt out in order, so no block below
// a failing one is still waiting to start); errors outside blocks (host code): the first.
static inline void fail(const char* format, ...) {
    long long block = -1;
    if (cg_emu_sched != nullptr && cg_emu_sched->active) {
        const uint3 b = cg_emu_block_idx;
        const dim3 g = cg_emu_grid_dim;
        block = b.x + static_cast<long long>(g.x) * (b.y + static_cast<long long>(g.y) * b.z);
    }
    pthread_mutex_lock(&cg_emu_error_lock);
    if (!cg_emu_error_set || (block >= 0 && cg_emu_error_block >= 0 && block < cg_emu_error_block)) {
        cg_emu_error_block = block;
        va_list args;
        va_start(args, format);
        vsnprintf(cg_emu_error, sizeof cg_emu_error, format, args);
        va_end(args);
        cg_emu_error_set = 1;
    }
    pthread_mutex_unlock(&cg_emu_error_lock);
}

// This OS thread's scheduler with room for n fibers (stacks mapped once, reused), or null.
static inline Scheduler* scheduler(int n) {
    Scheduler* s = cg_emu_sched;
    if (s == nullptr) {
        s = static_cast<Scheduler*>(calloc(1, sizeof(Scheduler)));
        if (s == nullptr) return nullptr;
        long page = sysconf(_SC_PAGESIZE);
        size_t stack = (CG_EMU_STACK_SIZE + page - 1) / page * page;
        s->slot_bytes = stack + page;
        cg_emu_sched = s;
    }
    if (s->capacity < n) {
        long page = sysconf(_SC_PAGESIZE);
        if (s->stacks) munmap(s->stacks, s->slot_bytes * s->capacity);
        free(s->fibers);
        free(s->perm);
        s->capacity = 0;
        s->fibers = static_cast<Fiber*>(calloc(n, sizeof(Fiber)));
        s->perm = static_cast<int*>(calloc(n, sizeof(int)));
        void* stacks = mmap(nullptr, s->slot_bytes * n, PROT_READ | PROT_WRITE,
                            MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (s->fibers == nullptr || s->perm == nullptr || stacks == MAP_FAILED) {
            s->stacks = nullptr;
            return nullptr;
        }
        s->stacks = static_cast<char*>(stacks);
        // a guard page below each stack: an overflow faults instead of corrupting a neighbour
        for (int i = 0; i < n; ++i) mprotect(s->stacks + s->slot_bytes * i, page, PROT_NONE);
        s->capacity = n;
    }
    return s;
}

// Free this OS thread's scheduler and fiber stacks (the end of every launch).
static inline void release_scheduler() {
    Scheduler* s = cg_emu_sched;
    if (s == nullptr) return;
    if (s->stacks) munmap(s->stacks, s->slot_bytes * s->capacity);
    free(s->fibers);
    free(s->perm);
    free(s);
    cg_emu_sched = nullptr;
}

// AddressSanitizer knows one stack per OS thread: every switch between the scheduler and a
// fiber is announced to it (start before swapcontext, finish after), or it takes a fiber's
// frames for a stack overflow or for stack-use-after-return (make sanitize). Plain builds: no-ops.
#if defined(__SANITIZE_ADDRESS__)
static inline void asan_to_fiber(Scheduler* s, int i) {
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    __sanitizer_start_switch_fiber(&s->main_fake_stack, s->stacks + s->slot_bytes * i + page,
                                   s->slot_bytes - page);
}
static inline void asan_in_main(Scheduler* s) {
    __sanitizer_finish_switch_fiber(s->main_fake_stack, nullptr, nullptr);
}
static inline void asan_fiber_started(Scheduler* s) {
    __sanitizer_finish_switch_fiber(nullptr, &s->main_bottom, &s->main_size);
}
static inline void asan_to_main(Scheduler* s, Fiber* f) {  // f null: the fiber ends
    __sanitizer_start_switch_fiber(f ? &f->fake_stack : nullptr, s->main_bottom, s->main_size);
}
static inline void asan_fiber_resumed(Scheduler* s, Fiber* f) {
    __sanitizer_finish_switch_fiber(f->fake_stack, &s->main_bottom, &s->main_size);
}
#else
static inline void asan_to_fiber(Scheduler*, int) {}
static inline void asan_in_main(Scheduler*) {}
static inline void asan_fiber_started(Scheduler*) {}
static inline void asan_to_main(Scheduler*, Fiber*) {}
static inline void asan_fiber_resumed(Scheduler*, Fiber*) {}
#endif

static void fiber_entry() {
    Scheduler* s = cg_emu_sched;
    asan_fiber_started(s);
    s->invoke(s->closure);
    Fiber* f = &s->fibers[s->current];
    f->state = DONE;
    asan_to_main(s, nullptr);
    setcontext(&s->main);
    abort();  // not reached
}

static inline unsigned int mix(unsigned int v) {
    v ^= v >> 16; v *= 0x7feb352dU; v ^= v >> 15; v *= 0x846ca68bU; v ^= v >> 16;
    return v;
}

// Run one block to completion; 0, or 1 with the error recorded.
static int run_block(Scheduler* s, int n, int order, unsigned int seed) {
    const uint3 b = cg_emu_block_idx;
    const dim3 d = cg_emu_block_dim;
    const long page = sysconf(_SC_PAGESIZE);
    for (int i = 0; i < n; ++i) {
        Fiber* f = &s->fibers[i];
        f->tid = uint3{i % d.x, (i / d.x) % d.y, i / (d.x * d.y)};
        f->state = RUNNABLE;
        f->line = 0;
        getcontext(&f->ctx);
        f->ctx.uc_stack.ss_sp = s->stacks + s->slot_bytes * i + page;
        f->ctx.uc_stack.ss_size = s->slot_bytes - page;
        f->ctx.uc_link = nullptr;
        makecontext(&f->ctx, fiber_entry, 0);
    }
    for (int phase = 0;; ++phase) {
        for (int k = 0; k < n; ++k) s->perm[k] = order == ORDER_REVERSE ? n - 1 - k : k;
        if (order == ORDER_SHUFFLE) {
            unsigned int r = mix(seed ^ mix(b.x + 65536U * b.y) ^ mix(b.z + 7919U * phase));
            for (int k = n - 1; k > 0; --k) {
                r = mix(r + 0x9e3779b9U);
                int j = static_cast<int>(r % static_cast<unsigned int>(k + 1));
                int t = s->perm[k]; s->perm[k] = s->perm[j]; s->perm[j] = t;
            }
        }
        for (int k = 0; k < n; ++k) {
            Fiber* f = &s->fibers[s->perm[k]];
            if (f->state != RUNNABLE) continue;
            s->current = s->perm[k];
            cg_emu_thread_idx = f->tid;
            asan_to_fiber(s, s->current);
            swapcontext(&s->main, &f->ctx);
            asan_in_main(s);
        }
        int waiting = 0, first = -1, other = -1;
        for (int i = 0; i < n; ++i) {
            Fiber* f = &s->fibers[i];
            if (f->state != AT_BARRIER) continue;
            ++waiting;
            if (first < 0) first = i;
            else if (other < 0 && f->line != s->fibers[first].line) other = i;
        }
        if (waiting == 0) return 0;
        if (waiting < n) {
            fail("barrier divergence in block (%u,%u,%u): %d of %d threads wait at "
                 "__syncthreads() (line %d, barrier %d) while %d returned without reaching it",
                 b.x, b.y, b.z, waiting, n, s->fibers[first].line, phase + 1, n - waiting);
            return 1;
        }
        if (other >= 0) {
            const Fiber* f = &s->fibers[first];
            const Fiber* g = &s->fibers[other];
            fail("barrier divergence in block (%u,%u,%u): thread (%u,%u,%u) waits at "
                 "__syncthreads() on line %d, thread (%u,%u,%u) at the one on line %d",
                 b.x, b.y, b.z, f->tid.x, f->tid.y, f->tid.z, f->line,
                 g->tid.x, g->tid.y, g->tid.z, g->line);
            return 1;
        }
        for (int i = 0; i < n; ++i) s->fibers[i].state = RUNNABLE;
    }
}

static inline void syncthreads(int line) {
    Scheduler* s = cg_emu_sched;
    if (s == nullptr || !s->active) return;  // host code: nothing to wait for
    Fiber* f = &s->fibers[s->current];
    f->state = AT_BARRIER;
    f->line = line;
    __asm__ __volatile__("" ::: "memory");
    asan_to_main(s, f);
    swapcontext(&f->ctx, &s->main);
    asan_fiber_resumed(s, f);
    __asm__ __volatile__("" ::: "memory");
}

}  // namespace cg_emu

#define __syncthreads() cg_emu::syncthreads(__LINE__)

namespace cg_emu {
// Bounds check of one array access (the templates' CG_AT): an index outside [0, n) records
// an error naming the array, the index, the line and the thread, and the access goes to a
// scratch element instead, so the launch fails with that message rather than corrupting
// memory. On the GPU, CG_AT is a plain subscript.
template <class T>
static inline T* checked(T* array, long long index, long long n, const char* what, int line) {
    if (index >= 0 && index < n) return array + index;
    const uint3 b = cg_emu_block_idx, t = cg_emu_thread_idx;
    fail("out-of-bounds access: %s[%lld] (it holds %lld) on line %d, block (%u,%u,%u) "
         "thread (%u,%u,%u)", what, index, n, line, b.x, b.y, b.z, t.x, t.y, t.z);
    static thread_local typename std::remove_const<T>::type scratch[1];
    scratch[0] = {};
    return scratch;
}
}  // namespace cg_emu
#define CG_AT(array, index, n) (*cg_emu::checked((array), (long long)(index), (long long)(n), #array, __LINE__))

// Launch ``call`` (a callable that calls the __global__ function with its arguments) over
// grid x block. 0 on success; otherwise 1, and cg_emu_last_error() says why.
template <class F>
static int cg_emu_launch(dim3 grid, dim3 block, const F& call) {
    cg_emu_clear_error();
    const long threads = static_cast<long>(block.x) * block.y * block.z;
    const long blocks = static_cast<long>(grid.x) * grid.y * grid.z;
    if (threads < 1 || threads > 1024 || block.z > 64 || blocks < 1 || grid.y > 65535 ||
        grid.z > 65535) {
        cg_emu::fail("invalid launch configuration: grid (%u,%u,%u), block (%u,%u,%u) "
                     "(a block holds 1 to 1024 threads, block.z <= 64, grid.y and grid.z "
                     "<= 65535)", grid.x, grid.y, grid.z, block.x, block.y, block.z);
        return 1;
    }
    const int order = cg_emu_order;
    const unsigned int seed = cg_emu_seed;
    int failed = 0;
    int workers = 1;
#ifdef _OPENMP
    workers = cg_emu_num_threads > 0 ? cg_emu_num_threads : omp_get_max_threads();
    if (workers > blocks) workers = static_cast<int>(blocks);
#endif
    // Every OS thread frees its fiber stacks when the launch ends: each emulator library has
    // its own schedulers (the header is compiled into each), and stacks kept per library and
    // thread, two mappings per fiber with its guard page, exhausted the process's mappings
    // (vm.max_map_count) after a few hundred libraries had run.
#pragma omp parallel num_threads(workers)
    {
#pragma omp for schedule(dynamic)
        for (long linear = 0; linear < blocks; ++linear) {
            if (__atomic_load_n(&failed, __ATOMIC_RELAXED)) continue;
            cg_emu::Scheduler* s = cg_emu::scheduler(static_cast<int>(threads));
            if (s == nullptr) {
                cg_emu::fail("emulator: could not allocate %ld fiber stacks", threads);
                __atomic_store_n(&failed, 1, __ATOMIC_RELAXED);
                continue;
            }
            s->invoke = [](const void* closure) { (*static_cast<const F*>(closure))(); };
            s->closure = &call;
            cg_emu_block_idx = uint3{static_cast<unsigned int>(linear % grid.x),
                                     static_cast<unsigned int>((linear / grid.x) % grid.y),
                                     static_cast<unsigned int>(linear / (static_cast<long>(grid.x) * grid.y))};
            cg_emu_block_dim = block;
            cg_emu_grid_dim = grid;
            s->active = 1;
            if (cg_emu::run_block(s, static_cast<int>(threads), order, seed) != 0)
                __atomic_store_n(&failed, 1, __ATOMIC_RELAXED);
            s->active = 0;
        }
        cg_emu::release_scheduler();
    }
    // a bounds error does not stop its block (the access went to scratch): it fails the launch
    return failed || cg_emu_error_set;
}

// ---- device functions and intrinsics ------------------------------------------------------------
template <class A, class B>
static inline typename std::common_type<A, B>::type min(A a, B b) { return b < a ? b : a; }
template <class A, class B>
static inline typename std::common_type<A, B>::type max(A a, B b) { return a < b ? b : a; }
static inline float min(float a, float b) { return fminf(a, b); }
static inline float max(float a, float b) { return fmaxf(a, b); }
static inline double min(double a, double b) { return fmin(a, b); }
static inline double max(double a, double b) { return fmax(a, b); }

template <class T> static inline T __ldg(const T* p) { return *p; }
// glibc declares these names itself (its internal aliases): macros keep clear of them
#define __expf(x) expf(x)
#define __logf(x) logf(x)
#define __sinf(x) sinf(x)
#define __cosf(x) cosf(x)
#define __tanhf(x) tanhf(x)
#define __powf(x, y) powf((x), (y))
static inline float __fdividef(float x, float y) { return x / y; }
static inline float __frcp_rn(float x) { return 1.0f / x; }
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
static inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }
static inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline int __float2int_rn(float x) { return static_cast<int>(nearbyintf(x)); }
static inline int __float2int_rz(float x) { return static_cast<int>(x); }
static inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
static inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

// Atomics: a block's fibers share one OS thread, but blocks run on several.
template <class T> static inline T atomicAdd(T* p, T v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
template <class T> static inline T atomicSub(T* p, T v) { return __atomic_fetch_sub(p, v, __ATOMIC_SEQ_CST); }
template <class T> static inline T atomicExch(T* p, T v) { return __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST); }
template <class T> static inline T atomicCAS(T* p, T expected, T desired) {
    __atomic_compare_exchange_n(p, &expected, desired, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    return expected;
}
template <class T> static inline T atomicMax(T* p, T v) {
    T old = __atomic_load_n(p, __ATOMIC_SEQ_CST);
    while (old < v && !__atomic_compare_exchange_n(p, &old, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {}
    return old;
}
template <class T> static inline T atomicMin(T* p, T v) {
    T old = __atomic_load_n(p, __ATOMIC_SEQ_CST);
    while (v < old && !__atomic_compare_exchange_n(p, &old, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {}
    return old;
}
static inline float atomicAdd(float* p, float v) {
    unsigned int* bits = reinterpret_cast<unsigned int*>(p);
    unsigned int old = __atomic_load_n(bits, __ATOMIC_SEQ_CST), next;
    do {
        float f;
        memcpy(&f, &old, sizeof f);
        f += v;
        memcpy(&next, &f, sizeof f);
    } while (!__atomic_compare_exchange_n(bits, &old, next, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST));
    float f;
    memcpy(&f, &old, sizeof f);
    return f;
}

// ---- the host runtime API subset a host entry uses (device memory is host memory) ----------------
typedef int cudaError_t;
enum cudaMemcpyKind {
    cudaMemcpyHostToHost = 0, cudaMemcpyHostToDevice = 1, cudaMemcpyDeviceToHost = 2,
    cudaMemcpyDeviceToDevice = 3, cudaMemcpyDefault = 4
};
enum { cudaSuccess = 0, cudaErrorInvalidValue = 1, cudaErrorMemoryAllocation = 2 };

template <class T>
static inline cudaError_t cudaMemcpyToSymbol(T& symbol, const void* src, size_t count,
                                             size_t offset = 0,
                                             cudaMemcpyKind kind = cudaMemcpyHostToDevice) {
    (void)kind;
    if (offset > sizeof(T) || count > sizeof(T) - offset) {
        cg_emu::fail("cudaMemcpyToSymbol: %zu bytes at offset %zu overrun a %zu-byte symbol",
                     count, offset, sizeof(T));
        return cudaErrorInvalidValue;
    }
    memcpy(reinterpret_cast<char*>(&symbol) + offset, src, count);
    return cudaSuccess;
}
template <class T>
static inline cudaError_t cudaMemcpyFromSymbol(void* dst, const T& symbol, size_t count,
                                               size_t offset = 0,
                                               cudaMemcpyKind kind = cudaMemcpyDeviceToHost) {
    (void)kind;
    if (offset > sizeof(T) || count > sizeof(T) - offset) {
        cg_emu::fail("cudaMemcpyFromSymbol: %zu bytes at offset %zu overrun a %zu-byte symbol",
                     count, offset, sizeof(T));
        return cudaErrorInvalidValue;
    }
    memcpy(dst, reinterpret_cast<const char*>(&symbol) + offset, count);
    return cudaSuccess;
}
static inline cudaError_t cudaMemcpy(void* dst, const void* src, size_t count, cudaMemcpyKind) {
    memmove(dst, src, count);
    return cudaSuccess;
}
static inline cudaError_t cudaMemset(void* dst, int value, size_t count) {
    memset(dst, value, count);
    return cudaSuccess;
}
template <class T> static inline cudaError_t cudaMalloc(T** p, size_t size) {
    *p = static_cast<T*>(malloc(size ? size : 1));
    return *p ? cudaSuccess : cudaErrorMemoryAllocation;
}
static inline cudaError_t cudaFree(void* p) { free(p); return cudaSuccess; }
static inline cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }
static inline cudaError_t cudaGetLastError() { return cg_emu_error_set ? cudaErrorInvalidValue : cudaSuccess; }
static inline const char* cudaGetErrorString(cudaError_t e) { return e ? cg_emu_error : "no error"; }

#endif  // CONVGEN_CUDA_EMULATOR_H
