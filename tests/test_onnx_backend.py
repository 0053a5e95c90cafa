"""ONNX's own node tests against convgen's ONNX backend (convgen.onnx.backend), for every
operator convgen claims (README "Supported layers and ONNX operators").

The onnx wheel ships the node cases as generators: ``collect_testcases`` builds each one's
model and expected outputs. Every case whose nodes are all claimed operators runs through
``ConvgenBackend``; it passes, or it is in EXCLUDED with the reason, and then it runs as a
strict xfail: an excluded case that starts passing fails here until it leaves the list.
docs/onnx.md's table (passed / excluded per operator) is generated from this module and
checked by test_docs_table; regenerate it with ``python tests/test_onnx_backend.py``.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re
import sys
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from onnx_helpers import helper, onnx  # noqa: F401  (onnx_helpers skips without onnx)
from onnx import numpy_helper  # noqa: E402
from onnx.backend.test.case.node import collect_testcases  # noqa: E402
from onnx.backend.test.case.test_case import TestCase  # noqa: E402
from onnx.backend.test.loader import load_model_tests  # noqa: E402
from onnx.backend.test.runner import Runner  # noqa: E402

import convgen as cg  # noqa: E402
from convgen.onnx.backend import ConvgenBackend  # noqa: E402

REPO = Path(__file__).resolve().parent.parent

# the README's ONNX column: operators run on run-time tensors
CLAIMED = frozenset("""
    Conv ConvTranspose MaxPool AveragePool GlobalAveragePool GlobalMaxPool Gemm MatMul
    BatchNormalization LRN Relu LeakyRelu Sigmoid Tanh Clip Softmax LogSoftmax
    Add Sub Mul Div Sum Max Min Mean PRelu Where Flatten Reshape Transpose Concat Pad Split
    Squeeze Unsqueeze Slice Expand ReduceMean Dropout Identity Constant
    Gelu HardSwish HardSigmoid Elu Selu Swish Erf Softplus Softsign Resize Upsample
""".split())
# the README's ONNX column too, but folded at import on constants only ("shape arithmetic
# on constants"): their node tests feed run-time tensors, so they are not claimed here
FOLDED = frozenset("Shape Gather Cast ConstantOfShape Range".split())
# ops that node cases use around the op under test (counted under the others in the table)
HELPERS = frozenset({"Constant", "Identity"})
# the model tests shipped with their data in the onnx wheel that this module runs too
PYTORCH_KINDS = ("pytorch-converted", "pytorch-operator")

EMPTY = "an empty tensor (a dim of size 0): convgen's networks hold no empty values"
EMPTY_OUTPUT = "zero-size output (a split of 0): convgen's networks hold no empty values"
TRAINING = "training mode: convgen compiles inference only"
NOT_TENSOR = "optional and sequence types: convgen compiles tensors only"
FLOAT16 = "float16 element type: convgen computes in float32 or float64"
BOOL = ("bool run-time input (Where's condition): a network computes in one numeric element "
        "type and bool inputs are not taken")
RESIZE_ANTIALIAS = ("Resize antialias=1 (a downsampling filter whose taps grow with 1/scale): "
                    "not supported")
RESIZE_CROP = ("Resize tf_crop_and_resize (a region of interest and an extrapolation value): "
               "not supported")
RESIZE_ALIGN = ("Resize align_corners where scale * input is fractional: ONNX's reference "
                "divides by scale * input - 1, onnxruntime and torch by the output size - 1; "
                "convgen follows onnxruntime (tests/test_onnx_resize.py)")
# the error an excluded case fails with, where it is not an import error: the
# align_corners cases run and differ from ONNX's expected output
FAILS_WITH: dict[str, type | tuple] = {RESIZE_ALIGN: AssertionError}

EXCLUDED: dict[str, str] = {
    'test_batchnorm_epsilon_training_mode': TRAINING,
    'test_batchnorm_example_training_mode': TRAINING,
    'test_identity_opt': NOT_TENSOR,
    'test_identity_sequence': NOT_TENSOR,
    'test_max_float16': FLOAT16,
    'test_min_float16': FLOAT16,
    'test_reshape_allowzero_reordered': EMPTY,
    'test_resize_downsample_scales_cubic_align_corners': RESIZE_ALIGN,
    'test_resize_downsample_scales_cubic_antialias': RESIZE_ANTIALIAS,
    'test_resize_downsample_scales_linear_align_corners': RESIZE_ALIGN,
    'test_resize_downsample_scales_linear_antialias': RESIZE_ANTIALIAS,
    'test_resize_downsample_sizes_cubic_antialias': RESIZE_ANTIALIAS,
    'test_resize_downsample_sizes_linear_antialias': RESIZE_ANTIALIAS,
    'test_resize_tf_crop_and_resize': RESIZE_CROP,
    'test_resize_tf_crop_and_resize_axes_2_3': RESIZE_CROP,
    'test_resize_tf_crop_and_resize_axes_3_2': RESIZE_CROP,
    'test_resize_tf_crop_and_resize_extrapolation_value': RESIZE_CROP,
    'test_slice_start_out_of_bounds': EMPTY,
    'test_split_zero_size_splits_opset13': EMPTY_OUTPUT,
    'test_split_zero_size_splits_opset18': EMPTY_OUTPUT,
    'test_swiglu_float16_expanded': FLOAT16,
    'test_training_dropout': TRAINING,
    'test_training_dropout_default': TRAINING,
    'test_training_dropout_default_mask': TRAINING,
    'test_training_dropout_mask': TRAINING,
    'test_training_dropout_zero_ratio': TRAINING,
    'test_training_dropout_zero_ratio_mask': TRAINING,
    # pytorch-converted and pytorch-operator
}


def _ops(case) -> frozenset:
    return frozenset(node.op_type for node in case.model.graph.node)


def _selected() -> list:
    """The node cases, then the pytorch-converted and pytorch-operator model cases, whose
    operators are all claimed, each list by name."""
    with warnings.catch_warnings():  # the generators' own float casts overflow, on purpose
        warnings.simplefilter("ignore", RuntimeWarning)
        cases = [c for c in collect_testcases(None)
                 if c.kind == "node" and _ops(c) <= CLAIMED]
    cases.sort(key=lambda c: c.name)
    for kind in PYTORCH_KINDS:
        found = [_read_case(c) for c in load_model_tests(kind=kind)]
        cases += sorted((c for c in found if _ops(c) <= CLAIMED), key=lambda c: c.name)
    return cases


def _read_case(case) -> TestCase:
    """A data-directory case (its model and data sets on disk) with them loaded."""
    model = onnx.load(os.path.join(case.model_dir, "model.onnx"))
    data_sets = []
    for folder in sorted(glob.glob(os.path.join(case.model_dir, "test_data_set_*"))):
        def read(what: str) -> list:
            paths = sorted(glob.glob(os.path.join(folder, f"{what}_*.pb")),
                           key=lambda p: int(p.rsplit("_", 1)[1].split(".")[0]))
            return [numpy_helper.to_array(onnx.load_tensor(p)) for p in paths]
        data_sets.append((read("input"), read("output")))
    return dataclasses.replace(case, model=model, data_sets=data_sets)


CASES = _selected()


def _param(case):
    reason = EXCLUDED.get(case.name)
    raises = FAILS_WITH.get(reason, cg.OnnxImportError)
    marks = [pytest.mark.xfail(strict=True, raises=raises, reason=reason)] if reason else []
    return pytest.param(case, id=case.name, marks=marks)


def run_case(case, **kwargs) -> None:
    """Each data set of the case through one prepared model (compiled once per shape)."""
    rep = ConvgenBackend.prepare(case.model, "CPU", **kwargs)
    for inputs, expected in case.data_sets:
        outputs = rep.run(inputs)
        assert len(outputs) == len(expected)
        for got, want in zip(outputs, expected):
            assert got.dtype == want.dtype
            assert got.shape == want.shape
            np.testing.assert_allclose(got, want, rtol=case.rtol, atol=case.atol)


# Every case on llvm, whose in-process JIT compiles these one-node models about five times
# faster than gcc (231 cases: 11 s against 55 s, cold cache); the first passing case of
# each operator on c too (test_node_c).
@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_node(case):
    run_case(case, backend="llvm")


def test_excluded_are_selected_cases():
    """EXCLUDED names only cases of claimed ops (a renamed or dropped case leaves it)."""
    assert set(EXCLUDED) <= {c.name for c in CASES}


def _one_per_op() -> list:
    """The first passing case of each claimed op (the c backend's share: every case on
    both backends would more than double this module's compile time)."""
    chosen: dict[str, object] = {}
    for case in CASES:
        if case.name not in EXCLUDED:
            for op in (_ops(case) - HELPERS) or _ops(case):
                chosen.setdefault(op, case)
    return sorted({c.name: c for c in chosen.values()}.values(), key=lambda c: c.name)


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name) for c in _one_per_op()])
def test_node_c(case):
    run_case(case, backend="c")


def test_unsupported_model_raises():
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])
    graph = helper.make_graph([helper.make_node("Abs", ["x"], ["y"])], "abs", [x],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])])
    model = helper.make_model(graph)
    with pytest.raises(cg.OnnxImportError, match="Abs"):
        ConvgenBackend.prepare(model)
    # ONNX's runner would skip an incompatible model: an unsupported one must fail instead
    assert ConvgenBackend.is_compatible(model)


def test_run_node_and_devices():
    x = np.array([[-1.0, 2.0], [3.0, -4.0]], dtype=np.float32)
    (y,) = ConvgenBackend.run_node(helper.make_node("Relu", ["x"], ["y"]), [x])
    np.testing.assert_array_equal(y, np.maximum(x, 0))
    assert ConvgenBackend.supports_device("CPU")
    assert not ConvgenBackend.supports_device("CUDA")
    with pytest.raises(ValueError, match="CUDA"):
        ConvgenBackend.prepare(onnx.ModelProto(), "CUDA")


def test_recompiles_per_shape():
    """Symbolic input dims: compiled at each new shape's first run, kept per shape."""
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "relu",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["a", "b"])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)])
    rep = ConvgenBackend.prepare(helper.make_model(graph))
    for shape in [(3, 4), (2, 3), (3, 4)]:
        x = np.linspace(-1, 1, int(np.prod(shape)), dtype=np.float32).reshape(shape)
        (y,) = rep.run([x])
        np.testing.assert_array_equal(y, np.maximum(x, 0))
    assert len(rep._compiled) == 2


# -- the light model tests ------------------------------------------------------------

# ONNX's "light" models (onnx/backend/test/data/light): whole CNNs whose expected output
# comes from ONNX's runner's dummy input (Runner.generate_dummy_data, as the runner does),
# compared at the runner's model tolerances. Each passed by hand (2026-12-07, backend "c");
# the suite runs the two that compile fastest: the others cost 7-31 s each on a cold
# cache, and this module's other cases already take ~40 s cold on 2 workers
LIGHT_RUN = ("shufflenet", "squeezenet")
LIGHT_NOT_RUN = {
    "bvlc_alexnet": "cold compile ~7 s: over the suite's budget",
    "densenet121": "cold compile ~31 s: over the suite's budget",
    "inception_v1": "cold compile ~11 s: over the suite's budget",
    "inception_v2": "cold compile ~21 s: over the suite's budget",
    "resnet50": "cold compile ~8 s: over the suite's budget",
    "vgg19": "cold compile ~11 s: over the suite's budget",
    "zfnet512": "cold compile ~9 s: over the suite's budget",
}
LIGHT_DIR = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


def test_light_models_listed():
    """Every light model in the wheel is run or listed with the reason it is not."""
    found = {p.stem.removeprefix("light_") for p in LIGHT_DIR.glob("light_*.onnx")}
    assert found == set(LIGHT_RUN) | set(LIGHT_NOT_RUN)


@pytest.mark.parametrize("name", LIGHT_RUN)
def test_light_model(name):
    model = onnx.load(LIGHT_DIR / f"light_{name}.onnx")
    constants = {t.name for t in model.graph.initializer}
    inputs = [Runner.generate_dummy_data(value, seed=0, name=name, random=False)
              for value in model.graph.input if value.name not in constants]
    outputs = ConvgenBackend.run_model(model, inputs)
    for i, got in enumerate(outputs):
        want = numpy_helper.to_array(onnx.load_tensor(LIGHT_DIR / f"light_{name}_output_{i}.pb"))
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-7)


# -- the op table --------------------------------------------------------------------

def op_table() -> str:
    """docs/onnx.md's table: per claimed operator, its cases passed and excluded."""
    passed = {"node": Counter(), "pytorch": Counter()}
    excluded: dict[str, Counter] = {op: Counter() for op in CLAIMED}
    for case in CASES:
        ops = (_ops(case) - HELPERS) or _ops(case)
        for op in ops:
            if case.name in EXCLUDED:
                excluded[op][EXCLUDED[case.name]] += 1
            else:
                passed["node" if case.kind == "node" else "pytorch"][op] += 1
    rows = ["| operator | node cases passed | pytorch cases passed | excluded (count: reason) |",
            "|---|---|---|---|"]
    for op in sorted(CLAIMED):
        reasons = "; ".join(f"{n}: {r}" for r, n in sorted(excluded[op].items()))
        rows.append(f"| {op} | {passed['node'][op]} | {passed['pytorch'][op]} | {reasons} |")
    rows.append("")
    for label, kinds in [("node", ("node",)), ("pytorch-converted and pytorch-operator",
                                               PYTORCH_KINDS)]:
        names = [c.name for c in CASES if c.kind in kinds]
        out = sum(name in EXCLUDED for name in names)
        rows.append(f"- {label} cases of claimed operators: {len(names) - out} pass, {out} "
                    "are excluded with the reason.")
    return "\n".join(rows) + "\n"


BEGIN, END = "<!-- op table: begin -->\n", "<!-- op table: end -->\n"


def test_docs_table():
    """docs/onnx.md's table is op_table() (regenerate: python tests/test_onnx_backend.py)."""
    text = (REPO / "docs" / "onnx.md").read_text()
    assert text.split(BEGIN)[1].split(END)[0] == op_table()


def _readme_ops() -> set[str]:
    readme = (REPO / "README.md").read_text()
    section = readme.split("### Supported layers and ONNX operators")[1].split("\n## ")[0]
    ops: set[str] = set()
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or cells[0] in ("kind", "---"):
            continue
        column = re.sub(r"\([^)]*\)", "", cells[2]).split(";")[0]
        ops |= {op.strip() for op in column.split(",") if op.strip()}
    folded = re.search(r"shape arithmetic on constants \(([^)]*)\)", section)
    assert folded, "the README names the folded shape ops"
    ops |= {op.strip() for op in folded.group(1).split(",") if op.strip() != "..."}
    return ops


def test_readme_ops_are_claimed():
    """The README's ONNX column names exactly the claimed and the folded operators."""
    assert _readme_ops() == CLAIMED | FOLDED


if __name__ == "__main__":
    sys.stdout.write(op_table())
