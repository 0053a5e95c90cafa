"""Measure what distributed tuning (cg.tune_many on a local Dask cluster) costs, for the
scaling estimate in docs/tuning.md ("Distributed tuning").

    python bench/tune_scaling.py [--net specs/nets/resnet18.toml] [--workers 1 2]
                                 [--max-candidates 6] [--threads 1] [--json out.json]

The same run for each worker count: every distinct conv of ``--net``, its first
``--max-candidates`` candidates (the default among them), a budget far beyond what they
need (so the count, not the clock, ends each spec), kernels on ``--threads`` threads (1:
each worker's kernels use one core, so N workers fit on N cores), the load check off, a
fresh kernel cache and tuning database per run (workers compile everything again).
Reported:

- ``wall``: the tune_many call; the tasks' compute time from dask's task stream, split
  into the candidate tasks (``_measure``: build, then time beside the default) and the
  decision tasks (``_settle``: confirm, oracle check, final rounds, one per spec), and
  how busy the workers were (compute / (workers x wall));
- ``compile``: the same candidates built one by one in this process into a fresh cache
  (convgen.tuning.tuner._build, what a task runs first): seconds per candidate;
- ``task overhead``: 500 no-op tasks through the same cluster, submitted at once (the
  scheduler's and the transport's cost per task, pipelined) and one after another (the
  round trip the client's loop waits when it keeps one task per worker in flight);
- ``append``: convgen.records.record of 1,000 measurements (the single writer's cost per
  line) and of one spec's lines (one append per spec).

On a machine with few cores the workers, the scheduler, the client and anything else
running share them: say so beside the numbers.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import distributed  # noqa: E402
from dask.utils import key_split  # noqa: E402

import convgen as cg  # noqa: E402
from convgen.graph.netspec import load_network  # noqa: E402
from convgen.records import record  # noqa: E402
from convgen.tuning import tuner  # noqa: E402
from convgen.tuning.space import candidate_schedules  # noqa: E402
from convgen.tuning.tuner import Measurement, network_convs  # noqa: E402


def noop(i: int) -> int:
    return i


def task_overhead(client, count: int = 500) -> dict:
    """Seconds per no-op task: all submitted at once, and one after another."""
    client.gather(client.map(noop, range(20), pure=False))  # warm
    start = time.perf_counter()
    client.gather(client.map(noop, range(count), pure=False))
    pipelined = (time.perf_counter() - start) / count
    start = time.perf_counter()
    for i in range(count // 5):
        client.submit(noop, i, pure=False).result()
    serial = (time.perf_counter() - start) / (count // 5)
    return {"pipelined_s": pipelined, "round_trip_s": serial}


def compile_costs(convs, k: int, threads: int, root: Path) -> list[float]:
    """Seconds to build each of the first ``k`` candidates of each conv, cold cache."""
    cache = root / "compile-cache"
    seconds = []
    for spec in convs:
        for schedule in candidate_schedules(spec, "c", threads, bound=True)[:k]:
            start = time.perf_counter()
            error = tuner._build(spec.to_dict(), "c", schedule.to_dict(), str(cache), True)
            seconds.append(time.perf_counter() - start)
            if error is not None:
                print(f"  build failed: {error}", file=sys.stderr)
    return seconds


def append_costs(spec: cg.ConvSpec, root: Path, k: int) -> dict:
    schedule = cg.Schedule(threads=1)
    many = [Measurement(schedule, 1e-3 * (1 + i / 1000), checked=False) for i in range(1000)]
    path = root / "append.jsonl"
    start = time.perf_counter()
    record(spec, "c", many, path, bound=True, threads=1)
    per_line = (time.perf_counter() - start) / len(many)
    start = time.perf_counter()
    for _ in range(20):
        record(spec, "c", many[:k], path, bound=True, threads=1)
    per_spec = (time.perf_counter() - start) / 20
    return {"per_line_s": per_line, "per_spec_append_s": per_spec, "lines_per_spec": k}


def run(net, workers: int, k: int, threads: int, root: Path) -> dict:
    """One tune_many run on a fresh local cluster of ``workers`` processes."""
    os.environ["CONVGEN_CACHE_DIR"] = str(root / f"cache-{workers}")
    os.environ["CONVGEN_TUNING_DB"] = str(root / f"db-{workers}.jsonl")
    with distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster, \
            distributed.Client(cluster) as client:
        overhead = task_overhead(client)
        with distributed.get_task_stream(client) as stream:
            start = time.perf_counter()
            results = cg.tune_many(net, client=client, budget=3600.0, max_candidates=k,
                                   threads=threads, check_load=False)
            wall = time.perf_counter() - start
        tasks: dict[str, list[float]] = {}
        timeline = []
        for task in stream.data:
            prefix = key_split(task["key"])  # "_measure-<uuid>" -> "measure"
            spans = [s for s in task["startstops"] if s["action"] == "compute"]
            compute = sum(s["stop"] - s["start"] for s in spans)
            tasks.setdefault(prefix, []).append(compute)
            if spans:
                timeline.append((spans[0]["start"], prefix, task["worker"], compute))
    # a worker's first candidate of a spec also starts its timing session (the timing child,
    # the default built and timed); the specs run one after another, each ending with its
    # decision task, so the decisions split the timeline into specs
    first, later, seen = [], [], set()
    for _, prefix, worker, compute in sorted(timeline):
        if prefix == "settle":
            seen = set()
        elif prefix == "measure":
            (later if worker in seen else first).append(compute)
            seen.add(worker)
    tasks["measure, a worker's first of a spec"] = first
    tasks["measure, later"] = later
    busy = sum(sum(tasks[p]) for p in ("measure", "settle") if p in tasks)
    return {"workers": workers, "wall_s": wall, "specs": len(results),
            "measured": sum(len(r.measurements) for r in results),
            "tasks": {p: {"count": len(v), "sum_s": sum(v), "mean_s": statistics.mean(v)}
                      for p, v in tasks.items() if v},
            "busy_fraction": busy / (workers * wall), "overhead": overhead,
            "speedups": [round(r.speedup, 3) for r in results]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--net", default="specs/nets/resnet18.toml")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--max-candidates", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    net = load_network(args.net)
    convs = [spec for _, spec in network_convs(net).values()]
    report: dict = {"net": args.net, "convs": len(convs), "max_candidates": args.max_candidates,
                    "threads": args.threads,
                    "candidates_per_conv": [len(candidate_schedules(s, "c", args.threads,
                                                                    bound=True))
                                            for s in convs],
                    "cores": len(os.sched_getaffinity(0)), "runs": []}
    with tempfile.TemporaryDirectory(prefix="tune-scaling-") as tmp:
        root = Path(tmp)
        for workers in args.workers:
            result = run(net, workers, args.max_candidates, args.threads, root)
            report["runs"].append(result)
            print(json.dumps(result), flush=True)
        costs = compile_costs(convs, args.max_candidates, args.threads, root)
        report["compile"] = {"count": len(costs), "mean_s": statistics.mean(costs),
                             "median_s": statistics.median(costs), "max_s": max(costs)}
        report["append"] = append_costs(convs[0], root, args.max_candidates)
    report["candidates_per_conv_median"] = statistics.median(report["candidates_per_conv"])
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text)
    return 0 if all(math.isfinite(r["wall_s"]) for r in report["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
