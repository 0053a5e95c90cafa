"""ONNX data movement, elementwise arithmetic, identities and constant folding; compiled
on c and llvm and compared with convgen's oracle and onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest

from onnx_helpers import TensorProto, check_model, helper, make_model, node, rand

import convgen as cg


def ops_of(imported) -> list[str]:
    return [n.op for n in imported.graph.nodes]


def ints(name: str, values) -> tuple[str, np.ndarray]:
    return name, np.array(values, dtype=np.int64)


# -- reshaping --------------------------------------------------------------------------

@pytest.mark.parametrize("x_shape,shape,opset,allowzero", [
    ((2, 3, 4), [0, -1], 13, 0),
    ((2, 3, 4), [4, 0, 2], 6, 0),
    ((2, 3, 4), [-1], 14, 0),
    ((2, 3, 4), [2, 3, 2, 2], 14, 1),
    ((1, 6, 2, 2), [1, 3, 2, 4], 13, 0),
])
def test_reshape(x_shape, shape, opset, allowzero):
    attrs = {"allowzero": allowzero} if opset >= 14 else {}
    model = make_model([node("Reshape", ["x", "s"], ["r"], **attrs),
                        node("Relu", ["r"], ["y"])], {"x": x_shape}, ["y"],
                       dict([ints("s", shape)]), opset=opset)
    check_model(model, [rand(*x_shape)])


@pytest.mark.parametrize("axis,opset", [(None, 9), (0, 9), (2, 11), (-1, 13), (3, 13)])
def test_flatten(axis, opset):
    attrs = {} if axis is None else {"axis": axis}
    model = make_model([node("Flatten", ["x"], ["f"], **attrs), node("Sigmoid", ["f"], ["y"])],
                       {"x": (2, 3, 2, 2)}, ["y"], opset=opset)
    check_model(model, [rand(2, 3, 2, 2)])


@pytest.mark.parametrize("perm", [None, [0, 2, 3, 1], [1, 0, 3, 2]])
def test_transpose(perm):
    attrs = {} if perm is None else {"perm": perm}
    model = make_model([node("Transpose", ["x"], ["y"], **attrs)], {"x": (2, 3, 4, 5)}, ["y"])
    check_model(model, [rand(2, 3, 4, 5)])


@pytest.mark.parametrize("opset", [11, 13])
def test_squeeze_unsqueeze_on_tensors(opset):
    if opset < 13:
        nodes = [node("Unsqueeze", ["x"], ["u"], axes=[0, -1]),
                 node("Squeeze", ["u"], ["y"], axes=[0])]
        init = {}
    else:
        nodes = [node("Unsqueeze", ["x", "a"], ["u"]), node("Squeeze", ["u", "b"], ["y"])]
        init = dict([ints("a", [0, -1]), ints("b", [0])])
    model = make_model(nodes, {"x": (2, 3)}, ["y"], init, opset=opset)
    imported = check_model(model, [rand(2, 3)])
    assert imported.compile(backend="c").output_shapes == [(2, 3, 1)]


def test_squeeze_without_axes():
    model = make_model([node("Squeeze", ["x"], ["y"])], {"x": (1, 3, 1, 2)}, ["y"])
    check_model(model, [rand(1, 3, 1, 2)])


# -- concatenation, padding, slicing, expanding ----------------------------------------

def test_concat_of_tensors_and_constants():
    model = make_model([node("Relu", ["a"], ["r"]),
                        node("Concat", ["r", "c", "b"], ["y"], axis=-3)],
                       {"a": (1, 2, 3, 3), "b": (1, 1, 3, 3)}, ["y"],
                       {"c": rand(1, 3, 3, 3, seed=4)})
    imported = check_model(model, [rand(1, 2, 3, 3), rand(1, 1, 3, 3, seed=1)])
    assert "cat" in ops_of(imported)


@pytest.mark.parametrize("opset,pads,value,axes", [
    (6, [0, 0, 1, 2, 0, 0, 2, 1], 0.0, None),
    (10, [0, 1, 0, -1, 0, 0, 2, 0], 1.5, None),
    (11, [0, 0, 1, 1, 0, 0, 1, 1], None, None),
    (13, [1, 0, 0, 0, 0, 1, 0, -1], -2.0, None),
    (18, [1, 2, 0, 1], 0.5, [1, 3]),
    (19, [2, 1], None, [-1]),
])
def test_pad_constant_mode(opset, pads, value, axes):
    init: dict = {}
    if opset < 11:
        nodes = [node("Pad", ["x"], ["y"], pads=pads, mode="constant",
                      **({} if value is None else {"value": value}))]
    else:
        names = ["x", "p"]
        init["p"] = np.array(pads, dtype=np.int64)
        if value is not None or axes is not None:
            names.append("v" if value is not None else "")
        if value is not None:
            init["v"] = np.array(value, dtype=np.float32)
        if axes is not None:
            names.append("ax")
            init["ax"] = np.array(axes, dtype=np.int64)
        nodes = [node("Pad", names, ["y"], mode="constant")]
    model = make_model(nodes, {"x": (1, 2, 3, 4)}, ["y"], init, opset=opset)
    check_model(model, [rand(1, 2, 3, 4)])


def test_zero_pad_before_conv_is_folded_into_the_conv():
    init = {"p": np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64), "w": rand(3, 2, 3, 3, seed=1)}
    model = make_model([node("Pad", ["x", "p"], ["px"]), node("Conv", ["px", "w"], ["y"])],
                       {"x": (1, 2, 5, 5)}, ["y"], init)
    imported = check_model(model, [rand(1, 2, 5, 5)])
    assert [n.op for n in imported.compile(backend="c").optimized.nodes] == ["conv"]


@pytest.mark.parametrize("opset,starts,ends,axes,steps", [
    (13, [1], [3], [1], None),
    (13, [0, -3], [1, 100], [0, 3], [1, 1]),
    (9, [1, 0], [-1, 2], [2, 3], None),
])
def test_slice_of_a_tensor(opset, starts, ends, axes, steps):
    if opset < 10:
        nodes = [node("Slice", ["x"], ["y"], starts=starts, ends=ends, axes=axes)]
        init = {}
    else:
        nodes = [node("Slice", ["x", "s", "e", "a"] + (["st"] if steps else []), ["y"])]
        init = dict([ints("s", starts), ints("e", ends), ints("a", axes)])
        if steps:
            init["st"] = np.array(steps, dtype=np.int64)
    model = make_model(nodes, {"x": (2, 4, 3, 5)}, ["y"], init, opset=opset)
    check_model(model, [rand(2, 4, 3, 5)])


def test_expand():
    model = make_model([node("Expand", ["x", "s"], ["y"])], {"x": (3, 1)}, ["y"],
                       dict([ints("s", [2, 1, 4])]))
    check_model(model, [rand(3, 1)])


# -- elementwise arithmetic -------------------------------------------------------------

@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div"])
@pytest.mark.parametrize("c_shape,first", [((3, 1, 1), False), ((), False), ((1, 3, 1, 1), True),
                                           ((3, 1, 1), True)])
def test_arithmetic_with_per_channel_constants_is_an_affine_node(op, c_shape, first):
    c = rand(*c_shape, seed=5, low=0.5, high=1.5)
    inputs = ["c", "x"] if first else ["x", "c"]
    model = make_model([node(op, inputs, ["y"])], {"x": (2, 3, 2, 2)}, ["y"], {"c": c})
    imported = check_model(model, [rand(2, 3, 2, 2)])
    affine = not (first and op == "Div")  # c / x is not affine in x
    assert ops_of(imported) == (["batch_norm"] if affine else ["constant", "binary"])


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div"])
@pytest.mark.parametrize("c_shape", [(2, 2), (1, 2, 2), (2, 3, 2, 2)])
def test_arithmetic_with_other_constants(op, c_shape):
    c = rand(*c_shape, seed=5, low=0.5, high=1.5)
    model = make_model([node(op, ["x", "c"], ["y"])], {"x": (2, 3, 2, 2)}, ["y"], {"c": c})
    imported = check_model(model, [rand(2, 3, 2, 2)])
    assert ops_of(imported) == ["constant", "binary"]


def test_constant_that_broadcasts_the_tensor_up():
    model = make_model([node("Mul", ["x", "c"], ["y"])], {"x": (3, 1)}, ["y"],
                       {"c": rand(2, 3, 4, seed=1)})
    check_model(model, [rand(3, 1)])


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div"])
@pytest.mark.parametrize("b_shape", [(2, 3, 4), (3, 1), (1, 1, 4)])
def test_arithmetic_of_two_tensors(op, b_shape):
    model = make_model([node(op, ["a", "b"], ["y"])], {"a": (2, 3, 4), "b": b_shape}, ["y"])
    b = rand(*b_shape, seed=1, low=0.5, high=1.5)
    imported = check_model(model, [rand(2, 3, 4), b])
    kind = "add" if op == "Add" else "binary"
    assert ops_of(imported)[-1] == kind
    assert ("expand" in ops_of(imported)) == (b_shape != (2, 3, 4))


def test_conv_plus_per_channel_constant_folds_into_the_conv_bias():
    init = {"w": rand(4, 2, 3, 3, seed=1), "s": rand(1, 4, 1, 1, seed=2),
            "t": rand(4, 1, 1, seed=3)}
    model = make_model([node("Conv", ["x", "w"], ["c"]), node("Mul", ["c", "s"], ["m"]),
                        node("Add", ["m", "t"], ["y"])], {"x": (1, 2, 5, 5)}, ["y"], init)
    imported = check_model(model, [rand(1, 2, 5, 5)])
    optimized = imported.compile(backend="c").optimized
    assert [n.op for n in optimized.nodes] == ["conv"]


@pytest.mark.parametrize("op", ["Add", "Mul", "Sub", "Div"])
def test_opset6_legacy_broadcast_along_an_axis(op):
    b = rand(3, seed=1, low=0.5, high=1.5)
    model = make_model([node(op, ["x", "b"], ["y"], broadcast=1, axis=1)], {"x": (2, 3, 2, 2)},
                       ["y"], {"b": b}, opset=6)
    x = rand(2, 3, 2, 2)
    imported = check_model(model, [x], expected=None)  # ONNX's evaluator lacks axis=
    fn = {"Add": np.add, "Mul": np.multiply, "Sub": np.subtract, "Div": np.divide}[op]
    np.testing.assert_allclose(imported.compile(backend="c")(x), fn(x, b.reshape(3, 1, 1)),
                               rtol=1e-6)


def test_opset6_legacy_broadcast_of_a_suffix():
    model = make_model([node("Add", ["x", "b"], ["y"], broadcast=1)], {"x": (2, 3, 4),
                                                                      "b": (3, 4)}, ["y"],
                       opset=6)
    check_model(model, [rand(2, 3, 4), rand(3, 4, seed=1)], expected="onnx")


@pytest.mark.parametrize("opset", [6, 8, 13])
def test_sum(opset):
    shapes = {"a": (2, 3, 4), "b": (2, 3, 4), "c": (2, 3, 4) if opset < 8 else (3, 1)}
    model = make_model([node("Sum", ["a", "b", "c", "k"], ["y"])], shapes, ["y"],
                       {"k": rand(2, 3, 4, seed=9)}, opset=opset)
    check_model(model, [rand(*s, seed=i) for i, s in enumerate(shapes.values())],
                expected="onnx" if opset < 8 else "ort")


# -- identities and constants -----------------------------------------------------------

@pytest.mark.parametrize("opset,attrs,extra", [(6, dict(is_test=1, ratio=0.3), False),
                                               (7, dict(ratio=0.3), False), (10, {}, False),
                                               (12, {}, True), (13, {}, True)])
def test_dropout_and_identity_are_removed(opset, attrs, extra):
    init = {"w": rand(3, 2, 1, 1, seed=1)}
    names = ["c"]
    if extra:
        init["r"] = np.array(0.5, dtype=np.float32)
        init["t"] = np.array(False)
        names += ["r", "t"]
    model = make_model([node("Conv", ["x", "w"], ["c"]), node("Dropout", names, ["d"], **attrs),
                        node("Identity", ["d"], ["y"])], {"x": (1, 2, 4, 4)}, ["y"], init,
                       opset=opset)
    imported = check_model(model, [rand(1, 2, 4, 4)], expected=None if opset < 7 else "ort")
    assert ops_of(imported) == ["conv"]


@pytest.mark.parametrize("attr,value", [("value", None), ("value_float", 1.5),
                                        ("value_floats", [1.0, 2.0, 3.0]), ("value_int", 2),
                                        ("value_ints", [1, 2, 3])])
def test_constant_node_forms(attr, value):
    if attr == "value":
        value = helper.make_tensor("t", TensorProto.FLOAT, [3], [0.5, -1.0, 2.0])
    model = make_model([node("Constant", [], ["k"], **{attr: value}),
                        node("Cast", ["k"], ["kf"], to=TensorProto.FLOAT),
                        node("Mul", ["x", "kf"], ["y"])], {"x": (2, 3)}, ["y"], opset=13)
    check_model(model, [rand(2, 3)])


def test_exporter_shape_subgraphs_fold_away():
    # x.view(x.size(0), -1) and torch.flatten as PyTorch exports them, plus the shapes
    # arithmetic of expand/zeros_like: Shape, Gather, Unsqueeze, Concat, Slice, Cast,
    # ConstantOfShape, Range, Equal, Where, Squeeze
    i64 = np.int64
    init = dict([ints("zero", 0), ints("minus1", [-1]), ints("ax0", [0]),
                 ints("s0", [1]), ints("e0", [4]), ints("one", 1)])
    nodes = [
        node("Shape", ["x"], ["shape"]),
        node("Gather", ["shape", "zero"], ["batch"], axis=0),
        node("Unsqueeze", ["batch", "ax0"], ["batch1"]),
        node("Concat", ["batch1", "minus1"], ["target"], axis=0),
        node("Reshape", ["x", "target"], ["flat"]),
        node("Slice", ["shape", "s0", "e0"], ["rest"]),
        node("Cast", ["rest"], ["rest_f"], to=TensorProto.FLOAT),
        node("Cast", ["rest_f"], ["rest_i"], to=TensorProto.INT64),
        node("ConstantOfShape", ["ax0"], ["zeros"],
             value=helper.make_tensor("v", TensorProto.INT64, [1], [0])),
        node("Range", ["zero", "one", "one"], ["r"]),
        node("Equal", ["rest_i", "minus1"], ["eq"]),
        node("Where", ["eq", "rest_i", "rest_i"], ["dims"]),
        node("Squeeze", ["batch1", "ax0"], ["b0"]),
        node("Shape", ["flat"], ["fshape"], start=-1),
        node("Mul", ["b0", "one"], ["b1"]),
        node("Unsqueeze", ["b1", "ax0"], ["b2"]),
        node("Concat", ["b2", "fshape"], ["target2"], axis=0),
        node("Reshape", ["flat", "target2"], ["y"]),
    ]
    model = make_model(nodes, {"x": (2, 3, 2, 2)}, ["y"], init, opset=15)
    imported = check_model(model, [rand(2, 3, 2, 2)])
    assert ops_of(imported) == ["reshape"]
    assert imported.graph.nodes[0].attrs["shape"] == (2, 12)
    del i64


def test_graph_output_that_is_a_constant_or_an_input():
    model = make_model([node("Shape", ["x"], ["s"]), node("Cast", ["s"], ["k"], to=1),
                        node("Identity", ["x"], ["y"])], {"x": (2, 3)}, ["y", "k"])
    x = rand(2, 3)
    y, k = cg.from_onnx(model).compile(backend="c")(x)
    np.testing.assert_array_equal(y, x)
    np.testing.assert_array_equal(k, [2.0, 3.0])
