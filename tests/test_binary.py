"""A binary classifier ending in one sigmoid unit (issue 10).

Its decision is class 1 iff p = sigmoid(z) > 0.5, i.e. iff the logit z > 0;
tfprec analyses it as the two-class logits [0, z] (margin |z|), so its
mismatch is the fraction of examples where the sign of z changes.  Checked
against independent computations: the float decisions against numpy
thresholds of the model's own probabilities, the measured mismatch against
the sign changes of the float64 simulation's logit.
"""
from __future__ import annotations

import numpy as np
import pytest

import tfprec
from tfprec._tf import keras

L = keras.layers


@pytest.fixture(scope="module")
def binary():
    keras.utils.set_random_seed(3)
    m = keras.Sequential([L.Input((6,)), L.Dense(16, activation="tanh", name="d1"),
                          L.Dense(8, activation="relu", name="d2"),
                          L.Dense(1, activation="sigmoid", name="out")])
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 6)).astype(np.float32)
    p = m.predict(x, verbose=0)[:, 0]
    y = (p > np.median(p)).astype(np.int64)          # labels: half each
    return m, x, y, p


def test_gains_see_two_classes(binary):
    m, x, _, _ = binary
    g = tfprec.noise_gains(m, x[:300])
    assert g.num_classes == 2 and g.names == ["d1", "d2", "out"]
    assert all(l.e_w > 0 and l.e_a > 0 for l in g.layers)


def test_decisions_and_mismatch(binary):
    from tfprec.quantization import validate
    m, x, y, p = binary
    fdec = validate.float_decisions(m, x)
    np.testing.assert_array_equal(fdec, (p > 0.5).astype(np.int64))
    g = tfprec.noise_gains(m, x[:300])
    plan = tfprec.uniform_plan(g, bits=4)
    res = validate.validate(m, plan, x[300:], y[300:])
    z_float = tfprec.simulate_logits(m, None, x[300:])
    z_quant = tfprec.simulate_logits(m, plan, x[300:])
    assert z_float.shape == (300, 2) and np.all(z_float[:, 0] == 0)
    flips = int(np.sum((z_float[:, 1] > 0) != (z_quant[:, 1] > 0)))
    assert flips > 0                                  # 4 bits changes some
    assert res.num_mismatch == flips
    assert res.float_accuracy == pytest.approx(np.mean(fdec[300:] == y[300:]))
