"""The direct "w" plan's tables: VL output columns per vector.

How one vector reads its input columns at one tap (vector_tables) and the job order
(channels_inner); both backends' "w" kernels read these.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass


from convgen.dtypes import dtype_info
from convgen.errors import ScheduleError
from convgen.plan.base import FoldedTable, IndexTable, Plan, PlanKind
from convgen.spec import source_coordinate


@dataclass(frozen=True)
class DirectKind(PlanKind):
    """The direct "w" plan kind: lanes hold VL output columns of a row, weights broadcast;
    its vector tables are derived on demand (vector_tables)."""

    label = "w"
    lanes_hold = "output columns"

    channels_inner: bool = False  # jobs vary the output-channel tile fastest (CACHE_BYTES)


# How one vector of VL output columns reads its VL input columns at one tap
# (the LLVM backend's vector tables; see vector_tables()).
VEC_SKIP, VEC_LOAD, VEC_MASKED_LOAD, VEC_GATHER, VEC_EVEN = 0, 1, 2, 3, 4

# A group's input larger than this (bytes) is swept once with the output-channel tiles
# innermost, instead of once per channel tile (long 1D signals, large 3D volumes).
CACHE_BYTES = 1 << 20


def channels_inner(plan: Plan) -> bool:
    """True when jobs should vary the output-channel tile fastest (see CACHE_BYTES)."""
    volume = plan.cin_g * math.prod(plan.in_size) * dtype_info(plan.spec.dtype).itemsize
    return plan.n_tiles[0] > 1 and volume > CACHE_BYTES


# The "w" plan's W tables hold at most this many entries (classes x taps x vector lanes):
# past it (a kernel about as wide as a long output: every tile a border tile of its own)
# the planner refuses the plan rather than emit hundreds of megabytes of tables.
MAX_W_TABLE_ENTRIES = 1 << 22


@dataclass(frozen=True)
class TileRun:
    """W tiles ``first .. first + count - 1`` read like tile ``first`` shifted: tile
    ``first + i`` reads input columns ``in_shift * i`` further and writes output columns
    ``out_shift * i`` further (its tables are its class's, the run's own index)."""

    first: int
    count: int
    in_shift: int
    out_shift: int


@dataclass(frozen=True)
class PositionReads:
    """How a vector reads its input columns, by where its lane 0 reads (its *position*):
    the plan's W reads when a row's columns are read at a fixed lane step (every plan but a
    transposed one with a W stride, whose columns go phase by phase).

    Vector ``v`` of the tile at output column ``ow0`` reads at tap ``kw`` from position
    ``s = (ow0 + v*VL) * lane_step + origin + kw * tap_step``, lane ``l`` from column
    ``s + l * lane_step`` (mapped by the padding mode at the borders). Positions in
    ``[lo, hi]`` have every lane inside the row (and a column to spare): they read by
    ``interior_mode`` from ``s`` (a gather: at ``s + LANE_STEP``). Every other position
    from ``first`` to ``last`` is listed: ``modes``, ``bases``, ``masks`` (valid lanes)
    and, for modes other than a plain load or a skip, a row of ``indices`` (absolute
    columns, -1: nothing to add). Explicit position ``s`` is entry ``s - first`` below
    ``lo`` and ``left + s - hi - 1`` above ``hi``. The tables depend on the padding and
    the kernel's reach, never on the row's length or the kernel's tile."""

    lane_step: int
    origin: int
    tap_step: int
    first: int
    last: int
    lo: int
    hi: int
    interior_mode: int
    left: int
    modes: list[int]
    bases: list[int]
    masks: list[int]
    index_rows: list[int]  # per explicit position: its row of indices, or -1
    indices: list[list[int]]


@dataclass(frozen=True)
class VectorTables:
    """Tables for code that holds VL output columns per vector, per W-tile class.

    Most plans read by position (``positions``; the class tables are then empty). A
    transposed convolution with a W stride keeps its W tiles in runs (TileRun): the
    interior tiles of each stride phase read the same pattern shifted, so one class's
    tables serve them all; each border tile is a run of its own. Class ``c`` (run ``c``) covers virtual
    columns ``first*TW + [0, row_length)``: vector ``v`` at tap ``kw`` reads input columns
    ``w_table[c][kw][v*VL + lane]`` (-1: nothing to add) past the run's shift. ``modes``
    says how to read them: VEC_SKIP (no lane contributes), VEC_LOAD (every lane, columns
    ``base + lane``), VEC_MASKED_LOAD (the valid lanes are ``base + lane``), VEC_EVEN
    (``base + 2*lane``: two loads and a shuffle) or VEC_GATHER; ``bases`` holds ``base``.
    The D and H tables are folded (FoldedTable): border rows and one interior period.
    """

    n_vectors: int  # vectors per W tile: ceil(TW / VL)
    row_length: int  # n_vectors * VL: the virtual columns a class's rows cover
    d_fold: FoldedTable
    h_fold: FoldedTable
    runs: list[TileRun]
    w_table: list[list[list[int]]]  # [class][KW][row_length]
    modes: list[list[list[int]]]  # [class][KW][n_vectors]
    bases: list[list[list[int]]]  # [class][KW][n_vectors]
    lane_masks: list[list[list[int]]]  # [class][KW][n_vectors]: bit l set when lane l is valid
    # Transposed convolutions with a W stride visit output columns phase by phase
    # (0, s, 2s, ..., then 1, 1+s, ...): within a phase a tap reads consecutive input
    # columns, so vectors load instead of gathering. out_columns[c][v] is the output column
    # of the class's virtual column v (-1 past the end); None when columns are in order.
    out_columns: list[list[int]] | None = None
    # the W reads by position (then runs and the class tables are empty), or None
    positions: PositionReads | None = None


class _VirtualRow:
    """The W dim's virtual columns of a transposed convolution with a W stride P: phase by
    phase, phase ``p`` holding outputs ``p, p + P, ...``."""

    def __init__(self, table: IndexTable):
        self.out = len(table)
        self.period = table.period
        self.phases = min(self.period, self.out)
        # virtual start of each phase: phase p holds ceil((out - p) / period) columns
        self.starts = [0]
        for p in range(self.phases):
            self.starts.append(self.starts[-1] + -(-(self.out - p) // self.period))

    def column(self, v: int) -> int:
        """The output column of virtual column ``v`` (-1 past the end)."""
        if v >= self.out:
            return -1
        p = bisect.bisect_right(self.starts, v) - 1
        return p + (v - self.starts[p]) * self.period


def _tile_runs(table: IndexTable, row: _VirtualRow, tile: int, span: int, n_tiles: int,
               ) -> list[TileRun]:
    """The runs of W tiles: per phase, the tiles whose ``span`` virtual columns all lie in
    the table's interior form one run; every other tile is a run of its own."""
    a, b = table.interior
    interior = []  # (first tile, end tile, in shift, out shift)
    for p in range(row.phases):
        # phase p's outputs p + j*P inside [a, b): j in [ja, jb)
        ja = max(0, -(-(a - p) // row.period))
        jb = min(row.starts[p + 1] - row.starts[p], max(0, -(-(b - p) // row.period)))
        t0 = -(-(row.starts[p] + ja) // tile)
        t1 = (row.starts[p] + jb - span) // tile + 1 if jb - ja >= span else t0
        if t1 - t0 >= 2:
            interior.append((t0, t1, tile * table.step, tile * row.period))
    runs, t = [], 0
    for t0, t1, in_shift, out_shift in interior:
        runs.extend(TileRun(i, 1, 0, 0) for i in range(t, t0))
        runs.append(TileRun(t0, t1 - t0, in_shift, out_shift))
        t = t1
    runs.extend(TileRun(i, 1, 0, 0) for i in range(t, n_tiles))
    return runs


def _read_mode(idx: list[int], lanes: int, even_ok: bool) -> tuple[int, int]:
    """(mode, base) of a vector whose lanes read input columns ``idx`` (-1: nothing)."""
    valid = [(lane, i) for lane, i in enumerate(idx) if i >= 0]
    offsets = {i - lane for lane, i in valid}
    if not valid:
        return VEC_SKIP, 0
    if len(offsets) == 1:
        return (VEC_LOAD if len(valid) == lanes else VEC_MASKED_LOAD), offsets.pop()
    if len(valid) == lanes and even_ok and all(i == idx[0] + 2 * lane for lane, i in valid):
        return VEC_EVEN, idx[0]  # stride 2 inside the row: two vector loads, even lanes
    return VEC_GATHER, 0


def _position_reads(plan: Plan, table: IndexTable, row_length: int) -> PositionReads:
    """The W reads of ``plan`` by position (see PositionReads)."""
    lanes = plan.vector_lanes
    in_w = plan.in_size[2]
    k_last = table.taps - 1
    # column c at table tap k reads c * lane_step + origin + k * tap_step (before the
    # padding mode): the IndexTable's formula, flip and transposition folded in
    if table.transposed:  # stride 1 here: o + lo - tap * dilation
        lane_step, origin, tap_step = 1, table.lo, -table.dilation
    else:  # o * stride + tap * dilation - lo
        lane_step, origin, tap_step = table.stride, -table.lo, table.dilation
    if table.flip:
        origin, tap_step = origin + tap_step * k_last, -tap_step
    last_column = (plan.n_tiles[3] - 1) * plan.tile[2] + row_length - lanes
    reach = [origin, origin + tap_step * k_last]
    first = min(reach)
    last = last_column * lane_step + max(reach)
    # every lane inside the row, with room for a stride-2 pair of loads
    lo, hi = max(first, 0), min(last, in_w - lanes * lane_step)
    if hi < lo:
        lo, hi = last + 1, last
    interior_mode, _ = _read_mode([l * lane_step for l in range(lanes)], lanes, True)
    modes, bases, masks, index_rows, indices = [], [], [], [], []
    for s in [*range(first, lo), *range(hi + 1, last + 1)]:
        idx = [source_coordinate(s + l * lane_step, in_w, table.mode) for l in range(lanes)]
        mode, base = _read_mode(idx, lanes, s + 2 * lanes <= in_w)
        modes.append(mode)
        bases.append(base)
        masks.append(sum(1 << lane for lane, i in enumerate(idx) if i >= 0))
        if mode in (VEC_LOAD, VEC_SKIP):
            index_rows.append(-1)
        else:
            index_rows.append(len(indices))
            indices.append(idx)
    return PositionReads(lane_step, origin, tap_step, first, last, lo, hi, interior_mode,
                         lo - first, modes, bases, masks, index_rows, indices)


def vector_tables(plan: Plan) -> VectorTables:
    lanes = plan.vector_lanes
    tw = plan.tile[2]
    n_vectors = -(-tw // lanes)
    row_length = n_vectors * lanes
    nt_w = plan.n_tiles[3]
    table: IndexTable = plan.tables[2]
    kw_count = plan.kernel[2]
    in_w = plan.in_size[2]
    stride_w = plan.spec.stride[-1]
    phased = plan.spec.transposed and stride_w > 1
    # (a 1D or 2D spec's missing dims are plain one-row lists: FoldedTable.of keeps them)
    d_fold, h_fold = FoldedTable.of(plan.tables[0]), FoldedTable.of(plan.tables[1])
    if not phased:
        return VectorTables(n_vectors, row_length, d_fold, h_fold, [], [], [], [], [],
                            positions=_position_reads(plan, table, row_length))
    row = _VirtualRow(table)
    runs = _tile_runs(table, row, tw, row_length, nt_w)
    entries = len(runs) * kw_count * (row_length + 3 * n_vectors)
    if entries > MAX_W_TABLE_ENTRIES:
        raise ScheduleError(
            "vectorize", "w",
            f"{plan.spec.name}: the 'w' plan's W tables would hold {entries} entries "
            f"({len(runs)} tile classes x {kw_count} taps; at most {MAX_W_TABLE_ENTRIES}): "
            "the kernel is about as wide as the output, so nearly every tile is a border "
            "tile of its own; use vectorize='co'")
    w_table, out_columns = [], []
    modes, bases, masks = [], [], []
    for run in runs:
        first = run.first * tw
        columns = [row.column(first + v) for v in range(row_length)]
        rows = [table.row(o) if o >= 0 else None for o in columns]
        class_w = [[r[k] if r is not None else -1 for r in rows] for k in range(kw_count)]
        # the run's last tile reads in_shift * (count - 1) further: a stride-2 pair of loads
        # must stay inside the row there too
        last_shift = run.in_shift * (run.count - 1)
        class_modes, class_bases, class_masks = [], [], []
        for k in range(kw_count):
            row_modes, row_bases, row_masks = [], [], []
            for v in range(n_vectors):
                idx = class_w[k][v * lanes:(v + 1) * lanes]
                valid = [(lane, i) for lane, i in enumerate(idx) if i >= 0]
                offsets = {i - lane for lane, i in valid}
                if not valid:
                    mode, base = VEC_SKIP, 0
                elif len(offsets) == 1:
                    base = offsets.pop()
                    mode = VEC_LOAD if len(valid) == lanes else VEC_MASKED_LOAD
                elif len(valid) == lanes and all(i == idx[0] + 2 * lane for lane, i in valid) \
                        and idx[0] + last_shift + 2 * lanes <= in_w:
                    # stride 2 inside the row: two vector loads, keep the even lanes
                    mode, base = VEC_EVEN, idx[0]
                else:
                    mode, base = VEC_GATHER, 0
                row_modes.append(mode)
                row_bases.append(base)
                row_masks.append(sum(1 << lane for lane, _ in valid))
            class_modes.append(row_modes)
            class_bases.append(row_bases)
            class_masks.append(row_masks)
        w_table.append(class_w)
        out_columns.append(columns)
        modes.append(class_modes)
        bases.append(class_bases)
        masks.append(class_masks)
    return VectorTables(n_vectors, row_length, d_fold, h_fold, runs, w_table, modes, bases, masks,
                        out_columns)


def describe_direct_plan(plan: Plan) -> list[str]:
    """describe_plan for vectorize="w" (and the blocked depthwise plan)."""
    spec, tables = plan.spec, vector_tables(plan)
    kind = "transposed convolution (gathered: no scatter)" if spec.transposed \
        else "direct convolution"
    counts = {VEC_LOAD: 0, VEC_MASKED_LOAD: 0, VEC_EVEN: 0, VEC_GATHER: 0, VEC_SKIP: 0}
    positions = tables.positions
    for mode in (positions.modes if positions else
                 [m for cls in tables.modes for row in cls for m in row]):
        counts[mode] += 1
    reads = (f"{counts[VEC_LOAD]} vector loads, {counts[VEC_MASKED_LOAD]} masked loads, "
             f"{counts[VEC_EVEN]} stride-2 shuffles, {counts[VEC_GATHER]} gathers, "
             f"{counts[VEC_SKIP]} skipped (all padding)")
    names = {VEC_LOAD: "a vector load", VEC_EVEN: "two loads and a stride-2 shuffle",
             VEC_GATHER: "a gather"}
    lines = [
        f"{kind}, lowered to 3 spatial dims (D, H, W) = {plan.out_size} outputs;"
        " vectorized over output columns (vectorize='w')",
        f"jobs: batch {plan.batch} x groups {plan.groups} x channel tiles {plan.n_tiles[0]}"
        f" x D/H/W tiles {plan.n_tiles[1]}x{plan.n_tiles[2]}x{plan.n_tiles[3]}"
        f" = {plan.jobs}, on {plan.threads} thread(s)",
        f"register tile per output row: {plan.tile_co} output channels x {tables.n_vectors}"
        f" vector(s) of {plan.vector_lanes} {plan.c_type} lanes"
        f" = {plan.tile_co * tables.n_vectors} vector accumulators",
        f"reduction: {plan.cin_g} input channels x {math.prod(plan.kernel)} taps",
    ]
    if positions:
        lines += [
            f"input reads by where a vector starts: inside the row ({positions.hi - positions.lo + 1}"
            f" positions) {names[positions.interior_mode]}; the {len(positions.modes)} "
            f"border positions: {reads}"]
    else:
        lines += [
            f"W tiles: {len(tables.runs)} classes (a run of interior tiles reads one class's "
            "pattern shifted; border tiles are classes of their own)",
            f"input reads per (W tile class, tap, vector): {reads}"]
    if tables.out_columns is not None:
        lines.append(f"output columns visited phase by phase (W stride {spec.stride[-1]}), "
                     "so taps read consecutive inputs")
    if spec.groups > 1 and plan.cin_g == 1 and not spec.transposed:
        lines.append("depthwise: one input channel per output channel, so no reduction "
                     "over channels; the register tile grows in space instead "
                     "(bandwidth-bound: judge it by bytes moved, not FLOPs)")
    return lines
