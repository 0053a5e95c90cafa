"""The staged depthwise plan (vectorize="dw" on NCHW, convgen.plan.staged) on both CPU
backends (templates/c/conv_dws_function.j2, convgen.backends.llvm.dws) against the
oracle: any channel multiplier, 1D/2D/3D, stride, dilation, padding and padding mode,
flip, bias, activation, register tiles of several rows and pieces, bands split between
threads or by the scratch size, padded rows staged from the top / bottom row tables (pads
wider than the kernel reaches); and, in a network, the variant with a fused residual."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import convgen as cg
from convgen import ScheduleError, SpecError
from convgen.plan.core import make_plan
from convgen.plan.staged import StagedDepthwiseKind
from convgen.reference import random_arrays
from convgen.tolerance import max_error, tolerance

from graph_helpers import activation, check, conv, graph, node

ACTIVATIONS = [None, "relu", "relu6", ("leaky_relu", 0.2), "sigmoid", ("clip", -0.25, 0.5)]
# the width reaches past one vector of float64 (8 lanes) and float32 (16) so that rows
# run in several pieces, the last one partial
MAX_SIZE = {1: (40,), 2: (6, 40), 3: (4, 5, 12)}


def assert_oracle(kernel: cg.Kernel, spec: cg.ConvSpec, seed: int = 0) -> None:
    x, w, b = random_arrays(spec, seed)
    got = kernel(x, w, b)
    assert got.shape == spec.output_shape and got.dtype == np.dtype(spec.dtype)
    error = max_error(got, cg.reference(spec, x, w, b))
    assert error <= tolerance(spec), f"{spec} {kernel.schedule}: max error {error:.3g}"


@st.composite
def staged_cases(draw):
    """(spec, schedule): a depthwise spec with small shapes and a vectorize="dw" schedule,
    its register tile default or drawn."""
    nd = draw(st.integers(1, 3))
    channels = draw(st.integers(1, 6))
    spatial = tuple(draw(st.integers(1, most)) for most in MAX_SIZE[nd])
    # pads up to 3: wider than a small kernel reaches, so whole staged rows are padding
    padding = draw(st.one_of(st.integers(0, 3), st.just("same"),
                             st.tuples(*[st.integers(0, 3)] * nd)))
    try:
        spec = cg.ConvSpec(
            (draw(st.integers(1, 2)), channels, *spatial),
            channels * draw(st.integers(1, 3)),
            tuple(draw(st.integers(1, 5)) for _ in range(nd)),
            stride=1 if padding == "same" else tuple(draw(st.integers(1, 3)) for _ in range(nd)),
            dilation=tuple(draw(st.integers(1, 2)) for _ in range(nd)),
            padding=padding, groups=channels, bias=draw(st.booleans()),
            padding_mode=draw(st.sampled_from(["zeros", "reflect", "replicate", "circular"])),
            activation=draw(st.sampled_from(ACTIVATIONS)), flip=draw(st.booleans()),
            dtype=draw(st.sampled_from(["float32", "float64"])))
    except SpecError:
        assume(False)  # reflect padding as wide as the input, an empty output
    tile = None
    if draw(st.booleans()):  # a drawn register tile: rows x columns (3D: depth 1)
        rows = (draw(st.integers(1, 4)),) if nd >= 2 else ()
        tile = (1,) * (nd == 3) + rows + (draw(st.integers(1, 24)),)
    schedule = cg.Schedule(vectorize="dw", tile_spatial=tile,
                           threads=draw(st.sampled_from([1, 2])))
    try:
        schedule.resolve(spec)
    except ScheduleError:
        assume(False)
    return spec, schedule


@pytest.mark.cpu_plans
@settings(max_examples=20, deadline=None)
@given(case=staged_cases())
def test_staged_depthwise_matches_the_oracle(backend, case):
    spec, schedule = case
    kernel = cg.compile(spec, schedule=schedule, backend=backend)
    assert isinstance(make_plan(spec, schedule).kind, StagedDepthwiseKind)
    assert_oracle(kernel, spec)


@pytest.mark.parametrize("spec, tile", [
    # 5x5 stride 2 (MobileNet's strided layers), two threads split every plane in bands
    (cg.ConvSpec((1, 4, 29, 37), 4, 5, stride=2, padding=2, groups=4, bias=False), None),
    # multiplier 2, bias and relu6, batch 2, a tile of 3 rows x 2 vectors
    (cg.ConvSpec((2, 3, 13, 45), 6, 3, padding=1, groups=3, activation="relu6"), (3, 20)),
    # reflect padding, per-dim strides, dilation, a 3x5 kernel, flipped
    (cg.ConvSpec((1, 4, 9, 40), 4, (3, 5), stride=(2, 3), padding=(2, 1), dilation=(1, 2),
                 groups=4, padding_mode="reflect", flip=True), None),
    # a 33-tap kernel: long straight-line tiles
    (cg.ConvSpec((1, 2, 70), 4, 33, padding=16, groups=2, padding_mode="circular"), None),
    # replicate padding wider than the row: the staged row's table columns loop
    (cg.ConvSpec((1, 2, 3, 5), 2, 3, padding=(1, 40), groups=2,
                 padding_mode="replicate"), None),
    # 3D, stride 2
    (cg.ConvSpec((1, 4, 6, 9, 11), 4, 3, stride=2, padding=1, groups=4), None),
], ids=["5x5-s2", "multiplier-tile", "reflect-strides-flip", "wide-kernel",
        "wide-replicate", "3d"])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.cpu_plans
def test_staged_depthwise_cases(backend, spec, tile, threads):
    if tile is not None:
        tile = (1,) * (spec.ndim == 3) + tile
    kernel = cg.compile(spec, schedule=cg.Schedule(vectorize="dw", tile_spatial=tile,
                                                   threads=threads), backend=backend)
    assert_oracle(kernel, spec, seed=threads)


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect", "replicate", "circular"])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.cpu_plans
def test_staged_depthwise_pads_rows_from_the_row_tables(backend, padding_mode, threads):
    """H padding of 5 rows above and 4 below a 2-row kernel at stride 3: staged padded
    rows come from top_rows / bottom_rows (whole rows of zeros with zero padding), and
    the last register tile (3 rows over 5 output rows) reads rows past the band; two
    threads split the plane in bands, whose first padded rows differ."""
    spec = cg.ConvSpec((1, 3, 7, 20), 3, (2, 3), stride=(3, 2), padding=((5, 4), (1, 2)),
                       groups=3, padding_mode=padding_mode, flip=True)
    schedule = cg.Schedule(vectorize="dw", tile_spatial=(3, 20), threads=threads)
    kind = make_plan(spec, schedule).kind
    assert len(kind.top_rows) == 5 and kind.bottom_rows
    assert kind.bands == threads  # one band, or two that share the plane
    assert_oracle(cg.compile(spec, schedule=schedule, backend=backend), spec, seed=threads)


@pytest.mark.cpu_plans
def test_staged_depthwise_bands_split_by_the_scratch_size(backend):
    """A plane whose staged rows pass STAGE_BYTES runs in bands on one thread: each band
    stages its own padded rows, the first and last from the row tables."""
    spec = cg.ConvSpec((1, 2, 40, 300), 2, 3, padding=2, groups=2, padding_mode="replicate")
    schedule = cg.Schedule(vectorize="dw", threads=1)
    assert make_plan(spec, schedule).kind.bands > 1
    assert_oracle(cg.compile(spec, schedule=schedule, backend=backend), spec)


@pytest.mark.parametrize("multiplier", [1, 2])
@pytest.mark.cpu_plans
def test_staged_depthwise_with_a_fused_residual_in_a_network(backend, multiplier):
    """A depthwise layer given vectorize="dw" keeps its plan in a network; an add after it
    fuses into the kernel as the residual (the staged kernel's residual variant)."""
    channels, size = 3, (7, 21)
    out = channels * multiplier
    nodes = [conv("dw", "x", (1, channels, *size), out, 3, padding=1, groups=channels,
                  activation=None),
             node("sum", "add", ["dw", "r"]),
             activation("act", "sum", "relu")]
    g = graph([("x", (1, channels, *size)), ("r", (1, out, *size))], nodes, ["act"])
    for threads in (1, 2):
        model = check(g.copy(), backend, "float32", threads=threads, layout="nchw",
                      schedules={"dw": cg.Schedule(vectorize="dw", threads=threads)})
        steps = {step.name: step for step in model._lowered.steps}
        assert isinstance(steps["dw"].plan.kind, StagedDepthwiseKind)
        assert steps["dw"].consts["residual"]


def test_staged_depthwise_llvm_threads_share_jobs_in_one_openmp_region():
    """threads=2 on LLVM: the kernel shares its jobs over OpenMP threads itself (one
    GOMP_parallel region taking chunks of the plan's schedule(dynamic, N)), so the Kernel
    makes one call in one Python thread; without the OpenMP runtime Python splits them."""
    from convgen.backends.llvm.build import openmp_available

    spec = cg.ConvSpec((2, 6, 9, 21), 12, 3, stride=(2, 1), padding=1, groups=6, bias=True,
                       activation="relu")
    schedule = cg.Schedule(vectorize="dw", threads=2)
    plan = make_plan(spec, schedule)
    assert isinstance(plan.kind, StagedDepthwiseKind) and plan.jobs > 4
    kernel = cg.compile(spec, schedule=schedule, backend="llvm")
    if openmp_available():
        assert kernel._ranges == [(0, kernel.jobs)]
        chunk = int(plan.omp_schedule.split(",")[1])
        assert "@\"GOMP_parallel\"" in kernel.source
        assert f"i64 1, i64 {chunk}," in kernel.source  # GOMP_loop_dynamic_start's chunk
    else:
        assert len(kernel._ranges) == 2
    for seed in range(2):
        assert_oracle(kernel, spec, seed=seed)
