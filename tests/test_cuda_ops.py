"""The network ops other than convolution as CUDA kernels (templates/cuda/ops.cu.j2,
convgen.backends.cuda.ops): every step kind on the CPU emulator, in forward and reverse
thread order, against the float64 oracle (convgen.graph.reference), float32 and float64;
and every kernel compiled once by nvcc for sm_80 where nvcc is installed.

Each case is one graph node lowered exactly as a network's (convgen.graph.lower._lower_node,
the constants lowering adds for pooling and linear steps included); all cases of a dtype
share one emulator build, each with its own host entry, called in two launches (blocks
[0, half) and [half, blocks)) so that job_begin is exercised.
"""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from convgen.backends.c.render import environment
from convgen.backends.cuda.build import build_cuda, find_nvcc, kernel_resources
from convgen.backends.cuda.emulator import build_emulated, load_emulated
from convgen.backends.cuda.ops import OP_KINDS, OP_THREADS, launch_shape, op_context, work_items
from convgen.dtypes import dtype_info
from convgen.errors import CompilerNotFoundError
from convgen.graph.ir import Node
from convgen.graph.lower import Buffer, Step, _lower_node, _Packer
from convgen.graph.reference import op_reference
from convgen.graph.shapes import infer_shape
from convgen.plan.layout import block_lanes

DTYPES = ("float32", "float64")
TOLERANCE = {"float32": (2e-5, 2e-6), "float64": (1e-12, 1e-14)}  # rtol, atol * (1 + max|want|)

PRELUDE = """\
#ifndef CONVGEN_CUDA_EMULATOR
#define CG_AT(a, i, n) ((a)[i])
#endif
"""


def _r(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _pool(op, kernel, stride, padding, **extra) -> Node:
    attrs = {"kernel_size": kernel, "stride": stride, "padding": padding, **extra}
    return Node(op, op, ["x"], attrs)


def _linear(bias: bool, activation=None, args=()) -> Node:
    r = _r(3)
    params = {"weight": r.standard_normal((37, 19)) / 4}
    if bias:
        params["bias"] = r.standard_normal(37)
    attrs = {"activation": activation, "activation_args": tuple(args)} if activation else {}
    return Node("fc", "linear", ["x"], attrs, params)


def _batch_norm() -> Node:
    r = _r(4)
    params = {"running_mean": r.standard_normal(5), "running_var": r.uniform(0.5, 2.0, 5),
              "weight": r.uniform(0.5, 1.5, 5), "bias": r.standard_normal(5)}
    return Node("bn", "batch_norm", ["x"], {"eps": 1e-5}, params)


def _act(name, args=()) -> Node:
    return Node(f"act {name}", "activation", ["x"], {"name": name, "args": tuple(args)})


def _resample(axis, size, mode, **attrs) -> Node:
    attrs = {"axis": axis, "size": size, "mode": mode, "scale": 1.7, **attrs}
    return Node(f"resample {mode}", "resample", ["x"], attrs)


# case id -> (node, input shapes); odd sizes, so that most cases end in a partial block
CASES = {
    # 2-d, stride 2, padding 1, dilation 2, ceil mode (a last window over the right edge)
    "max_pool_2d": (_pool("max_pool", (3, 5), (2, 2), (1, 2), dilation=(2, 1),
                          ceil_mode=True), [(2, 3, 11, 10)]),
    # asymmetric padding (ONNX's padding_end) in 3-d
    "max_pool_3d": (_pool("max_pool", (2, 3, 2), (1, 2, 2), (1, 1, 0),
                          padding_end=(0, 2, 1), dilation=(1, 1, 1)), [(1, 2, 4, 7, 6)]),
    "max_pool_1d": (_pool("max_pool", (4,), (3,), (2,), dilation=(1,), ceil_mode=True),
                    [(3, 4, 17)]),
    # ONNX MaxPool's Indices, column-major (storage_order 1), dilated, ceil mode
    "max_pool_indices": (_pool("max_pool_indices", (3, 2), (2, 2), (1, 1), dilation=(2, 1),
                               ceil_mode=True, storage_order=1), [(2, 3, 9, 8)]),
    "avg_pool_pad": (_pool("avg_pool", (3, 3), (2, 2), (1, 1), ceil_mode=True,
                           count_include_pad=True), [(2, 3, 10, 9)]),
    "avg_pool_nopad": (_pool("avg_pool", (3, 3), (2, 2), (1, 1), ceil_mode=True,
                             count_include_pad=False), [(2, 3, 10, 9)]),
    "avg_pool_end": (_pool("avg_pool", (3, 4), (2, 3), (1, 2), padding_end=(2, 0),
                           count_include_pad=True), [(2, 2, 9, 11)]),
    "avg_pool_end_nopad": (_pool("avg_pool", (3, 4), (2, 3), (1, 2), padding_end=(2, 0),
                                 count_include_pad=False), [(2, 2, 9, 11)]),
    "adaptive_2d": (Node("gap", "adaptive_avg_pool", ["x"], {"output_size": (3, 4)}),
                    [(2, 5, 7, 10)]),
    "adaptive_3d": (Node("gap3", "adaptive_avg_pool", ["x"], {"output_size": (2, 3, 1)}),
                    [(1, 3, 5, 7, 4)]),
    "linear_bias": (_linear(True), [(13, 19)]),
    "linear_nobias": (_linear(False), [(2, 7, 19)]),
    "linear_gelu": (_linear(True, "gelu"), [(13, 19)]),
    "linear_leaky": (_linear(False, "leaky_relu", (0.2,)), [(5, 19)]),
    "act_relu": (_act("relu"), [(3, 7, 11, 5)]),
    "act_relu6": (_act("relu6"), [(1000,)]),
    "act_clip": (_act("clip", (-0.5, 0.75)), [(4, 99)]),
    "act_sigmoid": (_act("sigmoid"), [(2, 300)]),
    "act_tanh": (_act("tanh"), [(7, 9)]),
    "act_elu": (_act("elu", (0.7,)), [(3, 50)]),
    "act_silu": (_act("silu"), [(3, 50)]),
    "act_gelu": (_act("gelu"), [(3, 50)]),
    "softmax_dim1": (Node("sm", "softmax", ["x"], {"dim": 1}), [(3, 11, 4, 5)]),
    "softmax_last": (Node("sm", "softmax", ["x"], {"dim": 1}), [(300, 7)]),
    "log_softmax_dim2": (Node("lsm", "log_softmax", ["x"], {"dim": 2}), [(2, 3, 9, 6)]),
    "batch_norm": (_batch_norm(), [(3, 5, 6, 7)]),
    "add": (Node("add", "add", ["a", "b"]), [(2, 3, 5, 7), (2, 3, 5, 7)]),
    "cat": (Node("cat", "cat", ["a", "b", "c"], {"dim": 1}),
            [(2, 3, 4, 5), (2, 1, 4, 5), (2, 6, 4, 5)]),
    "cat_last": (Node("cat", "cat", ["a", "b"], {"dim": 2}), [(3, 4, 5), (3, 4, 2)]),
    "transpose": (Node("tr", "transpose", ["x"], {"perm": (0, 2, 3, 1)}), [(2, 5, 6, 7)]),
    "pad": (Node("pad", "pad", ["x"], {"pads": (0, 1, 2, 3, 0, 2, 1, -1), "value": 1.5}),
            [(2, 3, 5, 6)]),
    "pad_inf": (Node("pad", "pad", ["x"], {"pads": (1, 2, 0, 3), "value": -np.inf}),
                [(4, 6)]),
    "expand": (Node("ex", "expand", ["x"], {"shape": (2, 3, 4, 5)}), [(3, 1, 5)]),
    "lrn": (Node("lrn", "lrn", ["x"], {"size": 4, "alpha": 1e-2, "beta": 0.75, "bias": 2.0}),
            [(2, 7, 3, 5)]),
    "lrn_odd": (Node("lrn", "lrn", ["x"], {"size": 3, "alpha": 0.5, "beta": 0.6, "bias": 1.0}),
                [(3, 5, 11)]),
    "binary_add": (Node("b", "binary", ["a", "b"], {"kind": "add"}), [(5, 61), (5, 61)]),
    "binary_sub": (Node("b", "binary", ["a", "b"], {"kind": "sub"}), [(5, 61), (5, 61)]),
    "binary_mul": (Node("b", "binary", ["a", "b"], {"kind": "mul"}), [(5, 61), (5, 61)]),
    "binary_div": (Node("b", "binary", ["a", "b"], {"kind": "div"}), [(5, 61), (5, 61)]),
    "binary_max": (Node("b", "binary", ["a", "b"], {"kind": "max"}), [(5, 61), (5, 61)]),
    "binary_min": (Node("b", "binary", ["a", "b"], {"kind": "min"}), [(5, 61), (5, 61)]),
    "binary_prelu": (Node("b", "binary", ["a", "b"], {"kind": "prelu"}), [(5, 61), (5, 61)]),
    "where": (Node("w", "where", ["c", "a", "b"]), [(3, 70), (3, 70), (3, 70)]),
    # the pad modes' index maps (wrap wider than the dim) and a strided, reversed slice
    "pad_reflect": (Node("pad", "pad", ["x"], {"pads": (1, 0, 4, 0, 2, 3), "mode": "reflect"}),
                    [(2, 3, 5)]),
    "pad_edge": (Node("pad", "pad", ["x"], {"pads": (0, 2, 6, 1, 0, 3), "mode": "edge"}),
                 [(2, 3, 5)]),
    "pad_wrap": (Node("pad", "pad", ["x"], {"pads": (0, 4, 1, 1, 7, 2), "mode": "wrap"}),
                 [(2, 3, 5)]),
    "slice_steps": (Node("sl", "slice", ["x"], {"starts": (1, 0, 6), "stops": (-1, 4, 0),
                                                "steps": (-1, 3, -2)}), [(2, 4, 7)]),
    "avg_pool_dilated": (_pool("avg_pool", (2, 3), (2, 1), (1, 2), padding_end=(0, 3),
                               dilation=(3, 2), ceil_mode=True, count_include_pad=True),
                         [(2, 3, 10, 9)]),
    "avg_pool_dilated_nopad": (_pool("avg_pool", (2, 2, 2), (1, 2, 1), (1, 0, 1),
                                     dilation=(2, 1, 3), count_include_pad=False),
                               [(1, 2, 5, 6, 7)]),
    "matmul": (Node("mm", "matmul", ["a", "b"]), [(2, 3, 7, 9), (2, 3, 9, 11)]),
    "matmul_2d": (Node("mm", "matmul", ["a", "b"]), [(17, 5), (5, 33)]),
    "resample_nearest": (_resample(2, 7, "nearest", nearest_mode="round_prefer_ceil"),
                         [(2, 3, 5, 4)]),
    "resample_cubic": (_resample(1, 4, "cubic", exclude_outside=True), [(2, 9, 5)]),
    "resample_linear_last": (_resample(2, 11, "linear", coordinate="align_corners"),
                             [(3, 2, 6)]),
}


class Case:
    """One case lowered for one dtype: its step, parameters, inputs and kernel context."""

    def __init__(self, key: str, dtype: str):
        node, shapes = CASES[key]
        node = Node(f"{node.name} */ {key}", node.op, list(node.inputs), dict(node.attrs),
                    dict(node.params))  # a name a comment must defuse
        node.shape = infer_shape(node, shapes)
        self.key, self.node, self.shapes, self.dtype = key, node, shapes, dtype
        self.c_type = dtype_info(dtype).c_type
        step = Step(node.op, node.name, f"{key}_{dtype}", [], Buffer("arena", 0))
        packer = _Packer(dtype)
        _lower_node(node, step, shapes, packer, dtype)
        # what convgen.graph.lower.lower adds (the CUDA backend lowers with layout "nchw")
        if step.kind in ("max_pool", "avg_pool", "adaptive_avg_pool"):
            step.consts.update(blocked=False, lanes=block_lanes(dtype))
        if step.kind == "max_pool":
            step.consts["threads"] = min(4, step.consts["jobs"])
        if step.kind == "linear":
            step.consts.update(lanes=block_lanes(dtype), threads=1)
        self.step = step
        params = packer.array()
        self.params = {name: np.ascontiguousarray(params[offset:offset + size])
                       for name, offset, size in self._param_sizes(step)}
        r = _r(sum(map(ord, key)))
        self.inputs = []
        for k, shape in enumerate(shapes):
            x = r.standard_normal(shape)
            if node.op == "binary" and k == 1:
                x = np.sign(x + 1e-3) * r.uniform(0.5, 2.0, shape)  # no division by ~0
            if node.op == "where" and k == 0:
                x = np.where(x > 0, x, 0.0)  # a false condition about half the time
            if key == "max_pool_2d":
                x.flat[17] = np.nan  # propagates to the windows that read it
            self.inputs.append(np.ascontiguousarray(x.astype(dtype)))
        self.in_elements = [math.prod(s) for s in shapes]
        self.out_elements = math.prod(node.shape)
        self.o = op_context(step, self.c_type, self.in_elements, self.out_elements)
        self.blocks, self.threads = launch_shape(step.kind, step.consts)

    @staticmethod
    def _param_sizes(step):
        c = step.consts
        if step.kind == "linear":
            yield "weight", step.params["weight"], c["in_features"] * c["out_features"]
            if "bias" in step.params:
                yield "bias", step.params["bias"], c["out_features"]
        elif step.kind == "batch_norm":
            for name in ("scale", "shift"):
                yield name, step.params[name], c["channels"]
        elif step.kind == "resample":
            for name in ("index", "weight"):
                if name in step.params:
                    yield name, step.params[name], c["out_size"] * c["taps"]

    def kernel(self) -> str:
        template = environment().from_string(
            '{% import "cuda/ops.cu.j2" as ops %}{{ ops[kind](o) }}')
        return template.render(kind=self.step.kind, o=self.o)

    def pointer_names(self) -> list[str]:
        if self.step.kind == "linear":
            return ["x", "w", "b", "y"]
        if self.step.kind == "batch_norm":
            return ["x", "scale", "shift", "y"]
        if self.step.kind == "resample":
            return ["x", "index", "weight", "y"]
        return [f"in{k}" for k in range(len(self.inputs))] + ["y"]

    def host_entry(self) -> str:
        t, names = self.c_type, self.pointer_names()
        params = ", ".join([f"const {t} *{n}" for n in names[:-1]] + [f"{t} *y"])
        args = ", ".join(names)
        return (f'extern "C" int run_{self.step.function}({params}, long long begin, '
                "long long end) {\n"
                f"    return cg_emu_launch(dim3((unsigned int)(end - begin)), "
                f"dim3({self.threads}), [=] {{ {self.step.function}_kernel({args}, begin); }});\n"
                "}\n")

    def cdef(self) -> str:
        pointers = ", ".join(["void *"] * len(self.pointer_names()))
        return f"int run_{self.step.function}({pointers}, long long, long long);\n"

    def arguments(self, ffi) -> list:
        if self.step.kind == "linear":
            return [self.inputs[0], self.params["weight"], self.params.get("bias", ffi.NULL)]
        if self.step.kind == "batch_norm":
            return [self.inputs[0], self.params["scale"], self.params["shift"]]
        if self.step.kind == "resample":
            return [self.inputs[0], self.params["index"], self.params.get("weight", ffi.NULL)]
        return list(self.inputs)

    def expected(self) -> np.ndarray:
        return op_reference(self.node, [x.astype(np.float64) for x in self.inputs])


@pytest.fixture(scope="module")
def libraries():
    """Per dtype: every case, and one emulator library holding all their kernels."""
    out = {}
    for dtype in DTYPES:
        cases = {key: Case(key, dtype) for key in CASES}
        source = PRELUDE + "".join(c.kernel() for c in cases.values())
        source += "#ifdef CONVGEN_CUDA_EMULATOR\n" + "".join(
            c.host_entry() for c in cases.values()) + "#endif\n"
        library = load_emulated(build_emulated(source, f"ops_{dtype}"),
                                "".join(c.cdef() for c in cases.values()))
        out[dtype] = (cases, library)
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("key", sorted(CASES))
def test_op_matches_oracle(libraries, key, dtype):
    cases, library = libraries[dtype]
    case = cases[key]
    want = case.expected()
    results = []
    for order in ("forward", "reverse"):
        y = np.full(case.node.shape, np.nan, dtype=dtype)  # what no thread writes stays NaN
        half = case.blocks // 2
        for begin, end in ((0, half), (half, case.blocks)):  # job_begin > 0 in the second
            if end > begin:
                library.call(f"run_{case.step.function}", *case.arguments(library.ffi), y,
                             begin, end, order=order)
        results.append(y)
    np.testing.assert_array_equal(results[0], results[1])  # threads are independent
    rtol, atol = TOLERANCE[dtype]
    finite = want[np.isfinite(want)]
    scale = 1.0 + (float(np.abs(finite).max()) if finite.size else 0.0)
    np.testing.assert_allclose(results[0], want, rtol=rtol, atol=atol * scale, equal_nan=True)
    if key == "max_pool_2d":
        assert np.isnan(want).any() and not np.isnan(want).all()
    if key == "pad_inf":
        assert np.isneginf(results[0]).any()


def test_extra_blocks_stop_at_the_tail_guard(libraries):
    """A launch of more blocks than the work needs: the extra threads return at the tail
    guard (no access out of bounds, which the emulator would report)."""
    cases, library = libraries["float32"]
    case = cases["act_relu"]
    y = np.full(case.node.shape, np.nan, dtype="float32")
    library.call(f"run_{case.step.function}", *case.arguments(library.ffi), y, 0,
                 case.blocks + 2)
    np.testing.assert_array_equal(y, np.maximum(case.inputs[0], 0))


def test_launch_shape_and_context():
    assert OP_THREADS == 256
    case = Case("act_relu6", "float32")  # 1000 elements
    assert launch_shape("activation", case.step.consts) == (4, 256)
    assert launch_shape("add", {"elements": 1}) == (1, 256)
    assert launch_shape("add", {"elements": 0}) == (1, 256)
    assert launch_shape("softmax", {"outer": 3, "size": 1000, "inner": 200}) == (3, 256)
    assert launch_shape("cat", {"outer": 2, "out_row": 257, "copies": []}) == (3, 256)
    assert launch_shape("max_pool", {"nc": 4, "out_size": (1, 16, 16)}) == (4, 256)
    assert launch_shape("linear", {"rows": 1, "out_features": 1000}) == (4, 256)
    with pytest.raises(ValueError, match="conv"):
        launch_shape("conv", {})
    o = case.o
    assert o["threads"] == 256 and o["blocks"] == 4
    assert o["function"] == case.step.function and o["c_type"] == "float"
    assert o["in_elements"] == [1000] and o["out_elements"] == 1000
    assert "*/" not in o["name"] and o["has_bias"] is False
    assert o["math_fn"]("exp") == "expf"
    linear = Case("linear_bias", "float64")
    assert linear.o["has_bias"] is True and linear.o["math_fn"]("exp") == "exp"
    assert linear.o["threads"] == 256  # the CPU thread count of the consts is replaced
    assert Case("linear_nobias", "float32").o["has_bias"] is False
    # every kind is covered by the cases, and every kernel is named as the contract says
    kinds = {Case(key, "float32").step.kind for key in CASES}
    assert kinds == set(OP_KINDS)
    text = case.kernel()
    assert (f'extern "C" __global__ void __launch_bounds__(256) {case.step.function}_kernel('
            in text)
    assert text.count("__global__") == 1 and "long long job_begin)" in text
    assert work_items("matmul", {"batch": 2, "m": 3, "k": 5, "n": 7}) == 42


def test_nvcc_compiles_every_kernel():
    """Every case's kernel, both dtypes, is valid CUDA for sm_80 (ptxas: no spills)."""
    try:
        find_nvcc()
    except CompilerNotFoundError as exc:
        pytest.skip(str(exc))
    cases = [Case(key, dtype) for dtype in DTYPES for key in CASES]
    source = PRELUDE + "".join(c.kernel() for c in cases)
    start = time.perf_counter()
    entry = build_cuda(source, "ops", ("sm_80",))
    resources = {r.kernel: r for r in kernel_resources(entry)}
    assert set(resources) == {f"{c.step.function}_kernel" for c in cases}, \
        f"nvcc build ({time.perf_counter() - start:.1f} s)"
    for r in resources.values():
        assert r.spill_stores == 0 and r.spill_loads == 0 and r.shared == 0, r.line()
