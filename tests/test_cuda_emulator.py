"""The CUDA emulator runs hand-written .cu kernels (real CUDA text) on the CPU: tiled
convolutions match NumPy in every thread order, a missing barrier is caught as a race,
a divergent barrier is an error (not a hang), and builds are cached."""

from __future__ import annotations

import numpy as np
import pytest

from convgen.backends.c import build as c_build
from convgen.backends.cuda.emulator import (EmulatorError, RaceError, build_emulated,
                                            check_races, load_emulated)
from convgen.cache import Cache
from convgen.errors import CompileError

# PMPP's tiled 1D convolution: a block stages its tile plus halo cells in shared memory, the
# mask lives in constant memory. {SYNC} is the barrier the racy variant leaves out.
CONV1D = r"""
#define MASK_WIDTH 5
#define TILE 32
#define RADIUS (MASK_WIDTH / 2)

__constant__ float c_mask[MASK_WIDTH];

__global__ void conv1d_tiled(const float* __restrict__ x, float* __restrict__ y, int n) {
    __shared__ float tile[TILE + MASK_WIDTH - 1];
    const int start = blockIdx.x * blockDim.x - RADIUS;
    for (int j = threadIdx.x; j < TILE + MASK_WIDTH - 1; j += blockDim.x) {
        const int g = start + j;
        tile[j] = (g >= 0 && g < n) ? __ldg(&x[g]) : 0.0f;
    }
    {SYNC}
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        float acc = 0.0f;
        for (int k = 0; k < MASK_WIDTH; ++k) acc = fmaf(tile[threadIdx.x + k], c_mask[k], acc);
        y[i] = acc;
    }
}

extern "C" int conv1d(const float* x, const float* mask, float* y, int n) {
    cudaError_t status = cudaMemcpyToSymbol(c_mask, mask, MASK_WIDTH * sizeof(float));
    if (status != cudaSuccess) return (int)status;
    dim3 grid((n + TILE - 1) / TILE), block(TILE);
#ifdef CONVGEN_CUDA_EMULATOR
    return cg_emu_launch(grid, block, [=] { conv1d_tiled(x, y, n); });
#else
    conv1d_tiled<<<grid, block>>>(x, y, n);
    return (int)cudaGetLastError();
#endif
}
"""
CONV1D_CDEF = "int conv1d(const float* x, const float* mask, float* y, int n);"

# A 3x3 'same' convolution of an H x W image, 8 x 8 threads per block, tile plus a one-cell
# halo staged in shared memory by a loop over the block's flat thread index.
CONV2D = r"""
#define T 8
#define R 1
#define S (T + 2 * R)

__constant__ float c_w[2 * R + 1][2 * R + 1];

__global__ void conv2d_tiled(const float* __restrict__ x, float* __restrict__ y, int h, int w) {
    __shared__ float tile[S][S];
    const int flat = threadIdx.y * blockDim.x + threadIdx.x;
    const int row0 = blockIdx.y * T - R, col0 = blockIdx.x * T - R;
    for (int j = flat; j < S * S; j += blockDim.x * blockDim.y) {
        const int r = row0 + j / S, c = col0 + j % S;
        tile[j / S][j % S] = (r >= 0 && r < h && c >= 0 && c < w) ? x[r * w + c] : 0.0f;
    }
    __syncthreads();
    const int r = blockIdx.y * T + threadIdx.y, c = blockIdx.x * T + threadIdx.x;
    if (r < h && c < w) {
        float acc = 0.0f;
        #pragma unroll
        for (int i = 0; i < 2 * R + 1; ++i)
            #pragma unroll
            for (int k = 0; k < 2 * R + 1; ++k)
                acc += tile[threadIdx.y + i][threadIdx.x + k] * c_w[i][k];
        y[r * w + c] = max(acc, 0.0f);
    }
}

extern "C" int conv2d(const float* x, const float* weight, float* y, int h, int w) {
    cudaError_t status = cudaMemcpyToSymbol(c_w, weight, sizeof(c_w));
    if (status != cudaSuccess) return (int)status;
    dim3 grid((w + T - 1) / T, (h + T - 1) / T), block(T, T);
#ifdef CONVGEN_CUDA_EMULATOR
    return cg_emu_launch(grid, block, [=] { conv2d_tiled(x, y, h, w); });
#else
    conv2d_tiled<<<grid, block>>>(x, y, h, w);
    return (int)cudaGetLastError();
#endif
}
"""
CONV2D_CDEF = "int conv2d(const float* x, const float* weight, float* y, int h, int w);"

# Broken barriers: only half the threads reach one; two branches reach different ones.
DIVERGENT = r"""
__global__ void half_barrier(float* y) {
    __shared__ float s[32];
    s[threadIdx.x] = (float)threadIdx.x;
    if (threadIdx.x < 16) __syncthreads();
    y[blockIdx.x * blockDim.x + threadIdx.x] = s[31 - threadIdx.x];
}

__global__ void split_barrier(float* y) {
    if (threadIdx.x & 1) {
        __syncthreads();
    } else {
        __syncthreads();
    }
    y[threadIdx.x] = 1.0f;
}

__global__ void fill(float* y) { y[blockIdx.x * blockDim.x + threadIdx.x] = 2.0f; }

#ifdef CONVGEN_CUDA_EMULATOR
#define LAUNCH(kernel, grid, block, ...) \
    return cg_emu_launch(grid, block, [=] { kernel(__VA_ARGS__); })
#else
#define LAUNCH(kernel, grid, block, ...) \
    kernel<<<grid, block>>>(__VA_ARGS__); return (int)cudaGetLastError()
#endif

extern "C" int run_half(float* y) { LAUNCH(half_barrier, dim3(2), dim3(32), y); }
extern "C" int run_split(float* y) { LAUNCH(split_barrier, dim3(1), dim3(32), y); }
extern "C" int run_fill(float* y, int block) { LAUNCH(fill, dim3(2), dim3(block), y); }
"""
DIVERGENT_CDEF = """
int run_half(float* y);
int run_split(float* y);
int run_fill(float* y, int block);
"""


@pytest.fixture(scope="module")
def conv1d_lib():
    return load_emulated(build_emulated(CONV1D.replace("{SYNC}", "__syncthreads();"), "conv1d"),
                         CONV1D_CDEF)


@pytest.fixture(scope="module")
def racy_lib():
    return load_emulated(build_emulated(CONV1D.replace("{SYNC}", ""), "conv1d_racy"),
                         CONV1D_CDEF)


@pytest.fixture(scope="module")
def divergent_lib():
    return load_emulated(build_emulated(DIVERGENT, "divergent"), DIVERGENT_CDEF)


def conv1d_data(n=100, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n).astype(np.float32)
    mask = rng.standard_normal(5).astype(np.float32)
    expected = np.convolve(np.pad(x, 2), mask[::-1], mode="valid")
    return x, mask, expected


def run_conv1d(lib, x, mask, order, threads=None):
    y = np.full_like(x, np.nan)
    lib.call("conv1d", x, mask, y, x.size, order=order, threads=threads)
    return y


@pytest.mark.parametrize("order", ["forward", "reverse", "shuffle"])
def test_tiled_conv1d_matches_numpy(conv1d_lib, order):
    # 100 elements: four blocks of 32 threads, the last one partly idle
    x, mask, expected = conv1d_data()
    np.testing.assert_allclose(run_conv1d(conv1d_lib, x, mask, order), expected,
                               rtol=1e-5, atol=1e-5)


def test_tiled_conv1d_one_os_thread_many_blocks(conv1d_lib):
    # every block on one OS thread: shared memory reused block after block
    x, mask, expected = conv1d_data(n=200, seed=1)
    np.testing.assert_allclose(run_conv1d(conv1d_lib, x, mask, "reverse", threads=1), expected,
                               rtol=1e-5, atol=1e-5)


def test_tiled_conv2d_matches_numpy():
    lib = load_emulated(build_emulated(CONV2D, "conv2d"), CONV2D_CDEF)
    rng = np.random.default_rng(2)
    h, w = 19, 13  # 3 x 2 blocks of 8 x 8, neither a multiple of the tile
    x = rng.standard_normal((h, w)).astype(np.float32)
    weight = rng.standard_normal((3, 3)).astype(np.float32)
    padded = np.pad(x, 1)
    expected = np.zeros_like(x)
    for i in range(3):
        for k in range(3):
            expected += weight[i, k] * padded[i:i + h, k:k + w]
    expected = np.maximum(expected, 0)
    for order in ("forward", "reverse"):
        y = np.full_like(x, np.nan)
        lib.call("conv2d", x, weight, y, h, w, order=order)
        np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_missing_barrier_is_a_race(racy_lib, conv1d_lib):
    x, mask, expected = conv1d_data()
    forward = run_conv1d(racy_lib, x, mask, "forward")
    reverse = run_conv1d(racy_lib, x, mask, "reverse")
    assert not np.array_equal(forward, reverse)
    with pytest.raises(RaceError, match="race: output 0 differs between thread orders"):
        check_races(lambda order: run_conv1d(racy_lib, x, mask, order))
    # the correct kernel passes the same check and hands back its result
    y = check_races(lambda order: run_conv1d(conv1d_lib, x, mask, order),
                    orders=("forward", "reverse", "shuffle"))
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_divergent_barrier_is_an_error(divergent_lib):
    y = np.zeros(64, np.float32)
    # both blocks diverge; the message is always block 0's, whichever thread fails first
    for _ in range(20):
        with pytest.raises(EmulatorError, match=r"barrier divergence in block \(0,0,0\): 16 of "
                                                r"32 threads wait at __syncthreads\(\)"):
            divergent_lib.call("run_half", y, threads=2)
    with pytest.raises(EmulatorError, match=r"barrier divergence .* __syncthreads\(\) on line"):
        divergent_lib.call("run_split", y, order="reverse")
    # the library still works afterwards, and a bad launch configuration is an error too
    divergent_lib.call("run_fill", y, 32)
    assert (y == 2).all()
    with pytest.raises(EmulatorError, match="invalid launch configuration"):
        divergent_lib.call("run_fill", y, 2048)


def test_build_is_cached(fresh_cache, monkeypatch):
    source = CONV1D.replace("{SYNC}", "__syncthreads();")
    first = build_emulated(source, "conv1d")
    assert first.path.is_relative_to(fresh_cache)
    assert first.meta["backend"] == "cuda-emulator"

    def no_compile(*args, **kwargs):
        raise AssertionError("compiled again on a cache hit")

    monkeypatch.setattr(c_build, "compile_c", no_compile)
    second = build_emulated(source, "conv1d")
    assert second.path == first.path
    assert Cache().lookup(first.meta["key"]) is not None
    x, mask, expected = conv1d_data()
    np.testing.assert_allclose(run_conv1d(load_emulated(second, CONV1D_CDEF), x, mask, "reverse"),
                               expected, rtol=1e-5, atol=1e-5)


def test_compile_error_keeps_the_source(fresh_cache):
    with pytest.raises(CompileError, match="CUDA emulator compilation failed") as info:
        build_emulated("__global__ void broken( { }", "broken")
    assert info.value.source_path.endswith("broken.cu")
