"""Spec files: convolutions (and optionally their schedules) written in TOML.

A spec file holds one ``[conv]`` table or an array of ``[[conv]]`` tables, each
with the :class:`~convgen.spec.ConvSpec` fields plus an optional ``name`` and an
optional ``[conv.schedule]`` table. A top-level ``[schedule]`` table is the
file-wide default; a per-conv schedule replaces it as a whole (fields are not
merged). Every problem raises :class:`SpecFileError` naming the file and the key
(``conv[2].stride``, 0-based as in Python; ``conv.stride`` for a single table).

    [schedule]                    # optional, file-wide
    tile_co = 8

    [[conv]]
    name = "resnet18_conv1"       # optional; default: spec.name, made unique
    input_shape = [1, 3, 224, 224]
    out_channels = 64
    kernel_size = 7
    stride = 2
    padding = 3
    bias = false
    activation = "relu"           # or ["leaky_relu", 0.1]
    [conv.schedule]               # optional, this conv only
    tile_co = 16
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from convgen.errors import ScheduleError, SpecError, SpecFileError
from convgen.schedule import GpuSchedule, Schedule
from convgen.spec import ConvSpec

NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
SPEC_KEYS = tuple(f.name for f in dataclasses.fields(ConvSpec))
CONV_KEYS = ("name", *SPEC_KEYS, "schedule")
TOP_LEVEL_KEYS = ("conv", "schedule")
SCHEDULE_KEYS = tuple(f.name for f in dataclasses.fields(Schedule) if f.init)
GPU_SCHEDULE_KEYS = tuple(f.name for f in dataclasses.fields(GpuSchedule) if f.init)


@dataclass(frozen=True)
class SpecEntry:
    """One convolution from a spec file: its unique name, spec and schedule (or None)."""

    name: str
    spec: ConvSpec
    schedule: Schedule | None
    path: str


def read_text_file(path: str, kind: str) -> str:
    """The UTF-8 text of a spec or network file; SpecFileError naming it otherwise."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise SpecFileError(path, "", None, f"no such {kind} file") from None
    except OSError as exc:
        raise SpecFileError(path, "", None,
                            f"cannot read the {kind} file: {exc.strerror or exc}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecFileError(path, "", None, f"not UTF-8 text: {exc}") from None


def load_specfile(path: str | os.PathLike) -> list[SpecEntry]:
    """Read and validate one spec file; raises SpecFileError naming the file and key."""
    path = os.fspath(path)
    return parse_specfile(read_text_file(path, "spec"), path)


def load_specfiles(paths: Iterable[str | os.PathLike], unique: bool = True) -> list[SpecEntry]:
    """Entries of several files, in order; with ``unique``, a name defined twice is an error."""
    entries: list[SpecEntry] = []
    seen: dict[str, SpecEntry] = {}
    for path in paths:
        for entry in load_specfile(path):
            if unique and entry.name in seen:
                raise SpecFileError(entry.path, "name", entry.name,
                                    f"is already defined in {seen[entry.name].path}; "
                                    "names must be unique across the spec files given")
            seen.setdefault(entry.name, entry)
            entries.append(entry)
    return entries


def parse_toml(text: str, path: str, top_level_keys: tuple[str, ...]) -> dict:
    """TOML text as a dict whose top-level keys are all allowed; SpecFileError otherwise."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecFileError(path, "", None, f"invalid TOML: {exc}") from None
    for key in data:
        if key not in top_level_keys:
            raise SpecFileError(path, key, data[key],
                                f"unknown top-level key{did_you_mean(key, top_level_keys)}; "
                                f"expected one of {list(top_level_keys)}")
    return data


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' (did you mean 'stride'?)' naming the choice closest to a misspelled ``word``, or ''
    when none is close."""
    close = difflib.get_close_matches(str(word), list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def parse_specfile(text: str, path: str = "<string>") -> list[SpecEntry]:
    """Parse spec-file text; ``path`` is only used in error messages and SpecEntry.path."""
    data = parse_toml(text, path, TOP_LEVEL_KEYS)

    default = None
    if "schedule" in data:
        default = _parse_schedule(path, "schedule", data["schedule"])

    tables = _conv_tables(path, data)
    entries = []
    for prefix, table in tables:
        spec, schedule, own_schedule = _parse_conv(path, prefix, table, default)
        name = table.get("name")
        entries.append((prefix, name, spec, schedule if own_schedule else default))

    names = _assign_names(path, entries)
    return [SpecEntry(name, spec, schedule, path)
            for name, (_, _, spec, schedule) in zip(names, entries)]


def _conv_tables(path: str, data: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """[(key prefix, table)] for ``[conv]`` (one table) or ``[[conv]]`` (an array)."""
    if "conv" not in data:
        raise SpecFileError(path, "conv", None,
                            "is required: the file defines no [[conv]] table")
    conv = data["conv"]
    if isinstance(conv, dict):
        return [("conv", conv)]
    if not isinstance(conv, list):
        raise SpecFileError(path, "conv", conv,
                            "must be a table ([conv]) or an array of tables ([[conv]])")
    if not conv:
        raise SpecFileError(path, "conv", conv, "must hold at least one convolution")
    tables = []
    for i, table in enumerate(conv):
        if not isinstance(table, dict):
            raise SpecFileError(path, f"conv[{i}]", table, "must be a table")
        tables.append((f"conv[{i}]", table))
    return tables


def _parse_conv(path: str, prefix: str, table: dict[str, Any],
                default: Schedule | None) -> tuple[ConvSpec, Schedule | None, bool]:
    """(spec, schedule, whether the conv has its own schedule) for one conv table."""
    for key in table:
        if key not in CONV_KEYS:
            raise SpecFileError(path, f"{prefix}.{key}", table[key],
                                f"unknown key{did_you_mean(key, CONV_KEYS)}; "
                                f"expected one of {list(CONV_KEYS)}")
    name = table.get("name")
    if name is not None:
        if not isinstance(name, str):
            raise SpecFileError(path, f"{prefix}.name", name, "must be a string")
        if not NAME_PATTERN.fullmatch(name):
            raise SpecFileError(path, f"{prefix}.name", name,
                                "must match [A-Za-z_][A-Za-z0-9_]* "
                                "(names become file names and C symbols)")

    fields = {k: v for k, v in table.items() if k in SPEC_KEYS}
    try:
        spec = ConvSpec.from_dict(fields)
    except SpecError as exc:
        raise SpecFileError(path, f"{prefix}.{exc.field}", exc.value, exc.rule) from None
    except TypeError as exc:  # a type the dataclass did not anticipate
        raise SpecFileError(path, prefix, None, f"invalid convolution: {exc}") from None

    if "schedule" in table:
        schedule = _parse_schedule(path, f"{prefix}.schedule", table["schedule"], spec)
        return spec, schedule, True
    if default is not None:
        try:
            default.resolve(spec)
        except ScheduleError as exc:
            raise SpecFileError(path, f"schedule.{exc.field}", exc.value,
                                f"{exc.rule} (the file-wide schedule applied to {prefix})") \
                from None
    return spec, default, False


def _parse_schedule(path: str, key: str, table: Any, spec: ConvSpec | None = None) -> Schedule:
    """A Schedule from a TOML table, checked against ``spec`` when given."""
    if not isinstance(table, dict):
        raise SpecFileError(path, key, table, "must be a table of schedule fields")
    try:
        schedule = Schedule.from_dict(table)
        if spec is not None:
            schedule.resolve(spec)
    except ScheduleError as exc:
        raise SpecFileError(path, f"{key}.{exc.field}", exc.value,
                            exc.rule + _schedule_hint(exc.field, table)) from None
    except TypeError as exc:
        raise SpecFileError(path, key, table, f"invalid schedule: {exc}") from None
    return schedule


def _schedule_hint(field: str, table: dict[str, Any]) -> str:
    """A did-you-mean for a schedule key that is not a field ('' for any other error)."""
    *parents, name = field.split(".")
    known = GPU_SCHEDULE_KEYS if parents == ["gpu"] else SCHEDULE_KEYS
    inner = table.get("gpu") if parents == ["gpu"] else table
    if not isinstance(inner, dict) or name not in inner or name in known:
        return ""
    return did_you_mean(name, known)


def _assign_names(path: str, entries: list[tuple[str, str | None, ConvSpec, Any]]) -> list[str]:
    """Explicit names must be unique; missing ones default to spec.name, suffixed _2, _3..."""
    explicit: dict[str, str] = {}
    for prefix, name, _, _ in entries:
        if name is None:
            continue
        if name in explicit:
            raise SpecFileError(path, f"{prefix}.name", name,
                                f"is already used by {explicit[name]}; names must be unique")
        explicit[name] = prefix
    taken = set(explicit)
    names = []
    for _, name, spec, _ in entries:
        if name is None:
            name = spec.name
            n = 2
            while name in taken:
                name = f"{spec.name}_{n}"
                n += 1
            taken.add(name)
        names.append(name)
    return names
