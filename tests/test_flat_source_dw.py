"""The blocked depthwise plan ("dw") emits source that does not grow with the output size
(issue 19 row 2): folded D/H tables, a row's linear pieces as one run between a bounded
number of border pieces (convgen.plan.depthwise.DepthwisePieces), planned without visiting
every column; and the kernels still match the oracle where the run holds several pieces.
"""

from __future__ import annotations

import time

import pytest

import convgen as cg
from convgen.backends import get_backend
from convgen.plan.core import make_plan
from convgen.plan.layout import block_lanes

from test_layout import run_blocked

# CPU plan kinds: the backend argument runs over the CPU backends
pytestmark = pytest.mark.cpu_plans

LANES = block_lanes("float32")


def depthwise(spatial: tuple[int, ...], dtype: str = "float32", **kwargs) -> cg.ConvSpec:
    channels = block_lanes(dtype)
    return cg.ConvSpec((1, channels, *spatial), channels, groups=channels, dtype=dtype,
                       **kwargs)


# spec families by output width: 1D, 2D with a wide W, stride 2, dilation, 5x5 kernels
FAMILIES = {
    "1d": lambda w: depthwise((w,), kernel_size=3, padding=1),
    "1d-s2-reflect": lambda w: depthwise((w,), kernel_size=5, stride=2, padding=2,
                                         padding_mode="reflect"),
    "1d-dilated-circular": lambda w: depthwise((w,), kernel_size=3, dilation=3,
                                               padding="same", padding_mode="circular"),
    "2d-wide": lambda w: depthwise((3, w), kernel_size=3, padding=1),
    "2d-5x5-s2": lambda w: depthwise((6, w), kernel_size=5, stride=2, padding=2),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_source_size_does_not_grow_with_the_output_width(family, backend):
    sizes, seconds = {}, {}
    for width in (1_000, 1_000_000):
        spec = FAMILIES[family](width)
        start = time.perf_counter()
        plan = make_plan(spec, depthwise=True)
        seconds[width] = time.perf_counter() - start
        sizes[width] = len(get_backend(backend).render(plan))
    # the widths' digits are the only difference
    assert sizes[1_000_000] <= sizes[1_000] + 300, (family, backend, sizes)
    assert seconds[1_000_000] < 0.5, seconds


def test_planning_a_very_long_signal_is_quick():
    start = time.perf_counter()
    plan = make_plan(FAMILIES["1d-s2-reflect"](10**8), depthwise=True)
    assert time.perf_counter() - start < 0.5
    pieces = plan.kind.pieces
    assert pieces.count == -(-plan.out_size[2] // plan.tile[2])
    assert len(pieces.border_cols) <= 3 and pieces.run_end - pieces.run_begin > 10**6


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("width", [3, 7, 29, 64, 101])
def test_pieces_read_what_the_index_table_says(family, width):
    """Every pixel of every piece, rebuilt from the run and the border pieces, reads the
    columns of the W index table (the plan's own definition)."""
    plan = make_plan(FAMILIES[family](width), depthwise=True)
    table, pieces, pixels = plan.tables[2], plan.kind.pieces, plan.tile[2]
    out, stride = plan.out_size[2], plan.spec.stride[-1]
    assert pieces.count * pixels >= out > (pieces.count - 1) * pixels
    assert len(pieces.border_cols) == pieces.count - (pieces.run_end - pieces.run_begin)
    for piece in range(pieces.count):
        for p in range(pixels):
            o = piece * pixels + p
            if pieces.run_begin <= piece < pieces.run_end:
                shift = (piece - pieces.run_begin) * pieces.run_step + p * stride
                got = [c + shift for c in pieces.run_cols]
                assert min(got) >= 0 and max(got) < plan.in_size[2]
            else:
                got = list(pieces.border_cols[pieces.border(piece)][p])
            assert got == (table[o] if o < out else [-1] * plan.kernel[2]), (piece, p)


# widths at which the linear run holds several pieces: stride 1 and 2, dilation, every
# padding mode, a short last piece, flip, bias, activations, float64, 2D with a
# folded H table
ORACLE_SPECS = [
    depthwise((61,), kernel_size=3, padding=1, bias=False),
    depthwise((83,), kernel_size=5, stride=2, padding=2, padding_mode="reflect",
              activation="relu6"),
    depthwise((50,), kernel_size=3, dilation=2, padding="same", padding_mode="circular",
              flip=True),
    depthwise((9, 90), kernel_size=(3, 5), stride=(1, 2), padding=(1, 2),
              padding_mode="replicate", activation="silu"),
    depthwise((7, 100), "float64", kernel_size=5, stride=2, dilation=(1, 2), padding=3),
    # rows whose every (kd, kh) tap is inside take the C kernel's straight-line block:
    # weights in registers (3x3, 3x3x3 dilated), from memory (7x7), flipped, strided
    depthwise((5, 64), kernel_size=3, padding=1, activation="relu6"),
    depthwise((4, 5, 40), kernel_size=3, padding=(1, 0, 1), dilation=(1, 2, 1)),
    depthwise((9, 70), kernel_size=7, padding=3, bias=False),
    depthwise((6, 50), kernel_size=3, padding=1, flip=True, activation="relu"),
    depthwise((8, 67), kernel_size=3, stride=2, dilation=2, padding=2),
]


@pytest.mark.parametrize("spec", ORACLE_SPECS, ids=lambda spec: spec.name)
def test_runs_of_linear_pieces_match_oracle(spec, backend):
    pieces = make_plan(spec, depthwise=True).kind.pieces
    assert pieces.run_end - pieces.run_begin >= 3, pieces
    run_blocked(spec, cg.Schedule(threads=1), backend, True, True, prepared=True,
                depthwise=True)


def test_c_kernel_takes_the_straight_line_block_for_whole_rows():
    """The C source of a 3x3 layer holds the block for rows with every tap inside (the
    oracle tests above run it); a kernel too long to unroll (7x7x7) does not."""
    c = get_backend("c")
    assert "if (full)" in c.render(make_plan(ORACLE_SPECS[5], depthwise=True))
    assert "if (full)" not in c.render(make_plan(
        depthwise((8, 8, 40), kernel_size=7, padding=3), depthwise=True))
