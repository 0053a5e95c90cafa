"""Tuning records that know their hardware: every record names the CPU, usable core count,
compiler, convgen version (and for backend "cuda" the GPU) it was measured on, and
compile, bind and networks use only the records of this machine at the thread count
asked. Records are written by convgen.records.record from made-up measurements (no
tuning); the "other machine" is this one with a field changed (a monkeypatched core
count, a record edited to name another GPU)."""

from __future__ import annotations

import dataclasses
import json
import logging
import os

import pytest

import convgen as cg
from convgen import records as records_module
from convgen.cli.main import main
from convgen.cli.records import hardware_text
from convgen.compiler import choose_schedule
from convgen.records import (CPU_IDENTITY, GPU_IDENTITY, best_record, export_records,
                             import_records, list_records, read_records, record,
                             record_problem, this_machine)
from convgen.tuning.tuner import Measurement

SPEC = cg.ConvSpec((1, 4, 6, 6), 8, kernel_size=3, padding=1)
ONE = cg.Schedule(tile_co=4, tile_spatial=(2, 6), threads=1)
TWO = cg.Schedule(tile_co=2, tile_spatial=(1, 6), threads=2)


def lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def append(path, item: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(item) + "\n")


def cuda_schedule() -> cg.Schedule:
    return cg.default_schedule(SPEC, backend="cuda")


def test_this_machine_is_plain_json_with_the_usable_core_count():
    for backend in ("c", "llvm"):
        here = this_machine(backend)
        assert tuple(here) == CPU_IDENTITY
        assert here["cores"] == len(os.sched_getaffinity(0))
        assert json.loads(json.dumps(here)) == here  # what a worker sends its client
    gpu = this_machine("cuda")  # the suite runs cuda on the emulator
    assert tuple(gpu) == CPU_IDENTITY + GPU_IDENTITY
    assert (gpu["gpu"], gpu["gpu_arch"], gpu["gpu_sms"]) == ("emulator", "host", gpu["cores"])
    assert json.loads(json.dumps(gpu)) == gpu


def test_every_record_carries_its_machine_and_compile_uses_it_only_there(db, monkeypatch):
    record(SPEC, "c", [Measurement(ONE, 3e-4, checked=True)], db, threads=1)
    [line] = lines(db)
    assert {k: line[k] for k in CPU_IDENTITY} == this_machine("c")
    assert line["threads"] == 1 and not set(GPU_IDENTITY) & set(line)
    assert best_record(SPEC, "c", 1) == ONE
    assert choose_schedule(SPEC, "c", threads=1) == (ONE, "tuned")

    cores = this_machine("c")["cores"]
    monkeypatch.setattr(records_module, "core_count", lambda: cores + 6)  # a bigger machine
    assert best_record(SPEC, "c", 1) is None and best_record(SPEC, "c") is None
    schedule, origin = choose_schedule(SPEC, "c", threads=1)
    assert origin == "default" and schedule != ONE
    [summary] = list_records()
    assert summary.mismatches == ("cores",) and summary.machine["cores"] == cores


def test_a_record_from_another_core_count_cpu_or_thread_count_is_not_used(db):
    record(SPEC, "llvm", [Measurement(ONE, 3e-4, checked=True)], db, bound=True)
    good = lines(db)[0]
    for key, value in [("cores", good["cores"] + 1), ("cpu", "x86_64|Other CPU|avx"),
                       ("cores", str(good["cores"])), ("cores", float(good["cores"]))]:
        append(db, {**good, key: value, "seconds": 1e-6,
                    "schedule": TWO.to_dict() if key == "cpu" else good["schedule"]})
    append(db, {**good, "seconds": 1e-6, "schedule": TWO.to_dict()})  # fastest, 2 threads
    assert best_record(SPEC, "llvm", 1, bound=True) == ONE
    assert best_record(SPEC, "llvm", 2, bound=True) == TWO
    assert best_record(SPEC, "llvm", 1) is None  # bound records serve networks and bind only
    assert choose_schedule(SPEC, "llvm", bound=True, threads=1) == (ONE, "tuned")


def test_an_old_record_without_a_core_count_is_read_but_never_used(db, capsys):
    """Choice: a field this machine has and the record lacks is a difference (nothing says
    it was measured on matching hardware); the record stays listed, exported, imported."""
    record(SPEC, "c", [Measurement(ONE, 3e-4, checked=True)], db)
    old = {k: v for k, v in lines(db)[0].items() if k != "cores"}
    db.write_text(json.dumps(old) + "\n")
    assert record_problem(old) is None
    assert best_record(SPEC, "c") is None
    [summary] = list_records()
    assert summary.mismatches == ("cores",) and summary.machine["cores"] is None
    assert main(["tune", "--list"]) == 0
    out = capsys.readouterr().out
    assert "no: core count not recorded" in out and " x?" in out and "0 usable here" in out
    # exported as it is (no field made up for it)
    exported = db.parent / "old.jsonl"
    assert export_records(exported) == 1 and lines(exported) == [old]


def test_cuda_records_name_the_gpu_and_only_this_gpu_is_used(db, capsys):
    schedule = cuda_schedule()
    record(SPEC, "cuda", [Measurement(schedule, 3e-4, checked=True)], db, bound=True)
    [line] = lines(db)
    assert (line["gpu"], line["gpu_arch"]) == ("emulator", "host")
    assert best_record(SPEC, "cuda", bound=True) == schedule
    faster = dataclasses.replace(schedule, gpu=dataclasses.replace(
        schedule.gpu, stage=not schedule.gpu.stage))
    h100 = {"gpu": "NVIDIA H100 80GB HBM3", "gpu_arch": "sm_90", "gpu_sms": 132}
    append(db, {**line, **h100, "seconds": 1e-6, "schedule": faster.to_dict()})
    no_gpu = {k: v for k, v in line.items() if k not in GPU_IDENTITY}
    append(db, {**no_gpu, "seconds": 1e-6, "schedule": faster.to_dict()})
    assert best_record(SPEC, "cuda", bound=True) == schedule
    assert main(["tune", "--list"]) == 0
    out = capsys.readouterr().out
    assert "emulator on " in out and "NVIDIA H100 80GB HBM3 sm_90/132SM on " in out
    assert "no: other GPU, GPU architecture, GPU multiprocessor count" in out
    assert "no: GPU, GPU architecture, GPU multiprocessor count not recorded" in out
    append(db, {**line, "seconds": 1e-6, "schedule": faster.to_dict()})  # from this "GPU"
    assert best_record(SPEC, "cuda", bound=True) == faster


def test_record_writes_a_worker_machine_given_and_refuses_a_bad_one(db):
    worker = {**this_machine("c"), "cores": 64}
    record(SPEC, "c", [Measurement(ONE, 3e-4, checked=True)], db, machine=worker)
    assert lines(db)[0]["cores"] == 64 and best_record(SPEC, "c") is None
    for bad, field in [({**worker, "cores": 0}, "cores"), ({**worker, "cores": True}, "cores"),
                       ({**worker, "compiler": None}, "compiler"),
                       ({k: v for k, v in worker.items() if k != "cpu"}, "cpu"),
                       (this_machine("c"), "gpu")]:
        backend = "cuda" if field == "gpu" else "c"
        with pytest.raises(ValueError, match=rf"machine\['{field}'\]"):
            record(SPEC, backend, [Measurement(ONE, 3e-4, checked=True)], db, machine=bad)
    assert len(lines(db)) == 1


def test_export_import_keep_the_hardware_and_import_checks_it(db, tmp_path, capsys):
    record(SPEC, "c", [Measurement(ONE, 3e-4, checked=True)], db, threads=1)
    record(SPEC, "cuda", [Measurement(cuda_schedule(), 2e-4, checked=True)], db)
    exported = tmp_path / "records.jsonl"
    assert export_records(exported) == 2
    before = read_records(db)
    db.unlink()
    good = lines(exported)
    bad = [{**good[0], "cores": "2"}, {**good[0], "cores": 0}, {**good[1], "gpu_sms": 1.5},
           {**good[1], "gpu": 7}, {**good[0], "threads": -1}]
    with open(exported, "a") as f:
        f.write("".join(json.dumps(item) + "\n" for item in bad))
    result = import_records(exported)
    assert result.added == 2 and [why.split(":")[0] for _, why in result.bad] == \
        ["cores", "cores", "gpu_sms", "gpu", "threads"]
    assert read_records(db) == before
    assert best_record(SPEC, "c", 1) == ONE


def test_list_shows_the_hardware_compactly(db, capsys):
    record(SPEC, "c", [Measurement(ONE, 3e-4, checked=True)], db)
    assert main(["tune", "--list"]) == 0
    out = capsys.readouterr().out
    header, _, row, _ = out.splitlines()
    assert "hardware" in header and header.rstrip().endswith("this machine")
    here = this_machine("c")
    assert hardware_text(here) in row and row.rstrip().endswith("yes")
    assert hardware_text({"cpu": "x86_64|Intel(R) Xeon(R) Platinum 8480+ CPU @ 2.00GHz|avx",
                          "cores": 8}) == "Intel Xeon Platinum 8480+ x8"
    assert hardware_text({"cpu": "x86_64|AMD EPYC 7B13 64-Core Processor|avx",
                          "cores": 2}) == "AMD EPYC 7B13 x2"
    assert hardware_text({"cpu": None, "cores": None}) == "? x?"


def test_compile_logs_the_record_it_uses(db, caplog):
    record(SPEC, "llvm", [Measurement(ONE, 3e-4, checked=True)], db)
    with caplog.at_level(logging.INFO, logger="convgen.compiler"):
        kernel = cg.compile(SPEC, backend="llvm", threads=1)
    assert kernel.schedule == ONE
    assert any("tuning record" in r.getMessage() for r in caplog.records)


class FakeGpu:
    """What convgen.backends.cuda.driver.Driver answers on an H100 (no GPU here)."""

    def name(self) -> str:
        return "NVIDIA H100 80GB HBM3"

    def arch(self) -> str:
        return "sm_90"

    def multiprocessors(self) -> int:
        return 132


@pytest.fixture
def gpu0(monkeypatch):
    """backend "cuda" on GPU 0 (not the emulator), the device lookup uncached."""
    monkeypatch.setattr(cg.config, "_cuda_device_override", "0")
    records_module._device.cache_clear()
    yield
    records_module._device.cache_clear()


def test_the_gpu_fields_come_from_the_driver(gpu0, monkeypatch):
    monkeypatch.setattr(records_module.cuda_driver, "available", lambda ordinal: None)
    monkeypatch.setattr(records_module.cuda_driver.Driver, "get",
                        classmethod(lambda cls, ordinal=None: FakeGpu()))
    assert records_module.gpu_identity() == {"gpu": "NVIDIA H100 80GB HBM3",
                                             "gpu_arch": "sm_90", "gpu_sms": 132}


def test_without_a_gpu_the_gpu_fields_are_none_and_no_record_is_used(gpu0, db, monkeypatch):
    monkeypatch.setattr(records_module.cuda_driver, "available",
                        lambda ordinal: "no CUDA driver (test)")
    here = this_machine("cuda")
    assert [here[name] for name in GPU_IDENTITY] == [None, None, None]
    with pytest.raises(cg.ConvgenError, match="no GPU 0 to identify: no CUDA driver"):
        records_module.gpu_identity()
    assert best_record(SPEC, "cuda") is None
