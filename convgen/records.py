"""The tuning database: every measurement as one JSON line; the best one per spec.

Records are keyed by the spec, the backend, the CPU model and features, the
compiler (C compiler identity, or llvmlite and LLVM versions) and convgen's code
version, so ``compile`` only ever picks a schedule measured on this very setup.
Each call's lines are appended with one ``write`` (O_APPEND), so concurrent tuners
never interleave within a line. Any line may be damaged (a writer killed mid-line, a
hostile or corrupt file): a line that does not parse, for whatever reason (nesting
too deep, too large), is skipped, and an append after a torn last line starts on a line
of its own, so neither the torn line nor the new one takes the other down.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
import stat
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


def _where(path: Path) -> str:
    return (f"tuning database {str(path)!r} ($CONVGEN_TUNING_DB, default "
            f"<cache dir>/tuning.jsonl)")


def check_database(path: Path | None = None) -> Path:
    """The database's path, once it is known to take appends: an existing file that opens
    for appending, or an absent one in a writable directory (created here if missing);
    else a ConvgenError naming the path and what is wrong. The tuner asks before it
    measures anything, so a bad path costs no measurements."""
    path = Path(path) if path is not None else config.tuning_db()
    if path.is_dir():
        raise ConvgenError(f"{_where(path)} is a directory; it must name a file")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConvgenError(f"{_where(path)}: cannot create its directory "
                           f"{str(path.parent)!r}: {exc.strerror or exc}") from None
    if os.path.exists(path):
        try:  # O_NONBLOCK: a FIFO without a reader fails instead of blocking
            os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK))
        except OSError as exc:
            raise ConvgenError(f"{_where(path)} cannot be appended to: "
                               f"{exc.strerror or exc}") from None
    elif not os.access(path.parent, os.W_OK | os.X_OK):
        raise ConvgenError(f"{_where(path)}: its directory {str(path.parent)!r} is not "
                           f"writable")
    return path


def _ends_mid_line(path: Path) -> bool:
    """Whether ``path`` is a regular file whose last byte is not a newline (a torn line)."""
    try:
        with open(path, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                return False
            f.seek(0, os.SEEK_END)
            if f.tell() == 0:
                return False
            f.seek(-1, os.SEEK_END)
            return f.read(1) != b"\n"
    except OSError:
        return False


def record(spec: ConvSpec, backend: str, measured: list, path: Path | None = None,
           bound: bool = False) -> None:
    """Append one JSON line per measurement, all with a single write (O_APPEND), after
    a newline if the file ends in a torn line; ``bound``: measured with the weights bound
    and prepared once (convgen.plan.weights). A path that takes no appends raises a
    ConvgenError saying why."""
    path = check_database(path)
    common = {"spec_key": spec.key(), "spec_name": spec.name, "backend": backend,
              "cpu": cpu_identity(), "compiler": compiler_identity(backend),
              "convgen": code_version(),
              "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat()}
    if bound:
        common["bound"] = True
    lines = []
    for m in measured:
        finite = math.isfinite(m.seconds)
        line = {**common, "schedule": m.schedule.to_dict(),
                "seconds": m.seconds if finite else None,
                "gflops": spec.flops / m.seconds / 1e9 if finite else None,
                "checked": m.checked}
        if m.error:
            line["error"] = m.error
        lines.append(json.dumps(line, sort_keys=True) + "\n")
    data = ("\n" if _ends_mid_line(path) else "") + "".join(lines)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as exc:
        raise ConvgenError(f"{_where(path)} cannot be appended to: "
                           f"{exc.strerror or exc}") from None
    try:
        view = memoryview(data.encode())
        while view:  # a regular file takes it in one write; anything else may not
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


_PARSED: dict[str, list[dict]] = {}  # sha256 of the database's bytes -> its valid lines


def read_records(path: Path | None = None) -> list[dict]:
    """Every well-formed line of the database (others, whatever is wrong with them, are
    skipped); [] when it is absent or unreadable."""
    path = Path(path) if path is not None else config.tuning_db()
    try:
        data = path.read_bytes()
    except (OSError, MemoryError):
        return []
    digest = hashlib.sha256(data).hexdigest()
    if digest not in _PARSED:
        records = []
        for line in data.splitlines():
            try:
                item = json.loads(line)
            except (ValueError, RecursionError, MemoryError):  # bad, too deep, too large
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
