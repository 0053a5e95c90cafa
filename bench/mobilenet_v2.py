"""MobileNetV2, batch 1: convgen (c, llvm) next to PyTorch and ONNX Runtime, same run.

    python bench/mobilenet_v2.py [--size 224] [--repeats 10] [--threads 1 2]

torchvision's MobileNetV2 (width 1.0) written once against torch.nn and convgen.nn, as
bench/resnet18.py does for ResNet-18 (BatchNorm statistics randomized, every result
checked against torch's output). Its 17 depthwise layers run on the blocked depthwise
plan where the values around them are blocked (docs/layout.md). The 24-channel stage is
not a whole number of 16-lane blocks, so it stays NCHW.
"""

from __future__ import annotations

import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from net_compare import bench_main  # noqa: E402

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
    return bench_main(mobilenet_v2, "MobileNetV2", __doc__.splitlines()[0])


if __name__ == "__main__":
    raise SystemExit(main())
