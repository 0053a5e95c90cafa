"""The compiler driver: spec + schedule -> plan -> render -> build -> load -> Kernel.

``compile`` returns a :class:`~convgen.kernel.Kernel` that takes the raw weight in every
call; ``bind`` returns a :class:`BoundKernel` whose weight was prepared once for its plan
(convgen.plan.weights), as ONNX Runtime does with a model's initializers and a compiled
network does with its layers. :func:`choose_schedule` is the one place that picks a
schedule when the user gives none (the best tuning record measured at the thread count
asked, else the default), :func:`complete_schedule` the one place that completes a
partial one; both log what they chose (logger "convgen.compiler", INFO).
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from convgen.backends import Artifact, get_backend, resolve_backend
from convgen.cache import Cache
from convgen.kernel import Kernel, check_bias, check_input
from convgen.plan.core import Plan
from convgen.plan.defaults import (default_co_schedule, default_direct_schedule,
                                   default_dw_schedule, default_threads,
                                   default_transform_schedule, default_w_schedule)
from convgen.plan.weights import prepare_weight
from convgen.records import best_record
from convgen.schedule import PLAN_KIND_FIELDS, SCHEDULE_FIELDS, Schedule, check_threads
from convgen.spec import ConvSpec

log = logging.getLogger(__name__)


def _where(spec: ConvSpec, backend: str, bound: bool, threads: int) -> str:
    return (f"{spec.name} ({backend}{', bound weights' if bound else ''}, "
            f"{threads} thread{'s' if threads != 1 else ''})")


def choose_schedule(spec: ConvSpec, backend: str, bound: bool = False,
                    threads: int | None = None,
                    default_threads: int | None = None) -> tuple[Schedule, str]:
    """The schedule to run ``spec`` with when none is given, and where it came from
    ("tuned" or "default").

    The fastest checked tuning record for this spec, backend and machine (CPU model and
    flags, core count, for cuda the GPU, compiler, convgen version: convgen.records
    this_machine and best_record), measured with weights bound or not as
    ``bound`` says, and at the thread count asked: ``threads``, or when None the thread
    count the default runs on (convgen.plan.defaults.default_threads). A record measured
    at another thread count is never used: asking for a thread count selects among the
    records for it. Else the default (for prepared weights when ``bound``) on
    ``default_threads`` (None: ``threads``).
    """
    chosen = get_backend(backend)
    default = None
    if threads is None:
        default = chosen.default_schedule(spec, bound=bound, threads=default_threads)
        want = default.threads
    else:
        want = threads
    record = best_record(spec, backend, want, bound=bound)
    if record is not None:
        log.info("%s: tuning record %s", _where(spec, backend, bound, want), record.key())
        return dataclasses.replace(record), "tuned"  # every field given: complete
    if default is None:
        default = chosen.default_schedule(
            spec, bound=bound, threads=threads if default_threads is None else default_threads)
    if log.isEnabledFor(logging.INFO):
        other = best_record(spec, backend, bound=bound)
        unused = "" if other is None else (
            f" (a record measured at {other.threads} threads is not used: ask for "
            f"threads={other.threads} to use it)")
        log.info("%s: no tuning record at this thread count; default schedule %s%s",
                 _where(spec, backend, bound, want), default.key(), unused)
    return dataclasses.replace(default), "default"


def complete_schedule(spec: ConvSpec, schedule: Schedule, backend: str,
                      threads: int | None = None, bound: bool = False) -> Schedule:
    """``schedule`` with the fields it does not give (``Schedule.given``) taken from the
    default schedule of ``spec`` on ``backend`` (a resolved name) at the thread count
    asked: the schedule's own, else ``threads``, else the default's (see the Schedule
    docstring for the plan kind). A complete schedule comes back as it is. ``threads``
    and a different ``schedule.threads`` contradict each other: ValueError.
    """
    given = schedule.given
    if "threads" in given:
        if threads is not None and threads != schedule.threads:
            raise ValueError(f"threads={threads} and schedule.threads={schedule.threads} "
                             "disagree: give the thread count once")
        threads = schedule.threads
    chosen = get_backend(backend)
    if given >= SCHEDULE_FIELDS or (given >= SCHEDULE_FIELDS - {"gpu"}
                                    and chosen.device == "cpu"):
        return schedule  # complete (on a CPU the gpu part is None, given or not)
    if threads is None:
        threads = default_threads(spec) if chosen.device == "cpu" else None
    if chosen.device != "cpu" or not given & PLAN_KIND_FIELDS:
        base = chosen.default_schedule(spec, bound=bound, threads=threads)
    else:
        vectorize = schedule.vectorize if given & {"vectorize", "tile_spatial", "vector_width"} \
            or schedule.method != "direct" else None
        base = _kind_default(spec, schedule.method, vectorize, threads, bound)
    completed = dataclasses.replace(base, **{name: getattr(schedule, name) for name in given})
    log.debug("%s: schedule giving %s completed from the default: %s",
              _where(spec, backend, bound, completed.threads), sorted(given), completed.key())
    return completed


def _kind_default(spec: ConvSpec, method: str, vectorize: str | None, threads: int,
                  bound: bool) -> Schedule:
    """The default CPU schedule of one plan kind: ``method``, and for "direct" ``vectorize``
    ("w", "co", or None: the direct default's choice)."""
    if method != "direct":
        transform = default_transform_schedule(spec, threads, bound)
        if transform is not None and transform.method == method:
            return transform
        return Schedule(threads=threads, method=method)  # tiles: the planner's
    if vectorize is None:
        return default_direct_schedule(spec, threads)
    if vectorize == "co":
        return default_co_schedule(spec, threads)
    if vectorize == "dw":
        return default_dw_schedule(spec, threads)
    return default_w_schedule(spec, threads)


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
    ``schedule`` None: the default; a partial one is completed (:func:`complete_schedule`).

    Returns the plan, the artifact and the backend's name (resolved from None).
    """
    if not isinstance(spec, ConvSpec):
        raise TypeError(f"spec: expected a convgen.ConvSpec, got {type(spec).__name__}")
    if schedule is not None and not isinstance(schedule, Schedule):
        raise TypeError(f"schedule: expected a convgen.Schedule or None, "
                        f"got {type(schedule).__name__}")
    name = resolve_backend(backend)
    chosen = get_backend(name)
    schedule = chosen.default_schedule(spec, bound=bound) if schedule is None \
        else complete_schedule(spec, schedule, name, bound=bound)
    plan = chosen.plan(spec, schedule, bound=bound)
    return plan, chosen.build(plan, chosen.render(plan), cache), name


def _schedule_for(spec: ConvSpec, backend: str, schedule: Schedule | None,
                  threads: int | None, bound: bool) -> Schedule:
    """What compile and bind run: the best record or the default at ``threads`` (None:
    the default's), or ``schedule`` completed at ``threads``."""
    threads = check_threads(threads)
    if schedule is None:
        return choose_schedule(spec, backend, bound=bound, threads=threads)[0]
    if not isinstance(schedule, Schedule):
        raise TypeError(f"schedule: expected a convgen.Schedule or None, "
                        f"got {type(schedule).__name__}")
    return complete_schedule(spec, schedule, backend, threads, bound=bound)


def compile(spec: ConvSpec, backend: str | None = None, schedule: Schedule | None = None,
            cache: Cache | None = None, threads: int | None = None) -> Kernel:  # noqa: A001
    """Compile ``spec`` (cached) and return a callable Kernel.

    ``backend`` is a name in convgen.BACKENDS; None means "c", or "llvm" (with a warning,
    once) when no C compiler is installed. ``threads``: the thread count to run on (None:
    the default's, see convgen.get_num_threads). ``schedule`` None means the best tuning
    record for (spec, backend) measured on this machine at that thread count (see
    convgen.records), else the default at that thread count; a partial schedule is
    completed from that default (see convgen.Schedule).
    """
    if not isinstance(spec, ConvSpec):
        raise TypeError(f"spec: expected a convgen.ConvSpec, got {type(spec).__name__}")
    name = resolve_backend(backend)
    schedule = _schedule_for(spec, name, schedule, threads, bound=False)
    plan, artifact, name = build_artifact(spec, name, schedule, cache)
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
         cache: Cache | None = None, threads: int | None = None) -> BoundKernel:
    """Compile ``spec`` with the weight ``w`` (and bias ``b``) bound and prepared once.

    ``threads`` and ``schedule`` as in :func:`compile`, the records and the default being
    those for bound weights (``tune(..., bound=True)``; ``default_schedule(spec, backend,
    prepared_weights=True)``). The arrays are copied: changing them later does not change
    the kernel.
    """
    if not isinstance(spec, ConvSpec):
        raise TypeError(f"spec: expected a convgen.ConvSpec, got {type(spec).__name__}")
    dtype = np.dtype(spec.dtype)
    w = check_input("w", w, dtype, spec.weight_shape)
    b = check_bias(spec, b, dtype, "the spec has")
    if b is not None:
        b = b.copy()
    name = resolve_backend(backend)
    schedule = _schedule_for(spec, name, schedule, threads, bound=True)
    plan, artifact, name = build_artifact(spec, name, schedule, cache, bound=True)
    weight = np.array(prepare_weight(plan, w), dtype=dtype, order="C")
    kernel = kernel_from_artifact(spec, plan, name, artifact, weight_shape=weight.shape)
    return BoundKernel(kernel, weight, b)


def default_schedule(spec: ConvSpec, backend: str | None = None, prepared_weights: bool = False,
                     threads: int | None = None) -> Schedule:
    """The untuned fallback schedule of ``spec`` on ``backend`` (None: the default backend):
    a CPU plan's for "c" and "llvm" (on ``threads`` threads, None: the default thread count
    for kernels large enough, else one), the GPU fallback (``Schedule(gpu=...)``) for
    "cuda"."""
    if not isinstance(spec, ConvSpec):
        raise TypeError(f"spec: expected a convgen.ConvSpec, got {type(spec).__name__}")
    schedule = get_backend(backend).default_schedule(spec, bound=prepared_weights,
                                                     threads=threads)
    return dataclasses.replace(schedule)  # every field given: complete
