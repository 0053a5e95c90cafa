"""``convgen tune --workers N`` and ``--scheduler tcp://HOST:PORT``: the options, their
errors, the fallback without dask's distributed, and one real run on a local cluster of
2 worker processes whose records the next compile uses. (tune_many itself, its faults and
its worker checks: tests/test_tune_distributed.py.)"""

from __future__ import annotations

import logging
import os
import sys

import pytest

import convgen as cg
from convgen.cli import tune as tune_cli
from convgen.cli.main import main
from convgen.compiler import choose_schedule
from convgen.records import read_records, this_machine
from convgen.tuning import tuner as tune_module

from helpers import TINY_SPEC_FILE as SPEC_FILE

SPEC = cg.ConvSpec((1, 4, 6, 6), 8, kernel_size=3, padding=1)


@pytest.fixture(autouse=True)
def environment():
    """The environment as it was: dask's Nanny sets OMP_NUM_THREADS=1 (and MKL_ and
    OPENBLAS_NUM_THREADS) in the process that starts a LocalCluster, which would leave later
    tests of this process on one default thread."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture
def specfile(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(SPEC_FILE)
    return path


@pytest.fixture
def no_distributed(monkeypatch):
    """dask's distributed as if not installed: importing it raises ImportError."""
    monkeypatch.setitem(sys.modules, "distributed", None)


@pytest.mark.parametrize("argv, message", [
    (["--workers", "0"], "expected an integer >= 1, got 0"),
    (["--workers", "two"], "expected an integer, got 'two'"),
    (["--workers", "5000"], "expected at most 4096 workers"),
    (["--scheduler", "localhost"], "expected a scheduler address tcp://HOST:PORT"),
    (["--scheduler", "tcp://host:99999"], "expected a scheduler address"),
    (["--scheduler", "http://host:8786"], "expected a scheduler address"),
    (["--scheduler", "tcp://h:1", "--workers", "2"], "not allowed with argument"),
    (["--workers", "2", "--list"], "go with tuning, not with --list"),
    (["--scheduler", "tcp://h:8786", "--export", "x.jsonl"], "go with tuning, not with"),
    (["--workers", "2", "--bound"], "--bound is not supported with --scheduler or --workers"),
])
def test_option_errors(db, specfile, capsys, argv, message):
    assert main(["tune", str(specfile), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not db.exists()


def test_scheduler_addresses():
    assert tune_cli.scheduler_address("tcp://10.0.0.5:8786") == "tcp://10.0.0.5:8786"
    assert tune_cli.scheduler_address("node-3.cluster:8786") == "tcp://node-3.cluster:8786"
    assert tune_cli.scheduler_address("tls://[::1]:8786") == "tls://[::1]:8786"


def test_scheduler_without_distributed_is_an_error(db, specfile, capsys, no_distributed):
    assert main(["tune", str(specfile), "--scheduler", "tcp://127.0.0.1:8786"]) == 2
    err = capsys.readouterr().err
    assert "--scheduler needs dask's distributed" in err
    assert "pip install 'convgen[distributed]'" in err and not db.exists()


def test_workers_without_distributed_runs_the_local_tuner(db, specfile, capsys, monkeypatch,
                                                          no_distributed):
    monkeypatch.setattr(tune_module, "CHECK_LOAD", False)
    assert main(["tune", str(specfile), "--workers", "2", "--budget", "0.5"]) == 0
    captured = capsys.readouterr()
    assert "warning: --workers needs dask's distributed" in captured.err
    assert "pip install 'convgen[distributed]'" in captured.err
    assert "tiny_a" in captured.out
    assert read_records(db) and choose_schedule(SPEC, "c")[1] == "tuned"


def test_a_scheduler_that_does_not_answer(db, specfile, capsys, monkeypatch):
    pytest.importorskip("distributed")  # the optional extra (installed in the dev venv)
    monkeypatch.setattr(tune_cli, "CONNECT_SECONDS", 1)
    assert main(["tune", str(specfile), "--scheduler", "tcp://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert "--scheduler tcp://127.0.0.1:9: no Dask scheduler answered there" in err
    assert not db.exists()


def test_workers_2_tunes_on_a_local_cluster_and_compile_uses_its_records(db, specfile, capsys,
                                                                        caplog):
    pytest.importorskip("distributed")
    threads = os.environ.get("OMP_NUM_THREADS"), cg.get_num_threads()
    assert main(["tune", str(specfile), "--workers", "2", "--budget", "2",
                 "--no-load-check"]) == 0
    # the cluster's start leaves this process's default thread count as it was
    assert (os.environ.get("OMP_NUM_THREADS"), cg.get_num_threads()) == threads
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:3] == ["name", "default", "ms"]
    assert out.splitlines()[2].startswith("tiny_a ")
    lines = read_records(db)
    assert len(lines) >= 2 and any(line["checked"] for line in lines)
    here = this_machine("c")
    assert all({k: line[k] for k in here} == here for line in lines)
    best = min((line for line in lines if line["checked"]), key=lambda line: line["seconds"])
    with caplog.at_level(logging.INFO, logger="convgen.compiler"):
        kernel = cg.compile(SPEC, backend="c")
    assert kernel.schedule.to_dict() == best["schedule"]
    assert any("tuning record" in r.getMessage() for r in caplog.records)


def test_scheduler_connects_and_the_client_is_closed(db, specfile, capsys):
    """A real scheduler (in this process, no workers): tune connects, tune_many finds no
    worker to tune on, and the client it opened is gone afterwards."""
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=0, processes=False, protocol="tcp",
                                  host="127.0.0.1", dashboard_address=":0") as cluster:
        before = set(cluster.scheduler.clients)
        assert main(["tune", str(specfile), "--scheduler", cluster.scheduler_address]) == 2
        assert "no workers" in capsys.readouterr().err
        assert set(cluster.scheduler.clients) == before
    assert not read_records(db)


def test_a_refusal_on_a_worker_exits_1_as_the_local_tuner_does(db, specfile, capsys,
                                                                monkeypatch):
    """MachineBusy (a worker's decisive timing stayed disturbed) reaches the command as the
    local tuner's refusal does: named on stderr, exit status 1. tune_many stands in here:
    provoking a busy worker costs a cluster and a busy machine."""
    pytest.importorskip("distributed")
    distributed_tuning = pytest.importorskip("convgen.tuning.distributed")

    def busy(*args, **kwargs):
        raise tune_module.MachineBusy("conv2d_x: the machine was busy while timing")

    monkeypatch.setattr(distributed_tuning, "tune_many", busy)
    assert main(["tune", str(specfile), "--workers", "2"]) == 1
    err = capsys.readouterr().err
    assert "convgen tune: refused: conv2d_x: the machine was busy" in err
