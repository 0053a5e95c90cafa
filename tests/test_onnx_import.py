"""from_onnx itself: sources (path, bytes, ModelProto), input shapes, several inputs and
outputs, node names, the lazy onnx import, and clear errors for everything malformed."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from onnx_helpers import TensorProto, check_model, make_model, node, rand, run_ort

import convgen as cg
from convgen.errors import ConvgenError


def conv_model(**conv_attrs):
    return make_model([node("Conv", ["x", "w", "b"], ["c"], name="conv", **conv_attrs),
                       node("Relu", ["c"], ["y"], name="relu")], {"x": (1, 3, 6, 6)}, ["y"],
                      {"w": rand(4, 3, 3, 3, seed=1), "b": rand(4, seed=2)})


# -- sources and shapes -----------------------------------------------------------------

def test_path_bytes_and_model_proto_import_alike(tmp_path):
    model = conv_model(pads=[1, 1, 1, 1])
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    x = rand(1, 3, 6, 6)
    outputs = [cg.from_onnx(source).compile(backend="c")(x)
               for source in (model, path, str(path), model.SerializeToString())]
    for y in outputs[1:]:
        np.testing.assert_array_equal(y, outputs[0])
    assert cg.from_onnx(str(path)).label == str(path)


def test_several_inputs_and_outputs_in_graph_order():
    model = make_model([node("Add", ["a", "b"], ["s"]), node("Relu", ["s"], ["r"]),
                        node("Mul", ["a", "b"], ["m"])],
                       {"a": (2, 3), "b": (2, 3)}, ["m", "r", "s"])
    imported = check_model(model, [rand(2, 3), rand(2, 3, seed=1)])
    assert imported.input_names == ["a", "b"] and imported.output_names == ["m", "r", "s"]
    a, b = rand(2, 3), rand(2, 3, seed=1)
    m, r, s = imported.compile(backend="llvm")(a, b)
    np.testing.assert_allclose(m, a * b, rtol=1e-6)
    np.testing.assert_allclose(r, np.maximum(a + b, 0), rtol=1e-6)
    np.testing.assert_allclose(s, a + b, rtol=1e-6)


def test_symbolic_dims_per_input():
    model = make_model([node("MatMul", ["a", "b"], ["y"])], {"a": ("N", 3), "b": (3, "M")},
                       ["y"])
    imported = cg.from_onnx(model, input_shape=[(2, 3), (3, 4)])
    assert imported.input_shapes == [(2, 3), (3, 4)]
    assert imported.graph.inputs == [("a", (2, 3)), ("b", (3, 4))]
    check_model(model, [rand(5, 3), rand(3, 1, seed=1)], input_shape=[(5, 3), (3, 1)])
    with pytest.raises(cg.OnnxImportError, match="2 shape\\(s\\) for 1|1 shape\\(s\\) for 2"):
        cg.from_onnx(model, input_shape=(2, 3))
    with pytest.raises(cg.OnnxImportError, match="rank 3"):
        cg.from_onnx(model, input_shape=[(2, 3, 1), (3, 4)])
    with pytest.raises(cg.OnnxImportError, match="changes the static dim 1"):
        cg.from_onnx(model, input_shape=[(2, 4), (3, 4)])
    with pytest.raises(cg.OnnxImportError, match="must be a shape"):
        cg.from_onnx(model, input_shape=[(2, 0), (3, 4)])


def test_node_names_are_unique_and_carry_the_op_type():
    model = make_model([node("Relu", ["x"], ["a"], name="act"),
                        node("Sigmoid", ["a"], ["b"], name="act"),
                        node("Tanh", ["b"], ["c"]),
                        node("Softmax", ["c"], ["y"], name="x")], {"x": (2, 3)}, ["y"])
    graph = cg.from_onnx(model).graph
    assert [(n.name, n.module) for n in graph.nodes] == [
        ("act", "Relu"), ("act_1", "Sigmoid"), ("Tanh_2", "Tanh"), ("x_1", "Softmax")]


def test_import_convgen_does_not_import_onnx():
    code = "import sys, convgen; assert 'onnx' not in sys.modules; print(convgen.from_onnx)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_missing_onnx_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ImportError, match=r"pip install convgen\[onnx\]"):
        cg.from_onnx("model.onnx")


def test_errors_are_convgen_and_value_errors():
    assert issubclass(cg.OnnxImportError, ConvgenError)
    assert issubclass(cg.OnnxImportError, ValueError)


# -- malformed files --------------------------------------------------------------------

@pytest.mark.parametrize("content", [b"", b"hello, this is text\n", b"\x93NUMPY\x01\x00v\x00",
                                     bytes(range(256))])
def test_not_an_onnx_file(tmp_path, content):
    path = tmp_path / "x.onnx"
    path.write_bytes(content)
    with pytest.raises(cg.OnnxImportError, match="not an ONNX model"):
        cg.from_onnx(path)


def test_truncated_files_are_rejected_at_every_length(tmp_path):
    data = conv_model(pads=[1, 1, 1, 1]).SerializeToString()
    path = tmp_path / "cut.onnx"
    for size in sorted({1, 7, len(data) // 3, len(data) // 2, len(data) - 40, len(data) - 1}
                       | set(range(0, len(data), 97))):
        path.write_bytes(data[:size])
        with pytest.raises(cg.OnnxImportError) as info:
            cg.from_onnx(path)
        assert str(path) in str(info.value)


def test_missing_file_is_an_os_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        cg.from_onnx(tmp_path / "absent.onnx")


def test_wrong_source_type():
    with pytest.raises(TypeError, match="path, bytes or an onnx.ModelProto"):
        cg.from_onnx(42)


# -- malformed or unsupported models ----------------------------------------------------

def test_every_unsupported_operator_is_listed_in_one_error():
    model = make_model([node("TopK", ["x", "k"], ["t", "i"], name="topk"),
                        node("Relu", ["t"], ["r"]),
                        node("Cos", ["r"], ["e1"], name="cos_a"),
                        node("Cos", ["e1"], ["e2"]),
                        helper_node_in_domain("Gelu", ["e2"], ["y"], "com.microsoft")],
                       {"x": (2, 5)}, ["y"], {"k": np.array([2], np.int64)})
    with pytest.raises(cg.OnnxImportError) as info:
        cg.from_onnx(model)
    message = str(info.value)
    assert "4 nodes use operators convgen does not support" in message
    assert "Cos (cos_a, Cos_3)" in message and "TopK (topk)" in message
    assert "com.microsoft.Gelu (Gelu_4)" in message


def helper_node_in_domain(op, inputs, outputs, domain):
    from onnx import helper

    return helper.make_node(op, inputs, outputs, domain=domain)


def test_missing_initializer():
    model = make_model([node("Conv", ["x", "w"], ["y"], name="conv")], {"x": (1, 3, 6, 6)},
                       ["y"])
    with pytest.raises(cg.OnnxImportError,
                       match="node 'conv' \\(Conv\\): input 'w' is not defined"):
        cg.from_onnx(model)


def test_weight_computed_from_a_graph_input_is_specialized():
    # a weight that is a graph input is specialized (test_onnx_weight_inputs.py), and so
    # is one computed from a graph input by nodes that fold (Relu of constants)
    model = make_model([node("Relu", ["w"], ["w2"]),
                        node("Conv", ["x", "w2"], ["y"], name="conv")],
                       {"x": (1, 3, 6, 6), "w": (4, 3, 3, 3)}, ["y"])
    imported = cg.from_onnx(model)
    assert imported.input_names == ["x"]
    assert [name for name, *_ in imported.specialized_inputs] == ["w"]
    w = rand(4, 3, 3, 3, seed=2)
    graph = imported.graph_for(weights={"w": w})
    np.testing.assert_array_equal(graph.node("conv").params["weight"], np.maximum(w, 0))


@pytest.mark.parametrize("attrs,weight,match", [
    (dict(kernel_shape=[5, 5]), (4, 3, 3, 3), "kernel_shape=\\[5, 5\\] does not match"),
    ({}, (4, 2, 3, 3), "weight W of shape .* needs dim 1 = input channels / group = 3 / 1"),
    (dict(group=2), (4, 3, 3, 3), "group=2 needs dim 1 = input channels / group = 3 / 2"),
    ({}, (4, 3, 3), "weight W has shape \\(4, 3, 3\\); a 2-d convolution needs 4 dims"),
    (dict(strides=[1, 1, 1]), (4, 3, 3, 3), "attribute strides=\\[1, 1, 1\\] must have 2 entries"),
    (dict(pads=[1, 1, 1, 1]), (4, 3, 9, 9), "not a valid convolution"),
])
def test_conv_attributes_that_do_not_fit_the_weight(attrs, weight, match):
    model = make_model([node("Conv", ["x", "w"], ["y"], name="conv", **attrs)],
                       {"x": (1, 3, 6, 6)}, ["y"], {"w": rand(*weight)})
    with pytest.raises(cg.OnnxImportError, match="node .conv. \\(Conv\\): .*" + match):
        cg.from_onnx(model)


def test_bias_of_the_wrong_size():
    model = make_model([node("Conv", ["x", "w", "b"], ["y"], name="conv")],
                       {"x": (1, 3, 6, 6)}, ["y"], {"w": rand(4, 3, 3, 3), "b": rand(5)})
    with pytest.raises(cg.OnnxImportError, match="bias B has shape \\(5,\\), expected \\(4,\\)"):
        cg.from_onnx(model)


def test_unsupported_element_type_input():
    """Integer inputs are taken (tests/test_onnx_dtypes.py), bool ones as Where's condition
    only; float16 is not."""
    model = make_model([node("Relu", ["x"], ["y"])], {"x": (2, 3)}, ["y"],
                       elem_type=TensorProto.FLOAT16)
    with pytest.raises(cg.OnnxImportError,
                       match="graph input 'x' has element type FLOAT16; .*float32.*int8"):
        cg.from_onnx(model)
    model = make_model([node("Relu", ["x"], ["y"])], {"x": (2, 3)}, ["y"],
                       elem_type=TensorProto.BOOL)
    with pytest.raises(cg.OnnxImportError,
                       match="graph input 'x' is bool; .*Where's condition.*Relu"):
        cg.from_onnx(model)


@pytest.mark.parametrize("nodes,outputs,match", [
    ([node("MaxPool", ["x"], ["y", "idx"], name="pool", kernel_shape=[2, 2]),
      node("Cast", ["idx"], ["z"], name="cast", to=1)], ["z"],
     "'cast' \\(Cast\\): reads 'idx'.*graph outputs only"),
    ([node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y", "rm"], name="bn")],
     ["y", "rm"], "output 1 \\('rm'\\) is used"),
    ([node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], name="bn",
           training_mode=1)], ["y"], "training_mode=1"),
    ([node("Pad", ["x", "p"], ["y"], name="pad", mode="wrap")], ["y"],
     "wrap from opset 19"),
    ([node("Gather", ["x", "i"], ["y"], name="gather")], ["y"],
     "data must be a constant.*the graph input 'x'.*compile\\(constants="),
    ([node("Reshape", ["x", "x"], ["y"], name="reshape")], ["y"],
     "'reshape' \\(Reshape\\): its input 1 is the graph input 'x' of element type FLOAT"),
    ([node("Slice", ["x", "ss", "se", "sa", "st"], ["y"], name="slice")], ["y"],
     "steps must not be 0"),
    ([node("Reshape", ["x", "bad"], ["y"], name="reshape")], ["y"],
     "cannot reshape \\(1, 2, 4, 4\\)"),
    ([node("Softmax", ["x"], ["y"], name="sm", axis=4)], ["y"], "axis=4 is out of range"),
    ([node("Add", ["x", "e"], ["y"], name="add")], ["y"], "do not broadcast"),
])
def test_unsupported_uses_of_supported_operators(nodes, outputs, match):
    init = {"s": rand(2), "b": rand(2), "m": rand(2), "v": rand(2, low=0.5),
            "p": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "i": np.array([0], np.int64),
            "e": rand(3), "bad": np.array([3, -1], np.int64),
            "ss": np.array([0], np.int64), "se": np.array([4], np.int64),
            "sa": np.array([2], np.int64), "st": np.array([0], np.int64)}
    init = {k: v for k, v in init.items() if any(k in n.input for n in nodes)}
    model = make_model(nodes, {"x": (1, 2, 4, 4)}, outputs, init, opset=15)
    with pytest.raises(cg.OnnxImportError, match=match):
        cg.from_onnx(model)


def test_average_pool_dilations_are_imported():
    """(tests/test_onnx_data_ops.py runs them against ONNX Runtime)"""
    model = make_model([node("AveragePool", ["x"], ["y"], name="pool", kernel_shape=[2, 2],
                             dilations=[2, 3])], {"x": (1, 2, 6, 6)}, ["y"], opset=19)
    (pool,) = cg.from_onnx(model).graph.nodes
    assert pool.op == "avg_pool" and pool.attrs["dilation"] == (2, 3)
    assert pool.shape == (1, 2, 4, 3)


def test_opset_older_than_6():
    model = make_model([node("Relu", ["x"], ["y"])], {"x": (2, 3)}, ["y"], opset=5)
    with pytest.raises(cg.OnnxImportError, match="opset 5 is older than 6"):
        cg.from_onnx(model)


def test_graph_without_outputs():
    model = make_model([node("Relu", ["x"], ["y"])], {"x": (2, 3)}, ["y"])
    del model.graph.output[:]
    with pytest.raises(cg.OnnxImportError, match="no graph with outputs"):
        cg.from_onnx(model)


def test_errors_are_raised_by_from_onnx_not_by_compile():
    model = conv_model(kernel_shape=[2, 2])
    with pytest.raises(cg.OnnxImportError):
        cg.from_onnx(model)
    # the model itself runs in onnxruntime only when it is valid; a valid one matches
    valid = conv_model(pads=[0, 1, 1, 0])
    (want,) = run_ort(valid, [rand(1, 3, 6, 6)])
    np.testing.assert_allclose(cg.from_onnx(valid).compile(backend="c")(rand(1, 3, 6, 6)),
                               want, rtol=1e-4, atol=1e-5)


def test_damaged_models_import_or_raise_onnx_import_errors():
    # bytes flipped, deleted and inserted anywhere in a whole network: from_onnx either
    # imports what is left (a changed weight, a changed attribute) or says what is wrong
    from test_onnx_resnet import resnet_model

    data = resnet_model(batch=1).SerializeToString()
    rng = np.random.default_rng(0)
    outcomes = {"imported": 0, "rejected": 0}
    for trial in range(300):
        damaged = bytearray(data)
        at = int(rng.integers(0, len(damaged)))
        if trial % 3 == 0:
            del damaged[at:at + int(rng.integers(1, 20))]
        elif trial % 3 == 1:
            damaged[at:at] = rng.integers(0, 256, int(rng.integers(1, 6)), dtype=np.uint8).tobytes()
        else:
            for at in rng.integers(0, len(damaged), int(rng.integers(1, 8))):
                damaged[at] = int(rng.integers(0, 256))
        with np.errstate(all="ignore"):
            try:
                cg.from_onnx(bytes(damaged)).graph
                outcomes["imported"] += 1
            except cg.OnnxImportError:
                outcomes["rejected"] += 1
    assert outcomes["imported"] > 0 and outcomes["rejected"] > 0


@pytest.mark.parametrize("op,inputs,match", [
    ("Gemm", ["x"], "takes 2 to 3 input\\(s\\) at opset 15, got 1"),
    ("Add", ["x", ""], "input 1 \\(B\\) is required but empty"),
    ("Relu", ["x", "x"], "takes 1 input\\(s\\) at opset 15, got 2"),
])
def test_input_counts_follow_the_operator_schema(op, inputs, match):
    model = make_model([node(op, inputs, ["y"], name="n")], {"x": (2, 3)}, ["y"], opset=15)
    with pytest.raises(cg.OnnxImportError, match="node 'n' \\(" + op + "\\): " + match):
        cg.from_onnx(model)
