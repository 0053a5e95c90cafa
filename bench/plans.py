"""The two plans on both backends, per bench layer: "w" and the default, in one run.

    python bench/plans.py [--threads N] [--repeats N] [--layers NAME ...]

For each layer of specs/bench/layers.toml: llvm and c with vectorize="w"
(default_w_schedule) and with default_schedule (the same on both backends: "co"
where it applies), all with a preallocated output, timed interleaved (one call of
each per round) and reported as medians in ms and GFLOP/s, with the ratios
llvm default / llvm "w" and llvm default / c default.
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
from convgen.plan.defaults import default_w_schedule  # noqa: E402
from convgen.specfile import load_specfile  # noqa: E402
from convgen.tolerance import max_error, tolerance  # noqa: E402

LAYERS = Path(__file__).resolve().parent.parent / "specs" / "bench" / "layers.toml"
VARIANTS = (("llvm", "w"), ("llvm", "default"), ("c", "w"), ("c", "default"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--layers", nargs="*", default=None, help="names in layers.toml")
    args = parser.parse_args()
    entries = [e for e in load_specfile(LAYERS) if not args.layers or e.name in args.layers]
    print(f"convgen {cg.__version__}; {args.threads} thread(s); medians of {args.repeats} "
          "interleaved rounds; ms (GFLOP/s)")
    header = "".join(f"{f'{b} {p}':>16} " for b, p in VARIANTS)
    print(f"{'layer':<24}{header} plan  llvm default/w  llvm/c default")
    for entry in entries:
        spec = entry.spec
        schedules = {"w": default_w_schedule(spec), "default": cg.default_schedule(spec, "c")}
        kernels = {(b, p): cg.compile(spec, backend=b, schedule=dataclasses.replace(
                       schedules[p], threads=args.threads)) for b, p in VARIANTS}
        x, w, b = random_arrays(spec, 0)
        want = cg.reference(spec, x, w, b)
        out = np.empty(spec.output_shape, spec.dtype)
        for key, kernel in kernels.items():  # warm-up and check
            kernel(x, w, b, out=out)
            assert max_error(out, want) <= tolerance(spec), f"{entry.name} {key}"
        times = {key: [] for key in kernels}
        for _ in range(args.repeats):
            for key, kernel in kernels.items():
                start = time.perf_counter()
                kernel(x, w, b, out=out)
                times[key].append(time.perf_counter() - start)
        ms = {key: statistics.median(t) for key, t in times.items()}
        cells = "".join(f"{ms[k] * 1e3:8.2f} ({spec.flops / ms[k] / 1e9:4.0f}) "
                        for k in VARIANTS)
        print(f"{entry.name:<24}{cells} {schedules['default'].vectorize:<4} "
              f"{ms['llvm', 'w'] / ms['llvm', 'default']:14.2f} "
              f"{ms['c', 'default'] / ms['llvm', 'default']:15.2f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
