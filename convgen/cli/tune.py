"""``convgen tune SPECFILE|NETSPEC|MODEL.onnx``: the tuner on the command line (wired into
convgen.cli.main).

``--workers N`` (a local Dask cluster of N worker processes) and ``--scheduler
tcp://HOST:PORT`` (an existing cluster) tune through convgen.tuning.distributed.tune_many:
candidates are compiled and timed on the workers, records written here. dask's
``distributed`` is an optional extra, imported only when one of them is given. Without it,
``--workers`` warns (naming ``pip install 'convgen[distributed]'``) and the local tuner runs
instead — a local cluster would have measured this machine too, so its records are the
same kind —, while ``--scheduler`` is an error (exit status 2): the cluster's machines,
not this one, were asked for, and records measured here would be the wrong machine's.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import math
import os
import re
import sys
import time
import tomllib
from typing import Any, Callable

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from convgen.backends import resolve_backend
from convgen.cli.args import UsageError, positive_int, shape_arg, thread_count
from convgen.cli.records import add_record_options, run_records
from convgen.graph.ir import Graph
from convgen.graph.netspec import load_network
from convgen.log import ROOT, get_logger
from convgen.onnx.importer import from_onnx
from convgen.specfile import load_specfile
from convgen.tuning import distributed as distributed_tuning
from convgen.tuning.tuner import MachineBusy, Progress, TuneResult, _ms, describe, \
    network_convs, tune, tune_network

log = get_logger("tune")

INSTALL = "pip install 'convgen[distributed]'"
MAX_WORKERS = 4096  # local worker processes: a typo guard, far beyond any one machine
CONNECT_SECONDS = 30  # how long --scheduler waits for the scheduler to answer
# what dask.distributed.Client takes: a protocol and HOST:PORT (or a bare HOST:PORT, as tcp)
SCHEDULER = re.compile(r"^(?:(?:tcp|tls|ucx|ws|wss)://)?"
                       r"(?:\[[0-9a-fA-F:.]+\]|[\w.-]+):\d{1,5}$")


def add_tune_command(subparsers, parents: list[argparse.ArgumentParser]) -> None:
    """Add ``tune SPECFILE|NETSPEC|MODEL.onnx --budget S [--backend B] [--threads N]``."""
    p = subparsers.add_parser(
        "tune", parents=parents, help="search schedules and record the fastest",
        description="Time candidate schedules of each convolution in a spec file (or of each "
                    "distinct convolution of a network file or an ONNX model), check the winner "
                    "against the "
                    "oracle and append every measurement to the tuning database "
                    "($CONVGEN_TUNING_DB, default <cache dir>/tuning.jsonl); compile then "
                    "uses the best record.")
    p.add_argument("specfile", metavar="SPECFILE|NETSPEC|MODEL.onnx", nargs="?",
                   help="TOML spec or network file, or an ONNX model (.onnx)")
    p.add_argument("--input-shape", type=shape_arg, default=None, metavar="N,C,H,W",
                   help="network files and ONNX models: the input shape to tune for (fixes "
                        "an ONNX model's symbolic dims; default: the file's or the model's)")
    p.add_argument("--budget", type=_positive(float), default=30.0, metavar="S",
                   help="seconds in all, split among the convolutions (default: %(default)s)")
    p.add_argument("--threads", type=thread_count, default=None, metavar="N",
                   help="threads per kernel, 1 to 256 (default: what compile uses: "
                        "cg.get_num_threads() for kernels large enough, else 1)")
    p.add_argument("--no-load-check", dest="check_load", action="store_false",
                   help="time even while other processes keep the cores busy (the tuner "
                        "otherwise waits, re-times or refuses; $CONVGEN_TUNE_CHECK_LOAD=0)")
    p.add_argument("--bound", action="store_true",
                   help="spec files: time kernels with their weights bound and prepared once "
                        "(convgen.bind), as `convgen bench` and networks run them; their "
                        "records are kept apart (network files are always tuned bound)")
    cluster = p.add_argument_group(
        "distributed tuning", "Compile and time the candidates on a Dask cluster (dask's "
        f"distributed, an optional extra: {INSTALL}); the records are written here, by this "
        "process only. Workers whose hardware or software differs from this machine's "
        "(CPU, cores, compiler, convgen version, GPU for cuda) are left out, named.")
    where = cluster.add_mutually_exclusive_group()
    where.add_argument("--scheduler", type=scheduler_address, default=None,
                       metavar="tcp://HOST:PORT",
                       help="the scheduler of a running cluster (`dask scheduler`, with "
                            "`dask worker` on each machine); without distributed installed "
                            "this is an error")
    where.add_argument("--workers", type=worker_count, default=None, metavar="N",
                       help="start a local cluster of N worker processes for this run; "
                            "without distributed installed the local tuner runs instead")
    add_record_options(p)
    p.set_defaults(run=run_tune)


def scheduler_address(text: str) -> str:
    """--scheduler: a Dask scheduler's address, tcp://HOST:PORT (or tls://, ucx://, ws://,
    wss://; a bare HOST:PORT means tcp)."""
    text = text.strip()
    match = SCHEDULER.match(text)
    if match is None or not 0 < int(text.rsplit(":", 1)[1]) < 65536:
        raise argparse.ArgumentTypeError(f"expected a scheduler address tcp://HOST:PORT, "
                                         f"got {text!r}")
    return text if "://" in text else "tcp://" + text


def worker_count(text: str) -> int:
    """--workers N: an integer in [1, MAX_WORKERS]."""
    value = positive_int(text)
    if value > MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"expected at most {MAX_WORKERS} workers, got {value}")
    return value


def distributed_module():
    """dask's ``distributed``, or None where it is not installed. Imported here, when a
    cluster is asked for, not with the CLI: it is optional and slow to import."""
    try:
        return importlib.import_module("distributed")
    except ImportError:
        return None


def is_onnx_file(path: str | os.PathLike) -> bool:
    """An ONNX model, by its name (binary protobuf: what the TOML loaders cannot read)."""
    return os.fspath(path).lower().endswith(".onnx")


def is_network_file(path: str | os.PathLike) -> bool:
    """A network file has a top-level input_shape or [[layer]]; a spec file has [[conv]]."""
    if is_onnx_file(path):
        return False
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except (OSError, ValueError):
        return False  # the spec-file loader reports the problem
    return "input_shape" in data or "layer" in data


def file_specs(path: str, input_shape: tuple[int, ...] | None = None) -> dict[str, str]:
    """{spec key: name} of a spec file's convolutions, or of those a network file or an
    ONNX model compiles (as tune tunes them)."""
    if is_onnx_file(path):
        return {key: name for key, (name, _) in network_convs(onnx_graph(path, input_shape)).items()}
    if is_network_file(path):
        return {key: name for key, (name, _) in
                network_convs(load_network(path), input_shape).items()}
    return {entry.spec.key(): entry.name for entry in load_specfile(path)}


def onnx_graph(path: str, input_shape: tuple[int, ...] | None = None) -> Graph:
    """The graph of an ONNX model, as ``convgen run`` compiles it: its weights are its
    initializers (a model whose weights or shapes are graph inputs, specialized at call
    time, has no values to tune with)."""
    imported = from_onnx(path, input_shape=input_shape)
    if imported.specialized_inputs:
        names = [name for name, *_ in imported.specialized_inputs]
        raise UsageError(f"{path}: the graph inputs {names} are weights or shapes, whose "
                         "values shape the network: tune a model that carries them as "
                         "initializers (onnx.save a copy with their values)")
    return imported.graph


def _positive(kind: type) -> Callable[[str], Any]:
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = 0
        if not 0 < value < math.inf:
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, "
                                             f"got {text!r}")
        return value
    return parse


def run_tune(args: argparse.Namespace) -> int:
    """Tune every conv of a spec file, or each distinct conv of a network file; print a table."""
    cluster = args.scheduler is not None or args.workers is not None
    if cluster and (args.list or args.forget is not None or args.export is not None
                    or args.import_file is not None):
        raise UsageError("--scheduler and --workers go with tuning, not with --list, "
                         "--forget, --export or --import")
    # --list, --forget, --export or --import
    status = run_records(args, lambda path: file_specs(path, args.input_shape))
    if status is not None:
        return status
    if args.specfile is None:
        print("convgen tune: error: a SPECFILE, NETSPEC or MODEL.onnx is required (or --list, "
              "--forget, --export, --import)", file=sys.stderr)
        return 2
    onnx = is_onnx_file(args.specfile)
    if args.input_shape is not None and not (onnx or is_network_file(args.specfile)):
        raise UsageError(f"--input-shape applies to a network file or an ONNX model, not to "
                         f"the spec file {args.specfile}")
    backend = resolve_backend(getattr(args, "backend", None))
    check_load = None if args.check_load else False
    if cluster:
        if args.bound and not (onnx or is_network_file(args.specfile)):
            raise UsageError("--bound is not supported with --scheduler or --workers: the "
                             "cluster tunes a spec file's kernels with their weights passed "
                             "in each call (network files are tuned bound)")
        distributed = distributed_module()
        if distributed is None and args.scheduler is not None:
            print(f"convgen tune: error: --scheduler needs dask's distributed, which is not "
                  f"installed: {INSTALL} (tuning here instead would measure this machine, "
                  f"not the cluster's)", file=sys.stderr)
            return 2
        if distributed is None:
            print(f"convgen tune: warning: --workers needs dask's distributed, which is not "
                  f"installed ({INSTALL}); tuning with the local tuner instead",
                  file=sys.stderr)
        else:
            return run_cluster(args, distributed, backend, check_load, onnx)
    bar = ProgressBar(sys.stderr, quiet=getattr(args, "verbosity", 0) < 0)
    refused = []
    # log lines (-v) printed above the bar rather than through it
    with bar, logging_redirect_tqdm([logging.getLogger(ROOT)]):
        if onnx or is_network_file(args.specfile):
            network = onnx_graph(args.specfile, args.input_shape) if onnx \
                else load_network(args.specfile)
            results = tune_network(network, input_shape=args.input_shape, backend=backend,
                                   budget=args.budget, threads=args.threads, progress=bar,
                                   check_load=check_load)
        else:
            entries = load_specfile(args.specfile)
            deadline = time.monotonic() + args.budget
            results = []
            for i, entry in enumerate(entries):
                share = max(deadline - time.monotonic(), 0.0) / (len(entries) - i)
                try:
                    results.append(tune(entry.spec, backend, share, args.threads,
                                        progress=bar, name=entry.name, bound=args.bound,
                                        check_load=check_load))
                except MachineBusy as exc:  # this spec only: the next may find it quiet
                    refused.append(str(exc))  # (it names the spec)
    if results:
        print(summary_table(results))
    for line in refused:
        print(f"convgen tune: refused: {line}", file=sys.stderr)
    return 1 if refused else 0


def run_cluster(args: argparse.Namespace, distributed, backend: str,
                check_load: bool | None, onnx: bool) -> int:
    """Tune on the cluster --scheduler names, or on a local one of --workers processes."""
    if onnx or is_network_file(args.specfile):
        what = onnx_graph(args.specfile, args.input_shape) if onnx \
            else load_network(args.specfile)
        names = None
    else:
        entries = load_specfile(args.specfile)
        what, names = [entry.spec for entry in entries], [entry.name for entry in entries]
    client = None
    if args.scheduler is not None:
        try:
            client = distributed.Client(args.scheduler, timeout=f"{CONNECT_SECONDS}s",
                                        set_as_default=False)
        except (OSError, TimeoutError) as exc:
            raise UsageError(f"--scheduler {args.scheduler}: no Dask scheduler answered "
                             f"there within {CONNECT_SECONDS} s ({exc})") from None
    bar = ProgressBar(sys.stderr, quiet=getattr(args, "verbosity", 0) < 0)
    try:
        with bar, logging_redirect_tqdm([logging.getLogger(ROOT)]):
            results = distributed_tuning.tune_many(
                what, client=client, budget=args.budget, backend=backend, threads=args.threads,
                input_shape=args.input_shape, workers=args.workers, progress=bar,
                check_load=check_load)
    except MachineBusy as exc:  # a worker's decisive timing stayed disturbed: as tune's
        print(f"convgen tune: refused: {exc} (the specs tuned before it are recorded)",
              file=sys.stderr)
        return 1
    finally:
        if client is not None:
            client.close()
    for result, name in zip(results, names or ()):
        result.name = name  # the spec file's names, as the local tuner's table shows them
    if results:
        print(summary_table(results))
    return 0


class ProgressBar:
    """The tuner's progress: a tqdm bar per spec on ``stream`` (candidates done/total, the
    phase, the best time so far) where ``stream`` is a terminal. Elsewhere (a pipe, a log
    file) no bar and no \\r: one INFO line per phase on the ``convgen.tune`` logger, which
    ``-v`` shows. ``quiet`` (-q): neither. A context manager; leaving closes the last bar."""

    def __init__(self, stream, quiet: bool = False):
        self.stream, self.quiet = stream, quiet
        self.bar: tqdm | None = None
        self.name = self.phase = None

    def __call__(self, p: Progress) -> None:
        if self.quiet:
            return
        if p.name != self.name or self.bar is None:
            self.close()
            self.name, self.phase = p.name, None
            # disable=None: no bar unless the stream is a terminal. No rate nor time left:
            # the budget, not the candidates, decides when a spec ends
            self.bar = tqdm(total=p.total, desc=p.name[:32], file=self.stream, disable=None,
                            leave=True, dynamic_ncols=True,
                            bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]")
        best = _ms(p.best_seconds) + " ms" if math.isfinite(p.best_seconds) else "-"
        if self.bar.disable and p.phase != self.phase:
            log.info("%s: %s, %d/%d candidates, best %s", p.name, p.phase, p.done, p.total,
                     best)
        self.phase = p.phase
        self.bar.n = p.done
        self.bar.set_postfix_str(f"{p.phase}, best {best}")  # redraws

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> "ProgressBar":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def summary_table(results: list[TuneResult]) -> str:
    """name, default ms, best ms, speedup, best schedule: one row per tuned spec."""
    rows = [("name", "default ms", "best ms", "speedup", "best schedule")]
    for r in results:
        rows.append((r.name, _ms(r.default_seconds), _ms(r.best_seconds),
                     f"{r.speedup:.2f}x", describe(r.best)))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = ["  ".join(c.ljust(w) if i in (0, 4) else c.rjust(w)
                       for i, (c, w) in enumerate(zip(row, widths))).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
