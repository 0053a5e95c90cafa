"""The command line, in process through ``main`` and once as ``python -m convgen``."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import convgen as cg
from convgen.cli.main import main, output_size_lines
from convgen.reference import random_arrays as random_inputs
from convgen.plan.core import make_plan
from convgen.spec import ConvSpec
from convgen.specfile import load_specfile
from convgen.tolerance import max_error, tolerance

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "specs"
SEEDS = SPECS / "seeds.toml"
COMMANDS = ["compile", "show", "check", "explain"]

TINY = """
[[conv]]
name = "tiny_a"
input_shape = [1, 2, 6, 6]
out_channels = 3
kernel_size = 3
padding = 1
activation = "relu"

[[conv]]
name = "tiny_b"
input_shape = [1, 2, 9]
out_channels = 2
kernel_size = 3
stride = 2
dilation = 2
bias = false
[conv.schedule]
tile_co = 1
tile_spatial = [2]
"""


@pytest.fixture(scope="module", autouse=True)
def cache_dir(tmp_path_factory):
    """Compiled kernels go to a throwaway cache, for this process and any it starts."""
    path = tmp_path_factory.mktemp("convgen-cache")
    old = os.environ.get("CONVGEN_CACHE_DIR")
    os.environ["CONVGEN_CACHE_DIR"] = str(path)
    yield path
    if old is None:
        os.environ.pop("CONVGEN_CACHE_DIR", None)
    else:
        os.environ["CONVGEN_CACHE_DIR"] = old


def write(tmp_path: Path, text: str, name: str = "x.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


# -- help and usage (no compiler) ----------------------------------------------------------

def test_top_level_help(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: convgen")
    for command in COMMANDS:
        assert command in out


@pytest.mark.parametrize("command", COMMANDS)
def test_command_help(capsys, command):
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: convgen {command}")
    assert "SPECFILE" in out and "--backend" in out


def test_version(capsys):
    assert main(["--version"]) == 0
    assert cg.__version__ in capsys.readouterr().out


def test_no_command_is_usage_error(capsys):
    assert main([]) == 2
    assert "usage: convgen" in capsys.readouterr().err


def test_unknown_backend_is_usage_error(capsys):
    assert main(["explain", str(SEEDS), "--backend", "fortran"]) == 2
    assert "invalid choice" in capsys.readouterr().err


def test_compile_needs_output(capsys):
    assert main(["compile", str(SEEDS)]) == 2
    assert "-o" in capsys.readouterr().err


# -- explain (no compiler) -------------------------------------------------------------------

def test_explain_worked_arithmetic(capsys):
    assert main(["explain", str(SPECS / "resnet18.toml"), "--name", "resnet18_layer1_conv"]) == 0
    out = capsys.readouterr().out
    assert "resnet18_layer1_conv" in out
    assert "H: floor((56 + 1 + 1 - 1*(3-1) - 1) / 1) + 1 = 56" in out
    assert "W: floor((56 + 1 + 1 - 1*(3-1) - 1) / 1) + 1 = 56" in out
    assert "weight (64, 64, 3, 3)" in out
    assert "output (1, 64, 56, 56)" in out
    spec = ConvSpec(input_shape=(1, 64, 56, 56), out_channels=64, padding=1, bias=False)
    assert f"{spec.flops:,}" in out and "GFLOP" in out
    assert f"{spec.bytes:,}" in out
    assert f"{spec.flops / spec.bytes:.3g} FLOP/byte" in out
    assert "resnet18_conv1" not in out  # --name selects one


def test_explain_strided_and_schedule(capsys):
    assert main(["explain", str(SPECS / "resnet18.toml"), "--name", "resnet18_conv1"]) == 0
    out = capsys.readouterr().out
    assert "H: floor((224 + 3 + 3 - 1*(7-1) - 1) / 2) + 1 = 112" in out
    plan = make_plan(load_specfile(SPECS / "resnet18.toml")[0].spec)
    assert f"tile_co      {plan.tile_co}" in out
    assert f"tile_spatial {tuple(plan.tile_spatial)}" in out
    assert f"threads      {plan.threads}" in out


def test_explain_transposed(capsys):
    assert main(["explain", str(SPECS / "transposed.toml"), "--name",
                 "up_k3_output_padding"]) == 0
    out = capsys.readouterr().out
    assert "(in-1)*stride - lo - hi + dilation*(k-1) + output_padding + 1" in out
    assert "H: (16-1)*2 - 1 - 1 + 1*(3-1) + 1 + 1 = 32" in out
    assert "weight (32, 16, 3, 3)" in out


def test_explain_uses_file_schedule(capsys):
    assert main(["explain", str(SPECS / "depthwise.toml"), "--name", "mbv2_dw_144"]) == 0
    out = capsys.readouterr().out
    assert "schedule (from the spec file)" in out
    assert "tile_co      1" in out and "tile_spatial (4, 28)" in out


def test_explain_every_file(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("CC", "/nonexistent/cc")  # explain must not need a compiler
    monkeypatch.setenv("CONVGEN_CACHE_DIR", str(tmp_path / "empty-cache"))
    for path in sorted(SPECS.glob("*.toml")):
        assert main(["explain", str(path)]) == 0
        out = capsys.readouterr().out
        for entry in load_specfile(path):
            assert entry.name in out


@pytest.mark.parametrize("kwargs, lines", [
    (dict(input_shape=(1, 1, 7), out_channels=1, kernel_size=5, padding="same"),
     ["L: floor((7 + 2 + 2 - 1*(5-1) - 1) / 1) + 1 = 7"]),
    (dict(input_shape=(1, 1, 8, 9, 10), out_channels=1, kernel_size=(1, 2, 3), stride=2,
          dilation=(1, 1, 2), padding=((0, 1), (1, 1), (2, 0))),
     ["D: floor((8 + 0 + 1 - 1*(1-1) - 1) / 2) + 1 = 5",
      "H: floor((9 + 1 + 1 - 1*(2-1) - 1) / 2) + 1 = 5",
      "W: floor((10 + 2 + 0 - 2*(3-1) - 1) / 2) + 1 = 4"]),
])
def test_output_size_lines(kwargs, lines):
    assert output_size_lines(ConvSpec(**kwargs)) == lines


# -- errors ---------------------------------------------------------------------------------

@pytest.mark.parametrize("command", COMMANDS)
def test_bad_spec_file_exit_2(tmp_path, capsys, command):
    path = write(tmp_path, TINY.replace("stride = 2", "stride = 0"))
    argv = [command, str(path)] + (["-o", str(tmp_path / "out")] if command == "compile" else [])
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("convgen: error: ")
    assert f"{path}: conv[1].stride=0: must be >= 1" in captured.err
    assert "Traceback" not in captured.err
    assert not (tmp_path / "out").exists()


def test_missing_spec_file_exit_2(tmp_path, capsys):
    assert main(["check", str(tmp_path / "missing.toml")]) == 2
    err = capsys.readouterr().err
    assert err == f"convgen: error: {tmp_path / 'missing.toml'}: no such spec file\n"


def test_toml_syntax_error_exit_2(tmp_path, capsys):
    path = write(tmp_path, "[[conv]\n")
    assert main(["explain", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "invalid TOML" in err


def test_unknown_name_exit_2(capsys):
    assert main(["explain", str(SEEDS), "--name", "nope"]) == 2
    err = capsys.readouterr().err
    assert "'nope'" in err and "image5_k3_valid" in err


def test_duplicate_names_across_files_exit_2(tmp_path, capsys):
    a = write(tmp_path, TINY, "a.toml")
    b = write(tmp_path, TINY, "b.toml")
    assert main(["compile", str(a), str(b), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "tiny_a" in err and str(a) in err and str(b) in err


def test_bad_schedule_exit_2(tmp_path, capsys):
    path = write(tmp_path, TINY.replace("tile_spatial = [2]", "tile_spatial = [2, 2]"))
    assert main(["explain", str(path)]) == 2
    assert "conv[1].schedule.tile_spatial" in capsys.readouterr().err


# -- compiling commands ---------------------------------------------------------------------

def test_show_prints_source(tmp_path, capsys):
    path = write(tmp_path, TINY)
    assert main(["show", str(path), "--name", "tiny_b"]) == 0
    out = capsys.readouterr().out
    entry = load_specfile(path)[1]
    kernel = cg.compile(entry.spec, schedule=entry.schedule)
    assert kernel.symbol in out
    assert out == kernel.source.rstrip("\n") + "\n"


def test_show_all_has_headers(tmp_path, capsys):
    path = write(tmp_path, TINY)
    assert main(["show", str(path)]) == 0
    out = capsys.readouterr().out
    assert "// ===== tiny_a" in out and "// ===== tiny_b" in out
    for entry in load_specfile(path):
        assert cg.compile(entry.spec, schedule=entry.schedule).symbol in out


def test_check_seeds(capsys):
    assert main(["check", str(SEEDS)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["name", "output", "shape"]
    entries = load_specfile(SEEDS)
    for entry in entries:
        row = next(line for line in lines if line.startswith(entry.name + " "))
        assert " ok " in row
        assert "x".join(map(str, entry.spec.output_shape)) in row
    assert f"{len(entries)}/{len(entries)} within tolerance" in out
    assert "FAIL" not in out


def test_check_reports_tolerance_and_error(tmp_path, capsys):
    path = write(tmp_path, TINY)
    assert main(["check", str(path), "--seed", "3"]) == 0
    out = capsys.readouterr().out
    entry = load_specfile(path)[0]
    x, w, b = random_inputs(entry.spec, 3)
    got = cg.compile(entry.spec, schedule=entry.schedule)(x, w, b)
    error = max_error(got, cg.reference(entry.spec, x, w, b))
    row = next(line for line in out.splitlines() if line.startswith("tiny_a "))
    assert f"{tolerance(entry.spec):.2e}" in row
    assert f"{error:.2e}" in row


def test_check_fails_outside_tolerance(capsys, monkeypatch):
    real = cg.reference

    def wrong(spec, x, w, b=None):
        return real(spec, x, w, b) + 1.0

    monkeypatch.setattr(cg, "reference", wrong)
    assert main(["check", str(SEEDS)]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "0/8 within tolerance" in out


def test_random_inputs_seeded():
    spec = ConvSpec(input_shape=(1, 2, 5), out_channels=2, dtype="float64")
    x, w, b = random_inputs(spec, 7)
    x2, w2, b2 = random_inputs(spec, 7)
    assert x.dtype == w.dtype == b.dtype == np.float64
    assert x.shape == spec.input_shape and w.shape == spec.weight_shape
    assert b.shape == spec.bias_shape
    assert np.array_equal(x, x2) and np.array_equal(w, w2) and np.array_equal(b, b2)
    assert np.all(np.abs(x) <= 1)
    x, w, b = random_inputs(spec.replace(bias=False, dtype="float32"), 7)
    assert b is None and x.dtype == np.float32


def test_compile_to_dir_and_load(tmp_path, capsys):
    path = write(tmp_path, TINY)
    out_dir = tmp_path / "out"
    assert main(["compile", str(path), str(SEEDS), "-o", str(out_dir)]) == 0
    out = capsys.readouterr().out
    manifest = out_dir / "manifest.json"
    assert manifest.is_file()
    assert str(manifest) in out
    kernels = cg.load(out_dir)
    entries = load_specfile(path) + load_specfile(SEEDS)
    assert list(kernels) == [e.name for e in entries]
    for entry in entries:
        assert entry.name in out
        kernel = kernels[entry.name]
        assert kernel.spec == entry.spec
        if entry.schedule is not None:
            assert kernel.schedule == entry.schedule
        x, w, b = random_inputs(entry.spec, 1)
        error = max_error(kernel(x, w, b), cg.reference(entry.spec, x, w, b))
        assert error <= tolerance(entry.spec)


def test_python_dash_m(tmp_path):
    """The module entry point, in a fresh interpreter: explain, then check a tiny file."""
    path = write(tmp_path, TINY)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    result = subprocess.run([sys.executable, "-m", "convgen", "check", str(path)],
                            capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "tiny_a" in result.stdout and "tiny_b" in result.stdout
    assert "2/2 within tolerance" in result.stdout

    result = subprocess.run([sys.executable, "-m", "convgen", "explain",
                             str(tmp_path / "missing.toml")],
                            capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert result.returncode == 2
    assert result.stderr.startswith("convgen: error: ")
    assert "Traceback" not in result.stderr
