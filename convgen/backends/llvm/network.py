"""Build a lowered network as one LLVM module with one entry point, and JIT it.

Convolutions reuse the single-kernel IR builder (explicit vectors and FMAs) as
internal functions; the other ops are scalar loops built here (one-lane
vectors, so the activation code is shared). The entry point has the C
backend's signature:
``i32 SYMBOL(T** inputs, T** outputs, T* params, T* arena)``.
"""

from __future__ import annotations

import contextlib
import time

import cffi
from llvmlite import ir

from convgen.backends.llvm.build import (build_llvm, data_layout, load_object, openmp_available,
                            target_triple)
from convgen.backends.llvm.ir import I64, IRFunction, i32, i64, scalar_type
from convgen.backends.llvm.render import add_conv_function, new_module, parallel_inside
from convgen.backends.common import comment_text, entry_parameters
from convgen.dtypes import element_type
from convgen.version import __version__
from convgen.graph.lower import Buffer, Lowered, Step
from convgen.log import get_logger

log = get_logger("build")


class _OpIR(IRFunction):
    """One non-convolution step as an internal function of one-lane vector code (avg_pool:
    vectors of a blocked pixel's lanes, or of an NCHW row's columns)."""

    def __init__(self, module: ir.Module, step: Step, c_type: str, pointer_args: tuple,
                 int_args: tuple = (), lanes: int = 1):
        super().__init__(module, step.function, c_type, lanes, pointer_args, int_args,
                         internal=True)
        self.step = step
        self.c = step.consts

    def at(self, pointer, index):
        """Load element ``index`` of ``pointer`` as a one-lane vector."""
        return self.load_vec(self.element(pointer, index))

    def put(self, value, pointer, index) -> None:
        self.store_vec(value, self.element(pointer, index))

    def channel_start(self, nc, volume: int):
        """Where channel ``nc`` (of N * C) of the step's input starts: NCHW, or, when the
        step reads the blocked layout (convgen.plan.layout), its block plus its lane."""
        b = self.b
        if not self.c.get("blocked"):
            return b.mul(nc, i64(volume))
        lanes = self.c["lanes"]
        return b.add(b.mul(b.sdiv(nc, i64(lanes)), i64(volume * lanes)),
                     b.srem(nc, i64(lanes)))

    def pixel(self, index):
        """A channel's pixel ``index`` as an element offset (lanes apart when blocked)."""
        return self.b.mul(index, i64(self.c["lanes"])) if self.c.get("blocked") else index

    def greater(self, value, current):
        """value > current: ordered for floats (NaN compares false), by the element type's
        sign for integers."""
        if not self.integer:
            return self.b.fcmp_ordered(">", value, current)
        if self.element_type.signed:
            return self.b.icmp_signed(">", value, current)
        return self.b.icmp_unsigned(">", value, current)

    def integer_binary(self, kind: str, u, v):
        """u (kind) v in integers: max and min by the type's sign; add, sub and mul wrap
        around (no nsw/nuw flags); div
        truncates toward zero, with x / 0 = 0 and, signed, x / -1 = -x (wrapping): LLVM's
        sdiv/udiv are undefined there, so the divisor is made safe first."""
        b = self.b
        if kind in ("max", "min"):
            return b.select(self.greater(u, v) if kind == "max" else self.greater(v, u), u, v)
        if kind != "div":
            return {"add": b.add, "sub": b.sub, "mul": b.mul}[kind](u, v)
        signed = self.element_type.signed
        zero, one = self.zero(), self.vconst(1)
        by_zero = b.icmp_unsigned("==", v, zero)
        special = by_zero
        if signed:
            by_minus_one = b.icmp_signed("==", v, self.vconst(-1))
            special = b.or_(by_zero, by_minus_one)
        safe = b.select(special, one, v)
        quotient = (b.sdiv if signed else b.udiv)(u, safe)
        if signed:
            quotient = b.select(by_minus_one, b.sub(zero, u), quotient)
        return b.select(by_zero, zero, quotient)

    def to_float(self, integer):
        """An i64 as a one-lane vector of the element type."""
        return self.splat(self.b.sitofp(integer, self.scalar))

    def finish(self) -> ir.Function:
        self.b.ret(i32(0))
        return self.function

    @contextlib.contextmanager
    def window_taps(self, starts, kernel, dilation, sizes):
        """The taps of one pooling window (loops over the kernel's 3 dims): the body runs
        for the taps inside the input, given their input coordinates (d, h, w)."""
        b = self.b
        with self.loop(0, kernel[0], "kd") as kd, self.loop(0, kernel[1], "kh") as kh, \
                self.loop(0, kernel[2], "kw") as kw:
            coords = [b.add(s, b.mul(k, i64(d)))
                      for s, k, d in zip(starts, (kd, kh, kw), dilation)]
            inside = None
            for coord, size in zip(coords, sizes):
                ok = b.and_(b.icmp_signed(">=", coord, i64(0)),
                            b.icmp_signed("<", coord, i64(size)))
                inside = ok if inside is None else b.and_(inside, ok)
            with b.if_then(inside):
                yield coords

    # -- ops ---------------------------------------------------------------------------
    def elementwise(self, combine) -> ir.Function:
        names = list(self.args)
        *ins, out = [self.args[n] for n in names]
        with self.loop(0, self.c["elements"], "i") as i:
            self.put(combine(*[self.at(p, i) for p in ins]), out, i)
        return self.finish()

    def avg_pool(self) -> ir.Function:
        """One output row (plane, od, oh) at a time, each output its window's taps summed
        in (kd, kh, kw) order (as the old one-output loop) from 0, then divided once by its
        count: the product of a row count (at run time) and a column count (computed here).
        Which input columns each tap reads is worked out here, so there are no
        per-element bounds checks. No stack row, whatever the width.

        A plane is an NCHW channel, or, blocked, a block of ``lanes`` channels whose pixels
        are one vector each: blocked (and NCHW at a column stride over 1, one lane), the
        output row is set to zero and each (kd, kh) input row inside the input adds, per
        kw, its run of columns inside the input to it (_column_runs), then each run of
        columns of equal counts is divided. NCHW at column stride 1, ``avg_pool_chunks``
        sums vectors of ``lanes`` columns in registers.

        The jobs [job_begin, job_end) are channels (lowering's unit, split between threads
        by _parallel_conv); blocked, a job range runs the planes whose first channel it
        holds, so the planes split between threads exactly."""
        b, c = self.b, self.c
        # (avg_pool is no integer op, graph.ir.INTEGER_OPS: the sums and divisions are
        # the element type's floats)
        assert not self.integer
        x, y = self.args["x"], self.args["y"]
        (in_d, in_h, in_w), (out_d, out_h, out_w) = c["in_size"], c["out_size"]
        k_d, k_h = c["kernel"][:2]
        s_d, s_h, s_w = c["stride"]
        (p_d, p_h), (d_d, d_h) = c["padding"][:2], c["dilation"][:2]
        blocked = bool(c.get("blocked"))
        chunks = not blocked and self.lanes > 1
        assert not chunks or s_w == 1
        lanes = c["lanes"] if blocked else 1
        in_volume, out_volume = lanes * in_d * in_h * in_w, lanes * out_d * out_h * out_w
        begin, end = self.args["job_begin"], self.args["job_end"]
        if blocked:  # the planes whose first channel lies in [begin, end)
            begin = b.sdiv(b.add(begin, i64(lanes - 1)), i64(lanes))
            end = b.sdiv(b.add(end, i64(lanes - 1)), i64(lanes))
        with self.loop(begin, end, "plane") as plane, self.loop(0, out_d, "od") as od, \
                self.loop(0, out_h, "oh") as oh:
            xc = self.element(x, b.mul(plane, i64(in_volume)))
            row = self.element(y, b.add(b.mul(plane, i64(out_volume)), self.pixel(
                b.mul(b.add(b.mul(od, i64(out_h)), oh), i64(out_w)))))
            d0 = b.sub(b.mul(od, i64(s_d)), i64(p_d))
            h0 = b.sub(b.mul(oh, i64(s_h)), i64(p_h))
            row_taps = b.mul(self.pool_taps(d0, 0), self.pool_taps(h0, 1))

            @contextlib.contextmanager
            def input_rows():
                """The window's (kd, kh) input rows inside the input: yields the row."""
                with self.loop(0, k_d, "kd") as kd, self.loop(0, k_h, "kh") as kh:
                    id_ = b.add(d0, b.mul(kd, i64(d_d)))
                    ih = b.add(h0, b.mul(kh, i64(d_h)))
                    inside = b.and_(b.and_(b.icmp_signed(">=", id_, i64(0)),
                                           b.icmp_signed("<", id_, i64(in_d))),
                                    b.and_(b.icmp_signed(">=", ih, i64(0)),
                                           b.icmp_signed("<", ih, i64(in_h))))
                    with b.if_then(inside):
                        yield self.element(xc, self.pixel(
                            b.mul(b.add(b.mul(id_, i64(in_h)), ih), i64(in_w))))

            if chunks:
                self.avg_pool_chunks(row, input_rows, row_taps)
            else:
                self.avg_pool_runs(row, input_rows, row_taps)
        return self.finish()

    def avg_pool_runs(self, row, input_rows, row_taps) -> None:
        """Output row ``row`` (pixels of ``lanes``-lane vectors, or one-lane values) summed
        in memory: set to zero, each input row of ``input_rows`` adding, per kw tap, its
        run of columns inside the input (_column_runs), then each run of columns of equal
        counts divided."""
        b, c = self.b, self.c
        in_w, out_w = c["in_size"][2], c["out_size"][2]
        k_w, s_w, p_w, d_w = c["kernel"][2], c["stride"][2], c["padding"][2], c["dilation"][2]
        with self.loop(0, out_w, "init") as ow:
            self.put(self.zero(), row, self.pixel(ow))
        with input_rows() as xr:
            for k, (shift, lo, hi) in enumerate(_column_runs(in_w, out_w, k_w, s_w, p_w,
                                                             d_w)):
                with self.loop(lo, hi, f"ow{k}") as ow:
                    value = self.at(xr, self.pixel(b.add(b.mul(ow, i64(s_w)), i64(shift))))
                    self.put(b.fadd(self.at(row, self.pixel(ow)), value), row, self.pixel(ow))
        column_taps, first = self.column_taps(), 0
        for ow, taps in enumerate(column_taps):
            if ow + 1 < out_w and column_taps[ow + 1] == taps:
                continue  # (a run of columns of equal counts: one divisor)
            divisor = self.to_float(b.mul(row_taps, i64(taps)))
            with self.loop(first, ow + 1, f"div{ow}") as i:
                self.put(b.fdiv(self.at(row, self.pixel(i)), divisor), row, self.pixel(i))
            first = ow + 1

    def avg_pool_chunks(self, row, input_rows, row_taps) -> None:
        """NCHW, column stride 1: output row ``row`` in vectors of ``lanes`` columns, each
        summed in a register over the rows of ``input_rows`` and the kw taps, divided and
        stored once. (Summing into the output row in memory instead, a masked store at a
        run's end and the next pass's load of it stall store forwarding; and LLVM unrolls
        short constant-count scalar loops fully before its loop vectorizer sees them.)
        The chunks whose taps all lie inside the input, all but a few at the row's ends,
        run in a loop with plain loads and the divisor row count * kw; the others are
        written out here, each tap's load masked to its columns inside the input."""
        b, c, width = self.b, self.c, self.lanes
        in_w, out_w = c["in_size"][2], c["out_size"][2]
        k_w, p_w, d_w = c["kernel"][2], c["padding"][2], c["dilation"][2]
        shifts = [kw * d_w - p_w for kw in range(k_w)]  # input column - output column
        column_taps = self.column_taps()
        total = self.alloca(self.vec, "total")
        count = -(-out_w // width)
        # chunk j (columns j*W ...) is interior when every tap of every column is inside
        first = -(-max(0, -shifts[0]) // width)
        last = max(first, (min(in_w - shifts[-1], out_w) - width) // width + 1)

        def chunk(ow, masks):
            """Sum, divide and store columns [ow, ow + W); masks: per kw tap, None for a
            plain load, else the constant lanes inside the input (False: none)."""
            b.store(self.zero(), total)
            with input_rows() as xr:
                value = b.load(total)
                for shift, mask in zip(shifts, masks):
                    if mask is False:
                        continue
                    if mask is None:
                        value = b.fadd(value, self.load_vec(
                            self.element(xr, b.add(ow, i64(shift)))))
                    else:  # (its first lanes may lie before the input: not an inbounds gep)
                        value = b.fadd(value, self.masked_load(
                            b.gep(xr, [b.add(ow, i64(shift))]), mask))
                b.store(value, total)
            return b.load(total)

        with self.loop(first, last, "chunk") as j:
            ow = b.mul(j, i64(width))
            sums = chunk(ow, [None] * k_w)
            self.store_vec(b.fdiv(sums, self.to_float(b.mul(row_taps, i64(k_w)))),
                           self.element(row, ow))
        for j in [j for j in range(count) if not first <= j < last]:
            ow = j * width
            masks = []
            for shift in shifts:
                inside = [0 <= ow + lane + shift < in_w and ow + lane < out_w
                          for lane in range(width)]
                if all(inside):
                    masks.append(None)
                else:
                    masks.append(any(inside) and ir.Constant(self.mask_type, inside))
            sums = chunk(i64(ow), masks)
            # the columns' counts (1 past the row's end, where nothing is stored)
            taps = ir.Constant(self.vec, [float(column_taps[ow + lane]) if ow + lane < out_w
                                          else 1.0 for lane in range(width)])
            divisor = b.fmul(self.to_float(row_taps), taps)
            quotient = b.fdiv(sums, divisor)
            if ow + width <= out_w:
                self.store_vec(quotient, self.element(row, i64(ow)))
            else:
                self.masked_store(quotient, self.element(row, i64(ow)), ir.Constant(
                    self.mask_type, [ow + lane < out_w for lane in range(width)]))

    def pool_taps(self, start, dim: int):
        """The taps of a window of dim ``dim`` (0: d, 1: h) starting at input coordinate
        ``start`` (i64) that count toward the divisor: count_include_pad, those inside the
        padded input, min(k, (size + end pad - start + d - 1) / d); else those inside the
        input."""
        b, c = self.b, self.c
        k, size = c["kernel"][dim], c["in_size"][dim]
        d = c["dilation"][dim]

        def smaller(u, v):
            return b.select(b.icmp_signed("<", u, v), u, v)

        if c["count_include_pad"]:
            return smaller(b.sdiv(b.sub(i64(size + c["padding_end"][dim] + d - 1), start),
                                  i64(d)), i64(k))
        # taps [lo, hi): lo the first at or past 0, hi the first at or past size
        lo = b.select(b.icmp_signed(">=", start, i64(0)), i64(0),
                      b.sdiv(b.sub(i64(d - 1), start), i64(d)))
        hi = smaller(b.sdiv(b.sub(i64(size + d - 1), start), i64(d)), i64(k))
        taps = b.sub(hi, lo)
        return b.select(b.icmp_signed("<", taps, i64(0)), i64(0), taps)

    def column_taps(self) -> list[int]:
        """pool_taps for each output column, computed here."""
        c = self.c
        in_w, out_w = c["in_size"][2], c["out_size"][2]
        k_w, s_w, p_w, d_w = c["kernel"][2], c["stride"][2], c["padding"][2], c["dilation"][2]
        taps = []
        for ow in range(out_w):
            w0 = ow * s_w - p_w
            if c["count_include_pad"]:
                taps.append(min(k_w, _truncating_div(in_w + c["padding_end"][2] + d_w - 1
                                                     - w0, d_w)))
            else:
                taps.append(sum(0 <= w0 + k * d_w < in_w for k in range(k_w)))
        return taps

    def max_pool(self) -> ir.Function:
        """One output row at a time: for each kernel tap, the run of output columns whose
        input column lies inside the input (no per-element checks; LLVM vectorizes it)."""
        b, c = self.b, self.c
        x, y = self.args["x"], self.args["y"]
        (in_d, in_h, in_w), (out_d, out_h, out_w) = c["in_size"], c["out_size"]
        (k_d, k_h, k_w), (s_d, s_h, s_w) = c["kernel"], c["stride"]
        (p_d, p_h, p_w), (d_d, d_h, d_w) = c["padding"], c["dilation"]
        runs = _column_runs(in_w, out_w, k_w, s_w, p_w, d_w)
        lowest = self.vconst(self.element_type.min)  # -inf, or the integer type's least
        begin, end = self.args["job_begin"], self.args["job_end"]  # channels [begin, end)
        with self.loop(begin, end, "nc") as nc, self.loop(0, out_d, "od") as od, \
                self.loop(0, out_h, "oh") as oh:
            xc = self.element(x, self.channel_start(nc, in_d * in_h * in_w))
            row = self.element(y, b.add(self.channel_start(nc, out_d * out_h * out_w),
                                        self.pixel(b.mul(b.add(b.mul(od, i64(out_h)), oh),
                                                         i64(out_w)))))
            with self.loop(0, out_w, "init") as ow:
                self.put(lowest, row, self.pixel(ow))
            with self.loop(0, k_d, "kd") as kd, self.loop(0, k_h, "kh") as kh:
                id_ = b.add(b.sub(b.mul(od, i64(s_d)), i64(p_d)), b.mul(kd, i64(d_d)))
                ih = b.add(b.sub(b.mul(oh, i64(s_h)), i64(p_h)), b.mul(kh, i64(d_h)))
                inside = b.and_(b.and_(b.icmp_signed(">=", id_, i64(0)),
                                       b.icmp_signed("<", id_, i64(in_d))),
                                b.and_(b.icmp_signed(">=", ih, i64(0)),
                                       b.icmp_signed("<", ih, i64(in_h))))
                with b.if_then(inside):
                    xr = self.element(xc, self.pixel(
                        b.mul(b.add(b.mul(id_, i64(in_h)), ih), i64(in_w))))
                    for k, (shift, lo, hi) in enumerate(runs):
                        with self.loop(lo, hi, f"ow{k}") as ow:
                            value = self.at(xr, self.pixel(b.add(b.mul(ow, i64(s_w)),
                                                                 i64(shift))))
                            current = self.at(row, self.pixel(ow))
                            take = self.greater(value, current)
                            if not self.integer:  # NaN propagates, as in PyTorch
                                take = b.or_(take, b.fcmp_unordered("uno", value, value))
                            self.put(b.select(take, value, current), row, self.pixel(ow))
        return self.finish()

    def max_pool_indices(self) -> ir.Function:
        """ONNX MaxPool's Indices, as the C macro: per window the flattened index of the
        first element not in the padding, then of each strictly larger one (-1: padding
        only), stored as the element type (lowering checks that it is exact)."""
        b, c = self.b, self.c
        x, y = self.args["x"], self.args["y"]
        (in_d, in_h, in_w), (out_d, out_h, out_w) = c["in_size"], c["out_size"]
        kernel, stride, pad, dilation = c["kernel"], c["stride"], c["padding"], c["dilation"]
        volume = in_d * in_h * in_w
        best = self.alloca(self.vec, "best")
        at = self.alloca(I64, "at")
        sizes = (in_d, in_h, in_w)
        with self.loop(0, c["nc"], "nc") as nc, self.loop(0, out_d, "od") as od, \
                self.loop(0, out_h, "oh") as oh, self.loop(0, out_w, "ow") as ow:
            xc = self.element(x, b.mul(nc, i64(volume)))
            out_index = b.add(b.mul(nc, i64(out_d * out_h * out_w)),
                              b.add(b.mul(b.add(b.mul(od, i64(out_h)), oh), i64(out_w)), ow))
            starts = [b.sub(b.mul(o, i64(s)), i64(p)) for o, s, p in zip((od, oh, ow), stride, pad)]
            b.store(self.zero(), best)
            b.store(i64(-1), at)
            with self.window_taps(starts, kernel, dilation, sizes) as coords:
                row_major = b.add(b.mul(b.add(b.mul(coords[0], i64(in_h)), coords[1]),
                                        i64(in_w)), coords[2])
                value = self.at(xc, row_major)
                first = b.icmp_signed("<", b.load(at), i64(0))
                larger = b.extract_element(
                    b.fcmp_ordered(">", value, b.load(best)), i32(0))
                with b.if_then(b.or_(first, larger)):
                    b.store(value, best)
                    if c["storage_order"]:  # column-major: the first spatial dim fastest
                        index = b.add(coords[0], b.mul(
                            b.add(coords[1], b.mul(coords[2], i64(in_h))), i64(in_d)))
                    else:
                        index = row_major
                    b.store(index, at)
            found = b.load(at)
            flat = b.select(b.icmp_signed("<", found, i64(0)), i64(-1),
                            b.add(b.mul(nc, i64(volume)), found))
            self.put(self.to_float(flat), y, out_index)
        return self.finish()

    def adaptive_avg_pool(self) -> ir.Function:
        b, c = self.b, self.c
        x, y = self.args["x"], self.args["y"]
        (in_d, in_h, in_w), (out_d, out_h, out_w) = c["in_size"], c["out_size"]
        total = self.alloca(self.vec, "total")
        with self.loop(0, c["nc"], "nc") as nc, self.loop(0, out_d, "od") as od, \
                self.loop(0, out_h, "oh") as oh, self.loop(0, out_w, "ow") as ow:
            xc = self.element(x, self.channel_start(nc, in_d * in_h * in_w))
            bins = []
            for o, size, out in zip((od, oh, ow), (in_d, in_h, in_w), (out_d, out_h, out_w)):
                start = b.sdiv(b.mul(o, i64(size)), i64(out))
                end = b.sdiv(b.add(b.mul(b.add(o, i64(1)), i64(size)), i64(out - 1)), i64(out))
                bins.append((start, end))
            b.store(self.zero(), total)
            with self.loop(bins[0][0], bins[0][1], "id") as id_, \
                    self.loop(bins[1][0], bins[1][1], "ih") as ih, \
                    self.loop(bins[2][0], bins[2][1], "iw") as iw:
                index = b.add(b.mul(b.add(b.mul(id_, i64(in_h)), ih), i64(in_w)), iw)
                b.store(b.fadd(b.load(total), self.at(xc, self.pixel(index))), total)
            count = i64(1)
            for start, end in bins:
                count = b.mul(count, b.sub(end, start))
            out_index = b.add(b.mul(nc, i64(out_d * out_h * out_w)),
                              b.add(b.mul(b.add(b.mul(od, i64(out_h)), oh), i64(out_w)), ow))
            self.put(b.fdiv(b.load(total), self.to_float(count)), y, out_index)
        return self.finish()

    def linear(self) -> ir.Function:
        b, c = self.b, self.c
        x, w, bias, y = (self.args[n] for n in ("x", "w", "b", "y"))
        n_in, n_out = c["in_features"], c["out_features"]
        with self.loop(0, c["rows"], "r") as r:  # w is (in, out): outputs innermost
            yr = self.element(y, b.mul(r, i64(n_out)))
            with self.loop(0, n_out, "j0") as j:
                self.put(self.at(bias, j) if "bias" in self.step.params else self.zero(), yr, j)
            with self.loop(0, n_in, "i") as i:
                xi = self.at(x, b.add(b.mul(r, i64(n_in)), i))
                wi = self.element(w, b.mul(i, i64(n_out)))
                with self.loop(0, n_out, "j") as j:
                    self.put(b.fadd(self.at(yr, j), b.fmul(xi, self.at(wi, j))), yr, j)
            if c["activation"] is not None:
                with self.loop(0, n_out, "j1") as j:
                    self.put(self.activation(self.at(yr, j), c["activation"],
                                             c["activation_args"]), yr, j)
        return self.finish()

    def softmax(self) -> ir.Function:
        b, c = self.b, self.c
        x, y = self.args["x"], self.args["y"]
        size, inner = c["size"], c["inner"]
        peak, total = self.alloca(self.vec, "peak"), self.alloca(self.vec, "total")
        exp = self.vector_intrinsic("exp", 1)
        with self.loop(0, c["outer"], "a") as a, self.loop(0, inner, "c") as col:
            base = b.add(b.mul(a, i64(size * inner)), col)

            def index(k):
                return b.add(base, b.mul(k, i64(inner)))

            b.store(self.at(x, base), peak)
            with self.loop(1, size, "k") as k:
                value, current = self.at(x, index(k)), b.load(peak)
                b.store(b.select(b.fcmp_ordered(">", value, current), value, current), peak)
            b.store(self.zero(), total)
            with self.loop(0, size, "k") as k:
                term = b.call(exp, [b.fsub(self.at(x, index(k)), b.load(peak))])
                b.store(b.fadd(b.load(total), term), total)
            if c["log"]:
                log = self.vector_intrinsic("log", 1)
                shift = b.fadd(b.load(peak), b.call(log, [b.load(total)]))
                with self.loop(0, size, "k") as k:
                    self.put(b.fsub(self.at(x, index(k)), shift), y, index(k))
            else:
                with self.loop(0, size, "k") as k:
                    term = b.call(exp, [b.fsub(self.at(x, index(k)), b.load(peak))])
                    self.put(b.fdiv(term, b.load(total)), y, index(k))
        return self.finish()

    def batch_norm(self) -> ir.Function:
        b, c = self.b, self.c
        x, scale, shift, y = (self.args[n] for n in ("x", "scale", "shift", "y"))
        inner = c["inner"]
        with self.loop(0, c["batch"], "n") as n, self.loop(0, c["channels"], "c") as ch:
            base = b.mul(b.add(b.mul(n, i64(c["channels"])), ch), i64(inner))
            s, t = self.at(scale, ch), self.at(shift, ch)
            with self.loop(0, inner, "i") as i:
                index = b.add(base, i)
                self.put(b.fadd(b.fmul(self.at(x, index), s), t), y, index)
        return self.finish()

    def remap(self) -> ir.Function:
        """y[i] = x[base + sum(c_d * stride_d)], c_d the mode's map of i_d - begin_d
        (tensor_ops.remap_consts), or the fill value outside the input (mode "constant")."""
        b, c = self.b, self.c
        x, y = self.args["x"], self.args["y"]
        fill = self.vconst(c["value"])
        mode = c["mode"]
        with contextlib.ExitStack() as stack:
            source, valid, at = i64(c["base"]), None, i64(0)
            for d in range(c["rank"]):
                i = stack.enter_context(self.loop(0, c["out_shape"][d], f"i{d}"))
                at = b.add(b.mul(at, i64(c["out_shape"][d])), i)
                coord = i if mode == "linear" else b.sub(i, i64(c["begin"][d]))
                extent = c["extent"][d]
                if mode == "constant":
                    ok = b.and_(b.icmp_signed(">=", coord, i64(0)),
                                b.icmp_signed("<", coord, i64(extent)))
                    valid = ok if valid is None else b.and_(valid, ok)
                elif mode == "edge":
                    coord = b.select(b.icmp_signed("<", coord, i64(0)), i64(0), coord)
                    coord = b.select(b.icmp_signed(">=", coord, i64(extent)),
                                     i64(extent - 1), coord)
                elif mode == "wrap":
                    coord = self._modulo(coord, extent)
                elif mode == "reflect":
                    period = c["period"][d]
                    m = self._modulo(coord, period)
                    coord = b.select(b.icmp_signed("<", m, i64(extent)), m,
                                     b.sub(i64(period), m))
                source = b.add(source, b.mul(coord, i64(c["stride"][d])))
            if valid is None:
                self.put(self.at(x, source), y, at)
            else:  # read element 0 outside the input (always there), then fill
                value = self.at(x, b.select(valid, source, i64(0)))
                self.put(b.select(valid, value, fill), y, at)
        return self.finish()

    def _modulo(self, value, divisor: int):
        """value mod divisor in [0, divisor) (srem keeps the dividend's sign)."""
        b = self.b
        rest = b.srem(value, i64(divisor))
        return b.select(b.icmp_signed("<", rest, i64(0)), b.add(rest, i64(divisor)), rest)

    def where(self) -> ir.Function:
        b = self.b
        cond, a, other, y = (self.args[n] for n in ("c", "a", "b2", "y"))
        with self.loop(0, self.c["elements"], "i") as i:
            value = self.at(cond, i)
            take = b.icmp_unsigned("!=", value, self.zero()) if self.integer \
                else b.fcmp_unordered("!=", value, self.zero())  # NaN is nonzero
            self.put(b.select(take, self.at(a, i), self.at(other, i)), y, i)
        return self.finish()

    def lrn(self) -> ir.Function:
        b, c = self.b, self.c
        x, y = self.args["x"], self.args["y"]
        channels, inner = c["channels"], c["inner"]
        total = self.alloca(self.vec, "total")
        log, exp = self.vector_intrinsic("log", 1), self.vector_intrinsic("exp", 1)
        with self.loop(0, c["batch"], "n") as n, self.loop(0, channels, "c") as ch, \
                self.loop(0, inner, "i") as i:
            low = b.sub(ch, i64(c["lo"]))
            low = b.select(b.icmp_signed("<", low, i64(0)), i64(0), low)
            high = b.add(ch, i64(c["hi"] + 1))
            high = b.select(b.icmp_signed(">", high, i64(channels)), i64(channels), high)
            b.store(self.zero(), total)
            with self.loop(low, high, "k") as k:
                v = self.at(x, b.add(b.mul(b.add(b.mul(n, i64(channels)), k), i64(inner)), i))
                b.store(b.fadd(b.load(total), b.fmul(v, v)), total)
            at = b.add(b.mul(b.add(b.mul(n, i64(channels)), ch), i64(inner)), i)
            base = b.fadd(self.vconst(c["bias"]), b.fmul(self.vconst(c["scale"]), b.load(total)))
            power = b.call(exp, [b.fmul(self.vconst(c["beta"]), b.call(log, [base]))])
            self.put(b.fdiv(self.at(x, at), power), y, at)
        return self.finish()

    def matmul(self) -> ir.Function:
        b, c = self.b, self.c
        a, bb, y = self.args["a"], self.args["b2"], self.args["y"]
        m, k_size, n = c["m"], c["k"], c["n"]
        total = self.alloca(self.vec, "total")
        with self.loop(0, c["batch"], "p") as p, self.loop(0, m, "i") as i, \
                self.loop(0, n, "j") as j:
            b.store(self.zero(), total)
            with self.loop(0, k_size, "k") as k:
                left = self.at(a, b.add(b.mul(p, i64(m * k_size)),
                                        b.add(b.mul(i, i64(k_size)), k)))
                right = self.at(bb, b.add(b.mul(p, i64(k_size * n)), b.add(b.mul(k, i64(n)), j)))
                b.store(b.fadd(b.load(total), b.fmul(left, right)), total)
            self.put(b.load(total), y, b.add(b.mul(p, i64(m * n)), b.add(b.mul(i, i64(n)), j)))
        return self.finish()

    def resample(self) -> ir.Function:
        """y[a, j, i] = sum_t weight[j, t] * x[a, index[j, t], i] (x viewed (outer, in, inner),
        y (outer, out, inner)); nearest: one tap, copied."""
        b, c = self.b, self.c
        x, index, weight, y = (self.args[n] for n in ("x", "index", "w", "y"))
        taps, inner = c["taps"], c["inner"]
        with self.loop(0, c["outer"], "a") as a, self.loop(0, c["out_size"], "j") as j:
            row = self.element(y, b.mul(b.add(b.mul(a, i64(c["out_size"])), j), i64(inner)))
            if not c["nearest"]:
                with self.loop(0, inner, "i0") as i:
                    self.put(self.zero(), row, i)
            for t in range(taps):
                slot = b.add(b.mul(j, i64(taps)), i64(t))
                source_index = b.fptosi(b.extract_element(self.at(index, slot), i32(0)), I64)
                source = self.element(x, b.mul(b.add(b.mul(a, i64(c["in_size"])), source_index),
                                               i64(inner)))
                with self.loop(0, inner, f"i{t + 1}") as i:
                    if c["nearest"]:
                        self.put(self.at(source, i), row, i)
                    else:
                        term = b.fmul(self.at(weight, slot), self.at(source, i))
                        self.put(b.fadd(self.at(row, i), term), row, i)
        return self.finish()

    def cat(self) -> ir.Function:
        b, c = self.b, self.c
        y = self.args["y"]
        with self.loop(0, c["outer"], "a") as a:
            for k, copy in enumerate(c["copies"]):
                source = self.element(self.args[f"x{k}"], b.mul(a, i64(copy["chunk"])))
                target = self.element(y, b.add(b.mul(a, i64(c["out_row"])), i64(copy["start"])))
                with self.loop(0, copy["chunk"], f"i{k}") as i:
                    self.put(self.at(source, i), target, i)
        return self.finish()


def _column_runs(in_w: int, out_w: int, k_w: int, s_w: int, p_w: int, d_w: int) -> list:
    """Per kw tap of a pooling window, (shift, first, end): output columns [first, end)
    read input column ow * s_w + shift, inside the input (the others read padding)."""
    runs = []
    for kw in range(k_w):
        shift = kw * d_w - p_w
        lo = min(0 if shift >= 0 else (-shift + s_w - 1) // s_w, out_w)
        hi = 0 if in_w - 1 - shift < 0 else (in_w - 1 - shift) // s_w + 1
        runs.append((shift, lo, max(min(hi, out_w), lo)))
    return runs


def _truncating_div(a: int, d: int) -> int:
    """a / d rounded toward zero, as LLVM's sdiv (the old per-output divisor's rule)."""
    return a // d if a >= 0 else -(-a // d)


def _op_function(module: ir.Module, step: Step, c_type: str) -> ir.Function:
    kind = step.kind
    if kind == "max_pool":
        return _OpIR(module, step, c_type, ("x", "y"), ("job_begin", "job_end")).max_pool()
    if kind == "max_pool_indices":
        return _OpIR(module, step, c_type, ("x", "y")).max_pool_indices()
    if kind == "avg_pool":
        # a blocked pixel, or (NCHW, column stride 1) a run of columns, per vector
        c = step.consts
        lanes = c["lanes"] if c.get("blocked") or c["stride"][2] == 1 else 1
        return _OpIR(module, step, c_type, ("x", "y"), ("job_begin", "job_end"),
                     lanes=lanes).avg_pool()
    if kind == "adaptive_avg_pool":
        return _OpIR(module, step, c_type, ("x", "y")).adaptive_avg_pool()
    if kind == "linear":
        return _OpIR(module, step, c_type, ("x", "w", "b", "y")).linear()
    if kind == "softmax":
        return _OpIR(module, step, c_type, ("x", "y")).softmax()
    if kind == "batch_norm":
        return _OpIR(module, step, c_type, ("x", "scale", "shift", "y")).batch_norm()
    if kind == "cat":
        names = tuple(f"x{k}" for k in range(len(step.consts["copies"]))) + ("y",)
        return _OpIR(module, step, c_type, names).cat()
    if kind == "remap":
        return _OpIR(module, step, c_type, ("x", "y")).remap()
    if kind == "lrn":
        return _OpIR(module, step, c_type, ("x", "y")).lrn()
    if kind == "matmul":
        return _OpIR(module, step, c_type, ("a", "b2", "y")).matmul()
    if kind == "where":
        return _OpIR(module, step, c_type, ("c", "a", "b2", "y")).where()
    if kind == "resample":
        return _OpIR(module, step, c_type, ("x", "index", "w", "y")).resample()
    if kind in ("add", "binary"):
        op = _OpIR(module, step, c_type, ("a", "b2", "y"))
        operation = step.consts.get("op", "add")
        if op.integer:
            return op.elementwise(lambda u, v: op.integer_binary(operation, u, v))
        return op.elementwise(_combine(op.b, operation, op.zero()))
    if kind == "activation":
        op = _OpIR(module, step, c_type, ("x", "y"))
        if op.integer:  # relu, relu6, clip: min(max(v, lo), hi) in the type's integers
            low, high = (op.vconst(bound) for bound in step.consts["bounds"])

            def clamp(u):
                u = op.b.select(op.greater(low, u), low, u)
                return op.b.select(op.greater(u, high), high, u)

            return op.elementwise(clamp)
        return op.elementwise(lambda u: op.activation(u, step.consts["activation"],
                                                      step.consts["activation_args"]))
    raise AssertionError(kind)


def _combine(b: ir.IRBuilder, kind: str, zero):
    """The binary kind as a function of two one-lane vectors."""
    if kind in ("add", "sub", "mul", "div"):
        return {"add": b.fadd, "sub": b.fsub, "mul": b.fmul, "div": b.fdiv}[kind]

    def pick(u, v):  # max / min: NaN from either side propagates (as the C kernel)
        better = b.fcmp_ordered(">" if kind == "max" else "<", u, v)
        return b.select(b.or_(better, b.fcmp_unordered("uno", u, u)), u, v)

    def prelu(u, v):
        return b.select(b.fcmp_ordered("<", u, zero), b.fmul(u, v), u)

    return prelu if kind == "prelu" else pick


def _parallel_conv(module: ir.Module, conv: ir.Function, step: Step, c_type: str) -> ir.Function:
    """An OpenMP outlined function: thread t of T runs jobs [J*t/T, J*(t+1)/T) of ``conv``.

    Its one argument points at the conv's pointer arguments, stored by the caller.
    """
    n_pointers = len(conv.args) - 2
    ptr = scalar_type(c_type).as_pointer()
    void_ptr = ir.IntType(8).as_pointer()
    outlined = ir.Function(module, ir.FunctionType(ir.VoidType(), [void_ptr]),
                           name=f"{step.function}.omp")
    outlined.linkage = "internal"
    b = ir.IRBuilder(outlined.append_basic_block("entry"))
    slots = b.bitcast(outlined.args[0], ir.ArrayType(ptr, n_pointers).as_pointer())
    pointers = [b.load(b.gep(slots, [i32(0), i32(k)])) for k in range(n_pointers)]
    query = ir.FunctionType(ir.IntType(32), [])
    thread = b.sext(b.call(_declare(module, "omp_get_thread_num", query), []), I64)
    threads = b.sext(b.call(_declare(module, "omp_get_num_threads", query), []), I64)
    jobs = i64(step.consts["jobs"])
    begin = b.sdiv(b.mul(jobs, thread), threads)
    end = b.sdiv(b.mul(jobs, b.add(thread, i64(1))), threads)
    b.call(conv, pointers + [begin, end])
    b.ret_void()
    return outlined


def _declare(module: ir.Module, name: str, fnty: ir.FunctionType) -> ir.Function:
    existing = module.globals.get(name)
    return existing if existing is not None else ir.Function(module, fnty, name=name)


def render_network_llvm(lowered: Lowered, symbol: str, title: str) -> str:
    start = time.perf_counter()
    c_type = element_type(lowered.dtype).c_type
    module = new_module(symbol, target_triple(), data_layout())
    functions = []
    for step in lowered.steps:
        if step.kind == "conv":
            functions.append(add_conv_function(
                module, step.plan, step.function, residual=step.consts["residual"],
                internal=True))
        else:
            functions.append(_op_function(module, step, c_type))
    entry = IRFunction(module, symbol, c_type, 1, ("params", "arena"),
                       pointer_to_pointer_args=("inputs", "outputs"))
    b = entry.b
    params, arena = entry.args["params"], entry.args["arena"]

    def pointer(buffer: Buffer):
        if buffer.kind == "input":
            return b.load(b.gep(entry.args["inputs"], [i64(buffer.index)]))
        return entry.element(params if buffer.kind == "param" else arena, i64(buffer.index))

    for step, function in zip(lowered.steps, functions):
        b.comment(f"{comment_text(step.name)} ({step.kind})")
        ins = [pointer(buf) for buf in step.inputs]
        out = pointer(step.output)
        param = {name: entry.element(params, i64(offset)) for name, offset in step.params.items()}
        null = ir.Constant(entry.scalar.as_pointer(), None)
        if step.kind == "conv":
            args = [ins[0], param["weight"], param.get("bias", null)]
            if step.consts["residual"]:
                args.append(ins[1])
            args.append(out)
            # (a transform-GEMM or staged depthwise conv opens its own parallel region)
            if step.plan.threads > 1 and openmp_available() and not parallel_inside(step.plan):
                _call_parallel(entry, module, function, step, c_type, args)
                continue
            args += [i64(0), i64(step.consts["jobs"])]
        elif step.kind in ("max_pool", "avg_pool"):
            args = ins + [out]
            if step.consts["threads"] > 1 and openmp_available():
                _call_parallel(entry, module, function, step, c_type, args)
                continue
            args += [i64(0), i64(step.consts["jobs"])]
        elif step.kind == "linear":
            args = [ins[0], param["weight"], param.get("bias", null), out]
        elif step.kind == "batch_norm":
            args = [ins[0], param["scale"], param["shift"], out]
        elif step.kind == "resample":
            args = [ins[0], param["index"], param.get("weight", null), out]
        else:
            args = ins + [out]
        b.call(function, args)
    for k, (buffer, elements) in enumerate(lowered.outputs):
        target = b.load(b.gep(entry.args["outputs"], [i64(k)]))
        source = pointer(buffer)
        with entry.loop(0, elements, f"copy{k}") as i:
            b.store(b.load(entry.element(source, i)), entry.element(target, i))
    b.ret(i32(0))
    header = (f"; Generated by convgen {__version__} -- do not edit.\n"
              f"; network: {title}\n")
    source = header + str(module)
    log.info("network %s (%s): %d steps (%d convolutions), %d bytes of LLVM IR rendered in "
             "%.2f s", comment_text(title), symbol, len(lowered.steps),
             sum(step.kind == "conv" for step in lowered.steps), len(source),
             time.perf_counter() - start)
    return source


def _call_parallel(entry: IRFunction, module: ir.Module, conv: ir.Function, step: Step,
                   c_type: str, pointers: list) -> None:
    """GOMP_parallel(outlined, &pointers, threads, 0): the conv's jobs split across threads."""
    b = entry.b
    outlined = _parallel_conv(module, conv, step, c_type)
    slots = entry.alloca(ir.ArrayType(entry.scalar.as_pointer(), len(pointers)),
                         f"{step.function}.args")
    for k, value in enumerate(pointers):
        b.store(value, b.gep(slots, [i32(0), i32(k)]))
    void_ptr = ir.IntType(8).as_pointer()
    gomp = _declare(module, "GOMP_parallel", ir.FunctionType(
        ir.VoidType(), [outlined.type, void_ptr, ir.IntType(32), ir.IntType(32)]))
    threads = step.plan.threads if step.plan is not None else step.consts["threads"]
    b.call(gomp, [outlined, b.bitcast(slots, void_ptr), i32(threads), i32(0)])


def build_network_llvm(lowered: Lowered, symbol: str, title: str):
    """(IR text, ffi, entry function, keepalive) for the whole network."""
    source = render_network_llvm(lowered, symbol, title)
    entry = build_llvm(source, symbol)
    address, engine = load_object(entry.file("object"), symbol)
    ffi = cffi.FFI()
    function = ffi.cast(f"int (*)({entry_parameters(element_type(lowered.dtype).c_type)})", address)
    return source, ffi, function, (engine,)
