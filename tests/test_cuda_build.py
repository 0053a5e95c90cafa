"""nvcc builds of CUDA source: a fat binary per source through the cache, and ptxas's
resource report (registers, spills, shared memory) parsed per kernel and architecture.

The kernels here are hand-written in the shapes the CUDA templates generate (issue 17): a
tile plus its halo staged in shared memory, the mask in constant memory, a register tile
per thread. They need nvcc only, no GPU.
"""

from __future__ import annotations

import subprocess

import pytest

from convgen import config
from convgen.backends.cuda.build import (DEFAULT_ARCHS, STATIC_SHARED_BYTES, KernelResources,
                                         arch_flags, build_cuda, kernel_resources, parse_ptxas)
from convgen.cache import Cache
from convgen.errors import CompileError

needs_nvcc = pytest.mark.skipif(config.nvcc() is None,
                                reason="nvcc not found (CUDA toolkit not installed)")

KERNELS = r"""
#define MASK 5
#define TILE 128
__constant__ float M[MASK];

// PMPP's tiled 1D convolution: a block stages TILE inputs plus MASK - 1 halo cells
extern "C" __global__ void conv1d_tiled(const float *__restrict__ x, float *__restrict__ y,
                                        int n) {
    __shared__ float tile[TILE + MASK - 1];
    int start = blockIdx.x * TILE - MASK / 2;
    for (int j = threadIdx.x; j < TILE + MASK - 1; j += blockDim.x) {
        int i = start + j;
        tile[j] = (i >= 0 && i < n) ? x[i] : 0.0f;
    }
    __syncthreads();
    int o = blockIdx.x * TILE + threadIdx.x;
    if (o < n) {
        float s = 0.0f;
        for (int k = 0; k < MASK; ++k) s += M[k] * tile[threadIdx.x + k];
        y[o] = s;
    }
}

// a 16x16 output tile of a 3x3 convolution over C channels, 4 output channels per thread
extern "C" __global__ void conv2d_tiled(const float *__restrict__ x,
                                        const float *__restrict__ w,
                                        float *__restrict__ y, int channels, int h, int wd) {
    __shared__ float tile[18][18];
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    int oy = blockIdx.y * 16 + threadIdx.y, ox = blockIdx.x * 16 + threadIdx.x;
    for (int c = 0; c < channels; ++c) {
        for (int j = threadIdx.y * 16 + threadIdx.x; j < 18 * 18; j += 256) {
            int iy = blockIdx.y * 16 + j / 18 - 1, ix = blockIdx.x * 16 + j % 18 - 1;
            tile[j / 18][j % 18] = (iy >= 0 && iy < h && ix >= 0 && ix < wd)
                ? __ldg(&x[(c * h + iy) * wd + ix]) : 0.0f;
        }
        __syncthreads();
        #pragma unroll
        for (int co = 0; co < 4; ++co)
            #pragma unroll
            for (int ky = 0; ky < 3; ++ky)
                #pragma unroll
                for (int kx = 0; kx < 3; ++kx)
                    acc[co] += __ldg(&w[((co * channels + c) * 3 + ky) * 3 + kx])
                               * tile[threadIdx.y + ky][threadIdx.x + kx];
        __syncthreads();
    }
    if (oy < h && ox < wd)
        for (int co = 0; co < 4; ++co) y[(co * h + oy) * wd + ox] = acc[co];
}
"""


@needs_nvcc
def test_kernels_build_for_both_architectures_without_spills(tmp_path):
    entry = build_cuda(KERNELS, "convgen_test_kernels", cache=Cache(tmp_path))
    assert entry.file("binary").stat().st_size > 0
    report = kernel_resources(entry)
    got = {(r.kernel, r.arch) for r in report}
    assert got == {(k, a) for k in ("conv1d_tiled", "conv2d_tiled") for a in DEFAULT_ARCHS}
    for r in report:
        assert r.spill_stores == 0 and r.spill_loads == 0, r.line()
        assert 0 < r.registers <= 255, r.line()
        assert 0 < r.shared <= STATIC_SHARED_BYTES, r.line()
        assert r.barriers == 1, r.line()
    two_d = [r for r in report if r.kernel == "conv2d_tiled"]
    assert all(r.shared == 18 * 18 * 4 for r in two_d)
    assert "registers" in two_d[0].line() and "spill" in two_d[0].line()


@needs_nvcc
def test_a_second_build_is_a_cache_hit(tmp_path, monkeypatch):
    cache = Cache(tmp_path)
    first = build_cuda(KERNELS, "convgen_test_kernels", cache=cache)

    def no_compiler(*args, **kwargs):
        raise AssertionError("nvcc ran on a cache hit")

    monkeypatch.setattr(subprocess, "run", no_compiler)
    second = build_cuda(KERNELS, "convgen_test_kernels", cache=cache)
    assert second.file("binary") == first.file("binary")
    assert kernel_resources(second) == kernel_resources(first)


@needs_nvcc
def test_a_failed_build_keeps_the_source_and_the_compiler_message(tmp_path):
    with pytest.raises(CompileError) as caught:
        build_cuda("__global__ void broken( { }\n", "convgen_test_broken", cache=Cache(tmp_path))
    assert "CUDA compilation failed" in str(caught.value) and caught.value.stderr
    assert caught.value.source_path.endswith("convgen_test_broken.cu")
    assert "broken" in open(caught.value.source_path).read()


def test_architectures_are_checked_before_nvcc_runs():
    assert arch_flags(("sm_80", "sm_90")) == [
        "-gencode", "arch=compute_80,code=sm_80",
        "-gencode", "arch=compute_90,code=[sm_90,compute_90]"]
    with pytest.raises(ValueError, match="sm_90"):
        arch_flags(("sm_90; rm -rf /",))


def test_parse_ptxas_reads_every_field():
    text = """ptxas info    : 0 bytes gmem, 20 bytes cmem[3]
ptxas info    : Compiling entry function 'conv1d' for 'sm_80'
ptxas info    : Function properties for conv1d
    8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads
ptxas info    : Used 40 registers, used 1 barriers, 1040 bytes smem, 372 bytes cmem[0]
ptxas info    : Compile time = 2.458 ms
ptxas info    : Compiling entry function 'other' for 'sm_90'
ptxas info    : Function properties for other
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 18 registers
"""
    assert parse_ptxas(text) == [
        KernelResources("conv1d", "sm_80", 40, 8, 4, 12, 1040, 372, 1),
        KernelResources("other", "sm_90", 18, 0, 0, 0, 0, 0, 0)]
