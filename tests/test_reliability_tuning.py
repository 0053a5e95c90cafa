"""The tuner and its database against faults (issue 19, rows 4, 5, 6, 10, 11).

A candidate kernel that segfaults or hangs, a compile worker killed mid-build, an
interrupt: each costs the candidates it touches, never the run, and leaves no child
process behind. A database line that cannot be parsed (too deep, too large, torn) is
skipped, an append after a torn line starts on its own line, and a database path that
cannot take appends is refused before anything is measured.

Faults are injected through ``tuner.CHILD_HOOK``: :func:`inject` runs first in every
child the tuner starts and swaps, in that child only, the function that loads a
candidate (``compile_spec``, in the timing process) or builds it (``build_artifact``,
in the compile workers) for one that faults on the victim schedule.
"""

from __future__ import annotations

import ctypes
import importlib
import json
import math
import multiprocessing
import os
import signal
import time
from multiprocessing import resource_tracker
from pathlib import Path

import pytest

import convgen as cg
from convgen import records
from convgen.errors import ConvgenError
from convgen.records import best_record, check_database, read_records, record
from convgen.tuning.space import candidate_schedules
from convgen.tuning.tuner import Measurement

tune_module = importlib.import_module("convgen.tuning.tuner")  # cg.tune is the function

SMALL = cg.ConvSpec((1, 4, 6, 6), 8, kernel_size=3, padding=1)
CANDIDATES = candidate_schedules(SMALL, "c", 1)


def inject(victim: dict | None, fault: str, log: str) -> None:
    """CHILD_HOOK: note this child in ``log`` (its multiprocessing name), and make the
    schedule ``victim`` fault here: "segv" and "hang" when its kernel is called in the
    timing process, "kill-build" (SIGKILL) when a compile worker builds it."""
    with open(log, "a") as f:
        f.write(multiprocessing.current_process().name + "\n")
    target = cg.Schedule.from_dict(victim) if victim is not None else None
    real_compile, real_build = tune_module.compile_spec, tune_module.build_artifact

    def compile_(spec, backend=None, schedule=None, cache=None):
        kernel = real_compile(spec, backend, schedule, cache)
        if schedule != target:
            return kernel

        def faulty(*args, **kwargs):
            if fault == "segv":
                ctypes.string_at(0)  # reads address 0: SIGSEGV
            time.sleep(3600)  # "hang"
        return faulty

    def build(spec, backend=None, schedule=None, cache=None, bound=False):
        if schedule == target:
            os.kill(os.getpid(), signal.SIGKILL)
        return real_build(spec, backend, schedule, cache, bound)

    if fault == "kill-build":
        tune_module.build_artifact = build
    elif fault in ("segv", "hang"):
        tune_module.compile_spec = compile_


@pytest.fixture
def fault(monkeypatch, tmp_path):
    """``fault(victim, kind)`` installs :func:`inject`; returns the log of started children."""
    log = tmp_path / "children.log"

    def install(victim, kind):
        monkeypatch.setattr(tune_module, "CHILD_HOOK",
                            (inject, (victim.to_dict() if victim else None, kind, str(log))))
        return log
    return install


@pytest.fixture(autouse=True)
def any_load(monkeypatch):
    """The suite shares its cores: tune without waiting for them (tests of the load check
    are in test_tune_noise.py)."""
    monkeypatch.setattr(tune_module, "CHECK_LOAD", False)


def children() -> list[int]:
    """Pids of this process's children, running or not yet reaped (from /proc: any kind
    of child, not only multiprocessing's)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
            if int(fields[1]) == os.getpid():  # zombies too: a child must be reaped
                found.append(int(entry.name))
    return found


def assert_no_children() -> None:
    """None of the tuner's children is left: multiprocessing knows of none, and /proc
    shows none but multiprocessing's resource tracker (one per interpreter, started with
    the first spawned child, kept for later ones)."""
    assert multiprocessing.active_children() == []
    tracker = getattr(resource_tracker._resource_tracker, "_pid", None)  # private: no API
    assert [pid for pid in children() if pid != tracker] == []


def started(log: Path) -> list[str]:
    return log.read_text().split() if log.exists() else []


def lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def by_schedule(result, schedule) -> Measurement:
    return next(m for m in result.measurements if m.schedule == schedule)


# -- row 4: a candidate that crashes or hangs the timing process --------------------------

def test_a_segfaulting_candidate_costs_that_candidate_only(db, fault):
    victim, after = CANDIDATES[1], CANDIDATES[2]
    log = fault(victim, "segv")
    assert_no_children()
    result = cg.tune(SMALL, "c", budget=20, threads=1, max_candidates=3, workers=1)
    crashed = by_schedule(result, victim)
    assert crashed.seconds == math.inf and "SIGSEGV" in crashed.error
    assert math.isfinite(by_schedule(result, after).seconds)  # timed after a restart
    assert result.best != victim and result.measurements[0].schedule == result.default
    # one timing process for the run, started once more after the crash
    assert started(log).count("convgen-timing") == 2
    line = next(r for r in lines(db) if cg.Schedule.from_dict(r["schedule"]) == victim)
    assert line["seconds"] is None and "SIGSEGV" in line["error"] and not line["checked"]
    assert len(lines(db)) == 3 and best_record(SMALL, "c") == result.best
    assert_no_children()


def test_a_hanging_candidate_times_out(db, fault, monkeypatch):
    victim, after = CANDIDATES[1], CANDIDATES[2]
    fault(victim, "hang")
    monkeypatch.setattr(tune_module, "TIMEOUT_SECONDS", 3.0)
    monkeypatch.setattr(tune_module, "TIMEOUT_FACTOR", 1.0)
    result = cg.tune(SMALL, "c", budget=20, threads=1, max_candidates=3, workers=1)
    hung = by_schedule(result, victim)
    assert hung.seconds == math.inf and "timed out" in hung.error
    assert math.isfinite(by_schedule(result, after).seconds)
    assert result.best != victim
    assert any("timed out" in r.get("error", "") for r in lines(db))
    assert_no_children()


def test_a_crashing_default_is_a_clear_error(db, fault):
    log = fault(CANDIDATES[0], "segv")
    with pytest.raises(ConvgenError, match=r"default schedule .* could not be timed: .*SIGSEGV"):
        cg.tune(SMALL, "c", budget=20, threads=1, max_candidates=3, workers=1)
    assert "convgen-timing" in started(log)  # it was timed in the child, which died
    [line] = lines(db)  # recorded as failed
    assert cg.Schedule.from_dict(line["schedule"]) == CANDIDATES[0] and "SIGSEGV" in line["error"]
    assert_no_children()


def test_an_interrupt_leaves_no_children(db, fault):
    log = fault(None, "none")

    def interrupt(progress):
        if progress.phase == "measure":  # the compile pool and the timing process are up
            assert len(multiprocessing.active_children()) >= 2
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cg.tune(SMALL, "c", budget=20, threads=1, max_candidates=3, workers=1,
                progress=interrupt)
    assert set(started(log)) >= {"convgen-timing"} and len(started(log)) >= 2
    assert_no_children()


# -- row 5: a compile worker killed mid-build ---------------------------------------------

def test_a_killed_compile_worker_fails_its_batch_and_the_pool_is_rebuilt(db, fault):
    victim, later = CANDIDATES[1], CANDIDATES[3]  # one worker: batches of two
    log = fault(victim, "kill-build")
    result = cg.tune(SMALL, "c", budget=20, threads=1, max_candidates=4, workers=1)
    lost = by_schedule(result, victim)
    assert lost.seconds == math.inf and "BrokenProcessPool" in lost.error
    assert math.isfinite(by_schedule(result, later).seconds)  # built by a new pool
    assert started(log).count("convgen-timing") == 1  # the timing process was not touched
    assert len(started(log)) == 3  # the timing process and two compile workers
    assert len(lines(db)) == 4 and best_record(SMALL, "c") == result.best
    assert_no_children()


# -- row 6 and row 10: lines the database reader and writer survive -----------------------

def test_a_line_too_deep_to_parse_is_skipped(db):
    tuned = CANDIDATES[2]
    record(SMALL, "c", [Measurement(tuned, 1e-4, checked=True)])
    with open(db, "a") as f:
        f.write("[" * 100_000 + "\n")
        f.write('{"schedule": {}, "deep": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    assert len(read_records(db)) == 1
    assert best_record(SMALL, "c") == tuned
    assert cg.compile(SMALL).schedule == tuned  # raised RecursionError before


def test_a_line_too_large_to_parse_is_skipped(db, monkeypatch):
    tuned = CANDIDATES[2]
    record(SMALL, "c", [Measurement(tuned, 1e-4, checked=True)])
    with open(db, "a") as f:
        f.write('{"huge": 1}\n')
    real = json.loads

    def loads(text, *args, **kwargs):  # as json does on a line larger than memory
        if text.startswith(b'{"huge"'):
            raise MemoryError
        return real(text, *args, **kwargs)

    monkeypatch.setattr(records.json, "loads", loads)
    assert len(read_records(db)) == 1 and best_record(SMALL, "c") == tuned


def test_an_append_after_a_torn_last_line_starts_a_new_line(db):
    first, second = CANDIDATES[1], CANDIDATES[2]
    record(SMALL, "c", [Measurement(first, 2e-4, checked=True)])
    whole = db.read_text()
    with open(db, "a") as f:
        f.write(whole[:60])  # a writer killed mid-line
    record(SMALL, "c", [Measurement(second, 1e-4, checked=True)])
    text = db.read_text()
    assert text.splitlines()[1] == whole[:60]  # the torn line alone on its line
    assert [cg.Schedule.from_dict(r["schedule"]) for r in read_records(db)] == [first, second]
    assert best_record(SMALL, "c") == second  # the new line was glued on and lost before
    record(SMALL, "c", [Measurement(first, 3e-4)])  # after a whole line: no blank line
    assert "\n\n" not in db.read_text() and len(db.read_text().splitlines()) == 4


# -- row 11: a database path that cannot take appends -------------------------------------

def test_a_directory_as_the_database_is_refused_before_measuring(db, monkeypatch):
    db.mkdir()
    timed = []
    monkeypatch.setattr(tune_module, "runner", lambda *args, **kw: timed.append(args))
    with pytest.raises(ConvgenError, match=r"tuning database .* is a directory"):
        cg.tune(SMALL, "c", budget=5, threads=1, max_candidates=2, workers=0)
    assert timed == []
    with pytest.raises(ConvgenError, match="is a directory"):
        record(SMALL, "c", [Measurement(CANDIDATES[0], 1e-4)])
    assert list(db.iterdir()) == []


def test_a_database_under_a_file_is_refused(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConvgenError, match="cannot create its directory"):
        check_database(blocker / "sub" / "tuning.jsonl")
    fresh = tmp_path / "new" / "dir" / "tuning.jsonl"
    assert check_database(fresh) == fresh and fresh.parent.is_dir() and not fresh.exists()
