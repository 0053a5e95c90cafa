"""Render: a Plan becomes C source through one Jinja2 environment.

Templates hold no arithmetic; the renderer passes a flat context of the plan's
constants plus a few filters. The kernel's prototype is produced here once and
used twice: inside the generated source (so the C compiler checks the
definition against it) and as the cffi ``cdef`` (so the call matches).
"""

from __future__ import annotations

import functools
import json

import jinja2

from convgen.cpu import cpu_flags
from convgen.dtypes import dtype_for_c_type, dtype_info
from convgen.plan.core import Plan, transpose_shuffles, vector_tables
from convgen.plan.co import CoTiles
from convgen.plan.depthwise import DepthwiseKind, depthwise_folds
from convgen.plan.direct import DirectKind
from convgen.plan.staged import StagedDepthwiseKind, stage_elements, tile_steps
from convgen.plan.winograd import WinogradPlan, transform_lines
from convgen.version import __version__
from convgen.backends.common import parameters, prototype
from convgen.config import templates_dir


def c_float(value: float) -> str:
    """A finite float as a C double literal that round-trips."""
    text = repr(float(value))
    if text in ("inf", "-inf", "nan"):
        raise ValueError(f"non-finite constant {text} cannot be rendered")
    return text


def c_number(value: float) -> str:
    """A float as a C expression, infinities included (math.h's INFINITY)."""
    value = float(value)
    if value == float("inf"):
        return "INFINITY"
    if value == float("-inf"):
        return "(-INFINITY)"
    return c_float(value)


def c_integer(value: int) -> str:
    """An integer (int64 or uint64 range) as a C constant expression; cast it to the type
    that uses it. INT64_MIN has no literal (its magnitude is no long long), so it is an
    expression."""
    value = int(value)
    if value == -2**63:
        return "(-9223372036854775807LL - 1)"
    if not -2**63 < value < 2**64:
        raise ValueError(f"integer constant {value} does not fit 64 bits")
    return f"({value}LL)" if value < 0 else f"{value}ULL"


def c_table(rows: list[list[int]]) -> str:
    """A 2D int table as a C initializer, one row per line."""
    inner = ",\n    ".join("{" + ", ".join(str(int(v)) for v in row) + "}" for row in rows)
    return "{\n    " + inner + "\n}"


def c_list(values: list[int]) -> str:
    """A 1D int table as a C initializer."""
    return "{" + ", ".join(str(int(v)) for v in values) + "}"


def c_table3(blocks: list[list[list[int]]]) -> str:
    """A 3D int table as a C initializer, one innermost row per line."""
    def row(values: list[int]) -> str:
        return "{" + ", ".join(str(int(v)) for v in values) + "}"

    inner = ",\n    ".join("{" + ", ".join(row(r) for r in block) + "}" for block in blocks)
    return "{\n    " + inner + "\n}"


@functools.lru_cache(maxsize=None)
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["c_float"] = c_float
    env.filters["c_number"] = c_number
    env.filters["c_integer"] = c_integer
    env.filters["c_table"] = c_table
    env.filters["c_list"] = c_list
    env.filters["c_table3"] = c_table3
    return env


def _shared_context(plan: Plan, symbol: str, params: str, residual: bool) -> dict:
    """The fields both plans' templates read: names, shapes, types, the spec as a comment,
    threads and the epilogue."""
    spec = plan.spec
    return {
        "title": "Transposed convolution" if spec.transposed else "Convolution",
        "spec_text": json.dumps(spec.to_dict(), sort_keys=True),
        "schedule_text": json.dumps(plan.schedule.to_dict(), sort_keys=True),
        "params": params,
        "symbol": symbol,
        "c_type": plan.c_type,
        "batch": plan.batch,
        "groups": plan.groups,
        "cin_g": plan.cin_g,
        "cout_g": plan.cout_g,
        "in_size": plan.in_size,
        "out_size": plan.out_size,
        "kernel": plan.kernel,
        "tile_co": plan.tile_co,
        "lanes": plan.vector_lanes,
        "vector_bytes": plan.vector_lanes * dtype_info(plan.spec.dtype).itemsize,
        "weight_strides": plan.weight_strides,
        "threads": plan.threads,
        "omp_schedule": plan.omp_schedule,
        "bias": spec.bias,
        "residual": residual,
        "activation": spec.activation,
        "activation_args": spec.activation_args,
        "math_fn": math_function(plan.c_type),
        "in_blocked": plan.in_blocked,
        "out_blocked": plan.out_blocked,
    }


def conv_context(plan: Plan, symbol: str | None = None, residual: bool = False) -> dict:
    """The flat template context of one convolution (templates/c/conv_function.j2, or
    conv_co_function.j2 for vectorize="co", conv_wino_function.j2 for the transform-GEMM
    methods)."""
    params = parameters(plan, "restrict")
    if residual:
        params = params.replace(f"{plan.c_type} *restrict y",
                                f"const {plan.c_type} *restrict r, {plan.c_type} *restrict y")
    kind = plan.kind
    if isinstance(kind, WinogradPlan):
        return wino_context(plan, symbol or plan.symbol, params, residual)
    if isinstance(kind, CoTiles):
        return co_context(plan, symbol or plan.symbol, params, residual)
    if isinstance(kind, DepthwiseKind):
        return dw_context(plan, symbol or plan.symbol, params, residual)
    if isinstance(kind, StagedDepthwiseKind):
        return dws_context(plan, symbol or plan.symbol, params, residual)
    assert isinstance(kind, DirectKind), kind
    vectors = vector_tables(plan)
    return {
        **_shared_context(plan, symbol or plan.symbol, params, residual),
        "vectorize": "w",
        "channels_inner": kind.channels_inner,
        "n_vectors": vectors.n_vectors,
        "row_length": vectors.row_length,
        "d_fold": vectors.d_fold,
        "h_fold": vectors.h_fold,
        "run_first": [run.first for run in vectors.runs],
        "run_in": [run.in_shift for run in vectors.runs],
        "run_out": [run.out_shift for run in vectors.runs],
        "positions": vectors.positions,
        "lane_steps": [lane * vectors.positions.lane_step if vectors.positions else 0
                       for lane in range(plan.vector_lanes)],
        "w_table": vectors.w_table,
        "modes": vectors.modes,
        "bases": vectors.bases,
        "avx512": avx512_suffix(plan),
        "index_bits": 512 if plan.vector_lanes == 16 else 256,
        "even_index": even_lanes_index(plan.vector_lanes),
        "lane_masks": vectors.lane_masks,
        "out_columns": vectors.out_columns,
        "tile": plan.tile,
        "n_tiles": plan.n_tiles,
    }


def co_context(plan: Plan, symbol: str, params: str, residual: bool) -> dict:
    """The flat context of a vectorize="co" kernel (templates/c/conv_co_function.j2);
    with ``plan.prepared_weights`` the weight argument holds the channel blocks packed at
    load (convgen.plan.weights.pack_co_weights)."""
    co = plan.kind
    assert co is not None
    lanes = plan.vector_lanes

    def blocks(size: int) -> list[dict]:
        """VL x VL blocks of the register tile (channels x columns) to transpose; columns
        past ``size`` are zero vectors."""
        return [{"channel": v * lanes, "column": c0,
                 "rows": [(f"r{i}", f"a{c0 + i}_{v}" if c0 + i < size else "(V){0}")
                          for i in range(lanes)]}
                for v in range(co.co_vectors) for c0 in range(0, size, lanes)]

    def span(c) -> int:
        """Input columns a piece of class ``c`` reads, from its base."""
        return 1 + max((off for t in c.taps for _, off in t.pixels), default=0)

    base_pixels = co.base_pixels
    classes = [{"size": c.size,
                "share_inputs": co.share_inputs[i],
                # blocked input: a base pointer per base_pixels columns (plan.co)
                "bases": range((span(c) - 1) // base_pixels + 1),
                "span": span(c),
                "blocks": blocks(c.size),
                "accumulators": [[f"a{p}_{v}" for v in range(co.co_vectors)]
                                 for p in range(c.size)],
                "taps": [{"kw": t.kw,
                          "weights": [(f"w{v}", off) for v, off in enumerate(t.weight_offsets)],
                          "pixels": [{"offset": off, "base": off // base_pixels,
                                      "local": off % base_pixels - base_pixels // 2,
                                      "fma": [(f"a{p}_{v}", f"w{v}")
                                              for v in range(co.co_vectors)]}
                                     for p, off in t.pixels]}
                         for t in c.taps]}
               for i, c in enumerate(co.classes)]
    return {
        **_shared_context(plan, symbol, params, residual),
        "vectorize": "co",
        "tile": plan.tile,
        "co_vectors": co.co_vectors,
        "index_type": dtype_info(plan.spec.dtype).c_index_type,
        "transpose_rows": [f"r{i}" for i in range(plan.vector_lanes)],
        "transpose_stages": transpose_stages(plan.vector_lanes),
        "max_pixels": co.max_pixels,
        "tile_columns": -(-co.max_pixels // plan.vector_lanes) * plan.vector_lanes,
        "n_tiles": plan.n_tiles,
        "pieces": len(co.pieces),
        "runs": len(co.runs),
        "run_first": [run.first for run in co.runs],
        "run_ow0": [run.ow0 for run in co.runs],
        "run_ow0_step": [run.ow0_step for run in co.runs],
        "run_base": [run.base for run in co.runs],
        "run_base_step": [run.base_step for run in co.runs],
        "run_size": [run.size for run in co.runs],
        "run_class": [run.cls for run in co.runs],
        "classes": classes,
        "pack_elements": co.pack_elements,
        "pack_segments": co.pack_segments,
        "pack_run": co.pack_run,
        "pack_segment_stride": co.pack_segment_stride,
        "column_step": co.step,
        "co_base_pixels": base_pixels,
        "block_outer": co.block_outer,
        "prefetch_channels": co.prefetch_channels,
        "next_block_lines": co.next_block_lines,
        "prepacked": plan.prepared_weights,
        "rows_outer": co.rows_outer,
        **row_tap_lists(co),
        "fold_d": co.folds[0],
        "fold_h": co.folds[1],
    }


def dw_context(plan: Plan, symbol: str, params: str, residual: bool) -> dict:
    """The flat context of the blocked depthwise plan (templates/c/conv_dw_function.j2)."""
    pieces = plan.kind.pieces
    d_fold, h_fold = depthwise_folds(plan)
    # C has no empty arrays: a row without border pieces still declares one
    no_border = [[[-1] * plan.kernel[2]] * plan.tile[2]]
    # a linear piece's input columns (from its first), each loaded once: pixel p at tap kw
    # reads run_columns[run_reads[kw][p]]
    reads = [[pieces.run_cols[kw] + p * plan.spec.stride[-1] for p in range(plan.tile[2])]
             for kw in range(plan.kernel[2])]
    columns = sorted({c for row in reads for c in row})
    return {
        **_shared_context(plan, symbol, params, residual),
        "vectorize": "dw",
        "blocks": plan.groups // plan.vector_lanes,
        "pixels": plan.tile[2],
        "pieces": pieces.count,
        "stride_w": plan.spec.stride[-1],
        "dilation": (1,) * (3 - plan.spec.ndim) + tuple(plan.spec.dilation),
        "run_begin": pieces.run_begin,
        "run_end": pieces.run_end,
        "run_step": pieces.run_step,
        "run_cols": list(pieces.run_cols),
        "run_columns": columns,
        "run_reads": [[columns.index(c) for c in row] for row in reads],
        "border_cols": [list(map(list, cols)) for cols in pieces.border_cols] or no_border,
        "d_fold": d_fold,
        "h_fold": h_fold,
    }


def dws_context(plan: Plan, symbol: str, params: str, residual: bool) -> dict:
    """The flat context of the staged depthwise plan (templates/c/conv_dws_function.j2):
    the register tile's code for a D tap as straight-line reads and FMAs
    (convgen.plan.staged.tile_steps)."""
    kind = plan.kind
    lanes = plan.vector_lanes
    row_elements = kind.phases * kind.row_length

    def read(offset: int) -> dict:
        """A vector at ``offset`` of the tile's staged rows (a whole number of vectors
        from an aligned address): from the aligned vectors around it, shifted by
        ``lane`` lanes (a load that splits cache lines costs about twice a whole one)."""
        base, lane = offset - offset % lanes, offset % lanes
        return {"base": base, "lane": lane,
                "mask": ", ".join(str(lane + i) for i in range(lanes))}

    def table(cols) -> list[list[int]]:  # C has no empty arrays
        return [list(row) or [-1] for row in cols]

    steps = [{"weights": weights,
              "reads": [read(row * row_elements + kind.tap_offsets[kw] + v * lanes) | {
                  "row": row, "kw": kw, "v": v,
                  "fmas": [(f"a{tr}_{v}", f"w{weight}") for tr, weight in users]}
                  for row, kw, users in reads for v in range(kind.vectors)]}
             for weights, reads in tile_steps(kind, plan.kernel)]
    return {
        **_shared_context(plan, symbol, params, residual),
        "vectorize": "dws",
        "rows": kind.rows,
        "vectors": kind.vectors,
        "band": kind.band,
        "bands": kind.bands,
        "pieces": kind.pieces,
        "phases": kind.phases,
        "row_length": kind.row_length,
        "stage_rows": kind.stage_rows,
        "stage_elements": stage_elements(plan),
        "pad_left": kind.pad_left,
        "left": kind.left,
        "interior": kind.interior,
        "right": kind.right,
        "left_cols": table(kind.left_cols),
        "right_cols": table(kind.right_cols),
        "padding_mode": plan.spec.padding_mode,
        "h_stride": kind.h_stride,
        "pad_top": kind.pad_top,
        "n_top": len(kind.top_rows),
        "n_bottom": len(kind.bottom_rows),
        "top_rows": list(kind.top_rows) or [-1],
        "bottom_rows": list(kind.bottom_rows) or [-1],
        "steps": steps,
        "accumulators": [f"a{tr}_{v}" for tr in range(kind.rows) for v in range(kind.vectors)],
        "store_rows": [{"tr": tr, "accumulators": [f"a{tr}_{v}" for v in range(kind.vectors)]}
                       for tr in range(kind.rows)],
        "d_fold": kind.d_fold,
        "avx512": avx512_suffix(plan),
        # stride 2: a row's even and odd columns from two vectors
        "even_lanes": ", ".join(str(2 * i) for i in range(lanes)),
        "odd_lanes": ", ".join(str(2 * i + 1) for i in range(lanes)),
    }


def wino_context(plan: Plan, symbol: str, params: str, residual: bool) -> dict:
    """The flat context of a method "winograd" / "gemm" kernel
    (templates/c/conv_wino_function.j2): the plan's tables and the transforms as
    straight-line statements (convgen.plan.winograd.transform_lines)."""
    wp = plan.kind
    spec = plan.spec
    (m_h, m_w), (a_h, a_w) = wp.tile, wp.alpha
    k_h, k_w = plan.kernel[1], plan.kernel[2]
    at_h, g_h, bt_h = wp.matrices_h
    at_w, g_w, bt_w = wp.matrices_w
    cols = wp.staged_in[1] if wp.staged_in != (0, 0) else plan.in_size[2]
    # a blocked input read in place (zero padding): pixels are VL elements apart
    scale = plan.vector_lanes if plan.in_blocked and wp.staged_in == (0, 0) else 1
    transpose_out = plan.out_blocked and wp.co_parts == 1

    def two_pass(first, second, src, mid, dst, rows_in, rows_out, cols_in, cols_out,
                 declare):
        """dst[a][b] = sum_j second[b][j] * (sum_i first[a][i] * src[i][j])."""
        out = []
        for j in range(cols_in):
            out += transform_lines(first, [f"{src}{i}_{j}" for i in range(rows_in)],
                                   [f"{mid}{a}_{j}" for a in range(rows_out)], declare)
        for a in range(rows_out):
            out += transform_lines(second, [f"{mid}{a}_{j}" for j in range(cols_in)],
                                   [f"{dst}{a}_{b}" for b in range(cols_out)], declare)
        return out

    def weight_lines(declare):
        return two_pass(g_h, g_w, "g", "t", "u", k_h, a_h, k_w, a_w, declare)

    rows = min(wp.co_rows, plan.cout_g)
    classes = []
    for count in [rows] + ([plan.cout_g % rows] if plan.cout_g % rows else []):
        classes.append({
            "rows": count,
            "accumulators": [f"a{r}_{t}" for r in range(count) for t in range(wp.vectors)],
            "fma": [{"row": r, "terms": [(f"a{r}_{t}", f"x{t}") for t in range(wp.vectors)]}
                    for r in range(count)],
            "stores": [{"row": r, "column": t * wp.lanes, "acc": f"a{r}_{t}"}
                       for r in range(count) for t in range(wp.vectors)]})
    flip = spec.flip
    taps = [{"name": f"g{i}_{j}",
             "offset": ((k_h - 1 - i) * k_w + (k_w - 1 - j)) if flip else i * k_w + j}
            for i in range(k_h) for j in range(k_w)]
    return {
        **_shared_context(plan, symbol, params, residual),
        "method": wp.method,
        "method_text": ("1x1 convolution as a GEMM" if wp.method == "gemm" else
                        f"Winograd F({m_h}x{m_w}, {k_h}x{k_w})"),
        "gemm": wp.method == "gemm",
        "pretransformed": plan.prepared_weights,
        "avx512": avx512_suffix(plan),
        "in_hw": plan.in_size[1:],
        "out_hw": plan.out_size[1:],
        "kernel_hw": plan.kernel[1:],
        "tile": wp.tile,
        "alpha": wp.alpha,
        "tiles": wp.tiles,
        "tile_vectors": wp.vectors,
        "block_tiles": wp.block_tiles,
        "blocks": wp.blocks,
        "co_part": wp.co_part,
        "prefetch_blocks": wp.prefetch_blocks,
        "co_parts": wp.co_parts,
        "block_schedule": wp.block_schedule,
        "staged_in": wp.staged_in,
        "stage_in": wp.staged_in != (0, 0),
        "stage_out": wp.stage_out,
        # staged row (column) -> input row (column): explicit borders, affine between
        # (a trailing 0 keeps the border table non-empty)
        "src_rows": {**vars(wp.src_rows), "edges": [*wp.src_rows.edges, 0]},
        "src_cols": {**vars(wp.src_cols), "edges": [*wp.src_cols.edges, 0]},
        "pad": wp.pad,
        "offset_scale": scale,
        "epilogue": bool(spec.bias or residual or spec.activation),
        "gemm_classes": classes,
        "weight_lanes": [lane * k_h * k_w for lane in range(wp.lanes)],
        "taps": taps,
        "weight_vector_lines": weight_lines("const V "),
        "weight_scalar_lines": weight_lines("const T "),
        "weight_stores": [{"name": f"u{a}_{b}", "xi": a * a_w + b}
                          for a in range(a_h) for b in range(a_w)],
        "dilation": wp.dilation,
        "patch": [{"name": f"d{i}_{j}",
                   "offset": ((i * cols) * wp.dilation[0] + j * wp.dilation[1]) * scale,
                   "i": i, "j": j}
                  for i in range(a_h) for j in range(a_w)],
        "chunk_size": wp.chunk_size,
        "masked": wp.masked,
        "prefetch_lines": wp.prefetch_lines,
        "input_lines": two_pass(bt_h, bt_w, "d", "e", "v", a_h, a_h, a_w, a_w, "const V "),
        "input_stores": [{"name": f"v{a}_{b}", "xi": a * a_w + b}
                         for a in range(a_h) for b in range(a_w)],
        "products": [{"name": f"m{i}_{j}", "xi": i * a_w + j}
                     for i in range(a_h) for j in range(a_w)],
        "output_lines": two_pass(at_h, at_w, "m", "f", "o", a_h, m_h, a_w, m_w, "const V "),
        "outputs": [{"name": f"o{a}_{b}", "index": a * m_w + b}
                    for a in range(m_h) for b in range(m_w)],
        "grid": wp.grid,
        # blocked output: the output transform transposes VL channels at a time into a
        # blocked staging (one job has whole blocks of channels: a single part)
        "transpose_out": transpose_out,
        "transpose_rows": [f"r{i}" for i in range(wp.lanes)],
        "transpose_stages": transpose_stages(wp.lanes) if transpose_out else [],
        "index_type": dtype_info(plan.spec.dtype).c_index_type,
    }


def row_tap_lists(co) -> dict:
    """The template's tap tables (vectorize="co", transposed), one per pair of explicit
    rows of the folded D and H tables (plan.co.CoRowTaps), padded to a width."""
    if co.row_taps is None:
        return {"tap_lists": False}
    lists = co.row_taps.lists
    width = max(1, max(len(r) for r in lists))
    return {"tap_lists": True, "row_taps": [len(r) for r in lists], "max_row_taps": width,
            "tap_x": [[x for x, _ in r] + [0] * (width - len(r)) for r in lists],
            "tap_w": [[w for _, w in r] + [0] * (width - len(r)) for r in lists]}


def transpose_stages(lanes: int) -> list[dict]:
    """plan.transpose_shuffles as template data: per stage, the shuffles of rows r<i>
    and r<j> into s<i> and s<j> (C initializers for the masks)."""
    def initializer(mask: list[int]) -> str:
        return "{" + ", ".join(map(str, mask)) + "}"

    return [{"block": block,
             "ops": [{"a": f"r{i}", "b": f"r{j}", "new_a": f"s{i}", "new_b": f"s{j}",
                      "mask_a": initializer(mask_a), "mask_b": initializer(mask_b)}
                     for i, j, mask_a, mask_b in ops]}
            for block, ops in transpose_shuffles(lanes)]


def avx512_suffix(plan: Plan) -> str:
    """"ps"/"pd" when the vectors are exactly one AVX-512 register on an AVX-512 host.

    Masked loads and gathers then use the AVX-512 intrinsics (the generated code
    is built for the host, -march=native); otherwise they are lane-by-lane C.
    """
    info = dtype_info(plan.spec.dtype)
    if plan.vector_lanes * info.itemsize == 64 and "avx512f" in cpu_flags():
        return info.simd_suffix
    return ""


def even_lanes_index(lanes: int) -> str:
    """The AVX-512 permute index that takes lanes 0, 2, 4, ... of two concatenated vectors."""
    if lanes == 16:
        return "_mm512_set_epi32(" + ", ".join(str(2 * l) for l in reversed(range(16))) + ")"
    return "_mm512_set_epi64(" + ", ".join(str(2 * l) for l in reversed(range(8))) + ")"


def math_function(c_type: str):
    """C math function names per type: exp -> expf for float."""
    suffix = dtype_for_c_type(c_type).c_math_suffix
    return lambda name: name + suffix


def render_c(plan: Plan) -> str:
    """The complete C source of the kernel described by ``plan``."""
    return environment().get_template("c/conv.c.j2").render(
        version=__version__, prototype=prototype(plan), k=conv_context(plan))
