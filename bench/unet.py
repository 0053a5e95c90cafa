"""U-Net, batch 1: convgen (c, llvm) next to PyTorch and ONNX Runtime, same run.

    python bench/unet.py [--size 128] [--repeats 10] [--threads 1 2]

The U-Net of Ronneberger et al. in its common padded form: 4 levels, 64 base channels
(64-128-256-512, bottleneck 1024), each level two 3x3 convolutions (pad 1) with
BatchNorm and ReLU; 2x2/2 max pooling down; ConvTranspose2d 2x2/2 up, its output
concatenated with the encoder's skip connection; a 1x1 convolution to 2 classes.
Written once against torch.nn and convgen.nn, as bench/resnet18.py does (BatchNorm
statistics randomized, every result checked against torch's output). The default input
is 1x3x128x128 (--size must be a multiple of 16): 24 GFLOP of direct convolution a
call; at 256x256 it is 96 GFLOP and one interleaved run on 2 cores takes many minutes.
"""

from __future__ import annotations

import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from net_compare import bench_main, cat_of  # noqa: E402

BASE = 64
LEVELS = 4
CLASSES = 2


def unet(nn, flatten):
    """A 4-level U-Net with 64 base channels, written against either nn namespace
    (``flatten`` is unused: the output is a per-pixel map)."""
    cat = cat_of(nn)

    def double_conv(cin, cout):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout),
                             nn.ReLU(inplace=True),
                             nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout),
                             nn.ReLU(inplace=True))

    class Up(nn.Module):
        def __init__(self, cin, cout):
            super().__init__()
            self.up = nn.ConvTranspose2d(cin, cout, 2, 2)
            self.conv = double_conv(2 * cout, cout)

        def forward(self, x, skip):
            return self.conv(cat([skip, self.up(x)], 1))

    class UNet(nn.Module):
        def __init__(self):
            super().__init__()
            widths = [BASE * 2 ** i for i in range(LEVELS + 1)]
            self.inc = double_conv(3, BASE)
            self.pool = nn.MaxPool2d(2, 2)
            self.downs = nn.ModuleList([double_conv(widths[i], widths[i + 1])
                                        for i in range(LEVELS)])
            self.ups = nn.ModuleList([Up(widths[i + 1], widths[i])
                                      for i in reversed(range(LEVELS))])
            self.outc = nn.Conv2d(BASE, CLASSES, 1)

        def forward(self, x):
            skips = [self.inc(x)]
            for down in self.downs:
                skips.append(down(self.pool(skips[-1])))
            x = skips.pop()
            for up in self.ups:
                x = up(x, skips.pop())
            return self.outc(x)

    return UNet()


def main() -> int:
    return bench_main(unet, "U-Net", __doc__.splitlines()[0], default_size=128)


if __name__ == "__main__":
    raise SystemExit(main())
