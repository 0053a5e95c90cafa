"""Fuzzed spec files, network files and ONNX models load or raise a convgen error.

A few examples each in the suite (seconds); ``make fuzz`` runs the same tests with many
fresh random examples (tests/fuzz_inputs.py says how).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings

import convgen as cg
from convgen.specfile import parse_toml
from fuzz_inputs import (EXAMPLES, NET_FILES, SPEC_FILES, accepts_or_rejects, flipped_bytes,
                         load_net_bytes, load_onnx, load_spec_bytes, net_file_inputs,
                         onnx_models, parsed, small_model_bytes, spec_file_inputs, to_toml)

# make fuzz: many examples, fresh ones each run; the suite: few, the same every run
FUZZING = EXAMPLES is not None
fuzz_settings = settings(max_examples=EXAMPLES, derandomize=False) if FUZZING else None


def fuzzed(examples: int):
    """The test's own (small) example count in the suite, CONVGEN_FUZZ_EXAMPLES under
    make fuzz."""
    return fuzz_settings if FUZZING else settings(max_examples=examples)


def test_serializer_round_trips_the_real_files():
    # the mutations are only as good as the TOML they are written back as
    for path in [*SPEC_FILES, *NET_FILES]:
        data = parsed(path)
        assert parse_toml(to_toml(data), str(path), tuple(data)) == data


def test_every_real_file_loads():
    # the seeds themselves are valid, so a mutation is one step from a working input
    with tempfile.TemporaryDirectory() as tmp:
        for path in SPEC_FILES:
            assert load_spec_bytes(path.read_bytes(), Path(tmp))
        for path in NET_FILES:
            assert load_net_bytes(path.read_bytes(), Path(tmp)).input_shape


def test_a_disallowed_error_fails_the_check():
    # the harness itself: an allowed error is a rejection, anything else propagates
    def spec_error():
        raise cg.SpecError("bad")

    def key_error():
        raise KeyError("library")

    assert accepts_or_rejects(spec_error) is None
    with pytest.raises(KeyError):
        accepts_or_rejects(key_error)


@fuzzed(40)
@given(spec_file_inputs())
def test_fuzzed_spec_files(case):
    name, raw = case
    with tempfile.TemporaryDirectory() as tmp:
        entries = accepts_or_rejects(load_spec_bytes, raw, Path(tmp))
    assert entries is None or all(isinstance(e.spec, cg.ConvSpec) for e in entries)


@fuzzed(15)
@given(net_file_inputs())
def test_fuzzed_network_files(case):
    name, raw = case
    with tempfile.TemporaryDirectory() as tmp:
        network = accepts_or_rejects(load_net_bytes, raw, Path(tmp))
    assert network is None or len(network.input_shape) >= 1


onnx = pytest.importorskip("onnx")
SEED_MODEL = small_model_bytes()


def test_the_onnx_seed_model_imports():
    imported = load_onnx(SEED_MODEL)
    assert imported.output_names == ["y"]


@fuzzed(40)
@given(flipped_bytes(SEED_MODEL))
def test_fuzzed_onnx_bytes(raw):
    imported = accepts_or_rejects(load_onnx, raw)
    assert imported is None or isinstance(imported.output_names, list)


@fuzzed(40)
@given(onnx_models())
def test_fuzzed_onnx_graphs(case):
    model, input_shape = case
    imported = accepts_or_rejects(load_onnx, model, input_shape)
    assert imported is None or isinstance(imported.output_names, list)
