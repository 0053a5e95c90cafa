"""Kernels with their weights bound: prepared once, as a network's layers have them.

``cg.bind(spec, w, b)`` compiles ``spec`` and prepares its weights once: on C,
Winograd's U = G g G^T is computed and packed per register tile
(:func:`convgen.winograd.transform_weights`) instead of in every call; the kernel then
takes only the input. It is what ONNX Runtime does with a model's initializers and what
a compiled network does with its layers. The direct plans read the weight as given: the
"co" plan packs each channel block in the call, into a per-thread buffer that stays in
L2 while the block's rows run; packing every block once at load measured no faster
(ResNet-18 at 1 thread 44.7 ms either way; its 512@7 layer alone 3.96 ms against 3.49).
The schedule comes from the tuning records measured with bound weights
(``cg.tune(spec, bound=True)``, ``convgen tune --bound``), else from
``default_schedule(spec, prepared_weights=True)`` (Winograd for 3x3 layers of any size).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .kernel import Kernel, check_bias, check_input
from .plan import Plan
from .schedule import Schedule
from .spec import ConvSpec
from .winograd import transform_weights


def prepares(plan: Plan, backend: str) -> bool:
    """Whether ``plan``'s kernel on ``backend`` reads prepared weights when bound."""
    return plan.winograd is not None and plan.winograd.method == "winograd"


def bound_plan(plan: Plan) -> Plan:
    """The plan of the bound variant: its own symbol (both may be loaded at once)."""
    return dataclasses.replace(plan, symbol=plan.symbol + "_bound")


def prepare_weight(plan: Plan, backend: str, weight: np.ndarray) -> np.ndarray:
    """``weight`` as the bound kernel of ``plan`` on ``backend`` reads it."""
    if not prepares(plan, backend):
        return np.ascontiguousarray(weight)
    return transform_weights(plan, weight)


class BoundKernel:
    """A compiled convolution with its weights (and bias) bound: ``bound(x, out=None)``.

    ``weight`` is the prepared array the kernel reads, ``kernel`` the underlying
    :class:`~convgen.Kernel` (its ``w`` argument takes the prepared layout).
    """

    def __init__(self, kernel: Kernel, weight: np.ndarray, bias: np.ndarray | None):
        self.kernel = kernel
        self.weight = weight
        self.bias = bias

    spec = property(lambda self: self.kernel.spec)
    schedule = property(lambda self: self.kernel.schedule)
    backend = property(lambda self: self.kernel.backend)
    source = property(lambda self: self.kernel.source)

    def __repr__(self) -> str:
        return f"<convgen.BoundKernel {self.kernel.symbol} backend={self.backend}>"

    def __call__(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        return self.kernel(x, self.weight, self.bias, out=out)


def bind(spec: ConvSpec, w: np.ndarray, b: np.ndarray | None = None,
         backend: str | None = None, schedule: Schedule | None = None,
         cache=None) -> BoundKernel:
    """Compile ``spec`` with the weight ``w`` (and bias ``b``) bound and prepared once.

    ``schedule`` None: the best tuning record measured bound (``tune(..., bound=True)``),
    else ``default_schedule(spec, backend, prepared_weights=True)``. The arrays are
    copied: changing them later does not change the kernel.
    """
    from .backends import build_artifact, kernel_from_artifact, resolve_backend
    from .records import best_record
    from .schedule import default_schedule

    if not isinstance(spec, ConvSpec):
        raise TypeError(f"spec: expected a convgen.ConvSpec, got {type(spec).__name__}")
    dtype = np.dtype(spec.dtype)
    w = check_input("w", w, dtype, spec.weight_shape)
    b = check_bias(spec, b, dtype, "the spec has")
    if b is not None:
        b = b.copy()
    name = resolve_backend(backend)
    if schedule is None:
        schedule = best_record(spec, name, bound=True) or \
            default_schedule(spec, name, prepared_weights=True)
    plan, artifact, name = build_artifact(spec, name, schedule, cache, bound=True)
    weight = np.array(prepare_weight(plan, name, w), dtype=dtype, order="C")
    kernel = kernel_from_artifact(spec, plan, name, artifact, weight_shape=weight.shape)
    return BoundKernel(kernel, weight, b)
