"""The vectorize="co" plan: output channels in the vector lanes, a row split into register
tiles (pieces) grouped by the input columns they read, weights packed per channel block.

Everything the "co" kernels of both backends decide lives here: the pieces and classes
(co_row_tiles), the taps of a transposed row (co_row_taps), and the prefetch and job-order
choices (co_decisions) made once the layout and the weights are known.

Nothing here grows with the output size: a row's pieces are kept as runs (translations of
one class, :class:`CoRun`), the D/H index tables folded (convgen.plan.base.FoldedTable),
and a transposed row's tap list per pair of folded rows (:class:`CoRowTaps`); the planner
reads only the border pieces and one piece per interior run.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from dataclasses import dataclass

from convgen.cpu import vector_bits
from convgen.dtypes import dtype_info
from convgen.errors import ScheduleError
from convgen.plan.base import FoldedTable, IndexTable, LazySequence, Plan, PlanKind
from convgen.spec import ConvSpec


# transposed: prefetch the input rows this many input channels ahead (4 measured a
# little better than 8)
CO_PREFETCH_CHANNELS = 4
# layers with fewer bytes of weights than this do not prefetch the next channel block
CO_PREFETCH_WEIGHT_BYTES = 256 << 10
# with weights packed at load, 2+ threads split the rows when the packed weights are at
# most this many times an image's input (see co_rows_outer)
CO_ROWS_OUTER_WEIGHTS = 1.0
# A blocked input's pixels are a cache line apart: a row of them is read through one base
# pointer per CO_BASE_PIXELS columns, from its middle, so that every broadcast FMA's
# displacement fits EVEX's compressed 8-bit one (+-127 elements) and the instruction
# stays 7 bytes, not 10.
CO_BASE_PIXELS = 16
# The "co" kernel unrolls every class's taps x pixels x channel vectors as straight-line
# multiply-adds: past this many (a 100-tap row over 10**4 outputs makes 16400, about
# 1.8 MB of C) the plan is refused, and the default takes the "w" plan, whose code does
# not unroll taps.
MAX_CO_UNROLLED = 1 << 13


@dataclass(frozen=True)
class CoPiece:
    """One register tile of a row (vectorize="co"): ``size`` output columns
    ``ow0 + p * step`` (p < size, ``step`` of :class:`CoTiles`).

    Its input columns at tap kw are ``base + offset`` with the offsets of class ``cls``.
    """

    ow0: int
    size: int
    base: int
    cls: int


@dataclass(frozen=True)
class CoTap:
    """One kernel column of a piece class: the weight vectors' offsets in the packed
    tap (one per channel vector) and, per pixel that reads something, (pixel, offset)."""

    kw: int
    weight_offsets: tuple[int, ...]
    pixels: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class CoClass:
    """Pieces that read the same input columns relative to their base share one unrolled
    body: same size, same (pixel, offset) pairs per tap (interior pieces of a row)."""

    size: int
    taps: tuple[CoTap, ...]


@dataclass(frozen=True)
class CoRun:
    """``count`` consecutive pieces of one row (pieces ``first`` to ``first + count - 1``)
    of one class: the i-th starts at output column ``ow0 + i * ow0_step`` and reads from
    input column ``base + i * base_step`` (the interior of a row is a few such runs)."""

    first: int
    count: int
    ow0: int
    ow0_step: int
    base: int
    base_step: int
    size: int
    cls: int

    def piece(self, i: int) -> CoPiece:
        return CoPiece(self.ow0 + i * self.ow0_step, self.size,
                       self.base + i * self.base_step, self.cls)


class CoPieces(LazySequence):
    """The pieces of a row, computed on demand from its runs."""

    def __init__(self, runs: tuple[CoRun, ...]):
        self.runs = runs
        self.firsts = [run.first for run in runs]

    def __len__(self) -> int:
        last = self.runs[-1]
        return last.first + last.count

    def item(self, index: int) -> CoPiece:
        run = self.runs[bisect.bisect_right(self.firsts, index) - 1]
        return run.piece(index - run.first)


@dataclass(frozen=True)
class CoRowTaps(LazySequence):
    """Transposed: per output row (od * OH + oh), its useful (kd, kh) taps as (offset of
    the input row in an input channel, offset of the tap in a packed input channel).

    Kept folded: ``lists[rd * len(fold_h.rows) + rh]`` for the explicit rows (rd, rh) of
    the folded D and H tables; a row whose explicit rows are (rd, rh), with (add_d, add_h)
    added to their entries, has that list with ``(add_d * IH + add_h) * IW`` added to
    each input offset (-1 entries repeat with the period: the same taps are useful).
    """

    fold_d: FoldedTable
    fold_h: FoldedTable
    lists: tuple[tuple[tuple[int, int], ...], ...]
    out_dh: tuple[int, int]  # output rows (OD, OH)
    in_hw: tuple[int, int]  # input (IH, IW)

    def __len__(self) -> int:
        return self.out_dh[0] * self.out_dh[1]

    def lookup(self, row: int) -> tuple[int, int]:
        """(index into ``lists``, input offset added) of output row ``row``."""
        od, oh = divmod(row, self.out_dh[1])
        rd, add_d = self.fold_d.lookup(od)
        rh, add_h = self.fold_h.lookup(oh)
        return rd * len(self.fold_h.rows) + rh, (add_d * self.in_hw[0] + add_h) * self.in_hw[1]

    def item(self, row: int) -> tuple[tuple[int, int], ...]:
        index, shift = self.lookup(row)
        return tuple((x + shift, w) for x, w in self.lists[index])

    def uses(self) -> list[int]:
        """How many output rows use each entry of ``lists``."""
        return [d * h for d in fold_uses(self.fold_d, self.out_dh[0])
                for h in fold_uses(self.fold_h, self.out_dh[1])]


def fold_uses(fold: FoldedTable, out: int) -> list[int]:
    """Per explicit row of ``fold`` (a table of ``out`` rows), the rows that look it up."""
    uses = [0] * len(fold.rows)
    for index in range(len(fold.rows)):
        if fold.a <= index < fold.first:  # one period of the interior
            uses[index] = len(range(index, fold.b, fold.period))
        else:
            uses[index] = 1
    assert sum(uses) == out, (uses, out)
    return uses


def fold_table(table) -> FoldedTable:
    """``table`` folded (an IndexTable, or the one-row table of a missing dim)."""
    return table.folded() if isinstance(table, IndexTable) else FoldedTable.of(table)


@dataclass(frozen=True)
class CoTiles(PlanKind):
    """The "co" plan kind (vectorize="co"): weights packed per block of ``co_vectors``
    vectors of output channels as [ci][kd][kh][kw][co_vectors * lanes] (zeros past the
    last channel), a row split into near-equal pieces of at most ``max_pixels`` columns,
    each piece a register tile of co_vectors x size accumulators.

    ``step`` is the distance between a piece's output columns: 1, or a transposed
    convolution's W stride, whose row is first split into its stride phases (columns
    p, p+s, p+2s, ...): at one tap either every column of a phase reads an input column
    (consecutive ones) or none does, so no multiply-add of a piece is wasted.

    Packing reads the weight as ``pack_segments`` runs of ``pack_run`` consecutive
    reduction steps, ``pack_segment_stride`` apart (one run per input channel when
    transposed: weight (C_in, C_out/groups, *k)). With ``block_outer`` the channel block
    is the outermost part of the job index (group, block, batch, rows, piece), so a
    thread packs each block once per call rather than once per batch element.
    """

    label = "co"
    lanes_hold = "output channels"

    co_vectors: int
    max_pixels: int
    runs: tuple[CoRun, ...]
    classes: tuple[CoClass, ...]
    pack_elements: int  # packed weights of one channel block
    step: int = 1
    pack_segments: int = 1
    pack_run: int = 0
    pack_segment_stride: int = 0
    block_outer: bool = False
    # the D and H index tables folded (what a row's (kd, kh) taps read)
    folds: tuple[FoldedTable, FoldedTable] | None = None
    # transposed: per output row, its useful (kd, kh) taps (folded, see CoRowTaps)
    row_taps: CoRowTaps | None = None
    # decided by the planner once the layout and the weights are known (co_decisions)
    rows_outer: bool = False  # the channel block innermost in the job index
    next_block_lines: int = 0  # lines of the next block's weights prefetched per channel
    prefetch_channels: int = 0  # transposed: input rows prefetched this many channels ahead
    base_pixels: int = 0  # blocked input: one base pointer per this many columns
    share_inputs: tuple[bool, ...] = ()  # per class: keep each broadcast for all its taps

    @property
    def pieces(self) -> CoPieces:
        """Every piece of a row, in job order (computed on demand from the runs)."""
        return CoPieces(self.runs)


def co_row_taps(folds: tuple[FoldedTable, FoldedTable], out_dh: tuple[int, int],
                in_size: tuple[int, int, int], kernel: tuple[int, int, int],
                tile_co: int) -> CoRowTaps:
    """Per output row (od, oh), row-major: the (kd, kh) taps that add something, as
    (input row offset, packed weight offset); a transposed row skips the taps of the
    other stride phases without a branch. One list per pair of explicit rows of the
    folded D and H tables (``folds``), so their number does not grow with the output."""
    _, in_h, in_w = in_size
    _, kh_count, kw_count = kernel
    fold_d, fold_h = folds
    lists = tuple(
        tuple(((i_d * in_h + i_h) * in_w, (kd * kh_count + kh) * kw_count * tile_co)
              for kd, i_d in enumerate(d_row) if i_d >= 0
              for kh, i_h in enumerate(h_row) if i_h >= 0)
        for d_row in fold_d.rows for h_row in fold_h.rows)
    return CoRowTaps(fold_d, fold_h, lists, out_dh, (in_h, in_w))


def _piece_class(w_table, ow0: int, size: int, step: int, vectors: int,
                 lanes: int) -> tuple[int, CoClass]:
    """(base, class) of the piece of ``size`` columns ``ow0 + p * step``: the input
    columns it reads at each tap, relative to the first (offsets >= 0: the base stays
    inside the row)."""
    cols = [w_table[ow0 + p * step] for p in range(size)]
    base = min((c for row in cols for c in row if c >= 0), default=0)
    taps = tuple(CoTap(kw, tuple(kw * vectors * lanes + v * lanes for v in range(vectors)),
                       tuple((p, cols[p][kw] - base) for p in range(size) if cols[p][kw] >= 0))
                 for kw in range(len(cols[0])))
    return base, CoClass(size, taps)


def _phase_runs(w_table, phase: int, step: int, max_pixels: int,
                first: int) -> list[tuple[int, int, int, int, int]]:
    """The pieces of one stride phase (columns ``phase``, ``phase + step``, ...) split into
    near-equal parts of at most ``max_pixels``, as (first piece, count, ow0, ow0 step, size)
    spans: each piece that touches a border alone, the interior ones (every column in the
    table's periodic interior, so all of one size read alike) as one span per size."""
    count = len(range(phase, len(w_table), step))
    parts = -(-count // max_pixels)
    small, larger = divmod(count, parts)  # the first ``larger`` pieces have small + 1

    def ow0(i: int) -> int:
        return phase + step * (i * small + min(i, larger))

    def size(i: int) -> int:
        return small + (i < larger)

    lo, hi = w_table.interior if isinstance(w_table, IndexTable) else (0, 0)
    # pieces [i_lo, i_hi) lie inside [lo, hi): the first starting at lo or later, the first
    # ending at hi or later (both monotone in i)
    i_lo = bisect.bisect_left(range(parts), True, key=lambda i: ow0(i) >= lo)
    i_hi = bisect.bisect_left(range(parts), True,
                              key=lambda i: ow0(i) + (size(i) - 1) * step >= hi)
    i_hi = max(i_hi, i_lo)
    spans = [(i, 1, ow0(i), 0, size(i)) for i in range(i_lo)]
    for start, end in ((i_lo, min(i_hi, larger)), (max(i_lo, larger), i_hi)):
        if end > start:
            spans.append((start, end - start, ow0(start), size(start) * step, size(start)))
    spans += [(i, 1, ow0(i), 0, size(i)) for i in range(i_hi, parts)]
    return [(first + i, n, o, d, sz) for i, n, o, d, sz in spans]


def co_row_tiles(spec: ConvSpec, tables, vectors: int, lanes: int,
                 max_pixels: int, reduction: int, step: int = 1) -> CoTiles:
    """Split a row of ``len(tables[2])`` output columns into pieces (per stride phase when
    ``step`` > 1) and group them by the input columns they read (``tables[2][ow][kw]``, -1
    for nothing) relative to a base: runs of pieces of one class whose output and input
    columns advance by a fixed step. Reads the border pieces and one or two pieces per
    interior run only (the table's interior is periodic-affine, convgen.plan.base). The
    D and H tables (``tables[0]``, ``tables[1]``) are kept folded."""
    w_table = tables[2]
    out_w = len(w_table)
    runs: list[CoRun] = []
    classes: list[CoClass] = []
    index: dict[CoClass, int] = {}
    first = 0
    for phase in range(min(step, out_w)):
        spans = _phase_runs(w_table, phase, step, max_pixels, first)
        for piece, count, ow0, ow0_step, size in spans:
            base, cls = _piece_class(w_table, ow0, size, step, vectors, lanes)
            base_step = 0
            if count > 1:
                second, same = _piece_class(w_table, ow0 + ow0_step, size, step, vectors, lanes)
                assert same == cls, "interior pieces of one size read alike"
                base_step = second - base
            if cls not in index:
                index[cls] = len(classes)
                classes.append(cls)
            run = CoRun(piece, count, ow0, ow0_step, base, base_step, size, index[cls])
            merged = _merge(runs[-1], run) if runs else None
            if merged is not None:
                runs[-1] = merged
            else:
                runs.append(run)
        first = spans[-1][0] + spans[-1][1]
    unrolled = co_unrolled(classes, vectors)
    if unrolled > MAX_CO_UNROLLED:
        raise ScheduleError("vectorize", "co",
                            f"{spec.name}: the 'co' kernel would unroll {unrolled} "
                            f"multiply-adds ({len(classes)} piece classes x "
                            f"{spec.kernel_size[-1]} taps; at most {MAX_CO_UNROLLED}); "
                            "use vectorize='w'")
    taps = reduction // (spec.in_channels // spec.groups)
    if spec.transposed:  # weight (C_in, C_out/groups, *k): one run of taps per input channel
        segments, run, stride = reduction // taps, taps, (spec.out_channels // spec.groups) * taps
    else:  # weight (C_out, C_in/groups, *k): a channel's whole reduction is one run
        segments, run, stride = 1, reduction, 0
    return CoTiles(vectors, max(r.size for r in runs), tuple(runs), tuple(classes),
                   reduction * vectors * lanes, step, segments, run, stride,
                   block_outer=spec.transposed,
                   folds=(fold_table(tables[0]), fold_table(tables[1])))


def co_unrolled(classes, vectors: int) -> int:
    """Multiply-adds a "co" kernel writes out per channel step: every class's taps x
    pixels x channel vectors."""
    return sum(len(tap.pixels) for cls in classes for tap in cls.taps) * vectors


def _merge(run: CoRun, after: CoRun) -> CoRun | None:
    """``run`` and the run ``after`` it as one, when ``after`` continues its steps."""
    if (run.cls, run.size) != (after.cls, after.size) or run.first + run.count != after.first:
        return None
    ow0_step = after.ow0 - run.ow0 if run.count == 1 else run.ow0_step
    base_step = after.base - run.base if run.count == 1 else run.base_step
    if after.count > 1 and (after.ow0_step, after.base_step) != (ow0_step, base_step):
        return None
    if (after.ow0, after.base) != (run.ow0 + run.count * ow0_step,
                                   run.base + run.count * base_step):
        return None
    return CoRun(run.first, run.count + after.count, run.ow0, ow0_step, run.base, base_step,
                 run.size, run.cls)


def transpose_shuffles(lanes: int) -> list[tuple[int, list[tuple[int, int, list[int],
                                                                   list[int]]]]]:
    """Two-source shuffles that transpose ``lanes`` vectors r0, r1, ... in place (the
    "co" plans' weight packing and output tiles): stages (block, [(i, j, mask_a, mask_b)]).

    Stage b (lanes/2, ..., 2, 1) swaps the off-diagonal b x b blocks of every 2b x 2b
    block: rows i and i + b (i & b == 0) exchange their elements e & b; the new row i is
    shuffle(r_i, r_j, mask_a), the new row j shuffle(r_i, r_j, mask_b) (indices >= lanes
    pick from r_j).
    """
    stages = []
    block = lanes // 2
    while block >= 1:
        ops = []
        for i in range(lanes):
            if i & block:
                continue
            mask_a = [lanes + e - block if e & block else e for e in range(lanes)]
            mask_b = [lanes + e if e & block else e + block for e in range(lanes)]
            ops.append((i, i + block, mask_a, mask_b))
        stages.append((block, ops))
        block //= 2
    return stages


def co_rows_outer(plan: Plan, prepacked: bool) -> bool:
    """Whether a "co" kernel's jobs put the channel block innermost (threads split the
    rows) instead of outermost (threads split the channel blocks): with weights packed at
    load (no per-thread pack to keep), 2+ threads, and weights smaller than an image's
    input. Each thread then reads the input rows it needs, mostly the ones it wrote as the
    previous layer (a network's layers split rows too), rather than all of them, half
    from the other core's cache.
    """
    spec = plan.spec
    if not prepacked or plan.threads < 2 or spec.transposed:
        return False
    weights = plan.groups * plan.n_tiles[0] * plan.kind.pack_elements
    return weights <= CO_ROWS_OUTER_WEIGHTS * math.prod(spec.input_shape[1:])


def co_next_block_lines(plan: Plan, prepacked: bool = False) -> int:
    """Cache lines of the NEXT channel block's weights a "co" kernel prefetches into
    L2 per input channel of a job, spread so that the whole block has arrived when the
    jobs of this one end (0: none; packed in the call, a transposed block is not one run
    of the weight; with ``prepacked`` every block is one run).

    A block is packed at its first job; without this its weights come from memory while
    nothing computes (weights larger than the last-level cache: in a network, each call).
    Layers with under CO_PREFETCH_WEIGHT_BYTES of weights go without.
    """
    co = plan.kind
    itemsize = dtype_info(plan.spec.dtype).itemsize
    if (co.pack_segments != 1 and not prepacked) or \
            co_rows_outer(plan, prepacked) or \
            math.prod(plan.spec.weight_shape) * itemsize < CO_PREFETCH_WEIGHT_BYTES:
        return 0
    block_lines = -(-plan.tile_co * co.pack_run * itemsize // 64)
    jobs_per_block = plan.n_tiles[1] * plan.n_tiles[2] * plan.n_tiles[3]
    return -(-block_lines // (jobs_per_block * plan.cin_g))


def co_share_inputs(co: CoTiles, cls: CoClass) -> bool:
    """Transposed, strided: a phase's few taps read overlapping input columns; gcc may
    keep each broadcast for all of them when accumulators, broadcasts and weight
    vectors fit the register file."""
    columns = {off for t in cls.taps for _, off in t.pixels}
    needed = co.co_vectors * (cls.size + 1) + len(columns)
    return co.step > 1 and needed <= (32 if vector_bits() == 512 else 16)


def co_decisions(plan: Plan) -> CoTiles:
    """``plan.kind`` with the decisions that depend on the whole plan (threads, the
    layout, weights packed at load)."""
    co = plan.kind
    prepacked = plan.prepared_weights
    return dataclasses.replace(
        co, rows_outer=co_rows_outer(plan, prepacked),
        next_block_lines=co_next_block_lines(plan, prepacked),
        prefetch_channels=CO_PREFETCH_CHANNELS, base_pixels=CO_BASE_PIXELS,
        share_inputs=tuple(co_share_inputs(co, c) for c in co.classes))


def describe_co_plan(plan: Plan) -> list[str]:
    """describe_plan for vectorize="co"."""
    co = plan.kind
    assert co is not None
    sizes = sorted({run.size for run in co.runs}, reverse=True)
    border = sum(1 for c in co.classes
                 if any(len(t.pixels) < c.size for t in c.taps))
    spec = plan.spec
    kind = "transposed convolution (split by stride phase: no scatter, no zero taps)" \
        if spec.transposed else "direct convolution"
    jobs = (f"jobs: groups {plan.groups} x channel blocks {plan.n_tiles[0]} x batch {plan.batch}"
            if co.block_outer else
            f"jobs: batch {plan.batch} x groups {plan.groups} x channel blocks {plan.n_tiles[0]}")
    lines = [
        f"{kind}, lowered to 3 spatial dims (D, H, W) = {plan.out_size} outputs;"
        " vectorized over output channels (vectorize='co')",
        f"{jobs} x D/H row tiles {plan.n_tiles[1]}x{plan.n_tiles[2]} x row pieces"
        f" {plan.n_tiles[3]} = {plan.jobs}, on {plan.threads} thread(s)",
        f"register tile: {co.co_vectors} vector(s) of {plan.vector_lanes} output channels x"
        f" {co.max_pixels} output columns = {co.co_vectors * co.max_pixels} vector accumulators"
        f"; a row of {plan.out_size[2]} columns in {len(co.pieces)} piece(s) of"
        f" {'/'.join(map(str, sizes))} ({len(co.runs)} run(s) of one body each)",
        f"weights packed per channel block as [ci][kd][kh][kw][{plan.tile_co}] in each call"
        f" ({co.pack_elements} elements, zeros past the last channel; bound kernels and"
        f" networks: every block once, at load)",
        f"reduction: {plan.cin_g} input channels x {math.prod(plan.kernel)} taps; per tap"
        f" {co.co_vectors} weight vector load(s), one broadcast input per column (any stride"
        f" or dilation, no gathers)",
        f"{len(co.classes)} unrolled piece bodies ({border} with border columns that skip"
        f" padding taps); output stored channel by channel after the reduction",
    ]
    if spec.transposed:
        per_row = sum(run.count * len(t.pixels) for run in co.runs
                      for t in co.classes[run.cls].taps)
        row_taps = co.row_taps
        assert row_taps is not None
        computed = per_row * sum(uses * len(taps)
                                 for uses, taps in zip(row_taps.uses(), row_taps.lists))
        dense = math.prod(plan.out_size) * math.prod(plan.kernel)
        scatter = math.prod(plan.in_size) * math.prod(plan.kernel)
        lines.append(
            f"stride phases: a row's {plan.out_size[2]} columns in {co.step} phase(s) of"
            f" columns {co.step} apart; each row runs only the (kd, kh) taps that reach it"
            f" (listed per row), each piece only the kw taps of its phase: {computed}"
            f" (output pixel, tap) products per channel, none on a zero (every output"
            f" pixel x every tap: {dense}; the scatter definition: {scatter}, its cropped"
            f" border included)")
    return lines
