"""The tuning database: every measurement as one JSON line; the best one per spec.

Records are keyed by the spec, the backend, the CPU model and features, the
compiler (C compiler identity, or llvmlite and LLVM versions) and convgen's code
version, so ``compile`` only ever picks a schedule measured on this very setup.
Lines are appended with one ``write`` each (O_APPEND), so concurrent tuners never
interleave within a line; malformed lines are skipped.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
from pathlib import Path

from convgen import config
from convgen.backends import get_backend
from convgen.cache import code_version, cpu_identity
from convgen.errors import ConvgenError, ScheduleError
from convgen.schedule import Schedule
from convgen.spec import ConvSpec


def compiler_identity(backend: str) -> str:
    """What compiles ``backend``'s code (its compiler and version), as records keep it."""
    return get_backend(backend).identity()


def record(spec: ConvSpec, backend: str, measured: list, path: Path | None = None,
           bound: bool = False) -> None:
    """Append one JSON line per measurement, each with a single write (O_APPEND);
    ``bound``: measured with the weights bound and prepared once (convgen.plan.weights)."""
    path = Path(path) if path is not None else config.tuning_db()
    path.parent.mkdir(parents=True, exist_ok=True)
    common = {"spec_key": spec.key(), "spec_name": spec.name, "backend": backend,
              "cpu": cpu_identity(), "compiler": compiler_identity(backend),
              "convgen": code_version(),
              "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat()}
    if bound:
        common["bound"] = True
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        for m in measured:
            finite = math.isfinite(m.seconds)
            line = {**common, "schedule": m.schedule.to_dict(),
                    "seconds": m.seconds if finite else None,
                    "gflops": spec.flops / m.seconds / 1e9 if finite else None,
                    "checked": m.checked}
            if m.error:
                line["error"] = m.error
            os.write(fd, (json.dumps(line, sort_keys=True) + "\n").encode())
    finally:
        os.close(fd)


_PARSED: dict[str, list[dict]] = {}  # sha256 of the database's bytes -> its valid lines


def read_records(path: Path | None = None) -> list[dict]:
    """Every well-formed line of the database (others are skipped); [] when it is absent."""
    path = Path(path) if path is not None else config.tuning_db()
    try:
        data = path.read_bytes()
    except OSError:
        return []
    digest = hashlib.sha256(data).hexdigest()
    if digest not in _PARSED:
        records = []
        for line in data.splitlines():
            try:
                item = json.loads(line)
            except ValueError:
                continue
            if isinstance(item, dict) and isinstance(item.get("schedule"), dict):
                records.append(item)
        _PARSED.clear()
        _PARSED[digest] = records
    return _PARSED[digest]


def best_record(spec: ConvSpec, backend: str, threads: int | None = None,
                path: Path | None = None, bound: bool = False) -> Schedule | None:
    """The fastest checked schedule recorded for ``spec`` and ``backend`` (a resolved name)
    on this CPU, compiler and convgen version (and ``threads``, when given), among the
    records measured with weights bound (``bound``: networks, convgen.bind) or passed in
    each call (kernels); None if none."""
    records = read_records(path)
    if not records:
        return None
    try:
        want = {"spec_key": spec.key(), "backend": backend, "cpu": cpu_identity(),
                "compiler": compiler_identity(backend), "convgen": code_version()}
    except ConvgenError:  # no compiler: compiling will say so
        return None
    best, best_seconds = None, math.inf
    for item in records:
        seconds = item.get("seconds")
        if item.get("checked") is not True or any(item.get(k) != v for k, v in want.items()) \
                or item.get("bound", False) is not bound \
                or isinstance(seconds, bool) or not isinstance(seconds, (int, float)) \
                or not 0 < seconds < best_seconds:
            continue
        try:
            schedule = Schedule.from_dict(item["schedule"])
            get_backend(backend).plan(spec, schedule)  # still legal for this spec and backend
        except (ScheduleError, TypeError, ValueError):
            continue
        if threads is None or schedule.threads == threads:
            best, best_seconds = schedule, seconds
    return best
