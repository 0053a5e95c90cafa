"""ConvSpec and Schedule: normalization, derived values, errors. No compiler needed."""

from __future__ import annotations

import pickle

import pytest
from hypothesis import given

import convgen as cg
from convgen.errors import CompileError, ScheduleError, SpecError
from convgen.plan.defaults import PARALLEL_FLOPS, default_schedule, default_w_schedule

from strategies import BASE, INVALID_CHANGES, conv_specs


def test_int_and_tuple_forms_normalize_to_per_dim_tuples():
    spec = cg.ConvSpec((1, 3, 8, 9), 4, kernel_size=3, stride=2, dilation=(1, 2), padding=1)
    assert spec.kernel_size == (3, 3)
    assert spec.stride == (2, 2)
    assert spec.dilation == (1, 2)
    assert spec.padding == ((1, 1), (1, 1))
    assert spec.output_padding == (0, 0)
    assert spec.ndim == 2


def test_padding_forms():
    base = dict(input_shape=(1, 1, 7), out_channels=1, kernel_size=5)
    assert cg.ConvSpec(**base, padding=(2,)).padding == ((2, 2),)
    assert cg.ConvSpec(**base, padding=((1, 3),)).padding == ((1, 3),)
    assert cg.ConvSpec(**base, padding="valid").padding == ((0, 0),)
    assert cg.ConvSpec(**base, padding="same").padding == ((2, 2),)
    assert cg.ConvSpec(**base, padding="full").padding == ((4, 4),)
    # even kernel: the extra pad goes to the high side (SAME_UPPER, PyTorch)
    assert cg.ConvSpec((1, 1, 7), 1, kernel_size=4, padding="same").padding == ((1, 2),)
    # dilation widens "same" and "full"
    assert cg.ConvSpec(**base, padding="full", dilation=2).padding == ((8, 8),)


@pytest.mark.parametrize("size,k,s,d,pad,expected", [
    (7, 5, 1, 1, (0, 0), 3),     # 5-element mask over 7 elements, valid
    (7, 5, 1, 1, (2, 2), 7),     # same
    (5, 3, 1, 1, (0, 0), 3),     # 3x3 over 5x5
    (5, 3, 1, 1, (1, 1), 5),     # padding 1
    (224, 7, 2, 1, (3, 3), 112),  # ResNet-18 conv1
    (56, 1, 2, 1, (0, 0), 28),   # 1x1 stride-2 shortcut
    (10, 3, 1, 4, (0, 0), 2),    # dilation 4: effective kernel 9
    (8, 3, 3, 1, (1, 1), 3),     # floor((8 + 2 - 2 - 1) / 3) + 1
])
def test_output_size_formula(size, k, s, d, pad, expected):
    spec = cg.ConvSpec((1, 1, size), 1, kernel_size=k, stride=s, dilation=d, padding=(pad,))
    assert spec.output_shape == (1, 1, expected)


@pytest.mark.parametrize("size,k,s,d,pad,op,expected", [
    (16, 4, 2, 1, (1, 1), 0, 32),   # DCGAN upsampling
    (5, 3, 2, 1, (1, 1), 1, 10),    # output_padding resolves the ambiguity
    (5, 3, 2, 1, (1, 1), 0, 9),
    (4, 3, 1, 2, (0, 0), 1, 9),     # output_padding < dilation is allowed
    (3, 2, 3, 1, (0, 0), 0, 8),
])
def test_transposed_output_size_formula(size, k, s, d, pad, op, expected):
    spec = cg.ConvSpec((1, 2, size), 3, kernel_size=k, stride=s, dilation=d, padding=(pad,),
                       output_padding=op, transposed=True)
    assert spec.output_shape == (1, 3, expected)
    assert spec.weight_shape == (2, 3, k)


def test_same_keeps_ceil_in_over_stride():
    for size in range(1, 12):
        for stride in (1, 2, 3):
            spec = cg.ConvSpec((1, 1, size), 1, kernel_size=3, stride=stride, padding="same")
            assert spec.output_shape[2] == -(-size // stride)
    spec = cg.ConvSpec((1, 1, 5), 1, kernel_size=4, stride=2, padding="same",
                       transposed=True)
    assert spec.output_shape[2] == 10


def test_weight_and_bias_shapes_follow_pytorch():
    spec = cg.ConvSpec((2, 6, 5, 5), 9, kernel_size=(3, 1), groups=3)
    assert spec.weight_shape == (9, 2, 3, 1)
    assert spec.bias_shape == (9,)
    spec = cg.ConvSpec((2, 6, 5, 5), 9, kernel_size=2, groups=3, transposed=True, bias=False)
    assert spec.weight_shape == (6, 3, 2, 2)
    assert spec.bias_shape is None


def test_flops_and_bytes():
    spec = cg.ConvSpec((1, 64, 56, 56), 64, kernel_size=3, padding=1, bias=False)
    assert spec.flops == 2 * 64 * 56 * 56 * 64 * 9
    assert spec.bytes == 4 * (64 * 56 * 56 * 2 + 64 * 64 * 9)
    dw = cg.ConvSpec((1, 32, 10, 10), 32, kernel_size=3, padding=1, groups=32)
    assert dw.flops == 2 * 32 * 100 * 9


def test_activation_forms_normalize():
    base = dict(input_shape=(1, 1, 5), out_channels=1)
    assert cg.ConvSpec(**base, activation="leaky_relu").activation_args == (0.01,)
    s = cg.ConvSpec(**base, activation=("leaky_relu", 0.2))
    assert (s.activation, s.activation_args) == ("leaky_relu", (0.2,))
    s = cg.ConvSpec(**base, activation="clip", activation_args=(0, 6))
    assert s.activation_args == (0.0, 6.0)
    assert cg.ConvSpec(**base, activation="none").activation is None


def test_dtype_accepts_numpy_dtypes():
    import numpy as np

    assert cg.ConvSpec((1, 1, 5), 1, dtype=np.float64).dtype == "float64"
    assert cg.ConvSpec((1, 1, 5), 1, dtype=np.dtype("float32")).dtype == "float32"


def test_key_is_canonical_and_round_trips():
    a = cg.ConvSpec((1, 3, 8, 8), 4, kernel_size=3, padding=1)
    b = cg.ConvSpec((1, 3, 8, 8), 4, kernel_size=(3, 3), padding=((1, 1), (1, 1)))
    assert a == b and a.key() == b.key() and hash(a) == hash(b)
    assert cg.ConvSpec.from_dict(a.to_dict()) == a
    assert a.key() != a.replace(stride=2).key()
    assert a.replace(activation="relu").activation == "relu"


def test_name_is_readable():
    assert cg.ConvSpec((1, 64, 56, 56), 64).name == "conv2d_n1c64h56w56_k64r3x3"
    assert cg.ConvSpec((1, 8, 100), 4, transposed=True).name == "convT1d_n1c8l100_k4r3"


@pytest.mark.parametrize("field,changes", INVALID_CHANGES)
def test_invalid_spec_names_field_value_and_rule(field, changes):
    kwargs = dict(BASE)
    kwargs.update(changes)
    with pytest.raises(SpecError) as info:
        cg.ConvSpec(**kwargs)
    err = info.value
    assert isinstance(err, ValueError)
    assert err.field == field
    assert field in str(err) and err.rule in str(err)


@given(conv_specs(valid=False))
def test_drawn_invalid_specs_raise(case):
    field, kwargs = case
    with pytest.raises(SpecError, match=field):
        cg.ConvSpec(**kwargs)


@given(conv_specs())
def test_drawn_valid_specs_are_consistent(spec):
    assert all(o >= 1 for o in spec.output_shape)
    assert spec.output_shape[:2] == (spec.batch, spec.out_channels)
    assert cg.ConvSpec.from_dict(spec.to_dict()) == spec
    assert spec.flops > 0


def test_errors_pickle():
    for err in (SpecError("stride", 0, "must be >= 1"),
                ScheduleError("tile_co", 0, "must be >= 1"),
                CompileError("failed", ["cc"], 1, "boom", "/tmp/x.c"),
                cg.SpecFileError("a.toml", "conv[0].stride", 0, "must be >= 1")):
        copy = pickle.loads(pickle.dumps(err))
        assert type(copy) is type(err) and str(copy) == str(err)


def test_schedule_validation_and_default():
    spec = cg.ConvSpec((1, 16, 20, 40), 32, kernel_size=3, padding=1)
    sched = default_w_schedule(spec)  # vectorize="w", output columns in the lanes
    assert sched.vectorize == "w" and sched.tile_spatial == (4, 32)
    # 16 vectors of accumulators: 8 channels x 2 vectors of 16 lanes (AVX-512)
    lanes = cg.cpu.vector_lanes("float32")
    assert sched.tile_co == (8 if 32 // lanes == 2 else 16)
    assert default_w_schedule(spec.replace(stride=2)).tile_co == 16  # gathers shared
    # Winograd F(4x4, 3x3), 28 channels x 1 vector of tiles (see test_winograd.py)
    wino = default_schedule(spec)
    assert wino == default_schedule(spec, "c") == default_schedule(spec, "llvm")
    assert (wino.method, wino.tile_co, wino.tile_spatial) == ("winograd", 28, (4, 4))
    # 3x7 (no Winograd default), and stride 2: vectorized over output channels, 1 vector x
    # 28 columns (clamped to the 20 of a strided row) (transposed: 2 vectors x 12); two
    # rows when the reduction is short (16 x 9 < CO_SHORT_REDUCTION steps)
    co = default_schedule(spec.replace(kernel_size=(3, 7), padding=(1, 3)), "llvm")
    strided = default_schedule(spec.replace(stride=2), "c")
    assert (strided.vectorize, strided.tile_co, strided.tile_spatial) == ("co", lanes, (2, 20))
    deep = default_schedule(spec.replace(input_shape=(1, 32, 20, 40), stride=2), "c")
    assert (deep.vectorize, deep.tile_spatial) == ("co", (1, 20))
    assert co.vectorize == "co" and co.tile_co == lanes and co.tile_spatial == (1, 28)
    up = default_schedule(spec.replace(transposed=True, stride=2), "c")
    assert (up.vectorize, up.tile_co, up.tile_spatial) == ("co", 2 * lanes, (1, 12))
    # few channels per group: columns; transposed: channels, by stride phase (every backend)
    assert default_schedule(spec.replace(out_channels=4)).vectorize == "w"
    assert default_schedule(spec.replace(transposed=True)).vectorize == "co"
    assert default_schedule(spec.replace(transposed=True), "llvm").vectorize == "co"
    assert default_schedule(spec.replace(transposed=True, out_channels=4)).vectorize == "w"
    # large enough to use every core ($CONVGEN_NUM_THREADS); tiny kernels stay on one
    assert sched.threads == 1  # default_w_schedule's own default
    tiny = cg.ConvSpec((1, 4, 8, 8), 4, kernel_size=3, padding=1)
    assert tiny.flops < PARALLEL_FLOPS and default_schedule(tiny).threads == 1  # too small
    big = cg.ConvSpec((1, 64, 56, 56), 64, kernel_size=3, padding=1)
    assert default_schedule(big).threads == cg.config.num_threads()  # every core
    with pytest.raises(ScheduleError):
        cg.Schedule(tile_co=0)
    with pytest.raises(ScheduleError):
        cg.Schedule(tile_spatial=(0, 4))
    with pytest.raises(ScheduleError):
        cg.Schedule(threads=0)
    with pytest.raises(ScheduleError, match="entries"):
        cg.Schedule(tile_spatial=(4,)).resolve(spec)
    with pytest.raises(ScheduleError, match="accumulators"):
        cg.Schedule(tile_co=32, tile_spatial=(20, 40)).resolve(spec)  # 25600 accumulators
    # tiles larger than the dims are clamped
    assert cg.Schedule(tile_co=99, tile_spatial=(99, 4)).resolve(spec) == (32, (20, 4))
    assert cg.Schedule.from_dict(sched.to_dict()) == sched
    assert cg.Schedule.from_dict(co.to_dict()) == co and co.key() != sched.key()
    assert cg.Schedule.from_dict({"tile_co": 8}).vectorize == "w"  # records before "co"
    with pytest.raises(ScheduleError, match="vectorize"):
        cg.Schedule(vectorize="h")
    cg.Schedule(vectorize="co").resolve(spec.replace(transposed=True))  # stride phases
    with pytest.raises(ScheduleError, match="vector accumulators"):
        cg.Schedule(tile_co=64, tile_spatial=(1, 40), vectorize="co").resolve(spec)
    with pytest.raises(ScheduleError, match="vector_width"):
        cg.Schedule(vector_width=8, vectorize="co").resolve(spec)


def test_default_schedule_widens_tiles_for_depthwise():
    lanes = cg.cpu.vector_lanes("float32")
    from convgen.plan.defaults import default_w_schedule

    dw = cg.ConvSpec((1, 144, 56, 56), 144, kernel_size=3, padding=1, groups=144)
    # the default is the staged depthwise plan (tests/test_staged_depthwise.py); the "w"
    # plan's own default, asked for, still widens its tiles for depthwise layers
    assert default_schedule(dw).vectorize == "dw"
    sched = default_w_schedule(dw)
    assert sched.tile_co == 1 and sched.tile_spatial == (8, min(56, 4 * lanes))
    assert sched.resolve(dw)[1] == sched.tile_spatial
