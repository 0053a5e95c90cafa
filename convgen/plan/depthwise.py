"""The blocked depthwise plan (vectorize="dw"): a vector holds VL channels of one pixel.

A job is one output row of one channel block of one image, its register tile
DEPTHWISE_PIXELS pixels of that row; input and output blocked (convgen.plan.layout), no
reduction over channels (each tap is one FMA of whole vectors). Weights prepared at load:
(C / VL, taps, VL). Networks choose it where the values around the layer are blocked
(convgen.graph.layout).

Generated code does not grow with the output size: the D and H index tables are folded
(convgen.plan.base.FoldedTable), and a row's pieces are a run of linear pieces (each a
translation of the first) between a bounded number of border pieces listed explicitly
(:class:`DepthwisePieces`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from convgen.plan.base import FoldedTable, Plan, PlanKind, block_lanes


@dataclass(frozen=True)
class DepthwisePieces:
    """A row's pieces of P pixels, piece i starting at output column i * P: pieces
    [run_begin, run_end) are linear (pixel p of piece i reads input column
    ``run_cols[kw] + (i - run_begin) * run_step + p * stride`` at tap kw, all inside the
    input); the others, border pieces, in row order, read ``border_cols[j][p][kw]`` (-1:
    the tap adds nothing, or the pixel is past the row)."""

    count: int  # pieces in a row: ceil(OW / P)
    run_begin: int
    run_end: int
    run_cols: tuple[int, ...]  # the input column of pixel 0 of piece run_begin, per tap
    run_step: int  # input columns from one linear piece to the next: P * stride
    border_cols: tuple[tuple[tuple[int, ...], ...], ...]

    def border(self, piece: int) -> int:
        """The index into ``border_cols`` of border piece ``piece``."""
        return piece if piece < self.run_begin else piece - self.run_end + self.run_begin


@dataclass(frozen=True)
class DepthwiseKind(PlanKind):
    """The blocked depthwise plan kind: lanes hold VL channels of one pixel."""

    label = "dw"
    lanes_hold = "channels of a pixel"

    pieces: DepthwisePieces | None = None  # the register tiles of a row (depthwise_pieces)

    def jobs(self, plan: Plan) -> int:
        """batch x channel blocks x output rows."""
        return plan.batch * (plan.groups // plan.vector_lanes) * math.prod(plan.out_size[:2])


# the depthwise plan's register tile: this many output pixels of a row (one vector of
# channels each). 4 against 8 (2026-12-07, MobileNetV2's nine kinds of depthwise layer,
# 1 thread): C 5-25% faster on every one; LLVM 17-30% faster on five, 14% slower on the
# 96-channel 3x3/2 at 112 (docs/performance.md)
DEPTHWISE_PIXELS = 4


def depthwise_blocked(spec) -> str | None:
    """None when ``spec`` can run on the blocked depthwise plan, else why not: one input
    and one output channel per group (channel multiplier 1), whole blocks of channels,
    not transposed."""
    lanes = block_lanes(spec.dtype)
    if spec.transposed:
        return "transposed"
    if spec.groups != spec.in_channels or spec.groups != spec.out_channels:
        return "not depthwise with one output channel per input channel"
    if spec.in_channels % lanes:
        return f"{spec.in_channels} channels are not a multiple of {lanes}"
    return None


def depthwise_pieces(plan: Plan) -> DepthwisePieces:
    """The blocked depthwise plan's pieces of a row (see DepthwisePieces): the linear run
    is every whole piece inside the W table's interior, where each tap reads
    ``o * stride + offset``; only the border pieces' columns are looked up, so planning
    does not visit every column."""
    table = plan.tables[2]
    out, pixels = plan.out_size[2], plan.tile[2]
    count = -(-out // pixels)
    a, b = table.interior
    begin, end = -(-a // pixels), b // pixels
    if end <= begin:
        begin = end = count
    borders = tuple(
        tuple(tuple(table[ow0 + p]) if ow0 + p < out else (-1,) * table.taps
              for p in range(pixels))
        for ow0 in (i * pixels for i in (*range(begin), *range(end, count))))
    run_cols = tuple(table[begin * pixels]) if end > begin else (0,) * table.taps
    return DepthwisePieces(count, begin, end, run_cols, pixels * table.stride, borders)


def depthwise_folds(plan: Plan) -> tuple[FoldedTable, FoldedTable]:
    """The D and H index tables, folded: a job looks its two rows up once."""
    return FoldedTable.of(plan.tables[0]), FoldedTable.of(plan.tables[1])


def pack_depthwise_weights(plan: Plan, weight: np.ndarray) -> np.ndarray:
    """(C, 1, *k) -> (C / VL, taps, VL): a tap's weights for a block of channels, one
    vector."""
    lanes = plan.vector_lanes
    channels = plan.groups
    w = np.asarray(weight).reshape(channels // lanes, lanes, -1)
    return np.ascontiguousarray(w.transpose(0, 2, 1))
