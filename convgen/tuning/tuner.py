"""Tune: search schedules for one spec, time them, keep every measurement.

The tuner stays thin. It enumerates the schedules of a spec and prunes the illegal,
the oversized and the duplicates; orders them by a cheap cost model; compiles as
many as the budget allows in worker processes (which only fill the kernel cache);
times each batch in one timing child process, interleaved with the default (rounds of
one call each, convgen.tuning.noise); times the finalists again beside the default and
keeps those faster beyond the measured noise (:func:`convgen.tuning.noise.compare`);
re-checks the best against the oracle; re-times it beside the default once more and
drops it unless it wins again; and appends every measurement to the tuning database, a
JSON-lines file. It waits for a quiet machine before the decisive timings, re-times one
that other processes disturbed, and refuses (:class:`MachineBusy`, nothing recorded)
when the machine stays busy. docs/tuning.md says how and why.

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
import dataclasses
import math
import multiprocessing
import os
import signal
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
from convgen.plan.defaults import PARALLEL_FLOPS
from convgen.records import check_database, record
from convgen.reference import random_arrays, reference
from convgen.schedule import Schedule
from convgen.spec import ConvSpec
from convgen.tolerance import close
from convgen.tuning.noise import (LOAD_SLACK, LOAD_WAIT_SECONDS, LOSER_FACTOR, Load, LoadMeter,
                                  Verdict, compare, idle_load, noisy, paired_gain,
                                  robust_median, spread, time_rounds)
from convgen.tuning.space import candidate_schedules

# Screening: each batch of candidates is timed with the default in rounds until every
# one has had about TARGET_SECONDS of calls, in MIN_ROUNDS to MAX_ROUNDS rounds
TARGET_SECONDS = 0.2
MIN_ROUNDS, MAX_ROUNDS = 3, 100
FIRST_BUILD_SECONDS = 0.5  # a guess until a batch is built: starting workers, compiling
BATCH = 2  # candidates per worker built before the batch is timed
FINALISTS = 3  # the few with the largest gains are timed again with the default ...
# ... for about CONFIRM_SECONDS each, in CONFIRM_MIN_ROUNDS to CONFIRM_MAX_ROUNDS rounds
# (enough for a verdict after outliers: noise.DECIDE_MIN_ROUNDS; small kernels get more)
CONFIRM_SECONDS = 0.2
CONFIRM_MIN_ROUNDS, CONFIRM_MAX_ROUNDS = 10, 1000
FINAL_SECONDS = 0.25  # the winner's last rounds beside the default, each
# A decisive timing (confirm, final) disturbed by other processes (noise.Load.busy) or
# with noisy default timings (noise.noisy) is re-timed after a wait for quiet, at most
# this many times; then the tuner refuses
RETIMES = 2
# tune(check_load=None) follows this and $CONVGEN_TUNE_CHECK_LOAD: wait, re-time or refuse
# on a busy machine (tests on a shared machine turn it off; the decision rule still
# guards every winner)
CHECK_LOAD = True
PROTOCOL = "interleaved-1"  # how records' numbers were measured (docs/tuning.md)
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


class MachineBusy(ConvgenError):
    """Other processes kept the cores busy while the tuner had to time: it refused and
    recorded nothing."""


@dataclass(frozen=True)
class Measurement:
    """One candidate: its median seconds per call (inf: failed to compile or run), and,
    once timed beside the default, how noisy its calls were and its gain on the default."""

    schedule: Schedule
    seconds: float
    checked: bool = False  # verified against the oracle, and the run's winner
    error: str | None = None
    noise: float = math.nan  # relative spread per call (noise.spread), latest timing
    rounds: int = 0  # calls in its latest timing, one per round
    gain: float = math.nan  # 1 - median paired ratio to the default (0.1: 10% faster)
    rejected: str | None = None  # why a candidate timed faster was not kept


@dataclass(frozen=True)
class Progress:
    """What a ``progress`` callback receives while one spec is tuned."""

    name: str
    phase: str  # "compile", "measure", "confirm", "check", "final", or "wait" (for quiet)
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
    threads: int | None = None  # the thread count tuned for (records carry it)
    verdict: Verdict | None = None  # the winner's last verdict against the default
    # other processes' load during the last decisive timing, else during the whole run
    load: Load | None = None

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
                 f"{_ms(self.default_seconds)}, speedup {self.speedup:.2f}x"]
        if self.verdict is not None:
            lines.append(f"  kept: {self.verdict.why()}")
        lines.append(f"  {'ms':>9}  {'GFLOP/s':>8}  {'gain':>6}  {'noise':>5}  schedule")
        for m in sorted(self.measurements, key=lambda m: m.seconds):
            flops = f"{self.spec.flops / m.seconds / 1e9:8.1f}" if math.isfinite(m.seconds) \
                else f"{'-':>8}"
            gain = f"{m.gain:+6.1%}" if math.isfinite(m.gain) else f"{'-':>6}"
            noise = f"{m.noise:5.1%}" if math.isfinite(m.noise) else f"{'-':>5}"
            marks = (" best" if m.schedule == self.best else "") + \
                (" default" if m.schedule == self.default else "") + \
                (f" failed: {m.error}" if m.error else "") + \
                (f" not kept: {m.rejected}" if m.rejected else "")
            lines.append(f"  {_ms(m.seconds):>9}  {flops}  {gain}  {noise}  "
                         f"{describe(m.schedule)}{marks}")
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
    (the same code as with ``workers=0`` in the tuner itself). Kernels stay loaded, and
    warm, from their first use until released."""

    def __init__(self, spec: ConvSpec, backend: str, arrays, bound: bool):
        self.spec, self.backend, self.arrays, self.bound = spec, backend, arrays, bound
        self.loaded: dict[Schedule, Callable[..., None]] = {}

    def prepare(self, schedule: Schedule) -> float:
        """Load ``schedule``'s kernel and call it once (a warm-up); that call's seconds."""
        if schedule in self.loaded:
            return 0.0
        run = runner(self.spec, self.backend, schedule, self.arrays, self.bound)
        start = time.perf_counter()
        run()
        self.loaded[schedule] = run
        return time.perf_counter() - start

    def rounds(self, schedules: list[Schedule], seconds: float, min_rounds: int,
               max_rounds: int, loser_factor: float = math.inf) -> list[list[float]]:
        """``schedules`` timed in rounds (noise.time_rounds), the first never dropped."""
        for schedule in schedules:
            self.prepare(schedule)
        return time_rounds([self.loaded[s] for s in schedules], seconds, min_rounds,
                           max_rounds, loser_factor)

    def release(self, schedules: list[Schedule]) -> None:
        for schedule in schedules:
            self.loaded.pop(schedule, None)

    def load_seconds(self, schedule: Schedule) -> float:
        return _load_seconds(self.spec, self.backend, schedule, self.arrays, self.bound)

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
        if not self.isolate:  # errors as the child reports them
            try:
                return getattr(self.timing, operation)(*args)
            except Exception as exc:  # noqa: BLE001 - a failing candidate costs infinity
                raise TimingFailure(_first_line(exc)) from None
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

    def running(self) -> bool:
        """Whether operations run without starting a child first."""
        return not self.isolate or self.process is not None and self.process.is_alive()

    def pids(self) -> list[int]:
        """This process and the timing child, if running: whose CPU time is the tuner's."""
        process = self.process
        alive = process is not None and process.pid is not None and process.is_alive()
        return [os.getpid(), process.pid] if alive else [os.getpid()]

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
         workers: int | None = None, bound: bool = False,
         check_load: bool | None = None) -> TuneResult:
    """Search schedules for ``spec`` for about ``budget`` seconds; record every measurement.

    ``threads``: the thread count to tune for, every candidate's and the records' (None:
    the one compile() runs without ``threads=``, its default's: one below the parallel
    threshold, else $CONVGEN_NUM_THREADS or the cores); ``max_candidates`` caps the candidates
    (the default is always one, and always timed); ``workers`` is the number of compile
    processes (default: the CPU count), and with any, candidates are timed in a child
    process, where a crash or hang costs that candidate only (0: compiled and timed in
    this process, unprotected). A candidate replaces the default only when it is faster
    beyond the measured noise in two interleaved timings (docs/tuning.md).
    ``bound``: time the kernels with their weights bound and prepared once
    (:func:`convgen.bind`), as networks run them; records are kept apart, networks and
    bind() read these, compile() the others. ``check_load`` (default CHECK_LOAD; CPU
    backends): wait for other processes to leave the cores free before the decisive
    timings, re-time a disturbed one, and raise MachineBusy, recording nothing, when the
    machine stays busy.
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
    requested = default.threads  # every candidate's (candidate_schedules)
    notify = progress or (lambda p: None)
    arrays = random_arrays(spec)
    database = check_database()  # before any measurement: a bad path loses none
    if workers is None:
        workers = os.cpu_count() or 1
    check = (CHECK_LOAD and config.tune_check_load() if check_load is None else check_load) \
        and get_backend(backend).device != "gpu"  # a GPU's kernels do not share the cores
    with Timer(spec, backend, arrays, bound, isolate=workers > 0) as timer:
        watch = _LoadWatch(name, check, timer.pids, notify)
        watch.quiet(_threads(chosen), Progress(name, "measure", 0, len(chosen), math.inf))
        whole = LoadMeter(timer.pids)  # the run's load, noted when nothing decisive ran
        whole.start()
        search = _search(spec, backend, name, default, rest, arrays, deadline, notify,
                         min(workers, len(rest)), bound, timer, database, requested)
        decided = _decide(spec, backend, name, search, arrays, notify, len(chosen), timer,
                          watch)
        load = decided.load or whole.stop()  # compile workers reaped: their time is ours
    return finish(spec, backend, name, decided, database, bound, requested, _context(load),
                  default, len(candidates), load)


def finish(spec: ConvSpec, backend: str, name: str, decided: _Decision, database,
           bound: bool, requested: int, context: dict, default: Schedule, candidates: int,
           load: Load | None) -> TuneResult:
    """Record a spec's measurements (the one write per spec: the local tuner's, or a
    cluster's client) and its TuneResult; ConvgenError when no candidate ran and matched
    the oracle."""
    record(spec, backend, decided.measured, database, bound=bound, threads=requested,
           context=context)
    winner = decided.winner
    if winner is None:
        raise ConvgenError(f"{name}: no candidate schedule ran and matched the oracle "
                           f"({decided.measured[0].error or 'wrong results'})")
    return TuneResult(spec, backend, name, winner.schedule, winner.seconds, default,
                      decided.measured[0].seconds, decided.measured, candidates,
                      requested, decided.verdict, load)


def _threads(schedules: list[Schedule]) -> int:
    """The most threads any of ``schedules`` runs: the cores a timing of them needs."""
    return max(s.threads for s in schedules)


def _context(load: Load | None) -> dict:
    """What every record line of a run carries besides the setup: the protocol, the load."""
    context: dict[str, Any] = {"protocol": PROTOCOL}
    if load is not None:
        context["load"] = load.to_dict()
    return context


def _strict(spec: ConvSpec, backend: str, schedule: Schedule) -> bool:
    """Whether ``schedule`` is judged by the strict rule: several threads on a CPU for a
    kernel below the parallel threshold (noise.STRICT_MARGIN says why)."""
    return get_backend(backend).device != "gpu" and schedule.threads > 1 \
        and spec.flops < PARALLEL_FLOPS


def _timeout(per_candidate: float) -> float:
    """Seconds the timing child gets for one candidate, ``per_candidate`` the estimate."""
    if not math.isfinite(per_candidate):
        return TIMEOUT_SECONDS
    return max(TIMEOUT_SECONDS, TIMEOUT_FACTOR * per_candidate)


class _LoadWatch:
    """Other processes' load during one tune(): before a decisive timing it waits until
    they leave the cores free (:meth:`quiet`), and it judges each such timing
    (:meth:`disturbed`); with ``check`` False it only measures (records carry the load)."""

    def __init__(self, name: str, check: bool, pids: Callable[[], list[int]], notify):
        self.name, self.check, self.notify = name, check, notify
        self.meter = LoadMeter(pids)

    def quiet(self, threads: int, at: Progress) -> None:
        """Return once other processes leave ``threads`` threads their cores (looking
        noise.LOAD_WINDOW at a time); MachineBusy after LOAD_WAIT_SECONDS."""
        if not self.check:
            return
        since = time.monotonic()
        while True:
            load = idle_load(self.meter)
            if load is None or not load.busy(threads):
                return
            if time.monotonic() - since >= LOAD_WAIT_SECONDS:
                allowed = load.cores - min(threads, load.cores) + LOAD_SLACK
                raise MachineBusy(
                    f"{self.name}: the machine is busy: {_others(load)} for "
                    f"{LOAD_WAIT_SECONDS:g} s, and timing kernels on {threads} thread(s) "
                    f"leaves them {allowed:.1f}; {_REFUSED}")
            self.notify(dataclasses.replace(at, phase="wait"))

    def disturbed(self, load: Load | None, threads: int, default: list[float]) -> str | None:
        """Why a timing of ``threads`` threads cannot be trusted (None: it can): others
        held the cores (``load``), or the default's own calls (``default``) were noisy."""
        if not self.check:
            return None
        if load is not None and load.busy(threads):
            return _others(load)
        if noisy(default):
            return f"the default's calls varied by {spread(default):.0%} per call, or often " \
                f"by far"
        return None


_REFUSED = ("nothing was recorded. Tune when the machine is idle, or time anyway with "
            "check_load=False (convgen tune --no-load-check, $CONVGEN_TUNE_CHECK_LOAD=0: "
            "noisier timings, fewer winners kept)")


def _others(load: Load) -> str:
    return f"other processes used {load.others:.1f} of the {load.cores} cores"


def _interleaved(timer: Timer, default: Schedule, picks: list[Schedule], seconds: float,
                 min_rounds: int, max_rounds: int, loser_factor: float,
                 timeout: float) -> list[tuple[list[float], list[float] | str]]:
    """Each of ``picks`` timed beside ``default`` in rounds (about ``seconds`` each):
    [(the default's samples, its samples or why it failed)], from one timing; after a
    crash or hang, each again beside the default alone, so it costs its candidate only."""
    count = len(picks) + 1
    try:
        timer.start()
        samples = timer.run("rounds", [default, *picks], seconds * count, min_rounds,
                            max_rounds, loser_factor, timeout=count * timeout)
        return [(samples[0], s) for s in samples[1:]]
    except TimingFailure as exc:
        if len(picks) == 1:
            return [([], str(exc))]
    pairs: list[tuple[list[float], list[float] | str]] = []
    for schedule in picks:
        try:
            timer.start()
            d, c = timer.run("rounds", [default, schedule], 2 * seconds, min_rounds,
                             max_rounds, math.inf, timeout=2 * timeout)
            pairs.append((d, c))
        except TimingFailure as exc:
            pairs.append(([], str(exc)))
    return pairs


def _timed(schedule: Schedule, samples: list[float] | str,
           default: list[float] | None) -> Measurement:
    """``schedule``'s Measurement from its ``samples`` (or why it failed), its gain on the
    ``default`` samples of the same rounds (None: it is the default)."""
    if isinstance(samples, str):
        return Measurement(schedule, math.inf, error=samples)
    gain = 0.0 if default is None else paired_gain(default, samples)
    return Measurement(schedule, robust_median(samples), noise=spread(samples),
                       rounds=len(samples), gain=gain)


@dataclass
class _Search:
    """What the search found: the default first (from all its samples), then every
    candidate timed or failed; the default's samples; seconds per candidate (estimate)."""

    measured: list[Measurement]
    default_samples: list[float]
    per_candidate: float


def _search(spec: ConvSpec, backend: str, name: str, default: Schedule, rest: list[Schedule],
            arrays, deadline: float, notify, workers: int, bound: bool, timer: Timer,
            database, threads: int) -> _Search:
    """Time the default, then build batches of ``rest`` and time each batch interleaved
    with the default until ``deadline`` (less the time kept for the decisive timings)."""
    total = len(rest) + 1
    try:
        timer.run("prepare", default, timeout=FIRST_TIMEOUT_SECONDS)
        [base] = timer.run("rounds", [default], TARGET_SECONDS, MIN_ROUNDS, MAX_ROUNDS,
                           timeout=FIRST_TIMEOUT_SECONDS)
    except TimingFailure as exc:
        record(spec, backend, [Measurement(default, math.inf, error=str(exc))], database,
               bound=bound, threads=threads, context=_context(None))
        raise ConvgenError(f"{name}: the default schedule ({describe(default)}) could not "
                           f"be timed: {exc}; without it there is nothing to compare "
                           f"candidates with") from None
    default_samples = list(base)
    best = robust_median(base)
    measured = [Measurement(default, best)]
    try:
        load = timer.run("load_seconds", default, timeout=_timeout(TARGET_SECONDS))
    except TimingFailure:  # it loaded a moment ago: the estimate goes without the load
        load = 0.0
    per_candidate = _timing_estimate(best, load)
    deadline -= (FINALISTS + 3) * per_candidate  # kept for the confirm and final rounds
    queue = list(rest)
    build_each = FIRST_BUILD_SECONDS  # wall seconds per candidate in the last batch
    with CandidateBuilder(spec, backend, workers, bound) as builder:
        while queue:  # batches: build in parallel, then time them with the default
            fits = int((deadline - time.monotonic()) / (build_each + per_candidate))
            size = min(fits, BATCH * max(workers, 1))
            if size < 1:
                break
            batch, queue = queue[:size], queue[size:]
            notify(Progress(name, "compile", len(measured), total, best))
            start = time.monotonic()
            built = builder.build(batch)
            build_each = (time.monotonic() - start) / len(batch)
            start = time.monotonic()
            ready = []
            for schedule in batch:
                if built[schedule] is not None:
                    measured.append(Measurement(schedule, math.inf, error=built[schedule]))
                    continue
                if time.monotonic() >= deadline:
                    queue = []
                    break
                try:  # loaded and called once alone: a crash or hang costs it only
                    timer.start()  # a restart after a crash is not this candidate's time
                    timer.run("prepare", schedule, timeout=_timeout(per_candidate))
                    ready.append(schedule)
                except TimingFailure as exc:
                    measured.append(Measurement(schedule, math.inf, error=str(exc)))
                notify(Progress(name, "measure", len(measured) + len(ready), total, best))
            if not ready:
                continue
            pairs = _interleaved(timer, default, ready, TARGET_SECONDS, MIN_ROUNDS,
                                 MAX_ROUNDS, LOSER_FACTOR, _timeout(per_candidate))
            per_candidate = 0.5 * (per_candidate + (time.monotonic() - start) / len(ready))
            taken: set[int] = set()
            for schedule, (d, c) in zip(ready, pairs):
                if id(d) not in taken:  # one timing's default samples once
                    taken.add(id(d))
                    default_samples += d
                measured.append(_timed(schedule, c, d))
                best = min(best, measured[-1].seconds)
            if timer.running():
                with contextlib.suppress(TimingFailure):
                    timer.run("release", ready, timeout=TIMEOUT_SECONDS)
            notify(Progress(name, "measure", len(measured), total, best))
    measured[0] = _timed(default, default_samples, None)
    return _Search(measured, default_samples, per_candidate)


def _load_seconds(spec: ConvSpec, backend: str, schedule: Schedule, arrays,
                  bound: bool = False) -> float:
    """Seconds to load a kernel from the cache (MCJIT takes longer than dlopen)."""
    start = time.perf_counter()
    try:
        runner(spec, backend, schedule, arrays, bound)
    except Exception:  # noqa: BLE001 - the default failed: its timing said so
        pass
    return 2 * (time.perf_counter() - start)


def _timing_estimate(seconds: float, load_seconds: float) -> float:
    """Seconds one candidate's load and timing take, from the default's time per call:
    its warm-up, its calls and as many of the default's."""
    if not math.isfinite(seconds):
        return TARGET_SECONDS + load_seconds
    calls = min(MAX_ROUNDS, max(MIN_ROUNDS, TARGET_SECONDS / max(seconds, 1e-9)))
    return load_seconds + (1 + 2 * calls) * seconds


def confirm(timer: Timer, watch: _LoadWatch, default: Schedule, picks: list[Schedule],
            seconds: float, timeout: float,
            at: Progress) -> tuple[list[tuple[list[float], list[float] | str]], Load | None]:
    """A decisive timing: ``picks`` beside ``default`` in rounds (about ``seconds`` each,
    at least CONFIRM_MIN_ROUNDS), on a quiet machine (``watch``), re-timed when other
    processes disturbed it; pairs as :func:`_interleaved` gives them, and the load during
    the timing kept. MachineBusy when it stays disturbed RETIMES more times."""
    threads = _threads([default, *picks])
    why = None
    for _ in range(RETIMES + 1):
        watch.quiet(threads, at)
        watch.meter.start()
        pairs = _interleaved(timer, default, picks, seconds, CONFIRM_MIN_ROUNDS,
                             CONFIRM_MAX_ROUNDS, math.inf, timeout)
        load = watch.meter.stop()
        why = watch.disturbed(load, threads, next((d for d, _ in pairs if d), []))
        if why is None:
            return pairs, load
    raise MachineBusy(f"{watch.name}: the machine was busy while timing ({why}), "
                      f"{RETIMES + 1} times; {_REFUSED}")


@dataclass
class _Decision:
    """Every measurement as recorded, the winner (None: nothing ran correctly), its
    verdict against the default (None: the default, or nothing to compare with), and the
    load during the last decisive timing."""

    measured: list[Measurement]
    winner: Measurement | None
    verdict: Verdict | None
    load: Load | None


def _decide(spec: ConvSpec, backend: str, name: str, search: _Search, arrays, notify,
            total: int, timer: Timer, watch: _LoadWatch) -> _Decision:
    """The winner: the default unless a candidate is faster beyond the noise in the
    confirm rounds, matches the oracle, and is faster beyond the noise again in the final
    rounds beside the default alone. Only the winner is marked checked."""
    out = list(search.measured)
    default = out[0].schedule
    where = {m.schedule: i for i, m in enumerate(out)}
    timeout = _timeout(search.per_candidate)
    best = min(m.seconds for m in out)
    load = None
    finalists = [m.schedule for m in sorted(
        (m for m in out[1:] if math.isfinite(m.seconds) and m.gain > 0),
        key=lambda m: -m.gain)[:FINALISTS]]
    passed: list[tuple[int, Verdict]] = []
    if finalists:
        at = Progress(name, "confirm", len(out), total, best)
        notify(at)
        pairs, load = confirm(timer, watch, default, finalists, CONFIRM_SECONDS, timeout, at)
        for schedule, (d, c) in zip(finalists, pairs):
            i = where[schedule]
            out[i], verdict = _judged(spec, backend, schedule, c, d)
            if verdict is not None and verdict.faster:
                passed.append((i, verdict))
        first = next((d for d, _ in pairs if d), None)
        if first:
            out[0] = _timed(default, first, None)

    want = reference(spec, *arrays)

    def correct(i: int) -> bool:
        notify(Progress(name, "check", len(out), total, out[i].seconds))
        try:
            ok = timer.run("verify", out[i].schedule, want, timeout=timeout)
            error = None if ok else "wrong results (oracle check failed)"
        except TimingFailure as exc:
            ok, error = False, f"oracle check: {exc}"
        if not ok:
            out[i] = dataclasses.replace(out[i], error=error)
        return ok

    if not correct(0):  # nothing correct to beat: the fastest candidate that is correct
        for i in sorted((i for i in range(1, len(out)) if math.isfinite(out[i].seconds)),
                        key=lambda i: out[i].seconds):
            if correct(i):
                out[i] = dataclasses.replace(out[i], checked=True)
                return _Decision(out, out[i], None, load)
        return _Decision(out, None, None, load)
    passed.sort(key=lambda iv: -iv[1].gain)
    chosen = next((i for i, _ in passed if correct(i)), None)
    if chosen is not None:  # again, beside the default alone: it must win twice
        schedule = out[chosen].schedule
        at = Progress(name, "final", len(out), total, out[chosen].seconds)
        notify(at)
        [(d, c)], load = confirm(timer, watch, default, [schedule], FINAL_SECONDS, timeout, at)
        judged, verdict = _judged(spec, backend, schedule, c, d)
        if d:
            out[0] = _timed(default, d, None)
        if verdict is not None and verdict.faster:
            out[chosen] = dataclasses.replace(judged, checked=True)
            return _Decision(out, out[chosen], verdict, load)
        out[chosen] = dataclasses.replace(judged, rejected=judged.rejected and
                                          f"re-timed at the end: {judged.rejected}")
    out[0] = dataclasses.replace(out[0], checked=True)
    return _Decision(out, out[0], None, load)


def _judged(spec: ConvSpec, backend: str, schedule: Schedule, samples: list[float] | str,
            default: list[float]) -> tuple[Measurement, Verdict | None]:
    """``schedule``'s Measurement and Verdict from a decisive timing beside the default
    (no Verdict when it failed); a candidate not kept says why."""
    if isinstance(samples, str):
        return Measurement(schedule, math.inf, error=samples), None
    verdict = compare(default, samples, _strict(spec, backend, schedule))
    measured = Measurement(schedule, robust_median(samples), noise=spread(samples),
                           rounds=len(samples), gain=verdict.gain,
                           rejected=None if verdict.faster else verdict.why())
    return measured, verdict


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


