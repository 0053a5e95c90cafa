"""Timing that noise cannot fool: interleaved rounds, robust statistics, the machine's load.

The tuner times candidates beside the default in rounds (each called once per round, the
order rotated round by round), so a slowdown hits them alike; :func:`compare` then keeps a
candidate only when the paired rounds show it faster than the default beyond the noise
they measured. :func:`idle_load` and :class:`LoadMeter` say how much of the cores other
processes took, so the tuner can wait, re-time or refuse. docs/tuning.md has the protocol
and the reasons for each threshold.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Sequence

# -- deciding from paired rounds ----------------------------------------------------------

# Tukey's fences: a call outside [Q1 - 1.5 IQR, Q3 + 1.5 IQR] of its own series is an
# outlier (an interrupt, a lost time slice), and its whole round is left out of the pairing
OUTLIER_IQR = 1.5
# A candidate replaces the default only when its median paired ratio to the default is
# below 1 - DEFAULT_MARGIN (on a quiet machine schedules within a few percent swap places
# between runs: layout, frequency, what ran before) ...
DEFAULT_MARGIN = 0.03
# ... and below 1 - NOISE_K standard errors of that median (three: noise alone makes such
# a gain about once in a thousand comparisons) ...
NOISE_K = 3.0
# ... and it was faster in at least this share of the rounds: a candidate slower in more
# than a quarter of its calls (a heavy tail the median hides) is no win
WIN_SHARE = 0.75
DECIDE_MIN_ROUNDS = 6  # fewer rounds left after the fences: no verdict, the default stays
# A schedule on several threads for a kernel below the parallel threshold
# (convgen.plan.defaults.PARALLEL_FLOPS) must win clearly: starting and waking threads is
# a large share of a small kernel's time, and one thread that loses its core stalls the
# others. A fifth faster, faster in nine rounds of ten, less time in all (outliers counted),
# and in two separate interleaved timings (the tuner's confirm and final rounds).
STRICT_MARGIN = 0.2
STRICT_NOISE_K = 6.0
STRICT_WIN_SHARE = 0.9
# The default's own timings in a decisive phase say the machine was busy when their
# relative spread (1.4826 MAD / median, the coefficient of variation for normal noise)
# passes NOISY_SPREAD (quiet: a few percent), or more than NOISY_SLOW of its calls took
# over SLOW_CALL times its median (quiet: a few lost to interrupts; the fences cannot
# tell past a quarter)
NOISY_SPREAD = 0.15
NOISY_SLOW = 0.2
SLOW_CALL = 1.5
_NORMAL_MAD = 1.4826  # MAD x this estimates the standard deviation of normal noise
_MEDIAN_SE = 1.2533  # standard error of a median / (sigma / sqrt(n)), normal noise


def fences(samples: Sequence[float]) -> tuple[float, float]:
    """Tukey's (low, high) fences of ``samples`` (at least two)."""
    q1, _, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    return q1 - OUTLIER_IQR * (q3 - q1), q3 + OUTLIER_IQR * (q3 - q1)


def inliers(samples: Sequence[float]) -> list[float]:
    """``samples`` within their fences (all of them when there are fewer than four)."""
    if len(samples) < 4:
        return list(samples)
    low, high = fences(samples)
    return [s for s in samples if low <= s <= high]


def robust_median(samples: Sequence[float]) -> float:
    """The median of the inliers; inf without samples."""
    kept = inliers(samples)
    return statistics.median(kept) if kept else math.inf


def spread(samples: Sequence[float]) -> float:
    """Relative spread per call of the inliers: 1.4826 MAD / median (0.05: about 5%);
    nan with fewer than two."""
    kept = inliers(samples)
    if len(kept) < 2:
        return math.nan
    middle = statistics.median(kept)
    if middle <= 0:
        return math.nan
    return _NORMAL_MAD * statistics.median(abs(s - middle) for s in kept) / middle


def noisy(default: Sequence[float]) -> bool:
    """Whether the default's own samples in a phase say the machine was busy."""
    if len(default) < 4:
        return False
    middle = statistics.median(default)
    slow = sum(s > SLOW_CALL * middle for s in default)
    return spread(default) > NOISY_SPREAD or slow > NOISY_SLOW * len(default)


def paired_gain(default: Sequence[float], candidate: Sequence[float]) -> float:
    """1 - the median of candidate / default over the rounds both ran (no fences: a rough
    gain to rank candidates by after a few rounds); nan without any."""
    ratios = [c / d for d, c in zip(default, candidate) if d > 0]
    return 1.0 - statistics.median(ratios) if ratios else math.nan


@dataclass(frozen=True)
class Verdict:
    """A candidate against the default over the rounds they shared."""

    gain: float  # 1 - median(candidate / default) over the kept rounds: 0.1 = 10% faster
    needed: float  # the gain it had to pass: the margin, or K standard errors if larger
    wins: float  # share of the kept rounds in which the candidate was faster
    rounds: int  # paired rounds kept after the fences
    strict: bool  # judged by the multi-thread rule
    total_faster: bool  # less time than the default over all shared rounds, outliers too
    faster: bool  # the verdict: it may replace the default

    def why(self) -> str:
        """One line: the gain against what it needed, the rounds won."""
        if self.rounds < DECIDE_MIN_ROUNDS:
            return f"too few rounds to tell ({self.rounds} after outliers)"
        share = STRICT_WIN_SHARE if self.strict else WIN_SHARE
        text = (f"{self.gain:+.1%} vs the default (needs > {self.needed:.1%}), faster in "
                f"{self.wins:.0%} of {self.rounds} rounds (needs {share:.0%})")
        if self.strict:
            text += ", less time in all" if self.total_faster else ", more time in all"
            text += " [several threads below the parallel threshold]"
        return text


def compare(default: Sequence[float], candidate: Sequence[float],
            strict: bool = False) -> Verdict:
    """Whether ``candidate`` is faster than ``default`` beyond the measured noise.

    Samples are paired by round (``x[r]`` from round r; the shorter series sets the
    rounds). A round is left out when either call is outside its series' fences; on the
    rest, with r the per-round ratios candidate / default, the candidate wins when
    1 - median(r) exceeds both DEFAULT_MARGIN and NOISE_K standard errors of median(r)
    (from the MAD of r), and r < 1 in at least WIN_SHARE of the rounds; ``strict`` (a
    multi-thread schedule for a small kernel): STRICT_MARGIN, STRICT_NOISE_K,
    STRICT_WIN_SHARE, and less time than the default over every shared round.
    """
    n = min(len(default), len(candidate))
    d, c = [float(x) for x in default[:n]], [float(y) for y in candidate[:n]]
    if n < DECIDE_MIN_ROUNDS:
        return Verdict(0.0, math.inf, 0.0, n, strict, False, False)
    (dl, dh), (cl, ch) = fences(d), fences(c)
    ratios = [y / x for x, y in zip(d, c) if dl <= x <= dh and cl <= y <= ch and x > 0]
    total_faster = sum(c) < sum(d)
    if len(ratios) < DECIDE_MIN_ROUNDS:
        return Verdict(0.0, math.inf, 0.0, len(ratios), strict, total_faster, False)
    middle = statistics.median(ratios)
    mad = statistics.median(abs(r - middle) for r in ratios)
    error = _MEDIAN_SE * _NORMAL_MAD * mad / math.sqrt(len(ratios))
    margin, k, share = (STRICT_MARGIN, STRICT_NOISE_K, STRICT_WIN_SHARE) if strict else \
        (DEFAULT_MARGIN, NOISE_K, WIN_SHARE)
    needed = max(margin, k * error)
    wins = (sum(r < 1 for r in ratios) + 0.5 * sum(r == 1 for r in ratios)) / len(ratios)
    gain = 1.0 - middle
    faster = gain > needed and wins >= share and (total_faster or not strict)
    return Verdict(gain, needed, wins, len(ratios), strict, total_faster, faster)


# -- timing in rounds ---------------------------------------------------------------------

LOSER_ROUNDS = 3  # after this many rounds ...
LOSER_FACTOR = 3.0  # ... a call this much slower than the fastest (by median) stops


def time_rounds(calls: Sequence[Callable[[], object]], seconds: float, min_rounds: int,
                max_rounds: int, loser_factor: float = LOSER_FACTOR) -> list[list[float]]:
    """Seconds per call of each of ``calls`` (warm already), in rounds: each called once
    per round, the order rotated every round (none always follows the same one), until
    ``min_rounds`` rounds and ``seconds`` in all, or ``max_rounds``. ``samples[i][r]``
    is from round r. After LOSER_ROUNDS rounds a call ``loser_factor`` times slower than
    the fastest stops being called (never the first: the default, the reference), and
    when only the first is left, the rounds end."""
    samples: list[list[float]] = [[] for _ in calls]
    active = list(range(len(calls)))
    spent = 0.0
    for r in range(max_rounds):
        if r >= min_rounds and spent >= seconds:
            break
        shift = r % len(active)
        for i in active[shift:] + active[:shift]:
            start = time.perf_counter()
            calls[i]()
            elapsed = time.perf_counter() - start
            samples[i].append(elapsed)
            spent += elapsed
        if r + 1 == LOSER_ROUNDS and len(active) > 1:
            medians = {i: statistics.median(samples[i]) for i in active}
            fastest = min(medians.values())
            active = [i for i in active if i == 0 or medians[i] <= loser_factor * fastest]
            if len(active) == 1 < len(calls):  # the default alone: nothing left to compare
                break
    return samples


# -- the machine's load -------------------------------------------------------------------

# How long the tuner looks at an idle machine: 25 scheduler ticks (USER_HZ 100) per core,
# enough to see a process that holds a core
LOAD_WINDOW = 0.25
# Cores' worth of other processes' work tolerated beyond what the kernel's threads leave
# free: a shell, an editor, a browser tab, but not a process that holds a core
LOAD_SLACK = 0.3
LOAD_WAIT_SECONDS = 10.0  # how long the tuner waits for a busy machine before refusing


@dataclass(frozen=True)
class Load:
    """What other processes used of the cores this process may run on, over ``seconds``."""

    others: float  # cores' worth of their CPU time (1.0: one core held the whole time)
    cores: int
    seconds: float

    def busy(self, threads: int) -> bool:
        """Whether ``threads`` threads would share a core with other work."""
        return self.others > self.cores - min(threads, self.cores) + LOAD_SLACK

    def to_dict(self) -> dict:
        return {"others": round(self.others, 3), "cores": self.cores,
                "seconds": round(self.seconds, 3)}


def usable_cores() -> set[int]:
    """The cores this process may run on (its children inherit them)."""
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return set(range(os.cpu_count() or 1))


def _core_ticks(cores: set[int]) -> tuple[int, int] | None:
    """(busy, all) scheduler ticks of ``cores`` from /proc/stat since boot (busy: all
    but idle and iowait; steal counts, a hypervisor took it); None without /proc/stat."""
    busy = total = 0
    try:
        with open("/proc/stat") as f:
            for line in f:
                name, *values = line.split()
                if not name.startswith("cpu") or name == "cpu" or int(name[3:]) not in cores:
                    continue
                ticks = [int(v) for v in values[:8]]  # guest time is already in user
                total += sum(ticks)
                busy += sum(ticks) - ticks[3] - ticks[4]
    except (OSError, ValueError, IndexError):
        return None
    return (busy, total) if total else None


def _process_ticks(pids: Sequence[int]) -> int:
    """Scheduler ticks the processes ``pids`` used (all threads, and children they reaped)."""
    used = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                text = f.read()
        except OSError:  # gone: it used nothing more
            continue
        fields = text[text.rindex(")") + 2:].split()  # after "pid (comm) "
        used += sum(int(v) for v in fields[11:15])  # utime stime cutime cstime
    return used


class LoadMeter:
    """Measures other processes' CPU time between :meth:`start` and :meth:`stop`: the busy
    time of the usable cores less that of ``pids`` (the tuner and its timing process),
    from /proc (Linux); elsewhere :meth:`stop` gives None (unknown)."""

    def __init__(self, pids: Callable[[], Sequence[int]] = lambda: [os.getpid()]):
        self.pids = pids
        self.cores = usable_cores()
        self._start: tuple | None = None

    def start(self) -> None:
        self._start = (time.monotonic(), _core_ticks(self.cores), _process_ticks(self.pids()))

    def stop(self) -> Load | None:
        if self._start is None:
            return None
        began, before, ours = self._start
        self._start = None
        after = _core_ticks(self.cores)
        if before is None or after is None:
            return None
        elapsed = (after[1] - before[1]) / len(self.cores)  # ticks per core
        if elapsed <= 0:
            return None
        mine = _process_ticks(self.pids()) - ours
        others = max(0.0, (after[0] - before[0] - mine) / elapsed)
        return Load(others, len(self.cores), time.monotonic() - began)


def idle_load(meter: LoadMeter | None = None, seconds: float = LOAD_WINDOW) -> Load | None:
    """Other processes' load over ``seconds`` while this process sleeps (None: unknown)."""
    meter = meter or LoadMeter()
    meter.start()
    time.sleep(seconds)
    return meter.stop()
