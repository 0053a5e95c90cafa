"""Buffer planning: every intermediate activation gets an offset in one arena.

Two values share memory only when their lifetimes do not overlap: a value
lives from the step that computes it to the last step that reads it (graph
outputs to the end). A node never writes over one of its own inputs, since both
are live at that step. Flatten and reshape are views: they alias their input's
buffer and keep it alive. Constants live with the parameters, not in the arena. Placement is greedy, largest first, at the lowest offset that
fits (the TFLite arena planner's strategy). Offsets are in elements, aligned
to 64 bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from convgen.graph.ir import Graph

ALIGN_BYTES = 64
VIEW_OPS = ("flatten", "reshape")


@dataclass(frozen=True)
class MemoryPlan:
    offsets: dict[str, int]  # value name -> element offset in the arena (aliases included)
    sizes: dict[str, int]  # value name -> elements
    arena_elements: int
    itemsize: int

    @property
    def peak_bytes(self) -> int:
        return self.arena_elements * self.itemsize

    @property
    def unplanned_bytes(self) -> int:
        """What one buffer per value would take (for comparison)."""
        return sum(size for name, size in self.sizes.items()) * self.itemsize


def alias_source(graph: Graph, name: str) -> str:
    """The value whose buffer ``name`` lives in (itself unless it is a view)."""
    while True:
        try:
            node = graph.node(name)
        except KeyError:
            return name
        if node.op not in VIEW_OPS:
            return name
        name = node.inputs[0]


def plan_memory(graph: Graph, itemsize: int) -> MemoryPlan:
    inputs = {name for name, _ in graph.inputs}  # and constants: not in the arena
    inputs |= {node.name for node in graph.nodes if node.op == "constant"}
    end = len(graph.nodes)
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    sizes: dict[str, int] = {}
    for i, node in enumerate(graph.nodes):
        owner = alias_source(graph, node.name)
        if owner in inputs:
            continue
        if owner == node.name:
            first[owner] = i
            last.setdefault(owner, i)
            sizes[owner] = math.prod(node.shape)
        for name in node.inputs:
            source = alias_source(graph, name)
            if source not in inputs:
                last[source] = max(last.get(source, i), i)
        if owner != node.name and owner not in inputs:
            last[owner] = max(last.get(owner, i), i)
    for name in graph.outputs:
        source = alias_source(graph, name)
        if source not in inputs:
            last[source] = end

    align = max(1, ALIGN_BYTES // itemsize)
    placed: list[tuple[int, int, int, int]] = []  # (offset, size, first, last)
    offsets: dict[str, int] = {}
    for name in sorted(sizes, key=lambda n: (-sizes[n], first[n])):
        size = sizes[name]
        busy = sorted((off, sz) for off, sz, f, l in placed
                      if not (l < first[name] or last[name] < f))
        offset = 0
        for off, sz in busy:
            if offset + size <= off:
                break
            offset = max(offset, -(-(off + sz) // align) * align)
        offsets[name] = offset
        placed.append((offset, size, first[name], last[name]))
    arena = max((off + sz for off, sz, _, _ in placed), default=0)
    for node in graph.nodes:  # views share their source's offset
        source = alias_source(graph, node.name)
        if source != node.name and source in offsets:
            offsets[node.name] = offsets[source]
    return MemoryPlan(offsets, sizes, arena, itemsize)
