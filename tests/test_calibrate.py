"""Calibrated plans: cheapest level meeting a measured target (tfprec.calibrate)."""
import math

import numpy as np
import pytest
from scipy.stats import binom

from tfprec._tf import keras

import tfprec
from tfprec.planning import calibrate as C
from tfprec.quantization import validate as V
from tfprec.errors import InvalidDataError, PlanError, UnattainableTargetError

L = keras.layers


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def toy():
    """A 12-16-4 MLP; gains on 200 examples, 400 other examples held out."""
    keras.utils.set_random_seed(0)
    rs = np.random.RandomState(0)
    m = keras.Sequential([L.Input((12,)), L.Dense(16, activation="relu"),
                          L.Dense(4)])
    x = rs.randn(600, 12).astype("float32")
    y = m.predict(x, verbose=0).argmax(1)
    y[200:240] = (y[200:240] + 1) % 4     # held-out float accuracy 90 %
    g = tfprec.noise_gains(m, x[:200])
    return m, g, x[200:], y[200:]


@pytest.fixture(scope="module")
def qcache():
    """Fake-quant decisions of the toy, cached by plan bits across tests."""
    return {}


@pytest.fixture
def cached_quant(monkeypatch, qcache):
    """Makes repeated fake-quant passes over the same plan free in this test
    (calibrate still counts each distinct plan as one evaluation)."""
    real = V.quant_decisions
    calls = []

    def quant(model, plan, x, batch_size=256):
        key = (id(model), len(x), C._Evaluator.key(plan))
        calls.append(key)
        if key not in qcache:
            qcache[key] = real(model, plan, x, batch_size)
        return qcache[key]

    monkeypatch.setattr(V, "quant_decisions", quant)
    return calls


def _values(m, g, x, y, family, levels, kind):
    """Brute force: the measured value of every level of a family."""
    fdec = V.float_decisions(m, x)
    out = []
    for lev in levels:
        if family == "cost_aware":
            plan = tfprec.cost_aware_plan(g, lev)
        else:
            plan = V.plan_at_level(g, family, lev)
        q = V.quant_decisions(m, plan, x)
        out.append(np.mean(q != fdec) if kind == "mismatch"
                   else 100.0 * (np.mean(fdec == y) - np.mean(q == y)))
    return np.array(out)


# ------------------------------------------------------------------ confidence
def test_clopper_pearson_known_cases():
    for n in (1, 10, 400, 5000):
        assert C.clopper_pearson_upper(0, n) == pytest.approx(1 - 0.05 ** (1 / n),
                                                              rel=1e-9)
        assert C.clopper_pearson_upper(n, n) == 1.0
    assert C.clopper_pearson_upper(0, 100, 0.99) == pytest.approx(
        1 - 0.01 ** (1 / 100), rel=1e-9)
    # definition: P(Binomial(n, u) <= k) = 1 - confidence at the limit u
    for k, n in ((1, 10), (3, 400), (17, 5000), (250, 500)):
        u = C.clopper_pearson_upper(k, n)
        assert binom.cdf(k, n, u) == pytest.approx(0.05, rel=1e-6)
        assert u > k / n
        assert C.clopper_pearson_upper(k + 1, n) > u
    for bad in ((-1, 10), (11, 10), (0, 0), (1.5, 10)):
        with pytest.raises(InvalidDataError):
            C.clopper_pearson_upper(*bad)
    with pytest.raises(InvalidDataError, match="confidence"):
        C.clopper_pearson_upper(0, 10, 1.0)


# ------------------------------------------------------------------ search
def test_bisection_exhaustive_on_monotone_oracles():
    for k in range(0, 20):
        for boundary in range(-1, k):
            calls = []

            def feasible(i):
                calls.append(i)
                return i <= boundary
            assert C.cheapest_feasible(k, feasible) == boundary
            assert (math.floor(math.log2(k + 1)) <= len(calls)
                    <= math.ceil(math.log2(k + 1)))


@pytest.mark.parametrize("kind", ["mismatch", "accuracy_drop"])
def test_search_matches_brute_force(toy, cached_quant, kind):
    """Every level of every family checked exhaustively: for each target whose
    feasibility is monotone in the level, the search returns exactly the
    cheapest level that meets it, with at most ceil(log2(K + 1)) evaluations."""
    m, g, x, y = toy
    fams = {f: C._int_family(g, f, 16) for f in ("uniform", "paper", "icml2017")}
    fams["cost_aware"] = C._cost_aware_family(g, "compute", 16, 1)
    checked = 0
    for name, fam in fams.items():
        vals = _values(m, g, x, y, name, fam.levels, kind)   # most precise first
        for target in sorted(set(np.round(vals, 6)))[:6]:
            ok = vals <= target + 1e-9
            if not ok[0] or np.any(~ok[:-1] & ok[1:]):
                continue                  # feasibility not monotone: skip
            want = fam.levels[int(np.nonzero(ok)[0].max())]
            kw = ({"target_mismatch": float(target)} if kind == "mismatch"
                  else {"max_accuracy_drop": float(target)})
            r = C.calibrate(m, g, x, y, methods=(name,), grid_per_octave=1, **kw)
            c = r[name]
            assert c.level == pytest.approx(want), (name, target, vals)
            assert c.evaluations <= math.ceil(math.log2(len(fam.levels) + 1))
            checked += 1
        # cheapest level: compute cost falls along the levels
        costs = [fam.plan(i).cost().total_compute for i in range(len(fam.levels))]
        assert all(a >= b for a, b in zip(costs, costs[1:])), name
    assert checked >= 8


def test_float_decisions_once_and_cache(toy, cached_quant, monkeypatch):
    m, g, x, y = toy
    calls = []
    real = V.float_decisions

    def counted(*a, **k):
        calls.append(1)
        return real(*a, **k)
    monkeypatch.setattr(V, "float_decisions", counted)
    r = C.calibrate(m, g, x, y, target_mismatch=0.05,
                    methods=("cost_aware", "paper", "uniform", "icml2017",
                             "measured_greedy"))
    assert len(calls) == 1
    # each distinct plan is evaluated once, however many families ask for it
    assert r.total_evaluations == len(set(cached_quant))
    assert r.total_evaluations <= sum(c.evaluations for c in r.candidates)
    assert r["uniform"].evaluations == 4          # 15 levels: ceil(log2 16)
    assert r["measured_greedy"].evaluations > r["cost_aware"].evaluations


# ------------------------------------------------------------------ contract
@pytest.mark.parametrize("target", [dict(target_mismatch=0.0),
                                    dict(target_mismatch=0.03),
                                    dict(target_mismatch=0.2),
                                    dict(max_accuracy_drop=0.0),
                                    dict(max_accuracy_drop=1.0)])
def test_never_returns_a_plan_that_misses(toy, cached_quant, target):
    m, g, x, y = toy
    r = C.calibrate(m, g, x, y, methods=C.FAMILIES, **target)
    assert r.best is r.candidates[0]
    costs = [c.compute_cost for c in r.candidates]
    assert costs == sorted(costs) and r.best.compute_cost == min(costs)
    for c in r.candidates:
        # independent re-measurement of the returned plan
        v = V.validate(m, c.plan, x, y)
        assert v.num_mismatch == c.num_mismatch
        assert v.quant_accuracy == pytest.approx(c.quant_accuracy)
        if "target_mismatch" in target:
            assert v.mismatch_rate <= target["target_mismatch"] + 1e-12
        else:
            drop = 100 * (v.float_accuracy - v.quant_accuracy)
            assert drop <= target["max_accuracy_drop"] + 1e-9
            assert c.accuracy_drop_pp == pytest.approx(drop)
        assert c.bound == pytest.approx(c.plan.bound())
        assert c.mismatch_ucl == pytest.approx(
            C.clopper_pearson_upper(c.num_mismatch, len(x)))
        assert c.mismatch_ucl >= c.measured_mismatch
        assert c.analytic_guarantee == (c.bound <= r.target_probability)
        if c.analytic_guarantee:
            assert c.guarantee.startswith("analytic bound")
        else:
            assert c.guarantee.startswith(f"measured on {len(x)} held-out examples")
            assert "guarantee" not in c.guarantee.lower()
        assert c.plan.info["calibration"]["num_mismatch"] == c.num_mismatch
        assert c.plan.validate_for(m) is None
        back = tfprec.PrecisionPlan.from_json(c.plan.to_json())
        assert back.info["calibration"]["guarantee"] == c.guarantee
        assert c.float_accuracy == pytest.approx(0.9)
    md = r.to_markdown()
    assert md.index(f"**{r.best.method}**") < md.index(f"| {r.best.method} |")
    assert md.count("\n| ") == len(r.candidates) + 1
    assert r.to_dict()["best"] == r.best.method


def test_analytic_guarantee_wording(toy):
    m, g, x, y = toy
    ev = C._Evaluator(m, x, y, 256, "mismatch", 0.5)
    plan = tfprec.uniform_plan(g, bits=16)
    found = C._Found(plan, 16, 1, [(16, 0.0, True)], ev.measure(plan))
    c = C._calibrated("uniform", found, ev, "mismatch", 0.5, 0.5, 0.95, g)
    assert c.bound <= 0.5 and c.analytic_guarantee
    assert c.guarantee.startswith("analytic bound")
    c = C._calibrated("uniform", found, ev, "mismatch", 1e-12, 1e-12, 0.95, g)
    assert not c.analytic_guarantee
    assert c.guarantee.startswith(f"measured on {len(x)} held-out examples: "
                                  "mismatch <= ")
    assert "at 95%" in c.guarantee


def test_unattainable_target_is_a_clear_error():
    """Two logits 1e-6 apart: at 16 bits both weights round to the same
    value, so every decision flips; no plan within 16 bits meets p < 1."""
    keras.utils.set_random_seed(0)
    m = keras.Sequential([L.Input((1,)), L.Dense(2, use_bias=False)])
    m.layers[-1].set_weights([np.array([[1.0, 1.0 + 1e-6]], "float32")])
    x = np.linspace(0.5, 1.0, 64, dtype="float32")[:, None]
    g = tfprec.noise_gains(m, x[::2])
    with pytest.raises(UnattainableTargetError,
                       match=r"target measured mismatch vs float <= 0.1 on 32 "
                             r"held-out examples: the best measured at 16 bits "
                             r".* is mismatch 1;"):
        C.calibrate(m, g, x[1::2], target_mismatch=0.1)
    with pytest.raises(UnattainableTargetError, match=r"accuracy drop <= 0 pp"):
        C.calibrate(m, g, x[1::2], np.ones(32, int), max_accuracy_drop=0.0,
                    methods=("uniform",))


def test_input_errors(toy, cached_quant):
    m, g, x, y = toy
    with pytest.raises(InvalidDataError, match=r"x_val has shape \(400, 5\).*takes"):
        C.calibrate(m, g, x[:, :5], target_mismatch=0.1)
    with pytest.raises(InvalidDataError, match="x_val is empty"):
        C.calibrate(m, g, x[:0], target_mismatch=0.1)
    with pytest.raises(InvalidDataError, match="x_val contains NaN"):
        C.calibrate(m, g, np.full_like(x, np.nan), target_mismatch=0.1)
    with pytest.raises(InvalidDataError, match="x_val must be one numpy array"):
        C.calibrate(m, g, list(x), target_mismatch=0.1)
    with pytest.raises(InvalidDataError, match=r"y_val has shape \(10,\) but x_val "
                                               r"has 400 examples"):
        C.calibrate(m, g, x, y[:10], target_mismatch=0.1)
    with pytest.raises(InvalidDataError, match=r"labels in 4..7; the model has 4 classes"):
        C.calibrate(m, g, x, y + 4, target_mismatch=0.1)
    with pytest.raises(InvalidDataError, match="max_accuracy_drop needs held-out labels"):
        C.calibrate(m, g, x, max_accuracy_drop=0.5)
    with pytest.raises(PlanError, match="exactly one"):
        C.calibrate(m, g, x, y, target_mismatch=0.1, max_accuracy_drop=0.5)
    with pytest.raises(PlanError, match="exactly one"):
        C.calibrate(m, g, x, y)
    with pytest.raises(PlanError, match="target_mismatch"):
        C.calibrate(m, g, x, target_mismatch=1.5)
    with pytest.raises(PlanError, match="unknown calibration family"):
        C.calibrate(m, g, x, target_mismatch=0.1, methods=("nope",))
    with pytest.raises(PlanError, match="cost"):
        C.calibrate(m, g, x, target_mismatch=0.1, cost="area")
    other = keras.Sequential([L.Input((12,)), L.Dense(8), L.Dense(4)])
    with pytest.raises(PlanError, match="does not match"):
        C.calibrate(other, g, x, target_mismatch=0.1)
    # one-hot labels are accepted and give the same result
    r1 = C.calibrate(m, g, x, np.eye(4)[y], max_accuracy_drop=1.0, methods=("uniform",))
    r2 = C.calibrate(m, g, x, y, max_accuracy_drop=1.0, methods=("uniform",))
    assert r1.best.level == r2.best.level
