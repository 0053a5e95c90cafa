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

Both backends build these plans (templates/c/conv_wino_function.j2, convgen/backends/llvm/wino.py).
A kernel finds where each tile of a block reads and writes from the tile's index
(:func:`tile_origin`, computed per block), so the generated source holds no per-tile or
per-block table and does not grow with the output; the padding is two
:class:`SourceMap` (rows, columns): explicit borders around an affine interior.
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
class SourceMap:
    """``j -> source_coordinate(j * stride - shift, size, mode)`` for ``0 <= j < length``:
    the input row (column) read at row (column) j of a padded, strided copy of an input
    channel, -1 for a zero. Affine, ``j * stride - shift``, on the interior ``[a, b)``;
    only the borders are explicit (``edges``: the rows below a, then those from b), so
    the map does not grow with the input."""

    length: int
    a: int
    b: int
    stride: int
    shift: int
    edges: tuple[int, ...]

    def __call__(self, j: int) -> int:
        if j < self.a:
            return self.edges[j]
        if j < self.b:
            return j * self.stride - self.shift
        return self.edges[self.a + j - self.b]


def source_map(length: int, stride: int, shift: int, size: int, mode: str) -> SourceMap:
    """The :class:`SourceMap` of ``length`` rows of an input dim of ``size`` under
    padding ``mode``."""
    a = min(max(-(-shift // stride), 0), length)
    b = min(max((size - 1 + shift) // stride + 1, a), length)
    edges = tuple(source_coordinate(j * stride - shift, size, mode)
                  for j in (*range(a), *range(b, length)))
    return SourceMap(length, a, b, stride, shift, edges)


def patch_extent(grid: int, tile: int, dilation: int, alpha: int) -> int:
    """Rows (columns) of the padded input the tiles of a dim read: the last tile's
    origin (:func:`tile_origin`) and its patch, ``dilation`` apart."""
    last = grid - 1
    return last % dilation + dilation * (last // dilation) * tile + (alpha - 1) * dilation + 1


@dataclass(frozen=True)
class WinogradPlan(PlanKind):
    """The constants of a transform-GEMM kernel (2D; a 1D convolution has H = 1).

    Tiles of ``tile = (mh, mw)`` outputs are numbered row-major over a ``grid`` of
    (TH, TW) tiles; a block is ``vectors x lanes`` consecutive tiles, one lane each. A
    kernel computes where a tile's ``alpha`` patch starts from its index (tile_origin):
    in a staged input channel (``staged_in`` rows x cols, padded by ``src_rows`` /
    ``src_cols``), or in the input itself (``masked``: zero padding, the patch rows and
    columns outside it masked off; a GEMM reading it in place: the pixel). Outputs are
    stored tile-major (grid rows x cols of whole tiles plus one spare tile row for lanes
    past the last tile), or by a GEMM at the output pixel.
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
    staged_in: tuple[int, int]  # rows, cols of a staged input channel ((0, 0): read x)
    # padded row (column) -> input row (column), -1: zero: the rows of a staged input
    # channel; Winograd reading the input itself: tile origin + patch row (the LLVM gathers)
    src_rows: SourceMap
    src_cols: SourceMap
    stage_out: bool  # outputs stored tile-major, then copied out (else written in place)
    matrices_h: tuple[Matrix, Matrix, Matrix]
    matrices_w: tuple[Matrix, Matrix, Matrix]
    flip: bool
    # zero padding: the patches are gathered from the input itself, a lane's patch rows
    # (columns) outside the input masked off
    masked: bool = False
    pad: tuple[int, int] = (0, 0)  # the padding before the first row, column
    # blocks per chunk: the kernel copies the tile rows a chunk completes out after it,
    # while they are in cache (see CHUNK_BYTES)
    chunk_size: int = 1
    # masked plans: at most this many cache lines of the NEXT block's patches prefetched
    # per input channel while a block is transformed
    prefetch_lines: int = 0
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
    def chunks(self) -> tuple[tuple[int, int], ...]:
        """(block end, tile rows complete after it) per chunk."""
        ends = [min(self.blocks, end) for end in range(self.chunk_size,
                                                       self.blocks + self.chunk_size,
                                                       self.chunk_size)]
        return tuple((end, self.chunk_rows(end)) for end in ends)

    def chunk_rows(self, end: int) -> int:
        """Tile rows complete once the blocks before ``end`` are done."""
        return self.grid[0] if end >= self.blocks else end * self.block_tiles // self.grid[1]

    @property
    def chunk_blocks(self) -> list[int]:
        """Blocks per chunk."""
        full, last = divmod(self.blocks, self.chunk_size)
        return [self.chunk_size] * full + ([last] if last else [])

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
    mode = spec.padding_mode
    masked = method == "winograd" and mode == "zeros"
    if method == "gemm":  # tile = pixel: staged as the pixels the output reads
        src_rows = source_map(out_h, stride_h, pad_h, in_h, mode)
        src_cols = source_map(out_w, stride_w, pad_w, in_w, mode)
        in_place = stride_h == stride_w == 1 and pad_h == pad_w == 0
        staged_in = (0, 0) if in_place else (out_h, out_w)
    else:  # the padded input the patches read: staged (reflect, ...) or masked (zeros)
        assert masked or dil_h == dil_w == 1, "dilation needs zero padding"
        src_rows = source_map(patch_extent(grid[0], m_h, dil_h, a_h), 1, pad_h, in_h, mode)
        src_cols = source_map(patch_extent(grid[1], m_w, dil_w, a_w), 1, pad_w, in_w, mode)
        staged_in = (0, 0) if masked else (src_rows.length, src_cols.length)
    cout_g = spec.out_channels // spec.groups
    per_tile = cout_g * m_h * m_w * dtype_info(spec.dtype).itemsize
    chunk_size = max(1, CHUNK_BYTES // (per_tile * block)) if method == "winograd" else blocks
    chunk_size = min(chunk_size, blocks)
    # the distinct chunk sizes: every chunk but the last is whole
    sizes = sorted({chunk_size, blocks % chunk_size or chunk_size})
    return WinogradPlan(
        method=method, cout_g=cout_g, tile=(m_h, m_w), alpha=(a_h, a_w), grid=grid,
        co_rows=co_rows, vectors=vectors, lanes=lanes, blocks=blocks,
        staged_in=staged_in, src_rows=src_rows, src_cols=src_cols,
        stage_out=method != "gemm", matrices_h=winograd_matrices(m_h, k_h),
        matrices_w=winograd_matrices(m_w, k_w), flip=spec.flip, masked=masked,
        pad=(pad_h, pad_w), chunk_size=chunk_size,
        prefetch_lines=MAX_PREFETCH if masked else 0, dilation=(dil_h, dil_w),
        co_part=split_output_channels(cout_g, co_rows, sizes, threads))


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
    reads a staged or padded input through per-block lane tables of element offsets
    (one masked gather per patch element, -1 a zero) rather than staging it."""
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
            lines.append("input gathered through a table of the pixels the output reads, "
                         "computed per block (stride/padding applied in the table)")
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
                         "through a table of element offsets computed per block from the "
                         "tile index (padding and dilation applied in the table, -1 read as "
                         "zero), one masked gather per patch element; outputs scattered to "
                         "the output with the epilogue")
        else:
            source = ("gathered from the input itself, masked to zero outside it"
                      if wp.masked else
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
