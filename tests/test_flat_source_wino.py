"""The transform-GEMM plans (method "winograd" and "gemm") generate source that does not
grow with the output size (issue 19): a kernel finds its block's tiles from their index,
the padding is a SourceMap (explicit borders, affine between), chunks are arithmetic;
and the kernels built that way still match the oracle where blocks span many tile rows,
lanes run past the last tile and the output is copied out in several chunks."""

from __future__ import annotations

import time

import numpy as np
import pytest

import convgen as cg
from convgen.plan import winograd
from convgen.plan.core import make_plan
from convgen.plan.winograd import source_map
from convgen.spec import source_coordinate

from helpers import assert_source_flat, check_kernel

# CPU plan kinds: the backend argument runs over the CPU backends
pytestmark = pytest.mark.cpu_plans

# small register tiles: less source to render, the same structure
WINO_1D = cg.Schedule(method="winograd", tile_co=4, tile_spatial=(4,), threads=1)
WINO_2D = cg.Schedule(method="winograd", tile_co=4, tile_spatial=(2, 2), threads=1)
GEMM = cg.Schedule(method="gemm", tile_co=4, threads=1)


def _long(length: int) -> dict[str, tuple[cg.ConvSpec, cg.Schedule]]:
    """Specs whose output is about ``length`` columns (1D) or rows (2D)."""
    return {
        "winograd": (cg.ConvSpec((1, 4, length), 4, kernel_size=3, padding=1), WINO_1D),
        "winograd dilated": (cg.ConvSpec((1, 4, length), 4, kernel_size=3, padding=2,
                                         dilation=2), WINO_1D),
        "winograd reflect": (cg.ConvSpec((1, 4, length), 4, kernel_size=3, padding=1,
                                         padding_mode="reflect"), WINO_1D),
        "winograd 2D tall": (cg.ConvSpec((1, 4, length, 6), 4, kernel_size=3, padding=1),
                             WINO_2D),
        "winograd 2D wide circular": (cg.ConvSpec((1, 4, 6, length), 4, kernel_size=3,
                                                  padding=1, padding_mode="circular"),
                                      WINO_2D),
        "gemm": (cg.ConvSpec((1, 4, length), 4, kernel_size=1), GEMM),
        "gemm stride 2": (cg.ConvSpec((1, 4, length), 4, kernel_size=1, stride=2), GEMM),
        "gemm 2D tall padded": (cg.ConvSpec((1, 4, length, 5), 4, kernel_size=1, stride=2,
                                            padding=1, padding_mode="replicate"), GEMM),
    }


@pytest.mark.parametrize("name", list(_long(1000)))
def test_transform_source_size_does_not_grow_with_the_output(name):
    assert_source_flat(_long(1000)[name][0], *_long(10**6)[name])


def test_transform_plan_is_bounded_for_long_signals():
    """A 10**8-column row plans at once; its maps hold the borders only, its chunks are
    whole but the last."""
    spec = cg.ConvSpec((1, 16, 10**8), 16, kernel_size=5, padding=2, padding_mode="reflect")
    start = time.perf_counter()
    wp = make_plan(spec, cg.Schedule(method="winograd")).kind
    assert time.perf_counter() - start < 1.0
    assert len(wp.src_cols.edges) <= 2 + wp.tile[1] + 2 and wp.blocks > 10**5
    sizes = wp.chunk_blocks
    assert sum(sizes) == wp.blocks and set(sizes[:-1]) == {wp.chunk_size}
    end, rows = wp.chunks[-1]
    assert (end, rows) == (wp.blocks, wp.grid[0])


@pytest.mark.parametrize("mode", ["zeros", "reflect", "replicate", "circular"])
def test_source_map_is_the_padded_coordinate(mode):
    """SourceMap(j) == source_coordinate(j * stride - shift) for every j: the explicit
    borders and the affine interior agree with the definition."""
    for size in (1, 2, 5, 9):
        for stride in (1, 2, 3):
            for shift in (0, 1, 2, 4):
                if mode == "reflect" and shift >= size:
                    continue  # the spec refuses reflect padding of the input's size
                for length in (1, 3, size + 2 * shift, 3 * size + 5):
                    m = source_map(length, stride, shift, size, mode)
                    assert len(m.edges) == length - (m.b - m.a)
                    assert [m(j) for j in range(length)] == [
                        source_coordinate(j * stride - shift, size, mode)
                        for j in range(length)]


# (spec, schedule): long enough that the interior holds many blocks; 2D shapes narrow, so
# a block spans several tile rows; odd lengths leave lanes past the last tile
ORACLE_CASES = {
    "1d dilated 3, F(3, 5), bias relu": (cg.ConvSpec((2, 1, 911), 3, 5, padding=6, dilation=3,
                                                     activation="relu"),
                                         cg.Schedule(method="winograd", tile_co=3,
                                                     tile_spatial=(3,))),
    "2d tall dilated": (cg.ConvSpec((1, 3, 121, 9), 4, 3, padding=2, dilation=2), WINO_2D),
    "2d tall replicate threads": (cg.ConvSpec((1, 3, 97, 11), 4, 3, padding=1,
                                              padding_mode="replicate"),
                                  cg.Schedule(method="winograd", tile_co=4,
                                              tile_spatial=(2, 2), threads=2)),
    "gemm 2d stride padded": (cg.ConvSpec((1, 3, 97, 13), 5, 1, stride=(2, 3), padding=1,
                                          padding_mode="reflect"), GEMM),
}


@pytest.mark.parametrize("name", list(ORACLE_CASES))
def test_long_transform_kernels_match_oracle(monkeypatch, name, backend):
    """Chunks of a few blocks (CHUNK_BYTES shrunk): tile rows end mid-chunk and the
    copy-out of each chunk starts where the last one stopped."""
    spec, schedule = ORACLE_CASES[name]
    wp = make_plan(spec, schedule).kind
    per_block = wp.cout_g * wp.tile[0] * wp.tile[1] * wp.block_tiles * \
        np.dtype(spec.dtype).itemsize
    monkeypatch.setattr(winograd, "CHUNK_BYTES", 3 * per_block)
    wp = make_plan(spec, schedule).kind
    assert wp.blocks >= 8
    if wp.method == "winograd":
        assert wp.chunk_size == 3 and len(wp.chunks) == -(-wp.blocks // 3)
    check_kernel(cg.compile(spec, backend=backend, schedule=schedule), spec, seed=5)
