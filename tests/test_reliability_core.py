"""Issue 19, rows 1, 12 and 13: LLVM kernels load anywhere in a process that holds
gigabytes; Winograd's documented non-finite behaviour; misaligned arrays copied or refused.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

import convgen as cg
import convgen.backends.llvm.build as llvm_build
from convgen import nn
from convgen.kernel import check_input
from helpers import compiled, run_python, subprocess_env

# -- row 1: the LLVM backend while the process holds >= 2 GiB ------------------------------

# Holds 2 GiB, fills every free gap of the address space above it page by page, then frees
# a few single pages there: a section of one page (a constant pool) lands in such a hole
# and a larger one (the code) below the 2 GiB array, more than 2 GiB apart. With the small
# code model the code's 32-bit PC-relative references to its constants could not reach
# and LLVM's loader aborted the process (RuntimeDyldELF.cpp, isInt<32>(RealOffset)).
FAR_SECTIONS_CODE = """
import ctypes, mmap
import numpy as np
import convgen as cg
from convgen.tolerance import close

libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long]
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
page = mmap.PAGESIZE
held = np.ones(2**29 + 1, np.float32)  # 2 GiB, touched, in a mapping of its own
pages = []
for _ in range(200_000):
    addr = libc.mmap(None, page, mmap.PROT_READ | mmap.PROT_WRITE,
                     mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
    if addr < held.ctypes.data:
        libc.munmap(addr, page)
        break
    pages.append(addr)
for addr in pages[-64::2]:
    libc.munmap(addr, page)
rng = np.random.default_rng(0)
for cin in (16, 17, 18):
    spec = cg.ConvSpec((1, cin, 20, 20), 32, kernel_size=3, padding=1, activation="gelu")
    kernel = cg.compile(spec, backend="llvm", schedule=cg.Schedule(method="direct"))
    x, w, b = (rng.standard_normal(s).astype(np.float32)
               for s in (spec.input_shape, spec.weight_shape, spec.bias_shape))
    assert close(spec, kernel(x, w, b), cg.reference(spec, x, w, b)), cin
print("OK", float(held[-1]), len(pages))
"""


@pytest.mark.skipif(sys.platform != "linux", reason="places mappings with Linux's mmap")
def test_llvm_kernels_load_and_run_with_sections_more_than_2gib_apart():
    result = run_python(FAR_SECTIONS_CODE, subprocess_env(), timeout=300)
    assert result.stdout.startswith("OK 1.0")


def test_llvm_objects_use_the_large_code_model_and_it_keys_the_cache(monkeypatch):
    assert llvm_build.CODE_MODEL == "large"
    key = llvm_build.llvm_cache_key("; ir")
    monkeypatch.setattr(llvm_build, "CODE_MODEL", "small")
    assert llvm_build.llvm_cache_key("; ir") != key
    monkeypatch.undo()
    monkeypatch.setattr(llvm_build, "RELOCATION", "pic")
    assert llvm_build.llvm_cache_key("; ir") != key


# -- row 12: Winograd and an Inf in the input (docs/plans.md, "Non-finite inputs") ---------

INF_SPEC = cg.ConvSpec((1, 16, 12, 12), 64, kernel_size=3, padding=1, bias=False)
INF_AT = (0, 3, 5, 6)  # (n, c, h, w) of the one Inf


def _inf_arrays(spec: cg.ConvSpec, at: tuple[int, ...]):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(spec.input_shape).astype(np.float32)
    w = rng.standard_normal(spec.weight_shape).astype(np.float32)
    x[at] = np.inf
    return x, w


@pytest.mark.cpu_plans
@pytest.mark.parametrize("tile", [2, 4])
def test_winograd_turns_an_input_inf_into_nans_within_its_tiles(backend, tile):
    x, w = _inf_arrays(INF_SPEC, INF_AT)
    want = cg.reference(INF_SPEC, x, w)
    assert np.isinf(want).sum() == 9 * 64 and not np.isnan(want).any()
    schedule = cg.Schedule(method="winograd", tile_spatial=(tile, tile))
    got = compiled(INF_SPEC, backend, schedule)(x, w)
    assert np.isnan(got).sum() > 0  # documented: NaN where the oracle has none
    assert not np.isfinite(got[np.isinf(want)]).any()  # no Inf comes out finite
    # the damage stays in the tiles whose input patch holds the Inf, and elsewhere the
    # output is the oracle's
    rows, cols = np.nonzero(~np.isfinite(want[0, 0]))
    tiles = np.zeros(INF_SPEC.output_shape[2:], bool)
    tiles[rows.min() // tile * tile:(rows.max() // tile + 1) * tile,
          cols.min() // tile * tile:(cols.max() // tile + 1) * tile] = True
    assert np.isfinite(got[..., ~tiles]).all()
    assert np.allclose(got[..., ~tiles], want[..., ~tiles], rtol=1e-4, atol=1e-4)


@pytest.mark.cpu_plans
def test_direct_convolution_keeps_the_oracles_infs(backend):
    x, w = _inf_arrays(INF_SPEC, INF_AT)
    want = cg.reference(INF_SPEC, x, w)
    got = compiled(INF_SPEC, backend, cg.Schedule(method="direct"))(x, w)
    assert not np.isnan(got).any()
    assert np.array_equal(np.isinf(got), np.isinf(want))
    assert np.array_equal(np.sign(got[np.isinf(want)]), np.sign(want[np.isinf(want)]))
    finite = np.isfinite(want)
    assert np.allclose(got[finite], want[finite], rtol=1e-4, atol=1e-4)


def test_winograd_1d_and_gemm_as_documented():
    spec = cg.ConvSpec((1, 16, 64), 16, kernel_size=3, padding=1, bias=False)
    x, w = _inf_arrays(spec, (0, 3, 20))
    got = compiled(spec, "c", cg.Schedule(method="winograd"))(x, w)
    assert np.isinf(cg.reference(spec, x, w)).any() and np.isnan(got).any()
    spec = cg.ConvSpec((1, 16, 16, 16), 16, kernel_size=1, bias=False)
    x, w = _inf_arrays(spec, INF_AT)
    got = compiled(spec, "c", cg.Schedule(method="gemm"))(x, w)
    assert not np.isnan(got).any()
    assert np.array_equal(np.isinf(got), np.isinf(cg.reference(spec, x, w)))


# -- row 13: arrays not aligned to their element size --------------------------------------

def misaligned(array: np.ndarray) -> np.ndarray:
    """A writeable copy of ``array`` whose data starts 1 byte past a multiple of its
    element size (``np.frombuffer(..., offset=...)``)."""
    raw = np.zeros(array.nbytes + 2 * array.itemsize, np.uint8)
    offset = (1 - raw.ctypes.data) % array.itemsize
    out = np.frombuffer(raw, array.dtype, array.size, offset=offset).reshape(array.shape)
    out[...] = array
    assert not out.flags.aligned and out.flags.c_contiguous and out.flags.writeable
    return out


SPEC = cg.ConvSpec((1, 5, 9, 9), 6, kernel_size=3, padding=1)


def _arrays(spec: cg.ConvSpec):
    rng = np.random.default_rng(3)
    return tuple(rng.standard_normal(s).astype(spec.dtype)
                 for s in (spec.input_shape, spec.weight_shape, spec.bias_shape))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_check_input_copies_only_misaligned_or_noncontiguous_arrays(dtype):
    a = np.arange(24, dtype=dtype).reshape(2, 3, 4)
    assert check_input("x", a, a.dtype, a.shape) is a  # aligned and contiguous: no copy
    bad = misaligned(a)
    got = check_input("x", bad, a.dtype, a.shape)
    assert got.flags.aligned and got.flags.c_contiguous and np.array_equal(got, a)
    if dtype == "float64":  # 4-byte aligned is not enough for 8-byte elements
        raw = np.zeros(a.nbytes + 8, np.uint8)
        offset = (4 - raw.ctypes.data) % 8
        half = np.frombuffer(raw, a.dtype, a.size, offset=offset).reshape(a.shape)
        assert not half.flags.aligned
        assert check_input("x", half, a.dtype, a.shape).flags.aligned


@pytest.mark.cpu_plans
def test_kernels_copy_misaligned_inputs(backend):
    x, w, b = _arrays(SPEC)
    kernel = compiled(SPEC, backend)
    want = kernel(x, w, b)
    assert np.array_equal(kernel(misaligned(x), misaligned(w), misaligned(b)), want)
    bound = cg.bind(SPEC, misaligned(w), misaligned(b), backend=backend)
    assert np.array_equal(bound(misaligned(x)), bound(x))
    assert np.allclose(bound(x), want, rtol=1e-5, atol=1e-5)


@pytest.mark.cpu_plans
def test_a_misaligned_out_is_refused(backend):
    x, w, b = _arrays(SPEC)
    kernel = compiled(SPEC, backend)
    out = misaligned(np.zeros(SPEC.output_shape, np.float32))
    with pytest.raises(ValueError, match=r"out: expected an array aligned to its element "
                                         r"size \(4 bytes\)"):
        kernel(x, w, b, out=out)
    assert not out.any()  # nothing was written


@pytest.mark.cpu_plans
def test_networks_copy_a_misaligned_input(backend):
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1))
    model = net.compile((1, 3, 10, 10), backend=backend)
    x = np.random.default_rng(5).standard_normal((1, 3, 10, 10)).astype(np.float32)
    got = model(misaligned(x))
    assert np.array_equal(got, model(x))
    assert np.allclose(got, model.reference(x), rtol=1e-4, atol=1e-4)
