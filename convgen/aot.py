"""Ahead of time: compile a set of specs into a directory, load it back later.

``compile_to`` writes, per kernel, its source and its binary, plus a
``manifest.json`` (written last) with each kernel's backend, spec, schedule,
symbol, prototype and the binary's sha256. The C backend's binary is a shared
library (dlopen); the LLVM backend's is the optimized object file, which
``load`` adds to an MCJIT engine, so neither needs a compiler, a linker or the
templates at load time.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Iterable, Mapping

from convgen.backends import BACKENDS, Artifact, get_backend, resolve_backend
from convgen.compiler import build_artifact, choose_schedule, kernel_from_artifact
from convgen.cache import file_sha256
from convgen.errors import ConvgenError
from convgen.kernel import Kernel
from convgen.schedule import Schedule
from convgen.spec import ConvSpec
from convgen.version import __version__

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


def compile_to(specs, out_dir: str | os.PathLike, backend: str | None = None) -> Path:
    """Compile every spec into ``out_dir``; returns the manifest's path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for name, spec, schedule in _entries(specs):
        if schedule is None:  # as cg.compile: the best tuning record, else the default
            schedule, _ = choose_schedule(spec, resolve_backend(backend))
        plan, artifact, backend_name = build_artifact(spec, backend, schedule)
        library = name + get_backend(backend_name).artifact_suffix
        source = name + get_backend(backend_name).source_suffix
        (out / source).write_text(artifact.source)
        tmp = out / (library + ".tmp")
        shutil.copyfile(artifact.path, tmp)
        os.replace(tmp, out / library)
        records.append({
            "name": name,
            "backend": backend_name,
            "symbol": artifact.symbol,
            "cdef": artifact.cdef,
            "pointer_type": artifact.pointer_type,
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
        if record.get("backend") not in BACKENDS:
            raise ConvgenError(f"{path}: unknown backend {record.get('backend')!r} for "
                               f"{record['name']!r}")
        source_path = root / record["source"]
        source = source_path.read_text() if source_path.is_file() else ""
        artifact = Artifact(library.resolve(), record["symbol"], record["cdef"],
                            record["pointer_type"], source, record["sha256"])  # verified above
        # constants only: no compiler, no templates
        plan = get_backend(record["backend"]).plan(spec, schedule)
        kernels[record["name"]] = kernel_from_artifact(spec, plan, record["backend"], artifact)
    return kernels
