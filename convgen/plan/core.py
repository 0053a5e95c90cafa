"""Plan: every constant the generated code needs, derived from spec + schedule.

The planner is the only layer that sees both the spec (what) and the schedule
(how). It lowers 1D and 2D convolutions to the 3D case (missing dims have size
1), and folds padding mode, flipping and transposition into per-dimension index
tables: ``table[d][o][k]`` is the input coordinate read by output ``o`` at kernel
tap ``k`` in spatial dim ``d``, or -1 where the tap contributes nothing (zero
padding, or a transposed tap that falls between input samples). Templates then
hold no arithmetic: they loop over tiles and look coordinates up.
"""

from __future__ import annotations

import dataclasses
import math

from convgen.cpu import vector_lanes
from convgen.dtypes import dtype_info
from convgen.plan.base import (Plan, PlanKind, index_table, kernel_symbol, spec_tables,  # noqa: F401
                               omp_schedule, pad3, weight_strides)
from convgen.plan.co import (CoClass, CoPiece, CoTap, CoTiles, co_decisions, co_row_taps,  # noqa: F401
                             co_row_tiles, describe_co_plan, transpose_shuffles)
from convgen.plan.defaults import default_schedule
from convgen.plan.depthwise import (DEPTHWISE_PIXELS, DepthwiseKind, depthwise_blocked,
                                    depthwise_pieces)
from convgen.plan.direct import (VEC_EVEN, VEC_GATHER, VEC_LOAD, VEC_MASKED_LOAD,  # noqa: F401
                                 VEC_SKIP, DirectKind, VectorTables, channels_inner,
                                 describe_direct_plan, vector_tables)
from convgen.plan.layout import block_lanes, supports_blocked
from convgen.plan.staged import StagedDepthwiseKind, describe_staged_plan, staged_plan_kind
from convgen.plan.weights import prepares
from convgen.plan.winograd import WinogradPlan, describe_winograd_plan, make_winograd_plan
from convgen.schedule import Schedule, co_vectors
from convgen.spec import ConvSpec

def make_plan(spec: ConvSpec, schedule: Schedule | None = None, *,
              in_blocked: bool | None = None, out_blocked: bool | None = None,
              depthwise: bool = False, prepared_weights: bool = False) -> Plan:
    """Derive every constant for ``spec`` under ``schedule`` (default: the fallback).

    ``in_blocked`` / ``out_blocked``: the kernel reads its input / writes its output (and
    residual) in the blocked layout of convgen.plan.layout (symbol suffixes ``_bi`` /
    ``_bo``); ValueError when the plan cannot; None: the plan's own (NCHW, the depthwise
    plan blocked). ``depthwise``: the blocked depthwise plan (convgen.plan.depthwise;
    symbol suffix ``_dw``, blocked in and out only, weights always prepared).
    ``prepared_weights``: the weight argument holds the weights prepared at load
    (convgen.plan.weights) where the plan's kernel reads prepared weights at all
    (weights.prepares; symbol suffix ``_bound``, so both variants may be loaded at once).
    """
    plan = _base_plan(spec, schedule)
    if depthwise:
        plan = _depthwise(plan)
    plan = _layout(plan, in_blocked, out_blocked)
    if prepared_weights and prepares(plan):
        plan = dataclasses.replace(plan, prepared_weights=True, symbol=plan.symbol + "_bound")
    return _decide(plan)


def _depthwise(plan: Plan) -> Plan:
    """The blocked depthwise plan of ``plan``'s spec: a vector holds VL channels of one
    pixel, a job is one output row of one channel block of one image, its register tile
    DEPTHWISE_PIXELS pixels; input and output blocked, weights always prepared."""
    why = depthwise_blocked(plan.spec)
    if why is not None:
        raise ValueError(f"{plan.spec.name}: no blocked depthwise plan: {why}")
    lanes = block_lanes(plan.spec.dtype)
    return dataclasses.replace(plan, kind=DepthwiseKind(), vector_lanes=lanes, tile_co=lanes,
                               tile=(1, 1, min(DEPTHWISE_PIXELS, plan.out_size[2])),
                               in_blocked=True, out_blocked=True, prepared_weights=True,
                               symbol=plan.symbol + "_dw")


def _layout(plan: Plan, in_blocked: bool | None, out_blocked: bool | None) -> Plan:
    """``plan`` reading (writing) the blocked layout; ValueError when it cannot."""
    if isinstance(plan.kind, DepthwiseKind):
        if in_blocked is False or out_blocked is False:
            raise ValueError(f"{plan.spec.name}: the depthwise plan reads and writes the "
                             "blocked layout only")
        return plan
    if not (in_blocked or out_blocked):
        return plan
    why = supports_blocked(plan, in_blocked, out_blocked)
    if why is not None:
        raise ValueError(f"{plan.spec.name}: no blocked layout: {why}")
    suffix = ("_bi" if in_blocked else "") + ("_bo" if out_blocked else "")
    return dataclasses.replace(plan, in_blocked=in_blocked, out_blocked=out_blocked,
                               symbol=plan.symbol + suffix)


def _decide(plan: Plan) -> Plan:
    """The choices that depend on the whole plan (its layout, its weights): job order,
    OpenMP schedules, prefetch distances, the pieces of a depthwise row."""
    kind = plan.kind
    if isinstance(kind, WinogradPlan):
        # jobs (block x part) dealt out in chunks, as the direct plans' (adjacent blocks
        # write adjacent output columns: one block at a time, threads share cache lines)
        kind = dataclasses.replace(
            kind, block_schedule=omp_schedule(kind.co_parts * min(kind.chunk_blocks),
                                              plan.threads))
    elif isinstance(kind, CoTiles):
        kind = co_decisions(plan)
    elif isinstance(kind, DepthwiseKind):
        kind = DepthwiseKind(depthwise_pieces(plan))
    elif isinstance(kind, StagedDepthwiseKind):
        pass  # planned whole by staged_plan_kind
    else:
        kind = DirectKind(channels_inner(plan))
    return dataclasses.replace(plan, kind=kind,
                               omp_schedule=omp_schedule(plan.jobs, plan.threads))


def _base_plan(spec: ConvSpec, schedule: Schedule | None) -> Plan:
    """The plan of ``spec`` under ``schedule``, NCHW, weights as given."""
    if schedule is None:
        schedule = default_schedule(spec)
    tile_co, tile_spatial = schedule.resolve(spec)
    ndim = spec.ndim
    cin_g = spec.in_channels // spec.groups
    cout_g = spec.out_channels // spec.groups
    kernel = pad3(spec.kernel_size)
    taps = math.prod(kernel)
    strides = weight_strides(spec)
    out_size = pad3(spec.output_spatial)
    tile = pad3(tile_spatial)
    tables = spec_tables(spec)
    lanes = schedule.vector_width or vector_lanes(spec.dtype)
    kind: PlanKind
    if schedule.method != "direct":
        kind = make_winograd_plan(spec, schedule.method, tile_co, tile_spatial, lanes,
                                      schedule.threads)
        n_tiles = (1, 1, 1, 1)  # a job is one (image, group); its tile blocks are threaded
    elif schedule.vectorize == "co":
        step = spec.stride[-1] if spec.transposed else 1
        kind = co_row_tiles(spec, tables, co_vectors(spec, tile_co), lanes, tile[2],
                            cin_g * taps, step)
        tile_co = kind.co_vectors * lanes
        if spec.transposed:
            kind = dataclasses.replace(kind, row_taps=co_row_taps(
                kind.folds, out_size[:2], pad3(spec.in_spatial), kernel, tile_co))
        n_tiles = (-(-cout_g // tile_co), -(-out_size[0] // tile[0]),
                   -(-out_size[1] // tile[1]), len(kind.pieces))
    elif schedule.vectorize == "dw":
        kind = staged_plan_kind(spec, tables, out_size, pad3(spec.in_spatial), kernel,
                                tile[1], tile[2], lanes, schedule.threads)
        n_tiles = (cout_g, out_size[0], kind.bands, kind.pieces)
    else:
        kind = DirectKind()
        n_tiles = (-(-cout_g // tile_co), *(-(-o // t) for o, t in zip(out_size, tile)))
    return Plan(
        spec=spec,
        schedule=schedule,
        symbol=kernel_symbol(spec, schedule),
        c_type=dtype_info(spec.dtype).c_type,
        batch=spec.batch,
        groups=spec.groups,
        cin_g=cin_g,
        cout_g=cout_g,
        in_size=pad3(spec.in_spatial),
        out_size=out_size,
        kernel=kernel,
        tables=tables,  # type: ignore[arg-type]
        tile_co=tile_co,
        tile=tile,
        n_tiles=n_tiles,  # type: ignore[arg-type]
        weight_strides=strides,  # type: ignore[arg-type]
        threads=schedule.threads,
        vector_lanes=lanes,
        kind=kind,
    )




def describe_plan(plan: Plan, gathers_by_table: bool = False) -> list[str]:
    """How the kernel runs, in a few lines (``convgen explain`` prints them);
    ``gathers_by_table``: the backend reads a transform-GEMM plan's input through lane
    tables (see convgen.plan.winograd.describe_winograd_plan)."""
    if isinstance(plan.kind, WinogradPlan):
        return describe_winograd_plan(plan, gathers_by_table)
    if isinstance(plan.kind, CoTiles):
        return describe_co_plan(plan)
    if isinstance(plan.kind, StagedDepthwiseKind):
        return describe_staged_plan(plan)
    return describe_direct_plan(plan)
