"""A content-addressed, inspectable cache of compiled kernels.

One plain directory per entry, ``<root>/<key[:2]>/<key>/``, holding the source,
the shared library and ``meta.json``. An entry is built in a private temporary
directory (metadata written last) and renamed into place, so readers never see a
half-written entry and concurrent builders of the same key end with one good
entry. An entry whose metadata is missing or whose files do not match their
recorded hashes is treated as damaged: it is moved aside and rebuilt. So is an entry
that lacks a file its caller needs (``required=``, or found on first use: an entry asked
for a role it does not list rebuilds itself once). Every path out of a build, an error
included, removes its temporary directory, and nothing the cache fails to write (disk
full) masks the error that asked for it.

Each entry's ``meta.json`` records the convgen code version that built it (entries of
other versions are never looked up again: their keys differ) and its modification time
is the entry's last use (set when built, touched on every hit: atime is unreliable on
noatime/relatime mounts). ``info``, ``clear`` and ``prune`` read both; a build prunes the
least recently used entries past ``$CONVGEN_CACHE_MAX_BYTES`` now and then
(``prune_now_and_then``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import shutil
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from convgen import config
from convgen.errors import CompileError, ConvgenError
from convgen.log import get_logger
from convgen.version import __version__

log = get_logger("cache")

META = "meta.json"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


PACKAGE = Path(__file__).resolve().parent

# Parts of convgen (paths relative to the package) that do not shape generated code, nor how
# it is built, loaded and called: the front ends (command line, bench, tuner, ONNX import,
# nn layers, tracing, network files) and the oracle. Editing them, a help string say, keeps
# every cached kernel and tuning record. Every other module, a new one included, is in the
# key: forgetting a module here costs a rebuild, forgetting one in an include list would
# reuse stale code.
NOT_CODE = ("cli", "bench", "tuning", "onnx", "nn", "graph/trace.py", "graph/netspec.py",
            "graph/reference.py", "reference.py", "tolerance.py", "specfile.py",
            "functional.py", "__main__.py", "log.py")


def _shapes_code(relative: str) -> bool:
    return not any(relative == name or relative.startswith(name + "/") for name in NOT_CODE)


def code_files(templates: Path, package: Path = PACKAGE) -> list[Path]:
    """The modules of ``package`` that shape generated code (not NOT_CODE), and every template."""
    modules = [path for path in sorted(package.rglob("*.py"))
               if _shapes_code(path.relative_to(package).as_posix())]
    return modules + sorted(templates.rglob("*.j2"))


def files_version(files: list[Path]) -> str:
    """convgen's version plus a hash of ``files`` (names and contents)."""
    digest = hashlib.sha256(__version__.encode())
    for path in files:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return f"{__version__}+{digest.hexdigest()[:16]}"


@functools.lru_cache(maxsize=None)
def code_version() -> str:
    """convgen's version plus a hash of the sources and templates that shape generated code."""
    return files_version(code_files(config.templates_dir()))


@functools.lru_cache(maxsize=None)
def cpu_identity() -> str:
    """CPU model and feature flags (generated code is built for the host CPU)."""
    model, flags = "", ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                name, _, value = line.partition(":")
                name = name.strip()
                if name == "model name" and not model:
                    model = value.strip()
                elif name in ("flags", "Features") and not flags:
                    flags = " ".join(sorted(value.split()))
    except OSError:
        pass
    return f"{platform.machine()}|{model or platform.processor()}|{flags}"


def core_count() -> int:
    """The cores this process may run on (its CPU affinity: a container's or taskset's share,
    not the machine's), which tuned thread counts and timings depend on; os.cpu_count()
    where the platform has no affinity (macOS). Not cached: the affinity can change."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def make_key(**parts: object) -> str:
    """sha256 of the canonical JSON of everything that shapes a compiled artifact."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class CacheEntry:
    path: Path
    meta: dict
    # Rebuilds this entry so that it has the role given (set by get_or_build). Callers read
    # roles ("library", "object", ...) the cache cannot know before a build; an entry that
    # lists fewer files than its build makes (a damaged meta.json) is found on first use
    # and rebuilt once, rather than failing every compile with a KeyError.
    rebuild: Callable[[str], "CacheEntry"] | None = field(default=None, compare=False,
                                                          repr=False)

    def file(self, role: str) -> Path:
        """The file recorded under ``role`` ("source", "library", ...)."""
        return self.path / self._record(role)["name"]

    def sha256(self, role: str) -> str:
        """The recorded (and, by lookup, verified) sha256 of the file under ``role``."""
        return self._record(role)["sha256"]

    def _record(self, role: str) -> dict:
        files = self.meta.get("files") or {}
        if role not in files and self.rebuild is not None:
            fresh = self.rebuild(role)
            # same key, same path: take the rebuilt entry's metadata in place
            self.meta.clear()
            self.meta.update(fresh.meta)
            files = self.meta.get("files") or {}
        if role not in files:
            raise CompileError(f"cache entry {self.path} has no {role!r} file (its "
                               f"{META} lists {sorted(files) or 'no files'}); delete the "
                               "entry to rebuild it")
        return files[role]


class Cache:
    """The kernel cache rooted at ``root`` (default: config.cache_dir())."""

    def __init__(self, root: Path | str | None = None):
        self.root = Path(root) if root is not None else config.cache_dir()

    def entry_path(self, key: str) -> Path:
        return self.root / key[:2] / key

    def lookup(self, key: str, required: Sequence[str] = ()) -> CacheEntry | None:
        """The valid entry for ``key``, or None; a damaged entry is removed.

        ``required``: roles the entry must list (an entry without one is damaged)."""
        path = self.entry_path(key)
        if not os.path.lexists(path):
            return None
        entry = self._validate(path, key, required)
        if entry is None:
            log.warning("damaged cache entry %s: discarded (it is rebuilt when needed)", path)
            self._discard(path)
        else:
            _mark_used(path)
        return entry

    def get_or_build(self, key: str, build: Callable[[Path], dict[str, str]],
                     extra_meta: dict | None = None,
                     required: Sequence[str] = ()) -> CacheEntry:
        """Return the entry for ``key``, building it with ``build(tmpdir)`` on a miss.

        ``build`` writes its files into the temporary directory it is given and
        returns {role: file name}; hashes and ``meta.json`` are added here. ``required``
        names the roles the caller will read: an entry missing one is rebuilt (so is one
        found missing a role on first use, see CacheEntry.rebuild). A file the cache
        cannot write (disk full, no permission) raises CompileError naming the cache.
        """
        def rebuild(role: str) -> CacheEntry:
            return self.get_or_build(key, build, extra_meta, (*required, role))

        what = _describe(extra_meta, key)
        entry = self.lookup(key, required)
        if entry is not None:
            log.info("cache hit: %s in %s", what, entry.path)
            return CacheEntry(entry.path, entry.meta, rebuild)
        log.info("cache miss: %s, building", what)
        start = time.perf_counter()
        entry = self._build(key, build, extra_meta, required)
        log.info("cache stored: %s in %s (%.2f s)", what, entry.path,
                 time.perf_counter() - start)
        self.prune_now_and_then()
        return CacheEntry(entry.path, entry.meta, rebuild)

    def _build(self, key: str, build: Callable[[Path], dict[str, str]],
               extra_meta: dict | None, required: Sequence[str]) -> CacheEntry:
        tmp_root = self.root / "tmp"
        tmp = None
        try:
            tmp_root.mkdir(parents=True, exist_ok=True)
            self._sweep_damaged(tmp_root)
            tmp = Path(tempfile.mkdtemp(prefix=key[:16] + "-", dir=tmp_root))
            files = build(tmp)
            meta = {
                "key": key,
                "convgen": __version__,
                "code_version": code_version(),
                "files": {role: {"name": name, "sha256": file_sha256(tmp / name)}
                          for role, name in files.items()},
                **(extra_meta or {}),
            }
            missing = [role for role in required if role not in files]
            if missing:
                raise CompileError(f"the build of cache entry {key[:16]} made no "
                                   f"{', '.join(map(repr, missing))} file (it made "
                                   f"{sorted(files) or 'none'})")
            _write_atomic(tmp / META, json.dumps(meta, indent=2, sort_keys=True))
            final = self.entry_path(key)
            final.parent.mkdir(parents=True, exist_ok=True)
            for _ in range(3):
                try:
                    os.rename(tmp, final)
                    return CacheEntry(final, meta)
                except OSError:
                    # Another process got there first: use its entry if it is good.
                    existing = self.lookup(key, required)
                    if existing is not None:
                        return existing
            raise OSError(f"could not install cache entry {final}")
        except ConvgenError:
            raise
        except OSError as exc:
            # Disk full, a read-only cache, ...: a convgen error naming the cache, so
            # callers that handle failed builds (the tuner, the command line) handle it.
            raise CompileError(f"could not write cache entry {key[:16]} under {self.root}: "
                               f"{exc}") from exc
        finally:
            if tmp is not None and tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def _validate(self, path: Path, key: str, required: Sequence[str] = ()) -> CacheEntry | None:
        """The entry at ``path`` if its metadata names ``key`` and lists at least one file
        (every ``required`` role among them), each a plain name in the entry whose sha256
        matches; None otherwise (damaged)."""
        try:
            meta = json.loads((path / META).read_text())
            if meta.get("key") != key:
                return None
            files = meta["files"]
            if not isinstance(files, dict) or not files:
                return None  # every build makes a file: an empty list is damage
            if any(role not in files for role in required):
                return None
            for record in files.values():
                name = record["name"]
                if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
                    return None
                if file_sha256(path / name) != record["sha256"]:
                    return None
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None
        return CacheEntry(path, meta)

    def _discard(self, path: Path) -> None:
        """Move a damaged entry out of the way (atomically), then delete it."""
        trash = self.root / "tmp" / f"damaged-{uuid.uuid4().hex}"
        try:
            trash.parent.mkdir(parents=True, exist_ok=True)
            os.rename(path, trash)
        except OSError:
            return  # someone else already moved or replaced it
        _remove(trash)

    @staticmethod
    def _sweep_damaged(tmp_root: Path) -> None:
        """Delete damaged entries an earlier process moved aside but did not finish
        deleting (killed, or a file where a directory belongs): nothing reads them."""
        for stray in tmp_root.glob("damaged-*"):
            _remove(stray)

    def keep_failed(self, error, file_name: str, source: str):
        """Save the source a failed build was given under <root>/failed and point
        ``error`` (a CompileError) at it, so the user can read what did not compile.

        Never masks ``error``: when the source cannot be written (disk full, say), no
        partial file is left and the error says the source was not kept."""
        failed = self.root / "failed" / file_name
        try:
            failed.parent.mkdir(parents=True, exist_ok=True)
            _write_atomic(failed, source)
        except OSError as exc:
            # the source path it had pointed into the build's temporary directory, which
            # is removed when the build ends
            error.source_path = None
            error.message = (f"{error.message} (the source could not be kept in "
                             f"{failed.parent}: {exc})")
        else:
            error.source_path = str(failed)
        error.args = (error.message, error.command, error.returncode, error.stderr,
                      error.source_path)
        return error

    # -- seeing and undoing: info, clear, prune ---------------------------------------------

    def scan(self, versions: bool = True) -> list[EntryStats]:
        """Every entry under the root (tmp/ and failed/ aside) with its size and last use;
        ``versions``: also read each meta.json for the code version that built it."""
        found = []
        for prefix in _subdirs(self.root):
            if len(prefix.name) == 2 and all(c in "0123456789abcdef" for c in prefix.name):
                for path in _subdirs(prefix):
                    stats = _entry_stats(path, versions)
                    if stats is not None:
                        found.append(stats)
        return found

    def info(self) -> CacheInfo:
        """Entries, their size, how many other convgen code versions built, and last uses."""
        current = code_version()
        stats = self.scan()
        other = [s for s in stats if s.code_version != current]
        used = [s.last_used for s in stats]
        return CacheInfo(self.root, len(stats), sum(s.bytes for s in stats), len(other),
                         sum(s.bytes for s in other), min(used, default=None),
                         max(used, default=None), len(_files(self.root / "failed")))

    def clear(self) -> Removed:
        """Remove every entry, the kept sources of failed builds and stale temporary files;
        other files under the root (the default tuning database) stay."""
        removed = [s for s in self.scan(versions=False) if self._evict(s.path)]
        failed = len(_files(self.root / "failed"))
        _remove(self.root / "failed")
        self._sweep_tmp()
        return Removed(len(removed), sum(s.bytes for s in removed), failed)

    def prune(self, max_bytes: int | None = None, other_versions: bool = True,
              keep_recent: float = 0.0) -> PruneResult:
        """Remove the entries of other convgen code versions (``other_versions``; entries
        without a readable version count as other), then the least recently used ones
        until the rest fit in ``max_bytes`` (default config.cache_max_bytes()), sparing
        those used within ``keep_recent`` seconds; and stale temporary files."""
        limit = config.cache_max_bytes() if max_bytes is None else max_bytes
        if limit < 0:
            raise ValueError(f"max_bytes: expected a size >= 0, got {limit}")
        current = code_version() if other_versions else None
        stats = self.scan(versions=other_versions)
        old = [s for s in stats if other_versions and s.code_version != current]
        rest = sorted((s for s in stats if not other_versions or s.code_version == current),
                      key=lambda s: s.last_used)
        removed_old = [s for s in old if self._evict(s.path)]
        total, removed_lru, now = sum(s.bytes for s in rest), [], time.time()
        for s in rest:  # least recently used first
            if total <= limit or (keep_recent and now - s.last_used < keep_recent):
                break
            if self._evict(s.path):
                removed_lru.append(s)
            total -= s.bytes  # gone either way: another process removed it first
        self._sweep_tmp()
        return PruneResult(Removed(len(removed_old), sum(s.bytes for s in removed_old)),
                           Removed(len(removed_lru), sum(s.bytes for s in removed_lru)),
                           Removed(len(rest) - len(removed_lru), total))

    def prune_now_and_then(self) -> PruneResult | None:
        """After a build: prune the least recently used entries past the size limit, at most
        once every AUTO_PRUNE_INTERVAL seconds per cache (a stamp file's time), sparing
        entries used within RECENT_USE (the working set of running processes). Entries of
        other code versions go only by age here: two convgen installs may share a cache.
        Never fails the build that called it."""
        stamp = self.root / PRUNE_STAMP
        try:
            if time.time() - stamp.stat().st_mtime < AUTO_PRUNE_INTERVAL:
                return None
        except FileNotFoundError:
            pass
        except OSError:
            return None
        try:
            stamp.touch()
            limit = config.cache_max_bytes()
            result = self.prune(limit, other_versions=False, keep_recent=RECENT_USE)
        except ValueError as exc:  # a malformed $CONVGEN_CACHE_MAX_BYTES
            log.warning("%s; the cache is not pruned", exc)
            return None
        except OSError:
            return None
        if result.least_recently_used.entries:
            log.info("cache pruned: %d least recently used entries (%d bytes) past the limit "
                     "of %d bytes", result.least_recently_used.entries,
                     result.least_recently_used.bytes, limit)
        return result

    def _evict(self, path: Path) -> bool:
        """Move an entry out of the way (atomically: lookups never see half of it), then
        delete it; False if it was already gone."""
        trash = self.root / "tmp" / f"evicted-{uuid.uuid4().hex}"
        try:
            trash.parent.mkdir(parents=True, exist_ok=True)
            os.rename(path, trash)
        except OSError:
            return False
        _remove(trash)
        return True

    def _sweep_tmp(self) -> None:
        """Delete what killed processes left in tmp/: entries moved aside, and anything
        older than STALE_TMP (a build in progress writes into its directory)."""
        now = time.time()
        for item in _files(self.root / "tmp"):
            try:
                stale = now - item.lstat().st_mtime > STALE_TMP
            except OSError:
                continue
            if stale or item.name.startswith(("evicted-", "damaged-")):
                _remove(item)


PRUNE_STAMP = "last-prune"  # in the cache root; its time: the last automatic prune
AUTO_PRUNE_INTERVAL = 600.0  # seconds between automatic prunes of one cache (a walk of it)
RECENT_USE = 3600.0  # an automatic prune keeps entries used this recently, even past the limit
STALE_TMP = 86400.0  # temporary files this old belong to no running build


@dataclass(frozen=True)
class EntryStats:
    """One cache entry as ``info`` and ``prune`` see it."""
    path: Path
    bytes: int
    last_used: float  # meta.json's time (seconds since the epoch): its build or latest hit
    code_version: str | None  # None: built by a convgen that did not record it, or damaged


@dataclass(frozen=True)
class CacheInfo:
    root: Path
    entries: int
    bytes: int
    other_version_entries: int  # built by other convgen code (or unreadable): never used
    other_version_bytes: int
    oldest_use: float | None  # last use of the least recently used entry (epoch seconds)
    newest_use: float | None
    failed_sources: int  # sources of failed builds kept under failed/


@dataclass(frozen=True)
class Removed:
    entries: int
    bytes: int
    failed_sources: int = 0


@dataclass(frozen=True)
class PruneResult:
    other_versions: Removed
    least_recently_used: Removed
    kept: Removed  # what is left: the entries kept and their bytes


def _describe(meta: dict | None, key: str) -> str:
    """An entry in log lines: its backend and symbol where the caller gave them, and key."""
    meta = meta or {}
    names = [str(meta[k]) for k in ("backend", "symbol") if k in meta]
    return " ".join([*names, f"(key {key[:16]})"])


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all (a failed write leaves no file)."""
    tmp = path.with_name(path.name + f".{uuid.uuid4().hex}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass  # the write's own error is the one to report
        raise


def _mark_used(path: Path) -> None:
    """Set the entry's last use (meta.json's time) to now; a read-only cache keeps its own."""
    try:
        os.utime(path / META)
    except OSError:
        pass


def _subdirs(path: Path) -> list[Path]:
    """The directories in ``path`` (not symbolic links to them); [] if it cannot be read."""
    try:
        with os.scandir(path) as found:
            return [Path(e.path) for e in found if e.is_dir(follow_symlinks=False)]
    except OSError:
        return []


def _files(path: Path) -> list[Path]:
    """Everything in the directory ``path``; [] if it is absent or unreadable."""
    try:
        return list(path.iterdir())
    except OSError:
        return []


def _entry_stats(path: Path, versions: bool) -> EntryStats | None:
    """The size, last use and (``versions``) code version of the entry at ``path``; None
    if another process removed it meanwhile."""
    size, used = 0, None
    try:
        with os.scandir(path) as files:
            for item in files:
                info = item.stat(follow_symlinks=False)
                size += info.st_size
                if item.name == META:
                    used = info.st_mtime
        if used is None:
            used = path.stat().st_mtime
    except OSError:
        return None
    version = None
    if versions:
        try:
            version = json.loads((path / META).read_text()).get("code_version")
        except (OSError, ValueError, AttributeError):
            pass
    return EntryStats(path, size, used, version if isinstance(version, str) else None)


def _remove(path: Path) -> None:
    """Delete a directory tree or a file, ignoring errors (another process may race)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except OSError:
            pass
