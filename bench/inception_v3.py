"""Inception v3, batch 1: convgen (c, llvm) next to PyTorch and ONNX Runtime, same run.

    python bench/inception_v3.py [--size 299] [--repeats 10] [--threads 1 2]

torchvision's Inception v3 layout in eval mode, in full: the 3x3/2 stem, Mixed_5b-5d
(InceptionA: 5x5 and double 3x3 branches, 3x3/1 average pooling branch), Mixed_6a
(InceptionB, 3x3/2 reduction), Mixed_6b-6e (InceptionC: factorized 1x7/7x1
convolutions), Mixed_7a (InceptionD), Mixed_7b-7c (InceptionE: split 1x3/3x1 branches),
global average pooling and the 2048 -> 1000 classifier; every branch joined by a channel
concatenation. Left out: the auxiliary classifier (torchvision runs it in training
only) and transform_input (off unless pretrained weights are loaded). Written once
against torch.nn and convgen.nn, as bench/resnet18.py does (BatchNorm statistics
randomized, every result checked against torch's output). --size must be at least 75.
"""

from __future__ import annotations

import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from net_compare import bench_main, cat_of  # noqa: E402


def inception_v3(nn, flatten):
    """torchvision's Inception v3 (no auxiliary classifier), written against either nn
    namespace."""
    cat = cat_of(nn)

    class BasicConv2d(nn.Module):
        def __init__(self, cin, cout, kernel_size, stride=1, padding=0):
            super().__init__()
            self.conv = nn.Conv2d(cin, cout, kernel_size, stride, padding, bias=False)
            self.bn = nn.BatchNorm2d(cout, eps=0.001)
            self.relu = nn.ReLU(inplace=True)

        def forward(self, x):
            return self.relu(self.bn(self.conv(x)))

    class InceptionA(nn.Module):
        def __init__(self, cin, pool_features):
            super().__init__()
            self.branch1x1 = BasicConv2d(cin, 64, 1)
            self.branch5x5_1 = BasicConv2d(cin, 48, 1)
            self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
            self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
            self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
            self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
            self.pool = nn.AvgPool2d(3, 1, 1)
            self.branch_pool = BasicConv2d(cin, pool_features, 1)

        def forward(self, x):
            b5 = self.branch5x5_2(self.branch5x5_1(x))
            b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
            return cat([self.branch1x1(x), b5, b3, self.branch_pool(self.pool(x))], 1)

    class InceptionB(nn.Module):
        def __init__(self, cin):
            super().__init__()
            self.branch3x3 = BasicConv2d(cin, 384, 3, stride=2)
            self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
            self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
            self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)
            self.pool = nn.MaxPool2d(3, 2)

        def forward(self, x):
            b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
            return cat([self.branch3x3(x), b3, self.pool(x)], 1)

    class InceptionC(nn.Module):
        def __init__(self, cin, c7):
            super().__init__()
            self.branch1x1 = BasicConv2d(cin, 192, 1)
            self.branch7x7_1 = BasicConv2d(cin, c7, 1)
            self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
            self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
            self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1)
            self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
            self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
            self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
            self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
            self.pool = nn.AvgPool2d(3, 1, 1)
            self.branch_pool = BasicConv2d(cin, 192, 1)

        def forward(self, x):
            b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
            d = self.branch7x7dbl_1(x)
            d = self.branch7x7dbl_3(self.branch7x7dbl_2(d))
            d = self.branch7x7dbl_5(self.branch7x7dbl_4(d))
            return cat([self.branch1x1(x), b7, d, self.branch_pool(self.pool(x))], 1)

    class InceptionD(nn.Module):
        def __init__(self, cin):
            super().__init__()
            self.branch3x3_1 = BasicConv2d(cin, 192, 1)
            self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
            self.branch7x7x3_1 = BasicConv2d(cin, 192, 1)
            self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
            self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
            self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)
            self.pool = nn.MaxPool2d(3, 2)

        def forward(self, x):
            b3 = self.branch3x3_2(self.branch3x3_1(x))
            b7 = self.branch7x7x3_2(self.branch7x7x3_1(x))
            b7 = self.branch7x7x3_4(self.branch7x7x3_3(b7))
            return cat([b3, b7, self.pool(x)], 1)

    class InceptionE(nn.Module):
        def __init__(self, cin):
            super().__init__()
            self.branch1x1 = BasicConv2d(cin, 320, 1)
            self.branch3x3_1 = BasicConv2d(cin, 384, 1)
            self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
            self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
            self.branch3x3dbl_1 = BasicConv2d(cin, 448, 1)
            self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
            self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
            self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
            self.pool = nn.AvgPool2d(3, 1, 1)
            self.branch_pool = BasicConv2d(cin, 192, 1)

        def forward(self, x):
            b3 = self.branch3x3_1(x)
            b3 = cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
            d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
            d = cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], 1)
            return cat([self.branch1x1(x), b3, d, self.branch_pool(self.pool(x))], 1)

    class InceptionV3(nn.Module):
        def __init__(self):
            super().__init__()
            self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
            self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
            self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
            self.maxpool1 = nn.MaxPool2d(3, 2)
            self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
            self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
            self.maxpool2 = nn.MaxPool2d(3, 2)
            self.Mixed_5b = InceptionA(192, 32)
            self.Mixed_5c = InceptionA(256, 64)
            self.Mixed_5d = InceptionA(288, 64)
            self.Mixed_6a = InceptionB(288)
            self.Mixed_6b = InceptionC(768, 128)
            self.Mixed_6c = InceptionC(768, 160)
            self.Mixed_6d = InceptionC(768, 160)
            self.Mixed_6e = InceptionC(768, 192)
            self.Mixed_7a = InceptionD(768)
            self.Mixed_7b = InceptionE(1280)
            self.Mixed_7c = InceptionE(2048)
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.dropout = nn.Dropout(0.5)
            self.fc = nn.Linear(2048, 1000)

        def forward(self, x):
            x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
            x = self.maxpool2(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(self.maxpool1(x))))
            x = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x)))
            x = self.Mixed_6e(self.Mixed_6d(self.Mixed_6c(self.Mixed_6b(self.Mixed_6a(x)))))
            x = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(x)))
            return self.fc(flatten(self.dropout(self.avgpool(x)), 1))

    return InceptionV3()


def main() -> int:
    return bench_main(inception_v3, "Inception v3", __doc__.splitlines()[0],
                      default_size=299)


if __name__ == "__main__":
    raise SystemExit(main())
