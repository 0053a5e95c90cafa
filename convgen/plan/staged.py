"""The staged depthwise plan (vectorize="dw" on NCHW): lanes hold output columns of one
channel, and the rows a job reads are first copied into a padded scratch row per stride
phase.

Standalone depthwise kernels (``cg.compile`` / ``cg.bind`` on NCHW tensors, groups ==
input channels, any channel multiplier) run here; networks whose values around the layer
are blocked run the blocked depthwise plan instead (convgen.plan.depthwise).

Why stage: a depthwise layer does only KH x KW multiply-adds per output, so it is bound by
how it reads its input. On the "w" plan a strided layer gathers its columns and border
vectors take masked loads; here a job first copies each padded input row it needs once
into scratch (L1-sized), already padded (zeros, or the padding mode's columns) and split
into its W stride phases: staged column ``j`` of phase ``p`` holds padded column
``j * SW + p`` (input column ``j * SW + p - pad_left``). Output column ``ow`` at tap
``kw`` then reads staged column ``ow + shift[kw]`` of phase ``phase[kw]`` (one offset,
``tap_offsets``): every tap of every output vector is a run of consecutive columns, with
no border case, at any stride and dilation. Rows are staged by padded row too (the
padding rows from ``top_rows`` / ``bottom_rows``), so a register tile's rows are fixed
offsets from its first.

A job is one band of output rows (``band`` rows) of one output plane (image, input
channel, output depth): it stages the padded rows the band reads, then computes each of
the channel's multiplier output channels from them in register tiles of ``rows``
output rows x ``vectors`` vectors of columns, as the straight-line steps of
:func:`tile_steps`. The staging tables depend on the padding and the tile width, never
on the row's length beyond one register tile.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from convgen.cpu import vector_bits
from convgen.dtypes import dtype_info
from convgen.plan.base import FoldedTable, Plan, PlanKind
from convgen.spec import ConvSpec, source_coordinate

# A job's staged rows (every D tap's) are kept within this many bytes when the band can
# shrink to fit: the register tiles re-read each staged row about KH x KW / (SH x SW)
# times, from L1 when it fits (32 KiB here).
STAGE_BYTES = 24 << 10


@dataclass(frozen=True)
class StagedDepthwiseKind(PlanKind):
    """The staged depthwise plan kind (see the module docstring); every quantity is per
    job or per staged row, none grows with the output size past one register tile."""

    label = "dw"
    lanes_hold = "output columns of one channel"

    rows: int  # R: output rows per register tile
    vectors: int  # V: vectors of output columns per register tile
    band: int  # output rows per job
    bands: int  # jobs per output plane: ceil(OH / band)
    pieces: int  # register tiles per row: ceil(OW / (V * VL))
    phases: int  # SW: the staged row's stride phases
    row_length: int  # staged columns per phase, a multiple of VL
    stage_rows: int  # staged padded rows per D tap: a band's whole register tiles
    pad_left: int  # input column = padded column - pad_left
    tap_offsets: tuple[int, ...]  # per kw: phase * row_length + shift
    # staged columns [left, left + interior) of every phase read inside the input row;
    # the ``left`` before and ``right`` after them come from left_cols / right_cols
    # ([phase][j]: input column, -1: zero, the padding); the rest stays as a job's
    # scratch starts, zero (zero padding, or no output inside the row reads it)
    left: int
    interior: int
    right: int
    left_cols: tuple[tuple[int, ...], ...]
    right_cols: tuple[tuple[int, ...], ...]
    h_stride: int  # SH
    pad_top: int  # input row = padded row - pad_top
    row_taps: tuple[int, ...]  # per kh: the padded row it reads from the output row's first
    top_rows: tuple[int, ...]  # padded rows [0, pad_top): input row, -1: zero
    bottom_rows: tuple[int, ...]  # padded rows ih + q past the input: input row, -1: zero
    d_fold: FoldedTable

    def jobs(self, plan: Plan) -> int:
        """batch x input channels x output depth x bands."""
        return plan.batch * plan.groups * plan.out_size[0] * self.bands


def stage_elements(plan: Plan) -> int:
    """Scratch elements one job (one thread) stages: KD x stage_rows rows, each
    ``phases x row_length``."""
    kind = plan.kind
    assert isinstance(kind, StagedDepthwiseKind), kind
    return plan.kernel[0] * kind.stage_rows * kind.phases * kind.row_length


def staged_plan_kind(spec: ConvSpec, tables, out_size: tuple[int, int, int],
                     in_size: tuple[int, int, int], kernel: tuple[int, int, int],
                     rows: int, columns: int, lanes: int, threads: int) -> StagedDepthwiseKind:
    """The staged depthwise kind of ``spec`` with register tiles of ``rows`` output rows
    x ``columns`` output columns (rounded up to whole vectors of ``lanes``)."""
    od, oh, ow = out_size
    ih, iw = in_size[1:]
    kd, kh, kw = kernel
    vectors = -(-min(columns, ow) // lanes)
    rows = min(rows, oh)
    pieces = -(-ow // (vectors * lanes))
    stride, dilation = spec.stride[-1], spec.dilation[-1]
    pad_left = spec.padding[-1][0]
    # the padded column tap kw reads at output column 0, the flip applied as the W table does
    reach = [((kw - 1 - k) if spec.flip else k) * dilation for k in range(kw)]
    shifts = [r // stride for r in reach]
    row_length = -(-(pieces * vectors * lanes + max(shifts)) // lanes) * lanes

    def column(p: int, j: int) -> int:
        return source_coordinate(j * stride + p - pad_left, iw, spec.padding_mode)

    # staged columns every phase reads inside the input: [left, end)
    starts = [max(0, -(-(pad_left - p) // stride)) for p in range(stride)]
    ends = [min(-(-(iw + pad_left - p) // stride), row_length) for p in range(stride)]
    left = max(starts)
    end = max(min(ends), left)
    # the columns after `end` taken from right_cols: with zero padding those a phase still
    # reads inside the input; with another mode every one an output inside the row reads
    if spec.padding_mode == "zeros":
        right = max(0, max(ends) - end)
    else:
        right = max(0, min(ow + max(shifts), row_length) - end)
    left_cols = tuple(tuple(column(p, j) for j in range(left)) for p in range(stride))
    right_cols = tuple(tuple(column(p, j) for j in range(end, end + right))
                       for p in range(stride))
    tap_offsets = tuple((r % stride) * row_length + s for r, s in zip(reach, shifts))

    # rows: staged by padded row (output row oh, tap kh reads padded row
    # oh * SH + tap * DH, input row that - pad_top), so a tile's rows are fixed offsets
    # from its first; the padding rows come from top_rows / bottom_rows
    h_stride = spec.stride[-2] if spec.ndim >= 2 else 1
    h_dilation = spec.dilation[-2] if spec.ndim >= 2 else 1
    pad_top = spec.padding[-2][0] if spec.ndim >= 2 else 0
    row_taps = tuple(((kh - 1 - k) if spec.flip else k) * h_dilation for k in range(kh))
    # padded rows past the input that an output inside the plane reads
    bottom = max(0, (oh - 1) * h_stride + max(row_taps) - pad_top - ih + 1)
    top_rows = tuple(source_coordinate(q - pad_top, ih, spec.padding_mode)
                     for q in range(pad_top))
    bottom_rows = tuple(source_coordinate(ih + q, ih, spec.padding_mode)
                        for q in range(bottom))

    def band_rows(band: int) -> int:
        """Staged rows of a band: whole register tiles of it (the last one's rows past
        the band are computed, not stored)."""
        return (-(-band // rows) * rows - 1) * h_stride + max(row_taps) + 1

    # the band: whole planes when they fit STAGE_BYTES, else fewer rows (whole register
    # tiles); with fewer planes than threads x 4, smaller bands so that threads share
    itemsize = dtype_info(spec.dtype).itemsize
    row_bytes = stride * row_length * itemsize
    band = oh
    planes = spec.batch * spec.groups * od
    if threads > 1 and planes < 4 * threads:
        band = max(rows, -(-oh // -(-4 * threads // planes)))
    while band > rows and kd * band_rows(band) * row_bytes > STAGE_BYTES:
        band = max(rows, band // 2)
    band = max(rows, -(-band // rows) * rows) if band < oh else oh
    return StagedDepthwiseKind(
        rows=rows, vectors=vectors, band=band, bands=-(-oh // band), pieces=pieces,
        phases=stride, row_length=row_length, stage_rows=band_rows(band), pad_left=pad_left,
        tap_offsets=tap_offsets, left=left, interior=end - left, right=right,
        left_cols=left_cols, right_cols=right_cols, h_stride=h_stride, pad_top=pad_top,
        row_taps=row_taps, top_rows=top_rows, bottom_rows=bottom_rows,
        d_fold=FoldedTable.of(tables[0]))


def vector_registers() -> int:
    """The host's vector registers (AVX-512: 32, else 16): the weights of a step of
    tile_steps sit in registers beside the accumulators and 3 temporaries."""
    return 32 if vector_bits() == 512 else 16


def tile_steps(kind: StagedDepthwiseKind, kernel: tuple[int, int, int]) -> list[tuple]:
    """The register tile's code for one D tap, as steps (weight indices, reads): a step's
    weights (kh * KW + kw) are broadcast into registers, then each of its reads (staged
    row from the tile's first, tap kw, [(tile row, weight index), ...]) is loaded once and
    fed to every (tile row, kh) of the step that reads it. Tile row tr at tap kh reads
    staged row tr * SH + row_taps[kh]; rows are shared between taps kh whose row_taps
    differ by a multiple of SH, so a step takes such taps together, as many as fit the
    registers beside the accumulators (3x3 stride 1 over 4 rows: one step, 6 rows read
    for 12 row-taps). More weights than registers would spill them to the stack."""
    kh_n, kw_n = kernel[1:]
    fit = max(1, (vector_registers() - 3 - kind.rows * kind.vectors) // kw_n)
    classes: dict[int, list[int]] = {}
    for kh in range(kh_n):
        classes.setdefault(kind.row_taps[kh] % kind.h_stride, []).append(kh)
    steps = []
    for taps in classes.values():
        for first in range(0, len(taps), fit):
            group = taps[first:first + fit]
            users: dict[int, list[tuple[int, int]]] = {}
            for kh in group:
                for tr in range(kind.rows):
                    users.setdefault(tr * kind.h_stride + kind.row_taps[kh], []).append((tr, kh))
            steps.append(([kh * kw_n + kw for kh in group for kw in range(kw_n)],
                          [(row, kw, [(tr, kh * kw_n + kw) for tr, kh in pairs])
                           for row, pairs in sorted(users.items()) for kw in range(kw_n)]))
    return steps


def describe_staged_plan(plan: Plan) -> list[str]:
    """describe_plan for the staged depthwise plan."""
    kind = plan.kind
    assert isinstance(kind, StagedDepthwiseKind), kind
    itemsize = dtype_info(plan.spec.dtype).itemsize
    steps = tile_steps(kind, plan.kernel)
    return [
        f"depthwise convolution, lowered to 3 spatial dims (D, H, W) = {plan.out_size} "
        "outputs; vectorized over the output columns of one channel (vectorize='dw'), "
        "input rows staged",
        f"jobs: batch {plan.batch} x input channels {plan.groups} x output depth "
        f"{plan.out_size[0]} x bands of {kind.band} rows ({kind.bands}) = {plan.jobs}, on "
        f"{plan.threads} thread(s); each computes {plan.cout_g} output channel(s)",
        f"staging: each padded input row a band reads, copied once into {kind.phases} stride "
        f"phase(s) of {kind.row_length} columns, padded: "
        f"{stage_elements(plan) * itemsize} bytes per job",
        f"register tile: {kind.rows} output rows x {kind.vectors} vector(s) of "
        f"{plan.vector_lanes} {plan.c_type} lanes = {kind.rows * kind.vectors} vector "
        f"accumulators, {kind.pieces} tile(s) per row, in {len(steps)} step(s) of taps "
        "whose broadcast weights fit the registers; each staged vector loaded once for "
        "every (tile row, tap) of its step",
        f"reduction: {math.prod(plan.kernel)} taps (no channels: bandwidth-bound, judge it "
        "by bytes moved)",
    ]
