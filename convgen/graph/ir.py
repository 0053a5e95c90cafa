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
- ``avg_pool``: kernel_size, stride, padding, ceil_mode, count_include_pad; optional
  ``padding_end`` as max_pool (the divisor with count_include_pad counts the window
  clipped to the padded input, both sides).
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
  a negative pad crops), value (float; constant mode only).
- ``expand``: shape (numpy broadcasting of the input to ``shape``; the input's rank may
  be smaller, its dims are then aligned to the right).
- ``lrn``: size, alpha, beta, bias (ONNX LRN over dim 1: y = x / (bias + alpha / size *
  sum of x^2 over channels [c - (size-1)//2, c + ceil((size-1)/2)]) ** beta).
- ``binary``: kind (one of "add", "sub", "mul", "div"), two inputs of the same shape.
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
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from convgen.errors import ConvgenError

OPS = ("conv", "max_pool", "avg_pool", "adaptive_avg_pool", "linear", "flatten",
       "activation", "softmax", "log_softmax", "batch_norm", "add", "cat", "identity",
       "reshape", "transpose", "pad", "expand", "lrn", "binary", "matmul", "constant",
       "resample")


class GraphError(ConvgenError, ValueError):
    """An invalid network: names the layer (node) and what is wrong, e.g. the shapes."""


def describe(node: Node) -> str:
    """How errors name a node: ``layer1.0.conv1 (Conv2d)``, or just the name."""
    return f"{node.name} ({node.module})" if node.module else node.name


def node_error(node: Node, message: str) -> GraphError:
    """A GraphError naming ``node``: ``features.3 (Conv2d): message``."""
    return GraphError(f"{describe(node)}: {message}")


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
