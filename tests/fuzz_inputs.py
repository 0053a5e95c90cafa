"""Fuzzing convgen's readers: spec files, network files and ONNX models (hypothesis).

Every input must either load or raise a convgen error (``ConvgenError`` subclasses) or a
ValueError/TypeError from the public API; anything else (KeyError, IndexError,
RecursionError, MemoryError, OverflowError, a hang, a crash) is a bug. Inputs are
mutations of the real files in specs/ and specs/nets/ and of a small ONNX model: TOML
values replaced, dropped or added at any depth, the raw text or bytes damaged, and ONNX
graphs built from random nodes with random attributes. Loading, tracing and shape
inference are the target; nothing is compiled.

tests/test_fuzz.py runs a few examples of each in the suite; ``make fuzz`` runs many
(``CONVGEN_FUZZ_EXAMPLES`` per target, fresh random inputs, ``CONVGEN_FUZZ_HUGE=1``: also
huge and negative numbers, under a memory limit so a huge allocation is a MemoryError).
"""

from __future__ import annotations

import copy
import io
import math
import os
import signal
import tomllib
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from hypothesis import strategies as st

import convgen as cg
from convgen.errors import ConvgenError
from convgen.specfile import load_specfile

REPO = Path(__file__).resolve().parent.parent
SPEC_FILES = sorted((REPO / "specs").glob("*.toml"))
# the small networks: resnet18 and video3d take seconds to initialize and trace
NET_FILES = [REPO / "specs" / "nets" / f"{n}.toml"
             for n in ("lenet5", "audio1d", "dcgan_generator")]

ALLOWED = (ConvgenError, ValueError, TypeError)
EXAMPLES = int(os.environ.get("CONVGEN_FUZZ_EXAMPLES", "0")) or None  # None: the test's own
HUGE = os.environ.get("CONVGEN_FUZZ_HUGE") == "1"
TIME_LIMIT_S = 20.0  # one input: loading takes well under a second; more is a hang


class Hang(Exception):
    """One input took longer than TIME_LIMIT_S (not an allowed error: the fuzz test fails)."""


@contextmanager
def time_limit(seconds: float = TIME_LIMIT_S):
    """Raise Hang in the main thread after ``seconds`` (SIGALRM; elsewhere: no limit)."""
    def alarm(signum, frame):
        raise Hang(f"one input ran longer than {seconds} s")

    try:
        previous = signal.signal(signal.SIGALRM, alarm)
    except ValueError:  # not the main thread
        yield
        return
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def accepts_or_rejects(load, *args, **kwargs):
    """``load(*args)``'s result, or None where it raised an allowed (convgen) error; any
    other exception propagates and fails the fuzz test."""
    with time_limit():
        try:
            return load(*args, **kwargs)
        except ALLOWED:
            return None


# -- TOML -----------------------------------------------------------------------------------

def _toml_string(text: str) -> str:
    out = []
    for ch in text:
        code = ord(ch)
        if ch in '"\\' or code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04X}")
        elif 0xD800 <= code <= 0xDFFF:  # lone surrogates are not TOML text
            out.append("\\uFFFD")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _toml_key(key: str) -> str:
    return _toml_string(key)


def toml_value(value) -> str:
    """``value`` as an inline TOML value (tables inline, so any nesting is expressible)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {toml_value(v)}"
                               for k, v in value.items()) + "}"
    raise TypeError(f"not a TOML value: {value!r}")


def to_toml(data: dict) -> str:
    """A TOML document: top-level keys; lists of tables as [[key]] arrays."""
    lines = []
    for key, value in data.items():
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for table in value:
                lines.append(f"[[{_toml_key(key)}]]")
                lines += [f"{_toml_key(k)} = {toml_value(v)}" for k, v in table.items()]
        else:
            lines.append(f"{_toml_key(key)} = {toml_value(value)}")
    return "\n".join(lines) + "\n"


# keys and words the readers know, so mutations reach past the first "unknown key" check
WORDS = ["same", "valid", "relu", "tanh", "sigmoid", "leaky_relu", "gelu", "float32",
         "float64", "float16", "bfloat16", "int8", "name", "type", "args", "kwargs",
         "input_shape", "out_channels", "kernel_size", "stride", "padding", "dilation",
         "groups", "bias", "activation", "transposed", "output_padding", "dtype", "layer",
         "schedule", "tile_co", "tile_w", "threads", "method", "vector_width", "Conv2d",
         "Conv1d", "Linear", "ReLU", "MaxPool2d", "Flatten", "Residual", "Concat",
         "BatchNorm2d", "Sequential", "ConvTranspose2d", "Softmax", "Dropout", ""]


def small_ints(huge: bool = HUGE):
    ints = st.integers(-2, 40)
    if huge:
        ints = ints | st.sampled_from([0, -1, 2**31 - 1, 2**31, 2**32 + 1, 2**62, 2**63 - 1,
                                       -2**63, 10**6, 10**9])
    return ints


def toml_scalars(huge: bool = HUGE):
    return (small_ints(huge) | st.booleans() | st.sampled_from(WORDS)
            | st.text(max_size=8)
            | st.floats(allow_nan=True, allow_infinity=True, width=64))


def toml_values(huge: bool = HUGE):
    keys = st.sampled_from(WORDS) | st.text(max_size=6)
    return st.recursive(toml_scalars(huge), lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(keys, inner, max_size=3)),
        max_leaves=10)


@st.composite
def mutated(draw, data, huge: bool = HUGE):
    """``data`` (parsed TOML) with 1 to 4 mutations at random depths: a value replaced, a
    key dropped, a key added, a list element dropped or duplicated, a list shuffled."""
    data = copy.deepcopy(data)
    for _ in range(draw(st.integers(1, 4))):
        # walk down from the top to a container, stopping at random
        node = data
        while True:
            children = list(node.items()) if isinstance(node, dict) else list(enumerate(node))
            containers = [(k, v) for k, v in children if isinstance(v, (dict, list)) and v]
            if not containers or draw(st.integers(0, 2)) == 0:
                break
            node = draw(st.sampled_from(containers))[1]
        keys = list(node.keys()) if isinstance(node, dict) else list(range(len(node)))
        op = draw(st.sampled_from(["replace", "replace", "drop", "add", "dup", "shuffle"]))
        if op in ("replace", "drop", "dup") and not keys:
            op = "add"
        if op == "replace":
            key = draw(st.sampled_from(keys))
            old = node[key]
            # half the time a value of the same type, so the input gets past type checks
            if isinstance(old, int) and not isinstance(old, bool) and draw(st.booleans()):
                node[key] = draw(small_ints(huge))
            elif isinstance(old, str) and draw(st.booleans()):
                node[key] = draw(st.sampled_from(WORDS))
            else:
                node[key] = draw(toml_values(huge))
        elif op == "drop":
            key = draw(st.sampled_from(keys))
            del node[key]
        elif op == "dup" and isinstance(node, list):
            node.append(copy.deepcopy(node[draw(st.sampled_from(keys))]))
        elif op == "shuffle" and isinstance(node, list):
            node[:] = draw(st.permutations(node))
        elif isinstance(node, dict):
            node[draw(st.sampled_from(WORDS) | st.text(max_size=6))] = draw(toml_values(huge))
        else:
            node.insert(draw(st.integers(0, len(node))), draw(toml_values(huge)))
    return data


@st.composite
def damaged_text(draw, text: str):
    """``text`` with bytes flipped, cut, inserted or a span repeated (as a file on disk)."""
    raw = bytearray(text.encode())
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "repeat", "truncate"]))
        at = draw(st.integers(0, max(len(raw) - 1, 0)))
        if op == "flip" and raw:
            raw[at] = draw(st.integers(0, 255))
        elif op == "cut":
            del raw[at:at + draw(st.integers(1, 16))]
        elif op == "insert":
            raw[at:at] = draw(st.sampled_from([b"[", b"]", b"=", b"\"", b"\n", b"[[", b"{",
                                               b"999999999999", b"-1", b"0", b"1e400",
                                               b"nan", b"\\u0000", b"\xff", b"#"]))
        elif op == "repeat":
            raw[at:at] = raw[at:at + draw(st.integers(1, 64))]
        else:
            del raw[at:]
    return bytes(raw)


def parsed(path: Path) -> dict:
    return tomllib.loads(path.read_text())


def spec_file_inputs(huge: bool = HUGE):
    """Spec-file text: a real file mutated (as TOML) or damaged (as bytes)."""
    files = [(p.name, p.read_text()) for p in SPEC_FILES]
    return st.sampled_from(files).flatmap(lambda f: st.one_of(
        mutated(tomllib.loads(f[1]), huge).map(to_toml).map(str.encode),
        damaged_text(f[1])).map(lambda raw: (f[0], raw)))


def net_file_inputs(huge: bool = HUGE):
    """Network-file text: a real (small) network mutated (as TOML) or damaged (as bytes)."""
    files = [(p.name, p.read_text()) for p in NET_FILES]
    return st.sampled_from(files).flatmap(lambda f: st.one_of(
        mutated(tomllib.loads(f[1]), huge).map(to_toml).map(str.encode),
        damaged_text(f[1])).map(lambda raw: (f[0], raw)))


def load_spec_bytes(raw: bytes, tmp: Path):
    """load_specfile on ``raw`` written to a file (the public path: reading and decoding)."""
    path = tmp / "fuzz.toml"
    path.write_bytes(raw)
    entries = load_specfile(path)
    for entry in entries:  # derived values a caller reads: must not raise either
        entry.spec.output_shape, entry.spec.flops, entry.spec.key()
    return entries


def load_net_bytes(raw: bytes, tmp: Path):
    """load_network on ``raw`` written to a file: parse, build (weights) and trace."""
    path = tmp / "fuzz_net.toml"
    path.write_bytes(raw)
    return cg.load_network(path)


# -- ONNX -----------------------------------------------------------------------------------

OPS = ["Abs", "Add", "And", "AveragePool", "BatchNormalization", "Cast", "Ceil", "Clip",
       "Concat", "Constant", "ConstantOfShape", "Conv", "ConvTranspose", "Div", "Dropout",
       "Equal", "Exp", "Expand", "Flatten", "Floor", "Gather", "Gemm", "GlobalAveragePool",
       "GlobalMaxPool", "Greater", "Identity", "LRN", "LeakyRelu", "Less", "Log",
       "LogSoftmax", "MatMul", "MaxPool", "Mul", "Neg", "Not", "Or", "Pad", "Pow", "Range",
       "Reciprocal", "Relu", "Reshape", "Shape", "Sigmoid", "Slice", "Softmax", "Sqrt",
       "Squeeze", "Sub", "Sum", "Tanh", "Transpose", "Unsqueeze", "Where",
       "Max", "Min", "Mean", "PRelu", "Split", "ReduceMean", "Resize",
       "Upsample", "HardSigmoid", "Elu", "Gelu",
       "TopK", "NotAnOp"]  # and two convgen does not support: a clear error
INT_ATTRS = ["group", "axis", "transA", "transB", "ceil_mode", "count_include_pad",
             "keepdims", "to", "size", "storage_order", "allowzero", "broadcast",
             "training_mode", "spatial", "is_test", "consumed_inputs", "num_outputs",
             "noop_with_empty_axes", "exclude_outside", "antialias"]
INTS_ATTRS = ["kernel_shape", "strides", "pads", "dilations", "axes", "perm",
              "output_padding", "output_shape", "shape", "starts", "ends", "split"]
FLOAT_ATTRS = ["alpha", "beta", "epsilon", "momentum", "bias", "min", "max", "ratio",
               "gamma", "cubic_coeff_a"]
STRING_ATTRS = ["auto_pad", "mode", "coordinate_transformation_mode", "nearest_mode",
                "approximate", "keep_aspect_ratio_policy"]
DTYPES = [np.float32, np.float64, np.int64, np.int32, np.bool_, np.float16, np.uint8]


def _onnx():
    import onnx  # optional (convgen[onnx]); test_fuzz skips without it

    return onnx


def small_model_bytes() -> bytes:
    """A small valid model (Conv, Relu, MaxPool, Flatten, Gemm): the byte-flip seed."""
    onnx = _onnx()
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = {"w": rng.standard_normal((4, 2, 3, 3)).astype(np.float32),
             "b": rng.standard_normal(4).astype(np.float32),
             "fw": rng.standard_normal((3, 16)).astype(np.float32),
             "fb": np.zeros(3, np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[3, 3],
                              pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Flatten", ["p"], ["f"], axis=1),
             helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], transB=1)]
    graph = helper.make_graph(
        nodes, "fuzz", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              ir_version=8)
    onnx.checker.check_model(model)
    return model.SerializeToString()


@st.composite
def flipped_bytes(draw, seed: bytes):
    raw = bytearray(seed)
    # few changes, mostly in place: most bytes are tensor data, names and attribute
    # values, so a flip there keeps the wire format and reaches the importer
    for _ in range(draw(st.integers(1, 2))):
        op = draw(st.sampled_from(["flip", "flip", "flip", "bit", "bit", "cut", "insert",
                                   "truncate"]))
        at = draw(st.integers(0, len(raw) - 1)) if raw else 0
        if op == "flip" and raw:
            raw[at] = draw(st.integers(0, 255))
        elif op == "bit" and raw:
            raw[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "cut":
            del raw[at:at + draw(st.integers(1, 8))]
        elif op == "insert":
            raw[at:at] = draw(st.binary(min_size=1, max_size=8))
        else:
            del raw[at:]
    return bytes(raw)


def _array(draw, dtypes=DTYPES, max_rank: int = 4, huge: bool = HUGE):
    dtype = draw(st.sampled_from(dtypes))
    shape = tuple(draw(st.lists(st.integers(0, 4), max_size=max_rank)))
    if np.dtype(dtype).kind in "iu":
        values = st.integers(-3, 8) | (st.sampled_from([2**31 - 1, -2**31, 10**6])
                                       if huge else st.nothing())
    elif np.dtype(dtype).kind == "b":
        values = st.booleans()
    else:
        values = st.floats(-4, 4, width=16) | st.sampled_from([0.0, float("nan"),
                                                               float("inf")])
    flat = draw(st.lists(values, min_size=int(np.prod(shape)), max_size=int(np.prod(shape))))
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    if info is not None:
        flat = [min(max(v, info.min), info.max) for v in flat]
    return np.array(flat, dtype=dtype).reshape(shape)


@st.composite
def _attribute(draw, huge: bool = HUGE):
    from onnx import numpy_helper

    ints = small_ints(huge)
    kind = draw(st.sampled_from(["int", "ints", "float", "string", "tensor", "wrong"]))
    if kind == "int":
        return draw(st.sampled_from(INT_ATTRS)), draw(ints)
    if kind == "ints":
        return draw(st.sampled_from(INTS_ATTRS)), draw(st.lists(ints, max_size=6))
    if kind == "float":
        return draw(st.sampled_from(FLOAT_ATTRS)), draw(st.floats(width=32))
    if kind == "string":
        return draw(st.sampled_from(STRING_ATTRS)), draw(st.sampled_from(
            ["NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID", "constant", "reflect", "edge",
             "nearest", "linear", "cubic", "align_corners", "asymmetric", "tanh", "not_larger",
             "", "bogus"]))
    if kind == "tensor":
        return "value", numpy_helper.from_array(_array(draw, huge=huge))
    # a known name with a value of the wrong kind
    name = draw(st.sampled_from(INT_ATTRS + INTS_ATTRS + FLOAT_ATTRS + STRING_ATTRS))
    return name, draw(st.sampled_from([1.5, "text", [1.0, 2.0], 7, [3, -1]]))


def _input_count(op: str):
    """Mostly a count the operator's schema allows (so the node reaches its handler)."""
    from onnx import defs

    try:
        schema = defs.get_schema(op, 17, "")
        low = min(schema.min_input, 4)
        high = max(low, min(schema.max_input, 4))
    except Exception:  # not an ONNX operator (NotAnOp): any count
        low, high = 0, 3
    return st.integers(low, high) | st.integers(0, 3)


@st.composite
def onnx_models(draw, huge: bool = HUGE):
    """A model of 1 to 4 random nodes over one float input: each node's inputs from the
    values so far and fresh initializers, with random attributes; the last node's first
    output is the graph's output."""
    _onnx()
    from onnx import TensorProto, helper, numpy_helper

    rank = draw(st.integers(1, 5))
    shape = draw(st.lists(st.integers(1, 5), min_size=rank, max_size=rank))
    values = ["x"]
    initializers = []
    nodes = []
    for i in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(OPS))
        inputs = []
        for k in range(draw(_input_count(op))):
            if k == 0 or draw(st.booleans()):
                inputs.append(draw(st.sampled_from(values)))
            elif draw(st.integers(0, 5)) == 0:
                inputs.append("")  # an omitted optional input
            else:
                name = f"c{i}_{k}"
                initializers.append(numpy_helper.from_array(_array(draw, huge=huge), name))
                values.append(name)
                inputs.append(name)
        outputs = [f"v{i}"] + ([f"v{i}_extra"] if draw(st.integers(0, 4)) == 0 else [])
        attributes = dict(draw(st.lists(_attribute(huge), max_size=4)))
        try:
            nodes.append(helper.make_node(op, inputs, outputs, **attributes))
        except (ValueError, TypeError):  # onnx's own helper refused the attribute value
            nodes.append(helper.make_node(op, inputs, outputs))
        values += outputs
    input_dims = [d if draw(st.integers(0, 5)) else "N" for d in shape]  # some symbolic
    graph = helper.make_graph(
        nodes, "fuzz", [helper.make_tensor_value_info("x", TensorProto.FLOAT, input_dims)],
        [helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT, None)],
        initializers)
    opset = draw(st.sampled_from([17, 13, 11, 9, 7, 21]))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              ir_version=8)
    fixed = tuple(shape) if any(isinstance(d, str) for d in input_dims) else None
    return model, fixed


def load_onnx(model, input_shape=None) -> object:
    """from_onnx, then (where the shapes are known) shape inference and the passes, through
    ``summary`` (which builds, infers, optimizes and plans memory, but compiles nothing)."""
    imported = cg.from_onnx(model, input_shape=input_shape)
    if imported.input_shapes and all(
            s is not None and all(d is not None for d in s) for s in imported.input_shapes):
        imported.summary(file=io.StringIO())
    return imported
