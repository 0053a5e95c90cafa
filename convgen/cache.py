"""A content-addressed, inspectable cache of compiled kernels.

One plain directory per entry, ``<root>/<key[:2]>/<key>/``, holding the source,
the shared library and ``meta.json``. An entry is built in a private temporary
directory (metadata written last) and renamed into place, so readers never see a
half-written entry and concurrent builders of the same key end with one good
entry. An entry whose metadata is missing or whose files do not match their
recorded hashes is treated as damaged: it is moved aside and rebuilt.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from convgen import config
from convgen.version import __version__

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
            "functional.py", "__main__.py")


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


def make_key(**parts: object) -> str:
    """sha256 of the canonical JSON of everything that shapes a compiled artifact."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class CacheEntry:
    path: Path
    meta: dict

    def file(self, role: str) -> Path:
        """The file recorded under ``role`` ("source", "library", ...)."""
        return self.path / self.meta["files"][role]["name"]

    def sha256(self, role: str) -> str:
        """The recorded (and, by lookup, verified) sha256 of the file under ``role``."""
        return self.meta["files"][role]["sha256"]


class Cache:
    """The kernel cache rooted at ``root`` (default: config.cache_dir())."""

    def __init__(self, root: Path | str | None = None):
        self.root = Path(root) if root is not None else config.cache_dir()

    def entry_path(self, key: str) -> Path:
        return self.root / key[:2] / key

    def lookup(self, key: str) -> CacheEntry | None:
        """The valid entry for ``key``, or None; a damaged entry is removed."""
        path = self.entry_path(key)
        if not path.exists():
            return None
        entry = self._validate(path, key)
        if entry is None:
            self._discard(path)
        return entry

    def get_or_build(self, key: str, build: Callable[[Path], dict[str, str]],
                     extra_meta: dict | None = None) -> CacheEntry:
        """Return the entry for ``key``, building it with ``build(tmpdir)`` on a miss.

        ``build`` writes its files into the temporary directory it is given and
        returns {role: file name}; hashes and ``meta.json`` are added here.
        """
        entry = self.lookup(key)
        if entry is not None:
            return entry
        tmp_root = self.root / "tmp"
        tmp_root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=key[:16] + "-", dir=tmp_root))
        try:
            files = build(tmp)
            meta = {
                "key": key,
                "convgen": __version__,
                "files": {role: {"name": name, "sha256": file_sha256(tmp / name)}
                          for role, name in files.items()},
                **(extra_meta or {}),
            }
            _write_atomic(tmp / META, json.dumps(meta, indent=2, sort_keys=True))
            final = self.entry_path(key)
            final.parent.mkdir(parents=True, exist_ok=True)
            for _ in range(3):
                try:
                    os.rename(tmp, final)
                    return CacheEntry(final, meta)
                except OSError:
                    # Another process got there first: use its entry if it is good.
                    existing = self.lookup(key)
                    if existing is not None:
                        return existing
            raise OSError(f"could not install cache entry {final}")
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def _validate(self, path: Path, key: str) -> CacheEntry | None:
        try:
            meta = json.loads((path / META).read_text())
            if meta.get("key") != key:
                return None
            for record in meta["files"].values():
                if file_sha256(path / record["name"]) != record["sha256"]:
                    return None
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None
        return CacheEntry(path, meta)

    def _discard(self, path: Path) -> None:
        """Move a damaged entry out of the way (atomically), then delete it."""
        trash = self.root / "tmp" / f"damaged-{uuid.uuid4().hex}"
        trash.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(path, trash)
        except OSError:
            return  # someone else already moved or replaced it
        shutil.rmtree(trash, ignore_errors=True)

    def keep_failed(self, error, file_name: str, source: str):
        """Save the source a failed build was given under <root>/failed and point
        ``error`` (a CompileError) at it, so the user can read what did not compile."""
        failed = self.root / "failed" / file_name
        failed.parent.mkdir(parents=True, exist_ok=True)
        failed.write_text(source)
        error.source_path = str(failed)
        error.args = (error.message, error.command, error.returncode, error.stderr, str(failed))
        return error

    def clear(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".{uuid.uuid4().hex}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
