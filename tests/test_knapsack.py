"""The knapsack and the greedy descent of tfprec.planning.search against
brute-force enumeration and hand-written bounds."""
import itertools

import numpy as np
import pytest

import tfprec  # noqa: F401  (before TensorFlow)
from tfprec.planning import search


def brute_mckp(values, weights, capacity):
    """(min total value, its pick) over every pick with total weight <= capacity."""
    best = (np.inf, None)
    for pick in itertools.product(*[range(len(v)) for v in values]):
        w = sum(ws[k] for ws, k in zip(weights, pick))
        if w <= capacity:
            v = sum(vs[k] for vs, k in zip(values, pick))
            if v < best[0]:
                best = (v, pick)
    return best


@pytest.mark.parametrize("seed", range(40))
def test_mckp_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    groups = int(rng.integers(1, 5))
    values = [rng.uniform(0, 100, int(rng.integers(1, 7))) for _ in range(groups)]
    if seed % 2:                                   # integer weights: ties at capacity
        weights = [rng.integers(0, 10, len(v)).astype(float) for v in values]
        capacity = float(rng.integers(0, 10 * groups))
    else:                                          # bound-like weights over decades
        weights = [10 ** rng.uniform(-6, 0, len(v)) for v in values]
        capacity = float(10 ** rng.uniform(-5, 0.5))
    want, _ = brute_mckp(values, weights, capacity)
    pick = search.mckp(values, weights, capacity)
    if not np.isfinite(want):
        assert pick is None
        return
    assert pick is not None
    assert sum(w[k] for w, k in zip(weights, pick)) <= capacity        # exactly
    assert sum(v[k] for v, k in zip(values, pick)) == pytest.approx(want, rel=1e-9)


def test_mckp_tight_capacity_and_cost_aware_sizes():
    # The only fitting pick uses the capacity exactly.
    assert search.mckp([[5.0, 1.0], [3.0, 0.0]], [[0.0, 2.0], [0.0, 1.0]], 3.0) == [1, 1]
    assert search.mckp([[5.0, 1.0]], [[4.0, 5.0]], 3.0) is None
    # cost_aware_plan's size: 15 x 15 options per layer, 3 layers; brute force
    # by dynamic enumeration over the first two layers' sums.
    rng = np.random.default_rng(1)
    b = np.arange(2, 17, dtype=float)
    values, weights = [], []
    for _ in range(3):
        values.append((rng.uniform(1, 5) * np.add.outer(b, b)
                       + rng.uniform(1, 5) * np.multiply.outer(b, b)).ravel())
        gw, ga = 10 ** rng.uniform(0, 3, 2)
        weights.append(np.add.outer(gw * 4.0 ** (1 - b), ga * 4.0 ** (1 - b)).ravel())
    cap = 1e-3
    v01 = np.add.outer(values[0], values[1]).ravel()
    w01 = np.add.outer(weights[0], weights[1]).ravel()
    want = min(np.min(np.where(w01 + w2 <= cap, v01 + v2, np.inf))
               for v2, w2 in zip(values[2], weights[2]))
    pick = search.mckp(values, weights, cap)
    assert sum(w[k] for w, k in zip(weights, pick)) <= cap
    assert sum(v[k] for v, k in zip(values, pick)) == pytest.approx(want, rel=1e-9)


def _tables(rng, n):
    b = np.arange(17.0)
    out = []
    for _ in range(n):
        d, p = int(rng.integers(2, 300)), int(rng.integers(1, 500))
        out.append(p * (d * np.multiply.outer(b, b)
                        + (d - 1) * (np.add.outer(b, b) + np.ceil(np.log2(d)) - 1)))
    return out


def test_bound_models_by_hand():
    rng = np.random.default_rng(2)
    gw, ga = rng.uniform(0, 5, 3), rng.uniform(0, 5, 3)
    bw, ba = np.array([3, 5, 7]), np.array([4, 4, 9])
    hand = sum(gw[i] * 4.0 ** (1 - bw[i]) + ga[i] * 4.0 ** (1 - ba[i]) for i in range(3))
    assert search.AnalyticBound(gw, ga).value(bw, ba) == pytest.approx(hand, rel=1e-12)
    sw, sa = rng.exponential(size=(6, 3)), rng.exponential(size=(6, 3))
    hand = np.mean([min(1.0, sum(sw[x, i] * 4.0 ** (1 - bw[i]) + sa[x, i] * 4.0 ** (1 - ba[i])
                                 for i in range(3))) for x in range(6)])
    assert search.PerExampleBound(sw, sa).value(bw, ba) == pytest.approx(hand, rel=1e-12)


@pytest.mark.parametrize("per_example", [False, True])
def test_descend_stops_at_a_local_minimum(per_example):
    """No single bit left can be removed both within the target and at a
    saving (a shared activation tensor moves with all its readers)."""
    rng = np.random.default_rng(3)
    for trial in range(8):
        n = 4
        tabs = _tables(rng, n)
        gw, ga = 10 ** rng.uniform(-2, 3, n), 10 ** rng.uniform(-2, 3, n)
        lead = np.array([0, 1, 1, 3]) if trial % 2 else np.arange(n)
        ga[lead != np.arange(n)] = 0.0
        sw = rng.exponential(size=(10, n)) * gw
        sa = rng.exponential(size=(10, n)) * ga
        model = (search.PerExampleBound(sw, sa) if per_example
                 else search.AnalyticBound(gw, ga))
        target = 10 ** rng.uniform(-3, -1)
        top = np.full(n, 16)
        bw, ba = search.descend(tabs, model, top, top, target, lead)
        assert model.value(bw, ba) <= target * (1 + 1e-12)
        cost = sum(t[w, a] for t, w, a in zip(tabs, bw, ba))
        for i in range(n):
            for which in "wa":
                tw, ta = bw.copy(), ba.copy()
                if which == "w":
                    tw[i] -= 1
                elif lead[i] == i:
                    ta[lead == i] -= 1
                else:
                    continue
                if min(tw.min(), ta.min()) < 2 or model.value(tw, ta) > target:
                    continue
                assert sum(t[w, a] for t, w, a in zip(tabs, tw, ta)) >= cost


def test_mckp_refuses_negative_or_nan_weights():
    from tfprec.errors import PlanError
    with pytest.raises(PlanError, match="non-negative"):
        search.mckp([[1.0, 2.0]], [[-1.0, 0.0]], 1.0)
    with pytest.raises(PlanError, match="finite"):
        search.mckp([[np.nan, 2.0]], [[1.0, 0.0]], 1.0)
