"""Tuning that noise cannot fool (issue 20, part 2): the decision rule on synthetic timings,
rounds, the machine's load, and a tuning run beside a busy process.

No test asserts a speed. The rule's tests feed :func:`compare` seeded synthetic samples;
the load tests script what the tuner's load meter reports, except two that start a real
busy process pinned to one core: the tuner must then refuse (load check on), or keep
nothing that the default beats when both are timed again afterwards (load check off).
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

import convgen as cg
from convgen import config
from convgen.cli import tune as cli_tune
from convgen.cli.main import main
from convgen.plan.defaults import PARALLEL_FLOPS
from convgen.reference import random_arrays
from convgen.tuning import noise
from convgen.tuning.noise import Load, compare, idle_load, time_rounds

tune_module = importlib.import_module("convgen.tuning.tuner")  # cg.tune is the function

SMALL = cg.ConvSpec((1, 4, 6, 6), 8, kernel_size=3, padding=1)  # 20 kFLOP
LARGE = cg.ConvSpec((1, 32, 32, 32), 32, kernel_size=3, padding=1)


def timings(rng, n: int, scale: float = 1e-4, jitter: float = 0.05,
            outliers: float = 0.05) -> np.ndarray:
    """``n`` synthetic seconds per call: lognormal jitter around ``scale``, and a share
    ``outliers`` of calls that lost a time slice (several times slower)."""
    calls = scale * np.exp(jitter * rng.standard_normal(n))
    slow = rng.random(n) < outliers
    calls[slow] *= rng.uniform(3, 30, slow.sum())
    return calls


def lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# -- the decision rule --------------------------------------------------------------------

@pytest.mark.parametrize("jitter", [0.02, 0.2, 0.5])
def test_equal_noisy_timings_keep_the_default(jitter):
    for seed in range(20):
        rng = np.random.default_rng(seed)
        default, candidate = timings(rng, 60, jitter=jitter), timings(rng, 60, jitter=jitter)
        verdict = compare(list(default), list(candidate))
        assert not verdict.faster, (seed, verdict.why())
        assert verdict.rounds >= noise.DECIDE_MIN_ROUNDS


def test_a_clear_gain_wins_despite_outliers():
    rng = np.random.default_rng(1)
    default = timings(rng, 60)
    candidate = 0.8 * timings(rng, 60)
    candidate[::7] *= 20  # lost time slices, and in the default's rounds too
    default[3::11] *= 20
    verdict = compare(list(default), list(candidate))
    assert verdict.faster, verdict.why()
    assert verdict.gain == pytest.approx(0.2, abs=0.04)
    assert verdict.rounds < 60  # the rounds with an outlier were left out
    assert verdict.wins >= noise.WIN_SHARE and "vs the default" in verdict.why()


def test_a_default_slowed_once_makes_no_winner():
    """The issue's "511.65x": a default timed during a slowdown. Paired rounds leave the
    slow rounds out; the candidate, the same kernel, gains nothing."""
    rng = np.random.default_rng(2)
    base = timings(rng, 60, outliers=0)
    default = base.copy()
    default[20:30] *= 500  # ten rounds during a slowdown
    candidate = base * np.exp(0.02 * rng.standard_normal(60))
    verdict = compare(list(default), list(candidate))
    assert not verdict.faster and abs(verdict.gain) < 0.03


def test_a_heavy_tail_is_no_win():
    """Faster in most calls but far slower in a third (a thread waking up late): the
    median alone would keep it."""
    rng = np.random.default_rng(3)
    default = timings(rng, 60, outliers=0)
    candidate = 0.7 * default
    candidate[::3] *= 4
    verdict = compare(list(default), list(candidate))
    assert verdict.gain > 0.2 and verdict.wins < noise.WIN_SHARE
    assert not verdict.faster


def test_too_few_rounds_decide_nothing():
    verdict = compare([1e-3] * 4, [1e-4] * 4)
    assert not verdict.faster and "too few rounds" in verdict.why()


@pytest.mark.parametrize("gain, plain, strict", [(0.08, True, False), (0.15, True, False),
                                                 (0.3, True, True)])
def test_several_threads_on_a_small_kernel_need_a_clear_win(gain, plain, strict):
    rng = np.random.default_rng(4)
    default = timings(rng, 80, jitter=0.01, outliers=0)
    candidate = (1 - gain) * default * np.exp(0.01 * rng.standard_normal(80))
    assert compare(list(default), list(candidate)).faster is plain
    verdict = compare(list(default), list(candidate), strict=True)
    assert verdict.faster is strict and verdict.strict
    assert "several threads" in verdict.why()


def test_the_strict_rule_wants_less_time_in_all():
    """Most calls far faster, a few stalled so long that the calls took longer in all."""
    rng = np.random.default_rng(5)
    default = timings(rng, 100, jitter=0.01, outliers=0)
    candidate = 0.5 * default
    candidate[::20] *= 150
    assert compare(list(default), list(candidate)).faster
    verdict = compare(list(default), list(candidate), strict=True)
    assert not verdict.total_faster and not verdict.faster


def test_which_schedules_the_strict_rule_judges():
    assert SMALL.flops < PARALLEL_FLOPS <= LARGE.flops
    assert tune_module._strict(SMALL, "c", cg.Schedule(threads=2))
    assert not tune_module._strict(SMALL, "c", cg.Schedule(threads=1))
    assert not tune_module._strict(LARGE, "c", cg.Schedule(threads=2))


def test_a_noisy_default_says_the_machine_was_busy():
    rng = np.random.default_rng(6)
    assert not noise.noisy(list(timings(rng, 50, jitter=0.02)))
    assert noise.noisy(list(timings(rng, 50, jitter=0.4)))
    assert noise.noisy(list(timings(rng, 50, jitter=0.02, outliers=0.35)))


# -- rounds -------------------------------------------------------------------------------

def test_rounds_interleave_rotate_and_drop_losers():
    order: list[int] = []

    def call(i, seconds=0.0):
        def run():
            order.append(i)
            if seconds:
                time.sleep(seconds)
        return run

    samples = time_rounds([call(0), call(1), call(2, 0.003)], seconds=0.0, min_rounds=6,
                          max_rounds=6, loser_factor=3.0)
    first = noise.LOSER_ROUNDS * 3
    rounds = [order[i:i + 3] for i in range(0, first, 3)]
    assert all(sorted(r) == [0, 1, 2] for r in rounds)  # each once per round
    assert len({tuple(r) for r in rounds}) == len(rounds)  # in a rotated order
    assert [len(s) for s in samples] == [6, 6, noise.LOSER_ROUNDS]  # the slow one stopped
    assert sorted(order[first:]) == [0, 0, 0, 1, 1, 1]


# -- the machine's load -------------------------------------------------------------------

def test_the_busy_rule():
    assert not Load(others=0.2, cores=2, seconds=1).busy(2)
    assert Load(others=1.0, cores=2, seconds=1).busy(2)  # a thread would share a core
    assert not Load(others=1.0, cores=2, seconds=1).busy(1)
    assert Load(others=1.9, cores=2, seconds=1).busy(1)
    assert Load(others=0.5, cores=1, seconds=1).busy(4)  # more threads than cores


@pytest.fixture
def busy_core():
    """A busy loop in another process (returned), pinned to one of the cores this process
    may use; killed at the end if the test has not."""
    process = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        os.sched_setaffinity(process.pid, {max(os.sched_getaffinity(0))})
        time.sleep(0.2)  # it runs
        yield process
    finally:
        process.kill()
        process.wait(5)


def test_the_load_meter_sees_a_busy_core(busy_core):
    load = idle_load(seconds=0.3)
    assert load is not None and load.others >= 0.7  # the loop, and whatever else runs
    assert load.cores == len(os.sched_getaffinity(0))


def scripted(monkeypatch, idle: list[float], timing: list[float]):
    """The tuner's load meter reports the loads in ``idle`` (while it waits for quiet)
    and in ``timing`` (during the decisive timings), in cores used by others, the last
    one repeating; returns the lists of loads it handed out."""
    cores = 2
    given = {"idle": [], "timing": []}

    def next_load(kind, script):
        value = script[min(len(given[kind]), len(script) - 1)]
        given[kind].append(value)
        return Load(value, cores, 0.25)

    class Meter:
        def __init__(self, pids):
            pass

        def start(self):
            pass

        def stop(self):
            return next_load("timing", timing)

    monkeypatch.setattr(tune_module, "LoadMeter", Meter)
    monkeypatch.setattr(tune_module, "idle_load", lambda meter: next_load("idle", idle))
    monkeypatch.setattr(tune_module, "noisy", lambda default: False)  # the load decides
    return given


def everyone_a_finalist(monkeypatch):
    """Screening finds every candidate faster, so the decisive timings run."""
    monkeypatch.setattr(tune_module, "paired_gain", lambda default, samples: 0.5)


def test_a_busy_machine_is_waited_for(db, monkeypatch):
    given = scripted(monkeypatch, idle=[2.0, 2.0, 0.0], timing=[0.0])
    phases = []
    result = cg.tune(SMALL, "c", budget=10, threads=1, max_candidates=2, workers=0,
                     check_load=True, progress=lambda p: phases.append(p.phase))
    assert given["idle"][:3] == [2.0, 2.0, 0.0]  # looked three times before timing
    assert phases[:2] == ["wait", "wait"]
    assert lines(db) and result.best is not None


def test_a_disturbed_decisive_timing_is_retimed(db, monkeypatch):
    given = scripted(monkeypatch, idle=[0.0], timing=[1.9, 0.0])
    everyone_a_finalist(monkeypatch)
    cg.tune(SMALL, "c", budget=10, threads=1, max_candidates=2, workers=0, check_load=True)
    assert given["timing"][:2] == [1.9, 0.0]  # the confirm rounds again, on a quiet machine
    records = lines(db)
    assert records and all(r["load"]["others"] == 0.0 for r in records)


def test_a_machine_that_stays_busy_is_refused_and_nothing_recorded(db, monkeypatch):
    given = scripted(monkeypatch, idle=[0.0], timing=[1.9])
    everyone_a_finalist(monkeypatch)
    with pytest.raises(tune_module.MachineBusy, match=r"busy while timing .*1\.9 of the 2 "
                                                      r"cores.*nothing was recorded"):
        cg.tune(SMALL, "c", budget=10, threads=1, max_candidates=2, workers=0,
                check_load=True)
    assert len(given["timing"]) == tune_module.RETIMES + 1
    assert not db.exists()


def test_without_the_check_the_load_is_only_noted(db, monkeypatch):
    scripted(monkeypatch, idle=[2.0], timing=[1.9])
    everyone_a_finalist(monkeypatch)
    cg.tune(SMALL, "c", budget=10, threads=1, max_candidates=2, workers=0, check_load=False)
    assert {r["load"]["others"] for r in lines(db)} == {1.9}


# -- a tuning run beside a busy process ---------------------------------------------------

def test_tuning_on_a_busy_core_is_refused(db, busy_core, monkeypatch):
    monkeypatch.setattr(tune_module, "LOAD_WAIT_SECONDS", 0.5)
    threads = min(len(os.sched_getaffinity(0)), 2)
    with pytest.raises(tune_module.MachineBusy, match="the machine is busy.*nothing was "
                                                      "recorded"):
        cg.tune(SMALL, "c", budget=2, threads=threads, max_candidates=2, workers=0,
                check_load=True)
    assert not db.exists()


def test_a_run_under_load_keeps_nothing_slower_than_the_default(db, busy_core):
    """Tuned beside a busy core with the load check off (only the decision rule guards),
    then the kept schedule and the default timed again, interleaved, without the load:
    the default must not beat what was kept."""
    threads = min(len(os.sched_getaffinity(0)), 2)  # a thread on the busy core
    result = cg.tune(SMALL, "c", budget=10, threads=threads, max_candidates=3, workers=0,
                     check_load=False)
    records = lines(db)
    [kept] = [r for r in records if r["checked"]]
    for r in records:  # what was measured, where, how
        assert r["threads"] == threads == r["schedule"]["threads"]
        assert r["protocol"] == tune_module.PROTOCOL and r["cpu"] and r["convgen"]
        assert r["load"]["cores"] == len(os.sched_getaffinity(0))
        assert r["seconds"] is None or (r["rounds"] >= 1 and r["noise"] >= 0 and "gain" in r)
    assert cg.Schedule.from_dict(kept["schedule"]) == result.best
    if result.best != result.default:  # a strict win, twice: SMALL is below the threshold
        assert result.verdict.strict and result.verdict.faster

    busy_core.kill()  # quiet again (but for the suite's other work)
    busy_core.wait(5)
    arrays = random_arrays(SMALL)
    runs = [tune_module.runner(SMALL, "c", s, arrays) for s in (result.best, result.default)]
    for run in runs:
        run()
    best, default = time_rounds(runs, 0.3, 30, 2000)
    verdict = compare(best, default)  # is the default faster than what was kept?
    assert not verdict.faster, verdict.why()


def test_the_load_check_follows_the_environment(monkeypatch):
    monkeypatch.setenv("CONVGEN_TUNE_CHECK_LOAD", "0")
    assert config.tune_check_load() is False
    monkeypatch.setenv("CONVGEN_TUNE_CHECK_LOAD", "1")
    assert config.tune_check_load() is True
    monkeypatch.setenv("CONVGEN_TUNE_CHECK_LOAD", "maybe")
    with pytest.raises(ValueError, match="CONVGEN_TUNE_CHECK_LOAD"):
        config.tune_check_load()


def test_the_cli_refuses_a_busy_spec_and_goes_on_with_the_next(tmp_path, monkeypatch, capsys):
    """`convgen tune`: MachineBusy costs that spec only (the next may find the machine
    quiet), is reported, and sets the exit status; --no-load-check reaches the tuner."""
    specfile = tmp_path / "two.toml"
    specfile.write_text('[[conv]]\nname = "a"\ninput_shape = [1, 2, 8]\nout_channels = 2\n'
                        'kernel_size = 3\n\n[[conv]]\nname = "b"\ninput_shape = [1, 2, 9]\n'
                        'out_channels = 2\nkernel_size = 3\n')
    calls = []

    def busy(spec, backend, budget, threads, **options):
        calls.append((options["name"], options["check_load"]))
        raise cg.MachineBusy(f"{options['name']}: other processes kept the cores busy")

    monkeypatch.setattr(cli_tune, "tune", busy)
    assert main(["tune", str(specfile), "--budget", "1"]) == 1
    err = capsys.readouterr().err
    assert "refused: a: other" in err and "refused: b: other" in err
    assert calls == [("a", None), ("b", None)]
    calls.clear()
    assert main(["tune", str(specfile), "--budget", "1", "--no-load-check"]) == 1
    assert calls == [("a", False), ("b", False)]
    assert main(["tune"]) == 2  # no file and no --list/--forget/...
    assert "SPECFILE" in capsys.readouterr().err
