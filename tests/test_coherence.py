"""The predictor's coherence table (tfprec.statistics.shifts.coherence_table,
NoiseGains.act_coherence) against brute force: expected rounding errors by
numerical integration over the noise with the plan's own quantizer, the
table from Keras' own layer inputs, and the predictor's use of it."""
import math

import numpy as np
import pytest

import tfprec
from tfprec._tf import keras
from tfprec.fixedpoint import quantize
from tfprec.planning import predict
from tfprec.planning.predict_model import PredictedMismatch
from tfprec.statistics import shifts

from test_predictor import _check_moves, _mlp

pytestmark = pytest.mark.filterwarnings("ignore:noise gains from only")

# the noise as a fine grid: n = nu t, t in [-8, 8], weights phi(t) dt
_T = np.linspace(-8.0, 8.0, 8001)
_W = np.exp(-0.5 * _T ** 2)
_W /= _W.sum()


def _expected_error_by_hand(a, bits, r_a, signed, nu):
    """E[Q(y) - y], y = a + n (clipped at 0 for an unsigned format), by
    integrating the quantizer's error over the noise grid."""
    y = a[:, None] + nu * _T[None, :]
    if not signed:
        y = np.maximum(y, 0.0)
    return ((quantize(y, bits, r_a, signed) - y) * _W).sum(1)


@pytest.mark.parametrize("signed", [False, True])
def test_expected_rounding_error_matches_integration(signed):
    rng = np.random.default_rng(0)
    a = rng.uniform(-1.5 if signed else 0.0, 2.5, 300)
    for bits in (2, 3, 5):
        step = 2.0 ** (1 - bits)
        for nu in (0.0, 0.03 * step, 0.3 * step, 2.0 * step):
            got = shifts.expected_rounding_error(a, bits, 1.0, signed, nu)
            want = (quantize(a, bits, 1.0, signed) - a if nu == 0 else
                    _expected_error_by_hand(a, bits, 1.0, signed, nu))
            np.testing.assert_allclose(got, want, atol=2e-3 * step, rtol=0)
    # saturation: far above the range the error is the clip, noise or not
    top = np.array([10.0])
    assert shifts.expected_rounding_error(top, 3, 1.0, signed, 1e-3)[0] == \
        pytest.approx(quantize(top, 3, 1.0, signed)[0] - 10.0, abs=1e-9)


def test_coherence_table_from_keras_layer_inputs(monkeypatch):
    """act_coherence [L, 9, S] of noise_gains(per_class=True): per layer,
    sum_a E[e(a + n)] e(a) / sum_a e(a)^2 over the nonzero values of the
    layer's input on the first batch (here all of them), 1 at s = 0."""
    monkeypatch.setattr(shifts, "COHERENCE_VALUES", 10 ** 6)
    m = _mlp()
    x = np.random.default_rng(3).normal(size=(40, 6)).astype(np.float32)
    g = tfprec.noise_gains(m, x, per_class=True, batch_size=16)
    names = [l.name for l in g.layers]
    feed = keras.Model(m.inputs, [m.get_layer(n).input for n in names])
    ins = feed.predict(x[:16], verbose=0)
    assert g.act_coherence.shape == (len(names), 9, len(shifts.COHERENCE_SPREADS))
    spread = np.array(shifts.COHERENCE_SPREADS)
    inside = 0
    for l, (lg, a) in enumerate(zip(g.layers, ins)):
        a = np.asarray(a, np.float64).ravel()
        a = a[a != 0]
        for i, bits in enumerate(range(2, 11)):
            e0 = quantize(a, bits, lg.r_a, lg.act_signed) - a
            step = lg.r_a * 2.0 ** (1 - bits)
            want = [float(_expected_error_by_hand(a, bits, lg.r_a, lg.act_signed,
                                                  s * step) @ e0 / (e0 @ e0))
                    if s > 0 else 1.0 for s in spread]
            np.testing.assert_allclose(g.act_coherence[l, i], want, atol=5e-3,
                                       err_msg=f"layer {lg.name}, {bits} bits")
            inside += int(np.sum((g.act_coherence[l, i] > 0.05)
                                 & (g.act_coherence[l, i] < 0.95)))
    assert inside > 20          # the spreads reach well inside (0, 1)
    # gains without per-class data have no table
    assert tfprec.noise_gains(m, x).act_coherence is None


def test_predictor_reads_the_coherence_table():
    """factors(): rho_l is the table at B_A and nu_l / Delta_l (linear in
    the spread, the last value above the grid, clipped to [0, 1]); without
    a table exp(-2 pi^2 s^2); moves and take agree with value."""
    rng = np.random.default_rng(7)
    n, k, nl = 30, 3, 3
    sw = rng.uniform(0, 1, (n, k, nl)) * 4.0 ** 6
    sa = rng.uniform(0, 1, (n, k, nl)) * 4.0 ** 6
    shift = rng.normal(0, 0.3, (nl, 15, n, k))
    act = rng.normal(0, 0.3, (nl, 15, n, k))
    shift[:, 9:] = act[:, 9:] = 0.0
    noise = rng.uniform(0, 1, (2, nl, 15, nl)) * 4.0 ** -np.arange(15)[None, None, :, None]
    r_a = np.array([1.0, 2.0, 0.5])
    spreads = np.array(shifts.COHERENCE_SPREADS)
    coh = np.sort(rng.uniform(-0.1, 1.1, (nl, 9, len(spreads))), axis=2)[:, :, ::-1]
    coh[:, :, 0] = 1.0
    kw = dict(shift=shift, act_shift=act, input_noise=noise, act_range=r_a,
              table_max_bits=10)
    with_table = PredictedMismatch(sw, sa, coherence=coh, spreads=spreads, **kw)
    plain = PredictedMismatch(sw, sa, **kw)
    for bw, ba in ((np.array([4, 3, 5]), np.array([3, 2, 4])),
                   (np.array([8, 6, 2]), np.array([6, 9, 3]))):
        t = np.arange(nl)
        nu2 = noise[0, t, bw - 2].sum(0) + noise[1, t, ba - 2].sum(0)
        sp = np.sqrt(nu2) / (r_a * 2.0 ** (1 - ba))
        want = [min(1.0, max(0.0, float(np.interp(s, spreads, coh[l, b - 2]))))
                for l, (s, b) in enumerate(zip(sp, ba))]
        f, g = with_table.factors(bw, ba)
        np.testing.assert_allclose(f, want, rtol=1e-12)
        np.testing.assert_allclose(g, 1 - np.array(want) ** 2, rtol=1e-12)
        f0, _ = plain.factors(bw, ba)
        np.testing.assert_allclose(f0, np.exp(-2 * math.pi ** 2 * sp ** 2), rtol=1e-12)
        assert with_table.value(bw, ba) != plain.value(bw, ba)
        _check_moves(with_table, bw, ba)
        for which, i in (("w", 0), ("a", 1)):
            with_table.take(which, i, 0.0)
            (bw if which == "w" else ba)[i] -= 1
            assert with_table.cur == pytest.approx(with_table.value(bw, ba), rel=1e-12)
    with pytest.raises(tfprec.errors.PlanError, match="coherence table"):
        PredictedMismatch(sw, sa, coherence=coh[:, :5], spreads=spreads, **kw)


def test_predicted_mismatch_uses_the_gains_table():
    """The predictor made from per-class gains reads their act_coherence: a
    table of ones gives rho = 1, the gains' own table rho <= 1 with some
    layer below 1 at 3 bits."""
    import dataclasses
    m = _mlp()
    x = np.random.default_rng(5).normal(size=(60, 6)).astype(np.float32)
    g = tfprec.noise_gains(m, x, per_class=True)
    plan = tfprec.uniform_plan(g, bits=3)
    ones = dataclasses.replace(g, act_coherence=np.ones_like(g.act_coherence))
    f1, _ = predict._model(ones, "independent").factors(*predict._bits_of(plan))
    np.testing.assert_allclose(f1, 1.0)
    f, _ = predict._model(g, "independent").factors(*predict._bits_of(plan))
    assert np.all(f <= 1.0)
    assert np.any(f < 0.999)
