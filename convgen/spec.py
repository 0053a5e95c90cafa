"""ConvSpec: what a convolution is, validated and normalized once.

A spec is a frozen dataclass. ``__post_init__`` turns every shorthand into its
canonical form (an int becomes a per-dim tuple, "same" becomes (lo, hi) pairs,
an activation string becomes a name plus its arguments), and rejects anything
invalid with a :class:`SpecError` naming the field, the value and the rule. Nothing
is generated from a spec that has not passed through here.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from dataclasses import dataclass, field
from typing import Any

from convgen.activations import ACTIVATIONS
from convgen.dtypes import DTYPES as DTYPE_TABLE
from convgen.dtypes import dtype_info, is_int
from convgen.errors import SpecError

PADDING_STRINGS = ("valid", "same", "full")
PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
DTYPES = tuple(DTYPE_TABLE)

# ACTIVATIONS (name -> (number of arguments, defaults or None when required)) is
# convgen.activations' table, the one definition of each fused activation.


def activation_arguments(name: str | None, args) -> tuple[float, ...]:
    """``args`` for activation ``name`` with the defaults filled in (as ConvSpec does)."""
    args = tuple(args or ())
    if name is None or args:
        return args
    nargs, defaults = ACTIVATIONS[name]
    if defaults is None:
        raise SpecError("activation_args", args, f"{name} needs {nargs} arguments")
    return defaults


def _check_int(name: str, value: object, minimum: int) -> int:
    if not is_int(value):
        raise SpecError(name, value, "must be an integer")
    if value < minimum:
        raise SpecError(name, value, f"must be >= {minimum}")
    return int(value)


def _per_dim(name: str, value: object, ndim: int, minimum: int) -> tuple[int, ...]:
    """An int or a tuple of ``ndim`` ints, each >= minimum -> a tuple of ``ndim`` ints."""
    if is_int(value):
        return (_check_int(name, value, minimum),) * ndim
    if isinstance(value, (tuple, list)):
        if len(value) != ndim:
            raise SpecError(name, value,
                            f"must be an int or a tuple of {ndim} ints (one per spatial dim)")
        return tuple(_check_int(name, v, minimum) for v in value)
    raise SpecError(name, value, f"must be an int or a tuple of {ndim} ints")


def _check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise SpecError(name, value, "must be True or False")
    return value


def _check_float(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise SpecError(name, value, "must be a real number")
    value = float(value)
    if not math.isfinite(value):
        raise SpecError(name, value, "must be finite")
    return value


def conv_output_size(size: int, lo: int, hi: int, kernel: int, stride: int, dilation: int) -> int:
    """floor((in + lo + hi - dilation*(k-1) - 1) / stride) + 1."""
    return (size + lo + hi - dilation * (kernel - 1) - 1) // stride + 1


def transposed_output_size(size: int, lo: int, hi: int, kernel: int, stride: int,
                           dilation: int, output_padding: int) -> int:
    """(in-1)*stride - lo - hi + dilation*(k-1) + output_padding + 1."""
    return (size - 1) * stride - lo - hi + dilation * (kernel - 1) + output_padding + 1


@dataclass(frozen=True)
class ConvSpec:
    """What a convolution is. See DESIGN.md for the meaning of each field."""

    input_shape: tuple[int, ...]
    out_channels: int
    kernel_size: Any = 3
    stride: Any = 1
    padding: Any = 0
    padding_mode: str = "zeros"
    dilation: Any = 1
    groups: int = 1
    transposed: bool = False
    output_padding: Any = 0
    bias: bool = True
    activation: Any = None
    flip: bool = False
    dtype: Any = "float32"
    activation_args: tuple[float, ...] = field(default=())

    # -- normalization ---------------------------------------------------------------
    def __post_init__(self) -> None:
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731

        shape = self.input_shape
        if not isinstance(shape, (tuple, list)):
            raise SpecError("input_shape", shape, "must be a tuple (N, C, *spatial)")
        if not 3 <= len(shape) <= 5:
            raise SpecError("input_shape", shape,
                            "must have 1, 2 or 3 spatial dims: (N, C, L), (N, C, H, W) "
                            "or (N, C, D, H, W)")
        shape = tuple(_check_int("input_shape", v, 1) for v in shape)
        set_("input_shape", shape)
        ndim = len(shape) - 2

        set_("out_channels", _check_int("out_channels", self.out_channels, 1))
        set_("kernel_size", _per_dim("kernel_size", self.kernel_size, ndim, 1))
        set_("stride", _per_dim("stride", self.stride, ndim, 1))
        set_("dilation", _per_dim("dilation", self.dilation, ndim, 1))
        set_("groups", _check_int("groups", self.groups, 1))
        set_("transposed", _check_bool("transposed", self.transposed))
        set_("bias", _check_bool("bias", self.bias))
        set_("flip", _check_bool("flip", self.flip))

        dtype = self.dtype
        if not isinstance(dtype, str):
            dtype = getattr(dtype, "name", getattr(dtype, "__name__", dtype))
        if dtype not in DTYPES:
            raise SpecError("dtype", self.dtype, f"must be one of {DTYPES}")
        set_("dtype", dtype)

        if self.padding_mode not in PADDING_MODES:
            raise SpecError("padding_mode", self.padding_mode, f"must be one of {PADDING_MODES}")

        cin = shape[1]
        if cin % self.groups:
            raise SpecError("groups", self.groups,
                            f"must divide the input channels ({cin})")
        if self.out_channels % self.groups:
            raise SpecError("groups", self.groups,
                            f"must divide out_channels ({self.out_channels})")

        self._normalize_output_padding(ndim)
        self._normalize_padding(ndim)
        self._normalize_activation()
        self._check_sizes()

    def _normalize_output_padding(self, ndim: int) -> None:
        op = _per_dim("output_padding", self.output_padding, ndim, 0)
        if not self.transposed and any(op):
            raise SpecError("output_padding", self.output_padding,
                            "is only allowed with transposed=True")
        for p, s, d in zip(op, self.stride, self.dilation):
            if p >= s and p >= d:
                raise SpecError("output_padding", self.output_padding,
                                "must be smaller than either stride or dilation")
        object.__setattr__(self, "output_padding", op)

    def _normalize_padding(self, ndim: int) -> None:
        pad = self.padding
        spatial = self.input_shape[2:]
        if isinstance(pad, str):
            if pad not in PADDING_STRINGS:
                raise SpecError("padding", pad, f"a string must be one of {PADDING_STRINGS}")
            pairs = []
            for i in range(ndim):
                span = self.dilation[i] * (self.kernel_size[i] - 1)
                if pad == "valid":
                    pairs.append((0, 0))
                elif pad == "full":
                    if self.transposed:
                        raise SpecError("padding", pad,
                                        "'full' is not defined for transposed convolution")
                    pairs.append((span, span))
                else:  # same: out = ceil(in / stride) (in * stride when transposed)
                    if self.transposed:
                        natural = (spatial[i] - 1) * self.stride[i] + span + 1 \
                            + self.output_padding[i]
                        total = natural - spatial[i] * self.stride[i]
                        if total < 0:
                            raise SpecError("padding", pad,
                                            "'same' needs output_padding to reach in*stride "
                                            f"in dim {i}")
                    else:
                        out = -(-spatial[i] // self.stride[i])
                        total = max((out - 1) * self.stride[i] + span + 1 - spatial[i], 0)
                    pairs.append((total // 2, total - total // 2))
            pairs = tuple(pairs)
        elif is_int(pad):
            p = _check_int("padding", pad, 0)
            pairs = ((p, p),) * ndim
        elif isinstance(pad, (tuple, list)):
            if len(pad) != ndim:
                raise SpecError("padding", pad,
                                f"a tuple must have {ndim} entries (one per spatial dim)")
            pairs = []
            for entry in pad:
                if is_int(entry):
                    p = _check_int("padding", entry, 0)
                    pairs.append((p, p))
                elif isinstance(entry, (tuple, list)) and len(entry) == 2:
                    pairs.append((_check_int("padding", entry[0], 0),
                                  _check_int("padding", entry[1], 0)))
                else:
                    raise SpecError("padding", pad,
                                    "each entry must be an int or a (lo, hi) pair of ints")
            pairs = tuple(pairs)
        else:
            raise SpecError("padding", pad,
                            "must be an int, a tuple, (lo, hi) pairs, 'valid', 'same' or 'full'")
        object.__setattr__(self, "padding", pairs)

        mode = self.padding_mode
        if mode != "zeros":
            if self.transposed:
                raise SpecError("padding_mode", mode,
                                "transposed convolution supports only 'zeros' (as PyTorch)")
            for i, (lo, hi) in enumerate(pairs):
                size = spatial[i]
                if mode == "reflect" and max(lo, hi) >= size:
                    raise SpecError("padding", self.padding,
                                    f"reflect padding must be < the input size ({size}) "
                                    f"in dim {i}")
                if mode == "circular" and max(lo, hi) > size:
                    raise SpecError("padding", self.padding,
                                    f"circular padding must be <= the input size ({size}) "
                                    f"in dim {i}")

    def _normalize_activation(self) -> None:
        act = self.activation
        args: tuple = tuple(self.activation_args)
        if isinstance(act, (tuple, list)):
            if not act:
                raise SpecError("activation", act, "a tuple must start with the name")
            if args:
                raise SpecError("activation_args", args,
                                "give arguments either in the activation tuple or here")
            act, args = act[0], tuple(act[1:])
        if act is None or act == "none":
            if args:
                raise SpecError("activation_args", args, "no activation takes no arguments")
            object.__setattr__(self, "activation", None)
            object.__setattr__(self, "activation_args", ())
            return
        if not isinstance(act, str) or act not in ACTIVATIONS:
            raise SpecError("activation", act, f"must be None or one of {tuple(ACTIVATIONS)}")
        nargs, defaults = ACTIVATIONS[act]
        if not args:
            if defaults is None:
                raise SpecError("activation_args", args, f"{act} needs {nargs} arguments")
            args = defaults
        if len(args) != nargs:
            raise SpecError("activation_args", args, f"{act} takes {nargs} arguments")
        args = tuple(_check_float("activation_args", a) for a in args)
        if act == "clip" and args[0] > args[1]:
            raise SpecError("activation_args", args, "clip needs min <= max")
        object.__setattr__(self, "activation", act)
        object.__setattr__(self, "activation_args", args)

    def _check_sizes(self) -> None:
        for i, size in enumerate(self.output_spatial):
            if size < 1:
                lo, hi = self.padding[i]
                raise SpecError(
                    "kernel_size", self.kernel_size,
                    f"the dilated kernel ({self.dilation[i] * (self.kernel_size[i] - 1) + 1}) "
                    f"is wider than the padded input ({self.input_shape[2 + i] + lo + hi}) "
                    f"in dim {i}, so the output would be empty")
        if math.prod(self.input_shape) >= 2**31 or math.prod(self.output_shape) >= 2**31:
            raise SpecError("input_shape", self.input_shape,
                            "input and output must each hold fewer than 2**31 elements")

    # -- derived values --------------------------------------------------------------
    @property
    def ndim(self) -> int:
        return len(self.input_shape) - 2

    @property
    def batch(self) -> int:
        return self.input_shape[0]

    @property
    def in_channels(self) -> int:
        return self.input_shape[1]

    @property
    def in_spatial(self) -> tuple[int, ...]:
        return self.input_shape[2:]

    @property
    def output_spatial(self) -> tuple[int, ...]:
        out = []
        for i, size in enumerate(self.in_spatial):
            lo, hi = self.padding[i]
            k, s, d = self.kernel_size[i], self.stride[i], self.dilation[i]
            if self.transposed:
                out.append(transposed_output_size(size, lo, hi, k, s, d,
                                                  self.output_padding[i]))
            else:
                out.append(conv_output_size(size, lo, hi, k, s, d))
        return tuple(out)

    @property
    def output_shape(self) -> tuple[int, ...]:
        return (self.batch, self.out_channels, *self.output_spatial)

    @property
    def weight_shape(self) -> tuple[int, ...]:
        """PyTorch's layouts: (C_out, C_in/groups, *k); transposed (C_in, C_out/groups, *k)."""
        if self.transposed:
            return (self.in_channels, self.out_channels // self.groups, *self.kernel_size)
        return (self.out_channels, self.in_channels // self.groups, *self.kernel_size)

    @property
    def bias_shape(self) -> tuple[int, ...] | None:
        return (self.out_channels,) if self.bias else None

    @property
    def flops(self) -> int:
        """2 * multiply-accumulates (bias and activation not counted).

        Transposed convolution counts every product of its scatter definition,
        including those that fall into the cropped border.
        """
        taps = math.prod(self.kernel_size)
        if self.transposed:
            return (2 * self.batch * self.in_channels * math.prod(self.in_spatial)
                    * (self.out_channels // self.groups) * taps)
        return (2 * self.batch * self.out_channels * math.prod(self.output_spatial)
                * (self.in_channels // self.groups) * taps)

    @property
    def bytes(self) -> int:
        """Bytes of input, weight, bias and output: the least memory traffic."""
        itemsize = dtype_info(self.dtype).itemsize
        total = math.prod(self.input_shape) + math.prod(self.weight_shape) \
            + math.prod(self.output_shape) + (self.out_channels if self.bias else 0)
        return itemsize * total

    @property
    def name(self) -> str:
        """A short readable name: conv2d_n1c64h56w56_k64r3s3 (transposed: convT...)."""
        dims = "dhw"[3 - self.ndim:] if self.ndim > 1 else "l"
        spatial = "".join(f"{d}{s}" for d, s in zip(dims, self.in_spatial))
        ksize = "x".join(str(k) for k in self.kernel_size)
        kind = "convT" if self.transposed else "conv"
        return (f"{kind}{self.ndim}d_n{self.batch}c{self.in_channels}{spatial}"
                f"_k{self.out_channels}r{ksize}")

    # -- serialization ---------------------------------------------------------------
    def to_dict(self) -> dict:
        """Canonical plain-data form (the inverse of :meth:`from_dict`)."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                value = [list(v) if isinstance(v, tuple) else v for v in value]
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: dict) -> ConvSpec:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise SpecError(unknown[0], data[unknown[0]], f"is not a ConvSpec field ({sorted(names)})")
        if "input_shape" not in data or "out_channels" not in data:
            missing = "input_shape" if "input_shape" not in data else "out_channels"
            raise SpecError(missing, None, "is required")
        kwargs = dict(data)
        for key in ("input_shape", "activation_args"):
            if isinstance(kwargs.get(key), list):
                kwargs[key] = tuple(kwargs[key])
        return cls(**kwargs)

    def key(self) -> str:
        """Canonical text identifying the spec: equal specs have equal keys."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def replace(self, **changes: Any) -> ConvSpec:
        """A copy with some fields changed (re-validated)."""
        data = self.to_dict()
        data.update(changes)
        if "activation" in changes and "activation_args" not in changes:
            data["activation_args"] = ()
        return ConvSpec.from_dict(data)


def source_coordinate(p: int, size: int, mode: str) -> int:
    """Map a coordinate of the padded input to the input (per ``padding_mode``), or -1
    for a zero."""
    if 0 <= p < size:
        return p
    if mode == "zeros":
        return -1
    if mode == "replicate":
        return min(max(p, 0), size - 1)
    if mode == "circular":
        return p % size
    if mode == "reflect":  # mirror without repeating the edge (pad < size, checked by the spec)
        if size == 1:
            return 0
        period = 2 * (size - 1)
        p = p % period
        return p if p < size else period - p
    raise AssertionError(mode)
