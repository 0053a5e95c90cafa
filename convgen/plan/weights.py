"""Kernels with their weights bound: prepared once, as a network's layers have them.

``cg.bind(spec, w, b)`` compiles ``spec`` and prepares its weights once: on C,
Winograd's U = G g G^T is computed and packed per register tile
(:func:`convgen.plan.winograd.transform_weights`) instead of in every call; the kernel then
takes only the input. It is what ONNX Runtime does with a model's initializers and what
a compiled network does with its layers. The "co" plan's channel blocks are packed once
too (:func:`pack_co_weights`; unbound, each call packs them per thread), which lets it
prefetch the next block while one computes and, at 2+ threads, split rows rather than
blocks (README: ResNet-18 at 2 threads 10.08 -> 8.75 ms); the "w" plan and the 1x1 GEMM
read the weight as given.
The schedule comes from the tuning records measured with bound weights
(``cg.tune(spec, bound=True)``, ``convgen tune --bound``), else from
``default_schedule(spec, prepared_weights=True)`` (Winograd for 3x3 layers of any size).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from convgen.kernel import Kernel, check_bias, check_input
from convgen.plan.core import Plan
from convgen.schedule import Schedule
from convgen.spec import ConvSpec
from convgen.plan.winograd import transform_weights


def prepares(plan: Plan, backend: str) -> bool:
    """Whether ``plan``'s kernel on ``backend`` reads prepared weights when bound."""
    if plan.vectorize == "co" and plan.co_tiles is not None or plan.vectorize == "dw":
        return True
    return plan.winograd is not None and plan.winograd.method == "winograd"


def pack_co_weights(plan: Plan, weight: np.ndarray) -> np.ndarray:
    """The "co" plan's channel blocks, packed once: (groups, blocks, reduction, tile_co),
    reduction steps j over (ci, kd, kh, kw) as the kernel reads them, zeros past the
    group's last channel; what each call otherwise packs per thread and block."""
    spec = plan.spec
    groups, cin_g, cout_g, tco = plan.groups, plan.cin_g, plan.cout_g, plan.tile_co
    taps = int(np.prod(plan.kernel))
    w = np.asarray(weight)
    if spec.transposed:  # (C_in, C_out/groups, *k): channel c, step (ci, tap)
        w = w.reshape(groups, cin_g, cout_g, taps).transpose(0, 2, 1, 3)
    w = w.reshape(groups, cout_g, cin_g * taps)
    blocks = plan.n_tiles[0]
    packed = np.zeros((groups, blocks * tco, cin_g * taps), dtype=w.dtype)
    packed[:, :cout_g] = w
    return np.ascontiguousarray(
        packed.reshape(groups, blocks, tco, cin_g * taps).transpose(0, 1, 3, 2))


def bound_plan(plan: Plan) -> Plan:
    """The plan of the bound variant: its own symbol (both may be loaded at once)."""
    return dataclasses.replace(plan, symbol=plan.symbol + "_bound")


def prepare_weight(plan: Plan, backend: str, weight: np.ndarray) -> np.ndarray:
    """``weight`` as the bound kernel of ``plan`` on ``backend`` reads it."""
    if not prepares(plan, backend):
        return np.ascontiguousarray(weight)
    if plan.vectorize == "dw":
        from convgen.plan.layout import pack_depthwise_weights

        return pack_depthwise_weights(plan, weight)
    if plan.winograd is None:
        return pack_co_weights(plan, weight)
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
    from convgen.backends import build_artifact, kernel_from_artifact, resolve_backend
    from convgen.records import best_record
    from convgen.schedule import default_schedule

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
