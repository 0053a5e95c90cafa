"""Reliability (issue 19, rows 7-9): a cache entry whose meta.json lists too few files is
rebuilt, a full disk never masks a compile error nor leaves partial or stray files, and
tiny ONNX files (or graphs, or spec files) that ask for huge tensors raise a convgen error
naming the node and the size before anything is allocated."""

from __future__ import annotations

import errno
import json
import pickle
import textwrap
from pathlib import Path

import numpy as np
import pytest

import convgen as cg
from convgen.cache import Cache, make_key
from convgen.cli.main import main
from convgen.compiler import build_artifact
from convgen.graph import reference as graph_reference
from convgen.graph.ir import Graph, GraphError, Node
from convgen.graph.shapes import MAX_VALUE_ELEMENTS, infer_graph
from convgen.onnx.ops import MAX_FOLDED_ELEMENTS

from helpers import check_spec_code, run_python, subprocess_env

SPEC = cg.ConvSpec(input_shape=(1, 2, 5, 5), out_channels=3, kernel_size=3, padding=1)


def tmp_leftovers(root: Path) -> list[Path]:
    tmp = root / "tmp"
    return sorted(tmp.iterdir()) if tmp.exists() else []


# -- row 7: an entry that lists no files ----------------------------------------------------

def _unit_build(calls: list):
    def build(tmp: Path) -> dict[str, str]:
        calls.append(tmp)
        (tmp / "lib.bin").write_text("payload")
        return {"source": "lib.bin", "library": "lib.bin"}
    return build


@pytest.mark.parametrize("files", [{}, "only-source"], ids=["no-files", "source-only"])
def test_entry_listing_too_few_files_is_rebuilt_on_use(tmp_path, files):
    cache, calls = Cache(tmp_path), []
    build = _unit_build(calls)
    key = make_key(test="row7")
    first = cache.get_or_build(key, build)
    meta_path = first.path / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["files"] = {} if files == {} else {"source": meta["files"]["source"]}
    meta_path.write_text(json.dumps(meta))

    entry = cache.get_or_build(key, build)
    # before: entry.file("library") raised KeyError: 'library' on every compile
    assert entry.file("library").read_text() == "payload"
    assert entry.sha256("library") == first.sha256("library")
    assert len(calls) == 2  # rebuilt once, then a hit again
    assert cache.get_or_build(key, build, required=("library",)).file("library").exists()
    assert len(calls) == 2
    assert tmp_leftovers(tmp_path) == []


def test_required_roles_are_part_of_validation(tmp_path):
    cache, calls = Cache(tmp_path), []
    key = make_key(test="row7-required")
    cache.get_or_build(key, _unit_build(calls))
    meta_path = cache.entry_path(key) / "meta.json"
    meta = json.loads(meta_path.read_text())
    del meta["files"]["library"]
    meta_path.write_text(json.dumps(meta))
    assert cache.lookup(key) is not None  # the source alone is consistent ...
    assert cache.lookup(key, required=("library",)) is None  # ... but not what callers need
    assert not cache.entry_path(key).exists()
    meta["files"] = {}
    cache.get_or_build(key, _unit_build(calls))
    meta_path.write_text(json.dumps(meta))
    assert cache.lookup(key) is None  # an entry listing no files is damaged


def test_a_build_that_never_makes_the_role_is_a_clear_error(tmp_path):
    cache = Cache(tmp_path)

    def build(tmp: Path) -> dict[str, str]:
        (tmp / "a.c").write_text("int x;")
        return {"source": "a.c"}

    entry = cache.get_or_build(make_key(test="row7-never"), build)
    with pytest.raises(cg.CompileError, match="made no 'library' file"):
        entry.file("library")
    with pytest.raises(cg.CompileError, match="made no 'library'"):
        cache.get_or_build(make_key(test="row7-never2"), build, required=("library",))


def test_compile_rebuilds_an_entry_whose_meta_lists_no_files(fresh_cache):
    spec = SPEC.replace(out_channels=2)
    _, artifact, _ = build_artifact(spec, "c")  # built, not loaded: safe to damage
    entry = artifact.path.parent
    meta = json.loads((entry / "meta.json").read_text())
    meta["files"] = {}
    (entry / "meta.json").write_text(json.dumps(meta))

    result = run_python(check_spec_code(spec), subprocess_env(fresh_cache))
    assert result.stdout.split() == ["OK", str(entry / "kernel.so")]
    assert {"source", "library"} <= set(json.loads((entry / "meta.json").read_text())["files"])


# -- row 8: disk full ------------------------------------------------------------------------

def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_keep_failed_never_masks_the_compile_error(tmp_path, monkeypatch):
    cache = Cache(tmp_path)
    real_write = Path.write_text

    def half_write(self, text, *args, **kwargs):
        if "failed" in self.parts:  # write some bytes, then the disk is full
            real_write(self, text[:0], *args, **kwargs)
            _enospc()
        return real_write(self, text, *args, **kwargs)

    def build(tmp: Path) -> dict[str, str]:
        error = cg.CompileError("C compilation failed", command=["cc"], returncode=1,
                                stderr="kernel.c:1: error", source_path=str(tmp / "k.c"))
        raise cache.keep_failed(error, "k.c", "int broken(")

    monkeypatch.setattr(Path, "write_text", half_write)
    with pytest.raises(cg.CompileError) as info:  # before: OSError ENOSPC from keep_failed
        cache.get_or_build(make_key(test="row8"), build)
    error = info.value
    assert error.message.startswith("C compilation failed")
    assert "could not be kept" in str(error) and "No space left" in str(error)
    assert error.source_path is None and error.stderr == "kernel.c:1: error"
    assert list((tmp_path / "failed").iterdir()) == []  # before: a 0-byte k.c
    assert tmp_leftovers(tmp_path) == []
    # the error still pickles with its new message (workers raise it to the parent)
    assert str(pickle.loads(pickle.dumps(error))) == str(error)


def test_keep_failed_keeps_the_source_when_it_can(tmp_path):
    error = Cache(tmp_path).keep_failed(cg.CompileError("failed", returncode=1), "k.c", "x")
    assert Path(error.source_path).read_text() == "x"
    assert error.args[-1] == error.source_path


def test_disk_full_while_building_is_a_compile_error_and_cleans_up(tmp_path, monkeypatch):
    cache = Cache(tmp_path)

    def build(tmp: Path) -> dict[str, str]:
        (tmp / "k.c").write_text("int x;")
        (tmp / "k.so").write_bytes(b"\0" * 10)
        return {"source": "k.c", "library": "k.so"}

    monkeypatch.setattr("convgen.cache._write_atomic", _enospc)  # meta.json cannot be written
    with pytest.raises(cg.CompileError, match="could not write cache entry.*No space left"):
        cache.get_or_build(make_key(test="row8-meta"), build)
    assert tmp_leftovers(tmp_path) == []
    assert not cache.entry_path(make_key(test="row8-meta")).exists()


def test_compile_with_a_full_disk_reports_the_compile_error(fresh_cache, monkeypatch):
    """End to end: the compiler fails and the failed/ copy cannot be written."""
    monkeypatch.setenv("CONVGEN_CFLAGS", "-include /nonexistent/convgen_row8.h")
    real_write = Path.write_text

    def write(self, text, *args, **kwargs):
        if "failed" in self.parts:
            _enospc()
        return real_write(self, text, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", write)
    with pytest.raises(cg.CompileError) as info:
        cg.compile(SPEC.replace(out_channels=5))
    assert "convgen_row8.h" in info.value.stderr
    assert "could not be kept" in str(info.value)
    assert not (fresh_cache / "failed").exists() or not any((fresh_cache / "failed").iterdir())
    assert tmp_leftovers(fresh_cache) == []


def test_stray_damaged_files_are_swept(tmp_path):
    cache, calls = Cache(tmp_path), []
    key = make_key(test="row8-stray")
    (tmp_path / "tmp").mkdir()
    (tmp_path / "tmp" / "damaged-old").write_text("left by a killed process")
    (tmp_path / "tmp" / "damaged-olddir").mkdir()
    # an entry that is a file where a directory belongs: before, moved aside and left there
    cache.entry_path(key).parent.mkdir(parents=True)
    cache.entry_path(key).write_text("not a directory")
    entry = cache.get_or_build(key, _unit_build(calls))
    assert entry.file("library").read_text() == "payload"
    assert tmp_leftovers(tmp_path) == []


# -- row 9: huge tensors from tiny ONNX files ----------------------------------------------

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402

from onnx_helpers import make_model, node  # noqa: E402


def _i64(name: str, values) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], name=name,
                            value=helper.make_tensor(name, TensorProto.INT64, [len(values)],
                                                     list(values)))


def _scalar(name: str, value: float) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], name=name,
                            value=helper.make_tensor(name, TensorProto.FLOAT, [], [value]))


def _import_error(model) -> str:
    with pytest.raises(cg.OnnxImportError) as info:
        cg.from_onnx(model.SerializeToString()).graph
    return str(info.value)


def test_constant_of_shape_65536_squared():
    model = make_model([_i64("s", [65536, 65536]), node("ConstantOfShape", ["s"], ["c"],
                                                        name="huge"),
                        node("Add", ["x", "c"], ["y"])], {"x": [1, 1]}, ["y"])
    message = _import_error(model)  # before: MemoryError (or 16 GiB filled)
    assert "'huge' (ConstantOfShape)" in message
    assert str(65536 * 65536) in message and str(MAX_FOLDED_ELEMENTS) in message


def test_range_to_3e9():
    model = make_model([_scalar("a", 0.0), _scalar("b", 3e9), _scalar("d", 1.0),
                        node("Range", ["a", "b", "d"], ["r"], name="counting"),
                        node("Add", ["x", "r"], ["y"])], {"x": [1]}, ["y"])
    message = _import_error(model)
    assert "'counting' (Range)" in message and "3000000000 elements" in message
    assert "MAX_FOLDED_ELEMENTS" in message


@pytest.mark.parametrize("op", ["Expand", "Pad"])
def test_expand_and_pad_of_a_runtime_tensor_to_1_6e9(op):
    if op == "Expand":
        nodes = [_i64("s", [40000, 40000]), node("Expand", ["x", "s"], ["y"], name="big")]
    else:
        nodes = [_i64("p", [0, 0, 39999, 39999]), node("Pad", ["x", "p"], ["y"], name="big")]
    model = make_model(nodes, {"x": [1, 1]}, ["y"])
    message = _import_error(model)
    assert f"'big' ({op})" in message
    assert "1600000000 elements" in message and str(MAX_VALUE_ELEMENTS) in message


@pytest.mark.parametrize("op", ["Expand", "Pad", "Add"])
def test_folded_constants_grow_only_up_to_the_limit(op):
    if op == "Expand":
        nodes = [_i64("c0", [1]), _i64("s", [20000, 20000]),
                 node("Expand", ["c0", "s"], ["c"], name="big")]
    elif op == "Pad":
        nodes = [_i64("c0", [1]), _i64("p", [0, 20000 * 20000]),
                 node("Pad", ["c0", "p"], ["c"], name="big")]
    else:  # broadcasting two small constants into a huge one
        nodes = [_i64("s1", [20000, 1]), _i64("s2", [1, 20000]),
                 node("ConstantOfShape", ["s1"], ["a"]), node("ConstantOfShape", ["s2"], ["b"]),
                 node("Add", ["a", "b"], ["c"], name="big")]
    model = make_model([*nodes, node("Cast", ["c"], ["cf"], to=TensorProto.FLOAT),
                        node("Add", ["x", "cf"], ["y"])], {"x": [1]}, ["y"])
    message = _import_error(model)
    assert f"'big' ({op})" in message and "MAX_FOLDED_ELEMENTS" in message


def test_huge_graph_input_is_refused():
    model = make_model([node("Relu", ["x"], ["y"])], {"x": [1, 65536, 65536]}, ["y"])
    message = _import_error(model)
    assert "graph input 'x'" in message and str(65536 ** 2) in message


def test_small_folding_still_works():
    model = make_model([_i64("s", [1, 3]), node("ConstantOfShape", ["s"], ["c"],
                                                value=helper.make_tensor("v", TensorProto.FLOAT,
                                                                         [1], [2.0])),
                        node("Add", ["x", "c"], ["y"])], {"x": [1, 3]}, ["y"])
    graph = cg.from_onnx(model.SerializeToString()).graph
    x = np.arange(3, dtype=np.float64).reshape(1, 3)
    np.testing.assert_array_equal(graph_reference.evaluate(graph, [x])[0], x + 2.0)


def test_graph_shape_inference_refuses_huge_values():
    graph = Graph([("x", (1, 2))], [Node("big", "expand", ["x"], {"shape": (40000, 40000, 2)})],
                  ["big"])
    with pytest.raises(GraphError, match=r"big.*3200000000 elements.*MAX_VALUE_ELEMENTS"):
        infer_graph(graph)
    with pytest.raises(GraphError, match="graph input 'x'.*MAX_VALUE_ELEMENTS"):
        infer_graph(Graph([("x", (65536, 65536))], [], ["x"]))


def test_graph_oracle_checks_memory_before_allocating(monkeypatch):
    graph = Graph([("x", (1, 4, 8, 8))], [Node("r", "activation", ["x"], {"name": "relu"})],
                  ["r"])
    x = np.ones((1, 4, 8, 8))
    assert graph_reference.evaluate(graph, [x])[0].shape == (1, 4, 8, 8)
    monkeypatch.setattr(graph_reference, "available_memory", lambda: 1000)
    with pytest.raises(GraphError, match=r"largest value: r of shape \(1, 4, 8, 8\).*"
                                         r"more than the 1000 bytes"):
        graph_reference.evaluate(graph, [x])


def test_available_memory_is_a_positive_count():
    available = graph_reference.available_memory()
    assert available is None or available > 0


def test_check_refuses_a_spec_whose_oracle_does_not_fit(tmp_path, capsys, monkeypatch):
    """`convgen check` estimates the float64 oracle before it allocates anything."""
    path = tmp_path / "huge.toml"
    path.write_text(textwrap.dedent("""
        [[conv]]
        name = "huge"
        input_shape = [16, 64, 1024, 1024]
        out_channels = 64
        kernel_size = 3
        padding = 1
        """))
    monkeypatch.setattr("convgen.graph.reference.available_memory", lambda: 16 * 2**30)
    assert main(["check", str(path)]) == 2  # before: MemoryError traceback
    err = capsys.readouterr().err
    assert "checking 'huge'" in err and "float64 oracle would need about" in err
    assert "GiB) of memory available" in err and "Traceback" not in err
    spec = cg.ConvSpec(input_shape=(16, 64, 1024, 1024), out_channels=64, kernel_size=3,
                       padding=1)
    assert graph_reference.conv_oracle_bytes(spec) > 5 * 8 * 2**30  # x, xp, patch, 2 out
