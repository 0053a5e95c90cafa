"""ONNX activations (Gelu, Erf, HardSwish, HardSigmoid, Elu, Selu, Softplus, Softsign, Swish,
Sigmoid * Mul as SiLU, HardSigmoid * Mul as Hardswish)
and convgen.nn's activation modules: fused into the conv before them, on both CPU
backends, against the oracle and onnxruntime / ONNX's reference evaluator / torch.nn."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch

import convgen as cg
from convgen import nn
from convgen.graph.ir import Graph, Node
from convgen.graph.passes import fuse_gating, optimize
from convgen.graph.reference import evaluate
from onnx_helpers import check_model, make_model, node, onnx, rand

# ONNX op, attributes -> the activation (name, args) the conv before it ends with
CASES = [
    ("Gelu", {}, ("gelu", ())),
    ("Gelu", dict(approximate="tanh"), ("gelu_tanh", ())),
    ("HardSwish", {}, ("hardswish", ())),
    ("HardSigmoid", {}, ("hardsigmoid", (0.2, 0.5))),
    ("HardSigmoid", dict(alpha=0.3, beta=0.4), ("hardsigmoid", (0.3, 0.4))),
    ("Elu", dict(alpha=0.7), ("elu", (0.7,))),
    ("Selu", {}, ("selu", (1.67326319217681884765625, 1.05070102214813232421875))),
    ("LeakyRelu", dict(alpha=0.3), ("leaky_relu", (0.3,))),
    ("Softplus", {}, ("softplus", ())),
    ("Softsign", {}, ("softsign", ())),
]


def _conv_branches(cases, opset):
    """One conv per case, each followed by the case's nodes; one output per case."""
    nodes, init, outputs = [], {}, []
    for i, (op, attrs) in enumerate(cases):
        init[f"w{i}"], init[f"b{i}"] = rand(2, 2, 3, 3, seed=i), rand(2, seed=50 + i)
        nodes.append(node("Conv", ["x", f"w{i}", f"b{i}"], [f"c{i}"], name=f"conv{i}",
                          pads=[1, 1, 1, 1]))
        if op == "SiLU":  # as exporters write it: Sigmoid, then Mul with the input
            nodes += [node("Sigmoid", [f"c{i}"], [f"s{i}"]),
                      node("Mul", [f"c{i}", f"s{i}"], [f"y{i}"])]
        elif op == "Hardswish":  # as torch exports it before opset 14
            nodes += [node("HardSigmoid", [f"c{i}"], [f"s{i}"], alpha=1 / 6, beta=0.5),
                      node("Mul", [f"s{i}", f"c{i}"], [f"y{i}"])]
        else:
            nodes.append(node(op, [f"c{i}"], [f"y{i}"], **attrs))
        outputs.append(f"y{i}")
    return make_model(nodes, {"x": (1, 2, 4, 5)}, outputs, init, opset=opset)


def _activations(imported, backend="c") -> dict[str, tuple]:
    optimized = imported.compile(backend=backend).optimized
    assert all(n.op in ("conv", "constant") for n in optimized.nodes), \
        [n.op for n in optimized.nodes]
    return {n.name: (n.attrs["spec"]["activation"], tuple(n.attrs["spec"]["activation_args"]))
            for n in optimized.nodes if n.op == "conv"}


def test_activation_ops_fuse_into_the_conv_and_match_onnxruntime():
    cases = [(op, attrs) for op, attrs, _ in CASES] + [("SiLU", {}), ("Hardswish", {}),
                                                      ("Erf", {})]
    model = _conv_branches(cases, opset=20)
    x = rand(1, 2, 4, 5, low=-3.0, high=3.0)
    # the CUDA epilogue is the C one (tests/test_activations.py runs it on the emulator)
    imported = check_model(model, [x], backends=("c", "llvm"), rtol=1e-4, atol=1e-5)
    fused = _activations(imported)
    for i, (_, _, (name, args)) in enumerate(CASES):
        got_name, got_args = fused[f"conv{i}"]
        assert got_name == name
        np.testing.assert_allclose(got_args, args, rtol=1e-7)
    assert fused[f"conv{len(CASES)}"] == ("silu", ())
    assert fused[f"conv{len(CASES) + 1}"] == ("hardswish", ())
    assert fused[f"conv{len(CASES) + 2}"] == ("erf", ())


def test_swish_opset24_matches_onnx_reference():
    model = _conv_branches([("Swish", {}), ("Swish", dict(alpha=0.5))], opset=24)
    x = rand(1, 2, 4, 5, low=-3.0, high=3.0)
    imported = check_model(model, [x], backends=("llvm",), expected="onnx")
    assert imported.compile(backend="c").optimized.node("conv0").attrs["spec"][
        "activation"] == "silu"


def test_sigmoid_times_input_becomes_silu_either_order_and_keeps_a_shared_sigmoid():
    graph = Graph([("x", (1, 2, 3))], [
        Node("s", "activation", ["x"], {"name": "sigmoid", "args": ()}, shape=(1, 2, 3)),
        Node("m", "binary", ["s", "x"], {"kind": "mul"}, shape=(1, 2, 3)),
        Node("t", "activation", ["x"], {"name": "sigmoid", "args": ()}, shape=(1, 2, 3)),
        Node("n", "binary", ["x", "t"], {"kind": "mul"}, shape=(1, 2, 3)),
        Node("o", "binary", ["x", "s"], {"kind": "add"}, shape=(1, 2, 3)),  # not a mul
    ], ["m", "n", "t"])
    fused = fuse_gating(graph)
    ops = {n.name: (n.op, n.attrs.get("name")) for n in fused.nodes}
    assert ops["m"] == ops["n"] == ("activation", "silu")
    assert ops["t"] == ("activation", "sigmoid")  # a graph output: kept
    assert "s" in ops  # still read by the add
    x = rand(1, 2, 3, low=-4.0, high=4.0)
    for got, want in zip(evaluate(fused, [x]), evaluate(graph, [x])):
        np.testing.assert_allclose(got, want, rtol=1e-12)
    # a hardsigmoid other than torch's is no hardswish
    hard = Graph([("x", (2,))], [
        Node("h", "activation", ["x"], {"name": "hardsigmoid", "args": (0.2, 0.5)}, shape=(2,)),
        Node("m", "binary", ["x", "h"], {"kind": "mul"}, shape=(2,))], ["m"])
    assert [n.op for n in fuse_gating(hard).nodes] == ["activation", "binary"]
    # a sigmoid of another value is no silu
    other = Graph([("x", (2,)), ("z", (2,))], [
        Node("s", "activation", ["z"], {"name": "sigmoid", "args": ()}, shape=(2,)),
        Node("m", "binary", ["x", "s"], {"kind": "mul"}, shape=(2,))], ["m"])
    assert [n.op for n in optimize(other).nodes] == ["activation", "binary"]


def test_bad_activation_attributes_are_refused():
    for op, attrs, match in [("Gelu", dict(approximate="erf"), "approximate"),
                             ("HardSigmoid", dict(alpha=float("inf")), "finite"),
                             ("Elu", dict(alpha=float("nan")), "finite")]:
        model = make_model([node(op, ["x"], ["y"], **attrs)], {"x": (2, 3)}, ["y"], opset=20)
        with pytest.raises(cg.OnnxImportError, match=match):
            cg.from_onnx(model).compile(backend="c")


# -- convgen.nn modules against torch.nn ----------------------------------------------------

def _net(lib):
    """Convs each followed by one activation (fused), then three standalone ones."""
    return lib.Sequential(
        lib.Conv2d(2, 3, 3, padding=1), lib.GELU(),
        lib.Conv2d(3, 3, 1), lib.SiLU(),
        lib.Conv2d(3, 3, 1), lib.Hardswish(),
        lib.Conv2d(3, 3, 1), lib.Hardsigmoid(),
        lib.Conv2d(3, 3, 1), lib.ELU(alpha=0.5), lib.SELU(), lib.GELU(approximate="tanh"),
    )


@pytest.mark.networks
def test_nn_activation_modules_match_torch(backend):
    torch.manual_seed(0)
    theirs = _net(torch.nn).eval()
    ours = _net(nn)
    ours.load_state_dict(theirs.state_dict())
    x = np.random.default_rng(1).uniform(-2, 2, (1, 2, 5, 4)).astype(np.float32)
    with torch.no_grad():
        want = theirs(torch.from_numpy(x)).numpy()
    model = ours.compile(input_shape=x.shape, backend=backend)
    np.testing.assert_allclose(model(x), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ours(x), want, rtol=1e-5, atol=1e-6)  # the oracle
    assert [n.op for n in model.optimized.nodes].count("activation") == 2  # SELU, GELU


def test_nn_functional_activations_trace_from_torch_names():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 1)

        def forward(self, x):
            y = torch.nn.functional.silu(self.conv(x))
            return torch.nn.functional.hardsigmoid(torch.nn.functional.gelu(y, approximate="tanh"))

    net = Net()
    x = rand(1, 2, 3, 3, low=-3.0, high=3.0)
    ops = [(n.op, n.attrs.get("name")) for n in net.trace(x.shape).nodes]
    assert ("activation", "gelu_tanh") in ops and ("activation", "hardsigmoid") in ops
    torch_net = torch.nn.Conv2d(2, 2, 1)
    torch_net.load_state_dict({k: torch.from_numpy(v) for k, v in net.conv.state_dict().items()})
    with torch.no_grad():
        want = torch.nn.functional.hardsigmoid(torch.nn.functional.gelu(
            torch.nn.functional.silu(torch_net(torch.from_numpy(x))), approximate="tanh"))
    np.testing.assert_allclose(net.compile(x.shape, backend="c")(x), want.numpy(), rtol=1e-5,
                               atol=1e-6)


def test_torch_export_before_opset_20_gelu_and_hardswish():
    """torch.onnx.export at opset 13 writes GELU with Erf and Hardswish as HardSigmoid * x."""
    torch.manual_seed(2)
    net = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.GELU(),
                              torch.nn.Conv2d(3, 2, 1), torch.nn.Hardswish()).eval()
    x = rand(1, 2, 5, 5, low=-2.0, high=2.0)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(net, (torch.from_numpy(x),), buffer, dynamo=False, opset_version=13)
    model = onnx.load_from_string(buffer.getvalue())
    assert {"Erf", "HardSigmoid"} <= {n.op_type for n in model.graph.node}
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    compiled = check_model(model, [x], backends=("c",)).compile(backend="c")
    np.testing.assert_allclose(compiled(x), want, rtol=1e-5, atol=1e-6)
    assert compiled.optimized.nodes[-1].attrs["spec"]["activation"] == "hardswish"
