"""A model exported by torch.onnx (the TorchScript exporter, dynamic batch): its shape
subgraphs fold away, and convgen matches PyTorch and onnxruntime on c and llvm."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest

from onnx_helpers import BACKENDS, assert_close, onnx, run_ort

import convgen as cg

# whole networks: the backend argument runs over the backends that compile them
pytestmark = pytest.mark.networks

torch = pytest.importorskip("torch")


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.pool = torch.nn.MaxPool2d(3, 2, 1, ceil_mode=True)
        self.conv2 = torch.nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.up = torch.nn.ConvTranspose2d(8, 4, 4, stride=2, padding=1)
        self.avg = torch.nn.AvgPool2d(2, count_include_pad=False)
        self.fc = torch.nn.Linear(324, 10)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv1(x)))
        x = self.pool(x)
        x = x + torch.nn.functional.leaky_relu(self.conv2(x), 0.1)
        x = torch.sigmoid(self.up(x)) * 2.0
        x = self.avg(x)
        x = x.view(x.size(0), -1)
        x = torch.nn.functional.pad(x, (1, 1))[:, 1:-1]
        return torch.log_softmax(self.fc(x), dim=1)


@pytest.fixture(scope="module")
def exported():
    torch.manual_seed(0)
    net = Net().eval()
    with torch.no_grad():
        net.bn.running_mean.uniform_(-1, 1)
        net.bn.running_var.uniform_(0.5, 2)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(1, 3, 16, 16),), buffer, dynamo=False,
                          opset_version=13, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "N"}, "y": {0: "N"}})
    return net, onnx.load_from_string(buffer.getvalue())


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_export_matches_pytorch_and_onnxruntime(exported, backend):
    net, model = exported
    ops = {n.op_type for n in model.graph.node}
    assert {"Shape", "Gather", "ConstantOfShape", "Slice"} <= ops  # exporter subgraphs
    x = np.random.default_rng(1).standard_normal((2, 3, 16, 16)).astype(np.float32)
    compiled = cg.from_onnx(model).compile(input_shape=x.shape, backend=backend)
    y = compiled(x)
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    assert_close(y, want, 1e-4, 1e-5, f"{backend} vs PyTorch")
    assert_close(y, run_ort(model, [x])[0], 1e-4, 1e-5, f"{backend} vs onnxruntime")
    graph_ops = [n.op for n in compiled.graph.nodes]
    assert "constant" not in graph_ops  # every shape computation folded at import
    # the exporter folded the BatchNorm itself; "* 2.0" is a per-channel affine node
    assert [n.module for n in compiled.graph.nodes if n.op == "batch_norm"] == ["Mul"]


class Pooled(torch.nn.Module):
    """What torchvision classifiers end with: global average pooling, flatten, linear."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.dw = torch.nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.fc = torch.nn.Linear(8, 5)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        x = torch.nn.functional.max_pool2d(x, 2)
        x = x + torch.nn.functional.relu6(self.dw(x))
        x = torch.nn.functional.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


@pytest.fixture(scope="module")
def exported_dynamo():
    """torch 2.13's default exporter (dynamo=True; onnxscript, the export extra)."""
    pytest.importorskip("onnxscript")
    torch.manual_seed(0)
    net = Pooled().eval()
    with torch.no_grad():
        net.bn.running_mean.uniform_(-1, 1)
        net.bn.running_var.uniform_(0.5, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(net, (torch.zeros(2, 3, 12, 12),), dynamo=True)
    return net, program.model_proto


@pytest.mark.parametrize("backend", BACKENDS)
def test_dynamo_export_matches_pytorch_and_onnxruntime(exported_dynamo, backend):
    net, model = exported_dynamo
    assert model.opset_import[0].version >= 18
    assert "ReduceMean" in {n.op_type for n in model.graph.node}  # the global pooling
    x = np.random.default_rng(2).standard_normal((2, 3, 12, 12)).astype(np.float32)
    compiled = cg.from_onnx(model).compile(backend=backend)
    y = compiled(x)
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    assert_close(y, want, 1e-4, 1e-5, f"{backend} vs PyTorch")
    assert_close(y, run_ort(model, [x])[0], 1e-4, 1e-5, f"{backend} vs onnxruntime")
