"""torch.nn's convolution layers over NumPy: Conv1d/2d/3d and ConvTranspose1d/2d/3d.

Same constructor arguments, defaults, attributes, parameter names and shapes as torch;
traced, each records one ``conv`` node (see convgen.graph.ir).
"""

from __future__ import annotations

import math

from convgen.spec import PADDING_MODES, ConvSpec
from convgen.nn import functional as F
from convgen.nn.init import _f64, _positive, _uniform
from convgen.nn.module import Module


class _ConvNd(Module):
    _ndim = 2
    transposed = False

    def __init__(self, in_channels, out_channels, kernel_size, stride, padding, dilation,
                 transposed, output_padding, groups, bias, padding_mode):
        super().__init__()
        nd = self._ndim
        in_channels = _positive("in_channels", in_channels)
        out_channels = _positive("out_channels", out_channels)
        groups = _positive("groups", groups)
        if in_channels % groups:
            raise ValueError("in_channels must be divisible by groups")
        if out_channels % groups:
            raise ValueError("out_channels must be divisible by groups")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = F.per_dim("kernel_size", kernel_size, nd, 1)
        self.stride = F.per_dim("stride", stride, nd, 1)
        self.dilation = F.per_dim("dilation", dilation, nd, 1)
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise ValueError(f"Invalid padding string {padding!r}, should be one of "
                                 "{'same', 'valid'}")
            if transposed:
                raise ValueError(f"{type(self).__name__}: padding must be an int or a tuple, "
                                 f"got {padding!r}")
            if padding == "same" and any(s != 1 for s in self.stride):
                raise ValueError("padding='same' is not supported for strided convolutions")
            self.padding = padding
        else:
            self.padding = F.per_dim("padding", padding, nd, 0)
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {set(PADDING_MODES)}, but got "
                             f"padding_mode={padding_mode!r}")
        if transposed and padding_mode != "zeros":
            raise ValueError(f'Only "zeros" padding mode is supported for {type(self).__name__}')
        self.padding_mode = padding_mode
        self.transposed = transposed
        self.output_padding = F.per_dim("output_padding", output_padding, nd, 0)
        self.groups = groups
        if transposed:
            shape = (in_channels, out_channels // groups, *self.kernel_size)
        else:
            shape = (out_channels, in_channels // groups, *self.kernel_size)
        fan_in = shape[1] * math.prod(self.kernel_size)  # torch's fan_in, from weight dim 1
        self.weight = _uniform(shape, fan_in)
        if bias:
            self.bias = _uniform((out_channels,), fan_in)
        else:
            self.register_parameter("bias", None)

    def extra_repr(self) -> str:
        text = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}")
        if isinstance(self.padding, str) or any(self.padding):
            text += f", padding={self.padding}"
        if any(d != 1 for d in self.dilation):
            text += f", dilation={self.dilation}"
        if any(self.output_padding):
            text += f", output_padding={self.output_padding}"
        if self.groups != 1:
            text += f", groups={self.groups}"
        if self.bias is None:
            text += ", bias=False"
        if self.padding_mode != "zeros":
            text += f", padding_mode={self.padding_mode}"
        return text

    def _build(self, shapes, output_padding=None):
        (shape,) = shapes
        F.check_rank(shape, self._ndim)
        if shape[1] != self.in_channels:
            raise ValueError(f"expects {self.in_channels} input channels (in_channels), "
                             f"got input of shape {tuple(shape)}")
        spec = ConvSpec(
            input_shape=tuple(shape), out_channels=self.out_channels,
            kernel_size=self.kernel_size, stride=self.stride, padding=self.padding,
            padding_mode=self.padding_mode, dilation=self.dilation, groups=self.groups,
            transposed=self.transposed,
            output_padding=self.output_padding if output_padding is None else output_padding,
            bias=self.bias is not None, activation=None, dtype="float32")
        params = {"weight": _f64(self.weight)}
        if self.bias is not None:
            params["bias"] = _f64(self.bias)
        return "conv", {"spec": spec.to_dict(), "residual": False}, params

    def forward(self, input):
        return F.apply(self._build, [input], module=self)


class Conv1d(_ConvNd):
    _ndim = 1

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, padding_mode="zeros"):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         False, 0, groups, bias, padding_mode)


class Conv2d(_ConvNd):
    _ndim = 2

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, padding_mode="zeros"):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         False, 0, groups, bias, padding_mode)


class Conv3d(_ConvNd):
    _ndim = 3

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, padding_mode="zeros"):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         False, 0, groups, bias, padding_mode)


class _ConvTransposeNd(_ConvNd):
    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 output_padding=0, groups=1, bias=True, dilation=1, padding_mode="zeros"):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         True, output_padding, groups, bias, padding_mode)

    def _output_padding(self, shape, output_size) -> tuple[int, ...]:
        """output_padding that makes the output spatial size ``output_size`` (torch's rule)."""
        nd = self._ndim
        size = list(output_size)
        if len(size) == nd + 2:
            size = size[2:]
        if len(size) != nd:
            raise ValueError(f"output_size must have {nd} or {nd + 2} elements, got {size}")
        result = []
        for i in range(nd):
            low = ((shape[2 + i] - 1) * self.stride[i] - 2 * self.padding[i]
                   + self.dilation[i] * (self.kernel_size[i] - 1) + 1)
            high = low + self.stride[i] - 1
            if not low <= size[i] <= high:
                raise ValueError(f"requested an output size of {tuple(size)}, but valid sizes "
                                 f"in dim {i} range from {low} to {high}")
            result.append(size[i] - low)
        return tuple(result)

    def forward(self, input, output_size=None):
        if output_size is None:
            return F.apply(self._build, [input], module=self)

        def build(shapes):
            F.check_rank(shapes[0], self._ndim)
            return self._build(shapes, self._output_padding(shapes[0], output_size))

        return F.apply(build, [input], module=self)


class ConvTranspose1d(_ConvTransposeNd):
    _ndim = 1


class ConvTranspose2d(_ConvTransposeNd):
    _ndim = 2


class ConvTranspose3d(_ConvTransposeNd):
    _ndim = 3
