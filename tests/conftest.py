"""Shared test set-up: one kernel cache for the whole run, and the backends list."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from helpers import BACKENDS, CPU_BACKENDS, NETWORK_BACKENDS

REPO = Path(__file__).resolve().parent.parent

# Compiled kernels are cached across tests, xdist workers and runs (content-addressed,
# so a stale entry is never used). Tests of the cache itself use their own directories.
os.environ.setdefault("CONVGEN_CACHE_DIR", str(REPO / ".cache" / "test-kernels"))
# pytest-xdist runs one worker per core and kernels use every core too: OpenMP threads
# that spin while waiting would steal the other worker's core, so they sleep instead.
os.environ.setdefault("OMP_WAIT_POLICY", "passive")
# backend "cuda" runs on the CPU emulator in the suite (and CI), where there is no GPU
os.environ.setdefault("CONVGEN_CUDA_DEVICE", "emulator")
# the suite's workers share the cores: a tuner that waited for quiet would refuse (the
# load check's own tests pass check_load=True)
os.environ.setdefault("CONVGEN_TUNE_CHECK_LOAD", "0")

settings.register_profile(
    "convgen", deadline=None, max_examples=40, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("CONVGEN_HYPOTHESIS_PROFILE", "convgen"))


def pytest_generate_tests(metafunc) -> None:
    """A test's ``backend`` argument runs over every backend in convgen.BACKENDS (adding a
    name there runs these tests on it), except where a marker narrows it: ``cpu_plans``
    (the test is about a CPU plan kind: backends whose plans are CPU plans) or
    ``networks`` (whole networks: backends that compile them)."""
    if "backend" not in metafunc.fixturenames:
        return
    for marker in metafunc.definition.iter_markers("parametrize"):
        names = marker.args[0]
        names = names.replace(" ", "").split(",") if isinstance(names, str) else names
        if "backend" in names:  # the test lists its backends itself
            return
    names = BACKENDS
    if metafunc.definition.get_closest_marker("cpu_plans"):
        names = CPU_BACKENDS
    elif metafunc.definition.get_closest_marker("networks"):
        names = NETWORK_BACKENDS
    metafunc.parametrize("backend", names, scope="session")


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch) -> Path:
    """A private, empty kernel cache directory for this test."""
    path = tmp_path / "cache"
    monkeypatch.setenv("CONVGEN_CACHE_DIR", str(path))
    return path


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory) -> Path:
    """A kernel cache shared by one test module's tests (the tuner's, which must not see
    the session cache's tuning state)."""
    return tmp_path_factory.mktemp("module-kernels")


@pytest.fixture
def db(tmp_path, monkeypatch, shared_cache) -> Path:
    """A private tuning database; kernels in the module's cache."""
    path = tmp_path / "tuning.jsonl"
    monkeypatch.setenv("CONVGEN_TUNING_DB", str(path))
    monkeypatch.setenv("CONVGEN_CACHE_DIR", str(shared_cache))
    return path
