"""The blocked activation layout networks keep between layers (oneDNN's nChw16c).

A value of shape (N, C, *spatial) is stored blocked as (N, C / VL, *spatial, VL): the
channels split into blocks of the vector width VL (16 fp32 lanes on AVX-512, 8 fp64),
each pixel's VL channels contiguous. A "co" kernel (output channels in vector lanes)
then loads the VL channels of a pixel with one vector instruction and stores its register
tile without transposing it, and an input pixel's channels share one cache line instead
of lying a plane apart.

Which kernels read and write it: :func:`supports_blocked`; the planner
(convgen.plan.core.make_plan) builds a plan with a blocked input or output. Which values of a network are
blocked: convgen.graph.layout. Standalone kernels and a network's inputs and outputs are
always NCHW.
"""

from __future__ import annotations

import numpy as np

from convgen.plan.base import Plan, block_lanes
from convgen.plan.co import CoTiles
from convgen.plan.staged import StagedDepthwiseKind
from convgen.plan.depthwise import DepthwiseKind
from convgen.plan.winograd import WinogradPlan

__all__ = ["block_lanes", "blocked_channels_ok", "from_blocked", "supports_blocked",
           "to_blocked"]


def blocked_channels_ok(channels: int, lanes: int) -> bool:
    """Whether a value with ``channels`` channels can be stored blocked."""
    return channels > 0 and channels % lanes == 0


def supports_blocked(plan: Plan, read: bool = True, write: bool = True) -> str | None:
    """None when ``plan``'s kernel can read its input (``read``) and write its output and
    residual (``write``) blocked, else why not: the "co" plan and Winograd do, when the
    channels per group of that side are whole blocks; the "w" plan (depthwise, few
    channels) and the 1x1 GEMM (reads and writes channel planes in place) do not."""
    if isinstance(plan.kind, DepthwiseKind):  # the blocked depthwise plan: blocked only
        return None
    if isinstance(plan.kind, StagedDepthwiseKind):
        return "the staged depthwise plan reads and writes channel planes (NCHW)"
    lanes = plan.vector_lanes
    if lanes != block_lanes(plan.spec.dtype):
        return f"vector width {lanes} is not the layout's {block_lanes(plan.spec.dtype)}"
    if read and plan.cin_g % lanes:
        return f"input channels per group ({plan.cin_g}) are not a multiple of {lanes}"
    if write and plan.cout_g % lanes:
        return f"output channels per group ({plan.cout_g}) are not a multiple of {lanes}"
    if isinstance(plan.kind, WinogradPlan):
        return None if plan.kind.method == "winograd" else \
            "the 1x1 GEMM reads and writes channel planes in place"
    if isinstance(plan.kind, CoTiles):
        return None
    return "the \"w\" plan vectorizes over output columns"


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
