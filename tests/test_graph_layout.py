"""Networks that keep values in the blocked layout between layers (convgen.graph.layout).

Every network runs on every backend, blocked (the default, asked for explicitly here)
and all-NCHW, and is compared
with the oracle of the unfused graph; each test also checks which values the planner kept
blocked, so that the blocked kernels, pools, elementwise ops and fused residuals are
what ran.
"""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import convgen as cg
from convgen.graph.compile import compile_graph
from convgen.graph.layout import plan_layouts
from convgen.plan.depthwise import DepthwiseKind
from convgen.plan.layout import block_lanes, supports_blocked
from convgen.plan.staged import StagedDepthwiseKind

from graph_helpers import activation, adaptive, check, conv, graph, node, pool

# the blocked layout between layers (CPU plans): the CPU backends
pytestmark = pytest.mark.cpu_plans


def lowered_steps(model) -> dict:
    return {step.name: step for step in model._lowered.steps}


def resnet_like(batch: int, size: int, c1: int, c2: int, pooling: str, dtype: str,
                nd: int = 2):
    """stem conv (3 channels in) -> relu -> pool -> conv + residual -> relu ->
    strided conv -> two relu'd convs added (a standalone add) -> 1x1 conv (NCHW only,
    the GEMM) -> global average pool."""
    spatial = (size,) * nd
    x = (batch, 3, *spatial)
    stem = conv("stem", "x", x, c1, 3, padding=1, dtype=dtype)
    nodes = [stem, activation("stem_relu", "stem", "relu"),
             pool("pool", "stem_relu", pooling, nd, 3, stride=2, padding=1)]
    pooled = (batch, c1, *((size - 1) // 2 + 1 for _ in spatial))
    nodes += [conv("body", "pool", pooled, c1, 3, padding=1, bias=False, dtype=dtype, seed=1),
              node("residual", "add", ["body", "pool"]),
              activation("block_relu", "residual", "relu"),
              conv("down", "block_relu", pooled, c2, 3, stride=2, padding=1, dtype=dtype,
                   seed=2)]
    down = (batch, c2, *((s - 1) // 2 + 1 for s in pooled[2:]))
    nodes += [conv("left", "down", down, c2, 3, padding=1, dtype=dtype, seed=3),
              activation("left_relu", "left", "relu"),
              conv("right", "down", down, c2, 3, padding=1, dilation=1, dtype=dtype, seed=4,
                   activation="relu"),
              node("sum", "add", ["left_relu", "right"]),
              activation("sum_sigmoid", "sum", "sigmoid"),
              conv("pointwise", "sum_sigmoid", down, c2, 1, dtype=dtype, seed=5),
              adaptive("gap", "pointwise", (1,) * nd)]
    return graph([("x", x)], nodes, ["gap"])


def draw_schedule(data, winograd: bool, threads: int) -> cg.Schedule | None:
    """The default, the "co" plan, Winograd (when it applies) or the "w" plan (NCHW only)."""
    kinds = ["default", "co", "w"] + (["winograd"] if winograd else [])
    kind = data.draw(st.sampled_from(kinds))
    if kind == "default":
        return None
    if kind == "co":
        return cg.Schedule(tile_co=data.draw(st.integers(1, 40)), vectorize="co",
                           tile_spatial=(data.draw(st.integers(1, 3)),
                                         data.draw(st.integers(1, 8))), threads=threads)
    if kind == "winograd":
        return cg.Schedule(tile_co=data.draw(st.integers(1, 12)), method="winograd",
                           tile_spatial=(data.draw(st.integers(2, 4)),) * 2, threads=threads)
    return cg.Schedule(tile_co=data.draw(st.integers(1, 8)), tile_spatial=(2, 4),
                       threads=threads)


@settings(max_examples=8, deadline=None)
@given(data=st.data(), batch=st.integers(1, 2), size=st.integers(5, 12),
       blocks=st.sampled_from([(1, 1), (1, 2), (2, 1)]),
       pooling=st.sampled_from(["max_pool", "avg_pool"]), threads=st.sampled_from([1, 2]),
       dtype=st.sampled_from(["float32", "float64"]))
def test_resnet_like_blocked_matches_oracle(backend, data, batch, size, blocks, pooling,
                                            threads, dtype):
    """Each conv on a drawn plan: blocked where the plans on both sides allow it."""
    lanes = block_lanes(dtype)
    g = resnet_like(batch, size, blocks[0] * lanes, blocks[1] * lanes, pooling, dtype)
    schedules = {name: draw_schedule(data, winograd, threads)
                 for name, winograd in (("body", True), ("down", False), ("left", True),
                                        ("right", True), ("pointwise", False))}
    schedules = {name: sch for name, sch in schedules.items() if sch is not None}
    everywhere = all(sch.vectorize == "co" or sch.method == "winograd"
                     for sch in schedules.values())
    model = check(g.copy(), backend, dtype, threads=threads, schedules=schedules,
                  layout="blocked")
    steps = lowered_steps(model)
    blocked = model.blocked_values
    for step in steps.values():  # every kernel reads and writes what the planner chose
        if step.plan is not None:
            assert step.plan.in_blocked == (step.name != "stem" and
                                            model.optimized.node(step.name).inputs[0] in blocked)
            assert step.plan.out_blocked == (step.name in blocked)
            if step.name in blocked or step.plan.in_blocked:
                assert supports_blocked(step.plan, step.plan.in_blocked,
                                        step.plan.out_blocked) is None
        elif step.kind in ("max_pool", "avg_pool", "adaptive_avg_pool"):
            assert step.consts["blocked"] == (model.optimized.node(step.name).inputs[0]
                                              in blocked)
    assert steps["body"].consts["residual"]
    assert "gap" not in blocked
    if everywhere:  # (tiny layers run "co" by default): every value between them blocked
        assert {"stem", "pool", "body", "down", "left", "right", "sum",
                "sum_sigmoid"} <= blocked
    nchw = check(g, backend, dtype, threads=threads, layout="nchw", schedules=schedules)
    assert not nchw.blocked_values


@pytest.mark.parametrize("layout", ["blocked", "nchw"])
@pytest.mark.parametrize("case", [
    # (nd, size, kernel, stride, padding, padding_end, dilation, count_include_pad, ceil)
    (2, 9, 3, 1, 1, None, None, True, False),         # Inception v3's branch pool
    (2, 10, (3, 2), (2, 3), (1, 1), None, None, False, True),  # ceil: the overhang
    (2, 8, (2, 4), (1, 2), (1, 1), (0, 3), (2, 1), True, False),  # dilated, own end pad
    (2, 8, (2, 4), (1, 2), (1, 1), (0, 3), (2, 1), False, False),
    (3, 5, 2, 1, 1, None, None, False, False),
    (1, 600, 5, 2, 2, None, None, True, False),       # blocked: a row over the stack limit
    (2, 9, 3, 2, 0, None, None, True, False),         # no border column on the left
    (1, 3, 4, 1, 2, None, None, False, False),        # no column with every tap inside
    # NCHW planes as wide as the input (a plane at a time): no left padding, dilated, 1D
    (2, 9, 3, 1, (1, 0), (1, 2), None, False, False),
    (2, 7, 3, 1, 2, (2, 2), (2, 2), False, False),
    (1, 20, 3, 1, 1, None, None, False, False),
])
def test_avg_pool_in_both_layouts(backend, layout, case):
    """Average pooling between two convs, blocked or NCHW, at 2 threads, against the
    oracle for every padding rule: blocked, the two-pass padded-row loop (the one-pass
    loop for a row too wide for the stack); NCHW in C, a plane at a time where the
    output is as wide as the input, else row by row (asserted on the source)."""
    from convgen.graph.lower import MAX_POOL_ROW_ELEMENTS

    nd, size, kernel, stride, padding, end, dilation, count_pad, ceil = case
    lanes = block_lanes("float32")
    x = (1, lanes, *(size,) * nd)
    p = pool("p", "a", "avg_pool", nd, kernel, stride=stride, padding=padding,
             ceil_mode=ceil, count_include_pad=count_pad)
    if end is not None:
        p.attrs["padding_end"] = end
    if dilation is not None:
        p.attrs["dilation"] = dilation
    shape = graph([("x", x)], [conv("a", "x", x, lanes, 3, padding=1), p], ["p"]).shape_of("p")
    nodes = [conv("a", "x", x, lanes, 3, padding=1), p, conv("b", "p", shape, lanes, 1)]
    g = graph([("x", x)], nodes, ["b"])
    model = check(g, backend, threads=2, layout=layout)
    step = lowered_steps(model)["p"]
    assert step.consts["blocked"] == (layout == "blocked")
    assert step.consts["threads"] == 2
    assert step.consts["padded_row"] == (step.consts["row_elements"]
                                         * (lanes if layout == "blocked" else 1)
                                         <= MAX_POOL_ROW_ELEMENTS)
    if size == 600:
        assert step.consts["padded_row"] == (layout == "nchw")
    if backend == "c" and layout == "nchw":  # a plane at a time where as wide as the input
        same = nd < 3 and stride == 1 and shape[-1] == size
        assert ("the window's columns, then its rows" in model.source) == same, case




@pytest.mark.parametrize("case", [
    # (input (h, w), kernel, padding, padding_end, dilation, count_include_pad)
    ((35, 35), 3, 1, None, None, True),                  # Inception v3's branch pool
    ((9, 37), (3, 5), (1, 2), None, (1, 2), False),      # dilated columns
    ((6, 40), (1, 21), (0, 10), (0, 4), None, True),     # a window wider than a vector
])
def test_llvm_avg_pool_rows_wider_than_a_vector(case):
    """LLVM's stride-1 average pooling on rows of several vectors (NCHW: vectors of
    columns summed in registers, the row's end ones masked; blocked: pixel vectors), at 1
    and 2 threads, against the oracle; at 2 threads the step's jobs run in a GOMP_parallel
    region, at 1 in a plain call."""
    from convgen.backends.llvm.build import openmp_available

    size, kernel, padding, end, dilation, count_pad = case
    lanes = block_lanes("float32")
    x = (1, lanes, *size)
    p = pool("p", "a", "avg_pool", 2, kernel, stride=1, padding=padding,
             count_include_pad=count_pad)
    if end is not None:
        p.attrs["padding_end"] = end
    if dilation is not None:
        p.attrs["dilation"] = dilation
    a = conv("a", "x", x, 2 * lanes, 3, padding=1)
    shape = graph([("x", x)], [a, p], ["p"]).shape_of("p")
    g = graph([("x", x)], [a, p, conv("b", "p", shape, lanes, 1)], ["b"])
    for layout in ("nchw", "blocked"):
        for threads in (1, 2):
            model = check(g, "llvm", threads=threads, layout=layout)
            step = lowered_steps(model)["p"]
            assert step.consts["blocked"] == (layout == "blocked")
            parallel = re.search(rf'call void @"?GOMP_parallel"?\(.*@"?{step.function}\.omp',
                                 model.source)
            assert bool(parallel) == (threads == 2 and openmp_available())


def test_llvm_avg_pool_nan_and_inf_are_plain_sums():
    """NaN and ±inf in an NCHW average pool's input (with its padding and masked row
    ends) reach exactly the windows that hold them, as in the oracle."""
    x = np.random.default_rng(0).standard_normal((1, 2, 5, 37)).astype(np.float32)
    x[0, 0, 2, 0] = np.nan
    x[0, 0, 0, 36] = np.inf
    x[0, 1, 4, 18] = np.inf
    x[0, 1, 4, 19] = -np.inf
    for count_pad in (True, False):
        g = graph([("x", x.shape)], [pool("p", "x", "avg_pool", 2, 3, stride=1, padding=1,
                                          count_include_pad=count_pad)], ["p"])
        with np.errstate(invalid="ignore"):  # the oracle's inf + -inf
            model = check(g, "llvm", arrays=[x], layout="nchw")
        got = model(x)
        assert np.isnan(got[0, 0, 1:4, :2]).all() and np.isfinite(got[0, 0, :, 2:35]).all()
        assert np.isposinf(got[0, 0, :2, 35:]).all()
        assert np.isnan(got[0, 1, 3:, 18:20]).all()  # inf + -inf
        assert np.isposinf(got[0, 1, 3:, 17]).all() and np.isneginf(got[0, 1, 3:, 20]).all()
@pytest.mark.parametrize("nd", [1, 3])
def test_1d_and_3d_networks_blocked(backend, nd):
    lanes = block_lanes("float32")
    size = 9 if nd == 1 else 5
    x = (1, lanes, *(size,) * nd)
    nodes = [conv("a", "x", x, lanes, 3, padding=1),
             activation("a_relu", "a", "relu"),
             pool("p", "a_relu", "max_pool", nd, 2, stride=1),
             conv("b", "p", (1, lanes, *(size - 1,) * nd), 2 * lanes, 3, stride=2,
                  padding=1),
             pool("q", "b", "avg_pool", nd, 2, stride=1, padding=1,
                  count_include_pad=False),
             adaptive("gap", "q", (2,) * nd)]
    model = check(graph([("x", x)], nodes, ["gap"]), backend, layout="blocked")
    assert {"a", "p", "b", "q"} <= model.blocked_values
    assert lowered_steps(model)["gap"].consts["blocked"]


def test_transposed_and_grouped_convs_blocked(backend):
    lanes = block_lanes("float32")
    x = (2, 2 * lanes, 4, 4)
    nodes = [conv("pre", "x", x, 2 * lanes, 3, padding=1),
             conv("up", "pre", x, lanes, 4, stride=2, padding=1, transposed=True),
             conv("grouped", "up", (2, lanes, 8, 8), 2 * lanes, 3, padding=1, groups=1),
             conv("split", "grouped", (2, 2 * lanes, 8, 8), 2 * lanes, 3, padding=1,
                  groups=2, padding_mode="reflect"),
             conv("last", "split", (2, 2 * lanes, 8, 8), 3, 3, padding=1)]
    co = cg.Schedule(tile_co=lanes, tile_spatial=(2, 5), vectorize="co")
    model = check(graph([("x", x)], nodes, ["last"]), backend,
                  schedules={"pre": co, "up": co, "split": co, "last": co}, layout="blocked")
    assert {"pre", "up", "grouped", "split"} <= model.blocked_values
    steps = lowered_steps(model)
    assert steps["up"].plan.spec.transposed and steps["up"].plan.in_blocked
    assert not steps["last"].plan.out_blocked  # 3 channels, and the network's output


def test_planner_keeps_nchw_where_a_reader_cannot():
    """A value is blocked only when its writer and every reader can: a flatten view, an
    output, a "w"-plan reader (a depthwise layer on a schedule the caller chose) or odd
    channels keep it NCHW."""
    lanes = block_lanes("float32")
    x = (1, lanes, 6, 6)
    nodes = [conv("a", "x", x, lanes, 3, padding=1),
             conv("dw", "a", x, lanes, 3, padding=1, groups=lanes),
             conv("b", "dw", x, lanes, 3, padding=1),
             conv("odd", "b", x, lanes + 1, 3, padding=1),
             conv("c", "odd", (1, lanes + 1, 6, 6), lanes, 3, padding=1),
             node("flat", "flatten", ["c"], start_dim=1, end_dim=-1)]
    g = graph([("x", x)], nodes, ["flat", "b"])
    # (the depthwise layer's "w" plan chosen by the caller: not moved to the "dw" plan)
    model = compile_graph(g, layout="blocked",
                          schedules={"dw": cg.Schedule(tile_co=1, tile_spatial=(2, 6))})
    assert model.blocked_values == frozenset()
    plans = {s.name: s.plan for s in model._lowered.steps if s.plan is not None}
    assert plan_layouts(model.optimized, plans, lanes) == set()


def test_layout_argument_is_checked():
    lanes = block_lanes("float32")
    g = graph([("x", (1, lanes, 4, 4))], [conv("a", "x", (1, lanes, 4, 4), lanes, 3)], ["a"])
    with pytest.raises(ValueError, match="layout"):
        compile_graph(g, layout="nhwc")


@settings(max_examples=6, deadline=None)
@given(stride=st.integers(1, 2), size=st.integers(5, 13), kernel=st.sampled_from([3, 5]),
       threads=st.sampled_from([1, 2]), dtype=st.sampled_from(["float32", "float64"]),
       mode=st.sampled_from(["zeros", "reflect"]))
def test_inverted_residual_runs_depthwise_blocked(backend, stride, size, kernel, threads,
                                                  dtype, mode):
    """MobileNetV2's block: 1x1 expand, relu6, depthwise kxk (stride 1-2), relu6, 1x1
    project (+ the input when stride 1). The depthwise layer, between blocked values, runs
    on the blocked depthwise plan (vectorize="dw")."""
    lanes = block_lanes(dtype)
    c, wide = lanes, 2 * lanes
    x = (1, c, size, size)
    out = (size + 2 * (kernel // 2) - kernel) // stride + 1
    nodes = [conv("stem", "x", x, c, 3, padding=1, dtype=dtype),
             conv("expand", "stem", x, wide, 1, dtype=dtype, activation=("relu6")),
             conv("dw", "expand", (1, wide, size, size), wide, kernel, stride=stride,
                  padding=kernel // 2, padding_mode=mode, groups=wide, dtype=dtype,
                  activation="relu6"),
             conv("project", "dw", (1, wide, out, out), c, 1, dtype=dtype, seed=3)]
    last = "project"
    if stride == 1:
        nodes.append(node("block", "add", ["project", "stem"]))
        last = "block"
    nodes.append(adaptive("gap", last, (1, 1)))
    g = graph([("x", x)], nodes, ["gap"])
    co = cg.Schedule(tile_co=lanes, tile_spatial=(1, 8), vectorize="co", threads=threads)
    schedules = {"expand": co, "project": co}
    model = check(g.copy(), backend, dtype, threads=threads, schedules=schedules,
                  layout="blocked")
    steps = lowered_steps(model)
    assert isinstance(steps["dw"].plan.kind, DepthwiseKind)
    assert {"stem", "expand", "dw", "project"} <= model.blocked_values
    text = model.summary(file=io.StringIO())
    assert re.search(r"^dw .*blocked; depthwise plan$", text, re.M), text
    assert "kept between layers for" in text
    # NCHW around it: the depthwise layer keeps its own plan
    nchw = check(g, backend, dtype, threads=threads, layout="nchw", schedules=schedules)
    # NCHW around it: the staged depthwise plan (its own default), not the blocked one
    assert isinstance(lowered_steps(nchw)["dw"].plan.kind, StagedDepthwiseKind)


def test_depthwise_keeps_its_plan_where_values_stay_nchw(backend):
    lanes = block_lanes("float32")
    x = (1, lanes, 8, 8)
    nodes = [conv("dw_in", "x", x, lanes, 3, padding=1, groups=lanes),  # reads the input
             conv("mid", "dw_in", x, lanes, 3, padding=1),
             conv("dw_mid", "mid", x, lanes, 3, padding=1, groups=lanes),
             conv("dw_fixed", "dw_mid", x, lanes, 3, padding=1, groups=lanes),
             conv("dw_out", "dw_fixed", x, lanes, 3, padding=1, groups=lanes)]  # an output
    fixed = cg.Schedule(tile_co=1, tile_spatial=(2, 8))
    model = check(graph([("x", x)], nodes, ["dw_out"]), backend,
                  schedules={"dw_fixed": fixed}, layout="blocked")
    plans = {s.name: s.plan for s in model._lowered.steps}
    assert not isinstance(plans["dw_in"].kind, DepthwiseKind)
    assert not isinstance(plans["dw_out"].kind, DepthwiseKind)
    assert plans["dw_fixed"].schedule == fixed  # chosen by the caller: kept
    # dw_mid's output is read by dw_fixed ("w" plan, NCHW only): dw_mid stays too
    assert not isinstance(plans["dw_mid"].kind, DepthwiseKind)


def test_default_co_schedule_for_blocked_inputs(backend):
    """A "co" layer on its default schedule that reads a blocked value takes 2 vectors of
    channels x 14 pixels (schedule.default_co_schedule(blocked_input=True)); one whose
    schedule the caller chose keeps it."""
    lanes = block_lanes("float32")
    x = (1, lanes, 58, 58)
    nodes = [conv("a", "x", x, 2 * lanes, 3, stride=2, padding=1),
             conv("b", "a", (1, 2 * lanes, 29, 29), 2 * lanes, 3, stride=2, padding=1),
             conv("c", "b", (1, 2 * lanes, 15, 15), 2 * lanes, 3, stride=2, padding=1),
             adaptive("gap", "c", (1, 1))]
    pinned = cg.Schedule(tile_co=lanes, tile_spatial=(1, 8), vectorize="co")
    model = check(graph([("x", x)], nodes, ["gap"]), backend, threads=1,
                  schedules={"c": pinned}, layout="blocked")
    plans = {s.name: s.plan for s in model._lowered.steps if s.plan is not None}
    assert {"a", "b", "c"} <= model.blocked_values
    # NCHW input, blocked output: 1 vector x 28 pixels, one row (not 2 for the short reduction)
    assert plans["a"].tile_co == lanes and plans["a"].schedule.tile_spatial == (1, 28)
    assert (plans["b"].tile_co, plans["b"].schedule.tile_spatial) == (2 * lanes, (1, 14))
    assert plans["c"].schedule == pinned


def test_blocked_is_the_default_layout(backend):
    lanes = block_lanes("float32")
    x = (1, lanes, 6, 6)
    nodes = [conv("a", "x", x, lanes, 3, padding=1), conv("b", "a", x, lanes, 3, padding=1)]
    model = check(graph([("x", x)], nodes, ["b"]), backend)
    assert model.blocked_values == {"a"}


def test_two_threads_limit_winograd_alike_in_both_layouts(backend):
    """At 2+ threads a 3x3 layer on its default schedule keeps Winograd while U fits
    PARALLEL_WINOGRAD_WEIGHT_BYTES, blocked or NCHW: ResNet-18's 256@14 layers take F(4x4)
    at 1 and 2 threads in both layouts (the 512@7 layers' U is over the limit: direct at 2
    threads, test_winograd's test_prepared_weights_limit_winograd_at_two_threads). Every
    model is checked against the oracle by check()."""
    from convgen.plan.defaults import PARALLEL_WINOGRAD_WEIGHT_BYTES

    assert 36 * 256 * 256 * 4 <= PARALLEL_WINOGRAD_WEIGHT_BYTES < 16 * 512 * 512 * 4
    x = (1, 256, 14, 14)
    nodes = [conv("a", "x", x, 256, 3, padding=1, seed=1),
             conv("b", "a", x, 256, 3, padding=1, seed=2),
             conv("c", "b", x, 256, 3, padding=1, seed=3),
             adaptive("gap", "c", (1, 1))]
    g = graph([("x", x)], nodes, ["gap"])
    for threads, layout in ((2, "blocked"), (2, "nchw"), (1, "blocked")):
        model = check(g.copy(), backend, threads=threads, layout=layout)
        schedule = lowered_steps(model)["b"].plan.schedule
        assert (schedule.method, schedule.tile_spatial) == ("winograd", (4, 4)), \
            (threads, layout)
    assert "b" in model.blocked_values


def test_arena_and_parameters_are_64_byte_aligned(backend):
    """Every value's offset is a multiple of 64 bytes from the arena's start, so the
    arena itself (and the parameters) start on a cache line: a blocked pixel is one line."""
    lanes = block_lanes("float32")
    x = (1, lanes, 5, 5)
    g = graph([("x", x)], [conv("a", "x", x, lanes, 3, padding=1),
                           conv("b", "a", x, lanes, 3, padding=1)], ["b"])
    for _ in range(3):
        model = check(g.copy(), backend, layout="blocked")
        assert model._arena.ctypes.data % 64 == 0 and model._params.ctypes.data % 64 == 0


def test_pointwise_gemm_moves_to_co_between_blocked_values(backend):
    """A 1x1 layer on its default GEMM (NCHW only) runs "co" where a blocked neighbour
    makes it pay (MobileNetV2's expand and project layers); NCHW, it keeps the GEMM."""
    lanes = block_lanes("float32")
    x = (1, lanes, 16, 16)
    nodes = [conv("a", "x", x, 2 * lanes, 3, padding=1),
             conv("p", "a", (1, 2 * lanes, 16, 16), 2 * lanes, 1, seed=1),
             conv("b", "p", (1, 2 * lanes, 16, 16), lanes, 3, padding=1, seed=2),
             adaptive("gap", "b", (1, 1))]
    g = graph([("x", x)], nodes, ["gap"])
    blocked = check(g.copy(), backend, threads=1, layout="blocked")
    nchw = check(g, backend, threads=1, layout="nchw")
    assert lowered_steps(nchw)["p"].plan.schedule.method == "gemm"
    plan = lowered_steps(blocked)["p"].plan
    assert plan.kind.label == "co" and plan.in_blocked and plan.out_blocked
