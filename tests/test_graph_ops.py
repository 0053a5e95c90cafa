"""Graph ops: shape inference and the NumPy oracle against torch.nn.functional, op by op.

Each test builds a Node by hand, infers its shape, runs the oracle and compares both
with PyTorch (float64, CPU). Error tests check that every GraphError names the node.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from convgen.graph.ir import OPS, Graph, GraphError, Node
from convgen.graph.reference import evaluate, op_reference
from convgen.graph.shapes import adaptive_bins, infer_graph, infer_shape, pool_output_size
from convgen.spec import ACTIVATIONS, ConvSpec

RTOL, ATOL = 1e-10, 1e-12


def make_node(op: str, attrs: dict | None = None, params: dict | None = None, *,
              name: str = "node", module: str = "", inputs: list[str] | None = None) -> Node:
    return Node(name=name, op=op, inputs=inputs or ["x"], attrs=attrs or {},
                params={k: np.asarray(v, dtype=np.float64) for k, v in (params or {}).items()},
                module=module)


def run(node: Node, *arrays: np.ndarray) -> np.ndarray:
    """infer_shape and op_reference on ``arrays``; checks they agree, returns the output."""
    shape = infer_shape(node, [a.shape for a in arrays])
    y = op_reference(node, list(arrays))
    assert y.dtype == np.float64
    assert y.shape == shape
    return y


def rand(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape)


def t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))


def assert_torch(got: np.ndarray, want: torch.Tensor) -> None:
    want = want.detach().numpy()
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


def pool_attrs(nd: int, k, s, p, d=None, **flags) -> dict:
    """torch-style pooling arguments (ints, stride None) as the IR's per-dim tuples."""
    per_dim = lambda v: tuple(v) if isinstance(v, tuple) else (v,) * nd  # noqa: E731
    attrs = dict(kernel_size=per_dim(k), stride=per_dim(k if s is None else s),
                 padding=per_dim(p), **flags)
    if d is not None:
        attrs["dilation"] = per_dim(d)
    return attrs


def torch_pool(op: str, x: np.ndarray, **kw) -> torch.Tensor:
    nd = x.ndim - 2
    return getattr(F, f"{op}{nd}d")(t(x), **kw)


# -- pooling ----------------------------------------------------------------------------

MAX_POOL_CASES = [
    # (input shape, kernel_size, stride, padding, dilation, ceil_mode)
    ((2, 3, 9), 3, 2, 1, 1, False),
    ((2, 3, 9), 2, None, 0, 1, False),
    ((1, 2, 6), 3, 2, 0, 1, True),          # ceil: the last window hangs off the end
    ((1, 2, 5), 2, 2, 1, 1, True),
    ((1, 1, 3), 4, 4, 0, 1, True),          # ceil: one window wider than the input
    ((1, 2, 10), 2, 3, 1, 3, True),         # dilation + ceil
    ((1, 1, 3), 2, 2, 1, 5, True),          # a window of padding only: -inf, as torch
    ((2, 3, 7, 8), 3, 2, 1, 1, False),
    ((2, 3, 7, 8), (3, 2), (2, 1), (1, 0), (1, 2), True),
    ((1, 2, 6, 6), 2, 2, 0, 1, True),
    ((1, 2, 5, 7), 3, 2, 1, 2, True),
    ((1, 2, 5, 6, 7), 2, 2, 1, 1, True),
    ((1, 2, 5, 6, 7), (3, 1, 2), (2, 1, 3), (1, 0, 1), (1, 1, 2), False),
]


@pytest.mark.parametrize("shape, k, s, p, d, ceil", MAX_POOL_CASES)
def test_max_pool_matches_torch(shape, k, s, p, d, ceil):
    x = rand(*shape)
    node = make_node("max_pool", pool_attrs(len(shape) - 2, k, s, p, d, ceil_mode=ceil))
    want = torch_pool("max_pool", x, kernel_size=k, stride=s, padding=p, dilation=d,
                      ceil_mode=ceil)
    assert_torch(run(node, x), want)


AVG_POOL_CASES = [
    # (input shape, kernel_size, stride, padding, ceil_mode)
    ((2, 3, 9), 3, 2, 1, False),
    ((2, 3, 9), 2, None, 0, False),
    ((1, 2, 6), 3, 2, 0, True),             # overhang past the input
    ((1, 2, 5), 2, 2, 1, True),             # overhang past the padding
    ((1, 2, 8), 3, 2, 1, True),
    ((1, 1, 3), 4, 4, 2, True),
    ((2, 3, 7, 8), 3, 2, 1, False),
    ((2, 3, 7, 8), (3, 2), (2, 3), (1, 1), True),
    ((1, 2, 6, 5), 3, 3, 1, True),
    ((1, 2, 5, 6, 7), 2, 2, 1, True),
    ((1, 2, 5, 6, 7), (3, 1, 2), (2, 1, 3), (1, 0, 1), False),
]


@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("shape, k, s, p, ceil", AVG_POOL_CASES)
def test_avg_pool_matches_torch(shape, k, s, p, ceil, count_include_pad):
    x = rand(*shape)
    node = make_node("avg_pool", pool_attrs(len(shape) - 2, k, s, p, ceil_mode=ceil,
                                            count_include_pad=count_include_pad))
    want = torch_pool("avg_pool", x, kernel_size=k, stride=s, padding=p, ceil_mode=ceil,
                      count_include_pad=count_include_pad)
    assert_torch(run(node, x), want)


def test_avg_pool_3d_accepts_an_input_smaller_than_the_kernel():
    """torch's avg_pool3d rejects this (1D/2D do not); the same windows pooled in 1D agree."""
    x = rand(1, 2, 1, 3, 4)
    node = make_node("avg_pool", dict(kernel_size=(2, 1, 1), stride=(1, 1, 1),
                                      padding=(1, 0, 0), count_include_pad=False))
    along_d = t(x).permute(0, 1, 3, 4, 2).reshape(1, 24, 1)
    want = F.avg_pool1d(along_d, 2, 1, 1, count_include_pad=False)
    assert_torch(run(node, x), want.reshape(1, 2, 3, 4, 2).permute(0, 1, 4, 2, 3))


def test_pool_defaults_follow_torch():
    """dilation defaults to 1, ceil_mode to False, count_include_pad to True."""
    x = rand(1, 2, 7, 7)
    got = run(make_node("max_pool", dict(kernel_size=(2, 2), stride=(2, 2), padding=(1, 1))), x)
    assert_torch(got, F.max_pool2d(t(x), 2, padding=1))
    got = run(make_node("avg_pool", dict(kernel_size=[3, 3], stride=[3, 3], padding=[1, 1])), x)
    assert_torch(got, F.avg_pool2d(t(x), 3, padding=1))


def test_pool_output_size_hand_worked():
    assert pool_output_size(6, 3, 2, 0, 1, ceil_mode=False) == 2
    assert pool_output_size(6, 3, 2, 0, 1, ceil_mode=True) == 3
    # ceil_mode's extra window would start in the right padding: PyTorch drops it.
    assert pool_output_size(5, 2, 2, 1, 1, ceil_mode=True) == 3
    assert pool_output_size(4, 2, 2, 1, 1, ceil_mode=True) == 3
    assert pool_output_size(3, 4, 4, 0, 1, ceil_mode=True) == 1
    assert pool_output_size(3, 4, 4, 0, 1, ceil_mode=False) == 0


def test_max_pool_propagates_nan_and_ignores_padding_for_negatives():
    x = -np.abs(rand(1, 1, 5, 5)) - 1.0  # every value < 0: padding must not win
    x[0, 0, 2, 2] = np.nan
    node = make_node("max_pool", pool_attrs(2, 3, 1, 1))
    got = run(node, x)
    want = F.max_pool2d(t(x), 3, stride=1, padding=1).numpy()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got[~np.isnan(got)], want[~np.isnan(want)], rtol=RTOL)
    assert np.all(got[~np.isnan(got)] < 0)


@st.composite
def pool_cases(draw):
    nd = draw(st.integers(1, 3))
    spatial = tuple(draw(st.integers(1, 9 if nd < 3 else 6)) for _ in range(nd))
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 3))) + spatial
    k = tuple(draw(st.integers(1, 4)) for _ in range(nd))
    s = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    p = tuple(draw(st.integers(0, ki // 2)) for ki in k)
    d = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    return shape, k, s, p, d, draw(st.booleans()), draw(st.booleans())


@settings(deadline=None, max_examples=40)
@given(pool_cases())
def test_max_pool_property(case):
    shape, k, s, p, d, ceil, _ = case
    x = rand(*shape, seed=1)
    node = make_node("max_pool", pool_attrs(len(k), k, s, p, d, ceil_mode=ceil), name="pool")
    try:
        want = torch_pool("max_pool", x, kernel_size=k, stride=s, padding=p, dilation=d,
                          ceil_mode=ceil)
    except RuntimeError:
        with pytest.raises(GraphError, match="^pool: "):
            infer_shape(node, [shape])
        return
    assert infer_shape(node, [shape]) == tuple(want.shape)
    assert_torch(op_reference(node, [x]), want)


@settings(deadline=None, max_examples=40)
@given(pool_cases())
def test_avg_pool_property(case):
    shape, k, s, p, _, ceil, count_include_pad = case
    x = rand(*shape, seed=2)
    node = make_node("avg_pool", pool_attrs(len(k), k, s, p, ceil_mode=ceil,
                                            count_include_pad=count_include_pad), name="pool")
    try:
        want = torch_pool("avg_pool", x, kernel_size=k, stride=s, padding=p, ceil_mode=ceil,
                          count_include_pad=count_include_pad)
    except RuntimeError as error:
        # avg_pool3d alone also rejects an unpadded input smaller than the kernel; the
        # window is well defined (1D and 2D accept it), so convgen does not copy that.
        assume("smaller than kernel size" not in str(error))
        with pytest.raises(GraphError, match="^pool: "):
            infer_shape(node, [shape])
        return
    assert infer_shape(node, [shape]) == tuple(want.shape)
    assert_torch(op_reference(node, [x]), want)


ADAPTIVE_CASES = [
    ((2, 3, 7), 1),
    ((2, 3, 7), (3,)),
    ((1, 2, 3), (7,)),                      # larger than the input: overlapping bins
    ((2, 3, 7, 5), 1),
    ((2, 3, 7, 5), (1, 1)),
    ((2, 3, 7, 5), (3, 2)),
    ((1, 2, 6, 6), (4, 6)),
    ((1, 2, 3, 4), (5, 9)),
    ((1, 2, 5, 6, 7), 1),
    ((1, 2, 5, 6, 7), (2, 3, 4)),
]


@pytest.mark.parametrize("shape, size", ADAPTIVE_CASES)
def test_adaptive_avg_pool_matches_torch(shape, size):
    x = rand(*shape)
    node = make_node("adaptive_avg_pool", dict(output_size=size))
    fn = getattr(F, f"adaptive_avg_pool{len(shape) - 2}d")
    assert_torch(run(node, x), fn(t(x), size))


def test_adaptive_avg_pool_none_keeps_the_input_size():
    x = rand(1, 2, 5, 6)
    node = make_node("adaptive_avg_pool", dict(output_size=(None, 2)))
    assert_torch(run(node, x), F.adaptive_avg_pool2d(t(x), (None, 2)))


def test_adaptive_bins_hand_worked():
    assert adaptive_bins(7, 3) == [(0, 3), (2, 5), (4, 7)]
    assert adaptive_bins(3, 7)[:3] == [(0, 1), (0, 1), (0, 2)]
    assert adaptive_bins(6, 1) == [(0, 6)]


# -- linear, flatten, activations, softmax ----------------------------------------------

@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("activation", [None, "relu", ("leaky_relu", (0.2,)), "gelu"])
@pytest.mark.parametrize("shape", [(3, 5), (2, 3, 5), (5,)])
def test_linear_matches_torch(shape, activation, bias):
    x, w = rand(*shape), rand(4, 5, seed=1)
    b = rand(4, seed=2) if bias else None
    name, args = activation if isinstance(activation, tuple) else (activation, ())
    params = {"weight": w} | ({"bias": b} if bias else {})
    node = make_node("linear", dict(activation=name, activation_args=args), params)
    want = F.linear(t(x), t(w), None if b is None else t(b))
    if name == "relu":
        want = F.relu(want)
    elif name == "leaky_relu":
        want = F.leaky_relu(want, args[0])
    elif name == "gelu":
        want = F.gelu(want)
    assert_torch(run(node, x), want)


@pytest.mark.parametrize("start, end", [(1, -1), (0, -1), (1, 2), (2, 3), (-3, -2), (0, 0),
                                        (3, 3), (-1, -1)])
def test_flatten_matches_torch(start, end):
    x = rand(2, 3, 4, 5)
    node = make_node("flatten", dict(start_dim=start, end_dim=end))
    assert_torch(run(node, x), torch.flatten(t(x), start, end))


TORCH_ACTIVATIONS = {
    "relu": (lambda v: F.relu(v), ()),
    "leaky_relu": (lambda v: F.leaky_relu(v, 0.1), (0.1,)),
    "relu6": (lambda v: F.relu6(v), ()),
    "clip": (lambda v: torch.clamp(v, -0.5, 1.5), (-0.5, 1.5)),
    "sigmoid": (torch.sigmoid, ()),
    "tanh": (torch.tanh, ()),
    "elu": (lambda v: F.elu(v, 0.7), (0.7,)),
    "silu": (F.silu, ()),
    "gelu": (lambda v: F.gelu(v), ()),
    "gelu_tanh": (lambda v: F.gelu(v, approximate="tanh"), ()),
    "hardswish": (F.hardswish, ()),
    "hardsigmoid": (F.hardsigmoid, ()),  # torch's alpha 1/6, the table's default
    "selu": (F.selu, ()),
    "erf": (torch.erf, ()),
    "softplus": (F.softplus, ()),
    "softsign": (F.softsign, ()),
}


def test_every_activation_has_a_torch_check():
    assert set(TORCH_ACTIVATIONS) == set(ACTIVATIONS)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_matches_torch(name):
    x = 4.0 * rand(2, 3, 5)
    fn, args = TORCH_ACTIVATIONS[name]
    node = make_node("activation", dict(name=name, args=args))
    assert_torch(run(node, x), fn(t(x)))


def test_activation_default_args_match_torch():
    x = 4.0 * rand(2, 7)
    assert_torch(run(make_node("activation", dict(name="leaky_relu", args=())), x),
                 F.leaky_relu(t(x)))
    assert_torch(run(make_node("activation", dict(name="elu")), x), F.elu(t(x)))


@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
@pytest.mark.parametrize("dim", [0, 1, 2])
def test_softmax_matches_torch(op, dim):
    x = 30.0 * rand(2, 3, 4)  # large values: the oracle must be stable
    node = make_node(op, dict(dim=dim))
    assert_torch(run(node, x), getattr(F, op)(t(x), dim=dim))


def test_softmax_is_stable_for_huge_inputs():
    x = np.array([[1000.0, 1001.0, -1000.0]])
    got = run(make_node("softmax", dict(dim=1)), x)
    assert np.all(np.isfinite(got))
    assert_torch(got, F.softmax(t(x), dim=1))
    assert_torch(run(make_node("log_softmax", dict(dim=1)), x), F.log_softmax(t(x), dim=1))


# -- batch_norm, add, cat, identity -----------------------------------------------------

@pytest.mark.parametrize("shape", [(4, 3), (2, 3, 5), (2, 3, 4, 5), (1, 3, 2, 3, 4)])
@pytest.mark.parametrize("eps", [1e-5, 1e-3])
def test_batch_norm_eval_matches_torch(shape, eps):
    c = shape[1]
    x = rand(*shape)
    mean, var = rand(c, seed=1), np.abs(rand(c, seed=2)) + 0.1
    weight, bias = rand(c, seed=3), rand(c, seed=4)
    node = make_node("batch_norm", dict(eps=eps), dict(running_mean=mean, running_var=var,
                                                       weight=weight, bias=bias))
    want = F.batch_norm(t(x), t(mean), t(var), t(weight), t(bias), training=False, eps=eps)
    assert_torch(run(node, x), want)


def test_add_and_identity_match_torch():
    a, b = rand(2, 3, 4), rand(2, 3, 4, seed=1)
    assert_torch(run(make_node("add", inputs=["a", "b"]), a, b), t(a) + t(b))
    assert_torch(run(make_node("identity"), a), t(a))


@pytest.mark.parametrize("dim", [0, 1, 2, 3])
def test_cat_matches_torch(dim):
    shapes = [[2, 3, 4, 5] for _ in range(3)]
    for i, shape in enumerate(shapes):
        shape[dim] += i
    arrays = [rand(*shape, seed=i) for i, shape in enumerate(shapes)]
    node = make_node("cat", dict(dim=dim), inputs=["a", "b", "c"])
    assert_torch(run(node, *arrays), torch.cat([t(a) for a in arrays], dim=dim))


# -- conv -------------------------------------------------------------------------------

def conv_node(spec: ConvSpec, *, residual: bool = False, name: str = "conv",
              module: str = "Conv2d", seed: int = 0) -> Node:
    params = {"weight": rand(*spec.weight_shape, seed=seed)}
    if spec.bias:
        params["bias"] = rand(*spec.bias_shape, seed=seed + 1)
    return make_node("conv", dict(spec=spec.to_dict(), residual=residual), params, name=name,
                     module=module, inputs=["x", "r"] if residual else ["x"])


def torch_conv(spec: ConvSpec, node: Node, x: np.ndarray) -> torch.Tensor:
    fn = getattr(F, f"conv{spec.ndim}d")
    bias = t(node.params["bias"]) if spec.bias else None
    return fn(t(x), t(node.params["weight"]), bias, stride=spec.stride,
              padding=tuple(lo for lo, _ in spec.padding), dilation=spec.dilation,
              groups=spec.groups)


@pytest.mark.parametrize("spec", [
    ConvSpec((2, 4, 9, 8), 6, 3, stride=1, padding=1, activation="relu"),
    ConvSpec((2, 4, 9, 8), 4, 3, stride=1, padding=1, bias=False, activation="relu"),
    ConvSpec((1, 4, 9), 4, 3, padding=2, dilation=2, groups=2, activation="relu"),
    ConvSpec((1, 2, 5, 4, 6), 2, (3, 1, 3), padding=(1, 0, 1), activation="relu"),
], ids=["2d", "2d-nobias", "1d-groups", "3d"])
def test_conv_with_residual_matches_torch(spec):
    """act(conv + bias + residual), the ResNet block's tail."""
    node = conv_node(spec, residual=True)
    x, r = rand(*spec.input_shape, seed=7), rand(*spec.output_shape, seed=8)
    want = F.relu(torch_conv(spec, node, x) + t(r))
    assert_torch(run(node, x, r), want)


@pytest.mark.parametrize("spec", [
    ConvSpec((2, 3, 8, 8), 5, 3, stride=2, padding=1),
    ConvSpec((1, 4, 10), 8, 5, padding=2, activation="sigmoid"),
    ConvSpec((1, 4, 6, 7), 4, 3, padding=1, groups=4, dtype="float32", activation="relu6"),
])
def test_conv_matches_torch_in_float64(spec):
    """The oracle computes in float64 whatever the spec's dtype."""
    node = conv_node(spec)
    x = rand(*spec.input_shape, seed=3)
    want = torch_conv(spec, node, x)
    want = {None: lambda v: v, "sigmoid": torch.sigmoid, "relu6": F.relu6}[spec.activation](want)
    assert_torch(run(node, x), want)


# -- a small network --------------------------------------------------------------------

def small_graph(rng: np.random.Generator) -> Graph:
    spec = ConvSpec((2, 3, 8, 8), 4, 3, padding=1, bias=True)
    conv = make_node("conv", dict(spec=spec.to_dict(), residual=False),
                     dict(weight=rng.standard_normal(spec.weight_shape),
                          bias=rng.standard_normal(4)),
                     name="conv1", module="Conv2d", inputs=["input"])
    bn = make_node("batch_norm", dict(eps=1e-5),
                   dict(running_mean=rng.standard_normal(4),
                        running_var=rng.uniform(0.5, 2.0, 4),
                        weight=rng.standard_normal(4), bias=rng.standard_normal(4)),
                   name="bn1", module="BatchNorm2d", inputs=["conv1"])
    relu = make_node("activation", dict(name="relu", args=()), name="relu",
                     module="ReLU", inputs=["bn1"])
    pool = make_node("max_pool", dict(kernel_size=(2, 2), stride=(2, 2), padding=(0, 0),
                                      dilation=(1, 1), ceil_mode=False),
                     name="pool", module="MaxPool2d", inputs=["relu"])
    flat = make_node("flatten", dict(start_dim=1, end_dim=-1), name="flatten",
                     module="Flatten", inputs=["pool"])
    fc = make_node("linear", dict(activation=None, activation_args=()),
                   dict(weight=rng.standard_normal((10, 64)), bias=rng.standard_normal(10)),
                   name="fc", module="Linear", inputs=["flatten"])
    soft = make_node("softmax", dict(dim=1), name="softmax", module="Softmax", inputs=["fc"])
    return Graph([("input", (2, 3, 8, 8))], [conv, bn, relu, pool, flat, fc, soft],
                 ["softmax"])


def test_small_graph_evaluates_like_torch():
    rng = np.random.default_rng(0)
    graph = small_graph(rng)
    infer_graph(graph)
    assert [n.shape for n in graph.nodes] == [(2, 4, 8, 8)] * 3 + [(2, 4, 4, 4), (2, 64),
                                                                   (2, 10), (2, 10)]
    x = rng.standard_normal((2, 3, 8, 8))
    (got,) = evaluate(graph, x)
    assert got.dtype == np.float64
    p = {n.name: {k: t(v) for k, v in n.params.items()} for n in graph.nodes}
    y = F.conv2d(t(x), p["conv1"]["weight"], p["conv1"]["bias"], padding=1)
    y = F.batch_norm(y, p["bn1"]["running_mean"], p["bn1"]["running_var"],
                     p["bn1"]["weight"], p["bn1"]["bias"], training=False, eps=1e-5)
    y = F.max_pool2d(F.relu(y), 2)
    y = F.softmax(F.linear(torch.flatten(y, 1), p["fc"]["weight"], p["fc"]["bias"]), dim=1)
    assert_torch(got, y)
    assert evaluate(graph, [x])[0].shape == (2, 10)


def test_infer_graph_overwrites_stale_shapes():
    graph = small_graph(np.random.default_rng(1))
    for node in graph.nodes:
        node.shape = (9, 9)
    infer_graph(graph)
    assert graph.node("fc").shape == (2, 10)


# -- errors name the node ---------------------------------------------------------------

def spec_dict(**kw) -> dict:
    return ConvSpec(**({"input_shape": (1, 64, 56, 56), "out_channels": 64,
                        "padding": 1} | kw)).to_dict()


def conv_error_node(**attrs) -> Node:
    return make_node("conv", {"spec": spec_dict()} | attrs, name="layer1.0.conv1",
                     module="Conv2d")


def test_conv_channel_mismatch_message():
    with pytest.raises(GraphError) as info:
        infer_shape(conv_error_node(), [(1, 32, 56, 56)])
    assert str(info.value) == ("layer1.0.conv1 (Conv2d): expects input with 64 channels, "
                               "got shape (1, 32, 56, 56)")


ERROR_CASES = [
    # (op, attrs, params, input shapes, words the message must contain)
    ("conv", {"spec": spec_dict()}, {}, [(1, 64, 56)], ["4-d", "(1, 64, 56)"]),
    ("conv", {"spec": spec_dict()}, {}, [(2, 64, 56, 56)], ["batch", "(2, 64, 56, 56)"]),
    ("conv", {"spec": spec_dict()}, {}, [(1, 64, 28, 56)], ["spatial", "(1, 64, 28, 56)"]),
    ("conv", {"spec": spec_dict(), "residual": True}, {}, [(1, 64, 56, 56), (1, 64, 28, 28)],
     ["residual", "(1, 64, 28, 28)", "(1, 64, 56, 56)"]),
    ("conv", {"spec": spec_dict(), "residual": True}, {}, [(1, 64, 56, 56)], ["2 input"]),
    ("conv", {"spec": spec_dict() | {"groups": 3}}, {}, [(1, 64, 56, 56)], ["groups"]),
    ("conv", {"spec": "conv3x3"}, {}, [(1, 64, 56, 56)], ["spec", "str"]),
    ("conv", {}, {}, [(1, 64, 56, 56)], ["spec"]),
    ("conv", {"spec": spec_dict()}, {"weight": np.zeros((64, 64, 1, 1))}, [(1, 64, 56, 56)],
     ["weight", "(64, 64, 1, 1)", "(64, 64, 3, 3)"]),
    ("max_pool", pool_attrs(2, 3, 1, 2), {}, [(1, 2, 9, 9)], ["padding", "half"]),
    ("avg_pool", pool_attrs(2, (2, 3), 1, (2, 1)), {}, [(1, 2, 9, 9)], ["padding", "half"]),
    ("max_pool", pool_attrs(2, 4, 4, 0), {}, [(1, 2, 3, 9)], ["too small", "(1, 2, 3, 9)"]),
    ("avg_pool", pool_attrs(1, 5, 1, 0), {}, [(1, 2, 4)], ["too small"]),
    ("max_pool", pool_attrs(2, 2, 2, 0), {}, [(1, 2, 9)], ["4-d", "(1, 2, 9)"]),
    ("max_pool", pool_attrs(4, 2, 2, 0), {}, [(1, 2, 9, 9, 9, 9)], ["1, 2 or 3 entries"]),
    ("max_pool", pool_attrs(1, 0, 1, 0), {}, [(1, 2, 9)], ["kernel_size"]),
    ("max_pool", pool_attrs(1, 2, 2, 0) | {"stride": (1, 2)}, {}, [(1, 2, 9)], ["stride"]),
    ("max_pool", pool_attrs(1, 2, 2, 0) | {"kernel_size": 2}, {}, [(1, 2, 9)],
     ["kernel_size=2", "tuple"]),
    ("max_pool", {"kernel_size": (2,), "padding": (0,)}, {}, [(1, 2, 9)], ["stride"]),
    ("max_pool", {}, {}, [(1, 2, 9)], ["kernel_size"]),
    ("avg_pool", pool_attrs(1, 2, 2, 0, 0), {}, [(1, 2, 9)], ["dilation=(0,)", ">= 1"]),
    ("adaptive_avg_pool", {"output_size": 0}, {}, [(1, 2, 9)], ["output_size"]),
    ("adaptive_avg_pool", {"output_size": (2, 2)}, {}, [(1, 2, 9)], ["4-d", "(1, 2, 9)"]),
    ("linear", {}, {"weight": np.zeros((10, 64))}, [(2, 32)], ["64", "(2, 32)"]),
    ("linear", {}, {}, [(2, 32)], ["weight"]),
    ("linear", {}, {"weight": np.zeros((10, 64)), "bias": np.zeros(5)}, [(2, 64)],
     ["bias", "(5,)"]),
    ("linear", {"activation": "swish"}, {"weight": np.zeros((10, 64))}, [(2, 64)],
     ["swish"]),
    ("flatten", {"start_dim": 2, "end_dim": 1}, {}, [(2, 3, 4)], ["start_dim", "end_dim"]),
    ("flatten", {"start_dim": 3, "end_dim": -1}, {}, [(2, 3, 4)], ["dim=3", "3-d"]),
    ("softmax", {"dim": 2}, {}, [(2, 3)], ["dim=2", "2-d"]),
    ("log_softmax", {"dim": -3}, {}, [(2, 3)], ["dim=-3"]),
    ("softmax", {"dim": -1}, {}, [(2, 3)], ["dim=-1", "[0, 1]"]),  # ir.py: non-negative
    ("activation", {"name": "clip", "args": ()}, {}, [(2, 3)], ["clip", "2 argument"]),
    ("batch_norm", {"eps": 1e-5}, {"running_mean": np.zeros(8), "running_var": np.ones(8)},
     [(1, 4, 5, 5)], ["8 channels", "(1, 4, 5, 5)"]),
    ("batch_norm", {"eps": 1e-5}, {"running_mean": np.zeros(4), "running_var": np.ones(3)},
     [(1, 4, 5, 5)], ["running_var", "(3,)"]),
    ("add", {}, {}, [(1, 4, 5, 5), (1, 4, 5, 4)], ["(1, 4, 5, 5)", "(1, 4, 5, 4)"]),
    ("add", {}, {}, [(1, 4, 5, 5), (1, 1, 1, 1)], ["(1, 1, 1, 1)", "broadcast"]),
    ("add", {}, {}, [(1, 4)], ["2 input"]),
    ("cat", {"dim": 1}, {}, [(1, 4, 5), (1, 4)], ["rank", "(1, 4, 5)", "(1, 4)"]),
    ("cat", {"dim": 1}, {}, [(1, 4, 5), (1, 2, 6)], ["dim 1", "(1, 2, 6)"]),
    ("cat", {"dim": 3}, {}, [(1, 4, 5), (1, 2, 5)], ["dim=3"]),
    ("cat", {"dim": -1}, {}, [(1, 4, 5), (1, 4, 5)], ["dim=-1"]),
    ("cat", {"dim": 0}, {}, [(1, 4, 5)], ["at least 2"]),
    ("identity", {}, {}, [(1, 4), (1, 4)], ["1 input"]),
    ("reshape", {"shape": (3, 3)}, {}, [(1, 4)], ["(1, 4)", "(3, 3)", "elements"]),
    ("reshape", {"shape": (-1, 4)}, {}, [(1, 4)], ["shape=(-1, 4)", ">= 1"]),
    ("transpose", {"perm": (0, 0)}, {}, [(1, 4)], ["perm=(0, 0)", "permutation"]),
    ("transpose", {"perm": (1, 0, 2)}, {}, [(1, 4)], ["perm", "2 entries"]),
    ("pad", {"pads": (0, 1)}, {}, [(1, 4)], ["pads", "4 entries"]),
    ("pad", {"pads": (0, -3, 0, -2)}, {}, [(1, 4)], ["leave nothing", "(1, 4)"]),
    ("pad", {"pads": (0, 0, 0, 0), "value": float("nan")}, {}, [(1, 4)], ["NaN"]),
    ("pad", {"pads": (0, 2, 0, 0), "mode": "reflect"}, {}, [(1, 2)], ["reflect", "dim 1"]),
    ("pad", {"pads": (0, -1, 0, 0), "mode": "wrap"}, {}, [(1, 2)], ["no negative"]),
    ("slice", {"starts": (0,), "stops": (4,), "steps": (0,)}, {}, [(4,)], ["steps=(0,)"]),
    ("slice", {"starts": (0,), "stops": (4,)}, {}, [(4,)], ["steps=None"]),
    ("where", {}, {}, [(2, 3), (2, 3), (3,)], ["equal shapes", "(3,)"]),
    ("where", {}, {}, [(2, 3), (2, 3)], ["3 input"]),
    ("expand", {"shape": (2, 3)}, {}, [(2, 4)], ["broadcast", "(2, 4)", "(2, 3)"]),
    ("expand", {"shape": (4,)}, {}, [(2, 4)], ["fewer dims"]),
    ("lrn", {"size": 0, "alpha": 1e-4, "beta": 0.75, "bias": 1.0}, {}, [(1, 4, 3)],
     ["size=0"]),
    ("lrn", {"size": 3, "alpha": 1e-4, "beta": 0.75, "bias": 1.0}, {}, [(4,)], ["2 dims"]),
    ("binary", {"kind": "pow"}, {}, [(1, 4), (1, 4)], ["kind='pow'"]),
    ("binary", {"kind": "mul"}, {}, [(1, 4), (1, 1)], ["equal shapes", "expand"]),
    ("matmul", {}, {}, [(2, 3), (4, 5)], ["(2, 3)", "(4, 5)"]),
    ("matmul", {}, {}, [(2, 2, 3), (3, 3, 5)], ["same leading dims"]),
    ("constant", {}, {}, [], ["value"]),
    ("constant", {}, {"value": np.zeros(3)}, [(3,)], ["0 input"]),
    ("max_pool", pool_attrs(1, 2, 2, 0) | {"padding_end": (2,)}, {}, [(1, 2, 9)],
     ["padding_end=(2,)", "dilated kernel"]),
    ("max_pool_indices", pool_attrs(1, 2, 2, 0) | {"storage_order": 2}, {}, [(1, 2, 9)],
     ["storage_order=2", "0 or 1"]),
    ("resample", {"axis": 3, "size": 4, "scale": 2.0}, {}, [(1, 2, 3)], ["axis=3"]),
    ("resample", {"axis": 1, "size": 4, "scale": 2.0, "mode": "area"}, {}, [(1, 2, 3)],
     ["mode='area'"]),
    ("resample", {"axis": 1, "size": 4}, {}, [(1, 2, 3)], ["scale=None"]),
]


@pytest.mark.parametrize("op, attrs, params, shapes, words", ERROR_CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(ERROR_CASES)])
def test_errors_name_the_node(op, attrs, params, shapes, words):
    node = make_node(op, attrs, params, name="features.3", module="Layer",
                     inputs=[f"in{i}" for i in range(len(shapes))])
    with pytest.raises(GraphError) as info:
        infer_shape(node, shapes)
    message = str(info.value)
    assert message.startswith("features.3 (Layer): "), message
    for word in words:
        assert word in message, (word, message)
    # The oracle checks shapes the same way before computing.
    with pytest.raises(GraphError, match=r"^features\.3 \(Layer\): "):
        op_reference(node, [np.zeros(s) for s in shapes])


def test_error_without_module_names_just_the_node():
    node = make_node("add", name="add_1")
    with pytest.raises(GraphError, match=r"^add_1: cannot add shapes \(1, 2\) and \(2, 2\)"):
        infer_shape(node, [(1, 2), (2, 2)])


def test_every_op_is_tested():
    tested = {case[0] for case in ERROR_CASES} | {"identity"}
    assert set(OPS) <= tested


def test_infer_graph_errors_name_the_node():
    graph = small_graph(np.random.default_rng(0))
    graph.node("fc").inputs = ["nowhere"]
    with pytest.raises(GraphError, match=r"^fc \(Linear\): .*nowhere"):
        infer_graph(graph)

    graph = small_graph(np.random.default_rng(0))
    graph.inputs = [("input", (2, 5, 8, 8))]
    with pytest.raises(GraphError, match=r"^conv1 \(Conv2d\): expects input with 3 channels"):
        infer_graph(graph)

    graph = small_graph(np.random.default_rng(0))
    graph.node("relu").name = "bn1"
    with pytest.raises(GraphError, match=r"^bn1 \(ReLU\): .*already used"):
        infer_graph(graph)

    graph = small_graph(np.random.default_rng(0))
    graph.outputs = ["logits"]
    with pytest.raises(GraphError, match="logits"):
        infer_graph(graph)


def test_evaluate_checks_its_inputs():
    graph = small_graph(np.random.default_rng(0))
    with pytest.raises(GraphError, match=r"input.*\(2, 3, 8, 8\).*\(2, 3, 8, 9\)"):
        evaluate(graph, np.zeros((2, 3, 8, 9)))
    with pytest.raises(GraphError, match="1 input"):
        evaluate(graph, [np.zeros((2, 3, 8, 8))] * 2)
