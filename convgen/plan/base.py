"""The plan type: every constant one kernel needs, and what every plan kind shares.

A :class:`Plan` holds the constants common to every kernel (sizes, index tables, tiles,
layout, threads) and its ``kind``: one :class:`PlanKind` subclass per plan kind, each in
its own module (direct.py, co.py, depthwise.py, winograd.py), holding that kind's own
constants. Renderers dispatch on the kind's type. Only the planner (convgen.plan.core)
builds plans.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import ClassVar

from convgen.cpu import vector_lanes
from convgen.schedule import Schedule
from convgen.spec import ConvSpec, source_coordinate


@dataclass(frozen=True)
class PlanKind:
    """What one plan kind adds to a :class:`Plan`; subclasses are frozen dataclasses."""

    # the kind's name as schedules and ``convgen explain`` spell it ("w", "co", "dw", or the
    # transform method), and what its vector lanes hold, as generated comments say it
    label: ClassVar[str]
    lanes_hold: ClassVar[str]

    def jobs(self, plan: Plan) -> int:
        """Independent jobs: batch x groups x channel tiles x spatial tiles."""
        return plan.batch * plan.groups * math.prod(plan.n_tiles)


# plans deal their jobs out in about this many chunks per thread, first come first
# served (a shared vCPU makes a static split wait for the slower thread)
DYNAMIC_CHUNKS = 4

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


def block_lanes(dtype: str) -> int:
    """VL of the blocked layout for ``dtype`` on this host (convgen.plan.layout)."""
    return vector_lanes(dtype)


def pad3(values: tuple[int, ...], fill: int = 1) -> tuple[int, int, int]:
    values = tuple(values)
    return (fill,) * (3 - len(values)) + values  # type: ignore[return-value]


def weight_strides(spec: ConvSpec) -> tuple[int, int, int, int, int, int]:
    """Element strides of the weight over (group, co, ci, kd, kh, kw), 1D/2D lowered to 3D:
    PyTorch's layouts, (C_out, C_in/groups, *k) or, transposed, (C_in, C_out/groups, *k)."""
    cin_g = spec.in_channels // spec.groups
    cout_g = spec.out_channels // spec.groups
    kernel = pad3(spec.kernel_size)
    taps = math.prod(kernel)
    kstrides = (kernel[1] * kernel[2], kernel[2], 1)
    if spec.transposed:
        return (cin_g * cout_g * taps, taps, cout_g * taps, *kstrides)
    return (cout_g * cin_g * taps, cin_g * taps, taps, *kstrides)


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
    # the plan kind and its own constants: DirectKind (plan/direct.py), CoTiles (plan/co.py),
    # DepthwiseKind (plan/depthwise.py) or WinogradPlan (plan/winograd.py)
    kind: PlanKind
    # the input x (output y and residual r) in the blocked layout of convgen.plan.layout,
    # (N, C / VL, *spatial, VL) with VL = vector_lanes; networks set these between layers
    in_blocked: bool = False
    out_blocked: bool = False
    # the weight argument holds the weights prepared at load (convgen.plan.weights):
    # Winograd's U, the "co" plan's packed channel blocks, the depthwise plan's vectors
    prepared_weights: bool = False
    # the OpenMP schedule clause of the kernel's job loop
    omp_schedule: str = "static"

    @property
    def tile_spatial(self) -> tuple[int, ...]:
        """The effective spatial tile in the spec's own rank."""
        return self.tile[3 - self.spec.ndim:]

    @property
    def jobs(self) -> int:
        """Independent jobs of the kernel (see PlanKind.jobs)."""
        return self.kind.jobs(self)


def omp_schedule(jobs: int, threads: int) -> str:
    """The OpenMP schedule clause of a loop over ``jobs`` jobs (see DYNAMIC_CHUNKS)."""
    if DYNAMIC_CHUNKS <= 0:
        return "static"
    return f"dynamic, {max(1, jobs // (threads * DYNAMIC_CHUNKS))}"
