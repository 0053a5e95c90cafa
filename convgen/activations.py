"""The fused activations: one table of what each one is.

Each entry names an activation, its arguments with their defaults, and its NumPy
definition (float64 in, float64 out). Spec validation (``convgen.spec.ACTIVATIONS``), the
graph's shape rules and the oracle (``convgen.reference.apply_activation``) read this
table; the C epilogue (templates/c/activation.j2) and the LLVM epilogue are checked
against it by tests/test_activations.py, at the ``probes`` of each entry.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

Definition = Callable[[np.ndarray, tuple[float, ...]], np.ndarray]


@dataclass(frozen=True)
class Activation:
    """One fused activation: its name, arguments and NumPy definition."""

    name: str
    arg_names: tuple[str, ...]
    defaults: tuple[float, ...] | None  # None: the arguments are required
    definition: Definition  # (v, args) -> activation(v), in float64
    # Inputs that reach every branch of the definition (negative, zero, positive, and
    # beyond a clip bound), for tests that check generated epilogues against it.
    probes: tuple[float, ...] = (-7.5, -2.0, -0.5, 0.0, 0.5, 2.0, 7.5)

    @property
    def nargs(self) -> int:
        return len(self.arg_names)


def _sigmoid(v: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-v)) without overflow: exp only ever sees -|v|."""
    e = np.exp(-np.abs(v))
    return np.where(v >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


_erf = np.vectorize(math.erf, otypes=[np.float64])

_TABLE = (
    Activation("relu", (), (), lambda v, a: np.maximum(v, 0.0)),
    Activation("leaky_relu", ("negative_slope",), (0.01,),  # as torch.nn.LeakyReLU
               lambda v, a: np.where(v > 0, v, a[0] * v)),
    Activation("relu6", (), (), lambda v, a: np.minimum(np.maximum(v, 0.0), 6.0)),
    Activation("clip", ("min", "max"), None,  # as torch.clamp / ONNX Clip
               lambda v, a: np.minimum(np.maximum(v, a[0]), a[1])),
    Activation("sigmoid", (), (), lambda v, a: _sigmoid(v)),
    Activation("tanh", (), (), lambda v, a: np.tanh(v)),
    Activation("elu", ("alpha",), (1.0,),  # as torch.nn.ELU
               lambda v, a: np.where(v > 0, v, a[0] * np.expm1(np.minimum(v, 0.0)))),
    Activation("silu", (), (), lambda v, a: v * _sigmoid(v)),
    Activation("gelu", (), (),  # exact (erf) form, torch.nn.GELU's default
               lambda v, a: 0.5 * v * (1.0 + _erf(v / math.sqrt(2.0)))),
    Activation("gelu_tanh", (), (),  # torch.nn.GELU(approximate="tanh"), ONNX Gelu's "tanh"
               lambda v, a: 0.5 * v * (1.0 + np.tanh(math.sqrt(2.0 / math.pi)
                                                     * (v + 0.044715 * v**3)))),
    Activation("hardswish", (), (),  # x * relu6(x + 3) / 6, torch.nn.Hardswish, ONNX HardSwish
               lambda v, a: v * np.minimum(np.maximum(v + 3.0, 0.0), 6.0) / 6.0,
               probes=(-7.5, -3.0, -2.0, -0.5, 0.0, 0.5, 2.0, 3.0, 7.5)),
    # max(0, min(1, alpha * x + beta)); the defaults are torch.nn.Hardsigmoid's (convgen's
    # conventions are PyTorch's); ONNX HardSigmoid's are (0.2, 0.5), which its importer passes
    Activation("hardsigmoid", ("alpha", "beta"), (1.0 / 6.0, 0.5),
               lambda v, a: np.minimum(np.maximum(a[0] * v + a[1], 0.0), 1.0),
               probes=(-7.5, -3.0, -2.0, -0.5, 0.0, 0.5, 2.0, 3.0, 7.5)),
    Activation("erf", (), (), lambda v, a: _erf(v)),  # ONNX Erf (torch exports GELU with it)
    Activation("softplus", (), (), lambda v, a: np.logaddexp(0.0, v)),  # log(1 + exp(x))
    Activation("softsign", (), (), lambda v, a: v / (1.0 + np.abs(v))),
    # gamma * elu(x, alpha); the defaults are torch.nn.SELU's and ONNX Selu's (to float32)
    Activation("selu", ("alpha", "gamma"), (1.6732632423543772, 1.0507009873554805),
               lambda v, a: a[1] * np.where(v > 0, v, a[0] * np.expm1(np.minimum(v, 0.0)))),
)

ACTIVATION_TABLE: dict[str, Activation] = {a.name: a for a in _TABLE}

# name -> (number of arguments, default arguments or None when they are required)
ACTIVATIONS: dict[str, tuple[int, tuple[float, ...] | None]] = {
    a.name: (a.nargs, a.defaults) for a in _TABLE
}
