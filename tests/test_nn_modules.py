"""convgen.nn modules against torch.nn: constructor arguments, state_dict keys, shapes and
dtypes, loading torch's weights, printing, containers and registration, and a ResNet-18
written once and built with either library."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch

from convgen import nn
from convgen.nn import StateDictError

# (layer name, positional arguments, keyword arguments): built with torch.nn and convgen.nn
LAYERS = [
    ("Conv1d", (4, 6, 3), dict(stride=2, padding=1, dilation=2, groups=2)),
    ("Conv1d", (3, 5, 4), dict(padding="same", padding_mode="circular", bias=False)),
    ("Conv2d", (3, 16, 3), dict(padding=1)),
    ("Conv2d", (4, 8, (3, 5)), dict(stride=(2, 1), padding=(1, 2), bias=False)),
    ("Conv2d", (6, 6, 3), dict(groups=6, padding="valid", padding_mode="reflect")),
    ("Conv3d", (2, 4, 3), dict(stride=(1, 2, 2), padding=1, groups=2)),
    ("ConvTranspose1d", (4, 6, 3), dict(stride=2, padding=1, output_padding=1)),
    ("ConvTranspose2d", (4, 6, 3), dict(stride=2, padding=1, output_padding=1, groups=2,
                                        dilation=1)),
    ("ConvTranspose2d", (3, 5, (2, 3)), dict(bias=False, dilation=2)),
    ("ConvTranspose3d", (2, 3, 2), dict(stride=2)),
    ("MaxPool1d", (3,), dict(stride=2, padding=1)),
    ("MaxPool2d", (3, 2, 1), {}),
    ("MaxPool2d", ((2, 3),), dict(ceil_mode=True, dilation=2)),
    ("MaxPool3d", (2,), {}),
    ("AvgPool1d", (3,), dict(stride=1, padding=1, count_include_pad=False)),
    ("AvgPool2d", (2,), {}),
    ("AvgPool2d", (3, 2, 1), dict(ceil_mode=True)),
    ("AvgPool3d", ((1, 2, 2),), {}),
    ("AdaptiveAvgPool1d", (4,), {}),
    ("AdaptiveAvgPool2d", (1,), {}),
    ("AdaptiveAvgPool2d", ((2, 3),), {}),
    ("AdaptiveAvgPool3d", ((1, 2, 2),), {}),
    ("Linear", (16, 10), {}),
    ("Linear", (7, 3), dict(bias=False)),
    ("Flatten", (), {}),
    ("Flatten", (0, 2), {}),
    ("ReLU", (), {}),
    ("ReLU", (), dict(inplace=True)),
    ("LeakyReLU", (), {}),
    ("LeakyReLU", (0.2,), {}),
    ("ReLU6", (), {}),
    ("Sigmoid", (), {}),
    ("Tanh", (), {}),
    ("GELU", (), {}),
    ("GELU", (), dict(approximate="tanh")),
    ("SiLU", (), dict(inplace=True)),
    ("ELU", (0.5, True), {}),
    ("SELU", (), {}),
    ("Hardswish", (), {}),
    ("Hardsigmoid", (), dict(inplace=True)),
    ("Upsample", (), dict(scale_factor=2)),
    ("Upsample", ((3, 4),), dict(mode="bilinear", align_corners=True)),
    ("Softmax", (), dict(dim=1)),
    ("LogSoftmax", (1,), {}),
    ("BatchNorm1d", (5,), {}),
    ("BatchNorm2d", (8,), dict(eps=1e-3, momentum=0.2)),
    ("BatchNorm2d", (8,), dict(affine=False)),
    ("BatchNorm2d", (8,), dict(bias=False)),
    ("BatchNorm2d", (8,), dict(track_running_stats=False)),
    ("BatchNorm3d", (3,), {}),
    ("Dropout", (), {}),
    ("Dropout", (0.25,), {}),
    ("Identity", (), {}),
]
IDS = [f"{name}-{i}" for i, (name, _, _) in enumerate(LAYERS)]


def build_pair(name, args, kwargs):
    return getattr(torch.nn, name)(*args, **kwargs), getattr(nn, name)(*args, **kwargs)


def shapes_and_dtypes(state: dict) -> dict:
    out = {}
    for key, value in state.items():
        array = value.detach().numpy() if isinstance(value, torch.Tensor) else value
        out[key] = (tuple(array.shape), np.dtype(array.dtype))
    return out


@pytest.mark.parametrize("name, args, kwargs", LAYERS, ids=IDS)
def test_layer_state_dict_matches_torch(name, args, kwargs):
    theirs, ours = build_pair(name, args, kwargs)
    state = ours.state_dict()
    assert isinstance(state, OrderedDict)
    assert list(state) == list(theirs.state_dict())
    assert shapes_and_dtypes(state) == shapes_and_dtypes(theirs.state_dict())
    assert all(isinstance(v, np.ndarray) for v in state.values())
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    assert [n for n, _ in ours.named_buffers()] == [n for n, _ in theirs.named_buffers()]


@pytest.mark.parametrize("name, args, kwargs", LAYERS, ids=IDS)
def test_layer_loads_torch_state_dict(name, args, kwargs):
    torch.manual_seed(0)
    theirs, ours = build_pair(name, args, kwargs)
    with torch.no_grad():
        for tensor in list(theirs.parameters()) + list(theirs.buffers()):
            if tensor.dtype.is_floating_point:
                tensor.uniform_(0.5, 1.5)
            else:
                tensor.fill_(7)
    result = ours.load_state_dict(theirs.state_dict())
    assert result.missing_keys == [] and result.unexpected_keys == []
    for key, value in theirs.state_dict().items():
        got = ours.state_dict()[key]
        assert got.dtype == value.numpy().dtype
        np.testing.assert_array_equal(got, value.numpy())


@pytest.mark.parametrize("name, args, kwargs", LAYERS, ids=IDS)
def test_layer_repr_and_attributes_match_torch(name, args, kwargs):
    theirs, ours = build_pair(name, args, kwargs)
    assert repr(ours) == repr(theirs)
    for attr in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation",
                 "groups", "output_padding", "padding_mode", "transposed", "ceil_mode",
                 "count_include_pad", "output_size", "in_features", "out_features",
                 "start_dim", "end_dim", "negative_slope", "inplace", "dim", "num_features", "alpha",
                 "approximate",
                 "eps", "momentum", "affine", "track_running_stats", "p"):
        if hasattr(theirs, attr):
            assert getattr(ours, attr) == getattr(theirs, attr), attr


def test_parameters_are_float32_with_torch_init_bounds(monkeypatch):
    monkeypatch.setattr(nn.init, "_RNG", nn.init._RNG)  # restored afterwards
    nn.manual_seed(7)  # the draws below must not depend on which tests ran before
    conv = nn.Conv2d(8, 32, 3)
    convt = nn.ConvTranspose2d(8, 32, 3, groups=2)
    linear = nn.Linear(50, 40)
    for layer, fan_in in ((conv, 8 * 9), (convt, 16 * 9), (linear, 50)):
        for param in (layer.weight, layer.bias):
            assert isinstance(param, nn.Parameter) and param.dtype == np.float32
            bound = 1 / np.sqrt(fan_in)
            assert np.abs(param).max() <= bound
            # uniform over [-bound, bound]: with >= 32 draws the largest is near the bound
            assert np.abs(param).max() > bound / 2
    bn = nn.BatchNorm2d(3)
    np.testing.assert_array_equal(bn.weight, np.ones(3, np.float32))
    np.testing.assert_array_equal(bn.bias, np.zeros(3, np.float32))
    np.testing.assert_array_equal(bn.running_mean, np.zeros(3, np.float32))
    np.testing.assert_array_equal(bn.running_var, np.ones(3, np.float32))
    assert bn.num_batches_tracked.dtype == np.int64 and bn.num_batches_tracked.shape == ()
    assert bn.num_batches_tracked == 0


def test_initialization_is_seeded_and_deterministic(monkeypatch):
    monkeypatch.setattr(nn.init, "_RNG", nn.init._RNG)  # restored afterwards
    nn.manual_seed(123)
    a = nn.Conv2d(3, 4, 3).state_dict()
    nn.manual_seed(123)
    b = nn.Conv2d(3, 4, 3).state_dict()
    nn.manual_seed(124)
    c = nn.Conv2d(3, 4, 3).state_dict()
    np.testing.assert_array_equal(a["weight"], b["weight"])
    assert not np.array_equal(a["weight"], c["weight"])


# -- load_state_dict errors ------------------------------------------------------------------

def small_net():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4, 2))


def test_load_state_dict_missing_key_is_named():
    net = small_net()
    state = net.state_dict()
    del state["4.bias"]
    with pytest.raises(StateDictError, match=r"missing key\(s\).*'4\.bias'"):
        net.load_state_dict(state)
    result = net.load_state_dict(state, strict=False)
    assert result.missing_keys == ["4.bias"] and result.unexpected_keys == []


def test_load_state_dict_unexpected_key_is_named():
    net = small_net()
    state = net.state_dict()
    state["5.weight"] = np.zeros(3)
    with pytest.raises(StateDictError, match=r"unexpected key\(s\).*'5\.weight'"):
        net.load_state_dict(state)
    assert net.load_state_dict(state, strict=False).unexpected_keys == ["5.weight"]


def test_load_state_dict_shape_mismatch_names_key_and_both_shapes():
    net = small_net()
    before = net.state_dict()
    state = net.state_dict()
    state["0.weight"] = np.ones((4, 3, 5, 5), np.float32)
    state["1.running_mean"] = np.ones(4, np.float32) * 3  # valid: must not be applied either
    with pytest.raises(StateDictError) as info:
        net.load_state_dict(state, strict=False)
    message = str(info.value)
    assert "0.weight" in message and "(4, 3, 5, 5)" in message and "(4, 3, 3, 3)" in message
    assert isinstance(info.value, ValueError) and isinstance(info.value, RuntimeError)
    for key, value in net.state_dict().items():  # nothing was loaded
        np.testing.assert_array_equal(value, before[key])


def test_load_state_dict_accepts_arrays_tensors_and_array_likes():
    net = nn.Linear(2, 2)
    net.load_state_dict({"weight": [[1.0, 2.0], [3.0, 4.0]], "bias": torch.tensor([5.0, 6.0])})
    np.testing.assert_array_equal(net.weight, [[1, 2], [3, 4]])
    np.testing.assert_array_equal(net.bias, [5, 6])
    assert net.weight.dtype == np.float32  # the layer's dtype is kept
    net.load_state_dict({"weight": np.eye(2, dtype=np.float64), "bias": np.zeros(2)})
    np.testing.assert_array_equal(net.weight, np.eye(2))
    with pytest.raises(TypeError):
        net.load_state_dict([("weight", np.eye(2))])


def test_batch_norm_state_dict_without_num_batches_tracked_loads_as_in_torch():
    theirs, ours = torch.nn.BatchNorm2d(3), nn.BatchNorm2d(3)
    state = {k: v for k, v in theirs.state_dict().items() if k != "num_batches_tracked"}
    theirs.load_state_dict(state)
    ours.load_state_dict(state)
    assert ours.num_batches_tracked == 0


def test_state_dict_returns_copies():
    net = nn.Linear(2, 2)
    net.state_dict()["weight"][...] = 9
    assert not np.any(net.weight == 9)


# -- registration and containers ----------------------------------------------------------------

def test_module_registration_like_torch():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU())
            self.head = nn.Linear(2, 2)
            self.scale = nn.Parameter(np.ones(2))
            self.register_buffer("offset", np.zeros(2, np.float32))
            self.register_buffer("scratch", np.zeros(2), persistent=False)
            self.plain = 3

    net = Net()
    assert [name for name, _ in net.named_children()] == ["features", "head"]
    assert len(list(net.children())) == 2
    assert [name for name, _ in net.named_modules()] == ["", "features", "features.0",
                                                         "features.1", "head"]
    assert list(net.state_dict()) == ["scale", "offset", "features.0.weight", "features.0.bias",
                                      "head.weight", "head.bias"]
    assert [name for name, _ in net.named_parameters()] == [
        "scale", "features.0.weight", "features.0.bias", "head.weight", "head.bias"]
    assert len(list(net.parameters())) == 5
    assert net.get_submodule("features.0") is net.features[0]
    net.head = None
    assert "head.weight" not in net.state_dict()
    del net.scale
    assert "scale" not in net.state_dict()
    with pytest.raises(AttributeError, match="has no attribute 'missing'"):
        net.missing  # noqa: B018


def test_assigning_before_init_raises():
    class Broken(nn.Module):
        def __init__(self):
            self.conv = nn.Conv2d(1, 1, 1)

    with pytest.raises(AttributeError, match=r"before Module.__init__\(\)"):
        Broken()


def test_shared_module_appears_once_in_named_modules():
    relu = nn.ReLU()
    net = nn.Sequential(relu, nn.Linear(2, 2), relu)
    assert [name for name, _ in net.named_modules()] == ["", "0", "1"]


def test_train_and_eval_set_flags_and_return_self():
    net = small_net()
    assert net.training and net[1].training
    assert net.eval() is net
    assert not net.training and not net[1].training
    assert net.train() is net and net[4].training


def test_forward_is_required():
    with pytest.raises(NotImplementedError, match="forward"):
        nn.Module()(np.zeros(1))


def test_sequential_behaviour():
    layers = [nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten()]
    seq = nn.Sequential(*layers)
    assert len(seq) == 3
    assert list(seq) == layers
    assert seq[0] is layers[0] and seq[-1] is layers[2]
    assert list(seq._modules) == ["0", "1", "2"]
    sub = seq[1:]
    assert isinstance(sub, nn.Sequential) and list(sub) == layers[1:]
    assert list(sub._modules) == ["1", "2"]  # keys are kept, as torch does
    with pytest.raises(IndexError):
        seq[3]
    seq.append(nn.Linear(2, 2))
    assert len(seq) == 4 and "3.weight" in seq.state_dict()
    del seq[1]
    assert list(seq._modules) == ["0", "1", "2"] and seq[1] is layers[2]
    seq[0] = nn.Conv2d(1, 5, 3)
    assert seq.state_dict()["0.weight"].shape == (5, 1, 3, 3)
    named = nn.Sequential(OrderedDict([("conv", nn.Conv2d(1, 2, 3)), ("act", nn.ReLU())]))
    assert list(named.state_dict()) == ["conv.weight", "conv.bias"]
    assert named.conv is named[0]
    assert repr(named) == repr(torch.nn.Sequential(OrderedDict(
        [("conv", torch.nn.Conv2d(1, 2, 3)), ("act", torch.nn.ReLU())])))


def test_module_list_behaviour():
    blocks = nn.ModuleList([nn.Linear(2, 2) for _ in range(3)])
    assert len(blocks) == 3 and list(blocks._modules) == ["0", "1", "2"]
    blocks.append(nn.ReLU())
    blocks.extend([nn.Tanh()])
    blocks.insert(0, nn.Identity())
    assert [type(m).__name__ for m in blocks] == ["Identity", "Linear", "Linear", "Linear",
                                                  "ReLU", "Tanh"]
    assert list(blocks.state_dict())[:2] == ["1.weight", "1.bias"]
    assert isinstance(blocks[1:3], nn.ModuleList) and len(blocks[1:3]) == 2
    del blocks[0]
    assert list(blocks._modules) == ["0", "1", "2", "3", "4"]
    assert blocks[-1] is list(blocks)[-1]
    with pytest.raises(NotImplementedError):
        blocks(np.zeros(2))
    same = [torch.nn.ReLU(), torch.nn.ReLU(), torch.nn.Linear(2, 3)]
    assert repr(nn.ModuleList([nn.ReLU(), nn.ReLU(), nn.Linear(2, 3)])) == \
        repr(torch.nn.ModuleList(same))


@pytest.mark.parametrize("build, message", [
    (lambda: nn.Softmax(), "needs dim"),
    (lambda: nn.LogSoftmax(), "needs dim"),
    (lambda: nn.MaxPool2d(2, return_indices=True), "return_indices"),
    (lambda: nn.AvgPool2d(2, divisor_override=3), "divisor_override"),
    (lambda: nn.AdaptiveAvgPool2d((1, 2, 3)), "output_size"),
    (lambda: nn.Conv2d(3, 4, 3, groups=2), "divisible by groups"),
    (lambda: nn.Conv2d(4, 4, 3, stride=2, padding="same"), "strided"),
    (lambda: nn.Conv2d(4, 4, 3, padding="full"), "padding"),
    (lambda: nn.Conv2d(4, 4, 3, padding_mode="mirror"), "padding_mode"),
    (lambda: nn.ConvTranspose2d(4, 4, 3, padding_mode="reflect"), "zeros"),
    (lambda: nn.Conv2d(4, 4, (3, 3, 3)), "kernel_size"),
    (lambda: nn.Dropout(1.5), "between 0 and 1"),
])
def test_invalid_constructor_arguments(build, message):
    with pytest.raises(ValueError, match=message):
        build()


# -- ResNet-18: the same code, either library ------------------------------------------------------

def resnet18_classes(nn):
    """torchvision's ResNet-18, written against ``nn`` (torch.nn or convgen.nn)."""

    def conv3x3(in_planes, out_planes, stride=1):
        return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1,
                         bias=False)

    def conv1x1(in_planes, out_planes, stride=1):
        return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)

    class BasicBlock(nn.Module):
        expansion = 1

        def __init__(self, inplanes, planes, stride=1, downsample=None):
            super().__init__()
            self.conv1 = conv3x3(inplanes, planes, stride)
            self.bn1 = nn.BatchNorm2d(planes)
            self.relu = nn.ReLU(inplace=True)
            self.conv2 = conv3x3(planes, planes)
            self.bn2 = nn.BatchNorm2d(planes)
            self.downsample = downsample
            self.stride = stride

        def forward(self, x):
            identity = x
            out = self.conv1(x)
            out = self.bn1(out)
            out = self.relu(out)
            out = self.conv2(out)
            out = self.bn2(out)
            if self.downsample is not None:
                identity = self.downsample(x)
            out += identity
            out = self.relu(out)
            return out

    class ResNet(nn.Module):
        def __init__(self, layers=(2, 2, 2, 2), num_classes=1000):
            super().__init__()
            self.inplanes = 64
            self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
            self.layer1 = self._make_layer(64, layers[0])
            self.layer2 = self._make_layer(128, layers[1], stride=2)
            self.layer3 = self._make_layer(256, layers[2], stride=2)
            self.layer4 = self._make_layer(512, layers[3], stride=2)
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Linear(512, num_classes)

        def _make_layer(self, planes, blocks, stride=1):
            downsample = None
            if stride != 1 or self.inplanes != planes:
                downsample = nn.Sequential(conv1x1(self.inplanes, planes, stride),
                                           nn.BatchNorm2d(planes))
            layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
            self.inplanes = planes
            for _ in range(1, blocks):
                layers.append(BasicBlock(self.inplanes, planes))
            return nn.Sequential(*layers)

        def forward(self, x):
            x = self.conv1(x)
            x = self.bn1(x)
            x = self.relu(x)
            x = self.maxpool(x)
            x = self.layer1(x)
            x = self.layer2(x)
            x = self.layer3(x)
            x = self.layer4(x)
            x = self.avgpool(x)
            x = torch.flatten(x, 1)
            x = self.fc(x)
            return x

    return BasicBlock, ResNet


def test_resnet18_state_dict_matches_torch_and_loads():
    theirs = resnet18_classes(torch.nn)[1]()
    ours = resnet18_classes(nn)[1]()
    assert shapes_and_dtypes(ours.state_dict()) == shapes_and_dtypes(theirs.state_dict())
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert len(ours.state_dict()) == 122
    assert "layer2.0.downsample.1.running_var" in ours.state_dict()
    assert [n for n, _ in ours.named_modules()] == [n for n, _ in theirs.named_modules()]
    assert repr(ours) == repr(theirs)
    ours.load_state_dict(theirs.state_dict())
    for key, value in theirs.state_dict().items():
        np.testing.assert_array_equal(ours.state_dict()[key], value.numpy())
    assert sum(p.size for p in ours.parameters()) == \
        sum(p.numel() for p in theirs.parameters()) == 11_689_512
