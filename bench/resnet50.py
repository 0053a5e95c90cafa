"""ResNet-50, batch 1: convgen (c, llvm) next to PyTorch and ONNX Runtime, same run.

    python bench/resnet50.py [--size 224] [--repeats 10] [--threads 1 2]

torchvision's ResNet-50 (bottleneck blocks, stride on the 3x3 convolution: "v1.5")
written once against torch.nn and convgen.nn, as bench/resnet18.py does for ResNet-18
(BatchNorm statistics randomized, every result checked against torch's output).
"""

from __future__ import annotations

import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from net_compare import bench_main  # noqa: E402

# (bottleneck width, blocks, first stride) per stage, torchvision's table
STAGES = [(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)]
EXPANSION = 4


def resnet50(nn, flatten):
    """torchvision's ResNet-50, written against either nn namespace."""

    class Bottleneck(nn.Module):
        def __init__(self, cin, width, stride=1):
            super().__init__()
            cout = width * EXPANSION
            self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(width)
            self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(width)
            self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(cout)
            self.relu = nn.ReLU(inplace=True)
            self.downsample = None
            if stride != 1 or cin != cout:
                self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                                nn.BatchNorm2d(cout))

        def forward(self, x):
            identity = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.relu(self.bn2(self.conv2(out)))
            return self.relu(self.bn3(self.conv3(out)) + identity)

    class ResNet50(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            cin = 64
            stages = []
            for width, blocks, stride in STAGES:
                layers = []
                for i in range(blocks):
                    layers.append(Bottleneck(cin, width, stride if i == 0 else 1))
                    cin = width * EXPANSION
                stages.append(nn.Sequential(*layers))
            self.layer1, self.layer2, self.layer3, self.layer4 = stages
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Linear(512 * EXPANSION, 1000)

        def forward(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(flatten(self.avgpool(x), 1))

    return ResNet50()


def main() -> int:
    return bench_main(resnet50, "ResNet-50", __doc__.splitlines()[0])


if __name__ == "__main__":
    raise SystemExit(main())
