"""cg.tune_many on a Dask LocalCluster of two worker processes (issue 23).

Candidates are compiled and timed on the workers, the client alone writes the tuning
database, and a worker of other hardware is refused. Faults are injected through
tune_many's private ``_fault`` hook (:func:`fault`), which runs in the worker before
each candidate and first thing in each timing child the worker starts: a segfaulting
and a hanging candidate (in the timing child) and a worker process that exits
mid-candidate each cost that candidate only: it is recorded as failed, tried once more
on the other worker, and the run finishes. A worker that dies while deciding is
replaced once; when the second dies too, every measurement is still recorded, none
checked.
"""

from __future__ import annotations

import ctypes
import importlib
import json
import logging
import math
import multiprocessing
import os
import re
import sys
import time

import numpy as np
import pytest

import convgen as cg
from convgen import nn, records
from convgen.plan.defaults import PARALLEL_FLOPS
from convgen.records import best_record
from convgen.reference import random_arrays
from convgen.tolerance import close
from convgen.tuning import distributed as tune_distributed
from convgen.tuning.space import candidate_schedules

distributed = pytest.importorskip("distributed")
dask = pytest.importorskip("dask")

tune_module = importlib.import_module("convgen.tuning.tuner")

SMALL = cg.ConvSpec((1, 4, 6, 6), 8, kernel_size=3, padding=1)
OTHER = cg.ConvSpec((1, 3, 8, 8), 4, kernel_size=1)
CANDIDATES = candidate_schedules(SMALL, "c", 1)
TIMEOUT = tune_module.TIMEOUT_SECONDS  # as imported in a worker, before any fault


def fault(where: str, schedule: dict | None, victim: dict, kind: str, marker: str) -> None:
    """tune_many's ``_fault`` hook (runs in the workers and their timing children).

    "segv" and "hang": in a timing child, the victim's kernel reads address 0 or sleeps
    when called (its loader, tuner.compile_spec, swapped in that child only); "hang" also
    shortens the worker's timeouts to 3 s. "kill": the worker process exits as it is
    about to time the victim, the first time only (``marker`` remembers); "kill-decide"
    ("kill-decide-twice"): as it is about to decide among the candidates, the first time
    (the first two times) only."""
    target = cg.Schedule.from_dict(victim)
    if where == "decide":
        deaths = {"kill-decide": 1, "kill-decide-twice": 2}.get(kind, 0)
        for n in range(deaths):
            if not os.path.exists(f"{marker}.{n}"):
                open(f"{marker}.{n}", "w").close()
                os._exit(1)
        return
    if where == "worker":
        tune_module.TIMEOUT_SECONDS = 3.0 if kind == "hang" else TIMEOUT
        tune_module.TIMEOUT_FACTOR = 1.0
        if kind == "kill" and cg.Schedule.from_dict(schedule) == target \
                and not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(1)
        return
    if kind not in ("segv", "hang"):
        return
    real_compile = tune_module.compile_spec

    def compile_(spec, backend=None, schedule=None, cache=None):
        kernel = real_compile(spec, backend, schedule, cache)
        if schedule != target:
            return kernel

        def faulty(*args, **kwargs):
            if kind == "segv":
                ctypes.string_at(0)  # reads address 0: SIGSEGV
            time.sleep(3600)  # "hang"
        return faulty

    tune_module.compile_spec = compile_


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Two worker processes, one thread each; their own tuning database path, which
    nothing may create (only the client writes records). allowed-failures 0, as
    tune_many's own cluster: the first worker death is reported, the tuner retries."""
    worker_db = tmp_path_factory.mktemp("workers") / "tuning.jsonl"
    environ = dict(os.environ)
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        local = distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                                         dashboard_address=None,
                                         scheduler_kwargs={"dashboard_address": ":0"},
                                         env={"CONVGEN_TUNING_DB": str(worker_db)})
    client = distributed.Client(local)
    try:
        yield client, worker_db
    finally:
        client.close()
        local.close()
        os.environ.clear()  # as it was (the nannies set OMP_NUM_THREADS=1 here)
        os.environ.update(environ)


@pytest.fixture(autouse=True)
def environment():
    """This process's environment back as it was after each test (a nanny that restarts
    a killed worker sets OMP_NUM_THREADS=1 here, which convgen reads as the thread count)."""
    saved = dict(os.environ)
    yield
    if os.environ != saved:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture
def client(cluster):
    client, _ = cluster
    client.wait_for_workers(2, timeout=60)  # a killed one is restarted by its nanny
    return client


def lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def of(result, schedule) -> list:
    return [m for m in result.measurements if m.schedule == schedule]


def worker(measurement) -> str:
    """The worker a failed measurement names: "... (worker tcp://...[, retried])"."""
    return re.search(r"\(worker (\S+?)[,)]", measurement.error).group(1)


def test_tune_many_on_the_cluster_records_from_the_client_only(db, cluster, client):
    _, worker_db = cluster
    results = cg.tune_many([SMALL, OTHER], client, budget=20, backend="c", threads=1,
                           max_candidates=3)
    assert [r.spec for r in results] == [SMALL, OTHER]
    written = lines(db)
    assert len(written) == sum(len(r.measurements) for r in results)
    assert not worker_db.exists()  # the workers never wrote a record
    assert {line["workers"] for line in written} == {2}
    for result in results:
        assert result.threads == 1 and all(math.isfinite(m.seconds) for m in result.measurements)
        assert len(result.measurements) == 3  # the default and two candidates, all timed
        checked = [m for m in result.measurements if m.checked]
        assert [m.schedule for m in checked] == [result.best]  # verified by the oracle
        # what compile picks: the record, at the thread count tuned for, not bound
        assert best_record(result.spec, "c", threads=1) == result.best
        assert best_record(result.spec, "c", threads=1, bound=True) is None
        kernel = cg.compile(result.spec, "c", threads=1)
        assert kernel.schedule == result.best
        x, w, b = random_arrays(result.spec)
        assert close(result.spec, np.asarray(kernel(x, w, b)), cg.reference(result.spec, x, w, b))


def test_a_network_is_tuned_bound(db, client):
    nn.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()).eval()
    [result] = cg.tune_many(net, client, budget=10, backend="c", threads=1,
                            input_shape=(1, 3, 6, 6), max_candidates=2)
    assert best_record(result.spec, "c", threads=1, bound=True) == result.best
    assert best_record(result.spec, "c", threads=1) is None
    assert all(line["bound"] is True for line in lines(db))


@pytest.mark.parametrize("kind, says", [("segv", "SIGSEGV"), ("hang", "timed out")])
def test_a_crashing_or_hanging_candidate_costs_that_candidate_only(db, client, tmp_path,
                                                                   kind, says):
    victim, after = CANDIDATES[1], CANDIDATES[2]
    [result] = cg.tune_many([SMALL], client, budget=60, backend="c", threads=1,
                            max_candidates=3,
                            _fault=(fault, (victim.to_dict(), kind, str(tmp_path / "m"))))
    failed = of(result, victim)
    assert len(failed) == 2  # tried once more, on the other worker
    assert all(m.seconds == math.inf and says in m.error for m in failed)
    assert "retried" in failed[1].error and worker(failed[0]) != worker(failed[1])
    assert math.isfinite(of(result, after)[0].seconds)
    assert result.best != victim
    bad = [line for line in lines(db) if line["schedule"] == victim.to_dict()]
    assert len(bad) == 2 and all(line["seconds"] is None and says in line["error"]
                                 and not line["checked"] for line in bad)


def test_a_worker_killed_mid_candidate_costs_that_candidate_only(db, client, tmp_path):
    victim, after = CANDIDATES[1], CANDIDATES[2]
    marker = tmp_path / "killed"
    [result] = cg.tune_many([SMALL], client, budget=60, backend="c", threads=1,
                            max_candidates=3,
                            _fault=(fault, (victim.to_dict(), "kill", str(marker))))
    assert marker.exists()  # a worker did exit
    first, retry = of(result, victim)
    assert first.seconds == math.inf and "KilledWorker" in first.error
    assert worker(first).startswith("tcp://")  # the worker that died
    assert math.isfinite(retry.seconds) and retry.error is None  # the other worker timed it
    assert math.isfinite(of(result, after)[0].seconds)
    mine = [line for line in lines(db) if line["schedule"] == victim.to_dict()]
    assert [line["seconds"] is None for line in mine] == [True, False]


def test_a_worker_killed_while_deciding_is_replaced(db, client, tmp_path):
    marker = tmp_path / "killed"
    [result] = cg.tune_many([OTHER], client, budget=30, backend="c", threads=1,
                            max_candidates=2,
                            _fault=(fault, (CANDIDATES[0].to_dict(), "kill-decide", str(marker))))
    assert os.path.exists(f"{marker}.0")  # a worker did exit, deciding; the other decided
    assert [m.schedule for m in result.measurements if m.checked] == [result.best]
    assert best_record(OTHER, "c", threads=1) == result.best


def test_when_deciding_kills_two_workers_the_measurements_are_kept(db, client, tmp_path):
    marker = tmp_path / "killed"
    [result] = cg.tune_many([OTHER], client, budget=30, backend="c", threads=1,
                            max_candidates=2, _fault=(fault, (CANDIDATES[0].to_dict(),
                                                              "kill-decide-twice", str(marker))))
    assert os.path.exists(f"{marker}.1")  # both attempts died; the run still finished
    default = candidate_schedules(OTHER, "c", 1)[0]
    assert result.best == default and len(result.measurements) == 2
    assert not any(m.checked for m in result.measurements)
    assert len(lines(db)) == 2 and not any(line["checked"] for line in lines(db))
    assert best_record(OTHER, "c", threads=1) is None  # compile keeps its default


def test_workers_start_a_local_cluster_for_the_call(db, monkeypatch):
    # dask's nannies set OMP_NUM_THREADS=1 in the process that starts them; convgen reads
    # it as the thread count, so tune_many must put the environment back
    monkeypatch.delenv("CONVGEN_NUM_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    wide = cg.ConvSpec((1, 16, 32, 32), 16, kernel_size=3, padding=1)  # above PARALLEL_FLOPS
    assert wide.flops > PARALLEL_FLOPS
    threads = candidate_schedules(wide, "c")[0].threads
    environ, before = dict(os.environ), multiprocessing.active_children()
    [result] = cg.tune_many([wide], workers=1, budget=10, backend="c", max_candidates=2)
    assert result.threads == threads == cg.get_num_threads()
    assert best_record(wide, "c", threads=threads) == result.best
    assert {line["workers"] for line in lines(db)} == {1}
    assert dict(os.environ) == environ
    assert multiprocessing.active_children() == before  # its worker ended with the call


def _fake_cpu() -> None:
    """client.run: this worker claims another CPU (records.this_machine, in it only)."""
    real = records.this_machine
    records._real_this_machine = real

    def fake(backend):
        return {**real(backend), "cpu": "fake-cpu 9000"}
    records.this_machine = fake


def _real_cpu() -> None:
    records.this_machine = getattr(records, "_real_this_machine", records.this_machine)


def test_a_worker_of_other_hardware_is_refused(db, client, caplog):
    one, two = sorted(client.scheduler_info()["workers"])
    try:
        client.run(_fake_cpu, workers=[one])
        with caplog.at_level(logging.WARNING, logger="convgen.tune"):
            [result] = cg.tune_many([OTHER], client, budget=5, backend="c", threads=1,
                                    max_candidates=2)
        assert result.best is not None
        assert any(one in r.message and "cpu" in r.message and "fake-cpu 9000" in r.message
                   for r in caplog.records)
        client.run(_fake_cpu, workers=[two])
        with pytest.raises(tune_distributed.WorkerMismatch, match=r"cpu: 'fake-cpu 9000'"):
            cg.tune_many([OTHER], client, budget=5, backend="c", threads=1)
    finally:
        client.run(_real_cpu)


def test_without_distributed_the_local_tuner_runs(db, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed fails
    with caplog.at_level(logging.WARNING, logger="convgen.tune"):
        [result] = cg.tune_many([OTHER], budget=5, backend="c", threads=1, max_candidates=2)
    assert any("convgen[distributed]" in r.message for r in caplog.records)
    assert best_record(OTHER, "c", threads=1) == result.best
    assert "workers" not in lines(db)[0]  # the local tuner's records
    with pytest.raises(ImportError, match=r"convgen\[distributed\]"):
        cg.tune_many([OTHER], workers=2)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="client and workers"):
        cg.tune_many([OTHER], client=object(), workers=2)
    with pytest.raises(ValueError, match="workers"):
        cg.tune_many([OTHER], workers=0)
    with pytest.raises(TypeError, match=r"specs_or_network\[1\]"):
        cg.tune_many([OTHER, "conv"])
