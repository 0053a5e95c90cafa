"""The untuned fallback schedules: what runs when no tuning record exists.

``default_schedule(spec)`` picks a plan kind (transform GEMM, "co" or "w") and its tiles
and threads from the spec alone; convgen.graph.lower asks the per-kind defaults directly
for the layers of a network (blocked layouts, prepared weights).
"""

from __future__ import annotations

import math

from convgen import config
from convgen.cpu import vector_lanes
from convgen.dtypes import dtype_info
from convgen.errors import ScheduleError
from convgen.plan.base import spec_tables
from convgen.plan.co import co_row_tiles
from convgen.schedule import (MAX_THREADS, Schedule, co_vectors, default_dw_tiles,
                              default_tile_spatial, dw_unsupported, unsupported)
from convgen.spec import ConvSpec
from convgen.plan.winograd import grid_size, tile_vectors


# Below this much work a kernel runs on one thread: starting threads would cost more
# (2 threads win from about 2 MFLOP; 4 keeps the tiniest layers off a second core, which
# costs a whole time slice when another process holds it).
PARALLEL_FLOPS = 4_000_000


def default_schedule(spec: ConvSpec, backend: str | None = None,
                     prepared_weights: bool = False, threads: int | None = None) -> Schedule:
    """The untuned fallback on ``threads`` threads. Every backend builds every plan, so
    the default is the same for each; ``backend`` is accepted for callers that name one.

    A transform-GEMM plan where :func:`default_transform_schedule` finds one
    (``prepared_weights``: the weights are constants transformed once, as in networks).
    Otherwise vectorize over output channels (vectorize="co", see
    :func:`default_co_schedule`) when :func:`prefers_co` (on both backends, transposed
    convolutions too), otherwise over output columns (:func:`default_w_schedule`).
    ``threads`` None: :func:`default_threads` (the thread count also picks between plans:
    see PARALLEL_WINOGRAD_WEIGHT_BYTES); more than MAX_THREADS are clamped to it.
    """
    if threads is None:
        threads = default_threads(spec)
    elif isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads: expected an integer >= 1 or None, got {threads!r}")
    threads = min(threads, MAX_THREADS)
    transform = default_transform_schedule(spec, threads, prepared_weights)
    if transform is not None:
        return transform
    return default_direct_schedule(spec, threads)


def default_direct_schedule(spec: ConvSpec, threads: int = 1) -> Schedule:
    """The direct plans' default: the staged depthwise plan where :func:`prefers_dw`, "co"
    where :func:`prefers_co` and it fits (:func:`co_fits`), else "w"."""
    if prefers_dw(spec):
        return default_dw_schedule(spec, threads)
    if prefers_co(spec):
        schedule = default_co_schedule(spec, threads)
        if co_fits(spec, schedule):
            return schedule
    return default_w_schedule(spec, threads)


def prefers_dw(spec: ConvSpec) -> bool:
    """Whether the staged depthwise plan (vectorize="dw", convgen.plan.staged) is the
    default: a depthwise layer (groups == in_channels > 1, not transposed) with fewer
    output channels per group than a vector (more take "co", whose lanes they fill). It
    replaced "w" there: 1.0-8x faster on the depthwise bench (docs/performance.md)."""
    return (spec.groups > 1 and dw_unsupported(spec) is None
            and spec.out_channels // spec.groups < vector_lanes(spec.dtype))


def default_dw_schedule(spec: ConvSpec, threads: int = 1) -> Schedule:
    """vectorize="dw": the register tile of schedule.default_dw_tiles, one output depth
    at a time in 3D."""
    rows, columns = default_dw_tiles(spec)
    tiles = (1,) * (spec.ndim - 2) + ((rows,) if spec.ndim >= 2 else ()) + (columns,)
    return Schedule(tile_co=1, tile_spatial=tiles, threads=threads, vectorize="dw")


def default_threads(spec: ConvSpec) -> int:
    """The thread count of the default schedule when none is asked: the default thread
    count (convgen.config.get_num_threads, at most MAX_THREADS) for kernels of at least
    PARALLEL_FLOPS, else one."""
    return min(config.num_threads(), MAX_THREADS) if spec.flops >= PARALLEL_FLOPS else 1


def co_fits(spec: ConvSpec, schedule: Schedule) -> bool:
    """Whether the "co" plan of ``schedule`` stays within its unroll limit
    (convgen.plan.co.MAX_CO_UNROLLED: a kernel of ~100+ taps in a row does not). Plans
    the row's pieces only: border pieces and one per interior run."""
    lanes = schedule.vector_width or vector_lanes(spec.dtype)
    step = spec.stride[-1] if spec.transposed else 1
    reduction = spec.in_channels // spec.groups * math.prod(spec.kernel_size)
    try:
        co_row_tiles(spec, spec_tables(spec), co_vectors(spec, schedule.tile_co), lanes,
                     schedule.tile_spatial[-1], reduction, step)
    except ScheduleError:
        return False
    return True


def default_w_schedule(spec: ConvSpec, threads: int = 1) -> Schedule:
    """vectorize="w": rows of up to 32 output columns. The register tile (output
    channels x vectors of columns) is kept at 16 vectors, half the AVX-512 register
    file: 8 channels when a row takes 2 vectors, 16 when it takes one; strided
    convolutions gather their inputs, so 16 channels share each gather (measured on
    ResNet-18's layers). With fewer than 8 channels per group (depthwise) the tile grows
    in space instead: up to 4 vectors per row and 8 rows (docs/performance.md).
    """
    cog = spec.out_channels // spec.groups
    lanes = vector_lanes(spec.dtype)
    tiles = default_tile_spatial(spec.output_spatial)
    vectors = -(-tiles[-1] // lanes)
    strided = spec.stride[-1] > 1 and not spec.transposed
    tile_co = min(cog, 16 if vectors == 1 or strided else 8)
    if tile_co < 8:  # few channels per group (depthwise): wider and taller tiles instead
        out = spec.output_spatial
        wide = list(tiles)
        wide[-1] = min(out[-1], 4 * lanes)
        if len(out) >= 2:
            wide[-2] = min(out[-2], 8)
        tiles = tuple(wide)
    return Schedule(tile_co=tile_co, tile_spatial=tiles, threads=threads)


# Rows at least this long and read at stride 1 keep vectorize="w" (whole vector loads).
LONG_ROW = 128


def prefers_co(spec: ConvSpec) -> bool:
    """Whether vectorize="co" is the default (both backends): a vector of output channels
    per group or more, and transposed, or rows that are short (< LONG_ROW output columns)
    or strided: long stride-1 rows are whole vector loads on "w", and a transposed "co"
    plan wastes no multiply-adds on the scatter's zeros (measurements: docs/performance.md).
    """
    cog = spec.out_channels // spec.groups
    if cog < vector_lanes(spec.dtype):
        return False
    return spec.transposed or spec.output_spatial[-1] < LONG_ROW or spec.stride[-1] > 1


CO_SHORT_REDUCTION = 256
CO_SHORT_ROW = 14
CO_SHORT_PIECE = 16


def default_co_schedule(spec: ConvSpec, threads: int = 1, blocked_input: bool = False,
                        blocked_output: bool = False) -> Schedule:
    """vectorize="co": 1 vector of output channels x 28 pixels of a row (transposed: 2
    vectors x 12, or 1 x 24 when a group has one vector of channels); one row per job.

    With 1 vector each broadcast input folds into its FMA (an embedded broadcast), so 28
    accumulators fit beside the weight vector; 2 x 14 made gcc 12 spill accumulators when
    each call packed its weights. Transposed convolutions keep 2 x 12 (1 x 28 was slower).
    Two rows per job when the reduction (input channels per group x taps) is shorter than
    CO_SHORT_REDUCTION (a short reduction leaves a job too little work). Rows of at most
    CO_SHORT_ROW outputs take 2 vectors of channels x the whole row (28 accumulators or
    fewer, each broadcast feeding two FMAs). ``blocked_input`` (a network's layer reading
    the blocked layout, convgen.plan.layout): 2 vectors x 14 pixels for longer rows too,
    since each broadcast then reads a cache line of its own and feeding two FMAs from it
    pays. ``blocked_output``: one row per job even with a short reduction. At 2+ threads a
    short reduction takes one row of CO_SHORT_PIECE pixels per job (more, smaller jobs to
    share). The measurements behind each rule: docs/performance.md.
    """
    cog = spec.out_channels // spec.groups
    lanes = vector_lanes(spec.dtype)
    row = spec.output_spatial[-1]
    if spec.transposed:
        vectors = min(2, -(-cog // lanes))
    else:
        vectors = 2 if (row <= CO_SHORT_ROW or blocked_input) and cog > lanes else 1
    pixels = 12 if vectors == 2 and spec.transposed else (
        min(row, CO_SHORT_ROW) if vectors == 2 else (24 if spec.transposed else 28))
    rows = 1
    reduction = spec.in_channels // spec.groups * math.prod(spec.kernel_size)
    short = spec.ndim >= 2 and not spec.transposed and reduction < CO_SHORT_REDUCTION and \
        vectors == 1
    if short and threads >= 2:
        pixels = CO_SHORT_PIECE
    elif short and not blocked_output:
        rows = min(2, spec.output_spatial[-2])
    tiles = (1,) * (spec.ndim - 2) + ((rows,) if spec.ndim >= 2 else ()) \
        + (min(pixels, spec.output_spatial[-1]),)
    return Schedule(tile_co=vectors * lanes, tile_spatial=tiles, threads=threads,
                    vectorize="co")


# method="gemm" by default from this many output pixels (fewer: a block of tiles is mostly
# padding lanes, and "co" holds the row in registers).
GEMM_MIN_PIXELS = 256
# method="winograd" by default when the transformed weights (alpha^2 x C_in x C_out per
# group, rebuilt in every call) fit this many bytes, and at least this share of the lanes of
# the tile blocks hold a tile.
WINOGRAD_WEIGHT_BYTES = 1 << 20
# ... and when the network transforms them once at load (convgen.graph): any size at one
# thread; at 2+ threads up to PARALLEL_WINOGRAD_WEIGHT_BYTES. A network reads each layer's
# U once per call, from memory, and threads share the memory bandwidth while they split
# the arithmetic that Winograd saves: 256@14 layers take F(4x4) (9 MiB of U), 512@7 layers
# (F(2x2), 16 MiB) stay direct (measured on four networks, docs/performance.md).
PREPARED_WINOGRAD_WEIGHT_BYTES = 1 << 30
PARALLEL_WINOGRAD_WEIGHT_BYTES = 10 << 20
WINOGRAD_MIN_LANE_USE = 0.75
# ... and for these 2D kernels (Inception v3's factorized 1x7 / 7x1 and its 5x5): the
# outputs per tile of the kernel's dims (alpha = m + k - 1 = 8), 16-channel register
# tiles. Tuning them (2026-12-07, bound weights, 1 and 2 threads, docs/performance.md)
# found Winograd 1.10-1.24x faster than the direct default on 1x7 and 7x1 (160 channels
# at 17x17) and 2.55-2.66x on 5x5 (48 -> 64 at 35x35).
WINOGRAD_WIDE_KERNELS = {(1, 7): (2,), (7, 1): (2,), (5, 5): (4,)}


def default_transform_schedule(spec: ConvSpec, threads: int = 1,
                               prepared_weights: bool = False) -> Schedule | None:
    """The transform-GEMM default (both backends), or None for the direct plans.

    "gemm" for 1x1 convolutions (not transposed, 1D/2D) with 8+ input and output channels
    per group and GEMM_MIN_PIXELS+ output pixels, where it beat "co". With the weights
    prepared (networks, bind) strided ones take "co" instead, whose packed blocks read the
    input in place where the GEMM first copies the strided pixels out.

    "winograd" for 3x3 2D convolutions (stride 1) with 16+ channels each way per group:
    F(4x4, 3x3), else F(2x2, 3x3) (1x7 / 7x1: F(2, 7) along the kernel's long dim; 5x5:
    F(4x4, 5x5); WINOGRAD_WIDE_KERNELS), whichever's transformed weights fit
    WINOGRAD_WEIGHT_BYTES with WINOGRAD_MIN_LANE_USE of the block lanes used (larger
    layers stay direct: their transformed weights alone cost more than the direct
    convolution). 1D: F(6, 3) with 14-channel register tiles for kernel 3 (the same
    limits); other 1D kernels stay direct (not measured). Dilated layers tile each
    dilation phase (see convgen.plan.winograd). The register tile: 28 output channels x 1
    vector of tiles (measured best), fewer when the group has fewer. The measurements
    behind each rule: docs/performance.md.
    """
    cin_g, cog = spec.in_channels // spec.groups, spec.out_channels // spec.groups
    if spec.transposed or spec.ndim > 2:
        return None
    lanes = vector_lanes(spec.dtype)
    if all(k == 1 for k in spec.kernel_size):
        if cin_g < 8 or cog < 8 or math.prod(spec.output_spatial) < GEMM_MIN_PIXELS:
            return None
        if prepared_weights and any(s > 1 for s in spec.stride):
            return None  # "co", its blocks packed at load (see the docstring)
        rows = next((r for r in (12, 14, 16, 8, 10, 28, 24, 20) if cog % r == 0), 14)
        return Schedule(tile_co=min(rows, cog), threads=threads, method="gemm")
    if unsupported(spec, "winograd") is not None or cin_g < 16 or cog < 16:
        return None
    if spec.kernel_size == (3,):  # 1D
        rows, sizes = min(cog, 14), (6,)
    elif spec.kernel_size == (3, 3):
        rows, sizes = (28 if cog >= 28 else min(cog, 14)), (4, 2)
    elif spec.kernel_size in WINOGRAD_WIDE_KERNELS:
        rows, sizes = 16, WINOGRAD_WIDE_KERNELS[spec.kernel_size]
    else:
        return None
    block = tile_vectors(rows) * lanes
    itemsize = dtype_info(spec.dtype).itemsize
    if not prepared_weights:
        limit = WINOGRAD_WEIGHT_BYTES
    elif threads > 1:
        limit = PARALLEL_WINOGRAD_WEIGHT_BYTES
    else:
        limit = PREPARED_WINOGRAD_WEIGHT_BYTES
    for m in sizes:  # outputs per tile and dim, the largest that fits first
        # a dim of kernel 1 (1x7, 7x1) keeps one output per tile
        tile = tuple(1 if k == 1 else m for k in spec.kernel_size)
        tiles = math.prod(grid_size(o, d, t)
                          for o, d, t in zip(spec.output_spatial, spec.dilation, tile))
        lane_use = tiles / (-(-tiles // block) * block)
        alpha = math.prod(t + k - 1 for t, k in zip(tile, spec.kernel_size))
        weight_bytes = alpha * cin_g * cog * spec.groups * itemsize
        if weight_bytes <= limit and lane_use >= WINOGRAD_MIN_LANE_USE:
            return Schedule(tile_co=rows, tile_spatial=tile, threads=threads,
                            method="winograd")
    return None
