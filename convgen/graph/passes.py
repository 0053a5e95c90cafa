"""Graph rewrites: drop identities, fold BatchNorm, fuse epilogues.

Every pass takes a Graph and returns a new one (the input is not modified), and
records in ``Node.fused`` the names of the nodes it absorbed, so summaries can
say what went where. The composed NumPy oracle of the *original* graph checks
the result of every pass in the tests.
"""

from __future__ import annotations

import numpy as np

from convgen.errors import SpecError
from convgen.spec import ConvSpec, activation_arguments
from convgen.graph.ir import Graph, Node


def _rewire(graph: Graph, old: str, new: str) -> None:
    """Point every use of value ``old`` (node inputs and graph outputs) at ``new``."""
    for node in graph.nodes:
        node.inputs = [new if name == old else name for name in node.inputs]
    graph.outputs = [new if name == old else name for name in graph.outputs]


def _single_consumer(graph: Graph, name: str) -> bool:
    """True when ``name`` feeds exactly one node input and is not a graph output."""
    uses = sum(node.inputs.count(name) for node in graph.nodes)
    return uses == 1 and name not in graph.outputs


def remove_identities(graph: Graph) -> Graph:
    """Dropout (at inference) and Identity compute nothing: bypass them."""
    graph = graph.copy()
    for node in [n for n in graph.nodes if n.op == "identity"]:
        graph.nodes.remove(node)
        _rewire(graph, node.name, node.inputs[0])
    return graph


def _producer(graph: Graph, name: str) -> Node | None:
    for node in graph.nodes:
        if node.name == name:
            return node
    return None


def fold_batch_norm(graph: Graph) -> Graph:
    """conv -> batch_norm becomes one conv with scaled weights and a shifted bias.

    scale = gamma / sqrt(var + eps); w' = w * scale (per output channel);
    b' = (b - mean) * scale + beta. Applies when the conv has no activation or
    residual yet and the BatchNorm is its only consumer.
    """
    graph = graph.copy()
    for bn in [n for n in graph.nodes if n.op == "batch_norm"]:
        conv = _producer(graph, bn.inputs[0])
        if conv is None or conv.op != "conv" or not _single_consumer(graph, conv.name):
            continue
        spec = ConvSpec.from_dict(conv.attrs["spec"])
        if spec.activation is not None or conv.attrs.get("residual"):
            continue
        eps = float(bn.attrs.get("eps", 1e-5))  # PyTorch's default, as the oracle
        scale = bn.params["weight"] / np.sqrt(bn.params["running_var"] + eps)
        weight = np.asarray(conv.params["weight"], dtype=np.float64)
        if spec.transposed:  # (C_in, C_out/groups, *k): output channel c = g*Cog + j
            groups, cin, cout_g = spec.groups, spec.in_channels, spec.out_channels // spec.groups
            w = weight.reshape(groups, cin // groups, cout_g, -1)
            w = w * scale.reshape(groups, 1, cout_g, 1)
            weight = w.reshape(weight.shape)
        else:
            weight = weight * scale.reshape((-1,) + (1,) * (weight.ndim - 1))
        bias = conv.params.get("bias")
        bias = np.zeros(spec.out_channels) if bias is None else np.asarray(bias, np.float64)
        conv.params = {"weight": weight,
                       "bias": (bias - bn.params["running_mean"]) * scale + bn.params["bias"]}
        conv.attrs = dict(conv.attrs, spec=spec.replace(bias=True).to_dict())
        conv.fused.append(bn.name)
        graph.nodes.remove(bn)
        _rewire(graph, bn.name, conv.name)
    return graph


def _hoist(graph: Graph, name: str, before: str) -> bool:
    """Move the node computing ``name`` to right after the last producer of its inputs,
    if that is before node ``before``; False (nothing moved) otherwise."""
    node = _producer(graph, name)
    if node is None:
        return False
    order = {n.name: i for i, n in enumerate(graph.nodes)}
    position = 1 + max((order[i] for i in node.inputs if i in order), default=-1)
    if position > order[before]:
        return False
    graph.nodes.remove(node)
    graph.nodes.insert(position, node)
    return True


def _conv_flops(graph: Graph, name: str) -> int:
    node = _producer(graph, name)
    return ConvSpec.from_dict(node.attrs["spec"]).flops if node and node.op == "conv" else -1


def fuse_residual_add(graph: Graph) -> Graph:
    """add(conv(x), r) becomes conv(x) with ``r`` summed in its epilogue.

    The conv must have no activation or residual yet and feed only the add. When both
    operands are such convs, the one with more FLOPs takes the other as its residual (a
    ResNet block's conv2 takes the 1x1 shortcut, as ONNX Runtime fuses it). ``r`` must be
    computed before the conv: when it is computed after, its node moves to right after
    its own inputs (the shortcut then runs first, while the block's input is still in
    cache), unless those come after the conv too.
    """
    graph = graph.copy()
    for add in [n for n in graph.nodes if n.op == "add"]:
        pairs = sorted(((0, 1), (1, 0)), key=lambda p: -_conv_flops(graph, add.inputs[p[0]]))
        for mine, other in pairs:
            conv = _producer(graph, add.inputs[mine])
            residual = add.inputs[other]
            if conv is None or conv.op != "conv" or conv.attrs.get("residual"):
                continue
            if ConvSpec.from_dict(conv.attrs["spec"]).activation is not None:
                continue
            if not _single_consumer(graph, conv.name) or residual == conv.name:
                continue
            order = {n.name: i for i, n in enumerate(graph.nodes)}
            if residual in order and order[residual] > order[conv.name] and \
                    not _hoist(graph, residual, conv.name):
                continue
            conv.attrs = dict(conv.attrs, residual=True)
            conv.inputs = conv.inputs + [residual]
            conv.fused.append(add.name)
            graph.nodes.remove(add)
            _rewire(graph, add.name, conv.name)
            break
    return graph


# x * gate(x) as one activation: exporters write SiLU as Sigmoid then Mul, and Hardswish
# (before opset 14) as HardSigmoid(alpha=1/6, beta=1/2) then Mul
_HARDSWISH_GATES = ((1.0 / 6.0, 0.5), (float(np.float32(1.0 / 6.0)), 0.5))


def _gated(gate: Node) -> str | None:
    """The activation that x * gate(x) is, for an activation node ``gate``; else None."""
    name = gate.attrs.get("name") if gate.op == "activation" else None
    if name == "sigmoid":
        return "silu"
    if name == "hardsigmoid" and tuple(activation_arguments(
            name, gate.attrs.get("args"))) in _HARDSWISH_GATES:
        return "hardswish"
    return None


def fuse_gating(graph: Graph) -> Graph:
    """x * sigmoid(x) becomes one ``silu`` activation and x * hardsigmoid(x) (torch's 1/6,
    1/2) one ``hardswish`` (a ``binary`` mul of a value and its own gate, either order),
    which fuse_activation then puts in a conv's epilogue. The gate stays when something
    else reads it."""
    graph = graph.copy()
    for mul in [n for n in graph.nodes if n.op == "binary" and n.attrs.get("kind") == "mul"]:
        for mine, other in ((0, 1), (1, 0)):
            gate = _producer(graph, mul.inputs[mine])
            fused = None if gate is None or gate.inputs[:1] != [mul.inputs[other]] \
                else _gated(gate)
            if fused is None:
                continue
            mul.op = "activation"
            mul.attrs = {"name": fused, "args": ()}
            mul.inputs = [mul.inputs[other]]
            if not graph.consumers(gate.name) and gate.name not in graph.outputs:
                graph.nodes.remove(gate)
                mul.fused.append(gate.name)
            break
    return graph


def fuse_activation(graph: Graph) -> Graph:
    """conv/linear -> activation becomes one node with the activation in its epilogue."""
    graph = graph.copy()
    for act in [n for n in graph.nodes if n.op == "activation"]:
        producer = _producer(graph, act.inputs[0])
        if producer is None or not _single_consumer(graph, producer.name):
            continue
        if producer.op == "conv":
            spec = ConvSpec.from_dict(producer.attrs["spec"])
            if spec.activation is not None:
                continue
            new_spec = spec.replace(activation=act.attrs["name"],
                                    activation_args=tuple(act.attrs.get("args", ())))
            producer.attrs = dict(producer.attrs, spec=new_spec.to_dict())
        elif producer.op == "linear":
            if producer.attrs.get("activation") is not None:
                continue
            producer.attrs = dict(producer.attrs, activation=act.attrs["name"],
                                  activation_args=activation_arguments(
                                      act.attrs["name"], act.attrs.get("args")))
        else:
            continue
        producer.fused.append(act.name)
        graph.nodes.remove(act)
        _rewire(graph, act.name, producer.name)
    return graph


# Pad modes and the ConvSpec padding_mode that pads the same way (PyTorch's names)
PAD_MODE_TO_CONV = {"constant": "zeros", "reflect": "reflect", "edge": "replicate",
                    "wrap": "circular"}


def fold_pad_into_conv(graph: Graph) -> Graph:
    """pad (spatial dims only, no cropping) -> conv becomes one conv that pads more.

    Exporters write explicit Pad nodes before convolutions (TensorFlow's SAME padding,
    PyTorch's ReflectionPad2d / ReplicationPad2d before a Conv2d); the conv's own padding
    does the same work without a copy: a zero pad adds to any zero padding the conv has, a
    reflect / edge / wrap pad becomes the padding_mode of a conv that pads nothing itself
    (where ConvSpec accepts it: circular padding at most the size). The pad node stays
    when something else reads it.
    """
    graph = graph.copy()
    for conv in [n for n in graph.nodes if n.op == "conv"]:
        pad = _producer(graph, conv.inputs[0])
        if pad is None or pad.op != "pad":
            continue
        mode = PAD_MODE_TO_CONV[pad.attrs.get("mode", "constant")]
        if mode == "zeros" and float(pad.attrs.get("value", 0.0)) != 0.0:
            continue
        spec = ConvSpec.from_dict(conv.attrs["spec"])
        rank = len(spec.input_shape)
        pads = tuple(pad.attrs["pads"])
        begins, ends = pads[:rank], pads[rank:]
        if (spec.transposed or spec.padding_mode != "zeros" or min(pads) < 0
                or any(begins[:2]) or any(ends[:2])
                or (mode != "zeros" and any(map(any, spec.padding)))):
            continue
        padding = [(lo + b, hi + e) for (lo, hi), b, e in
                   zip(spec.padding, begins[2:], ends[2:])]
        try:
            new_spec = spec.replace(input_shape=graph.shape_of(pad.inputs[0]), padding=padding,
                                    padding_mode=mode)
        except SpecError:
            continue
        if new_spec.output_shape != spec.output_shape:
            continue
        conv.attrs = dict(conv.attrs, spec=new_spec.to_dict())
        conv.inputs = [pad.inputs[0]] + conv.inputs[1:]
        conv.fused.append(pad.name)
        if not graph.consumers(pad.name) and pad.name not in graph.outputs:
            graph.nodes.remove(pad)
    return graph


def optimize(graph: Graph) -> Graph:
    """The standard pipeline: identities, zero padding and BatchNorm folded into convs,
    residual add, x * sigmoid(x) as silu (fuse_gating), activation."""
    graph = remove_identities(graph)
    graph = fold_pad_into_conv(graph)
    graph = fold_batch_norm(graph)
    graph = fuse_residual_add(graph)
    graph = fuse_gating(graph)
    return fuse_activation(graph)
