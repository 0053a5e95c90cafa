"""convgen's loggers: ``convgen`` and its children, with the standard :mod:`logging` module.

The library only emits records; it never configures the root logger nor prints them
itself. ``convgen`` carries a :class:`logging.NullHandler`, so an application that has not
configured logging sees nothing (not even Python's last-resort handler for warnings),
and one that has sees convgen's records through its own handlers. The command line
(:func:`convgen.cli.main.main`) installs a stderr handler for the duration of a command,
at the level its ``-v``/``-q`` options ask for.

Children and what they say (INFO unless noted):

- ``convgen.build``: each compiler run, with its command line (C, the CUDA emulator's
  C++, nvcc) or its phases (LLVM: parse and verify, optimize, emit; JIT loading), and
  its wall time; a compiler's warnings at DEBUG; networks rendered into one source.
- ``convgen.cache``: a hit or a miss per kernel, an entry stored; a damaged entry
  rebuilt (WARNING).
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from typing import TextIO

ROOT = "convgen"

logging.getLogger(ROOT).addHandler(logging.NullHandler())


def get_logger(child: str) -> logging.Logger:
    """The logger ``convgen.<child>``."""
    return logging.getLogger(f"{ROOT}.{child}")


class ConsoleFormatter(logging.Formatter):
    """``convgen.build: message``; from WARNING up, ``convgen.cache: warning: message``."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if record.levelno >= logging.WARNING:
            return f"{record.name}: {record.levelname.lower()}: {text}"
        return f"{record.name}: {text}"


@contextlib.contextmanager
def console_logging(level: int, stream: TextIO | None = None) -> Iterator[None]:
    """While the block runs, print ``convgen``'s records of ``level`` and above on ``stream``
    (default: sys.stderr as it is now); the logger's level and handlers are restored after.
    The command line's set-up: a library never calls this for its user."""
    logger = logging.getLogger(ROOT)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(ConsoleFormatter())
    handler.setLevel(level)
    previous = logger.level
    logger.setLevel(level)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
