"""bench/gpu_layers.py without a GPU: its emulator check, its no-GPU exit, and its GPU
path's bookkeeping run against a stand-in driver (kernels on the CPU emulator, events
timed by the host clock). Speed is never asserted."""

from __future__ import annotations

import json
import subprocess
import time
from types import SimpleNamespace

import numpy as np
import pytest

import convgen as cg
from convgen.reference import random_arrays
from convgen.tolerance import max_error, tolerance
import helpers
from helpers import REPO

SCRIPT = REPO / "bench" / "gpu_layers.py"
SMALL_LAYERS = ("r18_1x1s2_64_128", "mbv2_dw3x3_144_56")


def run_script(*args: str, **env: str | None) -> subprocess.CompletedProcess:
    return helpers.run_script(SCRIPT, *args, timeout=120, **env)


@pytest.fixture(scope="module")
def script():
    """bench/gpu_layers.py imported as a module."""
    with helpers.imported_script(SCRIPT, "gpu_layers_under_test") as module:
        yield module


def test_emulator_check_runs_and_passes(tmp_path):
    out = tmp_path / "check.json"
    result = run_script("--emulator-check", "--layers", *SMALL_LAYERS, "--max-spatial", "6",
                        "--json", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    for name in SMALL_LAYERS:
        assert any(line.startswith("OK") and name in line for line in lines), result.stdout
    assert "FAIL" not in result.stdout
    data = json.loads(out.read_text())
    assert data["mode"] == "emulator-check"
    assert [r["layer"] for r in data["layers"]] == list(SMALL_LAYERS)
    assert all(r["ok"] and r["input_shape"][0] == 1 and max(r["input_shape"][2:]) <= 6
               for r in data["layers"])


def test_without_gpu_says_why_and_exits_0():
    # CONVGEN_CUDA_DEVICE unset: GPU 0, through the driver library (absent on CI machines)
    from convgen.backends.cuda.driver import available

    why = available(0)
    if why is None:
        pytest.skip("this machine has a GPU: the no-GPU message is not shown")
    result = run_script("--layers", SMALL_LAYERS[0], CONVGEN_CUDA_DEVICE=None)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"no GPU: {why}" in result.stdout
    assert "no GPU figures were measured" in result.stdout


def test_emulator_device_is_not_benchmarked():
    result = run_script("--layers", SMALL_LAYERS[0], CONVGEN_CUDA_DEVICE="emulator")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no GPU: CONVGEN_CUDA_DEVICE=emulator" in result.stdout
    assert "no GPU figures were measured" in result.stdout


def test_unknown_layer_is_refused():
    result = run_script("--emulator-check", "--layers", "no_such_layer")
    assert result.returncode != 0
    assert "no_such_layer" in result.stderr and SMALL_LAYERS[0] in result.stderr


@pytest.mark.parametrize("name, label, tflops", [
    ("NVIDIA H100 80GB HBM3", "H100 SXM", 67.0), ("NVIDIA H100 PCIe", "H100 PCIe", 51.0),
    ("NVIDIA H200", "H200", 67.0), ("NVIDIA A100-SXM4-80GB", "A100", 19.5),
    ("NVIDIA A100-PCIE-40GB", "A100", 19.5), ("NVIDIA L4", "L4", 30.3),
    ("NVIDIA GeForce RTX 4090", "RTX 4090", 82.6)])
def test_peak_table(script, name, label, tflops):
    assert script.peak_fp32(name) == (label, tflops)


@pytest.mark.parametrize("name", ["NVIDIA L40S", "NVIDIA H100 NVL", "Tesla T4"])
def test_peak_unknown_device(script, name):
    assert script.peak_fp32(name) is None


def test_resize_keeps_layers_valid(script):
    for entry in script.select_layers(None):
        small = script.resize(entry.spec, 1, 2)
        assert small.batch == 1 and small.in_channels == entry.spec.in_channels
        assert all(s <= o for s, o in zip(small.in_spatial, entry.spec.in_spatial))
        assert all(o >= 1 for o in small.output_spatial)
    spec = cg.ConvSpec((1, 8, 1, 20), 8, kernel_size=(1, 9), dilation=(1, 2))
    assert script.resize(spec, None, 4).in_spatial == (1, 17)  # grown until valid


@pytest.mark.parametrize("spec", [
    cg.ConvSpec((2, 6, 9, 7), 4, kernel_size=3, stride=2, padding=((1, 2), (0, 1)),
                activation="relu"),
    cg.ConvSpec((1, 4, 5, 6), 6, kernel_size=4, stride=2, padding=1, transposed=True,
                groups=2, activation="silu"),
    cg.ConvSpec((1, 4, 11), 4, kernel_size=3, dilation=2, padding=2, padding_mode="reflect",
                bias=False, flip=True),
])
def test_torch_call_matches_oracle(script, spec):
    """The torch peer's call (run here on CPU tensors) computes the spec's whole result."""
    torch = pytest.importorskip("torch")
    x, w, b = random_arrays(spec)
    call = script.torch_call(torch, spec, torch.from_numpy(x),
                             torch.from_numpy(script.peer_weight(spec, w)),
                             None if b is None else torch.from_numpy(b))
    got = call().numpy()
    assert max_error(got, cg.reference(spec, x, w, b)) <= tolerance(spec)


class FakeEvent:
    """Host-clock stand-in for driver.Event / torch.cuda.Event."""

    def __init__(self, *args, **kwargs):
        self.t = None

    def record(self):
        self.t = time.perf_counter()

    def synchronize(self):
        pass

    def elapsed_ms(self, start):
        return (self.t - start.t) * 1e3


class FakeDriver:
    def name(self):
        return "NVIDIA H100 80GB HBM3"

    def arch(self):
        return "sm_90"

    def multiprocessors(self):
        return 132

    def synchronize(self):
        pass


def test_gpu_path_on_stand_in_driver(script, monkeypatch, tmp_path, capsys):
    """gpu_bench end to end with a stand-in driver: kernels on the emulator, DeviceArrays in
    the emulator's memory, no torch; checks the table, the ratios' absence and the JSON."""
    monkeypatch.setattr(script, "cuda_driver", SimpleNamespace(
        Driver=SimpleNamespace(get=lambda ordinal: FakeDriver()), Event=FakeEvent))
    monkeypatch.setattr(script, "find_torch", lambda: (None, "stand-in: no torch"))
    script.config.set_cuda_device("emulator")
    try:
        out = tmp_path / "gpu.json"
        parsed = SimpleNamespace(layers=list(SMALL_LAYERS), repeat=2, warmup=1, calls=2,
                                 batch=1, max_spatial=5, arrays="auto", tf32=False,
                                 json=str(out))
        entries = script.select_layers(parsed.layers)
        status = script.gpu_bench(entries, "emulator", parsed)
    finally:
        script.config.set_cuda_device(None)
    text = capsys.readouterr().out
    assert status == 0, text
    assert "NVIDIA H100 80GB HBM3" in text and "67 TFLOP/s fp32 (H100 SXM)" in text
    assert "convgen DeviceArray" in text and "torch: not measured" in text
    data = json.loads(out.read_text())
    assert data["measured"] and data["device"]["peak_fp32_tflops"] == 67.0
    assert [r["layer"] for r in data["layers"]] == list(SMALL_LAYERS)
    for row in data["layers"]:
        assert row["convgen_ok"] and row["convgen_error"] <= row["tolerance"]
        assert len(row["convgen_times_ms"]) == 2 and row["convgen_ms"] > 0
        assert row["tflops"] > 0 and row["peak_fraction"] == pytest.approx(row["tflops"] / 67)
        assert row["torch_ms"] is None and row["ratio"] is None
        assert any(line.startswith(row["layer"]) and line.rstrip().endswith("ok")
                   for line in text.splitlines())
    assert np.isfinite([r["convgen_ms"] for r in data["layers"]]).all()
