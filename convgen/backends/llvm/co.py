"""The vectorize="co" plan as LLVM IR: lanes hold output channels.

The C template's plan (templates/c/conv_co_function.j2) built with llvmlite.ir. Each
call packs its current block of output channels from the weights into a scratch
buffer (``aligned_alloc``, one per call, so one per thread: the thread pool and
GOMP_parallel both give each thread its own call) laid out [ci][kd][kh][kw][channels],
VL x VL blocks transposed with shuffles, zeros past the last channel; bound kernels and
networks take every block packed at load instead (``plan.prepared_weights``,
convgen.plan.weights), and then at 2+ threads split the rows rather than the blocks when
the weights are small (``co_tiles.rows_outer``, convgen.plan.co.co_rows_outer). A job is one
piece of an output row: ``co_vectors`` x ``size`` accumulators (``<16 x float>`` on
AVX-512). Per input channel and tap it loads the weight vectors and broadcasts one input
scalar per column into ``llvm.fma`` (any stride, dilation or padding mode: the planner's
tables say which columns read what; no gathers). Then each VL x VL block of the tile is
transposed in registers and the epilogue (bias, residual, activation) stores whole
column vectors per channel with masks. Layers with large weights prefetch the next channel
block's weights into L2 while a block computes (convgen.plan.co.co_next_block_lines).

Blocked layouts (``plan.in_blocked`` / ``plan.out_blocked``, convgen.plan.layout: (N, C / VL,
*spatial, VL)): a blocked input's channel ci starts at ``(ci / VL) * plane * VL + ci % VL``
and its pixels are VL elements apart, so every pixel offset is scaled by VL; a blocked
output (and residual) takes each pixel's channel vectors as they are, so the tile is not
transposed and the epilogue stores one whole vector per (pixel, channel vector).

Transposed convolutions (the stride-phase plan): the weight (C_in, C_out/groups, *k) is
packed one run of taps per input channel, the channel block is the outermost part of the
job index (one pack per block per call), a row runs only its useful (kd, kh) taps (the
plan's row_taps tables, one per pair of folded D/H rows), and a piece's columns are one
stride phase, ``step`` apart, stored column by column.

No table grows with the output size: the D/H index tables are folded
(convgen.plan.base.FoldedTable, looked up once per output row) and a row's pieces are
runs of one body (convgen.plan.co.CoRun, looked up once per job).

Entry point, shared with the other plan and the C backend:
``i32 SYMBOL(T* x, T* w, T* b, [T* r,] T* y, i64 job_begin, i64 job_end)``.
"""

from __future__ import annotations

import contextlib

from llvmlite import ir

from convgen.backends.llvm.ir import I8, I32, I64, IRFunction, i32, i64
from convgen.plan.co import CoClass, transpose_shuffles
from convgen.plan.base import Plan
from convgen.plan.co import CoTiles

SCRATCH_ALIGN = 64  # bytes: the packed weights' alignment (one cache line)


class CoKernelIR(IRFunction):
    """Builds one vectorize="co" convolution function into a module."""

    def __init__(self, plan: Plan, module: ir.Module, name: str | None = None,
                 residual: bool = False, internal: bool = False):
        assert isinstance(plan.kind, CoTiles), plan.kind
        names = ("x", "w", "b", "r", "y") if residual else ("x", "w", "b", "y")
        super().__init__(module, name or plan.symbol, plan.c_type, plan.vector_lanes, names,
                         ("job_begin", "job_end"), internal)
        self.plan = plan
        self.co = plan.kind
        self.residual = residual
        self.prepacked = plan.prepared_weights  # w holds the channel blocks packed at load
        self.rows_outer = self.co.rows_outer
        self.vector_align = min(SCRATCH_ALIGN, self.lanes * self.itemsize)
        # packed at load, the blocks lie wherever the caller's array (a network's
        # parameters) puts them: element-aligned only
        self.weight_align = self.itemsize if self.prepacked else self.vector_align
        self.columns = -(-self.co.max_pixels // self.lanes) * self.lanes  # PCOLS
        # elements between an input channel's adjacent pixels: 1 in NCHW, VL blocked
        self.xs = self.lanes if plan.in_blocked else 1
        self.next_block = None  # set per job by _next_block

    # -- the kernel ------------------------------------------------------------------
    def build(self) -> ir.Function:
        p, co, b = self.plan, self.co, self.b
        tco = p.tile_co
        td, th, _ = p.tile
        id_, ih, iw = p.in_size
        od, oh, _ = p.out_size
        if self.residual:
            x, w, bias, residual, y, job_begin, job_end = self.function.args
        else:
            (x, w, bias, y, job_begin, job_end), residual = self.function.args, None

        tap_tables = self._tap_tables()
        runs = {field: self.constant_table(f"run_{field}",
                                           [getattr(run, field) for run in co.runs], I32)
                for field in ("first", "ow0", "ow0_step", "base", "base_step", "cls")}
        # the register tile: one alloca per (column, channel vector), promoted to registers
        self.acc = [[self.alloca(self.vec, f"acc.{px}.{v}") for v in range(co.co_vectors)]
                    for px in range(co.max_pixels)]
        if not p.out_blocked:  # the tile transposed, [channel][column], for the epilogue
            res_type = ir.ArrayType(self.scalar, tco * self.columns)
            res_array = self.alloca(res_type, "res")
            res_array.align = SCRATCH_ALIGN
            self.res = b.bitcast(res_array, self.scalar.as_pointer(), name="res.base")
        if self.prepacked:
            b.comment(f"w holds the channel blocks packed at load: [g][block][ci][kd][kh][kw]"
                      f"[{tco}]")
            raw = None
        else:
            packed = self.alloca(I64, "packed")
            b.comment(f"packed weights of one channel block: [ci][kd][kh][kw][{tco}]")
            pack_bytes = -(-co.pack_elements * self.itemsize // SCRATCH_ALIGN) * SCRATCH_ALIGN
            void_ptr = I8.as_pointer()
            aligned_alloc = self.intrinsic("aligned_alloc", void_ptr, [I64, I64])
            free = self.intrinsic("free", ir.VoidType(), [void_ptr])
            raw = b.call(aligned_alloc, [i64(SCRATCH_ALIGN), i64(pack_bytes)], name="scratch")
            with b.if_then(b.icmp_unsigned("==", raw, ir.Constant(void_ptr, None)),
                           likely=False):
                b.ret(i32(1))
            wp = b.bitcast(raw, self.scalar.as_pointer(), name="wp")
            b.store(i64(-1), packed)

        order = [("piece", len(co.pieces)), ("th", p.n_tiles[2]), ("td", p.n_tiles[1])]
        if self.rows_outer:  # threads split the rows (see plan.co.co_rows_outer)
            b.comment("one job = one piece of a row: batch x group x D/H tiles x pieces x"
                      " channel block")
            order = [("tc", p.n_tiles[0])] + order + [("g", p.groups)]
            last = "n"
        elif co.block_outer:  # each thread packs a channel block once per call
            b.comment("one job = one piece of a row: group x channel block x batch x D/H"
                      " tiles x pieces")
            order += [("n", p.batch), ("tc", p.n_tiles[0])]
            last = "g"
        else:
            b.comment("one job = one piece of a row: batch x group x channel block x D/H"
                      " tiles x pieces")
            order += [("tc", p.n_tiles[0]), ("g", p.groups)]
            last = "n"
        with self.loop(job_begin, job_end, "job") as job:
            index = self.split_index(job, order, last)
            n, g, tc, piece = index["n"], index["g"], index["tc"], index["piece"]
            co0 = b.mul(tc, i64(tco), name="co0")
            remaining = b.sub(i64(p.cout_g), co0)
            nco = b.select(b.icmp_signed("<", remaining, i64(tco)), remaining, i64(tco),
                           name="nco")
            block = b.add(b.mul(g, i64(p.n_tiles[0])), tc, name="block")
            if self.prepacked:
                wp = self.element(w, b.mul(block, i64(co.pack_elements)), "wp")
            else:
                with b.if_then(b.icmp_signed("!=", block, b.load(packed))):
                    self._pack(w, g, co0, nco, wp)
                    b.store(block, packed)
            self.next_block = self._next_block(w, job, block, n)

            od0 = b.mul(index["td"], i64(td), name="od0")
            oh0 = b.mul(index["th"], i64(th), name="oh0")
            od_end = self._end(od0, td, od, "od.end")
            oh_end = self._end(oh0, th, oh, "oh.end")
            ow0, base, cls = self._piece(runs, piece)
            channel0 = b.add(b.mul(n, i64(p.groups * p.cin_g)), b.mul(g, i64(p.cin_g)))
            x_group = self.element(x, b.mul(channel0, i64(id_ * ih * iw)), "x.group")
            out = {"n": n, "g": g, "co0": co0, "nco": nco, "ow0": ow0}

            with self.loop(od0, od_end, "od") as od_, self.loop(oh0, oh_end, "oh") as oh_:
                out.update(od=od_, oh=oh_)
                rows = self._row(tap_tables, od_, oh_)
                after = self.function.append_basic_block("piece.done")
                cases = [self.function.append_basic_block(f"class{k}")
                         for k in range(len(co.classes))]
                switch = b.switch(cls, after)
                for k, case in enumerate(cases):
                    switch.add_case(i32(k), case)
                for k, (case, body) in enumerate(zip(cases, co.classes)):
                    b.position_at_end(case)
                    b.comment(f"piece body {k}: {body.size} columns")
                    self._reduce(body, x_group, wp, rows, base, tap_tables)
                    if p.out_blocked:
                        self._epilogue_blocked(body, bias, residual, y, out)
                    else:
                        self._store_tile(body)
                        self._epilogue(body, bias, residual, y, out)
                    b.branch(after)
                b.position_at_end(after)
        if raw is not None:
            b.call(free, [raw])
        b.ret(i32(0))
        return self.function

    def _piece(self, runs: dict, piece):
        """(ow0, base, class) of job piece ``piece``: its run (one compare per run, no
        branch), then its place in the run (plan.co.CoRun)."""
        b = self.b
        run = i64(0)
        for r in self.co.runs[1:]:
            run = b.add(run, b.zext(b.icmp_signed(">=", piece, i64(r.first)), I64))
        nth = b.sub(piece, b.sext(self.table_load(runs["first"], run, "run.first"), I64),
                    name="nth")

        def along(field: str, name: str):
            start = b.sext(self.table_load(runs[field], run, f"{name}.start"), I64)
            step = b.sext(self.table_load(runs[f"{field}_step"], run, f"{name}.step"), I64)
            return b.add(start, b.mul(nth, step), name=name)

        cls = self.table_load(runs["cls"], run, "class")
        return along("ow0", "ow0"), along("base", "base"), cls

    def _next_block(self, w, job, block, n):
        """(pointer, bytes left, lines) of this job's share of the next channel block's
        weights (packed at load, or raw), prefetched into L2 ``lines`` lines per input
        channel while the job computes (see plan.co.co_next_block_lines); None when the
        plan prefetches none."""
        p, b = self.plan, self.b
        lines = self.co.next_block_lines
        if not lines:
            return None
        blocks = p.groups * p.n_tiles[0]
        w_g, w_co = p.weight_strides[:2]
        nxt = b.add(block, i64(1), name="next")
        has_next = b.or_(b.icmp_signed("<", nxt, i64(blocks)),
                         b.icmp_signed("<", b.add(n, i64(1)), i64(p.batch)))
        wrapped = b.srem(nxt, i64(blocks))
        jobs_per_block = p.n_tiles[1] * p.n_tiles[2] * p.n_tiles[3]
        first = b.mul(b.srem(job, i64(jobs_per_block)), i64(p.cin_g * lines * 64))
        if self.prepacked:  # the next block follows this one (the first follows the last)
            start = self.element(w, b.mul(wrapped, i64(self.co.pack_elements)))
            left = b.sub(i64(self.co.pack_elements * self.itemsize), first)
        else:
            ng = b.sdiv(wrapped, i64(p.n_tiles[0]))
            nc0 = b.mul(b.srem(wrapped, i64(p.n_tiles[0])), i64(p.tile_co))
            start = self.element(w, b.add(b.mul(ng, i64(w_g)), b.mul(nc0, i64(w_co))))
            channels = b.sub(i64(p.cout_g), nc0)
            channels = b.select(b.icmp_signed("<", channels, i64(p.tile_co)), channels,
                                i64(p.tile_co))
            left = b.sub(b.mul(channels, i64(w_co * self.itemsize)), first)
        pointer = b.gep(b.bitcast(start, I8.as_pointer()), [first], inbounds=False)
        return pointer, b.select(has_next, left, i64(0), name="next.left"), lines

    def _prefetch_next_block(self, ci) -> None:
        """The input channel ``ci``'s lines of the next block (C: ``pf``, ``pf_left``)."""
        if self.next_block is None:
            return
        b = self.b
        pointer, left, lines = self.next_block
        i8p = I8.as_pointer()
        prefetch = self.intrinsic("llvm.prefetch.p0", ir.VoidType(), [i8p, I32, I32, I32])
        for line in range(lines):
            offset = b.add(b.mul(ci, i64(lines * 64)), i64(line * 64))
            with b.if_then(b.icmp_signed("<", offset, left)):
                b.call(prefetch, [b.gep(pointer, [offset], inbounds=False), i32(0), i32(1),
                                  i32(1)])

    def _end(self, start, tile: int, size: int, name: str):
        """min(start + tile, size): the end of a possibly partial last tile."""
        b = self.b
        end = b.add(start, i64(tile))
        return b.select(b.icmp_signed("<", end, i64(size)), end, i64(size), name=name)

    # -- packing -----------------------------------------------------------------------
    def _pack(self, w, g, co0, nco, wp) -> None:
        """wp[j * TCO + c] = weight of channel co0 + c at reduction step j (j over ci, kd,
        kh, kw), 0 past nco; read as SEGS runs of RUN steps, W_SEG apart (transposed: one
        run of taps per input channel, weight (C_in, C_out/groups, *k))."""
        p, co, b = self.plan, self.co, self.b
        w_g, w_co = p.weight_strides[:2]
        b.comment("pack the channel block: VL x VL blocks (channels x reduction steps)"
                  " transposed in registers")
        w_block = self.element(w, b.add(b.mul(g, i64(w_g)), b.mul(co0, i64(w_co))), "w.block")
        if co.pack_segments == 1:
            self._pack_run(w_block, nco, wp, co.pack_run)
            return
        with self.loop(0, co.pack_segments, "pack.seg") as seg:
            self._pack_run(self.element(w_block, b.mul(seg, i64(co.pack_segment_stride))),
                           nco, self.element(wp, b.mul(seg, i64(co.pack_run * p.tile_co))),
                           co.pack_run)

    def _pack_run(self, src, nco, dst, run: int) -> None:
        """dst[j * TCO + c] = src[c * W_CO + j] for j < run, 0 for channels past nco."""
        p, b, lanes = self.plan, self.b, self.lanes
        tco, w_co = p.tile_co, p.weight_strides[1]
        full = run // lanes * lanes
        for v in range(self.co.co_vectors):
            # channels past the last real one read channel 0 and are replaced by zeros
            valid = [b.icmp_signed("<", i64(v * lanes + i), nco) for i in range(lanes)]
            rows = [self.element(src, b.select(ok, i64((v * lanes + i) * w_co), i64(0)))
                    for i, ok in enumerate(valid)]
            if full:
                with self.loop(0, full // lanes, "pack.j") as step:
                    j = b.mul(step, i64(lanes))
                    vectors = [b.select(ok, self.load_vec(self.element(row, j)), self.zero())
                               for ok, row in zip(valid, rows)]
                    for i, value in enumerate(self.transpose(vectors)):
                        target = b.add(b.mul(b.add(j, i64(i)), i64(tco)), i64(v * lanes))
                        b.store(value, self._vector_at(dst, target), align=self.vector_align)
            for j in range(full, run):  # fewer than VL steps left: element by element
                for i, (ok, row) in enumerate(zip(valid, rows)):
                    value = b.select(ok, b.load(self.element(row, i64(j))),
                                     ir.Constant(self.scalar, 0.0))
                    b.store(value, self.element(dst, i64(j * tco + v * lanes + i)))

    def transpose(self, rows: list) -> list:
        """The VL x VL matrix held in ``rows`` (vectors), transposed with shuffles."""
        rows = list(rows)
        for _, ops in transpose_shuffles(self.lanes):
            new = list(rows)
            for i, j, mask_a, mask_b in ops:
                new[i] = self.b.shuffle_vector(rows[i], rows[j], ir.Constant(self.ivec, mask_a))
                new[j] = self.b.shuffle_vector(rows[i], rows[j], ir.Constant(self.ivec, mask_b))
            rows = new
        return rows

    def _vector_at(self, base, offset):
        return self.b.bitcast(self.element(base, offset), self.vec.as_pointer())

    # -- one piece ---------------------------------------------------------------------
    def _tap_tables(self) -> dict:
        """The tables that say which (kd, kh) taps an output row runs: the folded D and H
        index tables (explicit rows, see plan.base.FoldedTable), or (transposed) the
        useful taps per pair of their explicit rows (plan.co.CoRowTaps)."""
        co = self.co
        fold_d, fold_h = co.folds
        if co.row_taps is None:
            return {"d": self.constant_table("tab_d", sum(fold_d.rows, []), I32),
                    "h": self.constant_table("tab_h", sum(fold_h.rows, []), I32)}
        lists = co.row_taps.lists
        width = max(1, max(len(r) for r in lists))
        padded = [list(r) + [(0, 0)] * (width - len(r)) for r in lists]
        return {"count": self.constant_table("row_taps", [len(r) for r in lists], I32),
                "width": width,
                "x": self.constant_table("tap_x", [x for r in padded for x, _ in r], I32),
                "w": self.constant_table("tap_w", [w for r in padded for _, w in r], I32)}

    def _row(self, tables: dict, od_, oh_) -> dict:
        """What output row (od, oh) reads, once per row: its explicit rows of the folded D
        and H tables and what to add to their entries, or (transposed) its tap list and
        the input offset added to every entry of it."""
        p, b = self.plan, self.b
        fold_d, fold_h = self.co.folds
        rd, add_d = self.fold_row(fold_d, od_)
        rh, add_h = self.fold_row(fold_h, oh_)
        if "count" not in tables:
            return {"rd": rd, "rh": rh, "add_d": add_d, "add_h": add_h}
        ih, iw = p.in_size[1:]
        pattern = b.add(b.mul(rd, i64(len(fold_h.rows))), rh, name="pattern")
        shift = b.mul(b.add(b.mul(b.sext(add_d, I64), i64(ih)), b.sext(add_h, I64)), i64(iw),
                      name="row.shift")
        return {"count": b.sext(self.table_load(tables["count"], pattern, "row.taps"), I64),
                "first": b.mul(pattern, i64(tables["width"]), name="tap.first"),
                "shift": shift}

    def _reduce(self, body: CoClass, x_group, wp, rows: dict, base, tables: dict) -> None:
        """The register tile of one piece: over the group's input channels and the taps."""
        p, b = self.plan, self.b
        kd_n, kh_n, kw_n = p.kernel
        id_, ih, iw = p.in_size
        plane = id_ * ih * iw
        tco = p.tile_co
        for px in range(body.size):
            for slot in self.acc[px]:
                b.store(self.zero(), slot)
        b.comment("reduction over the group's input channels and the kernel taps")
        if "count" in tables:  # transposed: the row's useful (kd, kh) taps
            count, first = rows["count"], rows["first"]
            row_base = b.add(base, rows["shift"], name="row.base")
        with self.loop(0, p.cin_g, "ci") as ci:
            if p.in_blocked:  # channel ci: lane ci % VL of block ci / VL
                lanes = self.lanes
                xc = self.element(x_group, b.add(b.mul(b.udiv(ci, i64(lanes)),
                                                       i64(plane * lanes)),
                                                 b.urem(ci, i64(lanes))), "xc")
            else:
                xc = self.element(x_group, b.mul(ci, i64(plane)), "xc")
            wc = self.element(wp, b.mul(ci, i64(kd_n * kh_n * kw_n * tco)), "wc")
            self._prefetch_next_block(ci)
            if "count" in tables:
                with self.loop(0, count, "t") as t:
                    index = b.add(first, t)
                    x_offset = b.sext(self.table_load(tables["x"], index, "tap.x"), I64)
                    xr = self.element(xc, b.mul(b.add(x_offset, row_base), i64(self.xs)),
                                      "xr")
                    if not p.in_blocked:  # blocked: the next channels share the row's lines
                        self._prefetch_row(xr, body)
                    w_offset = b.sext(self.table_load(tables["w"], index, "tap.w"), I64)
                    self._taps(body, xr, self.element(wc, w_offset, "wt"))
            else:
                d_first = b.mul(rows["rd"], i64(kd_n))
                h_first = b.mul(rows["rh"], i64(kh_n))
                with self.loop(0, kd_n, "kd") as kd:
                    in_d = self.table_load(tables["d"], b.add(d_first, kd), "in.d")
                    with b.if_then(b.icmp_signed(">=", in_d, i32(0))):
                        in_d = b.sext(b.add(in_d, rows["add_d"]), I64)
                        with self.loop(0, kh_n, "kh") as kh:
                            in_h = self.table_load(tables["h"], b.add(h_first, kh), "in.h")
                            with b.if_then(b.icmp_signed(">=", in_h, i32(0))):
                                in_h = b.sext(b.add(in_h, rows["add_h"]), I64)
                                row = b.add(b.mul(b.add(b.mul(in_d, i64(ih)), in_h), i64(iw)),
                                            base)
                                wt = self.element(wc, b.mul(b.add(b.mul(kd, i64(kh_n)), kh),
                                                            i64(kw_n * tco)), "wt")
                                self._taps(body, self.element(xc, b.mul(row, i64(self.xs)),
                                                              "xr"), wt)

    def _prefetch_row(self, xr, body: CoClass) -> None:
        """Prefetch the piece's input columns ``co_tiles.prefetch_channels`` input channels ahead:
        channels are planes apart, too far for the hardware prefetcher (the C template's
        transposed plan does the same). A prefetch past the input does not fault."""
        b = self.b
        i8p = I8.as_pointer()
        prefetch = self.intrinsic("llvm.prefetch.p0", ir.VoidType(), [i8p, I32, I32, I32])
        ahead = self.co.prefetch_channels * self.plan.in_size[0] * self.plan.in_size[1] \
            * self.plan.in_size[2]
        span = 1 + max((off for t in body.taps for _, off in t.pixels), default=0)
        for extra in (0, span - 1) if span > 1 else (0,):
            address = b.gep(xr, [i64(ahead + extra)], inbounds=False)
            b.call(prefetch, [b.bitcast(address, i8p), i32(0), i32(3), i32(1)])

    def _taps(self, body: CoClass, xr, wt) -> None:
        """The kw taps of one (kd, kh) tap: per tap the weight vectors, then one broadcast
        input per column that reads something into an FMA per channel vector."""
        b = self.b
        fma = self.vector_intrinsic("fma", 3)
        share = self.co.share_inputs[self.co.classes.index(body)]  # see plan.co.co_share_inputs
        for tap in body.taps:
            if not tap.pixels:
                continue
            b.comment(f"kw = {tap.kw}: {len(tap.pixels)} columns")
            weights = [b.load(self._vector_at(wt, i64(off)), align=self.weight_align)
                       for off in tap.weight_offsets]
            for px, offset in tap.pixels:
                xv = self.splat(b.load(self.element(xr, i64(offset * self.xs))))
                for v, weight in enumerate(weights):
                    slot = self.acc[px][v]
                    b.store(b.call(fma, [weight, xv, b.load(slot)]), slot)
            if not share:
                # taps share input columns: an empty asm hides that xr is unchanged, so
                # LLVM reloads them instead of holding them in registers across taps
                # (the accumulators need those)
                xr = b.asm(ir.FunctionType(xr.type, [xr.type]), "", "=r,0", [xr], False,
                           name="xr.next")

    def _store_tile(self, body: CoClass) -> None:
        """The tile transposed into res[channel][column], VL x VL blocks in registers."""
        b, lanes = self.b, self.lanes
        for v in range(self.co.co_vectors):
            for c0 in range(0, body.size, lanes):
                rows = [b.load(self.acc[c0 + i][v]) if c0 + i < body.size else self.zero()
                        for i in range(lanes)]
                for i, value in enumerate(self.transpose(rows)):
                    target = i64((v * lanes + i) * self.columns + c0)
                    b.store(value, self._vector_at(self.res, target), align=self.vector_align)

    def _epilogue(self, body: CoClass, bias, residual, y, out: dict) -> None:
        """Bias, residual, activation and a masked store of each channel's columns (one
        stride phase, columns STEP apart: stored column by column)."""
        p, b, lanes = self.plan, self.b, self.lanes
        od_n, oh_n, ow_n = p.out_size
        spec = p.spec
        step = self.co.step
        if step == 1:
            store = self.intrinsic(f"llvm.masked.store.v{lanes}{self.suffix}.p0",
                                   ir.VoidType(),
                                   [self.vec, self.vec.as_pointer(), I32, self.mask_type])
            load = self.intrinsic(f"llvm.masked.load.v{lanes}{self.suffix}.p0", self.vec,
                                  [self.vec.as_pointer(), I32, self.mask_type, self.vec])
        b.comment(f"epilogue: bias, {'residual, ' if residual is not None else ''}"
                  f"{spec.activation or 'no activation'}, store")
        row_offset = b.add(b.mul(b.add(b.mul(out["od"], i64(oh_n)), out["oh"]), i64(ow_n)),
                           out["ow0"])
        with self.loop(0, out["nco"], "co") as co:
            channel = b.add(b.mul(out["g"], i64(p.cout_g)), b.add(out["co0"], co), name="c")
            bv = self.splat(b.load(self.element(bias, channel))) if spec.bias else self.zero()
            start = b.add(b.mul(b.add(b.mul(out["n"], i64(p.groups * p.cout_g)), channel),
                                i64(od_n * oh_n * ow_n)), row_offset)
            tile_row = b.mul(co, i64(self.columns))
            for c0 in range(0, body.size, lanes):
                count = min(lanes, body.size - c0)
                mask = ir.Constant(self.mask_type, [lane < count for lane in range(lanes)])
                value = b.load(self._vector_at(self.res, b.add(tile_row, i64(c0))),
                               align=self.vector_align)
                value = b.fadd(value, bv)
                if step > 1:  # one stride phase: columns STEP apart, lane by lane
                    offsets = [b.add(start, i64((c0 + lane) * step)) for lane in range(count)]
                    if residual is not None:
                        value = b.fadd(value, self._gather_lanes(residual, offsets))
                    value = self.activation(value, spec.activation, spec.activation_args)
                    for lane, offset in enumerate(offsets):
                        b.store(b.extract_element(value, i32(lane)), self.element(y, offset))
                    continue
                offset = b.add(start, i64(c0))
                if residual is not None:
                    value = b.fadd(value, b.call(load, [self._vector_at(residual, offset),
                                                        i32(self.itemsize), mask, self.zero()]))
                value = self.activation(value, spec.activation, spec.activation_args)
                b.call(store, [value, self._vector_at(y, offset), i32(self.itemsize), mask])

    def _epilogue_blocked(self, body: CoClass, bias, residual, y, out: dict) -> None:
        """The blocked output: per pixel and channel vector, bias, residual, activation
        and one vector store of the accumulator as it is (a pixel's VL channels of a
        block are contiguous; nco and co0 are multiples of VL, convgen.plan.layout)."""
        p, b, lanes = self.plan, self.b, self.lanes
        od_n, oh_n, ow_n = p.out_size
        spec = p.spec
        b.comment(f"epilogue (blocked output): bias, "
                  f"{'residual, ' if residual is not None else ''}"
                  f"{spec.activation or 'no activation'}, store")
        row_pixel = b.add(b.mul(b.add(b.mul(out["od"], i64(oh_n)), out["oh"]), i64(ow_n)),
                          out["ow0"], name="pix0")
        for v in range(self.co.co_vectors):
            channel = b.add(b.mul(out["g"], i64(p.cout_g)),
                            b.add(out["co0"], i64(v * lanes)), name="c")
            start = b.mul(b.add(b.mul(out["n"], i64(p.groups * p.cout_g)), channel),
                          i64(od_n * oh_n * ow_n))
            # the first vector always holds channels (nco >= VL); the others only while
            # a full block's channels remain
            guard = b.if_then(b.icmp_signed("<", i64(v * lanes), out["nco"])) if v \
                else contextlib.nullcontext()
            with guard:
                bv = self.load_vec(self.element(bias, channel)) if spec.bias else None
                for px in range(body.size):
                    pixel = b.add(row_pixel, i64(px * self.co.step))
                    offset = b.add(start, b.mul(pixel, i64(lanes)))
                    value = b.load(self.acc[px][v])
                    if bv is not None:
                        value = b.fadd(value, bv)
                    if residual is not None:
                        value = b.fadd(value, self.load_vec(self.element(residual, offset)))
                    value = self.activation(value, spec.activation, spec.activation_args)
                    self.store_vec(value, self.element(y, offset))

    def _gather_lanes(self, base, offsets: list):
        """A vector of base[offsets[lane]], zeros past the listed lanes."""
        value = self.zero()
        for lane, offset in enumerate(offsets):
            value = self.b.insert_element(value, self.b.load(self.element(base, offset)),
                                          i32(lane))
        return value
