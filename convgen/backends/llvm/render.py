"""Render a Plan as LLVM IR with llvmlite.ir (no IR text templates).

The loop nest is the C template's, with the W tile held as explicit vectors of
``plan.vector_lanes`` lanes (``<16 x float>`` on AVX-512) and every
multiply-add an ``llvm.fma`` on vectors. Input columns are read per the plan's
vector tables: a plain vector load where a vector's columns are consecutive, a
masked load where only some lanes are valid (padding), a masked gather
otherwise (strides, reflect/circular borders), or nothing at all.

Entry point, shared with the C backend:
``i32 SYMBOL(T* x, T* w, T* b, T* y, i64 job_begin, i64 job_end)``.
"""

from __future__ import annotations

import json

from llvmlite import ir

from convgen.backends.llvm.co import CoKernelIR
from convgen.backends.llvm.dw import DwKernelIR
from convgen.backends.llvm.dws import StagedDwKernelIR
from convgen.backends.llvm.wino import WinoKernelIR
from convgen.backends.llvm.build import uses_openmp
from convgen.backends.llvm.ir import I8, I32, I64, IRFunction, i32, i64
from convgen.plan.base import Plan
from convgen.plan.co import CoTiles
from convgen.plan.depthwise import DepthwiseKind
from convgen.plan.staged import StagedDepthwiseKind
from convgen.plan.direct import (VEC_EVEN, VEC_GATHER, VEC_LOAD, VEC_MASKED_LOAD, VEC_SKIP,
                                 DirectKind, VectorTables, vector_tables)
from convgen.plan.winograd import WinogradPlan
from convgen.version import __version__


# Kernels with up to this many taps in a row have their tap loop unrolled in the IR (the
# tables' offsets fold into constants); wider ones loop at run time.
MAX_UNROLLED_TAPS = 32


class _KernelIR(IRFunction):
    """Builds one convolution function into a module."""

    def __init__(self, plan: Plan, module: ir.Module, name: str | None = None,
                 residual: bool = False, internal: bool = False):
        assert isinstance(plan.kind, DirectKind), plan.kind
        # convgen.plan.layout.with_layout refuses the "w" plan blocked layouts
        assert not (plan.in_blocked or plan.out_blocked), plan.symbol
        names = ("x", "w", "b", "r", "y") if residual else ("x", "w", "b", "y")
        super().__init__(module, name or plan.symbol, plan.c_type, plan.vector_lanes, names,
                         ("job_begin", "job_end"), internal)
        self.plan = plan
        self.residual = residual
        self.tables: VectorTables = vector_tables(plan)

    # -- the kernel ------------------------------------------------------------------
    def build(self) -> ir.Function:
        p, t, b = self.plan, self.tables, self.b
        td, th, tw = p.tile
        nv = t.n_vectors
        kd_n, kh_n, kw_n = p.kernel
        id_, ih, iw = p.in_size
        od, oh, ow = p.out_size
        in_volume = id_ * ih * iw
        w_g, w_co, w_ci, w_kd, w_kh, _ = p.weight_strides
        if self.residual:
            x, w, bias, residual, y, job_begin, job_end = self.function.args
        else:
            (x, w, bias, y, job_begin, job_end), residual = self.function.args, None

        # folded D/H tables (border rows and one interior period, see fold_row)
        d_table = self.constant_table("tab_d", sum(t.d_fold.rows, []), I32)
        h_table = self.constant_table("tab_h", sum(t.h_fold.rows, []), I32)
        positions = t.positions
        if positions is not None:
            # W reads by position (convgen.plan.direct.PositionReads): border positions
            self.position_tables = {
                "mode": self.constant_table("pos_mode", positions.modes or [0], I8),
                "base": self.constant_table("pos_base", positions.bases or [0], I32),
                "row": self.constant_table("pos_row", positions.index_rows or [-1], I32),
                "idx": self.constant_table("pos_idx", sum(positions.indices, [])
                                           or [-1] * self.lanes, I32),
                "lane": self.constant_table("lane_step", [lane * positions.lane_step
                                                          for lane in range(self.lanes)], I32)}
            w_table = modes = bases = None
            run_first = run_in = run_out = None
        else:
            # per W-tile class (= run): the tables of the run's first tile
            w_table = self.constant_table("tab_w", sum(sum(t.w_table, []), []), I32)
            modes = self.constant_table("vec_mode", sum(sum(t.modes, []), []), I8)
            bases = self.constant_table("vec_base", sum(sum(t.bases, []), []), I32)
            run_first = self.constant_table("run_first", [r.first for r in t.runs], I64)
            run_in = self.constant_table("run_in", [r.in_shift for r in t.runs], I64)
            run_out = self.constant_table("run_out", [r.out_shift for r in t.runs], I64)
        self.out_columns = (self.constant_table("out_col", sum(t.out_columns, []), I32)
                            if t.out_columns else None)
        # the register tile: one alloca per (channel, vector), promoted to registers
        acc = [[self.alloca(self.vec, f"acc.{co}.{v}") for v in range(nv)]
               for co in range(p.tile_co)]

        order = [("tw", p.n_tiles[3]), ("th", p.n_tiles[2]), ("td", p.n_tiles[1]),
                 ("tc", p.n_tiles[0]), ("g", p.groups)]
        if p.kind.channels_inner:  # a large input: channel tiles innermost, as the C template
            order = [order[3]] + order[:3] + order[4:]
            b.comment("one job = one tile: batch x group x D/H/W tiles x channel tile")
        else:
            b.comment("one job = one tile: batch x group x channel tile x D/H/W tiles")
        with self.loop(job_begin, job_end, "job") as job:
            index = self.split_index(job, order, "n")
            n, g = index["n"], index["g"]
            co0 = b.mul(index["tc"], i64(p.tile_co), name="co0")
            od0 = b.mul(index["td"], i64(td), name="od0")
            oh0 = b.mul(index["th"], i64(th), name="oh0")
            ow0 = b.mul(index["tw"], i64(tw), name="ow0")
            if positions is not None:
                # where vector v's lane 0 reads at tap 0
                run, in_shift, out_shift = None, i64(0), i64(0)
                self.starts = [b.add(b.mul(b.add(ow0, i64(v * self.lanes)),
                                           i64(positions.lane_step)), i64(positions.origin),
                                     name=f"s0.{v}") for v in range(nv)]
            else:
                run = self._find_run(run_first, index["tw"])
                in_rank = b.sub(index["tw"], self.table_load(run_first, run, "run.first"))
                in_shift = b.mul(in_rank, self.table_load(run_in, run, "run.in"),
                                 name="in.shift")
                out_shift = b.mul(in_rank, self.table_load(run_out, run, "run.out"),
                                  name="out.shift")
            bounds = [self._bounded(start, tile, size, name) for start, tile, size, name in
                      ((od0, td, od, "nd"), (oh0, th, oh, "nh"), (ow0, tw, ow, "nw"))]

            channel0 = b.add(b.mul(n, i64(p.groups * p.cin_g)), b.mul(g, i64(p.cin_g)))
            x_group = self.element(x, b.mul(channel0, i64(in_volume)), "x.group")
            w_tile = self.element(w, b.add(b.mul(g, i64(w_g)), b.mul(co0, i64(w_co))), "w.tile")
            # channels past the last real one reuse channel 0; their values are never stored
            co_valid = b.sub(i64(p.cout_g), co0, name="co.valid")
            w_offsets = [b.select(b.icmp_signed("<", i64(co), co_valid), i64(co * w_co), i64(0))
                         for co in range(p.tile_co)]

            with self.loop(0, bounds[0], "od") as od_, self.loop(0, bounds[1], "oh") as oh_:
                row_d, add_d = self.fold_row(t.d_fold, b.add(od0, od_))
                row_h, add_h = self.fold_row(t.h_fold, b.add(oh0, oh_))
                for row in acc:
                    for slot in row:
                        b.store(self.zero(), slot)
                b.comment("reduction over the group's input channels and the kernel taps")
                with self.loop(0, p.cin_g, "ci") as ci:
                    xc = self.element(x_group, b.mul(ci, i64(in_volume)), "xc")
                    wc = self.element(w_tile, b.mul(ci, i64(w_ci)), "wc")
                    with self.loop(0, kd_n, "kd") as kd:
                        in_d = self.table_load(d_table, b.add(b.mul(row_d, i64(kd_n)), kd), "in.d")
                        with b.if_then(b.icmp_signed(">=", in_d, i32(0))):
                            in_d = b.add(in_d, add_d)
                            with self.loop(0, kh_n, "kh") as kh:
                                h_row = b.add(b.mul(row_h, i64(kh_n)), kh)
                                in_h = self.table_load(h_table, h_row, "in.h")
                                with b.if_then(b.icmp_signed(">=", in_h, i32(0))):
                                    in_h = b.add(in_h, add_h)
                                    # the row, moved by the tile's shift in its run
                                    offset = b.add(b.mul(b.add(b.mul(b.sext(in_d, I64), i64(ih)),
                                                               b.sext(in_h, I64)), i64(iw)),
                                                   in_shift)
                                    xrow = self.element(xc, offset, "xrow")
                                    w_row = self.element(wc, b.add(b.mul(kd, i64(w_kd)),
                                                                   b.mul(kh, i64(w_kh))), "w.row")
                                    if kw_n <= MAX_UNROLLED_TAPS:
                                        for kw in range(kw_n):
                                            self._tap(i64(kw), run, xrow, w_row, w_offsets,
                                                      acc, w_table, modes, bases)
                                    else:  # a wide kernel: a loop, not 10**4 copies
                                        with self.loop(0, kw_n, "kw") as kw:
                                            self._tap(kw, run, xrow, w_row, w_offsets,
                                                      acc, w_table, modes, bases)
                self._epilogue(acc, bias, residual, y, n, g, co0, od0, oh0, od_, oh_, ow0,
                               bounds[2], run, out_shift)
        b.ret(i32(0))
        return self.function

    def _bounded(self, start, tile: int, size: int, name: str):
        """min(tile, size - start): the extent of a possibly partial last tile."""
        b = self.b
        remaining = b.sub(i64(size), start)
        return b.select(b.icmp_signed("<", remaining, i64(tile)), remaining, i64(tile),
                        name=name)

    def _find_run(self, run_first, tile_w):
        """The run holding W tile ``tile_w``: the last run whose first tile is <= it (a
        binary search over the few runs, once per job)."""
        b, runs = self.b, len(self.tables.runs)
        low = self.alloca(I64, "run.lo")
        high = self.alloca(I64, "run.hi")
        b.store(i64(0), low)
        b.store(i64(runs - 1), high)
        cond = self.function.append_basic_block("run.cond")
        body = self.function.append_basic_block("run.body")
        end = self.function.append_basic_block("run.end")
        b.branch(cond)
        b.position_at_end(cond)
        b.cbranch(b.icmp_signed("<", b.load(low), b.load(high)), body, end)
        b.position_at_end(body)
        lo_, hi_ = b.load(low), b.load(high)
        mid = b.sdiv(b.add(b.add(lo_, hi_), i64(1)), i64(2))
        go_up = b.icmp_signed("<=", self.table_load(run_first, mid, "run.mid"), tile_w)
        b.store(b.select(go_up, mid, lo_), low)
        b.store(b.select(go_up, hi_, b.sub(mid, i64(1))), high)
        b.branch(cond)
        b.position_at_end(end)
        return b.load(low, name="run")

    def _tap(self, kw, run, xrow, w_row, w_offsets, acc, w_table, modes,
             bases) -> None:
        """One kernel column: read the tile's input vectors, FMA them into every channel."""
        b, t = self.b, self.tables
        nv = t.n_vectors
        columns = []
        for v in range(nv):
            if t.positions is not None:
                columns.append(self._read_columns(*self._position_read(kw, v, xrow), xrow))
                continue
            slot = b.add(b.mul(b.add(b.mul(run, i64(self.plan.kernel[2])), kw),
                               i64(nv)), i64(v))
            mode = self.table_load(modes, slot, "mode")
            base = b.sext(self.table_load(bases, slot, "base"), I64)
            first = b.add(b.mul(run, i64(self.plan.kernel[2] * t.row_length)),
                          b.add(b.mul(kw, i64(t.row_length)), i64(v * self.lanes)))
            idx_ptr = b.bitcast(b.gep(w_table, [i64(0), first], inbounds=True),
                                self.ivec.as_pointer())
            columns.append(self._read_columns(mode, base, idx_ptr, xrow, xrow))
        fma = self.vector_intrinsic("fma", 3)
        for co, row in enumerate(acc):
            wv = self.splat(b.load(self.element(w_row, b.add(w_offsets[co], kw)),
                                   name="wv"))
            for slot, xv in zip(row, columns):
                b.store(b.call(fma, [wv, xv, b.load(slot)]), slot)

    def _position_read(self, kw, v: int, xrow):
        """(mode, base, index pointer, gather base) of vector ``v`` at tap ``kw`` by its
        position: inside the row its interior mode from the position, else the listed
        border position's."""
        b, pos, tables = self.b, self.tables.positions, self.position_tables
        s = b.add(self.starts[v], b.mul(kw, i64(pos.tap_step)), name="pos")
        below = b.icmp_signed("<", s, i64(pos.lo))
        above = b.icmp_signed(">", s, i64(pos.hi))
        border = b.or_(below, above)
        entry = b.select(below, b.sub(s, i64(pos.first)),
                         b.add(s, i64(pos.left - pos.hi - 1)))
        entry = b.select(border, entry, i64(0))  # inside the row: any valid entry
        mode = b.select(border, self.table_load(tables["mode"], entry, "pos.mode"),
                        ir.Constant(I8, pos.interior_mode))
        base = b.select(border, b.sext(self.table_load(tables["base"], entry, "pos.base"), I64),
                        s)
        row = b.sext(self.table_load(tables["row"], entry, "pos.row"), I64)
        row = b.select(b.icmp_signed("<", row, i64(0)), i64(0), row)
        border_idx = b.gep(tables["idx"], [i64(0), b.mul(row, i64(self.lanes))], inbounds=True)
        lane_idx = b.gep(tables["lane"], [i64(0), i64(0)], inbounds=True)
        idx_ptr = b.bitcast(b.select(border, border_idx, lane_idx), self.ivec.as_pointer())
        gather_base = b.select(border, xrow, self.element(xrow, s))
        return mode, base, idx_ptr, gather_base

    def _read_columns(self, mode, base, idx_ptr, gather_base, xrow):
        """The VL input columns of one vector, by the mode the planner chose."""
        b = self.b
        zero_vec = ir.Constant(self.vec, [0.0] * self.lanes)
        vec_ptr = self.vec.as_pointer()
        start = self.function.append_basic_block("read.start")
        b.branch(start)
        b.position_at_end(start)
        load_bb = self.function.append_basic_block("read.load")
        masked_bb = self.function.append_basic_block("read.masked")
        gather_bb = self.function.append_basic_block("read.gather")
        even_bb = self.function.append_basic_block("read.even")
        done = self.function.append_basic_block("read.done")
        switch = b.switch(mode, gather_bb)
        switch.add_case(ir.Constant(I8, VEC_LOAD), load_bb)
        switch.add_case(ir.Constant(I8, VEC_MASKED_LOAD), masked_bb)
        switch.add_case(ir.Constant(I8, VEC_GATHER), gather_bb)
        switch.add_case(ir.Constant(I8, VEC_SKIP), done)
        switch.add_case(ir.Constant(I8, VEC_EVEN), even_bb)

        b.position_at_end(load_bb)
        b.comment("consecutive columns: one vector load")
        loaded = b.load(b.bitcast(self.element(xrow, base), vec_ptr), align=self.itemsize)
        b.branch(done)

        b.position_at_end(masked_bb)
        b.comment("consecutive where valid (padding lanes off): masked load")
        idx = b.load(idx_ptr, align=4)
        mask = b.icmp_signed(">=", idx, ir.Constant(self.ivec, [0] * self.lanes))
        masked = self.masked_load(self.element(xrow, base), mask)
        b.branch(done)

        b.position_at_end(gather_bb)
        b.comment("arbitrary columns (stride, reflect/circular border): masked gather")
        gathered = self.masked_gather(*self.offset_pointers(gather_base,
                                                            b.load(idx_ptr, align=4)))
        b.branch(done)

        b.position_at_end(even_bb)
        b.comment("stride 2 inside the row: two vector loads, keep the even lanes")
        first_half = b.load(b.bitcast(self.element(xrow, base), vec_ptr), align=self.itemsize)
        second_half = b.load(b.bitcast(self.element(xrow, b.add(base, i64(self.lanes))),
                                       vec_ptr), align=self.itemsize)
        even = ir.Constant(ir.VectorType(I32, self.lanes), [2 * l for l in range(self.lanes)])
        evens = b.shuffle_vector(first_half, second_half, even)
        b.branch(done)

        b.position_at_end(done)
        phi = b.phi(self.vec, name="xv")
        phi.add_incoming(zero_vec, start)
        phi.add_incoming(loaded, load_bb)
        phi.add_incoming(masked, masked_bb)
        phi.add_incoming(gathered, gather_bb)
        phi.add_incoming(evens, even_bb)
        return phi

    def _epilogue(self, acc, bias, residual, y, n, g, co0, od0, oh0, od_, oh_, ow0,
                  nw, run, out_shift) -> None:
        """Bias, residual, activation and a masked store of one output row of the tile."""
        p, b = self.plan, self.b
        od_n, oh_n, ow_n = p.out_size
        out_volume = od_n * oh_n * ow_n
        b.comment(f"epilogue: bias, {p.spec.activation or 'no activation'}, masked store")
        row_offset = b.mul(b.add(b.mul(b.add(od0, od_), i64(oh_n)), b.add(oh0, oh_)), i64(ow_n))
        for co, row in enumerate(acc):
            with b.if_then(b.icmp_signed("<", b.add(co0, i64(co)), i64(p.cout_g))):
                channel = b.add(b.mul(g, i64(p.cout_g)), b.add(co0, i64(co)), name="c")
                if p.spec.bias:
                    bv = self.splat(b.load(self.element(bias, channel)))
                else:
                    bv = self.zero()
                start = b.add(b.mul(b.add(b.mul(n, i64(p.groups * p.cout_g)), channel),
                                    i64(out_volume)), row_offset)
                for v, slot in enumerate(row):
                    value = b.fadd(b.load(slot), bv)
                    mask = self.lane_mask_below(i64(v * self.lanes), nw)
                    first = b.add(ow0, i64(v * self.lanes))
                    if self.out_columns is None:  # consecutive columns: masked vector access
                        offset = b.add(start, first)
                        if residual is not None:
                            value = b.fadd(value, self.masked_load(
                                self.element(residual, offset), mask))
                        value = self.activation(value, p.spec.activation,
                                                p.spec.activation_args)
                        self.masked_store(value, self.element(y, offset), mask)
                    else:  # stride phases: the columns come from the out_col table
                        # (the class's columns, moved by the tile's shift in its run)
                        shifted = b.add(start, out_shift)
                        first = b.add(b.mul(run, i64(self.tables.row_length)),
                                      i64(v * self.lanes))
                        if residual is not None:
                            value = b.fadd(value, self.gather_row(residual, shifted, first,
                                                                  mask))
                        value = self.activation(value, p.spec.activation,
                                                p.spec.activation_args)
                        self.scatter_row(value, y, shifted, first, mask)

    def _column_pointers(self, base, start, first):
        """<VL x T*>: &base[start + out_col[first + lane]] (lanes past the row: column 0)."""
        b = self.b
        idx_ptr = b.bitcast(b.gep(self.out_columns, [i64(0), first], inbounds=True),
                            self.ivec.as_pointer())
        return self.offset_pointers(self.element(base, start), b.load(idx_ptr, align=4))[0]

    def gather_row(self, base, start, first, mask):
        return self.masked_gather(self._column_pointers(base, start, first), mask)

    def scatter_row(self, value, base, start, first, mask) -> None:
        self.masked_scatter(value, self._column_pointers(base, start, first), mask)


def new_module(name: str, triple: str, data_layout: str) -> ir.Module:
    module = ir.Module(name=name)
    module.triple = triple
    module.data_layout = data_layout
    return module


def parallel_inside(plan: Plan) -> bool:
    """Whether the kernel of ``plan`` shares its jobs over OpenMP threads itself, in one
    GOMP_parallel region per call (transform-GEMM and staged depthwise plans): its caller
    passes all the jobs in one call, in one thread."""
    return isinstance(plan.kind, (WinogradPlan, StagedDepthwiseKind)) and uses_openmp(plan)


def add_conv_function(module: ir.Module, plan: Plan, name: str | None = None,
                      residual: bool = False, internal: bool = False) -> ir.Function:
    """Add one convolution as function ``name`` to ``module`` (networks use this), in the
    plan's layout: vectorize="w" here, "co" (transposed too: the stride-phase plan) in
    convgen.backends.llvm.co, the blocked depthwise plan ("dw") in convgen.backends.llvm.dw,
    the staged one ("dw" on NCHW) in convgen.backends.llvm.dws, the transform-GEMM methods
    in convgen.backends.llvm.wino (``plan.prepared_weights``: the weight argument holds
    Winograd's U or the "co" plan's packed channel blocks, prepared once:
    convgen.plan.weights; the blocked "dw" plan always reads its weights prepared)."""
    if isinstance(plan.kind, WinogradPlan):
        return WinoKernelIR(plan, module, name, residual, internal).build()
    if isinstance(plan.kind, CoTiles):
        return CoKernelIR(plan, module, name, residual, internal).build()
    if isinstance(plan.kind, DepthwiseKind):
        return DwKernelIR(plan, module, name, residual, internal).build()
    if isinstance(plan.kind, StagedDepthwiseKind):
        return StagedDwKernelIR(plan, module, name, residual, internal).build()
    return _KernelIR(plan, module, name, residual, internal).build()


def _layout_line(plan: Plan) -> str:
    """A header line naming the blocked layouts of convgen.plan.layout, if any."""
    if not (plan.in_blocked or plan.out_blocked):
        return ""
    blocked = f"(N, C/{plan.vector_lanes}, *spatial, {plan.vector_lanes})"
    return (f"; layout:   input {blocked if plan.in_blocked else 'NCHW'}, output"
            f" {blocked if plan.out_blocked else 'NCHW'}\n")


def render_llvm(plan: Plan, triple: str, data_layout: str) -> str:
    """The kernel's LLVM IR as text (unoptimized, commented)."""
    module = new_module(plan.symbol, triple, data_layout)
    add_conv_function(module, plan)
    header = (f"; Generated by convgen {__version__} -- do not edit.\n"
              f"; spec:     {json.dumps(plan.spec.to_dict(), sort_keys=True)}\n"
              f"; schedule: {json.dumps(plan.schedule.to_dict(), sort_keys=True)}\n"
              f"; vectors of {plan.vector_lanes} x {plan.c_type} over {plan.kind.lanes_hold}"
              + (" (weights: prepared at load)" if plan.prepared_weights else "")
              + "\n" + _layout_line(plan))
    return header + str(module)
