"""ptxas's resource report for the generated CUDA kernels: every kernel of a spread of
specs (1D/2D/3D, stride, dilation, groups, depthwise, transposed, implicit GEMM, float64,
activations, padding modes) and of the bench layers (specs/bench/layers.toml, default
schedules) builds for sm_80 and sm_90 with no register spills, static shared memory
within the per-block limit and at most 255 registers; and ``convgen show``/``explain
--backend cuda`` print those figures.

Needs nvcc only, no GPU (the builds go through the kernel cache: a rerun compiles nothing).
"""

from __future__ import annotations

import concurrent.futures
import re
import textwrap
from pathlib import Path

import pytest

import convgen as cg
from convgen.backends.cuda.build import (DEFAULT_ARCHS, STATIC_SHARED_BYTES, KernelResources,
                                         build_cuda, find_nvcc, kernel_resources)
from convgen.backends.cuda.render import render_cuda
from convgen.cli.main import main
from convgen.errors import CompilerNotFoundError
from convgen.plan.gpu import make_gpu_plan
from convgen.spec import ConvSpec
from convgen.specfile import load_specfile

ROOT = Path(__file__).resolve().parent.parent
BENCH_LAYERS = ROOT / "specs" / "bench" / "layers.toml"
ARCHS = ("sm_80", "sm_90")
MAX_REGISTERS = 255
WORKERS = 2  # nvcc is single-threaded and slow (seconds a file): two at a time

TILED = cg.Schedule(gpu=cg.GpuSchedule(kind="tiled"))

# name -> (spec, schedule or None for the default, the GPU plan kind expected)
SPREAD: dict[str, tuple[ConvSpec, cg.Schedule | None, str]] = {
    "conv1d_k5": (ConvSpec((2, 8, 50), 16, kernel_size=5, padding=2), None, "tiled"),
    "conv1d_circular_k7": (ConvSpec((1, 4, 40), 8, kernel_size=7, padding=3,
                                    padding_mode="circular"), None, "tiled"),
    "conv2d_stride2": (ConvSpec((1, 16, 33, 33), 24, kernel_size=3, stride=2, padding=1),
                       None, "tiled"),
    "conv2d_dilation2": (ConvSpec((1, 8, 30, 30), 16, kernel_size=3, dilation=2, padding=2),
                         None, "tiled"),
    "conv2d_groups4": (ConvSpec((1, 16, 20, 20), 32, kernel_size=3, padding=1, groups=4),
                       None, "tiled"),
    "conv2d_reflect": (ConvSpec((1, 4, 17, 17), 8, kernel_size=3, padding=1,
                                padding_mode="reflect"), None, "tiled"),
    "conv2d_gelu": (ConvSpec((1, 8, 24, 24), 16, kernel_size=3, padding=1,
                             activation="gelu"), None, "tiled"),
    "conv2d_float64": (ConvSpec((1, 8, 20, 20), 16, kernel_size=3, padding=1,
                                dtype="float64"), None, "tiled"),
    "conv3d_3x3x3": (ConvSpec((1, 4, 8, 12, 12), 8, kernel_size=3, padding=1), None, "tiled"),
    "depthwise_3x3": (ConvSpec((1, 32, 28, 28), 32, kernel_size=3, padding=1, groups=32),
                      None, "depthwise"),
    "depthwise_5x5_s2": (ConvSpec((1, 24, 31, 31), 24, kernel_size=5, stride=2, padding=2,
                                  groups=24), None, "depthwise"),
    "depthwise_x2_relu6": (ConvSpec((1, 16, 20, 20), 32, kernel_size=3, padding=1, groups=16,
                                    activation="relu6"), None, "depthwise"),
    "transposed_4x4_s2": (ConvSpec((1, 16, 14, 14), 8, kernel_size=4, stride=2, padding=1,
                                   transposed=True), None, "tiled"),
    "transposed_5x5_s3": (ConvSpec((1, 8, 10, 10), 8, kernel_size=5, stride=3, padding=1,
                                   output_padding=1, transposed=True), None, "tiled"),
    "transposed_3d_s2_groups2": (ConvSpec((1, 4, 5, 6, 6), 4, kernel_size=3, stride=2,
                                          padding=1, groups=2, transposed=True),
                                 None, "tiled"),
    "gemm_1x1_256_512": (ConvSpec((1, 256, 14, 14), 512, kernel_size=1), None, "gemm"),
    "gemm_3x3_64_56": (ConvSpec((1, 64, 56, 56), 64, kernel_size=3, padding=1, bias=False),
                       None, "gemm"),
    "tiled_3x3_64_56": (ConvSpec((1, 64, 56, 56), 64, kernel_size=3, padding=1, bias=False),
                        TILED, "tiled"),
    "gemm_3x3_groups2": (ConvSpec((1, 128, 14, 14), 128, kernel_size=3, padding=1, groups=2),
                         None, "gemm"),
    "gemm_silu": (ConvSpec((1, 64, 16, 16), 64, kernel_size=3, padding=1, activation="silu"),
                  None, "gemm"),
    "gemm_float64": (ConvSpec((1, 64, 14, 14), 64, kernel_size=3, padding=1,
                              dtype="float64"), None, "gemm"),
}


def _cases() -> dict[str, tuple[ConvSpec, cg.Schedule | None, str | None]]:
    cases: dict[str, tuple[ConvSpec, cg.Schedule | None, str | None]] = dict(SPREAD)
    for entry in load_specfile(BENCH_LAYERS):  # the default schedule, as `convgen bench`
        cases[f"bench:{entry.name}"] = (entry.spec, None, None)
    return cases


CASES = _cases()


def skip_without_nvcc() -> None:
    """The one skip here: no nvcc (no CUDA toolkit, or $CONVGEN_NVCC names nothing)."""
    try:
        find_nvcc()
    except CompilerNotFoundError as exc:
        pytest.skip(f"the ptxas reports need nvcc: {exc}")


def _build(name: str) -> tuple[str, list[KernelResources]]:
    spec, schedule, _ = CASES[name]
    plan = make_gpu_plan(spec, schedule)
    entry = build_cuda(render_cuda(plan), plan.symbol, ARCHS)
    return plan.kind.kind_name, kernel_resources(entry)  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def reports() -> dict[str, tuple[str, list[KernelResources]] | BaseException]:
    """name -> (plan kind, ptxas's report) for every case, built WORKERS at a time (a
    build that fails is kept as its exception, reported by that case's test)."""
    skip_without_nvcc()
    out: dict[str, tuple[str, list[KernelResources]] | BaseException] = {}
    with concurrent.futures.ThreadPoolExecutor(WORKERS) as pool:
        futures = {name: pool.submit(_build, name) for name in CASES}
        for name, future in futures.items():
            try:
                out[name] = future.result()
            except Exception as exc:  # noqa: BLE001 - shown by the case's own test
                out[name] = exc
    return out


def _table(name: str, kind: str, resources: list[KernelResources]) -> str:
    return "\n".join(f"{name} [{kind}] {r.line()}" for r in resources)


@pytest.mark.parametrize("name", list(CASES))
def test_kernel_fits_without_spills(reports, name):
    result = reports[name]
    if isinstance(result, BaseException):
        raise result
    kind, resources = result
    expected_kind = CASES[name][2]
    if expected_kind is not None:
        assert kind == expected_kind, f"{name}: planned as {kind!r}, the case covers " \
                                      f"{expected_kind!r}"
    table = _table(name, kind, resources)
    assert resources, f"{name}: ptxas reported no kernel"
    assert {r.arch for r in resources} == set(ARCHS), table
    for kernel in {r.kernel for r in resources}:
        assert sorted(r.arch for r in resources if r.kernel == kernel) == sorted(ARCHS), table
    for r in resources:
        assert r.spill_stores == 0 and r.spill_loads == 0, f"spills:\n{table}"
        assert r.shared <= STATIC_SHARED_BYTES, f"static shared memory over the limit:\n{table}"
        assert r.registers <= MAX_REGISTERS, f"registers:\n{table}"


def test_spread_covers_every_plan_kind_and_feature():
    """The spread is what its names say: each GPU plan kind, every dimensionality."""
    kinds = {kind for _, _, kind in SPREAD.values()}
    assert kinds == {"tiled", "depthwise", "gemm"}
    specs = [spec for spec, _, _ in SPREAD.values()]
    assert {spec.ndim for spec in specs} == {1, 2, 3}
    assert {spec.dtype for spec in specs} >= {"float32", "float64"}
    assert {spec.padding_mode for spec in specs} >= {"zeros", "reflect", "circular"}
    assert {max(spec.stride) for spec in specs if spec.transposed} >= {2, 3}
    assert len(CASES) > len(SPREAD) >= 12


# -- convgen show / explain --backend cuda ----------------------------------------------

SMALL = """
[[conv]]
name = "small_cuda"
input_shape = [1, 4, 12, 12]
out_channels = 8
kernel_size = 3
padding = 1
activation = "relu"
"""

_LINE = re.compile(r"^// +(\S+) \((sm_\d+)\): (\d+) registers, (\d+) B shared, (\d+) B spill "
                   r"stores, (\d+) B spill loads, (\d+) B stack$", re.M)


def _write(tmp_path: Path) -> Path:
    path = tmp_path / "small.toml"
    path.write_text(textwrap.dedent(SMALL))
    return path


def _ptxas_lines(out: str) -> dict[str, tuple[int, ...]]:
    """arch -> (registers, shared, spill stores, spill loads, stack) from the // lines."""
    return {m.group(2): tuple(int(g) for g in m.groups()[2:]) for m in _LINE.finditer(out)}


@pytest.mark.parametrize("command", ["show", "explain"])
def test_cli_prints_ptxas_report(command, tmp_path, capsys, monkeypatch):
    skip_without_nvcc()
    monkeypatch.setenv("CONVGEN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CONVGEN_CUDA_DEVICE", "emulator")  # no GPU: nvcc builds the report
    assert main([command, "--backend", "cuda", str(_write(tmp_path))]) == 0
    out = capsys.readouterr().out
    assert "// ptxas report" in out
    figures = _ptxas_lines(out)
    assert set(figures) == set(DEFAULT_ARCHS) == set(ARCHS), out
    for registers, shared, stores, loads, _stack in figures.values():
        assert 0 < registers <= MAX_REGISTERS
        assert 0 < shared <= STATIC_SHARED_BYTES  # the tiled plan stages its input tile
        assert stores == 0 and loads == 0
    # the report comes after what the command printed before
    assert out.rindex("// ptxas report") > out.index("small_cuda" if command == "explain"
                                                     else "__global__")


def test_explain_without_nvcc_says_so(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CONVGEN_NVCC", str(tmp_path / "no-nvcc"))
    monkeypatch.setenv("CONVGEN_CACHE_DIR", str(tmp_path / "cache"))
    assert main(["explain", "--backend", "cuda", str(_write(tmp_path))]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("// ptxas")]
    assert len(lines) == 1 and "needs nvcc" in lines[0], out
    assert "registers" not in out


@pytest.mark.parametrize("backend", [b for b in cg.BACKENDS if b != "cuda"])
def test_explain_other_backends_need_no_compiler(backend, tmp_path, capsys, monkeypatch):
    for variable in ("CC", "CXX", "CONVGEN_NVCC"):
        monkeypatch.setenv(variable, str(tmp_path / "no-compiler"))
    monkeypatch.setenv("CONVGEN_CACHE_DIR", str(tmp_path / "cache"))
    assert main(["explain", "--backend", backend, str(_write(tmp_path))]) == 0
    out = capsys.readouterr().out
    assert "small_cuda" in out and "ptxas" not in out


@pytest.mark.parametrize("name, shape", [("resnet18", (1, 3, 224, 224)),
                                         ("dcgan_generator", None), ("video3d", None)])
def test_network_modules_fit_without_spills(name, shape):
    """A whole network's module (every layer's kernel, residual epilogues, the op
    kernels) for sm_80 and sm_90: no spills, shared memory within the static limit."""
    skip_without_nvcc()
    net = cg.load_network(Path(__file__).resolve().parent.parent / "specs" / "nets"
                          / f"{name}.toml")
    model = net.compile(shape, backend="cuda")
    resources = kernel_resources(build_cuda(model.source, model.symbol, ARCHS))
    kernels = {r.kernel for r in resources}
    assert len(kernels) == len(model._lowered.steps)
    for r in resources:
        assert r.spill_stores == 0 and r.spill_loads == 0, r.line()
        assert r.shared <= STATIC_SHARED_BYTES and r.registers <= 255, r.line()
