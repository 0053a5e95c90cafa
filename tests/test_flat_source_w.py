"""Issue 19 row 2, the direct "w" plan: the generated source does not grow with the output
(W tiles per class, interior runs shifted; D/H tables folded), and the runs, classes and
folds compute what the oracle does."""

from __future__ import annotations

import time

import pytest

import convgen as cg
from convgen.plan.core import make_plan, vector_tables

from helpers import CPU_BACKENDS, assert_source_flat, check_kernel

W = cg.Schedule(vectorize="w")


SIZED = {
    "k3": lambda n: cg.ConvSpec((1, 1, n), 1, kernel_size=3, padding=1),
    "reflect k5": lambda n: cg.ConvSpec((1, 2, n), 4, kernel_size=5, padding=2,
                                        padding_mode="reflect"),
    "stride 3 dilation 2": lambda n: cg.ConvSpec((1, 2, n), 4, kernel_size=3, stride=3,
                                                 dilation=2, padding=2),
    "transposed stride 2": lambda n: cg.ConvSpec((1, 2, n // 2), 4, kernel_size=4, stride=2,
                                                 padding=1, transposed=True),
    "transposed stride 3": lambda n: cg.ConvSpec((1, 2, n // 3), 4, kernel_size=5, stride=3,
                                                 padding=2, transposed=True),
    "tall 2D": lambda n: cg.ConvSpec((1, 2, n // 8, 8), 4, kernel_size=3, padding=1),
}


@pytest.mark.parametrize("name", SIZED)
def test_source_size_is_flat_in_the_output_size(name):
    assert_source_flat(SIZED[name](10**3), SIZED[name](10**6), W)


def test_reads_are_listed_for_border_positions_only():
    """A row's reads are by position: only positions near the row's ends are listed."""
    plan = make_plan(SIZED["k3"](10**6), W)
    positions = vector_tables(plan).positions
    assert positions is not None and not vector_tables(plan).runs
    assert positions.hi - positions.lo > 10**6 - 100  # every other position: a vector load
    assert len(positions.modes) <= 4 * plan.vector_lanes


def test_transposed_phases_form_one_run_each_and_border_tiles_their_own():
    plan = make_plan(SIZED["transposed stride 2"](10**6), W)
    tables = vector_tables(plan)
    assert tables.positions is None
    assert len(tables.runs) <= 8
    assert sum(run.count for run in tables.runs) == plan.n_tiles[3]
    interior = max(tables.runs, key=lambda run: run.count)
    assert interior.in_shift == plan.tile[2]  # a tile further in a phase: TW inputs on
    assert interior.out_shift == 2 * plan.tile[2]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_a_kernel_as_wide_as_the_row_compiles_small_and_matches_the_oracle(backend):
    """Issue 19 row 2: 10**4 taps, padding "same", over 10**4 samples made 644 MB of C."""
    spec = cg.ConvSpec((1, 1, 10**4), 1, kernel_size=10**4, padding="same")
    start = time.perf_counter()
    kernel = cg.compile(spec, backend=backend)
    assert time.perf_counter() - start < 60
    assert len(kernel.source) < 1 << 20, len(kernel.source)
    check_kernel(kernel, spec)


# long enough for interior runs of several tiles and folds of several periods, with
# every read mode: loads, masked loads, stride-2 pairs (whose last run tile must not read
# past the row), gathers (stride 3, reflect and circular borders), transposed phases
CHECKED = [
    cg.ConvSpec((1, 2, 301), 3, kernel_size=5, padding=2, bias=True),
    cg.ConvSpec((1, 2, 300), 3, kernel_size=3, stride=2, padding=1),
    cg.ConvSpec((1, 2, 301), 3, kernel_size=3, stride=2, padding=0),
    cg.ConvSpec((1, 2, 299), 3, kernel_size=3, stride=3, dilation=2, padding=3,
                activation="relu"),
    cg.ConvSpec((1, 2, 257), 3, kernel_size=5, padding=2, padding_mode="reflect"),
    cg.ConvSpec((1, 2, 257), 3, kernel_size=4, padding=[(3, 0)], padding_mode="circular"),
    cg.ConvSpec((1, 2, 257), 3, kernel_size=3, padding=1, padding_mode="replicate", flip=True),
    cg.ConvSpec((1, 2, 120), 3, kernel_size=4, stride=2, padding=1, transposed=True,
                bias=True),
    cg.ConvSpec((1, 2, 97), 3, kernel_size=5, stride=3, padding=2, dilation=2,
                transposed=True),
    cg.ConvSpec((1, 2, 40, 70), 3, kernel_size=3, padding=1),
    cg.ConvSpec((1, 2, 41, 66), 3, kernel_size=(3, 5), stride=(2, 1), padding=(1, 2),
                padding_mode="reflect"),
    cg.ConvSpec((1, 2, 33, 40), 3, kernel_size=3, stride=2, padding=1, transposed=True),
    cg.ConvSpec((1, 2, 18, 12, 40), 3, kernel_size=3, padding=1),
    # wider than MAX_UNROLLED_TAPS: the LLVM kernel loops over the taps
    cg.ConvSpec((1, 2, 200), 3, kernel_size=40, stride=2, padding=20, dilation=2, flip=True),
    cg.ConvSpec((1, 2, 150), 3, kernel_size=37, padding="same", padding_mode="reflect"),
]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("index", range(len(CHECKED)),
                         ids=[spec.name for spec in CHECKED])
def test_runs_and_folds_match_the_oracle(backend, index):
    spec = CHECKED[index]
    # 16 lanes in tiles of one vector, or 8 lanes in tiles of three (a partial last vector
    # whose lanes reach into the next tile)
    width, tile = ((16, 16), (8, 24))[index % 2]
    tiles = (1,) * (spec.ndim - 1) + (tile,)
    schedule = cg.Schedule(vectorize="w", tile_co=2, tile_spatial=tiles, vector_width=width)
    check_kernel(cg.compile(spec, backend=backend, schedule=schedule), spec, seed=3)
