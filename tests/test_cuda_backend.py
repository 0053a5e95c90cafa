"""Backend "cuda" on the CPU emulator: every GPU plan kind against the oracle, in two
thread orders (a race changes the result), with every array access bounds-checked; GPU
schedules and their errors; device arrays in and out; the no-GPU error."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import convgen as cg
from convgen import config
from convgen.backends import get_backend
from convgen.backends.cuda import driver
from convgen.backends.cuda.arrays import DeviceArray, to_device
from convgen.backends.cuda.emulator import EmulatorError, build_emulated, load_emulated
from convgen.plan.gpu import GpuTiled, gpu_axis, make_gpu_plan
from convgen.reference import random_arrays
from convgen.tolerance import max_error, tolerance

from strategies import conv_specs, gpu_schedules, transposed_specs


def check_in_two_orders(spec: cg.ConvSpec, schedule: cg.Schedule | None, seed: int = 0):
    """Compile on cuda, run forward and reversed: equal bit for bit, and within the
    oracle's tolerance."""
    kernel = cg.compile(spec, backend="cuda", schedule=schedule)
    x, w, b = random_arrays(spec, seed)
    kernel.set_thread_order("forward")
    forward = kernel(x, w, b)
    kernel.set_thread_order("reverse")
    try:
        reverse = kernel(x, w, b)
    finally:
        kernel.set_thread_order("forward")
    np.testing.assert_array_equal(forward, reverse, err_msg=f"race: {spec} {schedule}")
    error = max_error(forward, cg.reference(spec, x, w, b))
    assert error <= tolerance(spec), f"{spec} {schedule}: max error {error:.3g}"
    return kernel


@settings(max_examples=60)
@given(data=st.data())
def test_any_gpu_schedule_matches_oracle_in_both_thread_orders(data):
    """Every rank, stride, dilation, padding mode, groups, flip, bias, activation,
    transposition and dtype, on every GPU plan kind with any tiles, staging on and off."""
    spec = data.draw(conv_specs())
    check_in_two_orders(spec, data.draw(gpu_schedules(spec)), seed=2)


@settings(max_examples=30)
@given(spec=transposed_specs())
def test_transposed_stride_phases_match_oracle(spec):
    check_in_two_orders(spec, None)


@pytest.mark.parametrize("kind", ["tiled", "depthwise", "gemm"])
def test_each_kind_is_what_runs(kind):
    spec = cg.ConvSpec((2, 6, 9, 7), 12 if kind == "depthwise" else 8, kernel_size=3,
                       padding=1, groups=6 if kind == "depthwise" else 1, activation="silu")
    schedule = cg.Schedule(gpu=cg.GpuSchedule(kind=kind))
    kernel = check_in_two_orders(spec, schedule)
    assert f"({kind} plan)" in kernel.source
    assert kernel.schedule.gpu.kind == kind
    assert ("__shared__" in kernel.source) is True


def test_default_plan_kinds():
    depthwise = cg.ConvSpec((1, 8, 10, 10), 8, kernel_size=5, stride=2, padding=2, groups=8)
    wide = cg.ConvSpec((1, 64, 8, 8), 64, kernel_size=3, padding=1)
    narrow = cg.ConvSpec((1, 3, 8, 8), 4, kernel_size=3)
    transposed = cg.ConvSpec((1, 4, 5, 5), 4, kernel_size=4, stride=2, transposed=True)
    kinds = {spec: make_gpu_plan(spec).kind.kind_name
             for spec in (depthwise, wide, narrow, transposed)}
    assert list(kinds.values()) == ["depthwise", "gemm", "tiled", "tiled"]
    for spec in kinds:
        check_in_two_orders(spec, None)


@pytest.mark.parametrize("stride,dilation,k,flip", [(2, 1, 4, False), (3, 2, 3, True),
                                                     (4, 1, 2, False), (2, 3, 5, False)])
def test_stride_phases_touch_each_tap_once(stride, dilation, k, flip):
    """Summed over a dim's phases, every tap is used once: no multiply-add on the zeros
    the scatter definition would insert between input samples."""
    spec = cg.ConvSpec((1, 1, 9), 1, kernel_size=k, stride=stride, dilation=dilation,
                       padding=1, transposed=True, flip=flip)
    axis = gpu_axis(spec, 0, 64)
    phases = sum(1 for r in range(stride))
    assert axis.phases == min(phases, spec.output_spatial[0])
    used = sorted(k for taps in axis.tap_k for k in taps)
    # each phase of the stride holds the taps congruent to it; phases the output never
    # reaches (none here: the output is longer than the stride) would drop theirs
    assert used == sorted(range(k))
    check_in_two_orders(spec, None)


@pytest.mark.parametrize("mode", ["zeros", "reflect", "replicate", "circular"])
@pytest.mark.parametrize("stage", [True, False])
def test_padding_modes_staged_and_not(mode, stage):
    spec = cg.ConvSpec((1, 3, 7, 6), 5, kernel_size=(3, 2), stride=(2, 1), dilation=(1, 2),
                       padding=2, padding_mode=mode, bias=True, activation="gelu")
    check_in_two_orders(spec, cg.Schedule(gpu=cg.GpuSchedule(kind="tiled", stage=stage)))


def test_large_weights_read_through_global_memory():
    """Weights over the __constant__ budget are read from global memory: same answer."""
    spec = cg.ConvSpec((1, 64, 4, 4), 72, kernel_size=3, padding=1)  # 166 KB of weights
    plan = make_gpu_plan(spec, cg.Schedule(gpu=cg.GpuSchedule(kind="tiled")))
    assert isinstance(plan.kind, GpuTiled) and not plan.kind.const_weights
    check_in_two_orders(spec, plan.schedule)


def test_float64_and_3d():
    spec = cg.ConvSpec((1, 2, 4, 5, 3), 3, kernel_size=(2, 3, 1), stride=(1, 2, 1),
                       padding=1, dtype="float64", activation=("elu", 0.5))
    check_in_two_orders(spec, None)
    check_in_two_orders(spec, cg.Schedule(gpu=cg.GpuSchedule(kind="gemm", block=(4, 8, 4),
                                                             thread=(2, 2))))


def test_job_ranges_compose():
    spec = cg.ConvSpec((2, 3, 9, 9), 4, kernel_size=3, padding=1)
    kernel = cg.compile(spec, backend="cuda")
    x, w, b = random_arrays(spec, 0)
    whole = kernel(x, w, b)
    y = np.full(spec.output_shape, np.nan, np.float32)
    cut = kernel.jobs // 2
    for begin, end in ((0, cut), (cut, kernel.jobs)):
        kernel._launch(x.ctypes.data, w.ctypes.data, b.ctypes.data, y.ctypes.data, begin, end)
    np.testing.assert_array_equal(y, whole)


def test_bound_kernel_and_functional_ops():
    spec = cg.ConvSpec((1, 3, 8, 8), 4, kernel_size=3, padding=1, activation="relu")
    x, w, b = random_arrays(spec, 3)
    want = cg.reference(spec, x, w, b)
    bound = cg.bind(spec, w, b, backend="cuda")
    assert max_error(bound(x), want) <= tolerance(spec)
    got = cg.conv2d(x, w, b, padding=1, activation="relu", backend="cuda")
    assert max_error(got, want) <= tolerance(spec)
    on_device = cg.conv2d(to_device(x), to_device(w), to_device(b), padding=1,
                          activation="relu", backend="cuda")
    assert isinstance(on_device, DeviceArray)
    np.testing.assert_array_equal(on_device.copy_to_host(), got)
    with pytest.raises(TypeError, match="x: expected a numpy.ndarray"):
        cg.conv2d(to_device(x), w, b, padding=1, backend="c")  # a CPU backend


def test_device_arrays_in_and_out():
    spec = cg.ConvSpec((1, 3, 6, 6), 2, kernel_size=3, padding=1)
    kernel = cg.compile(spec, backend="cuda")
    x, w, b = random_arrays(spec, 4)
    want = kernel(x, w, b)
    dx, dw, db = to_device(x), to_device(w), to_device(b)
    y = kernel(dx, dw, db)
    assert isinstance(y, DeviceArray) and y.shape == spec.output_shape
    np.testing.assert_array_equal(y.copy_to_host(), want)
    out = DeviceArray.empty(spec.output_shape, np.float32)
    assert kernel(dx, w, db, out=out) is out  # device and host inputs mixed
    np.testing.assert_array_equal(out.copy_to_host(), want)
    host_out = np.empty(spec.output_shape, np.float32)
    assert kernel(dx, dw, db, out=host_out) is host_out
    np.testing.assert_array_equal(host_out, want)
    with pytest.raises(ValueError, match="x: expected shape"):
        kernel(to_device(x[:, :2]), w, b)
    with pytest.raises(TypeError, match="w: expected dtype float32"):
        kernel(x, to_device(w.astype(np.float64)), b)


def test_the_emulator_refuses_foreign_device_pointers():
    class Foreign:
        def __init__(self, array):
            self.array = array
            self.__cuda_array_interface__ = {
                "shape": array.shape, "typestr": array.dtype.str, "strides": None,
                "data": (array.ctypes.data, False), "version": 3}

    spec = cg.ConvSpec((1, 1, 4), 1, kernel_size=1, bias=False)
    kernel = cg.compile(spec, backend="cuda")
    x, w, _ = random_arrays(spec, 0)
    with pytest.raises(TypeError, match="cannot read GPU memory"):
        kernel(Foreign(x), w)


def test_threads_share_a_kernel():
    spec = cg.ConvSpec((1, 4, 8, 8), 4, kernel_size=3, padding=1)
    kernel = cg.compile(spec, backend="cuda")
    inputs = [random_arrays(spec, seed) for seed in range(4)]
    wants = [kernel(*args) for args in inputs]
    results = [None] * 4

    def run(i):
        for _ in range(3):
            results[i] = kernel(*inputs[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for got, want in zip(results, wants):
        np.testing.assert_array_equal(got, want)


# -- schedules and their errors -----------------------------------------------------------

def test_gpu_schedule_round_trips_and_keys():
    schedule = cg.Schedule(gpu=cg.GpuSchedule(kind="tiled", block=(4, 2, 8), thread=(2, 4),
                                              stage=False, chunk=2))
    again = cg.Schedule.from_dict(schedule.to_dict())
    assert again == schedule and "gpu" in schedule.to_dict()
    assert "gpu" not in cg.Schedule().to_dict()  # CPU keys unchanged


@pytest.mark.parametrize("fields,match", [
    (dict(kind="winograd"), "gpu.kind"),
    (dict(block=(0, 4)), "gpu.block"),
    (dict(thread=(1, 2, 3)), "gpu.thread"),
    (dict(stage="yes"), "gpu.stage"),
    (dict(chunk=0), "gpu.chunk"),
])
def test_bad_gpu_schedule_fields(fields, match):
    with pytest.raises(cg.ScheduleError, match=match):
        cg.GpuSchedule(**fields)


@pytest.mark.parametrize("schedule,match", [
    (cg.Schedule(tile_co=4), "tile_co"),
    (cg.Schedule(vectorize="co"), "vectorize"),
    (cg.Schedule(method="winograd"), "method"),
    (cg.Schedule(gpu=cg.GpuSchedule(kind="depthwise")), "one input channel per group"),
    (cg.Schedule(gpu=cg.GpuSchedule(kind="tiled", block=(4, 8), thread=(2, 2))),
     "needs 3 entries"),
    (cg.Schedule(gpu=cg.GpuSchedule(kind="tiled", block=(3, 4, 8), thread=(2, 2))),
     "multiple of the thread"),
    (cg.Schedule(gpu=cg.GpuSchedule(kind="tiled", block=(64, 32, 32), thread=(1, 1))),
     "threads per block"),
    (cg.Schedule(gpu=cg.GpuSchedule(kind="tiled", thread=(16, 8))), "accumulators"),
    (cg.Schedule(gpu=cg.GpuSchedule(kind="gemm", block=(64, 64))), "reduction chunk"),
    (cg.Schedule(gpu=cg.GpuSchedule(kind="gemm", block=(128, 128, 64), thread=(8, 8))),
     "shared memory"),
])
def test_illegal_gpu_schedules_raise(schedule, match):
    spec = cg.ConvSpec((1, 16, 64, 64), 16, kernel_size=3, padding=1)
    with pytest.raises(cg.ScheduleError, match=match):
        cg.compile(spec, backend="cuda", schedule=schedule)


def test_staged_tile_too_large_for_shared_memory():
    spec = cg.ConvSpec((1, 8, 40, 400), 4, kernel_size=(1, 301))
    schedule = cg.Schedule(gpu=cg.GpuSchedule(kind="tiled", block=(4, 8, 64), thread=(4, 4),
                                              chunk=8))
    with pytest.raises(cg.ScheduleError, match="shared"):
        make_gpu_plan(spec, schedule)
    # the default shrinks the tile, or reads through the cache when nothing fits
    plan = make_gpu_plan(spec)
    assert plan.kind.shared_elements * 4 <= 48 << 10


def test_transposed_runs_on_the_tiled_plan_only():
    spec = cg.ConvSpec((1, 4, 5, 5), 4, kernel_size=4, stride=2, transposed=True)
    with pytest.raises(cg.ScheduleError, match="stride phase"):
        make_gpu_plan(spec, cg.Schedule(gpu=cg.GpuSchedule(kind="gemm")))


def test_cpu_backends_refuse_gpu_schedules(backend):
    if backend == "cuda":
        return
    spec = cg.ConvSpec((1, 2, 5, 5), 2, kernel_size=3)
    with pytest.raises(cg.ScheduleError, match="GPU schedule"):
        cg.compile(spec, backend=backend, schedule=cg.Schedule(gpu=cg.GpuSchedule()))


def test_default_schedule_has_a_gpu_fallback():
    spec = cg.ConvSpec((1, 8, 10, 10), 8, kernel_size=3, groups=8)
    schedule = cg.default_schedule(spec, "cuda")
    assert schedule.gpu is not None and schedule.gpu.kind == "depthwise"
    assert cg.default_schedule(spec, "c").gpu is None


# -- the checks the emulator makes ---------------------------------------------------------

OUT_OF_BOUNDS = r"""
__global__ void shift(const float* x, float* y, int n) {
    __shared__ float tile[32];
    const int i = threadIdx.x;
    CG_AT(tile, i, 32) = CG_AT(x, i, n);
    __syncthreads();
    CG_AT(y, i, n) = CG_AT(tile, i + {SHIFT}, 32);  // {SHIFT} > 0 reads past the tile
}
extern "C" int run(const float* x, float* y, int n) {
    return cg_emu_launch(dim3(1), dim3(32), [=] { shift(x, y, n); });
}
"""


def test_an_out_of_bounds_shared_read_is_caught():
    x = np.arange(32, dtype=np.float32)
    y = np.zeros(32, np.float32)
    good = load_emulated(build_emulated(OUT_OF_BOUNDS.replace("{SHIFT}", "0")),
                         "int run(const float* x, float* y, int n);")
    good.call("run", x, y, 32)
    np.testing.assert_array_equal(y, x)
    bad = load_emulated(build_emulated(OUT_OF_BOUNDS.replace("{SHIFT}", "1")),
                        "int run(const float* x, float* y, int n);")
    with pytest.raises(EmulatorError, match=r"out-of-bounds access: tile\[32\] \(it holds 32\)"):
        bad.call("run", x, y, 32)
    with pytest.raises(EmulatorError, match=r"out-of-bounds access: x\[31\] \(it holds 31\)"):
        good.call("run", x, y, 31)  # a global array shorter than the block


# -- without a GPU -------------------------------------------------------------------------

def test_without_a_gpu_the_error_names_the_emulator(monkeypatch):
    if driver.available(0) is None:
        pytest.skip("this machine has a GPU: the no-GPU error cannot happen here")
    monkeypatch.setenv("CONVGEN_CUDA_DEVICE", "0")
    why = get_backend("cuda").available()
    assert why is not None and "CONVGEN_CUDA_DEVICE=emulator" in why
    spec = cg.ConvSpec((1, 1, 4), 1, kernel_size=1)
    with pytest.raises(cg.ConvgenError, match="emulator"):
        cg.compile(spec, backend="cuda")


def test_set_cuda_device_overrides_the_environment(monkeypatch):
    monkeypatch.setenv("CONVGEN_CUDA_DEVICE", "0")
    try:
        config.set_cuda_device("emulator")
        assert config.cuda_device() == "emulator"
        spec = cg.ConvSpec((1, 1, 4), 1, kernel_size=1)
        assert cg.compile(spec, backend="cuda").emulated
    finally:
        config.set_cuda_device(None)
    assert config.cuda_device() == "0"
    with pytest.raises(ValueError, match="CONVGEN_CUDA_DEVICE"):
        monkeypatch.setenv("CONVGEN_CUDA_DEVICE", "gpu")
        config.cuda_device()


def test_launches_leave_no_fiber_stacks_mapped():
    """Each emulator library has its own schedulers: stacks kept after a launch (two
    mappings per fiber with its guard page) once exhausted the process's mappings."""
    kernels = []
    for cout in (5, 6, 7):  # three libraries, 256-thread blocks
        spec = cg.ConvSpec((1, 2, 16, 64), cout, kernel_size=3, padding=1)
        kernels.append((cg.compile(spec, backend="cuda", schedule=cg.Schedule(
            gpu=cg.GpuSchedule(kind="tiled", block=(1, 4, 64), thread=(1, 1)))),
            random_arrays(spec, 0)))
    with open("/proc/self/maps") as maps:
        before = len(maps.readlines())
    for kernel, arrays in kernels:
        kernel(*arrays)
    with open("/proc/self/maps") as maps:
        after = len(maps.readlines())
    assert after - before < 64, f"{after - before} mappings left behind by 3 launches"
