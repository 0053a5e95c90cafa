"""Element types of ONNX models: a model compiles in its own element type (its inputs'):
float64 models in float64, integer models (int8 ... uint64) in their integer type, for the
ops that make sense on integers. Each checked against ONNX Runtime (ONNX's reference
evaluator for the float64 Conv model: ONNX Runtime has no double Conv kernel; hand-computed
values where the case is convgen's own choice) and convgen's oracle, on both CPU backends;
integer results compare exactly."""

from __future__ import annotations

import numpy as np
import pytest

from onnx_helpers import TensorProto, helper, node, numpy_helper, run_onnx_reference, run_ort

import convgen as cg
from convgen.cli.main import main
from convgen.graph.compile import compile_graph
from convgen.graph.ir import Graph, GraphError, Node
from convgen.onnx.backend import ConvgenBackend

CPU = ("c", "llvm")
IR_VERSION = 8


def typed_model(nodes, inputs: dict, outputs: list, elem: int, initializers=None,
                opset: int = 17):
    """A model whose inputs and outputs all have element type ``elem``."""
    graph = helper.make_graph(
        nodes, "dtypes",
        [helper.make_tensor_value_info(name, elem, list(shape)) for name, shape in inputs.items()],
        [helper.make_tensor_value_info(name, elem, None) for name in outputs],
        [numpy_helper.from_array(np.asarray(v), name)
         for name, v in (initializers or {}).items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                             ir_version=IR_VERSION)


# -- float64 ------------------------------------------------------------------------------

def double_model():
    """Conv + Relu + Add (a per-channel constant) + MaxPool, in DOUBLE throughout."""
    rng = np.random.default_rng(0)
    return typed_model(
        [node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
         node("Relu", ["c"], ["r"]),
         node("Add", ["r", "shift"], ["a"]),
         node("MaxPool", ["a"], ["y"], kernel_shape=[2, 2], strides=[2, 2])],
        {"x": (1, 2, 6, 6)}, ["y"], TensorProto.DOUBLE,
        {"w": rng.standard_normal((3, 2, 3, 3)), "b": rng.standard_normal(3),
         "shift": rng.standard_normal((1, 3, 1, 1))})


@pytest.mark.parametrize("backend", CPU)
def test_double_dense_model_matches_onnxruntime(backend):
    """Gemm + Relu + Add + MaxPool + Softmax in DOUBLE (ops ONNX Runtime runs in double)."""
    rng = np.random.default_rng(2)
    model = typed_model(
        [node("Gemm", ["x", "w", "b"], ["g"], transB=1),
         node("Relu", ["g"], ["r"]),
         node("Add", ["r", "x2"], ["a"]),
         node("Reshape", ["a", "shape"], ["a4"]),
         node("MaxPool", ["a4"], ["p"], kernel_shape=[2], strides=[2]),
         node("Flatten", ["p"], ["f"]),
         node("Softmax", ["f"], ["y"], axis=1)],
        {"x": (3, 5), "x2": (3, 8)}, ["y"], TensorProto.DOUBLE,
        {"w": rng.standard_normal((8, 5)), "b": rng.standard_normal(8),
         "shape": np.array([3, 2, 4], dtype=np.int64)})
    x, x2 = rng.standard_normal((3, 5)), rng.standard_normal((3, 8))
    compiled = cg.from_onnx(model).compile(backend=backend)
    assert compiled.dtype == "float64"
    got = compiled(x, x2)
    assert got.dtype == np.float64
    (want,) = run_ort(model, [x, x2])
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(compiled.reference(x, x2), want, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("backend", CPU)
def test_double_model_runs_in_float64(backend):
    model = double_model()
    x = np.random.default_rng(1).standard_normal((1, 2, 6, 6))
    imported = cg.from_onnx(model)
    assert imported.dtype == "float64"
    compiled = imported.compile(backend=backend)
    assert compiled.dtype == "float64"
    y = compiled(x)
    assert y.dtype == np.float64
    (want,) = run_onnx_reference(model, [x])
    # float64 end to end: far tighter than a float32 computation could meet
    np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(compiled.reference(x), want, rtol=1e-12, atol=1e-12)
    with pytest.raises(TypeError, match="input: expected dtype float64, got float32"):
        compiled(x.astype(np.float32))


def test_double_model_through_the_onnx_backend():
    """ConvgenBackend compiles the model's dtype: a DOUBLE model takes float64 arrays."""
    model = double_model()
    x = np.random.default_rng(2).standard_normal((1, 2, 6, 6))
    (y,) = ConvgenBackend.run_model(model, [x])
    (want,) = run_onnx_reference(model, [x])
    assert y.dtype == np.float64
    np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-12)


def test_explicit_float_dtype_converts_the_model():
    """dtype="float32" on a DOUBLE model: the whole model in float32, float32 in and out."""
    model = double_model()
    x = np.random.default_rng(3).standard_normal((1, 2, 6, 6))
    compiled = cg.from_onnx(model).compile(backend="llvm", dtype="float32")
    y = compiled(x.astype(np.float32))
    assert y.dtype == np.float32
    (want,) = run_onnx_reference(model, [x])
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-4)
    with pytest.raises(TypeError, match="input: expected dtype float32, got float64"):
        compiled(x)


# -- integers -----------------------------------------------------------------------------

def int8_model():
    """Add, Mul (wrapping around), Add of a per-channel constant, Clip with int8 bounds,
    Relu and MaxPool with padding (where the pad must not win: int8's least, not -inf)."""
    return typed_model(
        [node("Add", ["x", "y"], ["s"]),
         node("Mul", ["s", "y"], ["m"]),
         node("Add", ["m", "bias"], ["a"]),
         node("Clip", ["a", "lo", "hi"], ["c"]),
         node("MaxPool", ["c"], ["p"], kernel_shape=[3, 3], pads=[1, 1, 1, 1],
              strides=[2, 2]),
         node("Relu", ["a"], ["r"])],
        {"x": (1, 2, 4, 4), "y": (1, 2, 4, 4)}, ["p", "r"], TensorProto.INT8,
        {"bias": np.array([100, -100], dtype=np.int8).reshape(1, 2, 1, 1),
         "lo": np.array(-120, dtype=np.int8), "hi": np.array(90, dtype=np.int8)})


@pytest.mark.parametrize("backend", CPU)
def test_int8_model_matches_onnxruntime_exactly(backend):
    rng = np.random.default_rng(4)
    x = rng.integers(-128, 128, (1, 2, 4, 4), dtype=np.int8)
    y = rng.integers(-128, 128, (1, 2, 4, 4), dtype=np.int8)
    x[0, 0, 0, :2], y[0, 0, 0, :2] = (100, -100), (100, -100)  # 200 and -200 wrap around
    model = int8_model()
    imported = cg.from_onnx(model)
    assert imported.dtype == "int8"
    compiled = imported.compile(backend=backend)
    got = compiled(x, y)
    want = run_ort(model, [x, y])
    reference = compiled.reference(x, y)
    for g, w, r in zip(got, want, reference):
        assert g.dtype == np.int8 and r.dtype == np.int8
        np.testing.assert_array_equal(g, w)
        np.testing.assert_array_equal(r, w)
    # the wrapped sums reach the output: (100+100)*100 = 20000 -> 32 (mod 256), +100 -> -124
    assert got[1][0, 0, 0, 0] == 0 and want[1][0, 0, 0, 0] == 0
    with pytest.raises(TypeError, match="input 0: expected dtype int8, got float32"):
        compiled(x.astype(np.float32), y)


@pytest.mark.parametrize("backend", CPU)
def test_uint64_and_int64_beyond_2_53_are_exact(backend):
    """Values float64 cannot hold round-trip exactly: inputs, initializers, Clip bounds,
    wrapping sums, products and quotients."""
    big = np.array([2**63 + 12345, 2**64 - 1, 2**53 + 1, 7], dtype=np.uint64)
    other = np.array([2**63 + 7, 2, 3, 2**60 + 3], dtype=np.uint64)
    model = typed_model(
        [node("Add", ["x", "y"], ["s"]),
         node("Mul", ["s", "k"], ["m"]),
         node("Div", ["x", "y"], ["d"]),
         node("Clip", ["x", "lo", "hi"], ["c"])],
        {"x": (4,), "y": (4,)}, ["s", "m", "d", "c"], TensorProto.UINT64,
        {"k": np.array([2**61 + 1, 3, 2**62 + 5, 1], dtype=np.uint64),
         "lo": np.array(2**53 + 3, dtype=np.uint64),
         "hi": np.array(2**64 - 2, dtype=np.uint64)})
    compiled = cg.from_onnx(model).compile(backend=backend)
    got = compiled(big, other)
    want = run_ort(model, [big, other])
    exact = [[(a + b) % 2**64 for a, b in zip(big.tolist(), other.tolist())]]
    exact.append([(s * k) % 2**64 for s, k in zip(exact[0], [2**61 + 1, 3, 2**62 + 5, 1])])
    exact.append([a // b for a, b in zip(big.tolist(), other.tolist())])
    exact.append([min(max(a, 2**53 + 3), 2**64 - 2) for a in big.tolist()])
    for g, w, r, e in zip(got, want, compiled.reference(big, other), exact):
        assert g.dtype == np.uint64
        assert g.tolist() == e and w.tolist() == e and r.tolist() == e

    signed = typed_model([node("Div", ["x", "y"], ["d"]), node("Sub", ["x", "y"], ["s"])],
                         {"x": (4,), "y": (4,)}, ["d", "s"], TensorProto.INT64)
    x = np.array([-(2**62) - 3, 2**62 + 1, -7, 2**53 + 1], dtype=np.int64)
    y = np.array([3, -(2**61), 2, -(2**63)], dtype=np.int64)
    got = cg.from_onnx(signed).compile(backend=backend)(x, y)
    want = run_ort(signed, [x, y])
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    # truncation toward zero, done exactly (np.trunc(x / y) would round through float64)
    assert got[0].tolist() == [-(2**62 // 3 + 1), -2, -3, 0]


@pytest.mark.parametrize("backend", CPU)
def test_integer_division_by_zero_and_min_by_minus_one(backend):
    """convgen's choice where C (and ONNX Runtime) trap or are undefined: x / 0 = 0 and
    MIN / -1 = MIN (wrapping), in the compiled code and the oracle alike."""
    model = typed_model([node("Div", ["x", "y"], ["d"])], {"x": (6,), "y": (6,)}, ["d"],
                        TensorProto.INT32)
    low = np.iinfo(np.int32).min
    x = np.array([7, -7, low, low, 5, 0], dtype=np.int32)
    y = np.array([0, 2, -1, 3, -1, 0], dtype=np.int32)
    expected = [0, -3, low, -(2**31 // 3), -5, 0]
    compiled = cg.from_onnx(model).compile(backend=backend)
    assert compiled(x, y).tolist() == expected
    assert compiled.reference(x, y).tolist() == expected


@pytest.mark.parametrize("nodes,match", [
    ([node("Conv", ["x", "w"], ["y"], name="conv", kernel_shape=[1, 1])],
     r"conv \(Conv\): op 'conv' does not run on int8"),
    ([node("Sigmoid", ["x"], ["y"], name="sig")],
     r"sig \(Sigmoid\): activation 'sigmoid' does not run on int8"),
    ([node("AveragePool", ["x"], ["y"], name="avg", kernel_shape=[2, 2])],
     r"avg \(AveragePool\): op 'avg_pool' does not run on int8"),
])
def test_float_only_op_on_an_integer_model(nodes, match):
    model = typed_model(nodes, {"x": (1, 1, 2, 2)}, ["y"], TensorProto.INT8,
                        {"w": np.ones((1, 1, 1, 1), dtype=np.int8)})
    with pytest.raises(GraphError, match=match):
        cg.from_onnx(model).compile(backend="c")


def test_model_dtype_rules():
    relu = [node("Relu", ["x"], ["y"])]
    mixed = typed_model([node("Add", ["x", "z"], ["y"])], {"x": (2,), "z": (2,)}, ["y"],
                        TensorProto.FLOAT)
    mixed.graph.input[1].type.tensor_type.elem_type = TensorProto.DOUBLE
    with pytest.raises(cg.OnnxImportError,
                       match="several element types \\('x': float32, 'z': float64\\)"):
        cg.from_onnx(mixed).compile()
    ints = cg.from_onnx(typed_model(relu, {"x": (2,)}, ["y"], TensorProto.INT16))
    with pytest.raises(cg.OnnxImportError, match="dtype='float32', but the model computes "
                                                 "in int16"):
        ints.compile(dtype="float32")
    floats = cg.from_onnx(typed_model(relu, {"x": (2,)}, ["y"], TensorProto.FLOAT))
    assert floats.dtype == "float32"
    with pytest.raises(cg.OnnxImportError, match="dtype='int8', but the model computes in "
                                                 "float32"):
        floats.compile(dtype="int8")
    with pytest.raises(ValueError, match="dtype: expected one of .*got 'int4'"):
        floats.compile(dtype="int4")


def test_cuda_networks_refuse_integer_types():
    model = typed_model([node("Relu", ["x"], ["y"])], {"x": (2,)}, ["y"], TensorProto.UINT8)
    with pytest.raises(GraphError, match="backend 'cuda' compiles networks of float32, "
                                         "float64 only, not uint8"):
        cg.from_onnx(model).compile(backend="cuda")


@pytest.mark.parametrize("backend", CPU)
def test_int16_sum_pooling_and_data_movement(backend):
    """Sum, GlobalMaxPool, Squeeze/Unsqueeze, Slice, Flatten, Concat, Transpose, Pad
    (constant, an int16 value) and Expand on int16, exactly as ONNX's reference evaluator
    (ONNX Runtime's Sum and GlobalMaxPool are float-only)."""
    outputs = ["a", "c", "d", "e", "f", "g", "h", "i", "j"]
    model = typed_model(
        [node("Sum", ["x", "z", "x"], ["a"]),
         node("GlobalMaxPool", ["x"], ["b"]),
         node("Squeeze", ["b", "axes"], ["c"]),
         node("Unsqueeze", ["c", "axis0"], ["d"]),
         node("Slice", ["x", "starts", "ends", "axes"], ["e"]),
         node("Flatten", ["x"], ["f"], axis=2),
         node("Concat", ["x", "z"], ["g"], axis=1),
         node("Transpose", ["x"], ["h"], perm=[0, 3, 1, 2]),
         node("Pad", ["z", "pads", "fill"], ["i"]),
         node("Expand", ["z", "shape"], ["j"])],
        {"x": (1, 2, 3, 4), "z": (1, 2, 3, 4)}, outputs, TensorProto.INT16,
        {"axes": np.array([2, 3]), "axis0": np.array([0]), "starts": np.array([1, 1]),
         "ends": np.array([3, 4]), "pads": np.array([0, 0, 1, 2, 0, 0, 2, 0]),
         "fill": np.array(-7, dtype=np.int16), "shape": np.array([2, 2, 3, 4])})
    rng = np.random.default_rng(5)
    x, z = (rng.integers(-2**15, 2**15, (1, 2, 3, 4), dtype=np.int16) for _ in range(2))
    compiled = cg.from_onnx(model).compile(backend=backend)
    got = compiled(x, z)
    want = run_onnx_reference(model, [x, z])
    for name, g, w, r in zip(outputs, got, want, compiled.reference(x, z)):
        assert g.dtype == w.dtype == r.dtype == np.int16, name
        np.testing.assert_array_equal(g, w, err_msg=name)
        np.testing.assert_array_equal(r, w, err_msg=name)


@pytest.mark.parametrize("backend", CPU)
def test_integer_graph_against_the_exact_oracle(backend):
    """A graph (not ONNX) on int32 with every integer op: relu6, clip with float bounds
    rounded inward, max pooling over padding, a pad whose fill and a constant at the type's
    extremes, division by 0 and -1; the compiled network equals the integer oracle."""
    info = np.iinfo(np.int32)
    shape = (1, 2, 4, 4)
    graph = Graph([("x", shape), ("y", shape)], [
        Node("s", "add", ["x", "y"]),
        Node("d", "binary", ["x", "y"], {"kind": "div"}),
        Node("m", "binary", ["s", "d"], {"kind": "mul"}),
        Node("u", "binary", ["m", "y"], {"kind": "sub"}),
        Node("c", "activation", ["u"], {"name": "clip", "args": (-100.5, 1e30)}),
        Node("r", "activation", ["u"], {"name": "relu6", "args": ()}),
        Node("p", "max_pool", ["c"], {"kernel_size": (3, 3), "stride": (2, 2),
                                      "padding": (1, 1), "dilation": (1, 1),
                                      "ceil_mode": False}),
        Node("t", "transpose", ["r"], {"perm": (0, 2, 3, 1)}),
        Node("k", "constant", [], params={"value": np.array(
            [info.max, info.min], dtype=np.int32).reshape(1, 2, 1, 1)}),
        Node("e", "expand", ["k"], {"shape": shape}),
        Node("f", "binary", ["e", "x"], {"kind": "add"}),
        Node("q", "pad", ["f"], {"pads": (0, 0, 1, -1, 0, 0, 0, 2), "value": -2.0**31}),
        Node("cc", "cat", ["q", "q"], {"dim": 1}),
    ], ["p", "t", "cc", "d"])
    rng = np.random.default_rng(6)
    x, y = (rng.integers(info.min, info.max, shape, dtype=np.int32, endpoint=True)
            for _ in range(2))
    y.flat[:3] = (0, -1, -1)
    x.flat[:3] = (5, info.min, 9)
    y[0, 1, 1] = rng.integers(-7, 8, 4)  # small values: relu6 and clip keep some
    model = compile_graph(graph, backend, "int32")
    for got, want in zip(model(x, y), model.reference(x, y)):
        assert got.dtype == want.dtype == np.int32
        np.testing.assert_array_equal(got, want)
    d = model(x, y)[3].ravel()
    assert d[:3].tolist() == [0, info.min, -9]


def test_cli_run_makes_inputs_in_the_model_dtype(tmp_path, capsys):
    """`convgen run` on a DOUBLE model makes float64 inputs; on an int8 one, --input is
    read as int8 (exactly) and the output matches ONNX Runtime."""
    path = tmp_path / "double.onnx"
    path.write_bytes(double_model().SerializeToString())
    code = main(["run", str(path), "--repeat", "1", "--check"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "float64" in out and ": ok" in out
    model = typed_model([node("Add", ["x", "k"], ["y"])], {"x": (2, 3)}, ["y"],
                        TensorProto.INT8, {"k": np.full((2, 3), 100, dtype=np.int8)})
    path = tmp_path / "int8.onnx"
    path.write_bytes(model.SerializeToString())
    x = np.array([[-128, -1, 0], [27, 28, 127]], dtype=np.int8)
    np.save(tmp_path / "x.npy", x)
    code = main(["run", str(path), "--input", str(tmp_path / "x.npy"), "-o",
                 str(tmp_path / "y.npy"), "--repeat", "1"])
    assert code == 0, capsys.readouterr().out
    (want,) = run_ort(model, [x])
    got = np.load(tmp_path / "y.npy")
    assert got.dtype == np.int8
    np.testing.assert_array_equal(got, want)  # 28 + 100 and 127 + 100 wrap around


# -- bool inputs: Where's condition -------------------------------------------------------

def where_model(elem: int):
    graph = helper.make_graph(
        [node("Where", ["cond", "x", "y"], ["z"])], "where",
        [helper.make_tensor_value_info("cond", TensorProto.BOOL, [2, 3]),
         helper.make_tensor_value_info("x", elem, [2, 3]),
         helper.make_tensor_value_info("y", elem, [1, 3])],
        [helper.make_tensor_value_info("z", elem, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                             ir_version=IR_VERSION)


@pytest.mark.parametrize("backend", CPU)
@pytest.mark.parametrize("elem, dtype", [(TensorProto.FLOAT, np.float32),
                                         (TensorProto.INT64, np.int64)])
def test_bool_condition_input(backend, elem, dtype):
    """A bool graph input as Where's condition: taken as 0/1 in the network's element type
    (the model's dtype comes from the other inputs); exact against ONNX Runtime."""
    model = where_model(elem)
    imported = cg.from_onnx(model)
    assert imported.dtype == np.dtype(dtype).name
    compiled = imported.compile(backend=backend)
    rng = np.random.default_rng(3)
    cond = rng.random((2, 3)) < 0.5
    x = (rng.standard_normal((2, 3)) * 2**40).astype(dtype)  # int64 beyond float's 2**24
    y = (rng.standard_normal((1, 3)) * 2**40).astype(dtype)
    got = compiled(cond, x, y)
    (want,) = run_ort(model, [cond, x, y])
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(compiled.reference(cond, x, y), want)
    with pytest.raises(TypeError, match="input 0: expected dtype bool, got float32"):
        compiled(cond.astype(np.float32), x, y)


def test_bool_input_elsewhere_is_refused():
    graph = helper.make_graph(
        [node("Where", ["cond", "x", "x"], ["z"]), node("Identity", ["cond"], ["c2"])],
        "where", [helper.make_tensor_value_info("cond", TensorProto.BOOL, [2]),
                  helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("c2", TensorProto.BOOL, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              ir_version=IR_VERSION)
    with pytest.raises(cg.OnnxImportError, match="'cond' is bool.*Identity"):
        cg.from_onnx(model)
