"""Threads as users expect (issue 20): the default thread count and its sources, threads= on
every entry point, partial schedules completed from the default, and tuning records
selected by thread count and machine only.

Specs are tiny; the selection tests need no compiler (choose_schedule reads the records).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pickle

import pytest

import convgen as cg
from convgen import config, nn
from convgen.backends import get_backend
from convgen.cli.main import main
from convgen.compiler import choose_schedule, complete_schedule
from convgen.functional import kernel_for
from convgen.graph.compile import compile_graph
from convgen.plan.defaults import PARALLEL_FLOPS, default_co_schedule, default_w_schedule, \
    prefers_co
from convgen.records import best_record, record
from convgen.tuning.tuner import Measurement
from helpers import arrays_for, assert_matches_oracle

SMALL = cg.ConvSpec((1, 4, 6, 6), 8, kernel_size=3, padding=1)
# default: Winograd F(2x2, 3x3), one thread (under PARALLEL_FLOPS)
WINO = cg.ConvSpec((1, 16, 16, 16), 16, kernel_size=3, padding=1)
BIG = cg.ConvSpec((1, 64, 56, 56), 64, kernel_size=3, padding=1)  # never compiled here
BAD_THREADS = [(0, ValueError), (-2, ValueError), (1000, ValueError), (True, TypeError),
               (1.5, TypeError), ("2", TypeError)]


@pytest.fixture(autouse=True)
def environment(monkeypatch):
    """No thread count from the caller's environment or an earlier set_num_threads."""
    monkeypatch.delenv("CONVGEN_NUM_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(config, "_num_threads_override", None)


# -- the default thread count ----------------------------------------------------------------

def test_default_thread_count_precedence(monkeypatch):
    cores = len(os.sched_getaffinity(0))
    assert cg.get_num_threads() == cores  # the cores this process may run on
    monkeypatch.setenv("OMP_NUM_THREADS", "3,2")  # OpenMP's list form: the first level
    assert cg.get_num_threads() == 3
    assert cg.default_schedule(BIG).threads == 3 and cg.default_schedule(SMALL).threads == 1
    monkeypatch.setenv("CONVGEN_NUM_THREADS", "5")  # convgen's own variable first
    assert cg.get_num_threads() == 5
    cg.set_num_threads(2)  # the process-wide setting before either
    assert cg.get_num_threads() == 2 and cg.default_schedule(BIG).threads == 2
    assert cg.default_schedule(SMALL).threads == 1  # too small to profit: one thread
    cg.set_num_threads(None)  # back to the environment
    assert cg.get_num_threads() == 5
    monkeypatch.setenv("OMP_NUM_THREADS", "")
    monkeypatch.delenv("CONVGEN_NUM_THREADS")
    assert cg.get_num_threads() == cores


@pytest.mark.parametrize("name, value", [("OMP_NUM_THREADS", "many"), ("OMP_NUM_THREADS", "0,2"),
                                         ("CONVGEN_NUM_THREADS", "-1")])
def test_a_bad_thread_variable_is_named(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=name):
        cg.get_num_threads()


@pytest.mark.parametrize("value, error", BAD_THREADS[:2] + BAD_THREADS[3:])
def test_set_num_threads_checks_its_argument(value, error):
    with pytest.raises(error, match="set_num_threads"):
        cg.set_num_threads(value)
    assert cg.get_num_threads() == len(os.sched_getaffinity(0))  # unchanged


# -- partial schedules ------------------------------------------------------------------------

def test_one_thread_keeps_the_default_plan():
    default = cg.default_schedule(WINO, threads=1)
    assert default.method == "winograd"
    kernel = cg.compile(WINO, "c", schedule=cg.Schedule(threads=1))
    assert kernel.schedule == default  # was: direct with the dataclass's tiles
    assert cg.compile(WINO, "c", threads=1).schedule == default  # the same kernel
    plan = get_backend("c").plan(WINO, default)
    assert kernel.symbol == plan.symbol and kernel.source == get_backend("c").render(plan)
    x, w, b = arrays_for(WINO, seed=3)
    assert_matches_oracle(WINO, kernel(x, w, b), x, w, b)


def test_partial_schedules_are_completed_from_the_default():
    def complete(**fields):
        return complete_schedule(WINO, cg.Schedule(**fields), "c")

    assert complete(threads=2) == cg.default_schedule(WINO, threads=2)
    assert complete(tile_co=12) == dataclasses.replace(cg.default_schedule(WINO), tile_co=12)
    direct = default_co_schedule(WINO, 1) if prefers_co(WINO) else default_w_schedule(WINO, 1)
    assert complete(method="direct") == direct  # the default direct plan
    assert complete(vectorize="co") == default_co_schedule(WINO, 1)
    # tiles written without a plan kind: the dataclass's (direct, "w"), as always
    assert complete(tile_co=4, tile_spatial=(2, 8)) == \
        cg.Schedule(tile_co=4, tile_spatial=(2, 8), threads=1)
    assert complete_schedule(WINO, cg.Schedule(tile_co=4), "c", threads=2).threads == 2
    everything = dataclasses.replace(cg.Schedule(tile_co=3))  # replace gives every field
    assert complete_schedule(WINO, everything, "c") is everything
    with pytest.raises(ValueError, match="disagree"):
        complete_schedule(WINO, cg.Schedule(threads=1), "c", threads=2)


def test_given_fields_are_tracked_and_kept():
    partial = cg.Schedule(tile_co=4, threads=2)
    assert partial.given == {"tile_co", "threads"} and partial == cg.Schedule(4, None, 2)
    assert pickle.loads(pickle.dumps(partial)).given == partial.given
    assert cg.Schedule.from_dict({"threads": 1}).given == {"threads"}
    assert partial.with_fields(threads=3).given == {"tile_co", "threads"}
    assert dataclasses.replace(partial).given == set(f.name for f in dataclasses.fields(partial))
    assert cg.default_schedule(WINO).given == dataclasses.replace(partial).given


# -- threads= reaches the kernel -------------------------------------------------------------

def test_threads_reach_every_entry_point():
    x, w, b = arrays_for(SMALL, seed=1)
    assert SMALL.flops < PARALLEL_FLOPS  # the default alone would run it on one thread
    assert cg.compile(SMALL, threads=2).schedule.threads == 2
    bound = cg.bind(SMALL, w, b, threads=2)
    assert bound.schedule.threads == 2
    assert_matches_oracle(SMALL, bound(x), x, w, b)
    y = cg.conv2d(x, w, b, padding=1, threads=2)
    assert kernel_for(SMALL, threads=2).schedule.threads == 2
    assert kernel_for(SMALL).schedule.threads == 1
    assert_matches_oracle(SMALL, y, x, w, b)


def small_network() -> nn.Module:
    nn.manual_seed(0)
    return nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU())


def test_threads_reach_compiled_networks():
    model = small_network().compile((1, 4, 6, 6), threads=2)
    assert set(model.layer_threads().values()) == {2}
    onnx_helpers = pytest.importorskip("onnx_helpers")  # needs the onnx extra
    conv = onnx_helpers.node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])
    proto = onnx_helpers.make_model([conv], {"x": (1, 4, 6, 6)}, ["y"],
                                    {"w": onnx_helpers.rand(8, 4, 3, 3)})
    imported = cg.from_onnx(proto).compile(threads=2)
    assert set(imported.layer_threads().values()) == {2}


@pytest.mark.parametrize("value, error", BAD_THREADS)
def test_bad_thread_counts_raise_naming_the_argument(value, error):
    x, w, b = arrays_for(SMALL, seed=1)
    calls = [lambda: cg.compile(SMALL, threads=value),
             lambda: cg.bind(SMALL, w, b, threads=value),
             lambda: cg.conv2d(x, w, b, padding=1, threads=value),
             lambda: small_network().compile((1, 4, 6, 6), threads=value),
             lambda: compile_graph(small_network().trace((1, 4, 6, 6)), threads=value)]
    for call in calls:
        with pytest.raises(error, match="threads"):
            call()


# -- records are selected by thread count and machine ---------------------------------------

def write(db, schedule: cg.Schedule, seconds: float, **fields) -> None:
    """One checked record of SMALL; ``fields`` overwrite the line (another machine...)."""
    record(SMALL, "c", [Measurement(schedule, seconds, checked=True)], db)
    if fields:
        lines = db.read_text().splitlines()
        lines[-1] = json.dumps({**json.loads(lines[-1]), **fields})
        db.write_text("\n".join(lines) + "\n")


def test_selection_uses_records_of_the_requested_thread_count_only(db, caplog):
    one = cg.Schedule(tile_co=4, tile_spatial=(2, 6), threads=1)
    two = cg.Schedule(tile_co=2, tile_spatial=(1, 6), threads=2)
    write(db, one, 3e-4)
    write(db, two, 1e-4)  # faster, but measured at another thread count
    write(db, cg.Schedule(tile_co=8, tile_spatial=(6, 6), threads=1), 1e-6, cpu="another cpu")
    write(db, cg.Schedule(tile_co=1, tile_spatial=(3, 6), threads=1), 1e-6,
          convgen="0.0.0+another")
    assert choose_schedule(SMALL, "c", threads=1) == (one, "tuned")
    assert choose_schedule(SMALL, "c", threads=2) == (two, "tuned")
    assert choose_schedule(SMALL, "c") == (one, "tuned")  # SMALL's default runs one thread
    with caplog.at_level(logging.INFO, logger="convgen"):
        assert choose_schedule(SMALL, "c", threads=3) == \
            (cg.default_schedule(SMALL, threads=3), "default")  # not `two` on 3 threads
    assert "no tuning record" in caplog.text and "not used" in caplog.text
    assert best_record(SMALL, "c", threads=3) is None
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="convgen"):
        kernel = cg.compile(SMALL, "c", threads=2)
    assert kernel.schedule == two
    assert any(r.name == "convgen.compiler" and r.levelno == logging.INFO
               and "tuning record" in r.getMessage() for r in caplog.records)


def test_only_records_of_another_machine_leave_the_default(db):
    write(db, cg.Schedule(tile_co=2, tile_spatial=(1, 6), threads=1), 1e-6, cpu="another cpu")
    assert choose_schedule(SMALL, "c", threads=1) == \
        (cg.default_schedule(SMALL, threads=1), "default")


# -- the command line -------------------------------------------------------------------------

SPECFILE = """
[[conv]]
name = "small"
input_shape = [1, 4, 6, 6]
out_channels = 8
kernel_size = 3
padding = 1

[[conv]]
name = "pinned"
input_shape = [1, 4, 6, 6]
out_channels = 8
kernel_size = 3
padding = 1
[conv.schedule]
threads = 1
"""


def test_cli_threads(tmp_path, capsys):
    path = tmp_path / "small.toml"
    path.write_text(SPECFILE)
    assert main(["explain", str(path), "--threads", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count("threads      2") == 2  # --threads replaces the file's threads too
    assert main(["explain", str(path), "--name", "pinned"]) == 0
    assert "threads      1" in capsys.readouterr().out
    assert main(["show", str(path), "--name", "small", "--threads", "2"]) == 0
    assert '"threads": 2' in capsys.readouterr().out  # the schedule, in the source's header
    assert main(["check", str(path), "--threads", "2"]) == 0
    assert "2/2 within tolerance" in capsys.readouterr().out
    for bad in ("0", "x", "1.5", "1000"):
        assert main(["check", str(path), "--threads", bad]) == 2
        assert "--threads" in capsys.readouterr().err
