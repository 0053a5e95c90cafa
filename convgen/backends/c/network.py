"""Render a lowered network as one C source with one entry point."""

from __future__ import annotations

import time

from convgen.dtypes import ElementType, element_type
from convgen.backends.c.render import c_integer, conv_context, environment, math_function
from convgen.backends.common import comment_text, entry_parameters, entry_prototype
from convgen.version import __version__
from convgen.graph.lower import Buffer, Lowered
from convgen.log import get_logger

log = get_logger("build")


def pointer(buffer: Buffer) -> str:
    if buffer.kind == "input":
        return f"inputs[{buffer.index}]"
    return f"{'params' if buffer.kind == 'param' else 'arena'} + {buffer.index}L"


def _call(step) -> str:
    ins = [pointer(b) for b in step.inputs]
    out = pointer(step.output)
    param = {name: f"params + {offset}L" for name, offset in step.params.items()}
    if step.kind == "conv":
        args = [ins[0], param["weight"], param.get("bias", "NULL")]
        if step.consts["residual"]:
            args.append(ins[1])
        args += [out, "0L", f"{step.consts['jobs']}L"]
    elif step.kind == "linear":
        args = [ins[0], param["weight"], param.get("bias", "NULL"), out]
    elif step.kind == "batch_norm":
        args = [ins[0], param["scale"], param["shift"], out]
    elif step.kind == "resample":
        args = [ins[0], param["index"], param.get("weight", "NULL"), out]
    else:
        args = ins + [out]
    return f"{step.function}({', '.join(args)})"


def _element_context(info: ElementType) -> dict:
    """What the op templates need to know of the element type: integers wrap around in
    the unsigned ``wrap_type`` (signed overflow is undefined in C), max pooling starts
    from ``lowest``."""
    if not info.is_integer:
        return {"integer": False, "unsigned": False, "lowest": "(-INFINITY)",
                "math_fn": math_function(info.c_type)}
    return {"integer": True, "unsigned": not info.signed, "wrap_type": info.wrap_c_type,
            "lowest": f"(({info.c_type}){c_integer(info.min)})"}


def render_network(lowered: Lowered, symbol: str, title: str) -> str:
    start = time.perf_counter()
    info = element_type(lowered.dtype)
    c_type = info.c_type
    element = _element_context(info)
    steps = []
    for step in lowered.steps:
        name = comment_text(step.name)  # from user code or a network file: into comments only
        entry = {"kind": step.kind, "name": name, "call": _call(step)}
        if step.kind == "conv":
            entry["k"] = conv_context(step.plan, symbol=step.function,
                                      residual=step.consts["residual"])
        else:
            entry["o"] = {**step.consts, **element, "name": name, "function": step.function,
                          "has_bias": "bias" in step.params, "c_type": c_type}
        steps.append(entry)
    copies = [{"source": pointer(buffer), "elements": elements}
              for buffer, elements in lowered.outputs]
    source = environment().get_template("c/net.c.j2").render(
        version=__version__, title=title, steps=steps, symbol=symbol, c_type=c_type,
        prototype=entry_prototype(symbol, c_type), params=entry_parameters(c_type),
        arena_elements=lowered.arena_elements, output_copies=copies)
    # the build that follows logs its own line
    log.info("network %s (%s): %d steps (%d convolutions), %d bytes of C rendered in %.2f s",
             comment_text(title), symbol, len(lowered.steps),
             sum(step.kind == "conv" for step in lowered.steps), len(source),
             time.perf_counter() - start)
    return source
