"""``convgen run NETSPEC``: in process through ``main`` and once as ``python -m convgen``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import convgen as cg
from convgen.cli import run as run_cli
from convgen.cli.main import main

ROOT = Path(__file__).resolve().parent.parent
LENET = str(ROOT / "specs" / "nets" / "lenet5.toml")


def seeded_input(shape, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.mark.networks
def test_run_checks_summarizes_and_writes_the_output(backend, capsys, tmp_path):
    target = tmp_path / "y.npy"
    code = main(["run", LENET, "--backend", backend, "--check", "--summary", "-o", str(target),
                 "--repeat", "3"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"lenet5 ({LENET})" in out and "input 1x1x32x32" in out
    assert "compile  " in out and f"backend {backend}" in out
    assert "fc1      Linear" in out and "absorbs relu1" in out  # the summary table
    assert "output   1x10 float32" in out and "row 0: argmax" in out
    assert "(tolerance 1e-03): ok" in out
    assert "median of 3 calls" in out
    y = np.load(target)
    assert y.shape == (1, 10) and y.dtype == np.float32
    # the default input: seeded standard normal; the default weights: seed 0
    want = cg.load_network(LENET)(seeded_input((1, 1, 32, 32)))
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-6)
    argmax = int(np.argmax(y[0]))
    assert f"argmax {argmax};" in out


def test_run_with_input_and_weights(capsys, tmp_path):
    source = cg.load_network(LENET, seed=11)
    weights = tmp_path / "w.npz"
    np.savez(weights, **source.state_dict())
    x = seeded_input((1, 1, 32, 32), seed=5)
    np.save(tmp_path / "x.npy", x.astype(np.float64))  # cast to float32 on the way in
    target = tmp_path / "y"  # numpy.save adds .npy
    code = main(["run", LENET, "--input", str(tmp_path / "x.npy"), "--weights", str(weights),
                 "-o", str(target), "--repeat", "1"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"weights {weights}" in out and "median of 1 call;" in out
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), source(x), rtol=1e-4, atol=1e-6)


def test_run_an_input_of_another_batch_size(capsys, tmp_path):
    np.save(tmp_path / "x.npy", seeded_input((6, 1, 32, 32)))
    code = main(["run", LENET, "--input", str(tmp_path / "x.npy"), "--repeat", "1", "--check"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "output   6x10" in out and "row 3: argmax" in out and "2 more rows" in out


def test_run_check_fails_with_exit_code_1(capsys, monkeypatch):
    monkeypatch.setattr(run_cli, "RUN_TOLERANCE", -1.0)
    assert main(["run", LENET, "--check", "--repeat", "1"]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_run_help(capsys):
    assert main(["run", "--help"]) == 0
    out = capsys.readouterr().out
    for option in ("NETSPEC", "--input", "--weights", "--output", "--backend", "--threads",
                   "--check", "--summary", "--repeat", "--seed"):
        assert option in out
    assert main(["--help"]) == 0
    assert "run" in capsys.readouterr().out


BAD_NET = """
input_shape = [1, 1, 8, 8]

[[layer]]
type = "Conv2d"
args = [1, 4, 3]

[[layer]]
type = "Sequential"
layers = [{ type = "ReLU" }, { type = "MaxPool2d", kernel_size = 0 }]
"""


def test_bad_netspec_exits_2_naming_file_and_key(capsys, tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(BAD_NET)
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"convgen: error: {path}: layer[1].layers[1].kernel_size=0")
    assert "Traceback" not in err


@pytest.mark.parametrize("case", ["missing netspec", "missing input", "npz input",
                                  "text input", "wrong input shape", "bad weights",
                                  "repeat 0"])
def test_run_errors_exit_2(capsys, tmp_path, case):
    args = ["run", LENET, "--repeat", "1"]
    expect = ""
    if case == "missing netspec":
        args[1] = str(tmp_path / "absent.toml")
        expect = "absent.toml: no such network file"
    elif case == "missing input":
        args += ["--input", str(tmp_path / "absent.npy")]
        expect = "absent.npy"
    elif case == "npz input":
        np.savez(tmp_path / "x.npz", x=np.zeros((1, 1, 32, 32)))
        args += ["--input", str(tmp_path / "x.npz")]
        expect = "expected one array (.npy)"
    elif case == "text input":
        np.save(tmp_path / "x.npy", np.array(["a", "b"]))
        args += ["--input", str(tmp_path / "x.npy")]
        expect = "real numeric array"
    elif case == "wrong input shape":
        np.save(tmp_path / "x.npy", np.zeros((1, 3, 32, 32), np.float32))
        args += ["--input", str(tmp_path / "x.npy")]
        expect = "does not accept an input of shape (1, 3, 32, 32)"
    elif case == "bad weights":
        np.savez(tmp_path / "w.npz", nothing=np.zeros(3))
        args += ["--weights", str(tmp_path / "w.npz")]
        expect = "w.npz: the weights do not fit"
    else:
        args += ["--repeat", "0"]
        expect = "expected an integer >= 1"
    assert main(args) == 2
    err = capsys.readouterr().err
    assert expect in err and "Traceback" not in err


def test_python_m_convgen_run(tmp_path):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    result = subprocess.run(
        [sys.executable, "-m", "convgen", "run", LENET, "--check", "-o", str(tmp_path / "y.npy")],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "check" in result.stdout and ": ok" in result.stdout
    assert "latency" in result.stdout and "ms end to end" in result.stdout
    assert np.load(tmp_path / "y.npy").shape == (1, 10)

    bad = tmp_path / "bad.toml"
    bad.write_text(BAD_NET)
    result = subprocess.run([sys.executable, "-m", "convgen", "run", str(bad)],
                            capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert result.returncode == 2
    assert f"{bad}: layer[1].layers[1].kernel_size" in result.stderr
