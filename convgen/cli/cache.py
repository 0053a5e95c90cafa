"""``convgen cache info|clear|prune``: the kernel cache seen and undone (wired into
convgen.cli.main)."""

from __future__ import annotations

import argparse
import datetime
import time

from convgen import config
from convgen.cache import AUTO_PRUNE_INTERVAL, RECENT_USE, Cache


def add_cache_command(subparsers) -> None:
    """Add ``cache info``, ``cache clear`` and ``cache prune [--max-bytes SIZE]``."""
    p = subparsers.add_parser(
        "cache", help="show, clear or prune the compiled-kernel cache",
        description="The compiled-kernel cache ($CONVGEN_CACHE_DIR, default "
                    "$XDG_CACHE_HOME/convgen or ~/.cache/convgen). Tuning records are not "
                    "part of it: see convgen tune --list/--forget.")
    actions = p.add_subparsers(title="actions", dest="action", metavar="ACTION")
    actions.required = True
    a = actions.add_parser(
        "info", help="entries, size, last uses, entries of other convgen versions",
        description="Print the cache's entries and size, how many were built by other "
                    "convgen code versions (never used again), and the least and most "
                    "recent use.")
    a.set_defaults(run=run_info)
    a = actions.add_parser(
        "clear", help="remove every entry",
        description="Remove every compiled kernel and the kept sources of failed builds; "
                    "the tuning database stays. Kernels are rebuilt when next needed.")
    a.set_defaults(run=run_clear)
    a = actions.add_parser(
        "prune", help="remove other versions' entries, then the least recently used past "
                      "a size limit",
        description="Remove the entries of other convgen code versions, then the least "
                    "recently used entries until the cache fits in the size limit "
                    "($CONVGEN_CACHE_MAX_BYTES, default 2 GiB). Builds also prune the "
                    f"least recently used entries past the limit, at most every "
                    f"{AUTO_PRUNE_INTERVAL / 60:.0f} minutes, sparing those used in the "
                    f"last {RECENT_USE / 3600:.0f} hour.")
    a.add_argument("--max-bytes", type=_size, default=None, metavar="SIZE",
                   help="the size limit, in bytes or with a K, M, G or T suffix (powers of "
                        "1024), e.g. 500M; 0 removes every entry (default: "
                        "$CONVGEN_CACHE_MAX_BYTES, else 2G)")
    a.set_defaults(run=run_prune)


def _size(text: str) -> int:
    try:
        return config.parse_bytes(text, "--max-bytes")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--max-bytes: ")) from None


def run_info(args: argparse.Namespace) -> int:
    cache = Cache()
    info = cache.info()
    current = info.entries - info.other_version_entries
    lines = [("cache", str(info.root)),
             ("entries", f"{info.entries} ({human_bytes(info.bytes)})"),
             ("  this version", f"{current} "
                                f"({human_bytes(info.bytes - info.other_version_bytes)})"),
             ("  other versions", f"{info.other_version_entries} "
                                  f"({human_bytes(info.other_version_bytes)})"
                                  + ("; convgen cache prune removes them"
                                     if info.other_version_entries else "")),
             ("least recent use", _when(info.oldest_use)),
             ("most recent use", _when(info.newest_use)),
             ("size limit", f"{human_bytes(config.cache_max_bytes())} "
                            "($CONVGEN_CACHE_MAX_BYTES)")]
    if info.failed_sources:
        lines.append(("failed builds", f"{info.failed_sources} sources kept in "
                                       f"{info.root / 'failed'}"))
    width = max(len(name) for name, _ in lines)
    for name, value in lines:
        print(f"{name:<{width}}  {value}")
    return 0


def run_clear(args: argparse.Namespace) -> int:
    cache = Cache()
    removed = cache.clear()
    failed = (f" and {plural(removed.failed_sources, 'kept source')} of failed builds"
              if removed.failed_sources else "")
    print(f"removed {plural(removed.entries, 'entry', 'entries')} "
          f"({human_bytes(removed.bytes)}){failed} from {cache.root}")
    return 0


def run_prune(args: argparse.Namespace) -> int:
    cache = Cache()
    limit = args.max_bytes if args.max_bytes is not None else config.cache_max_bytes()
    result = cache.prune(limit)
    old, lru, kept = result.other_versions, result.least_recently_used, result.kept
    print(f"removed {plural(old.entries, 'entry', 'entries')} of other convgen versions "
          f"({human_bytes(old.bytes)}) and {lru.entries} least recently used "
          f"({human_bytes(lru.bytes)}) from {cache.root}")
    print(f"kept {plural(kept.entries, 'entry', 'entries')} ({human_bytes(kept.bytes)}; "
          f"limit {human_bytes(limit)})")
    return 0


def plural(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one}" if n == 1 else f"{n} {many or one + 's'}"


def human_bytes(n: int) -> str:
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n} B"


def _when(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    stamp = datetime.datetime.fromtimestamp(seconds).strftime("%Y-%m-%d %H:%M")
    return f"{stamp} ({_ago(time.time() - seconds)})"


def _ago(seconds: float) -> str:
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= 2 * size:
            return f"{seconds // size:.0f} {unit} ago"
    return "just now" if seconds < 60 else "a minute ago"
