"""The tuner: its search space, timing, oracle re-check, database, and who reads it.

Shapes are tiny and budgets a few seconds; nothing here asserts a speed (timings are
noisy), only structure and correctness. Every test writes its own tuning database;
kernels go to one cache shared by this module's tests.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import math

import numpy as np
import pytest

import convgen as cg
from convgen import nn
from convgen.errors import CompileError
from convgen.graph.compile import compile_graph
from convgen.tolerance import close
from convgen.records import best_record, read_records, record
from convgen.tuning.noise import DEFAULT_MARGIN, compare
from convgen.tuning.tuner import CONFIRM_MIN_ROUNDS, Measurement, confirm, network_convs, \
    tune_network
from convgen.cli.tune import add_tune_command, is_network_file, run_tune
from convgen.schedule import MAX_THREADS
from convgen.tuning.space import _resolved, _transform_candidates, accumulator_bytes, \
    accumulator_limit, candidate_schedules

tune_module = importlib.import_module("convgen.tuning.tuner")  # cg.tune is the function

SMALL = cg.ConvSpec((1, 4, 6, 6), 8, kernel_size=3, padding=1)
FIELDS = {"spec_key", "spec_name", "backend", "schedule", "seconds", "gflops", "cpu", "compiler",
          "convgen", "timestamp", "checked"}
SPACE = {
    "2d": SMALL,
    "1d-stride": cg.ConvSpec((1, 3, 40), 6, kernel_size=5, stride=2),
    "3d": cg.ConvSpec((1, 2, 4, 5, 6), 4, kernel_size=3, padding=1, bias=False),
    "depthwise": cg.ConvSpec((1, 8, 9, 9), 8, kernel_size=3, groups=8, padding=1),
    "transposed": cg.ConvSpec((1, 4, 5, 5), 6, kernel_size=4, stride=2, padding=1,
                              transposed=True),
    "transposed-wide": cg.ConvSpec((1, 8, 6, 6), 24, kernel_size=4, stride=2, padding=1,
                                   transposed=True),
    "wide-float64": cg.ConvSpec((1, 16, 20, 70), 64, kernel_size=1, dtype="float64"),
    "channels-not-a-power-of-two": cg.ConvSpec((1, 3, 9, 23), 24, kernel_size=3),
}


def lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(autouse=True)
def any_load(monkeypatch):
    """The suite shares its cores: tune without waiting for them (tests of the load check
    are in test_tune_noise.py)."""
    monkeypatch.setattr(tune_module, "CHECK_LOAD", False)


# -- the search space ---------------------------------------------------------------------

@pytest.mark.parametrize("name", list(SPACE))
@pytest.mark.cpu_plans
def test_candidates_are_legal_distinct_and_start_with_the_default(name, backend):
    spec = SPACE[name]
    found = candidate_schedules(spec, backend, threads=3)
    # the default's plan and tiles, at the thread count being tuned
    assert found[0] == cg.default_schedule(spec, backend, threads=min(3, MAX_THREADS))
    assert len(found) > 1
    # every backend searches both plans where "co" applies (transposed convolutions too)
    plans = {s.vectorize for s in found if s.method == "direct"}
    co_applies = 2 * (spec.out_channels // spec.groups) >= cg.cpu.vector_lanes(spec.dtype)
    # and the staged depthwise plan for depthwise convolutions
    dw_applies = spec.groups == spec.in_channels and not spec.transposed
    assert plans == {"w"} | ({"co"} if co_applies else set()) | ({"dw"} if dw_applies else set())
    # and the transform-GEMM plans where they are legal (see test_winograd.py)
    methods = {s.method for s in found} - {"direct"}
    assert methods == {s.method for s in _transform_candidates(spec, 3)}
    for schedule in found:
        schedule.resolve(spec)  # raises ScheduleError if illegal
        assert accumulator_bytes(spec, schedule) <= accumulator_limit() \
            or schedule == found[0]
    assert len({_resolved(spec, s) for s in found}) == len(found)
    assert all(s.threads == 3 for s in found[1:])


def test_half_width_vectors_only_for_llvm():
    from convgen.cpu import vector_lanes

    half = vector_lanes("float32") // 2
    assert {s.vector_width for s in candidate_schedules(SMALL, "c", 1)} == {0}
    assert {s.vector_width for s in candidate_schedules(SMALL, "llvm", 1)} == {0, half}


def test_footprint_pruning():
    spec = SPACE["wide-float64"]
    everything = candidate_schedules(spec, "c", 1, max_accumulator_bytes=1 << 30)
    pruned = candidate_schedules(spec, "c", 1, max_accumulator_bytes=1024)
    assert len(pruned) < len(everything)
    assert all(accumulator_bytes(spec, s) <= 1024 for s in pruned[1:])
    assert any(accumulator_bytes(spec, s) > 1024 for s in everything)
    assert set(pruned) <= set(everything)
    assert pruned[0] == everything[0] == dataclasses.replace(cg.default_schedule(spec),
                                                             threads=1)


def test_default_threads_come_from_config(monkeypatch):
    monkeypatch.setenv("CONVGEN_NUM_THREADS", "3")
    large = cg.ConvSpec((1, 32, 32, 32), 32, kernel_size=3, padding=1)  # over PARALLEL_FLOPS
    assert {s.threads for s in candidate_schedules(large, "c")} == {3}
    # a small kernel is tuned on the one thread its default (compile's choice) runs on
    assert {s.threads for s in candidate_schedules(SMALL, "c")} == {1}
    monkeypatch.setenv("CONVGEN_NUM_THREADS", "zero")
    with pytest.raises(ValueError, match="CONVGEN_NUM_THREADS"):
        candidate_schedules(large, "c")


def test_tuning_db_defaults_to_the_cache_dir(monkeypatch, tmp_path):
    from convgen import config

    monkeypatch.delenv("CONVGEN_TUNING_DB", raising=False)
    monkeypatch.setenv("CONVGEN_CACHE_DIR", str(tmp_path))
    assert config.tuning_db() == tmp_path / "tuning.jsonl"


# -- tuning -------------------------------------------------------------------------------

def test_tune_records_measurements_and_compile_uses_the_best(db):
    seen = []
    result = cg.tune(SMALL, "c", budget=5, threads=2, max_candidates=4, progress=seen.append)
    assert result.default == dataclasses.replace(cg.default_schedule(SMALL), threads=2)
    assert result.best in candidate_schedules(SMALL, "c", 2)[:4]
    assert math.isfinite(result.best_seconds) and math.isfinite(result.default_seconds)
    assert result.speedup == result.default_seconds / result.best_seconds
    assert result.measurements[0].schedule == result.default  # always timed, first
    if result.best != result.default:  # only a win beyond the noise replaces the default
        assert result.verdict.faster and result.verdict.gain > DEFAULT_MARGIN
        assert result.best_seconds < result.default_seconds
    assert {p.phase for p in seen} >= {"measure", "check"} or len(result.measurements) == 1
    assert "speedup" in str(result) and "best" in str(result)

    records = lines(db)
    assert len(records) == len(result.measurements)
    for item in records:
        assert FIELDS <= set(item)
        assert item["spec_key"] == SMALL.key() and item["backend"] == "c"
    checked = [r for r in records if r["checked"]]
    assert [cg.Schedule.from_dict(r["schedule"]) for r in checked] == [result.best]
    assert best_record(SMALL, "c") == result.best
    # schedule=None: the best record at the thread count asked
    assert cg.compile(SMALL, threads=2).schedule == result.best


def test_a_failing_candidate_costs_infinity(db, monkeypatch):
    victim = candidate_schedules(SMALL, "c", 1)[1]
    real = tune_module.build_artifact

    def build(spec, backend=None, schedule=None, cache=None, bound=False):
        if schedule == victim:
            raise CompileError("injected failure", stderr="boom")
        return real(spec, backend, schedule, cache, bound)

    monkeypatch.setattr(tune_module, "build_artifact", build)
    result = cg.tune(SMALL, "c", budget=5, threads=1, max_candidates=3, workers=0)
    failed = [m for m in result.measurements if m.schedule == victim]
    assert failed and failed[0].seconds == math.inf and "injected" in failed[0].error
    assert result.best != victim and math.isfinite(result.best_seconds)
    line = [r for r in lines(db) if cg.Schedule.from_dict(r["schedule"]) == victim][0]
    assert line["seconds"] is None and line["gflops"] is None and not line["checked"]


class WrongKernel:
    """Fast and wrong: writes nothing."""

    def __init__(self, schedule):
        self.schedule = schedule

    def __call__(self, x, w, b=None, out=None):
        return out


def test_the_winner_is_rechecked_against_the_oracle(db, monkeypatch):
    liar = candidate_schedules(SMALL, "c", 1)[1]
    real = tune_module.compile_spec

    def compile_(spec, backend=None, schedule=None, cache=None):
        return WrongKernel(schedule) if schedule == liar else real(spec, backend, schedule, cache)

    monkeypatch.setattr(tune_module, "compile_spec", compile_)
    result = cg.tune(SMALL, "c", budget=5, threads=1, max_candidates=3, workers=0)
    lied = [m for m in result.measurements if m.schedule == liar][0]
    assert math.isfinite(lied.seconds) and not lied.checked  # timed, then rejected
    assert result.best != liar
    assert [m for m in result.measurements if m.checked] == \
        [m for m in result.measurements if m.schedule == result.best]
    assert not [r for r in lines(db)
                if r["checked"] and cg.Schedule.from_dict(r["schedule"]) == liar]
    monkeypatch.setattr(tune_module, "compile_spec", real)
    assert best_record(SMALL, "c") == result.best


def test_a_tiny_budget_still_times_the_default(db):
    result = cg.tune(SMALL, "c", budget=0.001, threads=1)
    assert result.measurements[0].schedule == result.default
    assert result.best == result.default and result.speedup == 1.0


# -- the database -------------------------------------------------------------------------

def fake(schedule, seconds, checked=True, spec=SMALL, backend="c"):
    return Measurement(schedule, seconds, checked=checked), spec, backend


def write(db, *entries, bound=False):
    for m, spec, backend in entries:
        record(spec, backend, [m], db, bound=bound)


def test_best_record_picks_the_fastest_checked_matching_record(db):
    a = cg.Schedule(tile_co=4, tile_spatial=(2, 6), threads=1)
    b = cg.Schedule(tile_co=2, tile_spatial=(1, 6), threads=2)
    c = cg.Schedule(tile_co=8, tile_spatial=(6, 6), threads=1)
    other = cg.ConvSpec((1, 4, 6, 6), 8, kernel_size=3, padding=1, bias=False)
    write(db, fake(a, 3e-4), fake(b, 2e-4), fake(c, 1e-5, checked=False),
          fake(c, 1e-5, spec=other), fake(c, 1e-5, backend="llvm"))
    good = lines(db)[0]
    with open(db, "a") as f:  # the same record from elsewhere, and garbage
        for key, value in [("cpu", "another cpu"), ("convgen", "0.0.0+other"),
                           ("compiler", "/usr/bin/tcc")]:
            f.write(json.dumps({**good, key: value, "seconds": 1e-6}) + "\n")
        f.write(json.dumps({**good, "schedule": {"tile_co": 0}, "seconds": 1e-6}) + "\n")
        f.write(json.dumps({**good, "schedule": {"tile_co": 4, "tile_spatial": [9, 9, 9]},
                            "seconds": 1e-6}) + "\n")
        f.write(json.dumps({**good, "seconds": "fast"}) + "\n")
        f.write(json.dumps({**good, "seconds": -1.0}) + "\n")
        f.write("{not json\n[1, 2]\n\n" + json.dumps({**good, "schedule": None}) + "\n")
        f.write(json.dumps({**good, "seconds": 1e-6})[:40] + "\n")  # a torn line
    assert best_record(SMALL, "c") == b
    assert best_record(SMALL, "c", threads=1) == a
    assert best_record(SMALL, "llvm") == c
    assert best_record(other, "c") == c
    assert best_record(cg.ConvSpec((1, 4, 6, 6), 8, kernel_size=1), "c") is None
    assert len(read_records(db)) >= 8


def test_best_record_without_a_database(db):
    assert not db.exists()
    assert best_record(SMALL, "c") is None
    assert cg.compile(SMALL).schedule == cg.default_schedule(SMALL)


def test_compile_uses_the_record_and_an_explicit_schedule_wins(db):
    tuned = cg.Schedule(tile_co=2, tile_spatial=(3, 6), threads=2)
    write(db, fake(tuned, 1e-4))
    kernel = cg.compile(SMALL, "c", threads=2)  # records are selected by thread count
    assert kernel.schedule == tuned
    x, w, b = tune_module.random_arrays(SMALL)
    assert close(SMALL, kernel(x, w, b), cg.reference(SMALL, x, w, b))
    explicit = cg.Schedule(tile_co=8, tile_spatial=(6, 6), threads=2)
    assert cg.compile(SMALL, "c", explicit).schedule == explicit


# -- networks -----------------------------------------------------------------------------

def tiny_network() -> nn.Module:
    nn.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()).eval()


def test_graph_compile_uses_tuned_schedules(db):
    net = tiny_network()
    convs = network_convs(net, (1, 3, 8, 8))
    assert len(convs) == 2  # the two 8 -> 8 convs are the same spec
    tuned = {}
    for i, (_, spec) in enumerate(convs.values()):
        tuned[spec.key()] = cg.Schedule(tile_co=2 + 2 * i, tile_spatial=(1 + i, 8), threads=2)
        write(db, fake(tuned[spec.key()], 1e-4, spec=spec), bound=True)  # as networks run
    model = compile_graph(net.trace((1, 3, 8, 8)), "c", threads=2)  # the records' threads
    plans = [s.plan for s in model._lowered.steps if s.kind == "conv"]
    assert len(plans) == 3
    for plan in plans:
        want = tuned[plan.spec.key()]
        assert (plan.schedule.tile_co, plan.schedule.tile_spatial) == \
            (want.tile_co, want.tile_spatial)
        assert plan.schedule.threads == want.threads  # no threads given: the record's
    x = np.random.default_rng(0).uniform(-1, 1, (1, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(model(x), model.reference(x), rtol=1e-4, atol=1e-4)
    pinned = compile_graph(net.trace((1, 3, 8, 8)), "c", threads=1)  # an explicit count wins
    assert {s.plan.schedule.threads for s in pinned._lowered.steps if s.kind == "conv"} == {1}
    np.testing.assert_allclose(pinned(x), model.reference(x), rtol=1e-4, atol=1e-4)


def test_tune_network_tunes_each_distinct_conv_once(db, monkeypatch):
    calls = []

    def fake_tune(spec, backend, budget, threads, max_candidates, progress, **options):
        calls.append((spec.key(), budget, options["name"]))
        return spec.key()

    monkeypatch.setattr(tune_module, "tune", fake_tune)
    results = tune_network(tiny_network(), (1, 3, 8, 8), "c", budget=10)
    assert len(results) == len(calls) == 2 == len({key for key, _, _ in calls})
    assert calls[0][1] == pytest.approx(5, abs=0.5)  # an even share; unused time carries over
    assert calls[1][1] <= 10
    assert calls[0][2] == "0"  # named after the first conv node using the spec


def test_tune_network_for_real(db):
    results = tune_network(tiny_network(), (1, 3, 8, 8), "c", budget=4, threads=1,
                           max_candidates=2)
    assert len(results) == 2
    for result in results:  # timed bound, as the network runs them: kept apart
        assert best_record(result.spec, "c", bound=True) == result.best
        assert best_record(result.spec, "c") is None
    assert all(r["bound"] is True for r in lines(db))


# -- command line -------------------------------------------------------------------------

def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="convgen")
    backend = argparse.ArgumentParser(add_help=False)
    backend.add_argument("--backend", choices=tuple(cg.BACKENDS), default=None)
    add_tune_command(top.add_subparsers(dest="command"), [backend])
    return top


SPEC_FILE = """
[[conv]]
name = "tiny_a"
input_shape = [1, 4, 6, 6]
out_channels = 8
kernel_size = 3
padding = 1

[[conv]]
name = "tiny_b"
input_shape = [1, 2, 16]
out_channels = 4
kernel_size = 3
"""

NET_FILE = """
name = "tinynet"
input_shape = [1, 2, 6, 6]

[[layer]]
type = "Conv2d"
args = [2, 4, 3]
padding = 1

[[layer]]
type = "ReLU"
"""


def test_cli_tunes_a_spec_file_and_prints_the_table(db, tmp_path, capsys):
    path = tmp_path / "tiny.toml"
    path.write_text(SPEC_FILE)
    assert not is_network_file(path)
    args = parser().parse_args(["tune", str(path), "--budget", "4", "--threads", "1"])
    assert args.run(args) == 0
    out, err = capsys.readouterr()
    header, rule, *rows = out.strip().splitlines()
    assert header.split()[:4] == ["name", "default", "ms", "best"] and "speedup" in header
    assert [row.split()[0] for row in rows] == ["tiny_a", "tiny_b"]
    assert "\r" not in err  # stderr is not a terminal here: no progress bar frames
    assert {r["spec_name"] for r in lines(db)} == {"conv2d_n1c4h6w6_k8r3x3",
                                                   "conv1d_n1c2l16_k4r3"}
    assert not any("bound" in r for r in lines(db))


def test_cli_tunes_bound_kernels_with_bound(db, tmp_path, capsys):
    """--bound: every measurement is taken with the weights bound (what bench runs)."""
    path = tmp_path / "tiny.toml"
    path.write_text(SPEC_FILE)
    args = parser().parse_args(["tune", str(path), "--budget", "4", "--threads", "1",
                                "--bound", "--backend", "c"])
    assert args.run(args) == 0
    records = lines(db)
    assert records and all(r["bound"] is True for r in records)
    spec = cg.ConvSpec((1, 4, 6, 6), 8, kernel_size=3, padding=1)
    assert best_record(spec, "c", bound=True) is not None and best_record(spec, "c") is None


def test_cli_tunes_a_network_file(db, tmp_path, capsys):
    path = tmp_path / "net.toml"
    path.write_text(NET_FILE)
    assert is_network_file(path)
    args = parser().parse_args(["tune", str(path), "--budget", "2", "--backend", "c",
                                "--threads", "1"])
    assert run_tune(args) == 0
    out, _ = capsys.readouterr()
    assert len(out.strip().splitlines()) == 3  # header, rule, one conv


def test_confirm_times_the_picks_beside_the_default_in_rounds(db):
    found = candidate_schedules(SMALL, "c", 1)[:4]
    arrays = tune_module.random_arrays(SMALL)
    timer = tune_module.Timer(SMALL, "c", arrays, isolate=False)
    watch = tune_module._LoadWatch("small", False, timer.pids, lambda p: None)
    at = tune_module.Progress("small", "confirm", 4, 4, math.inf)
    pairs, load = confirm(timer, watch, found[0], found[1:], 0.01, 30.0, at)
    assert len(pairs) == 3
    default = pairs[0][0]
    assert all(d is default for d, _ in pairs)  # one timing: the same rounds for all
    assert len(default) >= CONFIRM_MIN_ROUNDS
    assert all(len(c) == len(default) and min(c) > 0 for _, c in pairs)  # paired by round
    assert load is None or 0 <= load.others <= load.cores


@pytest.mark.parametrize("gain, default_wins", [(0.01, True), (0.025, True), (0.05, False),
                                                (0.2, False)])
def test_the_default_wins_within_the_margin(gain, default_wins):
    """A candidate faster than the default by DEFAULT_MARGIN or less loses to it, however
    steady the timings."""
    rng = np.random.default_rng(0)
    default = list(1e-4 * (1 + 0.001 * rng.standard_normal(50)))
    candidate = [d / (1 + gain) for d in default]
    assert compare(default, candidate).faster is not default_wins


@pytest.mark.parametrize("bad", [dict(budget=-1), dict(max_candidates=0), dict(threads=0),
                                 dict(budget="30")])
def test_bad_arguments_are_rejected_before_any_work(db, bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        cg.tune(SMALL, "c", **bad)
    assert not db.exists()


def test_a_script_without_a_main_guard_is_not_rerun_by_the_workers(db, tmp_path):
    import subprocess
    import sys

    from helpers import subprocess_env

    script = tmp_path / "unguarded.py"
    script.write_text("import convgen as cg\n"
                      "print('script ran')\n"
                      "spec = cg.ConvSpec((1, 4, 6, 6), 8, kernel_size=3, padding=1)\n"
                      "result = cg.tune(spec, 'c', budget=4, threads=1, max_candidates=3,\n"
                      "                 workers=2, check_load=False)\n"
                      "print(len(result.measurements), 'measured')\n")
    env = subprocess_env(CONVGEN_TUNING_DB=str(db))  # CONVGEN_CACHE_DIR: the module's
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("script ran") == 1
    assert done.stdout.strip().endswith("measured") and lines(db)


def test_networks_use_only_records_measured_bound(db):
    """A record measured with the weights passed in each call paid Winograd's transform
    (and the "co" packing) in every call; a network prepares them once at load, so it
    keeps its default over such a record and uses the records measured bound."""
    from convgen.graph.compile import _conv_schedules
    from convgen.graph.trace import trace

    net = cg.nn.Sequential(cg.nn.Conv2d(16, 16, 3, padding=1), cg.nn.ReLU(),
                           cg.nn.Conv2d(16, 16, 3, stride=2, padding=1))
    graph = trace(net, (1, 16, 16, 16))
    convs = [n for n in graph.nodes if n.op == "conv"]
    specs = [cg.ConvSpec.from_dict(n.attrs["spec"]) for n in convs]
    assert cg.default_schedule(specs[0], prepared_weights=True).method == "winograd"
    direct = cg.Schedule(tile_co=16, tile_spatial=(1, 6), threads=1, vectorize="co")
    write(db, fake(direct, 1e-6, spec=specs[0]), fake(direct, 1e-6, spec=specs[1]))
    chosen = _conv_schedules(graph, threads=1, backend="c")
    assert chosen[convs[0].name] == cg.default_schedule(specs[0], prepared_weights=True)
    assert chosen[convs[1].name] == cg.default_schedule(specs[1], prepared_weights=True)
    tuned = cg.Schedule(tile_co=8, tile_spatial=(2, 2), threads=1, method="winograd")
    write(db, fake(tuned, 1e-7, spec=specs[0]), fake(direct, 1e-6, spec=specs[1]), bound=True)
    chosen = _conv_schedules(graph, threads=1, backend="c")
    assert chosen[convs[0].name] == tuned and chosen[convs[1].name] == direct


def test_estimated_cost_counts_the_rows_of_a_depthwise_tile():
    """vectorize="dw" register tiles are rows x vectors of one channel: one row of one
    vector leaves the FMA latency exposed, four rows of it do not."""
    from convgen.tuning.space import estimated_cost

    spec = cg.ConvSpec((1, 32, 28, 28), 32, 3, padding=1, groups=32)
    lone = cg.Schedule(tile_co=1, tile_spatial=(1, 16), vectorize="dw")
    rows = cg.Schedule(tile_co=1, tile_spatial=(4, 16), vectorize="dw")
    assert estimated_cost(spec, rows) < estimated_cost(spec, lone)
