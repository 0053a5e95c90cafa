"""Tracing convgen.nn modules into graphs: ops, names, attributes and shapes; errors that
name the layer or the unsupported operation; and the traced graph's oracle against the
same network in PyTorch (LeNet-5, ResNet-18, 1D and 3D nets, transposed convolution)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import convgen as cg
from convgen import nn
from convgen.graph.ir import Graph, GraphError
from convgen.graph.shapes import infer_graph
from convgen.graph.trace import Value, trace
from convgen.nn import functional as F
from test_nn_modules import resnet18_classes

from convgen.graph import reference


def ops(graph: Graph) -> list[tuple[str, str]]:
    return [(node.name, node.op) for node in graph.nodes]


def assert_close(got: np.ndarray, want: np.ndarray, rtol: float = 1e-4) -> None:
    """Equal up to float32 rounding, relative to the output's magnitude."""
    assert got.shape == want.shape
    scale = max(1.0, float(np.abs(want).max()))
    error = float(np.abs(np.asarray(got, np.float64) - want).max())
    assert error <= rtol * scale, f"max error {error:.3g} (scale {scale:.3g})"


def randomize(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights and BatchNorm statistics, so every parameter matters; eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.2)
    return module.eval()


def check_against_torch(build, input_shapes, seed: int = 0) -> Graph:
    """build(torch.nn) and build(convgen.nn) compute the same function once traced."""
    torch.manual_seed(seed)
    theirs = randomize(build(torch.nn), seed)
    ours = build(nn)
    ours.load_state_dict(theirs.state_dict())
    rng = np.random.default_rng(seed)
    xs = [rng.standard_normal(shape).astype(np.float32) for shape in input_shapes]
    with torch.no_grad():
        want = theirs(*[torch.from_numpy(x) for x in xs])
    want = [t.numpy() for t in (want if isinstance(want, (tuple, list)) else [want])]
    graph = trace(ours, input_shapes)
    got = reference.evaluate(graph, xs)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert_close(g, w.astype(np.float64))
    return graph


# -- graphs: ops, names, attributes, shapes -----------------------------------------------------

def test_sequential_graph_has_ops_names_attrs_and_shapes():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 4 * 4, 10),
                        nn.Softmax(dim=1))
    graph = trace(net, [(2, 3, 8, 8)])
    assert graph.inputs == [("input", (2, 3, 8, 8))]
    assert ops(graph) == [("0", "conv"), ("1", "batch_norm"), ("2", "activation"),
                          ("3", "max_pool"), ("4", "flatten"), ("5", "linear"),
                          ("6", "softmax")]
    assert [n.module for n in graph.nodes] == ["Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d",
                                               "Flatten", "Linear", "Softmax"]
    assert [n.inputs for n in graph.nodes] == [["input"], ["0"], ["1"], ["2"], ["3"], ["4"],
                                               ["5"]]
    assert [n.shape for n in graph.nodes] == [(2, 8, 8, 8)] * 3 + [(2, 8, 4, 4), (2, 128),
                                                                    (2, 10), (2, 10)]
    assert graph.outputs == ["6"]

    conv, bn, relu, pool, flat, linear, softmax = graph.nodes
    assert conv.attrs == {"spec": cg.ConvSpec(input_shape=(2, 3, 8, 8), out_channels=8,
                                              kernel_size=3, padding=1, bias=True,
                                              dtype="float32").to_dict(),
                          "residual": False}
    assert set(conv.params) == {"weight", "bias"}
    assert conv.params["weight"].dtype == np.float64
    np.testing.assert_array_equal(conv.params["weight"], net[0].weight)
    assert conv.params["weight"] is not net[0].weight
    assert bn.attrs == {"eps": 1e-5}
    assert set(bn.params) == {"running_mean", "running_var", "weight", "bias"}
    assert relu.attrs == {"name": "relu", "args": ()}
    assert pool.attrs == {"kernel_size": (2, 2), "stride": (2, 2), "padding": (0, 0),
                          "dilation": (1, 1), "ceil_mode": False}
    assert flat.attrs == {"start_dim": 1, "end_dim": 3}
    assert linear.attrs == {"activation": None, "activation_args": ()}
    np.testing.assert_array_equal(linear.params["bias"], net[5].bias)
    assert softmax.attrs == {"dim": 1}
    checked = graph.copy()
    infer_graph(checked)  # the graph is self-consistent
    assert [n.shape for n in checked.nodes] == [n.shape for n in graph.nodes]


class Block(nn.Module):
    """DESIGN.md's residual block."""

    def __init__(self, c):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.bn1(self.conv1(x)) + x)


def test_residual_block_records_add_with_dotted_names():
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), Block(16), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(16, 10), nn.Softmax(dim=1))
    graph = trace(net, [(1, 3, 32, 32)])
    assert ops(graph) == [("0", "conv"), ("1.conv1", "conv"), ("1.bn1", "batch_norm"),
                          ("add", "add"), ("1.relu", "activation"), ("2", "adaptive_avg_pool"),
                          ("3", "flatten"), ("4", "linear"), ("5", "softmax")]
    assert graph.node("add").inputs == ["1.bn1", "0"]
    assert graph.node("add").shape == (1, 16, 32, 32)
    assert graph.node("1.conv1").attrs["spec"]["bias"] is False
    assert "bias" not in graph.node("1.conv1").params
    assert graph.node("2").attrs == {"output_size": (1, 1)}


def test_a_reused_layer_gets_unique_names():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 3, padding=1)
            self.relu = nn.ReLU()

        def forward(self, x):
            y = self.relu(self.conv(x))
            z = self.relu(self.conv(y))
            return self.relu(y + z) + x

    graph = trace(Net(), (1, 4, 6, 6))
    assert ops(graph) == [("conv", "conv"), ("relu", "activation"), ("conv_1", "conv"),
                          ("relu_1", "activation"), ("add", "add"), ("relu_2", "activation"),
                          ("add_1", "add")]
    assert graph.node("conv_1").inputs == ["relu"]
    assert graph.node("add_1").inputs == ["relu_2", "input"]


def test_cat_of_branches():
    class Inception(nn.Module):
        def __init__(self):
            super().__init__()
            self.b1 = nn.Conv2d(4, 2, 1)
            self.b3 = nn.Conv2d(4, 3, 3, padding=1)
            self.pool = nn.MaxPool2d(3, stride=1, padding=1)

        def forward(self, x):
            return F.cat([self.b1(x), self.b3(x), self.pool(x)], dim=1)

    graph = trace(Inception(), [(1, 4, 5, 5)])
    cat = graph.node("cat")
    assert cat.op == "cat" and cat.attrs == {"dim": 1}
    assert cat.inputs == ["b1", "b3", "pool"] and cat.shape == (1, 9, 5, 5)
    check_against_torch(lambda lib: TorchCatNet(lib), [(1, 4, 5, 5)])


class TorchCatNet:
    """The same branching net written against torch's spelling (torch.cat)."""

    def __new__(cls, lib):
        class Net(lib.Module):
            def __init__(self):
                super().__init__()
                self.b1 = lib.Conv2d(4, 2, 1)
                self.b3 = lib.Conv2d(4, 3, 3, padding=1)

            def forward(self, x):
                return torch.cat([self.b1(x), self.b3(x)], 1)

        return Net()


def test_negative_dims_are_normalized():
    class Net(nn.Module):
        def forward(self, x):
            y = F.softmax(x, dim=-1)
            return F.cat([y, F.log_softmax(x, -1)], dim=-1)

    graph = trace(Net(), (2, 3))
    assert [n.attrs for n in graph.nodes] == [{"dim": 1}, {"dim": 1}, {"dim": 1}]
    assert ops(graph) == [("softmax", "softmax"), ("log_softmax", "log_softmax"),
                          ("cat", "cat")]


def net_1d(lib):
    return lib.Sequential(
        lib.Conv1d(2, 8, 5, stride=2, padding=2), lib.BatchNorm1d(8), lib.LeakyReLU(0.1),
        lib.Conv1d(8, 8, 3, padding="same", padding_mode="reflect", groups=4, dilation=2),
        lib.MaxPool1d(3, stride=2, padding=1), lib.AvgPool1d(2, ceil_mode=True),
        lib.AdaptiveAvgPool1d(3), lib.Flatten(), lib.Linear(24, 5), lib.BatchNorm1d(5),
        lib.LogSoftmax(dim=1))


def test_1d_net_matches_torch():
    graph = check_against_torch(net_1d, [(2, 2, 40)])
    assert [n.shape for n in graph.nodes] == [
        (2, 8, 20), (2, 8, 20), (2, 8, 20), (2, 8, 20), (2, 8, 10), (2, 8, 5), (2, 8, 3),
        (2, 24), (2, 5), (2, 5), (2, 5)]
    spec = graph.node("3").attrs["spec"]
    assert spec["padding_mode"] == "reflect" and spec["padding"] == [[2, 2]]
    assert graph.node("2").attrs == {"name": "leaky_relu", "args": (0.1,)}


def net_3d(lib):
    return lib.Sequential(
        lib.Conv3d(2, 4, 3, padding=1), lib.BatchNorm3d(4), lib.ReLU6(),
        lib.MaxPool3d(2), lib.Conv3d(4, 4, (1, 2, 2), padding="same", bias=False),
        lib.Sigmoid(), lib.AvgPool3d((1, 2, 2), count_include_pad=False),
        lib.AdaptiveAvgPool3d((1, 1, 1)), lib.Flatten(), lib.Dropout(0.3), lib.Linear(4, 3),
        lib.Tanh())


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
def test_3d_net_matches_torch():
    graph = check_against_torch(net_3d, [(1, 2, 4, 8, 8)])
    assert graph.node("1").op == "batch_norm" and graph.node("9").op == "identity"
    assert graph.node("3").shape == (1, 4, 2, 4, 4)
    assert graph.node("6").attrs["count_include_pad"] is False
    assert graph.node("4").attrs["spec"]["padding"] == [[0, 0], [0, 1], [0, 1]]


def transposed_net(lib):
    return lib.Sequential(
        lib.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2),
        lib.ReLU(), lib.ConvTranspose2d(6, 2, (2, 3), dilation=2, bias=False))


def test_transposed_conv_matches_torch():
    graph = check_against_torch(transposed_net, [(1, 4, 5, 6)])
    spec = graph.node("0").attrs["spec"]
    assert spec["transposed"] is True and spec["output_padding"] == [1, 1]
    assert graph.node("0").shape == (1, 6, 10, 12)
    assert graph.node("0").params["weight"].shape == (4, 3, 3, 3)
    assert graph.node("2").shape == (1, 2, 12, 16)


def test_transposed_conv_output_size():
    theirs = torch.nn.ConvTranspose2d(3, 2, 3, stride=2, padding=1)
    ours = nn.ConvTranspose2d(3, 2, 3, stride=2, padding=1)
    ours.load_state_dict(theirs.state_dict())

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.up = ours

        def forward(self, x):
            return self.up(x, output_size=[1, 2, 8, 10])

    graph = trace(Net(), (1, 3, 4, 5))
    assert graph.node("up").shape == (1, 2, 8, 10)
    assert graph.node("up").attrs["spec"]["output_padding"] == [1, 1]
    x = np.random.default_rng(0).standard_normal((1, 3, 4, 5)).astype(np.float32)
    want = theirs(torch.from_numpy(x), output_size=[8, 10]).detach().numpy()
    assert_close(reference.evaluate(graph, x)[0], want)
    net = Net()
    net.forward = lambda x: net.up(x, output_size=[20, 20])
    with pytest.raises(GraphError, match=r"up \(ConvTranspose2d\): requested an output size"):
        trace(net, (1, 3, 4, 5))


def test_several_inputs_and_outputs():
    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 4, 1)
            self.b = nn.Conv2d(2, 4, 1)
            self.pool = nn.AdaptiveAvgPool2d(1)

        def forward(self, x, y):
            s = self.a(x) + self.b(y)
            return s, self.pool(s)

    graph = trace(TwoHeads(), [(1, 3, 4, 4), (1, 2, 4, 4)])
    assert graph.inputs == [("input0", (1, 3, 4, 4)), ("input1", (1, 2, 4, 4))]
    assert graph.node("a").inputs == ["input0"] and graph.node("b").inputs == ["input1"]
    assert graph.outputs == ["add", "pool"]


def test_returning_an_input_gets_an_identity_node():
    graph = trace(nn.Sequential(), [(1, 2)])
    assert ops(graph) == [("output", "identity")] and graph.outputs == ["output"]


def test_dropout_and_identity_record_identity_nodes():
    graph = trace(nn.Sequential(nn.Dropout(), nn.Identity()), (1, 4))
    assert ops(graph) == [("0", "identity"), ("1", "identity")]
    assert [n.module for n in graph.nodes] == ["Dropout", "Identity"]


def test_a_root_layer_is_named_after_its_class():
    graph = trace(nn.Conv2d(1, 2, 3), (1, 1, 5, 5))
    assert ops(graph) == [("conv2d", "conv")]


def test_adaptive_pool_none_keeps_the_input_size():
    graph = trace(nn.AdaptiveAvgPool2d((None, 2)), (1, 3, 5, 4))
    assert graph.nodes[0].attrs == {"output_size": (5, 2)}
    assert graph.nodes[0].shape == (1, 3, 5, 2)


# -- values --------------------------------------------------------------------------------------

def test_value_shape_queries_and_flatten_patterns():
    seen = {}

    class Net(nn.Module):
        def forward(self, x):
            seen.update(shape=x.shape, ndim=x.ndim, dim=x.dim(), c=x.size(1), last=x.size(-1),
                        size=x.size(), length=len(x), numel=x.numel())
            a = x.view(x.size(0), -1)
            b = x.reshape(-1, 48).flatten(1)
            c = x.flatten(1)
            d = torch.flatten(x, 1)
            e = F.flatten(x.contiguous(), 2)
            return a, b, c, d, e, x.view(-1)

    graph = trace(Net(), (2, 3, 4, 4))
    assert seen == dict(shape=(2, 3, 4, 4), ndim=4, dim=4, c=3, last=4, size=(2, 3, 4, 4),
                        length=2, numel=96)
    assert ops(graph) == [("view", "flatten"), ("reshape", "flatten"), ("flatten", "flatten"),
                          ("flatten_1", "flatten"), ("flatten_2", "flatten"),
                          ("flatten_3", "flatten"), ("view_1", "flatten")]
    assert [n.shape for n in graph.nodes] == [(2, 48)] * 5 + [(2, 3, 16), (96,)]
    assert graph.node("view_1").attrs == {"start_dim": 0, "end_dim": 3}


def test_functional_ops_on_values_record_named_nodes():
    class Net(nn.Module):
        def forward(self, x):
            x = F.relu(F.max_pool2d(x, 2))
            x = F.avg_pool2d(F.leaky_relu(x, 0.2), 2, stride=1, padding=1)
            x = F.adaptive_avg_pool2d(F.dropout(F.sigmoid(x), 0.5), (2, 1))
            return F.tanh(F.relu6(x))

    graph = trace(Net(), (1, 2, 8, 8))
    assert ops(graph) == [("max_pool2d", "max_pool"), ("relu", "activation"),
                          ("leaky_relu", "activation"), ("avg_pool2d", "avg_pool"),
                          ("sigmoid", "activation"), ("dropout", "identity"),
                          ("adaptive_avg_pool2d", "adaptive_avg_pool"),
                          ("relu6", "activation"), ("tanh", "activation")]
    assert graph.node("avg_pool2d").attrs == {
        "kernel_size": (2, 2), "stride": (1, 1), "padding": (1, 1), "ceil_mode": False,
        "count_include_pad": True}
    assert graph.node("leaky_relu").attrs == {"name": "leaky_relu", "args": (0.2,)}
    assert all(n.module == "" for n in graph.nodes)


# -- errors --------------------------------------------------------------------------------------

def test_linear_with_wrong_in_features_names_the_layer():
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(99, 10))
    with pytest.raises(GraphError, match=r"2 \(Linear\).*in_features=99.*\(1, 36\)"):
        trace(net, (1, 1, 5, 5))


def test_conv_channel_mismatch_names_the_layer():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 6, 3)
            self.conv2 = nn.Conv2d(8, 6, 3)

        def forward(self, x):
            return self.conv2(self.conv1(x))

    with pytest.raises(GraphError, match=r"conv2 \(Conv2d\): expects 8 input channels.*"
                                         r"\(1, 6, 6, 6\)"):
        trace(Net(), (1, 3, 8, 8))


@pytest.mark.parametrize("layer, shape, message", [
    (nn.Conv2d(3, 4, 3), (1, 3, 8), r"4-d input"),
    (nn.Conv2d(3, 4, 5), (1, 3, 3, 3), r"kernel"),
    (nn.MaxPool2d(4), (1, 2, 2, 2), r"too small"),
    (nn.MaxPool2d(2, padding=2), (1, 2, 8, 8), r"half of kernel_size"),
    (nn.BatchNorm2d(4), (1, 3, 5, 5), r"4 channels"),
    (nn.BatchNorm2d(4), (1, 4, 5), r"4-d input"),
    (nn.BatchNorm2d(4, track_running_stats=False), (1, 4, 5, 5), r"batch's own statistics"),
    (nn.Softmax(dim=2), (3, 4), r"dim=2 is out of range"),
    (nn.Flatten(2, 1), (3, 4, 5), r"start_dim"),
])
def test_invalid_shapes_name_the_layer(layer, shape, message):
    net = nn.Sequential(nn.Identity(), layer)
    with pytest.raises(GraphError, match=rf"1 \({type(layer).__name__}\): .*{message}"):
        trace(net, [shape])


def test_add_of_different_shapes_names_the_node():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 3)

        def forward(self, x):
            return self.conv(x) + x

    with pytest.raises(GraphError, match=r"add: cannot add shapes"):
        trace(Net(), (1, 2, 5, 5))


UNSUPPORTED = [
    (lambda x: x * 2, "'__mul__'"),
    (lambda x: 2 * x, "'__rmul__'"),
    (lambda x: x - x, "'__sub__'"),
    (lambda x: x / 2, "'__truediv__'"),
    (lambda x: x @ x, "'__matmul__'"),
    (lambda x: -x, "'__neg__'"),
    (lambda x: x + 1, "'__add__'"),
    (lambda x: x[0], "'__getitem__'"),
    (lambda x: x if x else x, "'__bool__'"),
    (lambda x: x > 0, "'__gt__'"),
    (lambda x: x == x, "'__eq__'"),
    (lambda x: np.asarray(x), "'__array__'"),
    (lambda x: np.exp(x), "'numpy.exp'"),
    (lambda x: np.zeros(x.shape) + x, "'numpy.add'"),
    (lambda x: np.concatenate([x, x]), "'numpy.concatenate'"),
    (lambda x: math.exp(x), "'__float__'"),
    (lambda x: list(x), "'__iter__'"),
    (lambda x: x.mean(), "'mean'"),
    (lambda x: x.view(2, -1, 3), "'view'"),
    (lambda x: x.reshape(4, 4, 4), "'reshape'"),
    (lambda x: torch.nn.functional.softplus(x), "'torch.softplus'"),  # gelu is supported
    (lambda x: F.cat([x, np.zeros(x.shape)]), "'cat'"),
]


@pytest.mark.parametrize("operation, name", UNSUPPORTED, ids=[n for _, n in UNSUPPORTED])
def test_unsupported_operations_name_the_op_and_the_module(operation, name):
    class Tricky(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 1)

        def forward(self, x):
            return operation(self.conv(x))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer1 = nn.Sequential(Tricky())

        def forward(self, x):
            return self.layer1(x)

    with pytest.raises(GraphError) as info:
        trace(Net(), (1, 2, 4, 4))
    message = str(info.value)
    assert f"unsupported operation {name}" in message
    assert "in Tricky.forward (layer1.0)" in message
    assert "convgen.nn supports" in message


def test_forward_must_return_traced_values():
    class Net(nn.Module):
        def forward(self, x):
            return None

    with pytest.raises(GraphError, match="must return traced values"):
        trace(Net(), (1, 2))


def test_invalid_input_shapes():
    with pytest.raises(GraphError, match="positive ints"):
        trace(nn.ReLU(), [(1, 0, 3)])
    with pytest.raises(GraphError, match="shape"):
        trace(nn.ReLU(), "1x3")


def test_values_do_not_leak_out_of_a_trace():
    kept = []

    class Net(nn.Module):
        def forward(self, x):
            kept.append(x)
            return F.relu(x)

    trace(Net(), (1, 2))
    with pytest.raises(GraphError, match="after tracing finished"):
        F.relu(kept[0])
    assert isinstance(kept[0], Value) and repr(kept[0]) == "Value('input', shape=(1, 2))"


# -- eager NumPy ---------------------------------------------------------------------------------

def test_functional_ops_on_arrays_match_torch():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    tx = torch.from_numpy(x)
    tf = torch.nn.functional
    cases = [
        (F.relu(x), tf.relu(tx)),
        (F.leaky_relu(x, 0.3), tf.leaky_relu(tx, 0.3)),
        (F.relu6(x * 4), tf.relu6(tx * 4)),
        (F.sigmoid(x), torch.sigmoid(tx)),
        (F.tanh(x), torch.tanh(tx)),
        (F.softmax(x, dim=1), tf.softmax(tx, dim=1)),
        (F.log_softmax(x, -1), tf.log_softmax(tx, -1)),
        (F.flatten(x, 1), torch.flatten(tx, 1)),
        (F.cat([x, x * 2], dim=1), torch.cat([tx, tx * 2], 1)),
        (F.max_pool2d(x, 3, 2, 1), tf.max_pool2d(tx, 3, 2, 1)),
        (F.avg_pool2d(x, 3, 2, 1, ceil_mode=True), tf.avg_pool2d(tx, 3, 2, 1, ceil_mode=True)),
        (F.adaptive_avg_pool2d(x, (4, 3)), tf.adaptive_avg_pool2d(tx, (4, 3))),
        (F.dropout(x, 0.5), tx),
        (F.add(x, x), tx + tx),
    ]
    for got, want in cases:
        assert isinstance(got, np.ndarray) and got.dtype == np.float32
        assert_close(got, want.numpy().astype(np.float64), rtol=1e-6)
    with pytest.raises(TypeError, match="numpy.ndarray"):
        F.relu("x")
    with pytest.raises(ValueError, match="needs dim"):
        F.softmax(x)


def test_modules_run_eagerly_on_arrays():
    torch.manual_seed(0)
    theirs = randomize(net_1d(torch.nn))
    ours = net_1d(nn)
    ours.load_state_dict(theirs.state_dict())
    x = np.random.default_rng(0).standard_normal((2, 2, 40)).astype(np.float32)
    got = ours(x)
    assert got.dtype == np.float32
    assert_close(got, theirs(torch.from_numpy(x)).detach().numpy().astype(np.float64))


# -- whole networks against PyTorch -----------------------------------------------------------

def lenet5(lib):
    """LeNet-5 (tanh, average pooling), as usually written."""

    class LeNet5(lib.Module):
        def __init__(self, num_classes=10):
            super().__init__()
            self.features = lib.Sequential(
                lib.Conv2d(1, 6, kernel_size=5, padding=2), lib.Tanh(), lib.AvgPool2d(2),
                lib.Conv2d(6, 16, kernel_size=5), lib.Tanh(), lib.AvgPool2d(2))
            self.classifier = lib.Sequential(
                lib.Flatten(), lib.Linear(16 * 5 * 5, 120), lib.Tanh(), lib.Linear(120, 84),
                lib.Tanh(), lib.Linear(84, num_classes))

        def forward(self, x):
            return self.classifier(self.features(x))

    return LeNet5()


def lenet_tutorial(lib):
    """The PyTorch tutorial's LeNet: functional relu/max_pool and x.view(x.size(0), -1)."""
    functional = torch.nn.functional if lib is torch.nn else F

    class Net(lib.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = lib.Conv2d(1, 6, 5)
            self.conv2 = lib.Conv2d(6, 16, 5)
            self.fc1 = lib.Linear(16 * 5 * 5, 120)
            self.fc2 = lib.Linear(120, 84)
            self.fc3 = lib.Linear(84, 10)

        def forward(self, x):
            x = functional.max_pool2d(functional.relu(self.conv1(x)), (2, 2))
            x = functional.max_pool2d(functional.relu(self.conv2(x)), 2)
            x = x.view(x.size(0), -1)
            x = functional.relu(self.fc1(x))
            x = functional.relu(self.fc2(x))
            return functional.log_softmax(self.fc3(x), dim=1)

    return Net()


def test_lenet5_matches_torch():
    graph = check_against_torch(lenet5, [(2, 1, 28, 28)])
    assert [n.name for n in graph.nodes][:3] == ["features.0", "features.1", "features.2"]
    assert graph.node("classifier.5").shape == (2, 10)


def test_tutorial_lenet_matches_torch():
    graph = check_against_torch(lenet_tutorial, [(1, 1, 32, 32)])
    assert ops(graph)[:4] == [("conv1", "conv"), ("relu", "activation"),
                              ("max_pool2d", "max_pool"), ("conv2", "conv")]
    assert graph.node("view").attrs == {"start_dim": 1, "end_dim": 3}


def test_resnet18_matches_torch():
    resnet = lambda lib: resnet18_classes(lib)[1](num_classes=10)  # noqa: E731
    graph = check_against_torch(resnet, [(1, 3, 64, 64)])
    names = [n.name for n in graph.nodes]
    assert names[:4] == ["conv1", "bn1", "relu", "maxpool"]
    assert "layer2.0.downsample.0" in names and "layer4.1.relu_1" in names
    assert sum(n.op == "add" for n in graph.nodes) == 8
    assert sum(n.op == "conv" for n in graph.nodes) == 20
    assert graph.node("layer4.1.relu_1").shape == (1, 512, 2, 2)
    assert graph.outputs == ["fc"] and graph.node("fc").shape == (1, 10)


# -- Module.trace / Module.compile --------------------------------------------------------------

def test_module_trace_and_compile_hand_the_graph_to_compile_graph(monkeypatch):
    calls = []
    monkeypatch.setattr(
        nn.module, "compile_graph",
        lambda graph, backend=None, dtype="float32", **options:
        calls.append((graph, backend, dtype, options)) or "model")
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    assert ops(net.trace((1, 3, 8, 8))) == [("0", "conv"), ("1", "activation")]
    assert net.compile(input_shape=(1, 3, 8, 8), backend="c", dtype="float64",
                       threads=2) == "model"
    graph, backend, dtype, options = calls[0]
    assert isinstance(graph, Graph) and graph.inputs == [("input", (1, 3, 8, 8))]
    assert (backend, dtype, options) == ("c", "float64", {"threads": 2})
    net.compile([(1, 3, 8, 8)])
    assert calls[1][1:3] == (None, "float32")


def test_compiled_network_matches_torch():
    torch.manual_seed(0)
    theirs = randomize(torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.MaxPool2d(2), torch.nn.Flatten(), torch.nn.Linear(8 * 4 * 4, 5)))
    ours = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 4 * 4, 5))
    ours.load_state_dict(theirs.state_dict())
    model = ours.compile(input_shape=(1, 3, 8, 8))
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    assert_close(model(x), theirs(torch.from_numpy(x)).detach().numpy().astype(np.float64))
