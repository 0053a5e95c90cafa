"""The direct "w" plan's tables: VL output columns per vector.

How one vector reads its input columns at one tap (vector_tables) and the job order
(channels_inner); both backends' "w" kernels read these.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


from convgen.dtypes import dtype_info
from convgen.plan.base import Plan, PlanKind


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
        # phases past the row's width hold no column (a stride of 10**12 has 10**12 phases)
        order = [o for phase in range(min(stride_w, out_w)) for o in range(phase, out_w, stride_w)]
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


def describe_direct_plan(plan: Plan) -> list[str]:
    """describe_plan for vectorize="w" (and the blocked depthwise plan)."""
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
