"""Kernels with their weights bound (convgen.bind): prepared once, checked against the oracle.

A bound Winograd kernel (C or LLVM) reads U, transformed and packed once by
convgen.plan.weights.prepare_weight, a bound "co" kernel its channel blocks packed once; every
other plan reads the weight as given.
Each is compared with the oracle over random specs and schedules.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import convgen as cg
from convgen.plan.weights import prepares
from convgen.plan.core import make_plan
from convgen.records import best_record, record
from convgen.reference import random_arrays
from convgen.tuning.tuner import Measurement

from helpers import BACKENDS, CPU_BACKENDS, assert_matches_oracle
from strategies import co_schedules, conv_specs, schedules, wide_specs


def check_bound(spec: cg.ConvSpec, backend: str, schedule: cg.Schedule | None = None,
                seed: int = 0) -> cg.BoundKernel:
    x, w, b = random_arrays(spec, seed)
    bound = cg.bind(spec, w, b, backend=backend, schedule=schedule)
    assert_matches_oracle(spec, bound(x), x, w, b)
    out = np.full(spec.output_shape, np.nan, spec.dtype)
    assert bound(x, out=out) is out
    assert_matches_oracle(spec, out, x, w, b)
    return bound


@settings(max_examples=25, deadline=None)
@given(spec=conv_specs(), backend=st.sampled_from(BACKENDS))
def test_bound_default_schedule_matches_oracle(spec, backend):
    bound = check_bound(spec, backend)
    assert bound.schedule == cg.default_schedule(spec, backend, prepared_weights=True)


@settings(max_examples=25, deadline=None)
@given(data=st.data(), backend=st.sampled_from(CPU_BACKENDS))
def test_bound_co_schedules_match_oracle(data, backend):
    """The "co" plan (remainder blocks, groups, transposed; 1-2 threads) bound reads its
    channel blocks packed at load: (groups, blocks, reduction, tile_co)."""
    spec = data.draw(wide_specs())
    schedule = data.draw(co_schedules(spec))
    bound = check_bound(spec, backend, schedule)
    plan = make_plan(spec, schedule)
    assert prepares(plan)
    reduction = spec.in_channels // spec.groups * int(np.prod(spec.kernel_size))
    assert bound.weight.shape == (spec.groups, plan.n_tiles[0], reduction, plan.tile_co)


@settings(max_examples=25, deadline=None)
@given(data=st.data(), backend=st.sampled_from(CPU_BACKENDS))
def test_bound_co_rows_outer_matches_oracle(data, backend):
    """With the weights packed at load and 2+ threads, small weights put the channel
    block innermost (threads split rows); with the limit lifted every non-transposed
    bound "co" kernel on 2-3 threads does: batches, groups, remainder blocks, pieces."""
    from unittest import mock

    from convgen.plan import co

    spec = data.draw(wide_specs(transposed=False))
    schedule = data.draw(co_schedules(spec))
    schedule = dataclasses.replace(schedule, threads=data.draw(st.sampled_from([2, 3])))
    with mock.patch.object(co, "CO_ROWS_OUTER_WEIGHTS", float("inf")):
        assert co.co_rows_outer(make_plan(spec, schedule), True)
        bound = check_bound(spec, backend, schedule, seed=2)
    marker = "NPIECE * NT_CO:" if backend == "c" else "pieces x channel block"
    assert marker in bound.source


def test_bound_co_rows_outer_choice():
    """ResNet-18's 3x3/2 64->128 layer (295 KB of weights, 803 KB of input) splits rows at
    2 threads; its 512@7 layer (9.4 MB of weights) and 1 thread split channel blocks."""
    from convgen.plan.co import co_rows_outer

    two = cg.Schedule(tile_co=16, tile_spatial=(1, 28), threads=2, vectorize="co")
    strided = make_plan(cg.ConvSpec((1, 64, 56, 56), 128, 3, stride=2, padding=1), two)
    assert co_rows_outer(strided, True) and not co_rows_outer(strided, False)
    assert not co_rows_outer(make_plan(strided.spec, dataclasses.replace(two, threads=1)), True)
    deep = cg.ConvSpec((1, 512, 7, 7), 512, 3, padding=1)
    assert not co_rows_outer(make_plan(deep, dataclasses.replace(two, tile_spatial=(1, 7))), True)


@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_bound_any_schedule_matches_oracle(data):
    """Any schedule bound; the plans that prepare nothing (vectorize="w", GEMM) read the
    weight as given."""
    spec = data.draw(conv_specs())
    schedule = data.draw(schedules(spec))
    bound = check_bound(spec, "c", schedule)
    if not prepares(make_plan(spec, schedule)):
        assert bound.weight.shape == spec.weight_shape


# the transform-GEMM plans bound: U transformed and packed once (Winograd), GEMM as given
TRANSFORM_CASES = [
    (cg.ConvSpec((1, 16, 10, 9), 40, 3, padding=1, activation="relu"),
     cg.Schedule(tile_co=28, tile_spatial=(4, 4), method="winograd")),
    (cg.ConvSpec((2, 20, 7, 7), 33, 3, padding=1, groups=1, dtype="float64"),
     cg.Schedule(tile_co=14, tile_spatial=(2, 2), threads=2, method="winograd")),
    (cg.ConvSpec((1, 8, 61), 30, 3, padding="same", padding_mode="reflect"),
     cg.Schedule(tile_co=14, tile_spatial=(6,), threads=2, method="winograd")),
    (cg.ConvSpec((1, 12, 9, 9), 20, 1, stride=2, bias=False),
     cg.Schedule(tile_co=12, method="gemm")),
]


@pytest.mark.parametrize("spec, schedule", TRANSFORM_CASES)
@pytest.mark.cpu_plans
def test_bound_transform_plans_match_oracle(spec, schedule, backend):
    bound = check_bound(spec, backend, schedule, seed=3)
    plan = make_plan(spec, schedule)
    if schedule.method == "winograd":
        assert bound.weight.shape == (plan.groups, plan.kind.products, plan.cout_g,
                                      plan.cin_g)
        assert "w holds U, transformed at load" in bound.source
        assert prepares(plan)
    else:
        assert bound.weight.shape == spec.weight_shape


def test_bound_arrays_are_copied():
    """Changing the arrays after bind changes nothing."""
    spec = cg.ConvSpec((1, 16, 8, 8), 16, 3, padding=1)
    x, w, b = random_arrays(spec)
    bound = cg.bind(spec, w, b, backend="c")
    before = bound(x).copy()
    w[...] = 0
    b[...] = 0
    np.testing.assert_array_equal(bound(x), before)


def test_bind_rejects_bad_arrays():
    spec = cg.ConvSpec((1, 4, 6, 6), 8, 3)
    x, w, b = random_arrays(spec)
    with pytest.raises(TypeError, match="spec"):
        cg.bind({"input_shape": (1, 4, 6, 6)}, w, b)
    with pytest.raises(ValueError, match=r"w: expected shape \(8, 4, 3, 3\)"):
        cg.bind(spec, w[:4], b)
    with pytest.raises(TypeError, match="w: expected dtype float32"):
        cg.bind(spec, w.astype(np.float64), b)
    with pytest.raises(ValueError, match="b: the spec has bias=True"):
        cg.bind(spec, w, None)
    with pytest.raises(ValueError, match="b: the spec has bias=False"):
        cg.bind(spec.replace(bias=False), w, b)
    bound = cg.bind(spec, w, b, backend="c")
    with pytest.raises(ValueError, match="x: expected shape"):
        bound(x[:, :2])


def test_bind_uses_records_measured_bound(tmp_path, monkeypatch):
    """bind() reads the records tuned bound, compile() the others."""
    db = tmp_path / "tuning.jsonl"
    monkeypatch.setenv("CONVGEN_TUNING_DB", str(db))
    spec = cg.ConvSpec((1, 16, 12, 12), 16, 3, padding=1)
    unbound = cg.Schedule(tile_co=8, tile_spatial=(2, 12), threads=1)
    bound = cg.Schedule(tile_co=16, tile_spatial=(1, 6), threads=1, vectorize="co")
    record(spec, "c", [Measurement(unbound, 1e-6, checked=True)], db)
    record(spec, "c", [Measurement(bound, 1e-6, checked=True)], db, bound=True)
    assert best_record(spec, "c") == unbound and best_record(spec, "c", bound=True) == bound
    assert cg.compile(spec, backend="c").schedule == unbound
    assert check_bound(spec, "c").schedule == bound
