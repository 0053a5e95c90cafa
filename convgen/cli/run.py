"""``convgen run NETSPEC|MODEL.onnx``: compile a whole network, run it, check and time it."""

from __future__ import annotations

import argparse
import time

import numpy as np

from convgen.bench.measure import warm_up
from convgen.cli.args import (THREADS_HELP, UsageError, add_threads_argument, positive_int,
                              shape_arg, shape_text)
from convgen.graph.ir import GraphError
from convgen.graph.netspec import load_network
from convgen.onnx.importer import OnnxModel, from_onnx

TIMING_REPEATS = 5    # calls timed for the latency median
RUN_TOLERANCE = 1e-3  # `run --check`: max |got - ref| / max |ref| for a float32 network
TOP_ROWS = 4          # `run`: rows of a 2D output whose top classes are printed
TOP_K = 5


def add_run_command(commands, parents: list[argparse.ArgumentParser]) -> None:
    """Add ``run NETSPEC|MODEL.onnx``."""
    p = commands.add_parser(
        "run", parents=parents,
        help="compile a whole network (specs/nets/*.toml or an .onnx model) and run it",
        description="Load a network file (see convgen.graph.netspec) or an ONNX model "
                    "(.onnx; see convgen.onnx.importer), compile it into one "
                    "library, run it on --input (default: a seeded standard-normal input of "
                    "the file's input_shape), print the output's shape and top values, the "
                    "compile time and the end-to-end latency. With --check, compare with the "
                    "composed NumPy oracle and exit 1 beyond the float32 tolerance. An --input "
                    "of another shape (batch, image size) compiles the network for that shape.")
    p.add_argument("netspec", metavar="NETSPEC|MODEL.onnx",
                   help="TOML network file, or an ONNX model (.onnx)")
    p.add_argument("--input", metavar="X.npy", help="input array (.npy; cast to float32)")
    p.add_argument("--input-shape", type=shape_arg, default=None, metavar="N,C,H,W",
                   help="shape of the seeded random input (fixes an ONNX model's symbolic "
                        "dims; default: the file's or the model's input shape)")
    p.add_argument("--weights", metavar="W.npz",
                   help="parameters keyed like state_dict() (numpy.savez); default: "
                        "the seeded default initialization")
    p.add_argument("--constants", metavar="C.npz",
                   help="an ONNX model's graph inputs fixed at compile time, keyed by input "
                        "name (numpy.savez): those the network is specialized on (weights, "
                        "shapes, axes, pads given as graph inputs), which run cannot invent")
    p.add_argument("-o", "--output", metavar="Y.npy", help="write the output with numpy.save")
    add_threads_argument(p, help=THREADS_HELP.replace("per kernel", "per convolution layer"))
    p.add_argument("--check", action="store_true",
                   help=f"compare with model.reference(x); fail beyond {RUN_TOLERANCE:g} "
                        "(max |error| / max |reference|)")
    p.add_argument("--summary", action="store_true",
                   help="print each layer: output shape, parameters, FLOPs, fusion")
    p.add_argument("--repeat", type=positive_int, default=TIMING_REPEATS, metavar="N",
                   help="calls timed for the latency median (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, metavar="S",
                   help="seed of the random input and of the default parameters "
                        "(default: %(default)s)")
    p.set_defaults(run=run_network)


def run_network(args: argparse.Namespace) -> int:
    if args.netspec.lower().endswith(".onnx"):
        model, inputs, compile_ms = _compile_onnx(args)
    else:
        model, inputs, compile_ms = _compile_netspec(args)
    used = max(model.layer_threads().values(), default=1)
    threads = f"up to {used} thread{'s' if used != 1 else ''} per layer"
    print(f"compile  {compile_ms:.1f} ms (backend {model.backend}, {model.dtype}, {threads}; "
          f"{len(model.graph.nodes)} layers -> {len(model.optimized.nodes)} steps)")
    if args.summary:
        print()
        model.summary()
        print()

    y = model(*inputs)
    outputs = y if isinstance(y, list) else [y]
    for i, out in enumerate(outputs):
        label = "output  " if len(outputs) == 1 else f"output {i}"
        stats = out.astype(np.float64)  # an ONNX bool mask or int64 indices too
        print(f"{label} {shape_text(out.shape)} {out.dtype}: min {stats.min():.6g}, "
              f"max {stats.max():.6g}, mean {stats.mean():.6g}")
        for line in _top_lines(out):
            print(line)
    if args.output:
        if len(outputs) == 1:
            target = args.output if args.output.endswith(".npy") else args.output + ".npy"
            np.save(target, y)
        else:  # one array per output, in graph order: output0, output1, ...
            target = args.output if args.output.endswith(".npz") else args.output + ".npz"
            np.savez(target, **{f"output{i}": out for i, out in enumerate(outputs)})
        print(f"wrote    {target}")

    # timed before the oracle runs: its BLAS threads spin on the cores for a while after
    warm_up(lambda: model(*inputs))
    times = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        model(*inputs)
        times.append(time.perf_counter() - start)

    ok = True
    if args.check:
        ref = model.reference(*inputs)
        refs = ref if isinstance(ref, list) else [ref]
        error = max(relative_error(got, want) for got, want in zip(outputs, refs))
        ok = error <= RUN_TOLERANCE  # False for NaN
        print(f"check    max |y - reference| / max |reference| = {error:.2e} "
              f"(tolerance {RUN_TOLERANCE:.0e}): {'ok' if ok else 'FAIL'}")
    print(f"latency  {np.median(times) * 1e3:.3f} ms end to end (median of {args.repeat} "
          f"call{'s' if args.repeat != 1 else ''}; min {min(times) * 1e3:.3f} ms)")
    return 0 if ok else 1


def _compile_netspec(args: argparse.Namespace):
    """(model, inputs, compile ms) for a TOML network file."""
    network = load_network(args.netspec, weights=args.weights, seed=args.seed)
    x = _network_input(args, args.input_shape or network.input_shape)
    weights = args.weights or f"default initialization (seed {args.seed})"
    print(f"network  {network.name} ({args.netspec}): input {shape_text(x.shape)}, "
          f"weights {weights}")
    start = time.perf_counter()
    try:
        model = network.compile(x.shape, backend=args.backend, threads=args.threads)
    except GraphError as exc:  # only an --input of another shape can get here
        source = args.input or f"--input-shape {shape_text(x.shape)}"
        raise UsageError(f"{source}: the network of {args.netspec} does not accept an "
                         f"input of shape {x.shape}: {exc}") from None
    return model, [x], (time.perf_counter() - start) * 1e3


def _compile_onnx(args: argparse.Namespace):
    """(model, inputs, compile ms) for an ONNX model: --input, or seeded random inputs of
    the model's input shapes (--input-shape fixes symbolic dims)."""
    path = args.netspec
    if args.weights is not None:
        raise UsageError(f"--weights: {path} carries its own weights (its initializers)")
    imported = from_onnx(path)
    constants = _constants(args.constants) if args.constants is not None else {}
    left = [name for name, *_ in imported.specialized_inputs if name not in constants]
    if left:  # their values shape the network: run cannot make them up
        raise UsageError(f"{path}: the graph inputs {left} are specialized inputs (weights: "
                         "parameters of Conv, BatchNormalization, Clip or Pad; or shape "
                         "values: shapes, axes, pads, starts/ends), which convgen run does "
                         "not invent; give them with --constants C.npz (numpy.savez, keyed "
                         "by input name), or in Python cg.from_onnx(path).compile() takes "
                         "them with the inputs")
    if constants:
        try:
            imported = OnnxModel(imported.proto, imported.label, constants=constants)
        except (TypeError, ValueError) as exc:  # OnnxImportError too: a bad name or value
            raise UsageError(f"--constants {args.constants}: {exc}") from None
    names = imported.input_names
    if (args.input is not None or args.input_shape is not None) and len(names) != 1:
        raise UsageError(f"{path} has {len(names)} inputs {names}: --input and --input-shape "
                         "take one; run without them for seeded random inputs")
    dtype = imported.dtype  # the model's element type: its inputs are made in it
    if args.input is not None:
        inputs = [_network_input(args, (), dtype)]
    else:
        shapes = [args.input_shape] if args.input_shape is not None else imported.input_shapes
        for name, shape in zip(names, shapes):
            if shape is None or None in shape:
                dims = "unknown" if shape is None else \
                    "x".join("?" if d is None else str(d) for d in shape)
                raise UsageError(f"{path}: input {name!r} has the shape {dims} with symbolic "
                                 "dims; give --input X.npy or --input-shape N,C,H,W")
        rng = np.random.default_rng(args.seed)
        inputs = [rng.standard_normal(s).astype(dtype) for s in shapes]
    shown = ", ".join(f"{name} {shape_text(x.shape)}" for name, x in zip(names, inputs))
    print(f"model    {path} (ONNX, opset {imported.opset}): input {shown}, "
          "weights from the model")
    start = time.perf_counter()
    model = imported.compile([x.shape for x in inputs], backend=args.backend,
                             threads=args.threads)
    return model, inputs, (time.perf_counter() - start) * 1e3


def _constants(path: str) -> dict[str, np.ndarray]:
    """--constants: the arrays of a .npz file by name."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if not hasattr(data, "files"):
                raise UsageError(f"--constants {path}: expected a .npz file (numpy.savez)")
            return {name: data[name] for name in data.files}
    except (OSError, ValueError) as exc:
        raise UsageError(f"--constants {path}: cannot read a .npz file: {exc}") from None


def _network_input(args: argparse.Namespace, shape: tuple[int, ...],
                   dtype: str = "float32") -> np.ndarray:
    """--input as ``dtype`` (an ONNX model's element type; float32 for network files), or
    a seeded standard-normal array of the network's input shape."""
    if args.input is None:
        return np.random.default_rng(args.seed).standard_normal(shape).astype(dtype)
    try:
        x = np.load(args.input, allow_pickle=False)
    except ValueError as exc:
        raise UsageError(f"{args.input}: cannot read a .npy array: {exc}") from None
    if not isinstance(x, np.ndarray):
        x.close()
        raise UsageError(f"{args.input}: expected one array (.npy), got an .npz archive")
    if x.dtype.kind not in "biuf":
        raise UsageError(f"{args.input}: expected a real numeric array, got dtype {x.dtype}")
    return np.ascontiguousarray(x, dtype=dtype)


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    """max |got - want| / max |want| (the absolute error when want is all zeros)."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    scale = float(np.max(np.abs(want))) if want.size else 0.0
    error = float(np.max(np.abs(got - want))) if want.size else 0.0
    return error / scale if scale > 0 else error


def _top_lines(y: np.ndarray) -> list[str]:
    """Per row of a 2D output (N, classes): argmax and the top values."""
    if y.ndim != 2 or y.dtype.kind != "f":
        return []
    k = min(TOP_K, y.shape[1])
    lines = []
    for row in range(min(TOP_ROWS, y.shape[0])):
        order = np.argsort(-y[row], kind="stable")[:k]
        top = ", ".join(f"{i}: {y[row, i]:.4g}" for i in order)
        lines.append(f"  row {row}: argmax {int(order[0])}; top {k} {{{top}}}")
    if y.shape[0] > TOP_ROWS:
        lines.append(f"  ... {y.shape[0] - TOP_ROWS} more rows")
    return lines
