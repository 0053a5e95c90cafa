"""The staged depthwise plan (vectorize="dw" on NCHW) as LLVM IR: lanes hold output
columns of one channel, and the input rows a job reads are first staged in scratch.

The C template's plan (templates/c/conv_dws_function.j2, planned by
convgen.plan.staged, whose docstring explains the algorithm) built with llvmlite.ir.
Each call (one chunk of jobs: the thread pool and GOMP_parallel give each thread its own
call) takes one scratch buffer with ``aligned_alloc`` of convgen.plan.staged.stage_elements
elements, zeroes it and frees it at the end: KD x SR staged rows, then a zero row.

A job is one band of output rows of one output plane. It finds the input rows the band
reads, [lo, hi], from the folded H table, and the input depth of each D tap from the
folded D table, then stages each of those rows: SW stride phases of RL columns, staged
column j of phase p holding input column j * SW + p - PADL for j in [LEFT, LEFT +
INTERIOR) (a copy, or for SW > 1 one wide load split into phases with shuffles per VL
columns, masked for the last ones), the columns before and after from the plan's column
tables (constants here; a padding column, -1, is never written: the scratch starts zeroed
and every staged row has the same padding columns). Then for each of the channel's M
output channels, each register tile of R rows x NV vectors of columns: the accumulators
start at the bias; per (kd, kh) the R row pointers (the staged row, or the zero row where
the H table says -1); per kw one broadcast weight and one unaligned vector load per
accumulator at the row pointer + TAP_OFF[kw] + v * VL (the tap's phase and shift folded
into a constant), into ``llvm.fma``. The epilogue adds the residual, applies the activation and stores the rows
inside the band; every piece but a row's last stores whole vectors, the last one its
vectors' columns below OW (masks known when the IR is built).

The register tile (R x NV allocas, promoted to registers) and the kw loop are unrolled
(up to MAX_UNROLLED_TAPS taps in a row, past that kw loops over a table of offsets).

Entry point, shared with the other plans and the C backend:
``i32 SYMBOL(T* x, T* w, T* b, [T* r,] T* y, i64 job_begin, i64 job_end)``.
"""

from __future__ import annotations

from llvmlite import ir

from convgen.backends.llvm.ir import I1, I8, I32, I64, IRFunction, i32, i64
from convgen.plan.base import Plan
from convgen.plan.staged import StagedDepthwiseKind, stage_elements

SCRATCH_ALIGN = 64  # bytes: the staged rows start on a cache line
# up to this many taps in a row unrolled (TAP_OFF constants); wider kernels loop over kw
MAX_UNROLLED_TAPS = 32
# up to this many table columns of a staged row copied by unrolled constant loads; more
# (replicate padding far wider than the row) loop over tables
MAX_UNROLLED_COLUMNS = 64


class StagedDwKernelIR(IRFunction):
    """Builds one staged depthwise (vectorize="dw" on NCHW) convolution function."""

    def __init__(self, plan: Plan, module: ir.Module, name: str | None = None,
                 residual: bool = False, internal: bool = False):
        assert isinstance(plan.kind, StagedDepthwiseKind), plan.kind
        assert not (plan.in_blocked or plan.out_blocked), plan.symbol
        assert not plan.prepared_weights, plan.symbol  # the plan reads the weights as given
        names = ("x", "w", "b", "r", "y") if residual else ("x", "w", "b", "y")
        super().__init__(module, name or plan.symbol, plan.c_type, plan.vector_lanes, names,
                         ("job_begin", "job_end"), internal)
        self.plan = plan
        self.kind: StagedDepthwiseKind = plan.kind
        self.residual = residual
        self.row_size = self.kind.phases * self.kind.row_length  # RS: one staged row

    # -- the kernel ------------------------------------------------------------------
    def build(self) -> ir.Function:
        p, k, b = self.plan, self.kind, self.b
        id_, ih_n, iw = p.in_size
        od_n, oh_n, ow_n = p.out_size
        kd_n, kh_n, _ = p.kernel
        rs = self.row_size
        if self.residual:
            x, w, bias, residual, y, job_begin, job_end = self.function.args
        else:
            (x, w, bias, y, job_begin, job_end), residual = self.function.args, None

        self.tab_d = self.constant_table("tab_d", sum(k.d_fold.rows, []), I32)
        self.tab_h = self.constant_table("tab_h", sum(k.h_fold.rows, []), I32)
        self.acc = [[self.alloca(self.vec, f"acc.{r}.{v}") for v in range(k.vectors)]
                    for r in range(k.rows)]
        lo_slot = self.alloca(I32, "lo.addr")
        hi_slot = self.alloca(I32, "hi.addr")

        elements = stage_elements(p)
        nbytes = -(-elements * self.itemsize // SCRATCH_ALIGN) * SCRATCH_ALIGN
        b.comment(f"scratch: {kd_n} x {k.stage_rows} staged rows of {k.phases} phase(s) x "
                  f"{k.row_length} columns, then a zero row ({nbytes} bytes, zeroed)")
        void_ptr = I8.as_pointer()
        aligned_alloc = self.intrinsic("aligned_alloc", void_ptr, [I64, I64])
        free = self.intrinsic("free", ir.VoidType(), [void_ptr])
        raw = b.call(aligned_alloc, [i64(SCRATCH_ALIGN), i64(nbytes)], name="scratch")
        with b.if_then(b.icmp_unsigned("==", raw, ir.Constant(void_ptr, None)), likely=False):
            b.ret(i32(1))
        memset = self.intrinsic("llvm.memset.p0.i64", ir.VoidType(), [void_ptr, I8, I64, I1])
        # zero: the padding columns no staging writes, and the zero row
        b.call(memset, [raw, ir.Constant(I8, 0), i64(nbytes), ir.Constant(I1, 0)])
        st = b.bitcast(raw, self.scalar.as_pointer(), name="st")
        zero_row = self.element(st, i64(kd_n * k.stage_rows * rs), "zero.row")

        b.comment(f"one job = a band of {k.band} output rows of one output plane: batch x "
                  f"{p.groups} channels x OD x {k.bands} band(s)")
        with self.loop(job_begin, job_end, "job") as job:
            index = self.split_index(job, [("band", k.bands), ("od", od_n)], "nc")
            nc = index["nc"]  # n * C + c
            c = b.urem(nc, i64(p.groups), name="c")
            oh0 = b.mul(index["band"], i64(k.band), name="oh0")
            end = b.add(oh0, i64(k.band))
            oh1 = b.select(b.icmp_signed("<", end, i64(oh_n)), end, i64(oh_n), name="oh1")
            lo, hi = self._band_rows(oh0, oh1, lo_slot, hi_slot)
            d_row, d_add = self.fold_row(k.d_fold, index["od"])
            d_first = b.mul(d_row, i64(kd_n), name="d.first")
            xc = self.element(x, b.mul(nc, i64(id_ * ih_n * iw)), "xc")

            b.comment("stage the input rows [lo, hi] of every D tap")
            with self.loop(0, kd_n, "kd.stage") as kd:
                in_d = self.table_load(self.tab_d, b.add(d_first, kd), "in.d")
                with b.if_then(b.icmp_signed(">=", in_d, i32(0))):
                    in_d = b.sext(b.add(in_d, d_add), I64)
                    plane_d = self.element(xc, b.mul(in_d, i64(ih_n * iw)), "x.d")
                    st_d = self.element(st, b.mul(kd, i64(k.stage_rows * rs)), "st.d")
                    with self.loop(b.sext(lo, I64), b.add(b.sext(hi, I64), i64(1)),
                                   "ih.stage") as ih:
                        xr = self.element(plane_d, b.mul(ih, i64(iw)), "xr")
                        row = self.element(st_d, b.mul(b.sub(ih, b.sext(lo, I64)), i64(rs)),
                                           "st.row")
                        self._stage_row(xr, row)

            out = {"nc": nc, "c": c, "od": index["od"], "oh1": oh1, "lo": lo,
                   "d_first": d_first, "st": st, "zero": zero_row, "w": w, "bias": bias,
                   "residual": residual, "y": y}
            tiles = b.udiv(b.add(b.sub(oh1, oh0), i64(k.rows - 1)), i64(k.rows), name="tiles")
            with self.loop(0, tiles, "tile") as tile:
                self._tile_rows(b.add(oh0, b.mul(tile, i64(k.rows)), name="oh"), out)
        b.call(free, [raw])
        b.ret(i32(0))
        return self.function

    # -- the band's input rows -------------------------------------------------------
    def _band_rows(self, oh0, oh1, lo_slot, hi_slot):
        """(lo, hi) i32: the lowest and highest input row the band's rows read through the
        H table (lo > hi: none, every tap of the band is padding)."""
        p, b = self.plan, self.b
        kh_n = p.kernel[1]
        b.store(i32(p.in_size[1]), lo_slot)
        b.store(i32(-1), hi_slot)
        with self.loop(oh0, oh1, "oh.rows") as oh:
            h_row, h_add = self.fold_row(self.kind.h_fold, oh)
            first = b.mul(h_row, i64(kh_n))

            def tap(kh):
                in_h = self.table_load(self.tab_h, b.add(first, kh), "in.h")
                valid = b.icmp_signed(">=", in_h, i32(0))
                ih = b.add(in_h, h_add)
                lo, hi = b.load(lo_slot), b.load(hi_slot)
                b.store(b.select(b.and_(valid, b.icmp_signed("<", ih, lo)), ih, lo), lo_slot)
                b.store(b.select(b.and_(valid, b.icmp_signed(">", ih, hi)), ih, hi), hi_slot)

            if kh_n <= MAX_UNROLLED_TAPS:
                for kh in range(kh_n):
                    tap(i64(kh))
            else:
                with self.loop(0, kh_n, "kh.rows") as kh:
                    tap(kh)
        return b.load(lo_slot, name="lo"), b.load(hi_slot, name="hi")

    # -- staging one row -------------------------------------------------------------
    def _stage_row(self, xr, st) -> None:
        """Input row ``xr`` into its staged form at ``st`` (SW phases of RL columns)."""
        k, b = self.kind, self.b
        sw, rl, lanes = k.phases, k.row_length, self.lanes
        left, end = k.left, k.left + k.interior
        # the table columns (padding -1 skipped: the zeros the scratch starts with)
        columns = [(ph * rl + j, col) for ph in range(sw)
                   for j, col in enumerate(k.left_cols[ph]) if col >= 0]
        columns += [(ph * rl + end + j, col) for ph in range(sw)
                    for j, col in enumerate(k.right_cols[ph]) if col >= 0]
        if len(columns) <= MAX_UNROLLED_COLUMNS:
            for to, col in columns:
                b.store(b.load(self.element(xr, i64(col))), self.element(st, i64(to)))
        else:
            to_table = self.constant_table("stage_to", [to for to, _ in columns], I32)
            from_table = self.constant_table("stage_from", [col for _, col in columns], I32)
            with self.loop(0, len(columns), "col") as i:
                to = b.sext(self.table_load(to_table, i, "to"), I64)
                col = b.sext(self.table_load(from_table, i, "from"), I64)
                b.store(b.load(self.element(xr, col)), self.element(st, to))
        if k.interior <= 0:
            return
        if sw == 1:  # one phase: the row's inside as it is
            memcpy = self.intrinsic("llvm.memcpy.p0.p0.i64", ir.VoidType(),
                                    [I8.as_pointer(), I8.as_pointer(), I64, I1])
            b.call(memcpy, [b.bitcast(self.element(st, i64(left)), I8.as_pointer()),
                            b.bitcast(self.element(xr, i64(left - k.pad_left)),
                                      I8.as_pointer()),
                            i64(k.interior * self.itemsize), ir.Constant(I1, 0)])
            return
        # SW > 1: VL staged columns of every phase from one load of SW x VL consecutive
        # input columns, split by shuffles (all inside the row: j < END for every phase)
        wide = ir.VectorType(self.scalar, sw * lanes)
        blocks = k.interior // lanes
        if blocks:
            with self.loop(0, blocks, "stage.block") as block:
                j = b.add(i64(left), b.mul(block, i64(lanes)), name="j")
                source = self.element(xr, b.sub(b.mul(j, i64(sw)), i64(k.pad_left)))
                loaded = b.load(b.bitcast(source, wide.as_pointer()), align=self.itemsize)
                for ph in range(sw):
                    picks = ir.Constant(ir.VectorType(I32, lanes),
                                        [ph + sw * lane for lane in range(lanes)])
                    phase = b.shuffle_vector(loaded, loaded, picks)
                    self.store_vec(phase, self.element(st, b.add(j, i64(ph * rl))))
        tail = left + blocks * lanes
        if tail < end:  # the last columns, fewer than VL: the same with constant masks
            count = end - tail
            wide_mask = ir.VectorType(I1, sw * lanes)
            load = self.intrinsic(f"llvm.masked.load.v{sw * lanes}{self.suffix}.p0", wide,
                                  [wide.as_pointer(), I32, wide_mask, wide])
            source = self.element(xr, i64(tail * sw - k.pad_left))
            loaded = b.call(load, [b.bitcast(source, wide.as_pointer()), i32(self.itemsize),
                                   ir.Constant(wide_mask, [int(lane < sw * count)
                                                           for lane in range(sw * lanes)]),
                                   ir.Constant(wide, ir.Undefined)])
            mask = ir.Constant(self.mask_type, [int(lane < count) for lane in range(lanes)])
            for ph in range(sw):
                # lanes past the count pick lane 0 (loaded, and never stored)
                picks = ir.Constant(ir.VectorType(I32, lanes),
                                    [ph + sw * lane if lane < count else 0
                                     for lane in range(lanes)])
                phase = b.shuffle_vector(loaded, loaded, picks)
                self.masked_store(phase, self.element(st, i64(ph * rl + tail)), mask)

    # -- one register tile row block -------------------------------------------------
    def _tile_rows(self, oh, out: dict) -> None:
        """Output rows [oh, oh + R) of the band (those past its end computed from its last
        row and not stored), every output channel of the job's input channel, every
        piece of columns."""
        p, k, b = self.plan, self.kind, self.b
        od_n, oh_n, ow_n = p.out_size
        kd_n, kh_n, kw_n = p.kernel
        taps = kd_n * kh_n * kw_n
        m_n = p.cout_g
        last = b.sub(out["oh1"], i64(1))
        h_rows = []
        for r in range(k.rows):
            o = b.add(oh, i64(r))
            o = b.select(b.icmp_signed("<", o, out["oh1"]), o, last)
            h_row, h_add = self.fold_row(k.h_fold, o)
            h_rows.append((b.mul(h_row, i64(kh_n)), b.sub(h_add, out["lo"])))
        with self.loop(0, m_n, "m") as m:
            co = b.add(b.mul(out["c"], i64(m_n)), m, name="co")
            wc = self.element(out["w"], b.mul(co, i64(taps)), "wc")
            if p.spec.bias:
                bv = self.splat(b.load(self.element(out["bias"], co)))
            else:
                bv = self.zero()
            plane = b.mul(b.add(b.mul(b.add(b.mul(out["nc"], i64(m_n)), m), i64(od_n)),
                                out["od"]), i64(oh_n * ow_n), name="plane")
            with self.loop(0, k.pieces, "piece") as piece:
                ow0 = b.mul(piece, i64(k.vectors * self.lanes), name="ow0")
                for row in self.acc:
                    for slot in row:
                        b.store(bv, slot)
                self._reduce(wc, h_rows, ow0, out)
                tile = {"plane": plane, "oh": oh, "oh1": out["oh1"], "ow0": ow0,
                        "residual": out["residual"], "y": out["y"]}
                if k.pieces == 1:
                    self._epilogue(tile, k.pieces - 1)
                else:
                    with b.if_else(b.icmp_signed("<", piece, i64(k.pieces - 1))) \
                            as (whole, final):
                        with whole:
                            self._epilogue(tile, None)
                        with final:
                            self._epilogue(tile, k.pieces - 1)

    def _reduce(self, wc, h_rows, ow0, out: dict) -> None:
        """Every tap of the tile into its accumulators."""
        p, k, b = self.plan, self.kind, self.b
        kd_n, kh_n, kw_n = p.kernel
        rs = self.row_size
        fma = self.vector_intrinsic("fma", 3)
        zero = self.element(out["zero"], ow0, "zero.p")
        with self.loop(0, kd_n, "kd") as kd:
            in_d = self.table_load(self.tab_d, b.add(out["d_first"], kd), "in.d")
            with b.if_then(b.icmp_signed(">=", in_d, i32(0))):
                sd = self.element(out["st"], b.add(b.mul(kd, i64(k.stage_rows * rs)), ow0),
                                  "sd")
                with self.loop(0, kh_n, "kh") as kh:
                    pointers = []
                    for r, (first, add) in enumerate(h_rows):
                        in_h = self.table_load(self.tab_h, b.add(first, kh), "in.h")
                        staged = self.element(sd, b.mul(b.sext(b.add(in_h, add), I64),
                                                        i64(rs)))
                        pointers.append(b.select(b.icmp_signed(">=", in_h, i32(0)), staged,
                                                 zero, name=f"rp.{r}"))
                    wt = self.element(wc, b.mul(b.add(b.mul(kd, i64(kh_n)), kh), i64(kw_n)),
                                      "wt")

                    def tap(kw, offset):
                        wv = self.splat(b.load(self.element(wt, kw), name="w"))
                        for rp, row in zip(pointers, self.acc):
                            for v, slot in enumerate(row):
                                at = b.add(offset, i64(v * self.lanes))
                                xv = self.load_vec(self.element(rp, at))
                                b.store(b.call(fma, [xv, wv, b.load(slot)]), slot)

                    if kw_n <= MAX_UNROLLED_TAPS:
                        for kw, offset in enumerate(k.tap_offsets):
                            tap(i64(kw), i64(offset))
                    else:  # a wide kernel: a loop, not thousands of copies
                        offsets = self.constant_table("tap_off", list(k.tap_offsets), I32)
                        with self.loop(0, kw_n, "kw") as kw:
                            tap(kw, b.sext(self.table_load(offsets, kw, "off"), I64))

    def _epilogue(self, tile: dict, final: int | None) -> None:
        """Residual, activation and the stores of the tile's rows inside the band: whole
        vectors (``final`` None), or piece ``final``, the row's last: each vector's
        columns below OW (a constant count: whole, masked, or none)."""
        p, k, b = self.plan, self.kind, self.b
        spec = p.spec
        ow_n = p.out_size[2]
        lanes = self.lanes
        residual, y = tile["residual"], tile["y"]
        b.comment(f"epilogue: {'residual, ' if residual is not None else ''}"
                  f"{spec.activation or 'no activation'}, store (bias is in the tile)")
        for r, row in enumerate(self.acc):
            def store_row(r=r, row=row):
                start = b.add(b.add(tile["plane"], b.mul(b.add(tile["oh"], i64(r)),
                                                         i64(ow_n))), tile["ow0"], name="at")
                for v, slot in enumerate(row):
                    count = lanes if final is None else \
                        min(lanes, ow_n - final * k.vectors * lanes - v * lanes)
                    if count <= 0:
                        break
                    at = b.add(start, i64(v * lanes))
                    value = b.load(slot)
                    if count == lanes:
                        if residual is not None:
                            value = b.fadd(value, self.load_vec(self.element(residual, at)))
                        value = self.activation(value, spec.activation, spec.activation_args)
                        self.store_vec(value, self.element(y, at))
                    else:
                        mask = ir.Constant(self.mask_type, [int(lane < count)
                                                            for lane in range(lanes)])
                        if residual is not None:
                            value = b.fadd(value, self.masked_load(self.element(residual, at),
                                                                   mask))
                        value = self.activation(value, spec.activation, spec.activation_args)
                        self.masked_store(value, self.element(y, at), mask)

            if r == 0:  # a tile starts inside the band
                store_row()
            else:
                with b.if_then(b.icmp_signed("<", b.add(tile["oh"], i64(r)), tile["oh1"])):
                    store_row()
