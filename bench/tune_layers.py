"""Tune a few ResNet-18 layers and print default vs tuned times, as ratios.

    python bench/tune_layers.py [--budget 30] [--threads N] [--backend c] [--layers NAME ...]

Each layer is tuned with cg.tune (records go to the tuning database, so later
cg.compile calls use them); then the untuned default schedule and the winner are
timed again side by side in this process, alternating, median of --repeats calls.
The tuner's own table for each layer is printed too (--verbose).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import convgen as cg  # noqa: E402
from convgen.reference import random_arrays  # noqa: E402
from convgen.tuning.tuner import describe  # noqa: E402

LAYERS = {
    "resnet18_conv1": cg.ConvSpec((1, 3, 224, 224), 64, kernel_size=7, stride=2, padding=3,
                                  bias=False),
    "resnet18_layer1_3x3": cg.ConvSpec((1, 64, 56, 56), 64, kernel_size=3, padding=1,
                                       bias=False),
    "resnet18_layer2_down": cg.ConvSpec((1, 64, 56, 56), 128, kernel_size=3, stride=2,
                                        padding=1, bias=False),
    "resnet18_layer3_3x3": cg.ConvSpec((1, 256, 14, 14), 256, kernel_size=3, padding=1,
                                       bias=False),
    "resnet18_layer4_3x3": cg.ConvSpec((1, 512, 7, 7), 512, kernel_size=3, padding=1,
                                       bias=False),
}
DEFAULT_LAYERS = ("resnet18_layer1_3x3", "resnet18_layer2_down", "resnet18_layer4_3x3")


def side_by_side(spec: cg.ConvSpec, backend: str, schedules: list[cg.Schedule],
                 repeats: int) -> list[float]:
    """Median seconds per call of each schedule, calls interleaved so drift hits all alike."""
    kernels = [cg.compile(spec, backend, s) for s in schedules]
    x, w, b = random_arrays(spec)
    outs = [np.empty(spec.output_shape, spec.dtype) for _ in kernels]
    for kernel, out in zip(kernels, outs):
        kernel(x, w, b, out=out)
    times: list[list[float]] = [[] for _ in kernels]
    for _ in range(repeats):
        for i, (kernel, out) in enumerate(zip(kernels, outs)):
            start = time.perf_counter()
            kernel(x, w, b, out=out)
            times[i].append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=30.0, help="seconds per layer")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads (default: $CONVGEN_NUM_THREADS or the CPU count)")
    parser.add_argument("--backend", choices=cg.BACKENDS, default="c")
    parser.add_argument("--layers", nargs="+", choices=sorted(LAYERS), default=DEFAULT_LAYERS)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--verbose", action="store_true", help="print each tuner table")
    args = parser.parse_args()

    rows = []
    for name in args.layers:
        spec = LAYERS[name]
        result = cg.tune(spec, args.backend, budget=args.budget, threads=args.threads,
                         name=name)
        if args.verbose:
            print(result, end="\n\n")
        default = cg.default_schedule(spec, args.backend)
        same_threads = dataclasses.replace(default, threads=result.best.threads)
        t_default, t_threads, t_best = side_by_side(
            spec, args.backend, [default, same_threads, result.best], args.repeats)
        rows.append((name, len(result.measurements), result.candidates, t_default, t_threads,
                     t_best, describe(result.best)))

    threads = rows[0][-1].split("t=")[-1] if rows else "?"
    print(f"backend {args.backend}, budget {args.budget:g} s per layer, tuned threads {threads}")
    print(f"{'layer':<22} {'measured':>9} {'default ms':>11} {'default@t ms':>13} "
          f"{'tuned ms':>9} {'vs default':>11} {'vs default@t':>13}  tuned schedule")
    for name, measured, total, t_default, t_threads, t_best, schedule in rows:
        print(f"{name:<22} {f'{measured}/{total}':>9} {t_default * 1e3:11.3f} "
              f"{t_threads * 1e3:13.3f} {t_best * 1e3:9.3f} {t_default / t_best:10.2f}x "
              f"{t_threads / t_best:12.2f}x  {schedule}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
