"""Whole networks on a GPU: convgen's CUDA backend next to PyTorch (cuDNN, eager and
torch.compile).

    python bench/gpu_networks.py [--networks NAME ...] [--batch 1 32] [--image-size 224]
                                 [--repeat N] [--warmup N] [--calls N] [--tf32]
                                 [--no-torch-compile] [--json PATH]
    python bench/gpu_networks.py --emulator-check [--networks NAME ...] [--image-size 32]

The networks: resnet18, lenet5, audio1d, dcgan_generator and video3d from specs/nets/*.toml
(``cg.load_network``), and mobilenet_v2, built from bench/mobilenet_v2.py's
``mobilenet_v2(nn, flatten)`` (listed only where that file imports). resnet18 and
mobilenet_v2 run on 3 x ``--image-size`` x ``--image-size`` images; the others at their
file's input shape, with the batch replaced by each ``--batch``. BatchNorm statistics are
randomized (seeded), so folding is exercised.

On a GPU (CONVGEN_CUDA_DEVICE unset or a GPU ordinal), for each network and batch size:

- convgen: ``net.compile(shape, backend="cuda")``; the input is moved to the device once
  (``to_device``), the output of ``model(xd)`` is a DeviceArray (no host copy is timed; a
  call allocates its output, as any caller's call does). It is checked once against
  ``model.reference(x)``: max|y - ref| / max|ref| < 1e-3. Then ``--warmup`` calls, and
  ``--repeat`` repetitions of ``--calls`` back-to-back calls between two CUDA events on the
  default stream; a repetition's time over ``--calls`` is its ms per call, and the median
  over the repetitions is reported with the images/s it means (batch / seconds per call).
- torch, where ``torch.cuda.is_available()``: the same network as a torch.nn module (the
  network file's layers built with torch.nn, or mobilenet_v2 built with torch.nn) loaded
  with convgen's state_dict, in eval mode under ``torch.no_grad``, on a CUDA tensor of the
  same input; ``torch.backends.cudnn.benchmark = True``, TF32 off (fp32 against fp32)
  unless ``--tf32``. Timed the same way with ``torch.cuda.Event``, eager and through
  ``torch.compile`` (skipped with ``--no-torch-compile``; a failure prints "n/a (reason)").
  Both are checked against the oracle as well; a mismatch is noted, never fatal.

The table gives GFLOP per call (the graph's layer FLOPs), convgen's ms and images/s,
torch's and torch.compile's ms, and torch/convgen ratios (above 1: convgen is faster).
The exit status is 1 when a convgen result failed its check or errored.

Without a GPU (no driver library, no such device, or CONVGEN_CUDA_DEVICE=emulator) the
script says why and that no GPU figures were measured, and exits 0. ``--emulator-check``
instead compiles each selected network at batch 1 on the CPU emulator (resnet18 and
mobilenet_v2 at ``--image-size`` 32 by default there), runs it once on an emulator
DeviceArray and checks it against the oracle; where PyTorch is installed, the torch module
the GPU run would time is also run on the CPU and checked, so the comparison is known to
compare the same network. It prints OK per network and exits 1 on a mismatch.
"""

from __future__ import annotations

import argparse
import collections
import math
import statistics
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import convgen as cg  # noqa: E402
from convgen import config  # noqa: E402
from convgen.backends.cuda import driver as cuda_driver  # noqa: E402
from convgen.backends.cuda.arrays import to_device  # noqa: E402
from convgen.graph.compile import layer_flops  # noqa: E402
from convgen.specfile import parse_toml, read_text_file  # noqa: E402

NETS = ROOT / "specs" / "nets"
SPEC_NETWORKS = ("resnet18", "lenet5", "audio1d", "dcgan_generator", "video3d")
IMAGE_NETWORKS = ("resnet18", "mobilenet_v2")  # sized by --image-size
DEFAULT_IMAGE_SIZE = 224
EMULATOR_IMAGE_SIZE = 32
TOLERANCE = 1e-3  # max|y - ref| / max|ref|

try:  # bench/mobilenet_v2.py's builder, where that file imports
    sys.path.insert(0, str(ROOT / "bench"))
    from mobilenet_v2 import mobilenet_v2 as _mobilenet_v2_builder  # noqa: E402
except Exception as _exc:  # noqa: BLE001 - the network is then not offered
    _mobilenet_v2_builder = None
    MOBILENET_UNAVAILABLE = f"{type(_exc).__name__}: {_exc}"
else:
    MOBILENET_UNAVAILABLE = None

# the sibling script's peak table, event timing, torch lookup and no-GPU check (bench/ is
# on sys.path when a script in it runs)
from gpu_layers import (find_torch, no_gpu_reason, parse_timing_arguments,  # noqa: E402
                        peak_fp32, positive, report_no_gpu, time_torch, time_with_events,
                        write_json)


def network_names() -> list[str]:
    """Every network this script can run, in table order."""
    names = ["resnet18"]
    if _mobilenet_v2_builder is not None:
        names.append("mobilenet_v2")
    return names + [n for n in SPEC_NETWORKS if n != "resnet18"]


# -- networks ---------------------------------------------------------------------------

def _randomize_batch_norm(net) -> None:
    """Seeded BatchNorm statistics and affine parameters (defaults make folding trivial)."""
    rng = np.random.default_rng(1)
    state = net.state_dict()
    changed = {}
    for path, module in net.named_modules():
        if not type(module).__name__.startswith("BatchNorm"):
            continue
        prefix = f"{path}." if path else ""
        for key, make in (("weight", lambda n: rng.uniform(0.5, 1.5, n)),
                          ("bias", lambda n: rng.normal(0.0, 0.1, n)),
                          ("running_mean", lambda n: rng.normal(0.0, 0.1, n)),
                          ("running_var", lambda n: rng.uniform(0.5, 1.5, n))):
            if prefix + key in state:
                old = np.asarray(state[prefix + key])
                changed[prefix + key] = make(old.shape).astype(old.dtype)
    if changed:
        state.update(changed)
        net.load_state_dict(state)


def build_network(name: str):
    """The convgen.nn module of ``name`` (BatchNorm randomized) and its file's input shape."""
    if name == "mobilenet_v2":
        if _mobilenet_v2_builder is None:
            raise SystemExit(f"gpu_networks.py: mobilenet_v2 is not available "
                             f"({MOBILENET_UNAVAILABLE})")
        from convgen import nn as cnn
        from convgen.nn import init as nn_init

        previous = nn_init._RNG  # seeded, as load_network seeds a file's layers
        cnn.manual_seed(0)
        try:
            net = _mobilenet_v2_builder(cnn, cnn.functional.flatten)
        finally:
            nn_init._RNG = previous
        shape: tuple[int, ...] = (1, 3, DEFAULT_IMAGE_SIZE, DEFAULT_IMAGE_SIZE)
    else:
        net = cg.load_network(NETS / f"{name}.toml")
        shape = tuple(net.input_shape)
    _randomize_batch_norm(net)
    return net, shape


def input_shape(name: str, file_shape: tuple[int, ...], batch: int,
                image_size: int) -> tuple[int, ...]:
    if name in IMAGE_NETWORKS:
        return (batch, file_shape[1], image_size, image_size)
    return (batch, *file_shape[1:])


def network_gflop(model) -> float:
    graph = model.graph
    return sum(layer_flops(node, graph) for node in graph.nodes) / 1e9


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    want = np.asarray(want, dtype=np.float64)
    scale = float(np.abs(want).max()) or 1.0
    return float(np.abs(np.asarray(got, dtype=np.float64) - want).max() / scale)


# -- the torch mirror -------------------------------------------------------------------

def _plain(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_plain(v) for v in value)
    return value


def torch_from_netspec(torch, path: Path):
    """The network file at ``path`` built with torch.nn: the same layer classes and
    arguments, the same module names (so convgen's state_dict loads), Residual and Concat
    written as small torch modules with convgen's forward."""
    tnn = torch.nn
    text = read_text_file(str(path), "network")
    data = parse_toml(text, str(path), ("name", "description", "input_shape", "layer"))

    class Residual(tnn.Module):
        def __init__(self, body, shortcut, shortcut_name, post):
            super().__init__()
            for name, module in body:
                self.add_module(name, module)
            self._body = [name for name, _ in body]
            self._shortcut = shortcut_name if shortcut is not None else None
            if shortcut is not None:
                self.add_module(shortcut_name, shortcut)
            self._post = None
            if post is not None:
                name, module = post
                if self._modules.get(name) is not module:
                    self.add_module(name, module)
                self._post = name

        def forward(self, x):
            out = x
            for name in self._body:
                out = self._modules[name](out)
            identity = x if self._shortcut is None else self._modules[self._shortcut](x)
            out = out + identity
            return out if self._post is None else self._modules[self._post](out)

    class Concat(tnn.Module):
        def __init__(self, branches, dim):
            super().__init__()
            for i, branch in enumerate(branches):
                self.add_module(str(i), branch)
            self.dim = dim

        def forward(self, x):
            return torch.cat([branch(x) for branch in self.children()], dim=self.dim)

    def named(tables):
        return [(table.get("name", str(i)), layer(table)) for i, table in enumerate(tables)]

    def sequential(tables):
        return tnn.Sequential(collections.OrderedDict(named(tables)))

    def layer(table):
        kind = table["type"]
        if kind == "Sequential":
            return sequential(table["layers"])
        if kind == "Concat":
            return Concat([sequential(b) for b in table["branches"]], table.get("dim", 1))
        if kind == "Residual":
            body = named(table["body"])
            tables = {t.get("name", str(i)): t for i, t in enumerate(table["body"])}
            shortcut = sequential(table["shortcut"]) if "shortcut" in table else None
            post = None
            if "post" in table:
                post_table = table["post"]
                name = post_table.get("name", post_table["type"].lower())
                if name in tables:  # reuses the body layer of that name (netspec's rule)
                    post = (name, dict(body)[name])
                else:
                    post = (name, layer(post_table))
            return Residual(body, shortcut, table.get("shortcut_name", "downsample"), post)
        args = [_plain(a) for a in table.get("args", [])]
        kwargs = {k: _plain(v) for k, v in table.items() if k not in ("name", "type", "args")}
        return getattr(tnn, kind)(*args, **kwargs)

    return sequential(data["layer"])


def torch_network(torch, name: str, net):
    """The torch.nn twin of convgen's ``net``, with its state_dict, in eval mode (CPU)."""
    if name == "mobilenet_v2":
        tnet = _mobilenet_v2_builder(torch.nn, torch.flatten)
    else:
        tnet = torch_from_netspec(torch, NETS / f"{name}.toml")
    state = {k: torch.from_numpy(np.array(v)) for k, v in net.state_dict().items()}
    tnet.load_state_dict(state, strict=True)
    return tnet.eval()


# -- emulator check ---------------------------------------------------------------------

def _find_torch_cpu() -> tuple[Any, str]:
    try:
        import torch
    except ImportError:
        return None, "PyTorch is not installed"
    return torch, ""


def emulator_check(names: list[str], args: argparse.Namespace) -> int:
    config.set_cuda_device("emulator")
    image_size = args.image_size if args.image_size is not None else EMULATOR_IMAGE_SIZE
    torch, no_torch = _find_torch_cpu()
    print(f"CUDA emulator check: batch 1, {'/'.join(IMAGE_NETWORKS)} at {image_size}x"
          f"{image_size}, the others at their file's input shape; each network run once on "
          "an emulator DeviceArray and compared with model.reference (no timing)")
    print("torch twin: " + ("checked on the CPU" if torch is not None
                            else f"not checked ({no_torch})"))
    results, failed = [], 0
    for name in names:
        record: dict[str, Any] = {"network": name}
        try:
            net, file_shape = build_network(name)
            shape = input_shape(name, file_shape, 1, image_size)
            record["input_shape"] = list(shape)
            model = net.compile(shape, backend="cuda")
            x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
            got = model(to_device(x))
            want = model.reference(x)
            error = relative_error(got.copy_to_host(), want)
            record.update(error=error, ok=error < TOLERANCE)
            text = f"max rel error {error:.2e}"
            if torch is not None:
                tnet = torch_network(torch, name, net)
                with torch.no_grad():
                    torch_out = tnet(torch.from_numpy(x)).numpy()
                torch_error = relative_error(torch_out, want)
                record["torch_error"] = torch_error
                record["ok"] = record["ok"] and torch_error < TOLERANCE
                text += f", torch twin (CPU) {torch_error:.2e}"
            verdict = "OK" if record["ok"] else "FAIL"
            print(f"{verdict:<4} {name:<16} {'x'.join(map(str, shape)):>14}  {text} "
                  f"(limit {TOLERANCE:g})", flush=True)
        except Exception as exc:  # noqa: BLE001 - reported per network
            record.update(ok=False, error_text=f"{type(exc).__name__}: {exc}")
            print(f"FAIL {name:<16} {type(exc).__name__}: {exc}", flush=True)
        failed += not record["ok"]
        results.append(record)
    if args.json:
        write_json(args.json, {"mode": "emulator-check", "image_size": image_size,
                               "networks": results})
    print(f"{len(names) - failed} of {len(names)} networks OK on the CUDA emulator")
    return 1 if failed else 0


# -- timing -----------------------------------------------------------------------------

def time_convgen(model, xd, gpu, args: argparse.Namespace) -> list[float]:
    """convgen launches on the legacy default stream: driver-API events on it."""
    def elapsed(start, end) -> float:
        return end.elapsed_ms(start)  # waits for ``end`` first

    return time_with_events(lambda: model(xd), lambda: cuda_driver.Event(gpu), elapsed,
                            args.warmup, args.repeat, args.calls)


# -- the GPU benchmark ------------------------------------------------------------------

@dataclass
class Result:
    network: str
    batch: int
    input_shape: list[int]
    gflop: float | None = None
    convgen_ms: float | None = None
    convgen_times_ms: list[float] = field(default_factory=list)
    convgen_images_per_s: float | None = None
    convgen_error: float | None = None
    convgen_ok: bool = False
    tflops: float | None = None
    torch_ms: float | None = None
    torch_times_ms: list[float] = field(default_factory=list)
    torch_images_per_s: float | None = None
    torch_error: float | None = None
    compiled_ms: float | None = None
    compiled_times_ms: list[float] = field(default_factory=list)
    compiled_images_per_s: float | None = None
    compiled_error: float | None = None
    compiled_na: str | None = None  # why torch.compile has no figure
    torch_ratio: float | None = None  # torch ms / convgen ms: > 1, convgen is faster
    compiled_ratio: float | None = None  # torch.compile ms / convgen ms
    notes: list[str] = field(default_factory=list)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]


def _per_second(batch: int, ms: float | None) -> float | None:
    return batch / (ms * 1e-3) if ms else None


def bench_network(name: str, batch: int, gpu, ordinal, torch: Any, args: argparse.Namespace,
                  torch_device: str | None = None) -> Result:
    net, file_shape = build_network(name)
    shape = input_shape(name, file_shape, batch, args.image_size)
    result = Result(name, batch, list(shape))
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    want = None
    try:
        model = net.compile(shape, backend="cuda")
        result.gflop = network_gflop(model)
        want = model.reference(x)
        xd = to_device(x, ordinal)  # once; every call reads it in place
        got = model(xd)
        result.convgen_error = relative_error(got.copy_to_host(), want)
        del got
        result.convgen_ok = result.convgen_error < TOLERANCE
        if not result.convgen_ok:
            result.notes.append(f"convgen: max rel error {result.convgen_error:.3g} > "
                                f"{TOLERANCE:g}")
        result.convgen_times_ms = time_convgen(model, xd, gpu, args)
        result.convgen_ms = statistics.median(result.convgen_times_ms)
        result.convgen_images_per_s = _per_second(batch, result.convgen_ms)
        result.tflops = result.gflop / result.convgen_ms  # GFLOP / ms = TFLOP/s
        del model, xd
    except Exception as exc:  # noqa: BLE001 - reported in the row
        result.convgen_ok = False
        result.notes.append(f"convgen: {_describe(exc)}")
    gpu.synchronize()
    if torch is not None:
        bench_torch(torch, name, net, x, want, torch_device or f"cuda:{ordinal}", result,
                    args)
        torch.cuda.synchronize()
        torch.cuda.empty_cache()  # the twin and its input are gone with bench_torch's frame
    if result.convgen_ok and result.convgen_ms:
        if result.torch_ms:
            result.torch_ratio = result.torch_ms / result.convgen_ms
        if result.compiled_ms:
            result.compiled_ratio = result.compiled_ms / result.convgen_ms
    return result


def bench_torch(torch, name: str, net, x: np.ndarray, want, device: str, result: Result,
                args: argparse.Namespace) -> None:
    try:
        tnet = torch_network(torch, name, net).to(device)
        xt = torch.from_numpy(x).to(device)
        torch.cuda.synchronize()
    except Exception as exc:  # noqa: BLE001
        result.notes.append(f"torch: {_describe(exc)}")
        result.compiled_na = "torch model not built"
        return

    def check(label: str, out) -> float | None:
        if want is None:
            return None
        error = relative_error(out.detach().cpu().numpy(), want)
        if error >= TOLERANCE:
            result.notes.append(f"{label}: max rel error {error:.3g} > {TOLERANCE:g}")
        return error

    def eager():
        with torch.no_grad():
            return tnet(xt)

    try:
        result.torch_error = check("torch", eager())
        result.torch_times_ms = time_torch(torch, eager, args)
        result.torch_ms = statistics.median(result.torch_times_ms)
        result.torch_images_per_s = _per_second(result.batch, result.torch_ms)
    except Exception as exc:  # noqa: BLE001
        result.notes.append(f"torch: {_describe(exc)}")
    if args.no_torch_compile:
        result.compiled_na = "--no-torch-compile"
    else:
        try:
            torch._dynamo.reset()  # no recompile as a dynamic shape across batch sizes
            compiled = torch.compile(tnet, dynamic=False)

            def call():
                with torch.no_grad():
                    return compiled(xt)

            result.compiled_error = check("torch.compile", call())  # compiles here
            result.compiled_times_ms = time_torch(torch, call, args)
            result.compiled_ms = statistics.median(result.compiled_times_ms)
            result.compiled_images_per_s = _per_second(result.batch, result.compiled_ms)
        except Exception as exc:  # noqa: BLE001 - no inductor/triton, a graph break error...
            result.compiled_na = _describe(exc).splitlines()[0][:120]


HEADER = (f"{'network':<16} {'batch':>5} {'GFLOP':>8} {'cg ms':>9} {'cg img/s':>10} "
          f"{'TFLOP/s':>7} {'torch ms':>9} {'t/cg':>6} {'compile ms':>10} {'tc/cg':>6}  check")


def _num(value: float | None, spec: str) -> str:
    return format(value, spec) if value is not None else "n/a"


def format_row(r: Result) -> str:
    compiled = _num(r.compiled_ms, ".3f") if r.compiled_na is None else "n/a"
    check = "ok" if r.convgen_ok else "FAIL"
    return (f"{r.network:<16} {r.batch:>5} {_num(r.gflop, '.3f'):>8} "
            f"{_num(r.convgen_ms, '.3f'):>9} {_num(r.convgen_images_per_s, '.1f'):>10} "
            f"{_num(r.tflops, '.2f'):>7} {_num(r.torch_ms, '.3f'):>9} "
            f"{_num(r.torch_ratio, '.2f'):>6} {compiled:>10} "
            f"{_num(r.compiled_ratio, '.2f'):>6}  {check}")


def gpu_bench(names: list[str], ordinal, args: argparse.Namespace,
              torch_device: str | None = None) -> int:
    """The table for ``names`` at every ``args.batch`` on GPU ``ordinal`` (torch tensors on
    ``torch_device``, default ``cuda:<ordinal>``); 1 if a convgen result failed."""
    gpu = cuda_driver.Driver.get(ordinal)
    device_name = gpu.name()
    peak = peak_fp32(device_name)
    torch, no_torch = find_torch()
    if torch is not None:
        torch.cuda.set_device(ordinal)
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.allow_tf32 = bool(args.tf32)
        torch.backends.cuda.matmul.allow_tf32 = bool(args.tf32)
    peak_text = (f"; nominal fp32 peak {peak[1]:g} TFLOP/s ({peak[0]})" if peak else "")
    print(f"GPU {ordinal}: {device_name}, {gpu.arch()}{peak_text}")
    if torch is not None:
        print(f"torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}, "
              f"cudnn.benchmark on, TF32 {'on' if args.tf32 else 'off'}, eval, no_grad; "
              f"torch.compile {'off' if args.no_torch_compile else 'on (dynamic=False)'}")
    else:
        print(f"torch: not measured ({no_torch})")
    print(f"device arrays in and out; {args.warmup} warm-up calls, median of {args.repeat} "
          f"repetitions of {args.calls} back-to-back calls (CUDA events); "
          f"{'/'.join(IMAGE_NETWORKS)} at {args.image_size}x{args.image_size}; "
          "t/cg, tc/cg: torch or torch.compile ms over convgen ms (> 1: convgen is faster)\n")
    print(HEADER)
    print("-" * len(HEADER))
    results = []
    for name in names:
        for batch in args.batch:
            result = bench_network(name, batch, gpu, ordinal, torch, args, torch_device)
            results.append(result)
            print(format_row(result), flush=True)
    notes = [(f"{r.network} batch {r.batch}", note) for r in results for note in r.notes]
    notes += [(f"{r.network} batch {r.batch}", f"torch.compile: n/a ({r.compiled_na})")
              for r in results if r.compiled_na is not None and torch is not None]
    if notes:
        print("\nnotes:")
        for where, note in notes:
            print(f"  {where}: {note}")
    for label, key in (("torch/cg", "torch_ratio"), ("torch.compile/cg", "compiled_ratio")):
        ratios = [getattr(r, key) for r in results if getattr(r, key)]
        if ratios:
            geomean = math.exp(sum(math.log(v) for v in ratios) / len(ratios))
            print(f"geometric mean {label} over {len(ratios)} rows: {geomean:.2f}")
    if args.json:
        write_json(args.json, {
            "mode": "gpu", "measured": True,
            "device": {"ordinal": ordinal, "name": device_name, "arch": gpu.arch(),
                       "peak_fp32_tflops": peak[1] if peak else None},
            "torch": None if torch is None else {
                "version": torch.__version__, "cudnn": torch.backends.cudnn.version(),
                "tf32": bool(args.tf32), "compile": not args.no_torch_compile},
            "image_size": args.image_size, "warmup": args.warmup, "repeat": args.repeat,
            "calls": args.calls, "tolerance": TOLERANCE,
            "results": [asdict(r) for r in results]})
    return 0 if all(r.convgen_ok for r in results) else 1


def select_networks(names: list[str] | None) -> list[str]:
    known = network_names()
    if not names:
        return known
    unknown = [n for n in names if n not in known]
    if unknown:
        extra = (f" (mobilenet_v2 is unavailable: {MOBILENET_UNAVAILABLE})"
                 if "mobilenet_v2" in unknown and MOBILENET_UNAVAILABLE else "")
        raise SystemExit(f"gpu_networks.py: unknown network(s) {', '.join(unknown)}{extra}; "
                         f"the networks are: {', '.join(known)}")
    return list(dict.fromkeys(names))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", nargs="+", metavar="NAME",
                        help=f"a subset of: {', '.join(network_names())}")
    parser.add_argument("--batch", nargs="+", type=positive, default=[1, 32],
                        help="batch sizes (default 1 32)")
    parser.add_argument("--image-size", type=positive, default=None,
                        help=f"height and width for {', '.join(IMAGE_NETWORKS)} (default "
                             f"{DEFAULT_IMAGE_SIZE}; {EMULATOR_IMAGE_SIZE} with "
                             "--emulator-check)")
    parser.add_argument("--no-torch-compile", action="store_true",
                        help="skip the torch.compile column (its compiles take a while)")
    args = parse_timing_arguments(parser, argv, "each network once at batch 1")
    names = select_networks(args.networks)
    if args.emulator_check:
        return emulator_check(names, args)
    if args.image_size is None:
        args.image_size = DEFAULT_IMAGE_SIZE
    ordinal, why = no_gpu_reason()
    if ordinal is None:
        return report_no_gpu(why, "networks", args.json)
    return gpu_bench(names, ordinal, args)


if __name__ == "__main__":
    raise SystemExit(main())
