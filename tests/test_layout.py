"""The blocked layout (convgen.plan.layout): kernels that read and write (N, C / VL, *S, VL).

Every plan that supports it ("co", Winograd) is built with its input and/or output
blocked, on both backends, with weights as given or prepared at load, and compared with
the oracle after converting back. Networks that keep values blocked between layers are
tested in test_graph_layout.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import convgen as cg
from helpers import CPU_BACKENDS as BACKENDS

# CPU plan kinds: the backend argument runs over the CPU backends
pytestmark = pytest.mark.cpu_plans
from convgen.backends import get_backend
from convgen.compiler import kernel_from_artifact
from convgen.plan.weights import prepare_weight, prepares
from convgen.plan.depthwise import depthwise_blocked
from convgen.plan.layout import block_lanes, from_blocked, supports_blocked, to_blocked
from convgen.plan.core import make_plan
from convgen.reference import random_arrays
from convgen.tolerance import max_error, tolerance

from strategies import ACTIVATION_CHOICES, co_schedules

PADDING_MODES = ["zeros", "zeros", "reflect", "replicate", "circular"]


def render(plan, backend: str) -> str:
    return get_backend(backend).render(plan)


def run_blocked(spec: cg.ConvSpec, schedule: cg.Schedule | None, backend: str,
                in_blocked: bool, out_blocked: bool, prepared: bool = False, seed: int = 0,
                depthwise: bool = False) -> None:
    """Build ``spec`` with the layouts asked for (``depthwise``: on the blocked depthwise
    plan) and compare with the oracle."""
    plan = make_plan(spec, schedule, in_blocked=in_blocked, out_blocked=out_blocked,
                     depthwise=depthwise, prepared_weights=prepared)
    assert plan.prepared_weights == (prepared and prepares(plan))
    prepared = plan.prepared_weights
    artifact = get_backend(backend).build(plan, render(plan, backend), None)
    x, w, b = random_arrays(spec, seed)
    weight = np.array(prepare_weight(plan, w) if prepared else w, dtype=spec.dtype)
    kernel = kernel_from_artifact(spec, plan, backend, artifact, weight_shape=weight.shape)
    lanes = plan.vector_lanes
    xin = to_blocked(x, lanes).reshape(spec.input_shape) if in_blocked else x
    got = kernel(xin, weight, b)
    if out_blocked:
        n, c, *spatial = spec.output_shape
        got = from_blocked(got.reshape(n, c // lanes, *spatial, lanes))
    want = cg.reference(spec, x, w, b)
    error = max_error(got, want)
    assert error <= tolerance(spec), (
        f"{backend} {spec} {schedule} in_blocked={in_blocked} out_blocked={out_blocked} "
        f"prepared={prepared}: max error {error:.3g}")


@st.composite
def blocked_specs(draw, ndim: int | None = None, transposed: bool = False,
                  winograd: bool = False):
    """A ConvSpec whose channels per group are whole blocks (1-3 of them, groups 1-2):
    strides, every padding form and mode, dilation, flip, bias, activations, batch 1-2
    (``winograd``: stride 1, a kernel of 2+ in some dim, dilated with zero padding only)."""
    nd = ndim or draw(st.integers(1, 3))
    dtype = draw(st.sampled_from(["float32", "float64"]))
    lanes = block_lanes(dtype)
    groups = draw(st.sampled_from([1, 1, 2]))
    spatial = tuple(draw(st.integers(1, (12, 9, 5)[nd - 1])) for _ in range(nd))
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    if winograd and max(kernel) == 1:
        kernel = (*kernel[:-1], 3)
    kwargs = dict(stride=tuple(draw(st.integers(1, 1 if winograd else 2)) for _ in range(nd)),
                  dilation=tuple(draw(st.integers(1, 2)) for _ in range(nd)))
    if transposed:
        kwargs["padding"] = draw(st.integers(0, 1))
    else:
        kwargs["padding"] = draw(st.sampled_from([0, 1, 2, "same", "valid"]))
        kwargs["padding_mode"] = draw(st.sampled_from(PADDING_MODES))
        if winograd and kwargs["padding_mode"] != "zeros":
            kwargs["dilation"] = 1
    try:
        return cg.ConvSpec(
            input_shape=(draw(st.integers(1, 2)), groups * lanes * draw(st.integers(1, 2)),
                         *spatial),
            out_channels=groups * lanes * draw(st.integers(1, 3)), kernel_size=kernel,
            groups=groups, transposed=transposed, bias=draw(st.booleans()),
            activation=draw(st.sampled_from(ACTIVATION_CHOICES)), flip=draw(st.booleans()),
            dtype=dtype, **kwargs)
    except cg.SpecError:
        assume(False)


DW_BACKENDS = BACKENDS
LAYOUTS = [(True, True), (True, False), (False, True)]


@settings(max_examples=30, deadline=None)
@given(data=st.data(), backend=st.sampled_from(BACKENDS),
       layouts=st.sampled_from(LAYOUTS), prepared=st.booleans())
def test_co_plan_blocked_matches_oracle(data, backend, layouts, prepared):
    """The "co" plan: any rank, transposed or not, remainders of rows, 1-2 threads."""
    spec = data.draw(blocked_specs(transposed=data.draw(st.booleans())))
    schedule = data.draw(co_schedules(spec))
    run_blocked(spec, schedule, backend, *layouts, prepared=prepared)


@st.composite
def winograd_blocked_cases(draw):
    spec = draw(blocked_specs(ndim=draw(st.integers(1, 2)), winograd=True))
    tiles = tuple(1 if k == 1 else draw(st.integers(2, 4)) for k in spec.kernel_size)
    schedule = cg.Schedule(tile_co=draw(st.integers(1, 12)), tile_spatial=tiles,
                           threads=draw(st.sampled_from([1, 1, 2])), method="winograd")
    try:
        schedule.resolve(spec)
    except cg.ScheduleError:
        assume(False)
    return spec, schedule


@settings(max_examples=30, deadline=None)
@given(case=winograd_blocked_cases(), backend=st.sampled_from(BACKENDS),
       layouts=st.sampled_from(LAYOUTS), prepared=st.booleans())
def test_winograd_blocked_matches_oracle(case, backend, layouts, prepared):
    """Winograd, input gathered in place (zero padding) or staged (other modes)."""
    run_blocked(*case, backend, *layouts, prepared=prepared)


@st.composite
def depthwise_specs(draw):
    """Depthwise (multiplier 1) specs with whole blocks of channels: every rank, strides,
    dilation, every padding form and mode, flip, bias, activations, batch 1-2, rows
    shorter and longer than the plan's register tile."""
    nd = draw(st.integers(1, 3))
    dtype = draw(st.sampled_from(["float32", "float64"]))
    channels = block_lanes(dtype) * draw(st.integers(1, 2))
    spatial = tuple(draw(st.integers(1, (30, 13, 6)[nd - 1])) for _ in range(nd))
    try:
        return cg.ConvSpec(
            input_shape=(draw(st.integers(1, 2)), channels, *spatial), out_channels=channels,
            groups=channels, kernel_size=tuple(draw(st.integers(1, 5)) for _ in range(nd)),
            stride=tuple(draw(st.integers(1, 2)) for _ in range(nd)),
            dilation=tuple(draw(st.integers(1, 2)) for _ in range(nd)),
            padding=draw(st.sampled_from([0, 1, 2, "same", "valid"])),
            padding_mode=draw(st.sampled_from(PADDING_MODES)), bias=draw(st.booleans()),
            activation=draw(st.sampled_from(ACTIVATION_CHOICES)), flip=draw(st.booleans()),
            dtype=dtype)
    except cg.SpecError:
        assume(False)


@settings(max_examples=30, deadline=None)
@given(spec=depthwise_specs(), backend=st.sampled_from(DW_BACKENDS),
       threads=st.sampled_from([1, 2]))
def test_depthwise_plan_matches_oracle(spec, backend, threads):
    """The blocked depthwise plan: a vector of channels per pixel, weights prepared."""
    assert depthwise_blocked(spec) is None
    run_blocked(spec, cg.Schedule(threads=threads), backend, True, True, prepared=True,
                depthwise=True)


def test_depthwise_plan_rejects_what_it_cannot_run():
    lanes = block_lanes("float32")
    spec = cg.ConvSpec(input_shape=(1, 2 * lanes, 6, 6), out_channels=2 * lanes,
                       kernel_size=3, groups=2 * lanes)
    plan = make_plan(spec, depthwise=True)
    assert plan.kind.label == "dw" and plan.jobs == 2 * 4
    assert plan.in_blocked and plan.out_blocked and plan.prepared_weights
    with pytest.raises(ValueError, match="blocked layout only"):
        make_plan(spec, depthwise=True, in_blocked=False, out_blocked=True)
    assert "transposed" in depthwise_blocked(spec.replace(transposed=True))
    assert "one output channel" in depthwise_blocked(spec.replace(out_channels=4 * lanes))
    assert "multiple of" in depthwise_blocked(
        spec.replace(input_shape=(1, lanes + 2, 6, 6), out_channels=lanes + 2,
                     groups=lanes + 2))
    with pytest.raises(ValueError, match="no blocked depthwise plan"):
        make_plan(spec.replace(transposed=True), depthwise=True)


def test_layout_round_trip():
    x = np.arange(2 * 32 * 3 * 5, dtype=np.float32).reshape(2, 32, 3, 5)
    blocked = to_blocked(x, 16)
    assert blocked.shape == (2, 2, 3, 5, 16)
    assert blocked[1, 1, 2, 4, 3] == x[1, 16 + 3, 2, 4]
    np.testing.assert_array_equal(from_blocked(blocked), x)
    with pytest.raises(ValueError, match="not a multiple of 16"):
        to_blocked(x[:, :20], 16)


def test_unsupported_plans_name_the_reason():
    lanes = block_lanes("float32")
    depthwise = cg.ConvSpec(input_shape=(1, 2 * lanes, 8, 8), out_channels=2 * lanes,
                            kernel_size=3, padding=1, groups=2 * lanes)
    plan = make_plan(depthwise, cg.Schedule(tile_co=1, tile_spatial=(2, 8)))
    assert "multiple of" in supports_blocked(plan)
    with pytest.raises(ValueError, match="no blocked layout"):
        make_plan(depthwise, plan.schedule, in_blocked=True, out_blocked=True)
    pointwise = cg.ConvSpec(input_shape=(1, lanes, 8, 8), out_channels=lanes, kernel_size=1)
    plan = make_plan(pointwise, cg.Schedule(tile_co=4, method="gemm"))
    assert "GEMM" in supports_blocked(plan)
    wide = cg.ConvSpec(input_shape=(1, lanes, 8, 8), out_channels=lanes, kernel_size=3)
    plan = make_plan(wide, cg.Schedule(tile_co=4, tile_spatial=(2, 8)))
    assert "\"w\" plan" in supports_blocked(plan)
    assert supports_blocked(make_plan(wide, cg.Schedule(tile_co=lanes, vectorize="co"))) is None
