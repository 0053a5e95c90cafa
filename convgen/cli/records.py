"""``convgen tune --list|--forget|--export|--import``: the tuning database seen and undone
(options of the tune command, added by convgen.cli.tune)."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import sys
from collections import Counter
from collections.abc import Callable

from convgen import config
from convgen.cli.args import UsageError
from convgen.errors import ScheduleError
from convgen.records import (RecordSummary, export_records, forget_records, import_records,
                             list_records, select_specs, spec_id)
from convgen.schedule import Schedule
from convgen.tuning.tuner import _ms, describe

# identity fields (convgen.records.IDENTITY) as the "this machine" column names them
MISMATCH_WORDS = {"cpu": "CPU", "cores": "core count", "compiler": "compiler",
                  "convgen": "convgen version", "gpu": "GPU", "gpu_arch": "GPU architecture",
                  "gpu_sms": "GPU multiprocessor count"}


def add_record_options(parser: argparse.ArgumentParser) -> None:
    """--list, --forget SPEC|--all, --export FILE and --import FILE on ``parser`` (tune)."""
    group = parser.add_argument_group(
        "tuning records", "Instead of tuning, show or edit the tuning database "
        "($CONVGEN_TUNING_DB). A SPECFILE|NETSPEC given with --list or --export narrows "
        "them to its convolutions.")
    actions = group.add_mutually_exclusive_group()
    actions.add_argument("--list", action="store_true",
                         help="print one row per spec, backend, weights mode, thread count and "
                              "machine: the fastest checked schedule, when it was measured, "
                              "the hardware measured on, and whether compile uses it here "
                              "(same CPU and core count, GPU for cuda, compiler and convgen "
                              "version)")
    actions.add_argument("--forget", nargs="?", const="", metavar="SPEC",
                         help="remove the records of SPEC (a spec or network file, or a spec "
                              "name or id as --list prints them), or with --all every record")
    group.add_argument("--all", action="store_true", help="with --forget: every record")
    actions.add_argument("--export", metavar="FILE",
                         help="write the records to FILE (JSON lines)")
    actions.add_argument("--import", dest="import_file", metavar="FILE",
                         help="append the records of FILE (JSON lines) to the database: each "
                              "line is checked, bad ones are reported and skipped (exit "
                              "status 1), duplicates skipped")


FileSpecs = Callable[[str], dict[str, str]]  # a spec or network file -> {spec key: name}


def run_records(args: argparse.Namespace, file_specs: FileSpecs) -> int | None:
    """The exit status of the records option given, or None when there is none (tune);
    UsageError for a combination that means nothing."""
    forget = args.forget
    if args.all and forget is None:
        raise UsageError("--all goes with --forget: convgen tune --forget --all")
    if forget == "" and args.specfile is not None:  # `tune FILE --forget`
        forget, args.specfile = args.specfile, None
    if args.list:
        return list_command(file_specs(args.specfile) if args.specfile is not None else None,
                            args.specfile)
    if forget is not None:
        if args.specfile is not None:
            raise UsageError("--forget takes one SPEC")
        if forget and args.all:
            raise UsageError("--forget takes a SPEC or --all, not both")
        if not forget and not args.all:
            raise UsageError("--forget needs a SPEC (a spec or network file, or a spec name "
                             "or id as --list prints them) or --all")
        if args.all:
            return forget_command(None, "every record")
        if os.path.isfile(forget):
            return forget_command(set(file_specs(forget)), f"the convolutions in {forget}")
        return forget_command(select_specs(forget), repr(forget))
    if args.export is not None:
        return export_command(args.export, file_specs(args.specfile)
                              if args.specfile is not None else None, args.specfile)
    if args.import_file is not None:
        if args.specfile is not None:
            raise UsageError("--import takes no SPECFILE|NETSPEC: it imports every line")
        return import_command(args.import_file)
    if args.specfile is None:
        raise UsageError("tune needs a SPECFILE|NETSPEC to tune, or one of --list, --forget, "
                         "--export, --import")
    return None


def list_command(names: dict[str, str] | None, specfile: str | None) -> int:
    """``names``: the spec file's (spec key -> name), when one narrows the list."""
    summaries = list_records(spec_keys=names)
    where = _db()
    if not summaries:
        what = f" of the convolutions in {specfile}" if specfile is not None else ""
        print(f"no tuning records{what} in {where}")
        return 0
    print(records_table(summaries, names or {}))
    usable = sum(not s.mismatches for s in summaries)
    print(f"{plural(len(summaries), 'row')} "
          f"({plural(sum(s.measurements for s in summaries), 'measurement')}) in {where}; "
          f"{usable} usable here; convgen tune --forget SPEC removes a spec's records")
    return 0


def records_table(summaries: list[RecordSummary], names: dict[str, str] | None = None) -> str:
    """The --list table; ``names``: spec key -> the name a spec file gives it."""
    names = names or {}
    rows = [("spec", "id", "backend", "weights", "threads", "best schedule", "ms", "measured",
             "n", "hardware", "this machine")]
    for s in summaries:
        rows.append((names.get(s.spec_key, s.spec_name), s.spec_id, s.backend,
                     "bound" if s.bound else "call", "-" if s.threads is None else str(s.threads),
                     _schedule_text(s.schedule), "-" if s.seconds is None else _ms(s.seconds),
                     _when(s.timestamp), str(s.measurements), hardware_text(s.machine),
                     _usable(s)))
    right = {4, 6, 8}
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) if i in right else c.ljust(w)
                       for i, (c, w) in enumerate(zip(row, widths))).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def hardware_text(machine: dict) -> str:
    """A record's hardware in a few words: "AMD EPYC 7B13 x2" (CPU model, usable cores),
    a GPU backend's GPU before it: "NVIDIA H100 80GB HBM3 sm_90/132SM on ..."; "?" for
    what the record does not say. The CPU flags are left out: the "this machine" column
    says when they differ."""
    model = str(machine.get("cpu") or "?|?").split("|")
    model = model[1] if len(model) > 1 else model[0]
    # "Intel(R) Xeon(R) Platinum 8480+ CPU @ 2.00GHz" -> "Intel Xeon Platinum 8480+"
    model = re.sub(r"\((R|TM|r|tm)\)|\bCPU\b|\bProcessor\b|@.*$|\b\d+-Core\b", " ", model)
    cores = machine.get("cores")
    text = f"{' '.join(model.split()) or '?'} x{cores if cores is not None else '?'}"
    if "gpu" not in machine:
        return text
    gpu, arch, sms = (machine.get(name) for name in ("gpu", "gpu_arch", "gpu_sms"))
    if gpu == "emulator":
        return f"emulator on {text}"
    return f"{gpu or '?'} {arch or '?'}/{sms if sms is not None else '?'}SM on {text}"


def _usable(summary: RecordSummary) -> str:
    """The "this machine" cell: yes, or which identity fields differ or were not recorded."""
    if not summary.mismatches:
        return "yes"
    other = [MISMATCH_WORDS.get(m, m) for m in summary.mismatches
             if summary.machine.get(m) is not None]
    missing = [MISMATCH_WORDS.get(m, m) for m in summary.mismatches
               if summary.machine.get(m) is None]
    parts = (["other " + ", ".join(other)] if other else []) \
        + ([", ".join(missing) + " not recorded"] if missing else [])
    return "no: " + "; ".join(parts)


def forget_command(keys: set[str] | None, what: str) -> int:
    """Forget the records of spec ``keys`` (None: every line), described as ``what``."""
    where = _db()
    result = forget_records(keys)
    if keys is None:
        extra = f" and {plural(result.unreadable, 'unreadable line')}" \
            if result.unreadable else ""
        print(f"removed every record ({plural(len(result.records), 'record')}{extra}) from "
              f"{where}")
        return 0
    if not result.records:
        print(f"no records of {what} in {where}")
        return 0
    print(f"removed {plural(len(result.records), 'record')} of {what} from {where}:")
    counts = Counter((r.get("spec_name", "?"), r["spec_key"], r.get("backend", "?"))
                     for r in result.records)
    for (name, key, backend), count in sorted(counts.items()):
        print(f"  {name} (id {spec_id(key)}) {backend}: {count}")
    return 0


def export_command(file: str, names: dict[str, str] | None, specfile: str | None) -> int:
    count = export_records(file, spec_keys=names)
    what = f" of the convolutions in {specfile}" if specfile is not None else ""
    print(f"exported {plural(count, 'record')}{what} from {_db()} to {file}")
    return 0


def import_command(file: str) -> int:
    result = import_records(file)
    for number, problem in result.bad:
        print(f"{file}:{number}: skipped: {problem}", file=sys.stderr)
    skipped = [what for n, what in ((result.duplicates, f"{result.duplicates} already there"),
                                    (result.bad, f"{plural(len(result.bad), 'bad line')} "
                                                 "skipped")) if n]
    print(f"imported {plural(result.added, 'record')} from {file} into {_db()}"
          + (f" ({', '.join(skipped)})" if skipped else ""))
    return 1 if result.bad else 0


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _schedule_text(data: dict | None) -> str:
    if data is None:
        return "- (none checked)"
    try:
        return describe(Schedule.from_dict(data))
    except (ScheduleError, TypeError, ValueError):
        return json.dumps(data, sort_keys=True, separators=(",", ":"))


def _when(timestamp: str) -> str:
    """A record's ISO time as local minutes: 2025-01-31 14:05."""
    try:
        return datetime.datetime.fromisoformat(timestamp).astimezone().strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return timestamp[:16] or "-"


def _db() -> str:
    return str(config.tuning_db())
