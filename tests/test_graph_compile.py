"""Whole-network compilation: every op, the passes, the arena, the model's call and summary.

Every compiled model runs on every backend (the ``backend`` fixture) and is compared
with :func:`convgen.graph.reference.evaluate` of the *original* (unfused) graph: float32
models within 1e-4 relative to the outputs' magnitude, float64 models within 1e-10.
Shapes are tiny: the cost is compilation, which the disk cache makes cheap on reruns.
"""

from __future__ import annotations

import io
import math
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from convgen.graph.compile import compile_graph
from convgen.graph.ir import Graph, GraphError, Node
from convgen.graph.memory import ALIGN_BYTES, plan_memory
from convgen.graph.passes import fold_batch_norm, fuse_activation, fuse_residual_add, optimize
from convgen.graph.reference import evaluate
from convgen.spec import ACTIVATIONS

from graph_helpers import (activation, adaptive, assert_close, batch_norm, check, conv,
                            conv_spec, graph, lifetimes, linear, node, outputs_of, pool,
                            random_inputs)

# whole networks: the backend argument runs over the backends that compile them
pytestmark = pytest.mark.networks

# -- every op on its own --------------------------------------------------------------------

CONV_CASES = {
    # id: (input shape, out_channels, kernel_size, other ConvSpec fields)
    "1d-stride-pad": ((1, 3, 9), 4, 3, dict(stride=2, padding=1)),
    "1d-depthwise-dilated-same": ((1, 4, 8), 4, 3, dict(groups=4, dilation=2, padding="same")),
    "1d-transposed-flip-dilated": ((1, 2, 5), 3, 3, dict(transposed=True, flip=True,
                                                          dilation=2)),
    "2d-pad1": ((1, 3, 6, 6), 4, 3, dict(padding=1)),
    "2d-groups-stride-dilation": ((2, 4, 7, 7), 6, 3, dict(groups=2, stride=2, dilation=2,
                                                            padding=2)),
    "2d-reflect": ((1, 2, 5, 5), 3, 3, dict(padding=1, padding_mode="reflect")),
    "2d-replicate-asymmetric": ((1, 2, 5, 6), 3, 3, dict(padding=((1, 2), (0, 1)),
                                                         padding_mode="replicate")),
    "2d-circular": ((1, 2, 5, 5), 2, (3, 2), dict(padding=2, padding_mode="circular")),
    "2d-transposed-groups": ((1, 4, 4, 4), 2, 3, dict(transposed=True, groups=2, stride=2,
                                                      padding=1, output_padding=1)),
    "2d-flip-nobias": ((1, 2, 5, 5), 3, 3, dict(flip=True, bias=False)),
    "2d-full-stride21": ((1, 2, 4, 5), 2, 2, dict(padding="full", stride=(2, 1))),
    "3d-pad": ((1, 2, 4, 4, 4), 3, (2, 3, 3), dict(padding=(0, 1, 1))),
    "3d-transposed": ((1, 2, 3, 3, 3), 2, 2, dict(transposed=True, stride=2)),
}


@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_conv_alone(backend, case):
    shape, cout, k, fields = CONV_CASES[case]
    c = conv("conv", "x", shape, cout, k, **fields)
    check(graph([("x", shape)], [c], ["conv"]), backend)


POOL_CASES = [
    # (op, input shape, kernel, stride, padding, dilation, ceil_mode, count_include_pad)
    ("max_pool", (1, 2, 9), 3, 2, 1, 1, False, True),
    ("max_pool", (1, 2, 6), 3, 2, 0, 1, True, True),          # last window hangs off the end
    ("max_pool", (1, 2, 10), 2, 3, 1, 3, True, True),         # dilation + ceil
    ("max_pool", (1, 1, 3), 2, 2, 1, 5, True, True),          # a window of padding only: -inf
    ("max_pool", (2, 2, 7, 8), 3, 2, 1, 1, False, True),
    ("max_pool", (1, 2, 5, 5), 2, 2, 1, 1, True, True),
    ("max_pool", (1, 2, 7, 7), (3, 2), (2, 1), (1, 0), (2, 1), False, True),
    ("max_pool", (1, 2, 5, 5, 5), 2, 2, 0, 1, True, True),
    ("max_pool", (1, 1, 4, 5, 6), 3, 2, 1, 1, False, True),
    # rows over 8192 padded elements: the per-tap path (the padded row would not fit the stack)
    ("max_pool", (1, 2, 8300), 3, 2, 1, 2, True, True),
    ("avg_pool", (1, 2, 9), 3, 2, 1, None, False, True),
    ("avg_pool", (1, 2, 9), 3, 2, 1, None, False, False),
    ("avg_pool", (1, 2, 6), 3, 2, 1, None, True, True),       # ceil: overhang not counted
    ("avg_pool", (1, 2, 6), 3, 2, 1, None, True, False),
    ("avg_pool", (1, 2, 7, 6), 3, 2, 1, None, False, True),
    ("avg_pool", (1, 2, 7, 6), 3, 2, 1, None, False, False),
    ("avg_pool", (1, 2, 5, 5), (2, 3), (2, 2), (1, 1), None, True, True),
    ("avg_pool", (1, 2, 5, 5), (2, 3), (2, 2), (1, 1), None, True, False),
    ("avg_pool", (1, 1, 5, 4, 6), 2, 2, 1, None, True, True),
    ("avg_pool", (1, 1, 5, 4, 6), 3, (2, 1, 2), 1, None, False, False),
]


@pytest.mark.parametrize("case", POOL_CASES, ids=lambda c: "-".join(map(str, c)))
def test_pool_alone(backend, case):
    op, shape, k, s, p, d, ceil, cip = case
    nd = len(shape) - 2
    n = pool("pool", "x", op, nd, k, s, p, d, ceil_mode=ceil, count_include_pad=cip)
    check(graph([("x", shape)], [n], ["pool"]), backend)


ADAPTIVE_CASES = [
    ((1, 3, 7), 1), ((1, 3, 7), 3), ((1, 2, 3), 5),               # 1D: to 1, non-divisor, up
    ((2, 3, 5, 7), 1), ((1, 2, 5, 7), (3, 4)), ((1, 2, 6, 6), (2, 3)),
    ((1, 2, 4, 5, 6), 1), ((1, 2, 4, 5, 6), (3, 2, 4)),
]


@pytest.mark.parametrize("shape,size", ADAPTIVE_CASES, ids=str)
def test_adaptive_avg_pool_alone(backend, shape, size):
    check(graph([("x", shape)], [adaptive("gap", "x", size)], ["gap"]), backend)


@pytest.mark.parametrize("bias", [True, False])
def test_linear_alone_and_after_a_flatten_view(backend, bias):
    shape = (2, 3, 2, 2)
    nodes = [node("flat", "flatten", ["x"], start_dim=1, end_dim=-1),
             linear("fc", "flat", 12, 5, bias=bias),
             linear("fc4d", "x", 2, 3, bias=bias)]  # a linear on the last dim of a 4-d input
    model = check(graph([("x", shape)], nodes, ["fc", "fc4d"]), backend)
    assert [n.op for n in model.optimized.nodes] == ["flatten", "linear", "linear"]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_large_linear_splits_its_outputs_over_threads(backend, dtype):
    """Over PARALLEL_LINEAR_MACS: whole chunks of outputs held in registers and a partial
    last chunk, 2 threads on C, a fused activation, 3 rows."""
    from convgen.graph.lower import PARALLEL_LINEAR_MACS

    nodes = [linear("fc", "x", 300, 1000), activation("act", "fc", "relu")]
    g = graph([("x", (3, 300))], nodes, ["act"])
    assert 3 * 300 * 1000 >= PARALLEL_LINEAR_MACS
    model = check(g, backend, dtype, threads=2)
    step = next(s for s in model._lowered.steps if s.kind == "linear")
    assert step.consts["threads"] == 2 and step.consts["activation"] == "relu"


def _after_pool(act: str, args: tuple = ()):
    """avg_pool -> activation: the activation cannot be fused, so it runs on its own."""
    shape = (1, 3, 6, 6)
    nodes = [pool("pool", "x", "avg_pool", 2, 2), activation("act", "pool", act, args)]
    return graph([("x", shape)], nodes, ["act"])


@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
def test_every_activation_alone(backend, act):
    """Standalone activations; args left empty mean the defaults (ir.py, ConvSpec)."""
    args = (-0.5, 0.25) if act == "clip" else ()  # clip has no defaults
    g = _after_pool(act, args)
    arrays = [3 * random_inputs(g)[0]]  # reach both sides of relu6/clip
    model = check(g, backend, arrays=arrays)
    assert [n.op for n in model.optimized.nodes] == ["avg_pool", "activation"]


@pytest.mark.parametrize("act,args", [("leaky_relu", (0.2,)), ("elu", (0.5,)),
                                      ("clip", (-1.0, 0.5))])
def test_activation_alone_with_explicit_args(backend, act, args):
    g = _after_pool(act, args)
    check(g, backend, arrays=[3 * random_inputs(g)[0]])


@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
def test_softmax_on_every_dim_of_a_4d_tensor(backend, op):
    shape = (2, 3, 4, 5)
    nodes = [node(f"{op}{d}", op, ["x"], dim=d) for d in range(4)]
    g = graph([("x", shape)], nodes, [n.name for n in nodes])
    check(g, backend, arrays=[4 * random_inputs(g)[0]])


def test_batch_norm_that_cannot_be_folded(backend):
    """BatchNorm of a graph input, and of a pool: both run as their own step."""
    nodes = [batch_norm("bn_in", "x", 3, seed=1),
             pool("pool", "x", "max_pool", 2, 2),
             batch_norm("bn_pool", "pool", 3, seed=2)]
    model = check(graph([("x", (2, 3, 4, 6))], nodes, ["bn_in", "bn_pool"]), backend)
    assert [n.op for n in model.optimized.nodes].count("batch_norm") == 2


def test_batch_norm_on_3d_and_5d_inputs(backend):
    nodes = [batch_norm("bn1d", "x1", 3), batch_norm("bn3d", "x3", 2, seed=5)]
    check(graph([("x1", (2, 3, 5)), ("x3", (1, 2, 3, 2, 4))], nodes, ["bn1d", "bn3d"]),
          backend)


def test_add_of_non_conv_values(backend):
    nodes = [pool("pool", "x", "max_pool", 2, 2),
             activation("act", "pool", "tanh"),
             node("add1", "add", ["act", "pool"]),
             node("add2", "add", ["add1", "add1"]),  # the same value twice
             node("add3", "add", ["y", "x"])]         # two graph inputs
    g = graph([("x", (1, 2, 4, 4)), ("y", (1, 2, 4, 4))], nodes, ["add2", "add3"])
    model = check(g, backend)
    assert [n.op for n in model.optimized.nodes].count("add") == 3


@pytest.mark.parametrize("dim", [1, 2])
@pytest.mark.parametrize("count", [2, 3])
def test_cat(backend, dim, count):
    shape = (2, 2, 3, 4)
    nodes = [pool("p", "x", "max_pool", 2, 1, 1, 0),         # (2, 2, 3, 4)
             activation("t", "p", "tanh"),
             node("cat", "cat", ["t", "x", "p"][:count], dim=dim)]
    g = graph([("x", shape)], nodes, ["cat"])
    model = check(g, backend)
    expected = list(shape)
    expected[dim] *= count
    assert model.output_shapes == [tuple(expected)]


def test_cat_of_differently_sized_inputs(backend):
    nodes = [pool("p", "x", "avg_pool", 2, (1, 2), (1, 2)),  # (1, 2, 4, 3)
             node("cat_w", "cat", ["p", "x"], dim=3),        # (1, 2, 4, 9)
             node("cat_c", "cat", ["x", "y", "x"], dim=1)]   # (1, 5, 4, 6)
    check(graph([("x", (1, 2, 4, 6)), ("y", (1, 1, 4, 6))], nodes, ["cat_w", "cat_c"]),
          backend)


def test_identity_nodes_are_removed(backend):
    nodes = [node("drop", "identity", ["x"]),
             pool("pool", "drop", "max_pool", 2, 2),
             node("id2", "identity", ["pool"]),
             activation("act", "id2", "sigmoid"),
             node("id3", "identity", ["act"])]
    model = check(graph([("x", (1, 2, 4, 4))], nodes, ["id3"]), backend)
    assert [n.op for n in model.optimized.nodes] == ["max_pool", "activation"]
    assert model.optimized.outputs == ["act"]


def test_output_that_is_a_graph_input_or_a_view_of_one(backend):
    """No step at all: the entry point only copies (an identity, then a flatten view)."""
    nodes = [node("same", "identity", ["x"]), node("flat", "flatten", ["x"])]
    model = check(graph([("x", (2, 3, 2))], nodes, ["same", "flat"]), backend)
    assert model.output_shapes == [(2, 3, 2), (2, 6)]


def test_views_feed_a_conv_and_its_residual(backend):
    """flatten(start_dim=2) turns 2-d maps into 1-d ones: a conv1d reads the view and
    takes another view (of the graph input) as its fused residual."""
    nodes = [pool("p", "x", "max_pool", 2, 1),
             node("f", "flatten", ["p"], start_dim=2),
             node("fx", "flatten", ["x"], start_dim=2),
             conv("c", "f", (1, 2, 20), 2, 3, padding=1),
             node("a", "add", ["c", "fx"])]
    model = check(graph([("x", (1, 2, 4, 5))], nodes, ["a"]), backend)
    assert model.optimized.node("c").inputs == ["f", "fx"]


def test_repeated_outputs_dead_nodes_and_odd_dims(backend):
    nodes = [conv("c", "x", (1, 2, 5, 7), 2, 3, padding=1),
             node("f", "flatten", ["c"]),
             conv("dead", "x", (1, 2, 5, 7), 3, 1),             # computed, never read
             node("cat0", "cat", ["x", "x"], dim=0),
             node("cat3", "cat", ["c", "x"], dim=3),
             adaptive("gap", "x", (None, 3))]
    g = graph([("x", (1, 2, 5, 7))], nodes, ["c", "f", "c", "cat0", "cat3", "gap"])
    model = check(g, backend)
    assert model.output_shapes[:3] == [(1, 2, 5, 7), (1, 70), (1, 2, 5, 7)]


def test_max_pool_propagates_nan(backend):
    g = graph([("x", (1, 1, 6))], [pool("p", "x", "max_pool", 1, 2)], ["p"])
    x = np.array([[[np.nan, 1, 2, np.nan, -1, 3]]], dtype=np.float32)
    got = check(g, backend, arrays=[x])(x)
    assert np.isnan(got[0, 0, :2]).all() and got[0, 0, 2] == 3


def test_batch_norm_eps_defaults_like_the_oracle(backend):
    """The oracle and shape inference treat a missing eps as PyTorch's 1e-5; compiling the
    same graph must agree (or reject it with a GraphError naming the node), not crash."""
    bn = batch_norm("bn", "x", 2)
    del bn.attrs["eps"]
    c = conv("c", "y", (1, 2, 4), 2, 3)
    bn2 = batch_norm("bn2", "c", 2, seed=3)
    del bn2.attrs["eps"]
    g = graph([("x", (1, 2, 3)), ("y", (1, 2, 4))], [bn, c, bn2], ["bn", "bn2"])
    try:
        check(g, backend)
    except GraphError as error:
        assert "bn" in str(error)


def test_small_chains(backend):
    """conv -> pool -> act -> bn -> adaptive pool -> flatten -> linear -> log_softmax."""
    shape = (2, 3, 8, 8)
    c1 = conv("conv1", "x", shape, 4, 3, padding=1, stride=1)
    nodes = [c1, pool("pool1", "conv1", "max_pool", 2, 2),
             activation("act1", "pool1", "silu"),
             batch_norm("bn1", "act1", 4),
             adaptive("gap", "bn1", (3, 3)),
             node("flat", "flatten", ["gap"], start_dim=1),
             linear("fc", "flat", 36, 5),
             node("out", "log_softmax", ["fc"], dim=1)]
    check(graph([("x", shape)], nodes, ["out"]), backend)


def test_chain_1d_and_3d(backend):
    c1 = conv("c1", "x", (1, 2, 12), 3, 3, padding=1)
    c3 = conv("c3", "v", (1, 2, 4, 4, 4), 2, 3, padding=1, bias=False)
    nodes = [c1, activation("r1", "c1", "relu"), pool("p1", "r1", "avg_pool", 1, 3, 2, 1),
             node("s1", "softmax", ["p1"], dim=2),
             c3, batch_norm("b3", "c3", 2), pool("p3", "b3", "max_pool", 3, 2),
             activation("g3", "p3", "gelu")]
    check(graph([("x", (1, 2, 12)), ("v", (1, 2, 4, 4, 4))], nodes, ["s1", "g3"]), backend)


def test_float64_models(backend):
    shape = (1, 3, 6, 6)
    c1 = conv("conv1", "x", shape, 4, 3, padding=1, bias=False)
    nodes = [c1, batch_norm("bn1", "conv1", 4), activation("relu1", "bn1", "relu"),
             pool("pool1", "relu1", "avg_pool", 2, 3, 2, 1, ceil_mode=True,
                  count_include_pad=False),
             activation("tanh1", "pool1", "tanh"),
             node("cat", "cat", ["tanh1", "pool1"], dim=1),
             adaptive("gap", "cat", (2, 1)),
             node("flat", "flatten", ["gap"]),
             linear("fc", "flat", 16, 4),
             node("soft", "softmax", ["fc"], dim=1)]
    model = check(graph([("x", shape)], nodes, ["soft", "pool1"]), backend, dtype="float64")
    assert model.dtype == "float64"
    assert all(o.dtype == np.float64 for o in outputs_of(model, random_inputs(model.graph,
                                                                                "float64")))


@pytest.mark.parametrize("case", ["2d-transposed-groups", "1d-depthwise-dilated-same",
                                  "3d-pad"])
def test_conv_float64(backend, case):
    shape, cout, k, fields = CONV_CASES[case]
    c = conv("conv", "x", shape, cout, k, **fields)
    check(graph([("x", shape)], [c], ["conv"]), backend, dtype="float64")


# -- passes ---------------------------------------------------------------------------------

def _ops(g) -> list[str]:
    return [n.op for n in g.nodes]


def _assert_same_function(original, optimized, seed: int = 0) -> None:
    """evaluate() of the rewritten graph equals that of the original (float64)."""
    arrays = random_inputs(original, "float64", seed)
    for a, b in zip(evaluate(optimized, arrays), evaluate(original, arrays)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)


FOLD_CASES = {
    "conv-bias": ((1, 4, 5, 5), 6, 3, dict(padding=1, groups=2)),
    "conv-nobias": ((1, 4, 5, 5), 6, 3, dict(padding=1, groups=2, bias=False)),
    "depthwise-1d": ((1, 3, 7), 3, 3, dict(groups=3, bias=False)),
    "transposed-groups": ((1, 4, 3, 3), 6, 3, dict(transposed=True, groups=2, stride=2)),
    "transposed-nobias-3d": ((1, 2, 2, 3, 2), 4, 2, dict(transposed=True, groups=2,
                                                         bias=False)),
}


@pytest.mark.parametrize("case", sorted(FOLD_CASES))
def test_fold_batch_norm(backend, case):
    shape, cout, k, fields = FOLD_CASES[case]
    c = conv("conv", "x", shape, cout, k, **fields)
    g = graph([("x", shape)], [c, batch_norm("bn", "conv", cout, seed=7)], ["bn"])
    folded = fold_batch_norm(g)
    assert _ops(folded) == ["conv"]
    assert folded.node("conv").fused == ["bn"]
    assert folded.outputs == ["conv"]
    assert conv_spec(folded.node("conv")).bias
    assert _ops(g) == ["conv", "batch_norm"], "passes must not modify their input"
    _assert_same_function(g, folded)
    model = check(g, backend)
    assert _ops(model.optimized) == ["conv"]
    assert model.optimized.node("conv").fused == ["bn"]


def test_batch_norm_not_folded_when_the_conv_has_another_consumer(backend):
    shape = (1, 2, 5, 5)
    nodes = [conv("conv", "x", shape, 3, 3, padding=1),
             batch_norm("bn", "conv", 3),
             pool("pool", "conv", "max_pool", 2, 2)]
    g = graph([("x", shape)], nodes, ["bn", "pool"])
    assert _ops(fold_batch_norm(g)) == ["conv", "batch_norm", "max_pool"]
    model = check(g, backend)
    assert _ops(model.optimized) == ["conv", "batch_norm", "max_pool"]
    # The conv is a graph output: no folding either.
    g2 = graph([("x", shape)], nodes[:2], ["bn", "conv"])
    assert _ops(fold_batch_norm(g2)) == ["conv", "batch_norm"]
    check(g2, backend)


@pytest.mark.parametrize("conv_first", [True, False])
def test_fuse_residual_add_in_both_operand_orders(backend, conv_first):
    shape = (1, 3, 5, 5)
    operands = ["conv", "res"] if conv_first else ["res", "conv"]
    nodes = [pool("res", "x", "avg_pool", 2, 3, 1, 1),    # the residual, computed first
             conv("conv", "x", shape, 3, 3, padding=1),
             node("add", "add", operands)]
    g = graph([("x", shape)], nodes, ["add"])
    fused = fuse_residual_add(g)
    assert _ops(fused) == ["avg_pool", "conv"]
    c = fused.node("conv")
    assert c.attrs["residual"] is True and c.inputs == ["x", "res"] and c.fused == ["add"]
    assert fused.outputs == ["conv"]
    _assert_same_function(g, fused)
    model = check(g, backend)
    assert model.optimized.node("conv").attrs["residual"] is True


def test_residual_produced_after_the_conv_moves_before_it(backend):
    """add(conv, late): ``late`` only needs x, so it moves before the conv, which then
    takes it as its residual."""
    shape = (1, 3, 5, 5)
    nodes = [conv("conv", "x", shape, 3, 3, padding=1),
             pool("late", "x", "max_pool", 2, 3, 1, 1),   # computed after the conv
             node("add", "add", ["conv", "late"])]
    g = graph([("x", shape)], nodes, ["add"])
    fused = fuse_residual_add(g)
    assert _ops(fused) == ["max_pool", "conv"]
    assert fused.node("conv").inputs == ["x", "late"] and fused.node("conv").attrs["residual"]
    assert _ops(g) == ["conv", "max_pool", "add"], "input graph modified"
    _assert_same_function(g, fused)
    model = check(g, backend)
    assert _ops(model.optimized) == ["max_pool", "conv"]


def test_residual_that_needs_a_later_node_is_not_fused(backend):
    """add(conv, late) where ``late`` reads a value computed after the conv: nothing
    moves, the add stays."""
    shape = (1, 3, 5, 5)
    nodes = [conv("conv", "x", shape, 3, 3, padding=1),
             activation("after", "x", "tanh"),           # computed after the conv
             pool("late", "after", "max_pool", 2, 3, 1, 1),
             node("add", "add", ["conv", "late"])]
    g = graph([("x", shape)], nodes, ["add"])
    assert _ops(fuse_residual_add(g)) == ["conv", "activation", "max_pool", "add"]
    model = check(g, backend)
    assert _ops(model.optimized) == ["conv", "activation", "max_pool", "add"]


@pytest.mark.parametrize("operands", [["c1", "c2"], ["c2", "c1"]])
@pytest.mark.parametrize("big_first", [True, False])
def test_two_convs_fuse_into_the_one_with_more_flops(backend, operands, big_first):
    """add(c1, c2): the 3x3 c1 takes the 1x1 c2 as its residual, whichever runs first
    and whichever operand it is; c2 moves before c1 when it ran after."""
    shape = (1, 3, 4, 4)
    big = conv("c1", "x", shape, 2, 3, padding=1, seed=1)
    small = conv("c2", "x", shape, 2, 1, seed=2, bias=False)
    nodes = ([big, small] if big_first else [small, big]) + [node("add", "add", operands)]
    g = graph([("x", shape)], nodes, ["add"])
    fused = fuse_residual_add(g)
    assert _ops(fused) == ["conv", "conv"]
    assert [n.name for n in fused.nodes] == ["c2", "c1"]
    assert not fused.node("c2").attrs.get("residual")
    assert fused.node("c1").attrs["residual"] and fused.node("c1").inputs == ["x", "c2"]
    _assert_same_function(g, fused)
    check(g, backend)


@pytest.mark.parametrize("conv_first", [True, False])
def test_residual_that_is_the_graph_input(backend, conv_first):
    shape = (1, 3, 5, 5)
    nodes = [conv("conv", "x", shape, 3, 3, padding=1, bias=False),
             node("add", "add", ["conv", "x"] if conv_first else ["x", "conv"]),
             activation("relu", "add", "relu")]
    g = graph([("x", shape)], nodes, ["relu"])
    model = check(g, backend)
    assert _ops(model.optimized) == ["conv"]
    c = model.optimized.node("conv")
    assert c.inputs == ["x", "x"] and c.attrs["residual"]
    assert c.fused == ["add", "relu"]
    assert conv_spec(c).activation == "relu"


@pytest.mark.parametrize("stride, threads", [(2, None), (3, 2)])
@pytest.mark.cpu_plans
def test_transposed_co_conv_with_residual_and_activation(backend, stride, threads):
    """A transposed convolution with 16+ output channels runs the stride-phase "co" plan
    (both backends) with a residual (a graph input) and an activation in its epilogue:
    the phase's columns are stored, and the residual read, ``stride`` columns apart."""
    shape = (2, 4, 3, 5)
    c = conv("up", "x", shape, 20, 4, stride=stride, padding=1, transposed=True)
    out = conv_spec(c).output_shape
    nodes = [c, node("add", "add", ["up", "r"]), activation("act", "add", "leaky_relu", (0.1,))]
    g = graph([("x", shape), ("r", out)], nodes, ["act"])
    model = check(g, backend, threads=threads)
    assert _ops(model.optimized) == ["conv"]
    assert model.optimized.node("up").attrs["residual"]
    assert "tap_x" in model.source.lower()  # the per-row tap lists of the stride-phase plan


def test_fuse_activation_into_conv_and_linear(backend):
    shape = (1, 2, 4, 4)
    nodes = [conv("conv", "x", shape, 3, 3, padding=1),
             activation("act1", "conv", "leaky_relu", (0.1,)),
             node("flat", "flatten", ["act1"]),
             linear("fc", "flat", 48, 4),
             activation("act2", "fc", "sigmoid")]
    g = graph([("x", shape)], nodes, ["act2"])
    fused = fuse_activation(g)
    assert _ops(fused) == ["conv", "flatten", "linear"]
    assert conv_spec(fused.node("conv")).activation == "leaky_relu"
    assert conv_spec(fused.node("conv")).activation_args == (0.1,)
    assert fused.node("fc").attrs["activation"] == "sigmoid"
    assert fused.node("conv").fused == ["act1"] and fused.node("fc").fused == ["act2"]
    _assert_same_function(g, fused)
    model = check(g, backend, arrays=[2 * random_inputs(g)[0]])
    assert _ops(model.optimized) == ["conv", "flatten", "linear"]


@pytest.mark.parametrize("act", ["leaky_relu", "elu"])
def test_fuse_activation_with_default_args_into_linear(backend, act):
    """An activation whose args are left to their defaults, fused into a linear layer."""
    nodes = [linear("fc", "x", 6, 5), activation("act", "fc", act)]
    g = graph([("x", (3, 6))], nodes, ["act"])
    check(g, backend, arrays=[3 * random_inputs(g)[0]])


def test_no_activation_fusion_when_the_producer_has_two_consumers(backend):
    shape = (1, 2, 4, 4)
    nodes = [conv("conv", "x", shape, 2, 3, padding=1),
             activation("relu", "conv", "relu"),
             activation("tanh", "conv", "tanh"),
             node("add", "add", ["relu", "tanh"]),
             node("flat", "flatten", ["add"]),
             linear("fc", "flat", 32, 3),
             activation("sig", "fc", "sigmoid")]
    g = graph([("x", shape)], nodes, ["sig", "fc"])  # fc is an output: no fusion either
    fused = optimize(g)
    assert _ops(fused) == ["conv", "activation", "activation", "add", "flatten", "linear",
                           "activation"]
    assert all(not n.fused for n in fused.nodes)
    check(g, backend)


def _basic_block(shape, downsample: bool):
    """torchvision's BasicBlock, traced: conv-bn-relu-conv-bn (+ shortcut) -> add -> relu."""
    c = shape[1]
    cout = 2 * c if downsample else c
    stride = 2 if downsample else 1
    c1 = conv("conv1", "x", shape, cout, 3, stride=stride, padding=1, bias=False, seed=1)
    mid = conv_spec(c1).output_shape
    nodes = [c1, batch_norm("bn1", "conv1", cout, seed=2), activation("relu1", "bn1", "relu"),
             conv("conv2", "relu1", mid, cout, 3, padding=1, bias=False, seed=3),
             batch_norm("bn2", "conv2", cout, seed=4)]
    shortcut = "x"
    if downsample:
        nodes += [conv("downsample.0", "x", shape, cout, 1, stride=2, bias=False, seed=5),
                  batch_norm("downsample.1", "downsample.0", cout, seed=6)]
        shortcut = "downsample.1"
    nodes += [node("add", "add", ["bn2", shortcut]), activation("relu2", "add", "relu")]
    return graph([("x", shape)], nodes, ["relu2"])


def test_resnet_basic_block(backend):
    g = _basic_block((1, 4, 6, 6), downsample=False)
    model = check(g, backend)
    assert len(g.nodes) == 7 and all(not n.fused for n in g.nodes), "input graph modified"
    assert _ops(model.graph) == _ops(g)
    opt = model.optimized
    assert _ops(opt) == ["conv", "conv"]
    conv1, conv2 = opt.nodes
    assert conv1.fused == ["bn1", "relu1"] and conv_spec(conv1).activation == "relu"
    assert conv2.fused == ["bn2", "add", "relu2"] and conv_spec(conv2).activation == "relu"
    assert conv2.attrs["residual"] and conv2.inputs == ["conv1", "x"]
    assert opt.outputs == ["conv2"]


def test_resnet_downsample_block(backend):
    g = _basic_block((1, 4, 6, 6), downsample=True)
    model = check(g, backend)
    opt = model.optimized
    assert _ops(opt) == ["conv", "conv", "conv"]
    # the 1x1 shortcut runs first (its input is the block's), and conv2 takes it as its
    # residual, with the add and the last relu
    assert [n.name for n in opt.nodes] == ["downsample.0", "conv1", "conv2"]
    short, conv1, conv2 = opt.nodes
    assert short.fused == ["downsample.1"] and not short.attrs.get("residual")
    assert conv_spec(short).activation is None and conv_spec(short).stride == (2, 2)
    assert conv1.fused == ["bn1", "relu1"]
    assert conv2.fused == ["bn2", "add", "relu2"] and conv_spec(conv2).activation == "relu"
    assert conv2.attrs["residual"] and conv2.inputs == ["conv1", "downsample.0"]
    assert opt.outputs == ["conv2"]


# -- memory ---------------------------------------------------------------------------------

def _branchy_graph():
    """Branches, a long-lived value, a view, a cat, an add and outputs mid-graph."""
    shape = (1, 4, 8, 8)
    nodes = [conv("c1", "x", shape, 8, 3, padding=1),
             pool("p1", "c1", "max_pool", 2, 2),
             activation("t1", "p1", "tanh"),
             conv("c2", "t1", (1, 8, 4, 4), 8, 3, padding=1, seed=3),
             activation("r2", "c2", "relu"),
             node("a2", "add", ["r2", "p1"]),
             node("flat", "flatten", ["a2"]),
             linear("fc", "flat", 128, 10),
             node("soft", "softmax", ["fc"], dim=1),
             adaptive("gap", "c1", 1),
             node("cat", "cat", ["t1", "a2"], dim=1),
             node("flat2", "flatten", ["cat"], start_dim=2)]
    return graph([("x", shape)], nodes, ["soft", "c1", "flat2", "gap"])


def _check_plan(g, plan) -> None:
    spans = lifetimes(g)
    assert set(plan.sizes) == set(spans), "one arena buffer per non-view value"
    align = ALIGN_BYTES // plan.itemsize
    for name, (first, last) in spans.items():
        assert plan.sizes[name] == math.prod(g.node(name).shape)
        assert plan.offsets[name] % align == 0, name
        assert plan.offsets[name] + plan.sizes[name] <= plan.arena_elements, name
    names = sorted(spans)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            (fa, la), (fb, lb) = spans[a], spans[b]
            if la < fb or lb < fa:
                continue  # lifetimes do not overlap
            ra = (plan.offsets[a], plan.offsets[a] + plan.sizes[a])
            rb = (plan.offsets[b], plan.offsets[b] + plan.sizes[b])
            assert ra[1] <= rb[0] or rb[1] <= ra[0], \
                f"{a} {spans[a]} at {ra} and {b} {spans[b]} at {rb} overlap while both live"
    aligned = sum(-(-size // align) * align for size in plan.sizes.values())
    assert plan.arena_elements <= aligned
    assert plan.peak_bytes <= aligned * plan.itemsize


@pytest.mark.parametrize("itemsize", [4, 8])
def test_memory_plan_never_overlaps_live_values(itemsize):
    g = optimize(_branchy_graph())
    plan = plan_memory(g, itemsize)
    _check_plan(g, plan)
    assert plan.offsets["flat"] == plan.offsets["a2"]      # views alias their input
    assert plan.offsets["flat2"] == plan.offsets["cat"]
    assert "flat" not in plan.sizes and "flat2" not in plan.sizes
    spans = lifetimes(g)
    for out in ("soft", "c1", "cat", "gap"):              # outputs live to the end
        assert spans[out][1] == len(g.nodes)


def test_memory_plan_of_a_resnet_block_and_of_random_orders():
    for g in (optimize(_basic_block((1, 4, 6, 6), True)), _basic_block((1, 4, 6, 6), True)):
        for itemsize in (4, 8):
            _check_plan(g, plan_memory(g, itemsize))


def test_memory_is_reused_along_a_chain(backend):
    """Five equal values in a chain need two buffers, not five."""
    shape = (1, 16, 4, 4)  # 256 elements: a multiple of the alignment
    names = ["t1", "s1", "t2", "s2"]
    nodes = [pool("p", "x", "avg_pool", 2, 1)]
    for prev, (name, act) in zip(["p"] + names, zip(names, ["tanh", "sigmoid"] * 2)):
        nodes.append(activation(name, prev, act))
    model = check(graph([("x", shape)], nodes, ["s2"]), backend)
    size = math.prod(shape) * 4
    assert model.memory.unplanned_bytes == 5 * size
    assert model.peak_bytes == 2 * size
    _check_plan(model.optimized, model.memory)


def test_compiled_model_memory_and_reruns(backend):
    g = _branchy_graph()
    model = check(g, backend)
    _check_plan(model.optimized, model.memory)
    assert model.peak_bytes == model.memory.peak_bytes
    assert model.peak_bytes <= model.memory.unplanned_bytes
    first = random_inputs(g, seed=1)
    want_first = [o.copy() for o in outputs_of(model, first)]
    for seed in (2, 3):
        arrays = random_inputs(g, seed=seed)
        for name, got, want in zip(g.outputs, outputs_of(model, arrays),
                                   evaluate(g, arrays)):
            assert_close(got, want, "float32", name)
    for got, want in zip(outputs_of(model, first), want_first):
        np.testing.assert_array_equal(got, want)  # the arena keeps no stale state


# -- inputs and outputs ---------------------------------------------------------------------

def test_two_inputs_and_two_outputs(backend):
    nodes = [conv("conv", "x1", (1, 2, 5, 5), 3, 3, padding=1),
             node("add", "add", ["x2", "conv"]),              # residual: the second input
             pool("pool", "x2", "max_pool", 2, 2)]
    g = graph([("x1", (1, 2, 5, 5)), ("x2", (1, 3, 5, 5))], nodes, ["pool", "add"])
    model = check(g, backend)
    assert model.input_shapes == [(1, 2, 5, 5), (1, 3, 5, 5)]
    assert model.output_shapes == [(1, 3, 2, 2), (1, 3, 5, 5)]
    x1, x2 = random_inputs(g)
    out = model(x1, x2)
    assert isinstance(out, list) and [o.shape for o in out] == model.output_shapes
    assert model.optimized.node("conv").inputs == ["x1", "x2"]
    with pytest.raises(TypeError):
        model(x1)
    with pytest.raises(ValueError):
        model(x2, x1)  # swapped: the shapes are wrong


def test_output_also_consumed_by_a_later_node(backend):
    shape = (1, 2, 6, 6)
    nodes = [conv("c1", "x", shape, 3, 3, padding=1),
             activation("relu", "c1", "relu"),          # c1 is an output: not fused
             pool("pool", "relu", "max_pool", 2, 2),
             activation("tanh", "pool", "tanh"),
             activation("sig", "tanh", "sigmoid")]
    g = graph([("x", shape)], nodes, ["sig", "c1", "pool"])
    model = check(g, backend)
    assert conv_spec(model.optimized.node("c1")).activation is None
    assert _ops(model.optimized) == ["conv", "activation", "max_pool", "activation",
                                     "activation"]


# -- the model's call -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_models():
    return {}


def _small_model(backend, cache):
    if backend not in cache:
        shape = (1, 2, 5, 5)
        nodes = [conv("conv", "x", shape, 3, 3, padding=1), activation("relu", "conv", "relu"),
                 pool("pool", "relu", "max_pool", 2, 2)]
        cache[backend] = compile_graph(graph([("x", shape)], nodes, ["pool"]), backend)
    return cache[backend]


def test_call_validates_its_inputs(backend, small_models):
    model = _small_model(backend, small_models)
    x = random_inputs(model.graph)[0]
    with pytest.raises(TypeError, match="float32"):
        model(x.astype(np.float64))
    with pytest.raises(TypeError):
        model(x.astype(np.int32))
    with pytest.raises(TypeError):
        model(x.tolist())
    with pytest.raises(ValueError, match=r"\(1, 2, 5, 5\)"):
        model(x[..., :4])
    with pytest.raises(ValueError):
        model(x[0])
    with pytest.raises(TypeError):
        model()
    with pytest.raises(TypeError):
        model(x, x)
    assert_close(model(x), evaluate(model.graph, x)[0], "float32")


def test_non_contiguous_inputs(backend, small_models):
    model = _small_model(backend, small_models)
    x = random_inputs(model.graph)[0]
    want = evaluate(model.graph, x)[0]
    wide = np.zeros((1, 2, 5, 10), dtype=np.float32)
    wide[..., ::2] = x
    strided = wide[..., ::2]
    fortran = np.asfortranarray(x)
    transposed = np.ascontiguousarray(x.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)
    for view in (strided, fortran, transposed):
        assert not view.flags.c_contiguous
        assert_close(model(view), want, "float32")
    assert_close(model.reference(strided), want, "float64")


def test_threads_give_the_same_result(backend):
    shape = (2, 4, 8, 8)
    nodes = [conv("c1", "x", shape, 8, 3, padding=1), activation("r", "c1", "relu"),
             conv("c2", "r", (2, 8, 8, 8), 8, 3, padding=1, groups=2, seed=4),
             pool("p", "c2", "avg_pool", 2, 2)]
    g = graph([("x", shape)], nodes, ["p"])
    one = check(g, backend)
    two = check(g, backend, threads=2)
    assert two.threads == 2
    x = random_inputs(g, seed=5)[0]
    np.testing.assert_allclose(two(x), one(x), rtol=1e-6, atol=1e-6)
    if backend == "c":
        assert "omp" in two.source and "num_threads(2)" in two.source


def test_compile_arguments_are_checked():
    g = graph([("x", (1, 2, 4))], [activation("r", "x", "relu")], ["r"])
    with pytest.raises(ValueError, match="dtype"):
        compile_graph(g, "c", dtype="float16")
    with pytest.raises(ValueError, match="threads"):
        compile_graph(g, "c", threads=0)


# -- summary and source ---------------------------------------------------------------------

def _summary_graph():
    shape = (1, 3, 6, 6)
    nodes = [conv("conv1", "x", shape, 4, 3, padding=1, bias=False),
             batch_norm("bn1", "conv1", 4),
             activation("relu1", "bn1", "relu"),
             pool("pool1", "relu1", "max_pool", 2, 2),
             node("flat", "flatten", ["pool1"]),
             node("drop", "identity", ["flat"]),
             linear("fc", "drop", 36, 5),
             node("soft", "softmax", ["fc"], dim=1)]
    return graph([("x", shape)], nodes, ["soft"])


def test_summary_lists_every_layer(backend):
    g = _summary_graph()
    model = check(g, backend)
    buffer = io.StringIO()
    text = model.summary(file=buffer)
    assert buffer.getvalue().strip() == text.strip()
    lines = {line.split()[0]: line for line in text.splitlines() if line.strip()}
    params = {"conv1": 3 * 4 * 9, "bn1": 8, "fc": 36 * 5 + 5, "relu1": 0, "pool1": 0,
              "soft": 0}
    flops = {"conv1": conv_spec(g.node("conv1")).flops, "fc": 2 * 36 * 5}
    for n in g.nodes:
        assert n.name in lines, f"{n.name} missing from the summary:\n{text}"
        line = lines[n.name]
        assert "x".join(map(str, n.shape)) in line, line
        if n.name in params:
            assert f" {params[n.name]:,}" in line, line
        if n.name in flops:
            assert f" {flops[n.name]:,}" in line, line
    assert "folded into conv1" in lines["bn1"]
    assert "fused into conv1" in lines["relu1"]
    assert "removed" in lines["drop"]
    assert "view" in lines["flat"]
    assert f"{model.peak_bytes:,} bytes" in text
    assert "peak" in text


def test_c_source_has_one_entry_point_and_names_the_layers():
    model = compile_graph(_summary_graph(), "c")
    source = model.source
    functions = re.findall(r"^(static\s+)?(?:void|int)\s+(\w+)\s*\(", source, re.M)
    exported = {name for static, name in functions if not static}
    assert exported == {model.symbol}
    assert len([name for static, name in functions if static]) >= len(model.optimized.nodes) - 1
    assert re.search(rf"^int\s+{model.symbol}\s*\([^;]*\)\s*\{{", source, re.M)
    for n in model.optimized.nodes:
        if n.op != "flatten":
            assert f"/* {n.name} */" in source, n.name


def test_llvm_source_has_one_entry_point_and_internal_layers():
    model = compile_graph(_summary_graph(), "llvm")
    source = model.source
    defines = re.findall(r"^define\s+([^@]*)@\"?([\w.$-]+)\"?\(", source, re.M)
    public = [name for attrs, name in defines if "internal" not in attrs.split()
              and "private" not in attrs.split()]
    assert public == [model.symbol]
    assert len(defines) >= 1 + len([n for n in model.optimized.nodes if n.op != "flatten"])
    for n in model.optimized.nodes:
        if n.op != "flatten":
            assert f"; {n.name} (" in source, n.name  # a comment before each layer's call


# -- errors ---------------------------------------------------------------------------------

def test_shape_mismatch_names_the_node(backend):
    c = conv("stem.conv", "x", (1, 3, 6, 6), 4, 3)  # expects 3 channels, gets 4
    bad = Graph([("x", (1, 4, 6, 6))], [c], ["stem.conv"])
    with pytest.raises(GraphError, match=r"stem\.conv"):
        compile_graph(bad, backend)
    bad_add = Graph([("x", (1, 2, 4, 4)), ("y", (1, 2, 4, 3))],
                    [node("join", "add", ["x", "y"])], ["join"])
    with pytest.raises(GraphError, match="join"):
        compile_graph(bad_add, backend)
    bad_linear = Graph([("x", (2, 7))], [linear("head", "x", 6, 3)], ["head"])
    with pytest.raises(GraphError, match="head"):
        compile_graph(bad_linear, backend)


def test_unknown_op_is_a_clear_error(backend):
    g = Graph([("x", (1, 2, 4))], [Node("mystery", "frobnicate", ["x"])], ["mystery"])
    with pytest.raises(GraphError, match=r"mystery.*frobnicate|frobnicate.*mystery"):
        compile_graph(g, backend)


def test_dangling_names_are_graph_errors(backend):
    g = Graph([("x", (1, 2, 4))], [activation("r", "nowhere", "relu")], ["r"])
    with pytest.raises(GraphError, match="nowhere"):
        compile_graph(g, backend)
    g = Graph([("x", (1, 2, 4))], [activation("r", "x", "relu")], ["missing"])
    with pytest.raises(GraphError, match="missing"):
        compile_graph(g, backend)


# -- random chains --------------------------------------------------------------------------

_CHAIN_ACTS = [("relu", ()), ("sigmoid", ()), ("tanh", ()), ("leaky_relu", (0.1,)),
               ("relu6", ()), ("silu", ()), ("gelu", ()), ("elu", (1.0,)),
               ("clip", (-0.5, 0.5))]


def _random_chain(steps: list[tuple[str, int]], channels: int, size: int):
    """A chain of conv/pool/activation/bn/add steps on a (1, C, H, W) input."""
    shape = (1, channels, size, size + 1)
    values = [("x", shape)]
    nodes = []
    current, cur_shape = "x", shape
    for i, (op, seed) in enumerate(steps):
        r = np.random.default_rng(seed)
        name = f"{op}{i}"
        if op == "conv":
            k = int(r.choice([1, 3]))
            groups = int(r.choice([1, cur_shape[1]]))
            cout = cur_shape[1] * int(r.integers(1, 3)) if groups > 1 else int(r.integers(1, 5))
            n = conv(name, current, cur_shape, cout, k, padding=k // 2, groups=groups,
                     bias=bool(r.integers(2)), seed=seed)
        elif op in ("max_pool", "avg_pool"):
            if min(cur_shape[2:]) < 2:
                continue
            n = pool(name, current, op, 2, 2, 2, int(r.integers(2)), ceil_mode=bool(r.integers(2)),
                     count_include_pad=bool(r.integers(2)))
        elif op == "act":
            act, args = _CHAIN_ACTS[int(r.integers(len(_CHAIN_ACTS)))]
            n = activation(name, current, act, args)
        elif op == "bn":
            n = batch_norm(name, current, cur_shape[1], seed=seed)
        else:  # add the current value to an earlier one of the same shape (or itself)
            same = [v for v, s in values if s == cur_shape]
            n = node(name, "add", [current, same[int(r.integers(len(same)))]]
                     if r.integers(2) else [same[int(r.integers(len(same)))], current])
        nodes.append(n)
        g = graph([("x", shape)], list(nodes), [n.name])
        cur_shape = g.node(n.name).shape
        current = n.name
        values.append((current, cur_shape))
    if not nodes:
        nodes.append(activation("only", "x", "relu"))
        current = "only"
    return graph([("x", shape)], nodes, [current])


@settings(max_examples=12, deadline=None)
@given(steps=st.lists(st.tuples(st.sampled_from(["conv", "max_pool", "avg_pool", "act", "bn",
                                                  "add"]),
                                st.integers(0, 10_000)), min_size=1, max_size=6),
       channels=st.integers(1, 3), size=st.integers(3, 6))
def test_random_chains(backend, steps, channels, size):
    g = _random_chain(steps, channels, size)
    optimized = optimize(g)
    _assert_same_function(g, optimized)
    _check_plan(optimized, plan_memory(optimized, 4))
    check(g, backend)


def test_layer_names_cannot_escape_generated_comments(backend):
    """Names come from user code: a name that closes a comment or breaks a line stays text."""
    import convgen as cg
    from convgen.graph.compile import compile_graph
    from convgen.graph.ir import Graph, Node

    evil = "x */ int oops = 1; /*\n!bad ; define"
    spec = cg.ConvSpec((1, 2, 5, 5), 3, kernel_size=3, padding=1, bias=False)
    rng = np.random.default_rng(0)
    conv = Node(evil, "conv", ["input"], {"spec": spec.to_dict(), "residual": False},
                {"weight": rng.standard_normal(spec.weight_shape)})
    relu = Node(evil + "2", "activation", [evil], {"name": "sigmoid", "args": ()})
    pool = Node("pool", "max_pool", [evil + "2"], {"kernel_size": (2, 2), "stride": (2, 2),
                                                    "padding": (0, 0)})
    soft = Node(evil + "3", "activation", ["pool"], {"name": "tanh", "args": ()})
    graph = Graph([("input", (1, 2, 5, 5))], [conv, relu, pool, soft], [evil + "3"])
    model = compile_graph(graph, backend=backend)
    # the text survives inside the comment, but can neither end it nor start a new line
    assert "x *? int oops" in model.source
    assert "*/ int oops" not in model.source and "\n!bad" not in model.source
    x = rng.standard_normal((1, 2, 5, 5)).astype(np.float32)
    np.testing.assert_allclose(model(x), model.reference(x), rtol=1e-5, atol=1e-5)
