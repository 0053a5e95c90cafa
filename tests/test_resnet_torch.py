"""The acceptance check of convgen.nn: torchvision's ResNet-18 written once, run by
torch and by convgen on every backend with torch's state_dict, gives torch's output."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from convgen import nn as cnn
from test_nn_modules import resnet18_classes

# whole networks: the backend argument runs over the backends that compile them
pytestmark = pytest.mark.networks

SHAPE = (1, 3, 64, 64)  # small enough for the suite; bench/resnet18.py runs 224x224


@pytest.fixture(scope="module")
def torch_and_convgen():
    torch.manual_seed(0)
    tnet = resnet18_classes(torch.nn)[1]().eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so folding is exercised
        for m in tnet.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    net = resnet18_classes(cnn)[1]()
    net.load_state_dict(tnet.state_dict())
    x = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    with torch.no_grad():
        want = tnet(torch.from_numpy(x)).numpy()
    return net, x, want


@pytest.mark.parametrize("threads", [1, 2])
def test_resnet18_matches_torch_eval(backend, threads, torch_and_convgen):
    net, x, want = torch_and_convgen
    model = net.compile(SHAPE, backend=backend, threads=threads)
    got = model(x)
    assert got.shape == want.shape == (1, 1000)
    error = np.abs(got - want).max() / np.abs(want).max()
    assert error < 1e-4, f"{backend}, {threads} threads: relative error {error:.2e}"
    assert np.array_equal(got.argmax(1), want.argmax(1))
    # every BatchNorm folded, every ReLU and residual add fused: only convs, pools, fc remain
    ops = [n.op for n in model.optimized.nodes]
    assert "batch_norm" not in ops and "activation" not in ops and "add" not in ops
    assert ops.count("conv") == 20
    text = model.summary(file=open("/dev/null", "w"))
    assert "folded into layer4.1.conv2" in text and "peak" in text
