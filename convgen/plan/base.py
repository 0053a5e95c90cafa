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
from collections.abc import Sequence
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

class LazySequence(Sequence):
    """A sequence whose items are computed on demand by :meth:`item` (index checked,
    negative indices and slices as lists'): long rows' tables, pieces and tap lists."""

    def item(self, index: int):
        raise NotImplementedError

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self.item(i) for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        return self.item(index)


class IndexTable(LazySequence):
    """``table[o][k]``: the input coordinate read by output ``o`` at tap ``k`` of one spatial
    dim, or -1 where the tap adds nothing (zero padding, or a transposed tap between input
    samples). Rows are computed on demand: a long signal's table (10**8 outputs) is never
    held, and generated code holds only its folded form (:meth:`folded`).

    Between the borders the table is periodic-affine: for ``interior[0] <= o`` and
    ``o + period < interior[1]``, ``table[o + period][k] == table[o][k] + step`` where the
    entry is >= 0, and the -1 entries repeat with the period (``period`` 1 and ``step`` the
    stride; transposed: ``period`` the stride, ``step`` 1). Only the borders depend on the
    padding mode.
    """

    def __init__(self, spec: ConvSpec, dim: int):
        self.size = spec.in_spatial[dim]
        self.out = spec.output_spatial[dim]
        self.taps = spec.kernel_size[dim]
        self.stride, self.dilation = spec.stride[dim], spec.dilation[dim]
        self.lo = spec.padding[dim][0]
        self.flip = spec.flip
        self.transposed = spec.transposed
        self.mode = spec.padding_mode
        self.period = self.stride if self.transposed else 1
        self.step = 1 if self.transposed else self.stride

    def __len__(self) -> int:
        return self.out

    def row(self, o: int) -> list[int]:
        if not 0 <= o < self.out:
            raise IndexError(o)
        row = []
        for k in range(self.taps):
            tap = self.taps - 1 - k if self.flip else k
            if self.transposed:
                t = o + self.lo - tap * self.dilation
                row.append(t // self.stride if t >= 0 and t % self.stride == 0
                           and t // self.stride < self.size else -1)
            else:
                row.append(source_coordinate(o * self.stride + tap * self.dilation - self.lo,
                                             self.size, self.mode))
        return row

    item = row

    def __eq__(self, other) -> bool:
        return len(self) == len(other) and all(a == b for a, b in zip(self, other))

    __hash__ = None  # type: ignore[assignment]

    def __add__(self, other: list) -> list:
        return list(self) + list(other)

    def __radd__(self, other: list) -> list:
        return list(other) + list(self)

    def __repr__(self) -> str:
        return f"IndexTable({list(self)!r})"

    @property
    def interior(self) -> tuple[int, int]:
        """[a, b): the outputs whose every tap that adds anything reads inside the input
        (no padding reached), so the table is periodic-affine there (see the class)."""
        span = (self.taps - 1) * self.dilation
        if self.transposed:
            # o reads (o + lo - tap*dil) / s for the taps of its phase: inside the input when
            # lo - span <= o + lo - tap*dil... i.e. o + lo - span >= 0 covers every tap, and
            # (o + lo) // s < size covers the largest
            a = max(0, span - self.lo)
            b = min(self.out, self.size * self.stride - self.lo)
        else:
            a = -(-self.lo // self.stride)
            b = (self.size - 1 - span + self.lo) // self.stride + 1
            a, b = min(max(a, 0), self.out), min(max(b, 0), self.out)
        return (a, b) if b > a else (a, a)

    def folded(self) -> FoldedTable:
        """This table as explicit rows for the borders and one period of the interior."""
        return FoldedTable.of(self)


@dataclass(frozen=True)
class FoldedTable:
    """An IndexTable kept as at most ``a + period + (out - b)`` explicit rows: row ``o`` is
    ``rows[o]`` below ``first = a + period``; in ``[first, b)`` it is row
    ``a + (o - a) % period`` with ``step * ((o - a) // period)`` added to its entries >= 0;
    from ``b`` on it is ``rows[o - b + first]``. Generated code looks rows up this way
    (``fold_row``), so its tables do not grow with the output size."""

    rows: list[list[int]]
    a: int
    b: int
    period: int
    step: int

    @classmethod
    def of(cls, table) -> FoldedTable:
        out = len(table)
        period, step = getattr(table, "period", 1), getattr(table, "step", 0)
        a, b = table.interior if isinstance(table, IndexTable) else (0, 0)
        if b - a < 2 * period:  # no whole period past the first: every row explicit
            a = b = out
            period = max(period, 1)
        first = min(a + period, out)
        rows = table[0:first] + table[b:out]
        return cls(rows, a, b, period, step)

    @property
    def first(self) -> int:
        return min(self.a + self.period, self.b) if self.b > self.a else self.b

    def lookup(self, o: int) -> tuple[int, int]:
        """(explicit row, amount added to its entries >= 0) of row ``o`` (the generated
        code's fold_row)."""
        if o < self.first:
            return o, 0
        if o < self.b:
            return self.a + (o - self.a) % self.period, self.step * ((o - self.a) // self.period)
        return o - self.b + self.first, 0

    def row(self, o: int) -> list[int]:
        index, add = self.lookup(o)
        return [v + add if v >= 0 else v for v in self.rows[index]]


def index_table(spec: ConvSpec, dim: int) -> IndexTable:
    """table[o][k] -> input coordinate (or -1) for spatial dim ``dim`` (see IndexTable)."""
    return IndexTable(spec, dim)


def spec_tables(spec: ConvSpec) -> tuple:
    """The (D, H, W) index tables of ``spec``, a 1D or 2D spec's missing dims as one-row
    tables ``[[0]]`` (size 1, one tap)."""
    tables = tuple(index_table(spec, d) for d in range(spec.ndim))
    return ([[0]],) * (3 - spec.ndim) + tables


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
