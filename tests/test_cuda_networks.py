"""Whole networks on backend "cuda", in the emulator: the shipped networks (ResNet-18 at a
small input, LeNet-5, the 1D audio net, the DCGAN generator, the 3D net) match the
composed oracle with every array access bounds-checked, bit for bit the same in two
thread orders; an ONNX model; device arrays in and out; per-layer GPU schedules; tuning
(refused on the emulator, and its GPU path run with the refusal lifted)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import convgen as cg
from convgen.backends import get_backend
from convgen.backends.cuda.arrays import DeviceArray, to_device
from convgen.backends.cuda.network import EmulatedNetwork, launches
from convgen.graph.compile import compile_graph
from convgen.records import best_record
from convgen.tuning.space import gpu_candidate_schedules
from convgen.plan.gpu import make_gpu_plan

from graph_helpers import conv, graph, node
from onnx_helpers import make_model, rand
from onnx_helpers import node as onnx_node

NETS = Path(__file__).resolve().parent.parent / "specs" / "nets"
CASES = {  # network file -> input shape (ResNet-18 small, the others their own)
    "resnet18": (1, 3, 32, 32),
    "lenet5": None,
    "audio1d": None,
    "dcgan_generator": None,
    "video3d": None,
}


def relative_error(got, want) -> float:
    want = np.asarray(want, np.float64)
    return float(np.max(np.abs(np.asarray(got, np.float64) - want)) / np.max(np.abs(want)))


@pytest.mark.parametrize("name", sorted(CASES))
def test_shipped_networks_match_the_oracle_in_both_thread_orders(name):
    net = cg.load_network(NETS / f"{name}.toml")
    shape = CASES[name] or net.input_shape
    model = net.compile(shape, backend="cuda")
    assert isinstance(model._runner, EmulatedNetwork)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    model._runner.set_thread_order("forward")
    forward = model(x)
    model._runner.set_thread_order("reverse")
    try:
        reverse = model(x)
    finally:
        model._runner.set_thread_order("forward")
    np.testing.assert_array_equal(forward, reverse, err_msg=f"{name}: a race")
    assert relative_error(forward, model.reference(x)) < 1e-4
    # one kernel per step, all of them in the one module
    steps = model._lowered.steps
    assert len(launches(model._lowered)) == len(steps)
    assert all(f"{step.function}_kernel" in model.source for step in steps)


def test_resnet_fuses_residuals_and_keeps_values_on_the_device():
    net = cg.load_network(NETS / "resnet18.toml")
    model = net.compile((1, 3, 32, 32), backend="cuda")
    residual = [s for s in model._lowered.steps if s.kind == "conv" and s.consts["residual"]]
    assert len(residual) == 8  # every basic block's add went into its second conv
    assert "v += CG_AT(r, at," in model.source
    x = np.random.default_rng(1).standard_normal((1, 3, 32, 32)).astype(np.float32)
    y = model(to_device(x))  # device in, device out: no copies
    assert isinstance(y, DeviceArray) and y.shape == (1, 1000)
    np.testing.assert_array_equal(y.copy_to_host(), model(x))


def test_onnx_model_compiles_for_cuda():
    w = rand(4, 3, 3, 3, seed=1)
    nodes = [onnx_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             onnx_node("Relu", ["c"], ["r"]),
             onnx_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             onnx_node("GlobalAveragePool", ["p"], ["g"]),
             onnx_node("Flatten", ["g"], ["y"])]
    model = make_model(nodes, {"x": (1, 3, 8, 8)}, ["y"], initializers={"w": w})
    compiled = cg.from_onnx(model).compile(backend="cuda")
    x = rand(1, 3, 8, 8, seed=2)
    assert relative_error(compiled(x), compiled.reference(x)) < 1e-5


def test_per_layer_gpu_schedules():
    shape = (1, 4, 9, 9)
    nodes = [conv("a", "x", shape, 8, 3, padding=1), conv("b", "a", (1, 8, 9, 9), 8, 3,
                                                          padding=1),
             node("sum", "add", ["a", "b"])]
    g = graph([("x", shape)], nodes, ["sum"])
    schedules = {"a": cg.Schedule(gpu=cg.GpuSchedule(kind="gemm", block=(8, 16, 4),
                                                    thread=(2, 2))),
                 "b": cg.Schedule(gpu=cg.GpuSchedule(kind="tiled", stage=False))}
    model = compile_graph(g, "cuda", schedules=schedules)
    kinds = {s.name: s.plan.kind.kind_name for s in model._lowered.steps if s.plan}
    assert kinds == {"a": "gemm", "b": "tiled"}
    x = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
    assert relative_error(model(x), model.reference(x)) < 1e-5
    with pytest.raises(cg.ScheduleError, match="CPU field"):
        compile_graph(g, "cuda", schedules={"a": cg.Schedule(tile_co=4)})


def test_network_weights_are_never_constant_memory():
    """A module's 64 KiB of __constant__ memory is shared by all its layers: networks read
    every layer's weights from global memory."""
    net = cg.load_network(NETS / "lenet5.toml")
    model = net.compile(backend="cuda")
    assert "__constant__ float" not in model.source.replace("__constant__ int", "")
    assert all(not s.plan.kind.const_weights for s in model._lowered.steps if s.plan)


# -- tuning on the device ---------------------------------------------------------------

def test_tuning_is_refused_on_the_emulator():
    spec = cg.ConvSpec((1, 4, 6, 6), 4, kernel_size=3, padding=1)
    with pytest.raises(ValueError, match="emulator runs on the CPU"):
        cg.tune(spec, backend="cuda", budget=1)


def test_gpu_candidates_are_legal_distinct_and_start_with_the_default():
    for spec in (cg.ConvSpec((1, 64, 28, 28), 64, kernel_size=3, padding=1),
                 cg.ConvSpec((1, 32, 14, 14), 32, kernel_size=5, padding=2, groups=32),
                 cg.ConvSpec((1, 16, 7, 7), 8, kernel_size=4, stride=2, transposed=True)):
        default = get_backend("cuda").default_schedule(spec)
        found = gpu_candidate_schedules(spec, default)
        assert found[0] == default and len(found) > 5
        plans = [repr(make_gpu_plan(spec, s).kind) for s in found]  # all legal
        assert len(set(plans)) == len(plans)  # and distinct
        kinds = {s.gpu.kind for s in found}
        assert kinds == ({"tiled"} if spec.transposed else
                         {"tiled", "gemm", "depthwise"} if spec.groups > 1 else
                         {"tiled", "gemm"})


def test_the_gpu_tuning_path_runs_and_its_record_is_used(monkeypatch, tmp_path):
    """With the emulator's refusal lifted (its times mean nothing, but the path is the
    GPU's: device arrays placed once, calls that wait for the kernel), tuning measures,
    checks and records GPU schedules, keyed by the device, and compile() uses the best."""
    monkeypatch.setenv("CONVGEN_TUNING_DB", str(tmp_path / "tuning.jsonl"))
    monkeypatch.setattr(type(get_backend("cuda")), "timing_caveat", lambda self: None)
    spec = cg.ConvSpec((1, 3, 6, 6), 4, kernel_size=3, padding=1, activation="relu")
    result = cg.tune(spec, backend="cuda", budget=30, max_candidates=3, workers=0)
    assert result.best.gpu is not None
    assert len(result.measurements) == 3
    assert all(m.checked for m in result.measurements if m.schedule == result.best)
    record = best_record(spec, "cuda")
    assert record == result.best
    assert cg.compile(spec, backend="cuda").schedule == result.best
