"""Tune on a Dask cluster: candidates compiled and timed on the workers, recorded here.

:func:`tune_many` spreads the candidates of many specs (a list of ConvSpec, tuned as
``convgen tune SPECFILE`` tunes them, or the distinct convs of a network, tuned bound as
:func:`convgen.tuning.tuner.tune_network` tunes them) over the workers of a
``dask.distributed`` cluster (the optional extra ``convgen[distributed]``). The timing
protocol is the local tuner's, run on the workers with its own functions; only the
client writes the tuning database.

The unit of work is **one candidate**: a task builds it on a worker (into that worker's
kernel cache) and times it beside the spec's default in interleaved rounds
(:func:`convgen.tuning.tuner._interleaved`) in the worker's timing child process
(:class:`convgen.tuning.tuner.Timer`), so each paired ratio comes from one machine. A
worker keeps one timing child per spec (the default loaded and timed once there, for
the per-candidate estimate and timeouts) and times one task at a time (a lock: two
timings at once on one machine would disturb each other). The client keeps at most one
task per worker in flight, stops handing out candidates when the spec's share of the
budget (less the time kept for the decisive timings) runs out, then sends the
measurements to one worker in a second task that runs the local tuner's decision
(:func:`convgen.tuning.tuner._decide`: confirm rounds, the oracle check, the final
rounds, :func:`convgen.tuning.noise.compare`) on that worker. The client records every
measurement with :func:`convgen.records.record`, one append per spec, with the bound
flag and thread count the local tuner writes, so compile, bind and networks pick the
results as they pick the local tuner's.

Hardware: before any work, every worker reports :func:`convgen.records.this_machine`
for the backend; a worker whose identity differs from the client's (records measured
there would not match the client's compile) is left out with a WARNING naming each
differing field and both values, and when none matches, :class:`WorkerMismatch` says
so and nothing runs.

Faults cost one candidate. A candidate whose kernel crashes or hangs kills only the
worker's timing child (the timeout is the tuner's, :func:`convgen.tuning.tuner._timeout`);
a worker process that dies mid-candidate makes dask report ``KilledWorker`` for that
task. Either way the attempt is recorded as failed (its line carries the error) and the
candidate is tried once more on another worker when there is one, even past the
budget (a candidate that fails to compile is not: the workers are identical). The
decision task is tried once more elsewhere if its worker dies; should that one die too,
every measurement is still recorded and none is checked (compile keeps its default).
After a death the client works with the live matching workers (one the nanny restarted
is asked for its identity first), waiting up to REJOIN_SECONDS when none is left.
The cluster :func:`tune_many` starts itself has
``distributed.scheduler.allowed-failures`` 0, so dask reports the first death and the
one retry is the tuner's; a scheduler given through ``client`` retries as configured
(dask's default: 3 times) before the tuner sees KilledWorker and retries once more:
start it with ``allowed-failures`` 0 for "at most once".

Dask's worker processes are daemonic, and a daemonic process may not start children;
the tasks lift that for the timing child they start (which dies with its parent:
PR_SET_PDEATHSIG, tuner._child_setup). Dask's nannies set OMP_NUM_THREADS=1 in the
process that starts them, which convgen reads as the thread count: tune_many's own
cluster puts the client's environment back after it starts and before each spec.

Without ``distributed`` installed, :func:`tune_many` runs the local tuner and logs a
WARNING naming the extra; asking for a cluster then (``client``, ``workers``) raises
:class:`DistributedUnavailable`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import multiprocessing
import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

from convgen import config, records
from convgen.backends import get_backend, resolve_backend
from convgen.errors import ConvgenError
from convgen.graph.ir import Graph
from convgen.log import get_logger
from convgen.records import check_database, record
from convgen.reference import random_arrays
from convgen.schedule import Schedule
from convgen.spec import ConvSpec
from convgen.tuning import tuner
from convgen.tuning.noise import LOSER_FACTOR, robust_median
from convgen.tuning.space import candidate_schedules
from convgen.tuning.tuner import (FINALISTS, FIRST_TIMEOUT_SECONDS, MAX_ROUNDS, MIN_ROUNDS,
                                  TARGET_SECONDS, Measurement, Progress, TimingFailure,
                                  TuneResult, network_convs, tune)

log = get_logger("tune")

INSTALL = "pip install 'convgen[distributed]'"
# (function, args): the private test hook of tune_many(_fault=...), see _hooked
Fault = tuple[Callable[..., None], tuple]


class DistributedUnavailable(ConvgenError, ImportError):
    """A cluster was asked for (client, workers) but dask.distributed is not installed."""


class WorkerMismatch(ConvgenError):
    """No worker of the cluster runs on the client's hardware and software (records
    measured there would never be used here); the message names the differences."""


# -- the client -----------------------------------------------------------------------------

def tune_many(specs_or_network: Any, client: Any = None, budget: float = 30.0,
              backend: str | None = None, threads: int | None = None, input_shape=None,
              workers: int | None = None, progress: Callable[[Progress], None] | None = None,
              check_load: bool | None = None, *, max_candidates: int | None = None,
              dtype: str = "float32", _fault: Fault | None = None) -> list[TuneResult]:
    """Tune many specs on a Dask cluster; a TuneResult per spec, as :func:`tune` gives.

    ``specs_or_network``: a list of ConvSpec (kernels: weights passed in each call, as
    ``convgen tune SPECFILE`` tunes them) or a network (a convgen.nn module, a NetSpec, a
    traced Graph, an imported ONNX model's graph; ``input_shape`` where it has none)
    whose distinct convs are tuned with their weights bound, as :func:`tune_network`
    tunes them. ``client``: a ``dask.distributed.Client``; ``workers``: start a local
    cluster of that many worker processes (one thread each) for this call, closed at
    the end; neither: the current default client if there is one, else the local
    tuner. ``budget`` seconds are split among the specs as tune_network splits them;
    ``threads``, ``check_load`` (judged on the worker that decides), ``max_candidates``
    as for :func:`tune`. Only this process writes the tuning database.

    ``_fault`` is a test hook, not an API: ``(function, args)``, picklable by reference
    (a module-level function the workers can import). On a worker,
    ``function("worker", schedule_dict, *args)`` runs before each candidate is timed and
    ``function("decide", None, *args)`` before the decision (either may kill the worker
    process), and every timing child the worker starts runs ``function("child", None,
    *args)`` first (it may make a kernel crash or hang there, as tuner.CHILD_HOOK does
    for the local tuner).
    """
    for label, value, low in (("budget", budget, 0), ("workers", workers, 1),
                              ("max_candidates", max_candidates, 1), ("threads", threads, 1)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not low <= value < math.inf):
            raise ValueError(f"{label}: expected a number >= {low}, got {value!r}")
    if workers is not None and not isinstance(workers, int):
        raise ValueError(f"workers: expected a whole number of worker processes, got {workers!r}")
    if client is not None and workers is not None:
        raise ValueError("client and workers: give one (workers starts a local cluster)")
    jobs = _jobs(specs_or_network, input_shape, dtype)
    backend = resolve_backend(backend)
    distributed = _distributed()
    if distributed is None:
        if client is not None or workers is not None:
            raise DistributedUnavailable(f"tuning on a Dask cluster needs dask.distributed: "
                                         f"{INSTALL}")
        log.warning("distributed tuning needs dask.distributed (%s); tuning on this "
                    "machine instead", INSTALL)
        return _local(jobs, backend, budget, threads, progress, check_load, max_candidates)
    if client is None and workers is None:
        try:
            client = distributed.default_client()
        except ValueError:  # no client running: the local tuner
            log.info("no Dask client: tuning on this machine")
            return _local(jobs, backend, budget, threads, progress, check_load,
                          max_candidates)
    database = check_database()  # before any measurement: a bad path loses none
    check = (tuner.CHECK_LOAD and config.tune_check_load() if check_load is None
             else check_load) and get_backend(backend).device != "gpu"
    with _cluster(distributed, client, workers) as (used, environ):
        known: dict[str, bool] = {}  # worker address: whether its identity is ours
        addresses = _matching_workers(used, backend, known)
        run = _Run(used, distributed, addresses, known, backend, threads, max_candidates,
                   check, progress or (lambda p: None), database, _fault)
        try:
            deadline = time.monotonic() + budget
            results = []
            for i, (name, spec, bound) in enumerate(jobs):
                share = max(deadline - time.monotonic(), 0.0) / (len(jobs) - i)
                _restore_environ(environ)  # as candidate_schedules must see it
                results.append(run.tune(spec, name, bound, time.monotonic() + share))
            return results
        finally:
            with contextlib.suppress(Exception):  # the workers' timing children
                alive = set(used.scheduler_info()["workers"])
                used.run(_end_session, workers=[a for a in run.addresses if a in alive])


def _jobs(specs_or_network: Any, input_shape, dtype: str) -> list[tuple[str, ConvSpec, bool]]:
    """[(name, spec, bound)] to tune: the specs unbound, or a network's convs bound."""
    if isinstance(specs_or_network, (list, tuple)):
        for i, spec in enumerate(specs_or_network):
            if not isinstance(spec, ConvSpec):
                raise TypeError(f"specs_or_network[{i}]: expected a convgen.ConvSpec, got "
                                f"{type(spec).__name__}")
        return [(spec.name, spec, False) for spec in specs_or_network]
    if not isinstance(specs_or_network, Graph) and not hasattr(specs_or_network, "trace"):
        raise TypeError(f"specs_or_network: expected a list of ConvSpec or a network (a "
                        f"convgen.nn module, a NetSpec, a Graph), got "
                        f"{type(specs_or_network).__name__}")
    convs = network_convs(specs_or_network, input_shape, dtype).values()
    return [(node, spec, True) for node, spec in convs]


def _distributed():
    """The dask.distributed module, or None where it is not installed."""
    try:
        import distributed  # the optional extra: imported only when tuning
    except ImportError:
        return None
    return distributed


def _local(jobs, backend, budget, threads, progress, check_load,
           max_candidates) -> list[TuneResult]:
    """The local tuner on ``jobs``, as tune_network or ``convgen tune SPECFILE`` runs it
    (tune_network's own loop: the same budget split, the same bound tuning)."""
    deadline = time.monotonic() + budget
    results = []
    for i, (name, spec, bound) in enumerate(jobs):
        share = max(deadline - time.monotonic(), 0.0) / (len(jobs) - i)
        results.append(tune(spec, backend, share, threads, max_candidates, progress,
                            name=name, bound=bound, check_load=check_load))
    return results


@contextlib.contextmanager
def _cluster(distributed, client, workers: int | None):
    """(``client``, None), or (a client of a local cluster of ``workers`` processes,
    closed at the end, and this process's environment as it was before the cluster)."""
    if client is not None:
        yield client, None
        return
    import dask  # installed with distributed

    # dask's nannies set OMP_NUM_THREADS=1 (and the like) in the process that starts them,
    # this one, when they start a worker, a restarted one too; convgen reads it as the
    # thread count (config.get_num_threads): the environment is put back after the start,
    # before each spec's candidates are chosen (_Run.tune) and at the end
    environ = dict(os.environ)
    # allowed-failures 0: dask reports the first worker death (KilledWorker) and the
    # tuner retries the candidate once itself (module docstring)
    with _environ_restored(environ), \
            dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        # no dashboard; the scheduler's HTTP server (health checks) on a free port, not
        # on 8787, which another cluster may hold
        cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=1,
                                           processes=True, dashboard_address=None,
                                           scheduler_kwargs={"dashboard_address": ":0"})
    try:
        with _environ_restored(environ), distributed.Client(cluster) as own:
            yield own, environ
    finally:
        with _environ_restored(environ):
            cluster.close()


@contextlib.contextmanager
def _environ_restored(environ: dict[str, str] | None):
    """Put ``environ`` back as this process's environment when the block ends (None:
    leave it)."""
    try:
        yield
    finally:
        _restore_environ(environ)


def _restore_environ(environ: dict[str, str] | None) -> None:
    """Make this process's environment ``environ`` again (None: leave it)."""
    if environ is not None and os.environ != environ:
        os.environ.clear()
        os.environ.update(environ)


def _matching_workers(client, backend: str, known: dict[str, bool] | None = None) -> list[str]:
    """The addresses of the live workers whose identity (records.this_machine) is the
    client's: those in ``known`` (address: matches) as judged before, the others asked
    now, a WARNING for each that differs; WorkerMismatch when none matches."""
    known = {} if known is None else known
    alive = sorted(client.scheduler_info()["workers"])
    if not alive:
        raise ConvgenError("the Dask cluster has no workers")
    new = [address for address in alive if address not in known]
    if new:
        here = records.this_machine(backend)
        # a worker that left since scheduler_info is not asked (it is not alive)
        there = client.run(_identity, backend, workers=new, on_error="ignore")
        bad = []
        for address, identity in sorted(there.items()):
            differ = [f"{name}: {identity.get(name)!r} (the client's: {here.get(name)!r})"
                      for name in sorted(set(here) | set(identity))
                      if identity.get(name) != here.get(name)]
            known[address] = not differ
            if differ:
                bad.append(f"worker {address}: " + "; ".join(differ))
        for line in bad:
            log.warning("left out: %s", line)
        if not any(known.get(a) for a in alive):
            raise WorkerMismatch("no worker runs on the client's hardware and software, "
                                 "so records measured there would never be used here: "
                                 + " | ".join(bad))
    return [address for address in alive if known.get(address)]


@dataclass
class _Outcome:
    """What a candidate's task sends back: the worker, the default's samples of the shared
    rounds, the candidate's (or why it failed, and whether a retry may help), the
    worker's seconds-per-candidate estimate, the default's first samples (a fresh
    session), or why the default itself failed."""

    worker: str
    default_samples: list[float] = dataclasses.field(default_factory=list)
    samples: list[float] | str = dataclasses.field(default_factory=list)
    retry: bool = False
    per_candidate: float = math.nan
    base: list[float] = dataclasses.field(default_factory=list)
    default_error: str | None = None


REJOIN_SECONDS = 60.0  # for a worker to (re)join when every matching one has died
_KILLED = "KilledWorker: the worker process died while timing this candidate"


class _Run:
    """One tune_many call on a cluster: the client's side of each spec."""

    def __init__(self, client, distributed, addresses: list[str], known: dict[str, bool],
                 backend: str, threads: int | None, max_candidates: int | None, check: bool,
                 notify, database, fault: Fault | None):
        self.client, self.distributed, self.addresses = client, distributed, addresses
        self.backend, self.threads, self.max_candidates = backend, threads, max_candidates
        self.check, self.notify, self.database, self.fault = check, notify, database, fault
        self.known = known

    def refresh(self) -> None:
        """After a worker died: the live matching workers (a restarted one is asked for
        its identity), waiting up to REJOIN_SECONDS for one when none is left."""
        until = time.monotonic() + REJOIN_SECONDS
        while True:
            with contextlib.suppress(ConvgenError):
                self.addresses = _matching_workers(self.client, self.backend, self.known)
                if self.addresses:
                    return
            if time.monotonic() >= until:
                raise ConvgenError(f"no worker of the client's hardware is left in the Dask "
                                   f"cluster (waited {REJOIN_SECONDS:g} s for one)")
            time.sleep(0.5)

    def submit(self, function, *args, avoid: str | None = None):
        """``function(*args)`` on a matching worker other than ``avoid`` where there is
        one; never twice the same key (pure=False: a retry is a new task)."""
        others = [a for a in self.addresses if a != avoid] or self.addresses
        return self.client.submit(function, *args, pure=False, workers=others,
                                  allow_other_workers=False)

    def tune(self, spec: ConvSpec, name: str, bound: bool, deadline: float) -> TuneResult:
        backend = self.backend
        candidates = candidate_schedules(spec, backend, self.threads, bound=bound)
        chosen = candidates[:self.max_candidates] if self.max_candidates else candidates
        default, rest = chosen[0], chosen[1:]
        requested = default.threads
        common = (spec.to_dict(), backend, bound, default.to_dict())
        queue: deque[tuple[Schedule | None, int, str | None]] = \
            deque((s, 0, None) for s in rest) if rest else deque([(None, 0, None)])
        running: dict[Any, tuple[Schedule | None, int]] = {}
        measured: list[Measurement] = []
        default_samples: list[float] = []
        per_candidate = 0.0
        best = math.inf
        waiting = self.distributed.as_completed()
        try:
            while queue or running:
                reserve = (FINALISTS + 3) * per_candidate  # for the decisive timings
                while queue and len(running) < len(self.addresses):
                    schedule, attempt, avoid = queue.popleft()
                    if not attempt and time.monotonic() + reserve >= deadline \
                            and (measured or running):
                        continue  # out of time (the first candidate runs; retries do)
                    future = self.submit(_measure, *common,
                                         schedule.to_dict() if schedule else None,
                                         self.fault, avoid=avoid)
                    running[future] = (schedule, attempt)
                    waiting.add(future)
                if not running:
                    break
                future = next(waiting)
                schedule, attempt = running.pop(future)
                outcome = self._outcome(future)
                if outcome.samples == _KILLED:
                    self.refresh()
                if outcome.default_error is not None:
                    record(spec, backend, [Measurement(default, math.inf,
                                                       error=outcome.default_error)],
                           self.database, bound=bound, threads=requested,
                           context=tuner._context(None))
                    raise ConvgenError(
                        f"{name}: the default schedule ({tuner.describe(default)}) could not "
                        f"be timed on worker {outcome.worker}: {outcome.default_error}; "
                        f"without it there is nothing to compare candidates with")
                default_samples += outcome.base + outcome.default_samples
                if math.isfinite(outcome.per_candidate):
                    per_candidate = max(per_candidate, outcome.per_candidate)
                if schedule is None:
                    continue
                m = tuner._timed(schedule, outcome.samples, outcome.default_samples)
                if m.error is not None:
                    m = dataclasses.replace(m, error=f"{m.error} (worker {outcome.worker}"
                                            f"{', retried' if attempt else ''})")
                measured.append(m)
                best = min(best, m.seconds)
                if outcome.retry and attempt == 0:
                    log.warning("%s: candidate %s failed on worker %s (%s): trying it once "
                                "more elsewhere", name, tuner.describe(schedule),
                                outcome.worker, outcome.samples)
                    queue.appendleft((schedule, 1, outcome.worker))
                self.notify(Progress(name, "measure", min(len(measured) + 1, len(chosen)),
                                     len(chosen), best))
        finally:
            for future in running:
                future.cancel()
        if not default_samples:
            raise ConvgenError(f"{name}: the default schedule ({tuner.describe(default)}) "
                               f"was not timed on any worker")
        measured.insert(0, tuner._timed(default, default_samples, None))
        search = tuner._Search(measured, default_samples,
                               per_candidate or tuner._timing_estimate(math.inf, 0.0))
        self.notify(Progress(name, "confirm", len(measured), len(chosen),
                             min(m.seconds for m in measured)))
        decided = self._decide(spec, name, bound, search, len(chosen), common)
        load = decided.load
        context = tuner._context(load)
        context["workers"] = len(self.addresses)
        return tuner.finish(spec, backend, name, decided, self.database, bound, requested,
                            context, default, len(candidates), load)

    def _outcome(self, future) -> _Outcome:
        """The task's outcome; a worker that died, or a task that raised, is a failed
        attempt worth one retry."""
        try:
            return future.result()
        except self.distributed.KilledWorker as exc:
            last = getattr(getattr(exc, "last_worker", None), "address", "?")
            return _Outcome(str(last), samples=_KILLED, retry=True)
        except ConvgenError:
            raise
        except Exception as exc:  # noqa: BLE001 - a failing candidate costs that candidate
            return _Outcome("?", samples=tuner._first_line(exc), retry=True)

    def _decide(self, spec, name, bound, search, total, common) -> tuner._Decision:
        """The local tuner's decision (confirm, oracle, final) run on one worker; tried
        once more elsewhere if that worker dies. Should it die again, nothing is checked
        (compile keeps the default) and the measurements are still recorded."""
        avoid = None
        for attempt in range(2):
            future = self.submit(_settle, *common, name, search, total, self.check,
                                 self.fault, avoid=avoid)
            try:
                return future.result()
            except self.distributed.KilledWorker as exc:
                avoid = getattr(getattr(exc, "last_worker", None), "address", None)
                self.refresh()
                log.warning("%s: the worker deciding among the candidates died%s", name,
                            "; trying once more elsewhere" if attempt == 0 else "")
        return _undecided(search)


def _undecided(search) -> tuner._Decision:
    """No decision could be made: the default is the winner, unchecked (compile, which
    takes only checked records, keeps using its default)."""
    measured = list(search.measured)
    return tuner._Decision(measured, measured[0], None, None)


# -- the workers ----------------------------------------------------------------------------

_LOCK = threading.Lock()  # one timing at a time in a worker process


@dataclass
class _Session:
    """A worker's timing of one spec: the timing child (the default loaded and timed
    there), the arrays, the seconds-per-candidate estimate; ``base`` the default's first
    samples until a task has sent them."""

    key: tuple
    spec: ConvSpec
    arrays: tuple
    timer: tuner.Timer
    per_candidate: float
    base: list[float]


_SESSION: list[_Session] = []  # at most one: the spec this worker times now


def _identity(backend: str) -> dict:
    """A worker's identity, as records keep it (run by client.run on every worker)."""
    return records.this_machine(backend)


def _end_session() -> None:
    """End the worker's timing child (client.run at the end of tune_many)."""
    with _LOCK:
        _end_session_locked()


def _address() -> str:
    try:
        from distributed import get_worker  # noqa: PLC0415 - only ever run on a worker
        return get_worker().address
    except (ImportError, ValueError):
        return "?"


@contextlib.contextmanager
def _hooked(fault: Fault | None):
    """On a worker, while a task runs: timing children it starts run ``fault``'s child
    hook, and it may start them although dask's worker processes are daemonic (a
    daemonic process may not have children because it would orphan them; the timing
    child dies with its parent, tuner._child_setup's PR_SET_PDEATHSIG)."""
    process = multiprocessing.current_process()
    daemonic = process._config.get("daemon", False)  # noqa: SLF001 - no public setter here
    saved = tuner.CHILD_HOOK
    process._config["daemon"] = False  # noqa: SLF001
    if fault is not None:
        function, args = fault
        tuner.CHILD_HOOK = (function, ("child", None, *args))
    try:
        yield
    finally:
        tuner.CHILD_HOOK = saved
        process._config["daemon"] = daemonic  # noqa: SLF001


def _session(spec_data: dict, backend: str, bound: bool, default_data: dict,
             fault: Fault | None) -> _Session | str:
    """The worker's session for this spec (started now if it has none: the default built,
    loaded and timed as the local tuner times it first), or why the default failed."""
    key = (str(spec_data), backend, bound, str(default_data), repr(fault))
    if _SESSION and _SESSION[0].key == key:
        return _SESSION[0]
    _end_session_locked()
    spec, default = ConvSpec.from_dict(spec_data), Schedule.from_dict(default_data)
    arrays = random_arrays(spec)
    error = tuner._build(spec_data, backend, default_data, str(config.cache_dir()), bound)
    if error is not None:
        return error
    timer = tuner.Timer(spec, backend, arrays, bound, isolate=True)
    try:
        timer.run("prepare", default, timeout=FIRST_TIMEOUT_SECONDS)
        [base] = timer.run("rounds", [default], TARGET_SECONDS, MIN_ROUNDS, MAX_ROUNDS,
                           timeout=FIRST_TIMEOUT_SECONDS)
        try:
            load = timer.run("load_seconds", default,
                             timeout=tuner._timeout(TARGET_SECONDS))
        except TimingFailure:
            load = 0.0
    except TimingFailure as exc:
        timer.close(kill=True)
        return str(exc)
    session = _Session(key, spec, arrays, timer,
                       tuner._timing_estimate(robust_median(base), load), list(base))
    _SESSION.append(session)
    return session


def _end_session_locked() -> None:
    while _SESSION:
        _SESSION.pop().timer.close()


def _measure(spec_data: dict, backend: str, bound: bool, default_data: dict,
             schedule_data: dict | None, fault: Fault | None) -> _Outcome:
    """A worker's task: build the candidate ``schedule_data`` and time it beside the
    default in interleaved rounds in the timing child, with the local tuner's protocol
    (None: the default alone, for a spec without candidates)."""
    with _LOCK, _hooked(fault):
        worker = _address()
        if fault is not None and schedule_data is not None:
            function, args = fault
            function("worker", schedule_data, *args)
        session = _session(spec_data, backend, bound, default_data, fault)
        if isinstance(session, str):
            return _Outcome(worker, default_error=session)
        base, session.base = session.base, []
        outcome = _Outcome(worker, base=base, per_candidate=session.per_candidate)
        if schedule_data is None:
            return outcome
        error = tuner._build(spec_data, backend, schedule_data, str(config.cache_dir()), bound)
        if error is not None:  # the same on every identical worker: no retry
            outcome.samples = error
            return outcome
        schedule, default = Schedule.from_dict(schedule_data), Schedule.from_dict(default_data)
        timer, timeout = session.timer, tuner._timeout(session.per_candidate)
        try:  # loaded and called once alone: a crash or hang costs it only
            timer.start()
            timer.run("prepare", schedule, timeout=timeout)
        except TimingFailure as exc:
            outcome.samples, outcome.retry = str(exc), True
            return outcome
        [(d, c)] = tuner._interleaved(timer, default, [schedule], TARGET_SECONDS, MIN_ROUNDS,
                                      MAX_ROUNDS, LOSER_FACTOR, timeout)
        outcome.default_samples, outcome.samples = d, c
        outcome.retry = isinstance(c, str)
        if timer.running():
            with contextlib.suppress(TimingFailure):
                timer.run("release", [schedule], timeout=tuner.TIMEOUT_SECONDS)
        return outcome


def _settle(spec_data: dict, backend: str, bound: bool, default_data: dict, name: str,
            search: tuner._Search, total: int, check: bool,
            fault: Fault | None) -> tuner._Decision:
    """A worker's task: the local tuner's decision among ``search``'s measurements
    (tuner._decide: confirm rounds, the oracle, the final rounds), timed here."""
    with _LOCK, _hooked(fault):
        if fault is not None:
            function, args = fault
            function("decide", None, *args)
        session = _session(spec_data, backend, bound, default_data, fault)
        if isinstance(session, str):
            raise ConvgenError(f"{name}: the default schedule could not be timed on worker "
                               f"{_address()}: {session}")
        watch = tuner._LoadWatch(name, check, session.timer.pids, lambda p: None)
        return tuner._decide(session.spec, backend, name, search, session.arrays,
                             lambda p: None, total, session.timer, watch)
