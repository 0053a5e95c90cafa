"""``convgen bench``: convgen against NumPy, PyTorch and ONNX Runtime, in the same run.

    convgen bench SPECFILE|NETSPEC|MODEL.onnx [--threads 1,2] [--repeat N]
                  [--json out.json] [--plot out.png] [--backend c|llvm]
    convgen bench --peak [--threads 1,2]

A spec file: every convolution against every installed peer (see :mod:`convgen.bench.measure`).
A network file or an ONNX model: the compiled model's end-to-end latency (next to ONNX
Runtime on the same file for an ONNX model; a network file has no peer, since convgen
cannot export one), then each distinct convolution of the network as for a spec file.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from convgen import config
from convgen.backends import get_backend
from convgen.bench.measure import CONVGEN, PAUSE_S, PEAK_SECONDS, ROUND_CALLS, SLOW_RATIO, WARMUP_S, \
    LayerResult, Peers, bench_layers, fma_probe, geometric_mean, measure_bandwidth, \
    measure_interleaved, measure_peak
from convgen.bench.peers import Runner, ort_session
from convgen.cache import cpu_identity
from convgen.cli.args import positive_int, shape_arg, thread_count
from convgen.cli.run import relative_error
from convgen.cli.tune import is_network_file
from convgen.errors import ConvgenError
from convgen.graph.netspec import load_network
from convgen.onnx.importer import from_onnx
from convgen.specfile import load_specfile
from convgen.tuning.tuner import network_convs
from convgen.version import __version__

RUNTIMES = (CONVGEN, "numpy", "torch", "torch_cl", "ort")
NETWORK_TOLERANCE = 1e-3  # max |got - ref| / max |ref| for a float32 network, as `run`
PLOT_HINT = "pip install 'convgen[plot]' (or: pip install matplotlib)"


class BenchError(ConvgenError):
    """A bench request that cannot be met (e.g. --plot without matplotlib)."""


def add_bench_command(subparsers, parents: list[argparse.ArgumentParser]) -> None:
    """Add ``bench SPECFILE|NETSPEC|MODEL.onnx`` and ``bench --peak``."""
    p = subparsers.add_parser(
        "bench", parents=parents, help="time convgen against NumPy, PyTorch and ONNX Runtime",
        description="Time each convolution of a spec file with convgen (tuned or default "
                    "schedule, preallocated output) and, in the same run, with NumPy "
                    "im2col+matmul and, when installed, PyTorch (NCHW and channels_last, "
                    "layout conversions counted) and ONNX Runtime; check every output "
                    "against the oracle; print ms, GFLOP/s, % of the measured peak and "
                    "ratio = fastest peer ms / convgen ms (> 1: convgen is faster). A "
                    "network file or an .onnx model is timed end to end first. --peak "
                    "measures the peak FMA throughput only.")
    p.add_argument("path", nargs="?", metavar="SPECFILE|NETSPEC|MODEL.onnx",
                   help="TOML spec file, TOML network file or ONNX model")
    p.add_argument("--threads", type=_thread_list, default=None, metavar="1,2",
                   help="comma-separated thread counts, each 1 to 256 (default: 1 and "
                        "cg.get_num_threads(): $CONVGEN_NUM_THREADS, $OMP_NUM_THREADS or "
                        "the cores)")
    p.add_argument("--repeat", type=positive_int, default=10, metavar="N",
                   help="interleaved rounds per layer; each runtime gets warm-up calls "
                        f"({WARMUP_S * 1e3:g} ms of them) and "
                        f"{ROUND_CALLS} timed calls per round; the median is reported "
                        "(default: %(default)s)")
    p.add_argument("--json", metavar="OUT.json", help="write every measurement as JSON")
    p.add_argument("--plot", metavar="OUT.png",
                   help=f"draw a roofline plot (needs matplotlib: {PLOT_HINT})")
    p.add_argument("--input-shape", type=shape_arg, default=None, metavar="1,3,224,224",
                   help="network or ONNX model only: compile for this input shape (fixes an "
                        "ONNX model's symbolic dims; default: the file's)")
    p.add_argument("--peak", action="store_true",
                   help="only measure the peak FMA throughput per thread count")
    p.add_argument("--peak-seconds", type=float, default=PEAK_SECONDS, metavar="S",
                   help="seconds per peak measurement (default: %(default)s)")
    p.set_defaults(run=run_bench)


def _thread_list(text: str) -> list[int]:
    values = [thread_count(part.strip()) for part in text.split(",") if part.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"expected thread counts like 1,2, got {text!r}")
    return list(dict.fromkeys(values))


def default_threads() -> list[int]:
    return list(dict.fromkeys([1, config.num_threads()]))


# -- the command ------------------------------------------------------------------------

def run_bench(args: argparse.Namespace) -> int:
    threads = args.threads or default_threads()
    if args.peak_seconds <= 0:
        raise BenchError(f"--peak-seconds: expected a positive number, got {args.peak_seconds}")
    if args.plot:
        _require_matplotlib()
    if args.peak:
        if args.path:
            raise BenchError("--peak takes no SPECFILE|NETSPEC|MODEL.onnx")
        peaks = print_peaks(threads, args.peak_seconds)
        if args.json:
            write_json(args.json, {**machine_info(args.backend), "peak_gflops": peaks})
        return 0
    if not args.path:
        raise BenchError("expected SPECFILE|NETSPEC|MODEL.onnx (or --peak)")
    if args.backend is not None and get_backend(args.backend).device != "cpu":
        # the peers here are CPU libraries, and on the emulator a time says nothing
        raise BenchError(f"--backend {args.backend}: convgen bench compares CPU kernels with "
                         "CPU peers; time CUDA kernels on a GPU with bench/gpu_layers.py "
                         "(next to PyTorch's cuDNN)")

    peers = Peers.find()
    print(f"convgen {__version__} (backend {args.backend}); "
          + "; ".join(f"{k} {v}" for k, v in peers.versions().items()))
    missing = [name for name, lib in (("torch", peers.torch), ("onnxruntime", peers.ort))
               if lib is None]
    if missing:
        print(f"not installed, peer skipped: {', '.join(missing)} "
              "(pip install 'convgen[bench]')")
    load = _load_average()
    if load is not None:
        print(f"load average {load:.2f} before the run (cpu count {os.cpu_count()}); other "
              "processes on the cores make timings noisy")
    peaks = print_peaks(threads, args.peak_seconds)

    networks: list[dict] = []
    entries, title = _layer_entries(args, threads, peers, networks)
    print(f"\n{title}: {len(entries)} convolution{'s' if len(entries) != 1 else ''}; "
          f"runtimes interleaved per layer: {args.repeat} round{'s' if args.repeat != 1 else ''}"
          f" of warm-up ({WARMUP_S * 1e3:g} ms of calls) + {ROUND_CALLS}"
          " timed calls each, the median; inputs and outputs "
          "NC(D)(H)W "
          "for all (torch_cl counts its layout conversions)")
    results = run_tables(entries, threads, args.backend, args.repeat, peers, peaks)

    bandwidth = measure_bandwidth() if args.plot or args.json else None
    if args.json:
        data = {**machine_info(args.backend), "path": args.path, "repeat": args.repeat,
                "load_average_before": load,
                "versions": {"convgen": __version__, **peers.versions()},
                "peak_gflops": peaks,
                "bandwidth_gbs": None if bandwidth is None else bandwidth / 1e9,
                "measurements": measurements(results, peaks),
                "summary": [summary(results, t) for t in threads],
                "networks": networks}
        write_json(args.json, data)
        print(f"wrote {args.json}")
    if args.plot:
        plot_roofline(results, peaks, bandwidth, args.plot, args.path)
        print(f"wrote {args.plot}")
    # Exit 1 when convgen's own output is wrong (a peer's failure is only marked).
    failed = any(CONVGEN in r.cells and not r.cells[CONVGEN].passed for r in results) \
        or any(not n["ok"] for n in networks)
    return 1 if failed else 0


def _layer_entries(args, threads: list[int], peers: Peers, networks: list[dict]):
    """(name, spec, schedule) per convolution to bench, and a title; networks are timed
    end to end here first, their rows appended to ``networks``."""
    path = args.path
    if str(path).lower().endswith(".onnx"):
        model_for = _onnx_models(path, args.backend, args.input_shape)
        graph = bench_network(path, model_for, threads, args.repeat, networks,
                              ort_model=path, peers=peers)
        return _graph_convs(graph), f"distinct convolutions of {path}"
    if is_network_file(path):
        network = load_network(path)

        def model_for(t: int):
            return network.compile(args.input_shape, backend=args.backend, threads=t)
        graph = bench_network(path, model_for, threads, args.repeat, networks, peers=peers)
        return _graph_convs(graph), f"distinct convolutions of {path}"
    if args.input_shape is not None:
        raise BenchError("--input-shape applies to a network file or an ONNX model, "
                         f"not to the spec file {path}")
    entries = load_specfile(path)
    return [(e.name, e.spec, e.schedule) for e in entries], path


def _onnx_models(path: str, backend: str, input_shape: tuple[int, ...] | None):
    imported = from_onnx(path, input_shape=input_shape)
    if imported.specialized_inputs:  # values the network is built for: not invented here
        raise BenchError(f"{path}: the graph inputs "
                         f"{[name for name, *_ in imported.specialized_inputs]} are "
                         "specialized inputs (weights or shape values the network is built "
                         "for), which bench does not invent; fix them in the model as "
                         "initializers, or time cg.from_onnx(path).compile(constants=...) "
                         "from Python")

    def model_for(t: int):
        return imported.compile(backend=backend, threads=t)
    return model_for


def _graph_convs(graph) -> list[tuple[str, Any, None]]:
    return [(name, spec, None) for name, spec in network_convs(graph).values()]


# -- networks end to end ----------------------------------------------------------------

def bench_network(path: str, model_for, threads: list[int], repeat: int,
                  rows: list[dict], ort_model: str | None = None,
                  peers: Peers | None = None):
    """Compile the network per thread count and time it (and ONNX Runtime on ``ort_model``);
    both outputs checked against the composed oracle. Returns the traced graph."""
    ort = peers.ort if peers is not None and ort_model is not None else None
    graph = x = want = None
    print(f"\nnetwork {path}: end-to-end latency, {repeat} interleaved rounds (convgen, ort) of "
          f"warm-up ({WARMUP_S * 1e3:g} ms of calls) + "
          f"{ROUND_CALLS} timed calls, the median; "
          f"check: max |y - oracle| / max |oracle| <= {NETWORK_TOLERANCE:g}")
    if ort_model is not None and ort is None:
        print("  onnxruntime not installed: no end-to-end peer")
    elif ort_model is None:
        print("  peer: none (a network file has no ONNX or PyTorch twin to run); its "
              "distinct convolutions are compared layer by layer below")
    print(f"  {'threads':>7}  {'convgen ms':>10}  {'ort ms':>8}  {'ratio':>6}  check")
    for t in threads:
        start = time.perf_counter()
        model = model_for(t)
        compile_s = time.perf_counter() - start
        if graph is None:
            graph = model.graph
            rng = np.random.default_rng(0)
            x = [rng.standard_normal(s).astype(model.dtype) for s in model.input_shapes]
            want = model.reference(*x)
        row: dict[str, Any] = {"network": path, "threads": t, "compile_s": compile_s}
        got = model(*x)
        row["convgen_error"] = relative_error(got, want)
        runners = {"convgen": Runner(lambda: model(*x))}
        row["ort_ms"] = row["ort_error"] = None
        if ort is not None:
            session = ort_session(ort, ort_model, t)
            feeds = {i.name: a for i, a in zip(session.get_inputs(), x)}
            row["ort_error"] = relative_error(session.run(None, feeds)[0], want)
            runners["ort"] = Runner(lambda: session.run(None, feeds), lambda y: y[0])
        timed = measure_interleaved(runners, repeat, PAUSE_S if t > 1 else 0.0)
        for name, (times, _) in timed.items():
            row[f"{name}_ms"] = float(np.median(times)) * 1e3
        errors = [row[k] for k in ("convgen_error", "ort_error") if row[k] is not None]
        row["ok"] = all(e <= NETWORK_TOLERANCE for e in errors)
        row["ratio"] = row["ort_ms"] / row["convgen_ms"] if row["ort_ms"] else None
        rows.append(row)
        ort_ms = f"{row['ort_ms']:.3f}" if row["ort_ms"] is not None else "-"
        ratio = f"{row['ratio']:.2f}" if row["ratio"] is not None else "-"
        check = "ok" if row["ok"] else "FAIL " + ", ".join(
            f"{k.split('_')[0]} {row[k]:.1e}" for k in ("convgen_error", "ort_error")
            if row[k] is not None and not row[k] <= NETWORK_TOLERANCE)
        print(f"  {t:>7}  {row['convgen_ms']:>10.3f}  {ort_ms:>8}  {ratio:>6}  {check}",
              flush=True)
    return graph




# -- peak -------------------------------------------------------------------------------

def print_peaks(threads: Sequence[int], seconds: float) -> dict[str, float]:
    """Measure and print the peak per thread count; {"1": GFLOP/s, ...}."""
    probe = fma_probe()
    peaks = {}
    for t in threads:
        peaks[str(t)] = measure_peak(t, seconds) / 1e9
    text = ", ".join(f"{t} thread{'s' if t != 1 else ''} {peaks[str(t)]:.1f}"
                     for t in threads)
    print(f"peak fp32 FMA throughput (GFLOP/s): {text}  [generated microkernel: "
          f"{probe.accumulators} independent chains of {probe.lanes}-lane FMAs "
          f"({probe.isa}), best of 3 x {seconds:g} s]")
    return peaks


def _load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return None


def machine_info(backend: str) -> dict[str, Any]:
    return {"convgen": __version__, "backend": backend, "cpu": cpu_identity(),
            "machine": platform.machine(), "cpu_count": os.cpu_count()}


# -- tables -----------------------------------------------------------------------------

def run_tables(entries, threads: list[int], backend: str, repeat: int, peers: Peers,
               peaks: dict[str, float]) -> list[LayerResult]:
    """Bench every entry at every thread count, printing each row as it is measured."""
    runtimes = [CONVGEN, *peers.names()]
    width = max([len(name) for name, _, _ in entries] + [5])
    current: list[int] = []
    results: list[LayerResult] = []

    def report(result: LayerResult) -> None:
        if not current or current[-1] != result.threads:
            if current:
                print_footer([r for r in results if r.threads == current[-1]], current[-1])
            current.append(result.threads)
            print_header(result.threads, runtimes, width, peaks, backend)
        results.append(result)
        print(format_row(result, runtimes, width, peaks), flush=True)

    bench_layers(entries, threads, backend, repeat, peers, report)
    if current:
        print_footer([r for r in results if r.threads == current[-1]], current[-1])
    return results


def _peak(peaks: dict[str, float], threads: int) -> float | None:
    return peaks.get(str(threads))


def print_header(threads: int, runtimes: list[str], width: int, peaks: dict[str, float],
                 backend: str) -> None:
    peak = _peak(peaks, threads)
    peak_text = f"peak {peak:.1f} GFLOP/s" if peak else "peak not measured"
    print(f"\n== {threads} thread{'s' if threads != 1 else ''}; convgen backend {backend}; "
          f"{peak_text} ==")
    cols = [f"{'layer':<{width}}", f"{'GFLOP':>7}", f"{'cg ms':>9}", f"{'GFLOP/s':>8}",
            f"{'%peak':>6}"]
    cols += [f"{name + ' ms':>11}" for name in runtimes if name != CONVGEN]
    cols += [f"{'best peer':<9}", f"{'ratio':>6}", "check"]
    line = "  ".join(cols)
    print(line)
    print("-" * len(line))


def format_row(result: LayerResult, runtimes: list[str], width: int,
               peaks: dict[str, float]) -> str:
    spec = result.spec
    mine = result.cells.get(CONVGEN)
    peak = _peak(peaks, result.threads)
    cols = [f"{result.name:<{width}}", f"{spec.flops / 1e9:>7.3f}"]
    if mine is not None and mine.seconds is not None:
        gflops = spec.flops / mine.seconds / 1e9
        flag = "" if mine.passed else "!"
        cols += [f"{mine.seconds * 1e3:>8.3f}{flag:1}", f"{gflops:>8.1f}",
                 f"{100 * gflops / peak:>5.0f}%" if peak else f"{'-':>6}"]
    else:
        cols += [f"{'n/a':>9}", f"{'-':>8}", f"{'-':>6}"]
    for name in runtimes:
        if name == CONVGEN:
            continue
        cell = result.cells.get(name)
        if cell is None or cell.seconds is None:
            cols.append(f"{'n/a':>11}")
        else:
            flag = "" if cell.passed else "!"
            cols.append(f"{cell.seconds * 1e3:>10.3f}{flag:1}")
    best, ratio = result.best_peer(), result.ratio()
    cols.append(f"{best[0] if best else '-':<9}")
    cols.append(f"{ratio:>6.2f}" if ratio is not None else f"{'-':>6}")
    failed = [name for name, c in result.cells.items() if not c.passed]
    cols.append("ok" if not failed else "FAIL " + ",".join(failed))
    return "  ".join(cols)


def summary(results: list[LayerResult], threads: int) -> dict[str, Any]:
    rows = [r for r in results if r.threads == threads]
    ratios = {r.name: r.ratio() for r in rows}
    slow = [name for name, ratio in ratios.items() if ratio is not None and ratio < SLOW_RATIO]
    return {"threads": threads, "layers": len(rows),
            "compared": sum(r is not None for r in ratios.values()),
            "geomean_ratio": geometric_mean([r for r in ratios.values() if r is not None]),
            "below_0_8": len(slow), "below_0_8_layers": slow,
            "failed": sorted({f"{r.name}:{n}" for r in rows for n, c in r.cells.items()
                              if not c.passed})}


def print_footer(results: list[LayerResult], threads: int) -> None:
    s = summary(results, threads)
    mean = f"{s['geomean_ratio']:.3f}" if s["geomean_ratio"] is not None else "-"
    print(f"geomean ratio (fastest peer ms / convgen ms) at {threads} "
          f"thread{'s' if threads != 1 else ''}: {mean} over {s['compared']} layer(s); "
          f"{s['below_0_8']} below {SLOW_RATIO}"
          + (f" ({', '.join(s['below_0_8_layers'])})" if s["below_0_8_layers"] else ""))
    notes: dict[tuple[str, str], list[str]] = {}
    for r in results:
        for name, cell in r.cells.items():
            if cell.seconds is None:
                notes.setdefault((name, cell.note), []).append(r.name)
    for (name, note), layers in notes.items():
        print(f"n/a: {name} on {', '.join(layers)}: {note}")
    for r in results:
        if r.spec.groups > 1 and r.spec.groups == r.spec.in_channels:
            cell = r.cells.get(CONVGEN)
            if cell is not None and cell.seconds:
                print(f"{r.name}: depthwise, bandwidth-bound: convgen moves "
                      f"{r.spec.bytes / cell.seconds / 1e9:.1f} GB/s (spec.bytes / time)")
    if s["failed"]:
        print("'!' marks an output beyond the oracle's tolerance (excluded from ratios)")


# -- JSON and plot ----------------------------------------------------------------------

def measurements(results: list[LayerResult], peaks: dict[str, float]) -> list[dict]:
    """One record per (layer, threads, runtime)."""
    out = []
    for r in results:
        spec = r.spec
        mine = r.cells.get(CONVGEN)
        mine_s = mine.seconds if mine is not None and mine.passed else None
        peak = _peak(peaks, r.threads)
        for name, cell in r.cells.items():
            gflops = spec.flops / cell.seconds / 1e9 if cell.seconds else None
            if name == CONVGEN:
                ratio = r.ratio()
            else:
                ratio = cell.seconds / mine_s if cell.seconds and mine_s else None
            out.append({
                "layer": r.name, "threads": r.threads, "runtime": name,
                "median_ms": cell.seconds * 1e3 if cell.seconds is not None else None,
                "min_ms": cell.min_seconds * 1e3 if cell.min_seconds is not None else None,
                "gflops": gflops,
                "percent_of_peak": 100 * gflops / peak if gflops and peak else None,
                "ratio": ratio, "max_error": cell.error, "ok": cell.passed,
                "note": cell.note, "flops": spec.flops, "bytes": spec.bytes,
                "intensity": spec.flops / spec.bytes,
                "schedule": r.schedule if name == CONVGEN else None,
                "spec": spec.to_dict()})
    return out


def write_json(path: str, data: dict) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=1, default=str)
        f.write("\n")


def _require_matplotlib() -> None:
    try:
        importlib.import_module("matplotlib")
    except ImportError:
        raise BenchError(f"--plot needs matplotlib, which is not installed: "
                         f"{PLOT_HINT}") from None


def plot_roofline(results: list[LayerResult], peaks: dict[str, float],
                  bandwidth: float | None, path: str, title: str) -> None:
    """GFLOP/s against arithmetic intensity (FLOP per byte of spec.bytes): convgen (filled)
    and the fastest peer (hollow) per layer, one colour per thread count; the measured peak
    of each thread count and the copy bandwidth as roofs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 6.5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    threads = sorted({r.threads for r in results})
    intensities = [r.spec.flops / r.spec.bytes for r in results] or [1.0]
    lo, hi = min(intensities) / 2, max(intensities) * 2
    xs = np.geomspace(lo, hi, 200)
    for i, t in enumerate(threads):
        colour = colours[i % len(colours)]
        peak = _peak(peaks, t)
        if peak:
            roof = np.full_like(xs, peak)
            if bandwidth:
                roof = np.minimum(roof, xs * bandwidth / 1e9)
            ax.plot(xs, roof, "-", color=colour, alpha=0.5,
                    label=f"roof, {t} thread{'s' if t != 1 else ''}: peak {peak:.0f} GFLOP/s")
        for r in (r for r in results if r.threads == t):
            ai = r.spec.flops / r.spec.bytes
            mine, best = r.cells.get(CONVGEN), r.best_peer()
            if mine is not None and mine.seconds and mine.passed:
                ax.plot(ai, r.spec.flops / mine.seconds / 1e9, "o", color=colour)
                ax.annotate(r.name, (ai, r.spec.flops / mine.seconds / 1e9), fontsize=6,
                            xytext=(3, 3), textcoords="offset points")
            if best is not None:
                ax.plot(ai, r.spec.flops / best[1] / 1e9, "o", mfc="none", color=colour)
    if bandwidth:
        ax.plot([], [], " ", label=f"bandwidth (copy) {bandwidth / 1e9:.1f} GB/s")
    ax.plot([], [], "ko", label="convgen")
    ax.plot([], [], "ko", mfc="none", label="fastest peer")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP / byte of input + weight + output)")
    ax.set_ylabel("GFLOP/s")
    ax.set_title(f"convgen bench: {title}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

