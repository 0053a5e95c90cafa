"""Peers for ``convgen bench``: the same convolution in NumPy, PyTorch and ONNX Runtime.

Each ``*_runner`` returns a :class:`Runner`: a zero-argument call that computes the
convolution from NC(D)(H)W arrays prepared once (weights laid out, models built), and
how to turn what it returns into an NC(D)(H)W NumPy array. A runtime that cannot run a
spec raises :class:`Skip` saying why. Bias and the fused activation are part of every
call, so all runtimes compute the spec's whole result; ``flip=True`` is served by
flipping the weight once. Nothing here is timed or compared: see :mod:`convgen.bench.measure`.
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from convgen.spec import ConvSpec, activation_arguments

NUMPY_PAD_MODES = {"zeros": "constant", "reflect": "reflect", "replicate": "edge",
                   "circular": "wrap"}
ONNX_OPSET = 17


class Skip(Exception):
    """This runtime does not handle this spec; the message says why."""


@dataclass
class Runner:
    """One call to time, and how to turn what it returns into an NC(D)(H)W NumPy array."""

    call: Callable[[], Any]
    to_numpy: Callable[[Any], np.ndarray] = np.asarray


def peer_weight(spec: ConvSpec, w: np.ndarray) -> np.ndarray:
    """The weight a cross-correlating peer needs: flipped over the kernel axes for flip=True."""
    if not spec.flip:
        return w
    return np.ascontiguousarray(np.flip(w, axis=tuple(range(2, 2 + spec.ndim))))


def _bias_view(spec: ConvSpec, b: np.ndarray | None) -> np.ndarray | None:
    return None if b is None else b.reshape((1, -1) + (1,) * spec.ndim)


# -- NumPy: im2col + matmul ------------------------------------------------------------

def _numpy_activation(spec: ConvSpec) -> Callable[[np.ndarray], np.ndarray]:
    """The fused activation on a float array, in place where NumPy allows."""
    name = spec.activation
    args = activation_arguments(name, spec.activation_args)
    if name is None:
        return lambda y: y
    if name == "relu":
        return lambda y: np.maximum(y, 0, out=y)
    if name == "relu6":
        return lambda y: np.clip(y, 0, 6, out=y)
    if name == "clip":
        return lambda y: np.clip(y, args[0], args[1], out=y)
    if name == "leaky_relu":
        return lambda y: np.where(y > 0, y, y * y.dtype.type(args[0]))
    if name == "tanh":
        return lambda y: np.tanh(y, out=y)
    if name == "sigmoid":
        return lambda y: 1 / (1 + np.exp(-y))
    if name == "silu":
        return lambda y: y / (1 + np.exp(-y))
    raise Skip(f"activation {name!r} is not wired for numpy")


def openblas_setters() -> list[Callable[[int], None]]:
    """openblas_set_num_threads of every OpenBLAS loaded in this process (NumPy's own)."""
    setters: list[Callable[[int], None]] = []
    try:
        paths = {line.split()[-1] for line in Path("/proc/self/maps").read_text().splitlines()
                 if "openblas" in line.lower() and line.split()[-1].startswith("/")}
    except OSError:
        return setters
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for symbol in ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
                       "openblas_set_num_threads64_", "openblas_set_num_threads"):
            function = getattr(lib, symbol, None)
            if function is not None:
                function.argtypes = [ctypes.c_int]
                setters.append(function)
                break
    return setters


def numpy_runner(spec: ConvSpec, x: np.ndarray, w: np.ndarray,
                 b: np.ndarray | None = None) -> Runner:
    """im2col (sliding_window_view, one copy into a column matrix) + one matmul per group;
    transposed: matmul + col2im (scatter-add per kernel tap)."""
    w = peer_weight(spec, w)
    act = _numpy_activation(spec)
    bias = _bias_view(spec, b)
    if spec.transposed:
        if spec.padding_mode != "zeros":
            raise Skip("transposed: zero padding only")
        conv = _numpy_col2im(spec, x, w)
    else:
        conv = _numpy_im2col(spec, x, w)

    def call() -> np.ndarray:
        y = conv()
        if bias is not None:
            y += bias
        return act(y)
    return Runner(call)


def _numpy_im2col(spec: ConvSpec, x: np.ndarray, w: np.ndarray) -> Callable[[], np.ndarray]:
    nd, groups = spec.ndim, spec.groups
    n, c = spec.batch, spec.in_channels
    pads = ((0, 0), (0, 0), *spec.padding)
    padded = any(lo or hi for lo, hi in spec.padding)
    mode = NUMPY_PAD_MODES[spec.padding_mode]
    window = tuple(d * (k - 1) + 1 for k, d in zip(spec.kernel_size, spec.dilation))
    axes = tuple(range(2, 2 + nd))
    # (N, C, *out_positions, *window) -> strided outputs, dilated taps.
    pick = ((slice(None), slice(None))
            + tuple(slice(None, None, s) for s in spec.stride)
            + tuple(slice(None, None, d) for d in spec.dilation))
    order = (0, 1, *range(2 + nd, 2 + 2 * nd), *range(2, 2 + nd))  # (N, C, *k, *out)
    taps = math.prod(spec.kernel_size)
    positions = math.prod(spec.output_spatial)
    out_shape = spec.output_shape

    if groups == 1 and n == 1:
        wmat = w.reshape(spec.out_channels, -1)

        def call() -> np.ndarray:
            xp = np.pad(x, pads, mode=mode) if padded else x
            cols = sliding_window_view(xp, window, axis=axes)[pick].transpose(order)
            cols = cols.reshape(c * taps, positions)  # the im2col copy
            return (wmat @ cols).reshape(out_shape)
        return call

    wmat = w.reshape(groups, spec.out_channels // groups, -1)

    def call_grouped() -> np.ndarray:
        xp = np.pad(x, pads, mode=mode) if padded else x
        cols = sliding_window_view(xp, window, axis=axes)[pick].transpose(order)
        cols = cols.reshape(n, groups, (c // groups) * taps, positions)
        return np.matmul(wmat, cols).reshape(out_shape)
    return call_grouped


def _numpy_col2im(spec: ConvSpec, x: np.ndarray, w: np.ndarray) -> Callable[[], np.ndarray]:
    """Transposed convolution: columns = W^T X (one matmul per group), then scatter-add."""
    groups = spec.groups
    n, cin = spec.batch, spec.in_channels
    k, s, d = spec.kernel_size, spec.stride, spec.dilation
    ins, outs = spec.in_spatial, spec.output_spatial
    wmat = w.reshape(groups, cin // groups, -1).transpose(0, 2, 1)  # (G, cout_g*K, cin_g)
    full = tuple(max((i - 1) * st + dl * (kk - 1) + 1, lo + o)
                 for i, st, dl, kk, (lo, _), o in zip(ins, s, d, k, spec.padding, outs))
    crop = tuple(slice(lo, lo + o) for (lo, _), o in zip(spec.padding, outs))
    tap_slices = [tuple(slice(t * dl, t * dl + (i - 1) * st + 1, st)
                        for t, dl, i, st in zip(tap, d, ins, s))
                  for tap in np.ndindex(*k)]

    def call() -> np.ndarray:
        xmat = x.reshape(n, groups, cin // groups, -1)
        cols = np.matmul(wmat, xmat).reshape(n, spec.out_channels, -1, *ins)
        buf = np.zeros((n, spec.out_channels, *full), x.dtype)
        for t, where in enumerate(tap_slices):
            buf[(slice(None), slice(None)) + where] += cols[:, :, t]
        return np.ascontiguousarray(buf[(slice(None), slice(None)) + crop])
    return call


# -- PyTorch: torch.nn.functional, NC(D)(H)W or channels_last --------------------------

def _torch_activation(torch, spec: ConvSpec) -> Callable[[Any], Any]:
    functional = torch.nn.functional
    name = spec.activation
    args = activation_arguments(name, spec.activation_args)
    table: dict[str | None, Callable[[Any], Any]] = {
        None: lambda y: y,
        "relu": lambda y: functional.relu(y, inplace=True),
        "relu6": lambda y: functional.relu6(y, inplace=True),
        "leaky_relu": lambda y: functional.leaky_relu(y, args[0] if args else 0.01,
                                                      inplace=True),
        "clip": lambda y: y.clamp_(args[0], args[1]) if args else y,
        "sigmoid": torch.sigmoid,
        "tanh": torch.tanh,
        "elu": lambda y: functional.elu(y, args[0] if args else 1.0, inplace=True),
        "silu": lambda y: functional.silu(y, inplace=True),
        "gelu": functional.gelu,
    }
    if name not in table:
        raise Skip(f"activation {name!r} is not wired for torch")
    return table[name]


def torch_conv(torch, spec: ConvSpec) -> tuple[Callable[..., Any], dict, tuple | None, str]:
    """(op, keyword arguments, pre_pad, pad mode): ``op(x, w, b, **kwargs)`` from
    torch.nn.functional computes ``spec``'s convolution once ``x`` is padded with
    ``functional.pad(x, pre_pad, mode=...)`` where pre_pad is not None (asymmetric or
    non-zero padding, which torch's conv ops do not take); Skip where torch cannot express
    the spec."""
    functional = torch.nn.functional
    nd = spec.ndim
    symmetric = all(lo == hi for lo, hi in spec.padding)
    if spec.transposed:
        if not symmetric:
            raise Skip("asymmetric transposed padding")
        if spec.padding_mode != "zeros":
            raise Skip("transposed: zero padding only")
        return (getattr(functional, f"conv_transpose{nd}d"),
                dict(stride=spec.stride, padding=tuple(lo for lo, _ in spec.padding),
                     output_padding=spec.output_padding, groups=spec.groups,
                     dilation=spec.dilation), None, "constant")
    pre_pad = None
    if not symmetric or spec.padding_mode != "zeros":
        pre_pad = tuple(p for lo, hi in reversed(spec.padding) for p in (lo, hi))
    mode = "constant" if spec.padding_mode == "zeros" else spec.padding_mode
    padding = 0 if pre_pad is not None else tuple(lo for lo, _ in spec.padding)
    return (getattr(functional, f"conv{nd}d"),
            dict(stride=spec.stride, padding=padding, dilation=spec.dilation,
                 groups=spec.groups), pre_pad, mode)


def torch_runner(torch, spec: ConvSpec, x: np.ndarray, w: np.ndarray, channels_last: bool,
                 b: np.ndarray | None = None, count_conversion: bool = True) -> Runner:
    """torch.nn.functional.conv{1,2,3}d / conv_transpose{1,2,3}d.

    channels_last (2D only): the weight is converted once; with ``count_conversion`` the
    input's NCHW -> NHWC copy and the output's copy back to NCHW are inside the call
    (the caller holds NCHW arrays), otherwise the input is converted once, outside.
    """
    functional = torch.nn.functional
    nd = spec.ndim
    if channels_last and nd != 2:
        raise Skip("channels_last is measured for 2D layers only")
    act = _torch_activation(torch, spec)
    xt = torch.from_numpy(x)
    wt = torch.from_numpy(peer_weight(spec, w))
    bt = torch.from_numpy(b) if b is not None else None
    layout = torch.channels_last
    if channels_last:
        wt = wt.contiguous(memory_format=layout)
        if not count_conversion:
            xt = xt.contiguous(memory_format=layout)
    convert = channels_last and count_conversion

    def finish(y):
        return y.contiguous() if convert else y

    op, kwargs, pre_pad, mode = torch_conv(torch, spec)

    def call():
        with torch.no_grad():
            inp = xt.contiguous(memory_format=layout) if convert else xt
            if pre_pad is not None:
                inp = functional.pad(inp, pre_pad, mode=mode)
            return finish(act(op(inp, wt, bt, **kwargs)))
    return Runner(call, lambda y: y.contiguous().numpy())


# -- ONNX Runtime: a one-node model (plus the activation) -------------------------------

def _onnx_activation(helper, spec: ConvSpec) -> list:
    """Nodes computing "y" from "conv" for the spec's activation ([] for none)."""
    name = spec.activation
    args = activation_arguments(name, spec.activation_args)
    simple = {"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh"}
    if name in simple:
        return [helper.make_node(simple[name], ["conv"], ["y"])]
    if name == "leaky_relu":
        return [helper.make_node("LeakyRelu", ["conv"], ["y"], alpha=float(args[0]))]
    if name == "elu":
        return [helper.make_node("Elu", ["conv"], ["y"], alpha=float(args[0]))]
    raise Skip(f"activation {name!r} is not wired for onnxruntime")


def onnx_conv_model(spec: ConvSpec, w: np.ndarray, b: np.ndarray | None = None):
    """A checked ONNX model: Conv/ConvTranspose (weight and bias as initializers), then the
    activation; input "x" and output "y" in NC(D)(H)W."""
    import onnx
    from onnx import helper, numpy_helper

    if spec.padding_mode != "zeros":
        raise Skip("zero padding only")
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(spec.dtype))
    attrs: dict[str, Any] = dict(
        kernel_shape=list(spec.kernel_size), strides=list(spec.stride),
        dilations=list(spec.dilation), group=spec.groups,
        pads=[lo for lo, _ in spec.padding] + [hi for _, hi in spec.padding])
    if spec.transposed:
        attrs["output_padding"] = list(spec.output_padding)
    activation = [] if spec.activation is None else _onnx_activation(helper, spec)
    inputs = ["x", "w"] + (["b"] if b is not None else [])
    conv_out = "conv" if activation else "y"
    node = helper.make_node("ConvTranspose" if spec.transposed else "Conv", inputs,
                            [conv_out], **attrs)
    initializers = [numpy_helper.from_array(peer_weight(spec, w), "w")]
    if b is not None:
        initializers.append(numpy_helper.from_array(b, "b"))
    graph = helper.make_graph(
        [node, *activation], spec.name,
        [helper.make_tensor_value_info("x", elem, list(spec.input_shape))],
        [helper.make_tensor_value_info("y", elem, list(spec.output_shape))],
        initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)])
    model.ir_version = 8  # readable by any recent onnxruntime
    onnx.checker.check_model(model)
    return model


def ort_session(ort, model: Any, threads: int):
    """An InferenceSession on the CPU provider with ``threads`` intra-op threads;
    ``model`` is a path or serialized bytes."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def ort_runner(onnx, ort, spec: ConvSpec, x: np.ndarray, w: np.ndarray, threads: int,
               b: np.ndarray | None = None) -> Runner:
    """A one-node Conv/ConvTranspose model (opset 17, weight as an initializer)."""
    del onnx  # imported by the caller to prove it is installed; kept for the signature
    session = ort_session(ort, onnx_conv_model(spec, w, b).SerializeToString(), threads)
    feeds = {"x": x}
    return Runner(lambda: session.run(["y"], feeds)[0])
