"""bench/gpu_networks.py without a GPU: its emulator check, its no-GPU exit, and its GPU
path's bookkeeping run against stand-ins (networks on the CPU emulator, a stand-in driver
and torch.cuda whose events use the host clock, torch on the CPU). Speed is never
asserted."""

from __future__ import annotations

import json
import subprocess
import time
from types import SimpleNamespace

import pytest

import helpers
from helpers import REPO

SCRIPT = REPO / "bench" / "gpu_networks.py"
SMALL_NETWORKS = ("lenet5", "video3d")


def run_script(*args: str, **env: str | None) -> subprocess.CompletedProcess:
    return helpers.run_script(SCRIPT, *args, timeout=180, **env)


@pytest.fixture(scope="module")
def script():
    """bench/gpu_networks.py imported as a module."""
    with helpers.imported_script(SCRIPT, "gpu_networks_under_test") as module:
        yield module


def test_emulator_check_runs_and_passes(tmp_path):
    out = tmp_path / "check.json"
    result = run_script("--emulator-check", "--networks", *SMALL_NETWORKS, "--json", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    for name in SMALL_NETWORKS:
        assert any(line.startswith("OK") and f" {name} " in line for line in lines), \
            result.stdout
    assert "FAIL" not in result.stdout
    assert "2 of 2 networks OK on the CUDA emulator" in result.stdout
    data = json.loads(out.read_text())
    assert data["mode"] == "emulator-check"
    assert [r["network"] for r in data["networks"]] == list(SMALL_NETWORKS)
    assert [r["input_shape"] for r in data["networks"]] == [[1, 1, 32, 32], [1, 3, 8, 16, 16]]
    assert all(r["ok"] and r["error"] < 1e-3 for r in data["networks"])


def test_without_gpu_says_why_and_exits_0():
    # CONVGEN_CUDA_DEVICE unset: GPU 0, through the driver library (absent on CI machines)
    from convgen.backends.cuda.driver import available

    why = available(0)
    if why is None:
        pytest.skip("this machine has a GPU: the no-GPU message is not shown")
    result = run_script("--networks", "lenet5", CONVGEN_CUDA_DEVICE=None)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"no GPU: {why}" in result.stdout
    assert "no GPU figures were measured" in result.stdout


def test_emulator_device_is_not_benchmarked():
    result = run_script("--networks", "lenet5", CONVGEN_CUDA_DEVICE="emulator")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no GPU: CONVGEN_CUDA_DEVICE=emulator" in result.stdout
    assert "no GPU figures were measured" in result.stdout


def test_unknown_network_is_refused(script):
    with pytest.raises(SystemExit) as info:
        script.select_networks(["no_such_net"])
    assert "no_such_net" in str(info.value) and "lenet5" in str(info.value)
    assert script.select_networks(None) == script.network_names()
    assert {"resnet18", "lenet5", "audio1d", "dcgan_generator", "video3d"} \
        <= set(script.network_names())


def test_input_shapes(script):
    assert script.input_shape("resnet18", (1, 3, 224, 224), 32, 64) == (32, 3, 64, 64)
    assert script.input_shape("audio1d", (1, 1, 4096), 8, 64) == (8, 1, 4096)
    assert script.input_shape("video3d", (1, 3, 8, 16, 16), 2, 224) == (2, 3, 8, 16, 16)


# -- the GPU path against stand-ins -------------------------------------------------------

class FakeEvent:
    """Host-clock stand-in for driver.Event and torch.cuda.Event."""

    def __init__(self, *args, **kwargs):
        self.t = None

    def record(self):
        self.t = time.perf_counter()

    def synchronize(self):
        pass

    def elapsed_ms(self, start):  # driver.Event: end.elapsed_ms(start)
        return (self.t - start.t) * 1e3

    def elapsed_time(self, end):  # torch.cuda.Event: start.elapsed_time(end)
        return (end.t - self.t) * 1e3


class FakeDriver:
    def name(self):
        return "NVIDIA H100 80GB HBM3"

    def arch(self):
        return "sm_90"

    def synchronize(self):
        pass


class FakeTorch:
    """The real torch (on the CPU) with torch.cuda, backends, _dynamo and compile stood in."""

    def __init__(self, real, compile_fails: bool):
        self._real = real
        noop = lambda *a, **k: None  # noqa: E731
        self.cuda = SimpleNamespace(is_available=lambda: True, set_device=noop,
                                    synchronize=noop, empty_cache=noop, Event=FakeEvent)
        self.backends = SimpleNamespace(
            cudnn=SimpleNamespace(benchmark=False, allow_tf32=True, version=lambda: 90100),
            cuda=SimpleNamespace(matmul=SimpleNamespace(allow_tf32=True)))
        self._dynamo = SimpleNamespace(reset=noop)
        self.compiled = []

        def compile(module, dynamic=None):
            if compile_fails:
                raise RuntimeError("stand-in: no inductor here\nsecond line")
            self.compiled.append(dynamic)
            return module
        self.compile = compile

    def __getattr__(self, name):
        return getattr(self._real, name)


@pytest.mark.parametrize("compile_fails", [False, True])
def test_gpu_path_on_stand_ins(script, monkeypatch, tmp_path, capsys, compile_fails):
    """gpu_bench end to end: convgen on the emulator with emulator DeviceArrays, torch's
    twin on the CPU, events on the host clock; checks the rows, ratios, n/a and JSON."""
    torch = pytest.importorskip("torch")
    fake = FakeTorch(torch, compile_fails)
    monkeypatch.setattr(script, "cuda_driver", SimpleNamespace(
        Driver=SimpleNamespace(get=lambda ordinal: FakeDriver()), Event=FakeEvent))
    monkeypatch.setattr(script, "find_torch", lambda: (fake, ""))
    script.config.set_cuda_device("emulator")
    try:
        out = tmp_path / "gpu.json"
        args = SimpleNamespace(networks=list(SMALL_NETWORKS), batch=[1, 2], image_size=32,
                               repeat=2, warmup=1, calls=2, tf32=False,
                               no_torch_compile=False, json=str(out))
        status = script.gpu_bench(list(SMALL_NETWORKS), "emulator", args, torch_device="cpu")
    finally:
        script.config.set_cuda_device(None)
    text = capsys.readouterr().out
    assert status == 0, text
    assert "NVIDIA H100 80GB HBM3" in text and "TF32 off" in text
    assert fake.backends.cudnn.benchmark is True and fake.backends.cudnn.allow_tf32 is False
    data = json.loads(out.read_text())
    assert data["measured"] and data["torch"]["tf32"] is False
    rows = data["results"]
    assert [(r["network"], r["batch"]) for r in rows] == \
        [(n, b) for n in SMALL_NETWORKS for b in (1, 2)]
    for row in rows:
        assert row["input_shape"][0] == row["batch"]
        assert row["convgen_ok"] and row["convgen_error"] < 1e-3
        assert len(row["convgen_times_ms"]) == 2 and row["convgen_ms"] > 0
        assert row["convgen_images_per_s"] == pytest.approx(
            row["batch"] / (row["convgen_ms"] / 1e3))
        assert row["gflop"] > 0 and row["tflops"] > 0
        assert row["torch_error"] < 1e-3 and row["torch_ms"] > 0
        assert row["torch_ratio"] == pytest.approx(row["torch_ms"] / row["convgen_ms"])
        line = next(line for line in text.splitlines()
                    if line.split()[:2] == [row["network"], str(row["batch"])])
        assert line.rstrip().endswith("ok")
        if compile_fails:
            assert row["compiled_ms"] is None and row["compiled_ratio"] is None
            assert row["compiled_na"] == "RuntimeError: stand-in: no inductor here"
        else:
            assert row["compiled_na"] is None and row["compiled_error"] < 1e-3
            assert row["compiled_ratio"] == pytest.approx(
                row["compiled_ms"] / row["convgen_ms"])
    if compile_fails:
        assert "torch.compile: n/a (RuntimeError: stand-in: no inductor here)" in text
    else:
        assert fake.compiled == [False] * 4  # dynamic=False, one per network and batch
        assert "geometric mean torch.compile/cg over 4 rows" in text
    assert "geometric mean torch/cg over 4 rows" in text
