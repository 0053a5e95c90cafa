"""hypothesis strategies shared by every test module: specs, schedules, arrays."""

from __future__ import annotations

import math

from hypothesis import assume
from hypothesis import strategies as st

from convgen import ConvSpec, GpuSchedule, Schedule, ScheduleError, SpecError
from convgen.cpu import vector_lanes
from convgen.plan.gpu import gpu_kinds, make_gpu_plan
from convgen.reference import random_arrays
from convgen.schedule import MAX_TILE_ELEMENTS

MAX_SPATIAL = {1: 12, 2: 7, 3: 5}

ACTIVATION_CHOICES = [
    None, "relu", ("leaky_relu", 0.2), "relu6", ("clip", -0.25, 0.5), "sigmoid", "tanh",
    ("elu", 0.7), "silu", "gelu",
]


@st.composite
def valid_kwargs(draw, ndim: int | None = None) -> dict:
    """Keyword arguments of a valid ConvSpec with small shapes."""
    nd = ndim if ndim is not None else draw(st.integers(1, 3))
    transposed = draw(st.booleans())
    depthwise = draw(st.booleans()) and not transposed and draw(st.booleans())
    if depthwise:
        cin = draw(st.integers(1, 4))
        groups = cin
        cout = cin * draw(st.integers(1, 2))
    else:
        groups = draw(st.sampled_from([1, 1, 2, 3]))
        cin = groups * draw(st.integers(1, 3))
        cout = groups * draw(st.integers(1, 3))
    spatial = tuple(draw(st.integers(1, MAX_SPATIAL[nd])) for _ in range(nd))
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(nd))
    padding_form = draw(st.sampled_from(["int", "tuple", "pairs", "valid", "same", "full"]))
    if padding_form == "int":
        padding = draw(st.integers(0, 2))
    elif padding_form == "tuple":
        padding = tuple(draw(st.integers(0, 2)) for _ in range(nd))
    elif padding_form == "pairs":
        padding = tuple((draw(st.integers(0, 2)), draw(st.integers(0, 2))) for _ in range(nd))
    else:
        padding = padding_form
    kwargs = dict(input_shape=(draw(st.integers(1, 2)), cin, *spatial), out_channels=cout,
                  kernel_size=kernel, stride=stride, dilation=dilation, padding=padding,
                  groups=groups, transposed=transposed, bias=draw(st.booleans()),
                  activation=draw(st.sampled_from(ACTIVATION_CHOICES)), flip=draw(st.booleans()),
                  dtype=draw(st.sampled_from(["float32", "float64"])))
    if transposed:
        assume(padding_form != "full")
        kwargs["output_padding"] = tuple(
            draw(st.integers(0, max(s, d) - 1)) for s, d in zip(stride, dilation))
    else:
        kwargs["padding_mode"] = draw(st.sampled_from(["zeros", "zeros", "reflect", "replicate",
                                                       "circular"]))
    return kwargs


@st.composite
def conv_specs(draw, valid: bool = True, ndim: int | None = None):
    """A valid ConvSpec, or (valid=False) keyword arguments that must raise SpecError."""
    if not valid:
        return draw(invalid_kwargs())
    kwargs = draw(valid_kwargs(ndim))
    try:
        return ConvSpec(**kwargs)
    except SpecError:
        assume(False)  # e.g. reflect padding wider than the input, or an empty output


@st.composite
def schedules(draw, spec: ConvSpec):
    """A legal schedule for ``spec`` (tiles may exceed the dims: they are clamped): either
    plan (vectorize "w" or "co", on every backend)."""
    if draw(st.booleans()):
        return draw(co_schedules(spec))
    cog = spec.out_channels // spec.groups
    tile_co = draw(st.integers(1, cog + 1))
    tiles = []
    for out in spec.output_spatial:
        tiles.append(draw(st.integers(1, out + 1)))
    clamped = min(tile_co, cog) * math.prod(min(t, o) for t, o in
                                            zip(tiles, spec.output_spatial))
    assume(clamped <= MAX_TILE_ELEMENTS)
    return Schedule(tile_co=tile_co, tile_spatial=tuple(tiles),
                    threads=draw(st.sampled_from([1, 1, 2])))


@st.composite
def co_schedules(draw, spec: ConvSpec):
    """A legal vectorize="co" schedule for ``spec`` (transposed or not): 1-3 vectors of
    channels (any tile_co, rounded up to vectors), pieces of any width, any rows."""
    lanes = vector_lanes(spec.dtype)
    tile_co = draw(st.integers(1, 3 * lanes))
    tiles = [draw(st.integers(1, out + 1)) for out in spec.output_spatial]
    schedule = Schedule(tile_co=tile_co, tile_spatial=tuple(tiles),
                        threads=draw(st.sampled_from([1, 1, 2])), vectorize="co")
    try:
        schedule.resolve(spec)
    except ScheduleError:
        assume(False)
    return schedule


@st.composite
def wide_specs(draw, ndim: int | None = None, transposed: bool | None = None):
    """A valid ConvSpec with 16-40 output channels per group: whole vectors of channels
    and remainders (for vectorize="co"); ``transposed`` True/False to require either."""
    spec = draw(conv_specs(ndim=ndim))
    if transposed is not None:
        assume(spec.transposed == transposed)
    per_group = draw(st.sampled_from([16, 17, 24, 32, 40]))
    return spec.replace(out_channels=spec.groups * per_group)


@st.composite
def transposed_specs(draw, ndim: int | None = None):
    """A valid transposed ConvSpec for the stride-phase "co" plan: strides 1-3 (mostly
    > 1), dilation, output_padding, (lo, hi) pairs, groups, flip, odd sizes, every rank,
    and 16-40 output channels per group (whole vectors and remainders)."""
    nd = ndim if ndim is not None else draw(st.integers(1, 3))
    groups = draw(st.sampled_from([1, 1, 2]))
    spatial = tuple(draw(st.integers(1, MAX_SPATIAL[nd])) for _ in range(nd))
    kernel = tuple(draw(st.integers(1, 4)) for _ in range(nd))
    stride = tuple(draw(st.sampled_from([1, 2, 2, 3])) for _ in range(nd))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(nd))
    padding = tuple((draw(st.integers(0, 2)), draw(st.integers(0, 2))) for _ in range(nd))
    output_padding = tuple(draw(st.integers(0, max(s, d) - 1))
                           for s, d in zip(stride, dilation))
    try:
        return ConvSpec(
            input_shape=(draw(st.integers(1, 2)), groups * draw(st.integers(1, 3)), *spatial),
            out_channels=groups * draw(st.sampled_from([16, 17, 24, 32, 40])),
            kernel_size=kernel, stride=stride, dilation=dilation, padding=padding,
            output_padding=output_padding, groups=groups, transposed=True,
            bias=draw(st.booleans()), activation=draw(st.sampled_from(ACTIVATION_CHOICES)),
            flip=draw(st.booleans()), dtype=draw(st.sampled_from(["float32", "float64"])))
    except SpecError:
        assume(False)  # an empty output (padding wider than the transposed extent)


arrays_for = random_arrays  # seeded uniform(-1, 1) x, w, b in the spec's dtype


BASE = dict(input_shape=(1, 4, 6, 6), out_channels=4, kernel_size=3, stride=1, padding=1,
            dilation=1, groups=1)

# Each entry: (field that the error must name, the changes that make BASE invalid).
INVALID_CHANGES = [
    ("input_shape", dict(input_shape=(1, 4))),
    ("input_shape", dict(input_shape=(1, 4, 2, 2, 2, 2))),
    ("input_shape", dict(input_shape=(1, 0, 6, 6))),
    ("input_shape", dict(input_shape=(1, 4, 6.0, 6))),
    ("input_shape", dict(input_shape=(1, 4, -6, 6))),
    ("input_shape", dict(input_shape="1x4x6x6")),
    ("out_channels", dict(out_channels=0)),
    ("out_channels", dict(out_channels=2.5)),
    ("out_channels", dict(out_channels=True)),
    ("kernel_size", dict(kernel_size=0)),
    ("kernel_size", dict(kernel_size=(3, 3, 3))),
    ("kernel_size", dict(kernel_size="3")),
    ("kernel_size", dict(kernel_size=9, padding=0)),
    ("kernel_size", dict(kernel_size=3, padding=0, dilation=4)),
    ("stride", dict(stride=0)),
    ("stride", dict(stride=(1,))),
    ("stride", dict(stride=-1)),
    ("dilation", dict(dilation=0)),
    ("dilation", dict(dilation=(1, 1, 1))),
    ("padding", dict(padding=-1)),
    ("padding", dict(padding=((1, -1), (0, 0)))),
    ("padding", dict(padding="middle")),
    ("padding", dict(padding=(1, 1, 1))),
    ("padding", dict(padding=1.5)),
    ("padding", dict(padding=6, padding_mode="reflect")),
    ("padding", dict(padding=7, padding_mode="circular")),
    ("padding", dict(padding="full", transposed=True)),
    ("padding_mode", dict(padding_mode="mirror")),
    ("padding_mode", dict(padding_mode="reflect", transposed=True)),
    ("groups", dict(groups=3)),
    ("groups", dict(groups=0)),
    ("groups", dict(groups=2, out_channels=5)),
    ("output_padding", dict(output_padding=1)),
    ("output_padding", dict(transposed=True, output_padding=1, stride=1, dilation=1)),
    ("output_padding", dict(transposed=True, output_padding=2, stride=2, dilation=2)),
    ("output_padding", dict(transposed=True, output_padding=-1)),
    ("dtype", dict(dtype="int8")),
    ("dtype", dict(dtype="float16")),
    ("activation", dict(activation="swish")),
    ("activation", dict(activation=3)),
    ("activation_args", dict(activation="relu", activation_args=(1.0,))),
    ("activation_args", dict(activation="clip")),
    ("activation_args", dict(activation=("clip", 1.0, 0.0))),
    ("activation_args", dict(activation=("leaky_relu", float("nan")))),
    ("activation_args", dict(activation=("leaky_relu", "0.1"))),
    ("transposed", dict(transposed=1)),
    ("bias", dict(bias="yes")),
    ("flip", dict(flip=None)),
]


@st.composite
def invalid_kwargs(draw):
    """(field, kwargs) where ConvSpec(**kwargs) must raise SpecError naming ``field``."""
    field, changes = draw(st.sampled_from(INVALID_CHANGES))
    kwargs = dict(BASE)
    kwargs.update(changes)
    return field, kwargs


@st.composite
def gpu_schedules(draw, spec: ConvSpec):
    """A GPU schedule for ``spec`` (backend "cuda") that the planner accepts: any kind the
    spec allows, block and thread tiles of any size (clamped to the spec), staging on or
    off, any chunk of input channels."""
    kind = draw(st.sampled_from(gpu_kinds(spec)))
    if kind == "gemm":
        thread = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
        block = (thread[0] * draw(st.integers(1, 4)), thread[1] * draw(st.integers(1, 8)),
                 draw(st.sampled_from([1, 2, 4, 8, 16])))
        gpu = GpuSchedule(kind=kind, block=block, thread=thread)
    else:
        thread = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
        block = (thread[0] * draw(st.integers(1, 3)),
                 *(draw(st.integers(1, 6)) for _ in range(spec.ndim - 1)),
                 thread[1] * draw(st.integers(1, 4)))
        gpu = GpuSchedule(kind=kind, block=block, thread=thread, stage=draw(st.booleans()),
                          chunk=draw(st.integers(1, 4)))
    schedule = Schedule(gpu=gpu, threads=draw(st.sampled_from([1, 2])))
    try:
        make_gpu_plan(spec, schedule)
    except ScheduleError:
        assume(False)
    return schedule
