"""The kernel cache seen and undone: entries record their code version and last use;
``Cache.info/clear/prune``, ``convgen cache info|clear|prune`` and the automatic prune after
a build, on private caches of synthetic entries (one real compile checks that a pruned
cache still serves and rebuilds kernels)."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import pytest

import convgen as cg
from convgen import cache as cache_module
from convgen.cache import META, PRUNE_STAMP, RECENT_USE, STALE_TMP, Cache, code_version, \
    make_key
from convgen.cli.main import main

SPEC = cg.ConvSpec((1, 2, 5, 5), 3, kernel_size=3, padding=1)
CURRENT = object()  # make_entry: built by this convgen
HOUR = 3600.0


@pytest.fixture(autouse=True)
def default_limit(monkeypatch):
    monkeypatch.delenv("CONVGEN_CACHE_MAX_BYTES", raising=False)


def make_entry(cache: Cache, name: str, size: int = 1000, version=CURRENT,
               used: float | None = None) -> Path:
    """An entry holding ``size`` bytes, built by ``version`` (None: a convgen that did not
    record it), last used at ``used``."""
    def build(tmp: Path) -> dict[str, str]:
        (tmp / "blob").write_bytes(b"x" * size)
        return {"blob": "blob"}

    path = cache.get_or_build(make_key(test=name), build).path
    if version is not CURRENT:
        meta = json.loads((path / META).read_text())
        meta.pop("code_version")
        if version is not None:
            meta["code_version"] = version
        (path / META).write_text(json.dumps(meta))
    if used is not None:
        os.utime(path / META, (used, used))
    return path


def entry_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.iterdir())


def test_entries_record_their_code_version_and_hits_mark_their_use(fresh_cache):
    cache = Cache(fresh_cache)
    path = make_entry(cache, "a", used=time.time() - 10 * HOUR)
    assert json.loads((path / META).read_text())["code_version"] == code_version()
    assert cache.lookup(make_key(test="a")) is not None
    assert time.time() - (path / META).stat().st_mtime < HOUR  # the hit touched it


def test_info_counts_entries_sizes_versions_and_last_uses(fresh_cache, capsys):
    cache = Cache(fresh_cache)
    now = time.time()
    current = [make_entry(cache, f"new{i}", used=now - i * HOUR) for i in range(3)]
    old = [make_entry(cache, "unversioned", version=None, used=now - 50 * HOUR),
           make_entry(cache, "other", version="0.0.1+0123456789abcdef", used=now - 5 * HOUR)]
    (fresh_cache / "failed").mkdir()
    (fresh_cache / "failed" / "broken.c").write_text("int x(")
    (fresh_cache / "tuning.jsonl").write_text("{}\n")  # not an entry
    info = cache.info()
    assert (info.entries, info.other_version_entries, info.failed_sources) == (5, 2, 1)
    assert info.bytes == sum(map(entry_bytes, current + old))
    assert info.other_version_bytes == sum(map(entry_bytes, old))
    assert info.oldest_use == pytest.approx(now - 50 * HOUR, abs=1)
    assert info.newest_use == pytest.approx(now, abs=1)

    assert main(["cache", "info"]) == 0
    out = capsys.readouterr().out

    def field(label: str) -> str:
        [line] = [line for line in out.splitlines() if line.strip().startswith(label)]
        return line.strip()[len(label):].strip()

    assert field("cache") == str(fresh_cache)
    assert field("entries").startswith(f"5 ({info.bytes / 1024:.3g} KiB)")
    assert field("this version").startswith("3 (")
    assert field("other versions").startswith("2 (") and "prune" in field("other versions")
    assert field("least recent use").endswith("(2 days ago)")
    assert field("size limit").startswith("2 GiB")
    assert field("failed builds").startswith("1 sources kept")


def test_info_of_a_cache_that_does_not_exist(tmp_path):
    info = Cache(tmp_path / "none").info()
    assert (info.entries, info.bytes, info.oldest_use) == (0, 0, None)
    assert not (tmp_path / "none").exists()


def test_clear_removes_every_entry_and_failed_source_but_not_the_tuning_database(
        fresh_cache, monkeypatch, capsys):
    monkeypatch.delenv("CONVGEN_TUNING_DB", raising=False)  # the default: in the cache
    cache = Cache(fresh_cache)
    paths = [make_entry(cache, name) for name in "abc"] + [make_entry(cache, "d", version=None)]
    (fresh_cache / "failed").mkdir()
    (fresh_cache / "failed" / "broken.c").write_text("int x(")
    database = fresh_cache / "tuning.jsonl"
    database.write_text("{}\n")
    size = sum(map(entry_bytes, paths))
    assert main(["cache", "clear"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"removed 4 entries ({size / 1024:.3g} KiB) "
                          "and 1 kept source of failed builds")
    assert not any(p.exists() for p in paths) and not (fresh_cache / "failed").exists()
    assert database.read_text() == "{}\n"
    assert cache.info().entries == 0 and list((fresh_cache / "tmp").iterdir()) == []
    assert cache.clear().entries == 0  # again: nothing to do


def test_prune_removes_other_versions_then_the_least_recently_used_past_the_limit(fresh_cache):
    cache = Cache(fresh_cache)
    now = time.time()
    recent = [make_entry(cache, f"e{i}", size=1000 * (i + 1), used=now - (5 - i) * HOUR)
              for i in range(5)]  # e0 least recently used ... e4 most
    old = [make_entry(cache, "old", version=None, used=now),
           make_entry(cache, "other", version="0.0.1+0123456789abcdef", used=now)]
    old_bytes = sum(map(entry_bytes, old))
    keep = sum(map(entry_bytes, recent[2:]))
    result = cache.prune(keep + 100)  # room for e2..e4, not for e1 as well
    assert (result.other_versions.entries, result.other_versions.bytes) == (2, old_bytes)
    assert result.least_recently_used.entries == 2
    assert (result.kept.entries, result.kept.bytes) == (3, keep)
    assert [p.exists() for p in recent + old] == [False, False, True, True, True, False, False]
    assert cache.lookup(make_key(test="e4")) is not None  # the rest still usable

    result = cache.prune(0, keep_recent=2.5 * HOUR)  # spares what was used in the last 2.5 h
    assert result.least_recently_used.entries == 1 and result.kept.entries == 2
    assert cache.prune(0).kept.entries == 0 and cache.info().entries == 0


def test_prune_clears_stale_temporary_files_but_not_builds_in_progress(fresh_cache):
    cache = Cache(fresh_cache)
    tmp = fresh_cache / "tmp"
    tmp.mkdir(parents=True)
    (tmp / "evicted-1234").mkdir()
    (tmp / "building-abc").mkdir()  # a build in progress
    stale = tmp / "reload-ab.so"
    stale.write_bytes(b"x")
    os.utime(stale, (time.time() - 2 * STALE_TMP,) * 2)
    cache.prune()
    assert sorted(p.name for p in tmp.iterdir()) == ["building-abc"]


def test_prune_command_takes_max_bytes_or_the_environment(fresh_cache, monkeypatch, capsys):
    cache = Cache(fresh_cache)
    now = time.time()
    paths = [make_entry(cache, f"e{i}", size=10_000, used=now - (3 - i) * HOUR)
             for i in range(3)]
    make_entry(cache, "other", version="0.0.1+0123456789abcdef")
    monkeypatch.setenv("CONVGEN_CACHE_MAX_BYTES", "25K")
    assert main(["cache", "prune"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("removed 1 entry of other convgen versions")
    assert "and 1 least recently used" in out and "limit 25 KiB" in out
    assert [p.exists() for p in paths] == [False, True, True]

    assert main(["cache", "prune", "--max-bytes", "0"]) == 0
    assert "2 least recently used" in capsys.readouterr().out and cache.info().entries == 0

    monkeypatch.setenv("CONVGEN_CACHE_MAX_BYTES", "lots")
    assert main(["cache", "prune"]) == 2
    assert "CONVGEN_CACHE_MAX_BYTES: expected a size" in capsys.readouterr().err
    assert main(["cache", "prune", "--max-bytes", "-1"]) == 2
    assert "--max-bytes" in capsys.readouterr().err


def test_a_compile_after_prune_hits_what_was_kept_and_rebuilds_what_was_removed(
        fresh_cache, tmp_path, monkeypatch):
    monkeypatch.setenv("CONVGEN_TUNING_DB", str(tmp_path / "tuning.jsonl"))
    cache = Cache(fresh_cache)
    x, w, b = (np.random.default_rng(0).standard_normal(shape).astype(np.float32)
               for shape in (SPEC.input_shape, SPEC.weight_shape, SPEC.bias_shape))
    want = cg.reference(SPEC, x, w, b)
    first = cg.compile(SPEC, backend="c", cache=cache)
    [entry] = [s.path for s in cache.scan()]
    make_entry(cache, "other", version=None)
    builds = []
    real_build = Cache._build
    monkeypatch.setattr(Cache, "_build", lambda self, key, *rest: builds.append(key) or
                        real_build(self, key, *rest))
    assert cache.prune().other_versions.entries == 1
    again = cg.compile(SPEC, backend="c", cache=cache)  # a hit: the entry kept
    assert builds == [] and [s.path for s in cache.scan()] == [entry]
    np.testing.assert_allclose(again(x, w, b), want, rtol=1e-4, atol=1e-4)

    assert cache.prune(0).least_recently_used.entries == 1 and not entry.exists()
    rebuilt = cg.compile(SPEC, backend="c", cache=cache)
    assert builds == [entry.name] and entry.exists()
    assert json.loads((entry / META).read_text())["code_version"] == code_version()
    np.testing.assert_allclose(rebuilt(x, w, b), want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(first(x, w, b), want, rtol=1e-4, atol=1e-4)


def test_a_build_prunes_now_and_then_sparing_recent_entries(fresh_cache, monkeypatch):
    cache = Cache(fresh_cache)
    now = time.time()
    old = [make_entry(cache, f"old{i}", size=10_000, used=now - 3 * RECENT_USE + i)
           for i in range(3)]
    recent = make_entry(cache, "recent", size=10_000, used=now - RECENT_USE / 2)
    monkeypatch.setenv("CONVGEN_CACHE_MAX_BYTES", "15K")
    (fresh_cache / PRUNE_STAMP).unlink()  # as if the last prune was long ago
    built = make_entry(cache, "new", size=10_000)
    # past the limit, least recently used first, but never what was used in the last hour
    assert [p.exists() for p in old] == [False, False, False]
    assert recent.exists() and built.exists()

    later = make_entry(cache, "old-again", size=10_000, used=now - 3 * RECENT_USE)
    make_entry(cache, "newer")  # within AUTO_PRUNE_INTERVAL of the last prune: none
    assert later.exists()


def test_a_malformed_limit_never_fails_a_build(fresh_cache, monkeypatch, caplog):
    monkeypatch.setenv("CONVGEN_CACHE_MAX_BYTES", "a lot")
    with caplog.at_level(logging.WARNING, logger="convgen"):
        path = make_entry(Cache(fresh_cache), "a")
    assert path.exists()
    assert any("CONVGEN_CACHE_MAX_BYTES" in r.getMessage() for r in caplog.records)
    assert cache_module.Cache(fresh_cache).info().entries == 1
