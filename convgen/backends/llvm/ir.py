"""Shared llvmlite.ir helpers: one IRFunction per generated function.

Loops use counters in allocas placed in the entry block; the optimizer's
SROA/mem2reg turns them into registers. Vector values have ``lanes`` lanes of
the element type (``lanes == 1`` gives one-lane vectors for scalar code).
"""

from __future__ import annotations

import contextlib
import math

from llvmlite import ir

from convgen.dtypes import element_type_for_c_type

I1, I8, I32, I64 = ir.IntType(1), ir.IntType(8), ir.IntType(32), ir.IntType(64)


def i64(value: int) -> ir.Constant:
    return ir.Constant(I64, value)


def i32(value: int) -> ir.Constant:
    return ir.Constant(I32, value)


_LLVM_SCALARS = {"float": ir.FloatType, "double": ir.DoubleType}  # dtypes' llvm_type names


def scalar_type(c_type: str) -> ir.Type:
    """The LLVM element type of the dtype spelled ``c_type`` in C (an integer element type
    of a network: iN, whose sign the operations choose)."""
    info = element_type_for_c_type(c_type)
    if info.is_integer:
        return ir.IntType(info.bits)
    return _LLVM_SCALARS[info.llvm_type]()


class IRFunction:
    """A function being built: typed pointer and i64 arguments, entry block, builder."""

    def __init__(self, module: ir.Module, name: str, c_type: str, lanes: int,
                 pointer_args: tuple[str, ...], int_args: tuple[str, ...] = (),
                 internal: bool = False, pointer_to_pointer_args: tuple[str, ...] = ()):
        self.module = module
        self.name = name
        self.lanes = lanes
        info = element_type_for_c_type(c_type)
        self.element_type = info
        self.integer = info.is_integer
        self.scalar = scalar_type(c_type)
        # intrinsic name suffix: llvm.fma.v8f32
        self.suffix = f"{'i' if info.is_integer else 'f'}{8 * info.itemsize}"
        self.itemsize = info.itemsize
        self.vec = ir.VectorType(self.scalar, lanes)
        self.ivec = ir.VectorType(I32, lanes)
        self.mask_type = ir.VectorType(I1, lanes)
        ptr = self.scalar.as_pointer()
        types = ([ptr.as_pointer()] * len(pointer_to_pointer_args) + [ptr] * len(pointer_args)
                 + [I64] * len(int_args))
        names = pointer_to_pointer_args + pointer_args + int_args
        self.function = ir.Function(module, ir.FunctionType(I32, types), name=name)
        if internal:
            self.function.linkage = "internal"
        self.args = {}
        for arg, arg_name in zip(self.function.args, names):
            arg.name = arg_name
            self.args[arg_name] = arg
        for arg_name in pointer_args:
            self.args[arg_name].add_attribute("noalias")
        entry = self.function.append_basic_block("entry")
        body = self.function.append_basic_block("body")
        self.alloca_builder = ir.IRBuilder(entry)
        self.alloca_builder.branch(body)
        self.alloca_builder.position_at_start(entry)
        self.b = ir.IRBuilder(body)

    # -- small helpers ---------------------------------------------------------------
    def alloca(self, typ: ir.Type, name: str) -> ir.AllocaInstr:
        """An alloca in the entry block (so mem2reg/SROA can promote it)."""
        return self.alloca_builder.alloca(typ, name=name)

    def split_index(self, value, order: list[tuple[str, int]], last: str) -> dict:
        """Mixed-radix digits of ``value`` (i64): {name: value % count} for each (name,
        count) of ``order``, innermost first, dividing as it goes; the quotient left is
        ``last``."""
        b, digits = self.b, {}
        for name, count in order:
            digits[name] = b.urem(value, i64(count), name=name)
            value = b.udiv(value, i64(count))
        digits[last] = value
        return digits

    @contextlib.contextmanager
    def loop(self, start, stop, name: str):
        """for (i = start; i < stop; ++i): yields i (i64)."""
        b = self.b
        start = i64(start) if isinstance(start, int) else start
        stop = i64(stop) if isinstance(stop, int) else stop
        counter = self.alloca(I64, name + ".addr")
        b.store(start, counter)
        cond = self.function.append_basic_block(name + ".cond")
        body = self.function.append_basic_block(name + ".body")
        end = self.function.append_basic_block(name + ".end")
        b.branch(cond)
        b.position_at_end(cond)
        index = b.load(counter, name=name)
        b.cbranch(b.icmp_signed("<", index, stop), body, end)
        b.position_at_end(body)
        yield index
        b.store(b.add(b.load(counter), i64(1)), counter)
        b.branch(cond)
        b.position_at_end(end)

    @contextlib.contextmanager
    def outlined(self, name: str):
        """A new internal function ``void name(i8* ctx)`` (an OpenMP parallel region's
        body, or its serial call): inside the block every helper builds into it; yields the
        function, whose builder the caller ends with ``ret void``."""
        saved = self.function, self.b, self.alloca_builder
        function = ir.Function(self.module, ir.FunctionType(ir.VoidType(), [I8.as_pointer()]),
                               name=name)
        function.linkage = "internal"
        entry = function.append_basic_block("entry")
        body = function.append_basic_block("body")
        self.function = function
        self.alloca_builder = ir.IRBuilder(entry)
        self.alloca_builder.branch(body)
        self.alloca_builder.position_at_start(entry)
        self.b = ir.IRBuilder(body)
        try:
            yield function
        finally:
            self.function, self.b, self.alloca_builder = saved

    @contextlib.contextmanager
    def dynamic_loop(self, start, stop, chunk: int, name: str = "job"):
        """The jobs [start, stop) (i64) this OpenMP thread takes, ``chunk`` at a time, from
        GOMP_loop_dynamic_start/next (as ``schedule(dynamic, chunk)``): yields each job (i64).
        Ends with GOMP_loop_end_nowait: a thread out of jobs leaves without waiting."""
        b = self.b
        start = i64(start) if isinstance(start, int) else start
        stop = i64(stop) if isinstance(stop, int) else stop
        long_ptr = I64.as_pointer()
        start_fn = self.intrinsic("GOMP_loop_dynamic_start", I8,
                                  [I64, I64, I64, I64, long_ptr, long_ptr])
        next_fn = self.intrinsic("GOMP_loop_dynamic_next", I8, [long_ptr, long_ptr])
        end_fn = self.intrinsic("GOMP_loop_end_nowait", ir.VoidType(), [])
        first = self.alloca(I64, name + ".chunk.first")
        last = self.alloca(I64, name + ".chunk.last")
        more = self.alloca(I8, name + ".chunk.more")
        b.store(b.call(start_fn, [start, stop, i64(1), i64(max(1, chunk)), first, last]), more)
        cond = self.function.append_basic_block(name + ".chunks.cond")
        body = self.function.append_basic_block(name + ".chunks.body")
        end = self.function.append_basic_block(name + ".chunks.end")
        b.branch(cond)
        b.position_at_end(cond)
        b.cbranch(b.icmp_unsigned("!=", b.load(more), ir.Constant(I8, 0)), body, end)
        b.position_at_end(body)
        with self.loop(b.load(first), b.load(last), name) as job:
            yield job
        b.store(b.call(next_fn, [first, last]), more)
        b.branch(cond)
        b.position_at_end(end)
        b.call(end_fn, [])

    def constant_table(self, name: str, values: list[int], typ: ir.IntType) -> ir.GlobalVariable:
        array_type = ir.ArrayType(typ, len(values))
        table = ir.GlobalVariable(self.module, array_type, name=f"{self.name}.{name}")
        table.global_constant = True
        table.linkage = "internal"
        table.initializer = ir.Constant(array_type, [int(v) for v in values])
        return table

    def fold_row(self, fold, o):
        """(explicit row, i32 amount added to its entries >= 0) of row ``o`` (i64) of a
        folded index table (convgen.plan.base.FoldedTable), as the C backend's
        convgen_fold."""
        b = self.b
        below = b.icmp_signed("<", o, i64(fold.first))
        inside = b.icmp_signed("<", o, i64(fold.b))
        rel = b.sub(o, i64(fold.a))
        periods = b.sdiv(rel, i64(fold.period)) if fold.period > 1 else rel
        phase = b.srem(rel, i64(fold.period)) if fold.period > 1 else i64(0)
        interior = b.select(inside, b.add(i64(fold.a), phase), b.add(b.sub(o, i64(fold.b)),
                                                                     i64(fold.first)))
        row = b.select(below, o, interior, name="fold.row")
        add = b.select(b.or_(below, b.not_(inside)), i64(0),
                       b.mul(periods, i64(fold.step)))
        return row, b.trunc(add, I32, name="fold.add")

    def table_load(self, table: ir.GlobalVariable, index, name: str):
        return self.b.load(self.b.gep(table, [i64(0), index], inbounds=True), name=name)

    def element(self, base, offset, name: str = ""):
        """&base[offset] for a scalar pointer."""
        return self.b.gep(base, [offset], inbounds=True, name=name)

    def splat(self, scalar, vec_type=None):
        vec_type = vec_type or self.vec
        undef = ir.Constant(vec_type, ir.Undefined)
        one = self.b.insert_element(undef, scalar, i32(0))
        zeros = ir.Constant(ir.VectorType(I32, vec_type.count), [0] * vec_type.count)
        return self.b.shuffle_vector(one, undef, zeros)

    def intrinsic(self, name: str, ret: ir.Type, args: list[ir.Type]) -> ir.Function:
        existing = self.module.globals.get(name)
        if existing is not None:
            return existing
        return ir.Function(self.module, ir.FunctionType(ret, args), name=name)

    def vector_intrinsic(self, name: str, arity: int) -> ir.Function:
        """llvm.<name>.v<VL><f32|f64> taking ``arity`` vectors, returning a vector."""
        return self.intrinsic(f"llvm.{name}.v{self.lanes}{self.suffix}", self.vec,
                              [self.vec] * arity)

    def lane_mask_below(self, first_lane, limit):
        """<i1 x VL>: (first_lane + lane) < limit, both i64."""
        lanes = ir.Constant(ir.VectorType(I64, self.lanes), list(range(self.lanes)))
        vec64 = ir.VectorType(I64, self.lanes)
        index = self.b.add(self.splat(first_lane, vec64), lanes)
        return self.b.icmp_signed("<", index, self.splat(limit, vec64))

    def zero(self):
        return ir.Constant(self.vec, [0 if self.integer else 0.0] * self.lanes)

    def vconst(self, value: float | int):
        """``value`` in every lane (an integer element type: an int, written as the signed
        integer of the same bits, so a uint64 beyond 2**63 is its bit pattern)."""
        if self.integer:
            bits = self.element_type.bits
            value = int(value) % (1 << bits)
            value -= (1 << bits) if value >= 1 << (bits - 1) else 0
            return ir.Constant(self.vec, [value] * self.lanes)
        return ir.Constant(self.vec, [float(value)] * self.lanes)

    def load_vec(self, pointer):
        return self.b.load(self.b.bitcast(pointer, self.vec.as_pointer()), align=self.itemsize)

    def store_vec(self, value, pointer):
        self.b.store(value, self.b.bitcast(pointer, self.vec.as_pointer()), align=self.itemsize)

    # -- masked vector memory access (lanes off: not touched, read as zero) ----------
    def offset_pointers(self, base, offsets):
        """(<VL x T*> &base[offsets] with -1 offsets at base, <VL x i1> offsets >= 0) for
        ``offsets`` a <VL x i32>: what a masked gather or scatter through a table takes."""
        b = self.b
        vec64 = ir.VectorType(I64, self.lanes)
        valid = b.icmp_signed(">=", offsets, ir.Constant(self.ivec, [0] * self.lanes))
        safe = b.select(valid, b.sext(offsets, vec64), ir.Constant(vec64, [0] * self.lanes))
        address = b.add(self.splat(b.ptrtoint(base, I64), vec64),
                        b.mul(safe, ir.Constant(vec64, [self.itemsize] * self.lanes)))
        return b.inttoptr(address, ir.VectorType(self.scalar.as_pointer(), self.lanes)), valid

    def masked_gather(self, pointers, mask):
        ptr_vec = ir.VectorType(self.scalar.as_pointer(), self.lanes)
        gather = self.intrinsic(f"llvm.masked.gather.v{self.lanes}{self.suffix}.v{self.lanes}p0",
                                self.vec, [ptr_vec, I32, self.mask_type, self.vec])
        return self.b.call(gather, [pointers, i32(self.itemsize), mask, self.zero()])

    def masked_scatter(self, value, pointers, mask) -> None:
        ptr_vec = ir.VectorType(self.scalar.as_pointer(), self.lanes)
        scatter = self.intrinsic(f"llvm.masked.scatter.v{self.lanes}{self.suffix}.v{self.lanes}p0",
                                 ir.VoidType(), [self.vec, ptr_vec, I32, self.mask_type])
        self.b.call(scatter, [value, pointers, i32(self.itemsize), mask])

    def masked_load(self, pointer, mask):
        """The lanes of ``mask`` from the vector at scalar pointer ``pointer``, else 0."""
        vec_ptr = self.vec.as_pointer()
        load = self.intrinsic(f"llvm.masked.load.v{self.lanes}{self.suffix}.p0", self.vec,
                              [vec_ptr, I32, self.mask_type, self.vec])
        return self.b.call(load, [self.b.bitcast(pointer, vec_ptr), i32(self.itemsize), mask,
                                  self.zero()])

    def masked_store(self, value, pointer, mask) -> None:
        vec_ptr = self.vec.as_pointer()
        store = self.intrinsic(f"llvm.masked.store.v{self.lanes}{self.suffix}.p0",
                               ir.VoidType(), [self.vec, vec_ptr, I32, self.mask_type])
        self.b.call(store, [value, self.b.bitcast(pointer, vec_ptr), i32(self.itemsize), mask])

    def scalar_intrinsic(self, name: str, arity: int = 1) -> ir.Function:
        return self.intrinsic(f"llvm.{name}.{self.suffix}", self.scalar, [self.scalar] * arity)

    def activation(self, v, name: str | None, args: tuple[float, ...]):
        """``name`` (with ``args``) applied to vector ``v`` in this function's dtype."""
        b = self.b

        def const(value: float):
            return ir.Constant(self.vec, [float(value)] * self.lanes)

        def clamp(low, high, value):
            value = b.select(b.fcmp_ordered("<", value, const(low)), const(low), value)
            return b.select(b.fcmp_ordered(">", value, const(high)), const(high), value)

        def vector_call(function: str, value):
            return b.call(self.vector_intrinsic(function, 1), [value])

        if name is None:
            return v
        if name == "relu":
            return b.select(b.fcmp_ordered("<", v, const(0.0)), const(0.0), v)
        if name == "leaky_relu":
            return b.select(b.fcmp_ordered("<", v, const(0.0)), b.fmul(v, const(args[0])), v)
        if name == "relu6":
            return clamp(0.0, 6.0, v)
        if name == "clip":
            return clamp(args[0], args[1], v)
        if name == "sigmoid":
            return b.fdiv(const(1.0), b.fadd(const(1.0), vector_call("exp", b.fneg(v))))
        if name == "tanh":
            return vector_call("tanh", v)
        if name == "elu":
            negative = b.fmul(const(args[0]), b.fsub(vector_call("exp", v), const(1.0)))
            return b.select(b.fcmp_ordered(">", v, const(0.0)), v, negative)
        if name == "silu":
            return b.fdiv(v, b.fadd(const(1.0), vector_call("exp", b.fneg(v))))
        def libm(name: str, value):  # a C math library function, lane by lane
            function = self.intrinsic(name + ("f" if self.suffix == "f32" else ""),
                                      self.scalar, [self.scalar])
            result = ir.Constant(self.vec, ir.Undefined)
            for lane in range(self.lanes):
                lane_value = b.call(function, [b.extract_element(value, i32(lane))])
                result = b.insert_element(result, lane_value, i32(lane))
            return result

        if name == "gelu":  # exact form
            scaled = b.fmul(v, const(0.7071067811865476))
            return b.fmul(b.fmul(const(0.5), v), b.fadd(const(1.0), libm("erf", scaled)))
        if name == "erf":
            return libm("erf", v)
        if name == "softplus":  # max(v, 0) + log1p(exp(-|v|))
            positive = b.fcmp_ordered(">", v, const(0.0))
            negative_abs = b.select(positive, b.fneg(v), v)
            return b.fadd(b.select(positive, v, const(0.0)),
                          libm("log1p", vector_call("exp", negative_abs)))
        if name == "softsign":
            absolute = b.select(b.fcmp_ordered("<", v, const(0.0)), b.fneg(v), v)
            return b.fdiv(v, b.fadd(const(1.0), absolute))
        if name == "gelu_tanh":
            cube = b.fmul(b.fmul(v, v), v)
            inner = b.fmul(const(math.sqrt(2.0 / math.pi)),
                           b.fadd(v, b.fmul(const(0.044715), cube)))
            return b.fmul(b.fmul(const(0.5), v), b.fadd(const(1.0), vector_call("tanh", inner)))
        if name == "hardswish":
            return b.fdiv(b.fmul(v, clamp(0.0, 6.0, b.fadd(v, const(3.0)))), const(6.0))
        if name == "hardsigmoid":
            return clamp(0.0, 1.0, b.fadd(b.fmul(const(args[0]), v), const(args[1])))
        if name == "selu":
            negative = b.fmul(const(args[0]), b.fsub(vector_call("exp", v), const(1.0)))
            return b.fmul(const(args[1]), b.select(b.fcmp_ordered(">", v, const(0.0)), v,
                                                   negative))
        raise AssertionError(name)
