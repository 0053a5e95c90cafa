"""Network spec files: a whole CNN written in TOML, built into convgen.nn modules.

A network file names its input shape and lists its layers in order; the top level
becomes a :class:`Network` (an ``nn.Sequential`` that remembers its name and input
shape). Every problem raises :class:`SpecFileError` naming the file and the key path
(``layer[3].kernel_size``, ``layer[2].body[1].type``; 0-based, as in Python).

    name = "lenet5"                 # optional; default: the file's stem
    description = "..."             # optional, free text
    input_shape = [1, 1, 32, 32]    # required

    [[layer]]
    name = "conv1"      # optional; default: the index in its list ("0", "1", ...)
    type = "Conv2d"     # a convgen.nn layer class, or Sequential, Residual, Concat
    args = [1, 6, 5]    # optional positional arguments
    padding = 2         # any other key is a keyword argument (lists become tuples)

Containers (their own keys only; layers inside are tables like the above):

- ``type = "Sequential"``, ``layers = [...]``: an ``nn.Sequential``.
- ``type = "Residual"``, ``body = [...]``, optional ``shortcut = [...]`` (registered as a
  Sequential under ``shortcut_name``, default "downsample"; absent: identity) and
  optional ``post = {...}`` (one layer after the add). Body layers are registered under
  their own names, so a block written conv1, bn1, relu, conv2, bn2 has torchvision's
  BasicBlock keys. A ``post`` named like a body layer, with the same table otherwise,
  reuses that layer (BasicBlock calls ``self.relu`` twice); its default name is its type
  in lower case ("relu").
- ``type = "Concat"``, ``branches = [[...], [...]]``, optional ``dim`` (default 1): each
  branch a Sequential ("0", "1", ...), outputs joined with ``convgen.nn.functional.cat``.

``type`` is looked up in a fixed table of convgen.nn's layer classes, never by
attribute name. Parameters are initialized from ``nn.manual_seed(seed)`` (the
generator is restored afterwards), so loading is deterministic; ``weights`` (an .npz
keyed like ``state_dict()``, or a mapping) replaces them.
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
import os
import re
import traceback
import zipfile
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from convgen import nn
from convgen.dtypes import is_int
from convgen.errors import SpecFileError
from convgen.specfile import parse_toml, read_text_file
from convgen.nn import init as nn_init
from convgen.nn.module import Module, Sequential, StateDictError
from convgen.graph.ir import GraphError

TOP_LEVEL_KEYS = ("name", "description", "input_shape", "layer")
LAYER_KEYS = ("name", "type", "args")  # plus the layer class's keyword arguments
CONTAINER_KEYS = {
    "Sequential": ("name", "type", "layers"),
    "Residual": ("name", "type", "body", "shortcut", "shortcut_name", "post"),
    "Concat": ("name", "type", "branches", "dim"),
}
# The layer classes a ``type`` may name: convgen.nn's layers, by their class names.
LAYER_TYPES: dict[str, type] = {
    name: getattr(nn, name) for name in nn.__all__
    if isinstance(getattr(nn, name), type) and issubclass(getattr(nn, name), Module)
    and name not in ("Module", "ModuleList", "Sequential")
}
TYPES = tuple(sorted([*LAYER_TYPES, *CONTAINER_KEYS]))


# -- modules -----------------------------------------------------------------------------

class Network(Sequential):
    """The top level of a network file: a Sequential with a name and an input shape.

    ``compile()`` and ``trace()`` default to the file's input shape.
    """

    def __init__(self, name: str, input_shape: tuple[int, ...], path: str | None = None):
        super().__init__()
        self.name = name
        self.input_shape = tuple(input_shape)
        self.path = path

    def trace(self, input_shape=None):
        return super().trace(self.input_shape if input_shape is None else input_shape)

    def compile(self, input_shape=None, backend: str | None = None, dtype: str = "float32",
                threads: int | None = None):
        """Trace and compile at ``input_shape`` (default: the file's); a CompiledModel.
        ``threads`` per convolution layer (None: the default thread count's rule), as
        :func:`convgen.graph.compile.compile_graph`."""
        shape = self.input_shape if input_shape is None else input_shape
        return super().compile(shape, backend=backend, dtype=dtype, threads=threads)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, input_shape={self.input_shape}"


class Residual(Module):
    """``post(body(x) + shortcut(x))``: a residual block (torchvision's BasicBlock keys).

    ``body`` is a list of (name, module) registered in order under their names;
    ``shortcut`` (None: identity) is registered under ``shortcut_name``; ``post``
    (name, module) is applied after the add and may be one of the body's modules.
    """

    def __init__(self, body: list[tuple[str, Module]], shortcut: Module | None = None,
                 shortcut_name: str = "downsample",
                 post: tuple[str, Module] | None = None):
        super().__init__()
        for name, module in body:
            self.add_module(name, module)
        object.__setattr__(self, "_body", tuple(name for name, _ in body))
        object.__setattr__(self, "_shortcut", shortcut_name if shortcut is not None else None)
        if shortcut is not None:
            self.add_module(shortcut_name, shortcut)
        object.__setattr__(self, "_post", None)
        if post is not None:
            name, module = post
            if self._modules.get(name) is not module:
                self.add_module(name, module)
            object.__setattr__(self, "_post", name)

    def forward(self, x):
        out = x
        for name in self._body:
            out = self._modules[name](out)
        identity = x if self._shortcut is None else self._modules[self._shortcut](x)
        out = out + identity
        if self._post is not None:
            out = self._modules[self._post](out)
        return out


class Concat(Module):
    """Branches applied to the same input, outputs concatenated along ``dim`` (channels)."""

    def __init__(self, branches: list[Module], dim: int = 1):
        super().__init__()
        for i, branch in enumerate(branches):
            self.add_module(str(i), branch)
        self.dim = dim

    def forward(self, x):
        return nn.functional.cat([branch(x) for branch in self.children()], dim=self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


# -- loading -----------------------------------------------------------------------------

def load_network(path: str | os.PathLike, weights: str | os.PathLike | Mapping | None = None,
                 seed: int = 0) -> Network:
    """Build the network a TOML file describes; check its shapes by tracing it once.

    ``weights``: an .npz file (or a mapping) keyed like ``state_dict()``; without it
    the parameters are convgen.nn's default initialization seeded with ``seed``.
    """
    path = os.fspath(path)
    network = parse_network(read_text_file(path, "network"), path, seed=seed)
    if weights is not None:
        load_weights(network, weights)
    return network


def parse_network(text: str, path: str = "<string>", seed: int = 0) -> Network:
    """Parse network-file text; ``path`` is only used in error messages."""
    data = parse_toml(text, path, TOP_LEVEL_KEYS)
    name = data.get("name", os.path.splitext(os.path.basename(path))[0])
    if not isinstance(name, str) or not name:
        raise SpecFileError(path, "name", name, "must be a non-empty string")
    if "description" in data and not isinstance(data["description"], str):
        raise SpecFileError(path, "description", data["description"], "must be a string")
    input_shape = _input_shape(path, data)
    if "layer" not in data:
        raise SpecFileError(path, "layer", None,
                            "missing; list the layers as [[layer]] tables")

    builder = _Builder(path)
    network = Network(name, input_shape, path)
    with _seeded(seed):
        for key, _, layer_name, module in builder.layers("layer", data["layer"]):
            builder.register(network, f"{key}.name", layer_name, module)
    builder.check_shapes(network)
    return network


def load_weights(network: Module, weights: str | os.PathLike | Mapping) -> None:
    """Load an .npz file (or a mapping) keyed like ``network.state_dict()``."""
    where = getattr(network, "path", None) or type(network).__name__
    if isinstance(weights, Mapping):
        source, arrays = "<weights>", weights
    else:
        source = os.fspath(weights)
        arrays = _read_npz(source)
    try:
        network.load_state_dict(arrays)
    except StateDictError as exc:
        raise SpecFileError(source, "", None,
                            f"the weights do not fit the network of {where}: {exc}") from None


def _read_npz(path: str) -> dict[str, np.ndarray]:
    try:
        archive = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise SpecFileError(path, "", None, "no such weights file") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise SpecFileError(path, "", None, f"cannot read the weights (.npz): {exc}") from None
    if not hasattr(archive, "files"):
        raise SpecFileError(path, "", None, "one array, not an .npz archive of named arrays "
                            "(save one with numpy.savez(path, **state_dict))")
    with archive:
        try:
            return {key: archive[key] for key in archive.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise SpecFileError(path, "", None,
                                f"cannot read the weights (.npz): {exc}") from None


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Layers built inside are initialized from ``seed``; the previous generator returns."""
    previous = nn_init._RNG
    nn.manual_seed(seed)
    try:
        yield
    finally:
        nn_init._RNG = previous


def _input_shape(path: str, data: dict[str, Any]) -> tuple[int, ...]:
    if "input_shape" not in data:
        raise SpecFileError(path, "input_shape", None,
                            "missing; give the input's shape, e.g. [1, 3, 224, 224]")
    shape = data["input_shape"]
    if (not isinstance(shape, list) or not shape or not all(map(is_int, shape))
            or any(s < 1 for s in shape)):
        raise SpecFileError(path, "input_shape", shape,
                            "must be a non-empty list of positive integers (N, C, *spatial)")
    return tuple(shape)


def _plain(value: Any) -> Any:
    """TOML values as layer arguments: lists become tuples (recursively)."""
    if isinstance(value, list):
        return tuple(_plain(v) for v in value)
    return value


class _Builder:
    """Builds modules from layer tables and remembers each module's key path."""

    def __init__(self, path: str):
        self.path = path
        self.keys: dict[int, str] = {}  # id(module) -> key path, for shape errors

    def error(self, key: str, value: object, rule: str) -> SpecFileError:
        return SpecFileError(self.path, key, value, rule)

    # -- lists and tables --------------------------------------------------------------------
    def layers(self, key: str, tables: Any) -> Iterator[tuple[str, dict, str, Module]]:
        """(key path, table, name, module) for each table of a layer list."""
        if not isinstance(tables, list) or not tables:
            raise self.error(key, tables, "must be a non-empty list of layer tables")
        for i, table in enumerate(tables):
            item = f"{key}[{i}]"
            if not isinstance(table, dict):
                raise self.error(item, table, "must be a table with a type")
            yield item, table, self.name_of(item, table, str(i)), self.layer(item, table)

    def name_of(self, key: str, table: dict[str, Any], default: str) -> str:
        name = table.get("name", default)
        if not isinstance(name, str) or not name or "." in name:
            raise self.error(f"{key}.name", name, "must be a non-empty string without '.'")
        return name

    def register(self, parent: Module, key: str, name: str, module: Module) -> None:
        if name in parent._modules:
            raise self.error(key, name, "is already the name of another layer in this list")
        try:
            parent.add_module(name, module)
        except KeyError as exc:
            raise self.error(key, name, f"cannot be used as a layer name: {exc.args[0]}") \
                from None

    def layer(self, key: str, table: dict[str, Any]) -> Module:
        kind = table.get("type")
        if kind is None:
            raise self.error(f"{key}.type", None,
                             "missing; every layer needs a type such as \"Conv2d\"")
        if not isinstance(kind, str) or kind not in TYPES:
            close = difflib.get_close_matches(str(kind), TYPES, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; expected one of {list(TYPES)}"
            raise self.error(f"{key}.type", kind, "unknown layer type" + hint)
        if kind in CONTAINER_KEYS:
            allowed = CONTAINER_KEYS[kind]
            for field in table:
                if field not in allowed:
                    raise self.error(f"{key}.{field}", table[field],
                                     f"unknown key for a {kind}; expected {list(allowed)}")
            module = getattr(self, f"_{kind.lower()}")(key, table)
        else:
            module = self._leaf(key, kind, table)
        self.keys[id(module)] = key
        return module

    # -- leaves and containers ------------------------------------------------------------
    def _leaf(self, key: str, kind: str, table: dict[str, Any]) -> Module:
        cls = LAYER_TYPES[kind]
        args = table.get("args", [])
        if not isinstance(args, list):
            raise self.error(f"{key}.args", args, "must be a list of positional arguments")
        kwargs = {k: v for k, v in table.items() if k not in LAYER_KEYS}
        signature = inspect.signature(cls.__init__)
        try:
            bound = signature.bind(None, *args, **kwargs)
        except TypeError as exc:
            positional = [p for p in signature.parameters][1:len(args) + 1]
            twice = next((k for k in kwargs if k in positional), None)
            if twice is not None:
                raise self.error(f"{key}.{twice}", kwargs[twice],
                                 f"{kind}: given both in args (args[{positional.index(twice)}]) "
                                 "and as a keyword") from None
            field = next((k for k in kwargs if k not in signature.parameters), None)
            if field is not None and not _takes_var_keyword(signature):
                accepted = [p for p in signature.parameters if p != "self"]
                raise self.error(f"{key}.{field}", kwargs[field],
                                 f"unknown argument of {kind}; accepted: {accepted}") from None
            raise self.error(f"{key}.args", args, f"{kind}{_describe(signature)}: {exc}") \
                from None
        try:
            return cls(*map(_plain, args), **{k: _plain(v) for k, v in kwargs.items()})
        except (TypeError, ValueError) as exc:
            field, value = _blame(key, kind, exc, bound, args)
            raise self.error(field, value, f"{kind}: {exc}") from None

    def _sequential(self, key: str, table: dict[str, Any]) -> Module:
        module = Sequential()
        for item, _, name, child in self.layers(f"{key}.layers", table.get("layers")):
            self.register(module, f"{item}.name", name, child)
        return module

    def _residual(self, key: str, table: dict[str, Any]) -> Module:
        body, names, tables = [], set(), {}
        for item, child_table, name, child in self.layers(f"{key}.body", table.get("body")):
            if name in names:
                raise self.error(f"{item}.name", name, "is already the name of another layer "
                                 "in this body")
            names.add(name)
            tables[name] = child_table
            body.append((name, child))

        shortcut_name = table.get("shortcut_name", "downsample")
        if not isinstance(shortcut_name, str) or not shortcut_name or "." in shortcut_name:
            raise self.error(f"{key}.shortcut_name", shortcut_name,
                             "must be a non-empty string without '.'")
        shortcut = None
        if "shortcut" in table:
            if shortcut_name in names:
                raise self.error(f"{key}.shortcut_name", shortcut_name,
                                 "is already the name of a body layer")
            shortcut = Sequential()
            for item, _, name, child in self.layers(f"{key}.shortcut", table["shortcut"]):
                self.register(shortcut, f"{item}.name", name, child)
            self.keys[id(shortcut)] = f"{key}.shortcut"

        post = None
        if "post" in table:
            post = self._post(f"{key}.post", table["post"], dict(body), tables,
                              shortcut_name if shortcut is not None else None)
        try:
            return Residual(body, shortcut, shortcut_name, post)
        except KeyError as exc:  # a name that clashes with a Module attribute
            raise self.error(key, table.get("name"),
                             f"cannot register the block's layers: {exc.args[0]}") from None

    def _post(self, key: str, table: Any, body: dict[str, Module], tables: dict[str, dict],
              shortcut_name: str | None) -> tuple[str, Module]:
        if not isinstance(table, dict):
            raise self.error(key, table, "must be one layer table, e.g. {type = \"ReLU\"}")
        kind = table.get("type")
        name = self.name_of(key, table, kind.lower() if isinstance(kind, str) else "post")
        if name in body:
            same = ({k: v for k, v in table.items() if k != "name"}
                    == {k: v for k, v in tables[name].items() if k != "name"})
            if not same:
                raise self.error(f"{key}.name", name, "names a body layer with a different "
                                 "table; give the post layer its own name")
            return name, body[name]
        if name == shortcut_name:
            raise self.error(f"{key}.name", name, "is already the name of the shortcut")
        return name, self.layer(key, table)

    def _concat(self, key: str, table: dict[str, Any]) -> Module:
        branches = table.get("branches")
        if not isinstance(branches, list) or len(branches) < 2:
            raise self.error(f"{key}.branches", branches,
                             "must be a list of at least two layer lists")
        modules = []
        for i, branch in enumerate(branches):
            sequential = Sequential()
            for item, _, name, child in self.layers(f"{key}.branches[{i}]", branch):
                self.register(sequential, f"{item}.name", name, child)
            self.keys[id(sequential)] = f"{key}.branches[{i}]"
            modules.append(sequential)
        dim = table.get("dim", 1)
        if not is_int(dim):
            raise self.error(f"{key}.dim", dim, "must be an integer")
        return Concat(modules, dim)

    # -- shapes ----------------------------------------------------------------------------
    def check_shapes(self, network: Network) -> None:
        """Trace once; a GraphError names the innermost layer whose forward failed."""
        try:
            network.trace(network.input_shape)
        except GraphError as exc:
            key, value = self.blame_trace(network, exc)
            raise self.error(key, value, f"the network does not fit input_shape "
                             f"{list(network.input_shape)}: {exc}") from None

    def blame_trace(self, network: Network, exc: BaseException) -> tuple[str, object]:
        paths = {id(m): p for p, m in network.named_modules()}
        key, value = "layer", None
        for frame, _ in traceback.walk_tb(exc.__traceback__):
            module = frame.f_locals.get("self")
            if isinstance(module, Module) and id(module) in self.keys:
                key, value = self.keys[id(module)], paths.get(id(module))
        return key, value


def _takes_var_keyword(signature: inspect.Signature) -> bool:
    return any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())


def _describe(signature: inspect.Signature) -> str:
    params = [p for name, p in signature.parameters.items() if name != "self"]
    return "(" + ", ".join(str(p) for p in params) + ")"


def _blame(key: str, kind: str, exc: BaseException, bound: inspect.BoundArguments,
           args: list) -> tuple[str, object]:
    """The key of the argument a constructor's error message names (or ``key.type``)."""
    message = str(exc)
    names = list(bound.signature.parameters)[1:]  # without self
    positional = {name: i for i, name in enumerate(names[:len(args)])}
    for name, value in list(bound.arguments.items())[1:]:
        if re.search(rf"\b{re.escape(name)}\b", message):
            if name in positional:
                return f"{key}.args[{positional[name]}]", value
            return f"{key}.{name}", value
    return f"{key}.type", kind


__all__ = ["Concat", "LAYER_TYPES", "Network", "Residual", "load_network", "load_weights",
           "parse_network"]

