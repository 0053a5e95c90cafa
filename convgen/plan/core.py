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
from convgen.schedule import Schedule, co_vectors, default_schedule
from convgen.spec import ConvSpec, source_coordinate
from convgen.plan.winograd import WinogradPlan, describe_winograd_plan, make_winograd_plan

# How one vector of VL output columns reads its VL input columns at one tap
# (the LLVM backend's vector tables; see vector_tables()).
VEC_SKIP, VEC_LOAD, VEC_MASKED_LOAD, VEC_GATHER, VEC_EVEN = 0, 1, 2, 3, 4

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
class CoTiles:
    """The vectorize="co" plan of a row: weights packed per block of ``co_vectors``
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

    co_vectors: int
    max_pixels: int
    pieces: tuple[CoPiece, ...]
    classes: tuple[CoClass, ...]
    pack_elements: int  # packed weights of one channel block
    step: int = 1
    pack_segments: int = 1
    pack_run: int = 0
    pack_segment_stride: int = 0
    block_outer: bool = False
    # transposed: per output row (od * OH + oh), its useful (kd, kh) taps as (offset of
    # the input row in an input channel, offset of the tap in a packed input channel)
    row_taps: tuple[tuple[tuple[int, int], ...], ...] | None = None


def co_row_taps(tables, in_size: tuple[int, int, int], kernel: tuple[int, int, int],
                tile_co: int) -> tuple[tuple[tuple[int, int], ...], ...]:
    """Per output row (od, oh), row-major: the (kd, kh) taps that add something, as
    (input row offset, packed weight offset); a transposed row skips the taps of the
    other stride phases without a branch."""
    _, in_h, in_w = in_size
    _, kh_count, kw_count = kernel
    return tuple(
        tuple(((i_d * in_h + i_h) * in_w, (kd * kh_count + kh) * kw_count * tile_co)
              for kd, i_d in enumerate(d_row) if i_d >= 0
              for kh, i_h in enumerate(h_row) if i_h >= 0)
        for d_row in tables[0] for h_row in tables[1])


def _near_equal(count: int, most: int) -> list[int]:
    """``count`` split into the fewest near-equal parts of at most ``most``."""
    parts = -(-count // most)
    return [count // parts + (1 if i < count % parts else 0) for i in range(parts)]


def co_row_tiles(spec: ConvSpec, w_table: list[list[int]], vectors: int, lanes: int,
                 max_pixels: int, reduction: int, step: int = 1) -> CoTiles:
    """Split a row of ``len(w_table)`` output columns into pieces (per stride phase when
    ``step`` > 1) and group them by the input columns they read (``w_table[ow][kw]``, -1
    for nothing) relative to a base."""
    out_w = len(w_table)
    kw_count = len(w_table[0])
    pieces, classes, index = [], [], {}
    for phase in range(min(step, out_w)):
        ow0 = phase
        for size in _near_equal(len(range(phase, out_w, step)), max_pixels):
            cols = [w_table[ow0 + p * step] for p in range(size)]
            columns = [c for row in cols for c in row if c >= 0]
            base = min(columns, default=0)  # offsets >= 0: the base stays inside the row
            taps = []
            for kw in range(kw_count):
                pixels = tuple((p, cols[p][kw] - base) for p in range(size)
                               if cols[p][kw] >= 0)
                taps.append(CoTap(kw, tuple(kw * vectors * lanes + v * lanes
                                            for v in range(vectors)), pixels))
            cls = CoClass(size, tuple(taps))
            if cls not in index:
                index[cls] = len(classes)
                classes.append(cls)
            pieces.append(CoPiece(ow0, size, base, index[cls]))
            ow0 += size * step
    taps = reduction // (spec.in_channels // spec.groups)
    if spec.transposed:  # weight (C_in, C_out/groups, *k): one run of taps per input channel
        segments, run, stride = reduction // taps, taps, (spec.out_channels // spec.groups) * taps
    else:  # weight (C_out, C_in/groups, *k): a channel's whole reduction is one run
        segments, run, stride = 1, reduction, 0
    return CoTiles(vectors, max(p.size for p in pieces), tuple(pieces), tuple(classes),
                   reduction * vectors * lanes, step, segments, run, stride,
                   block_outer=spec.transposed)


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


@dataclass(frozen=True)
class VectorTables:
    """Tables for code that holds VL output columns per vector (the LLVM backend).

    Rows of the D and H tables are padded with -1 up to whole tiles, so tile loops
    can run their full constant trip count. For the W dim, vector ``v`` of W-tile
    ``t`` covers output columns ``t*TW + v*VL + lane``; at tap ``kw`` its input
    columns are ``w_table[kw][t*TW + v*VL + lane]`` (-1: nothing to add). ``modes``
    says how to read them: VEC_SKIP (no lane contributes), VEC_LOAD (every lane,
    columns ``base + lane``), VEC_MASKED_LOAD (the valid lanes are ``base + lane``)
    or VEC_GATHER; ``bases`` holds ``base``.
    """

    n_vectors: int  # vectors per W tile: ceil(TW / VL)
    row_length: int  # length of each w_table row
    d_table: list[list[int]]
    h_table: list[list[int]]
    w_table: list[list[int]]  # [KW][row_length]
    modes: list[list[list[int]]]  # [NT_W][KW][n_vectors]
    bases: list[list[list[int]]]  # [NT_W][KW][n_vectors]
    lane_masks: list[list[list[int]]]  # [NT_W][KW][n_vectors]: bit l set when lane l is valid
    # Transposed convolutions with a W stride visit output columns phase by phase
    # (0, s, 2s, ..., then 1, 1+s, ...): within a phase a tap reads consecutive input
    # columns, so vectors load instead of gathering. out_columns[v] is the output column of
    # virtual column v (-1 past the end); None when columns are in order.
    out_columns: list[int] | None = None


def vector_tables(plan: Plan) -> VectorTables:
    lanes = plan.vector_lanes
    tw = plan.tile[2]
    n_vectors = -(-tw // lanes)
    nt_w = plan.n_tiles[3]
    row_length = (nt_w - 1) * tw + n_vectors * lanes

    def padded_rows(table: list[list[int]], rows: int) -> list[list[int]]:
        width = len(table[0])
        return table + [[-1] * width for _ in range(rows - len(table))]

    d_table = padded_rows(plan.tables[0], plan.n_tiles[1] * plan.tile[0])
    h_table = padded_rows(plan.tables[1], plan.n_tiles[2] * plan.tile[1])
    kw_count = plan.kernel[2]
    out_w = plan.out_size[2]
    in_w = plan.in_size[2]
    stride_w = plan.spec.stride[-1]
    out_columns = None
    order = list(range(out_w))
    if plan.spec.transposed and stride_w > 1:
        order = [o for phase in range(stride_w) for o in range(phase, out_w, stride_w)]
        out_columns = order + [-1] * (row_length - out_w)
    w_table = [[plan.tables[2][order[v]][k] if v < out_w else -1 for v in range(row_length)]
               for k in range(kw_count)]
    modes, bases, masks = [], [], []
    for t in range(nt_w):
        tile_modes, tile_bases, tile_masks = [], [], []
        for k in range(kw_count):
            row_modes, row_bases, row_masks = [], [], []
            for v in range(n_vectors):
                first = t * tw + v * lanes
                idx = w_table[k][first:first + lanes]
                valid = [(lane, i) for lane, i in enumerate(idx) if i >= 0]
                offsets = {i - lane for lane, i in valid}
                if not valid:
                    mode, base = VEC_SKIP, 0
                elif len(offsets) == 1:
                    base = offsets.pop()
                    mode = VEC_LOAD if len(valid) == lanes else VEC_MASKED_LOAD
                elif len(valid) == lanes and all(i == idx[0] + 2 * lane for lane, i in valid) \
                        and idx[0] + 2 * lanes <= in_w:
                    # stride 2 inside the row: two vector loads, keep the even lanes
                    mode, base = VEC_EVEN, idx[0]
                else:
                    mode, base = VEC_GATHER, 0
                row_modes.append(mode)
                row_bases.append(base)
                row_masks.append(sum(1 << lane for lane, _ in valid))
            tile_modes.append(row_modes)
            tile_bases.append(row_bases)
            tile_masks.append(row_masks)
        modes.append(tile_modes)
        bases.append(tile_bases)
        masks.append(tile_masks)
    return VectorTables(n_vectors, row_length, d_table, h_table, w_table, modes, bases, masks,
                        out_columns)


def describe_plan(plan: Plan, backend: str = "c") -> list[str]:
    """How the kernel runs on ``backend``, in a few lines (``convgen explain`` prints
    them); only the transform-GEMM plans differ between the backends."""
    if plan.winograd is not None:
        return describe_winograd_plan(plan, backend)
    if plan.co_tiles is not None:
        return describe_co_plan(plan)
    spec, tables = plan.spec, vector_tables(plan)
    kind = "transposed convolution (gathered: no scatter)" if spec.transposed \
        else "direct convolution"
    counts = {VEC_LOAD: 0, VEC_MASKED_LOAD: 0, VEC_EVEN: 0, VEC_GATHER: 0, VEC_SKIP: 0}
    for tile in tables.modes:
        for row in tile:
            for mode in row:
                counts[mode] += 1
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
        f"input reads per (W tile, tap, vector): {counts[VEC_LOAD]} vector loads, "
        f"{counts[VEC_MASKED_LOAD]} masked loads, {counts[VEC_EVEN]} stride-2 shuffles, "
        f"{counts[VEC_GATHER]} gathers, "
        f"{counts[VEC_SKIP]} skipped (all padding)",
    ]
    if tables.out_columns is not None:
        lines.append(f"output columns visited phase by phase (W stride {spec.stride[-1]}), "
                     "so taps read consecutive inputs")
    if spec.groups > 1 and plan.cin_g == 1 and not spec.transposed:
        lines.append("depthwise: one input channel per output channel, so no reduction "
                     "over channels; the register tile grows in space instead "
                     "(bandwidth-bound: judge it by bytes moved, not FLOPs)")
    return lines


def describe_co_plan(plan: Plan) -> list[str]:
    """describe_plan for vectorize="co"."""
    co = plan.co_tiles
    assert co is not None
    sizes = sorted({piece.size for piece in co.pieces}, reverse=True)
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
        f" {'/'.join(map(str, sizes))}",
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
        per_row = sum(len(t.pixels) for p in co.pieces for t in co.classes[p.cls].taps)
        computed = per_row * sum(len(r) for r in co.row_taps or ())
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
