"""Bench: convgen against its peers, measured in the same process, and the machine's peak.

:func:`bench_layers` times each convolution with convgen (``cg.bind``: the weights bound
and prepared once, as ONNX Runtime has its initializers; the schedule tuned bound, else the
default for prepared weights; threads set, a preallocated ``out=``) and with every
installed peer
(:mod:`convgen.bench.peers`), layer by layer, interleaved (:func:`measure_interleaved`):
one checked call per runtime, then ``repeat`` rounds in which each runtime in turn gets a
warm-up call and two timed calls (the median of all is reported) and, with several
threads, a short pause so its spinning pool threads do not eat into the next one's time;
the warm-up lasts WARMUP_S (calls repeated), so every runtime is timed in its steady state.
On a shared machine a slow spell then falls on every runtime alike. Every
output is compared with :func:`convgen.reference`. :func:`measure_peak` times a
generated microkernel of independent FMA chains; :func:`measure_bandwidth` a large copy.
The command line and the printing live in :mod:`convgen.cli.bench`.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from convgen.backends.c.build import build_c
from convgen.backends.c.load import load_function
from convgen.compiler import bind, choose_schedule
from convgen.bench.peers import Runner, Skip, numpy_runner, openblas_setters, ort_runner, \
    torch_runner
from convgen.cpu import cpu_flags, vector_bits
from convgen.reference import random_arrays, reference
from convgen.schedule import Schedule
from convgen.plan.defaults import PARALLEL_FLOPS
from convgen.spec import ConvSpec
from convgen.tolerance import max_error, tolerance

# Between runtimes at 2+ threads, so the last one's spinning pool threads (OpenMP's,
# ONNX Runtime's) go to sleep before the next runtime runs (docs/performance.md).
PAUSE_S = 0.2
# Each runtime's warm-up in a round runs for at least this long (every runtime alike), so
# the timed calls see it in its steady state: pool threads woken after the pause, and
# weights evicted by the other runtimes, slow the first calls (docs/performance.md).
WARMUP_S = 0.05
ROUND_CALLS = 2         # timed calls per runtime and round (after the warm-up)
SLOW_RATIO = 0.8        # layers whose ratio to the fastest peer is below this are counted
CONVGEN = "convgen"
PEAK_SECONDS = 0.2      # per peak measurement


@dataclass
class Cell:
    """One runtime on one layer at one thread count: median seconds and max error vs the
    oracle, or why there is none."""

    seconds: float | None = None
    error: float | None = None
    min_seconds: float | None = None
    passed: bool = True
    note: str = ""


@dataclass
class LayerResult:
    name: str
    spec: ConvSpec
    threads: int
    cells: dict[str, Cell] = field(default_factory=dict)
    schedule: str = ""  # convgen's schedule and where it came from

    def best_peer(self) -> tuple[str, float] | None:
        """(name, seconds) of the fastest peer whose output passed, or None."""
        passing = [(c.seconds, name) for name, c in self.cells.items()
                   if name != CONVGEN and c.seconds is not None and c.passed]
        if not passing:
            return None
        seconds, name = min(passing)
        return name, seconds

    def ratio(self) -> float | None:
        """Fastest passing peer's time / convgen's time (> 1: convgen is faster)."""
        mine, peer = self.cells.get(CONVGEN), self.best_peer()
        if mine is None or mine.seconds is None or not mine.passed or peer is None:
            return None
        return peer[1] / mine.seconds


@dataclass
class Peers:
    """The peer libraries found in this process (None where not installed)."""

    torch: Any = None
    onnx: Any = None
    ort: Any = None
    blas_setters: list = field(default_factory=list)

    @classmethod
    def find(cls) -> Peers:
        peers = cls(blas_setters=openblas_setters())
        try:
            import torch
            peers.torch = torch
        except ImportError:
            pass
        try:
            import onnx
            import onnxruntime
            peers.onnx, peers.ort = onnx, onnxruntime
        except ImportError:
            pass
        return peers

    def names(self) -> list[str]:
        names = ["numpy"]
        if self.torch is not None:
            names += ["torch", "torch_cl"]
        if self.ort is not None:
            names.append("ort")
        return names

    def versions(self) -> dict[str, str]:
        out = {"numpy": np.__version__}
        if self.torch is not None:
            out["torch"] = self.torch.__version__
        if self.ort is not None:
            out["onnxruntime"] = self.ort.__version__
        return out

    def set_threads(self, threads: int) -> None:
        if self.torch is not None:
            self.torch.set_num_threads(threads)
        for setter in self.blas_setters:
            setter(threads)


# -- timing -----------------------------------------------------------------------------

def measure(runner: Runner, repeat: int) -> tuple[float, np.ndarray]:
    """(median seconds, first output): one checked call, one warm-up, then the timed calls
    and a pause (PAUSE_S) so the runtime's spinning pool threads go to sleep."""
    first = runner.to_numpy(runner.call())
    runner.call()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        runner.call()
        times.append(time.perf_counter() - start)
    time.sleep(PAUSE_S)
    return statistics.median(times), first


def warm_up(call: Callable[[], Any], seconds: float | None = None) -> None:
    """Call ``call`` once, and again until ``seconds`` (default WARMUP_S) have passed:
    threads woken, caches filled (see WARMUP_S)."""
    until = time.perf_counter() + (WARMUP_S if seconds is None else seconds)
    call()
    while time.perf_counter() < until:
        call()


def measure_interleaved(runners: dict[str, Runner], repeat: int, pause: float = PAUSE_S,
                        calls: int = ROUND_CALLS, warmup: float | None = None
                        ) -> dict[str, tuple[list[float], Any]]:
    """Time several runtimes on one job, interleaved: ``repeat`` rounds, each giving every
    runtime in turn (the order rotates every round) warm-up calls (one, and more until
    ``warmup`` seconds have passed; default WARMUP_S) and
    ``calls`` timed calls, then ``pause`` seconds so its spinning pool threads go to sleep.

    Returns, per runtime, the timed calls' seconds and the first call's output; a runtime
    that raises gives the exception instead. A shared machine's slow spells then fall on
    every runtime alike instead of on whichever ran during them.
    """
    if warmup is None:
        warmup = WARMUP_S
    results: dict[str, tuple[list[float], Any]] = {}
    live: list[str] = []
    for name, runner in runners.items():
        try:
            results[name] = ([], runner.to_numpy(runner.call()))
            live.append(name)
        except Exception as exc:  # noqa: BLE001 - reported per runtime by the caller
            results[name] = ([], exc)
    for round_ in range(repeat):
        order = live[round_ % len(live):] + live[:round_ % len(live)] if live else []
        for name in order:
            runner = runners[name]
            try:
                warm_up(runner.call, warmup)
                for _ in range(calls):
                    start = time.perf_counter()
                    runner.call()
                    results[name][0].append(time.perf_counter() - start)
            except Exception as exc:  # noqa: BLE001
                results[name] = ([], exc)
                live.remove(name)
            if pause:
                time.sleep(pause)
    return results


def bench_schedule(spec: ConvSpec, backend: str, threads: int,
                   given: Schedule | None = None) -> tuple[Schedule, str]:
    """The schedule convgen runs at ``threads`` and where it comes from: the spec file's,
    else the best tuning record measured bound (one tuned at ``threads`` first: ``convgen
    tune --bound``), else the default for prepared weights. Kernels under the default's
    parallel threshold stay on one thread unless tuned otherwise."""
    if given is not None:
        # with_fields keeps a partial schedule partial: compile completes it from the
        # default at this thread count (convgen.schedule.Schedule.given)
        return given.with_fields(threads=threads), "spec file"
    used = threads if spec.flops >= PARALLEL_FLOPS else 1
    return choose_schedule(spec, backend, bound=True, threads=threads, default_threads=used)


def convgen_runner(spec: ConvSpec, x: np.ndarray, w: np.ndarray, b: np.ndarray | None,
                   backend: str, schedule: Schedule) -> Runner:
    """convgen with the weights bound (prepared once, see convgen.plan.weights), as ONNX Runtime
    has them as initializers and as convgen's networks run their layers."""
    kernel = bind(spec, w, b, backend, schedule)
    out = np.empty(spec.output_shape, spec.dtype)
    return Runner(lambda: kernel(x, out=out), lambda y: y.copy())


def bench_layer(name: str, spec: ConvSpec, arrays, want: np.ndarray, threads: int,
                backend: str, peers: Peers, repeat: int,
                schedule: Schedule | None = None) -> LayerResult:
    """Every runtime on one layer, one after the other; outputs checked against ``want``."""
    x, w, b = arrays
    chosen, source = bench_schedule(spec, backend, threads, schedule)
    result = LayerResult(name, spec, threads,
                         schedule=f"{source}: tile_co={chosen.tile_co} "
                                  f"tile_spatial={list(chosen.tile_spatial or [])} "
                                  f"threads={chosen.threads}")
    makers: dict[str, Callable[[], Runner]] = {
        CONVGEN: lambda: convgen_runner(spec, x, w, b, backend, chosen),
        "numpy": lambda: numpy_runner(spec, x, w, b)}
    if peers.torch is not None:
        makers["torch"] = lambda: torch_runner(peers.torch, spec, x, w, False, b)
        makers["torch_cl"] = lambda: torch_runner(peers.torch, spec, x, w, True, b)
    if peers.ort is not None:
        makers["ort"] = lambda: ort_runner(peers.onnx, peers.ort, spec, x, w, threads, b)
    limit = tolerance(spec)
    runners: dict[str, Runner] = {}
    for runtime, make in makers.items():
        try:
            runners[runtime] = make()
        except Skip as skip:
            result.cells[runtime] = Cell(note=str(skip))
        except Exception as exc:  # noqa: BLE001 - a runtime's failure is reported, not fatal
            result.cells[runtime] = _failed(exc)
    pause = PAUSE_S if threads > 1 else 0.0  # one thread: no pool threads to wait out
    for runtime, (times, got) in measure_interleaved(runners, repeat, pause).items():
        if isinstance(got, Skip):
            result.cells[runtime] = Cell(note=str(got))
        elif isinstance(got, Exception):
            result.cells[runtime] = _failed(got)
        else:
            error = max_error(got, want)
            result.cells[runtime] = Cell(statistics.median(times), error, min(times),
                                         passed=error <= limit)  # NaN fails
    return result


def _failed(exc: Exception) -> Cell:
    return Cell(note=f"{type(exc).__name__}: {exc}"[:200], passed=False)


def bench_layers(entries: Sequence[tuple[str, ConvSpec, Schedule | None]],
                 threads_list: Sequence[int], backend: str, repeat: int,
                 peers: Peers | None = None,
                 report: Callable[[LayerResult], None] | None = None) -> list[LayerResult]:
    """Each (name, spec, schedule-or-None) at each thread count, against every peer.

    ``report`` is called with each result as soon as it is measured.
    """
    peers = peers or Peers.find()
    inputs = {}
    for name, spec, _ in entries:
        arrays = random_arrays(spec)
        inputs[name] = (arrays, reference(spec, *arrays))
    saved = peers.torch.get_num_threads() if peers.torch is not None else None
    results = []
    try:
        for threads in threads_list:
            peers.set_threads(threads)
            for name, spec, schedule in entries:
                arrays, want = inputs[name]
                result = bench_layer(name, spec, arrays, want, threads, backend, peers,
                                     repeat, schedule)
                results.append(result)
                if report is not None:
                    report(result)
    finally:
        if saved is not None:
            peers.torch.set_num_threads(saved)
    return results


def geometric_mean(values: Sequence[float]) -> float | None:
    values = [v for v in values if v is not None and v > 0 and math.isfinite(v)]
    if not values:
        return None
    return math.exp(sum(math.log(v) for v in values) / len(values))


# -- peak FMA throughput ----------------------------------------------------------------

@dataclass(frozen=True)
class FmaProbe:
    """How the microkernel is written for this CPU: vector type, lanes, accumulators."""

    isa: str
    lanes: int
    accumulators: int
    vector_type: str
    set1: str
    fma: str  # a C expression template with {acc}, {a}, {b}
    flops_per_fma: int  # per lane

    @property
    def flops_per_iteration(self) -> int:
        return self.accumulators * self.lanes * self.flops_per_fma


def fma_probe() -> FmaProbe:
    """AVX-512: 16 zmm chains; AVX2+FMA: 12 ymm chains; else 8 chains of a*b+c in GCC
    vector types (counted as 2 FLOPs per lane, fused or not)."""
    flags = cpu_flags()
    if vector_bits() == 512:
        return FmaProbe("avx512f", 16, 16, "__m512", "_mm512_set1_ps",
                        "_mm512_fmadd_ps({acc}, {a}, {b})", 2)
    if "fma" in flags and "avx2" in flags:
        return FmaProbe("avx2+fma", 8, 12, "__m256", "_mm256_set1_ps",
                        "_mm256_fmadd_ps({acc}, {a}, {b})", 2)
    return FmaProbe("generic", 4, 8, "vec4", "VEC4_SET1", "{acc} * {a} + {b}", 2)


def peak_source(probe: FmaProbe, symbol: str) -> str:
    """C for ``double symbol(int64_t iterations, int threads)``: every thread runs
    ``iterations`` rounds of one FMA on each of the independent accumulator chains."""
    n = probe.accumulators
    init = "\n".join(f"        {probe.vector_type} acc{i} = {probe.set1}({i + 1}.0f);"
                     for i in range(n))
    body = "\n".join("            acc{0} = {1};".format(
        i, probe.fma.format(acc=f"acc{i}", a="a", b="b")) for i in range(n))
    total = " + ".join(f"acc{i}" for i in range(n))
    if probe.isa == "generic":
        prelude = ("typedef float vec4 __attribute__((vector_size(16)));\n"
                   "#define VEC4_SET1(v) ((vec4){(v), (v), (v), (v)})\n")
        reduce = "s[0] + s[1] + s[2] + s[3]"
    else:
        prelude = "#include <immintrin.h>\n"
        lanes = " + ".join(f"s[{i}]" for i in range(probe.lanes))
        reduce = lanes
    return f"""\
/* convgen peak probe ({probe.isa}): {n} independent chains of {probe.lanes}-lane FMAs per
   thread, so the FMA units never wait on a result. Each thread stores the CPU time its
   loop took in seconds[thread] (time the OS gave to other processes is not counted).
   The returned sum keeps the loop alive. */
#include <stdint.h>
#include <time.h>
#include <omp.h>
{prelude}
static double thread_seconds(void)
{{
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}}

double {symbol}(int64_t iterations, int threads, double *seconds)
{{
    double total = 0.0;
#pragma omp parallel num_threads(threads) reduction(+:total)
    {{
        double start = thread_seconds();
        {probe.vector_type} a = {probe.set1}(0.999999f);
        {probe.vector_type} b = {probe.set1}(1e-6f);
{init}
        for (int64_t i = 0; i < iterations; ++i) {{
{body}
        }}
        {probe.vector_type} sum = {total};
        seconds[omp_get_thread_num()] = thread_seconds() - start;
        float s[{probe.lanes}];
        __builtin_memcpy(s, &sum, sizeof s);
        total += {reduce};
    }}
    return total;
}}
"""


_PEAK_FUNCTIONS: dict[str, Any] = {}


def _peak_function(probe: FmaProbe):
    symbol = f"convgen_peak_fma_{probe.isa.replace('+', '_')}_{probe.accumulators}"
    if symbol not in _PEAK_FUNCTIONS:
        entry = build_c(peak_source(probe, symbol), symbol, openmp=True)
        _, _, function = load_function(entry.file("library"), symbol,
                                       f"double {symbol}(int64_t iterations, int threads, "
                                       "double *seconds);",
                                       entry.sha256("library"))
        _PEAK_FUNCTIONS[symbol] = function
    return _PEAK_FUNCTIONS[symbol]


def measure_peak(threads: int, seconds: float = PEAK_SECONDS, tries: int = 3) -> float:
    """Peak fp32 FLOP/s (not GFLOP/s) at ``threads``: the sum over threads of each one's
    FLOPs per second of its own CPU time, best of ``tries`` runs of about ``seconds`` each
    after a calibration. CPU time rather than wall time, so that other processes sharing
    the cores do not lower the machine's figure."""
    import cffi

    probe = fma_probe()
    function = _peak_function(probe)
    ffi = cffi.FFI()
    spent = ffi.new("double[]", threads)
    iterations = 20_000
    function(iterations, threads, spent)  # warm-up: threads started, clocks up
    while True:
        start = time.perf_counter()
        function(iterations, threads, spent)
        elapsed = time.perf_counter() - start
        if elapsed >= 0.01 or iterations > 1 << 40:
            break
        iterations *= 4
    iterations = max(int(iterations * seconds / elapsed), 1)
    flops = iterations * probe.flops_per_iteration  # per thread
    best = 0.0
    for _ in range(tries):
        function(iterations, threads, spent)
        best = max(best, sum(flops / max(spent[i], 1e-9) for i in range(threads)))
    return best


def measure_bandwidth(megabytes: int = 64, tries: int = 3) -> float:
    """Memory bandwidth in bytes/s: a copy of ``megabytes`` MB (read + write counted), best
    of ``tries``; an estimate of the streaming bandwidth for the roofline."""
    n = megabytes * (1 << 20) // 4
    src = np.ones(n, np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    best = 0.0
    for _ in range(tries):
        start = time.perf_counter()
        np.copyto(dst, src)
        elapsed = time.perf_counter() - start
        best = max(best, 2 * src.nbytes / elapsed)
    return best
