"""The fused activations: every backend's epilogue agrees with the one table of definitions.

convgen.activations.ACTIVATION_TABLE is the one definition of each activation; spec
validation and the oracle read it. Here each backend compiles a 1x1 identity convolution
(one channel, weight 1, no bias), so the kernel's output is exactly its epilogue applied to
the input, and the input is the table's probe points: negative, zero, positive and beyond
the clip bounds, so that every branch of the generated code runs.
"""

from __future__ import annotations

import numpy as np
import pytest

import convgen as cg
from convgen.activations import ACTIVATION_TABLE, ACTIVATIONS
from convgen.reference import apply_activation
from convgen.spec import ConvSpec
from convgen.tolerance import max_error, tolerance

# (activation, args): each with its defaults, and with explicit arguments where it has any.
CASES = [(name, ()) for name, (_, defaults) in ACTIVATIONS.items() if defaults is not None]
CASES += [("leaky_relu", (0.2,)), ("elu", (0.5,)), ("clip", (-1.0, 3.0)), ("clip", (0.0, 6.0)),
          ("hardsigmoid", (0.2, 0.5))]


def test_every_activation_is_covered_and_the_spec_reads_the_table():
    assert {name for name, _ in CASES} == set(ACTIVATION_TABLE) == set(cg.ACTIVATIONS)
    for name, entry in ACTIVATION_TABLE.items():
        assert ACTIVATIONS[name] == (len(entry.arg_names), entry.defaults)
        if entry.defaults is not None:
            assert len(entry.defaults) == entry.nargs


@pytest.mark.parametrize("name, args", CASES, ids=[f"{n}{list(a) or ''}" for n, a in CASES])
def test_oracle_is_the_table(name, args):
    v = np.array(ACTIVATION_TABLE[name].probes)
    full = args or ACTIVATION_TABLE[name].defaults
    np.testing.assert_array_equal(apply_activation(name, args, v),
                                  ACTIVATION_TABLE[name].definition(v, full))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name, args", CASES, ids=[f"{n}{list(a) or ''}" for n, a in CASES])
def test_backend_epilogue_matches_the_table(backend, name, args, dtype):
    entry = ACTIVATION_TABLE[name]
    probes = np.array(entry.probes, dtype=np.float64)
    if name == "clip" and args:  # the bounds themselves and points just beyond them
        low, high = args
        probes = np.concatenate([probes, [low - 0.25, low, high, high + 0.25]])
    spec = ConvSpec(input_shape=(1, 1, probes.size), out_channels=1, kernel_size=1,
                    bias=False, activation=name, activation_args=args, dtype=dtype)
    x = probes.astype(dtype).reshape(spec.input_shape)
    w = np.ones(spec.weight_shape, dtype=dtype)
    got = cg.compile(spec, backend=backend)(x, w)
    want = entry.definition(x.astype(np.float64), spec.activation_args).astype(dtype)
    assert max_error(got, want) <= tolerance(spec), (name, args, got.ravel(), want.ravel())
