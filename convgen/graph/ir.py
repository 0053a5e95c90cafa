"""The graph IR: what a traced network is, as plain data.

A :class:`Graph` is a list of :class:`Node` in topological order. Every node
has a unique name, an op (one of :data:`OPS`), the names of its inputs (other
nodes or graph inputs), attributes (plain data), parameters (NumPy arrays,
float64 as loaded) and its inferred output shape. Passes (BatchNorm folding,
epilogue fusion) rewrite graphs; code generators and the oracle read them.

Ops and their attributes (tuples are per spatial dim):

- ``conv``: ``spec`` (a ConvSpec dict; its input_shape is the node input's
  shape, its bias/activation fields say what the epilogue does),
  ``residual`` (bool: a second input is added before the activation).
  params: ``weight``, and ``bias`` when spec.bias.
- ``max_pool``: kernel_size, stride, padding, dilation, ceil_mode (per-dim tuples);
  optional ``padding_end`` (per-dim tuple): the padding after each spatial dim when it
  differs from the padding before it (ONNX pads, auto_pad SAME_*); absent: symmetric,
  with PyTorch's rule padding <= kernel_size // 2; present: each side < the dilated kernel.
- ``max_pool_indices``: max_pool's attrs and ``storage_order`` (0 or 1); its output is,
  per window, the index of its maximum (the first in window order; the first element
  that is not padding when none is larger, e.g. all NaN; -1 for a window of padding only)
  as ONNX MaxPool's Indices: flattened over the whole NC* input, the spatial dims
  row-major (storage_order 0) or column-major (1). Values are exact integers held in the
  network's element type (lowering refuses an input of more elements than its mantissa
  holds: 2**24 for float32); the model casts them to int64 at its output.
- ``avg_pool``: kernel_size, stride, padding, ceil_mode, count_include_pad; optional
  ``dilation`` (per-dim tuple, default ones: ONNX AveragePool's dilations, opset 19) and
  ``padding_end`` as max_pool (the divisor counts the window's taps inside the padded
  input with count_include_pad, inside the input without).
- ``adaptive_avg_pool``: output_size (per spatial dim, any positive size; torch's
  overlapping bins: start = floor(i*in/out), end = ceil((i+1)*in/out)).
- ``linear``: params ``weight`` (out, in) and optional ``bias``; attr ``activation``
  (None or a name from convgen.spec.ACTIVATIONS) and ``activation_args``.
- ``flatten``: start_dim, end_dim.
- ``activation``: name, args (as ConvSpec.activation / activation_args).
- ``softmax``, ``log_softmax``: dim (non-negative).
- ``batch_norm``: eps; params running_mean, running_var, weight, bias.
- ``add``: two inputs of the same shape.
- ``cat``: dim (non-negative), two or more inputs.
- ``identity``: one input (Dropout at inference, Identity); removed by passes.

Ops that imported (ONNX) graphs need; any rank unless said:

- ``reshape``: shape (the full static output shape, no -1 or 0); a view like flatten.
- ``transpose``: perm (a permutation of range(rank)), numpy.transpose.
- ``pad``: pads (2*rank ints: the begins of every dim, then the ends, as ONNX Pad;
  a negative pad crops, constant mode only), value (float; constant mode only), mode
  (optional: "constant" (default), "reflect" (each pad < the dim's size), "edge" or
  "wrap", as ONNX Pad and numpy.pad).
- ``slice``: starts, stops, steps (one per dim, a Python range per dim: 0 <= start <
  size, -1 <= stop <= size, step != 0, not empty); numpy basic slicing with any step.
- ``expand``: shape (numpy broadcasting of the input to ``shape``; the input's rank may
  be smaller, its dims are then aligned to the right).
- ``lrn``: size, alpha, beta, bias (ONNX LRN over dim 1: y = x / (bias + alpha / size *
  sum of x^2 over channels [c - (size-1)//2, c + ceil((size-1)/2)]) ** beta).
- ``binary``: kind (one of "add", "sub", "mul", "div", "max", "min", "prelu"), two
  inputs of the same shape; max/min propagate NaN (numpy.maximum/minimum); prelu is
  ``a < 0 ? a * b : a`` (b the slope).
- ``where``: three inputs of the same shape (condition, x, y): x where condition != 0,
  else y.
- ``matmul``: two inputs (..., M, K) and (..., K, N) with the same leading dims
  (numpy.matmul without broadcasting); output (..., M, N). Rank >= 2.
- ``constant``: no inputs; params ``value`` (its output, any shape); lives with the
  parameters, computed by nobody.
- ``resample``: one axis resized by interpolation (ONNX Resize/Upsample, one node per
  resized axis; convgen.graph.resample): ``axis``, ``size`` (the output length),
  ``mode`` ("nearest", "linear", "cubic"), ``coordinate`` (ONNX's
  coordinate_transformation_mode, tf_crop_and_resize aside), ``scale`` (what the
  coordinate transform divides by), ``nearest_mode`` (ONNX's, or "simple": floor when
  upsampling, ceil when downsampling, as Resize-10), ``cubic_coeff_a``,
  ``exclude_outside``.

Element types: a graph is compiled with one element type for every value
(convgen.dtypes.ELEMENT_TYPES). Every op runs on float32 and float64; on the integer types
(int8 ... uint64) only :data:`INTEGER_OPS` do (activations: :data:`INTEGER_ACTIVATIONS`),
with ONNX's integer semantics: add, sub and mul wrap around on overflow; div truncates
toward zero (as C and ONNX Runtime), x / 0 is 0 and, signed, x / -1 is -x (wrapping, so
MIN / -1 is MIN) rather than a trap; max pooling's padding is the type's least value.
Convolution, linear, pooling averages, softmax, batch norm, LRN, matmul and the float
activations compute in floating point only (ONNX's integer convolutions, ConvInteger and
QLinearConv, are other operators).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from convgen.errors import ConvgenError

OPS = ("conv", "max_pool", "max_pool_indices", "avg_pool", "adaptive_avg_pool", "linear", "flatten",
       "activation", "softmax", "log_softmax", "batch_norm", "add", "cat", "identity",
       "reshape", "transpose", "pad", "slice", "expand", "lrn", "binary", "where", "matmul",
       "constant", "resample")


# ops (and activations) that integer networks compile; the others are float-only
INTEGER_OPS = ("max_pool", "flatten", "activation", "add", "cat", "identity", "reshape",
               "transpose", "pad", "slice", "expand", "binary", "where", "constant")
INTEGER_ACTIVATIONS = ("relu", "relu6", "clip")
INTEGER_BINARY_KINDS = ("add", "sub", "mul", "div", "max", "min")


class GraphError(ConvgenError, ValueError):
    """An invalid network: names the layer (node) and what is wrong, e.g. the shapes."""


def describe(node: Node) -> str:
    """How errors name a node: ``layer1.0.conv1 (Conv2d)``, or just the name."""
    return f"{node.name} ({node.module})" if node.module else node.name


def node_error(node: Node, message: str) -> GraphError:
    """A GraphError naming ``node``: ``features.3 (Conv2d): message``."""
    return GraphError(f"{describe(node)}: {message}")


def check_element_type(graph: Graph, dtype: str, integer: bool) -> None:
    """GraphError naming the first node whose op (or activation) cannot run on the element
    type ``dtype`` (``integer``: an integer type); float types run every op."""
    if not integer:
        return
    for node in graph.nodes:
        what = None
        if node.op not in INTEGER_OPS:
            what = f"op {node.op!r}"
        elif node.op == "activation" and node.attrs.get("name") not in INTEGER_ACTIVATIONS:
            what = f"activation {node.attrs.get('name')!r}"
        elif node.op == "binary" and node.attrs.get("kind") not in INTEGER_BINARY_KINDS:
            what = f"binary kind {node.attrs.get('kind')!r}"
        if what is not None:
            raise node_error(node, f"{what} does not run on {dtype}: convgen computes it "
                                   f"in float32/float64 only (integer networks run "
                                   f"{', '.join(INTEGER_OPS)}; activations "
                                   f"{', '.join(INTEGER_ACTIVATIONS)})")


@dataclass
class Node:
    name: str
    op: str
    inputs: list[str]
    attrs: dict = field(default_factory=dict)
    params: dict[str, np.ndarray] = field(default_factory=dict)
    shape: tuple[int, ...] = ()
    module: str = ""  # the module class (for summaries), e.g. "Conv2d"
    fused: list[str] = field(default_factory=list)  # names of nodes folded/fused into it

    def copy(self) -> Node:
        return dataclasses.replace(self, inputs=list(self.inputs), attrs=dict(self.attrs),
                                   params=dict(self.params), fused=list(self.fused))


@dataclass
class Graph:
    inputs: list[tuple[str, tuple[int, ...]]]  # (name, shape) per graph input
    nodes: list[Node]
    outputs: list[str]

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def shape_of(self, name: str) -> tuple[int, ...]:
        for input_name, shape in self.inputs:
            if input_name == name:
                return shape
        return self.node(name).shape

    def consumers(self, name: str) -> list[Node]:
        return [n for n in self.nodes if name in n.inputs]

    def copy(self) -> Graph:
        return Graph(list(self.inputs), [n.copy() for n in self.nodes], list(self.outputs))
