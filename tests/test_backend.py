"""Every backend against the oracle: property tests over specs and schedules."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import convgen as cg
from convgen.backends import get_backend
from convgen.plan.core import make_plan
from convgen.tuning.space import candidate_schedules
from convgen.tolerance import max_error, tolerance

from helpers import check_kernel
from strategies import (arrays_for, co_schedules, conv_specs, gpu_schedules, schedules,
                        transposed_specs, wide_specs)


@settings(max_examples=60)
@given(spec=conv_specs())
def test_default_schedule_matches_oracle(backend, spec):
    check_kernel(cg.compile(spec, backend=backend), spec)


@settings(max_examples=40)
@given(data=st.data())
def test_any_schedule_matches_oracle(backend, data):
    spec = data.draw(conv_specs())
    gpu = get_backend(backend).device == "gpu"
    schedule = data.draw(gpu_schedules(spec) if gpu else schedules(spec))
    check_kernel(cg.compile(spec, backend=backend, schedule=schedule), spec, seed=1)


@pytest.mark.cpu_plans
@settings(max_examples=40)
@given(data=st.data())
def test_co_plan_matches_oracle(backend, data):
    """vectorize="co" with whole vectors of output channels and remainders: every rank,
    stride, dilation, padding mode, groups, flip, bias, activation, transposition."""
    spec = data.draw(wide_specs())
    schedule = data.draw(co_schedules(spec))
    check_kernel(cg.compile(spec, backend=backend, schedule=schedule), spec, seed=3)


@pytest.mark.cpu_plans
@settings(max_examples=30)
@given(data=st.data())
def test_channel_tiles_innermost_matches_oracle(backend, data):
    """Inputs larger than plan.direct.CACHE_BYTES visit the output-channel tiles innermost
    ("w" plan); with the threshold at 0 every spec with several channel tiles does."""
    from unittest import mock

    from convgen.plan import direct

    spec = data.draw(conv_specs())
    schedule = data.draw(schedules(spec))
    assume(schedule.vectorize == "w")
    with mock.patch.object(direct, "CACHE_BYTES", 0):
        kernel = cg.compile(spec, backend=backend, schedule=schedule)
    plan = make_plan(spec, schedule)
    marker = "innermost" if backend == "c" else "x D/H/W tiles x channel tile"
    assert (marker in kernel.source) == (plan.n_tiles[0] > 1)
    check_kernel(kernel, spec, seed=5)


@pytest.mark.cpu_plans
@pytest.mark.parametrize("threads", [1, 2])
def test_channel_tiles_innermost_on_a_large_input(backend, threads):
    """A 1D signal of 1.3 MB (over CACHE_BYTES): 3 channel tiles, the last one partial."""
    spec = cg.ConvSpec((1, 16, 20500), 20, kernel_size=3, padding=2, dilation=2)
    kernel = cg.compile(spec, backend=backend,
                        schedule=cg.Schedule(tile_co=8, tile_spatial=(32,), threads=threads))
    assert ("innermost" if backend == "c" else "x D/H/W tiles x channel tile") in kernel.source
    check_kernel(kernel, spec, seed=6)


@pytest.mark.cpu_plans
@settings(max_examples=30)
@given(data=st.data())
def test_co_plan_next_block_prefetch_matches_oracle(backend, data):
    """Layers with CO_PREFETCH_WEIGHT_BYTES+ of weights prefetch the next channel block's
    (the next group's, the next batch element's first) while a block computes; with the
    threshold at 0 every non-transposed "co" kernel does: groups, batches, remainder
    blocks, 1-2 threads."""
    from unittest import mock

    from convgen.plan import co

    spec = data.draw(wide_specs(transposed=False))
    schedule = data.draw(co_schedules(spec))
    with mock.patch.object(co, "CO_PREFETCH_WEIGHT_BYTES", 0):
        lines = co.co_next_block_lines(make_plan(spec, schedule))
        kernel = cg.compile(spec, backend=backend, schedule=schedule)
    assert lines >= 1
    if backend == "c":
        assert f"NEXT_LINES = {lines}," in kernel.source
    else:
        assert "next.left" in kernel.source
    check_kernel(kernel, spec, seed=9)


@pytest.mark.cpu_plans
@settings(max_examples=30)
@given(data=st.data())
def test_bound_co_plan_next_block_prefetch_matches_oracle(backend, data):
    """Bound, the blocks packed at load: the next packed block is prefetched (transposed
    convolutions too: packed, a block is one run); threads split blocks or rows."""
    from unittest import mock

    from convgen.plan import co
    from convgen.reference import random_arrays
    from convgen.tolerance import max_error, tolerance

    spec = data.draw(wide_specs())
    schedule = data.draw(co_schedules(spec))
    x, w, b = random_arrays(spec, 10)
    with mock.patch.object(co, "CO_PREFETCH_WEIGHT_BYTES", 0):
        plan = make_plan(spec, schedule)
        lines = co.co_next_block_lines(plan, prepacked=True)
        bound = cg.bind(spec, w, b, backend=backend, schedule=schedule)
    assert lines >= 1 or co.co_rows_outer(plan, True)
    assert max_error(bound(x), cg.reference(spec, x, w, b)) <= tolerance(spec)


def test_co_plan_next_block_prefetch_threshold():
    """Only layers with CO_PREFETCH_WEIGHT_BYTES+ of weights prefetch: ResNet-18's 512@7
    spreads 32 channels x 4608 steps over 7 rows x 512 channels (3 lines per channel and
    row), its 7x7 conv1 (37 KB of weights) prefetches nothing."""
    from convgen.plan import co

    deep = cg.ConvSpec((1, 512, 7, 7), 512, 3, padding=1)
    plan = make_plan(deep, cg.Schedule(tile_co=32, tile_spatial=(1, 7), vectorize="co"))
    assert co.co_next_block_lines(plan) == 3
    conv1 = cg.ConvSpec((1, 3, 224, 224), 64, 7, stride=2, padding=3)
    plan = make_plan(conv1, cg.Schedule(tile_co=32, tile_spatial=(1, 28), vectorize="co"))
    assert co.co_next_block_lines(plan) == 0


@pytest.mark.cpu_plans
@settings(max_examples=40)
@given(data=st.data())
def test_transposed_co_plan_matches_oracle(backend, data):
    """vectorize="co" on transposed convolutions (every backend): stride-phase pieces,
    per-row tap lists, strides 1-3, dilation, output_padding, pads, groups, flip, every
    rank, channel remainders, float32/float64, bias, activation, 1 or 2 threads."""
    spec = data.draw(transposed_specs())
    schedule = data.draw(co_schedules(spec))
    check_kernel(cg.compile(spec, backend=backend, schedule=schedule), spec, seed=5)


@pytest.mark.cpu_plans
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_transposed_co_plan_with_threads(backend, dtype):
    """The bench layer's shape, smaller: 4x4 stride 2 pad 1, whole pieces of a phase,
    a remainder channel block, two threads, fused bias and activation."""
    spec = cg.ConvSpec((3, 8, 6, 7), 40, kernel_size=4, stride=2, padding=1, transposed=True,
                       activation="relu", dtype=dtype)
    kernel = cg.compile(spec, backend=backend)
    assert kernel.schedule.vectorize == "co"
    check_kernel(kernel, spec, seed=6)
    two = cg.Schedule(tile_co=32, tile_spatial=(2, 5), threads=2, vectorize="co")
    check_kernel(cg.compile(spec, backend=backend, schedule=two), spec, seed=7)


@pytest.mark.cpu_plans
@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_transposed_co_plan_stride_3_dilation_output_padding(backend, ndim):
    """Stride 3 with dilation 2 and output_padding (some rows and phases read no tap),
    groups, a remainder channel block of one channel, in each rank."""
    spec = cg.ConvSpec((2, 4) + (4, 3, 5)[3 - ndim:], 34, kernel_size=3, stride=3,
                       dilation=2, padding=1, output_padding=2, groups=2, transposed=True,
                       activation="leaky_relu")
    schedule = cg.Schedule(tile_co=17, tile_spatial=(2,) * (ndim - 1) + (4,),
                           vectorize="co")
    check_kernel(cg.compile(spec, backend=backend, schedule=schedule), spec, seed=8)


@pytest.mark.cpu_plans
@settings(max_examples=20)
@given(spec=wide_specs())
def test_default_schedule_with_wide_channels(backend, spec):
    """The default plan for 16+ channels per group and short rows: "co" on every backend
    (transposed convolutions too: the stride-phase plan)."""
    kernel = cg.compile(spec, backend=backend)
    assert kernel.schedule.vectorize == "co"
    check_kernel(kernel, spec, seed=4)


@settings(max_examples=100)
@given(spec=conv_specs())
def test_backends_pick_the_same_default_plan(spec):
    """The same plan on both backends: direct ("w" or "co", transposed too) or a
    transform-GEMM method, for kernels and for prepared weights."""
    assert cg.default_schedule(spec, "llvm") == cg.default_schedule(spec, "c")
    assert cg.default_schedule(spec, "llvm", prepared_weights=True) == \
        cg.default_schedule(spec, "c", prepared_weights=True)


@pytest.mark.cpu_plans
def test_every_backend_searches_the_transposed_co_plan(backend):
    spec = cg.ConvSpec((1, 4, 5, 5), 16, kernel_size=4, stride=2, padding=1, transposed=True)
    found = candidate_schedules(spec, backend)
    assert found[0].vectorize == "co"
    assert {s.vectorize for s in found} == {"w", "co"}


JOB_RANGE_SPEC = cg.ConvSpec((2, 5, 6, 9), 40, kernel_size=3, padding=1, bias=True,
                             activation="relu")
JOB_RANGE_TRANSPOSED = cg.ConvSpec((2, 5, 4, 5), 40, kernel_size=4, stride=2, padding=1,
                                   transposed=True, bias=True, activation="relu")


@pytest.mark.parametrize("spec, schedule", [
    (JOB_RANGE_SPEC, cg.Schedule(tile_co=16, tile_spatial=(2, 3), vectorize="co")),
    (JOB_RANGE_SPEC, cg.Schedule(tile_co=48, tile_spatial=(1, 4), vectorize="co")),
    (JOB_RANGE_SPEC, cg.Schedule(tile_co=4, tile_spatial=(2, 4))),
    (JOB_RANGE_TRANSPOSED, cg.Schedule(tile_co=16, tile_spatial=(2, 3), vectorize="co")),
], ids=["co-1-vector", "co-3-vectors", "w", "co-transposed"])
@pytest.mark.cpu_plans
def test_any_job_range_matches_oracle(backend, spec, schedule):
    """The job-range ABI: ranges that start and end anywhere (mid channel block, mid row)
    compute exactly their jobs, so threads may split the jobs at any point (transposed
    "co": the channel block outermost, stride-phase pieces)."""
    kernel = cg.compile(spec, backend=backend, schedule=schedule)
    x, w, b = arrays_for(spec, 6)
    want = cg.reference(spec, x, w, b)
    jobs = kernel.jobs
    cuts = sorted({0, jobs, 1, jobs // 3, jobs // 2 + 1, jobs - 2})
    out = np.full(spec.output_shape, np.nan, spec.dtype)
    for begin, end in zip(cuts, cuts[1:]):
        kernel._ranges = [(begin, end)]  # one call per range, each on its own
        kernel(x, w, b, out=out)
    assert max_error(out, want) <= tolerance(spec)


@pytest.mark.parametrize("ndim", [1, 2, 3])
@settings(max_examples=15)
@given(data=st.data())
def test_each_rank_matches_oracle(backend, ndim, data):
    spec = data.draw(conv_specs(ndim=ndim))
    check_kernel(cg.compile(spec, backend=backend), spec, seed=2)


@pytest.mark.parametrize("spec", [
    cg.ConvSpec((1, 3, 5, 5), 2, kernel_size=3),                        # filter bank, RGB
    cg.ConvSpec((1, 1, 7), 1, kernel_size=5, padding="same"),          # 5-element mask
    cg.ConvSpec((2, 6, 9, 9), 6, kernel_size=3, padding=1, groups=6,   # depthwise
                activation="relu6"),
    cg.ConvSpec((1, 8, 12), 8, kernel_size=3, dilation=4, padding="same",
                padding_mode="reflect"),
    cg.ConvSpec((1, 4, 6, 6), 2, kernel_size=4, stride=2, padding=1, transposed=True,
                activation="tanh"),
    cg.ConvSpec((1, 2, 5, 6, 7), 3, kernel_size=(3, 2, 3), stride=(1, 2, 1),
                padding="same", padding_mode="replicate", dtype="float64"),
    cg.ConvSpec((1, 3, 7, 7), 5, kernel_size=3, padding="full", flip=True,
                activation=("elu", 0.5)),
    cg.ConvSpec((1, 16, 29, 29), 24, kernel_size=3, padding=1, activation="silu"),
])
def test_named_cases(backend, spec):
    check_kernel(cg.compile(spec, backend=backend), spec)


def test_bad_backend_name():
    spec = cg.ConvSpec((1, 1, 5), 1)
    with pytest.raises(ValueError, match="backend"):
        cg.compile(spec, backend="fortran")
    with pytest.raises(TypeError, match="ConvSpec"):
        cg.compile({"input_shape": (1, 1, 5)})
