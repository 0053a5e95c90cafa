"""ONNX models whose shape tensors are graph inputs (Reshape's and Expand's shape, Pad's
pads and constant_value, Slice's starts/ends/axes, Unsqueeze's axes): specialized at call
time (guarded, compiled per set of values, cached) or fixed at compile time with
``compile(constants=...)``; their bad values are import errors naming the node and input.
Also the optional outputs (Dropout's mask, MaxPool's Indices) with ONNX's dtypes, Gemm
with a 0-d bias and Flatten of a 1-d input. Each against onnxruntime and the oracle, on
c and llvm (MaxPool's Indices on the cuda emulator too)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_helpers import IR_VERSION, assert_close, check_model, make_model, node, rand, run_ort

import convgen as cg
from convgen.cli.main import main
from convgen.graph.compile import CompiledModel, compile_graph
from convgen.graph.ir import Graph, GraphError, Node
from convgen.graph.shapes import infer_shape
from convgen.onnx.importer import SpecializedModel

pytestmark = pytest.mark.networks

FLOAT, INT64 = TensorProto.FLOAT, TensorProto.INT64


def _model(nodes, inputs: dict, outputs: dict, initializers: dict | None = None,
           opset: int = 18):
    """inputs/outputs: name -> (ONNX element type, shape or None)."""
    graph = helper.make_graph(
        nodes, "test",
        [helper.make_tensor_value_info(n, t, s) for n, (t, s) in inputs.items()],
        [helper.make_tensor_value_info(n, t, s) for n, (t, s) in outputs.items()],
        [numpy_helper.from_array(np.asarray(v), n) for n, v in (initializers or {}).items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              ir_version=IR_VERSION)
    return model


def _shape_chain():
    """Reshape -> Pad -> Slice -> Unsqueeze -> Expand, every shape tensor a graph input."""
    nodes = [node("Reshape", ["x", "shape"], ["r"], name="reshape"),
             node("Pad", ["r", "pads", "value"], ["p"], name="pad"),
             node("Slice", ["p", "starts", "ends", "axes"], ["s"], name="slice"),
             node("Unsqueeze", ["s", "uaxes"], ["u"], name="unsqueeze"),
             node("Expand", ["u", "eshape"], ["y"], name="expand")]
    inputs = {"x": (FLOAT, [2, 3, 4]), "shape": (INT64, [2]), "pads": (INT64, [4]),
              "value": (FLOAT, []), "starts": (INT64, [1]), "ends": (INT64, [1]),
              "axes": (INT64, [1]), "uaxes": (INT64, [1]), "eshape": (INT64, [3])}
    return _model(nodes, inputs, {"y": (FLOAT, None)})


def _values(shape, pads, value, starts, ends, axes, uaxes, eshape):
    i64 = lambda v: np.array(v, dtype=np.int64)  # noqa: E731
    return [rand(2, 3, 4, seed=1), i64(shape), i64(pads), np.array(value, np.float32), i64(starts),
            i64(ends), i64(axes), i64(uaxes), i64(eshape)]


FIRST = _values([3, -1], [1, 0, 0, 2], 0.5, [1], [4], [1], [0], [2, 1, 1])
# other values, and another output shape: (2, 3, 5) instead of (2, 4, 3)
SECOND = _values([0, -1], [0, 1, 0, 0], -2.0, [-5], [100], [-1], [1], [1, 3, 1])


@pytest.mark.parametrize("backend", ["c", "llvm"])
def test_shape_inputs_specialize_recompile_and_cache(backend):
    model = _shape_chain()
    imported = cg.from_onnx(model)
    assert imported.input_names == ["x"]
    specialized = {name: dtype for name, _, dtype in imported.specialized_inputs}
    assert specialized == {"shape": "int64", "pads": "int64", "value": "float32",
                           "starts": "int64", "ends": "int64", "axes": "int64",
                           "uaxes": "int64", "eshape": "int64"}
    compiled = imported.compile(backend=backend)
    assert isinstance(compiled, SpecializedModel)
    for values, shape in ((FIRST, (2, 4, 3)), (SECOND, (2, 3, 5))):
        got = compiled(*values)
        want = run_ort(model, values)[0]
        assert got.shape == want.shape == shape and got.dtype == np.float32
        assert_close(got, want, what=f"{backend} vs onnxruntime")
        assert_close(compiled.reference(*values), want, what="oracle vs onnxruntime")
    assert compiled.compilations == 2
    np.testing.assert_array_equal(compiled(*FIRST), run_ort(model, FIRST)[0])
    assert compiled.compilations == 2  # the guard found the first values' network


def test_constants_at_compile_time():
    model = _shape_chain()
    imported = cg.from_onnx(model)
    names = [v.name for v in model.graph.input]
    fixed = dict(zip(names[1:], FIRST[1:]))
    compiled = imported.compile(backend="c", constants=fixed)
    # every specialized input fixed: a plain compiled model that takes the data only
    assert isinstance(compiled, CompiledModel)
    assert_close(compiled(FIRST[0]), run_ort(model, FIRST)[0], what="constants=")
    # some fixed: the others still specialized at the call, in the model's order
    partial = imported.compile(backend="c", constants={"shape": FIRST[1], "pads": FIRST[2]})
    assert partial.names == ["x"] + names[3:]
    assert_close(partial(FIRST[0], *FIRST[3:]), run_ort(model, FIRST)[0], what="partial")
    with pytest.raises(cg.OnnxImportError, match=r"\['nope'\] are not graph inputs"):
        imported.compile(backend="c", constants={"nope": FIRST[1]})
    with pytest.raises(ValueError, match="graph input 'pads': expected shape \\(4\\)"):
        imported.compile(backend="c", constants={"pads": FIRST[2][:2]})


def test_bad_shape_values_name_the_node_and_the_input():
    compiled = cg.from_onnx(_shape_chain()).compile(backend="c")
    bad = list(FIRST)
    bad[1] = np.array([-1, -1], dtype=np.int64)
    with pytest.raises(cg.OnnxImportError,
                       match=r"node 'reshape'.*at most one -1.*graph input.*'shape' = \[-1, -1\]"):
        compiled(*bad)
    bad = list(FIRST)
    bad[2] = np.array([0, -5, 0, -3], dtype=np.int64)
    with pytest.raises(cg.OnnxImportError,
                       match=r"node 'pad'.*leave nothing.*'pads' = \[0, -5, 0, -3\]"):
        compiled(*bad)
    bad = list(FIRST)
    bad[1] = np.array([3.0, -1.0])  # a float array for an int64 input: not truncated
    with pytest.raises(TypeError, match="'shape': expected a int64 array"):
        compiled(*bad)
    assert compiled.compilations == 0


def test_shape_input_through_folded_arithmetic():
    """Reshape's shape = Concat(Shape(x)[:1], tail): the tail input is specialized (it
    folds into a constant), x is not (Shape reads its shape only)."""
    nodes = [node("Shape", ["x"], ["sx"]),
             node("Slice", ["sx", "zero", "one"], ["n"]),
             node("Concat", ["n", "tail"], ["shape"], axis=0),
             node("Reshape", ["x", "shape"], ["y"])]
    model = _model(nodes, {"x": (FLOAT, [2, 3, 4]), "tail": (INT64, [2])},
                   {"y": (FLOAT, None)},
                   {"zero": np.array([0], np.int64), "one": np.array([1], np.int64)})
    imported = cg.from_onnx(model)
    assert imported.input_names == ["x"]
    assert [name for name, *_ in imported.specialized_inputs] == ["tail"]
    x, tail = rand(2, 3, 4, seed=3), np.array([4, 3], dtype=np.int64)
    got = imported.compile(backend="llvm")(x, tail)
    assert got.shape == (2, 4, 3)
    assert_close(got, run_ort(model, [x, tail])[0])


@pytest.mark.parametrize("backend", ["c", "llvm"])
def test_dropout_mask_and_maxpool_indices(backend):
    # values on a coarse grid: ties inside windows, broken as onnxruntime does (the first)
    x = np.round(rand(1, 2, 5, 7, seed=4) * 2) / 2
    pool = dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    nodes = [node("MaxPool", ["x"], ["p", "i0"], **pool),
             node("MaxPool", ["x"], ["q", "i1"], storage_order=1, **pool),
             node("Dropout", ["x"], ["d", "mask"])]
    model = _model(nodes, {"x": (FLOAT, [1, 2, 5, 7])},
                   {"p": (FLOAT, None), "i0": (INT64, None), "i1": (INT64, None),
                    "mask": (TensorProto.BOOL, None)}, opset=13)
    compiled = cg.from_onnx(model).compile(backend=backend)
    got, ref, want = compiled(x), compiled.reference(x), run_ort(model, [x])
    assert [g.dtype for g in got] == [np.float32, np.int64, np.int64, np.bool_]
    for g, r, w in zip(got, ref, want):
        assert g.shape == w.shape and (g.dtype == r.dtype == w.dtype or w.dtype == np.float32)
        np.testing.assert_array_equal(g, w)
        np.testing.assert_array_equal(r, w)
    assert not np.array_equal(got[1], got[2])  # the two storage orders differ


def test_maxpool_indices_3d_column_major_with_dilation():
    x = np.round(rand(2, 1, 4, 5, 6, seed=5) * 3) / 3
    model = _model([node("MaxPool", ["x"], ["p", "i"], kernel_shape=[2, 2, 3],
                         dilations=[1, 2, 1], strides=[1, 1, 2], pads=[0, 1, 1, 1, 0, 1],
                         storage_order=1)],
                   {"x": (FLOAT, [2, 1, 4, 5, 6])}, {"p": (FLOAT, None), "i": (INT64, None)},
                   opset=13)
    want = run_ort(model, [x])
    for backend in ("c", "llvm", "cuda"):  # cuda: the CPU emulator in the suite
        compiled = cg.from_onnx(model).compile(backend=backend)
        got = compiled(x)
        assert got[1].dtype == np.int64
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1], err_msg=backend)
    np.testing.assert_array_equal(compiled.reference(x)[1], want[1])


def test_maxpool_indices_beyond_the_mantissa_are_refused():
    """float32 holds indices exactly up to 2**24: a larger input is refused at compile."""
    shape = (1, 1, 4097, 4096)
    pool = Node("p", "max_pool_indices", ["x"], {"kernel_size": (2, 2), "stride": (2, 2),
                                                 "padding": (0, 0), "storage_order": 0})
    pool.shape = infer_shape(pool, [shape])
    with pytest.raises(GraphError, match="do not fit the float32 mantissa"):
        compile_graph(Graph([("x", shape)], [pool], ["p"]), backend="c")


def test_indices_used_by_another_node_are_refused():
    model = _model([node("MaxPool", ["x"], ["p", "i"], kernel_shape=[2, 2]),
                    node("Relu", ["i"], ["y"], name="relu")],
                   {"x": (FLOAT, [1, 1, 4, 4])}, {"y": (FLOAT, None)}, opset=13)
    with pytest.raises(cg.OnnxImportError, match="'relu'.*Indices.*graph outputs only"):
        cg.from_onnx(model)


def test_gemm_scalar_bias_and_flatten_1d():
    a, b = rand(3, 4, seed=6), rand(4, 5, seed=7)
    gemm = make_model([node("Gemm", ["a", "b", "c"], ["y"], alpha=0.5, beta=2.0)],
                      {"a": (3, 4), "b": (4, 5), "c": ()}, ["y"])
    check_model(gemm, [a, b, np.array(0.25, dtype=np.float32)])
    flatten = make_model([node("Flatten", ["x"], ["y"], axis=1)], {"x": (6,)}, ["y"])
    imported = check_model(flatten, [rand(6, seed=8)])
    assert imported.graph.shape_of(imported.graph.outputs[0]) == (6, 1)


def test_convgen_run_takes_shape_inputs_as_constants(tmp_path, capsys):
    model = _model([node("Reshape", ["x", "shape"], ["y"])],
                   {"x": (FLOAT, [2, 6]), "shape": (INT64, [2])}, {"y": (FLOAT, None)})
    path = tmp_path / "reshape.onnx"
    onnx.save(model, str(path))
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert "['shape']" in err and "--constants" in err and "Traceback" not in err
    constants = tmp_path / "c.npz"
    np.savez(constants, shape=np.array([3, 4], dtype=np.int64))
    assert main(["run", str(path), "--constants", str(constants), "--check",
                 "--repeat", "1"]) == 0
    assert "output   3x4 float32" in capsys.readouterr().out
    np.savez(constants, shape=np.array([5, -1, -1], dtype=np.int64))
    assert main(["run", str(path), "--constants", str(constants)]) == 2
    assert "expected shape (2)" in capsys.readouterr().err


def test_constants_keep_the_input_shape_given_at_import():
    model = _model([node("Reshape", ["x", "shape"], ["y"])],
                   {"x": (FLOAT, ["n", 6]), "shape": (INT64, [2])}, {"y": (FLOAT, None)})
    imported = cg.from_onnx(model, input_shape=[(2, 6)])
    compiled = imported.compile(backend="llvm",
                                constants={"shape": np.array([4, 3], dtype=np.int64)})
    x = rand(2, 6, seed=9)
    np.testing.assert_array_equal(compiled(x), x.reshape(4, 3))


def test_convgen_bench_refuses_specialized_inputs(tmp_path, capsys):
    model = _model([node("Reshape", ["x", "shape"], ["y"])],
                   {"x": (FLOAT, [2, 6]), "shape": (INT64, [2])}, {"y": (FLOAT, None)})
    path = tmp_path / "reshape.onnx"
    onnx.save(model, str(path))
    assert main(["bench", str(path)]) != 0
    err = capsys.readouterr().err
    assert "['shape'] are specialized inputs" in err and "Traceback" not in err


def test_reshape_allowzero_from_a_shape_input():
    """allowzero=0: a 0 copies the input's dim; allowzero=1 (opset 14): a 0 is a dim of
    size 0, an empty tensor, which a network cannot hold: an error naming the node."""
    for allowzero, fine in ((0, True), (1, False)):
        model = _model([node("Reshape", ["x", "shape"], ["y"], name="r", allowzero=allowzero)],
                       {"x": (FLOAT, [2, 6]), "shape": (INT64, [3])}, {"y": (FLOAT, None)})
        imported = cg.from_onnx(model)
        shape = {"shape": np.array([0, 3, -1], dtype=np.int64)}
        if fine:
            graph = imported.graph_for(weights=shape)
            assert graph.shape_of(graph.outputs[0]) == (2, 3, 2)
        else:
            with pytest.raises(cg.OnnxImportError, match=r"node 'r'.*cannot reshape.*'shape' = "
                                                         r"\[0, 3, -1\]"):
                imported.graph_for(weights=shape)
