"""The vectorize="co" plan as LLVM IR: lanes hold output channels.

The C template's plan (templates/c/conv_co_function.j2) built with llvmlite.ir. Each
call packs its current block of output channels from the OIHW weights into a scratch
buffer (``aligned_alloc``, one per call, so one per thread: the thread pool and
GOMP_parallel both give each thread its own call) laid out [ci][kd][kh][kw][channels],
VL x VL blocks transposed with shuffles, zeros past the last channel. A job is one
piece of an output row: ``co_vectors`` x ``size`` accumulators (``<16 x float>`` on
AVX-512). Per input channel and tap it loads the weight vectors and broadcasts one input
scalar per column into ``llvm.fma`` (any stride, dilation or padding mode: the planner's
tables say which columns read what; no gathers). Then each VL x VL block of the tile is
transposed in registers and the epilogue (bias, residual, activation) stores whole
column vectors per channel with masks.

Entry point, shared with the other plan and the C backend:
``i32 SYMBOL(T* x, T* w, T* b, [T* r,] T* y, i64 job_begin, i64 job_end)``.
"""

from __future__ import annotations

from llvmlite import ir

from .llvm_ir import I8, I32, I64, IRFunction, i32, i64
from .plan import CoClass, Plan, transpose_shuffles

SCRATCH_ALIGN = 64  # bytes: the packed weights' alignment (one cache line)


class CoKernelIR(IRFunction):
    """Builds one vectorize="co" convolution function into a module."""

    def __init__(self, plan: Plan, module: ir.Module, name: str | None = None,
                 residual: bool = False, internal: bool = False):
        assert plan.vectorize == "co" and plan.co_tiles is not None
        names = ("x", "w", "b", "r", "y") if residual else ("x", "w", "b", "y")
        super().__init__(module, name or plan.symbol, plan.c_type, plan.vector_lanes, names,
                         ("job_begin", "job_end"), internal)
        self.plan = plan
        self.co = plan.co_tiles
        self.residual = residual
        self.vector_align = min(SCRATCH_ALIGN, self.lanes * self.itemsize)
        self.columns = -(-self.co.max_pixels // self.lanes) * self.lanes  # PCOLS

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

        d_table = self.constant_table("tab_d", sum(p.tables[0], []), I32)
        h_table = self.constant_table("tab_h", sum(p.tables[1], []), I32)
        piece_ow0 = self.constant_table("piece_ow0", [q.ow0 for q in co.pieces], I32)
        piece_base = self.constant_table("piece_base", [q.base for q in co.pieces], I32)
        piece_class = self.constant_table("piece_class", [q.cls for q in co.pieces], I32)
        # the register tile: one alloca per (column, channel vector), promoted to registers
        self.acc = [[self.alloca(self.vec, f"acc.{px}.{v}") for v in range(co.co_vectors)]
                    for px in range(co.max_pixels)]
        # the tile transposed, [channel][column], for the epilogue
        res_type = ir.ArrayType(self.scalar, tco * self.columns)
        res_array = self.alloca(res_type, "res")
        res_array.align = SCRATCH_ALIGN
        self.res = b.bitcast(res_array, self.scalar.as_pointer(), name="res.base")
        packed = self.alloca(I64, "packed")

        b.comment(f"packed weights of one channel block: [ci][kd][kh][kw][{tco}]")
        pack_bytes = -(-co.pack_elements * self.itemsize // SCRATCH_ALIGN) * SCRATCH_ALIGN
        void_ptr = I8.as_pointer()
        aligned_alloc = self.intrinsic("aligned_alloc", void_ptr, [I64, I64])
        free = self.intrinsic("free", ir.VoidType(), [void_ptr])
        raw = b.call(aligned_alloc, [i64(SCRATCH_ALIGN), i64(pack_bytes)], name="scratch")
        with b.if_then(b.icmp_unsigned("==", raw, ir.Constant(void_ptr, None)), likely=False):
            b.ret(i32(1))
        wp = b.bitcast(raw, self.scalar.as_pointer(), name="wp")
        b.store(i64(-1), packed)

        b.comment("one job = one piece of a row: batch x group x channel block x D/H tiles"
                  " x pieces")
        with self.loop(job_begin, job_end, "job") as job:
            rest = job
            index = {}
            for name, count in (("piece", len(co.pieces)), ("th", p.n_tiles[2]),
                                ("td", p.n_tiles[1]), ("tc", p.n_tiles[0]), ("g", p.groups)):
                index[name] = b.urem(rest, i64(count), name=name)
                rest = b.udiv(rest, i64(count))
            n, g, tc, piece = rest, index["g"], index["tc"], index["piece"]
            co0 = b.mul(tc, i64(tco), name="co0")
            remaining = b.sub(i64(p.cout_g), co0)
            nco = b.select(b.icmp_signed("<", remaining, i64(tco)), remaining, i64(tco),
                           name="nco")
            block = b.add(b.mul(g, i64(p.n_tiles[0])), tc, name="block")
            with b.if_then(b.icmp_signed("!=", block, b.load(packed))):
                self._pack(w, g, co0, nco, wp)
                b.store(block, packed)

            od0 = b.mul(index["td"], i64(td), name="od0")
            oh0 = b.mul(index["th"], i64(th), name="oh0")
            od_end = self._end(od0, td, od, "od.end")
            oh_end = self._end(oh0, th, oh, "oh.end")
            ow0 = b.sext(self.table_load(piece_ow0, piece, "ow0"), I64)
            base = b.sext(self.table_load(piece_base, piece, "base"), I64)
            cls = self.table_load(piece_class, piece, "class")
            channel0 = b.add(b.mul(n, i64(p.groups * p.cin_g)), b.mul(g, i64(p.cin_g)))
            x_group = self.element(x, b.mul(channel0, i64(id_ * ih * iw)), "x.group")
            out = {"n": n, "g": g, "co0": co0, "nco": nco, "ow0": ow0}

            with self.loop(od0, od_end, "od") as od_, self.loop(oh0, oh_end, "oh") as oh_:
                out.update(od=od_, oh=oh_)
                after = self.function.append_basic_block("piece.done")
                cases = [self.function.append_basic_block(f"class{k}")
                         for k in range(len(co.classes))]
                switch = b.switch(cls, after)
                for k, case in enumerate(cases):
                    switch.add_case(i32(k), case)
                for k, (case, body) in enumerate(zip(cases, co.classes)):
                    b.position_at_end(case)
                    b.comment(f"piece body {k}: {body.size} columns")
                    self._reduce(body, x_group, wp, od_, oh_, base, d_table, h_table)
                    self._store_tile(body)
                    self._epilogue(body, bias, residual, y, out)
                    b.branch(after)
                b.position_at_end(after)
        b.call(free, [raw])
        b.ret(i32(0))
        return self.function

    def _end(self, start, tile: int, size: int, name: str):
        """min(start + tile, size): the end of a possibly partial last tile."""
        b = self.b
        end = b.add(start, i64(tile))
        return b.select(b.icmp_signed("<", end, i64(size)), end, i64(size), name=name)

    # -- packing -----------------------------------------------------------------------
    def _pack(self, w, g, co0, nco, wp) -> None:
        """wp[j * TCO + c] = w[g, co0 + c, j] (j over ci, kd, kh, kw), 0 past nco."""
        p, b, lanes = self.plan, self.b, self.lanes
        tco = p.tile_co
        w_g, w_co = p.weight_strides[:2]
        reduction = p.cin_g * p.kernel[0] * p.kernel[1] * p.kernel[2]
        full = reduction // lanes * lanes
        b.comment("pack the channel block: VL x VL blocks (channels x reduction steps)"
                  " transposed in registers")
        w_block = self.element(w, b.add(b.mul(g, i64(w_g)), b.mul(co0, i64(w_co))), "w.block")
        for v in range(self.co.co_vectors):
            # channels past the last real one read channel 0 and are replaced by zeros
            valid = [b.icmp_signed("<", i64(v * lanes + i), nco) for i in range(lanes)]
            rows = [self.element(w_block, b.select(ok, i64((v * lanes + i) * w_co), i64(0)))
                    for i, ok in enumerate(valid)]
            if full:
                with self.loop(0, full // lanes, "pack.j") as step:
                    j = b.mul(step, i64(lanes))
                    vectors = [b.select(ok, self.load_vec(self.element(row, j)), self.zero())
                               for ok, row in zip(valid, rows)]
                    for i, value in enumerate(self.transpose(vectors)):
                        target = b.add(b.mul(b.add(j, i64(i)), i64(tco)), i64(v * lanes))
                        b.store(value, self._vector_at(wp, target), align=self.vector_align)
            for j in range(full, reduction):  # fewer than VL steps left: element by element
                for i, (ok, row) in enumerate(zip(valid, rows)):
                    value = b.select(ok, b.load(self.element(row, i64(j))),
                                     ir.Constant(self.scalar, 0.0))
                    b.store(value, self.element(wp, i64(j * tco + v * lanes + i)))

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
    def _reduce(self, body: CoClass, x_group, wp, od_, oh_, base, d_table, h_table) -> None:
        """The register tile of one piece: over the group's input channels and the taps."""
        p, b = self.plan, self.b
        kd_n, kh_n, kw_n = p.kernel
        id_, ih, iw = p.in_size
        tco = p.tile_co
        fma = self.vector_intrinsic("fma", 3)
        vectors = self.co.co_vectors
        for px in range(body.size):
            for slot in self.acc[px]:
                b.store(self.zero(), slot)
        b.comment("reduction over the group's input channels and the kernel taps")
        with self.loop(0, p.cin_g, "ci") as ci:
            xc = self.element(x_group, b.mul(ci, i64(id_ * ih * iw)), "xc")
            wc = self.element(wp, b.mul(ci, i64(kd_n * kh_n * kw_n * tco)), "wc")
            with self.loop(0, kd_n, "kd") as kd:
                in_d = self.table_load(d_table, b.add(b.mul(od_, i64(kd_n)), kd), "in.d")
                with b.if_then(b.icmp_signed(">=", in_d, i32(0))):
                    with self.loop(0, kh_n, "kh") as kh:
                        in_h = self.table_load(h_table, b.add(b.mul(oh_, i64(kh_n)), kh), "in.h")
                        with b.if_then(b.icmp_signed(">=", in_h, i32(0))):
                            row = b.add(b.mul(b.add(b.mul(b.sext(in_d, I64), i64(ih)),
                                                    b.sext(in_h, I64)), i64(iw)), base)
                            xr = self.element(xc, row, "xr")
                            wt = self.element(wc, b.mul(b.add(b.mul(kd, i64(kh_n)), kh),
                                                        i64(kw_n * tco)), "wt")
                            for tap in body.taps:
                                if not tap.pixels:
                                    continue
                                b.comment(f"kw = {tap.kw}: {len(tap.pixels)} columns")
                                weights = [b.load(self._vector_at(wt, i64(off)),
                                                  align=self.vector_align)
                                           for off in tap.weight_offsets]
                                for px, offset in tap.pixels:
                                    xv = self.splat(b.load(self.element(xr, i64(offset))))
                                    for v in range(vectors):
                                        slot = self.acc[px][v]
                                        b.store(b.call(fma, [weights[v], xv, b.load(slot)]),
                                                slot)
                                # taps share input columns: an empty asm hides that xr is
                                # unchanged, so LLVM reloads them instead of holding them in
                                # registers across taps (the accumulators need those)
                                xr = b.asm(ir.FunctionType(xr.type, [xr.type]), "", "=r,0",
                                           [xr], False, name="xr.next")

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
        """Bias, residual, activation and a masked store of each channel's columns."""
        p, b, lanes = self.plan, self.b, self.lanes
        od_n, oh_n, ow_n = p.out_size
        spec = p.spec
        store = self.intrinsic(f"llvm.masked.store.v{lanes}{self.suffix}.p0", ir.VoidType(),
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
                offset = b.add(start, i64(c0))
                if residual is not None:
                    value = b.fadd(value, b.call(load, [self._vector_at(residual, offset),
                                                        i32(self.itemsize), mask, self.zero()]))
                value = self.activation(value, spec.activation, spec.activation_args)
                b.call(store, [value, self._vector_at(y, offset), i32(self.itemsize), mask])
