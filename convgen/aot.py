"""Ahead of time: compile a set of specs into a directory, load it back later.

``compile_to`` writes, per kernel, its source and shared library, plus a
``manifest.json`` (written last) with each kernel's spec, schedule, symbol,
prototype and the library's sha256. ``load`` needs neither a compiler nor the
templates: it checks the hashes, rebuilds the specs from the manifest and
dlopens the libraries.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Iterable, Mapping

from .backends import build_artifact, kernel_from_artifact, Artifact
from .cache import file_sha256
from .errors import ConvgenError
from .kernel import Kernel
from .schedule import Schedule
from .spec import ConvSpec
from .version import __version__

MANIFEST = "manifest.json"
FORMAT = 1
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def _entries(specs) -> list[tuple[str, ConvSpec, Schedule | None]]:
    """Normalize the accepted forms to (name, spec, schedule) triples."""
    items: Iterable
    if isinstance(specs, ConvSpec):
        specs = [specs]
    if isinstance(specs, Mapping):
        items = [(name, *(value if isinstance(value, tuple) else (value,)))
                 for name, value in specs.items()]
    else:
        items = specs
    out = []
    for item in items:
        if isinstance(item, ConvSpec):
            name, spec, schedule = item.name, item, None
        elif isinstance(item, tuple) and len(item) in (2, 3):
            name, spec, schedule = (*item, None)[:3]
        else:
            raise TypeError("specs: expected ConvSpec items or (name, spec[, schedule]) "
                            f"tuples, got {item!r}")
        if not isinstance(spec, ConvSpec):
            raise TypeError(f"specs: expected a ConvSpec for {name!r}, got {type(spec).__name__}")
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(f"specs: kernel names must match [A-Za-z_][A-Za-z0-9_]*, "
                             f"got {name!r}")
        out.append((name, spec, schedule))
    names = [name for name, _, _ in out]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"specs: duplicate kernel names {duplicates}")
    return out


def compile_to(specs, out_dir: str | os.PathLike, backend: str = "c") -> Path:
    """Compile every spec into ``out_dir``; returns the manifest's path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for name, spec, schedule in _entries(specs):
        plan, artifact = build_artifact(spec, backend, schedule)
        library = f"{name}.so"
        source = f"{name}.c"
        (out / source).write_text(artifact.source)
        tmp = out / (library + ".tmp")
        shutil.copyfile(artifact.library, tmp)
        os.replace(tmp, out / library)
        records.append({
            "name": name,
            "backend": backend,
            "symbol": artifact.symbol,
            "cdef": artifact.cdef,
            "spec": spec.to_dict(),
            "schedule": plan.schedule.to_dict(),
            "source": source,
            "library": library,
            "sha256": file_sha256(out / library),
        })
    manifest = {"format": FORMAT, "convgen": __version__, "kernels": records}
    path = out / MANIFEST
    tmp = out / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp, path)
    return path


def load(directory: str | os.PathLike) -> dict[str, Kernel]:
    """The kernels written by :func:`compile_to`, by name, in manifest order."""
    root = Path(directory)
    path = root / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"no {MANIFEST} in {root} (write one with convgen.compile_to)")
    except ValueError as exc:
        raise ConvgenError(f"{path}: not a valid manifest: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ConvgenError(f"{path}: unsupported manifest format {manifest.get('format')!r}"
                           if isinstance(manifest, dict) else f"{path}: not a manifest")
    if not isinstance(manifest.get("kernels"), list):
        raise ConvgenError(f"{path}: manifest has no 'kernels' list")
    kernels: dict[str, Kernel] = {}
    for record in manifest["kernels"]:
        library = root / record["library"]
        if not library.is_file() or file_sha256(library) != record["sha256"]:
            raise ConvgenError(f"{library}: missing or does not match the manifest's sha256; "
                               "recompile with convgen.compile_to")
        spec = ConvSpec.from_dict(record["spec"])
        schedule = Schedule.from_dict(record["schedule"])
        source_path = root / record["source"]
        source = source_path.read_text() if source_path.is_file() else ""
        artifact = Artifact(library.resolve(), record["symbol"], record["cdef"], source)
        kernels[record["name"]] = kernel_from_artifact(spec, schedule, record["backend"],
                                                       artifact)
    return kernels
