"""ONNX layer operators: Conv, ConvTranspose, pools, Gemm, MatMul, BatchNormalization,
activations, Softmax, LRN; each compiled on c and llvm and compared with convgen's oracle
and onnxruntime (ONNX's reference evaluator for opsets onnxruntime has no kernel for)."""

from __future__ import annotations

import numpy as np
import pytest

from onnx_helpers import BACKENDS, check_model, make_model, node, rand

import convgen as cg

# whole networks: the backend argument runs over the backends that compile them
pytestmark = pytest.mark.networks

# -- convolution ------------------------------------------------------------------------

CONVS = [  # (input shape, weight shape, attributes, opset)
    ((1, 2, 9), (3, 2, 3), dict(pads=[1, 2], strides=[2]), 17),
    ((1, 3, 7, 8), (4, 3, 3, 3), dict(pads=[1, 1, 1, 1]), 11),
    ((1, 3, 7, 8), (4, 3, 3, 3), dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1]), 7),
    ((1, 4, 9, 9), (6, 2, 3, 3), dict(group=2, dilations=[2, 2], strides=[2, 2]), 13),
    ((1, 4, 8, 8), (4, 1, 3, 3), dict(group=4, pads=[1, 1, 1, 1]), 17),
    ((1, 2, 7, 9), (3, 2, 4, 4), dict(auto_pad="SAME_UPPER", strides=[2, 2]), 17),
    ((1, 2, 7, 9), (3, 2, 4, 4), dict(auto_pad="SAME_LOWER", strides=[2, 2]), 17),
    ((1, 2, 7, 9), (3, 2, 3, 2), dict(auto_pad="VALID", strides=[1, 2]), 17),
    ((1, 2, 6, 7), (3, 2, 3, 3), dict(pads=[0, 2, 1, 0]), 17),
    ((1, 2, 5, 6, 5), (4, 2, 3, 3, 3), dict(pads=[0, 1, 1, 1, 0, 1], strides=[1, 2, 1]), 17),
    ((2, 2, 5, 5, 4), (2, 1, 2, 3, 2), dict(group=2, auto_pad="SAME_UPPER"), 11),
]


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("x_shape,w_shape,attrs,opset", CONVS)
def test_conv(x_shape, w_shape, attrs, opset, bias):
    init = {"w": rand(*w_shape, seed=1)}
    if bias:
        init["b"] = rand(w_shape[0], seed=2)
    model = make_model([node("Conv", ["x", "w"] + (["b"] if bias else []), ["y"], **attrs)],
                       {"x": x_shape}, ["y"], init, opset=opset)
    check_model(model, [rand(*x_shape)])


CONV_TRANSPOSES = [  # (input shape, weight shape (C_in, C_out/g, *k), attributes)
    ((1, 3, 4, 5), (3, 2, 3, 3), dict(strides=[2, 2], pads=[1, 1, 1, 1],
                                       output_padding=[1, 1])),
    ((1, 2, 5), (2, 3, 4), dict(strides=[2], output_shape=[9])),  # odd total: more at start
    ((1, 2, 5), (2, 3, 4), dict(strides=[2], output_shape=[9], auto_pad="SAME_UPPER")),
    ((1, 2, 5), (2, 3, 4), dict(strides=[2], output_shape=[9], auto_pad="SAME_LOWER")),
    ((1, 2, 5), (2, 3, 3), dict(strides=[2], output_shape=[12])),  # one past natural
    ((1, 2, 4, 5), (2, 2, 3, 3), dict(strides=[2, 2], auto_pad="SAME_UPPER")),
    ((1, 2, 4, 5), (2, 2, 3, 3), dict(strides=[2, 2], auto_pad="SAME_LOWER")),
    ((1, 2, 4, 5), (2, 2, 3, 3), dict(strides=[2, 1], auto_pad="VALID")),
    ((1, 4, 4, 4), (4, 1, 3, 3), dict(group=2, dilations=[2, 2], pads=[0, 1, 2, 0])),
    ((1, 2, 3, 4, 3), (2, 2, 2, 3, 2), dict(strides=[2, 1, 2], output_padding=[1, 0, 0],
                                            output_shape=[7, 6, 6])),
]


@pytest.mark.parametrize("x_shape,w_shape,attrs", CONV_TRANSPOSES)
def test_conv_transpose(x_shape, w_shape, attrs):
    init = {"w": rand(*w_shape, seed=1), "b": rand(w_shape[1] * attrs.get("group", 1), seed=2)}
    model = make_model([node("ConvTranspose", ["x", "w", "b"], ["y"], **attrs)],
                       {"x": x_shape}, ["y"], init)
    check_model(model, [rand(*x_shape)])


# -- pooling ----------------------------------------------------------------------------

MAX_POOLS = [  # (input shape, attributes, opset)
    ((1, 2, 9, 9), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]), 8),
    ((1, 2, 8, 8), dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1), 10),
    ((1, 2, 8, 9), dict(kernel_shape=[2, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                        ceil_mode=1), 12),
    ((1, 2, 9, 9), dict(kernel_shape=[3, 3], dilations=[2, 2], pads=[1, 2, 1, 2]), 11),
    ((1, 2, 7, 8), dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER"), 11),
    ((1, 2, 7, 8), dict(kernel_shape=[2, 2], auto_pad="SAME_LOWER"), 11),
    ((1, 2, 7, 8), dict(kernel_shape=[3, 2], strides=[2, 2], auto_pad="VALID"), 11),
    ((1, 2, 7, 8), dict(kernel_shape=[3, 3], pads=[0, 2, 1, 0]), 11),
    ((1, 3, 10), dict(kernel_shape=[3], strides=[3], ceil_mode=1), 17),
    ((1, 2, 5, 6, 5), dict(kernel_shape=[2, 3, 2], strides=[2, 1, 2], pads=[0, 1, 1, 1, 1, 0]),
     17),
]


@pytest.mark.parametrize("x_shape,attrs,opset", MAX_POOLS)
def test_max_pool(x_shape, attrs, opset):
    model = make_model([node("MaxPool", ["x"], ["y"], **attrs)], {"x": x_shape}, ["y"],
                       opset=opset)
    check_model(model, [rand(*x_shape)])


AVG_POOLS = [  # (input shape, attributes, opset)
    ((1, 2, 8, 8), dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1]), 7),
    ((1, 2, 8, 8), dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1), 7),
    ((1, 2, 8, 9), dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1), 10),
    ((1, 2, 8, 9), dict(kernel_shape=[3, 2], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1,
                        count_include_pad=1), 11),
    ((1, 2, 8, 9), dict(kernel_shape=[3, 2], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1),
     19),
    ((1, 2, 7, 8), dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER"), 11),
    ((1, 2, 7, 8), dict(kernel_shape=[2, 2], auto_pad="SAME_LOWER"), 11),
    ((1, 2, 7, 8), dict(kernel_shape=[2, 2], auto_pad="VALID", strides=[2, 2]), 11),
    ((1, 2, 7, 8), dict(kernel_shape=[3, 3], pads=[0, 2, 1, 0]), 11),
    ((1, 2, 7, 8), dict(kernel_shape=[3, 3], pads=[0, 2, 1, 0], count_include_pad=1), 11),
    ((1, 3, 10), dict(kernel_shape=[4], strides=[2], pads=[1, 1]), 17),
    ((1, 2, 5, 6, 5), dict(kernel_shape=[2, 3, 2], strides=[2, 1, 2], count_include_pad=1,
                           pads=[1, 1, 0, 1, 1, 1]), 17),
]


@pytest.mark.parametrize("x_shape,attrs,opset", AVG_POOLS)
def test_average_pool(x_shape, attrs, opset):
    model = make_model([node("AveragePool", ["x"], ["y"], **attrs)], {"x": x_shape}, ["y"],
                       opset=opset)
    check_model(model, [rand(*x_shape)])


@pytest.mark.parametrize("op", ["GlobalAveragePool", "GlobalMaxPool"])
@pytest.mark.parametrize("x_shape", [(2, 3, 7), (1, 3, 5, 6), (1, 2, 3, 4, 5)])
def test_global_pools(op, x_shape):
    model = make_model([node(op, ["x"], ["y"])], {"x": x_shape}, ["y"])
    check_model(model, [rand(*x_shape)])


# -- matrix products --------------------------------------------------------------------

GEMMS = [  # (A shape, B shape, C shape or None, attributes, opset)
    ((2, 5), (5, 3), (3,), {}, 13),
    ((2, 5), (3, 5), (1, 3), dict(transB=1, alpha=0.5, beta=2.0), 13),
    ((5, 2), (5, 3), (), dict(transA=1), 11),
    ((2, 5), (5, 3), (2, 3), dict(beta=-1.0), 9),
    ((2, 5), (5, 3), (2, 1), {}, 7),
    ((2, 5), (3, 5), None, dict(transB=1, alpha=2.0), 11),
]


@pytest.mark.parametrize("a_shape,b_shape,c_shape,attrs,opset", GEMMS)
def test_gemm_with_constant_weight(a_shape, b_shape, c_shape, attrs, opset):
    init = {"b": rand(*b_shape, seed=1)}
    if c_shape is not None:
        init["c"] = rand(*c_shape, seed=2)
    model = make_model([node("Gemm", ["a", "b"] + (["c"] if c_shape is not None else []),
                             ["y"], **attrs)], {"a": a_shape}, ["y"], init, opset=opset)
    imported = check_model(model, [rand(*a_shape)])
    assert "linear" in [n.op for n in imported.graph.nodes]


def test_gemm_opset6_broadcast():
    init = {"b": rand(5, 3, seed=1), "c": rand(3, seed=2)}
    model = make_model([node("Gemm", ["a", "b", "c"], ["y"], broadcast=1, alpha=0.5)],
                       {"a": (2, 5)}, ["y"], init, opset=6)
    imported = check_model(model, [rand(2, 5)], expected="onnx")
    assert [n.op for n in imported.graph.nodes] == ["linear"]


def test_gemm_of_two_runtime_tensors():
    model = make_model([node("Gemm", ["a", "b", "c"], ["y"], transA=1, transB=1, alpha=1.5,
                             beta=0.5)],
                       {"a": (4, 2), "b": (3, 4), "c": (2, 3)}, ["y"])
    check_model(model, [rand(4, 2), rand(3, 4, seed=1), rand(2, 3, seed=2)])


MATMULS = [  # (A shape, B shape, which are constants)
    ((2, 5), (5, 3), "b"),
    ((2, 3, 5), (5, 4), "b"),
    ((5,), (5, 4), "b"),
    ((2, 5), (5,), "b"),
    ((2, 3, 4), (2, 4, 5), ""),
    ((2, 1, 3, 4), (3, 4, 2), ""),
    ((3, 4), (2, 4, 5), "a"),
    ((4,), (2, 4, 3), ""),
]


@pytest.mark.parametrize("a_shape,b_shape,const", MATMULS)
def test_matmul(a_shape, b_shape, const):
    values = {"a": rand(*a_shape), "b": rand(*b_shape, seed=1)}
    inputs = {k: v.shape for k, v in values.items() if k not in const}
    init = {k: v for k, v in values.items() if k in const}
    model = make_model([node("MatMul", ["a", "b"], ["y"])], inputs, ["y"], init)
    check_model(model, [values[k] for k in inputs])


# -- normalization ----------------------------------------------------------------------

def _bn_params(channels, seed=3):
    return {"scale": rand(channels, seed=seed), "bias": rand(channels, seed=seed + 1),
            "mean": rand(channels, seed=seed + 2),
            "var": rand(channels, seed=seed + 3, low=0.5, high=2.0)}


@pytest.mark.parametrize("opset,attrs,expected", [
    (6, dict(is_test=1, epsilon=1e-3), "onnx"),
    (7, dict(spatial=1), "ort"),
    (9, dict(momentum=0.8), "ort"),
    (14, dict(training_mode=0), "ort"),
    (15, {}, "ort"),
])
def test_batch_normalization_after_conv_is_folded(opset, attrs, expected):
    init = {"w": rand(4, 3, 3, 3, seed=1), **_bn_params(4)}
    model = make_model([node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
                        node("BatchNormalization", ["c", "scale", "bias", "mean", "var"],
                             ["y"], name="bn", **attrs)],
                       {"x": (1, 3, 6, 6)}, ["y"], init, opset=opset)
    imported = check_model(model, [rand(1, 3, 6, 6)], expected=expected)
    compiled = imported.compile(backend="c")
    assert [n.op for n in compiled.optimized.nodes] == ["conv"]
    assert compiled.optimized.nodes[0].fused == ["bn"]


@pytest.mark.parametrize("x_shape", [(2, 3), (2, 3, 5), (1, 3, 2, 2, 2)])
def test_batch_normalization_alone(x_shape):
    model = make_model([node("BatchNormalization", ["x", "scale", "bias", "mean", "var"],
                             ["y"])], {"x": x_shape}, ["y"], _bn_params(3))
    check_model(model, [rand(*x_shape)])


def test_batch_normalization_opset7_per_element():
    x_shape = (2, 3, 4)
    params = {k: rand(3, 4, seed=i, low=0.5 if k == "var" else -1.0)
              for i, k in enumerate(("scale", "bias", "mean", "var"))}
    model = make_model([node("BatchNormalization", ["x", "scale", "bias", "mean", "var"],
                             ["y"], spatial=0)], {"x": x_shape}, ["y"], params, opset=7)
    x = rand(*x_shape)
    imported = cg.from_onnx(model)
    k = params["scale"] / np.sqrt(params["var"] + 1e-5)
    want = x * k + (params["bias"] - params["mean"] * k)
    for backend in BACKENDS:
        np.testing.assert_allclose(imported.compile(backend=backend)(x), want, rtol=1e-5,
                                   atol=1e-6)


@pytest.mark.parametrize("attrs", [dict(size=3), dict(size=5, alpha=0.01, beta=0.5, bias=2.0)])
def test_lrn(attrs):
    model = make_model([node("LRN", ["x"], ["y"], **attrs)], {"x": (1, 6, 3, 4)}, ["y"])
    check_model(model, [rand(1, 6, 3, 4, low=-3.0, high=3.0)])


def test_lrn_even_size_follows_the_onnx_definition():
    # onnxruntime takes odd sizes only; the window is [c - floor((size-1)/2),
    # c + ceil((size-1)/2)], so an even size reaches one channel further up
    size, alpha, beta, bias = 4, 0.02, 0.75, 1.0
    x = rand(2, 6, 3, 2, low=-3.0, high=3.0)
    model = make_model([node("LRN", ["x"], ["y"], size=size, alpha=alpha)], {"x": x.shape},
                       ["y"])
    square = x.astype(np.float64) ** 2
    sums = np.stack([square[:, max(0, c - 1):c + 3].sum(axis=1) for c in range(6)], axis=1)
    want = x / (bias + alpha / size * sums) ** beta
    imported = cg.from_onnx(model)
    for backend in BACKENDS:
        np.testing.assert_allclose(imported.compile(backend=backend)(x), want, rtol=1e-5,
                                   atol=1e-6)


# -- activations ------------------------------------------------------------------------

@pytest.mark.parametrize("op,attrs", [("Relu", {}), ("LeakyRelu", {}),
                                      ("LeakyRelu", dict(alpha=0.2)), ("Sigmoid", {}),
                                      ("Tanh", {})])
@pytest.mark.parametrize("opset", [6, 13])
def test_activations_after_conv(op, attrs, opset):
    init = {"w": rand(3, 2, 3, 3, seed=1), "b": rand(3, seed=2)}
    model = make_model([node("Conv", ["x", "w", "b"], ["c"]), node(op, ["c"], ["y"], **attrs)],
                       {"x": (1, 2, 5, 5)}, ["y"], init, opset=opset)
    imported = check_model(model, [rand(1, 2, 5, 5, low=-2.0, high=2.0)])
    assert len(imported.compile(backend="c").optimized.nodes) == 1  # fused into the conv


@pytest.mark.parametrize("opset,attrs,bounds", [
    (6, dict(min=-0.5, max=0.25), None),
    (6, dict(min=0.0), None),
    (6, {}, None),
    (11, {}, (-0.5, 0.25)),
    (12, {}, (None, 0.25)),
    (13, {}, (-0.5, None)),
    (13, {}, (None, None)),
])
def test_clip(opset, attrs, bounds):
    init, names = {}, ["x"]
    if bounds is not None:
        for name, bound in zip(("lo", "hi"), bounds):
            names.append("" if bound is None else name)
            if bound is not None:
                init[name] = np.array(bound, dtype=np.float32)
    model = make_model([node("Clip", names, ["y"], **attrs)], {"x": (2, 3, 4)}, ["y"], init,
                       opset=opset)
    check_model(model, [rand(2, 3, 4)], expected="onnx" if opset < 11 else "ort")


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("opset,axis", [(11, None), (11, 2), (11, -1), (11, 0), (13, None),
                                        (13, 1), (13, -2)])
def test_softmax_axis_semantics(op, opset, axis):
    attrs = {} if axis is None else {"axis": axis}
    model = make_model([node(op, ["x"], ["y"], **attrs)], {"x": (2, 3, 2, 4)}, ["y"],
                       opset=opset)
    check_model(model, [rand(2, 3, 2, 4, low=-3.0, high=3.0)])
