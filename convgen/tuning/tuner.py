"""Tune: search schedules for one spec, time them, keep every measurement.

The tuner stays thin. It enumerates the schedules of a spec and prunes the illegal,
the oversized and the duplicates; orders them by a cheap cost model; compiles as
many as the budget allows in worker processes (which only fill the kernel cache);
times them one at a time in one timing child process (warm-up, then repetitions, the
median), then the fastest few again beside the default, calls interleaved (the default
wins ties within DEFAULT_MARGIN); re-checks the winner against the oracle; and appends
every measurement to the tuning database, a JSON-lines file. :func:`best_record` reads
it back, and ``convgen.compile`` uses the fastest checked record for the same spec,
backend, CPU, compiler and convgen version.

Candidates are generated code run on the tuner's behalf, so none may take the tuner
down: a kernel that crashes or hangs the timing process costs that candidate only (it
is recorded as failed, the process killed and started afresh for the next one), a
compile worker that dies costs the candidates of its batch (the pool is rebuilt), and
every child is ended on every way out of :func:`tune`, an interrupt included.
"""

from __future__ import annotations

import concurrent.futures as futures
import contextlib
import ctypes
import math
import multiprocessing
import os
import signal
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from convgen import config
from convgen.backends import get_backend, resolve_backend
from convgen.compiler import bind, build_artifact
from convgen.compiler import compile as compile_spec
from convgen.cache import Cache
from convgen.errors import ConvgenError
from convgen.graph.ir import Graph
from convgen.graph.passes import optimize
from convgen.graph.shapes import infer_graph
from convgen.records import check_database, record
from convgen.reference import random_arrays, reference
from convgen.schedule import Schedule
from convgen.spec import ConvSpec
from convgen.tolerance import close
from convgen.tuning.space import candidate_schedules

TARGET_SECONDS = 0.2  # time each candidate for about this long ...
MIN_REPEATS, MAX_REPEATS = 3, 100  # ... with at least / at most this many calls
FIRST_BUILD_SECONDS = 0.5  # a guess until a batch is built: starting workers, compiling
BATCH = 2  # candidates per worker built before the batch is timed
LOSER_FACTOR = 3.0  # a first call this much slower than the best so far ends the timing
FINALISTS = 3  # the fastest few are timed again with the default, calls interleaved
CONFIRM_MAX_REPEATS = 1000  # ... each called up to this often (small kernels: more samples)
# ... and the default stays the winner unless a finalist is faster by more than this share
# (on this shared machine, schedules within a few percent swap places between runs)
DEFAULT_MARGIN = 0.03
# The timing child is killed, and the candidate it was timing fails, after the longer of
# TIMEOUT_SECONDS and TIMEOUT_FACTOR times the estimated seconds per candidate (the
# default's load and timing); the default itself, compiled in the child, gets
# FIRST_TIMEOUT_SECONDS (a generous bound: only a hang should reach it)
TIMEOUT_SECONDS = 30.0
TIMEOUT_FACTOR = 10.0
FIRST_TIMEOUT_SECONDS = 600.0
START_TIMEOUT_SECONDS = 120.0  # for the timing process to start (spawn, imports)
# (function, args), called first in every child process the tuner starts (compile
# workers and the timing process): a fault-injection hook for tests, None otherwise;
# the function must be importable by name (spawned children unpickle it)
CHILD_HOOK: tuple[Callable[..., None], tuple] | None = None


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
    """A one-line schedule: co=16 sp=2x32 vw=0 t=2 (co=32 sp=1x14 vw=0 vec=co t=2 for
    vectorize="co", co=28 sp=4x4 vw=0 m=winograd t=2 for a transform-GEMM method)."""
    spatial = "x".join(map(str, schedule.tile_spatial)) if schedule.tile_spatial else "auto"
    vec = " vec=co" if schedule.vectorize == "co" else ""
    if schedule.method != "direct":
        vec = f" m={schedule.method}"
    return (f"co={schedule.tile_co} sp={spatial} vw={schedule.vector_width}{vec} "
            f"t={schedule.threads}")


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f}" if math.isfinite(seconds) else "failed"


# -- compiling and timing -----------------------------------------------------------------

def _build(spec_data: dict, backend: str, schedule_data: dict, cache_root: str,
           bound: bool = False) -> str | None:
    """Worker: build one candidate into the kernel cache; None, or the error's first line."""
    try:
        build_artifact(ConvSpec.from_dict(spec_data), backend,
                       Schedule.from_dict(schedule_data), Cache(cache_root), bound)
    except Exception as exc:  # noqa: BLE001 - a failing candidate costs infinity
        return _first_line(exc)
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def _child_setup(hook: tuple[Callable[..., None], tuple] | None) -> None:
    """First thing in every child the tuner starts. Ctrl-C reaches the whole process
    group; children ignore it and the tuner ends them itself, without their tracebacks.
    On Linux a child also dies with the tuner (PR_SET_PDEATHSIG), so even a tuner killed
    outright leaves no orphans. Then ``hook`` (CHILD_HOOK), if any."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if hook is not None:
        function, args = hook
        function(*args)


def _end_processes(processes: list) -> None:
    """Kill ``processes`` (multiprocessing children) and reap them."""
    for process in processes:
        if process.is_alive():
            process.kill()
    for process in processes:
        process.join(5)


class CandidateBuilder:
    """Builds batches of candidates into the kernel cache in spawned worker processes
    (``workers`` 0: in this process). Workers sit idle while candidates are timed. A
    worker that dies (killed, or crashed by the compiler) breaks the pool: the candidates
    it took down fail, and the next batch gets a new pool."""

    def __init__(self, spec: ConvSpec, backend: str, workers: int, bound: bool = False):
        self.spec, self.backend, self.workers, self.bound = spec, backend, workers, bound
        self.cache_root = str(config.cache_dir())
        self.pool: futures.ProcessPoolExecutor | None = None

    def __enter__(self) -> CandidateBuilder:
        return self

    def __exit__(self, exc_type, *exc_info) -> None:
        self.close(kill=exc_type is not None)  # an error or interrupt: don't wait for gcc

    def close(self, kill: bool = False) -> None:
        """Shut the pool down, its workers joined; ``kill``: killed first."""
        pool, self.pool = self.pool, None
        if pool is None:
            return
        # the executor keeps its processes in a private dict; Python < 3.14 has no public
        # way to end them (shutdown waits for running jobs)
        processes = list((getattr(pool, "_processes", None) or {}).values())
        if kill:  # then the executor's manager thread sees them gone and stops at once
            _end_processes(processes)
        pool.shutdown(wait=True, cancel_futures=True)
        _end_processes(processes)  # already gone after a clean shutdown: joins only

    def build(self, schedules: list[Schedule]) -> dict[Schedule, str | None]:
        """{schedule: None, or why it failed} once every one of ``schedules`` is built."""
        args = [(self.spec.to_dict(), self.backend, s.to_dict(), self.cache_root, self.bound)
                for s in schedules]
        if self.workers == 0:
            return {s: _build(*a) for s, a in zip(schedules, args)}
        if self.pool is None:
            context = multiprocessing.get_context("spawn")
            self.pool = futures.ProcessPoolExecutor(self.workers, mp_context=context,
                                                    initializer=_child_setup,
                                                    initargs=(CHILD_HOOK,))
        results: dict[Schedule, str | None] = {}
        jobs = {}
        broken = False
        with _main_hidden():  # workers are started by submit
            for schedule, a in zip(schedules, args):
                try:
                    jobs[schedule] = self.pool.submit(_build, *a)
                except futures.process.BrokenProcessPool:
                    broken = True
                    results[schedule] = _WORKER_DIED
        for schedule, job in jobs.items():
            try:
                results[schedule] = job.result()
            except futures.process.BrokenProcessPool:
                broken = True
                results[schedule] = _WORKER_DIED
            except Exception as exc:  # noqa: BLE001 - a failing candidate costs infinity
                results[schedule] = _first_line(exc)
        if broken:
            self.close(kill=True)  # the next batch starts a fresh pool
        return {s: results[s] for s in schedules}


_WORKER_DIED = ("BrokenProcessPool: a compile worker died (killed, or crashed) while this "
                "candidate was queued or building")


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


def runner(spec: ConvSpec, backend: str, schedule: Schedule, arrays,
           bound: bool = False) -> Callable[..., None]:
    """``run(result=None)``: ``schedule``'s kernel once on ``arrays`` (x, w, b), the weights
    passed in each call, or with ``bound`` bound once (convgen.bind) as networks have them;
    in the backend's memory (a GPU's: placed there once, the call waits for the kernel);
    ``result`` (a NumPy array) receives the output."""
    x, w, b = arrays
    chosen = get_backend(backend)
    if bound:
        kernel = bind(spec, w, b, backend, schedule)
        return chosen.timing(lambda x_, out: kernel(x_, out=out), (x,), spec.output_shape,
                             spec.dtype)
    plain = compile_spec(spec, backend, schedule)
    return chosen.timing(lambda x_, w_, b_, out: plain(x_, w_, b_, out=out), (x, w, b),
                         spec.output_shape, spec.dtype)


def measure(spec: ConvSpec, backend: str, schedule: Schedule, arrays,
            best_seconds: float = math.inf, bound: bool = False) -> Measurement:
    """Median seconds per call with a preallocated output: a warm-up call, then repeats
    until about TARGET_SECONDS (fewer when the first is far slower than ``best_seconds``)."""
    try:
        run = runner(spec, backend, schedule, arrays, bound)
        run()
        times: list[float] = []
        while len(times) < MAX_REPEATS and (len(times) < MIN_REPEATS
                                            or sum(times) < TARGET_SECONDS):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
            if len(times) == 1 and times[0] > LOSER_FACTOR * best_seconds:
                break
    except Exception as exc:  # noqa: BLE001 - a failing candidate costs infinity
        return Measurement(schedule, math.inf, error=_first_line(exc))
    return Measurement(schedule, statistics.median(times))


def verify(spec: ConvSpec, backend: str, schedule: Schedule, arrays, want,
           bound: bool = False) -> bool:
    """Whether ``schedule`` computes the oracle's answer (within tolerance) on ``arrays``."""
    try:
        run = runner(spec, backend, schedule, arrays, bound)
        out = np.full(spec.output_shape, np.nan, spec.dtype)
        run(out)
    except Exception:  # noqa: BLE001
        return False
    return close(spec, out, want)


class TimingFailure(Exception):
    """The timing process died or hung while running an operation (the message says
    which); the candidate it was timing fails."""


class _Timing:
    """The timing operations on one spec's arrays, by name: what the timing child runs
    (the same measure/confirm/verify code as with ``workers=0`` in the tuner itself)."""

    def __init__(self, spec: ConvSpec, backend: str, arrays, bound: bool):
        self.spec, self.backend, self.arrays, self.bound = spec, backend, arrays, bound

    def measure(self, schedule: Schedule, best_seconds: float) -> Measurement:
        return measure(self.spec, self.backend, schedule, self.arrays, best_seconds, self.bound)

    def load_seconds(self, schedule: Schedule) -> float:
        return _load_seconds(self.spec, self.backend, schedule, self.arrays, self.bound)

    def confirm(self, measured: list[Measurement]) -> list[Measurement]:
        return confirm(self.spec, self.backend, measured, self.arrays, self.bound)

    def verify(self, schedule: Schedule, want) -> bool:
        return verify(self.spec, self.backend, schedule, self.arrays, want, self.bound)


def _timing_child(conn, hook, spec_data: dict, backend: str, arrays, bound: bool) -> None:
    """The timing process: says "ready", then runs ``(operation, args)`` requests from
    ``conn`` one at a time and answers each with ``("ok", value)`` or ``("error", first
    line)``; None ends it."""
    _child_setup(hook)
    timing = _Timing(ConvSpec.from_dict(spec_data), backend, arrays, bound)
    conn.send("ready")
    while True:
        try:
            request = conn.recv()
        except EOFError:  # the tuner is gone
            return
        if request is None:
            return
        operation, args = request
        try:
            answer = ("ok", getattr(timing, operation)(*args))
        except Exception as exc:  # noqa: BLE001 - reported, and the child serves on
            answer = ("error", _first_line(exc))
        conn.send(answer)


class Timer:
    """Runs :class:`_Timing` operations for :func:`tune`: in one spawned child process
    kept across candidates (they were built by the compile workers, so it loads them from
    the kernel cache), started again only after a crash or a timeout; or, ``isolate``
    False, in this process (no protection: what ``workers=0`` asks for). The compile
    pool is idle whenever the child times (build a batch, then time it), and the child
    runs each kernel's OpenMP threads as this process would."""

    def __init__(self, spec: ConvSpec, backend: str, arrays, bound: bool = False,
                 isolate: bool = True):
        self.timing = _Timing(spec, backend, arrays, bound)
        self.isolate = isolate
        self.process = None
        self.conn = None

    def __enter__(self) -> Timer:
        return self

    def __exit__(self, exc_type, *exc_info) -> None:
        self.close(kill=exc_type is not None)  # an interrupt: don't wait for the kernel

    def run(self, operation: str, *args: Any, timeout: float) -> Any:
        """``operation(*args)``'s value; TimingFailure when the child dies, or when it has
        not answered within ``timeout`` seconds (it is killed then)."""
        if not self.isolate:
            return getattr(self.timing, operation)(*args)
        self.start()
        try:
            self.conn.send((operation, args))
            if not self.conn.poll(timeout):
                self.close(kill=True)
                raise TimingFailure(f"timed out after {timeout:.3g} s (the timing process "
                                    f"was killed)")
            status, value = self.conn.recv()
        except (EOFError, OSError):  # it died: a signal, or exited
            raise TimingFailure(f"the timing process died ({self._death()})") from None
        if status != "ok":
            raise TimingFailure(value)
        return value

    def start(self) -> None:
        """Start the child unless it is running, and wait until it is ready (its start,
        imports included, is no candidate's time)."""
        if not self.isolate or self.process is not None and self.process.is_alive():
            return
        self.close(kill=True)
        context = multiprocessing.get_context("spawn")
        self.conn, child_end = context.Pipe()
        t = self.timing
        self.process = context.Process(
            target=_timing_child, name="convgen-timing", daemon=True,
            args=(child_end, CHILD_HOOK, t.spec.to_dict(), t.backend, t.arrays, t.bound))
        with _main_hidden():
            self.process.start()
        child_end.close()
        try:
            if self.conn.poll(START_TIMEOUT_SECONDS) and self.conn.recv() == "ready":
                return
            why = f"did not start within {START_TIMEOUT_SECONDS:.3g} s"
        except (EOFError, OSError):
            why = f"died as it started ({self._death()})"
        self.close(kill=True)
        raise TimingFailure(f"the timing process {why}")

    def _death(self) -> str:
        """How the child ended (a signal's name, or the exit code), once it is reaped."""
        process = self.process
        if process is not None:
            process.join(5)
        code = process.exitcode if process is not None else None
        self.close(kill=True)
        if code is not None and code < 0:
            try:
                return signal.Signals(-code).name
            except ValueError:
                return f"signal {-code}"
        return f"exit code {code}"

    def close(self, kill: bool = False) -> None:
        """End the child: asked to stop (``kill``: killed), then reaped."""
        process, conn, self.process, self.conn = self.process, self.conn, None, None
        if conn is not None:
            if not kill and process is not None and process.is_alive():
                with contextlib.suppress(OSError):
                    conn.send(None)
                process.join(5)
            conn.close()
        if process is not None:
            _end_processes([process])


def tune(spec: ConvSpec, backend: str | None = None, budget: float = 30.0,
         threads: int | None = None, max_candidates: int | None = None,
         progress: Callable[[Progress], None] | None = None, *, name: str | None = None,
         workers: int | None = None, bound: bool = False) -> TuneResult:
    """Search schedules for ``spec`` for about ``budget`` seconds; record every measurement.

    ``threads`` defaults to $CONVGEN_NUM_THREADS or the CPU count; ``max_candidates``
    caps the candidates (the default is always one, and always timed); ``workers`` is
    the number of compile processes (default: the CPU count), and with any, candidates
    are timed in a child process, where a crash or hang costs that candidate only (0:
    compiled and timed in this process, unprotected).
    The fastest few are timed again beside the default before the winner is checked.
    ``bound``: time the kernels with their weights bound and prepared once
    (:func:`convgen.bind`), as networks run them; records are kept apart, networks and
    bind() read these, compile() the others.
    """
    if not isinstance(spec, ConvSpec):
        raise TypeError(f"spec: expected a convgen.ConvSpec, got {type(spec).__name__}")
    for label, value, low in (("budget", budget, 0), ("max_candidates", max_candidates, 1),
                              ("threads", threads, 1), ("workers", workers, 0)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not low <= value < math.inf):
            raise ValueError(f"{label}: expected a number >= {low}, got {value!r}")
    backend = resolve_backend(backend)
    name = name or spec.name
    deadline = time.monotonic() + budget
    candidates = candidate_schedules(spec, backend, threads, bound=bound)
    chosen = candidates[:max_candidates] if max_candidates else candidates
    default, rest = chosen[0], chosen[1:]
    notify = progress or (lambda p: None)
    arrays = random_arrays(spec)
    database = check_database()  # before any measurement: a bad path loses none
    if workers is None:
        workers = os.cpu_count() or 1
    with Timer(spec, backend, arrays, bound, isolate=workers > 0) as timer:
        measured, per_candidate = _search(spec, backend, name, default, rest, arrays,
                                          deadline, notify, min(workers, len(rest)), bound,
                                          timer, database)
        measured, winner = _check_winner(spec, backend, measured, arrays, name, notify,
                                         len(chosen), bound, timer, _timeout(per_candidate))
    record(spec, backend, measured, database, bound=bound)
    if winner is None:
        raise ConvgenError(f"{name}: no candidate schedule ran and matched the oracle "
                           f"({measured[0].error or 'wrong results'})")
    return TuneResult(spec, backend, name, winner.schedule, winner.seconds, default,
                      measured[0].seconds, measured, len(candidates))


def _timeout(per_candidate: float) -> float:
    """Seconds the timing child gets for one candidate, ``per_candidate`` the estimate."""
    if not math.isfinite(per_candidate):
        return TIMEOUT_SECONDS
    return max(TIMEOUT_SECONDS, TIMEOUT_FACTOR * per_candidate)


def _search(spec: ConvSpec, backend: str, name: str, default: Schedule, rest: list[Schedule],
            arrays, deadline: float, notify, workers: int, bound: bool, timer: Timer,
            database) -> tuple[list[Measurement], float]:
    """Time the default, then build and time batches of ``rest`` until ``deadline``, then
    time the finalists again beside the default: every measurement, the default first,
    and the estimated seconds per candidate."""
    total = len(rest) + 1
    try:
        first = timer.run("measure", default, math.inf, timeout=FIRST_TIMEOUT_SECONDS)
    except TimingFailure as exc:
        record(spec, backend, [Measurement(default, math.inf, error=str(exc))], database,
               bound=bound)
        raise ConvgenError(f"{name}: the default schedule ({describe(default)}) could not "
                           f"be timed: {exc}; without it there is nothing to compare "
                           f"candidates with") from None
    measured = [first]
    best = first.seconds
    try:
        load = timer.run("load_seconds", default, timeout=_timeout(TARGET_SECONDS))
    except TimingFailure:  # it loaded a moment ago: the estimate goes without the load
        load = 0.0
    per_candidate = _timing_estimate(first.seconds, load)
    deadline -= (FINALISTS + 1) * per_candidate  # kept for the final round
    queue = list(rest)
    build_each = FIRST_BUILD_SECONDS  # wall seconds per candidate in the last batch
    with CandidateBuilder(spec, backend, workers, bound) as builder:
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
                try:
                    timer.start()  # a restart after a crash is not this candidate's time
                    start = time.monotonic()
                    m = timer.run("measure", schedule, best, timeout=_timeout(per_candidate))
                    per_candidate = 0.5 * (per_candidate + time.monotonic() - start)
                except TimingFailure as exc:  # it crashed or hung: this candidate only
                    m = Measurement(schedule, math.inf, error=str(exc))
                measured.append(m)
                best = min(best, m.seconds)
                notify(Progress(name, "measure", len(measured), total, best))

    notify(Progress(name, "confirm", len(measured), total, best))
    picks = min(FINALISTS + 1, sum(math.isfinite(m.seconds) for m in measured))
    try:
        measured = timer.run("confirm", measured,
                             timeout=max(picks, 1) * _timeout(per_candidate))
    except TimingFailure:  # a finalist crashed this time: keep the first timings
        pass
    return measured, per_candidate


def _load_seconds(spec: ConvSpec, backend: str, schedule: Schedule, arrays,
                  bound: bool = False) -> float:
    """Seconds to load a kernel from the cache (MCJIT takes longer than dlopen)."""
    start = time.perf_counter()
    try:
        runner(spec, backend, schedule, arrays, bound)
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
            arrays, bound: bool = False) -> list[Measurement]:
    """Time the FINALISTS fastest and the default (``measured[0]``) again, their calls
    interleaved so that noise and drift hit them alike; new medians replace the old."""
    ranked = sorted((i for i, m in enumerate(measured) if math.isfinite(m.seconds)),
                    key=lambda i: measured[i].seconds)
    picks = ranked[:FINALISTS] + ([0] if 0 in ranked[FINALISTS:] else [])
    if len(picks) < 2:
        return measured
    try:
        calls = [runner(spec, backend, measured[i].schedule, arrays, bound) for i in picks]
        times: list[list[float]] = [[] for _ in picks]
        spent = 0.0
        while len(times[0]) < CONFIRM_MAX_REPEATS and (
                len(times[0]) < MIN_REPEATS or spent < TARGET_SECONDS * len(picks)):
            for call, samples in zip(calls, times):
                start = time.perf_counter()
                call()
                samples.append(time.perf_counter() - start)
                spent += samples[-1]
    except Exception:  # noqa: BLE001 - they all ran before: keep the first timings
        return measured
    out = list(measured)
    for i, samples in zip(picks, times):
        out[i] = Measurement(out[i].schedule, statistics.median(samples))
    return out


def _check_winner(spec, backend, measured, arrays, name, notify, total, bound=False,
                  timer: Timer | None = None, timeout: float = math.inf):
    """Verify candidates fastest first until one matches the oracle; mark them. The
    default (``measured[0]``) ranks as if DEFAULT_MARGIN faster than it measured. Each
    runs through ``timer`` (None: in this process), given ``timeout`` seconds."""
    timer = timer or Timer(spec, backend, arrays, bound, isolate=False)
    want = None
    out = list(measured)
    rank = (lambda i: out[i].seconds / (1 + DEFAULT_MARGIN) if i == 0 else out[i].seconds)
    for i in sorted(range(len(out)), key=rank):
        if not math.isfinite(out[i].seconds):
            break
        notify(Progress(name, "check", len(out), total, out[i].seconds))
        if want is None:
            want = reference(spec, *arrays)
        try:
            ok = timer.run("verify", out[i].schedule, want, timeout=timeout)
            error = None if ok else "wrong results (oracle check failed)"
        except TimingFailure as exc:
            ok, error = False, f"oracle check: {exc}"
        out[i] = Measurement(out[i].schedule, out[i].seconds, checked=ok, error=error)
        if ok:
            return out, out[i]
    return out, None


# -- the tuning database ------------------------------------------------------------------

# -- networks -----------------------------------------------------------------------------

def network_convs(network: Any, input_shape=None, dtype: str = "float32") -> dict[str, tuple]:
    """{spec key: (first node name, spec)} of the convs a compiled network runs (after
    fusion, as ``compile_graph`` sees them), in order."""
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
    splitting ``budget`` among them (time one leaves unused goes to the next), with the
    weights bound as the network binds them."""
    convs = list(network_convs(network, input_shape, dtype).values())
    deadline = time.monotonic() + budget
    results = []
    for i, (node, spec) in enumerate(convs):
        share = max(deadline - time.monotonic(), 0.0) / (len(convs) - i)
        results.append(tune(spec, backend, share, threads, max_candidates, progress,
                            name=node, bound=True, **options))
    return results


