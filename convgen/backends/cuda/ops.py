"""The network ops other than convolution as CUDA kernels: launch shapes and template contexts.

``templates/cuda/ops.cu.j2`` has one macro per step kind (max_pool, max_pool_indices, avg_pool,
adaptive_avg_pool, linear, activation, softmax, batch_norm, add, cat, remap, lrn, binary,
where, matmul, resample); each emits one kernel ``<function>_kernel(<pointers>, long long
job_begin)`` whose block ``j`` (``job_begin + blockIdx.x``) handles work items ``[j * threads, (j + 1) *
threads)``. They compute what ``templates/c/ops.j2``'s C functions compute, in NCHW (the
CUDA backend never blocks values, so ``blocked`` is ignored).
"""

from __future__ import annotations

import math

from convgen.backends.c.render import math_function
from convgen.backends.common import comment_text

OP_THREADS = 256  # threads per block of every op kernel

OP_KINDS = ("max_pool", "max_pool_indices", "avg_pool", "adaptive_avg_pool", "linear",
            "activation", "softmax", "batch_norm", "add", "cat", "remap", "lrn", "binary",
            "where", "matmul", "resample")


def work_items(kind: str, consts: dict) -> int:
    """How many work items (threads) a step's kernel runs: one per output element, except
    softmax (one per (outer, inner) column of the reduced dim)."""
    c = consts
    if kind in ("max_pool", "max_pool_indices", "avg_pool", "adaptive_avg_pool"):
        return c["nc"] * math.prod(c["out_size"])
    if kind == "linear":
        return c["rows"] * c["out_features"]
    if kind in ("activation", "add", "binary", "where", "remap", "resample"):
        return c["elements"]
    if kind == "softmax":
        return c["outer"] * c["inner"]
    if kind in ("batch_norm", "lrn"):
        return c["batch"] * c["channels"] * c["inner"]
    if kind == "cat":
        return c["outer"] * c["out_row"]
    if kind == "matmul":
        return c["batch"] * c["m"] * c["n"]
    raise ValueError(f"no CUDA kernel for step kind {kind!r} (expected one of {OP_KINDS})")


def launch_shape(kind: str, consts: dict) -> tuple[int, int]:
    """(blocks, threads per block) of the kernel of a step of ``kind`` with ``consts``:
    every work item once, at least one block."""
    return max(1, -(-work_items(kind, consts) // OP_THREADS)), OP_THREADS


def op_context(step, c_type: str, in_elements: list[int], out_elements: int) -> dict:
    """The ``o`` dict ops.cu.j2's macro for ``step.kind`` takes: the step's consts plus its
    name (comment-safe), function, has_bias, math_fn, c_type, the element counts of its
    inputs and output (the bounds CG_AT checks), threads and blocks. ``threads`` replaces
    the CPU thread count that lowering puts in some steps' consts."""
    blocks, threads = launch_shape(step.kind, step.consts)
    return {**step.consts, "name": comment_text(step.name), "function": step.function,
            "has_bias": "bias" in step.params, "math_fn": math_function(c_type),
            "c_type": c_type, "in_elements": [int(n) for n in in_elements],
            "out_elements": int(out_elements), "threads": threads, "blocks": blocks}
