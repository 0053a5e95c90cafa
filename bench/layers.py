"""Single convolution layers: convgen (every backend) next to NumPy, PyTorch and ONNX Runtime.

    python bench/layers.py [--threads 1 2] [--repeats 10] [--layers NAME ...] [--quick]

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
import ctypes
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import convgen as cg  # noqa: E402
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
PAUSE_S = 0.02  # between timing blocks, so spinning pool threads go to sleep
QUICK_REPEATS = 3


class Skip(Exception):
    """This runtime does not handle this layer; the message says why."""


@dataclass
class Runner:
    """One timed call, and how to turn what it returns into an NC(D)(H)W NumPy array."""

    call: Callable[[], Any]
    to_numpy: Callable[[Any], np.ndarray] = np.asarray


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


# -- NumPy peer -------------------------------------------------------------------------

def _openblas_setters() -> list[Callable[[int], None]]:
    """openblas_set_num_threads of every OpenBLAS loaded in this process (NumPy's own)."""
    setters = []
    try:
        paths = {line.split()[-1] for line in Path("/proc/self/maps").read_text().splitlines()
                 if "openblas" in line.lower() and line.split()[-1].startswith("/")}
    except OSError:
        return setters
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for symbol in ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
                       "openblas_set_num_threads64_", "openblas_set_num_threads"):
            function = getattr(lib, symbol, None)
            if function is not None:
                function.argtypes = [ctypes.c_int]
                setters.append(function)
                break
    return setters


def numpy_runner(spec: cg.ConvSpec, x: np.ndarray, w: np.ndarray) -> Runner:
    if spec.padding_mode != "zeros":
        raise Skip("zero padding only")
    if spec.transposed:
        return _numpy_col2im(spec, x, w)
    nd, groups = spec.ndim, spec.groups
    n, c = spec.batch, spec.in_channels
    pads = ((0, 0), (0, 0), *spec.padding)
    padded = any(lo or hi for lo, hi in spec.padding)
    window = tuple(d * (k - 1) + 1 for k, d in zip(spec.kernel_size, spec.dilation))
    axes = tuple(range(2, 2 + nd))
    # (N, C, *out_positions, *window) -> strided outputs, dilated taps.
    pick = ((slice(None), slice(None))
            + tuple(slice(None, None, s) for s in spec.stride)
            + tuple(slice(None, None, d) for d in spec.dilation))
    order = (0, 1, *range(2 + nd, 2 + 2 * nd), *range(2, 2 + nd))  # (N, C, *k, *out)
    taps = math.prod(spec.kernel_size)
    positions = math.prod(spec.output_spatial)
    out_shape = spec.output_shape

    if groups == 1 and n == 1:
        wmat = w.reshape(spec.out_channels, -1)

        def call() -> np.ndarray:
            xp = np.pad(x, pads) if padded else x
            cols = sliding_window_view(xp, window, axis=axes)[pick].transpose(order)
            cols = cols.reshape(c * taps, positions)  # the im2col copy
            return (wmat @ cols).reshape(out_shape)
        return Runner(call)

    wmat = w.reshape(groups, spec.out_channels // groups, -1)

    def call_grouped() -> np.ndarray:
        xp = np.pad(x, pads) if padded else x
        cols = sliding_window_view(xp, window, axis=axes)[pick].transpose(order)
        cols = cols.reshape(n, groups, (c // groups) * taps, positions)
        return np.matmul(wmat, cols).reshape(out_shape)
    return Runner(call_grouped)


def _numpy_col2im(spec: cg.ConvSpec, x: np.ndarray, w: np.ndarray) -> Runner:
    """Transposed convolution: columns = W^T X (one matmul per group), then scatter-add."""
    groups = spec.groups
    n, cin = spec.batch, spec.in_channels
    k, s, d = spec.kernel_size, spec.stride, spec.dilation
    ins, outs = spec.in_spatial, spec.output_spatial
    wmat = w.reshape(groups, cin // groups, -1).transpose(0, 2, 1)  # (G, cout_g*K, cin_g)
    full = tuple(max((i - 1) * st + dl * (kk - 1) + 1, lo + o)
                 for i, st, dl, kk, (lo, _), o in zip(ins, s, d, k, spec.padding, outs))
    crop = tuple(slice(lo, lo + o) for (lo, _), o in zip(spec.padding, outs))
    tap_slices = [tuple(slice(t * dl, t * dl + (i - 1) * st + 1, st)
                        for t, dl, i, st in zip(tap, d, ins, s))
                  for tap in np.ndindex(*k)]

    def call() -> np.ndarray:
        xmat = x.reshape(n, groups, cin // groups, -1)
        cols = np.matmul(wmat, xmat).reshape(n, spec.out_channels, -1, *ins)
        buf = np.zeros((n, spec.out_channels, *full), x.dtype)
        for t, where in enumerate(tap_slices):
            buf[(slice(None), slice(None)) + where] += cols[:, :, t]
        return np.ascontiguousarray(buf[(slice(None), slice(None)) + crop])

    return Runner(call)


# -- PyTorch peer -----------------------------------------------------------------------

def torch_runner(torch, spec: cg.ConvSpec, x: np.ndarray, w: np.ndarray,
                 channels_last: bool) -> Runner:
    functional = torch.nn.functional
    nd = spec.ndim
    if spec.padding_mode != "zeros":
        raise Skip("zero padding only")
    if channels_last and nd != 2:
        raise Skip("channels_last is measured for 2D layers only")
    symmetric = all(lo == hi for lo, hi in spec.padding)
    xt, wt = torch.from_numpy(x), torch.from_numpy(w)
    if channels_last:
        xt = xt.contiguous(memory_format=torch.channels_last)
        wt = wt.contiguous(memory_format=torch.channels_last)
    if spec.transposed:
        if not symmetric:
            raise Skip("asymmetric transposed padding")
        op = getattr(functional, f"conv_transpose{nd}d")
        kwargs = dict(stride=spec.stride, padding=tuple(lo for lo, _ in spec.padding),
                      output_padding=spec.output_padding, groups=spec.groups,
                      dilation=spec.dilation)

        def call_t():
            with torch.no_grad():
                return op(xt, wt, None, **kwargs)
        return Runner(call_t, lambda y: y.contiguous().numpy())

    op = getattr(functional, f"conv{nd}d")
    padding = tuple(lo for lo, _ in spec.padding) if symmetric else 0
    pre_pad = None if symmetric else \
        tuple(p for lo, hi in reversed(spec.padding) for p in (lo, hi))
    kwargs = dict(stride=spec.stride, padding=padding, dilation=spec.dilation,
                  groups=spec.groups)

    def call():
        with torch.no_grad():
            inp = xt if pre_pad is None else functional.pad(xt, pre_pad)
            return op(inp, wt, None, **kwargs)
    return Runner(call, lambda y: y.contiguous().numpy())


# -- ONNX Runtime peer ------------------------------------------------------------------

def ort_runner(onnx, ort, spec: cg.ConvSpec, x: np.ndarray, w: np.ndarray,
               threads: int) -> Runner:
    from onnx import TensorProto, helper, numpy_helper

    if spec.padding_mode != "zeros":
        raise Skip("zero padding only")
    attrs = dict(kernel_shape=list(spec.kernel_size), strides=list(spec.stride),
                 dilations=list(spec.dilation), group=spec.groups,
                 pads=[lo for lo, _ in spec.padding] + [hi for _, hi in spec.padding])
    if spec.transposed:
        attrs["output_padding"] = list(spec.output_padding)
    node = helper.make_node("ConvTranspose" if spec.transposed else "Conv", ["x", "w"], ["y"],
                            **attrs)
    graph = helper.make_graph(
        [node], spec.name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(spec.input_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(spec.output_shape))],
        initializer=[numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by any recent onnxruntime
    onnx.checker.check_model(model)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    feeds = {"x": x}
    return Runner(lambda: session.run(["y"], feeds)[0])


# -- convgen ----------------------------------------------------------------------------

def convgen_runner(spec: cg.ConvSpec, x: np.ndarray, w: np.ndarray, backend: str,
                   threads: int) -> Runner:
    schedule = dataclasses.replace(cg.default_schedule(spec, backend), threads=threads)
    kernel = cg.compile(spec, backend=backend, schedule=schedule)
    out = np.empty(spec.output_shape, spec.dtype)
    return Runner(lambda: kernel(x, w, None, out=out), lambda y: y.copy())


# -- measuring and printing -------------------------------------------------------------

def measure(runner: Runner, repeats: int) -> tuple[float, np.ndarray]:
    """(median seconds, first output): one checked call, one warm-up, then the timed calls."""
    first = runner.to_numpy(runner.call())
    runner.call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        runner.call()
        times.append(time.perf_counter() - start)
    time.sleep(PAUSE_S)
    return statistics.median(times), first


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
    blas_setters = _openblas_setters()
    if not blas_setters:
        print("numpy: OpenBLAS not found; its thread count is left as configured")

    peers = ["numpy"]
    if torch is not None:
        peers += ["torch", "torch_cl"]
    if ort is not None:
        peers.append("ort")
    runtimes = peers + [f"cg_{b}" for b in cg.BACKENDS]

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
                makers["torch_cl"] = partial(torch_runner, torch, spec, x, w, True)
            if ort is not None:
                makers["ort"] = partial(ort_runner, onnx, ort, spec, x, w, threads)
            for backend in cg.BACKENDS:
                makers[f"cg_{backend}"] = partial(convgen_runner, spec, x, w, backend, threads)
            rows.append(bench_layer(name, spec, want, makers, repeats))
        print_table(rows, runtimes, peers, threads, repeats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
