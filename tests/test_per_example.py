"""Per-example statistics, the per-example bound and its cost-aware plan."""
import numpy as np
import pytest

import tfprec
from tfprec.planning import plan as plan_lib
from tfprec.planning import cost_aware as cost_aware_lib
from tfprec._tf import keras
from tfprec.errors import PlanError, UnattainableTargetError

L = keras.layers


@pytest.fixture(scope="module")
def setup():
    keras.utils.set_random_seed(5)
    inp = L.Input((6,))
    t = L.Dense(8, activation="relu", name="a")(inp)
    u = L.Add()([L.Dense(6, name="b1")(t), L.Dense(6, name="b2")(t)])
    h = L.ReLU(max_value=2.0)(u)
    m = keras.Model(inp, L.Dense(4, name="out", bias_initializer="random_normal")(h))
    x = np.random.default_rng(3).normal(size=(25, 6))
    return m, x, tfprec.noise_gains(m, x, dtype="float64", per_example=True, batch_size=7)


def test_per_example_values_are_single_example_gains(setup):
    m, x, g = setup
    assert g.example_w.shape == g.example_a.shape == (25, 4)
    np.testing.assert_allclose(g.example_w.mean(0), [l.e_w for l in g.layers], rtol=1e-10)
    for i in (0, 11, 24):
        one = tfprec.noise_gains(m, x[i:i + 1], dtype="float64")
        np.testing.assert_allclose(g.example_w[i], [l.e_w for l in one.layers], rtol=1e-9)
        shared = [l.e_a if l.e_a_shared is None else l.e_a_shared for l in one.layers]
        np.testing.assert_allclose(g.example_a[i], shared, rtol=1e-9)


def test_per_example_bound_by_hand(setup):
    m, x, g = setup
    p = tfprec.paper_plan(g, b_min=3)
    by_hand = 0.0
    for i in range(len(x)):
        one = tfprec.noise_gains(m, x[i:i + 1], dtype="float64")
        # the same plan's bound on one example, ranges fixed to the plan's
        s = 0.0
        for l, o in zip(p.layers, one.layers):
            s += 4.0 ** (1 - l.weight_bits) * l.weight_range ** 2 * o.e_w
            if l.name != "b2":                     # b1 and b2 share a tensor
                e = o.e_a if o.e_a_shared is None else o.e_a_shared
                s += 4.0 ** (1 - l.act_bits) * l.act_range ** 2 * e
        by_hand += min(1.0, s)
    assert cost_aware_lib.per_example_bound(p, g) == pytest.approx(by_hand / len(x), rel=1e-9)
    assert cost_aware_lib.per_example_bound(p, g) <= p.bound()


def test_per_example_plan_meets_target_and_is_cheaper(setup):
    m, x, g = setup
    for t in (0.2, 0.05, 0.01):
        pe = cost_aware_lib.per_example_cost_aware_plan(g, t)
        assert cost_aware_lib.per_example_bound(pe, g) <= t
        assert pe.layer("b1").act_bits == pe.layer("b2").act_bits
        ca = tfprec.cost_aware_plan(g, t)
        assert pe.cost().total_compute <= ca.cost().total_compute
        # no single bit can be removed without breaking the target
        for l in pe.layers:
            if l.weight_bits > 2:
                q = pe.with_bits(weight_bits={l.name: l.weight_bits - 1})
                assert (cost_aware_lib.per_example_bound(q, g) > t
                        or q.cost().total_compute >= pe.cost().total_compute)


def test_per_example_errors(setup):
    m, x, g = setup
    plain = tfprec.noise_gains(m, x)
    with pytest.raises(PlanError, match="per_example=True"):
        cost_aware_lib.per_example_bound(tfprec.paper_plan(plain), plain)
    with pytest.raises(UnattainableTargetError, match="per-example"):
        cost_aware_lib.per_example_cost_aware_plan(g, 1e-30)
