"""The blocked depthwise plan (vectorize="dw"): a vector holds VL channels of one pixel.

A job is one output row of one channel block of one image, its register tile
DEPTHWISE_PIXELS pixels of that row; input and output blocked (convgen.plan.layout), no
reduction over channels (each tap is one FMA of whole vectors). Weights prepared at load:
(C / VL, taps, VL). Networks choose it where the values around the layer are blocked
(convgen.graph.layout).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from convgen.plan.base import Plan, PlanKind, block_lanes


@dataclass(frozen=True)
class DepthwiseKind(PlanKind):
    """The blocked depthwise plan kind: lanes hold VL channels of one pixel."""

    label = "dw"
    lanes_hold = "channels of a pixel"

    pieces: tuple = ()  # the register tiles of a row (depthwise_pieces)

    def jobs(self, plan: Plan) -> int:
        """batch x channel blocks x output rows."""
        return plan.batch * (plan.groups // plan.vector_lanes) * math.prod(plan.out_size[:2])


# the depthwise plan's register tile: this many output pixels of a row (one vector of
# channels each)
DEPTHWISE_PIXELS = 8


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


def depthwise_pieces(plan: Plan) -> tuple[tuple[int, bool, tuple[int, ...]], ...]:
    """The blocked depthwise plan's pieces of a row: (first output column, linear, the
    input column each tap reads for the first pixel); linear: a whole piece whose pixel p
    reads column cols[kw] + p * stride at every tap, all inside the input."""
    table = plan.tables[2]
    pixels = plan.tile[2]
    stride = plan.spec.stride[-1]
    out = []
    for ow0 in range(0, plan.out_size[2], pixels):
        cols = table[ow0]
        linear = ow0 + pixels <= plan.out_size[2] and all(
            table[ow0 + p][kw] == cols[kw] + p * stride and cols[kw] >= 0
            for p in range(pixels) for kw in range(len(cols)))
        out.append((ow0, linear, [c if linear else 0 for c in cols]))
    return tuple(out)


def pack_depthwise_weights(plan: Plan, weight: np.ndarray) -> np.ndarray:
    """(C, 1, *k) -> (C / VL, taps, VL): a tap's weights for a block of channels, one
    vector."""
    lanes = plan.vector_lanes
    channels = plan.groups
    w = np.asarray(weight).reshape(channels // lanes, lanes, -1)
    return np.ascontiguousarray(w.transpose(0, 2, 1))
