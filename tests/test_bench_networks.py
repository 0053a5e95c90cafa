"""The network benches of bench/ (ResNet-50, Inception v3, U-Net) build and match torch.

Each network is built once against torch.nn and convgen.nn by its bench file's own
builder (bench/net_compare.build_pair: BatchNorm statistics randomized, state_dict
loaded), compiled at a tiny input on the c backend with 1 thread, and checked against
torch's output, so the bench files cannot rot. Speed is bench/'s business, never
asserted here.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import inception_v3  # noqa: E402
import resnet50  # noqa: E402
import unet  # noqa: E402
from net_compare import build_pair  # noqa: E402


# (builder, smallest sensible input side): ResNet-50's 32 leaves 1x1 at layer4;
# Inception v3 needs at least 75 (Mixed_7a's 3x3/2 reductions); U-Net needs a multiple
# of 16 (four 2x2/2 poolings).
CASES = [(resnet50.resnet50, 32), (inception_v3.inception_v3, 75), (unet.unet, 16)]


@pytest.mark.parametrize("build,size", CASES, ids=[b.__name__ for b, _ in CASES])
def test_bench_network_matches_torch(build, size):
    tnet, net = build_pair(build)
    x = np.random.default_rng(1).standard_normal((1, 3, size, size)).astype(np.float32)
    with torch.no_grad():
        want = tnet(torch.from_numpy(x)).numpy()
    got = net.compile(x.shape, backend="c", threads=1)(x)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))


def tiny_net(nn, flatten):
    """Two convolutions (a 3x3 and a depthwise 3x3/2) and a ReLU: enough to profile."""
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8))


def test_profile_layers_times_each_convolution_and_matches_onnxruntime_nodes():
    """bench/profile_layers.py: every conv step of the compiled network timed alone on its
    own plan, and ONNX Runtime's profiled Conv nodes matched to them by shape."""
    pytest.importorskip("onnxruntime")
    import io

    import profile_layers

    tnet, net = build_pair(tiny_net)
    x = np.random.default_rng(1).standard_normal((1, 3, 12, 12)).astype(np.float32)
    model = net.compile(x.shape, backend="c", threads=1)
    layers = profile_layers.convgen_layers(model, "c", repeats=2)
    assert [row["spec"].groups for row in layers] == [1, 8]
    assert all(row["ms"] > 0 for row in layers)
    assert layers[1]["plan"] == "dw"  # the staged depthwise plan, NCHW in and out
    buffer = io.BytesIO()
    torch.onnx.export(tnet, torch.from_numpy(x), buffer, dynamo=False)
    rows, total_ms = profile_layers.ort_layers(buffer.getvalue(), x, threads=1, runs=2)
    # ONNX Runtime's NCHWc rewrite runs the 8 output channels as a block of 16
    keys = [key for key, _, _, _ in rows]
    assert keys == [profile_layers.conv_key(row["spec"].input_shape, row["spec"].weight_shape)
                    for row in layers] == [((12, 12), (3, 3), 16), ((12, 12), (3, 3), 16)]
    assert all(ms >= 0 for _, _, ms, _ in rows) and total_ms > 0
