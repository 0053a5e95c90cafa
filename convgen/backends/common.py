"""What every backend's generated code shares: the kernel and network signatures (also the
cffi declarations), and safe comments."""

from __future__ import annotations

from convgen.plan.base import Plan


def comment_text(text: object) -> str:
    """``text`` made safe inside a C block comment or an LLVM ``;`` comment.

    Layer names come from user code and network files: printable ASCII only, no line
    breaks, and no ``*/`` that would end the comment.
    """
    cleaned = "".join(ch if " " <= ch <= "~" else "?" for ch in str(text))
    return cleaned.replace("*/", "*?")


def entry_parameters(c_type: str) -> str:
    """A compiled network's entry point parameters, the same on every backend."""
    return (f"const {c_type} *const *inputs, {c_type} *const *outputs, "
            f"const {c_type} *params, {c_type} *arena")


def entry_prototype(symbol: str, c_type: str) -> str:
    """The network's one C declaration; also the cffi cdef."""
    return f"int {symbol}({entry_parameters(c_type)});"


def parameters(plan: Plan, qualifier: str = "") -> str:
    """The kernel's parameter list, shared by every backend.

    x, w, b (NULL without bias), y, and the half-open range of jobs (tiles) to
    compute, so that a caller can split the work across threads.
    """
    t = plan.c_type
    q = f"{qualifier} " if qualifier else ""
    return (f"const {t} *{q}x, const {t} *{q}w, const {t} *{q}b, {t} *{q}y, "
            "long job_begin, long job_end")


def prototype(plan: Plan) -> str:
    """The one C declaration of the kernel; also the cffi cdef."""
    return f"int {plan.symbol}({parameters(plan)});"


def function_pointer_type(plan: Plan) -> str:
    """The kernel's type as a C function pointer (for ffi.cast of a JIT address)."""
    return f"int (*)({parameters(plan)})"
