"""Single convolution layers: convgen (its CPU backends) next to NumPy, PyTorch and ONNX Runtime.

    python bench/layers.py [--threads 1 2] [--repeats 10] [--layers NAME ...] [--quick]

The peers live in convgen.bench.peers (shared with `convgen bench`, which counts
torch_cl's layout conversions; this script keeps them outside the timed call).
Every runtime is measured in this process, on the same arrays (batch 1, float32,
uniform in [-1, 1]), and checked against cg.reference: the worst error of a row is
printed and the row is marked FAIL when a runtime exceeds convgen.tolerance. Each
runtime is timed in its own block -- one warm-up call, then --repeats calls, median --
with a short pause between blocks, so one runtime's spinning worker threads do not
eat into the next one's time. Peers:

- numpy: im2col (np.lib.stride_tricks.sliding_window_view, one copy into a column
  matrix) + one matmul per group; transposed layers as matmul + col2im (scatter-add
  per kernel tap). OpenBLAS threads are set per run when its library can be found.
- torch: torch.nn.functional.conv{1,2,3}d / conv_transpose{1,2,3}d on NC(D)(H)W tensors;
  torch_cl: the same with channels_last input and weight (2D only; the layout change
  is done once, outside the timed call, as a channels_last model would keep it).
- ort: a one-node Conv/ConvTranspose ONNX model (opset 17, weight as an initializer),
  CPUExecutionProvider with intra_op_num_threads = the thread count.
- cg_<backend>: cg.compile with the untuned default schedule (plan and tile sizes of
  cg.default_schedule(spec, backend), threads set to the thread count; the tuning database is not
  consulted), called with a preallocated out= buffer.

"cg/peer" is the best passing convgen time over the best passing peer time as a
speedup (peer_ms / convgen_ms): > 1 means convgen is faster. Speed is only
printed, never asserted.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import convgen as cg  # noqa: E402
from convgen.backends import CPU_BACKENDS  # noqa: E402
from convgen.bench.measure import measure  # noqa: E402
from convgen.bench.peers import (Runner, Skip, numpy_runner, openblas_setters,  # noqa: E402
                                 ort_runner, torch_runner)
from convgen.tolerance import max_error, tolerance  # noqa: E402

LAYERS = {
    "r18_3x3_64_56": cg.ConvSpec((1, 64, 56, 56), 64, kernel_size=3, padding=1, bias=False),
    "r18_3x3s2_64_128": cg.ConvSpec((1, 64, 56, 56), 128, kernel_size=3, stride=2, padding=1,
                                    bias=False),
    "r18_3x3_512_7": cg.ConvSpec((1, 512, 7, 7), 512, kernel_size=3, padding=1, bias=False),
    "r18_1x1s2_shortcut": cg.ConvSpec((1, 64, 56, 56), 128, kernel_size=1, stride=2,
                                      bias=False),
    "r18_conv1_7x7s2": cg.ConvSpec((1, 3, 224, 224), 64, kernel_size=7, stride=2, padding=3,
                                   bias=False),
    "mbv2_dw3x3_144_56": cg.ConvSpec((1, 144, 56, 56), 144, kernel_size=3, padding=1,
                                     groups=144, bias=False),
    "dilated1d_64_4096": cg.ConvSpec((1, 64, 4096), 64, kernel_size=3, dilation=4,
                                     padding="same", bias=False),
    "conv3d_16_32": cg.ConvSpec((1, 16, 16, 32, 32), 32, kernel_size=3, padding=1, bias=False),
    "odd_3x3_96_29": cg.ConvSpec((1, 96, 29, 29), 96, kernel_size=3, padding=1, bias=False),
    "odd_3x3_96_17": cg.ConvSpec((1, 96, 17, 17), 96, kernel_size=3, padding=1, bias=False),
    "dcgan_convT4x4s2": cg.ConvSpec((1, 128, 16, 16), 64, kernel_size=4, stride=2, padding=1,
                                    transposed=True, bias=False),
}

# Nominal single-core fp32 peak of the reference machine (2 AVX-512 FMA ports), for scale.
PEAK_GFLOPS_PER_CORE = 214.0
QUICK_REPEATS = 3


@dataclass
class Cell:
    """One runtime on one layer: median seconds and max error, or why there is none."""

    seconds: float | None = None
    error: float | None = None
    note: str = ""
    passed: bool = True


@dataclass
class Row:
    name: str
    spec: cg.ConvSpec
    cells: dict[str, Cell] = field(default_factory=dict)


# -- convgen ----------------------------------------------------------------------------

def convgen_runner(spec: cg.ConvSpec, x: np.ndarray, w: np.ndarray, backend: str,
                   threads: int) -> Runner:
    schedule = dataclasses.replace(cg.default_schedule(spec, backend), threads=threads)
    kernel = cg.compile(spec, backend=backend, schedule=schedule)
    out = np.empty(spec.output_shape, spec.dtype)
    return Runner(lambda: kernel(x, w, None, out=out), lambda y: y.copy())


# -- measuring and printing -------------------------------------------------------------

def describe(spec: cg.ConvSpec) -> str:
    def dims(values) -> str:
        return "x".join(str(v) for v in values)
    pads = dims(f"{lo}" if lo == hi else f"{lo}/{hi}" for lo, hi in spec.padding)
    text = (f"{dims(spec.input_shape)} -> {dims(spec.output_shape)}, k {dims(spec.kernel_size)}"
            f", s {dims(spec.stride)}, pad {pads}")
    if any(d != 1 for d in spec.dilation):
        text += f", dil {dims(spec.dilation)}"
    if spec.groups != 1:
        text += f", groups {spec.groups}"
    if spec.transposed:
        text += ", transposed"
    return text


def is_depthwise(spec: cg.ConvSpec) -> bool:
    return spec.groups > 1 and spec.groups == spec.in_channels


def print_table(rows: list[Row], runtimes: list[str], peers: list[str], threads: int,
                repeats: int) -> None:
    width = 15
    print(f"\n== {threads} thread{'s' if threads > 1 else ''}; median of {repeats} calls; "
          f"each cell: ms  GFLOP/s ==")
    header = f"{'layer':<20} {'GFLOP':>6} " + " ".join(f"{r:>{width}}" for r in runtimes)
    header += f" {'cg/peer':>16} {'max err':>8}  check"
    print(header)
    print("-" * len(header))
    notes: dict[tuple[str, str], list[str]] = {}
    bandwidth: list[str] = []
    for row in rows:
        spec = row.spec
        cells = []
        for name in runtimes:
            cell = row.cells[name]
            if cell.seconds is None:
                cells.append(f"{'n/a':>{width}}")
                notes.setdefault((name, cell.note), []).append(row.name)
            else:
                flag = "" if cell.passed else "!"
                cells.append(f"{cell.seconds * 1e3:>8.3f}{flag:1}"
                             f"{spec.flops / cell.seconds / 1e9:>6.1f}")
        passing = {n: c.seconds for n, c in row.cells.items()
                   if c.seconds is not None and c.passed}
        best_peer = min((n for n in passing if n in peers), key=passing.get, default=None)
        best_cg = min((n for n in passing if n not in peers), key=passing.get, default=None)
        if best_peer and best_cg:
            ratio = f"x{passing[best_peer] / passing[best_cg]:.2f} {best_peer}"
        else:
            ratio = "-"
        errors = [c.error for c in row.cells.values() if c.error is not None]
        failed = [n for n, c in row.cells.items() if not c.passed]
        check = "ok" if not failed else "FAIL " + ",".join(failed)
        worst = f"{max(errors):.1e}" if errors else "-"
        print(f"{row.name:<20} {spec.flops / 1e9:>6.3f} " + " ".join(cells)
              + f" {ratio:>16} {worst:>8}  {check}")
        if is_depthwise(spec):
            rates = ", ".join(f"{n} {spec.bytes / c.seconds / 1e9:.1f}"
                              for n, c in row.cells.items() if c.seconds is not None)
            bandwidth.append(f"  {row.name} ({spec.bytes / 1e6:.1f} MB): {rates}")
    if bandwidth:
        print("depthwise is bandwidth-bound; achieved GB/s (spec.bytes / time):")
        print("\n".join(bandwidth))
    for (runtime, note), layers in notes.items():
        print(f"n/a: {runtime} on {', '.join(layers)}: {note}")
    print(f"nominal fp32 FMA peak ~{PEAK_GFLOPS_PER_CORE:.0f} GFLOP/s/core "
          f"(~{PEAK_GFLOPS_PER_CORE * threads:.0f} for {threads} thread(s)); "
          "'!' marks a result beyond tolerance, excluded from cg/peer")


def bench_layer(name: str, spec: cg.ConvSpec, want: np.ndarray,
                makers: dict[str, Callable[[], Runner]], repeats: int) -> Row:
    row = Row(name, spec)
    limit = tolerance(spec)
    for runtime, make in makers.items():
        try:
            runner = make()
            seconds, got = measure(runner, repeats)
        except Skip as skip:
            row.cells[runtime] = Cell(note=str(skip))
            continue
        except Exception as exc:  # noqa: BLE001 - report the runtime's failure and go on
            row.cells[runtime] = Cell(note=f"error {type(exc).__name__}: {exc}"[:160])
            continue
        error = max_error(got, want)
        row.cells[runtime] = Cell(seconds, error, passed=error <= limit)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--layers", nargs="+", default=list(LAYERS), choices=list(LAYERS),
                        metavar="NAME", help=f"a subset of: {', '.join(LAYERS)}")
    parser.add_argument("--quick", action="store_true",
                        help=f"at most {QUICK_REPEATS} repeats")
    args = parser.parse_args(argv)
    repeats = min(args.repeats, QUICK_REPEATS) if args.quick else args.repeats
    if repeats < 1:
        parser.error("--repeats must be >= 1")

    try:
        import torch
    except ImportError:
        torch = None
        print("torch: not installed, peer skipped (pip install -e '.[bench]')")
    try:
        import onnx
        import onnxruntime as ort
    except ImportError:
        onnx = ort = None
        print("onnx/onnxruntime: not installed, peer skipped (pip install -e '.[bench]')")
    blas_setters = openblas_setters()
    if not blas_setters:
        print("numpy: OpenBLAS not found; its thread count is left as configured")

    peers = ["numpy"]
    if torch is not None:
        peers += ["torch", "torch_cl"]
    if ort is not None:
        peers.append("ort")
    # the peers are CPU libraries: convgen's CPU backends only (cuda needs a GPU;
    # bench/gpu_layers.py times it)
    runtimes = peers + [f"cg_{b}" for b in CPU_BACKENDS]

    versions = [f"convgen {cg.__version__}", f"numpy {np.__version__}"]
    if torch is not None:
        versions.append(f"torch {torch.__version__}")
    if ort is not None:
        versions.append(f"onnxruntime {ort.__version__}")
    print("; ".join(versions))
    print("layers (batch 1, float32, no bias):")
    for name in args.layers:
        print(f"  {name:<20} {describe(LAYERS[name])}")

    inputs = {}
    for name in args.layers:
        spec = LAYERS[name]
        rng = np.random.default_rng(0)
        x = rng.uniform(-1, 1, spec.input_shape).astype(np.float32)
        w = rng.uniform(-1, 1, spec.weight_shape).astype(np.float32)
        inputs[name] = (x, w, cg.reference(spec, x, w, None))

    for threads in args.threads:
        if torch is not None:
            torch.set_num_threads(threads)
        for setter in blas_setters:
            setter(threads)
        rows = []
        for name in args.layers:
            spec = LAYERS[name]
            x, w, want = inputs[name]
            makers: dict[str, Callable[[], Runner]] = {
                "numpy": partial(numpy_runner, spec, x, w)}
            if torch is not None:
                makers["torch"] = partial(torch_runner, torch, spec, x, w, False)
                makers["torch_cl"] = partial(torch_runner, torch, spec, x, w, True,
                                             count_conversion=False)
            if ort is not None:
                makers["ort"] = partial(ort_runner, onnx, ort, spec, x, w, threads)
            for backend in CPU_BACKENDS:
                makers[f"cg_{backend}"] = partial(convgen_runner, spec, x, w, backend, threads)
            rows.append(bench_layer(name, spec, want, makers, repeats))
        print_table(rows, runtimes, peers, threads, repeats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
