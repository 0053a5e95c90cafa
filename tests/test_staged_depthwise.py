"""The staged depthwise plan (vectorize="dw" on NCHW, convgen.plan.staged): what the
planner decides, what a schedule may ask for, and the default that picks it. The
kernels against the oracle on both CPU backends: tests/test_staged_depthwise_kernels.py
(its property test and cases run on "c" too)."""

from __future__ import annotations

import pytest

import convgen as cg
from convgen import ScheduleError
from convgen.plan.core import make_plan
from convgen.plan.staged import (STAGE_BYTES, StagedDepthwiseKind, stage_elements, tile_steps,
                                 vector_registers)


def depthwise(shape=(1, 8, 20, 40), multiplier=1, kernel=3, **kw) -> cg.ConvSpec:
    kw.setdefault("padding", kernel // 2 if isinstance(kernel, int) else 1)
    return cg.ConvSpec(shape, shape[1] * multiplier, kernel, groups=shape[1], **kw)


def test_the_default_for_depthwise_layers_is_the_staged_plan():
    lanes = cg.cpu.vector_lanes("float32")
    for spec in (depthwise(), depthwise(kernel=5, stride=2), depthwise((1, 4, 300)),
                 depthwise((1, 4, 6, 9, 11), kernel=3, stride=2), depthwise(multiplier=2)):
        assert cg.default_schedule(spec).vectorize == "dw", spec
        assert isinstance(make_plan(spec).kind, StagedDepthwiseKind)
    # a vector of output channels per group fills the "co" plan's lanes instead; grouped
    # (not depthwise), transposed and single-channel convolutions keep their plans
    assert cg.default_schedule(depthwise(multiplier=lanes)).vectorize == "co"
    assert cg.default_schedule(cg.ConvSpec((1, 8, 20, 40), 8, 3, groups=4)).vectorize != "dw"
    assert cg.default_schedule(depthwise(transposed=True)).vectorize != "dw"
    assert cg.default_schedule(cg.ConvSpec((1, 1, 20, 40), 4, 3)).vectorize != "dw"


def test_a_schedule_asks_for_what_the_plan_can_do():
    with pytest.raises(ScheduleError, match="vectorize.*depthwise"):
        make_plan(cg.ConvSpec((1, 8, 20, 40), 8, 3, groups=4), cg.Schedule(vectorize="dw"))
    with pytest.raises(ScheduleError, match="vectorize.*depthwise"):
        make_plan(depthwise(transposed=True), cg.Schedule(vectorize="dw"))
    with pytest.raises(ScheduleError, match="vector_width"):
        make_plan(depthwise(), cg.Schedule(vectorize="dw", vector_width=8))
    with pytest.raises(ScheduleError, match="one output depth at a time"):
        make_plan(depthwise((1, 4, 6, 9, 11)), cg.Schedule(vectorize="dw",
                                                            tile_spatial=(2, 2, 16)))
    with pytest.raises(ScheduleError, match="accumulators"):
        make_plan(depthwise((1, 4, 80, 400)), cg.Schedule(vectorize="dw",
                                                           tile_spatial=(16, 128)))
    with pytest.raises(ScheduleError, match="needs 2 entries"):
        make_plan(depthwise(), cg.Schedule(vectorize="dw", tile_spatial=(16,)))
    # tiles clamp to the output, as every plan's
    plan = make_plan(depthwise((1, 2, 5, 7)), cg.Schedule(vectorize="dw",
                                                           tile_spatial=(8, 64)))
    assert plan.kind.rows == 5 and plan.kind.vectors == 1


def test_the_planner_stages_rows_in_bands_that_fit_the_cache():
    spec = depthwise((1, 4, 200, 200), kernel=7)
    plan = make_plan(spec, cg.Schedule(vectorize="dw", threads=1))
    kind = plan.kind
    # a whole 200-row plane does not fit: bands of whole register tiles that do
    assert kind.band < 200 and kind.band % kind.rows == 0
    assert stage_elements(plan) * 4 <= STAGE_BYTES
    assert kind.bands == -(-200 // kind.band) and plan.jobs == 4 * kind.bands
    # each band stages its rows once: its whole tiles' rows and the kernel's reach
    assert kind.stage_rows == (-(-kind.band // kind.rows) * kind.rows - 1) + 6 + 1
    # a small plane is one band; at 2 threads with few planes, bands for both threads
    small = make_plan(depthwise((1, 4, 20, 40)), cg.Schedule(vectorize="dw", threads=1))
    assert small.kind.bands == 1
    shared = make_plan(depthwise((1, 1, 40, 40)), cg.Schedule(vectorize="dw", threads=2))
    assert shared.jobs >= 2


def test_stride_phases_make_every_tap_a_run_of_columns():
    # 5x5 stride 2: taps kw read phases 0, 1, 0, 1, 0 at shifts 0, 0, 1, 1, 2
    plan = make_plan(depthwise((1, 4, 20, 40), kernel=5, stride=2, padding=2),
                     cg.Schedule(vectorize="dw"))
    kind = plan.kind
    assert kind.phases == 2 and kind.row_length % plan.vector_lanes == 0
    assert kind.tap_offsets == (0, kind.row_length, 1, kind.row_length + 1, 2)
    # padded columns 0, 1 are padding: staged column 0 of each phase is a table column
    assert kind.left == 1 and kind.left_cols == ((-1,), (-1,))
    # zero padding: the tables hold only -1 (padding) and input columns
    assert all(c == -1 or 0 <= c < 40 for cols in kind.right_cols for c in cols)
    # rows: padded row = input row + pad_top; the top two padded rows are padding
    assert kind.pad_top == 2 and kind.top_rows == (-1, -1) and kind.h_stride == 2
    reflect = make_plan(depthwise((1, 4, 20, 40), kernel=5, padding=2,
                                  padding_mode="reflect"), cg.Schedule(vectorize="dw")).kind
    assert reflect.top_rows == (2, 1) and reflect.bottom_rows == (18, 17)


def test_a_register_tile_loads_each_shared_row_once():
    # 3x3 stride 1 over 4 rows: rows 0..5 feed the 12 (row, kh) pairs; every weight fits
    kind = make_plan(depthwise((1, 4, 20, 40)),
                     cg.Schedule(vectorize="dw", tile_spatial=(4, 32))).kind
    steps = tile_steps(kind, (1, 3, 3))
    assert len(steps) == 1 and steps[0][0] == list(range(9))
    rows = {row for _, reads in steps for row, _, _ in reads}
    assert rows == set(range(6))
    fmas = sum(len(users) for _, reads in steps for _, _, users in reads)
    assert fmas == 4 * 9  # every (tile row, tap) once
    # 7x7 stride 2: taps kh grouped by parity (rows shared two apart), as many as fit
    kind = make_plan(depthwise((1, 4, 56, 56), kernel=7, stride=2, padding=3),
                     cg.Schedule(vectorize="dw", tile_spatial=(4, 32))).kind
    steps = tile_steps(kind, (1, 7, 7))
    assert sorted(w for weights, _ in steps for w in weights) == list(range(49))
    for weights, reads in steps:
        assert len(weights) + kind.rows * kind.vectors + 3 <= vector_registers()
        assert len({w // 7 % 2 for w in weights}) == 1  # one parity of kh per step
    assert sum(len(users) for _, reads in steps for _, _, users in reads) == 4 * 49


def test_explain_describes_the_staged_plan():
    from convgen.plan.core import describe_plan

    text = "\n".join(describe_plan(make_plan(depthwise(kernel=5, stride=2, padding=2))))
    assert "vectorize='dw'" in text and "2 stride phase(s)" in text
    assert "bytes per job" in text and "vector accumulators" in text
