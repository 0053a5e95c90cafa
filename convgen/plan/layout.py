"""The blocked activation layout networks keep between layers (oneDNN's nChw16c).

A value of shape (N, C, *spatial) is stored blocked as (N, C / VL, *spatial, VL): the
channels split into blocks of the vector width VL (16 fp32 lanes on AVX-512, 8 fp64),
each pixel's VL channels contiguous. A "co" kernel (output channels in vector lanes)
then loads the VL channels of a pixel with one vector instruction and stores its register
tile without transposing it, and an input pixel's channels share one cache line instead
of lying a plane apart.

Which kernels read and write it: :func:`supports_blocked`. Which values of a network are
blocked: convgen.graph.layout. Standalone kernels and a network's inputs and outputs are
always NCHW.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from convgen.cpu import vector_lanes
from convgen.plan.core import Plan


def block_lanes(dtype: str) -> int:
    """VL of the blocked layout for ``dtype`` on this host."""
    return vector_lanes(dtype)


def blocked_channels_ok(channels: int, lanes: int) -> bool:
    """Whether a value with ``channels`` channels can be stored blocked."""
    return channels > 0 and channels % lanes == 0


def supports_blocked(plan: Plan, read: bool = True, write: bool = True) -> str | None:
    """None when ``plan``'s kernel can read its input (``read``) and write its output and
    residual (``write``) blocked, else why not: the "co" plan and Winograd do, when the
    channels per group of that side are whole blocks; the "w" plan (depthwise, few
    channels) and the 1x1 GEMM (reads and writes channel planes in place) do not."""
    if plan.vectorize == "dw":  # the blocked depthwise plan: blocked only
        return None
    lanes = plan.vector_lanes
    if lanes != block_lanes(plan.spec.dtype):
        return f"vector width {lanes} is not the layout's {block_lanes(plan.spec.dtype)}"
    if read and plan.cin_g % lanes:
        return f"input channels per group ({plan.cin_g}) are not a multiple of {lanes}"
    if write and plan.cout_g % lanes:
        return f"output channels per group ({plan.cout_g}) are not a multiple of {lanes}"
    if plan.winograd is not None:
        return None if plan.winograd.method == "winograd" else \
            "the 1x1 GEMM reads and writes channel planes in place"
    if plan.vectorize == "co":
        return None
    return "the \"w\" plan vectorizes over output columns"


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


def depthwise_plan(plan: Plan) -> Plan:
    """The blocked depthwise plan of ``plan``'s spec (vectorize="dw"): a vector holds VL
    channels of one pixel, a job is one output row of one channel block of one image, its
    register tile DEPTHWISE_PIXELS pixels; input and output blocked, no reduction over
    channels (each tap is one FMA of whole vectors). Weights prepared at load:
    (C / VL, taps, VL). Networks choose it where the values around the layer are
    blocked (convgen.graph.layout); ValueError when the spec cannot run on it."""
    why = depthwise_blocked(plan.spec)
    if why is not None:
        raise ValueError(f"{plan.spec.name}: no blocked depthwise plan: {why}")
    lanes = block_lanes(plan.spec.dtype)
    return dataclasses.replace(plan, vectorize="dw", vector_lanes=lanes, co_tiles=None,
                               winograd=None, tile_co=lanes,
                               tile=(1, 1, min(DEPTHWISE_PIXELS, plan.out_size[2])),
                               in_blocked=True, out_blocked=True,
                               symbol=plan.symbol + "_dw")


def pack_depthwise_weights(plan: Plan, weight: np.ndarray) -> np.ndarray:
    """(C, 1, *k) -> (C / VL, taps, VL): a tap's weights for a block of channels, one
    vector."""
    lanes = plan.vector_lanes
    channels = plan.groups
    w = np.asarray(weight).reshape(channels // lanes, lanes, -1)
    return np.ascontiguousarray(w.transpose(0, 2, 1))


def with_layout(plan: Plan, in_blocked: bool, out_blocked: bool) -> Plan:
    """``plan`` reading (writing) the blocked layout; ValueError when it cannot."""
    if plan.vectorize == "dw":
        if not (in_blocked and out_blocked):
            raise ValueError(f"{plan.spec.name}: the depthwise plan reads and writes the "
                             "blocked layout only")
        return plan
    if in_blocked or out_blocked:
        why = supports_blocked(plan, in_blocked, out_blocked)
        if why is not None:
            raise ValueError(f"{plan.spec.name}: no blocked layout: {why}")
    suffix = ("_bi" if in_blocked else "") + ("_bo" if out_blocked else "")
    return dataclasses.replace(plan, in_blocked=in_blocked, out_blocked=out_blocked,
                               symbol=plan.symbol + suffix)


def to_blocked(x: np.ndarray, lanes: int) -> np.ndarray:
    """(N, C, *S) -> (N, C / lanes, *S, lanes), contiguous."""
    n, c, *spatial = x.shape
    if c % lanes:
        raise ValueError(f"to_blocked: {c} channels are not a multiple of {lanes}")
    blocked = x.reshape(n, c // lanes, lanes, *spatial)
    return np.ascontiguousarray(np.moveaxis(blocked, 2, -1))


def from_blocked(x: np.ndarray) -> np.ndarray:
    """(N, C / VL, *S, VL) -> (N, C, *S), contiguous."""
    n, blocks, *spatial, lanes = x.shape
    return np.ascontiguousarray(np.moveaxis(x, -1, 2).reshape(n, blocks * lanes, *spatial))
