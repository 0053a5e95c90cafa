"""ResNet-18, batch 1: convgen (c, llvm) next to PyTorch and ONNX Runtime, same run.

    python bench/resnet18.py [--size 224] [--repeats 10] [--threads 1 2]

The same architecture is written once and instantiated with torch.nn and with
convgen.nn; convgen loads torch's state_dict (BatchNorm statistics randomized,
so folding is exercised) and every result is checked against torch's output.
Runtimes are timed interleaved (convgen.bench.measure.measure_interleaved: --repeats rounds, each
giving every runtime a warm-up (50 ms of calls) and two timed calls), the
median per thread count.
ONNX Runtime runs the model exported by torch.onnx (skipped, and said so, when
onnx/onnxruntime are not installed: pip install -e '.[bench]'); convgen also imports
that ONNX file with cg.from_onnx ("convgen c (from ONNX)").
"""

from __future__ import annotations

import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from net_compare import bench_main  # noqa: E402


def resnet18(nn, flatten):
    """torchvision's ResNet-18, written against either nn namespace."""

    class BasicBlock(nn.Module):
        def __init__(self, cin, cout, stride=1):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.relu = nn.ReLU(inplace=True)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.downsample = None
            if stride != 1 or cin != cout:
                self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                                nn.BatchNorm2d(cout))

        def forward(self, x):
            identity = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            return self.relu(self.bn2(self.conv2(out)) + identity)

    class ResNet18(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            self.layer1 = nn.Sequential(BasicBlock(64, 64), BasicBlock(64, 64))
            self.layer2 = nn.Sequential(BasicBlock(64, 128, 2), BasicBlock(128, 128))
            self.layer3 = nn.Sequential(BasicBlock(128, 256, 2), BasicBlock(256, 256))
            self.layer4 = nn.Sequential(BasicBlock(256, 512, 2), BasicBlock(512, 512))
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Linear(512, 1000)

        def forward(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(flatten(self.avgpool(x), 1))

    return ResNet18()


def main() -> int:
    return bench_main(resnet18, "ResNet-18", __doc__.splitlines()[0])


if __name__ == "__main__":
    raise SystemExit(main())
