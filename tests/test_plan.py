"""The planner's index tables and constants. No compiler needed."""

from __future__ import annotations

import pytest

import convgen as cg
from convgen.plan.core import index_table, make_plan

from helpers import check_kernel


def table(**kwargs):
    return index_table(cg.ConvSpec(**kwargs), 0)


def test_zero_padding_marks_outside_taps():
    assert table(input_shape=(1, 1, 5), out_channels=1, kernel_size=3, padding=1) == [
        [-1, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 4], [3, 4, -1]]


@pytest.mark.parametrize("mode,expected_first,expected_last", [
    ("reflect", [2, 1, 0, 1, 2], [2, 3, 4, 3, 2]),       # d c b | a b c d e | d c b
    ("replicate", [0, 0, 0, 1, 2], [2, 3, 4, 4, 4]),
    ("circular", [3, 4, 0, 1, 2], [2, 3, 4, 0, 1]),
])
def test_padding_modes(mode, expected_first, expected_last):
    t = table(input_shape=(1, 1, 5), out_channels=1, kernel_size=5, padding=2,
              padding_mode=mode)
    assert t[0] == expected_first
    assert t[-1] == expected_last


def test_stride_dilation_flip():
    t = table(input_shape=(1, 1, 9), out_channels=1, kernel_size=3, stride=2, dilation=3)
    assert t == [[0, 3, 6], [2, 5, 8]]
    t = table(input_shape=(1, 1, 9), out_channels=1, kernel_size=3, stride=2, dilation=3,
              flip=True)
    assert t == [[6, 3, 0], [8, 5, 2]]


def test_transposed_taps_between_samples_are_skipped():
    # out[o] = sum over i, k with i*2 + k = o + 1 (stride 2, pad 1, k=3)
    t = table(input_shape=(1, 1, 3), out_channels=1, kernel_size=3, stride=2, padding=1,
              transposed=True)
    assert len(t) == 5
    assert t == [[-1, 0, -1], [1, -1, 0], [-1, 1, -1], [2, -1, 1], [-1, 2, -1]]


def test_plan_lowers_to_3d_and_clamps_tiles():
    spec = cg.ConvSpec((2, 6, 10), 4, kernel_size=3, groups=2, padding=1)
    plan = make_plan(spec, cg.Schedule(tile_co=5, tile_spatial=(4,)))
    assert plan.in_size == (1, 1, 10) and plan.out_size == (1, 1, 10)
    assert plan.kernel == (1, 1, 3)
    assert plan.tile_co == 2 and plan.tile == (1, 1, 4) and plan.tile_spatial == (4,)
    assert plan.n_tiles == (1, 1, 1, 3)
    assert plan.jobs == 2 * 2 * 3
    assert plan.cin_g == 3 and plan.cout_g == 2
    assert plan.symbol.startswith("convgen_conv1d_n2c6l10_k4r3_")


def test_weight_strides_follow_layouts():
    fwd = make_plan(cg.ConvSpec((1, 4, 5, 5), 6, kernel_size=3, groups=2))
    assert fwd.weight_strides == (3 * 2 * 9, 2 * 9, 9, 9, 3, 1)
    tr = make_plan(cg.ConvSpec((1, 4, 5, 5), 6, kernel_size=3, groups=2, transposed=True))
    assert tr.weight_strides == (2 * 3 * 9, 9, 3 * 9, 9, 3, 1)


def test_symbol_depends_on_spec_and_schedule():
    spec = cg.ConvSpec((1, 4, 5, 5), 6)
    a = make_plan(spec, cg.Schedule(tile_co=2)).symbol
    b = make_plan(spec, cg.Schedule(tile_co=3)).symbol
    c = make_plan(spec.replace(stride=2), cg.Schedule(tile_co=2)).symbol
    assert len({a, b, c}) == 3


def test_transposed_stride_visits_columns_phase_by_phase():
    """Within a stride phase a transposed tap reads consecutive inputs: vector loads."""
    from convgen.plan.core import VEC_GATHER, vector_tables

    spec = cg.ConvSpec((1, 4, 16, 16), 4, kernel_size=4, stride=2, padding=1, transposed=True)
    tables = vector_tables(make_plan(spec, cg.Schedule(tile_spatial=(1, 32), vector_width=16)))
    assert tables.out_columns[0][:32] == list(range(0, 32, 2)) + list(range(1, 32, 2))
    modes = {m for tile in tables.modes for row in tile for m in row}
    assert VEC_GATHER not in modes  # loads, masked loads or nothing to add
    plain = vector_tables(make_plan(spec.replace(transposed=False, stride=1, padding=1)))
    assert plain.out_columns is None


def test_describe_plan_counts_reads_and_names_the_tiles():
    from convgen.plan.core import describe_plan

    spec = cg.ConvSpec((1, 8, 12, 40), 12, kernel_size=3, padding=1)
    lines = describe_plan(make_plan(spec, cg.Schedule(tile_co=4, tile_spatial=(2, 32),
                                                      vector_width=16)))
    text = "\n".join(lines)
    assert "direct convolution" in text
    assert "4 output channels x 2 vector(s) of 16 float lanes = 8 vector accumulators" in text
    assert "jobs: batch 1 x groups 1 x channel tiles 3 x D/H/W tiles 1x6x2 = 36" in text
    # 2 W tiles x 3 taps x 2 vectors = 12 reads: interior loads, masked borders, skips
    assert "0 gathers" in text and "vector loads" in text and "masked loads" in text
    strided = describe_plan(make_plan(spec.replace(stride=2)))
    assert "gathers" in strided[-1] and " 0 gathers" not in strided[-1]
    assert "depthwise" not in text
    depthwise = cg.ConvSpec((1, 8, 12, 40), 8, kernel_size=3, padding=1, groups=8)
    assert "depthwise: one input channel per output channel" in describe_plan(
        make_plan(depthwise, cg.Schedule(vectorize="w")))[-1]
    # the default for depthwise layers: the staged depthwise plan (convgen.plan.staged)
    staged = "\n".join(describe_plan(make_plan(depthwise)))
    assert "vectorize='dw'" in staged and "input rows staged" in staged
    assert "jobs: batch 1 x input channels 8 x output depth 1" in staged


def test_co_plan_splits_rows_into_pieces_and_shares_bodies():
    from convgen.plan.core import describe_plan

    spec = cg.ConvSpec((1, 8, 12, 56), 40, kernel_size=3, padding=1)
    plan = make_plan(spec, cg.Schedule(tile_co=32, tile_spatial=(1, 14), vectorize="co"))
    co = plan.kind
    lanes = plan.vector_lanes
    assert plan.kind.label == "co" and co.co_vectors == -(-32 // lanes)
    assert plan.tile_co == co.co_vectors * lanes  # whole vectors of channels
    assert [(p.ow0, p.size) for p in co.pieces] == [(0, 14), (14, 14), (28, 14), (42, 14)]
    # left border, interior (shared by the two middle pieces), right border
    assert [p.cls for p in co.pieces] == [0, 1, 1, 2] and len(co.classes) == 3
    left, interior, right = co.classes
    assert [px for px, _ in left.taps[0].pixels] == list(range(1, 14))  # column -1 skipped
    assert [off for _, off in interior.taps[0].pixels] == list(range(14))
    assert [px for px, _ in right.taps[2].pixels] == list(range(13))  # column 56 skipped
    assert all(p.base >= 0 for p in co.pieces)
    assert plan.n_tiles == (-(-40 // plan.tile_co), 1, 12, 4)
    assert co.pack_elements == 8 * 9 * plan.tile_co
    text = "\n".join(describe_plan(plan))
    assert "vectorize='co'" in text and "4 piece(s) of 14" in text and "no gathers" in text


def test_co_plan_balances_pieces_and_reads_strided_columns():
    spec = cg.ConvSpec((1, 3, 9, 35), 16, kernel_size=3, stride=2, padding=1)  # 18 columns
    plan = make_plan(spec, cg.Schedule(tile_co=16, tile_spatial=(1, 14), vectorize="co"))
    assert [p.size for p in plan.kind.pieces] == [9, 9]
    tap = plan.kind.classes[plan.kind.pieces[1].cls].taps[1]
    offsets = [off for _, off in tap.pixels]
    assert offsets == [offsets[0] + 2 * i for i in range(9)]  # stride 2: broadcasts, no gather


def test_transposed_co_plan_splits_rows_by_stride_phase():
    """vectorize="co" on a transposed convolution: a row's pieces hold the columns of one
    stride phase, every tap a piece runs reads an input for all its interior columns, the
    taps of the other phase are absent, and each output row lists only its useful taps."""
    from convgen.plan.core import describe_plan

    spec = cg.ConvSpec((2, 8, 16, 16), 40, kernel_size=4, stride=2, padding=1, transposed=True)
    plan = make_plan(spec, cg.Schedule(tile_co=32, tile_spatial=(1, 12), vectorize="co"))
    co = plan.kind
    assert co.step == 2 and co.block_outer
    # 32 columns: phase 0 (0, 2, ..., 30) and phase 1, 16 columns each, in pieces of 8
    assert [(p.ow0, p.size) for p in co.pieces] == [(0, 8), (16, 8), (1, 8), (17, 8)]
    for piece in co.pieces:
        used = {t.kw for t in co.classes[piece.cls].taps if t.pixels}
        assert used == ({1, 3} if piece.ow0 % 2 == 0 else {0, 2})  # (o + 1 - kw) even
        for tap in co.classes[piece.cls].taps:
            offsets = [off for _, off in tap.pixels]
            assert offsets == list(range(offsets[0], offsets[0] + len(offsets))) \
                if offsets else tap.kw not in used  # consecutive inputs, or a skipped tap
    # interior rows: 2 of the 4 kh taps; the first and last rows: 1
    assert [len(r) for r in co.row_taps] == [1] + [2] * 30 + [1]
    # transposed weight (C_in, C_out/groups, kh, kw): one packed run of 16 taps per ci
    assert (co.pack_segments, co.pack_run, co.pack_segment_stride) == (8, 16, 40 * 16)
    text = "\n".join(describe_plan(plan))
    assert "split by stride phase" in text and "2 phase(s)" in text
    assert "channel blocks 2 x batch 2" in text  # the block outermost: packed once


def test_transposed_co_plan_with_unit_stride_is_contiguous():
    spec = cg.ConvSpec((1, 3, 9), 16, kernel_size=3, padding=1, transposed=True)
    co = make_plan(spec, cg.Schedule(tile_co=16, tile_spatial=(5,), vectorize="co")).kind
    assert co.step == 1 and [(p.ow0, p.size) for p in co.pieces] == [(0, 5), (5, 4)]


def test_omp_schedule_deals_jobs_in_chunks(monkeypatch):
    """Jobs go out first come first served, about DYNAMIC_CHUNKS chunks per thread."""
    from convgen.plan import base

    assert base.omp_schedule(49, 2) == "dynamic, 6"
    assert base.omp_schedule(13, 2) == "dynamic, 1"
    assert base.omp_schedule(1, 4) == "dynamic, 1"
    spec = cg.ConvSpec((1, 8, 24, 24), 16, 1, stride=2)  # 144 pixels: 9 blocks of 16
    schedule = cg.Schedule(tile_co=16, threads=2, method="gemm")
    assert "schedule(dynamic, 1)" in cg.compile(spec, backend="c", schedule=schedule).source
    monkeypatch.setattr(base, "DYNAMIC_CHUNKS", 0)
    assert base.omp_schedule(49, 2) == "static"
    kernel = cg.compile(spec, backend="c", schedule=schedule)
    assert "schedule(dynamic" not in kernel.source
    check_kernel(kernel, spec)
