"""GPU plans (backend "cuda"): the block and thread decomposition of one CUDA kernel.

Three kinds, chosen like the CPU ones by the planner from the spec and the schedule's
``gpu`` part (:class:`convgen.schedule.GpuSchedule`):

- ``tiled`` (:class:`GpuTiled`): PMPP's tiled convolution. A block computes a tile of
  output channels x output positions; for each chunk of input channels it stages the input
  tile plus its halo in shared memory (every ndim, stride, dilation, padding mode, groups),
  then each thread accumulates a register tile of channels x positions. Weights sit in
  ``__constant__`` memory when they fit, else are read through the read-only cache.
  Transposed convolutions are split by stride phase: along each dim, the outputs
  ``o = q * stride + r - lo`` of one phase ``r`` read the input at ``q + offset`` for only
  the taps whose ``tap * dilation`` is ``r`` modulo the stride, so no multiply-add ever
  touches a zero of the scatter definition; a block holds one phase.
- ``depthwise``: the same kernel shape for one input channel per group (no channel
  reduction: the block's tile grows in space instead).
- ``gemm`` (:class:`GpuGemm`): implicit GEMM for layers with many channels. Per group,
  ``Y[co, pixel] = W[co, k] X[k, pixel]`` with ``k`` = (input channel, taps); a block
  computes a BM x BN tile, building the im2col patch of each BK chunk in shared memory
  from the per-dim index tables, double-buffered (the next chunk's loads are in flight in
  registers while the current chunk is multiplied).

Every axis quantity is derived here (:class:`GpuAxis`), so the templates in
templates/cuda only loop and look up.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from convgen.dtypes import dtype_info
from convgen.errors import ScheduleError
from convgen.plan.base import Plan, PlanKind, kernel_symbol, pad3, spec_tables, weight_strides
from convgen.schedule import GpuSchedule, Schedule
from convgen.spec import ConvSpec

# Limits every architecture we build for (sm_80, sm_90) shares.
MAX_BLOCK_THREADS = 1024
WARP = 32
# static shared memory per block without the dynamic opt-in
SHARED_BYTES = 48 << 10
# __constant__ memory per module is 64 KiB; weights take at most this much of it, the
# phase tables and what the compiler adds the rest
CONST_WEIGHT_BYTES = 32 << 10
CONST_TABLE_BYTES = 16 << 10
# accumulators one thread keeps in registers: beyond this ptxas spills (255 registers per
# thread, and the loop needs its own)
MAX_ACCUMULATORS = 64
# __launch_bounds__'s minimum resident blocks per multiprocessor: 1 lets ptxas use up to
# 65536 / threads registers. Without it, ptxas (nvcc 13, sm_80) capped a 224-thread tiled
# kernel at 40 registers and spilled its accumulators; the block size already sets the
# occupancy we plan for.
MIN_BLOCKS_PER_SM = 1
# implicit GEMM: index tables (output x taps per dim) in global memory up to this many
# entries; longer ones would make the module larger than the data
MAX_GEMM_TABLE = 1 << 16


@dataclass(frozen=True)
class GpuAxis:
    """One spatial dim of a tiled GPU plan, in phases.

    Outputs of phase ``r`` are ``o = q * out_step + out_offset[r]`` for ``q`` in
    ``[q_begin[r], q_begin[r] + q_count[r])``. A block with the q tile starting at ``q0``
    stages the input coordinates ``q0 * step + in_offset[r] + e`` for ``e`` in
    ``[0, extent)``; its output ``q0 + j`` reads tap ``tap_k[r][t]`` at ``e = j * step +
    tap_rel[r][t]``. A plain convolution has one phase (``step`` = stride, taps at
    ``tap * dilation``); a transposed one has a phase per residue of the stride that occurs
    among the outputs (``step`` 1, only the taps that land on input samples).
    """

    step: int
    out_step: int
    out_offset: tuple[int, ...]
    q_begin: tuple[int, ...]
    q_count: tuple[int, ...]
    in_offset: tuple[int, ...]
    tap_k: tuple[tuple[int, ...], ...]
    tap_rel: tuple[tuple[int, ...], ...]
    block: int  # q positions per block
    extent: int  # staged input positions per block
    tiles: int  # q tiles per phase (the most any phase needs)

    @property
    def phases(self) -> int:
        return len(self.q_begin)

    @property
    def max_taps(self) -> int:
        return max((len(t) for t in self.tap_k), default=0)

    def padded(self, rows: tuple[tuple[int, ...], ...]) -> list[list[int]]:
        """``rows`` (per phase) padded with zeros to max_taps (at least 1) entries."""
        width = max(1, self.max_taps)
        return [list(row) + [0] * (width - len(row)) for row in rows]


def gpu_axis(spec: ConvSpec, dim: int, block: int, multiple: int = 1) -> GpuAxis:
    """The phases of spatial dim ``dim`` of ``spec`` with ``block`` q positions per block
    (at most the positions a phase has, rounded up to a ``multiple``: the threads' split)."""
    out = spec.output_spatial[dim]
    k_size, stride, dilation = spec.kernel_size[dim], spec.stride[dim], spec.dilation[dim]
    lo = spec.padding[dim][0]
    taps = [(k, k_size - 1 - k if spec.flip else k) for k in range(k_size)]
    if not spec.transposed:
        block = _round_up(min(block, out), multiple)
        rel = tuple(tap * dilation for _, tap in taps)
        extent = (block - 1) * stride + max(rel) + 1
        return GpuAxis(stride, 1, (0,), (0,), (out,), (-lo,), (tuple(k for k, _ in taps),),
                       (rel,), block, extent, -(-out // block))
    # o + lo = q * stride + r; tap contributes when tap * dilation = r (mod stride), at
    # input q - (tap * dilation - r) / stride
    out_offset, q_begin, q_count, in_offset, tap_k, tap_rel = [], [], [], [], [], []
    for r in sorted({(o + lo) % stride for o in range(min(stride, out))}):
        first = -(-(lo - r) // stride)
        last = (out - 1 + lo - r) // stride
        if last < first:
            continue
        chosen = [(k, (r - tap * dilation) // stride) for k, tap in taps
                  if (tap * dilation - r) % stride == 0]
        base = min((off for _, off in chosen), default=0)
        out_offset.append(r - lo)
        q_begin.append(first)
        q_count.append(last - first + 1)
        in_offset.append(base)
        tap_k.append(tuple(k for k, _ in chosen))
        tap_rel.append(tuple(off - base for _, off in chosen))
    block = _round_up(min(block, max(q_count)), multiple)
    extent = block + max((max(rel, default=0) for rel in tap_rel), default=0)
    tiles = max(-(-count // block) for count in q_count)
    return GpuAxis(1, stride, tuple(out_offset), tuple(q_begin), tuple(q_count),
                   tuple(in_offset), tuple(tap_k), tuple(tap_rel), block, extent, tiles)


def _unit_axis() -> GpuAxis:
    """A missing spatial dim (1D/2D lowered to 3D): one position, one tap."""
    return GpuAxis(1, 1, (0,), (0,), (1,), (0,), ((0,),), ((0,),), 1, 1, 1)


@dataclass(frozen=True)
class GpuTiled(PlanKind):
    """The tiled direct (and depthwise) GPU plan: see the module docstring."""

    label = "tiled"
    lanes_hold = "GPU threads hold output positions"

    axes: tuple[GpuAxis, GpuAxis, GpuAxis] = ()  # type: ignore[assignment]  # D, H, W
    block_co: int = 1  # output channels per block
    thread_co: int = 1  # output channels per thread (register tile)
    thread_w: int = 1  # output positions per thread along W, strided by threads_w
    threads_w: int = 1  # threads along W (block W / thread_w)
    threads: int = 1  # threads per block
    co_blocks: int = 1
    stage: bool = True
    chunk: int = 1  # input channels staged per step
    const_weights: bool = False  # weights in __constant__ memory
    shared_elements: int = 0
    depthwise: bool = False

    @property
    def kind_name(self) -> str:
        return "depthwise" if self.depthwise else "tiled"

    def jobs(self, plan: Plan) -> int:
        phases = math.prod(axis.phases * axis.tiles for axis in self.axes)
        return plan.batch * plan.groups * self.co_blocks * phases


@dataclass(frozen=True)
class GpuGemm(PlanKind):
    """The implicit-GEMM GPU plan: see the module docstring."""

    label = "gemm"
    lanes_hold = "GPU threads hold a register tile of channels x pixels"

    block_m: int = 64  # output channels per block
    block_n: int = 64  # output pixels per block
    block_k: int = 8  # reduction chunk staged per step
    thread_m: int = 4
    thread_n: int = 4
    threads: int = 256
    reduction: int = 1  # input channels per group x taps
    pixels: int = 1  # batch x output pixels
    const_weights: bool = False
    shared_elements: int = 0

    kind_name = "gemm"

    def jobs(self, plan: Plan) -> int:
        return plan.groups * -(-plan.cout_g // self.block_m) * -(-self.pixels // self.block_n)


def gpu_kinds(spec: ConvSpec) -> list[str]:
    """The GPU plan kinds ``spec`` can run on: "tiled" always, "depthwise" with one input
    channel per group, "gemm" for plain (not transposed) convolutions."""
    kinds = ["tiled"]
    if spec.in_channels == spec.groups and not spec.transposed:
        kinds.append("depthwise")
    if not spec.transposed:
        kinds.append("gemm")
    return kinds


def default_gpu_schedule(spec: ConvSpec) -> GpuSchedule:
    """The untuned GPU fallback: "depthwise" for one input channel per group, implicit
    GEMM for plain convolutions with many channels, else "tiled"; block and thread tiles
    sized so that a block runs 64-256 threads and its staged tile fits shared memory."""
    cin_g = spec.in_channels // spec.groups
    cout_g = spec.out_channels // spec.groups
    taps = math.prod(spec.kernel_size)
    kinds = gpu_kinds(spec)
    if "depthwise" in kinds:
        return _fitting(spec, GpuSchedule(kind="depthwise"))
    if "gemm" in kinds and cin_g * taps >= 64 and cout_g >= 32 and _gemm_tables_fit(spec):
        block_m = 64 if cout_g >= 64 else 32
        return GpuSchedule(kind="gemm", block=(block_m, 64, 16),
                           thread=(4 if block_m == 64 else 2, 4))
    return _fitting(spec, GpuSchedule(kind="tiled"))


def _fitting(spec: ConvSpec, schedule: GpuSchedule) -> GpuSchedule:
    """``schedule`` with its tiles shrunk until the staged tile fits shared memory (and
    with staging off when not even one position does: very wide kernels)."""
    for _ in range(16):
        try:
            kind = _tiled_kind(spec, schedule)
        except ScheduleError:
            kind = None
        if kind is not None:
            return schedule
        block, thread = _tiled_tiles(spec, schedule)
        spatial = list(block[1:])
        largest = max(range(len(spatial)), key=lambda i: spatial[i])
        if spatial[largest] == 1:
            break
        spatial[largest] = max(1, spatial[largest] // 2)
        thread_w = min(thread[1], spatial[-1])
        schedule = dataclasses.replace(schedule, block=(block[0], *spatial),
                                       thread=(thread[0], thread_w), chunk=1)
    return dataclasses.replace(schedule, stage=False, block=None, thread=None, chunk=None)


def _gemm_tables_fit(spec: ConvSpec) -> bool:
    return all(o * k <= MAX_GEMM_TABLE for o, k in zip(spec.output_spatial, spec.kernel_size))


def _tiled_tiles(spec: ConvSpec, gpu: GpuSchedule) -> tuple[tuple[int, ...], tuple[int, int]]:
    """The block and thread tiles of a tiled/depthwise schedule, defaults filled in: 64
    positions along the last dim (16 threads x 4), 4 along the one before, 1 before that;
    4 output channels per thread, as many per block as the group has (at most 16)."""
    cout_g = spec.out_channels // spec.groups
    if gpu.thread is not None:
        thread = gpu.thread
    else:
        thread = (min(cout_g, 4), min(4, _positions(spec, -1)))
    if gpu.block is not None:
        return gpu.block, thread
    spatial = [1] * spec.ndim
    spatial[-1] = min(16 * thread[1], _round_up(_positions(spec, -1), thread[1]))
    if spec.ndim >= 2:
        spatial[-2] = min(4, _positions(spec, -2))
    block_co = min(_round_up(cout_g, thread[0]), max(thread[0], 16 // thread[0] * thread[0]))
    return (block_co, *spatial), thread


def _positions(spec: ConvSpec, dim: int) -> int:
    """Output positions per phase along ``dim`` (all of them for a plain convolution)."""
    out, stride = spec.output_spatial[dim], spec.stride[dim]
    return -(-out // stride) if spec.transposed else out


def _round_up(value: int, step: int) -> int:
    return -(-value // step) * step


def _tiled_kind(spec: ConvSpec, gpu: GpuSchedule, constant_weights: bool = True) -> GpuTiled:
    """The GpuTiled of ``spec`` under ``gpu``; ScheduleError naming the field at fault."""
    cin_g = spec.in_channels // spec.groups
    cout_g = spec.out_channels // spec.groups
    depthwise = gpu.kind == "depthwise"
    if depthwise and "depthwise" not in gpu_kinds(spec):
        raise ScheduleError("gpu.kind", gpu.kind, "'depthwise' needs one input channel per "
                            "group and a plain (not transposed) convolution")
    block, thread = _tiled_tiles(spec, gpu)
    if len(block) != spec.ndim + 1:
        raise ScheduleError("gpu.block", block, f"needs {spec.ndim + 1} entries (output "
                            f"channels, then one per spatial dim) for a {spec.ndim}D "
                            "convolution")
    thread_co, thread_w = thread
    block_co = block[0]
    if block_co % thread_co:
        raise ScheduleError("gpu.block", block, f"its output channels ({block_co}) must be a "
                            f"multiple of the thread's ({thread_co})")
    if block[-1] % thread_w:
        raise ScheduleError("gpu.block", block, f"its last dim ({block[-1]}) must be a "
                            f"multiple of the thread's positions ({thread_w})")
    if thread_co * thread_w > MAX_ACCUMULATORS:
        raise ScheduleError("gpu.thread", thread, f"{thread_co * thread_w} accumulators per "
                            f"thread; at most {MAX_ACCUMULATORS} stay in registers")
    axes = tuple(gpu_axis(spec, d, b, thread_w if d == spec.ndim - 1 else 1)
                 for d, b in zip(range(spec.ndim), block[1:]))
    axes = (_unit_axis(),) * (3 - spec.ndim) + axes
    # tiles were clamped to the positions there are, the last dim's to whole thread tiles
    threads_w = axes[2].block // thread_w
    threads = (block_co // thread_co) * axes[0].block * axes[1].block * threads_w
    if threads > MAX_BLOCK_THREADS:
        raise ScheduleError("gpu.block", block, f"{threads} threads per block; at most "
                            f"{MAX_BLOCK_THREADS}")
    itemsize = dtype_info(spec.dtype).itemsize
    chunk = min(gpu.chunk or (1 if depthwise else min(cin_g, 8)), cin_g)
    staged = chunk * math.prod(axis.extent for axis in axes) if gpu.stage else 0
    if staged * itemsize > SHARED_BYTES:
        raise ScheduleError("gpu.block", block, f"the staged input tile (chunk {chunk} x "
                            f"{'x'.join(str(a.extent) for a in axes)} with its halo) takes "
                            f"{staged * itemsize} bytes; at most {SHARED_BYTES} of shared "
                            "memory")
    table_bytes = 4 * sum(axis.phases * (5 + 2 * max(1, axis.max_taps)) for axis in axes)
    if table_bytes > CONST_TABLE_BYTES:
        raise ScheduleError("gpu.kind", gpu.kind, f"{table_bytes} bytes of stride-phase "
                            f"tables; at most {CONST_TABLE_BYTES} (a transposed stride this "
                            "large has more phases than __constant__ memory holds)")
    weight_bytes = spec.out_channels * cin_g * math.prod(spec.kernel_size) * itemsize
    return GpuTiled(axes=axes, block_co=block_co, thread_co=thread_co,  # type: ignore[arg-type]
                    thread_w=thread_w, threads_w=threads_w, threads=threads,
                    co_blocks=-(-cout_g // block_co), stage=gpu.stage, chunk=chunk,
                    const_weights=constant_weights and weight_bytes <= CONST_WEIGHT_BYTES,
                    shared_elements=staged, depthwise=depthwise)


def _gemm_kind(spec: ConvSpec, gpu: GpuSchedule) -> GpuGemm:
    if spec.transposed:
        raise ScheduleError("gpu.kind", gpu.kind, "transposed convolutions run on the 'tiled' "
                            "plan, split by stride phase (implicit GEMM would multiply the "
                            "zeros of the scatter)")
    if not gpu.stage:
        raise ScheduleError("gpu.stage", gpu.stage, "'gemm' always stages its tiles in "
                            "shared memory")
    if not _gemm_tables_fit(spec):
        raise ScheduleError("gpu.kind", gpu.kind, f"'gemm' keeps output x taps index tables "
                            f"of at most {MAX_GEMM_TABLE} entries per dim")
    block = gpu.block or (64, 64, 16)
    thread = gpu.thread or (4, 4)
    if len(block) != 3:
        raise ScheduleError("gpu.block", block, "'gemm' takes (output channels, pixels, "
                            "reduction chunk)")
    bm, bn, bk = block
    tm, tn = thread
    if bm % tm or bn % tn:
        raise ScheduleError("gpu.thread", thread, f"must divide the block's channels and "
                            f"pixels ({bm}, {bn})")
    if tm * tn > MAX_ACCUMULATORS:
        raise ScheduleError("gpu.thread", thread, f"{tm * tn} accumulators per thread; at "
                            f"most {MAX_ACCUMULATORS} stay in registers")
    threads = (bm // tm) * (bn // tn)
    if threads > MAX_BLOCK_THREADS:
        raise ScheduleError("gpu.block", block, f"{threads} threads per block; at most "
                            f"{MAX_BLOCK_THREADS}")
    itemsize = dtype_info(spec.dtype).itemsize
    shared = 2 * bk * (bm + bn)  # two buffers of the A and B tiles
    if shared * itemsize > SHARED_BYTES:
        raise ScheduleError("gpu.block", block, f"{shared * itemsize} bytes of double-"
                            f"buffered tiles; at most {SHARED_BYTES} of shared memory")
    cin_g = spec.in_channels // spec.groups
    return GpuGemm(block_m=bm, block_n=bn, block_k=bk, thread_m=tm, thread_n=tn,
                   threads=threads, reduction=cin_g * math.prod(spec.kernel_size),
                   pixels=spec.batch * math.prod(spec.output_spatial),
                   # A tiles are loaded by many threads at different addresses: __constant__
                   # memory would serialize them
                   const_weights=False, shared_elements=shared)


def make_gpu_plan(spec: ConvSpec, schedule: Schedule | None = None,
                  constant_weights: bool = True) -> Plan:
    """The GPU plan of ``spec`` under ``schedule`` (its ``gpu`` part; None: the default).

    ``constant_weights``: weights that fit may go to ``__constant__`` memory (a network
    module holds many layers, and 64 KiB per module: its layers read global memory).

    ScheduleError when the schedule sets CPU fields (tile_co, tile_spatial, vector_width,
    vectorize, method), or its GPU part does not fit the spec or the device limits.
    """
    if schedule is None:
        schedule = Schedule()
    set_fields = schedule.cpu_fields_set()
    if set_fields:
        name = set_fields[0]
        raise ScheduleError(name, getattr(schedule, name), "is a CPU field: backend 'cuda' "
                            "runs GPU plans, set through Schedule(gpu=GpuSchedule(...))")
    gpu = schedule.gpu or default_gpu_schedule(spec)
    if gpu.kind is None:
        default = default_gpu_schedule(spec)
        gpu = dataclasses.replace(gpu, kind=default.kind)
    kind: PlanKind = _gemm_kind(spec, gpu) if gpu.kind == "gemm" \
        else _tiled_kind(spec, gpu, constant_weights)
    schedule = dataclasses.replace(schedule, gpu=gpu)
    ndim = spec.ndim
    cin_g = spec.in_channels // spec.groups
    cout_g = spec.out_channels // spec.groups
    kernel = pad3(spec.kernel_size)
    strides = weight_strides(spec)
    if isinstance(kind, GpuGemm):
        tables = spec_tables(spec)
        tile = (1, 1, 1)
        tile_co = kind.thread_m
    else:
        tables = ([[0]], [[0]], [[0]])  # the tiled plan reads its axes, not tables
        tile = tuple(axis.block for axis in kind.axes)  # type: ignore[attr-defined]
        tile_co = kind.thread_co  # type: ignore[attr-defined]
    return Plan(spec=spec, schedule=schedule, symbol=kernel_symbol(spec, schedule),
                c_type=dtype_info(spec.dtype).c_type, batch=spec.batch, groups=spec.groups,
                cin_g=cin_g, cout_g=cout_g, in_size=pad3(spec.in_spatial),
                out_size=pad3(spec.output_spatial), kernel=kernel,
                tables=tables,  # type: ignore[arg-type]
                tile_co=tile_co, tile=tile, n_tiles=(1, 1, 1, 1),  # type: ignore[arg-type]
                weight_strides=strides,  # type: ignore[arg-type]
                threads=schedule.threads, vector_lanes=1, kind=kind)


def describe_gpu_plan(plan: Plan) -> list[str]:
    """How a GPU plan runs, in a few lines (``convgen explain``)."""
    kind = plan.kind
    spec = plan.spec
    if isinstance(kind, GpuGemm):
        return [
            f"implicit GEMM per group: {plan.cout_g} output channels x {kind.pixels} pixels "
            f"(batch x {'x'.join(map(str, spec.output_spatial))}), reduction {kind.reduction} "
            f"(input channels x taps)",
            f"block tile {kind.block_m} x {kind.block_n}, reduction chunks of {kind.block_k} "
            f"double-buffered in shared memory ({kind.shared_elements} elements); "
            f"{kind.threads} threads, each {kind.thread_m} x {kind.thread_n} accumulators",
            f"blocks: {plan.jobs}; weights in "
            f"{'__constant__ memory' if kind.const_weights else 'global memory'}",
        ]
    assert isinstance(kind, GpuTiled)
    axes = kind.axes
    phases = math.prod(axis.phases for axis in axes)
    what = "depthwise convolution" if kind.depthwise else (
        "transposed convolution split by stride phase" if spec.transposed
        else "direct convolution")
    lines = [
        f"{what} ('{kind.kind_name}' GPU plan), lowered to 3 spatial dims (D, H, W) = "
        f"{plan.out_size} outputs",
        f"block tile: {kind.block_co} output channels x "
        f"{'x'.join(str(a.block) for a in axes)} positions; {kind.threads} threads, each "
        f"{kind.thread_co} channels x {kind.thread_w} positions",
        f"blocks: batch {plan.batch} x groups {plan.groups} x channel blocks "
        f"{kind.co_blocks} x phases {phases} x tiles "
        f"{'x'.join(str(a.tiles) for a in axes)} = {plan.jobs}",
    ]
    if kind.stage:
        lines.append(f"input tile plus halo staged in shared memory, {kind.chunk} input "
                     f"channel(s) at a time: {kind.shared_elements} elements "
                     f"({'x'.join(str(a.extent) for a in axes)} per channel)")
    else:
        lines.append("input read through the read-only cache (no staging)")
    lines.append(f"weights in {'__constant__ memory' if kind.const_weights else 'global memory (read-only cache)'}")
    if spec.transposed:
        taps = [sum(len(t) for t in axis.tap_k) for axis in axes]
        lines.append(f"stride phases per dim {tuple(a.phases for a in axes)}; taps summed "
                     f"over phases {tuple(taps)} (of {plan.kernel} per output): no "
                     "multiply-adds on the scatter's zeros")
    return lines
