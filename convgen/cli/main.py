"""The ``convgen`` command line: compile, show, check and explain spec files; run networks.

Every command takes one or more TOML spec files (see :mod:`convgen.specfile`), except
``run``, which takes a network file (see :mod:`convgen.graph.netspec`) or an ONNX model.
Exit codes: 0 success, 1 a ``check`` outside tolerance, 2 a usage, spec or
compile error, or a missing optional package (printed as ``convgen: error: ...``, with
the ``pip install`` that adds it; never a traceback).

``-v`` (INFO: compiler command lines and times, cache hits and misses, the tuning record
used), ``-vv`` (DEBUG) and ``-q`` (no progress, no log record below ERROR) go before or
after the command; :func:`main` alone sets up logging, for the command's duration.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

import convgen as cg

from convgen.backends import BACKENDS, get_backend, resolve_backend
from convgen.backends.cuda.build import ptxas_report_lines
from convgen.compiler import choose_schedule, complete_schedule
from convgen.plan.winograd import WinogradPlan
from convgen.cli.args import UsageError, add_threads_argument, shape_text
from convgen.cli.run import add_run_command
from convgen.cli.tune import add_tune_command
from convgen.bench.measure import warm_up
from convgen.cli.bench import add_bench_command
from convgen.cli.cache import add_cache_command
from convgen.errors import CompileError, ConvgenError
from convgen.graph.reference import check_oracle_memory, conv_oracle_bytes
from convgen.log import console_logging
from convgen.reference import random_arrays
from convgen.schedule import Schedule
from convgen.spec import ConvSpec
from convgen.specfile import SpecEntry, load_specfile, load_specfiles
from convgen.tolerance import max_error, tolerance

PROG = "convgen"
TIMING_REPEATS = 5  # `check`: calls timed per kernel
# optional packages (top-level module -> the extra in pyproject.toml that installs it)
EXTRAS = {"onnx": "onnx", "onnxruntime": "ort", "matplotlib": "plot", "torch": "torch"}
# -q, (none), -v, -vv
LOG_LEVELS = {-1: logging.ERROR, 0: logging.WARNING, 1: logging.INFO, 2: logging.DEBUG}


# -- entry point -------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (argparse's --help and usage errors too)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        args.verbosity = _verbosity(parser, args)
    except SystemExit as exc:  # --help (0) or a usage error (2): report, don't exit
        return _exit_code(exc)
    with console_logging(LOG_LEVELS[args.verbosity]):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    try:
        if "backend" in args and args.command != "explain":  # explain compiles nothing
            args.backend = resolve_backend(args.backend)
        return args.run(args)
    except BrokenPipeError:  # e.g. `convgen show ... | head`: stop quietly
        _silence_stdout()
        return 0
    except (ConvgenError, OSError, ValueError) as exc:
        print(f"{PROG}: error: {_message(exc)}", file=sys.stderr)
        return 2
    except ImportError as exc:
        hint = missing_package_message(exc, args.command)
        if hint is None:  # convgen's own module: a bug, whose traceback is wanted
            raise
        print(f"{PROG}: error: {hint}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


def missing_package_message(exc: ImportError, command: str) -> str | None:
    """One line naming the package an ImportError lacks and the ``pip install`` that adds
    it; None when it is convgen's own module or names none. The module is looked for in
    the exception and in what it was raised from (a wrapper such as from_onnx's)."""
    seen: ImportError | BaseException | None = exc
    name = None
    while seen is not None and name is None:
        name = getattr(seen, "name", None)
        seen = seen.__cause__ or seen.__context__
    top = (name or "").split(".")[0]
    if not top or top == "convgen":
        return None
    if top in EXTRAS:
        return (f"the optional package {top} is not installed ({PROG} {command} needs it "
                f"here): pip install 'convgen[{EXTRAS[top]}]'")
    return f"the package {top} is missing or broken ({exc}): pip install {top}"


def _verbosity(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """-1 (-q), 0, 1 (-v) or 2 (-vv or more), from the options before and after the command."""
    verbose = args.verbose + getattr(args, "command_verbose", 0)
    quiet = args.quiet or getattr(args, "command_quiet", False)
    if quiet and verbose:
        parser.error("-q/--quiet and -v/--verbose contradict each other")
    return -1 if quiet else min(verbose, 2)


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def _exit_code(exc: SystemExit) -> int:
    if exc.code is None:
        return 0
    return exc.code if isinstance(exc.code, int) else 2


def _message(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror or exc}"
    return str(exc)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Generate, compile and check specialized convolution kernels "
                    "from TOML spec files.",
        epilog="Run 'convgen COMMAND --help' for a command's options.")
    parser.add_argument("--version", action="version",
                        version=f"{PROG} {getattr(cg, '__version__', 'unknown')}")
    commands = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND")
    commands.required = True

    backend = argparse.ArgumentParser(add_help=False)
    backend.add_argument("--backend", choices=tuple(cg.BACKENDS), default=None,
                         help="code generator and compiler to use (default: c, or llvm when "
                              "no C compiler is installed)")

    p = commands.add_parser(
        "compile", parents=[backend], help="compile spec files ahead of time into a directory",
        description="Compile every convolution in the spec files into DIR: sources, shared "
                    "libraries and a manifest that convgen.load(DIR) reads without a compiler.")
    p.add_argument("specfiles", nargs="+", metavar="SPECFILE", help="TOML spec file(s)")
    p.add_argument("-o", "--output", required=True, metavar="DIR",
                   help="output directory (created if missing)")
    add_threads_argument(p)
    p.set_defaults(run=run_compile)

    p = commands.add_parser(
        "show", parents=[backend], help="print the generated source",
        description="Print the generated source of each convolution in SPECFILE "
                    "(or only the one named by --name).")
    p.add_argument("specfile", metavar="SPECFILE", help="TOML spec file")
    p.add_argument("--name", help="only this convolution")
    add_threads_argument(p)
    p.set_defaults(run=run_show)

    p = commands.add_parser(
        "check", parents=[backend], help="compile, run and compare with the NumPy oracle",
        description="Compile each convolution, run it on seeded random data in [-1, 1], "
                    "compare with convgen.reference and time it. Exits 1 when any "
                    "result is outside tolerance.")
    p.add_argument("specfiles", nargs="+", metavar="SPECFILE", help="TOML spec file(s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    add_threads_argument(p)
    p.set_defaults(run=run_check)

    p = commands.add_parser(
        "explain", parents=[backend], help="show shapes, size arithmetic, cost and schedule",
        description="Explain each convolution in SPECFILE: its fields, shapes, the output-size "
                    "arithmetic per spatial dim, FLOPs, bytes, arithmetic intensity and the "
                    "schedule used. Needs no compiler.")
    p.add_argument("specfile", metavar="SPECFILE", help="TOML spec file")
    p.add_argument("--name", help="only this convolution")
    add_threads_argument(p)
    p.set_defaults(run=run_explain)

    add_run_command(commands, [backend])
    add_tune_command(commands, [backend])
    add_bench_command(commands, [backend])
    add_cache_command(commands)
    add_verbosity_options(parser)
    return parser


def add_verbosity_options(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    """-v/--verbose and -q/--quiet on ``parser`` and on every (sub)command below it, so that
    they go before or after the command; a command's own ``-v`` or ``-q`` wins."""
    taken = parser._option_string_actions
    if "-v" not in taken and "--verbose" not in taken:
        parser.add_argument("-v", "--verbose", action="count", default=0,
                            dest=prefix + "verbose",
                            help="say more on stderr: -v compiler command lines and times, "
                                 "cache hits and misses, the tuning record used; -vv debug")
    if "-q" not in taken and "--quiet" not in taken:
        parser.add_argument("-q", "--quiet", action="store_true", dest=prefix + "quiet",
                            help="no progress bars and no log messages below errors (results "
                                 "still go to stdout)")
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command in dict.fromkeys(action.choices.values()):  # aliases: once
                add_verbosity_options(command, "command_")


# -- commands ----------------------------------------------------------------------------

def run_compile(args: argparse.Namespace) -> int:
    entries = load_specfiles(args.specfiles, unique=True)
    items = [(e.name, e.spec, _schedule(e, args.backend, args.threads)) for e in entries]
    manifest = cg.compile_to(items, args.output, backend=args.backend)
    files = _manifest_files(manifest)
    width = max(len(e.name) for e in entries)
    for e in entries:
        written = "  ".join(files.get(e.name, ()))
        print(f"  {e.name:<{width}}  {shape_text(e.spec.output_shape):<14}  {written}".rstrip())
    print(f"compiled {len(entries)} kernel{'s' if len(entries) != 1 else ''} "
          f"({args.backend}) into {args.output}")
    print(f"manifest: {manifest}")
    return 0


def _manifest_files(manifest: os.PathLike) -> dict[str, tuple[str, ...]]:
    """name -> the files compile_to wrote for it (source, library), read from the manifest."""
    try:
        records = json.loads(Path(manifest).read_text()).get("kernels", [])
        return {r["name"]: tuple(r[k] for k in ("source", "library") if k in r)
                for r in records}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def run_show(args: argparse.Namespace) -> int:
    entries = _select(load_specfile(args.specfile), args.name, args.specfile)
    comment = get_backend(args.backend).line_comment
    for i, entry in enumerate(entries):
        kernel = cg.compile(entry.spec, backend=args.backend,
                            schedule=_file_schedule(entry, args.threads), threads=args.threads)
        if len(entries) > 1:
            if i:
                print()
            print(f"{comment} ===== {entry.name} ({entry.path}) =====")
        print(kernel.source.rstrip("\n"))
        if args.backend == "cuda":  # the emulator's build runs no nvcc: ask ptxas here
            print_ptxas_report(kernel.source, kernel.symbol, comment)
    return 0


def run_check(args: argparse.Namespace) -> int:
    entries = load_specfiles(args.specfiles, unique=False)
    table = _Table([("name", "<"), ("output shape", "<"), ("max error", ">"),
                    ("tolerance", ">"), ("status", "<"), ("time (ms)", ">"),
                    ("GFLOP/s", ">")],
                   widths=[max(len(e.name) for e in entries),
                           max(len(shape_text(e.spec.output_shape)) for e in entries),
                           9, 9, 6, 10, 8])
    print(table.header())
    failures = 0
    total = 0.0
    for entry in entries:
        error, tol, seconds = check_entry(entry, args.backend, args.seed, args.threads)
        total += seconds
        ok = error <= tol  # False for NaN
        failures += not ok
        gflops = entry.spec.flops / seconds / 1e9 if seconds > 0 else math.inf
        print(table.row([entry.name, shape_text(entry.spec.output_shape), f"{error:.2e}",
                         f"{tol:.2e}", "ok" if ok else "FAIL", f"{seconds * 1e3:.3f}",
                         f"{gflops:.2f}"]), flush=True)
    print(table.rule())
    passed = len(entries) - failures
    print(f"{passed}/{len(entries)} within tolerance; total {total * 1e3:.3f} ms "
          f"(backend {args.backend}, seed {args.seed}, time: median of {TIMING_REPEATS} calls)")
    return 0 if failures == 0 else 1


def check_entry(entry: SpecEntry, backend: str, seed: int,
                threads: int | None = None) -> tuple[float, float, float]:
    """(max error vs the oracle, tolerance, median seconds per call) for one entry, on
    ``threads`` threads (None: the default's)."""
    spec = entry.spec
    # before anything is allocated: a clear error, not a MemoryError, if it cannot fit
    check_oracle_memory(conv_oracle_bytes(spec), f"checking {entry.name!r}")
    kernel = cg.compile(spec, backend=backend, schedule=_file_schedule(entry, threads),
                        threads=threads)
    x, w, b = random_arrays(spec, seed)
    got = kernel(x, w, b)
    # timed before the oracle runs: its BLAS threads spin on the cores for a while after
    # and would slow a short multi-threaded kernel (docs/performance.md)
    out = np.empty(spec.output_shape, dtype=spec.dtype)
    warm_up(lambda: kernel(x, w, b, out=out))
    times = []
    for _ in range(TIMING_REPEATS):
        start = time.perf_counter()
        kernel(x, w, b, out=out)
        times.append(time.perf_counter() - start)
    want = cg.reference(spec, x, w, b)
    return max_error(got, want), tolerance(spec), float(np.median(times))


def run_explain(args: argparse.Namespace) -> int:
    entries = _select(load_specfile(args.specfile), args.name, args.specfile)
    # the planner only: explain needs no compiler, so the backend is not resolved against one
    backend = args.backend or BACKENDS[0]
    for i, entry in enumerate(entries):
        if i:
            print()
        schedule, source = entry.schedule, "from the spec file"
        if schedule is None:  # as compile: the best tuning record, else the default
            schedule, origin = choose_schedule(entry.spec, backend, threads=args.threads)
            source = "tuning record" if origin == "tuned" else "default"
        else:  # as compile: completed from the default
            schedule = complete_schedule(entry.spec, _file_schedule(entry, args.threads),
                                         backend, args.threads)
        plan = get_backend(backend).plan(entry.spec, schedule)
        print(explain_entry(entry, plan, source, backend))
        if backend == "cuda":  # nvcc only (no GPU); other backends stay compiler-free
            print()
            print_ptxas_report(get_backend(backend).render(plan), plan.symbol,
                               get_backend(backend).line_comment, keep_going=True)
    return 0


def print_ptxas_report(source: str, symbol: str, comment: str = "//",
                       keep_going: bool = False) -> None:
    """ptxas's per-kernel report (registers, spills, shared memory, stack for sm_80 and
    sm_90) for CUDA ``source`` as comment lines, built with nvcc through the cache; one
    line saying it needs nvcc where there is none. ``keep_going``: a source nvcc rejects
    prints one line instead of failing (explain), else the CompileError propagates."""
    try:
        lines = ptxas_report_lines(source, symbol)
    except CompileError as exc:
        if not keep_going:
            raise
        lines = [f"ptxas report unavailable: nvcc failed: {str(exc).splitlines()[0]}"]
    for line in lines:
        print(f"{comment} {line}")


# -- explain -----------------------------------------------------------------------------

def explain_entry(entry: SpecEntry, plan: Any, source: str = "default",
                  backend: str = BACKENDS[0]) -> str:
    """The text ``convgen explain`` prints for one entry, given its plan."""
    spec = entry.spec
    lines = [f"{entry.name}  ({entry.path})", "", "  spec"]
    data = spec.to_dict()
    width = max(len(k) for k in data)
    for key, value in data.items():
        lines.append(f"    {key:<{width}} = {_value(value)}")

    lines += ["", "  shapes"]
    lines.append(f"    input  {_tuple(spec.input_shape)}")
    kind = "(C_in, C_out/groups, *k)" if spec.transposed else "(C_out, C_in/groups, *k)"
    lines.append(f"    weight {_tuple(spec.weight_shape)}  {kind}")
    lines.append(f"    bias   {_tuple(spec.bias_shape) if spec.bias else 'none'}")
    lines.append(f"    output {_tuple(spec.output_shape)}")

    formula = ("(in-1)*stride - lo - hi + dilation*(k-1) + output_padding + 1"
               if spec.transposed else "floor((in + lo + hi - dilation*(k-1) - 1) / stride) + 1")
    lines += ["", f"  output size per spatial dim: {formula}"]
    lines += [f"    {line}" for line in output_size_lines(spec)]

    flops, nbytes = spec.flops, spec.bytes
    lines += ["", "  cost"]
    lines.append(f"    FLOPs     {flops:,} ({flops / 1e9:.4g} GFLOP)")
    lines.append(f"    bytes     {nbytes:,} ({_human_bytes(nbytes)}: each array read or "
                 "written once)")
    lines.append(f"    intensity {flops / nbytes:.3g} FLOP/byte")

    lines += ["", f"  schedule ({source})"]
    lines.append(f"    tile_co      {plan.tile_co}")
    lines.append(f"    tile_spatial {_tuple(tuple(plan.tile_spatial))}")
    lines.append(f"    threads      {plan.threads}")
    lines.append(f"    vector_width {plan.vector_lanes} lanes")
    if isinstance(plan.kind, WinogradPlan):
        lines.append(f"    method       {plan.kind.method} (lanes hold {plan.kind.lanes_hold}; "
                     "tile_co: channels per GEMM register tile"
                     f"{'' if plan.kind.method == 'gemm' else ', tile_spatial: outputs per tile'})")
    else:
        lines.append(f"    vectorize    {plan.kind.label} (lanes hold {plan.kind.lanes_hold})")
    lines += ["", "  plan"] + [f"    {line}" for line in get_backend(backend).describe(plan)]
    return "\n".join(lines)


def dim_names(ndim: int) -> tuple[str, ...]:
    return {1: ("L",), 2: ("H", "W"), 3: ("D", "H", "W")}[ndim]


def output_size_lines(spec: ConvSpec) -> list[str]:
    """The output-size formula per spatial dim with the spec's numbers substituted."""
    lines = []
    for i, name in enumerate(dim_names(spec.ndim)):
        size = spec.in_spatial[i]
        lo, hi = spec.padding[i]
        k, s, d = spec.kernel_size[i], spec.stride[i], spec.dilation[i]
        out = spec.output_spatial[i]
        if spec.transposed:
            op = spec.output_padding[i]
            lines.append(f"{name}: ({size}-1)*{s} - {lo} - {hi} + {d}*({k}-1) + {op} + 1 = {out}")
        else:
            lines.append(f"{name}: floor(({size} + {lo} + {hi} - {d}*({k}-1) - 1) / {s}) + 1"
                         f" = {out}")
    return lines


# -- helpers -----------------------------------------------------------------------------

def _file_schedule(entry: SpecEntry, threads: int | None) -> Schedule | None:
    """The entry's schedule from its spec file, its thread count replaced by --threads."""
    if entry.schedule is None or threads is None or "threads" not in entry.schedule.given:
        return entry.schedule
    return entry.schedule.with_fields(threads=threads)


def _schedule(entry: SpecEntry, backend: str, threads: int | None) -> Schedule | None:
    """What ``compile`` runs an entry with at --threads (None: as cg.compile_to decides)."""
    if threads is None:
        return entry.schedule
    if entry.schedule is None:
        return choose_schedule(entry.spec, backend, threads=threads)[0]
    return complete_schedule(entry.spec, _file_schedule(entry, threads), backend, threads)


def _select(entries: list[SpecEntry], name: str | None, path: str) -> list[SpecEntry]:
    if name is None:
        return entries
    chosen = [e for e in entries if e.name == name]
    if not chosen:
        names = ", ".join(e.name for e in entries)
        raise UsageError(f"{path}: no convolution named {name!r} (names: {names})")
    return chosen


def _tuple(values: Sequence[int]) -> str:
    return str(tuple(values))


def _human_bytes(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n} B"


def _value(value: object) -> str:
    """A spec field as TOML-like text."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    return str(value)


class _Table:
    """Fixed-width text table printed row by row (so long checks show progress)."""

    def __init__(self, columns: list[tuple[str, str]], widths: list[int]):
        self.titles = [title for title, _ in columns]
        self.aligns = [align for _, align in columns]
        self.widths = [max(w, len(t)) for w, t in zip(widths, self.titles)]

    def row(self, cells: Sequence[str]) -> str:
        parts = [f"{c:{a}{w}}" for c, a, w in zip(cells, self.aligns, self.widths)]
        return "  ".join(parts).rstrip()

    def header(self) -> str:
        return self.row(self.titles) + "\n" + self.rule()

    def rule(self) -> str:
        return "  ".join("-" * w for w in self.widths)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
