"""Transposed convolutions: one backend's two plans next to PyTorch and ONNX Runtime.

    python bench/transposed.py [--backend c|llvm] [--threads 1 2] [--rounds 15]
                               [--layers NAME ...] [--cpu-time]

Layers: the bench list's 4x4/2 256->128 layer at batch 16 (specs/bench/layers.toml) and
the ConvTranspose2d layers of the DCGAN generator (specs/nets/dcgan_generator.toml, batch
1). Runtimes, all on the same arrays in this process:

- cg_w: vectorize="w" (lanes hold output columns; columns visited phase by phase, but
  about half the FMAs land on zero vectors), the plan for transposed specs before "co";
- cg_co: vectorize="co" (lanes hold output channels, rows split by stride phase), the
  default on both backends for 16+ output channels per group;
- torch / torch_cl (NCHW, channels_last with the layout change counted) and ort.

Each round calls every runtime in turn (interleaved, so a noisy neighbour slows all of
them alike), enough times for about 20 ms; the table shows medians over the rounds and
the best peer's time over each convgen time (> 1: convgen is faster). Speed is printed,
never asserted.
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
from convgen.bench.peers import Skip, ort_runner, torch_runner  # noqa: E402
from convgen.reference import random_arrays  # noqa: E402
from convgen.plan.defaults import default_w_schedule  # noqa: E402
from convgen.tolerance import max_error, tolerance  # noqa: E402


def _convT(shape, cout, k=4, s=2, p=1):
    return cg.ConvSpec(shape, cout, kernel_size=k, stride=s, padding=p, transposed=True,
                       bias=False)


LAYERS = {
    "convT_4x4s2_256_128_n16": _convT((16, 256, 16, 16), 128),
    "dcgan_1_100_128_1x1": _convT((1, 100, 1, 1), 128, s=1, p=0),
    "dcgan_2_128_64_4x4": _convT((1, 128, 4, 4), 64),
    "dcgan_3_64_32_8x8": _convT((1, 64, 8, 8), 32),
    "dcgan_4_32_16_16x16": _convT((1, 32, 16, 16), 16),
    "dcgan_5_16_3_32x32": _convT((1, 16, 32, 32), 3),
}


def runners(spec: cg.ConvSpec, x, w, threads: int, backend: str = "c") -> dict:
    found = {}
    base = cg.default_schedule(spec, backend)
    plans = {"cg_w": default_w_schedule(spec, threads)}
    if base.vectorize == "co":
        plans["cg_co"] = dataclasses.replace(base, threads=threads)
    for name, schedule in plans.items():
        kernel = cg.compile(spec, backend=backend, schedule=schedule)
        out = np.empty(spec.output_shape, spec.dtype)
        found[name] = (lambda k, o: lambda: k(x, w, None, out=o))(kernel, out)
    try:
        import torch

        torch.set_num_threads(threads)
        for cl in (False, True):
            try:
                r = torch_runner(torch, spec, x, w, channels_last=cl)
                found["torch_cl" if cl else "torch"] = r.call
            except Skip:
                pass
    except ImportError:
        pass
    try:
        import onnx
        import onnxruntime as ort

        found["ort"] = ort_runner(onnx, ort, spec, x, w, threads).call
    except ImportError:
        pass
    return found


def as_array(y) -> np.ndarray:
    if isinstance(y, np.ndarray):
        return y
    return y.contiguous().numpy() if hasattr(y, "contiguous") else np.asarray(y)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["c", "llvm"], default="c")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--layers", nargs="+", choices=list(LAYERS), default=list(LAYERS))
    parser.add_argument("--cpu-time", action="store_true",
                        help="process CPU time instead of wall time (1 thread only)")
    args = parser.parse_args()
    clock = time.process_time if args.cpu_time else time.perf_counter
    for threads in args.threads:
        print(f"\n== {args.backend}, {threads} thread(s); median of {args.rounds}"
              " interleaved rounds ==")
        print(f"{'layer':<26}" + "".join(f"{n:>16}" for n in
                                        ("cg_w", "cg_co", "torch", "torch_cl", "ort"))
              + f"{'peer/co':>9}{'co/w':>7}")
        for name in args.layers:
            spec = LAYERS[name]
            x, w, _ = random_arrays(spec)
            want = cg.reference(spec, x, w, None)
            calls = runners(spec, x, w, threads, args.backend)
            reps = {}
            for n, f in calls.items():
                err = max_error(as_array(f()), want)
                if err > tolerance(spec):
                    raise SystemExit(f"{name} {n}: max error {err} > {tolerance(spec)}")
                f()
                t0 = time.perf_counter()
                f()
                reps[n] = max(1, int(0.02 / max(time.perf_counter() - t0, 1e-6)))
            times = {n: [] for n in calls}
            for _ in range(args.rounds):
                for n, f in calls.items():
                    t0 = clock()
                    for _ in range(reps[n]):
                        f()
                    times[n].append((clock() - t0) / reps[n])
            med = {n: statistics.median(v) for n, v in times.items()}
            gflop = spec.flops / 1e9
            cells = "".join(f"{med[n] * 1e3:8.3f}ms{gflop / med[n]:6.0f}" if n in med
                            else f"{'-':>16}" for n in ("cg_w", "cg_co", "torch", "torch_cl",
                                                         "ort"))
            peers = [v for n, v in med.items() if not n.startswith("cg")]
            co = med.get("cg_co", med["cg_w"])
            ratio = f"{min(peers) / co:9.2f}" if peers else f"{'-':>9}"
            print(f"{name:<26}{cells}{ratio}{med['cg_w'] / co:7.2f}")
        print("cells: ms and GFLOP/s (spec.flops, the scatter definition's count)")


if __name__ == "__main__":
    main()
