"""The oracle checked against independent implementations.

Independent means: scipy.signal for single-channel cases, numbers worked by hand from
teaching material (written out below, never computed by the oracle), brute-force loops in
pure Python (including their own padding index maths and output sizes), the adjoint
identity between convolution and transposed convolution, and PyTorch when installed.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import scipy.signal
import scipy.special
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from convgen.errors import SpecError
from convgen.reference import apply_activation, reference
from convgen.spec import ACTIVATIONS, ConvSpec

RNG = np.random.default_rng(1234)


def _arrays(spec: ConvSpec, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(spec.input_shape)
    w = rng.standard_normal(spec.weight_shape)
    b = rng.standard_normal(spec.out_channels) if spec.bias else None
    return x, w, b


def _spec(shape, cout=1, k=3, **kw) -> ConvSpec:
    kw.setdefault("bias", False)
    kw.setdefault("dtype", "float64")
    return ConvSpec(input_shape=shape, out_channels=cout, kernel_size=k, **kw)


# -- brute force, pure Python loops ---------------------------------------------------

def _source_index(i: int, n: int, mode: str) -> int | None:
    """Where padded position i (relative to the unpadded signal) reads from, or None (zero)."""
    if 0 <= i < n:
        return i
    if mode == "zeros":
        return None
    if mode == "reflect":  # mirror about the edge samples, which are not repeated
        return -i if i < 0 else 2 * (n - 1) - i
    if mode == "replicate":
        return 0 if i < 0 else n - 1
    if mode == "circular":
        return i % n
    raise AssertionError(mode)


def _brute_conv(x, w, b, stride, pads, dilation, groups, mode="zeros", flip=False):
    """Forward convolution by the definition, one multiply-add at a time."""
    n_batch = x.shape[0]
    insp = x.shape[2:]
    cout, cig = w.shape[:2]
    ksz = w.shape[2:]
    cog = cout // groups
    out = []
    for size, (lo, hi), k, s, d in zip(insp, pads, ksz, stride, dilation):
        o = 0
        while o * s + d * (k - 1) < size + lo + hi:
            o += 1
        out.append(o)
    y = np.zeros((n_batch, cout, *out))
    for n, co in itertools.product(range(n_batch), range(cout)):
        g = co // cog
        for opos in itertools.product(*(range(o) for o in out)):
            acc = 0.0 if b is None else float(b[co])
            for ci in range(cig):
                for tap in itertools.product(*(range(k) for k in ksz)):
                    src = []
                    for o, t, s, d, (lo, _), size in zip(opos, tap, stride, dilation, pads, insp):
                        src.append(_source_index(o * s + t * d - lo, size, mode))
                    if None in src:
                        continue
                    wtap = tuple(k - 1 - t for k, t in zip(ksz, tap)) if flip else tap
                    acc += x[(n, g * cig + ci, *src)] * w[(co, ci, *wtap)]
            y[(n, co, *opos)] = acc
    return y


def _brute_conv_transposed(x, w, b, stride, pads, dilation, groups, output_padding,
                           flip=False):
    """Transposed convolution as a scatter, one multiply-add at a time, then a crop."""
    n_batch, cin = x.shape[:2]
    insp = x.shape[2:]
    cog = w.shape[1]
    ksz = w.shape[2:]
    cig = cin // groups
    full = [(i - 1) * s + d * (k - 1) + 1 + op
            for i, s, d, k, op in zip(insp, stride, dilation, ksz, output_padding)]
    y = np.zeros((n_batch, cog * groups, *full))
    for n, ci in itertools.product(range(n_batch), range(cin)):
        g = ci // cig
        for ipos in itertools.product(*(range(i) for i in insp)):
            for co in range(cog):
                for tap in itertools.product(*(range(k) for k in ksz)):
                    wtap = tuple(k - 1 - t for k, t in zip(ksz, tap)) if flip else tap
                    dst = tuple(i * s + t * d for i, t, s, d in zip(ipos, tap, stride, dilation))
                    y[(n, g * cog + co, *dst)] += x[(n, ci, *ipos)] * w[(ci, co, *wtap)]
    crop = tuple(slice(lo, f - hi) for (lo, hi), f in zip(pads, full))
    y = y[(slice(None), slice(None), *crop)]
    if b is not None:
        y = y + np.asarray(b).reshape((1, -1) + (1,) * len(insp))
    return y


def _brute(spec: ConvSpec, x, w, b):
    if spec.transposed:
        return _brute_conv_transposed(x, w, b, spec.stride, spec.padding, spec.dilation,
                                      spec.groups, spec.output_padding, spec.flip)
    return _brute_conv(x, w, b, spec.stride, spec.padding, spec.dilation, spec.groups,
                       spec.padding_mode, spec.flip)


# -- scipy.signal, single channel ------------------------------------------------------

@pytest.mark.parametrize("mode", ["valid", "same", "full"])
@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("seed", range(4))
def test_1d_matches_scipy(mode, flip, seed):
    rng = np.random.default_rng(seed)
    length = int(rng.integers(5, 30))
    k = int(rng.choice([1, 3, 5, 7])) if mode == "same" else int(rng.integers(1, 6))
    x = rng.standard_normal(length)
    w = rng.standard_normal(k)
    spec = _spec((1, 1, length), k=k, padding=mode, flip=flip)
    fn = scipy.signal.convolve if flip else scipy.signal.correlate
    expected = fn(x, w, mode=mode, method="direct")
    y = reference(spec, x.reshape(1, 1, -1), w.reshape(1, 1, -1))
    assert y.shape == (1, 1, expected.size)
    np.testing.assert_allclose(y[0, 0], expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", ["valid", "same", "full"])
@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("seed", range(3))
def test_2d_matches_scipy(mode, flip, seed):
    rng = np.random.default_rng(100 + seed)
    h, wd = (int(v) for v in rng.integers(5, 16, size=2))
    if mode == "same":
        k = tuple(int(v) for v in rng.choice([1, 3, 5], size=2))
    else:
        k = tuple(int(v) for v in rng.integers(1, 5, size=2))
    x = rng.standard_normal((h, wd))
    w = rng.standard_normal(k)
    spec = _spec((1, 1, h, wd), k=k, padding=mode, flip=flip)
    fn = scipy.signal.convolve if flip else scipy.signal.correlate
    expected = fn(x, w, mode=mode, method="direct")
    y = reference(spec, x[None, None], w[None, None])
    assert y.shape[2:] == expected.shape
    np.testing.assert_allclose(y[0, 0], expected, rtol=1e-12, atol=1e-12)


# -- hand-worked examples ---------------------------------------------------------------

PMPP_N = [1, 2, 3, 4, 5, 6, 7]
PMPP_M = [3, 4, 5, 4, 3]


def test_pmpp_1d_mask_same_with_ghost_cells():
    # Kirk & Hwu, PMPP ch. 7: P[i] = sum_j N[i - 2 + j] * M[j], ghost cells are 0.
    # P[0] = 0*3 + 0*4 + 1*5 + 2*4 + 3*3 = 22;  P[2] = 1*3 + 2*4 + 3*5 + 4*4 + 5*3 = 57
    # P[6] = 5*3 + 6*4 + 7*5 + 0*4 + 0*3 = 74
    expected = [22, 38, 57, 76, 95, 90, 74]
    spec = _spec((1, 1, 7), k=5, padding="same")
    assert spec.padding == ((2, 2),)
    y = reference(spec, np.array(PMPP_N, float).reshape(1, 1, 7),
                  np.array(PMPP_M, float).reshape(1, 1, 5))
    np.testing.assert_array_equal(y[0, 0], expected)
    # the mask is symmetric, so flipping it changes nothing
    y_flip = reference(spec.replace(flip=True), np.array(PMPP_N, float).reshape(1, 1, 7),
                       np.array(PMPP_M, float).reshape(1, 1, 5))
    np.testing.assert_array_equal(y_flip[0, 0], expected)


def test_pmpp_1d_mask_valid():
    spec = _spec((1, 1, 7), k=5, padding="valid")
    y = reference(spec, np.array(PMPP_N, float).reshape(1, 1, 7),
                  np.array(PMPP_M, float).reshape(1, 1, 5))
    np.testing.assert_array_equal(y[0, 0], [57, 76, 95])


def test_flip_asymmetric_1d_by_hand():
    x = np.array([1.0, 2.0, 3.0, 4.0]).reshape(1, 1, 4)
    w = np.array([1.0, 0.0, -1.0]).reshape(1, 1, 3)
    # correlation: x[j] - x[j+2];  convolution: x[j+2] - x[j]
    np.testing.assert_array_equal(reference(_spec((1, 1, 4)), x, w)[0, 0], [-2, -2])
    np.testing.assert_array_equal(reference(_spec((1, 1, 4), flip=True), x, w)[0, 0], [2, 2])
    # full: [1, 2, 3] * [1, 10] = [1, 12, 23, 30] (convolution), [10, 21, 32, 3] (correlation)
    x = np.array([1.0, 2.0, 3.0]).reshape(1, 1, 3)
    w = np.array([1.0, 10.0]).reshape(1, 1, 2)
    conv = reference(_spec((1, 1, 3), k=2, padding="full", flip=True), x, w)
    corr = reference(_spec((1, 1, 3), k=2, padding="full"), x, w)
    np.testing.assert_array_equal(conv[0, 0], [1, 12, 23, 30])
    np.testing.assert_array_equal(corr[0, 0], [10, 21, 32, 3])


# Dumoulin & Visin, "A guide to convolution arithmetic for deep learning", figure 1.1.
IMAGE_5X5 = np.array([
    [3, 3, 2, 1, 0],
    [0, 0, 1, 3, 1],
    [3, 1, 2, 2, 3],
    [2, 0, 0, 2, 2],
    [2, 0, 0, 0, 1],
], dtype=float)


def test_3x3_kernel_over_5x5_image():
    kernel = np.array([[0, 1, 2], [2, 2, 0], [0, 1, 2]], dtype=float)
    expected = [[12, 12, 17], [10, 17, 19], [9, 6, 14]]
    y = reference(_spec((1, 1, 5, 5)), IMAGE_5X5[None, None], kernel[None, None])
    assert y.shape == (1, 1, 3, 3)
    np.testing.assert_array_equal(y[0, 0], expected)


def test_padding_1_keeps_5x5_box_sum():
    # 3x3 box sums with a zero border, worked row sums first, then column sums.
    expected = [
        [6, 9, 10, 8, 5],
        [10, 15, 15, 15, 10],
        [6, 9, 11, 16, 13],
        [8, 10, 7, 12, 10],
        [4, 4, 2, 5, 5],
    ]
    ones = np.ones((1, 1, 3, 3))
    y = reference(_spec((1, 1, 5, 5), padding=1), IMAGE_5X5[None, None], ones)
    assert y.shape == (1, 1, 5, 5)
    np.testing.assert_array_equal(y[0, 0], expected)
    # stride 2 samples the same windows at rows and columns 0, 2, 4 (3x3 output)
    y2 = reference(_spec((1, 1, 5, 5), padding=1, stride=2), IMAGE_5X5[None, None], ones)
    np.testing.assert_array_equal(y2[0, 0], [[6, 10, 5], [6, 11, 13], [4, 2, 5]])


def test_rgb_input_filter_bank_of_two():
    red = [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
    green = [[1, 0, 1], [0, 1, 0], [1, 0, 1]]
    blue = [[2, 2, 2], [2, 2, 2], [2, 2, 2]]
    x = np.array([[red, green, blue]], dtype=float)  # (1, 3, 3, 3)
    w = np.array([
        [[[1, 0], [0, 1]], [[1, 1], [1, 1]], [[0, 0], [0, -1]]],  # R diag, G box, B -corner
        [[[1, 1], [1, 1]], [[0, 0], [0, 0]], [[1, 0], [0, 0]]],   # R box, B top-left
    ], dtype=float)  # (2, 3, 2, 2)
    b = np.array([0.5, -1.0])
    spec = _spec((1, 3, 3, 3), cout=2, k=2, bias=True)
    y = reference(spec, x, w, b)
    assert y.shape == (1, 2, 2, 2)
    # filter 0 at (0, 0): R 1+5, G 1+0+0+1, B -2, bias 0.5 -> 6.5
    # filter 1 at (1, 1): R 5+6+8+9, B 2, bias -1 -> 29
    expected = [
        [[6 + 2 - 2 + 0.5, 8 + 2 - 2 + 0.5], [12 + 2 - 2 + 0.5, 14 + 2 - 2 + 0.5]],
        [[12 + 2 - 1, 16 + 2 - 1], [24 + 2 - 1, 28 + 2 - 1]],
    ]
    np.testing.assert_array_equal(y[0], expected)


def test_stride_and_dilation_1d_by_hand():
    x = np.arange(1.0, 9.0).reshape(1, 1, 8)  # 1..8
    w = np.array([1.0, 2.0]).reshape(1, 1, 2)
    # taps 3 apart, windows 2 apart: y[j] = x[2j] + 2 * x[2j + 3]
    spec = _spec((1, 1, 8), k=2, stride=2, dilation=3)
    assert spec.output_shape == (1, 1, 3)
    np.testing.assert_array_equal(reference(spec, x, w)[0, 0], [9, 15, 21])


# -- padding modes ----------------------------------------------------------------------

IDENTITY_1 = np.ones((1, 1, 1))


@pytest.mark.parametrize("mode, pads, expected", [
    ("zeros", (2, 2), [0, 0, 1, 2, 3, 4, 5, 0, 0]),
    ("reflect", (2, 2), [3, 2, 1, 2, 3, 4, 5, 4, 3]),
    ("replicate", (2, 2), [1, 1, 1, 2, 3, 4, 5, 5, 5]),
    ("circular", (2, 2), [4, 5, 1, 2, 3, 4, 5, 1, 2]),
    ("reflect", (1, 3), [2, 1, 2, 3, 4, 5, 4, 3, 2]),
    ("replicate", (1, 3), [1, 1, 2, 3, 4, 5, 5, 5, 5]),
    ("circular", (1, 3), [5, 1, 2, 3, 4, 5, 1, 2, 3]),
    ("circular", (5, 0), [1, 2, 3, 4, 5, 1, 2, 3, 4, 5]),
])
def test_padding_modes_1d_by_hand(mode, pads, expected):
    # a 1-tap kernel of weight 1 returns the padded signal itself
    spec = _spec((1, 1, 5), k=1, padding=(pads,), padding_mode=mode)
    y = reference(spec, np.arange(1.0, 6.0).reshape(1, 1, 5), IDENTITY_1)
    np.testing.assert_array_equal(y[0, 0], expected)


@pytest.mark.parametrize("mode, expected", [
    ("reflect", [[5, 4, 5, 6, 5], [2, 1, 2, 3, 2], [5, 4, 5, 6, 5],
                 [8, 7, 8, 9, 8], [5, 4, 5, 6, 5]]),
    ("replicate", [[1, 1, 2, 3, 3], [1, 1, 2, 3, 3], [4, 4, 5, 6, 6],
                   [7, 7, 8, 9, 9], [7, 7, 8, 9, 9]]),
    ("circular", [[9, 7, 8, 9, 7], [3, 1, 2, 3, 1], [6, 4, 5, 6, 4],
                  [9, 7, 8, 9, 7], [3, 1, 2, 3, 1]]),
])
def test_padding_modes_2d_corners_by_hand(mode, expected):
    x = np.arange(1.0, 10.0).reshape(1, 1, 3, 3)
    spec = _spec((1, 1, 3, 3), k=1, padding=1, padding_mode=mode)
    y = reference(spec, x, np.ones((1, 1, 1, 1)))
    np.testing.assert_array_equal(y[0, 0], expected)


@pytest.mark.parametrize("mode", ["zeros", "reflect", "replicate", "circular"])
def test_padding_modes_with_kernel_match_brute_force(mode):
    spec = _spec((2, 3, 6, 5), cout=4, k=(3, 2), padding=((2, 1), (1, 1)),
                 padding_mode=mode, stride=(1, 2), dilation=(2, 1), bias=True)
    x, w, b = _arrays(spec, 7)
    y = reference(spec, x, w, b)
    expected = _brute(spec, x, w, b)
    assert y.shape == expected.shape == spec.output_shape
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)


# -- stride, dilation, groups ------------------------------------------------------------

@pytest.mark.parametrize("kw", [
    dict(shape=(1, 2, 9, 8), cout=3, k=3, stride=2),
    dict(shape=(1, 2, 9, 8), cout=3, k=(3, 2), stride=(3, 1), dilation=(1, 3), padding=1),
    dict(shape=(2, 4, 7, 7), cout=6, k=3, groups=2, padding=1),
    dict(shape=(1, 6, 7), cout=3, k=2, groups=3, dilation=2, padding=((0, 3),)),
    dict(shape=(1, 4, 6, 6), cout=8, k=3, groups=4, stride=2, padding="same"),
    dict(shape=(1, 4, 6, 6), cout=4, k=2, padding="same"),  # even kernel: extra pad at hi
])
def test_stride_dilation_groups_match_brute_force(kw):
    kw = dict(kw)
    spec = _spec(kw.pop("shape"), kw.pop("cout"), kw.pop("k"), bias=True, **kw)
    x, w, b = _arrays(spec, 3)
    y = reference(spec, x, w, b)
    expected = _brute(spec, x, w, b)
    assert y.shape == expected.shape == spec.output_shape
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)


def test_depthwise_is_per_channel_scipy_correlation():
    c = 5
    spec = _spec((1, c, 8, 9), cout=c, k=3, groups=c, padding="same")
    x, w, _ = _arrays(spec, 11)
    y = reference(spec, x, w)
    for ch in range(c):
        expected = scipy.signal.correlate(x[0, ch], w[ch, 0], mode="same", method="direct")
        np.testing.assert_allclose(y[0, ch], expected, rtol=1e-12, atol=1e-12)


def test_groups_equal_separate_convolutions():
    spec = _spec((2, 6, 7, 7), cout=4, k=3, groups=2, padding=1)
    x, w, _ = _arrays(spec, 5)
    y = reference(spec, x, w)
    half = _spec((2, 3, 7, 7), cout=2, k=3, padding=1)
    np.testing.assert_allclose(y[:, :2], reference(half, x[:, :3], w[:2]), rtol=1e-13)
    np.testing.assert_allclose(y[:, 2:], reference(half, x[:, 3:], w[2:]), rtol=1e-13)
    # and the sum over input channels is really there: zeroing group 1's input leaves it 0
    x0 = x.copy()
    x0[:, 3:] = 0
    assert np.all(reference(spec, x0, w)[:, 2:] == 0)


# -- flip -----------------------------------------------------------------------------------

@pytest.mark.parametrize("transposed", [False, True])
def test_flip_equals_reversed_kernel(transposed):
    extra = dict(stride=2, output_padding=1) if transposed else dict(padding=1)
    spec = _spec((1, 2, 5, 6), cout=4, k=(3, 2), groups=2, transposed=transposed, **extra)
    x, w, _ = _arrays(spec, 9)
    flipped = reference(spec.replace(flip=True), x, w)
    np.testing.assert_allclose(flipped, reference(spec, x, w[:, :, ::-1, ::-1]), rtol=1e-13)
    assert not np.allclose(flipped, reference(spec, x, w))


# -- transposed convolution ---------------------------------------------------------------

def test_transposed_1d_by_hand():
    x = np.array([1.0, 2.0, 3.0]).reshape(1, 1, 3)
    w = np.array([1.0, 10.0]).reshape(1, 1, 2)
    # stride 2: each input writes [v, 10 v] at 2i, the copies do not overlap
    y = reference(_spec((1, 1, 3), k=2, stride=2, transposed=True), x, w)
    np.testing.assert_array_equal(y[0, 0], [1, 10, 2, 20, 3, 30])
    y = reference(_spec((1, 1, 3), k=2, stride=2, padding=1, transposed=True), x, w)
    np.testing.assert_array_equal(y[0, 0], [10, 2, 20, 3])
    # stride 1 overlaps them: the full mathematical convolution
    y = reference(_spec((1, 1, 3), k=2, transposed=True), x, w)
    np.testing.assert_array_equal(y[0, 0], [1, 12, 23, 30])
    # output_padding appends at the high end (zero here: nothing lands there)
    y = reference(_spec((1, 1, 3), k=2, stride=2, output_padding=1, transposed=True), x, w)
    np.testing.assert_array_equal(y[0, 0], [1, 10, 2, 20, 3, 30, 0])


@pytest.mark.parametrize("kw", [
    dict(shape=(1, 1, 4), cout=1, k=3, stride=2),
    dict(shape=(2, 2, 5), cout=3, k=3, stride=3, padding=((1, 2),), output_padding=2),
    dict(shape=(1, 2, 3, 4), cout=2, k=(2, 3), stride=(2, 1), dilation=(1, 2), padding=1),
    dict(shape=(1, 4, 3, 3), cout=6, k=3, stride=2, groups=2, padding=1, output_padding=1),
    dict(shape=(1, 3, 4, 3), cout=3, k=2, groups=3, dilation=2, output_padding=1),
    dict(shape=(1, 2, 4, 4), cout=2, k=4, stride=2, padding="same"),
])
def test_transposed_matches_brute_force_scatter(kw):
    kw = dict(kw)
    spec = _spec(kw.pop("shape"), kw.pop("cout"), kw.pop("k"), transposed=True, bias=True,
                 **kw)
    x, w, b = _arrays(spec, 4)
    y = reference(spec, x, w, b)
    expected = _brute(spec, x, w, b)
    assert y.shape == expected.shape == spec.output_shape
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kw", [
    dict(shape=(2, 3, 11), cout=4, k=3, stride=2, padding=1),
    dict(shape=(1, 4, 9, 8), cout=6, k=(3, 2), stride=(2, 3), dilation=(2, 1),
         padding=((2, 1), (0, 1)), groups=2),
    dict(shape=(1, 3, 7, 7), cout=3, k=3, groups=3, padding=1, flip=True),
    dict(shape=(1, 2, 4, 5, 6), cout=2, k=2, stride=2, padding=1),
])
def test_transposed_is_adjoint_of_forward(kw):
    """<conv(x), y> == <x, convT(y)> with the same weight array."""
    kw = dict(kw)
    shape, cout, k = kw.pop("shape"), kw.pop("cout"), kw.pop("k")
    fwd = _spec(shape, cout, k, **kw)
    out = fwd.output_spatial
    natural = [(o - 1) * s - lo - hi + d * (kk - 1) + 1 for o, s, (lo, hi), d, kk
               in zip(out, fwd.stride, fwd.padding, fwd.dilation, fwd.kernel_size)]
    output_padding = tuple(i - n for i, n in zip(fwd.in_spatial, natural))
    bwd = _spec(fwd.output_shape, shape[1], k, transposed=True, output_padding=output_padding,
                **kw)
    assert bwd.output_shape == fwd.input_shape
    assert bwd.weight_shape == fwd.weight_shape
    x, w, _ = _arrays(fwd, 21)
    ybar = RNG.standard_normal(fwd.output_shape)
    lhs = np.vdot(reference(fwd, x, w), ybar)
    rhs = np.vdot(x, reference(bwd, ybar, w))
    assert lhs == pytest.approx(rhs, rel=1e-11, abs=1e-11)


# -- 3D ---------------------------------------------------------------------------------------

def test_3d_matches_brute_force():
    spec = _spec((1, 2, 4, 5, 4), cout=2, k=(2, 3, 2), stride=(1, 2, 1), padding=(1, 1, 0),
                 bias=True, padding_mode="replicate")
    x, w, b = _arrays(spec, 13)
    y = reference(spec, x, w, b)
    expected = _brute(spec, x, w, b)
    assert y.shape == expected.shape == spec.output_shape
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)


def test_3d_transposed_matches_brute_force():
    spec = _spec((1, 2, 2, 3, 2), cout=2, k=2, stride=(2, 1, 2), transposed=True,
                 output_padding=(1, 0, 0), bias=True)
    x, w, b = _arrays(spec, 14)
    np.testing.assert_allclose(reference(spec, x, w, b), _brute(spec, x, w, b), rtol=1e-12)


# -- property: random tiny specs against the brute force -----------------------------------

@st.composite
def _tiny_specs(draw):
    ndim = draw(st.sampled_from([1, 1, 2, 2, 3]))
    transposed = draw(st.booleans())
    groups = draw(st.integers(1, 3))
    cin = groups * draw(st.integers(1, 2))
    cout = groups * draw(st.integers(1, 2))
    spatial = tuple(draw(st.integers(1, 6 if ndim < 3 else 3)) for _ in range(ndim))
    k = tuple(draw(st.integers(1, 3)) for _ in range(ndim))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(ndim))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(ndim))
    pads = tuple((draw(st.integers(0, 2)), draw(st.integers(0, 2))) for _ in range(ndim))
    mode = "zeros" if transposed else draw(st.sampled_from(
        ["zeros", "reflect", "replicate", "circular"]))
    op = tuple(draw(st.integers(0, max(s, d) - 1)) for s, d in zip(stride, dilation)) \
        if transposed else 0
    try:
        return ConvSpec((draw(st.integers(1, 2)), cin, *spatial), cout, kernel_size=k,
                        stride=stride, dilation=dilation, padding=pads, padding_mode=mode,
                        groups=groups, transposed=transposed, output_padding=op,
                        bias=draw(st.booleans()), flip=draw(st.booleans()), dtype="float64")
    except SpecError:
        assume(False)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(spec=_tiny_specs(), seed=st.integers(0, 2**16))
def test_random_tiny_specs_match_brute_force(spec, seed):
    x, w, b = _arrays(spec, seed)
    y = reference(spec, x, w, b)
    expected = _brute(spec, x, w, b)
    assert y.shape == expected.shape == spec.output_shape
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)


# -- activations ------------------------------------------------------------------------------

VALUES = np.array([-1000.0, -30.0, -6.5, -1.0, -0.25, 0.0, 0.3, 1.0, 5.9, 6.0, 7.5, 40.0,
                   1000.0])


def _direct(name: str, args: tuple[float, ...], v: float) -> float:
    if name == "relu":
        return max(v, 0.0)
    if name == "leaky_relu":
        return v if v > 0 else args[0] * v
    if name == "relu6":
        return min(max(v, 0.0), 6.0)
    if name == "clip":
        return min(max(v, args[0]), args[1])
    if name == "sigmoid":
        return float(scipy.special.expit(v))
    if name == "tanh":
        return math.tanh(v)
    if name == "elu":
        return v if v > 0 else args[0] * (math.exp(v) - 1.0)
    if name == "silu":
        return v * float(scipy.special.expit(v))
    if name == "gelu":
        return 0.5 * v * (1.0 + float(scipy.special.erf(v / math.sqrt(2.0))))
    if name == "gelu_tanh":
        return 0.5 * v * (1.0 + math.tanh(math.sqrt(2.0 / math.pi) * (v + 0.044715 * v**3)))
    if name == "hardswish":
        return v * min(max(v + 3.0, 0.0), 6.0) / 6.0
    if name == "hardsigmoid":
        return max(0.0, min(1.0, args[0] * v + args[1]))
    if name == "erf":
        return math.erf(v)
    if name == "softplus":  # log(1 + e^v), without overflow for large v
        return max(v, 0.0) + math.log1p(math.exp(-abs(v)))
    if name == "softsign":
        return v / (1.0 + abs(v))
    if name == "selu":
        return args[1] * (v if v > 0 else args[0] * (math.exp(v) - 1.0))
    raise AssertionError(name)


ACTIVATION_CASES = [
    ("relu", ()), ("leaky_relu", (0.01,)), ("leaky_relu", (0.2,)), ("relu6", ()),
    ("clip", (-0.5, 2.0)), ("sigmoid", ()), ("tanh", ()), ("elu", (1.0,)), ("elu", (0.5,)),
    ("silu", ()), ("gelu", ()), ("gelu_tanh", ()), ("hardswish", ()),
    ("hardsigmoid", (1.0 / 6.0, 0.5)), ("hardsigmoid", (0.2, 0.5)), ("erf", ()),
    ("softplus", ()), ("softsign", ()), ("selu", (1.6732632423543772, 1.0507009873554805)),
]


def test_activation_cases_cover_every_activation():
    assert {name for name, _ in ACTIVATION_CASES} == set(ACTIVATIONS)


@pytest.mark.parametrize("name, args", ACTIVATION_CASES)
def test_apply_activation_matches_direct_formula(name, args):
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # stable: no overflow
        got = apply_activation(name, args, VALUES)
    expected = [_direct(name, args, float(v)) for v in VALUES]
    assert got.dtype == np.float64
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, expected, rtol=1e-14, atol=1e-300)


@pytest.mark.parametrize("name, args", ACTIVATION_CASES)
def test_fused_activation_after_bias(name, args):
    # a 1x1 identity kernel leaves x, so the output is act(x + b)
    spec = _spec((2, 3, 4, 5), cout=3, k=1, bias=True, activation=name, activation_args=args)
    x = RNG.standard_normal(spec.input_shape) * 4
    w = np.eye(3).reshape(3, 3, 1, 1)
    b = np.array([-1.0, 0.5, 2.0])
    y = reference(spec, x, w, b)
    pre = x + b.reshape(1, 3, 1, 1)
    expected = np.vectorize(lambda v: _direct(name, args, v))(pre)
    np.testing.assert_allclose(y, expected, rtol=1e-13, atol=1e-15)


def test_apply_activation_defaults_identity_and_errors():
    v = np.array([-2.0, 3.0])
    np.testing.assert_array_equal(apply_activation("leaky_relu", (), v), [-0.02, 3.0])
    np.testing.assert_array_equal(apply_activation(None, (), v), v)
    with pytest.raises(ValueError, match="swish"):
        apply_activation("swish", (), v)
    with pytest.raises(ValueError, match="clip"):
        apply_activation("clip", (), v)


# -- dtypes ----------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_output_dtype_and_layout(dtype):
    spec = _spec((1, 2, 5, 5), cout=3, padding=1, dtype=dtype, bias=True)
    x, w, b = _arrays(spec, 2)
    y = reference(spec, x.astype(dtype), w.astype(dtype), b.astype(dtype))
    assert y.dtype == np.dtype(dtype)
    assert y.shape == spec.output_shape
    assert y.flags.c_contiguous
    np.testing.assert_allclose(y, _brute(spec, x.astype(dtype), w.astype(dtype), b),
                               rtol=1e-6 if dtype == "float32" else 1e-12, atol=1e-6)


def test_float32_spec_accumulates_in_float64():
    # 1e8 + 1 - 1e8 is 0 when accumulated in float32, 1 in float64
    spec = _spec((1, 1, 3), k=3, dtype="float32")
    x = np.array([1e8, 1.0, -1e8], dtype=np.float32).reshape(1, 1, 3)
    y = reference(spec, x, np.ones((1, 1, 3), dtype=np.float32))
    assert y.dtype == np.float32
    assert y[0, 0, 0] == 1.0


# -- validation ---------------------------------------------------------------------------------

def test_wrong_shapes_raise_value_error():
    spec = _spec((1, 2, 5, 5), cout=3, bias=True)
    x, w, b = _arrays(spec)
    with pytest.raises(ValueError, match=r"x: expected shape \(1, 2, 5, 5\), got \(1, 2, 5, 4\)"):
        reference(spec, x[..., :4], w, b)
    with pytest.raises(ValueError, match=r"w: expected shape \(3, 2, 3, 3\)"):
        reference(spec, x, w[:2], b)
    with pytest.raises(ValueError, match=r"b: expected shape \(3,\), got \(2,\)"):
        reference(spec, x, w, b[:2])
    with pytest.raises(ValueError, match="got None"):
        reference(spec, x, w, None)
    no_bias = spec.replace(bias=False)
    with pytest.raises(ValueError, match="expected None"):
        reference(no_bias, x, w, b)
    transposed = _spec((1, 2, 5, 5), cout=4, groups=2, transposed=True)
    with pytest.raises(ValueError, match=r"w: expected shape \(2, 2, 3, 3\), got \(4, 1, 3, 3\)"):
        reference(transposed, x, np.zeros((4, 1, 3, 3)))


def test_non_real_arrays_raise_type_error():
    spec = _spec((1, 1, 5), k=3)
    with pytest.raises(TypeError, match="complex"):
        reference(spec, np.zeros((1, 1, 5), complex), np.zeros((1, 1, 3)))


# -- PyTorch, when installed ----------------------------------------------------------------------

def test_matches_torch_when_installed():
    torch = pytest.importorskip("torch")
    functional = torch.nn.functional
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731

    spec = _spec((2, 4, 9, 8), cout=6, k=3, stride=2, padding=1, dilation=(1, 2), groups=2,
                 bias=True)
    x, w, b = _arrays(spec, 30)
    expected = functional.conv2d(t(x), t(w), t(b), stride=2, padding=1, dilation=(1, 2),
                                 groups=2).numpy()
    np.testing.assert_allclose(reference(spec, x, w, b), expected, rtol=1e-10, atol=1e-10)

    spec = _spec((1, 3, 7, 6), cout=2, k=3, padding=(2, 1), padding_mode="reflect")
    x, w, _ = _arrays(spec, 31)
    conv = torch.nn.Conv2d(3, 2, 3, padding=(2, 1), padding_mode="reflect", bias=False)
    conv = conv.double()
    with torch.no_grad():
        conv.weight.copy_(t(w))
        expected = conv(t(x)).numpy()
    np.testing.assert_allclose(reference(spec, x, w), expected, rtol=1e-10, atol=1e-10)

    spec = _spec((1, 4, 5), cout=6, k=3, stride=2, padding=1, output_padding=1, groups=2,
                 dilation=2, transposed=True, bias=True)
    x, w, b = _arrays(spec, 32)
    expected = functional.conv_transpose1d(t(x), t(w), t(b), stride=2, padding=1,
                                           output_padding=1, groups=2, dilation=2).numpy()
    np.testing.assert_allclose(reference(spec, x, w, b), expected, rtol=1e-10, atol=1e-10)
