"""Render: a GPU plan (convgen.plan.gpu) becomes one .cu module (templates/cuda).

The context is the plan's constants, flat; the templates loop and look up. The same text
is what nvcc compiles for the GPU and what the emulator compiles for the CPU.
"""

from __future__ import annotations

import json
import math

from convgen.backends.c.render import environment, math_function
from convgen.backends.common import parameters
from convgen.plan.base import Plan
from convgen.plan.gpu import MIN_BLOCKS_PER_SM, GpuAxis, GpuGemm, GpuTiled
from convgen.version import __version__


def kernel_name(plan: Plan) -> str:
    """The __global__ function's name (extern "C": cuModuleGetFunction finds it as is)."""
    return f"{plan.symbol}_kernel"


def constant_weights_name(plan: Plan) -> str | None:
    """The __constant__ array the weights are copied into before a launch, or None."""
    return f"{plan.symbol}_cw" if plan.kind.const_weights else None  # type: ignore[attr-defined]


def threads_per_block(plan: Plan) -> int:
    return plan.kind.threads  # type: ignore[attr-defined]


def _axis_context(axis: GpuAxis) -> dict:
    return {
        "phases": axis.phases, "width": max(1, axis.max_taps), "block": axis.block,
        "extent": axis.extent, "tiles": axis.tiles, "step": axis.step,
        "out_step": axis.out_step, "tk": axis.padded(axis.tap_k), "tr": axis.padded(axis.tap_rel),
        "nt": [len(t) for t in axis.tap_k], "qb": list(axis.q_begin), "qn": list(axis.q_count),
        "oo": list(axis.out_offset), "io": list(axis.in_offset),
    }


def cuda_context(plan: Plan, symbol: str | None = None, residual: bool = False) -> dict:
    """The flat template context of ``plan``'s kernel, named ``symbol`` (default: the plan's
    own), with a residual input ``r`` added before the activation when ``residual``."""
    spec = plan.spec
    kind = plan.kind
    in_volume = math.prod(plan.in_size)
    out_volume = math.prod(plan.out_size)
    context = {
        "version": __version__,
        "title": "Transposed convolution" if spec.transposed else "Convolution",
        "spec_text": json.dumps(spec.to_dict(), sort_keys=True),
        "schedule_text": json.dumps(plan.schedule.to_dict(), sort_keys=True),
        "plan_label": kind.kind_name,  # type: ignore[attr-defined]
        "kind": kind.kind_name,  # type: ignore[attr-defined]
        "symbol": symbol or plan.symbol,
        "params": parameters(plan),
        "residual": residual,
        "c_type": plan.c_type,
        "jobs": plan.jobs,
        "threads": kind.threads,  # type: ignore[attr-defined]
        "min_blocks": MIN_BLOCKS_PER_SM,
        "groups": plan.groups,
        "cin_g": plan.cin_g,
        "cout_g": plan.cout_g,
        "c_in": spec.in_channels,
        "c_out": spec.out_channels,
        "in_size": plan.in_size,
        "out_size": plan.out_size,
        "in_volume": in_volume,
        "out_volume": out_volume,
        "kernel": plan.kernel,
        "taps": math.prod(plan.kernel),
        "weight_strides": plan.weight_strides,
        "x_size": plan.batch * spec.in_channels * in_volume,
        "y_size": plan.batch * spec.out_channels * out_volume,
        "weight_size": math.prod(spec.weight_shape),
        "const_weights": kind.const_weights,  # type: ignore[attr-defined]
        "padding_mode": spec.padding_mode,
        "bias": spec.bias,
        "activation": spec.activation,
        "activation_args": spec.activation_args,
        "math_fn": math_function(plan.c_type),
    }
    if isinstance(kind, GpuGemm):
        context.update(
            block_m=kind.block_m, block_n=kind.block_n, block_k=kind.block_k,
            thread_m=kind.thread_m, thread_n=kind.thread_n,
            threads_n=kind.block_n // kind.thread_n, reduction=kind.reduction,
            pixels=kind.pixels, m_blocks=-(-plan.cout_g // kind.block_m),
            n_blocks=-(-kind.pixels // kind.block_n),
            loads_a=-(-(kind.block_k * kind.block_m) // kind.threads),
            loads_b=-(-(kind.block_k * kind.block_n) // kind.threads),
            tables=plan.tables)
    else:
        assert isinstance(kind, GpuTiled)
        axes = [(name, _axis_context(axis)) for name, axis in zip("dhw", kind.axes)]
        context.update(
            axes=axes, block_co=kind.block_co, thread_co=kind.thread_co,
            thread_w=kind.thread_w, threads_w=kind.threads_w, co_blocks=kind.co_blocks,
            stage=kind.stage, chunk=kind.chunk, shared_size=max(1, kind.shared_elements),
            tile_volume=math.prod(axis.extent for axis in kind.axes))
    return context


def render_conv_kernel(plan: Plan, symbol: str | None = None, residual: bool = False) -> str:
    """The text of ``plan``'s kernel alone (templates/cuda/kernel.cu.j2): its __constant__
    weights, padding function and __global__ function ``<symbol>_kernel``."""
    return environment().get_template("cuda/kernel.cu.j2").render(
        **cuda_context(plan, symbol, residual))


def render_cuda(plan: Plan) -> str:
    """The .cu module of ``plan``'s kernel with its emulator host entry
    (templates/cuda/conv.cu.j2)."""
    return environment().get_template("cuda/conv.cu.j2").render(
        **cuda_context(plan), kernel_text=render_conv_kernel(plan))
