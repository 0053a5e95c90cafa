"""ONNX models whose weights are graph inputs, not initializers (Conv/ConvTranspose W and
B, BatchNormalization's statistics, Clip's bounds): the compiled model takes them with the
inputs, specializes the network on their values and recompiles (cached) when they change.
Each case is compared with ONNX's reference evaluator and convgen's oracle on c and llvm."""

from __future__ import annotations

import io

import numpy as np
import onnx
import pytest

from onnx_helpers import assert_close, check_model, make_model, node, rand, run_onnx_reference

import convgen as cg
from convgen.cli.main import main

# whole networks: the backend argument runs over the backends that compile them
pytestmark = pytest.mark.networks


def _inputs(model, seed: int = 0) -> list[np.ndarray]:
    shapes = [tuple(d.dim_value for d in v.type.tensor_type.shape.dim)
              for v in model.graph.input]
    return [rand(*shape, seed=seed + i) for i, shape in enumerate(shapes)]


@pytest.mark.parametrize("x_shape,w_shape,attrs,bias", [
    ((1, 3, 7, 8), (4, 3, 3, 3), dict(pads=[1, 1, 1, 1]), True),
    ((1, 4, 9, 9), (6, 2, 3, 3), dict(group=2, strides=[2, 2], pads=[0, 1, 1, 0]), True),
    ((1, 2, 5, 5), (3, 2, 3, 3), dict(strides=[2, 1]), False),
])
def test_conv_weight_and_bias_inputs(x_shape, w_shape, attrs, bias):
    inputs = {"x": x_shape, "W": w_shape, **({"B": (w_shape[0],)} if bias else {})}
    model = make_model([node("Conv", list(inputs), ["y"], **attrs)], inputs, ["y"])
    imported = check_model(model, _inputs(model), expected="onnx")
    assert imported.input_names == ["x"]
    assert [name for name, *_ in imported.weight_inputs] == list(inputs)[1:]


def test_conv_weight_input_with_an_initializer_bias():
    model = make_model([node("Conv", ["x", "W", "B"], ["y"], pads=[1, 1, 1, 1])],
                       {"W": (2, 3, 3, 3), "x": (1, 3, 5, 5)}, ["y"], {"B": rand(2, seed=5)})
    # the call takes the graph inputs in the model's order, weights first here
    check_model(model, _inputs(model), expected="onnx")


def test_conv_transpose_weight_and_bias_inputs():
    inputs = {"x": (1, 3, 4, 5), "W": (3, 2, 3, 3), "B": (2,)}
    model = make_model([node("ConvTranspose", ["x", "W", "B"], ["y"], strides=[2, 2],
                             pads=[1, 1, 1, 1], output_padding=[1, 1])], inputs, ["y"])
    check_model(model, _inputs(model), expected="onnx")


def test_batch_normalization_and_clip_parameter_inputs():
    # BN's statistics and Clip's bounds as inputs, after a conv that they fold into
    inputs = {"x": (1, 2, 6, 6), "W": (3, 2, 3, 3), "scale": (3,), "bias": (3,),
              "mean": (3,), "var": (3,), "lo": (), "hi": ()}
    model = make_model([node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]),
                        node("BatchNormalization", ["c", "scale", "bias", "mean", "var"],
                             ["n"]),
                        node("Clip", ["n", "lo", "hi"], ["y"])], inputs, ["y"])
    values = _inputs(model)
    values[5] = np.abs(values[5]) + 0.5  # a variance
    values[6], values[7] = np.float32(-0.3), np.float32(0.4)
    check_model(model, values, expected="onnx")


@pytest.mark.parametrize("backend", ["c", "llvm"])
def test_changing_the_weights_recompiles_and_is_cached(backend):
    model = make_model([node("Conv", ["x", "W", "B"], ["y"], pads=[1, 1, 1, 1])],
                       {"x": (1, 2, 5, 5), "W": (3, 2, 3, 3), "B": (3,)}, ["y"])
    x, w1, b = _inputs(model)
    w2 = rand(3, 2, 3, 3, seed=9)
    compiled = cg.from_onnx(model).compile(backend=backend)
    y1 = compiled(x, w1, b)
    y2 = compiled(x, w2, b)
    assert_close(y1, run_onnx_reference(model, [x, w1, b])[0], what="first weights")
    assert_close(y2, run_onnx_reference(model, [x, w2, b])[0], what="second weights")
    assert not np.allclose(y1, y2)
    assert compiled.compilations == 2
    np.testing.assert_array_equal(compiled(x, w1, b), y1)  # the guard finds the first
    assert compiled.compilations == 2
    w1[0, 0, 0, 0] += 1.0  # changed in place: the guard reads the bytes, not the object
    assert_close(compiled(x, w1, b), run_onnx_reference(model, [x, w1, b])[0],
                 what="weights changed in place")
    assert compiled.compilations == 3


def test_weight_input_errors():
    model = make_model([node("Conv", ["x", "W"], ["y"])],
                       {"x": (1, 2, 5, 5), "W": (3, 2, 3, 3)}, ["y"])
    imported = cg.from_onnx(model)
    with pytest.raises(cg.OnnxImportError, match="\\['W'\\] are specialized inputs"):
        imported.graph
    x, w = _inputs(model)
    graph = imported.graph_for(weights={"W": w})
    assert [name for name, _ in graph.inputs] == ["x"]
    assert "54 parameters" in imported.summary(weights={"W": w}, file=io.StringIO())
    assert "specialized inputs ['W']" in repr(imported)
    with pytest.raises(cg.OnnxImportError, match="missing \\['W'\\], unknown \\['V'\\]"):
        imported.graph_for(weights={"V": w})
    compiled = imported.compile(backend="c")
    with pytest.raises(TypeError, match="expected 2 input array\\(s\\) \\['x', 'W'\\]"):
        compiled(x)
    with pytest.raises(ValueError, match="specialized input 'W': expected shape \\(3, 2, 3, 3\\)"):
        compiled(x, w[:2])
    assert compiled.compilations == 0


def test_convgen_run_refuses_weight_inputs_with_a_clear_error(tmp_path, capsys):
    """`convgen run MODEL.onnx` makes up data inputs only: weights given as graph inputs
    shape the network, so it names them and says how to pass them."""
    model = make_model([node("Conv", ["x", "W"], ["y"], pads=[1, 1, 1, 1])],
                       {"x": (1, 3, 5, 5), "W": (2, 3, 3, 3)}, ["y"])
    path = tmp_path / "weights_as_inputs.onnx"
    onnx.save(model, str(path))
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert "['W']" in err and "weights" in err and "Traceback" not in err
