"""Ahead of time: compile_to writes sources, libraries and a manifest; load brings
them back in a process with no compiler and without touching the cache."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import convgen as cg
from convgen.backends import resolve_backend
from convgen.compiler import complete_schedule
from helpers import arrays_for, assert_matches_oracle, compiled, run_python, subprocess_env

ONE_D = cg.ConvSpec(input_shape=(2, 3, 17), out_channels=4, kernel_size=5, stride=2,
                    padding=2)
ENTRIES = [
    ONE_D,  # a bare spec is named after spec.name
    ("grouped_relu", cg.ConvSpec(input_shape=(1, 4, 9, 9), out_channels=6, kernel_size=3,
                                 groups=2, padding=1, activation="relu")),
    ("conv3d", cg.ConvSpec(input_shape=(1, 2, 5, 6, 7), out_channels=3,
                           kernel_size=(3, 2, 3), padding=1, bias=False)),
    ("transposed", cg.ConvSpec(input_shape=(1, 4, 6, 6), out_channels=2, kernel_size=3,
                               stride=2, padding=1, output_padding=1, transposed=True),
     cg.Schedule(tile_co=2, tile_spatial=(4, 4))),
    ("double", cg.ConvSpec(input_shape=(1, 3, 10, 10), out_channels=5, kernel_size=3,
                           dilation=2, padding="same", padding_mode="reflect",
                           dtype="float64"),
     cg.Schedule(threads=2)),
]


def completed(spec: cg.ConvSpec, schedule: cg.Schedule) -> cg.Schedule:
    """What compile_to runs a partial schedule as: completed from the default."""
    return complete_schedule(spec, schedule, resolve_backend(None))


def expected() -> dict[str, tuple[cg.ConvSpec, cg.Schedule | None]]:
    out = {}
    for item in ENTRIES:
        if isinstance(item, cg.ConvSpec):
            out[item.name] = (item, None)
        else:
            out[item[0]] = (item[1], item[2] if len(item) == 3 else None)
    return out


@pytest.fixture(scope="module")
def aot_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("aot")
    manifest = cg.compile_to(ENTRIES, directory)
    assert Path(manifest) == directory / "manifest.json"
    return directory


def test_directory_holds_sources_libraries_and_manifest(aot_dir):
    names = list(expected())
    files = {p.name for p in aot_dir.iterdir()}
    assert files == {"manifest.json"} | {f"{n}.c" for n in names} | {f"{n}.so" for n in names}
    manifest = json.loads((aot_dir / "manifest.json").read_text())
    assert manifest["format"] == 1 and manifest["convgen"] == cg.__version__
    assert [r["name"] for r in manifest["kernels"]] == names
    for record in manifest["kernels"]:
        spec, schedule = expected()[record["name"]]
        assert cg.ConvSpec.from_dict(record["spec"]) == spec
        if schedule is not None:
            assert cg.Schedule.from_dict(record["schedule"]) == completed(spec, schedule)
        library = aot_dir / record["library"]
        assert hashlib.sha256(library.read_bytes()).hexdigest() == record["sha256"]
        assert record["symbol"] in (aot_dir / record["source"]).read_text()


def test_load_in_process(aot_dir):
    kernels = cg.load(aot_dir)
    assert list(kernels) == list(expected())
    for seed, (name, kernel) in enumerate(kernels.items()):
        spec, schedule = expected()[name]
        assert kernel.spec == spec
        if schedule is not None:
            assert kernel.schedule == completed(spec, schedule)
        assert kernel.source == (aot_dir / f"{name}.c").read_text()
        assert kernel.source == compiled(spec, schedule=schedule).source
        x, w, b = arrays_for(spec, seed)
        assert_matches_oracle(spec, kernel(x, w, b), x, w, b)


LOAD_CODE = """
import json, shutil
import numpy as np
import convgen as cg
from convgen.tolerance import close
result = {{"cc_on_path": [c for c in ("cc", "gcc", "clang") if shutil.which(c)]}}
kernels = cg.load({directory!r})
for seed, (name, kernel) in enumerate(kernels.items()):
    spec = kernel.spec
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(spec.input_shape).astype(spec.dtype)
    w = rng.standard_normal(spec.weight_shape).astype(spec.dtype)
    b = rng.standard_normal(spec.bias_shape).astype(spec.dtype) if spec.bias else None
    result[name] = bool(close(spec, kernel(x, w, b), cg.reference(spec, x, w, b)))
try:
    cg.compile(next(iter(kernels.values())).spec, backend="c")
    result["compile"] = "compiled"
except cg.CompilerNotFoundError:
    result["compile"] = "no compiler"
print(json.dumps(result))
"""


def test_load_without_a_compiler_in_a_new_process(aot_dir, tmp_path):
    empty_bin = tmp_path / "empty-bin"
    empty_bin.mkdir()
    cache_dir = tmp_path / "fresh-cache"
    env = subprocess_env(cache_dir, CC="/nonexistent/cc", PATH=str(empty_bin))
    output = run_python(LOAD_CODE.format(directory=str(aot_dir)), env, cwd=tmp_path)
    result = json.loads(output.stdout.strip().splitlines()[-1])
    assert result.pop("cc_on_path") == []
    assert result.pop("compile") == "no compiler"  # proves the process had no compiler
    assert result == {name: True for name in expected()}
    assert not cache_dir.exists() or not any(cache_dir.rglob("*")), "load wrote to the cache"


LLVM_ENTRIES = [
    ("wino", cg.ConvSpec((1, 16, 12, 12), 16, 3, padding=1),
     cg.Schedule(tile_co=14, tile_spatial=(4, 4), threads=2, method="winograd")),
    ("gemm", cg.ConvSpec((1, 16, 9, 9), 8, 1, stride=2),
     cg.Schedule(tile_co=8, threads=2, method="gemm")),
]


def test_llvm_transform_kernels_load_in_a_new_process(tmp_path):
    """LLVM objects whose kernels open an OpenMP team (Winograd, GEMM at 2 threads) load in
    a process that never rendered them (the OpenMP runtime is loaded first)."""
    directory = tmp_path / "aot-llvm"
    cg.compile_to(LLVM_ENTRIES, directory, backend="llvm")
    assert "GOMP_parallel" in (directory / "wino.ll").read_text()
    env = subprocess_env(tmp_path / "fresh-cache")
    output = run_python(LOAD_CODE.format(directory=str(directory)), env, cwd=tmp_path)
    result = json.loads(output.stdout.strip().splitlines()[-1])
    assert {name: result[name] for name in ("wino", "gemm")} == {"wino": True, "gemm": True}


def test_mapping_form(tmp_path):
    spec, _ = expected()["grouped_relu"]
    schedule = cg.Schedule(tile_co=1)
    cg.compile_to({"plain": ONE_D, "tuned": (spec, schedule)}, tmp_path)
    kernels = cg.load(tmp_path)
    assert list(kernels) == ["plain", "tuned"]
    assert kernels["tuned"].schedule == completed(spec, schedule)
    x, w, b = arrays_for(spec, 3)
    assert_matches_oracle(spec, kernels["tuned"](x, w, b), x, w, b)


@pytest.fixture
def aot_copy(aot_dir, tmp_path) -> Path:
    """A private copy (never loaded by this process, so it is safe to damage)."""
    copy = tmp_path / "copy"
    shutil.copytree(aot_dir, copy)
    return copy


def test_tampered_library_is_refused(aot_copy):
    with open(aot_copy / "transposed.so", "ab") as f:
        f.write(b"\0")
    with pytest.raises(cg.ConvgenError, match=r"transposed\.so.*sha256"):
        cg.load(aot_copy)


def test_missing_library_is_refused(aot_copy):
    (aot_copy / "conv3d.so").unlink()
    with pytest.raises(cg.ConvgenError, match=r"conv3d\.so"):
        cg.load(aot_copy)


def test_missing_manifest(aot_copy):
    (aot_copy / "manifest.json").unlink()
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        cg.load(aot_copy)


def test_invalid_manifest(aot_copy):
    (aot_copy / "manifest.json").write_text("{truncated")
    with pytest.raises(cg.ConvgenError, match="manifest"):
        cg.load(aot_copy)
    (aot_copy / "manifest.json").write_text(json.dumps({"format": 99, "kernels": []}))
    with pytest.raises(cg.ConvgenError, match="format"):
        cg.load(aot_copy)


@pytest.mark.parametrize("entries", [
    [("same", ONE_D), ("same", ONE_D.replace(out_channels=2))],
    [ONE_D, ONE_D],  # both named spec.name
], ids=["explicit", "implicit"])
def test_duplicate_names(tmp_path, entries):
    with pytest.raises(ValueError, match="duplicate"):
        cg.compile_to(entries, tmp_path)
    assert not (tmp_path / "manifest.json").exists()


@pytest.mark.parametrize("name", ["1starts_with_digit", "has-dash", "has space", "", "a/b",
                                  "../escape", 7])
def test_invalid_names(tmp_path, name):
    with pytest.raises(ValueError, match="name"):
        cg.compile_to([(name, ONE_D)], tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_directory_rewritten_in_place_loads_the_new_code(tmp_path):
    """The loader would reuse a same-path library; a rewritten one must not run old code."""
    first = cg.ConvSpec((1, 2, 6), 2, kernel_size=3, padding=1)
    second = first.replace(activation="relu")
    cg.compile_to([("k", first)], tmp_path)
    old = cg.load(tmp_path)["k"]
    cg.compile_to([("k", second)], tmp_path)
    new = cg.load(tmp_path)["k"]
    assert new.spec == second
    rng = np.random.default_rng(3)
    x = rng.uniform(-1, 1, first.input_shape).astype(np.float32)
    w = rng.uniform(-1, 1, first.weight_shape).astype(np.float32)
    b = rng.uniform(-1, 1, 2).astype(np.float32)
    np.testing.assert_allclose(new(x, w, b), cg.reference(second, x, w, b), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(old(x, w, b), cg.reference(first, x, w, b), rtol=1e-5, atol=1e-6)
    assert (new(x, w, b) >= 0).all() and (old(x, w, b) < 0).any()
