"""Issue 19 row 3: a transposed convolution with a huge stride compiles at once on every
backend, standalone and inside a network (ONNX), instead of looping over every phase."""

from __future__ import annotations

import time

import numpy as np

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
