"""ONNX Resize (opsets 10-19) and Upsample (7, 9) as ``resample`` graph ops: ONNX's own node
cases with constant scales/sizes, torch.nn.functional.interpolate, onnxruntime and the
oracle, on the C and LLVM backends (and the CUDA emulator for the step kind)."""

from __future__ import annotations

import copy
import io
import warnings

import numpy as np
import pytest
import torch

import convgen as cg
from convgen.graph.ir import Graph, GraphError, Node
from convgen.graph.reference import evaluate
from convgen.graph.resample import resample_tables
from convgen.onnx.backend import ConvgenBackend
from onnx_helpers import check_model, make_model, node, onnx, rand, run_ort
from onnx import numpy_helper
from onnx.backend.test.case.node import collect_testcases

CPU = ("c", "llvm")
CONSTANT_INPUTS = ("roi", "scales", "sizes")


def _excluded(name: str) -> bool:
    return "antialias" in name or "tf_crop_and_resize" in name \
        or ("downsample_scales" in name and "align_corners" in name)


def _node_cases() -> list:
    """The Resize node cases tests/test_onnx_backend.py excludes (the others pass there, with
    their scales and sizes as the run-time inputs they are): why each is excluded."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        cases = [c for c in collect_testcases(None) if c.kind == "node"
                 and {n.op_type for n in c.model.graph.node} & {"Resize", "Upsample"}
                 and _excluded(c.name)]
    return sorted(cases, key=lambda c: c.name)


def _with_constant_inputs(case):
    """The case's model with roi/scales/sizes as initializers (their first data set's
    values) and the remaining inputs and expected outputs."""
    model = copy.deepcopy(case.model)
    inputs, expected = case.data_sets[0]
    kept = []
    for value_info, array in zip(list(model.graph.input), inputs):
        if value_info.name in CONSTANT_INPUTS:
            model.graph.initializer.append(numpy_helper.from_array(array, value_info.name))
            model.graph.input.remove(value_info)
        else:
            kept.append(array)
    return model, kept, expected


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name) for c in _node_cases()])
def test_excluded_node_cases_fail_for_their_reason(case):
    """Each excluded Resize node case is refused, or differs from ONNX's expected output and
    matches onnxruntime, for the reason tests/test_onnx_backend.py excludes it with (scales
    and sizes made initializers, so that nothing else can be the reason)."""
    model, inputs, expected = _with_constant_inputs(case)
    if "antialias" in case.name or "tf_crop_and_resize" in case.name:
        with pytest.raises(cg.OnnxImportError, match="antialias" if "antialias" in case.name
                           else "tf_crop_and_resize"):
            ConvgenBackend.prepare(model, "CPU", backend="llvm")
        return
    (got,) = ConvgenBackend.prepare(model, "CPU", backend="llvm").run(inputs)
    if "downsample_scales" in case.name and "align_corners" in case.name:
        # ONNX's expected output divides by scale * input - 1 (fractional here);
        # onnxruntime divides by the output size - 1, as convgen
        model.ir_version = min(model.ir_version, 8)
        np.testing.assert_allclose(got, run_ort(model, inputs)[0], rtol=1e-5, atol=1e-6)
        assert not np.allclose(got, expected[0], rtol=case.rtol, atol=case.atol)
        return
    raise AssertionError(f"{case.name} is not an excluded case")


# -- torch.nn.functional.interpolate ----------------------------------------------------

def _resize_model(x_shape, attrs, scales=None, sizes=None, opset=13):
    init = {"roi": np.zeros(0, np.float32)}
    if scales is not None:
        init["scales"] = np.asarray(scales, np.float32)
        names = ["x", "roi", "scales"]
    else:
        init["scales"] = np.zeros(0, np.float32)
        init["sizes"] = np.asarray(sizes, np.int64)
        names = ["x", "roi", "scales", "sizes"]
    return make_model([node("Resize", names, ["y"], **attrs)], {"x": x_shape}, ["y"], init,
                      opset=opset)


# (torch interpolate keywords, the ONNX attributes torch exports them as, scales or sizes)
TORCH_CASES = [
    (dict(scale_factor=2, mode="nearest"),
     dict(mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
     dict(scales=[1, 1, 2, 2])),
    (dict(size=(3, 7), mode="nearest"),
     dict(mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
     dict(sizes=[1, 2, 3, 7])),
    (dict(scale_factor=2, mode="bilinear", align_corners=False),
     dict(mode="linear", coordinate_transformation_mode="pytorch_half_pixel"),
     dict(scales=[1, 1, 2, 2])),
    (dict(size=(3, 2), mode="bilinear", align_corners=False),  # downsampling
     dict(mode="linear", coordinate_transformation_mode="pytorch_half_pixel"),
     dict(sizes=[1, 2, 3, 2])),
    (dict(size=(7, 9), mode="bilinear", align_corners=True),
     dict(mode="linear", coordinate_transformation_mode="align_corners"),
     dict(sizes=[1, 2, 7, 9])),
    (dict(scale_factor=2, mode="bicubic", align_corners=False),
     dict(mode="cubic", coordinate_transformation_mode="half_pixel", cubic_coeff_a=-0.75),
     dict(scales=[1, 1, 2, 2])),
]


@pytest.mark.parametrize("kwargs, attrs, target", TORCH_CASES,
                         ids=[f"{k['mode']}-{k.get('align_corners')}-{i}"
                              for i, (k, _, _) in enumerate(TORCH_CASES)])
def test_resize_matches_torch_interpolate_and_onnxruntime(kwargs, attrs, target):
    x = rand(1, 2, 4, 5, seed=3)
    with torch.no_grad():
        want = torch.nn.functional.interpolate(torch.from_numpy(x), **kwargs).numpy()
    model = _resize_model(x.shape, attrs, **target)
    imported = check_model(model, [x], backends=CPU)  # the oracle and onnxruntime
    for backend in CPU:
        np.testing.assert_allclose(imported.compile(backend=backend)(x), want, rtol=1e-5,
                                   atol=1e-6)


def test_exported_torch_model_with_upsampling_and_silu():
    """A torch.onnx export (dynamo=False): nn.Upsample and interpolate become Resize with
    constant scales; SiLU becomes Sigmoid and Mul, which fuses into the conv before it."""
    torch.manual_seed(0)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = torch.nn.Conv2d(2, 3, 3, padding=1)
            self.up = torch.nn.Upsample(scale_factor=2, mode="nearest")
            self.conv2 = torch.nn.Conv2d(3, 2, 1)
            self.act = torch.nn.SiLU()

        def forward(self, x):
            y = self.act(self.conv2(self.up(self.conv1(x))))
            return torch.nn.functional.interpolate(y, scale_factor=1.5, mode="bilinear",
                                                   align_corners=True)

    net = Net().eval()
    x = rand(1, 2, 3, 4, seed=5)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(net, (torch.from_numpy(x),), buffer, dynamo=False, opset_version=13)
    model = onnx.load_from_string(buffer.getvalue())
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    imported = check_model(model, [x], backends=CPU)
    for backend in CPU:
        compiled = imported.compile(backend=backend)
        np.testing.assert_allclose(compiled(x), want, rtol=1e-5, atol=1e-6)
    ops = [(n.op, n.attrs.get("spec", {}).get("activation")) for n in compiled.optimized.nodes]
    assert ops.count(("resample", None)) == 4  # two axes, twice
    assert ("conv", "silu") in ops and "activation" not in [op for op, _ in ops]


# -- older opsets, keep_aspect_ratio_policy, errors ------------------------------------------

def test_upsample_and_resize10_follow_onnxruntime():
    """Upsample-7 (scales attribute), Upsample-9 and Resize-10 (scales input): asymmetric
    coordinates, nearest rounding down when upsampling and up when downsampling."""
    x = rand(1, 2, 4, 6, seed=7)
    up7 = make_model([node("Upsample", ["x"], ["y"], mode="nearest", scales=[1.0, 1.0, 2.0, 1.5])],
                     {"x": x.shape}, ["y"], opset=7)
    check_model(up7, [x], backends=("c",))
    scales = {"s": np.array([1, 1, 2, 3], np.float32)}
    up9 = make_model([node("Upsample", ["x", "s"], ["y"], mode="linear")], {"x": x.shape},
                     ["y"], scales, opset=9)
    check_model(up9, [x], backends=("llvm",))
    down = {"s": np.array([1, 1, 0.5, 0.6], np.float32)}
    resize10 = make_model([node("Resize", ["x", "s"], ["y"], mode="nearest")], {"x": x.shape},
                          ["y"], down, opset=10)
    imported = check_model(resize10, [x], backends=("c",))
    assert imported.compile(backend="c")(x).shape == (1, 2, 2, 3)


def test_tf_half_pixel_for_nn_opset11_matches_onnxruntime():
    x = rand(1, 2, 3, 4, seed=10)
    model = _resize_model(x.shape, dict(mode="nearest", nearest_mode="round_prefer_ceil",
                                        coordinate_transformation_mode="tf_half_pixel_for_nn"),
                          scales=[1, 1, 1.5, 2.5], opset=11)
    check_model(model, [x], backends=("c",))


def test_keep_aspect_ratio_and_axes_opset18_match_onnxruntime():
    x = rand(1, 2, 4, 6, seed=8)
    init = {"roi": np.zeros(0, np.float32), "scales": np.zeros(0, np.float32),
            "sizes": np.array([9, 3], np.int64)}  # (W, H): W * 1.5, H * 0.75
    model = make_model([node("Resize", ["x", "roi", "scales", "sizes"], ["y"], mode="cubic",
                             axes=[3, 2], keep_aspect_ratio_policy="not_larger",
                             exclude_outside=1)],
                       {"x": x.shape}, ["y"], init, opset=18)
    imported = check_model(model, [x], backends=("llvm",))
    # one scale for both axes, the smaller: 0.75; W = round(6 * 0.75) = 5 (half up)
    assert imported.compile(backend="llvm")(x).shape == (1, 2, 3, 5)


@pytest.mark.parametrize("attrs, init, match", [
    (dict(mode="area"), {"scales": [1, 1, 2, 2]}, "mode"),
    (dict(coordinate_transformation_mode="tf_crop_and_resize"), {"scales": [1, 1, 2, 2]},
     "tf_crop_and_resize"),
    (dict(nearest_mode="simple"), {"scales": [1, 1, 2, 2]}, "nearest_mode"),
    ({}, {"scales": [1, 1, 2]}, "one per axis"),
    ({}, {"scales": [1, 1, 0.1, 2]}, "leaves nothing"),
    ({}, {"scales": [1, 1, float("inf"), 2]}, "finite"),
    ({}, {"scales": [1, 1, 2, 2], "sizes": [1, 2, 4, 4]}, "exactly one"),
    ({}, {"sizes": [1, 2, 0, 4]}, ">= 1"),
])
def test_bad_resize_is_refused(attrs, init, match):
    arrays = {"roi": np.zeros(0, np.float32)}
    arrays["scales"] = np.asarray(init.get("scales", []), np.float32)
    names = ["x", "roi", "scales"]
    if "sizes" in init:
        arrays["sizes"] = np.asarray(init["sizes"], np.int64)
        names.append("sizes")
    model = make_model([node("Resize", names, ["y"], **attrs)], {"x": (1, 2, 3, 4)}, ["y"],
                       arrays, opset=13)
    with pytest.raises(cg.OnnxImportError, match=match):
        cg.from_onnx(model).compile(backend="c")


def test_run_time_scales_are_specialized():
    """Scales given as a graph input are specialized (read at each call, guarded, compiled
    per value), as shapes and weights given as inputs are: other scales, another output
    shape, another compile; the first values again, no compile."""
    model = make_model([node("Resize", ["x", "", "s"], ["y"], mode="linear")],
                       {"x": (1, 1, 2, 3), "s": (4,)}, ["y"], opset=13)
    imported = cg.from_onnx(model)
    assert [name for name, *_ in imported.specialized_inputs] == ["s"]
    compiled = imported.compile(backend="llvm")
    x = rand(1, 1, 2, 3, seed=4)
    for scales, shape in (([1, 1, 2, 2], (1, 1, 4, 6)), ([1, 1, 1.5, 3], (1, 1, 3, 9)),
                          ([1, 1, 2, 2], (1, 1, 4, 6))):
        s = np.array(scales, dtype=np.float32)
        y = compiled(x, s)
        assert y.shape == shape
        np.testing.assert_allclose(y, run_ort(model, [x, s])[0], rtol=1e-5, atol=1e-6)
    assert compiled.compilations == 2


# -- the graph op -------------------------------------------------------------------------

def _node(**attrs) -> Node:
    base = {"axis": 1, "size": 5, "mode": "linear", "coordinate": "half_pixel",
            "scale": 5 / 3, "nearest_mode": "round_prefer_floor", "cubic_coeff_a": -0.75,
            "exclude_outside": False}
    return Node("r", "resample", ["x"], {**base, **attrs})


@pytest.mark.parametrize("attrs", [
    dict(mode="nearest", nearest_mode="round_prefer_ceil", coordinate="tf_half_pixel_for_nn"),
    dict(mode="nearest", nearest_mode="simple", size=2, scale=2 / 3),
    dict(mode="linear", coordinate="half_pixel_symmetric", size=4, scale=1.4),
    dict(mode="cubic", coordinate="asymmetric", exclude_outside=True, cubic_coeff_a=-0.5),
    dict(mode="cubic", coordinate="align_corners", size=1, scale=1 / 3),
])
def test_tables_agree_with_the_oracle(attrs):
    """The lowering's tables (ONNX's coefficient formulas) and the oracle (the kernel
    functions) are written apart; applied to the identity they must agree."""
    n = _node(**attrs)
    eye = np.eye(3)
    want = evaluate(Graph([("x", (3, 3))], [_shaped(n, (3, 3))], ["r"]), [eye])[0]
    index, weight = resample_tables(n, 3)
    got = np.zeros((3, n.attrs["size"]))
    for j in range(n.attrs["size"]):
        for i, w in zip(index[j].astype(int), weight[j]):
            got[:, j] += w * eye[:, i]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def _shaped(n: Node, shape) -> Node:
    shape = list(shape)
    shape[n.attrs["axis"]] = n.attrs["size"]
    n.shape = tuple(shape)
    return n


@pytest.mark.parametrize("attrs, match", [
    (dict(mode="area"), "mode"), (dict(coordinate="tf_crop_and_resize"), "coordinate"),
    (dict(scale=0.0), "> 0"), (dict(scale=float("nan")), "finite"), (dict(size=0), ">= 1"),
    (dict(axis=2), "axis"), (dict(nearest_mode="up"), "nearest_mode"),
])
def test_bad_resample_node_is_refused(attrs, match):
    graph = Graph([("x", (2, 3))], [_node(**attrs)], ["r"])
    with pytest.raises(GraphError, match=match):
        evaluate(graph, [np.zeros((2, 3))])


@pytest.mark.networks
def test_resample_step_on_every_backend(backend):
    """Nearest and cubic steps on one network (the CUDA backend runs on its emulator)."""
    x = rand(1, 2, 3, 4, seed=9)
    model = _resize_model(x.shape, dict(mode="cubic", exclude_outside=1), scales=[1, 1, 2, 0.5])
    nearest = _resize_model(x.shape, dict(mode="nearest"), scales=[1, 1, 1.5, 2])
    for m in (model, nearest):
        check_model(m, [x], backends=(backend,))


# -- convgen.nn.Upsample and interpolate against torch ----------------------------------------

def _upsampling_net(lib):
    return lib.Sequential(
        lib.Conv2d(2, 2, 1),
        lib.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
        lib.Upsample(size=(5, 7), mode="nearest"),
        lib.Upsample(scale_factor=(1.5, 0.5), mode="bicubic", align_corners=True),
        lib.Upsample(size=(4, 6), mode="bilinear"),  # downsampling
    )


def test_nn_upsample_matches_torch():
    torch.manual_seed(1)
    theirs = _upsampling_net(torch.nn).eval()
    ours = _upsampling_net(cg.nn)
    ours.load_state_dict(theirs.state_dict())
    assert repr(ours) == repr(theirs)
    x = rand(1, 2, 3, 4, seed=11)
    with torch.no_grad():
        want = theirs(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ours(x), want, rtol=1e-5, atol=1e-6)  # the oracle
    for backend in CPU:
        model = ours.compile(input_shape=x.shape, backend=backend)
        np.testing.assert_allclose(model(x), want, rtol=1e-5, atol=1e-6)


def test_functional_interpolate_traces_from_torch_names():
    class Net(cg.nn.Module):
        def forward(self, x):
            y = torch.nn.functional.interpolate(x, scale_factor=3, mode="nearest-exact")
            return torch.nn.functional.interpolate(y, size=(4, 5, 2), mode="trilinear",
                                                   align_corners=True)

    x = rand(1, 2, 2, 3, 2, seed=12)
    with torch.no_grad():
        t = torch.from_numpy(x)
        want = torch.nn.functional.interpolate(
            torch.nn.functional.interpolate(t, scale_factor=3, mode="nearest-exact"),
            size=(4, 5, 2), mode="trilinear", align_corners=True).numpy()
    model = Net().compile(input_shape=x.shape, backend="c")
    assert [n.op for n in model.optimized.nodes].count("resample") == 6  # 3 axes, twice
    np.testing.assert_allclose(model(x), want, rtol=1e-5, atol=1e-6)
    for kwargs, match in [(dict(scale_factor=2, mode="area"), "mode"),
                          (dict(scale_factor=2, align_corners=True), "align_corners"),
                          (dict(size=4, scale_factor=2), "exactly one"),
                          (dict(scale_factor=2, mode="bilinear"), "4-d"),
                          (dict(scale_factor=2, antialias=True), "antialias")]:
        with pytest.raises(ValueError, match=match):
            cg.nn.functional.interpolate(x, **kwargs)
