"""The transform-GEMM plans on both backends: Winograd F(m, r) and 1x1 convolution as a GEMM.

The matrices are checked exactly (Fractions, no compiler); the kernels against the NumPy
oracle over 1D/2D shapes, kernel sizes, tiles, register tiles, channels with remainders,
groups, batch, bias, activations, padding modes, flip, threads and dtypes; the schedule's
errors; the defaults and ``explain``; and a small network whose default plans are
Winograd (one with a fused residual) and GEMM.

Accuracy domain: the transforms' rounding error does not shrink with the reduction length
that tolerance(spec) scales with, so large 2D tiles with 1-2 input channels exceeded it:
over 20 seeds of 32x32 inputs, F(7x7, 2x2) measured 2.3x (float32) and 3.0x (float64) the
tolerance with 1 channel, 1.2x with 2; F(7x6, 2x3) 1.7x / 1.8x; F(5x5, 2x2) 1.2x. Tiles
transformed in both dims are therefore limited to 4 outputs per dim (winograd.MAX_TILE_2D);
every such tile measured at most 0.46x with 1 input channel (kernels 2-5, 8 seeds, both
dtypes), 1D tiles at most 0.42x. The property tests draw every legal tile.
"""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import convgen as cg
from convgen import nn
from convgen.cli.main import main
from convgen.plan.core import describe_plan, make_plan
from convgen.plan.defaults import default_schedule
from convgen.plan.winograd import MAX_ALPHA, MAX_CO_ROWS, MAX_TILE_2D, WinogradPlan, \
    split_output_channels, \
    tile_vectors, winograd_matrices

from helpers import CPU_BACKENDS as BACKENDS, check_kernel, compiled

# CPU plan kinds: the backend argument runs over the CPU backends
pytestmark = pytest.mark.cpu_plans
from strategies import ACTIVATION_CHOICES, arrays_for

PADDING_MODES = ["zeros", "zeros", "reflect", "replicate", "circular"]


def run(spec: cg.ConvSpec, schedule: cg.Schedule, seed: int = 0,
        backend: str = "c") -> cg.Kernel:
    """Compile ``spec`` with ``schedule`` on ``backend``, check that the plan is the
    transform-GEMM one asked for, and compare with the oracle."""
    kernel = compiled(spec, backend, schedule)
    plan = make_plan(spec, schedule)
    assert isinstance(plan.kind, WinogradPlan) and plan.kind.method == schedule.method
    check_kernel(kernel, spec, seed)
    return kernel


# -- the matrices (exact, no compiler) ---------------------------------------------------------

LEGAL_FMR = [(m, r) for r in range(1, MAX_ALPHA + 1) for m in range(1, MAX_ALPHA + 2 - r)]


@pytest.mark.parametrize("m, r", LEGAL_FMR, ids=[f"F{m}-{r}" for m, r in LEGAL_FMR])
def test_winograd_matrices_compute_the_correlation_exactly(m, r):
    """y = AT ((G g) * (BT d)) is y[i] = sum_k g[k] d[i + k] for every g and d: the bilinear
    form is exact on unit vectors, g = e_k and d = e_l give y[i] = [l - i == k]."""
    at, g, bt = winograd_matrices(m, r)
    alpha = m + r - 1
    assert len(at) == m and all(len(row) == alpha for row in at)
    assert len(g) == alpha and all(len(row) == r for row in g)
    assert len(bt) == alpha and all(len(row) == alpha for row in bt)
    for row in (*at, *g, *bt):
        assert all(isinstance(v, Fraction) for v in row)
    for k in range(r):
        for lo in range(alpha):
            y = [sum(at[i][j] * g[j][k] * bt[j][lo] for j in range(alpha)) for i in range(m)]
            assert y == [Fraction(int(lo - i == k)) for i in range(m)], (m, r, k, lo)


@pytest.mark.parametrize("m, r", LEGAL_FMR, ids=[f"F{m}-{r}" for m, r in LEGAL_FMR])
def test_input_transform_rows_are_coprime_integers(m, r):
    """Each row of BT is scaled to coprime integers (the scale moves into G)."""
    _, _, bt = winograd_matrices(m, r)
    for row in bt:
        assert all(v.denominator == 1 for v in row)
        assert math.gcd(*(int(v) for v in row)) == 1


def test_f23_matches_lavin_up_to_row_scaling():
    """F(2, 3) equals Lavin & Gray's matrices with each product xi scaled: BT row xi by
    b_xi, G row xi by g_xi and AT column xi by a_xi, with a_xi * g_xi * b_xi = 1."""
    half = Fraction(1, 2)
    lavin_bt = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
    lavin_g = [[1, 0, 0], [half, half, half], [half, -half, half], [0, 0, 1]]
    lavin_at = [[1, 1, 1, 0], [0, 1, -1, -1]]
    at, g, bt = winograd_matrices(2, 3)

    def ratio(ours: list[Fraction], theirs: list) -> Fraction:
        """The one c with ours == c * theirs (a nonzero multiple, or the test fails)."""
        pivot = next(i for i, v in enumerate(theirs) if v != 0)
        c = Fraction(ours[pivot]) / Fraction(theirs[pivot])
        assert c != 0 and list(ours) == [c * Fraction(v) for v in theirs], (ours, theirs)
        return c

    for xi in range(4):
        b = ratio(bt[xi], lavin_bt[xi])
        gg = ratio(g[xi], lavin_g[xi])
        a = ratio([row[xi] for row in at], [row[xi] for row in lavin_at])
        assert a * gg * b == 1, xi


def test_matrices_reject_empty_filters():
    with pytest.raises(ValueError):
        winograd_matrices(0, 3)
    with pytest.raises(ValueError):
        winograd_matrices(2, 0)


# -- strategies ------------------------------------------------------------------------------

@st.composite
def winograd_cases(draw, ndim: int, dtype: str | None = None):
    """(spec, schedule) for method "winograd": kernels 1-5 per dim (at least one > 1),
    every legal tile, register tiles 1-30, channel remainders, groups, batch, bias,
    activations, every padding form and mode, dilation 1-3 (zero padding), flip, threads,
    tiny and ragged outputs."""
    if ndim == 1:
        kernel = (draw(st.integers(2, 5)),)
    else:
        kernel = (draw(st.integers(1, 5)), draw(st.integers(1, 5)))
        assume(kernel != (1, 1))
    most = MAX_TILE_2D if all(k > 1 for k in kernel) and len(kernel) == 2 else MAX_ALPHA
    tiles = tuple(1 if k == 1 else draw(st.integers(2, min(most, MAX_ALPHA + 1 - k)))
                  for k in kernel)
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    cin_g = draw(st.sampled_from([1, 2, 3, 5, 9, 17]))
    cout_g = draw(st.sampled_from([1, 3, 7, 13, 16, 29, 33]))
    spatial = tuple(draw(st.integers(1, 30 if ndim == 1 else 11)) for _ in kernel)
    form = draw(st.sampled_from(["int", "pairs", "same", "valid", "full"]))
    if form == "int":
        padding = draw(st.integers(0, 2))
    elif form == "pairs":
        padding = tuple((draw(st.integers(0, 3)), draw(st.integers(0, 3))) for _ in kernel)
    else:
        padding = form
    mode = draw(st.sampled_from(PADDING_MODES))
    # dilated: only with zero padding (tiles per dilation phase)
    dilation = (tuple(draw(st.sampled_from([1, 1, 2, 3])) for _ in kernel)
                if mode == "zeros" else 1)
    try:
        spec = cg.ConvSpec(
            input_shape=(draw(st.integers(1, 2)), groups * cin_g, *spatial),
            out_channels=groups * cout_g, kernel_size=kernel, padding=padding,
            padding_mode=mode, dilation=dilation, groups=groups,
            bias=draw(st.booleans()), activation=draw(st.sampled_from(ACTIVATION_CHOICES)),
            flip=draw(st.booleans()),
            dtype=dtype or draw(st.sampled_from(["float32", "float32", "float64"])))
    except cg.SpecError:
        assume(False)  # e.g. reflect padding wider than the input, or an empty output
    schedule = cg.Schedule(tile_co=draw(st.integers(1, MAX_CO_ROWS)), tile_spatial=tiles,
                           threads=draw(st.sampled_from([1, 1, 2])), method="winograd")
    return spec, schedule


@st.composite
def gemm_cases(draw, ndim: int):
    """(spec, schedule) for method "gemm": 1x1 kernels with strides 1-3, padding (every
    mode), groups, register tiles 1-30, pixel counts with partial last blocks, in place
    (stride 1, no padding) or staged."""
    in_place = draw(st.booleans())
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    cin_g = draw(st.sampled_from([1, 2, 5, 8, 17]))
    cout_g = draw(st.sampled_from([1, 3, 8, 15, 16, 31]))
    spatial = tuple(draw(st.integers(1, 70 if ndim == 1 else 13)) for _ in range(ndim))
    if in_place:
        stride, padding = 1, 0
    else:
        stride = tuple(draw(st.integers(1, 3)) for _ in range(ndim))
        padding = draw(st.sampled_from([0, 1, 2, "same"]))
    try:
        spec = cg.ConvSpec(
            input_shape=(draw(st.integers(1, 2)), groups * cin_g, *spatial),
            out_channels=groups * cout_g, kernel_size=1, stride=stride, padding=padding,
            padding_mode=draw(st.sampled_from(PADDING_MODES)), groups=groups,
            bias=draw(st.booleans()), activation=draw(st.sampled_from(ACTIVATION_CHOICES)),
            flip=draw(st.booleans()), dtype=draw(st.sampled_from(["float32", "float64"])))
    except cg.SpecError:
        assume(False)
    schedule = cg.Schedule(tile_co=draw(st.integers(1, MAX_CO_ROWS)),
                           threads=draw(st.sampled_from([1, 1, 2])), method="gemm")
    return spec, schedule


# -- Winograd against the oracle ---------------------------------------------------------------

@settings(max_examples=20, deadline=None)
@given(case=winograd_cases(ndim=1))
def test_winograd_1d_matches_oracle(case):
    run(*case)


@settings(max_examples=25, deadline=None)
@given(case=winograd_cases(ndim=2, dtype="float32"))
def test_winograd_2d_float32_matches_oracle(case):
    run(*case, seed=1)


@settings(max_examples=15, deadline=None)
@given(case=winograd_cases(ndim=2, dtype="float64"))
def test_winograd_2d_float64_matches_oracle(case):
    run(*case, seed=2)


# LLVM (convgen/llvm_wino.py): every patch element gathered through an offset table, so
# every padding mode and dilation take one path; outputs scattered with the epilogue

@settings(max_examples=12, deadline=None)
@given(case=winograd_cases(ndim=1))
def test_winograd_1d_llvm_matches_oracle(case):
    run(*case, seed=11, backend="llvm")


@settings(max_examples=15, deadline=None)
@given(case=winograd_cases(ndim=2))
def test_winograd_2d_llvm_matches_oracle(case):
    run(*case, seed=12, backend="llvm")


# id: (input shape, out channels, kernel, spec fields, schedule fields)
WINOGRAD_CASES = {
    # the default tiles of 3x3 layers; 2 vectors of tiles (tile_co 14) and 1 (tile_co 16)
    "f2x2-3x3-2vectors": ((1, 16, 9, 10), 16, 3, dict(padding=1), dict(tile_co=14,
                                                                      tile_spatial=(2, 2))),
    "f4x4-3x3-1vector": ((1, 16, 9, 10), 17, 3, dict(padding=1), dict(tile_co=16,
                                                                     tile_spatial=(4, 4))),
    "f4x4-3x3-30rows-threads": ((2, 19, 13, 11), 33, 3, dict(padding=1, activation="relu"),
                                dict(tile_co=30, tile_spatial=(4, 4), threads=2)),
    # long 1D rows, the 1D default F(6, 3)
    "1d-f6-3": ((2, 5, 61), 7, 3, dict(padding="same"), dict(tile_co=7, tile_spatial=(6,))),
    "1d-f4-5-circular": ((1, 3, 23), 4, 5, dict(padding=2, padding_mode="circular"),
                         dict(tile_co=4, tile_spatial=(4,))),
    # mixed kernels: a dim of kernel 1 takes tile 1
    "mixed-1x3": ((1, 4, 6, 9), 5, (1, 3), dict(padding=(0, 1)), dict(tile_co=5,
                                                                       tile_spatial=(1, 4))),
    "mixed-3x1": ((1, 4, 9, 6), 5, (3, 1), dict(padding=(1, 0), padding_mode="reflect"),
                  dict(tile_co=3, tile_spatial=(5, 1))),
    "mixed-3x5-same": ((1, 6, 8, 9), 6, (3, 5), dict(padding="same", flip=True),
                       dict(tile_co=6, tile_spatial=(3, 4))),
    # even kernels: "same" padding is asymmetric
    "2x2-same": ((1, 3, 7, 8), 4, 2, dict(padding="same", padding_mode="replicate"),
                 dict(tile_co=2, tile_spatial=(3, 4))),
    "4x4-pairs": ((1, 3, 9, 9), 4, 4, dict(padding=((2, 1), (0, 3))), dict(
        tile_co=4, tile_spatial=(2, 4))),
    # outputs smaller than one tile, and a single output pixel
    "tiny-output": ((1, 2, 4, 4), 3, 3, dict(), dict(tile_co=3, tile_spatial=(4, 4))),
    "one-pixel": ((2, 2, 3, 3), 3, 3, dict(activation="sigmoid"), dict(
        tile_co=2, tile_spatial=(4, 4))),
    # groups with channel remainders, float64, 2 threads
    "groups-float64": ((2, 18, 7, 7), 10, 3, dict(groups=2, padding=1, dtype="float64",
                                                   activation=("leaky_relu", 0.1)),
                       dict(tile_co=4, tile_spatial=(3, 3), threads=2)),
    "depthwise": ((1, 6, 8, 8), 6, 3, dict(groups=6, padding=1, bias=False),
                  dict(tile_co=1, tile_spatial=(4, 4))),
    # dilated: tiles per dilation phase, phases with fewer outputs than others, bias and
    # a fused activation through the strided copy-out
    "dilated-2x2": ((1, 16, 13, 14), 17, 3, dict(padding=2, dilation=2, activation="relu"),
                    dict(tile_co=14, tile_spatial=(2, 2), threads=2)),
    "dilated-2x3-f4": ((2, 5, 17, 11), 6, 3, dict(padding=(2, 3), dilation=(2, 3)),
                       dict(tile_co=6, tile_spatial=(4, 3))),
    "dilated-1d-d8": ((1, 16, 203), 20, 3, dict(padding=8, dilation=8, activation="relu"),
                      dict(tile_co=14, tile_spatial=(6,), threads=2)),
    "dilated-1d-valid": ((1, 3, 40), 4, 4, dict(dilation=5, flip=True),
                         dict(tile_co=4, tile_spatial=(5,))),
    "dilated-mixed-3x1": ((1, 4, 12, 7), 5, (3, 1), dict(padding=(3, 0), dilation=3),
                          dict(tile_co=5, tile_spatial=(3, 1))),
}


@pytest.mark.parametrize("case", sorted(WINOGRAD_CASES))
def test_winograd_cases_match_oracle(case, backend):
    shape, cout, kernel, fields, schedule_fields = WINOGRAD_CASES[case]
    spec = cg.ConvSpec(shape, cout, kernel, **fields)
    schedule = cg.Schedule(method="winograd", **schedule_fields)
    source = run(spec, schedule, backend=backend).source
    plan = make_plan(spec, schedule)
    (m_h, m_w), (k_h, k_w) = plan.kind.tile, plan.kernel[1:]
    assert f"Winograd F({m_h}x{m_w}, {k_h}x{k_w})" in source


@pytest.mark.parametrize("tile_co, vectors", [(1, 2), (14, 2), (16, 1), (30, 1)])
def test_register_tile_vectors_of_tiles(tile_co, vectors):
    """Small register tiles (14 channels or fewer) take 2 vectors of tiles, large ones 1."""
    spec = cg.ConvSpec((1, 8, 9, 9), 32, 3, padding=1)
    plan = make_plan(spec, cg.Schedule(tile_co=tile_co, tile_spatial=(2, 2), method="winograd"))
    assert tile_vectors(tile_co) == vectors
    assert plan.kind.vectors == vectors and plan.kind.co_rows == tile_co
    assert plan.kind.block_tiles == vectors * plan.vector_lanes


# (spec, schedule) compiled with the portable gathers and with one block per output chunk
PLAN_VARIANTS = [
    (cg.ConvSpec((1, 5, 13, 13), 6, 3, padding=1, activation="relu"),  # zeros: masked gathers
     cg.Schedule(tile_co=6, tile_spatial=(2, 2), method="winograd")),
    (cg.ConvSpec((2, 9, 11, 12), 4, (3, 2), padding="same", dtype="float64"),
     cg.Schedule(tile_co=4, tile_spatial=(3, 2), threads=2, method="winograd")),
    (cg.ConvSpec((1, 3, 12, 10), 17, 3, padding=1, padding_mode="reflect", flip=True),
     cg.Schedule(tile_co=16, tile_spatial=(2, 3), method="winograd")),  # staged copy
    (cg.ConvSpec((1, 2, 80), 3, 5, padding=((4, 1),), dtype="float64"),
     cg.Schedule(tile_co=3, tile_spatial=(3,), threads=2, method="winograd")),
]


@pytest.mark.parametrize("spec, schedule", PLAN_VARIANTS)
def test_portable_gathers_match_oracle(monkeypatch, spec, schedule):
    """Without AVX-512 the (masked) gathers are lane-by-lane C."""
    from convgen.backends.c import render

    monkeypatch.setattr(render, "cpu_flags", lambda: frozenset())
    kernel = cg.compile(spec, backend="c", schedule=schedule)
    assert "_mm512" not in kernel.source
    check_kernel(kernel, spec, seed=7)


@pytest.mark.parametrize("spec, schedule", PLAN_VARIANTS)
def test_outputs_copied_out_per_block_match_oracle(monkeypatch, spec, schedule):
    """Outputs are copied out per chunk of blocks (winograd.CHUNK_BYTES): with one block per
    chunk, tile rows end mid-block and some chunks complete no row."""
    from convgen.plan import winograd

    monkeypatch.setattr(winograd, "CHUNK_BYTES", 1)
    plan = make_plan(spec, schedule)
    assert len(plan.kind.chunks) == plan.kind.blocks > 1
    check_kernel(cg.compile(spec, backend="c", schedule=schedule), spec, seed=8)


# (spec, schedule): few blocks, 2 threads: each block's output channels split in parts
CO_SPLIT_CASES = [
    # one block; 40 channels in register tiles of 8: parts of 24 and 16
    (cg.ConvSpec((1, 7, 6, 6), 40, 3, padding=1, activation="relu"),
     cg.Schedule(tile_co=8, tile_spatial=(2, 2), threads=2, method="winograd")),
    # two images, 3 blocks per image, a remainder register tile in the last part
    (cg.ConvSpec((2, 5, 9, 18), 31, 3, padding=1, padding_mode="reflect", dtype="float64"),
     cg.Schedule(tile_co=6, tile_spatial=(2, 2), threads=2, method="winograd")),
    # GEMM: one partial block, bias and activation
    (cg.ConvSpec((1, 9, 3, 5), 26, 1, activation="tanh"),
     cg.Schedule(tile_co=4, threads=2, method="gemm")),
    # GEMM in place, 3 whole blocks of 16 pixels
    (cg.ConvSpec((1, 6, 6, 8), 20, 1), cg.Schedule(tile_co=16, threads=2, method="gemm")),
]


@pytest.mark.parametrize("spec, schedule", CO_SPLIT_CASES)
def test_output_channels_split_between_threads_match_oracle(spec, schedule):
    """With fewer blocks than the threads can share evenly, a job is a block x a part of
    the output channels (parts are whole register tiles but the last)."""
    wp = make_plan(spec, schedule).kind
    assert wp.co_parts > 1 and wp.co_part % schedule.tile_co == 0
    assert make_plan(spec, dataclasses.replace(schedule, threads=1)).kind.co_parts == 1
    run(spec, schedule, seed=9)
    assert f"{wp.co_parts} parts of {wp.co_part}" in "\n".join(
        describe_plan(make_plan(spec, schedule)))


def test_split_output_channels():
    """Parts only as needed: the fewest whose jobs split evenly enough over the threads."""
    assert split_output_channels(64, 28, [13], 1) == 64
    assert split_output_channels(64, 28, [8, 5], 2) == 64  # 5 blocks: 3 + 2, within 1.2x
    assert split_output_channels(512, 28, [1], 2) == 280  # 280 + 232
    assert split_output_channels(256, 28, [1], 2) == 140
    assert split_output_channels(20, 28, [1], 2) == 20  # one register tile: nothing to split
    assert split_output_channels(40, 8, [3], 4) == 16  # 3 blocks x 3 parts over 4 threads


def test_winograd_default_tiles_when_none_given():
    """tile_spatial None: F(4, 3)-sized tiles, clamped to the output (6 for 1D rows)."""
    spec2 = cg.ConvSpec((1, 4, 9, 3), 4, 3, padding=1)
    spec1 = cg.ConvSpec((1, 4, 40), 4, 3, padding=1)
    spec_mixed = cg.ConvSpec((1, 4, 9, 9), 4, (1, 3))
    assert cg.Schedule(method="winograd").resolve(spec2)[1] == (4, 3)
    assert cg.Schedule(method="winograd").resolve(spec1)[1] == (6,)
    assert cg.Schedule(method="winograd").resolve(spec_mixed)[1] == (1, 4)
    run(spec2, cg.Schedule(tile_co=4, method="winograd"))


@pytest.mark.parametrize("kernel, tile", [(5, (4, 4)), (4, (4, 4)), ((3, 5), (4, 4)),
                                          ((2, 3), (4, 4))])
def test_largest_2d_tiles_match_oracle_with_one_input_channel(kernel, tile):
    """The largest 2D tiles (4 outputs per dim, alpha up to 8) with a single input channel:
    the shortest reduction, so the tightest tolerance."""
    spec = cg.ConvSpec((1, 1, 12, 13), 5, kernel, padding="same")
    run(spec, cg.Schedule(tile_co=5, tile_spatial=tile, method="winograd"), seed=4)


@pytest.mark.parametrize("kernel, tile", [(3, (6, 6)), (2, (7, 7)), ((2, 3), (7, 6)),
                                          (2, (5, 5)), (3, (4, 5))])
def test_2d_tiles_over_four_outputs_per_dim_are_rejected(kernel, tile):
    """They rounded up to 2.3x beyond the tolerance with few input channels."""
    spec = cg.ConvSpec((1, 8, 12, 13), 5, kernel, padding="same")
    with pytest.raises(cg.ScheduleError, match="at most 4 outputs per dim"):
        cg.Schedule(tile_co=5, tile_spatial=tile, method="winograd").resolve(spec)


def test_1d_tiles_up_to_alpha_8_are_legal():
    spec = cg.ConvSpec((1, 1, 40), 3, 3, padding=1)
    run(spec, cg.Schedule(tile_co=3, tile_spatial=(6,), method="winograd"), seed=3)
    run(spec.replace(kernel_size=2, padding="same"),
        cg.Schedule(tile_co=3, tile_spatial=(7,), method="winograd"), seed=3)


# -- GEMM (1x1) against the oracle --------------------------------------------------------------

@settings(max_examples=20, deadline=None)
@given(case=gemm_cases(ndim=2))
def test_gemm_2d_matches_oracle(case):
    run(*case, seed=5)


@settings(max_examples=12, deadline=None)
@given(case=gemm_cases(ndim=1))
def test_gemm_1d_matches_oracle(case):
    run(*case, seed=6)


@settings(max_examples=15, deadline=None)
@given(case=st.one_of(gemm_cases(ndim=1), gemm_cases(ndim=2)))
def test_gemm_llvm_matches_oracle(case):
    run(*case, seed=13, backend="llvm")


# id: (input shape, out channels, spec fields, schedule fields)
GEMM_CASES = {
    # in place: whole blocks only (64 pixels), whole + partial, one partial block only
    "in-place-whole-blocks": ((1, 16, 8, 8), 24, dict(), dict(tile_co=12)),
    "in-place-partial": ((2, 9, 7, 11), 17, dict(activation="relu"), dict(tile_co=14)),
    "in-place-under-a-block": ((1, 5, 3, 5), 3, dict(bias=False), dict(tile_co=30)),
    "in-place-threads-float64": ((2, 17, 10, 10), 31, dict(dtype="float64", activation="tanh"),
                                 dict(tile_co=15, threads=2)),
    # staged: stride, padding (every mode), groups
    "stride2-pad1": ((1, 8, 15, 17), 16, dict(stride=2, padding=1), dict(tile_co=16)),
    "stride3-reflect": ((1, 4, 16, 16), 6, dict(stride=3, padding=2, padding_mode="reflect"),
                        dict(tile_co=4)),
    "stride-2x1-groups": ((2, 12, 9, 13), 9, dict(stride=(2, 1), groups=3, padding=(1, 0),
                                                   padding_mode="circular",
                                                   activation="silu"),
                          dict(tile_co=2, threads=2)),
    "1d-stride2-replicate": ((1, 6, 101), 10, dict(stride=2, padding=1,
                                                   padding_mode="replicate"),
                             dict(tile_co=8)),
}


@pytest.mark.parametrize("case", sorted(GEMM_CASES))
def test_gemm_cases_match_oracle(case, backend):
    shape, cout, fields, schedule_fields = GEMM_CASES[case]
    spec = cg.ConvSpec(shape, cout, 1, **fields)
    schedule = cg.Schedule(method="gemm", **schedule_fields)
    kernel = run(spec, schedule, backend=backend)
    assert "1x1 convolution as a GEMM" in kernel.source
    in_place = math.prod(spec.stride) == 1 and all(p == (0, 0) for p in spec.padding)
    assert (make_plan(spec, schedule).kind.staged_in == (0, 0)) == in_place


def test_kernels_are_reused_across_calls():
    """One compiled kernel gives the same answer on every call (its workspace is its own)."""
    spec = cg.ConvSpec((1, 16, 9, 10), 16, 3, padding=1)
    kernel = compiled(spec, "c", cg.Schedule(tile_co=14, tile_spatial=(2, 2), method="winograd"))
    x, w, b = arrays_for(spec, 0)
    first = kernel(x, w, b)
    np.testing.assert_array_equal(kernel(x, w, b), first)
    out = np.full(spec.output_shape, np.nan, dtype=np.float32)
    kernel(x, w, b, out=out)
    np.testing.assert_array_equal(out, first)


# -- errors ----------------------------------------------------------------------------------

C2 = dict(input_shape=(1, 4, 8, 8), out_channels=4, kernel_size=3, padding=1)


def spec_with(**changes) -> cg.ConvSpec:
    return cg.ConvSpec(**{**C2, **changes})


# (spec, schedule fields, the field the error names, words its rule must contain)
RESOLVE_ERRORS = [
    (spec_with(stride=2), dict(method="winograd"), "method", "stride 1"),
    (spec_with(dilation=2, padding=2, padding_mode="reflect"), dict(method="winograd"),
     "method", "padding_mode='zeros'"),
    (spec_with(transposed=True, padding=0), dict(method="winograd"), "method", "transposed"),
    (spec_with(transposed=True, padding=0, kernel_size=1), dict(method="gemm"), "method",
     "transposed"),
    (cg.ConvSpec((1, 2, 5, 5, 5), 2, 3), dict(method="winograd"), "method", "3D"),
    (cg.ConvSpec((1, 2, 5, 5, 5), 2, 1), dict(method="gemm"), "method", "3D"),
    (spec_with(kernel_size=1, padding=0), dict(method="winograd"), "method", "gemm"),
    (spec_with(), dict(method="gemm"), "method", "1x1"),
    (spec_with(kernel_size=(1, 3)), dict(method="gemm"), "method", "1x1"),
    (spec_with(), dict(method="winograd", tile_spatial=(1, 4)), "tile_spatial", ">= 2"),
    (spec_with(), dict(method="winograd", tile_spatial=(4, 7)), "tile_spatial", "<= 8"),
    (spec_with(kernel_size=5, padding=2), dict(method="winograd", tile_spatial=(5, 4)),
     "tile_spatial", "kernel 5"),
    (spec_with(kernel_size=(1, 3)), dict(method="winograd", tile_spatial=(2, 4)),
     "tile_spatial", "must be 1"),
    (spec_with(kernel_size=1, padding=0), dict(method="gemm", tile_spatial=(1, 2)),
     "tile_spatial", "must be 1"),
    (spec_with(), dict(method="winograd", tile_spatial=(4,)), "tile_spatial", "2 entries"),
    (spec_with(), dict(method="winograd", tile_spatial=(4, 4, 4)), "tile_spatial", "2 entries"),
    (spec_with(kernel_size=1, padding=0), dict(method="gemm", tile_spatial=(1,)),
     "tile_spatial", "2 entries"),
    (cg.ConvSpec((1, 2, 9), 2, 3), dict(method="winograd", tile_spatial=(2, 2)),
     "tile_spatial", "1 entries"),
    (spec_with(), dict(method="winograd", tile_co=31), "tile_co", "at most 30"),
    (spec_with(kernel_size=1, padding=0), dict(method="gemm", tile_co=64), "tile_co",
     "at most 30"),
    (spec_with(), dict(method="winograd", vector_width=8), "vector_width", "must be 0"),
    (spec_with(kernel_size=1, padding=0), dict(method="gemm", vector_width=16),
     "vector_width", "must be 0"),
]


@pytest.mark.parametrize("spec, fields, field, words", RESOLVE_ERRORS)
def test_illegal_transform_schedules_raise(spec, fields, field, words):
    schedule = cg.Schedule(**fields)
    with pytest.raises(cg.ScheduleError) as info:
        schedule.resolve(spec)
    assert info.value.field == field
    assert words in info.value.rule, info.value.rule
    assert words in str(info.value)
    with pytest.raises(cg.ScheduleError):  # compile fails before rendering anything
        cg.compile(spec, backend="c", schedule=schedule)


@pytest.mark.parametrize("fields, field, words", [
    (dict(method="fft"), "method", "direct"),
    (dict(method="winograd", vectorize="co"), "vectorize", "leave vectorize at 'w'"),
    (dict(method="gemm", vectorize="co"), "vectorize", "leave vectorize at 'w'"),
    (dict(method=None), "method", "winograd"),
])
def test_illegal_schedule_fields_raise_on_construction(fields, field, words):
    with pytest.raises(cg.ScheduleError) as info:
        cg.Schedule(**fields)
    assert info.value.field == field and words in info.value.rule


def test_winograd_largest_legal_tiles_resolve():
    """m + k - 1 == 8 is legal; tile_co 30 is legal and clamps to the group's channels."""
    spec = spec_with(kernel_size=(3, 5), padding=(1, 2))
    schedule = cg.Schedule(tile_co=30, tile_spatial=(4, 4), method="winograd")
    assert schedule.resolve(spec) == (4, (4, 4))


@pytest.mark.parametrize("spec, method", [(spec_with(), "winograd"),
                                          (spec_with(kernel_size=1, padding=0), "gemm")])
def test_llvm_source_names_the_transform_methods(spec, method):
    kernel = compiled(spec, "llvm", cg.Schedule(method=method))
    assert ("Winograd F(" if method == "winograd" else "1x1 convolution as a GEMM") \
        in kernel.source
    check_kernel(kernel, spec, seed=14)


# -- the schedule's serialization ------------------------------------------------------------

@pytest.mark.parametrize("schedule", [
    cg.Schedule(tile_co=28, tile_spatial=(4, 4), threads=2, method="winograd"),
    cg.Schedule(tile_co=5, tile_spatial=(6,), method="winograd"),
    cg.Schedule(tile_co=12, method="gemm"),
])
def test_transform_schedules_round_trip(schedule):
    data = schedule.to_dict()
    assert data["method"] == schedule.method
    assert cg.Schedule.from_dict(data) == schedule
    assert '"method":"' + schedule.method + '"' in schedule.key()


def test_direct_schedule_dict_and_names_have_no_method():
    """A direct schedule serializes as before the methods existed: kernel names and tuning
    keys unchanged, and differ from the transform plans' for the same tiles."""
    direct = cg.Schedule(tile_co=8, tile_spatial=(4, 4))
    assert "method" not in direct.to_dict()
    assert direct.key() == ('{"threads":1,"tile_co":8,"tile_spatial":[4,4],'
                            '"vector_width":0,"vectorize":"w"}')
    assert cg.Schedule.from_dict(direct.to_dict()) == direct
    assert cg.Schedule.from_dict({**direct.to_dict(), "method": "direct"}) == direct
    spec = spec_with()
    winograd = cg.Schedule(tile_co=8, tile_spatial=(4, 4), method="winograd")
    assert make_plan(spec, direct).symbol != make_plan(spec, winograd).symbol


# -- defaults and explain ---------------------------------------------------------------------

def test_default_schedule_picks_winograd_for_3x3_layers_with_16_channels():
    for spec in [cg.ConvSpec((1, 16, 16, 16), 16, 3, padding=1),
                 cg.ConvSpec((1, 32, 32, 32), 32, 3, padding=1, bias=False),
                 cg.ConvSpec((2, 64, 56, 56), 64, 3, padding=1, dtype="float64"),
                 cg.ConvSpec((1, 16, 16, 16), 16, 3, padding=2, dilation=2)]:
        schedule = default_schedule(spec, "c")
        assert schedule.method == "winograd", spec
        assert schedule.tile_spatial in ((4, 4), (2, 2))
        assert schedule.tile_co <= MAX_CO_ROWS
        schedule.resolve(spec)
        assert default_schedule(spec, "llvm") == schedule
        assert cg.Schedule.from_dict(schedule.to_dict()) == schedule


@pytest.mark.parametrize("kernel, tile", [((1, 7), (1, 2)), ((7, 1), (2, 1)), (5, (4, 4))])
def test_default_schedule_picks_winograd_for_inception_kernels(kernel, tile):
    """1x7, 7x1 and 5x5 layers with 16+ channels each way (Inception v3's) default to
    Winograd, one output per tile along a kernel dim of 1 (defaults.WINOGRAD_WIDE_KERNELS),
    and match the oracle on both backends."""
    spec = cg.ConvSpec((1, 16, 11, 13), 16, kernel, padding="same", bias=True,
                       activation="relu")
    for threads in (1, 2):
        schedule = default_schedule(spec, "c", threads=threads)
        assert (schedule.method, schedule.tile_spatial, schedule.tile_co) == \
            ("winograd", tile, 16)
        assert default_schedule(spec, "c", prepared_weights=True, threads=threads) == schedule
    for backend in BACKENDS:
        kernel = cg.compile(spec, backend=backend, threads=1)
        assert kernel.schedule.method == "winograd"
        check_kernel(kernel, spec)


def test_prepared_weights_limit_winograd_at_two_threads():
    """Weights prepared once (networks, bind): any U at 1 thread; at 2+ threads U up to
    PARALLEL_WINOGRAD_WEIGHT_BYTES (ResNet-18's 512@7 layers go direct, 256@14 take F4)."""
    from convgen.graph.compile import _conv_schedules

    deep = cg.ConvSpec((1, 512, 7, 7), 512, 3, padding=1)
    mid = cg.ConvSpec((1, 256, 14, 14), 256, 3, padding=1)
    for backend in BACKENDS:
        one = default_schedule(deep, backend, prepared_weights=True, threads=1)
        assert (one.method, one.tile_spatial, one.threads) == ("winograd", (2, 2), 1)
        two = default_schedule(deep, backend, prepared_weights=True, threads=2)
        assert (two.method, two.vectorize, two.threads) == ("direct", "co", 2)
        assert default_schedule(mid, backend, prepared_weights=True, threads=2).tile_spatial \
            == (4, 4)
        assert default_schedule(mid, backend, prepared_weights=True, threads=1).tile_spatial \
            == (4, 4)
    assert default_schedule(deep, threads=1).method == "direct"  # U over 1 MiB, per call
    with pytest.raises(ValueError, match="threads"):
        default_schedule(deep, threads=0)
    nn.manual_seed(0)
    graph = nn.Sequential(nn.Conv2d(512, 512, 3, padding=1)).trace((1, 512, 7, 7))
    assert [s.method for s in _conv_schedules(graph, 1, "c").values()] == ["winograd"]
    assert [s.method for s in _conv_schedules(graph, 2, "c").values()] == ["direct"]


def test_default_schedule_picks_gemm_for_1x1_layers_with_256_pixels():
    for spec in [cg.ConvSpec((1, 8, 16, 16), 8, 1),
                 cg.ConvSpec((1, 144, 56, 56), 24, 1, bias=False),
                 cg.ConvSpec((1, 64, 56, 56), 128, 1, stride=2),
                 cg.ConvSpec((1, 16, 300), 16, 1)]:
        schedule = default_schedule(spec, "c")
        assert schedule.method == "gemm", spec
        schedule.resolve(spec)
        assert default_schedule(spec, "llvm") == schedule
        # weights prepared (networks, bind): strided ones on "co", its blocks packed once
        prepared = default_schedule(spec, "c", prepared_weights=True, threads=2)
        want = ("direct", "co") if spec.stride != (1,) * spec.ndim else ("gemm", "w")
        assert (prepared.method, prepared.vectorize) == want, spec
        assert default_schedule(spec, "llvm", prepared_weights=True, threads=2) == prepared


@pytest.mark.parametrize("spec", [
    cg.ConvSpec((1, 15, 16, 16), 16, 3, padding=1),          # 15 input channels
    cg.ConvSpec((1, 16, 16, 16), 16, 3, padding=1, stride=2),
    cg.ConvSpec((1, 16, 16, 16), 16, (1, 5), padding=(0, 2)),  # not a kernel listed
    cg.ConvSpec((1, 16, 64), 16, 3, padding=1),               # 11 tiles in 16 lanes
    cg.ConvSpec((1, 16, 8, 8, 8), 16, 3, padding=1),
    cg.ConvSpec((1, 16, 8, 8), 16, 3, padding=1, transposed=True),
    cg.ConvSpec((1, 512, 14, 14), 512, 3, padding=1),         # transformed weights > 1 MiB
    cg.ConvSpec((1, 7, 16, 16), 8, 1),                        # 7 input channels
    cg.ConvSpec((1, 8, 16, 16), 7, 1),
    cg.ConvSpec((1, 8, 15, 17), 8, 1),                        # 255 pixels
    cg.ConvSpec((1, 8, 16, 16), 8, 1, transposed=True),
])
def test_default_schedule_keeps_direct_elsewhere(spec):
    assert default_schedule(spec, "c").method == "direct"


def test_describe_plan_names_the_methods():
    spec = cg.ConvSpec((1, 16, 9, 10), 16, 3, padding=1)
    text = "\n".join(describe_plan(make_plan(spec, cg.Schedule(
        tile_co=14, tile_spatial=(4, 2), method="winograd"))))
    assert ("Winograd F(4x2, 3x3) (method='winograd'): 24 multiplications per tile of 8 "
            "outputs where direct convolution does 72 (3.00x fewer)") in text
    text = "\n".join(describe_plan(make_plan(cg.ConvSpec((1, 4, 20), 4, 5), cg.Schedule(
        tile_co=4, tile_spatial=(4,), method="winograd"))))
    assert "Winograd F(4, 5)" in text and "dilation" not in text
    text = "\n".join(describe_plan(make_plan(cg.ConvSpec((1, 4, 40), 4, 3, dilation=8),
                                              cg.Schedule(tile_co=4, method="winograd"))))
    assert "dilation 8: tiles made per dilation phase" in text
    gemm = cg.ConvSpec((1, 16, 9, 10), 8, 1, stride=2)
    text = "\n".join(describe_plan(make_plan(gemm, cg.Schedule(tile_co=8, method="gemm"))))
    assert "GEMM" in text and "staged" in text
    text = "\n".join(describe_plan(make_plan(gemm.replace(stride=1), cg.Schedule(
        tile_co=8, method="gemm"))))
    assert "GEMM" in text and "in place" in text


EXPLAIN_FILE = """
[[conv]]
name = "wino_default"
input_shape = [1, 64, 56, 56]
out_channels = 64
kernel_size = 3
padding = 1

[[conv]]
name = "pointwise_default"
input_shape = [1, 144, 28, 28]
out_channels = 24
kernel_size = 1

[[conv]]
name = "wino_from_file"
input_shape = [1, 4, 30]
out_channels = 4
kernel_size = 5
[conv.schedule]
tile_co = 4
tile_spatial = [3]
method = "winograd"
"""


def test_explain_describes_the_transform_plans(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CONVGEN_CACHE_DIR", str(tmp_path / "cache"))  # no tuning records
    path = tmp_path / "transform.toml"
    path.write_text(EXPLAIN_FILE)
    assert main(["explain", str(path)]) == 0
    out = capsys.readouterr().out
    wino, pointwise, from_file = _entries(out)
    assert "Winograd F(4x4, 3x3)" in wino and "schedule (default)" in wino
    assert "1x1 convolution as a GEMM" in pointwise
    assert "Winograd F(3, 5)" in from_file and "schedule (from the spec file)" in from_file
    assert main(["explain", str(path), "--backend", "llvm"]) == 0
    wino, pointwise, from_file = _entries(capsys.readouterr().out)
    assert "Winograd F(4x4, 3x3)" in wino and "table of element offsets" in wino
    assert "1x1 convolution as a GEMM" in pointwise and "Winograd F(3, 5)" in from_file


def _entries(out: str) -> list[str]:
    """explain's output split at each entry's name line."""
    names = ["wino_default", "pointwise_default", "wino_from_file"]
    starts = [out.index(f"{name}  (") for name in names] + [len(out)]
    return [out[a:b] for a, b in zip(starts, starts[1:])]


# -- a network --------------------------------------------------------------------------------

class ResidualNet(nn.Module):
    """3x3 convs of 16 channels (Winograd by default), a residual add and ReLU fused into the
    second, and 1x1 convs (GEMM by default), one with a residual of its own."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(16, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.relu = nn.ReLU()
        self.expand = nn.Conv2d(16, 16, 1)
        self.project = nn.Conv2d(16, 8, 1, bias=False)

    def forward(self, x):
        h = self.relu(self.conv1(x))
        h = self.relu(self.conv2(h) + x)
        h = self.expand(h) + h
        return self.project(h)


@pytest.mark.parametrize("dtype, threads", [("float32", None), ("float64", 2)])
def test_network_runs_winograd_and_gemm_by_default(dtype, threads, backend):
    nn.manual_seed(0)
    net = ResidualNet()
    model = net.compile(input_shape=(2, 16, 16, 16), backend=backend, dtype=dtype,
                        threads=threads)
    convs = {step.name: step for step in model._lowered.steps if step.plan is not None}
    methods = {name: step.plan.kind.method if isinstance(step.plan.kind, WinogradPlan)
               else "direct" for name, step in convs.items()}
    assert methods == {"conv1": "winograd", "conv2": "winograd", "expand": "gemm",
                       "project": "gemm"}
    assert convs["conv2"].consts["residual"] and convs["expand"].consts["residual"]
    assert not convs["conv1"].consts["residual"]
    assert convs["conv2"].plan.spec.activation == "relu"
    if threads is not None:
        assert set(model.layer_threads().values()) == {threads}
    x = np.random.default_rng(0).uniform(-1, 1, (2, 16, 16, 16)).astype(dtype)
    got = model(x)
    want = model.reference(x)
    assert got.shape == want.shape == (2, 8, 16, 16)
    rtol = 1e-4 if dtype == "float32" else 1e-10
    scale = 1.0 + float(np.max(np.abs(want)))
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale)


@pytest.mark.parametrize("threads", [1, 2])
def test_network_packs_winograd_weights_in_register_tiles(threads, backend):
    """A network's U is packed per register tile (28 channels, then the remainder); at 2
    threads the single block's output channels are split between them."""
    nn.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(16, 40, 3, padding=1), nn.ReLU(),
                        nn.Conv2d(40, 61, 3, padding=1, bias=False))
    model = net.compile(input_shape=(1, 16, 8, 8), backend=backend, threads=threads)
    plans = [step.plan for step in model._lowered.steps if step.plan is not None]
    assert [p.kind.method for p in plans] == ["winograd", "winograd"]
    assert [p.kind.co_rows for p in plans] == [28, 28]  # 40 = 28 + 12, 61 = 2 x 28 + 5
    assert all((p.kind.co_parts > 1) == (threads > 1) for p in plans)
    x = np.random.default_rng(3).uniform(-1, 1, (1, 16, 8, 8)).astype(np.float32)
    got, want = model(x), model.reference(x)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * (1 + np.abs(want).max()))
