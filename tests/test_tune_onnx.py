"""``convgen tune MODEL.onnx``: an ONNX model is tuned as a network file is (each distinct
convolution once, bound), its records are the ones its compile then uses, and ``--list`` /
``--forget`` take the model too. Tiny shapes, budgets of a second or two."""

from __future__ import annotations

import importlib
import logging

import numpy as np
import pytest

from onnx_helpers import make_model, node, rand, onnx  # noqa: F401  (skips without onnx)

import convgen as cg
from convgen.cli.main import main
from convgen.records import best_record
from convgen.tuning.tuner import network_convs

tune_module = importlib.import_module("convgen.tuning.tuner")


@pytest.fixture(autouse=True)
def any_load(monkeypatch):
    """The suite shares its cores: tune without waiting for them."""
    monkeypatch.setattr(tune_module, "CHECK_LOAD", False)


def conv_model(batch="N", weights_as_input: bool = False):
    """Conv 3x3 (4 -> 8) + Relu, then a second identical conv: two convs, one distinct spec
    after fusion (the tuner tunes it once)."""
    w1, w2 = rand(8, 4, 3, 3, seed=1), rand(4, 8, 3, 3, seed=2)
    nodes = [node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             node("Relu", ["c1"], ["r1"]),
             node("Conv", ["r1", "w2"], ["y"], pads=[1, 1, 1, 1])]
    inputs = {"x": [batch, 4, 6, 6]}
    if weights_as_input:
        inputs["w1"] = [8, 4, 3, 3]
        return make_model(nodes, inputs, ["y"], {"w2": w2})
    return make_model(nodes, inputs, ["y"], {"w1": w1, "w2": w2})


def save(model, tmp_path, name="model.onnx") -> str:
    path = tmp_path / name
    path.write_bytes(model.SerializeToString())
    return str(path)


def test_tune_an_onnx_model_and_compile_uses_its_records(db, tmp_path, capsys, caplog):
    path = save(conv_model(), tmp_path)
    assert main(["tune", path, "--input-shape", "1,4,6,6", "--budget", "2", "--backend", "c",
                 "--threads", "1"]) == 0
    out = capsys.readouterr().out
    rows = out.strip().splitlines()
    assert rows[0].split()[:3] == ["name", "default", "ms"]
    assert len(rows) == 2 + 2  # header, rule, the two convs (distinct specs: 4->8, 8->4)
    imported = cg.from_onnx(path, input_shape=(1, 4, 6, 6))
    convs = network_convs(imported.graph)
    assert len(convs) == 2
    for _, spec in convs.values():  # recorded bound, at 1 thread, as a network runs them
        assert best_record(spec, "c", bound=True, threads=1) is not None
    # the compile that follows reads those records (it logs which one it took)
    with caplog.at_level(logging.INFO, logger="convgen.compiler"):
        model = imported.compile(backend="c", threads=1)
    assert sum("record" in r.getMessage() and "default" not in r.getMessage()
               for r in caplog.records) >= 2, [r.getMessage() for r in caplog.records]
    x = rand(1, 4, 6, 6, seed=3)
    np.testing.assert_allclose(model(x), model.reference(x), rtol=1e-4, atol=1e-5)

    # --list and --forget take the model as they take a network file
    assert main(["tune", "--list", path, "--input-shape", "1,4,6,6"]) == 0
    listed = capsys.readouterr().out
    assert len([line for line in listed.splitlines() if "c1" in line or "y" in line]) >= 2
    assert main(["tune", "--forget", path, "--input-shape", "1,4,6,6"]) == 0
    for _, spec in convs.values():
        assert best_record(spec, "c", bound=True, threads=1) is None


def test_tune_onnx_needs_the_symbolic_dims(db, tmp_path, capsys):
    path = save(conv_model(), tmp_path)
    assert main(["tune", path, "--budget", "1", "--backend", "c"]) == 2
    err = capsys.readouterr().err
    assert "'x'" in err and "input_shape" in err.replace("-", "_"), err


def test_tune_onnx_refuses_weights_as_inputs(db, tmp_path, capsys):
    path = save(conv_model(batch=1, weights_as_input=True), tmp_path)
    assert main(["tune", path, "--budget", "1", "--backend", "c"]) == 2
    err = capsys.readouterr().err
    assert "['w1']" in err and "weights" in err, err


def test_input_shape_is_for_networks_only(db, tmp_path, capsys):
    spec = tmp_path / "specs.toml"
    spec.write_text('[[conv]]\nname = "a"\ninput_shape = [1, 4, 6, 6]\n'
                    'out_channels = 8\nkernel_size = 3\n')
    assert main(["tune", str(spec), "--input-shape", "1,4,6,6", "--budget", "1"]) == 2
    assert "--input-shape applies to a network file or an ONNX model" in \
        capsys.readouterr().err
