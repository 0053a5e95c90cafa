"""The tensor ops imported (ONNX) graphs need, and asymmetric pool padding.

Each op's oracle is checked against an independent NumPy/PyTorch computation, then
compiled alone and in small chains on every backend and compared with the oracle.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from convgen.graph.ir import Node
from convgen.graph.reference import op_reference

from graph_helpers import check, conv, graph, node

# whole networks: the backend argument runs over the backends that compile them
pytestmark = pytest.mark.networks

RTOL = 1e-12


def rand(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape)


def ref(n: Node, *arrays: np.ndarray) -> np.ndarray:
    return op_reference(n, list(arrays))


# -- the oracle against independent computations ---------------------------------------------

@pytest.mark.parametrize("perm", [(1, 0), (0, 2, 3, 1), (3, 1, 0, 2), (2, 0, 1)])
def test_transpose_oracle(perm):
    x = rand(*[2, 3, 4, 5][:len(perm)])
    np.testing.assert_array_equal(ref(node("t", "transpose", ["x"], perm=perm), x),
                                  torch.from_numpy(x).permute(*perm).numpy())


@pytest.mark.parametrize("pads, value", [
    ((0, 1, 2, 0, 3, 1), 0.0),
    ((0, 0, 1, 0, 0, 2), -2.5),
    ((0, -1, 2, 0, 1, -2), 1.0),  # negative pads crop
    ((1, 0, 0, 0, 0, 1), float("-inf")),
])
def test_pad_oracle_matches_torch(pads, value):
    x = rand(2, 4, 5)
    # torch.nn.functional.pad lists (begin, end) pairs from the last dim backwards
    begins, ends = pads[:3], pads[3:]
    torch_pads = [p for d in reversed(range(3)) for p in (begins[d], ends[d])]
    want = F.pad(torch.from_numpy(x), torch_pads, value=value).numpy()
    np.testing.assert_array_equal(ref(node("p", "pad", ["x"], pads=pads, value=value), x), want)


@pytest.mark.parametrize("source, shape", [((3, 1), (2, 3, 4)), ((1,), (5,)), ((1, 4, 1), (2, 4, 3)),
                                           ((2, 3), (2, 3))])
def test_expand_oracle(source, shape):
    x = rand(*source)
    np.testing.assert_array_equal(ref(node("e", "expand", ["x"], shape=shape), x),
                                  torch.from_numpy(x).expand(*shape).numpy())


def _lrn_by_hand(x, size, alpha, beta, bias):
    """ONNX's LRN, element by element."""
    y = np.empty_like(x)
    channels = x.shape[1]
    for index in itertools.product(*map(range, x.shape)):
        c = index[1]
        low, high = max(0, c - (size - 1) // 2), min(channels - 1, c + -(-(size - 1) // 2))
        total = sum(x[(index[0], k) + index[2:]] ** 2 for k in range(low, high + 1))
        y[index] = x[index] / (bias + alpha / size * total) ** beta
    return y


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5])
def test_lrn_oracle(size):
    x = rand(2, 6, 3, 2)
    attrs = dict(size=size, alpha=0.3, beta=0.75, bias=2.0)
    got = ref(node("l", "lrn", ["x"], **attrs), x)
    np.testing.assert_allclose(got, _lrn_by_hand(x, **attrs), rtol=RTOL)
    if size % 2:  # torch centres even windows the other way; odd ones agree with ONNX
        want = F.local_response_norm(torch.from_numpy(x), size, 0.3, 0.75, 2.0).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-10)


@pytest.mark.parametrize("kind, fn", [("add", np.add), ("sub", np.subtract),
                                      ("mul", np.multiply), ("div", np.divide)])
def test_binary_oracle(kind, fn):
    a, b = rand(2, 3, 4), rand(2, 3, 4, seed=1)
    n = node("b", "binary", ["a", "b"], kind=kind)
    np.testing.assert_array_equal(ref(n, a, b), fn(a, b))


def test_matmul_and_constant_oracles():
    a, b = rand(2, 3, 4), rand(2, 4, 5, seed=1)
    np.testing.assert_allclose(ref(node("m", "matmul", ["a", "b"]), a, b),
                               torch.from_numpy(a).bmm(torch.from_numpy(b)).numpy(), rtol=RTOL)
    value = rand(3, 2)
    c = Node("c", "constant", [], {}, {"value": value})
    np.testing.assert_array_equal(ref(c), value)


def _pool_by_padding(x, op, kernel, stride, begin, end, count_include_pad=True):
    """Pad explicitly (max: -inf, avg: 0) and pool with no padding, in torch."""
    t = torch.from_numpy(x)
    pads = [p for d in reversed(range(len(kernel))) for p in (begin[d], end[d])]
    if op == "max_pool":
        return F.max_pool2d(F.pad(t, pads, value=-np.inf), kernel, stride).numpy()
    total = F.avg_pool2d(F.pad(t, pads), kernel, stride, divisor_override=1)
    if count_include_pad:
        count = F.avg_pool2d(F.pad(torch.ones_like(t), pads, value=1.0), kernel, stride,
                             divisor_override=1)
    else:
        count = F.avg_pool2d(F.pad(torch.ones_like(t), pads), kernel, stride,
                             divisor_override=1)
    return (total / count).numpy()


@pytest.mark.parametrize("op, count_include_pad", [("max_pool", True), ("avg_pool", True),
                                                   ("avg_pool", False)])
@pytest.mark.parametrize("kernel, stride, begin, end", [
    ((3, 3), (2, 2), (0, 1), (1, 2)),
    ((2, 3), (1, 2), (1, 0), (0, 2)),
    ((3, 2), (3, 1), (2, 0), (0, 1)),
])
def test_asymmetric_pool_padding_oracle(op, count_include_pad, kernel, stride, begin, end):
    x = rand(1, 2, 7, 6)
    attrs = dict(kernel_size=kernel, stride=stride, padding=begin, padding_end=end)
    if op == "avg_pool":
        attrs["count_include_pad"] = count_include_pad
    got = ref(node("p", op, ["x"], **attrs), x)
    want = _pool_by_padding(x, op, kernel, stride, begin, end, count_include_pad)
    np.testing.assert_allclose(got, want, rtol=1e-12)


# -- compiled, every backend -----------------------------------------------------------------

@pytest.mark.parametrize("perm", [(1, 0), (0, 2, 3, 1), (2, 1, 0), (0, 1, 3, 2, 4)])
def test_transpose_compiled(backend, perm):
    shape = (2, 3, 4, 5, 2)[:len(perm)]
    check(graph([("x", shape)], [node("t", "transpose", ["x"], perm=perm)], ["t"]), backend)


@pytest.mark.parametrize("pads, value", [
    ((0, 0, 1, 2, 0, 0, 2, 1), 0.0),
    ((0, 1, -1, 0, 1, 0, 2, -2), -1.25),
    ((0, 0, 1, 1, 0, 0, 1, 1), float("-inf")),
])
def test_pad_compiled(backend, pads, value):
    g = graph([("x", (1, 2, 5, 4))], [node("p", "pad", ["x"], pads=pads, value=value)], ["p"])
    check(g, backend)


@pytest.mark.parametrize("source, shape", [((3, 1), (2, 3, 4)), ((1, 4, 1, 1), (2, 4, 3, 3)),
                                           ((1,), (6,))])
def test_expand_compiled(backend, source, shape):
    check(graph([("x", source)], [node("e", "expand", ["x"], shape=shape)], ["e"]), backend)


@pytest.mark.parametrize("size", [2, 5])
def test_lrn_compiled(backend, size):
    g = graph([("x", (2, 7, 3, 3))],
              [node("l", "lrn", ["x"], size=size, alpha=0.5, beta=0.75, bias=1.5)], ["l"])
    check(g, backend)


@pytest.mark.parametrize("kind", ["add", "sub", "mul", "div"])
def test_binary_with_a_constant_compiled(backend, kind):
    value = np.random.default_rng(3).uniform(0.5, 2.0, (2, 3, 4))
    nodes = [Node("c", "constant", [], {}, {"value": value}),
             node("b", "binary", ["x", "c"], kind=kind),
             node("b2", "binary", ["c", "b"], kind=kind)]
    check(graph([("x", (2, 3, 4))], nodes, ["b", "b2"]), backend)


def test_matmul_compiled(backend):
    g = graph([("a", (2, 3, 4)), ("b", (2, 4, 5))], [node("m", "matmul", ["a", "b"])], ["m"])
    check(g, backend)
    value = np.random.default_rng(4).standard_normal((6, 3))
    nodes = [Node("w", "constant", [], {}, {"value": value}), node("m", "matmul", ["w", "x"])]
    check(graph([("x", (3, 2))], nodes, ["m"]), backend)


def test_reshape_views_and_constant_outputs(backend):
    value = np.arange(6.0).reshape(2, 3)
    nodes = [node("r", "reshape", ["x"], shape=(3, 8)),
             node("t", "transpose", ["r"], perm=(1, 0)),
             node("r2", "reshape", ["t"], shape=(2, 4, 3)),
             Node("c", "constant", [], {}, {"value": value}),
             node("rc", "reshape", ["c"], shape=(6,))]
    model = check(graph([("x", (2, 3, 4))], nodes, ["r2", "rc", "r"]), backend)
    assert model.peak_bytes == 2 * 3 * 4 * 4  # only the transpose's output is in the arena


@pytest.mark.parametrize("op, count_include_pad", [("max_pool", True), ("avg_pool", True),
                                                   ("avg_pool", False)])
@pytest.mark.parametrize("ceil_mode", [False, True])
def test_asymmetric_pool_padding_compiled(backend, op, count_include_pad, ceil_mode):
    attrs = dict(kernel_size=(3, 2), stride=(2, 2), padding=(0, 1), padding_end=(2, 0),
                 ceil_mode=ceil_mode)
    if op == "avg_pool":
        attrs["count_include_pad"] = count_include_pad
    check(graph([("x", (1, 2, 8, 7))], [node("p", op, ["x"], **attrs)], ["p"]), backend)


def test_pad_then_conv_with_a_constant_residual(backend):
    c = conv("conv", "p", (1, 2, 6, 7), 3, 3, padding=0)
    out_shape = (1, 3, 4, 5)
    value = np.random.default_rng(5).standard_normal(out_shape)
    nodes = [node("p", "pad", ["x"], pads=(0, 0, 1, 0, 0, 0, 0, 2), value=0.0), c,
             Node("k", "constant", [], {}, {"value": value}),
             node("add", "add", ["conv", "k"]),
             node("mul", "binary", ["add", "add"], kind="mul")]
    check(graph([("x", (1, 2, 5, 5))], nodes, ["mul"]), backend)


@pytest.mark.parametrize("pads, folded", [
    ((0, 0, 1, 2, 0, 0, 0, 1), True),
    ((0, 0, 0, 0, 0, 0, 2, 0), True),
    ((0, 1, 1, 0, 0, 0, 0, 0), False),  # pads a channel: a real pad node
    ((0, 0, -1, 0, 0, 0, 0, 0), False),  # crops
])
def test_zero_pad_folds_into_the_next_conv(backend, pads, folded):
    from convgen.graph.compile import compile_graph

    shape = (1, 2, 5, 6)
    padded = tuple(s + b + e for s, b, e in zip(shape, pads[:4], pads[4:]))
    nodes = [node("p", "pad", ["x"], pads=pads, value=0.0),
             conv("conv", "p", padded, 3, 3, padding=1)]
    g = graph([("x", shape)], nodes, ["conv"])
    check(g, backend)
    optimized = compile_graph(g, backend).optimized
    assert [n.op for n in optimized.nodes] == (["conv"] if folded else ["pad", "conv"])
    if folded:
        assert optimized.nodes[0].fused == ["p"]


def test_pad_with_another_reader_stays(backend):
    from convgen.graph.compile import compile_graph

    nodes = [node("p", "pad", ["x"], pads=(0, 0, 1, 1, 0, 0, 1, 1), value=0.0),
             conv("conv", "p", (1, 2, 7, 7), 2, 3), node("sum", "add", ["conv", "p2"]),
             node("p2", "pad", ["p"], pads=(0, 0, -1, -1, 0, 0, -1, -1), value=0.0)]
    nodes = [nodes[0], nodes[1], nodes[3], nodes[2]]
    g = graph([("x", (1, 2, 5, 5))], nodes, ["sum"])
    check(g, backend)
    assert "p" in [n.name for n in compile_graph(g, backend).optimized.nodes]


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_max_pool_splits_channels_over_the_network_threads(backend, threads):
    from convgen.graph.compile import compile_graph
    from graph_helpers import pool

    nodes = [conv("conv", "x", (2, 3, 9, 8), 5, 3, padding=1),
             pool("pool", "conv", "max_pool", 2, 3, stride=2, padding=1, dilation=(1, 2))]
    g = graph([("x", (2, 3, 9, 8))], nodes, ["pool"])
    model = check(g, backend, threads=threads)
    step = [s for s in compile_graph(g, backend, threads=threads)._lowered.steps
            if s.kind == "max_pool"][0]
    assert step.consts["jobs"] == 10 and step.consts["threads"] == threads
    if backend == "c":
        assert ("omp parallel for num_threads" in model.source) == (threads > 1)
