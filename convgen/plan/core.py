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
import hashlib
import math
from dataclasses import dataclass

from convgen.cpu import vector_lanes
from convgen.dtypes import DTYPES
from convgen.schedule import Schedule, co_vectors
from convgen.plan.defaults import default_schedule
from convgen.spec import ConvSpec, source_coordinate
from convgen.plan.co import (CoClass, CoPiece, CoTap, CoTiles, co_decisions, co_row_taps,  # noqa: F401
                             co_row_tiles, describe_co_plan, transpose_shuffles)
from convgen.plan.depthwise import DEPTHWISE_PIXELS, depthwise_blocked, depthwise_pieces
from convgen.plan.direct import (VEC_EVEN, VEC_GATHER, VEC_LOAD, VEC_MASKED_LOAD,  # noqa: F401
                                 VEC_SKIP, VectorTables, channels_inner, describe_direct_plan,
                                 vector_tables)
from convgen.plan.layout import block_lanes, supports_blocked
from convgen.plan.weights import prepares
from convgen.plan.winograd import WinogradPlan, describe_winograd_plan, make_winograd_plan

# plans deal their jobs out in about this many chunks per thread, first come first
# served (a shared vCPU makes a static split wait for the slower thread)
DYNAMIC_CHUNKS = 4

C_TYPES = {name: d.c_type for name, d in DTYPES.items()}


def index_table(spec: ConvSpec, dim: int) -> list[list[int]]:
    """table[o][k] -> input coordinate (or -1) for spatial dim ``dim``."""
    size = spec.in_spatial[dim]
    out = spec.output_spatial[dim]
    k_size = spec.kernel_size[dim]
    stride, dilation = spec.stride[dim], spec.dilation[dim]
    lo = spec.padding[dim][0]
    table = []
    for o in range(out):
        row = []
        for k in range(k_size):
            tap = k_size - 1 - k if spec.flip else k
            if spec.transposed:
                t = o + lo - tap * dilation
                row.append(t // stride if t >= 0 and t % stride == 0 and t // stride < size
                           else -1)
            else:
                row.append(source_coordinate(o * stride + tap * dilation - lo, size,
                                              spec.padding_mode))
        table.append(row)
    return table


def _pad3(values: tuple[int, ...], fill: int = 1) -> tuple[int, int, int]:
    values = tuple(values)
    return (fill,) * (3 - len(values)) + values  # type: ignore[return-value]


def kernel_symbol(spec: ConvSpec, schedule: Schedule) -> str:
    """convgen_conv2d_n1c64h56w56_k64r3x3_<hash8>: readable, unique per spec+schedule."""
    digest = hashlib.sha256((spec.key() + schedule.key()).encode()).hexdigest()[:8]
    return f"convgen_{spec.name}_{digest}"


@dataclass(frozen=True)
class Plan:
    """Flat constants of one kernel, all spatial quantities as 3-tuples (D, H, W)."""

    spec: ConvSpec
    schedule: Schedule
    symbol: str
    c_type: str
    batch: int
    groups: int
    cin_g: int  # input channels per group
    cout_g: int  # output channels per group
    in_size: tuple[int, int, int]
    out_size: tuple[int, int, int]
    kernel: tuple[int, int, int]
    tables: tuple[list[list[int]], list[list[int]], list[list[int]]]
    tile_co: int
    tile: tuple[int, int, int]
    n_tiles: tuple[int, int, int, int]  # output-channel tiles, then D, H, W tiles
    weight_strides: tuple[int, int, int, int, int, int]  # group, co, ci, kd, kh, kw
    threads: int
    vector_lanes: int  # SIMD lanes over output columns (explicit in the LLVM backend)
    vectorize: str = "w"  # what the lanes hold: "w" output columns, "co" output channels
    co_tiles: CoTiles | None = None  # vectorize="co" only
    winograd: WinogradPlan | None = None  # method "winograd" / "gemm" only
    # the input x (output y and residual r) in the blocked layout of convgen.plan.layout,
    # (N, C / VL, *spatial, VL) with VL = vector_lanes; networks set these between layers
    in_blocked: bool = False
    out_blocked: bool = False
    # the weight argument holds the weights prepared at load (convgen.plan.weights):
    # Winograd's U, the "co" plan's packed channel blocks, the depthwise plan's vectors
    prepared_weights: bool = False
    # the OpenMP schedule clause of the kernel's job loop
    omp_schedule: str = "static"
    # vectorize="w": jobs vary the output-channel tile fastest (see direct.CACHE_BYTES)
    channels_inner: bool = False
    # vectorize="dw": the pieces of a row, see depthwise.depthwise_pieces
    dw_pieces: tuple = ()

    @property
    def tile_spatial(self) -> tuple[int, ...]:
        """The effective spatial tile in the spec's own rank."""
        return self.tile[3 - self.spec.ndim:]

    @property
    def jobs(self) -> int:
        """Independent tiles: batch x groups x channel tiles x spatial tiles (the
        depthwise plan: batch x channel blocks x output rows)."""
        if self.vectorize == "dw":
            return self.batch * (self.groups // self.vector_lanes) * math.prod(
                self.out_size[:2])
        return self.batch * self.groups * math.prod(self.n_tiles)


def omp_schedule(jobs: int, threads: int) -> str:
    """The OpenMP schedule clause of a loop over ``jobs`` jobs (see DYNAMIC_CHUNKS)."""
    if DYNAMIC_CHUNKS <= 0:
        return "static"
    return f"dynamic, {max(1, jobs // (threads * DYNAMIC_CHUNKS))}"


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
    return dataclasses.replace(plan, vectorize="dw", vector_lanes=lanes, co_tiles=None,
                               winograd=None, tile_co=lanes,
                               tile=(1, 1, min(DEPTHWISE_PIXELS, plan.out_size[2])),
                               in_blocked=True, out_blocked=True, prepared_weights=True,
                               symbol=plan.symbol + "_dw")


def _layout(plan: Plan, in_blocked: bool | None, out_blocked: bool | None) -> Plan:
    """``plan`` reading (writing) the blocked layout; ValueError when it cannot."""
    if plan.vectorize == "dw":
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
    fields = {"omp_schedule": omp_schedule(plan.jobs, plan.threads)}
    if plan.winograd is not None:
        wp = plan.winograd
        # jobs (block x part) dealt out in chunks, as the direct plans' (adjacent blocks
        # write adjacent output columns: one block at a time, threads share cache lines)
        fields["winograd"] = dataclasses.replace(
            wp, block_schedule=omp_schedule(wp.co_parts * min(wp.chunk_blocks),
                                            plan.threads))
    elif plan.vectorize == "co":
        fields["co_tiles"] = co_decisions(plan)
    elif plan.vectorize == "dw":
        fields["dw_pieces"] = depthwise_pieces(plan)
    else:
        fields["channels_inner"] = channels_inner(plan)
    return dataclasses.replace(plan, **fields)


def _base_plan(spec: ConvSpec, schedule: Schedule | None) -> Plan:
    """The plan of ``spec`` under ``schedule``, NCHW, weights as given."""
    if schedule is None:
        schedule = default_schedule(spec)
    tile_co, tile_spatial = schedule.resolve(spec)
    ndim = spec.ndim
    cin_g = spec.in_channels // spec.groups
    cout_g = spec.out_channels // spec.groups
    kernel = _pad3(spec.kernel_size)
    taps = math.prod(kernel)
    kstrides = (kernel[1] * kernel[2], kernel[2], 1)
    if spec.transposed:  # weight (C_in, C_out/groups, *k)
        strides = (cin_g * cout_g * taps, taps, cout_g * taps, *kstrides)
    else:  # weight (C_out, C_in/groups, *k)
        strides = (cout_g * cin_g * taps, cin_g * taps, taps, *kstrides)
    out_size = _pad3(spec.output_spatial)
    tile = _pad3(tile_spatial)
    tables = tuple(index_table(spec, d) for d in range(ndim))
    tables = ([[0]],) * (3 - ndim) + tables
    lanes = schedule.vector_width or vector_lanes(spec.dtype)
    co_tiles = winograd = None
    if schedule.method != "direct":
        winograd = make_winograd_plan(spec, schedule.method, tile_co, tile_spatial, lanes,
                                      schedule.threads)
        n_tiles = (1, 1, 1, 1)  # a job is one (image, group); its tile blocks are threaded
    elif schedule.vectorize == "co":
        step = spec.stride[-1] if spec.transposed else 1
        co_tiles = co_row_tiles(spec, tables[2], co_vectors(spec, tile_co), lanes, tile[2],
                                cin_g * taps, step)
        tile_co = co_tiles.co_vectors * lanes
        if spec.transposed:
            co_tiles = dataclasses.replace(co_tiles, row_taps=co_row_taps(
                tables, _pad3(spec.in_spatial), kernel, tile_co))
        n_tiles = (-(-cout_g // tile_co), -(-out_size[0] // tile[0]),
                   -(-out_size[1] // tile[1]), len(co_tiles.pieces))
    else:
        n_tiles = (-(-cout_g // tile_co), *(-(-o // t) for o, t in zip(out_size, tile)))
    return Plan(
        spec=spec,
        schedule=schedule,
        symbol=kernel_symbol(spec, schedule),
        c_type=C_TYPES[spec.dtype],
        batch=spec.batch,
        groups=spec.groups,
        cin_g=cin_g,
        cout_g=cout_g,
        in_size=_pad3(spec.in_spatial),
        out_size=out_size,
        kernel=kernel,
        tables=tables,  # type: ignore[arg-type]
        tile_co=tile_co,
        tile=tile,
        n_tiles=n_tiles,  # type: ignore[arg-type]
        weight_strides=strides,  # type: ignore[arg-type]
        threads=schedule.threads,
        vector_lanes=lanes,
        vectorize=schedule.vectorize,
        co_tiles=co_tiles,
        winograd=winograd,
    )




def describe_plan(plan: Plan, gathers_by_table: bool = False) -> list[str]:
    """How the kernel runs, in a few lines (``convgen explain`` prints them);
    ``gathers_by_table``: the backend reads a transform-GEMM plan's input through lane
    tables (see convgen.plan.winograd.describe_winograd_plan)."""
    if plan.winograd is not None:
        return describe_winograd_plan(plan, gathers_by_table)
    if plan.co_tiles is not None:
        return describe_co_plan(plan)
    return describe_direct_plan(plan)
