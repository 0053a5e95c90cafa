"""Schedule: how to run a convolution, kept apart from what it computes.

A schedule never changes the result: every legal schedule gives the oracle's
answer. :func:`default_schedule` is the untuned fallback for any spec.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any

from convgen import config
from convgen.cpu import vector_lanes
from convgen.errors import ScheduleError
from convgen.dtypes import is_int as _is_int
from convgen.spec import ConvSpec

# Accumulator tile (output channels x output pixels) held on the stack, in elements.
MAX_TILE_ELEMENTS = 4096
MAX_THREADS = 256
# What the SIMD lanes hold: "w" output columns (a row of pixels), "co" output channels,
# "dw" output columns of one channel of a depthwise layer, its input rows staged
# (convgen.plan.staged).
VECTORIZE = ("w", "co", "dw")
# vectorize="co": at most this many vector accumulators (channel vectors x pixels); the
# kernel unrolls them into named variables, so beyond the register file they spill.
MAX_CO_ACCUMULATORS = 64


@dataclass(frozen=True)
class Schedule:
    """Tile sizes over output channels (within a group) and output spatial dims.

    ``tile_spatial`` is None (the planner picks) or one int per spatial dim.
    Tiles larger than the dimension are clamped to it. ``threads`` splits the
    tiles across threads (OpenMP in C, a thread pool over the JIT-compiled
    function in LLVM). ``vector_width`` is the number of SIMD lanes the LLVM
    backend emits explicitly (0: the host's widest registers; C leaves
    vectorization to gcc).

    ``vectorize`` picks the plan. "w": lanes hold output columns, weights are
    broadcast (every backend). "co": lanes hold output channels, weights are packed per
    channel block, input pixels broadcast (every backend, transposed convolutions
    too); ``tile_co`` then rounds up to whole vectors of channels, a job covers the
    tile's rows and ``tile_spatial[-1]`` is the most pixels of a row per register tile
    (a row is split into near-equal pieces; a transposed row with a W stride s first
    into its s stride phases, columns p, p+s, p+2s, ..., so that every tap of a piece is
    useful).

    ``method`` "direct" (the above) or a transform-GEMM plan (:mod:`convgen.plan.winograd`,
    both backends): "winograd" (stride 1, 1D/2D; dilated only with zero padding)
    computes tiles of ``tile_spatial`` outputs per dim (of one dilation phase) with
    Winograd F(m, r) and ``alpha`` GEMMs over channels; "gemm" runs a 1x1 convolution as
    one GEMM over output pixels. ``tile_co``
    is then the GEMM register tile's output channels (at most 30; with 14 or fewer it
    takes two vectors of tiles, else one) and ``vectorize`` stays "w".

    ``tile_co`` has one meaning in every plan: the output channels of one register tile,
    the channels one job computes at a time ("w": channels x the spatial tile's columns;
    "co": rounded up to whole vectors of channels; transform GEMM: the rows of the GEMM
    tile). Each plan clamps it to the channels per group. It stays one field, named as
    before, so that kernel names and tuning records stay valid.

    A schedule may be partial. The fields passed to the constructor (the keys of
    :meth:`from_dict`'s table) are *given* (:attr:`given`); a field left out is not given,
    even though it reads as its dataclass default (detection is by construction, not by
    value: ``Schedule(tile_co=8)`` gives ``tile_co``). ``compile``, ``bind``, the
    functional ops, ``compile_to``, networks' ``schedules=`` and spec files complete the
    rest from the default schedule of the spec (``convgen.compiler.complete_schedule``):

    - ``threads`` not given: the thread count asked (``threads=``), else the default's;
    - the plan kind (``method``, ``vectorize``): when none of ``method``, ``vectorize``,
      ``tile_spatial``, ``vector_width`` is given, the default's; otherwise as given, where
      a ``method`` left out is "direct" and a ``vectorize`` left out is "w" when
      ``tile_spatial`` or ``vector_width`` is given (tiles are written for a plan kind;
      without one named, for the dataclass's), else the direct default's ("co" or "w");
    - every other field not given: from the default schedule of that plan kind at that
      thread count.

    So ``Schedule(threads=1)`` is the default plan on one thread, ``Schedule(tile_co=16)``
    the default plan with 16-channel tiles, ``Schedule(method="direct")`` the default
    direct plan. ``dataclasses.replace`` gives every field (its result is complete, as
    ``convgen.default_schedule``'s and tuning records' are); :meth:`with_fields` keeps a
    partial schedule partial. ``given`` is not part of equality or :meth:`key`.
    """

    tile_co: int = 8
    tile_spatial: tuple[int, ...] | None = None
    threads: int = 1
    vector_width: int = 0
    vectorize: str = "w"
    method: str = "direct"
    # the GPU part of the schedule (backend "cuda"); None: the GPU planner picks. CPU
    # backends refuse a schedule that sets it, the CUDA backend one that sets CPU fields.
    gpu: GpuSchedule | None = None

    def __new__(cls, *args: Any, **kwargs: Any) -> Schedule:
        # the constructor's arguments are the fields given (pickle and copy call
        # __new__ without any, then restore _given with the rest of the state)
        self = super().__new__(cls)
        names = [f.name for f in fields(cls)]
        object.__setattr__(self, "_given", frozenset(names[:len(args)]) | frozenset(kwargs))
        return self

    @property
    def given(self) -> frozenset[str]:
        """The fields given to the constructor; the others are completed from the default
        (see the class docstring)."""
        return self.__dict__.get("_given", SCHEDULE_FIELDS)

    def with_fields(self, **changes: Any) -> Schedule:
        """A copy with ``changes``: the fields given stay given, the changed ones are added
        (unlike ``dataclasses.replace``, whose result gives every field)."""
        kept = {name: getattr(self, name) for name in self.given if name not in changes}
        return type(self)(**kept, **changes)

    def __post_init__(self) -> None:
        if isinstance(self.gpu, dict):
            object.__setattr__(self, "gpu", GpuSchedule.from_dict(self.gpu))
        if self.gpu is not None and not isinstance(self.gpu, GpuSchedule):
            raise ScheduleError("gpu", self.gpu, "must be None or a convgen.GpuSchedule")
        if not _is_int(self.tile_co) or self.tile_co < 1:
            raise ScheduleError("tile_co", self.tile_co, "must be an integer >= 1")
        object.__setattr__(self, "tile_co", int(self.tile_co))
        if self.tile_spatial is not None:
            ts = self.tile_spatial
            if _is_int(ts):
                ts = (ts,)
            if not isinstance(ts, (tuple, list)) or not ts or \
                    not all(_is_int(t) and t >= 1 for t in ts):
                raise ScheduleError("tile_spatial", self.tile_spatial,
                                    "must be None or a tuple of integers >= 1")
            object.__setattr__(self, "tile_spatial", tuple(int(t) for t in ts))
        if not _is_int(self.threads) or not 1 <= self.threads <= MAX_THREADS:
            raise ScheduleError("threads", self.threads,
                                f"must be an integer in [1, {MAX_THREADS}]")
        object.__setattr__(self, "threads", int(self.threads))
        vw = self.vector_width
        if not _is_int(vw) or vw < 0 or vw > 64 or (vw & (vw - 1)):
            raise ScheduleError("vector_width", vw,
                                "must be 0 (host default) or a power of two up to 64")
        object.__setattr__(self, "vector_width", int(vw))
        if self.vectorize not in VECTORIZE:
            raise ScheduleError("vectorize", self.vectorize, f"must be one of {VECTORIZE}")
        if self.method not in METHODS:
            raise ScheduleError("method", self.method, f"must be one of {METHODS}")
        if self.method != "direct" and self.vectorize != "w":
            raise ScheduleError("vectorize", self.vectorize,
                                f"method={self.method!r} has its own layout: leave "
                                "vectorize at 'w'")

    def to_dict(self) -> dict:
        data = asdict(self)
        if data["tile_spatial"] is not None:
            data["tile_spatial"] = list(data["tile_spatial"])
        if data["method"] == "direct":  # keys (kernel names, tuning records) stay as before
            del data["method"]
        if self.gpu is None:  # likewise: CPU schedules' keys do not change
            del data["gpu"]
        else:
            data["gpu"] = self.gpu.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Schedule:
        names = {"tile_co", "tile_spatial", "threads", "vector_width", "vectorize", "method",
                 "gpu"}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ScheduleError(unknown[0], data[unknown[0]],
                                f"is not a Schedule field ({sorted(names)})")
        kwargs = dict(data)
        if isinstance(kwargs.get("tile_spatial"), list):
            kwargs["tile_spatial"] = tuple(kwargs["tile_spatial"])
        return cls(**kwargs)

    def key(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def cpu_fields_set(self) -> list[str]:
        """The CPU fields that differ from their defaults (threads aside): what a GPU plan
        cannot honour."""
        default = Schedule()
        return [name for name in ("tile_co", "tile_spatial", "vector_width", "vectorize",
                                  "method") if getattr(self, name) != getattr(default, name)]

    def resolve(self, spec: ConvSpec) -> tuple[int, tuple[int, ...]]:
        """The effective (tile_co, tile_spatial) for ``spec``, clamped; raises ScheduleError."""
        if self.gpu is not None:
            raise ScheduleError("gpu", self.gpu.to_dict(),
                                "is a GPU schedule: CPU backends ('c', 'llvm') take the CPU "
                                "fields only (use backend='cuda')")
        if self.method != "direct":
            return self._resolve_transform(spec)
        cog = spec.out_channels // spec.groups
        out = spec.output_spatial
        if self.tile_spatial is None:
            spatial = default_tile_spatial(out)
        else:
            if len(self.tile_spatial) != spec.ndim:
                raise ScheduleError("tile_spatial", self.tile_spatial,
                                    f"needs {spec.ndim} entries for a {spec.ndim}D convolution")
            spatial = tuple(min(t, o) for t, o in zip(self.tile_spatial, out))
        tile_co = min(self.tile_co, cog)
        elements = tile_co
        for t in spatial:
            elements *= t
        if elements > MAX_TILE_ELEMENTS:
            raise ScheduleError("tile_spatial", self.tile_spatial,
                                f"tile_co x tile_spatial = {elements} accumulators; "
                                f"at most {MAX_TILE_ELEMENTS} fit the stack tile")
        if self.vectorize == "dw":
            return self._resolve_dw(spec)
        if self.vectorize == "co":
            if self.vector_width:
                raise ScheduleError("vector_width", self.vector_width,
                                    "must be 0 with vectorize='co' (the host's vectors)")
            accumulators = co_vectors(spec, tile_co) * spatial[-1]
            if accumulators > MAX_CO_ACCUMULATORS:
                raise ScheduleError("tile_spatial", self.tile_spatial,
                                    f"vectorize='co': {accumulators} vector accumulators "
                                    f"(channel vectors x pixels); at most "
                                    f"{MAX_CO_ACCUMULATORS}")
        return tile_co, spatial

    def _resolve_dw(self, spec: ConvSpec) -> tuple[int, tuple[int, ...]]:
        """resolve() for vectorize="dw" (convgen.plan.staged): depthwise layers only; the
        register tile is ``tile_spatial[-2]`` output rows (1D: one) x ``tile_spatial[-1]``
        output columns rounded up to whole vectors; a 3D tile's depth is 1 (a job is one
        output plane's band of rows); ``tile_co`` is 1 (a job computes each output
        channel of its input channel in turn)."""
        reason = dw_unsupported(spec)
        if reason is not None:
            raise ScheduleError("vectorize", "dw", reason)
        if self.vector_width:
            raise ScheduleError("vector_width", self.vector_width,
                                "must be 0 with vectorize='dw' (the host's vectors)")
        out = spec.output_spatial
        if self.tile_spatial is None:
            rows, columns = default_dw_tiles(spec)
        else:
            if len(self.tile_spatial) != spec.ndim:
                raise ScheduleError("tile_spatial", self.tile_spatial,
                                    f"needs {spec.ndim} entries for a {spec.ndim}D convolution")
            if spec.ndim == 3 and self.tile_spatial[0] != 1:
                raise ScheduleError("tile_spatial", self.tile_spatial,
                                    "vectorize='dw' computes one output depth at a time: "
                                    "the first entry must be 1")
            rows = self.tile_spatial[-2] if spec.ndim >= 2 else 1
            columns = self.tile_spatial[-1]
        rows = min(rows, out[-2] if spec.ndim >= 2 else 1)
        columns = min(columns, out[-1])
        lanes = vector_lanes(spec.dtype)
        accumulators = rows * -(-columns // lanes)
        if accumulators > MAX_CO_ACCUMULATORS:
            raise ScheduleError("tile_spatial", self.tile_spatial,
                                f"vectorize='dw': {accumulators} vector accumulators "
                                f"(rows x vectors of columns); at most {MAX_CO_ACCUMULATORS}")
        spatial = ((1,) if spec.ndim == 3 else ()) + ((rows,) if spec.ndim >= 2 else ()) \
            + (columns,)
        return 1, spatial

    def _resolve_transform(self, spec: ConvSpec) -> tuple[int, tuple[int, ...]]:
        """resolve() for method "winograd" / "gemm": tile_co is the GEMM register tile's
        output channels (at most MAX_CO_ROWS), tile_spatial the output tile per dim."""
        reason = unsupported(spec, self.method)
        if reason is not None:
            raise ScheduleError("method", self.method, reason)
        if self.vector_width:
            raise ScheduleError("vector_width", self.vector_width,
                                f"must be 0 with method={self.method!r} (the host's vectors)")
        if self.tile_co > MAX_CO_ROWS:
            raise ScheduleError("tile_co", self.tile_co,
                                f"method={self.method!r}: at most {MAX_CO_ROWS} output "
                                "channels per register tile")
        tiles = self.tile_spatial or default_tiles(spec, self.method)
        if len(tiles) != spec.ndim:
            raise ScheduleError("tile_spatial", self.tile_spatial,
                                f"needs {spec.ndim} entries for a {spec.ndim}D convolution")
        reason = check_tiles(spec, self.method, tiles)
        if reason is not None:
            raise ScheduleError("tile_spatial", self.tile_spatial, reason)
        return min(self.tile_co, spec.out_channels // spec.groups), tuple(tiles)


SCHEDULE_FIELDS = frozenset(f.name for f in fields(Schedule))
# what the plan kind depends on: given any of them, the kind is the one written
PLAN_KIND_FIELDS = frozenset({"method", "vectorize", "tile_spatial", "vector_width"})


def check_threads(threads: object, name: str = "threads") -> int | None:
    """An explicit thread count (None: not asked) as an int in [1, MAX_THREADS]: TypeError
    naming ``name`` for a non-integer or a bool, ValueError out of range."""
    if threads is None:
        return None
    value = config.thread_count(threads, name)
    if value > MAX_THREADS:
        raise ValueError(f"{name}: expected an integer in [1, {MAX_THREADS}], got {value}")
    return value


# GPU plan kinds (convgen.plan.gpu): "tiled" direct convolution with the input tile and its
# halo staged in shared memory, "gemm" implicit GEMM, "depthwise"
GPU_KINDS = ("tiled", "gemm", "depthwise")


@dataclass(frozen=True)
class GpuSchedule:
    """How a CUDA kernel runs (backend "cuda"); every field None lets the planner pick.

    ``kind``: "tiled" (a block's input tile plus halo in shared memory, transposed
    convolutions split by stride phase), "gemm" (implicit GEMM: output channels x pixels
    tiles, the im2col patch built in shared memory, double-buffered) or "depthwise" (one
    input channel per group). ``block``: the block's output tile: (output channels,
    *output positions per spatial dim) for "tiled"/"depthwise", (output channels, output
    pixels, reduction chunk) for "gemm". ``thread``: one thread's register tile, (output
    channels, output positions along the last dim) for "tiled"/"depthwise", (output
    channels, pixels) for "gemm". ``stage``: stage the input tile in shared memory
    ("tiled"/"depthwise"; False reads it through the read-only cache). ``chunk``: input
    channels staged per step ("tiled"). The planner (convgen.plan.gpu) checks the
    combination against the spec and the device limits and raises ScheduleError.
    """

    kind: str | None = None
    block: tuple[int, ...] | None = None
    thread: tuple[int, int] | None = None
    stage: bool = True
    chunk: int | None = None

    def __post_init__(self) -> None:
        if self.kind is not None and self.kind not in GPU_KINDS:
            raise ScheduleError("gpu.kind", self.kind, f"must be None or one of {GPU_KINDS}")
        for name, size in (("block", None), ("thread", 2)):
            value = getattr(self, name)
            if value is None:
                continue
            if _is_int(value):
                value = (value,)
            if not isinstance(value, (tuple, list)) or not value or \
                    not all(_is_int(v) and 1 <= v <= 1 << 20 for v in value) or \
                    (size is not None and len(value) != size) or len(value) > 4:
                shape = "two integers" if size else "1 to 4 integers"
                raise ScheduleError(f"gpu.{name}", getattr(self, name),
                                    f"must be None or {shape} in [1, 2**20]")
            object.__setattr__(self, name, tuple(int(v) for v in value))
        if not isinstance(self.stage, bool):
            raise ScheduleError("gpu.stage", self.stage, "must be True or False")
        if self.chunk is not None and (not _is_int(self.chunk) or not 1 <= self.chunk <= 1024):
            raise ScheduleError("gpu.chunk", self.chunk, "must be None or an integer in [1, 1024]")
        if self.chunk is not None:
            object.__setattr__(self, "chunk", int(self.chunk))

    def to_dict(self) -> dict:
        data = asdict(self)
        for name in ("block", "thread"):
            if data[name] is not None:
                data[name] = list(data[name])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GpuSchedule:
        if not isinstance(data, dict):
            raise ScheduleError("gpu", data, "must be a table of GpuSchedule fields")
        names = {"kind", "block", "thread", "stage", "chunk"}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ScheduleError(f"gpu.{unknown[0]}", data[unknown[0]],
                                f"is not a GpuSchedule field ({sorted(names)})")
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**kwargs)


def co_vectors(spec: ConvSpec, tile_co: int) -> int:
    """Vectors of output channels in a vectorize="co" register tile of ``tile_co``."""
    lanes = vector_lanes(spec.dtype)
    return -(-tile_co // lanes)


def default_tile_spatial(out: tuple[int, ...]) -> tuple[int, ...]:
    """Whole rows of up to 32 pixels in the innermost dim, 4 rows in the next."""
    tiles = [1] * len(out)
    tiles[-1] = min(out[-1], 32)
    if len(out) >= 2:
        tiles[-2] = min(out[-2], 4)
    return tuple(tiles)


# vectorize="dw": the default register tile holds about this many vector accumulators
# (rows x vectors), rows of at most DW_MAX_VECTORS vectors (1D: DW_ACCUMULATORS); the
# kernel's weights share the register file with them (convgen.plan.staged.tile_steps).
# Measured on 3x3 to 7x7 layers at strides 1 and 2 (docs/performance.md).
DW_ACCUMULATORS = 8
DW_MAX_VECTORS = 2


def dw_unsupported(spec: ConvSpec) -> str | None:
    """Why ``spec`` cannot run with vectorize="dw" (the staged depthwise plan), or None."""
    if spec.transposed or spec.groups != spec.in_channels:
        return "needs a depthwise convolution (groups == in_channels, not transposed)"
    return None


def default_dw_tiles(spec: ConvSpec) -> tuple[int, int]:
    """(rows, columns) of vectorize="dw"'s default register tile: rows split into
    near-equal pieces of at most DW_MAX_VECTORS vectors (1D: DW_ACCUMULATORS), and
    rows up to DW_ACCUMULATORS accumulators, near-equal tiles of the output's height."""
    out = spec.output_spatial
    lanes = vector_lanes(spec.dtype)
    oh = out[-2] if spec.ndim >= 2 else 1
    total = -(-out[-1] // lanes)
    most = DW_MAX_VECTORS if spec.ndim >= 2 else DW_ACCUMULATORS
    vectors = -(-total // -(-total // most))
    rows = max(1, min(oh, DW_ACCUMULATORS // vectors))
    rows = -(-oh // -(-oh // rows))
    return rows, vectors * lanes


# method 'winograd' / 'gemm': what a schedule may ask for (the planner's tables in
# convgen.plan.winograd)
METHODS = ("direct", "winograd", "gemm")
MAX_ALPHA = 8  # m + r - 1 per dim: beyond this fp32 rounding grows too fast
# Tiles transformed in both dims: at most this many outputs per dim. The transforms'
# rounding does not shrink with the reduction the tolerance scales with; with 1-2 input
# channels F(5x5, 2x2) measured 1.2x, F(7x7, 2x2) 2.3x and F(7x6, 2x3) 1.7x the
# tolerance of convgen.tolerance, F(4x4, 3x3) 0.5x (20 seeds, 32x32 inputs).
MAX_TILE_2D = 4
MAX_CO_ROWS = 30  # output channels per GEMM register tile (times tile vectors + 1 <= 32)


def unsupported(spec: ConvSpec, method: str) -> str | None:
    """Why ``spec`` cannot run with ``method`` ("winograd" or "gemm"), or None."""
    if spec.transposed:
        return "transposed convolutions run with method='direct'"
    if spec.ndim > 2:
        return "3D convolutions run with method='direct'"
    if method == "gemm":
        if any(k != 1 for k in spec.kernel_size):
            return "method='gemm' needs a 1x1 kernel"
        return None
    if any(s != 1 for s in spec.stride):
        return "method='winograd' needs stride 1"
    if any(d != 1 for d in spec.dilation) and spec.padding_mode != "zeros":
        return "method='winograd' with dilation needs padding_mode='zeros'"
    if all(k == 1 for k in spec.kernel_size):
        return "a 1x1 kernel has nothing to transform: use method='gemm'"
    return None


def check_tiles(spec: ConvSpec, method: str, tiles: tuple[int, ...]) -> str | None:
    """Why ``tiles`` (output tile per spatial dim) is illegal for ``method``, or None."""
    for k, m in zip(spec.kernel_size, tiles):
        if method == "gemm" or k == 1:
            if m != 1:
                return "must be 1 in a dim whose kernel size is 1 (nothing to transform)"
        elif m < 2 or m + k - 1 > MAX_ALPHA:
            return (f"Winograd tiles must be >= 2 with tile + kernel - 1 <= {MAX_ALPHA} "
                    f"(kernel {k})")
    both = method == "winograd" and len(tiles) == 2 and all(k > 1 for k in spec.kernel_size)
    if both and max(tiles) > MAX_TILE_2D:
        return (f"a tile transformed in two dims may hold at most {MAX_TILE_2D} outputs per "
                "dim (larger ones round beyond the tolerance with few input channels)")
    return None


def default_tiles(spec: ConvSpec, method: str) -> tuple[int, ...]:
    """F(4, 3)-sized tiles: the largest m <= 4 with alpha <= MAX_ALPHA and m <= the output
    (6 for long 1D rows); 1 where the kernel is 1."""
    tiles = []
    for k, out, d in zip(spec.kernel_size, spec.output_spatial, spec.dilation):
        if method == "gemm" or k == 1:
            tiles.append(1)
            continue
        want = 6 if spec.ndim == 1 else 4
        m = max(2, min(want, MAX_ALPHA + 1 - k, -(-out // d)))
        tiles.append(m)
    return tuple(tiles)
