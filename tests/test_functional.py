"""Functional ops (cg.conv1d ... cg.conv_transpose3d): the spec comes from the arrays,
the result equals the oracle's, and each distinct spec is compiled once per process."""

from __future__ import annotations

import numpy as np
import pytest

import convgen as cg
import convgen.functional as functional
from helpers import assert_matches_oracle

# (op, x shape, w shape, bias, keyword arguments)
CASES = [
    ("conv1d", (2, 4, 20), (6, 2, 3), True,
     dict(stride=2, padding=1, dilation=2, groups=2)),
    ("conv1d", (1, 3, 9), (2, 3, 4), False, dict(padding="same", padding_mode="circular")),
    ("conv2d", (1, 3, 9, 10), (4, 3, 3, 2), False, dict(stride=(2, 1), padding=(1, 0))),
    ("conv2d", (1, 2, 7, 7), (3, 2, 3, 3), True,
     dict(padding="same", padding_mode="reflect", activation="relu")),
    ("conv2d", (2, 4, 6, 6), (4, 1, 3, 3), True, dict(padding=1, groups=4, dilation=(1, 2))),
    ("conv3d", (1, 2, 5, 6, 4), (2, 1, 3, 3, 3), True, dict(padding=1, groups=2)),
    ("conv3d", (1, 1, 4, 5, 6), (2, 1, 2, 2, 3), False,
     dict(stride=(1, 2, 2), padding=((1, 0), (0, 1), (1, 1)))),
    ("conv_transpose1d", (1, 4, 7), (4, 3, 3), True,
     dict(stride=2, padding=1, output_padding=1)),
    ("conv_transpose2d", (1, 4, 5, 6), (4, 1, 3, 3), True,
     dict(stride=2, padding=1, output_padding=(1, 0), groups=2)),
    ("conv_transpose2d", (2, 2, 4, 4), (2, 3, 2, 2), False, dict(dilation=2)),
    ("conv_transpose3d", (1, 2, 3, 4, 3), (2, 2, 2, 3, 2), False, dict(stride=(1, 2, 1))),
    ("conv_transpose3d", (1, 4, 2, 3, 3), (4, 1, 3, 3, 3), True,
     dict(stride=2, padding=1, output_padding=1, groups=4, activation="tanh")),
]


def spec_for(op: str, x: np.ndarray, w: np.ndarray, bias: bool, kwargs: dict) -> cg.ConvSpec:
    """The ConvSpec a PyTorch user means by calling ``op`` with these arguments."""
    kwargs = dict(kwargs)
    groups = kwargs.pop("groups", 1)
    if op.startswith("conv_transpose"):
        return cg.ConvSpec(input_shape=x.shape, out_channels=w.shape[1] * groups,
                           kernel_size=w.shape[2:], groups=groups, transposed=True,
                           bias=bias, dtype=x.dtype.name, **kwargs)
    return cg.ConvSpec(input_shape=x.shape, out_channels=w.shape[0], kernel_size=w.shape[2:],
                       groups=groups, bias=bias, dtype=x.dtype.name, **kwargs)


def make_arrays(x_shape, w_shape, bias, out_channels=None, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal(w_shape).astype(dtype)
    b = rng.standard_normal(out_channels).astype(dtype) if bias else None
    return x, w, b


def run_case(case, dtype=np.float32, seed=0, backend="c"):
    op, x_shape, w_shape, bias, kwargs = case
    groups = kwargs.get("groups", 1)
    out_channels = w_shape[1] * groups if op.startswith("conv_transpose") else w_shape[0]
    x, w, b = make_arrays(x_shape, w_shape, bias, out_channels, dtype, seed)
    y = getattr(cg, op)(x, w, b, backend=backend, **kwargs)
    return spec_for(op, x, w, bias, kwargs), x, w, b, y


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}")
def test_matches_the_oracle(backend, case):
    spec, x, w, b, y = run_case(case, backend=backend)
    assert_matches_oracle(spec, y, x, w, b)


@pytest.mark.parametrize("case", [CASES[0], CASES[4], CASES[8]], ids=lambda c: c[0])
def test_float64(backend, case):
    spec, x, w, b, y = run_case(case, dtype=np.float64, seed=1, backend=backend)
    assert spec.dtype == "float64" and y.dtype == np.float64
    assert_matches_oracle(spec, y, x, w, b)


def test_compiled_once_per_spec(monkeypatch):
    monkeypatch.setattr(functional, "_KERNELS", {})
    calls = []
    real_compile = functional.compile_spec

    def counting_compile(spec, **kwargs):
        calls.append(spec)
        return real_compile(spec, **kwargs)

    monkeypatch.setattr(functional, "compile_spec", counting_compile)
    case = ("conv2d", (1, 3, 6, 5), (2, 3, 3, 3), True, dict(padding=1))
    for seed in range(3):  # new values, same shapes: one compile
        spec, x, w, b, y = run_case(case, seed=seed)
        assert_matches_oracle(spec, y, x, w, b)
    assert len(calls) == 1 and calls[0] == spec
    assert len(functional._KERNELS) == 1
    assert functional.kernel_for(spec) is functional.kernel_for(spec)
    assert len(calls) == 1

    run_case(case[:4] + (dict(padding=1, stride=2),))  # a different spec: a second compile
    assert len(calls) == 2 and len(functional._KERNELS) == 2


def test_out_argument():
    x, w, b = make_arrays((1, 2, 6, 6), (3, 2, 3, 3), True, 3)
    spec = spec_for("conv2d", x, w, True, {})
    out = np.empty(spec.output_shape, np.float32)
    assert cg.conv2d(x, w, b, out=out) is out
    assert_matches_oracle(spec, out, x, w, b)


def test_schedule_argument():
    x, w, b = make_arrays((1, 2, 6, 6), (4, 2, 3, 3), True, 4)
    schedule = cg.Schedule(tile_co=3, tile_spatial=(2, 2))
    spec = spec_for("conv2d", x, w, True, dict(padding=1))
    y = cg.conv2d(x, w, b, padding=1, schedule=schedule)
    assert functional.kernel_for(spec, schedule=schedule).schedule == schedule
    assert_matches_oracle(spec, y, x, w, b)


@pytest.mark.parametrize("op, x_shape, w_shape, groups", [
    ("conv2d", (1, 3, 8, 8), (4, 2, 3, 3), 1),  # weight expects 2 input channels
    ("conv2d", (1, 4, 8, 8), (3, 1, 3, 3), 3),  # 1 * 3 groups != 4 channels
    ("conv2d", (1, 4, 8, 8), (5, 2, 3, 3), 2),  # 5 output channels in 2 groups
    ("conv1d", (1, 4, 8), (4, 4, 3), 2),
    ("conv_transpose2d", (1, 3, 5, 5), (4, 2, 3, 3), 1),  # weight expects 4 input channels
    ("conv_transpose2d", (1, 4, 5, 5), (4, 1, 3, 3), 3),  # 3 groups do not divide 4
])
def test_mismatched_channels_or_groups(op, x_shape, w_shape, groups):
    x, w, _ = make_arrays(x_shape, w_shape, False)
    with pytest.raises(ValueError) as info:
        getattr(cg, op)(x, w, groups=groups)
    message = str(info.value)
    assert "channels" in message or "groups" in message


def test_dtype_mismatch():
    x, w, b = make_arrays((1, 2, 6, 6), (3, 2, 3, 3), True, 3)
    with pytest.raises(TypeError) as info:
        cg.conv2d(x, w.astype(np.float64), b)
    assert "float32" in str(info.value) and "float64" in str(info.value)
    with pytest.raises(TypeError, match="float64"):
        cg.conv2d(x, w, b.astype(np.float64))
    with pytest.raises(TypeError, match="float64"):
        cg.conv_transpose2d(x.astype(np.float64), w.transpose(1, 0, 2, 3).copy())


def test_unsupported_dtype():
    x, w, _ = make_arrays((1, 2, 6, 6), (3, 2, 3, 3), False, dtype=np.int32)
    with pytest.raises((TypeError, ValueError), match="float32"):
        cg.conv2d(x, w)


def test_wrong_rank_and_type():
    x, w, _ = make_arrays((1, 2, 6, 6), (3, 2, 3, 3), False)
    with pytest.raises(ValueError, match="dims"):
        cg.conv1d(x, w)
    with pytest.raises(ValueError, match="dims"):
        cg.conv3d(x, w)
    with pytest.raises(TypeError, match="list"):
        cg.conv2d(x.tolist(), w)
    with pytest.raises(TypeError, match="list"):
        cg.conv2d(x, w, [0.0, 0.0, 0.0])


TORCH_CASES = [CASES[0], CASES[3], CASES[4], CASES[5], CASES[7], CASES[8], CASES[9]]


def test_agrees_with_torch():
    """Where PyTorch is installed, the ops agree with torch.nn.functional."""
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    for case in TORCH_CASES:
        spec, x, w, b, y = run_case(case, seed=2)
        op, kwargs = case[0], dict(case[4])
        activation = kwargs.pop("activation", None)
        mode = kwargs.pop("padding_mode", "zeros")
        tx, tw = torch.from_numpy(x), torch.from_numpy(w)
        tb = torch.from_numpy(b) if b is not None else None
        if mode != "zeros":  # torch's functional conv pads only with zeros
            pads = [p for pair in reversed(spec.padding) for p in pair]
            tx = F.pad(tx, pads, mode=mode)
            kwargs["padding"] = 0
        want = getattr(F, op)(tx, tw, tb, **kwargs)
        if activation is not None:
            want = getattr(torch, activation)(want)
        np.testing.assert_allclose(y, want.numpy(), rtol=1e-4, atol=1e-4, err_msg=str(case))
