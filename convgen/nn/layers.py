"""torch.nn's layers other than convolution (see :mod:`convgen.nn.conv`) over NumPy:
the same constructor arguments, defaults, attributes, parameter names and shapes, so a
torch model's state_dict loads unchanged. Parameters are initialized as torch does
(:mod:`convgen.nn.init`). Each layer's ``forward`` records one graph node when traced
and runs the oracle on NumPy arrays.
"""

from __future__ import annotations

import numpy as np

from convgen.nn import functional as F
from convgen.dtypes import is_int
from convgen.nn.init import _f64, _positive, _uniform
from convgen.nn.module import Module, Parameter

# -- pooling ----------------------------------------------------------------------------------

class _MaxPoolNd(Module):
    _ndim = 2

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices=False,
                 ceil_mode=False):
        super().__init__()
        if return_indices:
            raise ValueError(f"{type(self).__name__}: return_indices=True is not supported "
                             "(graphs carry values only)")
        nd = self._ndim
        F.per_dim("kernel_size", kernel_size, nd, 1)
        if stride is not None:
            F.per_dim("stride", stride, nd, 1)
        F.per_dim("padding", padding, nd, 0)
        F.per_dim("dilation", dilation, nd, 1)
        self.kernel_size = kernel_size
        self.stride = stride if stride is not None else kernel_size
        self.padding = padding
        self.dilation = dilation
        self.return_indices = return_indices
        self.ceil_mode = ceil_mode

    def extra_repr(self) -> str:
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}, ceil_mode={self.ceil_mode}")

    def forward(self, input):
        return F._max_pool(self._ndim, input, self.kernel_size, self.stride, self.padding,
                           self.dilation, self.ceil_mode, False, module=self)


class MaxPool1d(_MaxPoolNd):
    _ndim = 1


class MaxPool2d(_MaxPoolNd):
    _ndim = 2


class MaxPool3d(_MaxPoolNd):
    _ndim = 3


class _AvgPoolNd(Module):
    _ndim = 2

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False,
                 count_include_pad=True, divisor_override=None):
        super().__init__()
        if divisor_override is not None:
            raise ValueError(f"{type(self).__name__}: divisor_override={divisor_override!r} "
                             "is not supported")
        nd = self._ndim
        F.per_dim("kernel_size", kernel_size, nd, 1)
        if stride is not None:
            F.per_dim("stride", stride, nd, 1)
        F.per_dim("padding", padding, nd, 0)
        self.kernel_size = kernel_size
        self.stride = stride if stride is not None else kernel_size
        self.padding = padding
        self.ceil_mode = ceil_mode
        self.count_include_pad = count_include_pad
        if nd > 1:
            self.divisor_override = divisor_override

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"

    def forward(self, input):
        return F._avg_pool(self._ndim, input, self.kernel_size, self.stride, self.padding,
                           self.ceil_mode, self.count_include_pad, None, module=self)


class AvgPool1d(_AvgPoolNd):
    _ndim = 1

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False,
                 count_include_pad=True):
        super().__init__(kernel_size, stride, padding, ceil_mode, count_include_pad)
        single = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v,)  # noqa: E731
        self.kernel_size = single(self.kernel_size)  # torch keeps 1-tuples here
        self.stride = single(self.stride)
        self.padding = single(self.padding)


class AvgPool2d(_AvgPoolNd):
    _ndim = 2


class AvgPool3d(_AvgPoolNd):
    _ndim = 3


class _AdaptiveAvgPoolNd(Module):
    _ndim = 2

    def __init__(self, output_size):
        super().__init__()
        F.adaptive_output_size(output_size, self._ndim)
        self.output_size = output_size

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"

    def forward(self, input):
        return F._adaptive_avg_pool(self._ndim, input, self.output_size, module=self)


class AdaptiveAvgPool1d(_AdaptiveAvgPoolNd):
    _ndim = 1


class AdaptiveAvgPool2d(_AdaptiveAvgPoolNd):
    _ndim = 2


class AdaptiveAvgPool3d(_AdaptiveAvgPoolNd):
    _ndim = 3


# -- dense and shape layers ---------------------------------------------------------------------

class Linear(Module):
    """y = x @ weight.T + bias over the last dim; weight (out_features, in_features)."""

    def __init__(self, in_features, out_features, bias=True):
        super().__init__()
        self.in_features = _positive("in_features", in_features)
        self.out_features = _positive("out_features", out_features)
        self.weight = _uniform((self.out_features, self.in_features), self.in_features)
        if bias:
            self.bias = _uniform((self.out_features,), self.in_features)
        else:
            self.register_parameter("bias", None)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")

    def _build(self, shapes):
        (shape,) = shapes
        if not shape or shape[-1] != self.in_features:
            raise ValueError(f"expects in_features={self.in_features} in the last dim, got "
                             f"input of shape {tuple(shape)}")
        params = {"weight": _f64(self.weight)}
        if self.bias is not None:
            params["bias"] = _f64(self.bias)
        return "linear", {"activation": None, "activation_args": ()}, params

    def forward(self, input):
        return F.apply(self._build, [input], module=self)


class Flatten(Module):
    def __init__(self, start_dim=1, end_dim=-1):
        super().__init__()
        self.start_dim = start_dim
        self.end_dim = end_dim

    def extra_repr(self) -> str:
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"

    def forward(self, input):
        return F._flatten(input, self.start_dim, self.end_dim, module=self)


class Identity(Module):
    """Returns its input (an ``identity`` node, removed when compiling)."""

    def __init__(self, *args, **kwargs):
        super().__init__()

    def forward(self, input):
        return F._identity(input, module=self)


class Dropout(Module):
    """The identity at inference (an ``identity`` node)."""

    def __init__(self, p=0.5, inplace=False):
        super().__init__()
        if not 0 <= p <= 1:
            raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
        self.p = p
        self.inplace = inplace

    def extra_repr(self) -> str:
        return f"p={self.p}, inplace={self.inplace}"

    def forward(self, input):
        return F._identity(input, module=self)


# -- activations --------------------------------------------------------------------------------

class _Activation(Module):
    _name = "relu"

    def _args(self) -> tuple:
        return ()

    def forward(self, input):
        return F._activation(input, self._name, self._args(), module=self)


class _InplaceActivation(_Activation):
    """An activation with torch's ``inplace`` flag (ignored: outputs are new arrays)."""

    def __init__(self, inplace=False):
        super().__init__()
        self.inplace = inplace

    def extra_repr(self) -> str:
        return "inplace=True" if self.inplace else ""


class ReLU(_InplaceActivation):
    _name = "relu"


class ReLU6(ReLU):
    _name = "relu6"


class LeakyReLU(_InplaceActivation):
    _name = "leaky_relu"

    def __init__(self, negative_slope=0.01, inplace=False):
        super().__init__(inplace)
        self.negative_slope = negative_slope

    def _args(self) -> tuple:
        return (self.negative_slope,)

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}" + (", inplace=True" if self.inplace else "")


class Sigmoid(_Activation):
    _name = "sigmoid"


class Tanh(_Activation):
    _name = "tanh"


class SiLU(_InplaceActivation):
    _name = "silu"


class SELU(_InplaceActivation):
    _name = "selu"  # the table's default arguments are torch's constants


class Hardswish(_InplaceActivation):
    _name = "hardswish"

    def extra_repr(self) -> str:  # torch prints no inplace for these two
        return ""


class Hardsigmoid(Hardswish):
    _name = "hardsigmoid"

    def _args(self) -> tuple:
        return (1.0 / 6.0, 0.5)  # torch's relu6(x + 3) / 6


class ELU(_InplaceActivation):
    _name = "elu"

    def __init__(self, alpha=1.0, inplace=False):
        super().__init__(inplace)
        self.alpha = alpha

    def _args(self) -> tuple:
        return (self.alpha,)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}" + (", inplace=True" if self.inplace else "")


class GELU(_Activation):
    def __init__(self, approximate="none"):
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise ValueError(f"approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    @property
    def _name(self) -> str:
        return "gelu" if self.approximate == "none" else "gelu_tanh"

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}"


class _SoftmaxBase(Module):
    _op = "softmax"

    def __init__(self, dim=None):
        super().__init__()
        if dim is None:
            name = type(self).__name__
            raise ValueError(f"{name} needs dim, e.g. nn.{name}(dim=1) for (N, classes) "
                             "scores; convgen does not guess it as PyTorch's deprecated "
                             "implicit choice would")
        if not is_int(dim):
            raise TypeError(f"dim must be an integer, got {dim!r}")
        self.dim = dim

    def extra_repr(self) -> str:
        return f"dim={self.dim}"

    def forward(self, input):
        return F._softmax(self._op, input, self.dim, None, module=self)


class Softmax(_SoftmaxBase):
    _op = "softmax"


class LogSoftmax(_SoftmaxBase):
    _op = "log_softmax"


# -- resampling ---------------------------------------------------------------------------------

class Upsample(Module):
    """torch.nn.Upsample: F.interpolate with the module's size or scale_factor."""

    def __init__(self, size=None, scale_factor=None, mode="nearest", align_corners=None,
                 recompute_scale_factor=None):
        super().__init__()
        self.name = type(self).__name__
        self.size = size
        if isinstance(scale_factor, tuple):
            self.scale_factor = tuple(float(f) for f in scale_factor)
        else:
            self.scale_factor = float(scale_factor) if scale_factor else None
        self.mode = mode
        self.align_corners = align_corners
        self.recompute_scale_factor = recompute_scale_factor

    def extra_repr(self) -> str:
        info = (f"scale_factor={self.scale_factor!r}" if self.scale_factor is not None
                else f"size={self.size!r}")
        return f"{info}, mode={self.mode!r}"

    def forward(self, input):
        return F.interpolate(input, self.size, self.scale_factor, self.mode, self.align_corners,
                             self.recompute_scale_factor, module=self)


# -- normalization ------------------------------------------------------------------------------

class _BatchNorm(Module):
    _ranks = (4,)
    _optional_state = ("num_batches_tracked",)

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, *, bias=True):
        super().__init__()
        self.num_features = _positive("num_features", num_features)
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        n = self.num_features
        if affine:
            self.weight = Parameter(np.ones(n, dtype=np.float32))
            if bias:
                self.bias = Parameter(np.zeros(n, dtype=np.float32))
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", np.zeros(n, dtype=np.float32))
            self.register_buffer("running_var", np.ones(n, dtype=np.float32))
            self.register_buffer("num_batches_tracked", np.array(0, dtype=np.int64))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, bias={self.bias is not None}, "
                f"track_running_stats={self.track_running_stats}")

    def _build(self, shapes):
        (shape,) = shapes
        if len(shape) not in self._ranks:
            ranks = " or ".join(f"{r}-d" for r in self._ranks)
            raise ValueError(f"expects a {ranks} input, got shape {tuple(shape)}")
        if shape[1] != self.num_features:
            raise ValueError(f"expects {self.num_features} channels (num_features), "
                             f"got input of shape {tuple(shape)}")
        if self.running_mean is None or self.running_var is None:
            raise ValueError("track_running_stats=False normalizes with the batch's own "
                             "statistics, which an inference graph cannot do")
        n = self.num_features
        params = {
            "running_mean": _f64(self.running_mean),
            "running_var": _f64(self.running_var),
            "weight": _f64(self.weight) if self.weight is not None else np.ones(n),
            "bias": _f64(self.bias) if self.bias is not None else np.zeros(n),
        }
        return "batch_norm", {"eps": float(self.eps)}, params

    def forward(self, input):
        return F.apply(self._build, [input], module=self)


class BatchNorm1d(_BatchNorm):
    _ranks = (2, 3)


class BatchNorm2d(_BatchNorm):
    _ranks = (4,)


class BatchNorm3d(_BatchNorm):
    _ranks = (5,)
