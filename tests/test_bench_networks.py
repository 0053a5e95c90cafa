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
