"""Network files (specs/nets/*.toml): loading, shapes, compiling on every backend against
the composed oracle, ResNet-18 against a torch ResNet-18, weights, and every error naming
the file and the key."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest

import convgen as cg
from convgen import nn
from convgen.graph.netspec import Concat, Network, Residual, load_weights
from convgen.nn import init as nn_init

# whole networks: the backend argument runs over the backends that compile them
pytestmark = pytest.mark.networks

NETS = Path(__file__).resolve().parent.parent / "specs" / "nets"
OUTPUT_SHAPES = {
    "lenet5": (1, 10),
    "resnet18": (1, 1000),
    "audio1d": (1, 10),
    "dcgan_generator": (1, 3, 64, 64),
    "video3d": (1, 5),
}
SMALL_NETS = ["lenet5", "audio1d", "dcgan_generator", "video3d"]


def seeded_input(shape, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def relative_error(got, want) -> float:
    want = np.asarray(want, dtype=np.float64)
    return float(np.max(np.abs(np.asarray(got, np.float64) - want)) / np.max(np.abs(want)))


def write(tmp_path: Path, text: str, name: str = "net.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


# -- the shipped networks ------------------------------------------------------------------

def test_every_shipped_network_is_tested():
    assert sorted(p.stem for p in NETS.glob("*.toml")) == sorted(OUTPUT_SHAPES)


@pytest.mark.parametrize("name", sorted(OUTPUT_SHAPES))
def test_shipped_network_loads_and_traces(name):
    net = cg.load_network(NETS / f"{name}.toml")
    assert isinstance(net, Network) and isinstance(net, nn.Sequential)
    assert net.name == name
    graph = net.trace()
    assert graph.inputs == [("input", net.input_shape)]
    assert graph.shape_of(graph.outputs[0]) == OUTPUT_SHAPES[name]


@pytest.mark.parametrize("name", SMALL_NETS)
def test_small_network_compiles_and_matches_oracle(backend, name):
    net = cg.load_network(NETS / f"{name}.toml")
    model = net.compile(backend=backend)  # the file's input shape by default
    assert model.input_shapes == [net.input_shape]
    x = seeded_input(net.input_shape)
    y = model(x)
    assert y.shape == OUTPUT_SHAPES[name] and y.dtype == np.float32
    assert relative_error(y, model.reference(x)) < 1e-4
    np.testing.assert_allclose(y, net(x), rtol=1e-4, atol=1e-5)  # eager oracle agrees


def test_default_initialization_is_seeded_and_leaves_the_global_generator_alone():
    generator = nn_init._RNG
    a = cg.load_network(NETS / "lenet5.toml")
    b = cg.load_network(NETS / "lenet5.toml")
    c = cg.load_network(NETS / "lenet5.toml", seed=1)
    assert nn_init._RNG is generator
    for key, value in a.state_dict().items():
        np.testing.assert_array_equal(value, b.state_dict()[key])
    assert not np.array_equal(a.conv1.weight, c.conv1.weight)


def test_lenet_structure_and_names():
    net = cg.load_network(NETS / "lenet5.toml")
    assert list(net._modules) == ["conv1", "relu1", "pool1", "conv2", "relu2", "pool2",
                                  "flatten", "fc1", "relu3", "fc2", "relu4", "fc3", "softmax"]
    assert net.conv1.weight.shape == (6, 1, 5, 5) and net.fc1.weight.shape == (120, 400)
    probs = net(seeded_input(net.input_shape))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)


def test_dcgan_generator_keeps_the_tutorial_structure():
    net = cg.load_network(NETS / "dcgan_generator.toml")
    kinds = [type(m).__name__ for m in net.main]
    assert kinds == ["ConvTranspose2d", "BatchNorm2d", "ReLU"] * 4 + ["ConvTranspose2d", "Tanh"]
    first, last = net.main[0], net.main[12]
    assert (first.in_channels, first.kernel_size, first.stride, first.padding) == \
        (100, (4, 4), (1, 1), (0, 0))
    assert (last.out_channels, last.stride, last.padding) == (3, (2, 2), (1, 1))


def test_audio1d_uses_dilations_1_2_4_8():
    net = cg.load_network(NETS / "audio1d.toml")
    convs = [m for m in net.modules() if isinstance(m, nn.Conv1d)]
    assert [c.dilation[0] for c in convs[1:]] == [1, 2, 4, 8]
    assert any(isinstance(m, nn.BatchNorm1d) for m in net.modules())


# -- ResNet-18 against torch ---------------------------------------------------------------

@pytest.fixture(scope="module")
def torch_resnet18():
    """A torch ResNet-18 written as torchvision's, in eval mode, with random BN stats."""
    torch = pytest.importorskip("torch")
    tnn = torch.nn

    class BasicBlock(tnn.Module):
        def __init__(self, inplanes, planes, stride=1, downsample=None):
            super().__init__()
            self.conv1 = tnn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
            self.bn1 = tnn.BatchNorm2d(planes)
            self.relu = tnn.ReLU(inplace=True)
            self.conv2 = tnn.Conv2d(planes, planes, 3, 1, 1, bias=False)
            self.bn2 = tnn.BatchNorm2d(planes)
            self.downsample = downsample

        def forward(self, x):
            identity = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return self.relu(out + identity)

    class ResNet(tnn.Module):
        def __init__(self, num_classes=1000):
            super().__init__()
            self.inplanes = 64
            self.conv1 = tnn.Conv2d(3, 64, 7, 2, 3, bias=False)
            self.bn1 = tnn.BatchNorm2d(64)
            self.relu = tnn.ReLU(inplace=True)
            self.maxpool = tnn.MaxPool2d(3, 2, 1)
            self.layer1 = self._make_layer(64, 1)
            self.layer2 = self._make_layer(128, 2)
            self.layer3 = self._make_layer(256, 2)
            self.layer4 = self._make_layer(512, 2)
            self.avgpool = tnn.AdaptiveAvgPool2d((1, 1))
            self.fc = tnn.Linear(512, num_classes)

        def _make_layer(self, planes, stride):
            downsample = None
            if stride != 1 or self.inplanes != planes:
                downsample = tnn.Sequential(
                    tnn.Conv2d(self.inplanes, planes, 1, stride, bias=False),
                    tnn.BatchNorm2d(planes))
            blocks = [BasicBlock(self.inplanes, planes, stride, downsample),
                      BasicBlock(planes, planes)]
            self.inplanes = planes
            return tnn.Sequential(*blocks)

        def forward(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(torch.flatten(self.avgpool(x), 1))

    torch.manual_seed(0)
    model = ResNet()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, tnn.BatchNorm2d):
                n = module.num_features
                module.weight.uniform_(0.5, 1.5, generator=generator)
                module.bias.normal_(0.0, 0.1, generator=generator)
                module.running_mean.normal_(0.0, 0.1, generator=generator)
                module.running_var.uniform_(0.5, 1.5, generator=generator)
                module.num_batches_tracked.fill_(n)
    return model.eval()


def test_resnet18_state_dict_keys_and_shapes_are_torchvisions(torch_resnet18):
    ours = cg.load_network(NETS / "resnet18.toml").state_dict()
    theirs = torch_resnet18.state_dict()
    assert list(ours) == list(theirs)
    assert {k: v.shape for k, v in ours.items()} == {k: tuple(v.shape) for k, v in theirs.items()}
    params = sum(p.numel() for p in torch_resnet18.parameters())
    assert params == 11_689_512  # torchvision's resnet18


def test_resnet18_with_torch_weights_matches_torch(backend, torch_resnet18):
    import torch

    net = cg.load_network(NETS / "resnet18.toml")
    net.load_state_dict(torch_resnet18.state_dict())
    shape = (1, 3, 64, 64)  # smaller than the file's 224x224: a quicker compile
    model = net.compile(input_shape=shape, backend=backend)
    x = seeded_input(shape)
    with torch.no_grad():
        want = torch_resnet18(torch.from_numpy(x)).numpy()
    got = model(x)
    assert got.shape == (1, 1000)
    assert relative_error(got, want) < 1e-4


# -- containers ----------------------------------------------------------------------------

BLOCK = """
input_shape = [1, 4, 8, 8]

[[layer]]
name = "block"
type = "Residual"
body = [
  { name = "conv1", type = "Conv2d", args = [4, 4, 3], padding = 1, bias = false },
  { name = "relu", type = "ReLU" },
  { name = "conv2", type = "Conv2d", args = [4, 4, 3], padding = 1 },
]
post = { type = "ReLU" }
"""


def test_residual_identity_shortcut_and_shared_post(tmp_path):
    net = cg.load_network(write(tmp_path, BLOCK))
    block = net.block
    assert isinstance(block, Residual)
    assert list(block._modules) == ["conv1", "relu", "conv2"]  # post reuses "relu"
    x = seeded_input((1, 4, 8, 8)).astype(np.float64)
    h = np.maximum(block.conv1(x), 0)
    np.testing.assert_allclose(net(x), np.maximum(block.conv2(h) + x, 0), rtol=1e-12)


def test_residual_shortcut_name_and_post_with_its_own_name(tmp_path):
    text = BLOCK.replace('post = { type = "ReLU" }', '''shortcut_name = "proj"
shortcut = [{ type = "Conv2d", args = [4, 4, 1], bias = false }]
post = { name = "out", type = "LeakyReLU", negative_slope = 0.2 }''')
    net = cg.load_network(write(tmp_path, text))
    assert list(net.block._modules) == ["conv1", "relu", "conv2", "proj", "out"]
    assert "block.proj.0.weight" in net.state_dict()
    x = seeded_input((1, 4, 8, 8)).astype(np.float64)
    b = net.block
    want = b.conv2(np.maximum(b.conv1(x), 0)) + b.proj(x)
    np.testing.assert_allclose(net(x), np.where(want > 0, want, 0.2 * want), rtol=1e-12)


def test_concat_branches_compile(backend, tmp_path):
    path = write(tmp_path, """
        input_shape = [1, 3, 8, 8]
        [[layer]]
        name = "mixed"
        type = "Concat"
        branches = [
          [{ type = "Conv2d", args = [3, 4, 1] }],
          [{ type = "Conv2d", args = [3, 2, 3], padding = 1 }, { type = "ReLU" }],
          [{ type = "MaxPool2d", args = [3], stride = 1, padding = 1 }],
        ]
        """)
    net = cg.load_network(path)
    assert isinstance(net.mixed, Concat)
    assert set(net.state_dict()) == {"mixed.0.0.weight", "mixed.0.0.bias", "mixed.1.0.weight",
                                     "mixed.1.0.bias"}
    model = net.compile(backend=backend)
    x = seeded_input((1, 3, 8, 8))
    y = model(x)
    assert y.shape == (1, 9, 8, 8)
    assert relative_error(y, model.reference(x)) < 1e-5


# -- weights ------------------------------------------------------------------------------

def test_weights_round_trip_through_npz(tmp_path):
    source = cg.load_network(NETS / "lenet5.toml", seed=7)
    path = tmp_path / "lenet5.npz"
    np.savez(path, **source.state_dict())
    loaded = cg.load_network(NETS / "lenet5.toml", weights=path)
    for key, value in source.state_dict().items():
        np.testing.assert_array_equal(loaded.state_dict()[key], value)
    again = tmp_path / "again.npz"
    np.savez(again, **loaded.state_dict())
    with np.load(path) as a, np.load(again) as b:
        assert a.files == b.files and all(np.array_equal(a[k], b[k]) for k in a.files)
    x = seeded_input((1, 1, 32, 32))
    np.testing.assert_array_equal(loaded(x), source(x))


def test_weights_from_a_mapping():
    source = cg.load_network(NETS / "audio1d.toml", seed=3)
    net = cg.load_network(NETS / "audio1d.toml", weights=source.state_dict())
    np.testing.assert_array_equal(net.fc.weight, source.fc.weight)


def test_weights_that_do_not_fit_name_the_weights_file(tmp_path):
    state = cg.load_network(NETS / "lenet5.toml").state_dict()
    del state["fc3.bias"]
    state["fc2.weight"] = np.zeros((3, 3), np.float32)
    path = tmp_path / "bad.npz"
    np.savez(path, **state)
    with pytest.raises(cg.SpecFileError) as info:
        cg.load_network(NETS / "lenet5.toml", weights=path)
    message = str(info.value)
    assert str(path) in message and "lenet5.toml" in message
    assert "fc3.bias" in message and "fc2.weight" in message


@pytest.mark.parametrize("content,fragment", [
    (b"not a zip archive", "cannot read the weights"),
    (None, "no such weights file"),
    ("npy", "one array, not an .npz archive"),
    ("pickle", "cannot read the weights"),
])
def test_unreadable_weights_name_the_weights_file(tmp_path, content, fragment):
    path = tmp_path / "w.npz"
    if content == "npy":
        with open(path, "wb") as f:
            np.save(f, np.zeros(3))
    elif content == "pickle":
        np.savez(path, **{"conv1.weight": np.array([{"a": 1}], dtype=object)})
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(cg.SpecFileError) as info:
        cg.load_network(NETS / "lenet5.toml", weights=path)
    assert str(info.value).startswith(f"{path}: ") and fragment in str(info.value)


def test_weights_helper_loads_into_any_module():
    net = cg.load_network(NETS / "lenet5.toml")
    other = cg.load_network(NETS / "lenet5.toml", seed=2)
    load_weights(net, other.state_dict())
    np.testing.assert_array_equal(net.fc3.bias, other.fc3.bias)


# -- errors: every one names the file and the key -----------------------------------------

HEAD = "input_shape = [1, 1, 8, 8]\n"
CONV = '[[layer]]\ntype = "Conv2d"\nargs = [1, 2, 3]\n'

ERRORS = [
    ("invalid TOML", "input_shape = [1, 2\n", "", "invalid TOML"),
    ("missing input_shape", CONV, "input_shape", "missing"),
    ("bad input_shape", 'input_shape = [1, 0, 8]\n' + CONV, "input_shape", "positive"),
    ("unknown top-level key", HEAD + "inputs = 3\n" + CONV, "inputs", "unknown top-level key"),
    ("no layers", HEAD, "layer", "missing"),
    ("layer not a table", HEAD + "layer = [1]\n", "layer[0]", "table"),
    ("unknown type", HEAD + '[[layer]]\ntype = "Conv2D"\n', "layer[0].type",
     "did you mean 'Conv2d'"),
    ("missing type", HEAD + '[[layer]]\nargs = [1]\n', "layer[0].type", "missing"),
    ("not a layer class", HEAD + '[[layer]]\ntype = "Module"\n', "layer[0].type", "unknown"),
    ("no attribute lookup", HEAD + '[[layer]]\ntype = "functional"\n', "layer[0].type",
     "unknown"),
    ("no dotted lookup", HEAD + '[[layer]]\ntype = "os.system"\n', "layer[0].type", "unknown"),
    ("bad keyword value", HEAD + '[[layer]]\ntype = "Conv2d"\nargs = [1, 2]\nkernel_size = 0\n',
     "layer[0].kernel_size", ">= 1"),
    ("argument given twice", HEAD + CONV + "kernel_size = 3\n", "layer[0].kernel_size",
     "both in args (args[2]) and as a keyword"),
    ("bad positional value", HEAD + '[[layer]]\ntype = "Conv2d"\nargs = [1, 2, 0]\n',
     "layer[0].args[2]", "kernel_size"),
    ("bad string value", HEAD + CONV + 'padding_mode = "mirror"\n', "layer[0].padding_mode",
     "padding_mode"),
    ("unknown keyword", HEAD + CONV + "kernal_size = 3\n", "layer[0].kernal_size",
     "unknown argument of Conv2d"),
    ("missing argument", HEAD + '[[layer]]\ntype = "Conv2d"\nargs = [1, 2]\n', "layer[0].args",
     "kernel_size"),
    ("too many arguments", HEAD + '[[layer]]\ntype = "ReLU"\nargs = [true, 1, 2]\n',
     "layer[0].args", "ReLU"),
    ("args not a list", HEAD + '[[layer]]\ntype = "Conv2d"\nargs = 3\n', "layer[0].args",
     "list"),
    ("shapes do not fit", HEAD + CONV + '[[layer]]\ntype = "Flatten"\n'
     '[[layer]]\ntype = "Linear"\nargs = [100, 10]\n', "layer[2]", "does not fit"),
    ("wrong input rank", HEAD + '[[layer]]\ntype = "Conv1d"\nargs = [1, 2, 3]\n', "layer[0]",
     "does not fit"),
    ("duplicate names", HEAD + CONV + 'name = "a"\n' + CONV + 'name = "a"\n', "layer[1].name",
     "already"),
    ("dotted name", HEAD + CONV + 'name = "a.b"\n', "layer[0].name", "'.'"),
    ("reserved name", HEAD + CONV + 'name = "forward"\n', "layer[0].name", "forward"),
    ("nested unknown type", HEAD + '[[layer]]\ntype = "Sequential"\nlayers = [\n'
     '  { type = "ReLU" },\n  { type = "Relu" },\n]\n', "layer[0].layers[1].type", "ReLU"),
    ("nested bad argument", HEAD + '[[layer]]\ntype = "Sequential"\n'
     'layers = [{ type = "Conv2d", args = [1, 2, 3], stride = 0 }]\n',
     "layer[0].layers[0].stride", ">= 1"),
    ("empty Sequential", HEAD + '[[layer]]\ntype = "Sequential"\n', "layer[0].layers",
     "non-empty"),
    ("unknown container key", HEAD + '[[layer]]\ntype = "Residual"\n'
     'layers = [{ type = "ReLU" }]\n', "layer[0].layers", "unknown key for a Residual"),
    ("residual body type", HEAD + CONV + '[[layer]]\ntype = "Residual"\n'
     'body = [{ type = "ReLU" }, { type = "Batchnorm2d", args = [2] }]\n',
     "layer[1].body[1].type", "BatchNorm2d"),
    ("residual shapes", HEAD + '[[layer]]\ntype = "Residual"\n'
     'body = [{ type = "Conv2d", args = [1, 2, 3], padding = 1 }]\n', "layer[0]",
     "does not fit"),
    ("shortcut argument", HEAD + '[[layer]]\ntype = "Residual"\n'
     'body = [{ type = "ReLU" }]\nshortcut = [{ type = "Conv2d", args = [1, 1, 1], '
     'stride = -1 }]\n', "layer[0].shortcut[0].stride", ">= 1"),
    ("post clashes", HEAD + '[[layer]]\ntype = "Residual"\n'
     'body = [{ name = "act", type = "ReLU" }]\npost = { name = "act", type = "Tanh" }\n',
     "layer[0].post.name", "different"),
    ("post not a table", HEAD + '[[layer]]\ntype = "Residual"\n'
     'body = [{ type = "ReLU" }]\npost = [1]\n', "layer[0].post", "one layer table"),
    ("concat shapes", HEAD + '[[layer]]\ntype = "Concat"\nbranches = [\n'
     '  [{ type = "Identity" }],\n  [{ type = "MaxPool2d", args = [2] }],\n]\n', "layer[0]",
     "does not fit"),
    ("concat one branch", HEAD + '[[layer]]\ntype = "Concat"\n'
     'branches = [[{ type = "ReLU" }]]\n', "layer[0].branches", "at least two"),
]


@pytest.mark.parametrize("text,key,fragment", [e[1:] for e in ERRORS],
                         ids=[e[0] for e in ERRORS])
def test_errors_name_the_file_and_the_key(tmp_path, text, key, fragment):
    path = write(tmp_path, text, "broken.toml")
    with pytest.raises(cg.SpecFileError) as info:
        cg.load_network(path)
    error = info.value
    assert isinstance(error, ValueError)
    assert error.path == str(path)
    assert error.field == key
    message = str(error)
    assert message.startswith(f"{path}: {key}")
    assert fragment in message


def test_missing_network_file_names_it(tmp_path):
    path = tmp_path / "absent.toml"
    with pytest.raises(cg.SpecFileError, match="absent.toml: no such network file"):
        cg.load_network(path)


def test_compile_at_another_input_shape():
    net = cg.load_network(NETS / "lenet5.toml")
    graph = net.trace((3, 1, 32, 32))
    assert graph.shape_of(graph.outputs[0]) == (3, 10)
    assert net.input_shape == (1, 1, 32, 32)
