"""Logging (the ``convgen`` loggers, ``-v``/``-q``), the tuner's progress bar, and the command
line's robustness: a missing optional package is one error line with its ``pip install``,
a misspelled spec-file key gets a "did you mean".

Kernels are tiny and compiled into a fresh cache per test; nothing asserts a time.
"""

from __future__ import annotations

import importlib
import io
import logging
import math
import sys

import pytest

from convgen.cli.main import main, missing_package_message
from convgen.cli.tune import ProgressBar
from convgen.errors import SpecFileError
from convgen.specfile import parse_specfile
from convgen.tuning.tuner import Progress

TINY = """
[[conv]]
name = "tiny"
input_shape = [1, 2, 8]
out_channels = 2
kernel_size = 3
"""


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    return str(path)


class Terminal(io.StringIO):
    """A stream that says it is a terminal, as stderr is in an interactive shell."""

    def isatty(self) -> bool:
        return True


# -- logging -----------------------------------------------------------------------------

def test_verbose_logs_compiler_command_and_cache_miss_then_hit(tiny, fresh_cache, capsys):
    assert main(["-v", "check", tiny, "--backend", "c"]) == 0
    err = capsys.readouterr().err
    assert "convgen.cache: cache miss: c convgen_conv1d_" in err
    compile_line = next(line for line in err.splitlines() if "C compiler ok in" in line)
    assert compile_line.startswith("convgen.build: ")
    assert "-O3" in compile_line and "kernel.c" in compile_line and "kernel.so" in compile_line
    assert "cache stored: c convgen_conv1d_" in err and str(fresh_cache) in err

    assert main(["check", tiny, "--backend", "c", "-v"]) == 0  # -v after the command too
    err = capsys.readouterr().err
    assert "convgen.cache: cache hit: c convgen_conv1d_" in err
    assert "cache miss" not in err and "C compiler" not in err

    assert main(["check", tiny, "--backend", "c"]) == 0  # no -v: no INFO record
    assert capsys.readouterr().err == ""


def test_llvm_logs_its_phases_and_the_jit(tiny, fresh_cache, capsys):
    assert main(["-v", "check", tiny, "--backend", "llvm"]) == 0
    err = capsys.readouterr().err
    line = next(line for line in err.splitlines() if line.startswith("convgen.build: LLVM conv"))
    assert "parse+verify" in line and "optimize (O3" in line and "emit" in line
    assert "convgen.build: LLVM JIT loaded convgen_conv1d_" in err


def test_warnings_show_by_default_and_quiet_hides_them(tiny, fresh_cache, capsys):
    assert main(["check", tiny, "--backend", "c"]) == 0
    capsys.readouterr()

    def damage():  # (the library itself is mapped into this process: left alone)
        [meta] = fresh_cache.glob("*/*/meta.json")
        meta.write_text("{")

    damage()
    assert main(["check", tiny, "--backend", "c"]) == 0
    err = capsys.readouterr().err
    assert err.startswith("convgen.cache: warning: damaged cache entry ")
    assert len(err.splitlines()) == 1

    damage()
    out_quiet = main(["-q", "check", tiny, "--backend", "c"])
    out, err = capsys.readouterr()
    assert out_quiet == 0 and err == ""
    assert "1/1 within tolerance" in out  # -q keeps the command's results on stdout


def test_quiet_and_verbose_together_are_a_usage_error(tiny, capsys):
    assert main(["-q", "check", tiny, "-v"]) == 2
    assert "contradict" in capsys.readouterr().err


def test_the_library_configures_no_logging(tiny, fresh_cache, capsys):
    """A NullHandler on "convgen", nothing on the root logger; main() takes its handler and
    level back when the command ends."""
    logger, root = logging.getLogger("convgen"), logging.getLogger()
    assert any(isinstance(h, logging.NullHandler) for h in logger.handlers)
    before = (list(logger.handlers), logger.level, list(root.handlers), root.level)
    assert main(["-vv", "explain", tiny]) == 0
    assert (list(logger.handlers), logger.level, list(root.handlers), root.level) == before


# -- progress ----------------------------------------------------------------------------

def steps(name: str = "tiny_a") -> list[Progress]:
    return [Progress(name, "compile", 1, 4, 2e-5), Progress(name, "measure", 2, 4, 1e-5),
            Progress(name, "measure", 3, 4, 1e-5), Progress(name, "check", 3, 4, 1e-5)]


def test_progress_bar_on_a_terminal():
    stream = Terminal()
    with ProgressBar(stream) as bar:
        for p in steps() + [Progress("tiny_b", "compile", 1, 2, math.inf)]:
            bar(p)
    text = stream.getvalue()
    assert "\r" in text and "tiny_a" in text and "3/4" in text and "check, best 0.010 ms" in text
    assert "tiny_b" in text and "1/2" in text
    assert text.endswith("\n")  # the last bar is closed when the block ends


def test_progress_off_a_terminal_is_one_log_line_per_phase(caplog):
    stream = io.StringIO()
    with caplog.at_level(logging.INFO, logger="convgen.tune"), ProgressBar(stream) as bar:
        for p in steps():
            bar(p)
    assert stream.getvalue() == ""  # no bar, no \r
    assert [r.getMessage() for r in caplog.records] == [
        "tiny_a: compile, 1/4 candidates, best 0.020 ms",
        "tiny_a: measure, 2/4 candidates, best 0.010 ms",
        "tiny_a: check, 3/4 candidates, best 0.010 ms"]


def test_quiet_progress_writes_nothing(caplog):
    stream = Terminal()
    with caplog.at_level(logging.INFO, logger="convgen.tune"), \
            ProgressBar(stream, quiet=True) as bar:
        for p in steps():
            bar(p)
    assert stream.getvalue() == "" and not caplog.records


def test_tune_into_a_pipe_writes_no_progress_frames(tmp_path, db, capsys, monkeypatch):
    # the tests share a busy machine: the tuner must not refuse to run on it
    monkeypatch.setattr(importlib.import_module("convgen.tuning.tuner"), "CHECK_LOAD", False,
                        raising=False)
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    assert main(["-v", "tune", str(path), "--budget", "1", "--threads", "1"]) == 0
    out, err = capsys.readouterr()
    assert "\r" not in err
    assert "convgen.tune: tiny: check, " in err  # -v: the phases as log lines
    assert out.splitlines()[2].split()[0] == "tiny"  # the summary table's row


# -- missing optional packages -----------------------------------------------------------

def block(monkeypatch, *names: str) -> None:
    """Make ``import name`` fail as if the package were not installed."""
    for name in names:
        monkeypatch.setitem(sys.modules, name, None)


@pytest.mark.parametrize("argv, blocked, extra", [
    (["run", "{onnx}"], ("onnx",), "onnx"),
    (["bench", "{onnx}", "--threads", "1", "--peak-seconds", "0.01"],
     ("onnx", "onnxruntime", "torch"), "onnx"),
    (["bench", "{spec}", "--plot", "{tmp}/roofline.png"], ("matplotlib",), "plot"),
])
def test_a_missing_optional_package_is_one_error_line(argv, blocked, extra, tiny, tmp_path,
                                                     monkeypatch, capsys, fresh_cache):
    model = tmp_path / "model.onnx"
    model.write_bytes(b"\x08\x07")  # never parsed: the import fails first
    argv = [a.format(onnx=model, spec=tiny, tmp=tmp_path) for a in argv]
    block(monkeypatch, *blocked)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.splitlines()) == 1
    assert err.startswith("convgen: error: ")
    assert f"pip install 'convgen[{extra}]'" in err


def test_missing_package_messages():
    missing = ModuleNotFoundError("No module named 'onnxruntime'", name="onnxruntime")
    assert missing_package_message(missing, "bench") == (
        "the optional package onnxruntime is not installed (convgen bench needs it here): "
        "pip install 'convgen[ort]'")
    try:  # a wrapper raised from the ImportError, as from_onnx does
        try:
            raise ModuleNotFoundError("no torch", name="torch.nn")
        except ImportError:
            raise ImportError("needs torch") from None
    except ImportError as wrapped:
        assert "pip install 'convgen[torch]'" in missing_package_message(wrapped, "run")
    other = missing_package_message(ModuleNotFoundError("x", name="yaml"), "run")
    assert other.startswith("the package yaml is missing or broken") and "pip install yaml" in other
    # convgen's own module, or none named: a bug, whose traceback main() lets through
    assert missing_package_message(ModuleNotFoundError("x", name="convgen.nope"), "run") is None
    assert missing_package_message(ImportError("cannot import name"), "run") is None


# -- did you mean ------------------------------------------------------------------------

@pytest.mark.parametrize("text, key, suggestion", [
    (TINY + "strides = 2\n", "conv[0].strides", "stride"),
    ("[schedul]\ntile_co = 2\n" + TINY, "schedul", "schedule"),
    (TINY + "[conv.schedule]\ntile_c = 2\n", "conv[0].schedule.tile_c", "tile_co"),
    (TINY + "[conv.schedule.gpu]\nblok = [2, 2]\n", "conv[0].schedule.gpu.blok", "block"),
])
def test_a_misspelled_key_gets_a_suggestion(text, key, suggestion):
    with pytest.raises(SpecFileError) as info:
        parse_specfile(text, "x.toml")
    assert info.value.field == key
    assert f"did you mean {suggestion!r}?" in str(info.value)


def test_a_key_like_none_gets_the_list_only():
    with pytest.raises(SpecFileError) as info:
        parse_specfile(TINY + "zzzzzz = 1\n", "x.toml")
    assert "did you mean" not in str(info.value) and "expected one of" in str(info.value)


def test_the_cli_prints_the_suggestion(tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text(TINY.replace("kernel_size", "kernal_size"))
    assert main(["explain", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"convgen: error: {path}: conv[0].kernal_size=3: unknown key "
                          "(did you mean 'kernel_size'?)")
