"""Argument types and the usage error shared by the command-line modules."""

from __future__ import annotations

import argparse

from convgen.errors import ConvgenError


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


def shape_text(shape) -> str:
    """1x3x224x224."""
    return "x".join(str(int(v)) for v in shape)
