"""``convgen tune SPECFILE|NETSPEC``: the tuner on the command line (wired into convgen.cli.main)."""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import tomllib
from typing import Any, Callable

from convgen.backends import resolve_backend
from convgen.graph.netspec import load_network
from convgen.specfile import load_specfile
from convgen.tuning.tuner import Progress, TuneResult, _ms, describe, tune, tune_network


def add_tune_command(subparsers, parents: list[argparse.ArgumentParser]) -> None:
    """Add ``tune SPECFILE|NETSPEC --budget S [--backend B] [--threads N]``."""
    p = subparsers.add_parser(
        "tune", parents=parents, help="search schedules and record the fastest",
        description="Time candidate schedules of each convolution in a spec file (or of each "
                    "distinct convolution of a network file), check the winner against the "
                    "oracle and append every measurement to the tuning database "
                    "($CONVGEN_TUNING_DB, default <cache dir>/tuning.jsonl); compile then "
                    "uses the best record.")
    p.add_argument("specfile", metavar="SPECFILE|NETSPEC", help="TOML spec or network file")
    p.add_argument("--budget", type=_positive(float), default=30.0, metavar="S",
                   help="seconds in all, split among the convolutions (default: %(default)s)")
    p.add_argument("--threads", type=_positive(int), default=None, metavar="N",
                   help="threads per kernel (default: $CONVGEN_NUM_THREADS or the CPU count)")
    p.add_argument("--bound", action="store_true",
                   help="spec files: time kernels with their weights bound and prepared once "
                        "(convgen.bind), as `convgen bench` and networks run them; their "
                        "records are kept apart (network files are always tuned bound)")
    p.set_defaults(run=run_tune)


def is_network_file(path: str | os.PathLike) -> bool:
    """A network file has a top-level input_shape or [[layer]]; a spec file has [[conv]]."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except (OSError, ValueError):
        return False  # the spec-file loader reports the problem
    return "input_shape" in data or "layer" in data


def _positive(kind: type) -> Callable[[str], Any]:
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = 0
        if not 0 < value < math.inf:
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, "
                                             f"got {text!r}")
        return value
    return parse


def run_tune(args: argparse.Namespace) -> int:
    """Tune every conv of a spec file, or each distinct conv of a network file; print a table."""
    backend = resolve_backend(getattr(args, "backend", None))
    bar = ProgressBar(sys.stderr)
    if is_network_file(args.specfile):
        results = tune_network(load_network(args.specfile), backend=backend,
                               budget=args.budget, threads=args.threads, progress=bar)
    else:
        entries = load_specfile(args.specfile)
        deadline = time.monotonic() + args.budget
        results = []
        for i, entry in enumerate(entries):
            share = max(deadline - time.monotonic(), 0.0) / (len(entries) - i)
            results.append(tune(entry.spec, backend, share, args.threads, progress=bar,
                                name=entry.name, bound=args.bound))
    bar.finish()
    print(summary_table(results))
    return 0


class ProgressBar:
    """One line on ``stream``, rewritten with \\r: phase, candidates done/total, best so far."""

    def __init__(self, stream, width: int = 24):
        self.stream, self.width, self.used = stream, width, False

    def __call__(self, p: Progress) -> None:
        filled = self.width * p.done // max(p.total, 1)
        best = _ms(p.best_seconds) + " ms" if math.isfinite(p.best_seconds) else "-"
        self.stream.write(f"\r{p.name[:32]:<32} {p.phase:<7} [{'#' * filled:<{self.width}}] "
                          f"{p.done}/{p.total} best {best}   ")
        self.stream.flush()
        self.used = True

    def finish(self) -> None:
        if self.used:
            self.stream.write("\n")
            self.stream.flush()


def summary_table(results: list[TuneResult]) -> str:
    """name, default ms, best ms, speedup, best schedule: one row per tuned spec."""
    rows = [("name", "default ms", "best ms", "speedup", "best schedule")]
    for r in results:
        rows.append((r.name, _ms(r.default_seconds), _ms(r.best_seconds),
                     f"{r.speedup:.2f}x", describe(r.best)))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = ["  ".join(c.ljust(w) if i in (0, 4) else c.rjust(w)
                       for i, (c, w) in enumerate(zip(row, widths))).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
