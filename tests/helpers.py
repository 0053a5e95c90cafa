"""Small helpers shared by the cache, AOT, kernel-call, functional and wheel tests."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import convgen as cg
from convgen.backends import get_backend
from convgen.backends.c.render import render_c
from convgen.backends.llvm.build import data_layout, target_triple
from convgen.backends.llvm.render import render_llvm
from convgen.plan.core import make_plan
from convgen.tolerance import max_error, tolerance

REPO = Path(__file__).resolve().parent.parent

# Every registered backend, for parametrize lists and hypothesis strategies (tests that take
# a ``backend`` argument get conftest's fixture over the same list): registering a backend
# in convgen.backends runs the whole suite on it.
BACKENDS: tuple[str, ...] = tuple(cg.BACKENDS)
# ... whose plans are CPU plans (vectorize, Winograd, blocked layouts, threads), and those
# that compile whole networks (tests marked cpu_plans / networks run on these)
CPU_BACKENDS: tuple[str, ...] = tuple(n for n in BACKENDS if get_backend(n).device == "cpu")
NETWORK_BACKENDS: tuple[str, ...] = tuple(n for n in BACKENDS if get_backend(n).runs_networks)


def arrays_for(spec: cg.ConvSpec, seed: int = 0):
    """Random (x, w, b) for ``spec`` in its dtype; b is None without bias."""
    rng = np.random.default_rng(seed)
    dtype = np.dtype(spec.dtype)
    x = rng.standard_normal(spec.input_shape).astype(dtype)
    w = rng.standard_normal(spec.weight_shape).astype(dtype)
    b = rng.standard_normal(spec.bias_shape).astype(dtype) if spec.bias else None
    return x, w, b


def assert_matches_oracle(spec: cg.ConvSpec, got: np.ndarray, x, w, b) -> None:
    """``got`` has the spec's shape and dtype and equals the oracle within tolerance."""
    want = cg.reference(spec, x, w, b)
    assert isinstance(got, np.ndarray)
    assert got.shape == spec.output_shape
    assert got.dtype == np.dtype(spec.dtype)
    error = max_error(got, want)
    assert error <= tolerance(spec), f"max error {error:.3g} > {tolerance(spec):.3g}"


def check_kernel(kernel: cg.Kernel, spec: cg.ConvSpec, seed: int = 0) -> None:
    """Call ``kernel`` on seeded uniform(-1, 1) arrays (convgen.reference.random_arrays) and
    compare with the oracle: dtype, shape and max error within tolerance(spec)."""
    from convgen.reference import random_arrays

    x, w, b = random_arrays(spec, seed)
    got = kernel(x, w, b)
    want = cg.reference(spec, x, w, b)
    assert got.dtype == np.dtype(spec.dtype)
    assert got.shape == spec.output_shape
    error = max_error(got, want)
    assert error <= tolerance(spec), (
        f"{spec} {kernel.schedule}: max error {error:.3g} > {tolerance(spec):.3g}")


_COMPILED: dict = {}


def compiled(spec: cg.ConvSpec, backend: str = "c", schedule: cg.Schedule | None = None):
    """cg.compile memoized per test process (the disk cache makes reruns cheap too)."""
    key = (spec.key(), backend, schedule.key() if schedule is not None else None)
    if key not in _COMPILED:
        _COMPILED[key] = cg.compile(spec, backend=backend, schedule=schedule)
    return _COMPILED[key]


def subprocess_env(cache_dir: Path | str | None = None, **extra: str) -> dict[str, str]:
    """os.environ plus the checkout on PYTHONPATH and, if given, a cache directory."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    if cache_dir is not None:
        env["CONVGEN_CACHE_DIR"] = str(cache_dir)
    env.update(extra)
    return env


def run_python(code: str, env: dict[str, str], cwd: Path | str | None = None,
               timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``code`` in a new interpreter; on failure show its output in the assertion."""
    result = subprocess.run([sys.executable, "-c", code], env=env, cwd=cwd,
                            capture_output=True, text=True, timeout=timeout)
    if check:
        assert result.returncode == 0, (
            f"subprocess failed ({result.returncode})\n--- stdout\n{result.stdout}"
            f"\n--- stderr\n{result.stderr}")
    return result


# Code run in subprocesses: compile SPEC (a dict) and compare with the oracle.
CHECK_SPEC_CODE = """
import json
import numpy as np
import convgen as cg
from convgen.tolerance import close
spec = cg.ConvSpec.from_dict(json.loads({spec!r}))
rng = np.random.default_rng(1)
x = rng.standard_normal(spec.input_shape).astype(spec.dtype)
w = rng.standard_normal(spec.weight_shape).astype(spec.dtype)
b = rng.standard_normal(spec.bias_shape).astype(spec.dtype) if spec.bias else None
kernel = cg.compile(spec)
y = kernel(x, w, b)
assert close(spec, y, cg.reference(spec, x, w, b)), "kernel differs from the oracle"
print("OK", kernel.library_path)
"""


def check_spec_code(spec: cg.ConvSpec) -> str:
    """Python source that compiles ``spec``, checks it and prints 'OK <library path>'."""
    return CHECK_SPEC_CODE.format(spec=json.dumps(spec.to_dict()))


def run_script(script: Path, *args: str, timeout: float = 120,
               **env: str | None) -> subprocess.CompletedProcess:
    """Run a script of the checkout (``env``: variables to set, or with None to unset)."""
    environment = subprocess_env()
    for key, value in env.items():
        if value is None:
            environment.pop(key, None)
        else:
            environment[key] = value
    return subprocess.run([sys.executable, str(script), *args], cwd=REPO, env=environment,
                          capture_output=True, text=True, timeout=timeout)


@contextlib.contextmanager
def imported_script(script: Path, name: str):
    """A script of the checkout imported as module ``name`` (registered in sys.modules while
    in use: its dataclasses look their module up there)."""
    spec = importlib.util.spec_from_file_location(name, script)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(name, None)


def assert_source_flat(small: cg.ConvSpec, large: cg.ConvSpec, schedule: cg.Schedule,
                       c_margin: int = 1024, ir_margin: int = 2048) -> None:
    """Issue 19 row 2: ``large`` (10**6 outputs) generates no more C source and LLVM IR
    than ``small`` (10**3) under ``schedule``, a few digits of larger constants aside, and
    plans in well under a second (the planner visits no output one by one)."""
    sizes = []
    for spec in (small, large):
        start = time.perf_counter()
        plan = make_plan(spec, schedule)
        planned = time.perf_counter() - start
        sizes.append((len(render_c(plan)),
                      len(render_llvm(plan, target_triple(), data_layout()))))
    assert planned < 1.0, planned
    (small_c, small_ir), (large_c, large_ir) = sizes
    assert large_c <= small_c + c_margin, (small_c, large_c)
    assert large_ir <= small_ir + ir_margin, (small_ir, large_ir)


# A spec file of one tiny convolution (cg.ConvSpec((1, 4, 6, 6), 8, kernel_size=3,
# padding=1)), for the command-line tests of tune and its records.
TINY_SPEC_FILE = """
[[conv]]
name = "tiny_a"
input_shape = [1, 4, 6, 6]
out_channels = 8
kernel_size = 3
padding = 1
"""
