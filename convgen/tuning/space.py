"""The tuner's search space: legal, distinct, register-sized schedules for a spec.

Candidates vary the plan (on C the transform-GEMM methods where legal, see
:func:`_transform_candidates`; vectorize="w" and, for convolutions with at least half a
vector of output channels per group, "co", transposed ones included; for depthwise ones
"dw", :func:`_dw_candidates`), the output-channel
tile, the vectors of columns per row (or, for "co", the vectors of channels x the pixels
per register tile), the rows per tile, the vector width (LLVM only: on C half width
was measured much slower, docs/performance.md) and threads. Pruned before anything
compiles: illegal tiles (ScheduleError), duplicates after clamping, and register tiles
larger than twice the register file.
"""

from __future__ import annotations


import math

import numpy as np

from convgen.backends import get_backend, resolve_backend
from convgen.plan.gpu import gpu_kinds, make_gpu_plan
from convgen.cpu import vector_bits, vector_lanes
from convgen.errors import ScheduleError
from convgen.schedule import MAX_THREADS, GpuSchedule, Schedule, co_vectors, dw_unsupported
from convgen.plan.defaults import default_schedule
from convgen.plan.winograd import tile_vectors
from convgen.spec import ConvSpec

MAX_TILE_CO = 64
ROW_TILES = (1, 2, 4, 8)  # output rows per tile (H), and 1 or 2 planes (D) in 3D
WIDTH_VECTORS = 4  # innermost tiles: up to this many vectors of output columns
# vectorize="co": vectors of output channels, and output columns per register tile
CO_VECTORS = (1, 2, 3, 4)
CO_PIXELS = (4, 6, 7, 8, 10, 12, 14, 16, 20, 24, 28)


def _resolved(spec: ConvSpec, schedule: Schedule) -> tuple:
    """What a schedule really does for ``spec``: plan, tiles after clamping, lanes, threads
    (for vectorize="co" the channel tile counts whole vectors, and a transposed row's
    pieces are at most one stride phase long)."""
    tile_co, tiles = schedule.resolve(spec)
    if schedule.method != "direct":
        return (schedule.method, tile_co, tiles, vector_lanes(spec.dtype), schedule.threads)
    if schedule.vectorize == "co":
        tile_co = co_vectors(spec, tile_co) * vector_lanes(spec.dtype)
        tiles = (*tiles[:-1], min(tiles[-1], _phase_columns(spec)))
    return (schedule.vectorize, tile_co, tiles, schedule.vector_width or vector_lanes(spec.dtype),
            schedule.threads)


def _phase_columns(spec: ConvSpec) -> int:
    """Output columns of a row that one "co" piece can hold: the row, or for a transposed
    convolution its longest stride phase."""
    step = spec.stride[-1] if spec.transposed else 1
    return -(-spec.output_spatial[-1] // step)


def registers() -> int:
    """Vector registers of the host: 32 with AVX-512, else 16."""
    return 32 if vector_bits() == 512 else 16


def accumulator_limit() -> int:
    """The largest register tile worth timing: twice the vector register file."""
    return 2 * registers() * vector_bits() // 8


def accumulator_bytes(spec: ConvSpec, schedule: Schedule) -> int:
    """Bytes of the register tile the kernels keep per output row: output channels x
    whole vectors of output columns (rows of a tile are computed one after another)."""
    vectorize, tile_co, tiles, lanes, _ = _resolved(spec, schedule)
    if schedule.method != "direct":  # channels x vectors of tiles
        return tile_co * tile_vectors(tile_co) * lanes * np.dtype(spec.dtype).itemsize
    if vectorize == "co":  # channel vectors x pixels
        return tile_co * tiles[-1] * np.dtype(spec.dtype).itemsize
    return tile_co * -(-tiles[-1] // lanes) * lanes * np.dtype(spec.dtype).itemsize


def estimated_cost(spec: ConvSpec, schedule: Schedule) -> float:
    """A cheap relative cost (lower is better), only to order candidates before timing.

    Work computed and thrown away (channels past the last, lanes past the last column),
    too few independent accumulators to hide FMA latency, accumulators beyond the
    register file, half-width vectors, and threads left without a tile.
    """
    vectorize, tile_co, tiles, lanes, threads = _resolved(spec, schedule)
    out = spec.output_spatial
    cog = spec.out_channels // spec.groups
    if vectorize == "co":
        return _estimated_co_cost(spec, tile_co // lanes, tiles, lanes, threads)
    n_vectors = -(-tiles[-1] // lanes)
    waste = (-(-cog // tile_co) * tile_co / cog) \
        * (-(-out[-1] // tiles[-1]) * n_vectors * lanes / out[-1])
    accumulators = tile_co * n_vectors
    if vectorize == "dw":  # the staged depthwise tile: rows x vectors, one channel
        accumulators = (tiles[-2] if spec.ndim >= 2 else 1) * n_vectors
    latency = math.sqrt(max(1.0, registers() / 2 / accumulators))
    spill = 1.0 + 0.7 * max(0.0, math.log2(accumulators / registers()))
    narrow = vector_lanes(spec.dtype) / lanes
    jobs = spec.batch * spec.groups * -(-cog // tile_co) \
        * math.prod(-(-o // t) for o, t in zip(out, tiles))
    imbalance = -(-jobs // threads) * threads / jobs
    return waste * latency * spill * narrow * imbalance


def _estimated_co_cost(spec: ConvSpec, vectors: int, tiles: tuple[int, ...], lanes: int,
                       threads: int) -> float:
    """estimated_cost for vectorize="co": lanes past the last channel, too few
    accumulators, spills, and loads per FMA ((vectors + pixels) / (vectors x pixels),
    1 at the default 2 x 12 tile); no gathers at any stride."""
    out = spec.output_spatial
    cog = spec.out_channels // spec.groups
    pixels = tiles[-1]
    blocks = -(-cog // (vectors * lanes))
    waste = blocks * vectors * lanes / cog
    accumulators = vectors * pixels
    latency = math.sqrt(max(1.0, registers() / 2 / accumulators))
    # gcc keeps 24 accumulators in the 32 AVX-512 registers next to shared broadcasts,
    # 28 when each broadcast feeds one FMA (1 vector), and spills beyond
    fits = registers() * (7 if vectors == 1 else 6) // 8
    spill = 1.0 + 0.7 * max(0.0, math.log2(accumulators / fits))
    loads = ((vectors + pixels) / accumulators) / ((2 + 12) / 24)
    step = spec.stride[-1] if spec.transposed else 1
    pieces = step * -(-_phase_columns(spec) // pixels)
    jobs = spec.batch * spec.groups * blocks * pieces \
        * math.prod(-(-o // t) for o, t in zip(out[:-1], tiles[:-1]))
    imbalance = -(-jobs // threads) * threads / jobs
    return waste * latency * spill * max(1.0, loads) * imbalance


def _co_candidates(spec: ConvSpec, threads: int, outer: list[tuple]) -> list[Schedule]:
    """vectorize="co" schedules: channel vectors x pixels within the register
    file, each with every outer tile (rows, planes)."""
    cog = spec.out_channels // spec.groups
    lanes = vector_lanes(spec.dtype)
    if 2 * cog < lanes:
        return []
    found = []
    for vectors in CO_VECTORS:
        if (vectors - 1) * lanes >= cog:
            break
        for pixels in CO_PIXELS:
            if vectors * pixels > registers():
                continue
            for lead in outer:
                found.append(Schedule(tile_co=vectors * lanes, tile_spatial=(*lead, pixels),
                                      threads=threads, vectorize="co"))
    return found


# vectorize="dw" (depthwise): register tiles of rows x vectors of columns, at most
# DW_TILE_ACCUMULATORS of them (the kernel's weights share the register file)
DW_ROWS = (1, 2, 4, 8)
DW_TILE_ACCUMULATORS = 16


def _dw_candidates(spec: ConvSpec, threads: int) -> list[Schedule]:
    """vectorize="dw" schedules for a depthwise spec (convgen.plan.staged): rows x vectors
    of columns up to DW_TILE_ACCUMULATORS accumulators; 3D tiles are one plane deep."""
    if dw_unsupported(spec) is not None:
        return []
    out = spec.output_spatial
    lanes = vector_lanes(spec.dtype)
    rows = sorted({min(r, out[-2]) for r in DW_ROWS}) if spec.ndim >= 2 else [1]
    found = []
    for r in rows:
        for vectors in range(1, DW_TILE_ACCUMULATORS // r + 1):
            columns = min(vectors * lanes, out[-1])
            lead = (1,) * (spec.ndim - 2) + ((r,) if spec.ndim >= 2 else ())
            found.append(Schedule(tile_co=1, tile_spatial=(*lead, columns), threads=threads,
                                  vectorize="dw"))
            if columns == out[-1]:
                break
    return found


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def candidate_schedules(spec: ConvSpec, backend: str | None = None, threads: int | None = None,
                        max_accumulator_bytes: int | None = None,
                        bound: bool = False) -> list[Schedule]:
    """Legal, distinct schedules for ``spec`` on ``threads`` threads: the default first
    (the one for prepared weights when ``bound``; ``threads`` None: the thread count
    compile() asks for then, its default's: one below the parallel threshold, else
    $CONVGEN_NUM_THREADS or the cores), then the rest, most promising first (see
    :func:`_ranked`).

    Pruned before anything compiles: illegal tiles (ScheduleError), register tiles over
    ``max_accumulator_bytes`` (default :func:`accumulator_limit`), and schedules
    that clamp to one already listed.
    """
    backend = resolve_backend(backend)
    chosen = get_backend(backend)
    caveat = chosen.timing_caveat()
    if caveat is not None:
        raise ValueError(f"backend {backend!r} cannot be tuned here: {caveat}")
    if chosen.device == "gpu":
        return gpu_candidate_schedules(spec, chosen.default_schedule(spec, bound=bound))
    # the default compile() falls back to at the thread count asked; threads None: its
    # own (one thread below convgen.plan.defaults.PARALLEL_FLOPS), as compile() asks then
    default = default_schedule(spec, backend, prepared_weights=bound,
                               threads=None if threads is None else min(threads, MAX_THREADS))
    threads = default.threads  # every candidate's, so records of one count compete
    limit = accumulator_limit() if max_accumulator_bytes is None else max_accumulator_bytes
    cog = spec.out_channels // spec.groups
    out = spec.output_spatial
    host = vector_lanes(spec.dtype)
    widths = [0] + ([host // 2] if get_backend(backend).explicit_vectors and host >= 8 else [])
    tile_cos = sorted({t for t in _divisors(cog) if t <= MAX_TILE_CO}
                      | {1 << i for i in range(7) if 1 << i <= min(cog, MAX_TILE_CO)})
    rows = sorted({min(r, out[-2]) for r in ROW_TILES}) if len(out) >= 2 else []
    planes = sorted({min(p, out[0]) for p in (1, 2)}) if len(out) == 3 else []
    outer = [(p, r) for p in planes for r in rows] if planes else \
        [(r,) for r in rows] if rows else [()]

    seen = {_resolved(spec, default)}
    transforms = []
    for schedule in _transform_candidates(spec, threads):
        key = _resolved(spec, schedule)
        if key not in seen and accumulator_bytes(spec, schedule) <= limit:
            seen.add(key)
            transforms.append(schedule)
    found: list[Schedule] = []
    w_plan = [Schedule(tile_co=tile_co, tile_spatial=(*lead, w), threads=threads,
                       vector_width=vw)
              for vw in widths
              for tile_co in tile_cos
              for lead in outer
              for w in sorted({min((vw or host) * i, out[-1])
                               for i in range(1, WIDTH_VECTORS + 1)})]
    co_plan = _co_candidates(spec, threads, outer)
    dw_plan = _dw_candidates(spec, threads)
    for schedule in w_plan + co_plan + dw_plan:
        try:
            key = _resolved(spec, schedule)
        except ScheduleError:
            continue
        if key in seen or accumulator_bytes(spec, schedule) > limit:
            continue
        seen.add(key)
        found.append(schedule)
    return [default, *transforms, *_ranked(spec, found)]


# method "winograd" / "gemm" candidates (C only): output tiles per dim and register tiles
WINOGRAD_TILES = (2, 4, 6)
TRANSFORM_CO_ROWS = (28, 16, 14, 12, 8)


def _transform_candidates(spec: ConvSpec, threads: int) -> list[Schedule]:
    """The transform-GEMM schedules legal for ``spec``: for "winograd" square tiles of
    WINOGRAD_TILES (1 where the kernel is 1) x TRANSFORM_CO_ROWS, for "gemm" (1x1)
    TRANSFORM_CO_ROWS; register tiles clamped to the group's channels, each listed once."""
    cog, cin_g = spec.out_channels // spec.groups, spec.in_channels // spec.groups
    if cog < 4 or cin_g < 4:  # depthwise and the like: a GEMM over a few channels
        return []
    method = "gemm" if all(k == 1 for k in spec.kernel_size) else "winograd"
    tilings = [None] if method == "gemm" else \
        [tuple(1 if k == 1 else m for k in spec.kernel_size) for m in WINOGRAD_TILES]
    found, seen = [], set()
    for tiles in tilings:
        for rows in TRANSFORM_CO_ROWS:
            schedule = Schedule(tile_co=min(rows, cog), tile_spatial=tiles, threads=threads,
                                method=method)
            try:
                key = _resolved(spec, schedule)
            except ScheduleError:
                continue
            if key not in seen:
                seen.add(key)
                found.append(schedule)
    return found


def _ranked(spec: ConvSpec, schedules: list[Schedule]) -> list[Schedule]:
    """By estimated cost, but the outer tiles (rows, planes), which matter least, take
    turns: each (channels, columns, vector width) first with its best outer tile, then
    every one with its second best, ... so a budget cut keeps the variety that matters."""
    cost = {s: (estimated_cost(spec, s), s.key()) for s in schedules}
    groups: dict[tuple, list[Schedule]] = {}
    for s in sorted(schedules, key=cost.__getitem__):
        groups.setdefault((s.vectorize, s.tile_co, s.tile_spatial[-1], s.vector_width),
                          []).append(s)
    turn = {s: i for members in groups.values() for i, s in enumerate(members)}
    return sorted(schedules, key=lambda s: (turn[s], cost[s]))


# GPU candidates: block and thread tiles around the default's (convgen.plan.gpu)
GPU_THREAD_TILES = ((1, 1), (2, 2), (4, 2), (2, 4), (4, 4), (8, 4), (4, 8))
GPU_LAST_DIM_BLOCKS = (16, 32, 64, 128)
GPU_GEMM_BLOCKS = ((32, 32, 8), (32, 64, 16), (64, 32, 16), (64, 64, 8), (64, 64, 16),
                   (64, 128, 8), (128, 64, 8), (128, 128, 8))
GPU_GEMM_THREADS = ((2, 2), (4, 4), (8, 4), (4, 8), (8, 8))
MAX_GPU_CANDIDATES = 64


def gpu_candidate_schedules(spec: ConvSpec, default: Schedule) -> list[Schedule]:
    """Legal, distinct GPU schedules for ``spec``, ``default`` first: every kind the spec
    allows, tiles of several sizes, staging on and off; pruned by the planner's limits
    (ScheduleError) and by the plan they make (two schedules that plan the same kernel
    are one candidate)."""
    cout_g = spec.out_channels // spec.groups
    kinds = sorted(gpu_kinds(spec), key=lambda kind: kind != default.gpu.kind)  # its first
    wanted: list[GpuSchedule] = []
    for kind in kinds:
        if kind == "gemm":
            wanted += [GpuSchedule(kind=kind, block=block, thread=thread)
                       for block in GPU_GEMM_BLOCKS for thread in GPU_GEMM_THREADS]
            continue
        for thread in GPU_THREAD_TILES:
            for last in GPU_LAST_DIM_BLOCKS:
                lead = [4 if d == spec.ndim - 2 else 1 for d in range(spec.ndim - 1)]
                block_co = min(-(-cout_g // thread[0]) * thread[0], 4 * thread[0])
                for stage in (True, False):
                    wanted.append(GpuSchedule(kind=kind, block=(block_co, *lead, last),
                                              thread=thread, stage=stage))
    seen = {_gpu_plan_key(spec, default)}
    found = [default]
    for gpu in wanted:
        schedule = Schedule(threads=default.threads, gpu=gpu)
        try:
            key = _gpu_plan_key(spec, schedule)
        except ScheduleError:
            continue
        if key not in seen:
            seen.add(key)
            found.append(schedule)
        if len(found) >= MAX_GPU_CANDIDATES:
            break
    return found


def _gpu_plan_key(spec: ConvSpec, schedule: Schedule):
    """What the GPU plan of ``schedule`` computes with (its kind's constants)."""
    plan = make_gpu_plan(spec, schedule)
    return repr(plan.kind)
