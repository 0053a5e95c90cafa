"""The staged depthwise plan (vectorize="dw" on NCHW) as LLVM IR: lanes hold output
columns of one channel, and the padded rows a job reads are first staged in scratch.

The C template's plan (templates/c/conv_dws_function.j2, planned by
convgen.plan.staged, whose docstring explains the algorithm) built with llvmlite.ir.
Each call (threads > 1 with the GNU OpenMP runtime: each thread of the call's one
GOMP_parallel region, taking chunks of the plan's ``schedule(dynamic, N)`` from
GOMP_loop_dynamic_*; a network calls it once too) takes one scratch buffer with
``aligned_alloc`` (64-byte aligned) of convgen.plan.staged.stage_elements elements,
KD x SR staged rows of RS = SW x RL elements, zeroes it and frees it at the end.

A job is one band [oh0, oh1) of output rows of one output plane. For each D tap whose
input depth (folded D table) is inside the input it stages the SR padded rows
q = oh0 * SH - PT + j, j < SR, into slot kd * SR + j: padded row q is input row q inside
the input, else the plan's top_rows / bottom_rows entry, and a row of -1 (padding, or a
row only the last register tile's rows past the band read) is a slot of zeros. Staging a
row writes SW stride phases of RL columns, staged column j of phase p holding input
column j * SW + p - PADL for j in [LEFT, LEFT + INTERIOR) (a copy, or for SW > 1 one
wide load split into phases with shuffles per VL columns, masked for the last ones), the
columns before and after from the plan's column tables (constants here; a padding
column, -1, is never written: the scratch starts zeroed, a zero slot is all zeros, and
every staged row writes the same columns).

Then for each of the channel's M output channels, each register tile of R rows x NV
vectors of columns starting at output row oh: the accumulators start at the bias, and
for each D tap the tile's code is convgen.plan.staged.tile_steps, straight-line: a
step's weights broadcast, then each read (staged row, kw) is, per vector v, one vector at
staged offset row * RS + TAP_OFF[kw] + v * VL from the tile's first staged element
(slot kd * SR + (oh - oh0) * SH, column ow0), fed by ``llvm.fma`` to every (tile row,
weight) the step lists for it. The tile's first element is a whole number of vectors
from the 64-byte aligned scratch (RS and ow0 are multiples of VL), so a read at an
offset that is not a multiple of VL is two aligned vector loads and a shufflevector, as
in C: a load across cache lines costs about twice a whole one. The epilogue adds the
residual, applies the activation and stores the rows inside the band; every piece but a
row's last stores whole vectors, the last one its vectors' columns below OW (masks known
when the IR is built).

Entry point, shared with the other plans and the C backend:
``i32 SYMBOL(T* x, T* w, T* b, [T* r,] T* y, i64 job_begin, i64 job_end)``.
"""

from __future__ import annotations

import math

from llvmlite import ir

from convgen.backends.llvm.build import uses_openmp
from convgen.backends.llvm.ir import I1, I8, I32, I64, IRFunction, i32, i64
from convgen.plan.base import Plan
from convgen.plan.staged import StagedDepthwiseKind, stage_elements, tile_steps

SCRATCH_ALIGN = 64  # bytes: the staged rows start on a cache line
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
        assert self.row_size % self.lanes == 0, self.row_size
        # what a load at a whole number of vectors from the scratch's start is aligned to
        self.vector_align = math.gcd(SCRATCH_ALIGN, self.lanes * self.itemsize)
        self.omp = uses_openmp(plan)
        # jobs a thread takes at a time: the plan's schedule(dynamic, N) (static: an even
        # share each)
        schedule = plan.omp_schedule
        self.chunk = int(schedule.split(",")[1]) if schedule.startswith("dynamic,") \
            else -(-plan.jobs // max(1, plan.threads))

    # -- the entry point ---------------------------------------------------------------
    def build(self) -> ir.Function:
        b = self.b
        if self.residual:
            x, w, bias, residual, y, job_begin, job_end = self.function.args
        else:
            (x, w, bias, y, job_begin, job_end), residual = self.function.args, None
        self.tab_d = self.constant_table("tab_d", sum(self.kind.d_fold.rows, []), I32)
        if not self.omp:
            status = self._kernel((x, w, bias, residual, y),
                                  lambda: self.loop(job_begin, job_end, "job"))
            b.ret(status)
            return self.function
        # the threads of one GOMP_parallel region take chunks of the jobs: no hand-off to
        # threads per call in Python (which costs more than a small layer)
        b.comment(f"{self.plan.threads} OpenMP threads take chunks of {self.chunk} job(s)")
        ptr = self.scalar.as_pointer()
        ctx_type = ir.LiteralStructType([ptr] * 5 + [I64, I64, I32])
        with self.outlined(f"{self.name}.worker") as worker:
            wb = self.b
            ctx = wb.bitcast(worker.args[0], ctx_type.as_pointer())
            field = [wb.load(wb.gep(ctx, [i32(0), i32(k)])) for k in range(7)]
            begin, end = field[5], field[6]
            status = self._kernel(
                (field[0], field[1], field[2], field[3] if self.residual else None, field[4]),
                lambda: self.dynamic_loop(begin, end, self.chunk))
            # a thread without scratch (it took no jobs) fails the call; the others leave
            # the status as it is
            with wb.if_then(wb.icmp_signed("!=", status, i32(0)), likely=False):
                wb.store_atomic(status, wb.gep(ctx, [i32(0), i32(7)]), "monotonic", 4)
            wb.ret_void()
        ctx = self.alloca(ctx_type, "ctx")
        null = ir.Constant(ptr, None)
        values = [x, w, bias, residual if residual is not None else null, y, job_begin,
                  job_end, i32(0)]
        for k, value in enumerate(values):
            b.store(value, b.gep(ctx, [i32(0), i32(k)]))
        void_ptr = I8.as_pointer()
        gomp = self.intrinsic("GOMP_parallel", ir.VoidType(), [worker.type, void_ptr, I32, I32])
        b.call(gomp, [worker, b.bitcast(ctx, void_ptr), i32(self.plan.threads), i32(0)])
        b.ret(b.load(b.gep(ctx, [i32(0), i32(7)])))
        return self.function

    # -- the kernel ------------------------------------------------------------------
    def _kernel(self, arrays, jobs):
        """The jobs ``jobs()`` yields (a context manager: the serial loop, or this
        thread's share of the dynamic one) on ``arrays`` (x, w, bias, residual or None,
        y) with one scratch; returns the i32 status (1: no scratch, no job run)."""
        p, k, b = self.plan, self.kind, self.b
        kd_n = p.kernel[0]
        self.acc = [[self.alloca(self.vec, f"acc.{r}.{v}") for v in range(k.vectors)]
                    for r in range(k.rows)]

        elements = stage_elements(p)
        nbytes = -(-elements * self.itemsize // SCRATCH_ALIGN) * SCRATCH_ALIGN
        b.comment(f"scratch: {kd_n} x {k.stage_rows} staged padded rows of {k.phases} "
                  f"phase(s) x {k.row_length} columns ({nbytes} bytes, zeroed)")
        void_ptr = I8.as_pointer()
        aligned_alloc = self.intrinsic("aligned_alloc", void_ptr, [I64, I64])
        raw = b.call(aligned_alloc, [i64(SCRATCH_ALIGN), i64(nbytes)], name="scratch")
        status = self.alloca(I32, "status")
        b.store(i32(1), status)
        with b.if_then(b.icmp_unsigned("!=", raw, ir.Constant(void_ptr, None)), likely=True):
            b.store(i32(0), status)
            self._jobs(raw, nbytes, jobs, arrays)
        return b.load(status)

    def _jobs(self, raw, nbytes: int, jobs, arrays) -> None:
        """The jobs with the scratch at ``raw`` (``nbytes``, zeroed here), freed after."""
        p, k, b = self.plan, self.kind, self.b
        id_, ih_n, iw = p.in_size
        od_n, oh_n, ow_n = p.out_size
        kd_n = p.kernel[0]
        rs = self.row_size
        x, w, bias, residual, y = arrays
        void_ptr = I8.as_pointer()
        self.memset = self.intrinsic("llvm.memset.p0.i64", ir.VoidType(),
                                     [void_ptr, I8, I64, I1])
        # zero: the padding columns no staging writes
        b.call(self.memset, [raw, ir.Constant(I8, 0), i64(nbytes), ir.Constant(I1, 0)])
        st = b.bitcast(raw, self.scalar.as_pointer(), name="st")

        b.comment(f"one job = a band of {k.band} output rows of one output plane: batch x "
                  f"{p.groups} channels x OD x {k.bands} band(s)")
        with jobs() as job:
            index = self.split_index(job, [("band", k.bands), ("od", od_n)], "nc")
            nc = index["nc"]  # n * C + c
            c = b.urem(nc, i64(p.groups), name="c")
            oh0 = b.mul(index["band"], i64(k.band), name="oh0")
            end = b.add(oh0, i64(k.band))
            oh1 = b.select(b.icmp_signed("<", end, i64(oh_n)), end, i64(oh_n), name="oh1")
            d_row, d_add = self.fold_row(k.d_fold, index["od"])
            d_first = b.mul(d_row, i64(kd_n), name="d.first")
            xc = self.element(x, b.mul(nc, i64(id_ * ih_n * iw)), "xc")
            q0 = b.sub(b.mul(oh0, i64(k.h_stride)), i64(k.pad_top), name="q0")

            b.comment(f"stage the band's padded rows q0 .. q0 + {k.stage_rows - 1} of every "
                      "D tap")
            with self.loop(0, kd_n, "kd.stage") as kd:
                in_d = self.table_load(self.tab_d, b.add(d_first, kd), "in.d")
                with b.if_then(b.icmp_signed(">=", in_d, i32(0))):
                    in_d = b.sext(b.add(in_d, d_add), I64)
                    plane_d = self.element(xc, b.mul(in_d, i64(ih_n * iw)), "x.d")
                    st_d = self.element(st, b.mul(kd, i64(k.stage_rows * rs)), "st.d")
                    with self.loop(0, k.stage_rows, "j.stage") as j:
                        slot = self.element(st_d, b.mul(j, i64(rs)), "slot")
                        src = self._source_row(b.add(q0, j, name="q"))
                        with b.if_else(b.icmp_signed(">=", src, i64(0))) as (row, zero):
                            with row:
                                self._stage_row(self.element(plane_d, b.mul(src, i64(iw)),
                                                             "xr"), slot)
                            with zero:
                                b.call(self.memset, [b.bitcast(slot, void_ptr),
                                                     ir.Constant(I8, 0),
                                                     i64(rs * self.itemsize),
                                                     ir.Constant(I1, 0)])

            out = {"nc": nc, "c": c, "od": index["od"], "oh0": oh0, "oh1": oh1,
                   "d_first": d_first, "st": st, "w": w, "bias": bias,
                   "residual": residual, "y": y}
            tiles = b.udiv(b.add(b.sub(oh1, oh0), i64(k.rows - 1)), i64(k.rows), name="tiles")
            with self.loop(0, tiles, "tile") as tile:
                self._tile_rows(b.add(oh0, b.mul(tile, i64(k.rows)), name="oh"), out)
        b.call(self.intrinsic("free", ir.VoidType(), [void_ptr]), [raw])

    # -- the input row of a padded row -----------------------------------------------
    def _source_row(self, q):
        """i64: the input row staged as padded row ``q`` (i64, >= -PT): q inside the
        input, top_rows[q + PT] before it, bottom_rows[q - IH] past it, else -1 (zero)."""
        k, b = self.kind, self.b
        ih_n = self.plan.in_size[1]
        src = i64(-1)
        if k.bottom_rows:
            past = b.sub(q, i64(ih_n))
            listed = b.and_(b.icmp_signed(">=", past, i64(0)),
                            b.icmp_signed("<", past, i64(len(k.bottom_rows))))
            table = self.constant_table("bottom_rows", list(k.bottom_rows), I32)
            # the index clamped into the table: the load runs for every q
            at = b.select(listed, past, i64(0))
            src = b.select(listed, b.sext(self.table_load(table, at, "bottom"), I64), src)
        if k.top_rows:
            before = b.icmp_signed("<", q, i64(0))
            table = self.constant_table("top_rows", list(k.top_rows), I32)
            at = b.select(before, b.add(q, i64(k.pad_top)), i64(0))
            src = b.select(before, b.sext(self.table_load(table, at, "top"), I64), src)
        inside = b.and_(b.icmp_signed(">=", q, i64(0)), b.icmp_signed("<", q, i64(ih_n)))
        return b.select(inside, q, src, name="src")

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
        """Output rows [oh, oh + R) of the band (those past its end computed from staged
        rows of zeros or of the rows after, and not stored), every output channel of the
        job's input channel, every piece of columns."""
        p, k, b = self.plan, self.kind, self.b
        od_n, oh_n, ow_n = p.out_size
        taps = math.prod(p.kernel)
        m_n = p.cout_g
        # the tile's first staged row from the scratch's start (D tap 0)
        first = b.mul(b.mul(b.sub(oh, out["oh0"]), i64(k.h_stride)), i64(self.row_size),
                      name="tile.first")
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
                self._reduce(wc, b.add(first, ow0), out)
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

    def _reduce(self, wc, start, out: dict) -> None:
        """Every tap of the tile into its accumulators: per D tap inside the input, the
        straight-line steps of tile_steps from the tile's first staged element, ``start``
        elements past D tap kd's first slot."""
        p, k, b = self.plan, self.kind, self.b
        kd_n, kh_n, kw_n = p.kernel
        rs, lanes = self.row_size, self.lanes
        fma = self.vector_intrinsic("fma", 3)
        steps = tile_steps(k, p.kernel)
        with self.loop(0, kd_n, "kd") as kd:
            in_d = self.table_load(self.tab_d, b.add(out["d_first"], kd), "in.d")
            with b.if_then(b.icmp_signed(">=", in_d, i32(0))):
                sd = self.element(out["st"], b.add(b.mul(kd, i64(k.stage_rows * rs)), start),
                                  "sd")
                wk = self.element(wc, b.mul(kd, i64(kh_n * kw_n)), "wk")
                acc = [[b.load(slot) for slot in row] for row in self.acc]
                for weights, reads in steps:
                    wv = {i: self.splat(b.load(self.element(wk, i64(i)), name=f"w{i}"))
                          for i in weights}
                    for row, kw, users in reads:
                        for v in range(k.vectors):
                            xv = self._staged_vector(sd, row * rs + k.tap_offsets[kw]
                                                     + v * lanes)
                            for tr, weight in users:
                                acc[tr][v] = b.call(fma, [xv, wv[weight], acc[tr][v]])
                for row, values in zip(self.acc, acc):
                    for slot, value in zip(row, values):
                        b.store(value, slot)

    def _staged_vector(self, sd, offset: int):
        """The vector at ``sd + offset`` (``sd`` a whole number of vectors from the
        scratch's aligned start): one aligned load, or, ``offset`` not a multiple of VL,
        lanes offset % VL .. + VL - 1 of the two aligned vectors around it (a load that
        splits cache lines costs about twice a whole one)."""
        b, lanes = self.b, self.lanes
        lane = offset % lanes
        base = offset - lane

        def aligned(at: int):
            pointer = b.bitcast(self.element(sd, i64(at)), self.vec.as_pointer())
            return b.load(pointer, align=self.vector_align)

        if not lane:
            return aligned(base)
        picks = ir.Constant(ir.VectorType(I32, lanes), list(range(lane, lane + lanes)))
        return b.shuffle_vector(aligned(base), aligned(base + lanes), picks)

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
