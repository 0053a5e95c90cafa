"""Where a network's time goes, per convolution: convgen's layer, run standalone with the
plan and layout the network gave it, next to ONNX Runtime's profiler's time for the same
Conv node, and the whole network's time for each.

    python bench/profile_layers.py NET [--size N] [--threads 1] [--repeats 20] [--top 15]

NET is one of the network benches (resnet18, resnet50, mobilenet_v2, inception_v3, unet),
written once against torch.nn and convgen.nn (bench/net_compare.py). For each conv step of
convgen's compiled network (backend c) the step's own plan (its schedule, blocked input
or output, prepared weights) is built as a kernel and timed alone on random data
(median of --repeats calls; a fused residual is left out, so the add it saves is not
timed). ONNX Runtime runs the torch.onnx export with profiling on; its per-node kernel
times (median over the runs) are matched to convgen's layers by convolution shape
(conv_key: the first unmatched node of the same shape, in order). The
table lists the layers by convgen time, with the ratio ORT / convgen (> 1: convgen is
faster); the totals show what the convolutions leave to everything else (pooling,
concatenation, layout changes, the classifier).
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import convgen as cg  # noqa: E402
from convgen.backends import get_backend  # noqa: E402
from convgen.compiler import kernel_from_artifact  # noqa: E402
from convgen.plan.layout import to_blocked  # noqa: E402
from convgen.plan.weights import prepare_weight  # noqa: E402
from convgen.reference import random_arrays  # noqa: E402
from net_compare import build_pair  # noqa: E402

NETWORKS = {"resnet18": ("resnet18", "resnet18"), "resnet50": ("resnet50", "resnet50"),
            "mobilenet_v2": ("mobilenet_v2", "mobilenet_v2"),
            "inception_v3": ("inception_v3", "inception_v3"), "unet": ("unet", "unet")}


def median_ms(call, repeats: int) -> float:
    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def convgen_layers(model, backend: str, repeats: int) -> list[dict]:
    """Each conv step of ``model`` (a compiled convgen network) timed alone."""
    rows = []
    for step in model._lowered.steps:
        if step.kind != "conv":
            continue
        plan = step.plan
        spec = plan.spec
        chosen = get_backend(backend)
        artifact = chosen.build(plan, chosen.render(plan), None)
        x, w, b = random_arrays(spec, 0)
        weight = np.array(prepare_weight(plan, w) if plan.prepared_weights else w,
                          dtype=spec.dtype)
        kernel = kernel_from_artifact(spec, plan, backend, artifact, weight_shape=weight.shape)
        xin = to_blocked(x, plan.vector_lanes).reshape(spec.input_shape) \
            if plan.in_blocked else x
        out = np.empty(spec.output_shape, spec.dtype)
        ms = median_ms(lambda: kernel(xin, weight, b, out=out), repeats)
        layout = ("blocked" if plan.in_blocked else "nchw") + " -> " + \
            ("blocked" if plan.out_blocked else "nchw")
        rows.append({"name": step.name, "spec": spec, "ms": ms, "plan": plan.kind.label,
                     "layout": layout, "residual": bool(step.consts.get("residual"))})
    return rows


def round_channels(channels: int) -> int:
    """Channels rounded up to whole blocks of 16, as ONNX Runtime's NCHWc layout pads them
    on AVX-512 (8 output channels run as 16)."""
    return -(-channels // 16) * 16


def conv_key(input_shape, weight_shape) -> tuple:
    """What identifies a convolution across runtimes, robust to ONNX Runtime's NCHWc
    rewrite (it pads channel counts and reorders weights): the input's spatial size, the
    kernel's, and the output channels as NCHWc pads them."""
    return (tuple(input_shape[2:]), tuple(weight_shape[2:]),
            round_channels(int(weight_shape[0])))


def ort_layers(onnx_bytes: bytes, x: np.ndarray, threads: int, runs: int) -> tuple[list, float]:
    """ONNX Runtime's per-node times (median over ``runs``) for its Conv nodes (Conv,
    FusedConv, NchwcConv) in graph order, as (conv_key, node, ms, op), and the median
    whole-run time."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(tmp, "ort")
        session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        for _ in range(3):
            session.run(None, {name: x})
        wall = []
        for _ in range(runs):
            start = time.perf_counter()
            session.run(None, {name: x})
            wall.append(time.perf_counter() - start)
        path = session.end_profiling()
        events = json.loads(Path(path).read_text())
    per_node = defaultdict(list)
    order, info = [], {}
    for event in events:
        if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time"):
            continue
        args = event.get("args", {})
        node = event["name"][:-len("_kernel_time")]
        if node not in info:
            order.append(node)
            info[node] = args
        per_node[node].append(event["dur"] / 1e3)
    rows = []
    for node in order:
        args = info[node]
        op = args.get("op_name", "")
        if "Conv" not in op:
            continue
        shapes = [list(s.values())[0] for s in args.get("input_type_shape", [])]
        key = conv_key(shapes[0], shapes[1]) if len(shapes) >= 2 else None
        ms = statistics.median(per_node[node][-runs:])
        rows.append((key, node, ms, op))
    return rows, 1e3 * statistics.median(wall)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("net", choices=sorted(NETWORKS))
    parser.add_argument("--size", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--backend", default="c", choices=["c", "llvm"])
    args = parser.parse_args()

    import torch

    module_name, build_name = NETWORKS[args.net]
    module = importlib.import_module(module_name)
    build = getattr(module, build_name)
    size = args.size or (299 if args.net == "inception_v3" else
                         128 if args.net == "unet" else 224)
    tnet, net = build_pair(build)
    x = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
    cg.set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    model = net.compile(x.shape, backend=args.backend, threads=args.threads)
    network_ms = median_ms(lambda: model(x), args.repeats)
    layers = convgen_layers(model, args.backend, args.repeats)

    buffer = io.BytesIO()
    torch.onnx.export(tnet, torch.from_numpy(x), buffer, dynamo=False)
    ort_rows, ort_ms = ort_layers(buffer.getvalue(), x, args.threads, args.repeats)
    # match by conv_key, in order
    pending = defaultdict(list)
    for key, node, ms, op in ort_rows:
        pending[key].append((node, ms, op))
    for row in layers:
        spec = row["spec"]
        key = conv_key(spec.input_shape, spec.weight_shape)
        match = pending[key].pop(0) if pending.get(key) else None
        row["ort_ms"] = match[1] if match else None
        row["ort_node"] = f"{match[2]} {match[0]}" if match else "-"

    conv_ms = sum(r["ms"] for r in layers)
    ort_conv = sum(ms for _, _, ms, _ in ort_rows)
    print(f"{args.net} {x.shape}, {args.threads} thread(s), backend {args.backend}; "
          f"medians of {args.repeats} calls")
    print(f"network: convgen {network_ms:.2f} ms (its {len(layers)} convolutions alone: "
          f"{conv_ms:.2f} ms, the rest {network_ms - conv_ms:.2f} ms); ONNX Runtime "
          f"{ort_ms:.2f} ms (its Conv nodes: {ort_conv:.2f} ms, the rest "
          f"{ort_ms - ort_conv:.2f} ms)")
    print(f"{'layer':<28} {'conv':<38} {'plan':>5} {'layout':<18} {'cg ms':>7} "
          f"{'ort ms':>7} {'ratio':>6}")
    for row in sorted(layers, key=lambda r: -r["ms"])[:args.top]:
        spec = row["spec"]
        text = (f"{spec.in_channels}->{spec.out_channels} k{'x'.join(map(str, spec.kernel_size))}"
                f" s{spec.stride[-1]} g{spec.groups} @{'x'.join(map(str, spec.input_shape[2:]))}")
        ort = row["ort_ms"]
        ratio = f"{ort / row['ms']:.2f}" if ort else "-"
        print(f"{row['name'][:28]:<28} {text:<38} {row['plan']:>5} {row['layout']:<18} "
              f"{row['ms']:>7.3f} {ort if ort else float('nan'):>7.3f} {ratio:>6}"
              + ("  (+residual)" if row["residual"] else ""))
    matched = [r for r in layers if r["ort_ms"]]
    if matched:
        cg_sum = sum(r["ms"] for r in matched)
        ort_sum = sum(r["ort_ms"] for r in matched)
        print(f"matched {len(matched)}/{len(layers)} layers: convgen {cg_sum:.2f} ms, "
              f"ONNX Runtime {ort_sum:.2f} ms, ratio {ort_sum / cg_sum:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
