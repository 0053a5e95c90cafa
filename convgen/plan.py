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

import hashlib
import math
from dataclasses import dataclass

from .schedule import Schedule, default_schedule
from .spec import ConvSpec

C_TYPES = {"float32": "float", "float64": "double"}


def _source_coordinate(p: int, size: int, mode: str) -> int:
    """Map a coordinate of the padded input to the input, or -1 for a zero."""
    if 0 <= p < size:
        return p
    if mode == "zeros":
        return -1
    if mode == "replicate":
        return min(max(p, 0), size - 1)
    if mode == "circular":
        return p % size
    if mode == "reflect":  # mirror without repeating the edge (pad < size, checked by the spec)
        if size == 1:
            return 0
        period = 2 * (size - 1)
        p = p % period
        return p if p < size else period - p
    raise AssertionError(mode)


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
                row.append(_source_coordinate(o * stride + tap * dilation - lo, size,
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

    @property
    def tile_spatial(self) -> tuple[int, ...]:
        """The effective spatial tile in the spec's own rank."""
        return self.tile[3 - self.spec.ndim:]

    @property
    def jobs(self) -> int:
        """Independent tiles: batch x groups x channel tiles x spatial tiles."""
        return self.batch * self.groups * math.prod(self.n_tiles)

    @property
    def accumulators(self) -> int:
        return self.tile_co * math.prod(self.tile)


def make_plan(spec: ConvSpec, schedule: Schedule | None = None) -> Plan:
    """Derive every constant for ``spec`` under ``schedule`` (default: the fallback)."""
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
    )
