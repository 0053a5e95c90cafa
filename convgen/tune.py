"""Tune: search schedules for one spec, time them, keep every measurement.

The tuner stays thin. It enumerates the schedules of a spec and prunes the illegal,
the oversized and the duplicates; orders them by a cheap cost model; compiles as
many as the budget allows in worker processes (which only fill the kernel cache);
times them one at a time in this process (warm-up, then repetitions, the median),
then the fastest few again beside the default, calls interleaved; re-checks the
winner against the oracle; and appends every measurement to the
tuning database, a JSON-lines file. :func:`best_record` reads it back, and
``convgen.compile`` uses the fastest checked record for the same spec, backend,
CPU, compiler and convgen version.
"""

from __future__ import annotations

import argparse
import concurrent.futures as futures
import contextlib
import datetime
import hashlib
import json
import math
import multiprocessing
import os
import statistics
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import backends, config
from .cache import Cache, code_version, cpu_identity
from .records import best_record, compiler_identity, read_records, record  # noqa: F401
from .cpu import vector_bits, vector_lanes
from .errors import ConvgenError, ScheduleError
from .reference import reference
from .schedule import MAX_THREADS, Schedule, default_schedule
from .spec import ConvSpec
from .tolerance import close

MAX_TILE_CO = 64
ROW_TILES = (1, 2, 4, 8)  # output rows per tile (H), and 1 or 2 planes (D) in 3D
WIDTH_VECTORS = 4  # innermost tiles: up to this many vectors of output columns
TARGET_SECONDS = 0.2  # time each candidate for about this long ...
MIN_REPEATS, MAX_REPEATS = 3, 100  # ... with at least / at most this many calls
FIRST_BUILD_SECONDS = 0.5  # a guess until a batch is built: starting workers, compiling
BATCH = 2  # candidates per worker built before the batch is timed
LOSER_FACTOR = 3.0  # a first call this much slower than the best so far ends the timing
FINALISTS = 3  # the fastest few are timed again with the default, calls interleaved


@dataclass(frozen=True)
class Measurement:
    """One candidate: its median seconds per call (inf: failed to compile or run)."""

    schedule: Schedule
    seconds: float
    checked: bool = False  # verified against the oracle
    error: str | None = None


@dataclass(frozen=True)
class Progress:
    """What a ``progress`` callback receives while one spec is tuned."""

    name: str
    phase: str  # "compile", "measure", "confirm" or "check"
    done: int
    total: int
    best_seconds: float  # inf until a candidate ran


@dataclass
class TuneResult:
    """The winner of one spec's search, the untuned default, and every measurement."""

    spec: ConvSpec
    backend: str
    name: str
    best: Schedule
    best_seconds: float
    default: Schedule
    default_seconds: float
    measurements: list[Measurement] = field(default_factory=list)
    candidates: int = 0  # legal, distinct candidates before the budget cut

    @property
    def speedup(self) -> float:
        """Default seconds / best seconds (the default is always measured)."""
        return self.default_seconds / self.best_seconds

    @property
    def table(self) -> list[tuple[Schedule, float]]:
        """(schedule, seconds) for every measured candidate, fastest first."""
        rows = sorted(self.measurements, key=lambda m: m.seconds)
        return [(m.schedule, m.seconds) for m in rows]

    def __str__(self) -> str:
        lines = [f"{self.name} ({self.backend}): {len(self.measurements)} of {self.candidates} "
                 f"candidates measured; best {_ms(self.best_seconds)}, default "
                 f"{_ms(self.default_seconds)}, speedup {self.speedup:.2f}x",
                 f"  {'ms':>9}  {'GFLOP/s':>8}  schedule"]
        for m in sorted(self.measurements, key=lambda m: m.seconds):
            flops = f"{self.spec.flops / m.seconds / 1e9:8.1f}" if math.isfinite(m.seconds) \
                else f"{'-':>8}"
            marks = (" best" if m.schedule == self.best else "") + \
                (" default" if m.schedule == self.default else "") + \
                (f" failed: {m.error}" if m.error else "")
            lines.append(f"  {_ms(m.seconds):>9}  {flops}  {describe(m.schedule)}{marks}")
        return "\n".join(lines)


def describe(schedule: Schedule) -> str:
    """A one-line schedule: co=16 sp=2x32 vw=0 t=2."""
    spatial = "x".join(map(str, schedule.tile_spatial)) if schedule.tile_spatial else "auto"
    return (f"co={schedule.tile_co} sp={spatial} vw={schedule.vector_width} "
            f"t={schedule.threads}")


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f}" if math.isfinite(seconds) else "failed"


# -- the search space ---------------------------------------------------------------------

def _resolved(spec: ConvSpec, schedule: Schedule) -> tuple:
    """What a schedule really does for ``spec``: tiles after clamping, lanes, threads."""
    tile_co, tiles = schedule.resolve(spec)
    return tile_co, tiles, schedule.vector_width or vector_lanes(spec.dtype), schedule.threads


def registers() -> int:
    """Vector registers of the host: 32 with AVX-512, else 16."""
    return 32 if vector_bits() == 512 else 16


def accumulator_limit() -> int:
    """The largest register tile worth timing: twice the vector register file."""
    return 2 * registers() * vector_bits() // 8


def accumulator_bytes(spec: ConvSpec, schedule: Schedule) -> int:
    """Bytes of the register tile the kernels keep per output row: output channels x
    whole vectors of output columns (rows of a tile are computed one after another)."""
    tile_co, tiles, lanes, _ = _resolved(spec, schedule)
    return tile_co * -(-tiles[-1] // lanes) * lanes * np.dtype(spec.dtype).itemsize


def estimated_cost(spec: ConvSpec, schedule: Schedule) -> float:
    """A cheap relative cost (lower is better), only to order candidates before timing.

    Work computed and thrown away (channels past the last, lanes past the last column),
    too few independent accumulators to hide FMA latency, accumulators beyond the
    register file, half-width vectors, and threads left without a tile.
    """
    tile_co, tiles, lanes, threads = _resolved(spec, schedule)
    out = spec.output_spatial
    cog = spec.out_channels // spec.groups
    n_vectors = -(-tiles[-1] // lanes)
    waste = (-(-cog // tile_co) * tile_co / cog) \
        * (-(-out[-1] // tiles[-1]) * n_vectors * lanes / out[-1])
    accumulators = tile_co * n_vectors
    latency = math.sqrt(max(1.0, registers() / 2 / accumulators))
    spill = 1.0 + 0.7 * max(0.0, math.log2(accumulators / registers()))
    narrow = vector_lanes(spec.dtype) / lanes
    jobs = spec.batch * spec.groups * -(-cog // tile_co) \
        * math.prod(-(-o // t) for o, t in zip(out, tiles))
    imbalance = -(-jobs // threads) * threads / jobs
    return waste * latency * spill * narrow * imbalance


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def candidate_schedules(spec: ConvSpec, backend: str | None = None, threads: int | None = None,
                        max_accumulator_bytes: int | None = None) -> list[Schedule]:
    """Legal, distinct schedules for ``spec``: ``default_schedule(spec)`` first, then the
    rest, most promising first (see :func:`_ranked`).

    Pruned before anything compiles: illegal tiles (ScheduleError), register tiles over
    ``max_accumulator_bytes`` (default :func:`accumulator_limit`), and schedules
    that clamp to one already listed.
    """
    backend = backends.resolve_backend(backend)
    threads = min(config.num_threads() if threads is None else threads, MAX_THREADS)
    limit = accumulator_limit() if max_accumulator_bytes is None else max_accumulator_bytes
    cog = spec.out_channels // spec.groups
    out = spec.output_spatial
    host = vector_lanes(spec.dtype)
    widths = [0] + ([host // 2] if backend == "llvm" and host >= 8 else [])
    tile_cos = sorted({t for t in _divisors(cog) if t <= MAX_TILE_CO}
                      | {1 << i for i in range(7) if 1 << i <= min(cog, MAX_TILE_CO)})
    rows = sorted({min(r, out[-2]) for r in ROW_TILES}) if len(out) >= 2 else []
    planes = sorted({min(p, out[0]) for p in (1, 2)}) if len(out) == 3 else []
    outer = [(p, r) for p in planes for r in rows] if planes else \
        [(r,) for r in rows] if rows else [()]

    default = default_schedule(spec)
    seen = {_resolved(spec, default)}
    found: list[Schedule] = []
    for vw in widths:
        lanes = vw or host
        columns = sorted({min(lanes * i, out[-1]) for i in range(1, WIDTH_VECTORS + 1)})
        for tile_co in tile_cos:
            for lead in outer:
                for w in columns:
                    schedule = Schedule(tile_co=tile_co, tile_spatial=(*lead, w),
                                        threads=threads, vector_width=vw)
                    try:
                        key = _resolved(spec, schedule)
                    except ScheduleError:
                        continue
                    if key in seen or accumulator_bytes(spec, schedule) > limit:
                        continue
                    seen.add(key)
                    found.append(schedule)
    return [default, *_ranked(spec, found)]


def _ranked(spec: ConvSpec, schedules: list[Schedule]) -> list[Schedule]:
    """By estimated cost, but the outer tiles (rows, planes), which matter least, take
    turns: each (channels, columns, vector width) first with its best outer tile, then
    every one with its second best, ... so a budget cut keeps the variety that matters."""
    cost = {s: (estimated_cost(spec, s), s.key()) for s in schedules}
    groups: dict[tuple, list[Schedule]] = {}
    for s in sorted(schedules, key=cost.__getitem__):
        groups.setdefault((s.tile_co, s.tile_spatial[-1], s.vector_width), []).append(s)
    turn = {s: i for members in groups.values() for i, s in enumerate(members)}
    return sorted(schedules, key=lambda s: (turn[s], cost[s]))


# -- compiling and timing -----------------------------------------------------------------

def _build(spec_data: dict, backend: str, schedule_data: dict, cache_root: str) -> str | None:
    """Worker: build one candidate into the kernel cache; None, or the error's first line."""
    try:
        backends.build_artifact(ConvSpec.from_dict(spec_data), backend,
                                Schedule.from_dict(schedule_data), Cache(cache_root))
    except Exception as exc:  # noqa: BLE001 - a failing candidate costs infinity
        return _first_line(exc)
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


class CandidateBuilder:
    """Builds batches of candidates into the kernel cache in spawned worker processes
    (``workers`` 0: in this process). Workers sit idle while candidates are timed."""

    def __init__(self, spec: ConvSpec, backend: str, workers: int):
        self.spec, self.backend, self.workers = spec, backend, workers
        self.cache_root = str(config.cache_dir())
        self.pool: futures.ProcessPoolExecutor | None = None

    def __enter__(self) -> CandidateBuilder:
        return self

    def __exit__(self, *exc_info) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def build(self, schedules: list[Schedule]) -> dict[Schedule, str | None]:
        """{schedule: None, or why it failed} once every one of ``schedules`` is built."""
        args = [(self.spec.to_dict(), self.backend, s.to_dict(), self.cache_root)
                for s in schedules]
        if self.workers == 0:
            return {s: _build(*a) for s, a in zip(schedules, args)}
        if self.pool is None:
            context = multiprocessing.get_context("spawn")
            self.pool = futures.ProcessPoolExecutor(self.workers, mp_context=context)
        with _main_hidden():  # workers are started by submit
            jobs = {s: self.pool.submit(_build, *a) for s, a in zip(schedules, args)}
        results = {}
        for schedule, job in jobs.items():
            try:
                results[schedule] = job.result()
            except Exception as exc:  # noqa: BLE001 - e.g. a worker died
                results[schedule] = _first_line(exc)
        return results


@contextlib.contextmanager
def _main_hidden():
    """Keep spawned workers from re-running the caller's script as their __main__.

    The workers need only convgen; without this, a script that calls tune() outside an
    ``if __name__ == "__main__"`` guard would run again in every worker.
    """
    main = sys.modules.get("__main__")
    saved = {name: getattr(main, name) for name in ("__file__", "__spec__")
             if hasattr(main, name)}
    try:
        for name in saved:
            if name == "__spec__":
                main.__spec__ = None
            else:
                delattr(main, name)
        yield
    finally:
        for name, value in saved.items():
            setattr(main, name, value)


def random_arrays(spec: ConvSpec, seed: int = 0):
    """Seeded (x, w, b) in [-1, 1] in the spec's dtype; b is None without bias."""
    rng = np.random.default_rng(seed)
    draw = lambda shape: rng.uniform(-1, 1, shape).astype(spec.dtype)  # noqa: E731
    return draw(spec.input_shape), draw(spec.weight_shape), \
        draw(spec.bias_shape) if spec.bias else None


def measure(spec: ConvSpec, backend: str, schedule: Schedule, arrays,
            best_seconds: float = math.inf) -> Measurement:
    """Median seconds per call with a preallocated output: a warm-up call, then repeats
    until about TARGET_SECONDS (fewer when the first is far slower than ``best_seconds``)."""
    x, w, b = arrays
    try:
        kernel = backends.compile(spec, backend, schedule)
        out = np.empty(spec.output_shape, spec.dtype)
        kernel(x, w, b, out=out)
        times: list[float] = []
        while len(times) < MAX_REPEATS and (len(times) < MIN_REPEATS
                                            or sum(times) < TARGET_SECONDS):
            start = time.perf_counter()
            kernel(x, w, b, out=out)
            times.append(time.perf_counter() - start)
            if len(times) == 1 and times[0] > LOSER_FACTOR * best_seconds:
                break
    except Exception as exc:  # noqa: BLE001 - a failing candidate costs infinity
        return Measurement(schedule, math.inf, error=_first_line(exc))
    return Measurement(schedule, statistics.median(times))


def verify(spec: ConvSpec, backend: str, schedule: Schedule, arrays, want) -> bool:
    """Whether ``schedule`` computes the oracle's answer (within tolerance) on ``arrays``."""
    try:
        kernel = backends.compile(spec, backend, schedule)
        out = np.full(spec.output_shape, np.nan, spec.dtype)
        kernel(*arrays, out=out)
    except Exception:  # noqa: BLE001
        return False
    return close(spec, out, want)


def tune(spec: ConvSpec, backend: str | None = None, budget: float = 30.0,
         threads: int | None = None, max_candidates: int | None = None,
         progress: Callable[[Progress], None] | None = None, *, name: str | None = None,
         workers: int | None = None) -> TuneResult:
    """Search schedules for ``spec`` for about ``budget`` seconds; record every measurement.

    ``threads`` defaults to $CONVGEN_NUM_THREADS or the CPU count; ``max_candidates``
    caps the candidates (the default is always one, and always timed); ``workers`` is
    the number of compile processes (default: the CPU count; 0 compiles in this process).
    The fastest few are timed again beside the default before the winner is checked.
    """
    if not isinstance(spec, ConvSpec):
        raise TypeError(f"spec: expected a convgen.ConvSpec, got {type(spec).__name__}")
    for label, value, low in (("budget", budget, 0), ("max_candidates", max_candidates, 1),
                              ("threads", threads, 1), ("workers", workers, 0)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not low <= value < math.inf):
            raise ValueError(f"{label}: expected a number >= {low}, got {value!r}")
    backend = backends.resolve_backend(backend)
    name = name or spec.name
    deadline = time.monotonic() + budget
    candidates = candidate_schedules(spec, backend, threads)
    chosen = candidates[:max_candidates] if max_candidates else candidates
    default, rest = chosen[0], chosen[1:]
    notify = progress or (lambda p: None)
    arrays = random_arrays(spec)

    first = measure(spec, backend, default, arrays)
    measured = [first]
    best = first.seconds
    per_candidate = _timing_estimate(first.seconds, _load_seconds(spec, backend, default))
    deadline -= (FINALISTS + 1) * per_candidate  # kept for the final round
    total = len(chosen)
    if workers is None:
        workers = os.cpu_count() or 1
    workers = min(workers, len(rest))
    queue = list(rest)
    build_each = FIRST_BUILD_SECONDS  # wall seconds per candidate in the last batch
    with CandidateBuilder(spec, backend, workers) as builder:
        while queue:  # batches: build in parallel, then time one at a time
            fits = int((deadline - time.monotonic()) / (build_each + per_candidate))
            size = min(fits, BATCH * max(workers, 1))
            if size < 1:
                break
            batch, queue = queue[:size], queue[size:]
            notify(Progress(name, "compile", len(measured), total, best))
            start = time.monotonic()
            built = builder.build(batch)
            build_each = (time.monotonic() - start) / len(batch)
            for schedule in batch:
                if built[schedule] is not None:
                    measured.append(Measurement(schedule, math.inf, error=built[schedule]))
                    continue
                if time.monotonic() >= deadline:
                    queue = []
                    break
                start = time.monotonic()
                m = measure(spec, backend, schedule, arrays, best)
                per_candidate = 0.5 * (per_candidate + time.monotonic() - start)
                measured.append(m)
                best = min(best, m.seconds)
                notify(Progress(name, "measure", len(measured), total, best))

    notify(Progress(name, "confirm", len(measured), total, best))
    measured = confirm(spec, backend, measured, arrays)
    measured, winner = _check_winner(spec, backend, measured, arrays, name, notify, total)
    record(spec, backend, measured)
    if winner is None:
        raise ConvgenError(f"{name}: no candidate schedule ran and matched the oracle "
                           f"({measured[0].error or 'wrong results'})")
    return TuneResult(spec, backend, name, winner.schedule, winner.seconds, default,
                      measured[0].seconds, measured, len(candidates))


def _load_seconds(spec: ConvSpec, backend: str, schedule: Schedule) -> float:
    """Seconds to load a kernel from the cache (MCJIT takes longer than dlopen)."""
    start = time.perf_counter()
    try:
        backends.compile(spec, backend, schedule)
    except Exception:  # noqa: BLE001 - the default failed: measure() said so
        pass
    return 2 * (time.perf_counter() - start)


def _timing_estimate(seconds: float, load_seconds: float) -> float:
    """Seconds one candidate's load and timing take, from the default's time per call."""
    if not math.isfinite(seconds):
        return TARGET_SECONDS + load_seconds
    calls = 1 + min(MAX_REPEATS, max(MIN_REPEATS, TARGET_SECONDS / max(seconds, 1e-9)))
    return load_seconds + calls * seconds


def confirm(spec: ConvSpec, backend: str, measured: list[Measurement],
            arrays) -> list[Measurement]:
    """Time the FINALISTS fastest and the default (``measured[0]``) again, their calls
    interleaved so that noise and drift hit them alike; new medians replace the old."""
    ranked = sorted((i for i, m in enumerate(measured) if math.isfinite(m.seconds)),
                    key=lambda i: measured[i].seconds)
    picks = ranked[:FINALISTS] + ([0] if 0 in ranked[FINALISTS:] else [])
    if len(picks) < 2:
        return measured
    x, w, b = arrays
    try:
        kernels = [backends.compile(spec, backend, measured[i].schedule) for i in picks]
        outs = [np.empty(spec.output_shape, spec.dtype) for _ in picks]
        times: list[list[float]] = [[] for _ in picks]
        spent = 0.0
        while len(times[0]) < MAX_REPEATS and (len(times[0]) < MIN_REPEATS
                                               or spent < TARGET_SECONDS * len(picks)):
            for kernel, out, samples in zip(kernels, outs, times):
                start = time.perf_counter()
                kernel(x, w, b, out=out)
                samples.append(time.perf_counter() - start)
                spent += samples[-1]
    except Exception:  # noqa: BLE001 - they all ran before: keep the first timings
        return measured
    out = list(measured)
    for i, samples in zip(picks, times):
        out[i] = Measurement(out[i].schedule, statistics.median(samples))
    return out


def _check_winner(spec, backend, measured, arrays, name, notify, total):
    """Verify candidates fastest first until one matches the oracle; mark them."""
    want = None
    out = list(measured)
    for i in sorted(range(len(out)), key=lambda i: out[i].seconds):
        if not math.isfinite(out[i].seconds):
            break
        notify(Progress(name, "check", len(out), total, out[i].seconds))
        if want is None:
            want = reference(spec, *arrays)
        ok = verify(spec, backend, out[i].schedule, arrays, want)
        out[i] = Measurement(out[i].schedule, out[i].seconds, checked=ok,
                             error=None if ok else "wrong results (oracle check failed)")
        if ok:
            return out, out[i]
    return out, None


# -- the tuning database ------------------------------------------------------------------

# -- networks -----------------------------------------------------------------------------

def network_convs(network: Any, input_shape=None, dtype: str = "float32") -> dict[str, tuple]:
    """{spec key: (first node name, spec)} of the convs a compiled network runs (after
    fusion, as ``compile_graph`` sees them), in order."""
    from .graph.ir import Graph
    from .graph.passes import optimize
    from .graph.shapes import infer_graph

    if isinstance(network, Graph):
        graph = network.copy()
    else:
        shape = input_shape if input_shape is not None \
            else getattr(network, "input_shape", None)
        if shape is None:
            raise ValueError("input_shape: required for a module without an input_shape")
        graph = network.trace(shape)
    infer_graph(graph)
    graph = optimize(graph)
    infer_graph(graph)
    convs: dict[str, tuple] = {}
    for node in graph.nodes:
        if node.op == "conv":
            spec = ConvSpec.from_dict(node.attrs["spec"]).replace(dtype=dtype)
            convs.setdefault(spec.key(), (node.name, spec))
    return convs


def tune_network(network: Any, input_shape=None, backend: str | None = None,
                 budget: float = 30.0, threads: int | None = None,
                 max_candidates: int | None = None,
                 progress: Callable[[Progress], None] | None = None,
                 dtype: str = "float32", **options: Any) -> list[TuneResult]:
    """Tune each distinct conv of a network (a convgen.nn module or a traced Graph) once,
    splitting ``budget`` among them (time one leaves unused goes to the next)."""
    convs = list(network_convs(network, input_shape, dtype).values())
    deadline = time.monotonic() + budget
    results = []
    for i, (node, spec) in enumerate(convs):
        share = max(deadline - time.monotonic(), 0.0) / (len(convs) - i)
        results.append(tune(spec, backend, share, threads, max_candidates, progress,
                            name=node, **options))
    return results


# -- command line (wired into convgen.cli) ------------------------------------------------

def add_tune_command(subparsers, parents: list[argparse.ArgumentParser]) -> None:
    """Add ``tune SPECFILE|NETSPEC --budget S [--backend B] [--threads N]``."""
    p = subparsers.add_parser(
        "tune", parents=parents, help="search schedules and record the fastest",
        description="Time candidate schedules of each convolution in a spec file (or of each "
                    "distinct convolution of a network file), check the winner against the "
                    "oracle and append every measurement to the tuning database "
                    "($CONVGEN_TUNING_DB, default <cache dir>/tuning.jsonl); compile then "
                    "uses the best record.")
    p.add_argument("specfile", metavar="SPECFILE|NETSPEC", help="TOML spec or network file")
    p.add_argument("--budget", type=_positive(float), default=30.0, metavar="S",
                   help="seconds in all, split among the convolutions (default: %(default)s)")
    p.add_argument("--threads", type=_positive(int), default=None, metavar="N",
                   help="threads per kernel (default: $CONVGEN_NUM_THREADS or the CPU count)")
    p.set_defaults(run=run_tune)


def is_network_file(path: str | os.PathLike) -> bool:
    """A network file has a top-level input_shape or [[layer]]; a spec file has [[conv]]."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except (OSError, ValueError):
        return False  # the spec-file loader reports the problem
    return "input_shape" in data or "layer" in data


def _positive(kind: type) -> Callable[[str], Any]:
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = 0
        if not 0 < value < math.inf:
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, "
                                             f"got {text!r}")
        return value
    return parse


def run_tune(args: argparse.Namespace) -> int:
    """Tune every conv of a spec file, or each distinct conv of a network file; print a table."""
    backend = backends.resolve_backend(getattr(args, "backend", None))
    bar = ProgressBar(sys.stderr)
    if is_network_file(args.specfile):
        from .graph.netspec import load_network

        results = tune_network(load_network(args.specfile), backend=backend,
                               budget=args.budget, threads=args.threads, progress=bar)
    else:
        from .specfile import load_specfile

        entries = load_specfile(args.specfile)
        deadline = time.monotonic() + args.budget
        results = []
        for i, entry in enumerate(entries):
            share = max(deadline - time.monotonic(), 0.0) / (len(entries) - i)
            results.append(tune(entry.spec, backend, share, args.threads, progress=bar,
                                name=entry.name))
    bar.finish()
    print(summary_table(results))
    return 0


class ProgressBar:
    """One line on ``stream``, rewritten with \\r: phase, candidates done/total, best so far."""

    def __init__(self, stream, width: int = 24):
        self.stream, self.width, self.used = stream, width, False

    def __call__(self, p: Progress) -> None:
        filled = self.width * p.done // max(p.total, 1)
        best = _ms(p.best_seconds) + " ms" if math.isfinite(p.best_seconds) else "-"
        self.stream.write(f"\r{p.name[:32]:<32} {p.phase:<7} [{'#' * filled:<{self.width}}] "
                          f"{p.done}/{p.total} best {best}   ")
        self.stream.flush()
        self.used = True

    def finish(self) -> None:
        if self.used:
            self.stream.write("\n")
            self.stream.flush()


def summary_table(results: list[TuneResult]) -> str:
    """name, default ms, best ms, speedup, best schedule: one row per tuned spec."""
    rows = [("name", "default ms", "best ms", "speedup", "best schedule")]
    for r in results:
        rows.append((r.name, _ms(r.default_seconds), _ms(r.best_seconds),
                     f"{r.speedup:.2f}x", describe(r.best)))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = ["  ".join(c.ljust(w) if i in (0, 4) else c.rjust(w)
                       for i, (c, w) in enumerate(zip(row, widths))).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
