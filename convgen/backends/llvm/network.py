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
    """One non-convolution step as an internal function of one-lane vector code."""

    def __init__(self, module: ir.Module, step: Step, c_type: str, pointer_args: tuple,
                 int_args: tuple = ()):
        super().__init__(module, step.function, c_type, 1, pointer_args, int_args,
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
        b, c = self.b, self.c
        x, y = self.args["x"], self.args["y"]
        (in_d, in_h, in_w), (out_d, out_h, out_w) = c["in_size"], c["out_size"]
        kernel, stride, pad = c["kernel"], c["stride"], c["padding"]
        dilation = c["dilation"]
        in_volume, out_volume = in_d * in_h * in_w, out_d * out_h * out_w
        total = self.alloca(self.vec, "total")
        count = self.alloca(I64, "count")
        sizes = (in_d, in_h, in_w)
        with self.loop(0, c["nc"], "nc") as nc, self.loop(0, out_d, "od") as od, \
                self.loop(0, out_h, "oh") as oh, self.loop(0, out_w, "ow") as ow:
            xc = self.element(x, self.channel_start(nc, in_volume))
            out_index = b.add(self.channel_start(nc, out_volume), self.pixel(
                b.add(b.mul(b.add(b.mul(od, i64(out_h)), oh), i64(out_w)), ow)))
            starts = [b.sub(b.mul(o, i64(s)), i64(p)) for o, s, p in
                      zip((od, oh, ow), stride, pad)]
            b.store(self.zero(), total)
            b.store(i64(0), count)
            with self.window_taps(starts, kernel, dilation, sizes) as coords:
                index = b.add(b.mul(b.add(b.mul(coords[0], i64(in_h)), coords[1]),
                                    i64(in_w)), coords[2])
                b.store(b.fadd(b.load(total), self.at(xc, self.pixel(index))), total)
                b.store(b.add(b.load(count), i64(1)), count)
            if c["count_include_pad"]:  # the taps inside the padded input
                divisor = i64(1)
                for start, k, size, p, d in zip(starts, kernel, sizes, c["padding_end"],
                                                dilation):
                    # min(k, ceil((size + p - start) / d)); the start lies before size + p
                    taps = b.sdiv(b.sub(i64(size + p + d - 1), start), i64(d))
                    taps = b.select(b.icmp_signed("<", taps, i64(k)), taps, i64(k))
                    divisor = b.mul(divisor, taps)
            else:
                divisor = b.load(count)
            self.put(b.fdiv(b.load(total), self.to_float(divisor)), y, out_index)
        return self.finish()

    def max_pool(self) -> ir.Function:
        """One output row at a time: for each kernel tap, the run of output columns whose
        input column lies inside the input (no per-element checks; LLVM vectorizes it)."""
        b, c = self.b, self.c
        x, y = self.args["x"], self.args["y"]
        (in_d, in_h, in_w), (out_d, out_h, out_w) = c["in_size"], c["out_size"]
        (k_d, k_h, k_w), (s_d, s_h, s_w) = c["kernel"], c["stride"]
        (p_d, p_h, p_w), (d_d, d_h, d_w) = c["padding"], c["dilation"]
        runs = []  # (kw shift, first column, end column) computed here, once
        for kw in range(k_w):
            shift = kw * d_w - p_w
            lo = min(0 if shift >= 0 else (-shift + s_w - 1) // s_w, out_w)
            hi = 0 if in_w - 1 - shift < 0 else (in_w - 1 - shift) // s_w + 1
            runs.append((shift, lo, max(min(hi, out_w), lo)))
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


def _op_function(module: ir.Module, step: Step, c_type: str) -> ir.Function:
    kind = step.kind
    if kind == "max_pool":
        return _OpIR(module, step, c_type, ("x", "y"), ("job_begin", "job_end")).max_pool()
    if kind == "max_pool_indices":
        return _OpIR(module, step, c_type, ("x", "y")).max_pool_indices()
    if kind == "avg_pool":
        return _OpIR(module, step, c_type, ("x", "y")).avg_pool()
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
        elif step.kind == "max_pool":
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
