"""ONNX data and element-wise operators on run-time tensors (issue 21): Pad modes reflect,
edge and wrap, Slice with any steps, AveragePool dilations, Max/Min/Mean/Sum with
broadcasting, PRelu, Where, Split and ReduceMean, on backends "c" and "llvm" against ONNX
Runtime (or ONNX's reference evaluator) and the graph oracle; the node cases that other
parts of issue 21 still block (int32 data, shape tensors given as graph inputs, bool
inputs) with those inputs made float or constant; the source size of the new remap
variants; and every new step kind on the CUDA emulator.
"""

from __future__ import annotations

import numpy as np
import pytest

from onnx_helpers import onnx  # noqa: F401  (skips without onnx)
from onnx_helpers import check_model, make_model, node, rand, run_onnx_reference, run_ort
from onnx import TensorProto  # noqa: E402

import convgen as cg  # noqa: E402
from convgen.backends.c.network import render_network as render_c  # noqa: E402
from convgen.backends.cuda.network import render_network as render_cuda  # noqa: E402
from convgen.backends.llvm.network import render_network_llvm  # noqa: E402
from convgen.graph.ir import Graph, GraphError, Node  # noqa: E402
from convgen.graph.lower import lower  # noqa: E402
from convgen.graph.memory import plan_memory  # noqa: E402
from convgen.graph.reference import evaluate  # noqa: E402
from convgen.graph.shapes import infer_graph  # noqa: E402

CPU = ("c", "llvm")


# -- Pad modes ----------------------------------------------------------------------------

PAD_CASES = {  # spatial dims -> (input shape, pads of each Pad: reflect, edge, wrap)
    1: ((2, 3, 5), ([0, 0, 2, 0, 1, 3], [0, 1, 4, 1, 0, 2], [0, 0, 4, 0, 0, 7])),
    2: ((1, 2, 4, 3), ([0, 0, 3, 1, 0, 1, 2, 2], [0, 0, 2, 5, 1, 0, 0, 1],
                       [1, 0, 5, 2, 0, 1, 1, 4])),
    3: ((1, 1, 3, 4, 2), ([0, 0, 1, 2, 1, 0, 0, 2, 3, 1], [0, 0, 2, 0, 3, 0, 0, 0, 1, 2],
                          [0, 0, 4, 1, 2, 0, 0, 1, 5, 3])),
}


@pytest.mark.parametrize("nd", sorted(PAD_CASES))
def test_pad_modes(nd):
    """reflect, edge and wrap in one model (one compile a backend): pads on every dim,
    asymmetric, edge and wrap wider than the dim (wrap repeats the input)."""
    shape, (reflect, edge, wrap) = PAD_CASES[nd]
    pads = {"reflect": reflect, "edge": edge, "wrap": wrap}
    nodes = [node("Pad", ["x", f"p_{m}"], [m], mode=m) for m in pads]
    model = make_model(nodes, {"x": shape}, list(pads), opset=19,
                       initializers={f"p_{m}": np.array(p, np.int64) for m, p in pads.items()})
    x = rand(*shape, seed=nd)
    check_model(model, [x], CPU, expected="onnx")
    if nd == 2:  # and ONNX Runtime too where its kernels agree on the pads
        small = {m: np.array(p, np.int64) for m, p in pads.items()}
        small["wrap"] = np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64)
        check_model(make_model(nodes, {"x": shape}, list(pads), opset=19,
                               initializers={f"p_{m}": p for m, p in small.items()}),
                    [x], ("c",), expected="ort")


@pytest.mark.parametrize("mode, pads, folded", [
    ("reflect", [0, 0, 1, 2, 0, 0, 1, 1], True),   # the conv's padding_mode "reflect"
    ("edge", [0, 0, 2, 0, 0, 0, 1, 3], True),      # "replicate"
    ("wrap", [0, 0, 1, 1, 0, 0, 0, 7], False),     # wider than the input: stays a pad
    ("reflect", [0, 1, 1, 0, 0, 0, 1, 1], False),  # pads a channel: stays a pad
])
def test_pad_modes_before_a_conv(mode, pads, folded):
    """The pad folds into the conv's padding_mode where ConvSpec pads the same way
    (never as zero padding); the result matches ONNX Runtime either way."""
    channels = 3 if pads[1] else 2
    nodes = [node("Pad", ["x", "p"], ["padded"], mode=mode),
             node("Conv", ["padded", "w"], ["y"])]
    model = make_model(nodes, {"x": (1, 2, 5, 6)}, ["y"], opset=19, initializers={
        "w": rand(3, channels, 3, 3, seed=20), "p": np.array(pads, np.int64)})
    compiled = cg.from_onnx(model).compile(backend="c")
    convs = [n for n in compiled.optimized.nodes if n.op == "conv"]
    assert [n.op for n in compiled.optimized.nodes] == (["conv"] if folded else ["pad", "conv"])
    if folded:
        want = {"reflect": "reflect", "edge": "replicate"}[mode]
        assert convs[0].attrs["spec"]["padding_mode"] == want
    x = rand(1, 2, 5, 6, seed=21)
    np.testing.assert_allclose(compiled(x), compiled.reference(x), rtol=1e-4, atol=1e-5)
    ort = run_ort(model, [x])[0] if mode != "wrap" else run_onnx_reference(model, [x])[0]
    np.testing.assert_allclose(compiled(x), ort, rtol=1e-4, atol=1e-5)


def test_pad_mode_errors():
    def imported(mode, pads, opset=19):
        model = make_model([node("Pad", ["x", "p"], ["y"], mode=mode)], {"x": (2, 3)}, ["y"],
                           initializers={"p": np.array(pads, np.int64)}, opset=opset)
        return cg.from_onnx(model).graph

    with pytest.raises(cg.OnnxImportError, match=r"reflect padding of axis 1 must be smaller "
                                                 r"than its size 3 \(got 3\)"):
        imported("reflect", [0, 3, 0, 0])
    with pytest.raises(cg.OnnxImportError, match="mode 'edge' does not crop"):
        imported("edge", [0, -1, 0, 1])
    with pytest.raises(cg.OnnxImportError, match="wrap from opset 19"):
        imported("wrap", [0, 1, 0, 1], opset=18)
    with pytest.raises(cg.OnnxImportError, match="mode='mirror'"):
        imported("mirror", [0, 1, 0, 1])
    # the graph op checks the same rules (a hand-built graph)
    with pytest.raises(GraphError, match="reflect padding of dim 0"):
        infer_graph(Graph([("x", (2, 3))], [Node("p", "pad", ["x"], {
            "pads": (2, 0, 0, 0), "mode": "reflect"})], ["p"]))
    with pytest.raises(GraphError, match="mode='mirror'"):
        infer_graph(Graph([("x", (2, 3))], [Node("p", "pad", ["x"], {
            "pads": (1, 0, 0, 0), "mode": "mirror"})], ["p"]))


def test_pad_modes_fold_on_constants():
    c = np.arange(6, dtype=np.float32).reshape(2, 3)
    nodes = [node("Pad", ["c", "p"], ["padded"], mode="reflect"),
             node("Add", ["x", "padded"], ["y"])]
    model = make_model(nodes, {"x": (2, 7)}, ["y"], opset=19,
                       initializers={"c": c, "p": np.array([0, 2, 0, 2], np.int64)})
    graph = cg.from_onnx(model).graph
    assert "pad" not in {n.op for n in graph.nodes}
    check_model(model, [rand(2, 7)], ("c",))


# -- Slice with steps ---------------------------------------------------------------------

def test_slice_with_steps():
    """Steps 2, -1 and -3 on a run-time tensor (a strided remap), with clamped ends."""
    shape = (2, 5, 7)
    slices = {  # output -> starts, ends, axes, steps
        "a": ([0, 1], [5, 100], [1, 2], [2, 2]),
        "b": ([-1, 4, 6], [-100, 0, 0], [0, 1, 2], [-1, -1, -3]),
        "c": ([3], [-9], [2], [-2]),
    }
    inits, nodes = {}, []
    for out, (starts, ends, axes, steps) in slices.items():
        names = [f"{out}_{k}" for k in ("starts", "ends", "axes", "steps")]
        for name, v in zip(names, (starts, ends, axes, steps)):
            inits[name] = np.array(v, np.int64)
        nodes.append(node("Slice", ["x", *names], [out]))
    model = make_model(nodes, {"x": shape}, list(slices), initializers=inits, opset=13)
    x = rand(*shape, seed=4)
    imported = check_model(model, [x], CPU)
    assert [n.op for n in imported.graph.nodes] == ["slice"] * 3
    want = [x[:, 0:5:2, 1::2], x[::-1, 4:0:-1, 6:0:-3], x[:, :, 3::-2]]
    got = imported.compile(backend="c")(x)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


def test_slice_graph_op_rules():
    def infer(**attrs):
        infer_graph(Graph([("x", (4,))], [Node("s", "slice", ["x"], attrs)], ["s"]))

    with pytest.raises(GraphError, match="must not be 0"):
        infer(starts=(0,), stops=(4,), steps=(0,))
    with pytest.raises(GraphError, match="needs 0 <= start < 4"):
        infer(starts=(4,), stops=(0,), steps=(-1,))
    with pytest.raises(GraphError, match="is empty"):
        infer(starts=(2,), stops=(2,), steps=(1,))
    g = Graph([("x", (4,))], [Node("s", "slice", ["x"], {"starts": (3,), "stops": (-1,),
                                                         "steps": (-2,)})], ["s"])
    infer_graph(g)
    assert g.nodes[0].shape == (2,)
    np.testing.assert_array_equal(evaluate(g, [np.arange(4.0)])[0], [3.0, 1.0])


# -- AveragePool dilations ----------------------------------------------------------------

def test_average_pool_dilations():
    """2-d and 3-d, count_include_pad 0 and 1, ceil_mode, pads: vs ORT and the oracle."""
    nodes = [
        node("AveragePool", ["x"], ["a"], kernel_shape=[2, 3], dilations=[2, 2],
             pads=[1, 2, 1, 2], count_include_pad=1),
        node("AveragePool", ["x"], ["b"], kernel_shape=[3, 2], dilations=[2, 3],
             strides=[2, 1], pads=[2, 1, 1, 0], ceil_mode=1),
        node("AveragePool", ["v"], ["c"], kernel_shape=[2, 2, 2], dilations=[1, 2, 2],
             strides=[1, 2, 1], pads=[0, 1, 1, 1, 1, 0], count_include_pad=1, ceil_mode=1),
    ]
    model = make_model(nodes, {"x": (1, 2, 7, 8), "v": (1, 1, 4, 5, 5)}, ["a", "b", "c"],
                       opset=19)
    inputs = [rand(1, 2, 7, 8, seed=5), rand(1, 1, 4, 5, 5, seed=6)]
    check_model(model, inputs, CPU, expected="ort")
    check_model(model, inputs, ("c",), expected="onnx")


# -- element-wise -------------------------------------------------------------------------

def test_variadic_elementwise_with_broadcasting():
    """Max, Min, Mean, Sum of three inputs of different shapes (and a constant), one model."""
    k = np.array([[0.25], [-0.5], [0.0]], np.float32)  # (3, 1), broadcast against (4,)
    nodes = [node("Max", ["a", "b", "k"], ["max"]), node("Min", ["a", "b", "c"], ["min"]),
             node("Mean", ["a", "b", "c"], ["mean"]), node("Sum", ["c", "a", "k"], ["sum"]),
             node("Max", ["a"], ["one"])]
    model = make_model(nodes, {"a": (2, 3, 4), "b": (3, 1), "c": (4,)},
                       ["max", "min", "mean", "sum", "one"], initializers={"k": k}, opset=13)
    inputs = [rand(2, 3, 4, seed=1), rand(3, 1, seed=2), rand(4, seed=3)]
    check_model(model, inputs, CPU)


def test_elementwise_ops_between_convolutions():
    """PRelu (per-channel slope, as torch exports nn.PReLU), Max and Min between
    convolutions, where values may stay in the blocked layout."""
    c = 16
    inits = {"w1": rand(c, 3, 3, 3, seed=30) * 0.3, "w2": rand(c, c, 1, 1, seed=31) * 0.3,
             "w3": rand(c, c, 3, 3, seed=32) * 0.1,
             "slope": rand(c, 1, 1, seed=33) * 0.5}
    nodes = [node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]),
             node("PRelu", ["a", "slope"], ["p"]),
             node("Conv", ["p", "w2"], ["b"]),
             node("Max", ["p", "b"], ["m"]),
             node("Min", ["m", "a"], ["s"]),
             node("Conv", ["s", "w3"], ["y"], pads=[1, 1, 1, 1])]
    model = make_model(nodes, {"x": (1, 3, 6, 6)}, ["y"], initializers=inits, opset=16)
    check_model(model, [rand(1, 3, 6, 6, seed=34)], CPU)


def test_max_min_propagate_nan():
    model = make_model([node("Max", ["a", "b"], ["max"]), node("Min", ["a", "b"], ["min"])],
                       {"a": (4,), "b": (4,)}, ["max", "min"], opset=13)
    a = np.array([np.nan, 1.0, -2.0, np.nan], np.float32)
    b = np.array([0.5, np.nan, 3.0, np.nan], np.float32)
    want = [np.maximum(a, b), np.minimum(a, b)]
    for backend in CPU:
        got = cg.from_onnx(model).compile(backend=backend)(a, b)
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)  # NaN where either input is NaN


def test_prelu():
    """Slope per channel (constant), run-time and broadcast; an old-opset (C,) slope."""
    slope = np.array([0.1, -0.5, 2.0], np.float32).reshape(3, 1, 1)
    nodes = [node("PRelu", ["x", "k"], ["const"]), node("PRelu", ["x", "s"], ["runtime"])]
    model = make_model(nodes, {"x": (2, 3, 4, 2), "s": (4, 1)}, ["const", "runtime"],
                       initializers={"k": slope}, opset=16)
    check_model(model, [rand(2, 3, 4, 2, seed=7), rand(4, 1, seed=8)], CPU)
    old = make_model([node("PRelu", ["x", "k"], ["y"])], {"x": (1, 3, 2, 2)}, ["y"],
                     initializers={"k": slope.reshape(3)}, opset=6)
    check_model(old, [rand(1, 3, 2, 2, seed=9)], ("c",), expected="onnx")
    grows = make_model([node("PRelu", ["x", "s"], ["y"])], {"x": (3,), "s": (2, 3)}, ["y"],
                       opset=16)
    with pytest.raises(cg.OnnxImportError, match="does not broadcast to the input"):
        cg.from_onnx(grows).graph


def test_where():
    """A run-time float condition (nonzero is true: a bool graph input is refused, the
    network has one float element type), a constant bool one broadcast, and a constant
    all-false one (no where node: the input is picked at import). ONNX's reference runs the
    same model with the condition as bool."""
    cond = np.array([[True], [False], [True]])
    nodes = [node("Where", ["c", "x", "y"], ["runtime"]),
             node("Where", ["k", "x", "z"], ["const"]),
             node("Where", ["f", "x", "y"], ["picked"])]
    outputs = ["runtime", "const", "picked"]
    inits = {"k": cond, "z": np.float32(-7.0), "f": np.zeros((1, 4), bool)}
    model = make_model(nodes, {"c": (3, 4), "x": (3, 4), "y": (4,)}, outputs,
                       initializers=inits, opset=16)
    c = np.array([[0, 1, 0, -2], [0.5, 0, 0, 0], [1, 1, 0, 0]], np.float32)
    inputs = [c, rand(3, 4, seed=10), rand(4, seed=11)]
    imported = check_model(model, inputs, CPU, expected=None)
    assert [n.op for n in imported.graph.nodes].count("where") == 2
    graph = model.graph
    graph.input[0].type.tensor_type.elem_type = TensorProto.BOOL
    want = run_onnx_reference(model, [c != 0, *inputs[1:]])
    got = imported.compile(backend="c")(*inputs)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    # the same condition as a bool graph input (tests/test_onnx_dtypes.py)
    got = cg.from_onnx(model).compile(backend="c")(c != 0, *inputs[1:])
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


# -- Split and ReduceMean -----------------------------------------------------------------

def test_split_forms():
    """opset 11 split attribute, opset 13 split input, opset 18 num_outputs (uneven)."""
    x = rand(2, 7, 3, seed=12)
    models = [
        make_model([node("Split", ["x"], ["a", "b"], axis=1, split=[3, 4])], {"x": x.shape},
                   ["a", "b"], opset=11),
        make_model([node("Split", ["x", "s"], ["a", "b", "c"], axis=-2)], {"x": x.shape},
                   ["a", "b", "c"], initializers={"s": np.array([1, 5, 1], np.int64)},
                   opset=13),
        make_model([node("Split", ["x"], ["a", "b", "c"], axis=1, num_outputs=3)],
                   {"x": x.shape}, ["a", "b", "c"], opset=18),
    ]
    for i, model in enumerate(models):
        check_model(model, [x], CPU if i == 2 else ("c",))
    bad = make_model([node("Split", ["x"], ["a", "b"], axis=1)], {"x": x.shape}, ["a", "b"],
                     opset=13)
    with pytest.raises(cg.OnnxImportError, match="into 2 equal parts"):
        cg.from_onnx(bad).graph


def test_reduce_mean_forms():
    """Axes attribute (opset 13) and input (18), keepdims 0/1, negative axes, every axis,
    and noop_with_empty_axes."""
    x = rand(2, 3, 4, seed=13)
    v13 = make_model([node("ReduceMean", ["x"], ["a"], axes=[0, -1]),
                      node("ReduceMean", ["x"], ["b"], axes=[1], keepdims=0),
                      node("ReduceMean", ["x"], ["c"])], {"x": x.shape}, ["a", "b", "c"],
                     opset=13)
    v18 = make_model([node("ReduceMean", ["x", "axes"], ["a"], keepdims=0),
                      node("ReduceMean", ["x"], ["b"], noop_with_empty_axes=1)],
                     {"x": x.shape}, ["a", "b"],
                     initializers={"axes": np.array([2, 0], np.int64)}, opset=18)
    check_model(v13, [x], CPU)
    check_model(v18, [x], ("c",))


# -- source size --------------------------------------------------------------------------

def _remap_graph(shape: tuple[int, ...]) -> Graph:
    nodes = [Node(f"pad_{m}", "pad", ["x"], {"pads": (0, 1, 2, 0, 0, 2, 1, 1), "mode": m})
             for m in ("reflect", "edge", "wrap")]
    nodes.append(Node("slice", "slice", ["x"], {
        "starts": (0, shape[1] - 1, 1, shape[3] - 1), "stops": (1, -1, shape[2], -1),
        "steps": (1, -1, 2, -3)}))
    nodes.append(Node("max", "binary", ["x", "x"], {"kind": "max"}))
    nodes.append(Node("where", "where", ["x", "x", "x"]))
    nodes.append(Node("pool", "avg_pool", ["x"], {
        "kernel_size": (2, 2), "stride": (1, 1), "padding": (1, 1), "dilation": (2, 3),
        "ceil_mode": False, "count_include_pad": True}))
    g = Graph([("x", shape)], nodes, [n.name for n in nodes])
    infer_graph(g)
    return g


def _sources(g: Graph) -> list[int]:
    lowered = lower(g, plan_memory(g, 4), "float32", layout="nchw")
    return [len(render_c(lowered, "s", "t")), len(render_network_llvm(lowered, "s", "t")),
            len(render_cuda(lowered, "s", "t"))]


def test_remap_source_does_not_grow_with_the_tensor_size():
    """Pad modes, strided slices, max, where and dilated pooling: the same source for 10**3
    and 10**6 elements, a few digits of larger constants aside (issue 19)."""
    small = _sources(_remap_graph((1, 4, 10, 25)))
    large = _sources(_remap_graph((1, 40, 100, 250)))
    for what, s, m in zip(("c", "llvm", "cuda"), small, large):
        assert m <= s + 600, (what, s, m)


# -- CUDA (the emulator) ------------------------------------------------------------------

def test_new_step_kinds_on_cuda():
    """Each new step kind in one network on backend "cuda" (the CPU emulator, every array
    access bounds-checked): remap reflect/edge/wrap/strided, binary max/min/prelu, where,
    dilated average pooling."""
    shape = (1, 2, 5, 6)
    inits = {f"p_{m}": np.array(p, np.int64) for m, p in
             (("reflect", [0, 0, 2, 1, 0, 0, 1, 3]), ("edge", [0, 1, 3, 0, 0, 0, 0, 2]),
              ("wrap", [0, 0, 1, 7, 0, 0, 2, 1]))}
    inits.update(starts=np.array([4, 5], np.int64), ends=np.array([-9, 0], np.int64),
                 axes=np.array([2, 3], np.int64), steps=np.array([-2, -2], np.int64),
                 slope=np.array([0.3, -1.5], np.float32).reshape(2, 1, 1))
    nodes = [node("Pad", ["x", f"p_{m}"], [m], mode=m) for m in ("reflect", "edge", "wrap")]
    nodes += [node("Slice", ["x", "starts", "ends", "axes", "steps"], ["sliced"]),
              node("Max", ["x", "y"], ["max"]), node("Min", ["x", "y"], ["min"]),
              node("PRelu", ["x", "slope"], ["prelu"]), node("Where", ["y", "x", "y"], ["where"]),
              node("AveragePool", ["x"], ["pool"], kernel_shape=[2, 2], dilations=[2, 3],
                   pads=[1, 1, 0, 2], count_include_pad=1)]
    outputs = ["reflect", "edge", "wrap", "sliced", "max", "min", "prelu", "where", "pool"]
    model = make_model(nodes, {"x": shape, "y": shape}, outputs, initializers=inits, opset=19)
    y = rand(*shape, seed=15)
    y[0, 0, 1] = 0.0  # where: some false conditions
    imported = check_model(model, [rand(*shape, seed=14), y], ("cuda",), expected="onnx")
    ops = {n.op for n in imported.graph.nodes}
    assert {"pad", "slice", "binary", "where", "avg_pool"} <= ops
