"""MobileNetV2, batch 1: convgen (c, llvm) next to PyTorch and ONNX Runtime, same run.

    python bench/mobilenet_v2.py [--size 224] [--repeats 10] [--threads 1 2]

torchvision's MobileNetV2 (width 1.0) written once against torch.nn and convgen.nn, as
bench/resnet18.py does for ResNet-18 (BatchNorm statistics randomized, every result
checked against torch's output). Its 17 depthwise layers run on the blocked depthwise
plan where the values around them are blocked (docs/layout.md). The 24-channel stage is
not a whole number of 16-lane blocks, so it stays NCHW.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from convgen import nn as cnn  # noqa: E402
from net_compare import compare_networks  # noqa: E402

# (expansion t, output channels c, repeats n, first stride s), torchvision's table
SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
            (6, 160, 3, 2), (6, 320, 1, 1)]


def mobilenet_v2(nn, flatten):
    """torchvision's MobileNetV2, written against either nn namespace."""

    def conv_bn(cin, cout, kernel, stride, groups=1, relu=True):
        layers = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups,
                            bias=False), nn.BatchNorm2d(cout)]
        return layers + ([nn.ReLU6()] if relu else [])

    class InvertedResidual(nn.Module):
        def __init__(self, cin, cout, stride, expand):
            super().__init__()
            hidden = cin * expand
            layers = conv_bn(cin, hidden, 1, 1) if expand != 1 else []
            layers += conv_bn(hidden, hidden, 3, stride, groups=hidden)
            layers += conv_bn(hidden, cout, 1, 1, relu=False)
            self.conv = nn.Sequential(*layers)
            self.use_res = stride == 1 and cin == cout

        def forward(self, x):
            return x + self.conv(x) if self.use_res else self.conv(x)

    class MobileNetV2(nn.Module):
        def __init__(self):
            super().__init__()
            layers = conv_bn(3, 32, 3, 2)
            cin = 32
            for t, c, n, s in SETTINGS:
                for i in range(n):
                    layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                    cin = c
            layers += conv_bn(cin, 1280, 1, 1)
            self.features = nn.Sequential(*layers)
            self.pool = nn.AdaptiveAvgPool2d((1, 1))
            self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, 1000))

        def forward(self, x):
            return self.classifier(flatten(self.pool(self.features(x)), 1))

    return MobileNetV2()


def main() -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()

    torch.manual_seed(0)
    tnet = mobilenet_v2(torch.nn, torch.flatten).eval()
    with torch.no_grad():
        for m in tnet.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    net = mobilenet_v2(cnn, cnn.functional.flatten)
    net.load_state_dict(tnet.state_dict())
    shape = (1, 3, args.size, args.size)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    with torch.no_grad():
        want = tnet(torch.from_numpy(x)).numpy()
    compare_networks(tnet, net, x, want, f"MobileNetV2 {shape}, batch 1", args.repeats,
                     args.threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
