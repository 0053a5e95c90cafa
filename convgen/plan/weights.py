"""Weight preparation: what a bound kernel (``cg.bind``) or a network's layer reads in place
of the raw weight, computed once.

``cg.bind(spec, w, b)`` compiles ``spec`` and prepares its weights once: on C,
Winograd's U = G g G^T is computed and packed per register tile
(:func:`convgen.plan.winograd.transform_weights`) instead of in every call; the kernel then
takes only the input. It is what ONNX Runtime does with a model's initializers and what
a compiled network does with its layers. The "co" plan's channel blocks are packed once
too (:func:`pack_co_weights`; unbound, each call packs them per thread), which lets it
prefetch the next block while one computes and, at 2+ threads, split rows rather than
blocks; the "w" plan and the 1x1 GEMM read the weight as given. The planner builds the
plan of such a kernel: ``make_plan(spec, schedule, prepared_weights=True)``.
The schedule comes from the tuning records measured with bound weights
(``cg.tune(spec, bound=True)``, ``convgen tune --bound``), else from
``default_schedule(spec, prepared_weights=True)`` (Winograd for 3x3 layers of any size).
"""

from __future__ import annotations

import numpy as np

from convgen.plan.base import Plan
from convgen.plan.co import CoTiles
from convgen.plan.depthwise import DepthwiseKind, pack_depthwise_weights
from convgen.plan.winograd import WinogradPlan, transform_weights


def prepares(plan: Plan) -> bool:
    """Whether ``plan``'s kind reads prepared weights when bound (on every backend)."""
    if isinstance(plan.kind, (CoTiles, DepthwiseKind)):
        return True
    return isinstance(plan.kind, WinogradPlan) and plan.kind.method == "winograd"


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


def prepare_weight(plan: Plan, weight: np.ndarray) -> np.ndarray:
    """``weight`` as ``plan``'s kernel reads it (prepared where plan.prepared_weights)."""
    if not plan.prepared_weights:
        return np.ascontiguousarray(weight)
    if isinstance(plan.kind, DepthwiseKind):
        return pack_depthwise_weights(plan, weight)
    if isinstance(plan.kind, CoTiles):
        return pack_co_weights(plan, weight)
    return transform_weights(plan, weight)
