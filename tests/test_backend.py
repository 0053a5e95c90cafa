"""Every backend against the oracle: property tests over specs and schedules."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import convgen as cg
from convgen.tolerance import max_error, tolerance

from strategies import (arrays_for, co_schedules, conv_specs, schedules, transposed_specs,
                        wide_specs)


def check(kernel, spec, seed=0):
    x, w, b = arrays_for(spec, seed)
    got = kernel(x, w, b)
    want = cg.reference(spec, x, w, b)
    assert got.dtype == np.dtype(spec.dtype)
    assert got.shape == spec.output_shape
    err = max_error(got, want)
    assert err <= tolerance(spec), f"{spec}: max error {err} > {tolerance(spec)}"


@settings(max_examples=60)
@given(spec=conv_specs())
def test_default_schedule_matches_oracle(backend, spec):
    check(cg.compile(spec, backend=backend), spec)


@settings(max_examples=40)
@given(data=st.data())
def test_any_schedule_matches_oracle(backend, data):
    spec = data.draw(conv_specs())
    schedule = data.draw(schedules(spec, backend))
    check(cg.compile(spec, backend=backend, schedule=schedule), spec, seed=1)


@settings(max_examples=40)
@given(data=st.data())
def test_co_plan_matches_oracle(data):
    """vectorize="co" (C only) with whole vectors of output channels and remainders:
    every rank, stride, dilation, padding mode, groups, flip, bias, activation."""
    spec = data.draw(wide_specs())
    schedule = data.draw(co_schedules(spec))
    check(cg.compile(spec, backend="c", schedule=schedule), spec, seed=3)


@settings(max_examples=40)
@given(data=st.data())
def test_transposed_co_plan_matches_oracle(data):
    """vectorize="co" on transposed convolutions (C only): stride-phase pieces, per-row
    tap lists, strides 1-3, dilation, output_padding, pads, groups, flip, every rank,
    channel remainders, 1 or 2 threads."""
    spec = data.draw(transposed_specs())
    schedule = data.draw(co_schedules(spec))
    check(cg.compile(spec, backend="c", schedule=schedule), spec, seed=5)


def test_transposed_co_plan_with_residual_and_threads():
    """The bench layer's shape, smaller: 4x4 stride 2 pad 1, whole pieces of a phase,
    a remainder channel block, two threads, fused bias and activation."""
    spec = cg.ConvSpec((3, 8, 6, 7), 40, kernel_size=4, stride=2, padding=1, transposed=True,
                       activation="relu")
    kernel = cg.compile(spec, backend="c")
    assert kernel.schedule.vectorize == "co"
    check(kernel, spec, seed=6)
    two = cg.Schedule(tile_co=32, tile_spatial=(2, 5), threads=2, vectorize="co")
    check(cg.compile(spec, backend="c", schedule=two), spec, seed=7)


@settings(max_examples=20)
@given(spec=wide_specs())
def test_default_schedule_with_wide_channels(backend, spec):
    """The default plan for 16+ channels per group: "co" on C, "w" on LLVM."""
    kernel = cg.compile(spec, backend=backend)
    assert kernel.schedule.vectorize == ("co" if backend == "c" else "w")
    check(kernel, spec, seed=4)


def test_llvm_rejects_co():
    spec = cg.ConvSpec((1, 4, 6, 6), 16, kernel_size=3, padding=1)
    with pytest.raises(cg.ScheduleError, match="vectorize"):
        cg.compile(spec, backend="llvm", schedule=cg.Schedule(tile_co=16, vectorize="co"))


@pytest.mark.parametrize("ndim", [1, 2, 3])
@settings(max_examples=15)
@given(data=st.data())
def test_each_rank_matches_oracle(backend, ndim, data):
    spec = data.draw(conv_specs(ndim=ndim))
    check(cg.compile(spec, backend=backend), spec, seed=2)


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
    check(cg.compile(spec, backend=backend), spec)


def test_bad_backend_name():
    spec = cg.ConvSpec((1, 1, 5), 1)
    with pytest.raises(ValueError, match="backend"):
        cg.compile(spec, backend="fortran")
    with pytest.raises(TypeError, match="ConvSpec"):
        cg.compile({"input_shape": (1, 1, 5)})
