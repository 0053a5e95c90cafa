"""Compare the backends in one run: build time and single-thread speed.

    python bench/backends.py [--repeats N] [--layers NAME ...]

Build time: median over fresh caches of plan + render + compile of one kernel
(the C compiler or LLVM's optimizer and code generator). Speed: median seconds
per call with a preallocated output, same spec and schedule for both backends,
one thread; GFLOP/s and llvm/c ratios are printed side by side.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import convgen as cg  # noqa: E402
from convgen.tolerance import max_error, tolerance  # noqa: E402

LAYERS = {
    "resnet18_layer1_3x3": cg.ConvSpec((1, 64, 56, 56), 64, kernel_size=3, padding=1,
                                       bias=False),
    "resnet18_layer2_down": cg.ConvSpec((1, 64, 56, 56), 128, kernel_size=3, stride=2,
                                        padding=1, bias=False),
    "resnet18_layer4_3x3": cg.ConvSpec((1, 512, 7, 7), 512, kernel_size=3, padding=1,
                                       bias=False),
}


def build_seconds(spec: cg.ConvSpec, backend: str, schedule: cg.Schedule | None,
                  repeats: int) -> float:
    """Median wall time of cg.compile into an empty cache (so it really compiles)."""
    times = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            os.environ["CONVGEN_CACHE_DIR"] = tmp
            start = time.perf_counter()
            cg.compile(spec, backend=backend, schedule=schedule)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def call_seconds(kernel: cg.Kernel, arrays, repeats: int) -> float:
    x, w, b = arrays
    out = np.empty(kernel.spec.output_shape, kernel.spec.dtype)
    kernel(x, w, b, out=out)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        kernel(x, w, b, out=out)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--layers", nargs="*", default=list(LAYERS), choices=list(LAYERS))
    args = parser.parse_args()
    backends = ("c", "llvm")
    print(f"convgen {cg.__version__}; 1 thread; medians of {args.repeats}")
    print(f"{'layer':<22} {'backend':<7} {'build s':>8} {'call ms':>9} {'GFLOP/s':>8} "
          f"{'max err':>9}")
    ratios = {"build": [], "speed": []}
    for name in args.layers:
        spec = LAYERS[name]
        # the default plan, the same on both backends, so they compare like for like
        schedule = dataclasses.replace(cg.default_schedule(spec, "llvm"), threads=1)
        rng = np.random.default_rng(0)
        arrays = (rng.uniform(-1, 1, spec.input_shape).astype(np.float32),
                  rng.uniform(-1, 1, spec.weight_shape).astype(np.float32), None)
        want = cg.reference(spec, *arrays)
        results = {}
        for backend in backends:
            build = build_seconds(spec, backend, schedule, args.repeats)
            kernel = cg.compile(spec, backend=backend, schedule=schedule)
            error = max_error(kernel(*arrays), want)
            assert error <= tolerance(spec), f"{name} {backend}: error {error}"
            call = call_seconds(kernel, arrays, args.repeats)
            results[backend] = (build, call)
            print(f"{name:<22} {backend:<7} {build:>8.3f} {call * 1e3:>9.2f} "
                  f"{spec.flops / call / 1e9:>8.2f} {error:>9.2e}", flush=True)
        ratios["build"].append(results["llvm"][0] / results["c"][0])
        ratios["speed"].append(results["c"][1] / results["llvm"][1])
        print(f"{'':<22} llvm/c: build time x{ratios['build'][-1]:.2f}, "
              f"speed x{ratios['speed'][-1]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
