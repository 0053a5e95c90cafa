"""A whole ResNet-style network built in ONNX form: imported, fused (BatchNorm folded,
residual add and ReLU in the convolution epilogue), compiled on c and llvm and compared
with onnxruntime; and ``convgen run model.onnx`` on it."""

from __future__ import annotations

import numpy as np
import pytest

from onnx_helpers import BACKENDS, assert_close, make_model, node, rand, run_ort

import convgen as cg
from convgen.cli.main import main

# whole networks: the backend argument runs over the backends that compile them
pytestmark = pytest.mark.networks


class _Net:
    """Accumulates nodes and initializers with readable names (as PyTorch exports them)."""

    def __init__(self):
        self.nodes, self.init, self.seed = [], {}, 10

    def param(self, name, *shape, low=-0.5, high=0.5):
        self.seed += 1
        self.init[name] = rand(*shape, seed=self.seed, low=low, high=high)
        return name

    def conv_bn(self, x, name, cin, cout, k, stride, relu=True):
        w = self.param(f"{name}.weight", cout, cin, k, k)
        self.nodes.append(node("Conv", [x, w], [f"{name}.out"], name=f"/{name}/Conv",
                               kernel_shape=[k, k], strides=[stride, stride],
                               pads=[k // 2] * 4))
        bn = name.replace("conv", "bn").replace("downsample.0", "downsample.1")
        params = [self.param(f"{bn}.weight", cout), self.param(f"{bn}.bias", cout),
                  self.param(f"{bn}.running_mean", cout),
                  self.param(f"{bn}.running_var", cout, low=0.5, high=1.5)]
        self.nodes.append(node("BatchNormalization", [f"{name}.out"] + params, [f"{bn}.out"],
                               name=f"/{bn}/BatchNormalization", epsilon=1e-5))
        if not relu:
            return f"{bn}.out"
        self.nodes.append(node("Relu", [f"{bn}.out"], [f"{bn}.relu"], name=f"/{bn}/Relu"))
        return f"{bn}.relu"

    def block(self, x, name, cin, cout, stride):
        out = self.conv_bn(x, f"{name}.conv1", cin, cout, 3, stride)
        out = self.conv_bn(out, f"{name}.conv2", cout, cout, 3, 1, relu=False)
        shortcut = x
        if stride != 1 or cin != cout:
            shortcut = self.conv_bn(x, f"{name}.downsample.0", cin, cout, 1, stride, relu=False)
        self.nodes.append(node("Add", [out, shortcut], [f"{name}.add"], name=f"/{name}/Add"))
        self.nodes.append(node("Relu", [f"{name}.add"], [f"{name}.out"], name=f"/{name}/Relu"))
        return f"{name}.out"


def resnet_model(batch="N", opset=13):
    net = _Net()
    x = net.conv_bn("input", "conv1", 3, 8, 3, 1)
    net.nodes.append(node("MaxPool", [x], ["pool"], name="/maxpool/MaxPool",
                          kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]))
    x = net.block("pool", "layer1.0", 8, 8, 1)
    x = net.block(x, "layer2.0", 8, 16, 2)
    x = net.block(x, "layer2.1", 16, 16, 1)
    net.nodes += [
        node("GlobalAveragePool", [x], ["gap"], name="/avgpool/GlobalAveragePool"),
        # torch.flatten(x, 1) as exported with a dynamic batch: a shape subgraph
        node("Shape", ["gap"], ["shape"], name="/Shape"),
        node("Gather", ["shape", "zero"], ["batch"], name="/Gather", axis=0),
        node("Unsqueeze", ["batch", "axes0"], ["batch1"], name="/Unsqueeze"),
        node("Concat", ["batch1", "minus1"], ["target"], name="/Concat", axis=0),
        node("Reshape", ["gap", "target"], ["flat"], name="/Reshape"),
        node("Gemm", ["flat", net.param("fc.weight", 10, 16), net.param("fc.bias", 10)],
             ["logits"], name="/fc/Gemm", transB=1),
    ]
    net.init.update(zero=np.array(0, np.int64), axes0=np.array([0], np.int64),
                    minus1=np.array([-1], np.int64))
    return make_model(net.nodes, {"input": (batch, 3, 16, 16)}, ["logits"], net.init,
                      opset=opset)


@pytest.fixture(scope="module")
def model():
    return resnet_model()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("batch", [1, 2])
def test_resnet_matches_onnxruntime(model, backend, batch):
    imported = cg.from_onnx(model, input_shape=(batch, 3, 16, 16))
    compiled = imported.compile(backend=backend)
    x = rand(batch, 3, 16, 16)
    y = compiled(x)
    (want,) = run_ort(model, [x])
    assert y.shape == (batch, 10)
    assert_close(y, want, 1e-4, 1e-5, f"{backend} vs onnxruntime")
    assert_close(compiled.reference(x), want, 1e-4, 1e-5, "oracle vs onnxruntime")

    optimized = [n.op for n in compiled.optimized.nodes]
    assert "batch_norm" not in optimized  # every BatchNorm folded into its convolution
    assert optimized.count("conv") == 8 and "add" not in optimized  # residual adds fused
    residual = [n for n in compiled.optimized.nodes if n.attrs.get("residual")]
    assert [n.fused[-2:] for n in residual] == [
        ["/layer1.0/Add", "/layer1.0/Relu"], ["/layer2.0/Add", "/layer2.0/Relu"],
        ["/layer2.1/Add", "/layer2.1/Relu"]]


def test_symbolic_batch_needs_an_input_shape(model):
    imported = cg.from_onnx(model)
    assert imported.input_names == ["input"] and imported.output_names == ["logits"]
    assert imported.input_shapes == [(None, 3, 16, 16)]
    with pytest.raises(cg.OnnxImportError, match="symbolic dims.*input_shape"):
        imported.graph
    compiled = imported.compile(input_shape=(3, 3, 16, 16), backend="c")
    assert compiled.input_shapes == [(3, 3, 16, 16)] and compiled.output_shapes == [(3, 10)]


def test_summary_names_the_onnx_layers(model, capsys):
    text = cg.from_onnx(model, input_shape=(1, 3, 16, 16)).summary()
    assert text in capsys.readouterr().out
    row = next(line for line in text.splitlines()
               if line.startswith("/layer1.0.bn1/BatchNormalization "))
    assert row.split()[1] == "BatchNormalization" and "folded into /layer1.0.conv1/Conv" in row
    assert "/fc/Gemm" in text and "1x10" in text
    assert "/Shape" not in text  # the shape subgraph was folded away


def test_cli_run_onnx_model(model, tmp_path, capsys):
    path = tmp_path / "resnet.onnx"
    path.write_bytes(model.SerializeToString())
    x = rand(2, 3, 16, 16, seed=4)
    np.save(tmp_path / "x.npy", x)
    target = tmp_path / "y.npy"
    code = main(["run", str(path), "--input", str(tmp_path / "x.npy"), "-o", str(target),
                 "--check", "--summary", "--repeat", "2"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "(ONNX, opset 13): input input 2x3x16x16" in out
    assert "/fc/Gemm" in out and "(tolerance 1e-03): ok" in out
    assert "output   2x10 float32" in out and "row 1: argmax" in out
    (want,) = run_ort(model, [x])
    assert_close(np.load(target), want, 1e-4, 1e-5, "convgen run vs onnxruntime")


def test_cli_run_onnx_symbolic_dims(model, tmp_path, capsys):
    path = tmp_path / "resnet.onnx"
    path.write_bytes(model.SerializeToString())
    assert main(["run", str(path), "--repeat", "1"]) == 2
    err = capsys.readouterr().err
    assert "symbolic dims; give --input X.npy or --input-shape" in err and "?x3x16x16" in err
    code = main(["run", str(path), "--input-shape", "1,3,16,16", "--backend", "llvm",
                 "--repeat", "1", "--check"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "input input 1x3x16x16" in out and "backend llvm" in out and ": ok" in out


def test_cli_run_onnx_errors(model, tmp_path, capsys):
    path = tmp_path / "resnet.onnx"
    path.write_bytes(model.SerializeToString())
    assert main(["run", str(path), "--input-shape", "1,4,16,16"]) == 2
    assert "changes the static dim 1" in capsys.readouterr().err
    assert main(["run", str(path), "--weights", "w.npz"]) == 2
    assert "carries its own weights" in capsys.readouterr().err
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00\x01 not a model")
    assert main(["run", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("convgen: error: ") and "not an ONNX model" in err
    assert "Traceback" not in err


def test_resnet_in_float64(model):
    compiled = cg.from_onnx(model, input_shape=(1, 3, 16, 16)).compile(backend="c",
                                                                       dtype="float64")
    x = rand(1, 3, 16, 16).astype(np.float64)
    y = compiled(x)
    assert y.dtype == np.float64
    np.testing.assert_allclose(y, compiled.reference(x), rtol=1e-10, atol=1e-12)
    (want,) = run_ort(model, [x.astype(np.float32)])
    assert_close(y, want, 1e-4, 1e-5, "float64 vs onnxruntime (float32)")
