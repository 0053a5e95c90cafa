"""The package's import graph: imports only go down (no cycles) and none hides in a function.

Read from the sources with ast, no import executed. A function-local import of a convgen
module is how a cycle is usually hidden; optional third-party packages (onnx, torch,
matplotlib) may still be imported lazily, since they are not convgen modules.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "convgen"


def _modules() -> dict[str, tuple[Path, bool]]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return out


def _imports(name: str, path: Path, is_package: bool, modules) -> list[tuple[str, bool]]:
    """(imported convgen module, inside a function) for every import in ``path``."""
    tree = ast.parse(path.read_text())
    local = {id(inner) for node in ast.walk(tree)
             if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
             for inner in ast.walk(node) if inner is not node}
    found = []
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = name.split(".")[:None if is_package else -1]
                parts = parts[:len(parts) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                targets.append(sub if sub in modules else base)
        elif isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        found += [(t, id(node) in local) for t in targets if t in modules and t != name]
    return found


def _graph():
    modules = _modules()
    edges, hidden = {}, []
    for name, (path, is_package) in modules.items():
        imports = _imports(name, path, is_package, modules)
        edges[name] = {target for target, _ in imports}
        hidden += [f"{name} -> {target}" for target, inside in imports if inside]
    return edges, hidden


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, out, counter = {}, {}, set(), [], [], [0]
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def test_the_import_graph_has_no_cycles():
    edges, _ = _graph()
    assert len(edges) > 50  # the whole package was read
    assert _cycles(edges) == []


def test_the_cycle_finder_finds_a_cycle():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(edges) == [["a", "b", "c"]]


def test_no_convgen_module_is_imported_inside_a_function():
    _, hidden = _graph()
    assert hidden == []


def test_lower_layers_do_not_import_upper_ones():
    edges, _ = _graph()
    lower = ("convgen.spec", "convgen.schedule", "convgen.dtypes", "convgen.errors",
             "convgen.config")
    upper = ("convgen.plan", "convgen.backends", "convgen.compiler", "convgen.graph",
             "convgen.nn", "convgen.onnx", "convgen.tuning", "convgen.cli", "convgen.bench")
    for module in lower:
        assert not [t for t in edges[module] if t.startswith(upper)], module
    plan = [m for m in edges if m.startswith("convgen.plan")]
    for module in plan:  # the planner knows no backend and no front end
        assert not [t for t in edges[module] if t.startswith(upper[1:])], module
