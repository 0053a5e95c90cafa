"""Tuning records seen and undone: ``convgen tune --list/--forget/--export/--import`` and the
convgen.records functions behind them, on a private database of synthetic records (no
tuning: every record is written by convgen.records.record from made-up measurements)."""

from __future__ import annotations

import json
import os
import stat

import pytest

import convgen as cg
from convgen import records as records_module
from convgen.cli.main import main
from convgen.records import (best_record, forget_records, import_records, list_records,
                             read_records, record, record_problem, spec_id)
from convgen.tuning.tuner import Measurement

from helpers import TINY_SPEC_FILE as SPEC_FILE

A = cg.ConvSpec((1, 4, 6, 6), 8, kernel_size=3, padding=1)
B = cg.ConvSpec((1, 2, 16), 4, kernel_size=3)
ONE = cg.Schedule(tile_co=4, tile_spatial=(2, 6), threads=1)
TWO = cg.Schedule(tile_co=2, tile_spatial=(1, 6), threads=2)


def lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture
def filled(db):
    """A's records (c: 1 and 2 threads, an unchecked faster one; llvm bound; one from
    another CPU), B's (c), and a garbage line."""
    record(A, "c", [Measurement(ONE, 3e-4, checked=True), Measurement(ONE, 4e-4),
                    Measurement(TWO, 2e-4, checked=True), Measurement(ONE, 1e-5)], db)
    record(A, "llvm", [Measurement(ONE, 5e-4, checked=True)], db, bound=True)
    record(B, "c", [Measurement(cg.Schedule(threads=1), 5e-5, checked=True)], db)
    elsewhere = {**lines(db)[0], "cpu": "x86_64|another CPU|avx", "seconds": 1e-6}
    with open(db, "a") as f:
        f.write(json.dumps(elsewhere) + "\n{not json\n")
    return db


def table(out: str) -> list[list[str]]:
    """The --list rows (header and rule dropped), split on runs of two spaces."""
    header, rule, *rows = out.splitlines()
    assert header.split()[:3] == ["spec", "id", "backend"] and set(rule) <= {"-", " "}
    return [[cell.strip() for cell in row.split("  ") if cell.strip()] for row in rows[:-1]]


# -- --list ---------------------------------------------------------------------------------

def test_list_shows_the_best_checked_record_per_spec_backend_threads_and_machine(filled,
                                                                                 capsys):
    assert main(["tune", "--list"]) == 0
    out = capsys.readouterr().out
    rows = table(out)
    a, b = spec_id(A.key()), spec_id(B.key())
    assert [row[:5] for row in rows] == [
        [B.name, b, "c", "call", "1"],
        [A.name, a, "c", "call", "1"],
        [A.name, a, "c", "call", "1"],
        [A.name, a, "c", "call", "2"],
        [A.name, a, "llvm", "bound", "1"]]
    # the fastest *checked* time (0.300 ms, not the unchecked 0.010), count of measurements
    here, other = rows[1], rows[2]
    assert here[6] == "0.300" and here[8] == "3" and here[-1] == "yes"
    assert "t=1" in here[5] and "co=4" in here[5]
    assert other[6] == "0.001" and other[-1] == "no: other CPU"
    assert rows[3][6] == "0.200" and rows[4][-1] == "yes"
    assert "5 rows (7 measurements)" in out.splitlines()[-1] and "4 usable here" in out


def test_list_narrowed_to_a_spec_file_uses_its_names(filled, tmp_path, capsys):
    path = tmp_path / "tiny.toml"
    path.write_text(SPEC_FILE)
    assert main(["tune", "--list", str(path)]) == 0
    rows = table(capsys.readouterr().out)
    assert len(rows) == 4 and {row[0] for row in rows} == {"tiny_a"}


def test_list_of_an_empty_database(db, capsys):
    assert main(["tune", "--list"]) == 0
    assert capsys.readouterr().out.startswith(f"no tuning records in {db}")
    assert list_records() == []


# -- --forget -------------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["name", "id", "id-prefix", "key", "file"])
def test_forget_one_spec_keeps_the_others_and_unreadable_lines(filled, tmp_path, capsys, how):
    path = tmp_path / "tiny.toml"
    path.write_text(SPEC_FILE)
    spec = {"name": A.name, "id": spec_id(A.key()), "id-prefix": spec_id(A.key())[:5],
            "key": A.key(), "file": str(path)}[how]
    assert best_record(A, "c") == TWO
    mode = stat.S_IMODE(os.stat(filled).st_mode)
    assert main(["tune", "--forget", spec]) == 0
    out = capsys.readouterr().out
    assert out.startswith("removed 6 records of ")
    assert f"{A.name} (id {spec_id(A.key())}) c: 5" in out and "llvm: 1" in out
    assert [r["spec_key"] for r in read_records(filled)] == [B.key()]
    assert filled.read_text().splitlines()[-1] == "{not json"  # not a record: not ours to drop
    assert best_record(A, "c") is None and best_record(B, "c") is not None
    assert stat.S_IMODE(os.stat(filled).st_mode) == mode
    assert not [n for n in os.listdir(filled.parent) if n.startswith(".")]  # no temporary file


def test_forget_all_empties_the_database(filled, capsys):
    assert main(["tune", "--forget", "--all"]) == 0
    assert "(7 records and 1 unreadable line)" in capsys.readouterr().out
    assert filled.read_bytes() == b""
    assert main(["tune", "--list"]) == 0
    assert capsys.readouterr().out.startswith("no tuning records")


def test_forget_an_unknown_spec_suggests_near_names(filled, capsys):
    before = filled.read_bytes()
    assert main(["tune", "--forget", A.name[:-2]]) == 2
    err = capsys.readouterr().err
    assert err.startswith("convgen: error: no tuning record") and f"did you mean {A.name!r}" in err
    assert filled.read_bytes() == before


def test_forget_keeps_lines_a_tuner_appends_while_it_rewrites(filled, monkeypatch):
    """A tuner that opened the database just before the rename writes into the old file:
    its lines are carried over to the new one (those of the forgotten spec dropped)."""
    real_replace = os.replace

    def replace_after_an_append(src, dst):
        record(B, "llvm", [Measurement(ONE, 7e-5, checked=True)], filled)
        record(A, "llvm", [Measurement(ONE, 7e-5, checked=True)], filled)
        real_replace(src, dst)

    monkeypatch.setattr(records_module.os, "replace", replace_after_an_append)
    forgotten = forget_records({A.key()}, filled)
    assert len(forgotten.records) == 7 and forgotten.unreadable == 0
    kept = read_records(filled)
    assert [(r["spec_key"], r["backend"]) for r in kept] == [(B.key(), "c"), (B.key(), "llvm")]


# -- --export and --import ------------------------------------------------------------------

def test_export_then_import_round_trips_and_skips_duplicates(filled, tmp_path, capsys):
    exported = tmp_path / "records.jsonl"
    assert main(["tune", "--export", str(exported)]) == 0
    assert capsys.readouterr().out.startswith(f"exported 7 records from {filled}")
    before = [json.dumps(r, sort_keys=True) for r in read_records(filled)]
    assert [json.dumps(r, sort_keys=True) for r in lines(exported)] == before

    assert main(["tune", "--forget", "--all"]) == 0
    assert main(["tune", "--import", str(exported)]) == 0
    assert "imported 7 records" in capsys.readouterr().out
    assert [json.dumps(r, sort_keys=True) for r in read_records(filled)] == before
    assert best_record(A, "c") == TWO

    assert main(["tune", "--import", str(exported)]) == 0
    out = capsys.readouterr().out
    assert "imported 0 records" in out and "(7 already there)" in out
    assert len(read_records(filled)) == 7


def test_export_narrowed_to_a_spec_file(filled, tmp_path, capsys):
    path = tmp_path / "tiny.toml"
    path.write_text(SPEC_FILE)
    exported = tmp_path / "a.jsonl"
    assert main(["tune", str(path), "--export", str(exported)]) == 0
    assert {r["spec_key"] for r in lines(exported)} == {A.key()} and len(lines(exported)) == 6


def test_import_reports_and_skips_bad_lines(filled, tmp_path, capsys):
    good = read_records(filled)[0]
    new = {**good, "seconds": 9e-5, "timestamp": "2020-01-01T00:00:00+00:00"}
    bad = [
        "{not json",
        json.dumps([good]),
        json.dumps({**good, "schedule": {"tile_co": 0}}),
        json.dumps({**good, "spec_key": A.key().replace(",", ", ")}),
        json.dumps({**good, "spec_name": "conv2d_other"}),
        json.dumps({**good, "backend": "fortran"}),
        json.dumps({**good, "seconds": -1.0}),
        json.dumps({k: v for k, v in good.items() if k != "checked"}),
        json.dumps({**good, "timestamp": "yesterday"}),
    ]
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join([json.dumps(new), "", *bad, json.dumps(good)]) + "\n")
    with open(filled, "a") as f:
        f.write('{"torn": ')  # a tuner killed mid-line: the import starts a line of its own
    assert main(["tune", "--import", str(source)]) == 1
    captured = capsys.readouterr()
    reported = [line.split(": skipped: ") for line in captured.err.splitlines()]
    assert [where for where, _ in reported] == [f"{source}:{n}" for n in range(3, 12)]
    reasons = [why for _, why in reported]
    for number, word in [(0, "not JSON"), (1, "JSON object"), (2, "schedule"),
                         (3, "canonical"), (4, "spec_name"), (5, "backend"), (6, "seconds"),
                         (7, "checked"), (8, "timestamp")]:
        assert reasons[number].startswith(word) or word in reasons[number], reasons[number]
    assert "imported 1 record " in captured.out and "1 already there" in captured.out
    assert "9 bad lines skipped" in captured.out
    assert filled.read_text().splitlines()[-1] == json.dumps(new, sort_keys=True)
    assert sum(r.get("seconds") == 9e-5 for r in read_records(filled)) == 1


def test_record_problem_allows_fields_it_does_not_know(filled):
    good = read_records(filled)[0]
    assert record_problem(good) is None
    assert record_problem({**good, "threads": 1, "load": [0.1, 0.2]}) is None
    assert record_problem({**good, "seconds": None, "checked": False, "error": "x"}) is None
    assert record_problem({**good, "bound": "yes"}).startswith("bound")


def test_import_into_a_database_that_takes_no_appends(db, tmp_path, capsys):
    db.mkdir()
    source = tmp_path / "in.jsonl"
    source.write_text("")
    assert main(["tune", "--import", str(source)]) == 2
    assert "is a directory" in capsys.readouterr().err
    with pytest.raises(cg.ConvgenError):
        import_records(source, db)


# -- usage ----------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["tune"], "needs a SPECFILE|NETSPEC to tune"),
    (["tune", "--all"], "--all goes with --forget"),
    (["tune", "--forget"], "--forget needs a SPEC"),
    (["tune", "--forget", "x", "--all"], "not both"),
    (["tune", "x.toml", "--import", "y.jsonl"], "--import takes no SPECFILE"),
    (["tune", "--list", "--forget", "x"], "not allowed with argument --list"),
])
def test_usage_errors(db, capsys, argv, message):
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not db.exists()
