"""The budget allocation under the mismatch prediction
(tfprec.planning.budget.predicted_budget_plan, used by
tfprec.peers.matched.predicted_at_budget): it fits the budget, it is
predicted no worse than every uniform plan that fits and than the earlier
bisection of the predicted target, it is the brute-force optimum of a
2-layer net over bits 2..5, a shared input tensor's readers get one
bit-width, and bad arguments raise tfprec errors naming them.

Tiny untrained models on random data: only the planner is under test.
"""
import dataclasses
import itertools

import numpy as np
import pytest

import tfprec
from tfprec._tf import keras
from tfprec.errors import PlanError, UnattainableTargetError
from tfprec.peers import matched
from tfprec.planning import budget as budget_lib
from tfprec.planning.predict import predicted_mismatch
from tfprec.planning.rules import plan_from_gains, uniform_plan

L = keras.layers
# tiny calibration sets on purpose
pytestmark = pytest.mark.filterwarnings("ignore:noise gains from only")
MAX = 5       # bits 2..5 keep the brute force small


def _two_layer():
    keras.utils.set_random_seed(21)
    inp = L.Input((8,))
    h = L.Dense(6, activation="relu", name="h")(inp)
    return keras.Model(inp, L.Dense(4, name="out", bias_initializer="random_normal")(h))


def _shared():
    keras.utils.set_random_seed(22)
    inp = L.Input((6,))
    t = L.Dense(8, activation="relu", name="a")(inp)
    u = L.Add()([L.Dense(6, name="b1")(t), L.Dense(6, name="b2")(t)])   # shared input
    h = L.ReLU(max_value=2.0)(u)
    return keras.Model(inp, L.Dense(5, name="out")(h))


def _gains(model, n=48, seed=0):
    x = np.random.RandomState(seed).rand(n, int(model.inputs[0].shape[-1]))
    return tfprec.noise_gains(model, x.astype("float32"), per_class=True)


@pytest.fixture(scope="module")
def two():
    return _gains(_two_layer())


@pytest.fixture(scope="module")
def shared():
    return _gains(_shared(), seed=1)


def _cost(plan):
    return plan.cost().total_compute


def _budgets(g, fracs=(0.15, 0.4, 0.7)):
    lo, hi = _cost(uniform_plan(g, bits=2)), _cost(uniform_plan(g, bits=MAX))
    return [lo + f * (hi - lo) for f in fracs]


def test_fits_and_beats_uniform_and_bisection(shared):
    g = shared
    for budget in _budgets(g, (0.15, 0.5)):
        p = budget_lib.predicted_budget_plan(g, budget, max_bits=MAX)
        v = predicted_mismatch(p, g)
        assert _cost(p) <= budget
        assert p.method == "cost_aware_predicted_budget:compute"
        assert p.info["budget"] == budget
        assert p.info["predicted_mismatch"] == pytest.approx(v, rel=1e-9, abs=1e-15)
        assert max(max(l.weight_bits, l.act_bits) for l in p.layers) <= MAX
        # b1 and b2 read one tensor: one quantizer, one bit-width
        by = {l.name: l for l in p.layers}
        assert by["b1"].act_bits == by["b2"].act_bits
        for b in range(2, MAX + 1):
            u = uniform_plan(g, bits=b, max_bits=MAX)
            if _cost(u) <= budget:
                assert v <= predicted_mismatch(u, g) * (1 + 1e-9)
        old = matched.bisected_at_budget(g, budget, max_bits=MAX)
        assert _cost(old) <= budget
        assert v <= predicted_mismatch(old, g) * (1 + 1e-9)
        # what the peers benchmark calls is this allocation
        q = matched.predicted_at_budget(g, budget, max_bits=MAX)
        assert [(l.weight_bits, l.act_bits) for l in q.layers] == \
            [(l.weight_bits, l.act_bits) for l in p.layers]


def test_brute_force_optimum_two_layers(two):
    g = two
    names = [l.name for l in g.layers]
    assert names == ["h", "out"]
    combos = list(itertools.product(range(2, MAX + 1), repeat=4))
    plans = [plan_from_gains(g, [c[0], c[2]], [c[1], c[3]], "brute") for c in combos]
    costs = np.array([_cost(p) for p in plans])
    preds = np.array([predicted_mismatch(p, g) for p in plans])
    assert np.ptp(preds) > 0                      # the budgets below matter
    for budget in _budgets(g, (0.1, 0.25, 0.5, 0.75)):
        best = preds[costs <= budget].min()
        p = budget_lib.predicted_budget_plan(g, budget, max_bits=MAX)
        assert _cost(p) <= budget
        assert predicted_mismatch(p, g) <= best * (1 + 1e-9) + 1e-15


def test_memory_budget(two):
    g = two
    hi = uniform_plan(g, bits=4).cost().total_memory
    p = budget_lib.predicted_budget_plan(g, hi, cost="memory", max_bits=MAX)
    assert p.cost().total_memory <= hi
    assert p.method == "cost_aware_predicted_budget:memory"
    assert predicted_mismatch(p, g) <= predicted_mismatch(
        uniform_plan(g, bits=4, max_bits=MAX), g) * (1 + 1e-9)


def test_bad_arguments(two):
    g = two
    cheapest = _cost(uniform_plan(g, bits=2))
    with pytest.raises(UnattainableTargetError, match="budget .* below the cheapest plan"):
        budget_lib.predicted_budget_plan(g, 0.5 * cheapest)
    for bad in (0, -1.0, float("nan"), float("inf"), True, "1e7", None):
        with pytest.raises(PlanError, match="budget must be a positive"):
            budget_lib.predicted_budget_plan(g, bad)
    with pytest.raises(PlanError, match="cost"):
        budget_lib.predicted_budget_plan(g, 2 * cheapest, cost="energy")
    for bad in (1, 17, 3.5):
        with pytest.raises(PlanError, match="max_bits"):
            budget_lib.predicted_budget_plan(g, 2 * cheapest, max_bits=bad)
    with pytest.raises(PlanError, match="form"):
        budget_lib.predicted_budget_plan(g, 2 * cheapest, form="max")
    with pytest.raises(PlanError, match="model"):
        budget_lib.predicted_budget_plan(g, 2 * cheapest, model="exact")
    plain = dataclasses.replace(g, class_w=None, class_a=None)
    with pytest.raises(PlanError, match="per_class=True"):
        budget_lib.predicted_budget_plan(plain, 2 * cheapest)
