"""The kernel cache: compiled once, keyed by everything that shapes the library,
safe under concurrent builders, self-healing when an entry is damaged, and
clear errors when the compiler fails or is missing."""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import convgen as cg
from convgen.compiler import build_artifact
from convgen.backends.c.build import c_cache_key, c_flags, find_c_compiler
from convgen.cache import Cache, make_key
from convgen.plan.core import make_plan
from convgen.backends.c.render import render_c
from helpers import REPO, arrays_for, assert_matches_oracle, check_spec_code, run_python, \
    subprocess_env

SPEC = cg.ConvSpec(input_shape=(1, 3, 7, 6), out_channels=4, kernel_size=3, padding=1,
                   activation="relu")


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def real_cc() -> str:
    path = shutil.which("cc") or shutil.which("gcc")
    assert path, "these tests need a C compiler (cc or gcc) on PATH"
    return path


def make_cc_wrapper(directory: Path, log: Path, name: str = "cc-wrapper",
                    body: str | None = None) -> Path:
    """A compiler wrapper that logs its argv, then runs the real cc (or ``body``)."""
    script = directory / name
    body = body if body is not None else f'exec "{real_cc()}" "$@"'
    script.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> "{log}"\n{body}\n')
    script.chmod(0o755)
    return script


def entry_dirs(root: Path) -> list[Path]:
    """Every entry directory <root>/<key[:2]>/<key> (tmp/ and failed/ excluded)."""
    if not root.exists():
        return []
    return sorted(entry for prefix in root.iterdir()
                  if prefix.is_dir() and prefix.name not in ("tmp", "failed")
                  for entry in prefix.iterdir())


def assert_valid_entry(entry: Path) -> dict:
    """meta.json names the key and the sha256 of every file, and the files match."""
    meta = json.loads((entry / "meta.json").read_text())
    assert meta["key"] == entry.name
    assert entry.parent.name == entry.name[:2]
    assert {"source", "library"} <= set(meta["files"])
    for record in meta["files"].values():
        assert sha256(entry / record["name"]) == record["sha256"], record
    return meta


def assert_tmp_clean(root: Path) -> None:
    tmp = root / "tmp"
    assert not tmp.exists() or list(tmp.iterdir()) == [], list(tmp.iterdir())


def spec_key(spec: cg.ConvSpec) -> str:
    """The cache key build_c uses for ``spec`` under the current environment."""
    return c_cache_key(render_c(make_plan(spec)), find_c_compiler(), c_flags(openmp=False))


# -- compiled once --------------------------------------------------------------------


def test_compiled_once_across_processes(tmp_path):
    """A second process finds the entry and never runs the compiler."""
    log = tmp_path / "cc.log"
    wrapper = make_cc_wrapper(tmp_path, log)
    cache_dir = tmp_path / "cache"
    env = subprocess_env(cache_dir, CC=str(wrapper))
    spec = SPEC.replace(out_channels=5)
    code = check_spec_code(spec)

    first = run_python(code, env)
    assert first.stdout.startswith("OK ")
    assert log.exists(), "the first compile did not invoke $CC"
    calls = log.read_text()
    assert len(calls.splitlines()) == 1 and "kernel.c" in calls
    [entry] = entry_dirs(cache_dir)
    assert_valid_entry(entry)

    second = run_python(code, env)
    assert second.stdout == first.stdout  # same library path, still matches the oracle
    assert log.read_text() == calls, "the second process ran the compiler again"
    assert entry_dirs(cache_dir) == [entry]


def test_get_or_build_builds_once_and_rebuilds_damage(tmp_path):
    """Unit level, no compiler: a hit never calls build; a damaged entry is rebuilt."""
    cache = Cache(tmp_path)
    calls = []

    def build(tmp: Path) -> dict[str, str]:
        calls.append(tmp)
        (tmp / "a.txt").write_text("payload")
        return {"library": "a.txt"}

    key = make_key(test="unit")
    first = cache.get_or_build(key, build, extra_meta={"note": "x"})
    assert first.path == tmp_path / key[:2] / key
    assert first.meta["note"] == "x"
    assert first.file("library").read_text() == "payload"
    second = cache.get_or_build(key, build)
    assert len(calls) == 1 and second.path == first.path
    assert cache.lookup(key) is not None

    first.file("library").write_text("tampered")
    assert cache.lookup(key) is None  # detected, and moved out of the way
    assert not first.path.exists()
    third = cache.get_or_build(key, build)
    assert len(calls) == 2
    assert third.file("library").read_text() == "payload"
    assert_tmp_clean(tmp_path)


# -- the key ---------------------------------------------------------------------------


def test_key_is_stable_for_equal_inputs():
    source = render_c(make_plan(SPEC))
    compiler = find_c_compiler()
    flags = c_flags(openmp=False)
    key = c_cache_key(source, compiler, flags)
    assert key == c_cache_key(render_c(make_plan(SPEC)), compiler, list(flags))
    assert len(key) == 64 and all(c in "0123456789abcdef" for c in key)
    assert make_key(a=1, b=[1, 2]) == make_key(b=[1, 2], a=1)
    assert make_key(a=1, b=[1, 2]) != make_key(a=1, b=[2, 1])
    assert make_key(convgen="0.1+aaaa", source="s") != make_key(convgen="0.1+bbbb", source="s")


def test_key_changes_with_the_source():
    compiler, flags = find_c_compiler(), c_flags(openmp=False)
    source = render_c(make_plan(SPEC))
    other = render_c(make_plan(SPEC.replace(stride=2)))
    key = c_cache_key(source, compiler, flags)
    assert c_cache_key(other, compiler, flags) != key
    assert c_cache_key(source + "\n", compiler, flags) != key


def test_key_changes_with_the_flags(monkeypatch):
    source, compiler = render_c(make_plan(SPEC)), find_c_compiler()
    monkeypatch.delenv("CONVGEN_CFLAGS", raising=False)
    plain = c_flags(openmp=False)
    monkeypatch.setenv("CONVGEN_CFLAGS", "-DCONVGEN_TEST_FLAG=1 -fno-unroll-loops")
    extra = c_flags(openmp=False)
    assert extra[-2:] == ["-DCONVGEN_TEST_FLAG=1", "-fno-unroll-loops"]
    keys = {c_cache_key(source, compiler, plain), c_cache_key(source, compiler, extra),
            c_cache_key(source, compiler, c_flags(openmp=True))}
    assert len(keys) == 3


def test_key_changes_with_the_compiler(tmp_path):
    source, flags = render_c(make_plan(SPEC)), c_flags(openmp=False)
    log = tmp_path / "log"
    one = make_cc_wrapper(tmp_path, log, "cc-one")
    two = make_cc_wrapper(tmp_path, log, "cc-two", body=f'exec "{real_cc()}" -O2 "$@"')
    keys = {c_cache_key(source, find_c_compiler(), flags), c_cache_key(source, [str(one)], flags),
            c_cache_key(source, [str(two)], flags),
            c_cache_key(source, [*find_c_compiler(), "-m64"], flags)}
    assert len(keys) == 4


def test_flags_and_compiler_select_separate_entries(fresh_cache, tmp_path, monkeypatch):
    """End to end: CONVGEN_CFLAGS and CC each lead to their own entry; going back hits."""
    monkeypatch.delenv("CONVGEN_CFLAGS", raising=False)
    spec = SPEC.replace(out_channels=6)
    x, w, b = arrays_for(spec)
    base = cg.compile(spec)
    assert_matches_oracle(spec, base(x, w, b), x, w, b)

    monkeypatch.setenv("CONVGEN_CFLAGS", "-DCONVGEN_TEST_FLAG=1")
    flagged = cg.compile(spec)
    assert flagged.library_path != base.library_path
    meta = assert_valid_entry(Path(flagged.library_path).parent)
    assert "-DCONVGEN_TEST_FLAG=1" in meta["flags"]
    assert_matches_oracle(spec, flagged(x, w, b), x, w, b)

    monkeypatch.delenv("CONVGEN_CFLAGS")
    log = tmp_path / "cc.log"
    monkeypatch.setenv("CC", str(make_cc_wrapper(tmp_path, log)))
    wrapped = cg.compile(spec)
    assert log.exists(), "CC was not used"
    assert wrapped.library_path not in (base.library_path, flagged.library_path)

    monkeypatch.delenv("CC")
    assert cg.compile(spec).library_path == base.library_path
    assert len(entry_dirs(fresh_cache)) == 3


# -- layout ------------------------------------------------------------------------------


def test_entry_layout(tmp_path):
    root = tmp_path / "kernels"
    kernel = cg.compile(SPEC, cache=Cache(root))
    key = spec_key(SPEC)
    entry = root / key[:2] / key
    assert Path(kernel.library_path) == entry / "kernel.so"
    assert sorted(p.name for p in entry.iterdir()) == ["kernel.c", "kernel.so", "meta.json"]
    meta = assert_valid_entry(entry)
    assert meta["files"]["source"]["name"] == "kernel.c"
    assert meta["files"]["library"]["name"] == "kernel.so"
    assert meta["symbol"] == kernel.symbol and meta["backend"] == "c"
    assert meta["convgen"] == cg.__version__
    assert (entry / "kernel.c").read_text() == kernel.source
    assert entry_dirs(root) == [entry]
    assert_tmp_clean(root)


# -- concurrency -------------------------------------------------------------------------

RACE_CODE = """
import pathlib, sys, time
import numpy as np
import convgen as cg
from convgen.tolerance import close
spec = cg.ConvSpec.from_dict({spec!r})
rng = np.random.default_rng({seed})
x = rng.standard_normal(spec.input_shape).astype(spec.dtype)
w = rng.standard_normal(spec.weight_shape).astype(spec.dtype)
b = rng.standard_normal(spec.bias_shape).astype(spec.dtype)
pathlib.Path({ready!r}).touch()
go = pathlib.Path({go!r})
deadline = time.time() + 60
while not go.exists() and time.time() < deadline:
    time.sleep(0.002)
kernel = cg.compile(spec)
assert close(spec, kernel(x, w, b), cg.reference(spec, x, w, b))
print("OK", kernel.library_path)
"""


@pytest.mark.slow
def test_concurrent_compiles_share_one_entry(tmp_path):
    cache_dir = tmp_path / "cache"
    spec = SPEC.replace(out_channels=7, kernel_size=2)
    env = subprocess_env(cache_dir)
    go = tmp_path / "go"
    procs = []
    for i in range(4):
        ready = tmp_path / f"ready{i}"
        code = RACE_CODE.format(spec=spec.to_dict(), seed=i, ready=str(ready), go=str(go))
        procs.append((ready, subprocess.Popen([sys.executable, "-c", code], env=env,
                                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                              text=True)))
    try:
        deadline = time.time() + 60
        while not all(ready.exists() for ready, _ in procs) and time.time() < deadline:
            time.sleep(0.01)
        go.touch()  # start all four compiles at once
        results = [proc.communicate(timeout=120) for _, proc in procs]
    finally:
        for _, proc in procs:
            if proc.poll() is None:
                proc.kill()
    for (_, proc), (out, err) in zip(procs, results):
        assert proc.returncode == 0, err
        assert out.startswith("OK "), out
    paths = {out.split()[1] for out, _ in results}
    assert len(paths) == 1
    key = spec_key(spec)
    assert entry_dirs(cache_dir) == [cache_dir / key[:2] / key]
    assert Path(paths.pop()) == cache_dir / key[:2] / key / "kernel.so"
    assert_valid_entry(cache_dir / key[:2] / key)
    assert Cache(cache_dir).lookup(key) is not None
    assert_tmp_clean(cache_dir)


# -- damaged entries ---------------------------------------------------------------------


def _truncate_library(entry: Path) -> None:
    library = entry / "kernel.so"
    library.write_bytes(library.read_bytes()[:64])


def _delete_meta(entry: Path) -> None:
    (entry / "meta.json").unlink()


def _garbage_meta(entry: Path) -> None:
    (entry / "meta.json").write_text("{not json at all")


def _edit_source(entry: Path) -> None:
    with open(entry / "kernel.c", "a") as f:
        f.write("/* edited */\n")


@pytest.mark.parametrize("damage", [_truncate_library, _delete_meta, _garbage_meta,
                                    _edit_source], ids=lambda f: f.__name__.strip("_"))
def test_damaged_entry_is_rebuilt(fresh_cache, damage):
    spec = SPEC.replace(out_channels=3, padding="same")
    _, artifact, _ = build_artifact(spec, "c")  # built, not loaded: safe to damage in this process
    entry = artifact.path.parent
    good_meta = assert_valid_entry(entry)
    damage(entry)

    result = run_python(check_spec_code(spec), subprocess_env(fresh_cache))
    assert result.stdout.split() == ["OK", str(entry / "kernel.so")]
    meta = assert_valid_entry(entry)
    assert meta["files"]["source"] == good_meta["files"]["source"]
    assert (entry / "kernel.so").stat().st_size > 64
    assert entry_dirs(fresh_cache) == [entry]
    assert_tmp_clean(fresh_cache)


# -- compile errors ----------------------------------------------------------------------


def test_compile_error_carries_the_compiler_output(fresh_cache, monkeypatch):
    monkeypatch.setenv("CONVGEN_CFLAGS", "-DTHIS_IS_BAD -include /nonexistent/convgen_bad.h")
    spec = SPEC.replace(out_channels=2)
    with pytest.raises(cg.CompileError) as info:
        cg.compile(spec)
    exc = info.value
    assert not isinstance(exc, cg.CompilerNotFoundError)
    assert isinstance(exc, cg.ConvgenError)
    assert "convgen_bad.h" in exc.stderr
    assert isinstance(exc.returncode, int) and exc.returncode != 0
    assert exc.command[0] == find_c_compiler()[0]
    assert "-include" in exc.command and "-DTHIS_IS_BAD" in exc.command
    source_path = Path(exc.source_path)
    assert source_path.is_file()
    assert source_path.read_text() == render_c(make_plan(spec))
    text = str(exc)
    assert "convgen_bad.h" in text and str(source_path) in text
    assert f"exit code: {exc.returncode}" in text
    assert entry_dirs(fresh_cache) == []  # nothing half-built was installed
    assert_tmp_clean(fresh_cache)

    clone = pickle.loads(pickle.dumps(exc))
    assert type(clone) is cg.CompileError
    assert clone.message == exc.message and clone.stderr == exc.stderr
    assert clone.source_path == exc.source_path and clone.command == exc.command
    assert clone.returncode == exc.returncode and str(clone) == text


def test_compile_error_from_a_failing_compiler(fresh_cache, tmp_path, monkeypatch):
    log = tmp_path / "cc.log"
    wrapper = make_cc_wrapper(tmp_path, log, body='echo "fake-cc: kaboom in $2" >&2\nexit 3')
    monkeypatch.setenv("CC", str(wrapper))
    with pytest.raises(cg.CompileError) as info:
        cg.compile(SPEC)
    exc = info.value
    assert exc.returncode == 3
    assert "fake-cc: kaboom" in exc.stderr
    assert exc.command[0] == str(wrapper)
    assert Path(exc.source_path).read_text() == render_c(make_plan(SPEC))
    assert entry_dirs(fresh_cache) == []
    assert_tmp_clean(fresh_cache)


@pytest.mark.parametrize("cc", ["convgen-no-such-compiler-xyz", "/nonexistent/bin/cc"])
def test_missing_compiler(fresh_cache, monkeypatch, cc):
    monkeypatch.setenv("CC", cc)
    with pytest.raises(cg.CompilerNotFoundError) as info:
        cg.compile(SPEC, backend="c")  # explicitly C: no fallback to LLVM
    assert isinstance(info.value, cg.CompileError)
    assert "no C compiler found" in str(info.value)
    assert cc in str(info.value)
    clone = pickle.loads(pickle.dumps(info.value))
    assert type(clone) is cg.CompilerNotFoundError and str(clone) == str(info.value)


def test_cc_with_arguments_is_split_like_a_shell(fresh_cache, monkeypatch):
    """CC="cc -DX" (like "ccache gcc"): the first word is the compiler, the rest its arguments."""
    monkeypatch.setenv("CC", "cc -DCONVGEN_TEST_MACRO=1")
    assert find_c_compiler()[1:] == ["-DCONVGEN_TEST_MACRO=1"]
    spec = SPEC.replace(out_channels=5)
    kernel = cg.compile(spec)
    x, w, b = arrays_for(spec)
    np.testing.assert_allclose(kernel(x, w, b), cg.reference(spec, x, w, b), rtol=1e-5, atol=1e-5)
    entry = json.loads(next(fresh_cache.rglob("meta.json")).read_text())
    assert entry["symbol"] == kernel.symbol


def test_code_version_covers_subpackages_and_templates():
    """Generated code comes from plan/, backends/, graph lowering and templates: all are in
    the key; the front ends (cli, bench, tuning, onnx, nn) are not."""
    from convgen.cache import code_files
    from convgen.config import templates_dir

    names = {path.relative_to(REPO).as_posix() for path in code_files(templates_dir())}
    assert {"convgen/backends/c/network.py", "convgen/backends/llvm/render.py",
            "convgen/graph/lower.py", "convgen/graph/memory.py", "convgen/graph/passes.py",
            "convgen/plan/core.py", "convgen/spec.py", "convgen/schedule.py",
            "convgen/dtypes.py", "convgen/kernel.py", "convgen/cache.py", "convgen/version.py",
            "convgen/backends/c/render.py", "templates/c/conv_function.j2",
            "templates/c/ops.j2"} <= names
    for front_end in ("cli", "bench", "tuning", "onnx", "nn"):
        assert not any(name.startswith(f"convgen/{front_end}/") for name in names), front_end
    assert "convgen/cli/main.py" not in names and "convgen/cli/args.py" not in names


def test_code_version_ignores_help_text_but_not_templates(tmp_path):
    """Editing a CLI help string keeps every cached kernel and tuning record; editing a
    template or a backend module changes the key."""
    from convgen.cache import code_files, files_version

    package, templates = tmp_path / "convgen", tmp_path / "templates"
    shutil.copytree(REPO / "convgen", package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "templates", templates)

    def version() -> str:
        return files_version(code_files(templates, package))

    before = version()
    cli = package / "cli" / "run.py"
    text = cli.read_text()
    assert "help=" in text
    cli.write_text(text.replace("help=\"", "help=\"(edited) ", 1))
    assert version() == before
    template = templates / "c" / "ops.j2"
    template.write_text(template.read_text() + "\n")
    after_template = version()
    assert after_template != before
    build = package / "backends" / "c" / "build.py"
    build.write_text(build.read_text() + "\n# edited\n")
    assert version() != after_template
