"""Calling a Kernel: argument checks, memory layouts, out=, threads, the GIL,
the readable source, and schedules (every legal one gives the oracle's answer)."""

from __future__ import annotations

import json
import math
import pickle
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import convgen as cg
from helpers import arrays_for, assert_matches_oracle, compiled

# Same input and output shape, so out=x is a well-shaped overlapping output.
SQUARE = cg.ConvSpec(input_shape=(1, 4, 8, 8), out_channels=4, kernel_size=3, padding=1)
NO_BIAS = SQUARE.replace(bias=False, activation="leaky_relu")


@pytest.fixture
def kernel(backend):
    return compiled(SQUARE, backend)


# -- argument checks ---------------------------------------------------------------------


@pytest.mark.parametrize("which", ["x", "w", "b"])
def test_wrong_dtype(kernel, which):
    args = dict(zip("xwb", arrays_for(SQUARE)))
    args[which] = args[which].astype(np.float64)
    with pytest.raises(TypeError) as info:
        kernel(args["x"], args["w"], args["b"])
    message = str(info.value)
    assert which in message and "float32" in message and "float64" in message


@pytest.mark.parametrize("which", ["x", "w", "b"])
def test_wrong_shape(kernel, which):
    args = dict(zip("xwb", arrays_for(SQUARE)))
    good = args[which].shape
    bad = good[:-1] + (good[-1] + 1,)
    args[which] = np.zeros(bad, np.float32)
    with pytest.raises(ValueError) as info:
        kernel(args["x"], args["w"], args["b"])
    message = str(info.value)
    assert str(good) in message and str(bad) in message


def test_wrong_rank(kernel):
    x, w, b = arrays_for(SQUARE)
    with pytest.raises(ValueError, match=re.escape(str(SQUARE.input_shape))):
        kernel(x[0], w, b)


def test_list_instead_of_array(kernel):
    x, w, b = arrays_for(SQUARE)
    with pytest.raises(TypeError, match="list"):
        kernel(x.tolist(), w, b)
    with pytest.raises(TypeError, match="list"):
        kernel(x, w, b.tolist())


def test_bias_presence_must_match_the_spec(backend):
    x, w, b = arrays_for(SQUARE)
    with pytest.raises(ValueError, match="bias"):
        compiled(SQUARE, backend)(x, w)
    with pytest.raises(ValueError, match="bias"):
        compiled(NO_BIAS, backend)(x, w, b)
    assert_matches_oracle(NO_BIAS, compiled(NO_BIAS, backend)(x, w), x, w, None)


# -- memory layouts ---------------------------------------------------------------------


def test_non_contiguous_inputs(kernel):
    x, w, b = arrays_for(SQUARE, seed=1)
    views = {
        "transposed": np.ascontiguousarray(x.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2),
        "strided": np.repeat(x, 2, axis=-1)[..., ::2],
        "fortran": np.asfortranarray(x),
        "negative stride": np.ascontiguousarray(x[..., ::-1])[..., ::-1],
    }
    w_view = np.asfortranarray(w)
    b_view = np.repeat(b, 3)[::3]
    for name, view in views.items():
        assert not view.flags.c_contiguous, name
        np.testing.assert_array_equal(view, x)
        y = kernel(view, w_view, b_view)
        assert_matches_oracle(SQUARE, y, x, w, b)
        np.testing.assert_array_equal(view, x)  # inputs are never written


def test_read_only_inputs(kernel):
    x, w, b = arrays_for(SQUARE, seed=2)
    for array in (x, w, b):
        array.flags.writeable = False
    assert_matches_oracle(SQUARE, kernel(x, w, b), x, w, b)


def test_out_is_filled_and_returned(kernel):
    x, w, b = arrays_for(SQUARE, seed=3)
    out = np.full(SQUARE.output_shape, np.nan, np.float32)
    y = kernel(x, w, b, out=out)
    assert y is out
    assert_matches_oracle(SQUARE, out, x, w, b)
    x2, w2, b2 = arrays_for(SQUARE, seed=4)
    assert kernel(x2, w2, b2, out=out) is out  # reused
    assert_matches_oracle(SQUARE, out, x2, w2, b2)


def test_bad_out(kernel):
    x, w, b = arrays_for(SQUARE)
    shape = SQUARE.output_shape
    with pytest.raises(ValueError, match=re.escape(str(shape))):
        kernel(x, w, b, out=np.empty(shape[:-1] + (shape[-1] + 1,), np.float32))
    with pytest.raises(TypeError, match="float64"):
        kernel(x, w, b, out=np.empty(shape, np.float64))
    with pytest.raises(TypeError, match="list"):
        kernel(x, w, b, out=np.empty(shape, np.float32).tolist())
    strided = np.empty(shape[:-1] + (2 * shape[-1],), np.float32)[..., ::2]
    with pytest.raises(ValueError, match="contiguous"):
        kernel(x, w, b, out=strided)
    read_only = np.zeros(shape, np.float32)
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="read-only|writeable"):
        kernel(x, w, b, out=read_only)
    assert not read_only.any()
    x_copy = x.copy()
    with pytest.raises(ValueError, match="overlap"):
        kernel(x, w, b, out=x)
    np.testing.assert_array_equal(x, x_copy)
    buffer = np.zeros(2 * math.prod(shape), np.float32)
    x_in = buffer[:math.prod(shape)].reshape(shape)
    x_in[...] = x
    overlapping = buffer[math.prod(shape) // 2:][:math.prod(shape)].reshape(shape)
    with pytest.raises(ValueError, match="overlap"):
        kernel(x_in, w, b, out=overlapping)


# -- threads and the GIL ------------------------------------------------------------------


def _from_four_threads(kernel, spec, calls: int) -> list[tuple]:
    """8 seeded cases, each called ``calls`` times, from 4 threads at once; every result
    checked against the oracle and equal to the case's first. Returns the cases."""
    cases = [arrays_for(spec, seed) for seed in range(8)]

    def work(i: int) -> list[np.ndarray]:
        return [kernel(*cases[i]) for _ in range(calls)]

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(work, range(len(cases))))
    for case, ys in zip(cases, results):
        for y in ys:
            assert_matches_oracle(spec, y, *case)
            np.testing.assert_array_equal(y, ys[0])
    return cases


def test_calls_from_four_threads(kernel):
    cases = _from_four_threads(kernel, SQUARE, 20)
    wants = [cg.reference(SQUARE, *case) for case in cases[:2]]
    assert not np.allclose(wants[0], wants[1])  # the threads really had different work


SCRATCH = cg.ConvSpec(input_shape=(2, 16, 12, 12), out_channels=16, kernel_size=3,
                      padding=1)


@pytest.mark.parametrize("spec, schedule, backend", [
    (SCRATCH, cg.Schedule(tile_co=14, tile_spatial=(4, 4), method="winograd", threads=2), "c"),
    (SCRATCH.replace(kernel_size=1, padding=1), cg.Schedule(tile_co=8, method="gemm"), "c"),
    (SCRATCH, cg.Schedule(tile_co=16, tile_spatial=(1, 12), vectorize="co", threads=2), "c"),
    (SCRATCH, cg.Schedule(tile_co=14, tile_spatial=(4, 4), method="winograd", threads=2),
     "llvm"),
    (SCRATCH.replace(kernel_size=1, padding=1), cg.Schedule(tile_co=8, method="gemm",
                                                            threads=2), "llvm"),
], ids=["winograd", "gemm-staged", "co", "llvm-winograd", "llvm-gemm-staged"])
def test_kernels_with_scratch_from_four_threads(spec, schedule, backend):
    """Kernels whose scratch is kept per calling thread (C: templates/c/workspace.j2) or
    allocated per call (LLVM) give each thread its own: calls from four threads at once,
    each opening its own OpenMP team where the kernel has one, all match the oracle."""
    kernel = compiled(spec, backend, schedule)
    _from_four_threads(kernel, spec, 10)
    assert ("_workspace(" if backend == "c" else "aligned_alloc") in kernel.source


def _long_kernel(backend):
    """A kernel taking about 0.3 s per call, whatever the speed of the generated code
    (5x5: direct convolution, 2.8x the work of the 3x3 Winograd would do per image)."""
    base = cg.ConvSpec(input_shape=(1, 64, 64, 64), out_channels=64, kernel_size=5,
                       padding=2, bias=False)
    kernel = compiled(base, backend)
    x, w, _ = arrays_for(base)
    kernel(x, w)
    start = time.perf_counter()
    kernel(x, w)
    per_image = time.perf_counter() - start
    batch = min(64, max(1, math.ceil(0.3 / max(per_image, 1e-4))))
    spec = base.replace(input_shape=(batch, 64, 64, 64))
    return spec, compiled(spec, backend)


def test_gil_is_released_during_the_call(backend):
    spec, kernel = _long_kernel(backend)
    x, w, _ = arrays_for(spec)
    kernel(x, w)  # warm up (page in the library, touch the buffers)
    counter = [0]
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            counter[0] += 1

    thread = threading.Thread(target=spin, daemon=True)
    thread.start()
    try:
        time.sleep(0.05)
        c0, t0 = counter[0], time.perf_counter()
        time.sleep(0.2)  # sleeping releases the GIL: the free-running rate
        rate = (counter[0] - c0) / (time.perf_counter() - t0)

        c0, t0 = counter[0], time.perf_counter()
        kernel(x, w)
        duration = time.perf_counter() - t0
        during = counter[0] - c0
    finally:
        stop.set()
        thread.join()
    assert rate > 0
    assert duration > 0.1, f"calibration failed: the call took only {duration:.3f} s"
    # Holding the GIL, the spinner could only run in the few ms of Python around the
    # C call (measured: about 0.01 * rate * duration); released, it runs for the whole
    # call (about 0.5-1 x, less on a loaded machine).
    assert during > 0.1 * rate * duration, (during, rate, duration)


# -- source and schedules ---------------------------------------------------------------


def test_source_names_the_symbol_and_the_spec(kernel):
    source = kernel.source
    assert isinstance(source, str)
    assert kernel.symbol in source
    assert kernel.symbol.startswith("convgen_" + SQUARE.name)
    match = re.search(r"spec:\s*(\{.*\})", source)
    assert match, "the source does not state its spec"
    assert cg.ConvSpec.from_dict(json.loads(match.group(1))) == SQUARE


GROUPED = cg.ConvSpec(input_shape=(2, 6, 9, 11), out_channels=8, kernel_size=3, padding=1,
                      groups=2, activation="relu")  # 4 output channels per group
SCHEDULES = [
    None,
    cg.Schedule(tile_co=1, tile_spatial=(1, 1)),
    cg.Schedule(tile_co=3, tile_spatial=(2, 5)),  # tiles that leave remainders
    cg.Schedule(tile_co=64, tile_spatial=(100, 100)),  # clamped to the whole output
    cg.Schedule(tile_co=2, tile_spatial=(3, 4), threads=2),
    cg.Schedule(threads=2),
]


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: s.key() if s else "default")
@pytest.mark.cpu_plans
def test_every_schedule_matches_the_oracle(backend, schedule):
    kernel = compiled(GROUPED, backend, schedule)
    if schedule is not None:  # threads alone: the default plan on that many threads
        assert kernel.schedule == (schedule if schedule.given != {"threads"} else
                                   cg.default_schedule(GROUPED, backend, threads=2))
    x, w, b = arrays_for(GROUPED, seed=5)
    assert_matches_oracle(GROUPED, kernel(x, w, b), x, w, b)


@pytest.mark.parametrize("spec, schedule", [
    (cg.ConvSpec(input_shape=(3, 5, 40), out_channels=6, kernel_size=4, stride=3,
                 padding=2, bias=False), cg.Schedule(tile_co=4, tile_spatial=(7,), threads=3)),
    (cg.ConvSpec(input_shape=(2, 3, 4, 5, 6), out_channels=4, kernel_size=2, padding=1,
                 transposed=True, stride=2, dtype="float64"),
     cg.Schedule(tile_co=3, tile_spatial=(2, 3, 4), threads=4)),
], ids=["1d", "3d-transposed"])
@pytest.mark.cpu_plans
def test_threads_in_other_ranks(backend, spec, schedule):
    kernel = compiled(spec, backend, schedule)
    assert kernel.schedule.threads == schedule.threads
    for seed in range(3):
        x, w, b = arrays_for(spec, seed)
        assert_matches_oracle(spec, kernel(x, w, b), x, w, b)


@pytest.mark.parametrize("tiles", [(4,), (4, 4, 4)])
@pytest.mark.cpu_plans
def test_tile_spatial_of_the_wrong_length(backend, tiles):
    with pytest.raises(cg.ScheduleError, match="tile_spatial") as info:
        cg.compile(SQUARE, backend=backend, schedule=cg.Schedule(tile_spatial=tiles))
    assert isinstance(info.value, ValueError)
    assert "2" in str(info.value)


@pytest.mark.cpu_plans
def test_oversized_tiles(backend):
    spec = cg.ConvSpec(input_shape=(1, 64, 32, 32), out_channels=64, kernel_size=3, padding=1)
    with pytest.raises(cg.ScheduleError) as info:
        cg.compile(spec, backend=backend,
                   schedule=cg.Schedule(tile_co=64, tile_spatial=(32, 32)))
    assert "4096" in str(info.value)
    clone = pickle.loads(pickle.dumps(info.value))
    assert type(clone) is cg.ScheduleError and str(clone) == str(info.value)


@pytest.mark.parametrize("kwargs", [{"tile_co": 0}, {"tile_co": 2.5}, {"threads": 0},
                                    {"threads": 10_000}, {"tile_spatial": (0, 2)},
                                    {"tile_spatial": ()}])
def test_illegal_schedules(kwargs):
    with pytest.raises(cg.ScheduleError):
        cg.Schedule(**kwargs)


def test_exit_with_spinning_openmp_threads(tmp_path):
    """OMP_WAIT_POLICY=active keeps OpenMP's pool threads spinning in the runtime until the
    process ends; the kernel libraries (and the runtime they pulled in) must stay mapped
    through interpreter exit (it crashed with SIGSEGV when cffi closed them)."""
    from helpers import run_python, subprocess_env

    code = ("import convgen as cg\n"
            "from convgen.reference import random_arrays\n"
            "spec = cg.ConvSpec((1, 16, 12, 12), 16, kernel_size=3, padding=1)\n"
            "for s in (cg.Schedule(tile_co=16, tile_spatial=(1, 6), threads=2, vectorize='co'),\n"
            "          cg.Schedule(tile_co=8, tile_spatial=(2, 2), threads=2, method='winograd')):\n"
            "    cg.compile(spec, backend='c', schedule=s)(*random_arrays(spec))\n"
            "print('done')\n")
    result = run_python(code, subprocess_env(OMP_WAIT_POLICY="active"))
    assert result.returncode == 0 and "done" in result.stdout
