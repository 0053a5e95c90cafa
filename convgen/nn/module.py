"""Module, Sequential, ModuleList: torch.nn's containers over NumPy arrays.

Attribute assignment registers submodules, parameters and buffers as torch does, so
``state_dict()`` has exactly torch's keys ("layer1.0.bn1.running_mean", ...) and
``load_state_dict`` takes a torch model's state_dict unchanged (tensors are converted
with ``.detach().cpu().numpy()``). ``forward`` is plain Python: called on NumPy arrays
it computes eagerly with the oracle, and :meth:`Module.compile` traces it once on
symbolic values (:mod:`convgen.graph.trace`) and compiles the graph.
"""

from __future__ import annotations

import operator
from collections import OrderedDict, namedtuple
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np

from convgen.errors import ConvgenError
from convgen.graph.compile import compile_graph
from convgen.graph.ir import Graph
from convgen.graph.trace import active_tracer, trace
from convgen.schedule import check_threads


class StateDictError(ConvgenError, ValueError, RuntimeError):
    """A state_dict that does not fit the module: missing or unexpected keys, wrong shapes.

    Also a RuntimeError, which is what torch's load_state_dict raises.
    """


IncompatibleKeys = namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])


class Parameter(np.ndarray):
    """A learnable array (as torch.nn.Parameter): assigning one to a Module registers it."""

    def __new__(cls, data: Any = None, requires_grad: bool = True) -> Parameter:
        array = np.zeros(0, dtype=np.float32) if data is None else to_numpy(data)
        if array.dtype.kind != "f":
            array = array.astype(np.float32)
        return np.array(array, copy=True).view(cls)

    def __repr__(self) -> str:
        return "Parameter containing:\n" + repr(np.asarray(self))


def to_numpy(value: Any) -> np.ndarray:
    """A NumPy array from an array, a torch tensor (detached, on the CPU) or an array-like."""
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "detach"):
        value = value.detach()
    if hasattr(value, "cpu"):
        value = value.cpu()
    if hasattr(value, "numpy"):
        value = value.numpy()
    return np.asarray(value)


def _addindent(text: str, spaces: int) -> str:
    lines = text.split("\n")
    if len(lines) == 1:
        return text
    rest = [" " * spaces + line if line.strip() else "" for line in lines[1:]]
    return "\n".join([lines[0], *rest])


class Module:
    """Base class of every layer and network, as torch.nn.Module."""

    # state_dict keys a load may omit (BatchNorm's num_batches_tracked, as torch allows)
    _optional_state = ()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if args or kwargs:
            raise TypeError(f"{type(self).__name__}.__init__() got unexpected arguments")
        object.__setattr__(self, "training", True)
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_non_persistent_buffers", set())
        object.__setattr__(self, "_modules", OrderedDict())

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f'Module [{type(self).__name__}] is missing the required '
                                  '"forward" function')

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        tracer = active_tracer()
        if tracer is None:
            return self.forward(*args, **kwargs)
        with tracer.calling(self):
            return self.forward(*args, **kwargs)

    # -- registration --------------------------------------------------------------------
    def _check_initialized(self, what: str) -> None:
        if "_modules" not in self.__dict__:
            raise AttributeError(f"cannot assign {what} before Module.__init__() call")

    def register_parameter(self, name: str, param: Any) -> None:
        """Register ``param`` (an array, or None for an absent one such as bias=False)."""
        self._check_initialized("parameters")
        _check_name(name, self, "_parameters")
        if param is not None and not isinstance(param, Parameter):
            if not hasattr(param, "__array__"):
                raise TypeError(f"cannot assign {type(param).__name__} as parameter "
                                f"{name!r} (an array, Parameter or None expected)")
            param = Parameter(param)
        self._parameters[name] = param

    def register_buffer(self, name: str, tensor: Any, persistent: bool = True) -> None:
        """Register a state array that is not a parameter (BatchNorm's running stats)."""
        self._check_initialized("buffers")
        _check_name(name, self, "_buffers")
        if tensor is not None:
            tensor = to_numpy(tensor)
        self._buffers[name] = tensor
        if persistent:
            self._non_persistent_buffers.discard(name)
        else:
            self._non_persistent_buffers.add(name)

    def add_module(self, name: str, module: Module | None) -> None:
        self._check_initialized("child modules")
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"{type(module).__name__} is not a Module subclass")
        if not isinstance(name, str) or not name or "." in name:
            raise KeyError(f"module name must be a non-empty string without '.', got {name!r}")
        if hasattr(self, name) and name not in self._modules:
            raise KeyError(f"attribute {name!r} already exists")
        self._modules[name] = module

    register_module = add_module

    def __setattr__(self, name: str, value: Any) -> None:
        params = self.__dict__.get("_parameters")
        if isinstance(value, Parameter):
            self._check_initialized("parameters")
            self._forget(name)
            self.register_parameter(name, value)
        elif params is not None and name in params:
            self.register_parameter(name, value)
        elif isinstance(value, Module):
            self._check_initialized("child modules")
            self._forget(name)
            self._modules[name] = value
        elif self.__dict__.get("_modules") is not None and name in self._modules:
            if value is not None:
                raise TypeError(f"cannot assign {type(value).__name__} as child module "
                                f"{name!r} (a Module or None expected)")
            self._modules[name] = None
        elif self.__dict__.get("_buffers") is not None and name in self._buffers:
            self._buffers[name] = None if value is None else to_numpy(value)
        else:
            object.__setattr__(self, name, value)

    def _forget(self, name: str) -> None:
        self.__dict__.pop(name, None)
        for table in (self._parameters, self._buffers, self._modules):
            table.pop(name, None)
        self._non_persistent_buffers.discard(name)

    def __getattr__(self, name: str) -> Any:
        for table in ("_parameters", "_buffers", "_modules"):
            entries = self.__dict__.get(table)
            if entries is not None and name in entries:
                return entries[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __delattr__(self, name: str) -> None:
        for table in (self._parameters, self._buffers, self._modules):
            if name in table:
                del table[name]
                self._non_persistent_buffers.discard(name)
                return
        object.__delattr__(self, name)

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(self._parameters) | set(self._buffers)
                      | set(self._modules))

    # -- walking the tree ----------------------------------------------------------------
    def named_children(self) -> Iterator[tuple[str, Module]]:
        seen = set()
        for name, module in self._modules.items():
            if module is not None and id(module) not in seen:
                seen.add(id(module))
                yield name, module

    def children(self) -> Iterator[Module]:
        for _, module in self.named_children():
            yield module

    def named_modules(self, memo: set | None = None, prefix: str = "",
                      remove_duplicate: bool = True) -> Iterator[tuple[str, Module]]:
        """(dotted path, module) for this module ("") and every descendant, depth first."""
        if memo is None:
            memo = set()
        if remove_duplicate:
            if id(self) in memo:
                return
            memo.add(id(self))
        yield prefix, self
        for name, module in self._modules.items():
            if module is None:
                continue
            path = f"{prefix}.{name}" if prefix else name
            yield from module.named_modules(memo, path, remove_duplicate)

    def modules(self) -> Iterator[Module]:
        for _, module in self.named_modules():
            yield module

    def get_submodule(self, target: str) -> Module:
        module = self
        for part in target.split(".") if target else []:
            child = module._modules.get(part)
            if child is None:
                raise AttributeError(f"{type(module).__name__} has no submodule {part!r} "
                                     f"(looking up {target!r})")
            module = child
        return module

    def _named_members(self, table: str, prefix: str, recurse: bool,
                       remove_duplicate: bool = True) -> Iterator[tuple[str, np.ndarray]]:
        seen = set()
        modules = self.named_modules(prefix=prefix, remove_duplicate=remove_duplicate) \
            if recurse else [(prefix, self)]
        for path, module in modules:
            for name, value in getattr(module, table).items():
                if value is None or (remove_duplicate and id(value) in seen):
                    continue
                seen.add(id(value))
                yield (f"{path}.{name}" if path else name), value

    def named_parameters(self, prefix: str = "", recurse: bool = True,
                         remove_duplicate: bool = True) -> Iterator[tuple[str, Parameter]]:
        yield from self._named_members("_parameters", prefix, recurse, remove_duplicate)

    def parameters(self, recurse: bool = True) -> Iterator[Parameter]:
        for _, param in self.named_parameters(recurse=recurse):
            yield param

    def named_buffers(self, prefix: str = "", recurse: bool = True,
                      remove_duplicate: bool = True) -> Iterator[tuple[str, np.ndarray]]:
        yield from self._named_members("_buffers", prefix, recurse, remove_duplicate)

    def buffers(self, recurse: bool = True) -> Iterator[np.ndarray]:
        for _, buf in self.named_buffers(recurse=recurse):
            yield buf

    def apply(self, fn) -> Module:
        for module in self.children():
            module.apply(fn)
        fn(self)
        return self

    # -- state -----------------------------------------------------------------------------
    def _state_entries(self, prefix: str = "") -> Iterator[tuple[str, Module, str, str]]:
        """(key, module, table, name) for each state entry, in torch's order."""
        for name, value in self._parameters.items():
            if value is not None:
                yield prefix + name, self, "_parameters", name
        for name, value in self._buffers.items():
            if value is not None and name not in self._non_persistent_buffers:
                yield prefix + name, self, "_buffers", name
        for name, module in self._modules.items():
            if module is not None:
                yield from module._state_entries(f"{prefix}{name}.")

    def state_dict(self, destination: dict | None = None, prefix: str = "",
                   keep_vars: bool = False) -> OrderedDict[str, np.ndarray]:
        """Every parameter and persistent buffer by dotted name (torch's keys), as copies."""
        out = OrderedDict() if destination is None else destination
        for key, module, table, name in self._state_entries(prefix):
            value = getattr(module, table)[name]
            out[key] = value if keep_vars else np.array(value, copy=True)
        return out

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True,
                        assign: bool = False) -> IncompatibleKeys:
        """Copy arrays (or torch tensors) into the parameters and buffers, by key.

        Raises :class:`StateDictError` naming every missing or unexpected key (when
        ``strict``) and every shape mismatch (always), before anything is changed.
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"expected a mapping of names to arrays, got "
                            f"{type(state_dict).__name__}")
        entries = list(self._state_entries())
        expected = {key for key, *_ in entries}
        optional = {key for key, module, _, name in entries if name in module._optional_state}
        missing = [key for key, *_ in entries if key not in state_dict and key not in optional]
        unexpected = [key for key in state_dict if key not in expected]
        problems, updates = [], []
        for key, module, table, name in entries:
            if key not in state_dict:
                continue
            current = getattr(module, table)[name]
            try:
                value = to_numpy(state_dict[key])
            except Exception as error:  # noqa: BLE001 - reported with the key
                problems.append(f"{key}: cannot convert {type(state_dict[key]).__name__} to a "
                                f"NumPy array ({error})")
                continue
            if value.dtype.kind not in "biuf":
                problems.append(f"{key}: expected a real-valued array, got dtype {value.dtype}")
            elif value.shape != current.shape:
                problems.append(f"size mismatch for {key}: the state_dict has shape "
                                f"{value.shape}, the model expects {current.shape}")
            else:
                updates.append((module, table, name, current, value))
        if strict and unexpected:
            problems.insert(0, "unexpected key(s) in state_dict: "
                               + ", ".join(repr(k) for k in unexpected))
        if strict and missing:
            problems.insert(0, "missing key(s) in state_dict: "
                               + ", ".join(repr(k) for k in missing))
        if problems:
            raise StateDictError(f"error(s) loading state_dict for {type(self).__name__}:\n  "
                                 + "\n  ".join(problems))
        for module, table, name, current, value in updates:
            if current.flags.writeable:
                np.copyto(current, value, casting="unsafe")
            else:
                fresh = np.array(value, dtype=current.dtype)
                getattr(module, table)[name] = Parameter(fresh) if table == "_parameters" \
                    else fresh
        return IncompatibleKeys(missing, unexpected)

    # -- modes -----------------------------------------------------------------------------
    def train(self, mode: bool = True) -> Module:
        """Set the training flag (kept for torch compatibility; graphs are for inference)."""
        if not isinstance(mode, bool):
            raise ValueError("training mode is expected to be boolean")
        self.training = mode
        for module in self.children():
            module.train(mode)
        return self

    def eval(self) -> Module:
        return self.train(False)

    def requires_grad_(self, requires_grad: bool = True) -> Module:
        return self

    # -- graphs ------------------------------------------------------------------------------
    def trace(self, input_shape) -> Graph:
        """The graph of ``forward`` for inputs of ``input_shape`` (a tuple or a list of them)."""
        return trace(self, input_shape)

    def compile(self, input_shape, backend: str | None = None, dtype: str = "float32",
                threads: int | None = None, **options: Any):
        """Trace ``forward`` and compile the graph: a CompiledModel, callable as model(x).

        ``input_shape`` is one shape tuple, or a list of them for several inputs;
        ``threads`` per convolution layer (None: the default thread count's rule); extra
        options (layout=, schedules=) go to :func:`convgen.graph.compile.compile_graph`.
        """
        threads = check_threads(threads)
        return compile_graph(self.trace(input_shape), backend=backend, dtype=dtype,
                             threads=threads, **options)

    # -- printing ------------------------------------------------------------------------------
    def extra_repr(self) -> str:
        return ""

    def _get_name(self) -> str:
        return type(self).__name__

    def __repr__(self) -> str:
        extra = self.extra_repr()
        extra_lines = extra.split("\n") if extra else []
        child_lines = [f"({name}): " + _addindent(repr(module), 2)
                       for name, module in self._modules.items()]
        lines = extra_lines + child_lines
        text = self._get_name() + "("
        if lines:
            if len(extra_lines) == 1 and not child_lines:
                text += extra_lines[0]
            else:
                text += "\n  " + "\n  ".join(lines) + "\n"
        return text + ")"


def _check_name(name: str, module: Module, table: str) -> None:
    if not isinstance(name, str):
        raise TypeError(f"name must be a string, got {type(name).__name__}")
    if not name or "." in name:
        raise KeyError(f"name must be a non-empty string without '.', got {name!r}")
    if name in module.__dict__ or any(name in getattr(module, t)
                                      for t in ("_parameters", "_buffers", "_modules")
                                      if t != table):
        raise KeyError(f"attribute {name!r} already exists")


def _index(index: int, length: int, kind: str) -> int:
    index = operator.index(index)
    if not -length <= index < length:
        raise IndexError(f"index {index} is out of range for a {kind} of length {length}")
    return index % length


class Sequential(Module):
    """Modules applied in order; children are keyed "0", "1", ... (or by an OrderedDict)."""

    def __init__(self, *args: Module) -> None:
        super().__init__()
        if len(args) == 1 and isinstance(args[0], OrderedDict):
            for name, module in args[0].items():
                self.add_module(name, module)
        else:
            for i, module in enumerate(args):
                self.add_module(str(i), module)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return type(self)(OrderedDict(list(self._modules.items())[index]))
        keys = list(self._modules)
        return self._modules[keys[_index(index, len(keys), "Sequential")]]

    def __setitem__(self, index: int, module: Module) -> None:
        keys = list(self._modules)
        setattr(self, keys[_index(index, len(keys), "Sequential")], module)

    def __delitem__(self, index) -> None:
        keys = list(self._modules)
        targets = keys[index] if isinstance(index, slice) \
            else [keys[_index(index, len(keys), "Sequential")]]
        for key in targets:
            del self._modules[key]
        modules = list(self._modules.values())
        self._modules.clear()
        for i, module in enumerate(modules):  # renumber, as torch does
            self._modules[str(i)] = module

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())

    def append(self, module: Module) -> Sequential:
        self.add_module(str(len(self)), module)
        return self

    def extend(self, modules: Iterable[Module]) -> Sequential:
        for module in modules:
            self.append(module)
        return self

    def forward(self, input: Any) -> Any:
        for module in self:
            input = module(input)
        return input


class ModuleList(Module):
    """A list of modules, registered as children "0", "1", ... (no forward of its own)."""

    def __init__(self, modules: Iterable[Module] | None = None) -> None:
        super().__init__()
        if modules is not None:
            self.extend(modules)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return type(self)(list(self._modules.values())[index])
        return self._modules[str(_index(index, len(self), "ModuleList"))]

    def __setitem__(self, index: int, module: Module) -> None:
        setattr(self, str(_index(index, len(self), "ModuleList")), module)

    def __delitem__(self, index) -> None:
        modules = list(self._modules.values())
        if isinstance(index, slice):
            del modules[index]
        else:
            del modules[_index(index, len(modules), "ModuleList")]
        self._modules.clear()
        for i, module in enumerate(modules):
            self._modules[str(i)] = module

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())

    def __iadd__(self, modules: Iterable[Module]) -> ModuleList:
        return self.extend(modules)

    def append(self, module: Module) -> ModuleList:
        self.add_module(str(len(self)), module)
        return self

    def extend(self, modules: Iterable[Module]) -> ModuleList:
        if isinstance(modules, Module) and not isinstance(modules, (ModuleList, Sequential)):
            raise TypeError("ModuleList.extend should be called with an iterable of modules, "
                            f"got {type(modules).__name__}")
        for module in modules:
            self.append(module)
        return self

    def insert(self, index: int, module: Module) -> None:
        modules = list(self._modules.values())
        modules.insert(index, module)
        self._modules.clear()
        for i, m in enumerate(modules):
            self.add_module(str(i), m)

    def __repr__(self) -> str:
        """Repeated identical children are compressed, as torch prints them: (0-2): 3 x ..."""
        reprs = [repr(module) for module in self]
        if not reprs:
            return self._get_name() + "()"
        groups: list[list] = []
        for i, text in enumerate(reprs):
            if groups and groups[-1][2] == text:
                groups[-1][1] = i
            else:
                groups.append([i, i, text])
        lines = []
        for start, end, text in groups:
            head = f"({start}): {text}" if start == end \
                else f"({start}-{end}): {end - start + 1} x {text}"
            lines.append(_addindent(head, 2))
        return self._get_name() + "(\n  " + "\n  ".join(lines) + "\n)"
