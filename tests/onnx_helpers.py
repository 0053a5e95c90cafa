"""Building small ONNX models in tests and checking convgen against its oracle and ORT."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pytest

import convgen as cg
# whole networks: the backends that compile them
from helpers import NETWORK_BACKENDS as BACKENDS  # noqa: F401

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

IR_VERSION = 8  # onnxruntime reads IR <= 13; 8 carries every opset used here


def make_model(nodes, inputs: Mapping[str, Sequence], outputs: Sequence[str],
               initializers: Mapping[str, np.ndarray] | None = None, opset: int = 17,
               elem_type: int = TensorProto.FLOAT, output_shapes: Mapping | None = None):
    """A model from nodes; inputs name -> shape (a str dim is symbolic)."""
    graph = helper.make_graph(
        list(nodes), "test",
        [helper.make_tensor_value_info(name, elem_type, list(shape))
         for name, shape in inputs.items()],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT,
                                       (output_shapes or {}).get(name))
         for name in outputs],
        [numpy_helper.from_array(np.asarray(v), name)
         for name, v in (initializers or {}).items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                             ir_version=IR_VERSION)


def node(op: str, inputs: Sequence[str], outputs: Sequence[str], name: str = "", **attrs):
    return helper.make_node(op, list(inputs), list(outputs), name=name, **attrs)


def rand(*shape, seed: int = 0, low: float = -1.0, high: float = 1.0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(low, high, shape).astype(np.float32)


def run_ort(model, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    ort = pytest.importorskip("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return session.run(None, dict(zip(names, inputs)))


def run_onnx_reference(model, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    """ONNX's own Python evaluator: for old opsets that onnxruntime has no kernels for."""
    from onnx.reference import ReferenceEvaluator

    names = [i.name for i in model.graph.input]
    return ReferenceEvaluator(model).run(None, dict(zip(names, inputs)))


def assert_close(got, want, rtol: float = 1e-4, atol: float = 1e-5, what: str = "") -> None:
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape}, expected {want.shape}"
    scale = 1.0 + float(np.max(np.abs(want))) if want.size else 1.0
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol * scale, err_msg=what)


def check_model(model, inputs: Sequence[np.ndarray], backends: Sequence[str] = BACKENDS,
                expected: str = "ort", input_shape=None, rtol: float = 1e-4,
                atol: float = 1e-5):
    """Compile ``model`` on each backend; compare with the oracle and ORT (or ONNX's
    reference evaluator, ``expected="onnx"``; None: the oracle only, where neither
    implements the opset). Returns the imported model."""
    imported = cg.from_onnx(model, input_shape=input_shape)
    if expected == "ort":
        want = run_ort(model, inputs)
    elif expected == "onnx":
        want = run_onnx_reference(model, inputs)
    else:
        want = None
    for backend in backends:
        compiled = imported.compile(backend=backend)
        got = compiled(*inputs)
        ref = compiled.reference(*inputs)
        got, ref = (got, ref) if isinstance(got, list) else ([got], [ref])
        for i, (g, r) in enumerate(zip(got, ref)):
            assert g.dtype == np.float32
            assert_close(g, r, rtol, atol, f"{backend} output {i} vs the oracle")
        if want is not None:
            assert len(got) == len(want)
            for i, (r, w) in enumerate(zip(ref, want)):
                assert_close(r, w, rtol, atol, f"oracle output {i} vs {expected}")
    return imported
