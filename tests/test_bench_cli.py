"""``convgen bench``: runs on tiny specs, checks every runtime against the oracle, writes
JSON, measures the peak. Speed is printed by bench, never asserted here."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import convgen.bench.measure as bench
from convgen.bench.measure import fma_probe, peak_source
from convgen.bench.peers import Runner
from convgen.cli.main import main
from convgen.specfile import load_specfile

ROOT = Path(__file__).resolve().parent.parent
FAST = ["--repeat", "1", "--threads", "1", "--peak-seconds", "0.02"]

TINY = """
[[conv]]
name = "tiny_relu"
input_shape = [1, 3, 6, 6]
out_channels = 4
kernel_size = 3
padding = 1
activation = "relu"

[[conv]]
name = "tiny_1d_s2"
input_shape = [1, 2, 9]
out_channels = 2
kernel_size = 3
stride = 2
bias = false
"""


@pytest.fixture
def tiny(tmp_path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(textwrap.dedent(TINY))
    return path


def expected_runtimes() -> list[str]:
    names = ["convgen", "numpy"]
    if importlib.util.find_spec("torch"):
        names += ["torch", "torch_cl"]
    if importlib.util.find_spec("onnxruntime") and importlib.util.find_spec("onnx"):
        names.append("ort")
    return names


def rows(out: str, name: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith(name + " ")]


def test_bench_specfile_prints_table_and_writes_json(tiny, tmp_path, capsys):
    out_json = tmp_path / "out.json"
    assert main(["bench", str(tiny), *FAST, "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert "peak fp32 FMA throughput" in out
    for title in ("cg ms", "GFLOP/s", "%peak", "numpy ms", "best peer", "ratio", "check"):
        assert title in out
    for name in ("tiny_relu", "tiny_1d_s2"):
        (row,) = rows(out, name)
        assert row.split()[-1] == "ok", row
    assert "geomean ratio" in out and "below 0.8" in out
    # torch_cl is 2D only: said so, not silently dropped
    assert "n/a: torch_cl on tiny_1d_s2" in out

    data = json.loads(out_json.read_text())
    assert data["repeat"] == 1 and data["peak_gflops"]["1"] > 0
    records = data["measurements"]
    assert {(r["layer"], r["runtime"]) for r in records if r["median_ms"] is not None} >= \
        {(layer, runtime) for layer in ("tiny_relu", "tiny_1d_s2")
         for runtime in expected_runtimes() if not (layer == "tiny_1d_s2"
                                                     and runtime == "torch_cl")}
    for r in records:
        assert {"layer", "threads", "runtime", "median_ms", "gflops", "ratio", "ok",
                "max_error", "percent_of_peak", "intensity"} <= set(r)
        assert r["threads"] == 1
        if r["median_ms"] is not None:
            assert r["ok"] is True and r["median_ms"] > 0 and r["gflops"] > 0
            assert r["ratio"] is None or r["ratio"] > 0
    mine = [r for r in records if r["runtime"] == "convgen"]
    assert len(mine) == 2 and all(r["schedule"] for r in mine)
    (summary,) = data["summary"]
    assert summary["threads"] == 1 and summary["layers"] == 2 and summary["failed"] == []


def test_bench_marks_a_wrong_peer_and_fails_on_wrong_convgen(tiny, tmp_path, capsys,
                                                             monkeypatch):
    def wrong_numpy(spec, x, w, b=None):
        return Runner(lambda: np.zeros(spec.output_shape, spec.dtype) + 1)

    monkeypatch.setattr(bench, "numpy_runner", wrong_numpy)
    out_json = tmp_path / "out.json"
    assert main(["bench", str(tiny), *FAST, "--json", str(out_json)]) == 0  # peer: marked
    out = capsys.readouterr().out
    (row,) = rows(out, "tiny_relu")
    assert "FAIL numpy" in row and "!" in row
    records = json.loads(out_json.read_text())["measurements"]
    assert not any(r["ok"] for r in records if r["runtime"] == "numpy")

    real = bench.convgen_runner

    def wrong_convgen(*args):
        runner = real(*args)
        return Runner(runner.call, lambda y: y.copy() * 2 + 1)

    monkeypatch.setattr(bench, "convgen_runner", wrong_convgen)
    assert main(["bench", str(tiny), *FAST]) == 1  # convgen's own output is wrong
    (row,) = rows(capsys.readouterr().out, "tiny_relu")
    assert "FAIL" in row and "convgen" in row


def test_bench_peak(tmp_path, capsys):
    out_json = tmp_path / "peak.json"
    assert main(["bench", "--peak", "--threads", "1", "--peak-seconds", "0.02",
                 "--json", str(out_json)]) == 0
    assert "1 thread" in capsys.readouterr().out
    assert json.loads(out_json.read_text())["peak_gflops"]["1"] > 0


def test_peak_source_has_independent_chains():
    probe = fma_probe()
    source = peak_source(probe, "probe")
    updates = re.findall(r"^\s+acc(\d+) = [^;]*?acc(\d+)\b", source, re.M)
    assert len(updates) == probe.accumulators  # one FMA per chain per iteration
    assert all(target == operand for target, operand in updates)  # each its own chain
    assert probe.flops_per_iteration == probe.accumulators * probe.lanes * 2


def test_bench_plot_without_matplotlib_says_how_to_install(tiny, tmp_path, capsys,
                                                           monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails as if absent
    assert main(["bench", str(tiny), *FAST, "--plot", str(tmp_path / "r.png")]) == 2
    err = capsys.readouterr().err
    assert "matplotlib" in err and "pip install" in err and "convgen[plot]" in err
    assert not (tmp_path / "r.png").exists()


def test_bench_plot_writes_png(tiny, tmp_path):
    pytest.importorskip("matplotlib")
    target = tmp_path / "r.png"
    assert main(["bench", str(tiny), *FAST, "--plot", str(target)]) == 0
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_network_file(capsys):
    net = ROOT / "specs" / "nets" / "lenet5.toml"
    assert main(["bench", str(net), *FAST]) == 0
    out = capsys.readouterr().out
    assert "end-to-end latency" in out
    assert rows(out, "conv1") and rows(out, "conv2")
    assert all(row.split()[-1] == "ok" for row in rows(out, "conv1") + rows(out, "conv2"))


def test_bench_onnx_model_against_onnxruntime(tmp_path, capsys):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    import convgen as cg
    from convgen.bench.peers import onnx_conv_model

    spec = cg.ConvSpec((1, 3, 8, 8), 4, kernel_size=3, padding=1, activation="relu")
    rng = np.random.default_rng(0)
    model = onnx_conv_model(spec, rng.standard_normal(spec.weight_shape).astype(np.float32),
                            rng.standard_normal(4).astype(np.float32))
    path = tmp_path / "tiny.onnx"
    onnx.save(model, str(path))
    out_json = tmp_path / "out.json"
    assert main(["bench", str(path), *FAST, "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert "end-to-end latency" in out and "ort ms" in out
    (network,) = json.loads(out_json.read_text())["networks"]
    assert network["ok"] and network["ort_ms"] > 0 and network["convgen_ms"] > 0
    assert network["convgen_error"] <= 1e-3 and network["ort_error"] <= 1e-3


def test_bench_usage_errors(capsys):
    assert main(["bench", *FAST]) == 2
    assert "SPECFILE|NETSPEC|MODEL.onnx" in capsys.readouterr().err
    assert main(["bench", "--threads", "0", "x.toml"]) == 2
    assert main(["bench", "--peak", "x.toml"]) == 2
    assert main(["bench", "--input-shape", "1,x", "x.toml"]) == 2


def test_layers_toml_is_the_issue_list():
    entries = {e.name: e.spec for e in load_specfile(ROOT / "specs" / "bench" / "layers.toml")}
    assert len(entries) == 24
    assert entries["r18_conv1_7x7s2"].output_shape == (1, 64, 112, 112)
    assert entries["convT_4x4s2_256_128_n16"].output_shape == (16, 128, 32, 32)
    assert entries["c1d_k3d8_64_16000"].output_shape == (1, 64, 16000)
    assert entries["mbv2_dw3x3_144_56"].groups == 144
    assert entries["r18_3x3_64_56_n8"].batch == 8
    # issue 22's layer kinds
    assert entries["incv3_1x7_160_17"].output_shape == (1, 160, 17, 17)
    assert entries["incv3_3x3s2_3_32_299"].output_shape == (1, 32, 149, 149)
    assert entries["dw5x5s2_144_56"].output_shape == (1, 144, 28, 28)
    assert entries["dw7x7s2_96_56"].groups == 96
    assert entries["rx50_g32_3x3_128_56"].groups == 32
    assert entries["c1d_k3s2_64_128_16000"].output_shape == (1, 128, 8000)
    assert entries["convT_3x3s2_128_64_28"].output_shape == (1, 64, 56, 56)


def test_interleaved_rounds_warm_up_for_the_given_time():
    """Each runtime's round: warm-up calls (one, more until ``warmup`` seconds passed), then
    the timed calls; the order rotates; a runtime that raises is dropped with its error."""
    import time

    log = []

    def runner(name, seconds=0.0):
        def call():
            log.append(name)
            time.sleep(seconds)
            return np.zeros(1)
        return Runner(call)

    def broken():
        if log.count("bad") > 0:
            raise RuntimeError("boom")
        log.append("bad")
        return np.zeros(1)

    timed = bench.measure_interleaved({"a": runner("a", 0.002), "b": runner("b"),
                                       "bad": Runner(broken)},
                                      repeat=3, pause=0.001, calls=2, warmup=0.02)
    assert len(timed["a"][0]) == len(timed["b"][0]) == 6  # 3 rounds x 2 timed calls
    assert isinstance(timed["bad"][1], RuntimeError) and timed["bad"][0] == []
    # a: 1 checked call, then per round >= 0.02 s of 2 ms calls (>= 5) + 2 timed
    assert log.count("a") >= 1 + 3 * (5 + 2)
    assert log[:3] == ["a", "b", "bad"]  # the checked calls, in order
    # no warm-up time: one warm-up call per round
    log.clear()
    bench.measure_interleaved({"a": runner("a")}, repeat=4, pause=0.0, calls=2, warmup=0.0)
    assert log.count("a") == 1 + 4 * (1 + 2)


def test_bench_refuses_the_cuda_backend(tiny, capsys):
    """The peers are CPU libraries and emulator times mean nothing: a clear refusal that
    names the GPU bench script."""
    assert main(["bench", str(tiny), *FAST, "--backend", "cuda"]) == 2
    assert "bench/gpu_layers.py" in capsys.readouterr().err
