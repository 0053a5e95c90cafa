"""Argument types and the usage error shared by the command-line modules."""

from __future__ import annotations

import argparse

from convgen.errors import ConvgenError
from convgen.schedule import MAX_THREADS

THREADS_HELP = ("threads per kernel (default: $CONVGEN_NUM_THREADS, else $OMP_NUM_THREADS, "
                "else every core, for kernels large enough to profit; one for small ones); "
                "the best tuning record measured at that thread count is used, else the "
                "default plan for it")


class UsageError(ConvgenError):
    """A command-line request that cannot be met (e.g. --name not in the file)."""


def shape_arg(text: str) -> tuple[int, ...]:
    try:
        return tuple(positive_int(part.strip()) for part in text.split(","))
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected a shape like 1,3,224,224, got {text!r}") \
            from None


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def thread_count(text: str) -> int:
    """--threads N: an integer in [1, MAX_THREADS]."""
    value = positive_int(text)
    if value > MAX_THREADS:
        raise argparse.ArgumentTypeError(f"expected at most {MAX_THREADS} threads, got {value}")
    return value


def add_threads_argument(parser: argparse.ArgumentParser, help: str = THREADS_HELP) -> None:
    """--threads N, the same on every command that compiles kernels."""
    parser.add_argument("--threads", type=thread_count, default=None, metavar="N", help=help)


def shape_text(shape) -> str:
    """1x3x224x224."""
    return "x".join(str(int(v)) for v in shape)
