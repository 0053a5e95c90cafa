"""The vectorize="co" plan's generated source does not grow with the output size (issue 19):
pieces as runs of one body, D/H tables folded, a transposed row's taps per folded row
pair; and the kernels built that way still match the oracle where the runs hold several
pieces and the folds several periods."""

from __future__ import annotations

import time

import pytest

import convgen as cg
from convgen.plan.core import make_plan

from helpers import assert_source_flat, check_kernel

CO = cg.Schedule(vectorize="co", tile_co=16, threads=1)
# small register tiles: less source to render, the same structure
CO_1D = cg.Schedule(vectorize="co", tile_co=16, tile_spatial=(6,), threads=1)
CO_2D = cg.Schedule(vectorize="co", tile_co=16, tile_spatial=(1, 6), threads=1)


def _long(length: int) -> dict[str, tuple[cg.ConvSpec, cg.Schedule]]:
    """Specs whose output is about ``length`` columns (1D) or rows (2D)."""
    return {
        "normal": (cg.ConvSpec((1, 8, length), 16, kernel_size=3, padding=1), CO_1D),
        "stride 2": (cg.ConvSpec((1, 8, length), 16, kernel_size=3, stride=2, padding=1),
                     CO_1D),
        "transposed stride 2": (cg.ConvSpec((1, 8, length // 2), 16, kernel_size=4, stride=2,
                                            padding=1, transposed=True), CO_1D),
        "2D tall": (cg.ConvSpec((1, 8, length, 8), 16, kernel_size=3, padding=2, dilation=2,
                                padding_mode="reflect"), CO_2D),
        "2D transposed tall": (cg.ConvSpec((1, 8, length // 2, 6), 16, kernel_size=4,
                                           stride=2, padding=1, transposed=True), CO_2D),
    }


@pytest.mark.parametrize("name", list(_long(1000)))
def test_co_source_size_does_not_grow_with_the_output(name):
    assert_source_flat(_long(1000)[name][0], *_long(10**6)[name])


def test_co_plan_keeps_runs_and_folds_bounded():
    """A 10**7-column row: a few runs of pieces, the pieces themselves computed on demand
    and equal to a direct split; a transposed row's tap lists per folded row pair."""
    spec = cg.ConvSpec((1, 8, 10**7), 16, kernel_size=3, padding=1)
    start = time.perf_counter()
    co = make_plan(spec, CO).kind
    assert time.perf_counter() - start < 1.0
    assert len(co.runs) <= 4 and len(co.pieces) > 10**5
    last = co.pieces[-1]
    assert last.ow0 + last.size == 10**7
    middle = co.pieces[len(co.pieces) // 2]
    assert middle.base == middle.ow0 - 1 and co.classes[middle.cls].size == middle.size

    tall = cg.ConvSpec((1, 8, 5 * 10**5, 6), 16, kernel_size=4, stride=2, padding=1,
                       transposed=True)
    plan = make_plan(tall, CO)
    taps, h_table = plan.kind.row_taps, plan.tables[1]
    assert len(taps) == 10**6 and len(taps.lists) <= 8
    kw_tco = 4 * plan.tile_co
    for row in (0, 1, 2, 10**5, 10**5 + 1, 10**6 - 1):  # borders and the interior
        assert taps[row] == tuple((ih * 6, kh * kw_tco)
                                  for kh, ih in enumerate(h_table[row]) if ih >= 0)


def _oracle_cases() -> list[tuple[str, cg.ConvSpec, tuple[int, ...]]]:
    """Shapes whose rows hold interior runs of several pieces (tile columns 3-4) and whose
    folded D/H tables several periods; 8 output channels, one vector (small bodies)."""
    return [
        ("1D", cg.ConvSpec((1, 4, 40), 8, kernel_size=3, padding=1, bias=True), (4,)),
        ("1D stride dilation reflect",
         cg.ConvSpec((1, 4, 61), 8, kernel_size=3, stride=2, dilation=3, padding=3,
                     padding_mode="reflect"), (3,)),
        ("1D transposed stride 3 dilation",
         cg.ConvSpec((1, 4, 17), 8, kernel_size=5, stride=3, dilation=2, padding=2,
                     output_padding=1, transposed=True, activation="relu"), (3,)),
        ("2D circular dilation",
         cg.ConvSpec((2, 4, 19, 23), 8, kernel_size=3, stride=(2, 1), dilation=2, padding=2,
                     padding_mode="circular"), (3, 4)),
        ("2D transposed stride 2",
         cg.ConvSpec((1, 4, 9, 13), 8, kernel_size=4, stride=2, padding=1, transposed=True),
         (2, 3)),
    ]


@pytest.mark.parametrize("backend", ["c", "llvm"])
@pytest.mark.parametrize("case", _oracle_cases(), ids=lambda case: case[0])
def test_co_runs_and_folds_match_oracle(backend, case):
    _, spec, tile = case
    schedule = cg.Schedule(vectorize="co", tile_co=8, tile_spatial=tile, threads=1)
    co = make_plan(spec, schedule).kind
    assert max(run.count for run in co.runs) >= 3  # an interior run of several pieces
    if spec.ndim == 2:  # the H table folded: rows past the first period repeat it
        fold = co.folds[1]
        assert fold.b - fold.a >= 2 * fold.period
    check_kernel(cg.compile(spec, backend=backend, schedule=schedule), spec, seed=11)
