"""Layout planning: which values of a network stay in the blocked layout between layers.

The blocked layout (convgen.plan.layout: (N, C / VL, *spatial, VL)) is what the "co" and
Winograd kernels read and write best. A value is kept blocked when the step that computes
it can write it so and every step that reads it can read it so; everything else is NCHW.
No conversion step is ever inserted: a convolution reads one layout and writes the other,
so the first convolution converts the network's input and a global pooling (or any
NCHW-only reader, a flatten, the network's outputs) converts back, as oneDNN's and ONNX
Runtime's NCHWc graphs do.

Who reads and writes what:

- ``conv``: either layout in, either out, when its plan supports it
  (:func:`convgen.plan.layout.supports_blocked`); a fused residual is read in the output's.
  The blocked depthwise plan (``vectorize="dw"``) reads and writes blocked only:
  convgen.graph.lower.choose_layouts moves depthwise layers onto it first and back where
  the values around them end up NCHW.
- ``max_pool``, ``avg_pool``, ``activation``, ``add``, ``binary``: the output in the
  input's layout (elementwise ops read every input in it).
- ``adaptive_avg_pool``: either layout in, NCHW out.
- every other op, views (flatten, reshape) and the graph's inputs and outputs: NCHW.
"""

from __future__ import annotations

from convgen.plan.layout import blocked_channels_ok, supports_blocked
from convgen.plan.core import Plan
from convgen.graph.ir import Graph

# ops whose output layout is their inputs' (all inputs in one layout)
FOLLOWERS = ("max_pool", "avg_pool", "activation", "add", "binary")


def plan_layouts(graph: Graph, plans: dict[str, Plan], lanes: int) -> set[str]:
    """The names of the values to keep blocked (VL = ``lanes``); ``plans`` per conv node."""
    nodes = {node.name: node for node in graph.nodes}
    consumers: dict[str, list] = {}
    for node in graph.nodes:
        for name in node.inputs:
            consumers.setdefault(name, []).append(node)

    def conv_ok(node, read: bool) -> bool:
        return supports_blocked(plans[node.name], read=read, write=not read) is None

    blocked = set()
    for node in graph.nodes:
        shape = node.shape
        if len(shape) < 3 or not blocked_channels_ok(shape[1], lanes):
            continue
        if node.op == "conv" and conv_ok(node, read=False) or node.op in FOLLOWERS:
            blocked.add(node.name)
    blocked -= set(graph.outputs)

    def reader_ok(reader, name: str) -> bool:
        if reader.op == "conv":
            # input 0 in either layout; the residual in the output's
            return all(conv_ok(reader, read=True) if k == 0 else reader.name in blocked
                       for k, source in enumerate(reader.inputs) if source == name)
        if reader.op in FOLLOWERS:
            return reader.name in blocked
        return reader.op == "adaptive_avg_pool"

    changed = True
    while changed:
        changed = False
        for name in sorted(blocked):
            node = nodes[name]
            ok = all(reader_ok(reader, name) for reader in consumers.get(name, []))
            if node.op in FOLLOWERS:
                ok = ok and all(source in blocked for source in node.inputs)
            elif node.op == "conv":  # its residual is read in its output's layout
                ok = ok and all(source in blocked for source in node.inputs[1:])
            if not ok:
                blocked.discard(name)
                changed = True
    return blocked
