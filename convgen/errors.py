"""The one error module: every exception convgen raises on purpose lives here.

All errors pickle (their constructor arguments are kept in ``args``), so parallel
builds in worker processes can raise them back to the parent.
"""

from __future__ import annotations


class ConvgenError(Exception):
    """Base class of every error convgen raises on purpose."""


class SpecError(ConvgenError, ValueError):
    """An invalid convolution spec: names the field, the value and the rule."""

    def __init__(self, field: str, value: object, rule: str):
        super().__init__(field, value, rule)
        self.field = field
        self.value = value
        self.rule = rule

    def __str__(self) -> str:
        return f"{self.field}={self.value!r}: {self.rule}"


class ScheduleError(ConvgenError, ValueError):
    """An illegal schedule for a given spec (tile too large, wrong rank, ...)."""

    def __init__(self, field: str, value: object, rule: str):
        super().__init__(field, value, rule)
        self.field = field
        self.value = value
        self.rule = rule

    def __str__(self) -> str:
        return f"schedule {self.field}={self.value!r}: {self.rule}"


class CompileError(ConvgenError):
    """A failed compile: carries the command, exit code, compiler output and source path."""

    def __init__(self, message: str, command: list[str] | None = None,
                 returncode: int | None = None, stderr: str = "",
                 source_path: str | None = None):
        super().__init__(message, command, returncode, stderr, source_path)
        self.message = message
        self.command = command
        self.returncode = returncode
        self.stderr = stderr
        self.source_path = source_path

    def __str__(self) -> str:
        parts = [self.message]
        if self.source_path:
            parts.append(f"source: {self.source_path}")
        if self.command:
            parts.append("command: " + " ".join(self.command))
        if self.returncode is not None:
            parts.append(f"exit code: {self.returncode}")
        if self.stderr:
            parts.append("compiler output:\n" + self.stderr.rstrip())
        return "\n".join(parts)


class CompilerNotFoundError(CompileError):
    """No usable compiler for the requested backend is installed."""


class SpecFileError(SpecError):
    """An invalid spec file: names the file and the key as well."""

    def __init__(self, path: str, key: str, value: object, rule: str):
        ConvgenError.__init__(self, path, key, value, rule)
        self.path = path
        self.field = key
        self.value = value
        self.rule = rule

    def __str__(self) -> str:
        if not self.field:
            return f"{self.path}: {self.rule}"
        return f"{self.path}: {self.field}={self.value!r}: {self.rule}"


class OnnxImportError(ConvgenError, ValueError):
    """An ONNX model convgen cannot import: names the model or node and the reason."""
