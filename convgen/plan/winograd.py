"""The transform-GEMM plans: Winograd F(m, r) convolution and 1x1 convolution as a GEMM.

Winograd's minimal filtering computes ``m`` outputs of an ``r``-tap correlation from
``alpha = m + r - 1`` inputs with ``alpha`` multiplications: ``y = AT [(G g) * (BT d)]``.
Nested over H and W, a tile of ``mh x mw`` outputs takes ``alpha_h x alpha_w`` products,
and over channels the products are ``alpha_h * alpha_w`` independent GEMMs:
``M[xi] = U[xi] V[xi]`` with ``U = G g G^T`` (per output x input channel) and ``V = BT d B``
(per input channel x tile). F(4x4, 3x3) does 36 multiplications where direct convolution
does 144 for the same 16 outputs.

The matrices come from the Cook-Toom construction over the points 0, 1, -1, 2, -2, 1/2,
-1/2, ... and infinity, in exact rational arithmetic (:func:`winograd_matrices`). Each
row of BT is scaled to small integers (the inverse scale moves into G), and the
transforms are rendered as straight-line code with the zero terms left out.

A dilated convolution (taps d apart) is d interleaved undilated ones per dim: the outputs
o = p + d*q of phase p read only the inputs of that phase. Tiles are made per phase (their
outputs and patch elements d apart) and numbered phase-minor, so that d adjacent tiles
hold d adjacent outputs; only zero padding is supported (the patches are masked gathers).

A 1x1 convolution is the same plan with identity transforms (``m = alpha = 1``): a GEMM
over the output pixels (method "gemm").

Both backends build these plans (templates/c/conv_wino_function.j2, convgen/backends/llvm/wino.py);
the planner's tables say where each tile's input
patch starts in a zero-padded staged copy of the input and where its outputs go.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

from convgen.dtypes import dtype_info
from convgen.plan.base import PlanKind
from convgen.spec import ConvSpec, source_coordinate
from convgen.schedule import (MAX_ALPHA, MAX_CO_ROWS, MAX_TILE_2D, METHODS,  # noqa: F401
                              check_tiles, default_tiles, unsupported)

# Winograd's tile-major outputs of about this many bytes (a 2 MiB L2) are copied out at a
# time, so that long rows and large planes are copied from cache (it bounds what must
# stay in cache; each chunk ends with a barrier between threads).
CHUNK_BYTES = 2 << 20
# the GEMM method (1x1, input read in place) prefetches its input this many blocks of
# pixels ahead: one input channel after another, the block's rows are as many streams as
# there are channels, more than the hardware prefetcher follows
GEMM_PREFETCH_BLOCKS = 4
MAX_PREFETCH = 64  # cache lines prefetched per input channel and block
MAX_PREFETCH_TABLE = 1 << 18  # larger inputs go without (the table would bloat the source)
# threads: the output channels are split into parts (jobs = blocks x parts) until no
# thread gets more than this times the mean share of a chunk's jobs (a block's input
# transform is then done once per part: ~1/8 of its GEMM at 64 channels, less above)
MAX_IMBALANCE = 1.2


def _points(count: int) -> list[Fraction]:
    """The first ``count`` finite interpolation points: 0, 1, -1, 2, -2, 1/2, -1/2, 3, ..."""
    pts = [Fraction(0)]
    k = 1
    while len(pts) < count:
        for p in (Fraction(k), Fraction(-k), Fraction(1, k) if k > 1 else None,
                  Fraction(-1, k) if k > 1 else None):
            if p is not None and p not in pts:
                pts.append(p)
        k += 1
    return pts[:count]


def _inverse(matrix: list[list[Fraction]]) -> list[list[Fraction]]:
    """Exact Gauss-Jordan inverse of a square rational matrix."""
    n = len(matrix)
    a = [list(row) + [Fraction(int(i == j)) for j in range(n)] for i, row in enumerate(matrix)]
    for col in range(n):
        pivot = next(r for r in range(col, n) if a[r][col] != 0)
        a[col], a[pivot] = a[pivot], a[col]
        scale = a[col][col]
        a[col] = [v / scale for v in a[col]]
        for r in range(n):
            if r != col and a[r][col] != 0:
                factor = a[r][col]
                a[r] = [v - factor * p for v, p in zip(a[r], a[col])]
    return [row[n:] for row in a]


Matrix = list[list[Fraction]]


def winograd_matrices(m: int, r: int) -> tuple[Matrix, Matrix, Matrix]:
    """(AT, G, BT) of F(m, r): AT is m x alpha, G alpha x r, BT alpha x alpha, with
    ``y = AT @ ((G @ g) * (BT @ d))`` the correlation ``y[i] = sum_k g[k] d[i + k]``.

    Cook-Toom: evaluate at alpha - 1 finite points and infinity. With Vm, Vr, Vn the
    evaluation matrices of polynomials with m, r and alpha coefficients, linear
    convolution is ``c = Vn^-1 ((Vm u) * (Vr g))``; correlation is its transpose in u,
    so AT = Vm^T, G = Vr and BT = Vn^-T. Row j of BT is then scaled to coprime integers
    and row j of G divided by the same factor.
    """
    if m < 1 or r < 1:
        raise ValueError(f"F({m}, {r}): m and r must be >= 1")
    alpha = m + r - 1
    if alpha == 1:
        one = [[Fraction(1)]]
        return one, one, one
    pts = _points(alpha - 1)

    def evaluation(cols: int) -> Matrix:
        rows = [[p ** k for k in range(cols)] for p in pts]
        rows.append([Fraction(int(k == cols - 1)) for k in range(cols)])
        return rows

    vm, vr, vn = evaluation(m), evaluation(r), evaluation(alpha)
    at = [[vm[j][i] for j in range(alpha)] for i in range(m)]
    inv = _inverse(vn)
    bt = [[inv[k][j] for k in range(alpha)] for j in range(alpha)]
    g = [list(row) for row in vr]
    for j in range(alpha):
        dens = math.lcm(*(v.denominator for v in bt[j]))
        nums = math.gcd(*(int(v * dens) for v in bt[j]))
        scale = Fraction(dens, nums)
        bt[j] = [v * scale for v in bt[j]]
        g[j] = [v / scale for v in g[j]]
    return at, g, bt


def transform_lines(matrix: Matrix, sources: list[str], targets: list[str],
                    declare: str = "") -> list[str]:
    """C statements ``target_i = sum_j matrix[i][j] * source_j``, zeros left out, +-1
    as additions; ``declare`` prefixes each (a type for new variables)."""
    lines = []
    for target, row in zip(targets, matrix):
        terms = []
        for coef, source in zip(row, sources):
            if coef == 0:
                continue
            value = float(coef)
            if abs(value) == 1.0:
                terms.append(("-" if value < 0 else "+", source))
            else:
                terms.append(("-" if value < 0 else "+", f"(T){abs(value)!r} * {source}"))
        if not terms:
            expr = "(T)0 * " + sources[0]
        else:
            expr = " ".join(f"{sign} {text}" for sign, text in terms)
            expr = expr[2:] if expr.startswith("+ ") else "-" + expr[2:]
        lines.append(f"{declare}{target} = {expr};")
    return lines


def grid_size(outputs: int, dilation: int, tile: int) -> int:
    """Tiles along a dim of ``outputs`` with taps ``dilation`` apart and ``tile`` outputs
    per tile: each of the ``dilation`` phases (outputs o % dilation) tiled on its own."""
    per_phase = -(-outputs // dilation)
    return dilation * -(-per_phase // tile)


def tile_origin(t: int, grid_w: int, tile: tuple[int, int],
                dilation: tuple[int, int]) -> tuple[int, int]:
    """The output row and column of tile ``t``'s first output (tiles numbered row-major
    over a grid ``grid_w`` tiles wide, phase-minor per dilation: see grid_size); its
    outputs are ``dilation`` apart from there, as its patch's inputs are from the same
    place less the padding."""
    row, col = t // grid_w, t % grid_w
    (m_h, m_w), (d_h, d_w) = tile, dilation
    return row % d_h + d_h * (row // d_h) * m_h, col % d_w + d_w * (col // d_w) * m_w


def tile_vectors(co_rows: int) -> int:
    """Vectors of tiles in a GEMM register tile: 2 when co_rows x 2 accumulators, the two
    tile vectors and a broadcast weight fit 32 registers (14 rows or fewer), else 1."""
    return 2 if 2 * co_rows + 3 <= 32 else 1


@dataclass(frozen=True)
class WinogradPlan(PlanKind):
    """The constants of a transform-GEMM kernel (2D; a 1D convolution has H = 1).

    Tiles of ``tile = (mh, mw)`` outputs are numbered row-major over a ``grid`` of
    (TH, TW) tiles; a block is ``vectors x lanes`` consecutive tiles, one lane each.
    ``in_offsets[block][lane]`` is where the tile's ``alpha`` patch starts in a staged
    input channel (``staged_in`` rows x cols, zero padded, or the input itself for a
    GEMM that reads it in place); ``out_offsets[block][lane]`` where its outputs go in a
    staged output channel (grid rows x cols of whole tiles plus one spare tile row for
    lanes past the last tile), or for a GEMM the output pixel.
    """

    method: str
    cout_g: int
    tile: tuple[int, int]
    alpha: tuple[int, int]
    grid: tuple[int, int]
    co_rows: int
    vectors: int
    lanes: int
    blocks: int
    in_offsets: tuple[tuple[int, ...], ...]
    staged_in: tuple[int, int]  # rows, cols of a staged input channel ((0, 0): read x)
    src_rows: tuple[int, ...]  # staged row -> input row (-1: zero)
    src_cols: tuple[int, ...]  # staged col -> input col (-1: zero)
    stage_out: bool  # outputs stored tile-major, then copied out (else written in place)
    matrices_h: tuple[Matrix, Matrix, Matrix]
    matrices_w: tuple[Matrix, Matrix, Matrix]
    flip: bool
    # zero padding: the patches are gathered from the input itself (in_offsets relative to
    # an input channel, negative at the top-left border), lane l reading patch row i
    # (column j) when bit l of row_masks[block][vector][i] (col_masks[...][j]) is set
    row_masks: tuple | None = None
    col_masks: tuple | None = None
    # (block end, tile rows complete) per chunk of blocks: the kernel copies those tile
    # rows' outputs out after each chunk, while they are in cache (see CHUNK_BYTES)
    chunks: tuple[tuple[int, int], ...] = ()
    # per block: the cache lines (offsets from an input channel, 64 bytes apart) of the
    # NEXT block's patches, prefetched while this block is transformed (masked plans)
    prefetch: tuple[tuple[int, ...], ...] = ()
    # a job is one block of tiles x one part of co_part output channels (a multiple of
    # co_rows; the last part takes the rest): with few blocks per chunk, the threads share
    # a block's GEMM by output channels, each transforming the block's input itself
    co_part: int = 0
    dilation: tuple[int, int] = (1, 1)  # taps (dh, dw) apart; see make_winograd_plan's grid
    # the GEMM reading its input in place prefetches it this many blocks ahead
    prefetch_blocks: int = GEMM_PREFETCH_BLOCKS
    # the OpenMP schedule clause of the (block x part) job loop (set by the planner)
    block_schedule: str = "static"

    @property
    def label(self) -> str:  # the transform method: "winograd" or "gemm"
        return self.method

    @property
    def lanes_hold(self) -> str:  # what the vector lanes hold
        return "output pixels" if self.method == "gemm" else "tiles"

    @property
    def co_parts(self) -> int:
        return -(-self.cout_g // self.co_part)

    @property
    def chunk_blocks(self) -> list[int]:
        """Blocks per chunk."""
        return chunk_sizes(self.chunks)

    @property
    def tiles(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def block_tiles(self) -> int:
        return self.vectors * self.lanes

    @property
    def products(self) -> int:
        return self.alpha[0] * self.alpha[1]


def chunk_sizes(chunks) -> list[int]:
    """The blocks of each chunk, from the (block end, tile rows) of WinogradPlan.chunks."""
    return [end - (chunks[i - 1][0] if i else 0) for i, (end, _) in enumerate(chunks)]


def split_output_channels(cout_g: int, co_rows: int, chunk_blocks: list[int],
                          threads: int) -> int:
    """The channels per part (see WinogradPlan.co_part): the fewest parts whose jobs
    (blocks x parts, per chunk) leave no thread more than MAX_IMBALANCE over the mean."""
    rows = min(co_rows, cout_g)
    most = -(-cout_g // rows)
    for parts in range(1, most + 1):
        worst = max(-(-b * parts // threads) * threads / (b * parts) for b in chunk_blocks)
        if threads == 1 or worst <= MAX_IMBALANCE:
            break
    return -(-cout_g // parts // rows) * rows if parts > 1 else cout_g


def make_winograd_plan(spec: ConvSpec, method: str, co_rows: int, tiles: tuple[int, ...],
                       lanes: int, threads: int = 1) -> WinogradPlan:
    """The tables of ``method`` ("winograd" or "gemm") for ``spec`` run on ``threads``;
    the schedule was validated (:meth:`convgen.schedule.Schedule.resolve`)."""
    pad1 = (lambda v, fill: (fill,) * (2 - len(v)) + tuple(v))
    in_h, in_w = pad1(spec.in_spatial, 1)
    row_masks = col_masks = None
    out_h, out_w = pad1(spec.output_spatial, 1)
    k_h, k_w = pad1(spec.kernel_size, 1)
    m_h, m_w = pad1(tiles, 1)
    stride_h, stride_w = pad1(spec.stride, 1)
    pad_h = spec.padding[0][0] if spec.ndim == 2 else 0
    pad_w = spec.padding[-1][0]
    # (a 1x1 kernel's dilation changes nothing)
    dil_h, dil_w = (d if k > 1 else 1 for d, k in zip(pad1(spec.dilation, 1), (k_h, k_w)))
    a_h, a_w = m_h + k_h - 1, m_w + k_w - 1
    # dilation d: the outputs of each of the d phases (o % d) form an undilated convolution
    # of the inputs of that phase; tile rows (columns) are ordered phase-minor, tile row T
    # holding outputs T % d + d * (T // d * m + a), a < m (d = 1: the plain grid)
    grid = (grid_size(out_h, dil_h, m_h), grid_size(out_w, dil_w, m_w))
    vectors = tile_vectors(co_rows)
    block = vectors * lanes
    count = grid[0] * grid[1]
    blocks = -(-count // block)
    if method == "gemm":
        in_place = stride_h == stride_w == 1 and pad_h == pad_w == 0
        staged_in = (0, 0) if in_place else (out_h, out_w)
        src_rows = tuple(source_coordinate(o * stride_h - pad_h, in_h, spec.padding_mode)
                         for o in range(out_h))
        src_cols = tuple(source_coordinate(o * stride_w - pad_w, in_w, spec.padding_mode)
                         for o in range(out_w))
        # tile = pixel; lanes past the last pixel read pixel 0 and are never stored
        in_offsets = tuple(tuple(t if t < count else 0
                                 for t in range(b * block, (b + 1) * block))
                           for b in range(blocks))
    elif spec.padding_mode == "zeros":  # gathered from the input, masked at the borders
        staged_in = (0, 0)
        src_rows = src_cols = ()
        in_offsets, row_masks, col_masks = [], [], []
        for b in range(blocks):
            offsets, block_rows, block_cols = [], [], []
            for v in range(vectors):
                row_bits, col_bits = [0] * a_h, [0] * a_w
                for lane in range(lanes):
                    t = b * block + v * lanes + lane
                    if t >= count:
                        offsets.append(0)
                        continue
                    r0, c0 = tile_origin(t, grid[1], (m_h, m_w), (dil_h, dil_w))
                    r0, c0 = r0 - pad_h, c0 - pad_w
                    offsets.append(r0 * in_w + c0)
                    for i in range(a_h):
                        row_bits[i] |= (0 <= r0 + i * dil_h < in_h) << lane
                    for j in range(a_w):
                        col_bits[j] |= (0 <= c0 + j * dil_w < in_w) << lane
                block_rows.append(tuple(row_bits))
                block_cols.append(tuple(col_bits))
            in_offsets.append(tuple(offsets))
            row_masks.append(tuple(block_rows))
            col_masks.append(tuple(block_cols))
        in_offsets = tuple(in_offsets)
    else:  # reflect, replicate, circular: a staged, padded copy of each input channel
        rows, cols = grid[0] * m_h + k_h - 1, grid[1] * m_w + k_w - 1
        staged_in = (rows, cols)
        src_rows = tuple(source_coordinate(i - pad_h, in_h, spec.padding_mode) for i in range(rows))
        src_cols = tuple(source_coordinate(j - pad_w, in_w, spec.padding_mode) for j in range(cols))
        in_offsets = tuple(tuple((t // grid[1]) * m_h * cols + (t % grid[1]) * m_w
                                 if t < count else 0
                                 for t in range(b * block, (b + 1) * block))
                           for b in range(blocks))
    prefetch = []
    if row_masks is not None and blocks * MAX_PREFETCH <= MAX_PREFETCH_TABLE:
        line = 64 // dtype_info(spec.dtype).itemsize
        for b in range(blocks):
            nxt = b + 1 if b + 1 < blocks else b
            spots = set()
            for t, off in enumerate(in_offsets[nxt]):
                if nxt * block + t >= count:
                    continue
                for i in range(a_h):  # dilated: every column (its lanes are lines apart)
                    for j in (range(a_w) if dil_w > 1 else (0, a_w - 1)):
                        spot = off + i * dil_h * in_w + j * dil_w
                        if 0 <= spot < in_h * in_w:
                            spots.add(spot // line * line)
            prefetch.append(tuple(sorted(spots))[:MAX_PREFETCH])
        width = max(len(p) for p in prefetch) or 1
        prefetch = [p + (p[-1] if p else 0,) * (width - len(p)) for p in prefetch]
    per_tile = (spec.out_channels // spec.groups) * m_h * m_w * dtype_info(spec.dtype).itemsize
    chunk_blocks = max(1, CHUNK_BYTES // (per_tile * block))
    chunks, end = [], 0
    while end < blocks:
        end = min(blocks, end + chunk_blocks)
        chunks.append((end, grid[0] if end == blocks else (end * block) // grid[1]))
    if method != "winograd":
        chunks = [(blocks, grid[0])]
    cout_g = spec.out_channels // spec.groups
    return WinogradPlan(
        method=method, cout_g=cout_g, tile=(m_h, m_w), alpha=(a_h, a_w), grid=grid,
        co_rows=co_rows, vectors=vectors, lanes=lanes, blocks=blocks, in_offsets=in_offsets,
        staged_in=staged_in, src_rows=src_rows, src_cols=src_cols,
        stage_out=method != "gemm", matrices_h=winograd_matrices(m_h, k_h),
        matrices_w=winograd_matrices(m_w, k_w), flip=spec.flip,
        row_masks=tuple(row_masks) if row_masks is not None else None,
        col_masks=tuple(col_masks) if col_masks is not None else None,
        chunks=tuple(chunks), prefetch=tuple(prefetch), dilation=(dil_h, dil_w),
        co_part=split_output_channels(cout_g, co_rows, chunk_sizes(chunks), threads))


def transform_weights(plan, weight):
    """Winograd's U for ``plan`` (method "winograd") in the plan's dtype (flip applied),
    packed for the GEMM: per group and product, the register tiles of ``co_rows`` output
    channels (the remainder last) each as (C_in per group, rows). Networks store this
    instead of the weight (transformed once, at load); a kernel that transforms the weight
    in each call keeps U unpacked, (C_out per group, C_in per group)."""
    import numpy as np

    wp: WinogradPlan = plan.kind
    spec = plan.spec
    k_h, k_w = plan.kernel[1], plan.kernel[2]
    g = np.asarray(weight, dtype=np.float64).reshape(
        plan.groups, plan.cout_g, plan.cin_g, k_h, k_w)
    if spec.flip:
        g = g[..., ::-1, ::-1]
    g_h = np.array(wp.matrices_h[1], dtype=np.float64)  # alpha_h x k_h
    g_w = np.array(wp.matrices_w[1], dtype=np.float64)
    u = np.tensordot(g, g_w, axes=([4], [1]))  # g, o, c, i, b
    u = np.tensordot(u, g_h, axes=([3], [1]))  # g, o, c, b, a
    u = u.transpose(0, 4, 3, 1, 2)  # g, a, b, o, c
    u = u.reshape(plan.groups, wp.products, plan.cout_g, plan.cin_g)
    # packed: each register tile of R output channels as (C_in per group, R), read by the
    # GEMM as one stream; a tile starting at channel c0 still starts at c0 * C_in
    rows = min(wp.co_rows, plan.cout_g)
    tiles = [(c0, min(rows, plan.cout_g - c0)) for c0 in range(0, plan.cout_g, rows)]
    packed = np.concatenate([u[:, :, c0:c0 + r, :].transpose(0, 1, 3, 2).reshape(
        plan.groups, wp.products, -1) for c0, r in tiles], axis=2)
    return np.ascontiguousarray(packed.reshape(u.shape), dtype=spec.dtype)


def describe_winograd_plan(plan, gathers_by_table: bool = False) -> list[str]:
    """describe_plan for method "winograd" / "gemm"; ``gathers_by_table``: the backend
    reads a staged or padded input through the lane tables of :func:`lane_input_offsets`
    (one masked gather per patch element) rather than staging it."""
    wp: WinogradPlan = plan.kind
    spec = plan.spec
    dims = f"{wp.tile[0]}x{wp.tile[1]}" if spec.ndim == 2 else f"{wp.tile[1]}"
    taps = "x".join(map(str, spec.kernel_size))
    direct = math.prod(wp.tile) * math.prod(spec.kernel_size)
    lines = []
    if wp.method == "gemm":
        lines.append("1x1 convolution as a GEMM (method='gemm'): output pixels x input "
                     "channels x output channels, vectors over output pixels")
        if wp.staged_in == (0, 0):
            lines.append("input read in place")
        elif gathers_by_table:
            lines.append("input gathered through a table of the pixels the output reads "
                         "(stride/padding applied in the table)")
        else:
            lines.append(f"input staged per channel as the {wp.staged_in[0]}x"
                         f"{wp.staged_in[1]} pixels the output reads (stride/padding "
                         "applied once)")
    else:
        lines.append(f"Winograd F({dims}, {taps}) (method='winograd'): {wp.products} "
                     f"multiplications per tile of {math.prod(wp.tile)} outputs where direct "
                     f"convolution does {direct} ({direct / wp.products:.2f}x fewer)")
        if wp.dilation != (1, 1):
            lines.append(f"dilation {'x'.join(map(str, spec.dilation))}: tiles made per "
                         "dilation phase, their outputs and patch elements taps apart")
        if gathers_by_table:
            lines.append(f"each tile's {wp.alpha[0]}x{wp.alpha[1]} input patch gathered "
                         "through a table of element offsets (padding and dilation applied "
                         "in the table, -1 read as zero), one masked gather per patch "
                         "element; outputs scattered to the output with the epilogue")
        else:
            source = ("gathered from the input itself, masked to zero outside it"
                      if wp.row_masks is not None else
                      f"gathered from a staged copy of each input channel, "
                      f"{wp.staged_in[0]}x{wp.staged_in[1]}, padded by {spec.padding_mode}")
            lines.append(f"each tile's {wp.alpha[0]}x{wp.alpha[1]} input patch {source}, one "
                         "vector gather per patch element; outputs stored tile-major in "
                         "whole vectors, then copied out row by row with the epilogue")
        lines.append(f"weights transformed in each call: U = G g G^T, {wp.products} x "
                     f"{plan.cin_g} x {plan.cout_g} per group")
    lines.append(f"tiles: {wp.grid[0]}x{wp.grid[1]} = {wp.tiles}, in {wp.blocks} block(s) of "
                 f"{wp.vectors} vector(s) x {wp.lanes} lanes; jobs: batch {plan.batch} x "
                 f"groups {plan.groups} = {plan.jobs}, blocks split over {plan.threads} "
                 "thread(s)" + (f", each block's output channels in {wp.co_parts} parts of "
                                f"{wp.co_part} (a thread transforms the block's input for "
                                "each part it takes)" if wp.co_parts > 1 else ""))
    lines.append(f"GEMM register tile: {wp.co_rows} output channels x {wp.vectors} vector(s) "
                 f"of tiles = {wp.co_rows * wp.vectors} accumulators; per input channel "
                 f"{wp.vectors} vector load(s) and {wp.co_rows} broadcast weights")
    return lines


def _scaled(table: list[int], scale: int) -> list[int]:
    """``table``'s pixel offsets as element offsets ``scale`` apart, -1 kept."""
    return table if scale == 1 else [o * scale if o >= 0 else o for o in table]


def lane_input_offsets(plan) -> list[int] | None:
    """Per block, tile vector, patch element and lane: the input element read (an offset
    from one input channel's first element: the pixel, times VL when the input is
    blocked), -1 for a zero; None when a GEMM reads its input in place. Kernels that
    gather every patch element through one table read these (the LLVM backend)."""
    wp: WinogradPlan = plan.kind
    spec = plan.spec
    in_h, in_w = plan.in_size[1:]
    out_w = plan.out_size[2]
    pad_h = spec.padding[0][0] if spec.ndim == 2 else 0
    pad_w = spec.padding[-1][0]
    mode = spec.padding_mode
    count, block = wp.tiles, wp.block_tiles
    table = []
    if wp.method == "gemm":
        if wp.staged_in == (0, 0):
            return None
        s_h, s_w = (1, *spec.stride)[-2:]
        for t in range(wp.blocks * block):
            if t >= count:
                table.append(-1)
                continue
            r = source_coordinate(t // out_w * s_h - pad_h, in_h, mode)
            c = source_coordinate(t % out_w * s_w - pad_w, in_w, mode)
            table.append(r * in_w + c if r >= 0 and c >= 0 else -1)
        return table
    (a_h, a_w), (d_h, d_w) = wp.alpha, wp.dilation
    for blk in range(wp.blocks):
        for v in range(wp.vectors):
            for i in range(a_h):
                for j in range(a_w):
                    for lane in range(wp.lanes):
                        t = blk * block + v * wp.lanes + lane
                        if t >= count:
                            table.append(-1)
                            continue
                        r0, c0 = tile_origin(t, wp.grid[1], wp.tile, wp.dilation)
                        r = source_coordinate(r0 - pad_h + i * d_h, in_h, mode)
                        c = source_coordinate(c0 - pad_w + j * d_w, in_w, mode)
                        table.append(r * in_w + c if r >= 0 and c >= 0 else -1)
    return _scaled(table, plan.vector_lanes if plan.in_blocked else 1)


def lane_output_offsets(plan) -> list[int]:
    """Per block, tile vector, tile output and lane (Winograd): the output element written
    (an offset from one output channel's first element: the pixel, times VL when the
    output is blocked), -1 past the output or the last tile."""
    wp: WinogradPlan = plan.kind
    out_h, out_w = plan.out_size[1:]
    (m_h, m_w), (d_h, d_w) = wp.tile, wp.dilation
    table = []
    for blk in range(wp.blocks):
        for v in range(wp.vectors):
            for a in range(m_h):
                for bb in range(m_w):
                    for lane in range(wp.lanes):
                        t = blk * wp.block_tiles + v * wp.lanes + lane
                        if t >= wp.tiles:
                            table.append(-1)
                            continue
                        r0, c0 = tile_origin(t, wp.grid[1], wp.tile, wp.dilation)
                        oh, ow = r0 + a * d_h, c0 + bb * d_w
                        table.append(oh * out_w + ow if oh < out_h and ow < out_w else -1)
    return _scaled(table, plan.vector_lanes if plan.out_blocked else 1)
