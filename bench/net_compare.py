"""Time a network written once against torch.nn and convgen.nn: PyTorch, ONNX Runtime
(the model exported by torch.onnx) and convgen (every backend, and C through cg.from_onnx),
interleaved in one run; shared by the network benches in bench/ (resnet18.py, resnet50.py,
mobilenet_v2.py, inception_v3.py, unet.py).

Each runtime gets --repeats rounds of a warm-up (50 ms of calls) and two timed calls
(convgen.bench.measure.measure_interleaved); the median per thread count, the ratio
(fastest peer's time / its time: above 1, faster than PyTorch and ONNX Runtime) and its
largest error relative to torch's output.
ONNX Runtime is skipped, and said so, when onnx/onnxruntime are not installed
(pip install -e '.[bench]').
"""

from __future__ import annotations

import argparse
import io
import statistics

import numpy as np

import convgen as cg
from convgen.bench.measure import PAUSE_S, ROUND_CALLS, WARMUP_S, measure_interleaved
from convgen.backends import CPU_BACKENDS
from convgen.bench.peers import Runner

# the peers are CPU libraries: convgen's CPU backends only (the cuda backend, registered
# since, would need a GPU and would be timed against nothing comparable)


def compare_networks(tnet, net, x: np.ndarray, want: np.ndarray, title: str, repeats: int,
                     threads_list: list[int]) -> None:
    """Print one table row per runtime and thread count (``tnet``: the torch module in
    eval mode, ``net``: the convgen module with its weights loaded, ``want``: torch's
    output for ``x``)."""
    import torch

    try:
        import onnxruntime as ort

        buffer = io.BytesIO()
        torch.onnx.export(tnet, torch.from_numpy(x), buffer, dynamo=False)
        onnx_bytes = buffer.getvalue()
    except Exception as exc:  # noqa: BLE001 - report and go on without the peer
        ort, onnx_bytes = None, None
        print(f"onnxruntime: not measured ({type(exc).__name__}: {exc})")

    print(f"{title}; runtimes interleaved: {repeats} rounds of "
          f"{WARMUP_S * 1e3:g} ms of warm-up calls + {ROUND_CALLS} timed calls each, the "
          "median (ms)")
    # ratio = fastest peer's time / this runtime's time (above 1: faster than every peer)
    print(f"{'runtime':<22} {'threads':>7} {'latency':>9} {'ratio':>8} {'max rel err':>11}")
    for threads in threads_list:
        torch.set_num_threads(threads)
        calls = {}

        def torch_call():
            with torch.no_grad():
                return tnet(torch.from_numpy(x)).numpy()

        calls["torch (oneDNN)"] = torch_call
        if ort is not None:
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            session = ort.InferenceSession(onnx_bytes, options,
                                           providers=["CPUExecutionProvider"])
            name = session.get_inputs()[0].name
            calls["onnxruntime"] = (lambda s=session, n=name: s.run(None, {n: x})[0])
        for backend in CPU_BACKENDS:
            calls[f"convgen {backend}"] = net.compile(x.shape, backend=backend, threads=threads)
        if onnx_bytes is not None:  # the same network through cg.from_onnx
            calls["convgen c (from ONNX)"] = cg.from_onnx(onnx_bytes).compile(
                x.shape, backend="c", threads=threads)
        runners = {}
        for label, call in calls.items():
            if label.startswith("convgen"):
                call = (lambda m=call: m(x))
            runners[label] = Runner(call)
        timed = measure_interleaved(runners, repeats, PAUSE_S if threads > 1 else 0.0)
        rows = []
        for label, (times, got) in timed.items():
            if isinstance(got, Exception):
                print(f"{label:<22} {threads:>7} failed: {type(got).__name__}: {got}")
                continue
            err = 0.0 if label.startswith("torch") else \
                float(np.abs(got - want).max() / np.abs(want).max())
            rows.append((label, 1e3 * statistics.median(times), err))
        peers = min(ms for label, ms, _ in rows if not label.startswith("convgen"))
        for label, ms, err in rows:
            print(f"{label:<22} {threads:>7} {ms:>9.2f} {peers / ms:>8.2f} {err:>11.2e}",
                  flush=True)


def cat_of(nn):
    """The channel concatenation matching an nn namespace: torch.cat for torch.nn,
    convgen.nn.functional.cat for convgen.nn (torch.nn.functional has no cat), so a
    network with concatenations can still be written once."""
    import torch

    return torch.cat if nn is torch.nn else nn.functional.cat


def build_pair(build, seed: int = 0):
    """``build(nn, flatten)`` instantiated twice: torch's module in eval mode with
    randomized BatchNorm statistics (so folding is exercised) and convgen's with torch's
    state_dict loaded. Returns (torch module, convgen module)."""
    import torch

    from convgen import nn as cnn

    torch.manual_seed(seed)
    tnet = build(torch.nn, torch.flatten).eval()
    with torch.no_grad():
        for m in tnet.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    net = build(cnn, cnn.functional.flatten)
    net.load_state_dict(tnet.state_dict())
    return tnet, net


def bench_main(build, name: str, description: str, default_size: int = 224) -> int:
    """The command line of a network bench: ``build(nn, flatten)`` writes the network
    once against either nn namespace; torch's instance gets randomized BatchNorm
    statistics (so folding is exercised), convgen's loads its state_dict, and both run
    on one seeded input of --size (``default_size`` unless given)."""
    import torch

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--size", type=int, default=default_size)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()

    tnet, net = build_pair(build)
    shape = (1, 3, args.size, args.size)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    with torch.no_grad():
        want = tnet(torch.from_numpy(x)).numpy()
    compare_networks(tnet, net, x, want, f"{name} {shape}, batch 1", args.repeats,
                     args.threads)
    return 0
