"""The compiler driver: spec + schedule -> plan -> render -> build -> load -> Kernel.

``compile`` returns a :class:`~convgen.kernel.Kernel` that takes the raw weight in every
call; ``bind`` returns a :class:`BoundKernel` whose weight was prepared once for its plan
(convgen.plan.weights), as ONNX Runtime does with a model's initializers and a compiled
network does with its layers. :func:`choose_schedule` is the one place that picks a
schedule when the user gives none: the best tuning record, else the default.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from convgen.backends import Artifact, get_backend, resolve_backend
from convgen.cache import Cache
from convgen.kernel import Kernel, check_bias, check_input
from convgen.plan.core import Plan
from convgen.plan.weights import prepare_weight
from convgen.records import best_record
from convgen.schedule import Schedule
from convgen.spec import ConvSpec


def choose_schedule(spec: ConvSpec, backend: str, bound: bool = False,
                    threads: int | None = None,
                    default_threads: int | None = None) -> tuple[Schedule, str]:
    """The schedule to run ``spec`` with when none is given, and where it came from.

    The fastest checked tuning record for this spec, backend and machine, measured with
    weights bound or not as ``bound`` says: one measured at ``threads`` first, else one at
    any thread count with its threads set to ``threads`` ("tuned at Nt"); else the default
    (for prepared weights when ``bound``) on ``default_threads`` (None: ``threads``).
    """
    if threads is not None:
        record = best_record(spec, backend, threads, bound=bound)
        if record is not None:
            return record, "tuned"
    record = best_record(spec, backend, bound=bound)
    if record is not None:
        if threads is None or record.threads == threads:
            return record, "tuned"
        return dataclasses.replace(record, threads=threads), f"tuned at {record.threads}t"
    threads = threads if default_threads is None else default_threads
    return get_backend(backend).default_schedule(spec, bound=bound, threads=threads), "default"


def kernel_from_artifact(spec: ConvSpec, plan: Plan, backend: str, artifact: Artifact,
                         weight_shape: tuple[int, ...] | None = None) -> Kernel:
    """Load a built artifact and wrap it as a Kernel."""
    chosen = get_backend(backend)
    loaded = chosen.load(artifact, plan)
    return chosen.make_kernel(spec, plan, artifact, loaded, weight_shape)


def build_artifact(spec: ConvSpec, backend: str | None = None,
                   schedule: Schedule | None = None, cache: Cache | None = None,
                   bound: bool = False) -> tuple[Plan, Artifact, str]:
    """Plan, render and build (or fetch from the cache) without loading; ``bound``: the
    variant that reads prepared weights (convgen.plan.weights), where the plan has one.

    Returns the plan, the artifact and the backend's name (resolved from None).
    """
    if not isinstance(spec, ConvSpec):
        raise TypeError(f"spec: expected a convgen.ConvSpec, got {type(spec).__name__}")
    if schedule is not None and not isinstance(schedule, Schedule):
        raise TypeError(f"schedule: expected a convgen.Schedule or None, "
                        f"got {type(schedule).__name__}")
    name = resolve_backend(backend)
    chosen = get_backend(name)
    if schedule is None:
        schedule = chosen.default_schedule(spec, bound=bound)
    plan = chosen.plan(spec, schedule, bound=bound)
    return plan, chosen.build(plan, chosen.render(plan), cache), name


def compile(spec: ConvSpec, backend: str | None = None, schedule: Schedule | None = None,
            cache: Cache | None = None) -> Kernel:  # noqa: A001 - the public name
    """Compile ``spec`` (cached) and return a callable Kernel.

    ``backend`` is a name in convgen.BACKENDS; None means "c", or "llvm" (with a warning,
    once) when no C compiler is installed. ``schedule`` None means the best tuning record
    for (spec, backend) if there is one (see convgen.records), else the default.
    """
    if schedule is None and isinstance(spec, ConvSpec):
        backend = resolve_backend(backend)
        schedule, _ = choose_schedule(spec, backend)
    plan, artifact, name = build_artifact(spec, backend, schedule, cache)
    return kernel_from_artifact(spec, plan, name, artifact)


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
         cache: Cache | None = None) -> BoundKernel:
    """Compile ``spec`` with the weight ``w`` (and bias ``b``) bound and prepared once.

    ``schedule`` None: the best tuning record measured bound (``tune(..., bound=True)``),
    else ``default_schedule(spec, backend, prepared_weights=True)``. The arrays are
    copied: changing them later does not change the kernel.
    """
    if not isinstance(spec, ConvSpec):
        raise TypeError(f"spec: expected a convgen.ConvSpec, got {type(spec).__name__}")
    dtype = np.dtype(spec.dtype)
    w = check_input("w", w, dtype, spec.weight_shape)
    b = check_bias(spec, b, dtype, "the spec has")
    if b is not None:
        b = b.copy()
    name = resolve_backend(backend)
    if schedule is None:
        schedule, _ = choose_schedule(spec, name, bound=True)
    plan, artifact, name = build_artifact(spec, name, schedule, cache, bound=True)
    weight = np.array(prepare_weight(plan, w), dtype=dtype, order="C")
    kernel = kernel_from_artifact(spec, plan, name, artifact, weight_shape=weight.shape)
    return BoundKernel(kernel, weight, b)


def default_schedule(spec: ConvSpec, backend: str | None = None, prepared_weights: bool = False,
                     threads: int | None = None) -> Schedule:
    """The untuned fallback schedule of ``spec`` on ``backend`` (None: the default backend):
    a CPU plan's for "c" and "llvm" (on ``threads`` threads, None: every core for kernels
    large enough), the GPU fallback (``Schedule(gpu=...)``) for "cuda"."""
    if not isinstance(spec, ConvSpec):
        raise TypeError(f"spec: expected a convgen.ConvSpec, got {type(spec).__name__}")
    return get_backend(backend).default_schedule(spec, bound=prepared_weights, threads=threads)
