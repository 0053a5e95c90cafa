"""Issue 19 row 3: a transposed convolution with a huge stride compiles at once on every
backend, standalone and inside a network (ONNX), instead of looping over every phase."""

from __future__ import annotations

import time

import numpy as np
import pytest

import convgen as cg
from convgen.reference import random_arrays
from convgen.tolerance import max_error, tolerance

from onnx_helpers import make_model, rand
from onnx_helpers import node as onnx_node

HUGE = 10**12


def test_huge_transposed_stride_compiles_and_matches_the_oracle(backend):
    spec = cg.ConvSpec((1, 2, 1, 1), 3, kernel_size=2, stride=HUGE, transposed=True)
    start = time.perf_counter()
    kernel = cg.compile(spec, backend=backend)
    x, w, b = random_arrays(spec, 0)
    got = kernel(x, w, b)
    assert time.perf_counter() - start < 60  # not a hang (it looped over 10**12 phases)
    assert max_error(got, cg.reference(spec, x, w, b)) <= tolerance(spec)


def test_onnx_conv_transpose_with_a_huge_stride():
    w = rand(2, 3, 2, 2, seed=1)
    model = make_model([onnx_node("ConvTranspose", ["x", "w"], ["y"], strides=[HUGE, HUGE])],
                       {"x": (1, 2, 1, 1)}, ["y"], initializers={"w": w})
    compiled = cg.from_onnx(model).compile(backend="c")
    x = rand(1, 2, 1, 1, seed=2)
    got = compiled(x)
    assert got.shape == (1, 3, 2, 2)
    np.testing.assert_allclose(got, compiled.reference(x), rtol=1e-5, atol=1e-6)


@pytest.mark.cpu_plans  # (the CUDA source has no per-output tables: tests/test_cuda_*)
def test_a_long_signal_compiles_to_small_code_and_matches_the_oracle(backend):
    """Issue 19 row 2: L = 10**6 had made 27 MB of C in 8 s (10**7: 307 MB, 10**8: OOM)."""
    spec = cg.ConvSpec((1, 1, 10**6), 1, kernel_size=3, padding=1)
    start = time.perf_counter()
    kernel = cg.compile(spec, backend=backend)
    x, w, b = random_arrays(spec, 0)
    got = kernel(x, w, b)
    assert time.perf_counter() - start < 60
    assert len(kernel.source) < 256 * 1024, len(kernel.source)
    assert max_error(got, cg.reference(spec, x, w, b)) <= tolerance(spec)
