"""One rounding rule: numpy reference, TF quantizer and numpy simulation give
bit-identical codes, equal to exact rational round-half-up (fractions)."""
import math
from fractions import Fraction

import numpy as np
import pytest

from tfprec._tf import keras, tf

import tfprec
from tfprec import fixedpoint
from tfprec.planning.rules import uniform_plan
from tfprec.quantization.quantizers import fixed_point_quantize
from tfprec.quantization.simulate import simulate_layer_inputs

# (bits, range scale R, signed): tiny and huge steps, both signs, 2..16 bits
FORMATS = [(2, 1.0, True), (2, 1.0, False), (3, 2.0 ** 20, False),
           (5, 0.25, True), (8, 2.0, False), (12, 2.0 ** -10, True),
           (16, 1.0, True), (16, 4.0, False)]


def exact_codes(values, bits, range_scale, signed) -> np.ndarray:
    """Round half up of the exact rational value / Delta, saturated: pure
    Python integers and fractions, no floating-point rounding anywhere."""
    delta = Fraction(2) ** (1 - bits) * Fraction(range_scale)
    if signed:
        lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    else:
        lo, hi = 0, 2 ** bits - 1
    out = []
    for v in np.asarray(values).tolist():
        if math.isinf(v):
            k = hi if v > 0 else lo
        else:
            k = math.floor(Fraction(v) / delta + Fraction(1, 2))
        out.append(min(max(k, lo), hi))
    return np.array(out, np.int64)


def hard_values(bits, range_scale, signed, dtype) -> np.ndarray:
    """Tie points (k + 1/2) Delta and their float neighbours, just-below-half
    quotients, saturation edges, large codes and extremes, in ``dtype``."""
    d = fixedpoint.step(bits, range_scale)
    lo, hi = fixedpoint.int_limits(bits, signed)
    rs = np.random.RandomState(bits)
    ks = np.unique(np.concatenate([
        np.arange(-6, 6), np.arange(lo - 3, lo + 3), np.arange(hi - 3, hi + 3),
        -np.arange(hi - 3, hi + 3), rs.randint(-2 * hi - 2, 2 * hi + 2, 200)]))
    ties = ((ks + 0.5) * d).astype(dtype)          # exact in both dtypes
    assert np.all(ties.astype(np.float64) == (ks + 0.5) * d)
    half_below = np.nextafter(dtype(0.5), dtype(0)) * dtype(d)   # 0.4999..
    edges = np.array([lo * d, hi * d, (lo - 0.5) * d, (hi + 0.5) * d,
                      (hi + 1) * d, (lo - 1) * d, 0.0, -0.0], dtype)
    big = np.array([2.0 ** 30 * d, -2.0 ** 30 * d, 1e30, -1e30,
                    np.finfo(dtype).max, -np.finfo(dtype).max, np.inf, -np.inf,
                    np.finfo(dtype).tiny, -np.finfo(dtype).smallest_subnormal],
                   dtype)
    base = np.concatenate([ties, edges, [half_below, -half_below]])
    return np.concatenate([base, np.nextafter(base, dtype(np.inf)),
                           np.nextafter(base, dtype(-np.inf)), big,
                           (rs.randn(500) * hi * d).astype(dtype)]).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("fmt", FORMATS)
def test_numpy_and_tf_codes_identical_and_exact(fmt, dtype):
    bits, r, signed = fmt
    v = hard_values(bits, r, signed, dtype)
    want = exact_codes(v, bits, r, signed)
    got_np = fixedpoint.quantize_int(v, bits, r, signed)
    np.testing.assert_array_equal(got_np, want)
    out_tf = fixed_point_quantize(tf.constant(v), bits, r, signed).numpy()
    assert out_tf.dtype == dtype
    # k * Delta is exact in the dtype, so dividing by the power of two
    # Delta recovers the TF quantizer's integer code
    np.testing.assert_array_equal(out_tf.astype(np.float64)
                                  / fixedpoint.step(bits, r), want)
    np.testing.assert_array_equal(
        out_tf, fixedpoint.quantize(v, bits, r, signed).astype(dtype))


def test_known_hard_cases():
    """Cases where float rounding of ``v / Delta + 1/2`` gives 1: the
    largest float below 1/2, plus 1/2, rounds up to 1 in its own dtype."""
    d = fixedpoint.step(8, 1.0)
    for dtype in (np.float32, np.float64):
        below = np.nextafter(dtype(0.5), dtype(0)) * dtype(d)
        for x in (below, -below):
            assert fixedpoint.quantize_int(np.array([x]), 8, 1.0, True)[0] == 0
            assert fixed_point_quantize(tf.constant([x]), 8, 1.0, True).numpy()[0] == 0
    x = np.float64(0.49999999999999994) * d                # the reported case
    assert fixedpoint.quantize_int(x, 8, 1.0, True) == 0
    # negative ties round up (toward +inf): -0.5 -> 0, -1.5 -> -1
    np.testing.assert_array_equal(
        fixedpoint.quantize_int(np.array([-0.5, -1.5, -2.5]) * d, 8, 1.0, True),
        [0, -1, -2])


def test_simulation_uses_the_same_rounding():
    """The numpy simulation's quantized layer input equals the exact codes
    of its float64 input at tie points (first layer: its input is x)."""
    keras.utils.set_random_seed(0)
    m = keras.Sequential([keras.layers.Input((6,)), keras.layers.Dense(3)])
    x = np.random.RandomState(0).randn(40, 6)
    plan = uniform_plan(tfprec.noise_gains(m, x.astype("float32")), bits=6)
    lp = plan.layers[0]
    v = hard_values(lp.act_bits, lp.act_range, lp.act_signed, np.float64)
    v = v[np.isfinite(v) & (np.abs(v) < 1e3)]
    v = v[: len(v) // 6 * 6]
    got = simulate_layer_inputs(m, plan, v.reshape(-1, 6))[m.layers[0].name]
    want = exact_codes(v, lp.act_bits, lp.act_range, lp.act_signed)
    np.testing.assert_array_equal(
        got.reshape(-1) / fixedpoint.step(lp.act_bits, lp.act_range), want)
