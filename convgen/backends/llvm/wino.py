"""The transform-GEMM plans (method "winograd" and "gemm") as LLVM IR.

The C template's plan (templates/c/conv_wino_function.j2, convgen/winograd.py) built
with llvmlite.ir, with three simplifications that keep the IR short:

- every input patch element is a masked gather through a table of offsets per tile
  vector and patch element (-1: a zero, which is what masks it off), which each job
  computes on the stack from its block's tile indices (convgen.plan.winograd.tile_origin)
  and the plan's row and column maps (SourceMap: explicit borders, affine between), so
  zero, reflect, replicate and circular padding and dilation take the same path and
  the module holds no per-block table (C gathers zero-padded patches through offsets and
  border masks, and stages a padded copy for the other modes). A 1x1 GEMM reads its
  input in place with vector loads (stride 1, no padding) or gathers it through such a
  table of its block's pixels;
- a block's outputs are written straight to the output with the epilogue (bias,
  residual, activation): masked scatters through a per-job table of output offsets for
  Winograd,
  masked vector stores for the GEMM (C stores tile-major, then copies out by rows);
- a blocked input or output (``plan.in_blocked`` / ``plan.out_blocked``, convgen.plan.layout:
  (N, C / VL, H, W, VL), method "winograd" only) takes the same tables, scaled: channel c
  starts at ``(c / VL) * plane * VL + c % VL`` and its pixels are VL elements apart, so
  the gathers and scatters read and write it in place (C scales its gather tables the
  same way, and its staged copies read and write with a stride of VL); a blocked output
  whose jobs cover all output channels (co_parts == 1) instead goes VL channels at a
  time through a stack scratch and a VL x VL shufflevector transpose, and stores each
  pixel's VL channels as one vector (as C's ``transpose_out``), with no per-lane scatters;
- threads (``Schedule.threads > 1`` with the GNU OpenMP runtime loadable) share the
  (image, block, output-channel part) jobs through ``GOMP_loop_dynamic_*`` in one
  ``GOMP_parallel`` region; a kernel given raw weights first transforms them into a
  shared U (each thread a share of the output channels, then ``GOMP_barrier``).

The weights, the scratch (U and each thread's V and M blocks) come from one
``aligned_alloc`` per call. The GEMM's register tile, its packed-U layout for weights
prepared at load (convgen.plan.winograd.transform_weights) and the output-channel parts are
the C plan's.

Entry point, shared with the other plans and the C backend:
``i32 SYMBOL(T* x, T* w, T* b, [T* r,] T* y, i64 job_begin, i64 job_end)``; a job is one
(image, group) as in C.
"""

from __future__ import annotations

from llvmlite import ir

from convgen.backends.llvm.ir import I8, I32, I64, IRFunction, i32, i64
from convgen.plan.base import Plan
from convgen.backends.llvm.build import uses_openmp
from convgen.plan.winograd import SourceMap, WinogradPlan

SCRATCH_ALIGN = 64  # bytes


class WinoKernelIR(IRFunction):
    """Builds one method "winograd" / "gemm" convolution function into a module."""

    def __init__(self, plan: Plan, module: ir.Module, name: str | None = None,
                 residual: bool = False, internal: bool = False):
        wp = plan.kind
        assert isinstance(wp, WinogradPlan), wp
        names = ("x", "w", "b", "r", "y") if residual else ("x", "w", "b", "y")
        super().__init__(module, name or plan.symbol, plan.c_type, wp.lanes, names,
                         ("job_begin", "job_end"), internal)
        self.plan, self.wp = plan, wp
        self.residual = residual
        self.gemm = wp.method == "gemm"
        self.pretransformed = plan.prepared_weights  # w holds U (Winograd only)
        self.transform = not self.gemm and not self.pretransformed  # U built per call
        self.omp = uses_openmp(plan)
        self.threads = plan.threads if self.omp else 1
        self.rows = min(wp.co_rows, plan.cout_g)
        self.ptr = self.scalar.as_pointer()
        xi = wp.products
        cin, cout = plan.cin_g, plan.cout_g
        self.u_size = plan.groups * xi * cout * cin if self.transform else 0
        tb = wp.block_tiles
        self.vb_size = xi * cin * tb
        self.mb_size = 0 if self.gemm else xi * cout * tb
        self.thread_size = -(-(self.vb_size + self.mb_size) // 16) * 16
        self.ctx_type = ir.LiteralStructType([self.ptr] * 7 + [I64, I64])
        self.edge_tables: dict[str, ir.GlobalVariable] = {}
        self.splat_constants: dict[tuple[str, float], ir.Instruction] = {}

    # -- entry point -----------------------------------------------------------------
    def build(self) -> ir.Function:
        b = self.b
        args = self.function.args
        if self.residual:
            x, w, bias, residual, y, job_begin, job_end = args
        else:
            (x, w, bias, y, job_begin, job_end), residual = args, None
        null = ir.Constant(self.ptr, None)
        wp, p = self.wp, self.plan
        if self.gemm:
            b.comment("1x1 convolution as a GEMM over the output pixels")
        else:
            (m_h, m_w), (k_h, k_w) = wp.tile, p.kernel[1:]
            b.comment(f"Winograd F({m_h}x{m_w}, {k_h}x{k_w})"
                      + ("; w holds U, transformed at load" if self.pretransformed else ""))
        b.comment(f"jobs: images x {wp.blocks} block(s) of {wp.vectors} x {self.lanes} tiles "
                  f"x {wp.co_parts} part(s) of {wp.co_part} output channels; "
                  + (f"{self.threads} OpenMP threads" if self.omp else "1 thread"))
        worker = self._worker()
        u_size = -(-self.u_size // 16) * 16
        elements = u_size + self.thread_size * self.threads
        void_ptr = I8.as_pointer()
        aligned_alloc = self.intrinsic("aligned_alloc", void_ptr, [I64, I64])
        free = self.intrinsic("free", ir.VoidType(), [void_ptr])
        nbytes = -(-max(elements, 1) * self.itemsize // SCRATCH_ALIGN) * SCRATCH_ALIGN
        b.comment(f"scratch: U ({self.u_size}), then per thread V ({self.vb_size}) and M "
                  f"({self.mb_size}) blocks for {self.threads} thread(s)")
        raw = b.call(aligned_alloc, [i64(SCRATCH_ALIGN), i64(nbytes)], name="scratch")
        with b.if_then(b.icmp_unsigned("==", raw, ir.Constant(void_ptr, None)), likely=False):
            b.ret(i32(1))
        scratch = b.bitcast(raw, self.ptr)
        ctx = self.alloca(self.ctx_type, "ctx")
        values = [x, w, bias, residual if residual is not None else null, y, scratch,
                  self.element(scratch, i64(u_size)), job_begin, job_end]
        for k, value in enumerate(values):
            b.store(value, b.gep(ctx, [i32(0), i32(k)]))
        ctx_ptr = b.bitcast(ctx, void_ptr)
        if self.omp:
            gomp = self.intrinsic("GOMP_parallel", ir.VoidType(),
                                  [worker.type, void_ptr, I32, I32])
            b.call(gomp, [worker, ctx_ptr, i32(self.threads), i32(0)])
        else:
            b.call(worker, [ctx_ptr])
        b.call(free, [raw])
        b.ret(i32(0))
        return self.function

    # -- the worker: each thread's share -----------------------------------------------
    def _worker(self) -> ir.Function:
        """``void worker(ctx*)``: the body of the parallel region (or the serial call)."""
        with self.outlined(f"{self.name}.worker") as function:
            self._worker_body(function)
        return function

    def _worker_body(self, function: ir.Function) -> None:
        b = self.b
        ctx = b.bitcast(function.args[0], self.ctx_type.as_pointer())
        field = [b.load(b.gep(ctx, [i32(0), i32(k)])) for k in range(9)]
        x, w, bias, residual, y, u_all, per_thread, job_begin, job_end = field
        if not self.residual:
            residual = None
        if self.omp:
            thread = b.sext(b.call(self.intrinsic("omp_get_thread_num", I32, []), []), I64)
            threads = b.sext(b.call(self.intrinsic("omp_get_num_threads", I32, []), []), I64)
        else:
            thread, threads = i64(0), i64(1)
        if self.transform:
            self._transform_weights(w, u_all, thread, threads)
            if self.omp:
                b.call(self.intrinsic("GOMP_barrier", ir.VoidType(), []), [])
        vb = self.element(per_thread, b.mul(thread, i64(self.thread_size)), "vb")
        mb = self.element(vb, i64(self.vb_size), "mb")
        per_image = self.wp.blocks * self.wp.co_parts
        jobs = b.mul(b.sub(job_end, job_begin), i64(per_image), name="jobs")
        weights = u_all if self.transform else w

        def run(job):
            digits = self.split_index(job, [("part", self.wp.co_parts),
                                            ("blk", self.wp.blocks)], "image")
            image = b.add(job_begin, digits["image"], name="image")
            self._job(x, weights, bias, residual, y, vb, mb, image, digits["blk"],
                      digits["part"])

        if self.omp:
            with self.dynamic_loop(0, jobs, 1) as job:  # one job at a time
                run(job)
        else:
            with self.loop(0, jobs, "job") as job:
                run(job)
        b.ret_void()

    # -- vectors through offset tables ---------------------------------------------------
    def _table_vector(self, table, index):
        """<VL x i32> at table[index ...] (index: i64 element offset)."""
        pointer = self.b.gep(table, [i64(0), index], inbounds=True)
        return self.b.load(self.b.bitcast(pointer, self.ivec.as_pointer()), align=4)

    def _splat_constant(self, value: float):
        """``value`` in every lane: one splat per function and value, in its entry block
        (a vector constant spells every lane out wherever it is used, and the transforms
        use their few coefficients hundreds of times)."""
        key = (self.function.name, value)
        if key not in self.splat_constants:
            entry = self.alloca_builder
            undef = ir.Constant(self.vec, ir.Undefined)
            one = entry.insert_element(undef, ir.Constant(self.scalar, value), i32(0))
            self.splat_constants[key] = entry.shuffle_vector(
                one, undef, ir.Constant(ir.VectorType(I32, self.lanes), None))
        return self.splat_constants[key]

    def _combine(self, matrix, sources):
        """[sum_j matrix[i][j] * sources[j] for each row i], zeros left out."""
        b, out = self.b, []
        for row in matrix:
            total = None
            for coef, source in zip(row, sources):
                if coef == 0:
                    continue
                value = float(coef)
                negative = value < 0
                term = source if abs(value) == 1.0 else b.fmul(self._splat_constant(abs(value)),
                                                               source)
                if total is None:
                    total = b.fneg(term) if negative else term
                else:
                    total = b.fsub(total, term) if negative else b.fadd(total, term)
            out.append(total if total is not None else self.zero())
        return out

    def _two_pass(self, first, second, src):
        """dst[a][c] = sum_j second[c][j] * (sum_i first[a][i] * src[i][j])."""
        rows_in, cols_in = len(src), len(src[0])
        columns = [self._combine(first, [src[i][j] for i in range(rows_in)])
                   for j in range(cols_in)]  # columns[j][a]
        rows_out = len(first)
        return [self._combine(second, [columns[j][a] for j in range(cols_in)])
                for a in range(rows_out)]

    # -- a block's offset tables, computed from its tile indices --------------------------
    def _source(self, smap: SourceMap, j, name: str):
        """The input row (column, i64) at padded row (column) ``j`` (i64, in [0,
        smap.length)) of ``smap``, -1 for a zero: affine inside [a, b), else looked up in
        the map's border table."""
        b = self.b
        below = b.icmp_signed("<", j, i64(smap.a))
        inside = b.and_(b.not_(below), b.icmp_signed("<", j, i64(smap.b)))
        affine = b.sub(b.mul(j, i64(smap.stride)), i64(smap.shift))
        if all(e < 0 for e in smap.edges):  # zero padding: no table
            return b.select(inside, affine, i64(-1), name=name)
        edges = self.edge_tables.get(name)
        if edges is None:  # the borders, then a spare 0 read for the interior
            edges = self.edge_tables[name] = self.constant_table(name, [*smap.edges, 0], I32)
        index = b.select(below, j, b.add(j, i64(smap.a - smap.b)))
        index = b.select(inside, i64(len(smap.edges)), index)
        edge = b.sext(self.table_load(edges, index, name + ".edge"), I64)
        return b.select(inside, affine, edge, name=name)

    def _tile_origin(self, t):
        """(row, column) i64 of tile ``t``'s first output (plan.winograd.tile_origin)."""
        wp, b = self.wp, self.b
        grid_w = i64(wp.grid[1])

        def origin(index, tile, dilation):
            if dilation == 1:
                return b.mul(index, i64(tile))
            return b.add(b.urem(index, i64(dilation)),
                         b.mul(b.udiv(index, i64(dilation)), i64(dilation * tile)))

        return (origin(b.udiv(t, grid_w), wp.tile[0], wp.dilation[0]),
                origin(b.urem(t, grid_w), wp.tile[1], wp.dilation[1]))

    def _lane_tile(self, blk, lane):
        """(tile index, clamped to the last tile; i1 whether it holds a tile) of ``lane``
        of block ``blk`` (i64 both)."""
        b = self.b
        t = b.add(b.mul(blk, i64(self.wp.block_tiles)), lane)
        valid = b.icmp_signed("<", t, i64(self.wp.tiles))
        return b.select(valid, t, i64(self.wp.tiles - 1)), valid

    def _patch_offsets(self, blk):
        """The block's gather table on the stack, [tile vector][patch row][patch column]
        [lane] (i32): the element of an input channel the tile's patch element reads, -1
        for a zero (padding, or a lane past the last tile)."""
        p, wp, b = self.plan, self.wp, self.b
        (a_h, a_w), (d_h, d_w), vl = wp.alpha, wp.dilation, self.lanes
        scale = p.vector_lanes if p.in_blocked else 1
        table = self.alloca(ir.ArrayType(I32, wp.block_tiles * a_h * a_w), "in.off")
        with self.loop(0, wp.block_tiles, "in.lane") as lane:
            t, valid = self._lane_tile(blk, lane)
            r0, c0 = self._tile_origin(t)
            rows = [self._source(wp.src_rows, b.add(r0, i64(i * d_h)), "src_rows")
                    for i in range(a_h)]
            cols = [self._source(wp.src_cols, b.add(c0, i64(j * d_w)), "src_cols")
                    for j in range(a_w)]
            row_ok = [b.and_(valid, b.icmp_signed(">=", r, i64(0))) for r in rows]
            col_ok = [b.icmp_signed(">=", c, i64(0)) for c in cols]
            row_at = [b.mul(r, i64(p.in_size[2] * scale)) for r in rows]
            col_at = [b.mul(c, i64(scale)) for c in cols]
            first = b.add(b.mul(b.udiv(lane, i64(vl)), i64(a_h * a_w * vl)),
                          b.urem(lane, i64(vl)))
            for i in range(a_h):
                for j in range(a_w):
                    at = b.select(b.and_(row_ok[i], col_ok[j]), b.add(row_at[i], col_at[j]),
                                  i64(-1))
                    slot = b.add(first, i64((i * a_w + j) * vl))
                    b.store(b.trunc(at, I32), b.gep(table, [i64(0), slot], inbounds=True))
        return table

    def _output_offsets(self, blk):
        """The block's scatter table on the stack, [tile vector][tile row][tile column]
        [lane] (i32): the element of an output channel the tile's output goes to, -1 past
        the output or the last tile."""
        p, wp, b = self.plan, self.wp, self.b
        (m_h, m_w), (d_h, d_w), vl = wp.tile, wp.dilation, self.lanes
        out_h, out_w = p.out_size[1:]
        scale = p.vector_lanes if p.out_blocked else 1
        table = self.alloca(ir.ArrayType(I32, wp.block_tiles * m_h * m_w), "out.off")
        with self.loop(0, wp.block_tiles, "out.lane") as lane:
            t, valid = self._lane_tile(blk, lane)
            r0, c0 = self._tile_origin(t)
            rows = [b.add(r0, i64(a * d_h)) for a in range(m_h)]
            cols = [b.add(c0, i64(c * d_w)) for c in range(m_w)]
            row_ok = [b.and_(valid, b.icmp_signed("<", r, i64(out_h))) for r in rows]
            col_ok = [b.icmp_signed("<", c, i64(out_w)) for c in cols]
            first = b.add(b.mul(b.udiv(lane, i64(vl)), i64(m_h * m_w * vl)),
                          b.urem(lane, i64(vl)))
            for a in range(m_h):
                for c in range(m_w):
                    at = b.mul(b.add(b.mul(rows[a], i64(out_w)), cols[c]), i64(scale))
                    at = b.select(b.and_(row_ok[a], col_ok[c]), at, i64(-1))
                    slot = b.add(first, i64((a * m_w + c) * vl))
                    b.store(b.trunc(at, I32), b.gep(table, [i64(0), slot], inbounds=True))
        return table

    def _pixel_offsets(self, blk):
        """A strided or padded GEMM's gather table on the stack, [lane] (i32): the input
        pixel the block's output pixel reads, -1 for a zero (padding, or past the last
        pixel)."""
        p, wp, b = self.plan, self.wp, self.b
        out_w = p.out_size[2]
        table = self.alloca(ir.ArrayType(I32, wp.block_tiles), "in.off")
        with self.loop(0, wp.block_tiles, "in.lane") as lane:
            t, valid = self._lane_tile(blk, lane)
            row = self._source(wp.src_rows, b.udiv(t, i64(out_w)), "src_rows")
            col = self._source(wp.src_cols, b.urem(t, i64(out_w)), "src_cols")
            ok = b.and_(valid, b.and_(b.icmp_signed(">=", row, i64(0)),
                                      b.icmp_signed(">=", col, i64(0))))
            at = b.select(ok, b.add(b.mul(row, i64(p.in_size[2])), col), i64(-1))
            b.store(b.trunc(at, I32), b.gep(table, [i64(0), lane], inbounds=True))
        return table

    # -- 1. the weights: U[g][xi][co][ci] = (G g G^T)[xi], VL input channels at a time ----
    def _transform_weights(self, w, u, thread, threads) -> None:
        p, wp, b = self.plan, self.wp, self.b
        k_h, k_w = p.kernel[1], p.kernel[2]
        taps = k_h * k_w
        cin, cout, xi_n = p.cin_g, p.cout_g, wp.products
        total = p.groups * cout
        lo = b.sdiv(b.mul(i64(total), thread), threads)
        hi = b.sdiv(b.mul(i64(total), b.add(thread, i64(1))), threads)
        lane_stride = ir.Constant(self.ivec, [lane * taps for lane in range(self.lanes)])
        b.comment("U = G g G^T, this thread's share of the output channels")
        with self.loop(lo, hi, "gc") as gc:
            group = b.sdiv(gc, i64(cout))
            co = b.srem(gc, i64(cout))
            u_row = self.element(u, b.add(b.mul(b.mul(group, i64(xi_n * cout)), i64(cin)),
                                          b.mul(co, i64(cin))))
            with self.loop(0, -(-cin // self.lanes), "cv") as cv:
                ci0 = b.mul(cv, i64(self.lanes))
                mask = self.lane_mask_below(ci0, i64(cin))
                base = self.element(w, b.mul(b.add(b.mul(gc, i64(cin)), ci0), i64(taps)))
                g = [[None] * k_w for _ in range(k_h)]
                for i in range(k_h):
                    for j in range(k_w):
                        tap = ((k_h - 1 - i) * k_w + (k_w - 1 - j)) if p.spec.flip \
                            else i * k_w + j
                        pointers, _ = self.offset_pointers(self.element(base, i64(tap)), lane_stride)
                        g[i][j] = self.masked_gather(pointers, mask)
                values = self._two_pass(wp.matrices_h[1], wp.matrices_w[1], g)
                for a, row in enumerate(values):
                    for c, value in enumerate(row):
                        xi = a * wp.alpha[1] + c
                        target = self.element(u_row, b.add(i64(xi * cout * cin), ci0))
                        self.masked_store(value, target, mask)

    # -- one job: an image's block of tiles x a part of the output channels ----------------
    def _job(self, x, weights, bias, residual, y, vb, mb, image, blk, part) -> None:
        p, wp, b = self.plan, self.wp, self.b
        cin, cout, xi_n, tb = p.cin_g, p.cout_g, wp.products, wp.block_tiles
        in_plane = p.in_size[1] * p.in_size[2]
        out_plane = p.out_size[1] * p.out_size[2]
        group = b.srem(image, i64(p.groups), name="g")
        co_lo = b.mul(part, i64(wp.co_part), name="co.lo")
        co_end = b.add(co_lo, i64(wp.co_part))
        co_hi = b.select(b.icmp_signed("<", co_end, i64(cout)), co_end, i64(cout), name="co.hi")
        xg = self.element(x, b.mul(image, i64(cin * in_plane)), "x.image")
        yg = self.element(y, b.mul(image, i64(cout * out_plane)), "y.image")
        rg = self.element(residual, b.mul(image, i64(cout * out_plane)), "r.image") \
            if residual is not None else None
        ug = self.element(weights, b.mul(group, i64(xi_n * cout * cin)), "u.group")
        if self.gemm:
            self._gemm_job(xg, ug, bias, rg, yg, vb, group, blk, co_lo, co_hi)
            return
        self._input_transform(xg, vb, blk)
        b.comment(f"{xi_n} GEMMs over the channels: M[xi] = U[xi] V[xi]")
        with self.loop(0, xi_n, "xi") as xi:
            u_xi = self.element(ug, b.mul(xi, i64(cout * cin)))
            v_xi = self.element(vb, b.mul(xi, i64(cin * tb)))
            m_xi = self.element(mb, b.mul(xi, i64(cout * tb)))

            def store(rows, co0, accs, m_xi=m_xi):
                for r in range(rows):
                    row = self.element(m_xi, b.mul(b.add(co0, i64(r)), i64(tb)))
                    for t in range(wp.vectors):
                        self.store_vec(b.load(accs[r][t]), self.element(row, i64(t * self.lanes)))

            self._gemm(u_xi, v_xi, i64(tb), co_lo, co_hi, store)
        self._output_transform(mb, bias, rg, yg, group, blk, co_lo, co_hi)

    def _input_transform(self, xg, vb, blk) -> None:
        """V[xi][ci][tile] = (BT d B)[xi], the patches gathered through the offset table."""
        p, wp, b = self.plan, self.wp, self.b
        (a_h, a_w), tb = wp.alpha, wp.block_tiles
        elements = a_h * a_w
        in_plane = p.in_size[1] * p.in_size[2]
        b.comment("the block's patch offsets, from its tile indices")
        table = self._patch_offsets(blk)
        b.comment("input transform: V = BT d B, patches gathered (-1 offsets: zeros)")
        for tv in range(wp.vectors):
            first = i64(tv * elements * self.lanes)
            with self.loop(0, p.cin_g, f"ci.in{tv}") as ci:
                xc = self._channel(xg, ci, in_plane, p.in_blocked)
                d = [[None] * a_w for _ in range(a_h)]
                for i in range(a_h):
                    for j in range(a_w):
                        offsets = self._table_vector(
                            table, b.add(first, i64((i * a_w + j) * self.lanes)))
                        d[i][j] = self.masked_gather(*self.offset_pointers(xc, offsets))
                v = self._two_pass(wp.matrices_h[2], wp.matrices_w[2], d)
                for a in range(a_h):
                    for c in range(a_w):
                        xi = a * a_w + c
                        target = self.element(vb, b.add(b.mul(b.add(i64(xi * p.cin_g), ci),
                                                              i64(tb)), i64(tv * self.lanes)))
                        self.store_vec(v[a][c], target)

    def _output_transform(self, mb, bias, rg, yg, group, blk, co_lo, co_hi) -> None:
        """Y = AT M A per output channel and tile vector, then the epilogue, scattered."""
        p, wp, b = self.plan, self.wp, self.b
        (m_h, m_w), (a_h, a_w), tb = wp.tile, wp.alpha, wp.block_tiles
        out_plane = p.out_size[1] * p.out_size[2]
        b.comment("the block's output offsets, from its tile indices")
        table = self._output_offsets(blk)
        if self._transposes_output():
            self._output_transform_blocked(mb, bias, rg, yg, group, blk, table)
            return
        b.comment("output transform: Y = AT M A, bias, residual, activation, scattered")
        with self.loop(co_lo, co_hi, "co.out") as co:
            bv = self._bias(bias, group, co)
            yc = self._channel(yg, co, out_plane, p.out_blocked)
            rc = self._channel(rg, co, out_plane, p.out_blocked) if rg is not None else None
            for tv in range(wp.vectors):
                m = [[self.load_vec(self.element(mb, b.add(
                    b.mul(b.add(i64((a * a_w + c) * p.cout_g), co), i64(tb)),
                    i64(tv * self.lanes)))) for c in range(a_w)] for a in range(a_h)]
                out = self._two_pass(wp.matrices_h[0], wp.matrices_w[0], m)
                first = i64(tv * m_h * m_w * self.lanes)
                for a in range(m_h):
                    for c in range(m_w):
                        offsets = self._table_vector(
                            table, b.add(first, i64((a * m_w + c) * self.lanes)))
                        pointers, mask = self.offset_pointers(yc, offsets)
                        value = out[a][c] if bv is None else b.fadd(out[a][c], bv)
                        if rc is not None:
                            value = b.fadd(value, self.masked_gather(self.offset_pointers(rc, offsets)[0],
                                                               mask))
                        value = self.activation(value, p.spec.activation,
                                                p.spec.activation_args)
                        self.masked_scatter(value, pointers, mask)

    def _transposes_output(self) -> bool:
        """Whether the output transform goes through :meth:`_output_transform_blocked`: a
        blocked output, a job covering all the output channels (co_parts == 1), as many
        tile lanes as channels in a block, and the group's channels whole blocks (as the C
        template's ``transpose_out``)."""
        p, wp = self.plan, self.wp
        return (p.out_blocked and wp.co_parts == 1 and wp.lanes == p.vector_lanes
                and p.cout_g % p.vector_lanes == 0)

    def _transpose(self, rows):
        """The VL x VL transpose of ``rows`` (VL vectors of VL lanes), by shufflevectors:
        stage s swaps bit s of the row index with bit s of the lane index."""
        b, n = self.b, len(rows)
        rows = list(rows)
        s = 1
        while s < n:
            low = ir.Constant(self.ivec, [j if j & s == 0 else n + j - s for j in range(n)])
            high = ir.Constant(self.ivec, [j + s if j & s == 0 else n + j for j in range(n)])
            for i in range(n):
                if i & s:
                    continue
                first, second = rows[i], rows[i + s]
                rows[i] = b.shuffle_vector(first, second, low)
                rows[i + s] = b.shuffle_vector(first, second, high)
            s *= 2
        return rows

    def _output_transform_blocked(self, mb, bias, rg, yg, group, blk, table) -> None:
        """The output transform for a blocked output (:meth:`_transposes_output`): VL
        output channels at a time, each channel's Y = AT M A (VL tiles a vector) into a
        stack scratch ts[a * MW + b][channel % VL][tile], then per output pixel (a, b) of
        the tiles a VL x VL transpose, so that each vector is one tile's VL channels: the
        epilogue (bias and residual as vectors, activation) and one masked store (off
        past the output) at the pixel's blocked address; no per-lane scatters."""
        p, wp, b = self.plan, self.wp, self.b
        (m_h, m_w), (a_h, a_w), tb = wp.tile, wp.alpha, wp.block_tiles
        vl, outputs = self.lanes, wp.tile[0] * wp.tile[1]
        out_plane = p.out_size[1] * p.out_size[2]
        ts = b.bitcast(self.alloca(ir.ArrayType(self.vec, outputs * vl), "ts"), self.ptr)
        b.comment(f"output transform: Y = AT M A, {vl} channels at a time, transposed to "
                  f"{vl}-channel vectors per pixel: bias, residual, activation, stored")
        with self.loop(0, p.cout_g // vl, "cb.out") as cb:
            c0 = b.mul(cb, i64(vl), name="c0")
            bv = None
            if p.spec.bias:
                bv = self.load_vec(self.element(bias, b.add(b.mul(group, i64(p.cout_g)), c0)))
            block = b.mul(cb, i64(out_plane * vl))
            ycb = self.element(yg, block, "y.block")
            rcb = self.element(rg, block, "r.block") if rg is not None else None
            for tv in range(wp.vectors):
                with self.loop(0, vl, f"cl.out{tv}") as cl:
                    co = b.add(c0, cl)
                    m = [[self.load_vec(self.element(mb, b.add(
                        b.mul(b.add(i64((a * a_w + c) * p.cout_g), co), i64(tb)),
                        i64(tv * vl)))) for c in range(a_w)] for a in range(a_h)]
                    out = self._two_pass(wp.matrices_h[0], wp.matrices_w[0], m)
                    for a in range(m_h):
                        for c in range(m_w):
                            self.store_vec(out[a][c], self.element(
                                ts, b.mul(b.add(i64((a * m_w + c) * vl), cl), i64(vl))))
                first = i64(tv * outputs * vl)
                with self.loop(0, outputs, f"ab.out{tv}") as ab:
                    rows = [self.load_vec(self.element(ts, b.add(b.mul(ab, i64(vl * vl)),
                                                                 i64(r * vl))))
                            for r in range(vl)]
                    columns = self._transpose(rows)  # columns[t]: tile t's channels
                    offsets = self._table_vector(table, b.add(first, b.mul(ab, i64(vl))))
                    for t in range(vl):
                        offset = b.extract_element(offsets, i32(t))
                        valid = b.icmp_signed(">=", offset, i32(0))
                        at = b.sext(b.select(valid, offset, i32(0)), I64)
                        mask = self.splat(valid, self.mask_type)
                        value = columns[t] if bv is None else b.fadd(columns[t], bv)
                        if rcb is not None:
                            value = b.fadd(value, self.masked_load(self.element(rcb, at), mask))
                        value = self.activation(value, p.spec.activation, p.spec.activation_args)
                        self.masked_store(value, self.element(ycb, at), mask)

    def _channel(self, base, c, plane: int, blocked: bool):
        """&channel c's first element from ``base`` (a group's first channel): c planes on,
        or blocked, lane c % VL of block c / VL (the group's channels are whole blocks)."""
        b = self.b
        if not blocked:
            return self.element(base, b.mul(c, i64(plane)))
        lanes = self.lanes
        return self.element(base, b.add(b.mul(b.udiv(c, i64(lanes)), i64(plane * lanes)),
                                         b.urem(c, i64(lanes))))

    def _bias(self, bias, group, co):
        if not self.plan.spec.bias:
            return None
        channel = self.b.add(self.b.mul(group, i64(self.plan.cout_g)), co)
        return self.splat(self.b.load(self.element(bias, channel)))

    # -- method "gemm": 1x1 convolution as one GEMM over the pixels -------------------------
    def _gemm_job(self, xg, ug, bias, rg, yg, vb, group, blk, co_lo, co_hi) -> None:
        p, wp, b = self.plan, self.wp, self.b
        tb, count = wp.block_tiles, wp.tiles
        in_plane = p.in_size[1] * p.in_size[2]
        out_plane = p.out_size[1] * p.out_size[2]
        p0 = b.mul(blk, i64(tb), name="p0")
        source = self.alloca(self.ptr, "v.base")
        stride = self.alloca(I64, "v.stride")
        full = b.icmp_signed("<=", b.add(p0, i64(tb)), i64(count))
        if wp.staged_in == (0, 0):  # the input in place; the last, partial block copied, zero padded
            with b.if_else(full) as (then, otherwise):
                with then:
                    b.store(self.element(xg, p0), source)
                    b.store(i64(in_plane), stride)
                with otherwise:
                    with self.loop(0, p.cin_g, "ci.copy") as ci:
                        xc = self.element(xg, b.add(b.mul(ci, i64(in_plane)), p0))
                        for t in range(wp.vectors):
                            mask = self.lane_mask_below(b.add(p0, i64(t * self.lanes)),
                                                        i64(count))
                            self.store_vec(self.masked_load(
                                self.element(xc, i64(t * self.lanes)), mask),
                                self.element(vb, b.add(b.mul(ci, i64(tb)),
                                                       i64(t * self.lanes))))
                    b.store(vb, source)
                    b.store(i64(tb), stride)
        else:  # strided or padded: the pixels' inputs gathered through the offset table
            offsets_table = self._pixel_offsets(blk)
            with self.loop(0, p.cin_g, "ci.gather") as ci:
                xc = self.element(xg, b.mul(ci, i64(in_plane)))
                for t in range(wp.vectors):
                    offsets = self._table_vector(offsets_table, i64(t * self.lanes))
                    self.store_vec(self.masked_gather(*self.offset_pointers(xc, offsets)),
                                   self.element(vb, b.add(b.mul(ci, i64(tb)),
                                                          i64(t * self.lanes))))
            b.store(vb, source)
            b.store(i64(tb), stride)

        def store(rows, co0, accs):
            for r in range(rows):
                co = b.add(co0, i64(r))
                bv = self._bias(bias, group, co)
                row = b.add(b.mul(co, i64(out_plane)), p0)
                for t in range(wp.vectors):
                    mask = self.lane_mask_below(b.add(p0, i64(t * self.lanes)), i64(count))
                    offset = b.add(row, i64(t * self.lanes))
                    value = b.load(accs[r][t])
                    if bv is not None:
                        value = b.fadd(value, bv)
                    if rg is not None:
                        value = b.fadd(value, self.masked_load(self.element(rg, offset), mask))
                    value = self.activation(value, p.spec.activation, p.spec.activation_args)
                    self.masked_store(value, self.element(yg, offset), mask)

        self._gemm(ug, b.load(source), b.load(stride), co_lo, co_hi, store)

    # -- the GEMM micro-kernel ---------------------------------------------------------------
    def _gemm(self, u, v, v_stride, co_lo, co_hi, store) -> None:
        """Output channels [co_lo, co_hi) x the block's tiles: register tiles of ``rows``
        channels x ``vectors`` vectors, accumulated over the input channels, handed to
        ``store(rows, co0, accumulators)``. ``u`` holds this product's weights, packed per
        register tile when prepared at load, else (C_out, C_in); ``v`` row ci is at
        ``v + ci * v_stride``."""
        b, rows, cout = self.b, self.rows, self.plan.cout_g
        full_tiles = b.sdiv(b.sub(co_hi, co_lo), i64(rows), name="co.tiles")
        with self.loop(0, full_tiles, "co.tile") as k:
            self._register_tile(u, v, v_stride, b.add(co_lo, b.mul(k, i64(rows))), rows,
                                store)
        rest = cout % rows
        if rest:
            co0 = b.add(co_lo, b.mul(full_tiles, i64(rows)), name="co.rest")
            with b.if_then(b.icmp_signed("<", co0, co_hi)):
                self._register_tile(u, v, v_stride, co0, rest, store)

    def _register_tile(self, u, v, v_stride, co0, rows, store) -> None:
        b, cin, vectors = self.b, self.plan.cin_g, self.wp.vectors
        fma = self.vector_intrinsic("fma", 3)
        accs = [[self.alloca(self.vec, f"acc{rows}.{r}.{t}") for t in range(vectors)]
                for r in range(rows)]
        for row in accs:
            for slot in row:
                b.store(self.zero(), slot)
        if self.pretransformed:  # tile at co0: (C_in, rows) from co0 * C_in
            u_tile = self.element(u, b.mul(co0, i64(cin)))
        with self.loop(0, cin, f"ci.gemm{rows}") as ci:
            v_row = self.element(v, b.mul(ci, v_stride))
            xs = [self.load_vec(self.element(v_row, i64(t * self.lanes))) for t in range(vectors)]
            for r in range(rows):
                if self.pretransformed:
                    weight = self.element(u_tile, b.add(b.mul(ci, i64(rows)), i64(r)))
                else:
                    weight = self.element(u, b.add(b.mul(b.add(co0, i64(r)), i64(cin)), ci))
                s = self.splat(b.load(weight))
                for t in range(vectors):
                    b.store(b.call(fma, [s, xs[t], b.load(accs[r][t])]), accs[r][t])
        store(rows, co0, accs)
