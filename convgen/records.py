"""The tuning database: every measurement as one JSON line; the best one per spec.

Records are keyed by the spec, the backend and the machine they were measured on
(``this_machine``: the CPU model and features, the usable core count, the compiler — C
compiler identity, or llvmlite and LLVM versions — and convgen's code version; for a GPU
backend also the GPU's name, architecture and multiprocessor count), so ``compile`` only
ever picks a schedule measured on this very setup, at the thread count asked.

Records written before a field existed (an older convgen's, without ``cores`` or the
``gpu`` fields) stay readable — listed, exported, imported — but are never used: a
field this machine has and the record lacks counts as a difference, since nothing says
the record was measured on matching hardware (``convgen tune --list`` says "not
recorded"). A worker of a distributed run (convgen.tuning.distributed) reports its
``this_machine`` and the client writes its records with that identity (``record(...,
machine=)``): the database has one writer, and every line names where it was measured.
Each call's lines are appended with one ``write`` (O_APPEND), so concurrent tuners
never interleave within a line. Any line may be damaged (a writer killed mid-line, a
hostile or corrupt file): a line that does not parse, for whatever reason (nesting
too deep, too large), is skipped, and an append after a torn last line starts on a line
of its own, so neither the torn line nor the new one takes the other down.

The database can be seen and undone: ``list_records`` (one summary per spec, backend,
thread count and machine), ``forget_records`` (rewrites the file without them,
atomically), ``export_records`` and ``import_records`` (JSON lines; every imported line
is validated, see ``record_problem``).
"""

from __future__ import annotations

import contextlib
import datetime
import difflib
import fcntl
import functools
import hashlib
import json
import math
import os
import stat
import tempfile
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from convgen import config
from convgen.backends import BACKENDS, get_backend
from convgen.backends.cuda import driver as cuda_driver
from convgen.backends.cuda import emulated as cuda_emulated
from convgen.cache import code_version, core_count, cpu_identity
from convgen.errors import ConvgenError, ScheduleError
from convgen.schedule import Schedule
from convgen.spec import ConvSpec


def compiler_identity(backend: str) -> str:
    """What compiles ``backend``'s code (its compiler and version), as records keep it."""
    return get_backend(backend).identity()


# What a record shares with this machine for compile to use it (best_record asks the same):
# every backend's, and a GPU backend's besides. Plain JSON values: str, or int for counts.
CPU_IDENTITY = ("cpu", "cores", "compiler", "convgen")
GPU_IDENTITY = ("gpu", "gpu_arch", "gpu_sms")
IDENTITY = CPU_IDENTITY + GPU_IDENTITY


def identity_fields(backend: str) -> tuple[str, ...]:
    """The IDENTITY fields that decide whether a record of ``backend`` was measured here."""
    return CPU_IDENTITY + (GPU_IDENTITY if get_backend(backend).device == "gpu" else ())


def gpu_identity() -> dict[str, str | int]:
    """The GPU backend "cuda" runs on, as records keep it: its name (cuDeviceGetName),
    architecture ("sm_90": the compute capability, what nvcc compiles for) and
    multiprocessor count (a MIG slice has fewer than the whole GPU of the same name).
    On the CPU emulator (CONVGEN_CUDA_DEVICE=emulator) there is no GPU to ask: "emulator",
    architecture "host" (the emulator is built with -march=native for this CPU, which the
    ``cpu`` field names) and the usable cores as multiprocessors (its blocks run on one
    OpenMP thread per core). A ConvgenError (naming the emulator) where there is neither."""
    if cuda_emulated():
        return {"gpu": "emulator", "gpu_arch": "host", "gpu_sms": core_count()}
    return dict(_device(int(config.cuda_device())))


@functools.lru_cache(maxsize=None)
def _device(ordinal: int) -> tuple[tuple[str, str | int], ...]:
    why = cuda_driver.available(ordinal)
    if why is not None:
        raise ConvgenError(f"no GPU {ordinal} to identify: {why}")
    gpu = cuda_driver.Driver.get(ordinal)
    return (("gpu", gpu.name()), ("gpu_arch", gpu.arch()), ("gpu_sms", gpu.multiprocessors()))


def machine_identity(backend: str) -> dict[str, str | int]:
    """The identity_fields of ``backend`` here; a ConvgenError where its compiler (or for a
    GPU backend, its device) is missing."""
    identity: dict[str, str | int] = {"cpu": cpu_identity(), "cores": core_count(),
                                      "compiler": compiler_identity(backend),
                                      "convgen": code_version()}
    if get_backend(backend).device == "gpu":
        identity.update(gpu_identity())
    return identity


def this_machine(backend: str) -> dict[str, str | int | None]:
    """The identity_fields of ``backend`` here, as plain JSON data (str, int, or None where
    the compiler, or for a GPU backend the device, is not there): what a record must equal
    for compile to use it. The one function a tuning client and its workers call to
    compare machines (convgen.tuning.distributed)."""
    identity: dict[str, str | int | None] = {"cpu": cpu_identity(), "cores": core_count(),
                                             "convgen": code_version()}
    try:
        identity["compiler"] = compiler_identity(backend)
    except (ConvgenError, ValueError, RuntimeError, OSError):
        identity["compiler"] = None
    if get_backend(backend).device == "gpu":
        try:
            identity.update(gpu_identity())
        except (ConvgenError, ValueError, RuntimeError, OSError):
            identity.update(dict.fromkeys(GPU_IDENTITY))
    return {name: identity[name] for name in identity_fields(backend)}


def same_machine(item: Mapping, machine: Mapping) -> bool:
    """Whether record ``item`` has every field of ``machine`` (a this_machine dict), equal
    and of the same JSON type (a field it lacks, or any None in ``machine``: no)."""
    return all(value is not None and name in item and _same(item[name], value)
               for name, value in machine.items())


def _same(a: object, b: object) -> bool:
    return type(a) is type(b) and a == b  # 1 and true, 2 and 2.0 are other JSON


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
           bound: bool = False, *, threads: int | None = None,
           context: dict | None = None, machine: Mapping | None = None) -> None:
    """Append one JSON line per measurement, all with a single write (O_APPEND), after
    a newline if the file ends in a torn line; ``bound``: measured with the weights bound
    and prepared once (convgen.plan.weights). A path that takes no appends raises a
    ConvgenError saying why.

    Every line carries the setup: spec, backend and the machine measured on (``machine``, a
    this_machine dict: a distributed run's worker's; else this one's, machine_identity: CPU
    model and flags, core count, compiler, convgen's code version, and for a GPU backend the
    GPU's name, architecture and multiprocessors), ``threads`` (the thread count tuned for,
    which compile's ``threads=`` or the configured count asks for; a schedule's own
    ``threads`` may be lower: small kernels run on one) and ``context`` (run-wide facts: the
    tuner's ``protocol``, the ``load`` it measured). A measurement's ``noise`` (relative
    spread per call), ``rounds``, ``gain`` on the default and ``rejected`` (why a candidate
    timed faster was not kept) are written when it has them. Readers of older lines see none
    of these.
    """
    identity = machine_identity(backend) if machine is None else _checked_machine(machine,
                                                                                  backend)
    path = check_database(path)
    common = {"spec_key": spec.key(), "spec_name": spec.name, "backend": backend, **identity,
              "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat()}
    if bound:
        common["bound"] = True
    if threads is not None:
        common["threads"] = threads
    for key, value in (context or {}).items():
        common.setdefault(key, value)
    lines = []
    for m in measured:
        finite = math.isfinite(m.seconds)
        line = {**common, "schedule": m.schedule.to_dict(),
                "seconds": m.seconds if finite else None,
                "gflops": spec.flops / m.seconds / 1e9 if finite else None,
                "checked": m.checked}
        if m.error:
            line["error"] = m.error
        for key in ("noise", "gain"):  # measured beside the default (convgen.tuning)
            value = getattr(m, key, None)
            if isinstance(value, float) and math.isfinite(value):
                line[key] = round(value, 5)
        if getattr(m, "rounds", 0):
            line["rounds"] = m.rounds
        if getattr(m, "rejected", None):
            line["rejected"] = m.rejected
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


def _checked_machine(machine: Mapping, backend: str) -> dict[str, str | int]:
    """``machine``'s identity_fields of ``backend``; ValueError naming a field it lacks or
    one that is not a string (a count: a positive int)."""
    identity = {}
    for name in identity_fields(backend):
        value = machine.get(name)
        counted = name in ("cores", "gpu_sms")
        if not (isinstance(value, int) and not isinstance(value, bool) and value > 0
                if counted else isinstance(value, str)):
            want = "a positive int" if counted else "a string"
            raise ValueError(f"machine[{name!r}]: expected {want}, got {_short(value)} "
                             f"(machine= takes a this_machine({backend!r}) dict of the machine "
                             "measured on)")
        identity[name] = value
    return identity


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
    on this machine (same_machine: this CPU and core count, compiler and convgen version,
    and for a GPU backend this GPU; a record lacking one of these fields is not used),
    measured at ``threads`` (None: at any thread
    count), among the records measured with weights bound (``bound``: networks,
    convgen.bind) or passed in each call (kernels); None if none. A record of another
    thread count is never returned for ``threads``, whatever its speed."""
    records = read_records(path)
    if not records:
        return None
    here = this_machine(backend)
    if None in here.values():  # no compiler or no GPU: compiling will say so
        return None
    key = spec.key()
    best, best_seconds = None, math.inf
    for item in records:
        seconds = item.get("seconds")
        if item.get("checked") is not True or item.get("spec_key") != key \
                or item.get("backend") != backend or not same_machine(item, here) \
                or item.get("bound", False) is not bound \
                or isinstance(seconds, bool) or not isinstance(seconds, (int, float)) \
                or not 0 < seconds < best_seconds:
            continue
        try:
            schedule = Schedule.from_dict(item["schedule"])
            if threads is not None and schedule.threads != threads:
                continue
            get_backend(backend).plan(spec, schedule)  # still legal for this spec and backend
        except (ScheduleError, TypeError, ValueError):
            continue
        best, best_seconds = schedule, seconds
    return best


# -- seeing and undoing the records: list, forget, export, import ---------------------------

def spec_id(spec_key: str) -> str:
    """A short name of a spec key, as ``convgen tune --list`` prints it: 8 hex digits."""
    return hashlib.sha256(spec_key.encode()).hexdigest()[:8]


@dataclass(frozen=True)
class RecordSummary:
    """The records of one spec, backend, weights mode, thread count and machine: the
    fastest checked one (schedule and seconds None when none is) and how many there are."""
    spec_key: str
    spec_name: str
    backend: str
    bound: bool
    threads: int | None
    schedule: dict | None
    seconds: float | None
    timestamp: str  # the latest measurement's
    measurements: int
    mismatches: tuple[str, ...]  # identity_fields unlike this machine's; () = compile uses it
    # the identity_fields of the records (None where they lack one: written before it was)
    machine: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def spec_id(self) -> str:
        return spec_id(self.spec_key)


def _threads(item: dict) -> int | None:
    threads = item.get("threads", item["schedule"].get("threads"))
    return threads if isinstance(threads, int) and not isinstance(threads, bool) else None


def _seconds(item: dict) -> float | None:
    seconds = item.get("seconds")
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) \
            or not 0 < seconds < math.inf:
        return None
    return float(seconds)


def list_records(path: Path | None = None,
                 spec_keys: Collection[str] | None = None) -> list[RecordSummary]:
    """The database summarized: one RecordSummary per spec, backend, weights mode, thread
    count and machine (only ``spec_keys``' when given), sorted by spec name."""
    groups: dict[tuple, list[dict]] = {}
    for item in read_records(path):
        if not isinstance(item.get("spec_key"), str) or not isinstance(item.get("backend"), str):
            continue
        if spec_keys is not None and item["spec_key"] not in spec_keys:
            continue
        key = (item["spec_key"], item["backend"], item.get("bound", False) is True,
               _threads(item), *(json.dumps(item.get(name), default=str) for name in IDENTITY))
        groups.setdefault(key, []).append(item)
    machines: dict[str, dict] = {}
    summaries = []
    for (spec_key, backend, bound, threads, *_), items in groups.items():
        if backend not in machines:  # a backend this convgen lacks: its records are never used
            machines[backend] = this_machine(backend) if backend in BACKENDS \
                else dict.fromkeys(CPU_IDENTITY)
        here = machines[backend]
        machine = {name: items[0].get(name) for name in here}
        checked = [i for i in items if i.get("checked") is True and _seconds(i) is not None]
        best = min(checked, key=_seconds, default=None)
        names = [i["spec_name"] for i in items if isinstance(i.get("spec_name"), str)]
        summaries.append(RecordSummary(
            spec_key, names[0] if names else "?", backend, bound, threads,
            best["schedule"] if best else None, _seconds(best) if best else None,
            max((str(i.get("timestamp", "")) for i in items), default=""), len(items),
            tuple(name for name, value in here.items()
                  if value is None or not _same(machine[name], value)), machine))
    return sorted(summaries, key=lambda r: (r.spec_name, r.spec_key, r.backend, r.bound,
                                            r.threads or 0, r.mismatches))


def select_specs(selector: str, path: Path | None = None) -> set[str]:
    """The spec keys of the records ``selector`` names: a spec key, a spec name, or a spec
    id (or a prefix of at least 4 of its hex digits) as ``list_records`` gives them; a
    ConvgenError, with the names nearest to it, when it names none."""
    keys = {item["spec_key"]: item.get("spec_name") for item in read_records(path)
            if isinstance(item.get("spec_key"), str)}
    text = selector.strip()
    hexadecimal = len(text) >= 4 and all(c in "0123456789abcdef" for c in text.lower())
    found = {key for key, name in keys.items()
             if text in (key, name) or (hexadecimal and spec_id(key).startswith(text.lower()))}
    if found:
        return found
    names = sorted({name for name in keys.values() if isinstance(name, str)})
    near = difflib.get_close_matches(text, names, n=3)
    hint = f"; did you mean {' or '.join(map(repr, near))}?" if near else \
        ("" if names else " (it holds none)")
    raise ConvgenError(f"no tuning record of a spec named or keyed {selector!r} in "
                       f"{str(_path(path))!r}{hint}")


@dataclass(frozen=True)
class Forgotten:
    records: list[dict]  # the records removed
    unreadable: int  # lines removed that were no record (forgetting everything only)


def forget_records(spec_keys: Collection[str] | None = None,
                   path: Path | None = None) -> Forgotten:
    """Remove the records of ``spec_keys`` (None: every line) from the database, by
    rewriting it into a temporary file renamed over it (atomic: readers see the old file
    or the new one). Unreadable lines stay unless everything goes. Lines appended while
    it runs are kept (see _rewrite)."""
    def drop(line: bytes) -> bool:
        if spec_keys is None:
            return bool(line.strip())
        item = _parse(line)
        return item is not None and item.get("spec_key") in spec_keys

    removed = [_parse(line) for line in _rewrite(_path(path), drop)]
    records = [item for item in removed if item is not None]
    return Forgotten(records, len(removed) - len(records))


def export_records(file: Path | str, path: Path | None = None,
                   spec_keys: Collection[str] | None = None) -> int:
    """Write the database's records (only ``spec_keys``' when given) to ``file`` as JSON
    lines, whole or not at all; returns how many."""
    records = [item for item in read_records(path)
               if spec_keys is None or item.get("spec_key") in spec_keys]
    data = "".join(json.dumps(item, sort_keys=True) + "\n" for item in records).encode()
    file = Path(file)
    tmp = file.with_name(f".{file.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, file)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):  # name the file asked for, not the temporary one
            raise OSError(exc.errno, exc.strerror, str(file)) from None
        raise
    return len(records)


@dataclass(frozen=True)
class Imported:
    added: int
    duplicates: int  # lines equal to a record the database (or an earlier line) holds
    bad: list[tuple[int, str]]  # (line number from 1, what is wrong), each skipped


def import_records(file: Path | str, path: Path | None = None) -> Imported:
    """Append the records of the JSON-lines ``file`` to the database: every line is checked
    (``record_problem``); bad ones and duplicates are skipped, the good ones appended in
    one write. A database that takes no appends raises before anything is read."""
    path = check_database(path)
    seen = {json.dumps(item, sort_keys=True) for item in read_records(path)}
    good, bad, duplicates = [], [], 0
    with open(file, "rb") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
                bad.append((number, f"not JSON ({exc})"))
                continue
            problem = record_problem(item)
            if problem is not None:
                bad.append((number, problem))
                continue
            text = json.dumps(item, sort_keys=True)
            if text in seen:
                duplicates += 1
                continue
            seen.add(text)
            good.append(text + "\n")
    if good:
        with _locked(path.parent):
            _append(path, "".join(good).encode())
    return Imported(len(good), duplicates, bad)


def record_problem(item: object) -> str | None:
    """What makes ``item`` unfit to be a record (the field and why), or None. Fields
    this convgen does not know are allowed (a newer one may add some)."""
    if not isinstance(item, dict):
        return f"expected a JSON object, got {type(item).__name__}"
    for name in ("spec_key", "spec_name", "backend", "cpu", "compiler", "convgen",
                 "timestamp"):
        if not isinstance(item.get(name), str):
            return f"{name}: expected a string, got {_short(item.get(name))}"
    try:
        spec = ConvSpec.from_dict(json.loads(item["spec_key"]))
    except (ValueError, TypeError, AttributeError, KeyError, RecursionError) as exc:
        return f"spec_key: not a convolution spec ({exc})"
    if spec.key() != item["spec_key"]:
        return "spec_key: not in canonical form (ConvSpec.key()), so no compile would match it"
    if item["spec_name"] != spec.name:
        return f"spec_name: {_short(item['spec_name'])} is not its spec's name ({spec.name!r})"
    if item["backend"] not in BACKENDS:
        return f"backend: expected one of {BACKENDS}, got {_short(item['backend'])}"
    if not isinstance(item.get("schedule"), dict):
        return f"schedule: expected an object, got {_short(item.get('schedule'))}"
    try:
        Schedule.from_dict(item["schedule"])
    except (ScheduleError, TypeError, ValueError) as exc:
        return f"schedule: {exc}"
    if "seconds" not in item or (item["seconds"] is not None and _seconds(item) is None):
        return f"seconds: expected a positive finite number or null, got " \
               f"{_short(item.get('seconds', 'nothing'))}"
    if not isinstance(item.get("checked"), bool):
        return f"checked: expected true or false, got {_short(item.get('checked'))}"
    if not isinstance(item.get("bound", False), bool):
        return f"bound: expected true or false, got {_short(item['bound'])}"
    for name in ("cores", "gpu_sms", "threads"):  # absent from older records
        value = item.get(name, 1)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            return f"{name}: expected a positive integer, got {_short(value)}"
    for name in ("gpu", "gpu_arch"):
        if not isinstance(item.get(name, ""), str):
            return f"{name}: expected a string, got {_short(item[name])}"
    try:
        datetime.datetime.fromisoformat(item["timestamp"])
    except ValueError:
        return f"timestamp: expected an ISO 8601 time, got {_short(item['timestamp'])}"
    return None


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _path(path: Path | None) -> Path:
    return Path(path) if path is not None else config.tuning_db()


def _parse(line: bytes) -> dict | None:
    try:
        item = json.loads(line)
    except (ValueError, RecursionError):
        return None
    return item if isinstance(item, dict) else None


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Serialize the rewriters and importers of databases in ``directory`` (an advisory
    lock on it: tuners appending need none, see _rewrite). Unlocked where the file system
    takes no locks."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        yield
        return
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _append(path: Path, data: bytes) -> None:
    """Append ``data`` with one O_APPEND write (as ``record``), after a newline if the file
    ends in a torn line."""
    if not data:
        return
    data = (b"\n" if _ends_mid_line(path) else b"") + data
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def _rewrite(path: Path, drop: Callable[[bytes], bool]) -> list[bytes]:
    """Rewrite the database without the lines ``drop`` picks (returned): the rest go to a
    temporary file, fsynced and renamed over it. A tuner appends without a lock, so what
    reaches the old file before the rename is read and filtered too, and what a tuner that
    opened it just before the rename writes after it is carried over to the new file."""
    path = Path(os.path.realpath(path))
    with _locked(path.parent):
        try:
            old = open(path, "rb")
        except FileNotFoundError:
            return []
        with old:
            info = os.fstat(old.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise ConvgenError(f"{_where(path)} is not a regular file: it cannot be "
                                   "rewritten")
            dropped: list[bytes] = []

            def sift(lines: list[bytes]) -> bytes:
                kept = []
                for line in lines:
                    (dropped if drop(line) else kept).append(line)
                return b"".join(line + b"\n" for line in kept)

            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            try:
                with os.fdopen(fd, "wb") as out:
                    torn = b""
                    while chunk := old.read():  # to the end, and whatever tuners append meanwhile
                        *lines, torn = (torn + chunk).split(b"\n")
                        out.write(sift(lines))
                    out.write(sift([torn])[:-1] if torn else b"")  # a torn last line
                    out.flush()
                    os.fsync(out.fileno())
                os.chmod(tmp, stat.S_IMODE(info.st_mode))
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            late = old.read()
            if late:
                *lines, torn = late.split(b"\n")
                _append(path, sift(lines) + (sift([torn])[:-1] if torn else b""))
    return dropped
