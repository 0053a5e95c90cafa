"""The bench layers on a GPU: convgen's CUDA backend next to PyTorch (cuDNN).

    python bench/gpu_layers.py [--layers NAME ...] [--repeat N] [--warmup N] [--calls N]
                               [--batch N] [--max-spatial N] [--arrays auto|convgen|torch]
                               [--tf32] [--json PATH]
    python bench/gpu_layers.py --emulator-check [--layers NAME ...] [--max-spatial 8]

The layers are those of specs/bench/layers.toml (``convgen.specfile.load_specfile``);
``--batch`` replaces their batch size and ``--max-spatial`` caps their spatial sizes
(a cap is raised where the layer would have no output at it).

On a GPU (CONVGEN_CUDA_DEVICE unset or a GPU ordinal), for each layer:

- convgen: ``cg.compile(spec, backend="cuda")`` with the default schedule (a schedule
  given in the spec file wins); x, w and b are moved to the device once (torch CUDA
  tensors when PyTorch has CUDA, else convgen DeviceArrays made with ``to_device``;
  ``--arrays`` chooses) and the output goes to a preallocated device array (``out=``),
  so no host copy is timed. The result is checked once against ``cg.reference``
  (``convgen.tolerance``), then the kernel is timed with CUDA events on the default
  stream: ``--warmup`` calls, then ``--repeat`` repetitions of ``--calls`` back-to-back
  calls between two events; the per-call time of a repetition is its elapsed time over
  ``--calls``, and the median over repetitions is reported. The times include the
  Python cost of a call where the GPU is faster than it (small layers), as for torch.
- torch, where ``torch.cuda.is_available()``: torch.nn.functional.conv{1,2,3}d /
  conv_transpose{1,2,3}d with the bias and then the activation, on the same device
  tensors, ``torch.backends.cudnn.benchmark = True``, timed the same way with
  ``torch.cuda.Event``. cuDNN's TF32 is turned off (the comparison is fp32 to fp32, and
  TF32 results miss the fp32 tolerance); ``--tf32`` leaves it on. Its result is checked
  against the oracle as well.

The table: GFLOP (spec.flops / 1e9), convgen's median ms, the TFLOP/s that is, its
fraction of the device's nominal fp32 peak (PEAK_FP32_TFLOPS, by device name; n/a for
devices not in it), torch's median ms and torch/convgen (> 1: convgen is faster). A
result over the tolerance is marked FAIL and gets no ratio; the exit status is 1 when
a convgen result failed or errored.

Without a GPU (no driver library, no such device, or CONVGEN_CUDA_DEVICE=emulator) the
script says why and that no GPU figures were measured, and exits 0. ``--emulator-check``
instead runs each selected layer once on the CPU emulator, at batch 1 (or ``--batch``)
and spatial sizes capped by ``--max-spatial`` (default 8 there), checks it against the
oracle and prints OK per layer: that is how this script is tested without a GPU.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import convgen as cg  # noqa: E402
from convgen import config  # noqa: E402
from convgen.backends.cuda import driver as cuda_driver  # noqa: E402
from convgen.backends.cuda.arrays import empty as device_empty, to_device  # noqa: E402
from convgen.bench.peers import Skip, _torch_activation, peer_weight, torch_conv  # noqa: E402
from convgen.errors import SpecError  # noqa: E402
from convgen.reference import random_arrays  # noqa: E402
from convgen.specfile import load_specfile  # noqa: E402
from convgen.tolerance import max_error, tolerance  # noqa: E402

LAYERS_FILE = ROOT / "specs" / "bench" / "layers.toml"
EMULATOR_MAX_SPATIAL = 8

# Nominal dense fp32 (non-tensor-core) peak in TFLOP/s, matched against the lower-cased
# device name in order (first match wins). H100 SXM reports e.g. "NVIDIA H100 80GB HBM3";
# H100/H200 NVL and other variants are not listed and print n/a.
PEAK_FP32_TFLOPS: list[tuple[str, str, float]] = [
    (r"h100.*pcie", "H100 PCIe", 51.0),
    (r"h100.*(sxm|hbm3)", "H100 SXM", 67.0),
    (r"h200(?!.*nvl)", "H200", 67.0),
    (r"a100", "A100", 19.5),           # 80GB and 40GB alike
    (r"\bl4\b", "L4", 30.3),           # not L40 / L40S
    (r"rtx 4090", "RTX 4090", 82.6),
]


def peak_fp32(name: str) -> tuple[str, float] | None:
    """(table label, TFLOP/s) of the device named ``name``, or None if it is not listed."""
    lowered = name.lower()
    for pattern, label, tflops in PEAK_FP32_TFLOPS:
        if re.search(pattern, lowered):
            return label, tflops
    return None


# -- layers -----------------------------------------------------------------------------

def resize(spec: cg.ConvSpec, batch: int | None, max_spatial: int | None) -> cg.ConvSpec:
    """``spec`` with its batch replaced and its spatial sizes capped at ``max_spatial``;
    a capped size grows (up to the original) until the layer is valid again."""
    n = spec.batch if batch is None else batch
    original = spec.in_spatial
    if max_spatial is None:
        return spec.replace(input_shape=(n, spec.in_channels, *original))
    cap = max_spatial
    while True:
        spatial = tuple(min(size, cap) for size in original)
        try:
            return spec.replace(input_shape=(n, spec.in_channels, *spatial))
        except SpecError:
            if spatial == original:
                raise
            cap += 1


def select_layers(names: list[str] | None) -> list:
    entries = load_specfile(LAYERS_FILE)
    if not names:
        return entries
    known = {entry.name: entry for entry in entries}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise SystemExit(f"gpu_layers.py: unknown layer(s) {', '.join(unknown)}; the layers "
                         f"of {LAYERS_FILE.relative_to(ROOT)} are: {', '.join(known)}")
    return [known[name] for name in names]


def schedule_for(entry, spec: cg.ConvSpec):
    """The spec file's schedule where it gives one, else the CUDA backend's default."""
    return entry.schedule if entry.schedule is not None else cg.default_schedule(spec, "cuda")


# -- emulator check ---------------------------------------------------------------------

def emulator_check(entries: list, args: argparse.Namespace) -> int:
    config.set_cuda_device("emulator")
    max_spatial = args.max_spatial if args.max_spatial is not None else EMULATOR_MAX_SPATIAL
    batch = args.batch if args.batch is not None else 1
    print(f"CUDA emulator check: batch {batch}, spatial sizes capped at {max_spatial}; "
          "each layer run once and compared with cg.reference (no timing)")
    results = []
    failed = 0
    for entry in entries:
        record: dict[str, Any] = {"layer": entry.name}
        try:
            spec = resize(entry.spec, batch, max_spatial)
            record["input_shape"] = list(spec.input_shape)
            kernel = cg.compile(spec, backend="cuda", schedule=schedule_for(entry, spec))
            x, w, b = random_arrays(spec)
            xd, wd = to_device(x), to_device(w)
            bd = to_device(b) if b is not None else None
            out = device_empty(spec.output_shape, spec.dtype)
            kernel(xd, wd, bd, out=out)
            error = max_error(out.copy_to_host(), cg.reference(spec, x, w, b))
            limit = tolerance(spec)
            record.update(error=error, tolerance=limit, ok=error <= limit)
            verdict = "OK" if error <= limit else "FAIL"
            print(f"{verdict:<4} {entry.name:<26} {'x'.join(map(str, spec.input_shape)):>18}"
                  f"  max error {error:.2e} (tolerance {limit:.2e})", flush=True)
        except Exception as exc:  # noqa: BLE001 - reported per layer
            record.update(ok=False, error_text=f"{type(exc).__name__}: {exc}")
            print(f"FAIL {entry.name:<26} {type(exc).__name__}: {exc}", flush=True)
        failed += not record["ok"]
        results.append(record)
    if args.json:
        write_json(args.json, {"mode": "emulator-check", "max_spatial": max_spatial,
                               "batch": batch, "layers": results})
    print(f"{len(entries) - failed} of {len(entries)} layers OK on the CUDA emulator")
    return 1 if failed else 0


# -- device arrays ----------------------------------------------------------------------

class Arrays:
    """Where the benchmark's device arrays come from: convgen DeviceArrays or torch
    CUDA tensors, with the same three operations."""

    def __init__(self, kind: str, ordinal: int, torch: Any = None):
        self.kind = kind
        self.ordinal = ordinal
        self.torch = torch

    def put(self, host: np.ndarray | None) -> Any:
        if host is None:
            return None
        if self.kind == "torch":
            return self.torch.from_numpy(np.ascontiguousarray(host)).to(
                f"cuda:{self.ordinal}").contiguous()
        return to_device(host, self.ordinal)

    def empty(self, shape: tuple[int, ...], dtype: Any) -> Any:
        if self.kind == "torch":
            return self.torch.empty(shape, dtype=self.torch.from_numpy(
                np.empty(0, dtype)).dtype, device=f"cuda:{self.ordinal}")
        return device_empty(shape, dtype, self.ordinal)

    def host(self, array: Any) -> np.ndarray:
        if self.kind == "torch":
            return array.detach().cpu().numpy()
        return array.copy_to_host()


# -- timing -----------------------------------------------------------------------------

def time_with_events(call: Callable[[], Any], make_event: Callable[[], Any],
                     elapsed_ms: Callable[[Any, Any], float], warmup: int, repeat: int,
                     calls: int) -> list[float]:
    """Per-call milliseconds of ``repeat`` repetitions of ``calls`` back-to-back calls,
    each bracketed by two events on the stream the calls use."""
    for _ in range(warmup):
        call()
    start, end = make_event(), make_event()
    times = []
    for _ in range(repeat):
        start.record()
        for _ in range(calls):
            call()
        end.record()
        times.append(elapsed_ms(start, end) / calls)
    return times


def time_convgen(kernel, xd, wd, bd, out, gpu: cuda_driver.Driver,
                 args: argparse.Namespace) -> list[float]:
    """convgen launches on the legacy default stream: driver-API events on it."""
    def call() -> None:
        kernel(xd, wd, bd, out=out)

    def elapsed(start: cuda_driver.Event, end: cuda_driver.Event) -> float:
        return end.elapsed_ms(start)  # synchronizes on ``end`` first

    return time_with_events(call, lambda: cuda_driver.Event(gpu), elapsed, args.warmup,
                            args.repeat, args.calls)


def torch_call(torch, spec: cg.ConvSpec, xt, wt, bt) -> Callable[[], Any]:
    """One torch.nn.functional call computing the spec's whole result (bias, then the
    activation) from device tensors; Skip where torch cannot express the spec."""
    functional = torch.nn.functional
    act = _torch_activation(torch, spec)
    op, kwargs, pre_pad, mode = torch_conv(torch, spec)

    def call():
        with torch.no_grad():
            inp = functional.pad(xt, pre_pad, mode=mode) if pre_pad is not None else xt
            return act(op(inp, wt, bt, **kwargs))
    return call


def time_torch(torch, call: Callable[[], Any], args: argparse.Namespace) -> list[float]:
    """torch launches on its current stream: torch.cuda.Events record on it."""
    def elapsed(start, end) -> float:
        end.synchronize()
        return start.elapsed_time(end)

    return time_with_events(call, lambda: torch.cuda.Event(enable_timing=True), elapsed,
                            args.warmup, args.repeat, args.calls)


# -- the GPU benchmark ------------------------------------------------------------------

@dataclass
class Result:
    layer: str
    spec: dict
    gflop: float
    convgen_ms: float | None = None
    convgen_times_ms: list[float] = field(default_factory=list)
    convgen_error: float | None = None
    convgen_ok: bool = False
    tflops: float | None = None
    peak_fraction: float | None = None
    torch_ms: float | None = None
    torch_times_ms: list[float] = field(default_factory=list)
    torch_error: float | None = None
    torch_ok: bool | None = None
    ratio: float | None = None  # torch ms / convgen ms: > 1, convgen is faster
    tolerance: float | None = None
    notes: list[str] = field(default_factory=list)


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]


def bench_layer(entry, spec: cg.ConvSpec, gpu: cuda_driver.Driver, arrays: Arrays,
                torch: Any, peak: float | None, args: argparse.Namespace) -> Result:
    result = Result(entry.name, spec.to_dict(), spec.flops / 1e9)
    limit = result.tolerance = tolerance(spec)
    x, w, b = random_arrays(spec)
    want = cg.reference(spec, x, w, b)
    try:
        xd, wd, bd = arrays.put(x), arrays.put(w), arrays.put(b)
        if torch is not None:
            torch.cuda.synchronize()  # the copies are on torch's stream
    except Exception as exc:  # noqa: BLE001 - reported in the row (out of memory, say)
        result.notes.append(f"device arrays: {_describe(exc)}")
        return result
    try:
        kernel = cg.compile(spec, backend="cuda", schedule=schedule_for(entry, spec))
        out = arrays.empty(spec.output_shape, spec.dtype)
        kernel(xd, wd, bd, out=out)
        gpu.synchronize()
        result.convgen_error = max_error(arrays.host(out), want)
        result.convgen_ok = result.convgen_error <= limit
        if not result.convgen_ok:
            result.notes.append(f"convgen: max error {result.convgen_error:.3g} > "
                                f"tolerance {limit:.3g}")
        result.convgen_times_ms = time_convgen(kernel, xd, wd, bd, out, gpu, args)
        result.convgen_ms = statistics.median(result.convgen_times_ms)
        result.tflops = spec.flops / (result.convgen_ms * 1e-3) / 1e12
        if peak is not None:
            result.peak_fraction = result.tflops / peak
    except Exception as exc:  # noqa: BLE001 - reported in the row
        result.convgen_ok = False
        result.notes.append(f"convgen: {_describe(exc)}")
    if torch is not None:
        try:
            gpu.synchronize()
            # the same device arrays; torch takes convgen's DeviceArrays without a copy
            # (__cuda_array_interface__); flip=True: a flipped weight, as peers do
            xt, wt, bt = xd, wd if not spec.flip else arrays.put(peer_weight(spec, w)), bd
            if arrays.kind != "torch":
                device = f"cuda:{arrays.ordinal}"
                xt, wt = torch.as_tensor(xt, device=device), torch.as_tensor(wt, device=device)
                bt = None if bt is None else torch.as_tensor(bt, device=device)
            call = torch_call(torch, spec, xt, wt, bt)
            got = call()
            torch.cuda.synchronize()
            result.torch_error = max_error(got.detach().cpu().numpy(), want)
            result.torch_ok = result.torch_error <= limit
            if not result.torch_ok:
                result.notes.append(f"torch: max error {result.torch_error:.3g} > "
                                    f"tolerance {limit:.3g}")
            result.torch_times_ms = time_torch(torch, call, args)
            result.torch_ms = statistics.median(result.torch_times_ms)
        except Skip as skip:
            result.notes.append(f"torch: skipped ({skip})")
        except Exception as exc:  # noqa: BLE001
            result.torch_ok = False
            result.notes.append(f"torch: {_describe(exc)}")
    if result.convgen_ok and result.torch_ok and result.convgen_ms and result.torch_ms:
        result.ratio = result.torch_ms / result.convgen_ms
    return result


HEADER = (f"{'layer':<26} {'GFLOP':>7} {'cg ms':>9} {'TFLOP/s':>8} {'%peak':>6} "
          f"{'torch ms':>9} {'torch/cg':>8}  check")


def format_row(r: Result) -> str:
    def num(value: float | None, spec: str) -> str:
        return format(value, spec) if value is not None else "n/a"
    peak = f"{100 * r.peak_fraction:.1f}" if r.peak_fraction is not None else "n/a"
    ratio = f"{r.ratio:.2f}" if r.ratio is not None else "n/a"
    check = "ok" if r.convgen_ok else "FAIL"
    if r.torch_ok is False:
        check += " (torch FAIL)"
    return (f"{r.layer:<26} {r.gflop:>7.3f} {num(r.convgen_ms, '.4f'):>9} "
            f"{num(r.tflops, '.2f'):>8} {peak:>6} {num(r.torch_ms, '.4f'):>9} {ratio:>8}  "
            f"{check}")


def find_torch() -> tuple[Any, str]:
    """(torch, "") where PyTorch with CUDA is importable, else (None, why not)."""
    try:
        import torch
    except ImportError:
        return None, "PyTorch is not installed"
    if not torch.cuda.is_available():
        return None, f"torch {torch.__version__} has no CUDA device"
    return torch, ""


def gpu_bench(entries: list, ordinal: int, args: argparse.Namespace) -> int:
    gpu = cuda_driver.Driver.get(ordinal)
    name = gpu.name()
    peak = peak_fp32(name)
    torch, no_torch = find_torch()
    if torch is not None:
        torch.cuda.set_device(ordinal)
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.allow_tf32 = bool(args.tf32)
        torch.backends.cuda.matmul.allow_tf32 = bool(args.tf32)
    kind = args.arrays
    if kind == "auto":
        kind = "torch" if torch is not None else "convgen"
    if kind == "torch" and torch is None:
        raise SystemExit(f"gpu_layers.py: --arrays torch: {no_torch}")
    arrays = Arrays(kind, ordinal, torch)

    peak_text = (f"{peak[1]:g} TFLOP/s fp32 ({peak[0]})" if peak
                 else "n/a (device not in PEAK_FP32_TFLOPS)")
    print(f"GPU {ordinal}: {name}, {gpu.arch()}, {gpu.multiprocessors()} SMs; "
          f"peak {peak_text}")
    if torch is not None:
        print(f"torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}, "
              f"cudnn.benchmark on, TF32 {'on' if args.tf32 else 'off'}")
    else:
        print(f"torch: not measured ({no_torch})")
    print(f"device arrays: {'torch CUDA tensors' if kind == 'torch' else 'convgen DeviceArray'}"
          f"; {args.warmup} warm-up calls, median of {args.repeat} repetitions of "
          f"{args.calls} calls (CUDA events); torch/cg > 1: convgen is faster\n")
    print(HEADER)
    print("-" * len(HEADER))
    results = []
    for entry in entries:
        spec = resize(entry.spec, args.batch, args.max_spatial)
        result = bench_layer(entry, spec, gpu, arrays, torch, peak[1] if peak else None, args)
        results.append(result)
        print(format_row(result), flush=True)
    notes = [(r.layer, note) for r in results for note in r.notes]
    if notes:
        print("\nnotes:")
        for layer, note in notes:
            print(f"  {layer}: {note}")
    ratios = [r.ratio for r in results if r.ratio]
    if ratios:
        geomean = math.exp(sum(math.log(v) for v in ratios) / len(ratios))
        print(f"\ngeometric mean torch/cg over {len(ratios)} layers: {geomean:.2f}")
    if args.json:
        write_json(args.json, {
            "mode": "gpu", "measured": True,
            "device": {"ordinal": ordinal, "name": name, "arch": gpu.arch(),
                       "multiprocessors": gpu.multiprocessors(),
                       "peak_fp32_tflops": peak[1] if peak else None},
            "torch": None if torch is None else {
                "version": torch.__version__, "cudnn": torch.backends.cudnn.version(),
                "tf32": bool(args.tf32)},
            "arrays": kind, "warmup": args.warmup, "repeat": args.repeat,
            "calls": args.calls, "layers": [asdict(r) for r in results]})
    return 0 if all(r.convgen_ok for r in results) else 1


def write_json(path: str, data: dict) -> None:
    Path(path).write_text(json.dumps(data, indent=2) + "\n")
    print(f"wrote {path}")


def no_gpu_reason() -> tuple[int | None, str | None]:
    """(GPU ordinal, None) where one can be used, else (None, why not)."""
    device = config.cuda_device()
    if device == "emulator":
        return None, ("CONVGEN_CUDA_DEVICE=emulator: backend 'cuda' runs on the CPU "
                      "emulator, whose times say nothing about a GPU")
    ordinal = int(device)
    why = cuda_driver.available(ordinal)
    return (ordinal, None) if why is None else (None, why)


def report_no_gpu(why: str, what: str, json_path: str | None) -> int:
    """Say plainly that nothing was measured, and why (exit status 0: not an error)."""
    print(f"no GPU: {why}")
    print(f"no GPU figures were measured (run with --emulator-check to check the {what} on "
          "the CPU emulator)")
    if json_path:
        write_json(json_path, {"mode": "gpu", "measured": False, "reason": why})
    return 0


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def parse_timing_arguments(parser: argparse.ArgumentParser, argv: list[str] | None,
                           what: str) -> argparse.Namespace:
    """The options both GPU bench scripts share (timing, TF32, JSON, the emulator check)
    added to ``parser``, then the command line parsed and checked."""
    parser.add_argument("--repeat", type=positive, default=20,
                        help="timed repetitions; the median is reported (default 20)")
    parser.add_argument("--warmup", type=int, default=10,
                        help="untimed calls before timing (default 10)")
    parser.add_argument("--calls", type=positive, default=10,
                        help="back-to-back calls per repetition (default 10)")
    parser.add_argument("--tf32", action="store_true",
                        help="let cuDNN/cuBLAS use TF32 (off by default: fp32 against fp32)")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    parser.add_argument("--emulator-check", action="store_true",
                        help=f"run {what} on the CPU emulator and check it (no GPU needed, "
                             "nothing timed)")
    args = parser.parse_args(argv)
    if args.warmup < 0:
        parser.error("--warmup: expected 0 or more")
    return args


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", nargs="+", metavar="NAME",
                        help="a subset of the layers in specs/bench/layers.toml")
    parser.add_argument("--batch", type=positive, default=None,
                        help="batch size for every layer (default: the layer's own; 1 with "
                             "--emulator-check)")
    parser.add_argument("--max-spatial", type=positive, default=None,
                        help=f"cap the layers' spatial sizes (default: none; "
                             f"{EMULATOR_MAX_SPATIAL} with --emulator-check)")
    parser.add_argument("--arrays", choices=("auto", "convgen", "torch"), default="auto",
                        help="device arrays for convgen: torch CUDA tensors or convgen "
                             "DeviceArrays (auto: torch when it has CUDA)")
    args = parse_timing_arguments(parser, argv, "each layer once")
    entries = select_layers(args.layers)
    if args.emulator_check:
        return emulator_check(entries, args)
    ordinal, why = no_gpu_reason()
    if ordinal is None:
        return report_no_gpu(why, "layers", args.json)
    return gpu_bench(entries, ordinal, args)


if __name__ == "__main__":
    raise SystemExit(main())
