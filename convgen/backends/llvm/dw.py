"""The vectorize="dw" plan as LLVM IR: lanes hold the channels of a pixel.

The C template's blocked depthwise plan (templates/c/conv_dw_function.j2, planned by
convgen.plan.layout.depthwise_plan) built with llvmlite.ir. x, y (and the residual r) are
blocked, (N, C / VL, D, H, W, VL), so one ``<VL x float>`` holds VL channels of one pixel
and every tap is one ``llvm.fma`` of whole vectors: no reduction over channels. The
weights are always the ones prepared at load (convgen.plan.layout.pack_depthwise_weights:
(C / VL, taps, VL), a tap's weights for a block of channels one vector).

A job is one output row of one channel block of one image (N * C / VL * OD * OH jobs); it
looks its rows of the folded D and H tables up once (fold_row). The row runs in pieces of
P pixels, the register tile (P accumulators, allocas promoted to registers), each started
at the bias vector; the planner's tables (input coordinate per (output, tap), -1: the tap
adds nothing) handle every padding mode, flip, stride and dilation. Pieces
[run_begin, run_end) (convgen.plan.depthwise.DepthwisePieces) are linear: pixel p of piece
i reads at tap kw input column run_cols[kw] + (i - run_begin) * run_step + p * stride, all
inside the input: plain vector loads. The border pieces (and the last, short one) read
each pixel's column from their own table and keep the accumulator where the tap adds
nothing. Nothing here grows with the output size. The epilogue adds the residual, applies
the activation and stores one vector per pixel.

Entry point, shared with the other plans and the C backend:
``i32 SYMBOL(T* x, T* w, T* b, [T* r,] T* y, i64 job_begin, i64 job_end)``.
"""

from __future__ import annotations

from llvmlite import ir

from convgen.backends.llvm.ir import I32, I64, IRFunction, i32, i64
from convgen.plan.base import Plan
from convgen.plan.depthwise import DepthwiseKind, depthwise_folds


class DwKernelIR(IRFunction):
    """Builds one vectorize="dw" (blocked depthwise) convolution function into a module."""

    def __init__(self, plan: Plan, module: ir.Module, name: str | None = None,
                 residual: bool = False, internal: bool = False):
        assert isinstance(plan.kind, DepthwiseKind), plan.kind
        assert plan.in_blocked and plan.out_blocked, plan.symbol
        assert plan.groups % plan.vector_lanes == 0, plan.symbol
        names = ("x", "w", "b", "r", "y") if residual else ("x", "w", "b", "y")
        super().__init__(module, name or plan.symbol, plan.c_type, plan.vector_lanes, names,
                         ("job_begin", "job_end"), internal)
        self.plan = plan
        self.residual = residual
        self.pixels = plan.tile[2]  # P
        self.pieces = plan.kind.pieces

    # -- the kernel ------------------------------------------------------------------
    def build(self) -> ir.Function:
        p, b, lanes = self.plan, self.b, self.lanes
        id_, ih, iw = p.in_size
        od_n, oh_n, ow_n = p.out_size
        kd_n, kh_n, kw_n = p.kernel
        blocks = p.groups // lanes
        if self.residual:
            x, w, bias, residual, y, job_begin, job_end = self.function.args
        else:
            (x, w, bias, y, job_begin, job_end), residual = self.function.args, None

        pieces = self.pieces
        self.folds = depthwise_folds(p)
        self.tab_d = self.constant_table("tab_d", sum(self.folds[0].rows, []), I32)
        self.tab_h = self.constant_table("tab_h", sum(self.folds[1].rows, []), I32)
        self.run_col = self.constant_table("run_col", list(pieces.run_cols), I32)
        # a row without border pieces still declares one (no empty arrays)
        self.border_col = self.constant_table(
            "border_col", [c for cols in pieces.border_cols for pixel in cols for c in pixel]
            or [-1] * (self.pixels * kw_n), I32)
        # the register tile: one alloca per pixel, promoted to registers
        self.acc = [self.alloca(self.vec, f"acc.{px}") for px in range(self.pixels)]

        b.comment(f"one job = one output row of a channel block: batch x {blocks} channel"
                  f" blocks x OD x OH; pieces of {self.pixels} pixels")
        with self.loop(job_begin, job_end, "job") as job:
            index = self.split_index(job, [("oh", oh_n), ("od", od_n)], "nb")
            oh_, od_, nb = index["oh"], index["od"], index["nb"]  # nb = n * CB + cb
            cb = b.urem(nb, i64(blocks), name="cb")
            xb = self.element(x, b.mul(nb, i64(id_ * ih * iw * lanes)), "xb")
            wb = self.element(w, b.mul(cb, i64(kd_n * kh_n * kw_n * lanes)), "wb")
            row = b.mul(b.add(b.mul(b.add(b.mul(nb, i64(od_n)), od_), i64(oh_n)), oh_),
                        i64(ow_n * lanes), name="row")
            bv = self.load_vec(self.element(bias, b.mul(cb, i64(lanes)))) if p.spec.bias \
                else self.zero()
            d_row, d_add = self.fold_row(self.folds[0], od_)
            h_row, h_add = self.fold_row(self.folds[1], oh_)
            rows = {"d": b.mul(d_row, i64(kd_n)), "d_add": d_add, "h": b.mul(h_row, i64(kh_n)),
                    "h_add": h_add, "xb": xb, "wb": wb}
            with self.loop(0, pieces.count, "piece") as piece:
                ow0 = b.mul(piece, i64(self.pixels), name="ow0")
                remaining = b.sub(i64(ow_n), ow0)
                count = b.select(b.icmp_signed("<", remaining, i64(self.pixels)), remaining,
                                 i64(self.pixels), name="np")
                linear = b.and_(b.icmp_signed(">=", piece, i64(pieces.run_begin)),
                                b.icmp_signed("<", piece, i64(pieces.run_end)))
                with b.if_else(linear) as (then, otherwise):
                    with then:
                        b.comment(f"linear piece: {self.pixels} pixels, every one inside")
                        shift = b.mul(b.sub(piece, i64(pieces.run_begin)),
                                      i64(pieces.run_step), name="shift")
                        self._piece(bv, rows, shift, ow0, None, row, residual, y)
                    with otherwise:
                        b.comment("borders and the last piece: per pixel, from its columns")
                        border = b.select(
                            b.icmp_signed("<", piece, i64(pieces.run_begin)), piece,
                            b.add(piece, i64(pieces.run_begin - pieces.run_end)),
                            name="border")
                        cols = b.mul(border, i64(self.pixels * kw_n), name="cols")
                        self._piece(bv, rows, cols, ow0, count, row, residual, y)
        b.ret(i32(0))
        return self.function

    # -- one piece ---------------------------------------------------------------------
    def _piece(self, bv, rows: dict, where, ow0, count, row, residual, y) -> None:
        """Reduce one piece's taps into the tile and store it; ``count`` None: a linear
        piece (all P pixels), ``where`` its input column shift from the run's first piece;
        else its pixels (1..P), ``where`` the offset of its columns in border_col."""
        p, b, lanes = self.plan, self.b, self.lanes
        ih, iw = p.in_size[1:]
        kd_n, kh_n, kw_n = p.kernel
        for slot in self.acc:
            b.store(bv, slot)
        if count is None:  # the shift applies to every tap: fold it into the row base
            xb = self.element(rows["xb"], b.mul(where, i64(lanes)), "xs")
        else:
            xb = rows["xb"]
        with self.loop(0, kd_n, "kd") as kd:
            in_d = self.table_load(self.tab_d, b.add(rows["d"], kd), "in.d")
            with b.if_then(b.icmp_signed(">=", in_d, i32(0))):
                in_d = b.add(in_d, rows["d_add"])
                with self.loop(0, kh_n, "kh") as kh:
                    in_h = self.table_load(self.tab_h, b.add(rows["h"], kh), "in.h")
                    with b.if_then(b.icmp_signed(">=", in_h, i32(0))):
                        in_h = b.add(in_h, rows["h_add"])
                        offset = b.mul(b.add(b.mul(b.sext(in_d, I64), i64(ih)),
                                             b.sext(in_h, I64)), i64(iw * lanes))
                        xr = self.element(xb, offset, "xr")
                        wr = self.element(rows["wb"], b.mul(b.add(b.mul(kd, i64(kh_n)), kh),
                                                            i64(kw_n * lanes)), "wr")
                        with self.loop(0, kw_n, "kw") as kw:
                            wv = self.load_vec(self.element(wr, b.mul(kw, i64(lanes))))
                            if count is None:
                                self._linear_taps(xr, wv, kw)
                            else:
                                self._table_taps(xr, wv, where, kw)
        self._epilogue(ow0, count, row, residual, y)

    def _linear_taps(self, xr, wv, kw) -> None:
        """Tap kw of a linear piece: pixel p reads column run_col[kw] + p * SW (``xr``
        already shifted to the piece)."""
        p, b, lanes = self.plan, self.b, self.lanes
        stride = p.spec.stride[-1]
        fma = self.vector_intrinsic("fma", 3)
        col = b.sext(self.table_load(self.run_col, kw, "col"), I64)
        xk = self.element(xr, b.mul(col, i64(lanes)), "xk")
        for px, slot in enumerate(self.acc):
            xv = self.load_vec(self.element(xk, i64(px * stride * lanes)))
            b.store(b.call(fma, [xv, wv, b.load(slot)]), slot)

    def _table_taps(self, xr, wv, cols, kw) -> None:
        """Tap kw of a border piece: pixel p reads column border_col[cols + p * KW + kw];
        -1 (also every pixel past the row) adds nothing: the load reads column 0 of the
        row, which exists, and the accumulator keeps its value."""
        p, b, lanes = self.plan, self.b, self.lanes
        kw_n = p.kernel[2]
        fma = self.vector_intrinsic("fma", 3)
        at = b.add(cols, kw)
        for px, slot in enumerate(self.acc):
            col = self.table_load(self.border_col, b.add(at, i64(px * kw_n)), "iw")
            valid = b.icmp_signed(">=", col, i32(0))
            safe = b.sext(b.select(valid, col, i32(0)), I64)
            xv = self.load_vec(self.element(xr, b.mul(safe, i64(lanes))))
            old = b.load(slot)
            b.store(b.select(valid, b.call(fma, [xv, wv, old]), old), slot)

    def _epilogue(self, ow0, count, row, residual, y) -> None:
        """Residual, activation and one vector store per pixel (the bias started the
        tile); ``count`` None: all P pixels, else the first ``count``."""
        p, b, lanes = self.plan, self.b, self.lanes
        spec = p.spec
        b.comment(f"epilogue: {'residual, ' if residual is not None else ''}"
                  f"{spec.activation or 'no activation'}, store (bias is in the tile)")
        for px, slot in enumerate(self.acc):
            at = b.add(row, b.mul(b.add(ow0, i64(px)), i64(lanes)), name="at")

            def store(at=at, slot=slot):
                value = b.load(slot)
                if residual is not None:
                    value = b.fadd(value, self.load_vec(self.element(residual, at)))
                value = self.activation(value, spec.activation, spec.activation_args)
                self.store_vec(value, self.element(y, at))

            if count is None or px == 0:  # a piece holds at least one pixel
                store()
            else:
                with b.if_then(b.icmp_signed("<", i64(px), count)):
                    store()
