"""Calibrated plans: cheapest level meeting a measured target (tfprec.calibrate)."""
import math

import numpy as np
import pytest
from scipy.optimize import brentq
from scipy.stats import binom

from tfprec._tf import keras

import tfprec
from tfprec.planning import calibrate as C
from tfprec.planning.cost_aware import cost_aware_at_level, per_example_at_level
from tfprec.planning import budget as budget_lib
from tfprec.planning.evaluate import Evaluator
from tfprec.quantization import validate as V
from tfprec.quantization.apply import logits_model, quantize_model
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
    g = tfprec.noise_gains(m, x[:200], per_class=True)
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
        key = (id(model), len(x), Evaluator.key(plan))
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
            plan = (per_example_at_level(g, lev) if g.example_w is not None
                    else cost_aware_at_level(g, lev))
        else:
            plan = V.plan_at_level(g, family, lev)
        q = V.quant_decisions(m, plan, x)
        out.append(np.mean(q != fdec) if kind == "mismatch"
                   else 100.0 * (np.mean(fdec == y) - np.mean(q == y)))
    return np.array(out)


# ------------------------------------------------------------------ confidence
def _cp_by_root(k, n, confidence):
    """Independent one-sided upper limit: the root u of
    P(Binomial(n, u) <= k) = 1 - confidence (Brent's method on binom.cdf)."""
    if k == n:
        return 1.0
    return brentq(lambda u: binom.cdf(k, n, u) - (1 - confidence), k / n, 1.0,
                  xtol=1e-15, rtol=1e-13)


def test_clopper_pearson_against_independent_computation():
    # closed forms: k = 0 gives 1 - (1 - c)^(1/n); k = n gives 1
    for n in (1, 10, 400, 5000):
        for c in (0.5, 0.95, 0.99):
            assert C.clopper_pearson_upper(0, n, c) == pytest.approx(
                1 - (1 - c) ** (1 / n), rel=1e-9)
            assert C.clopper_pearson_upper(n, n, c) == 1.0
    # k = n - 1: P(X <= n-1) = 1 - u^n = 1 - c  =>  u = c^(1/n)
    for n in (2, 10, 400):
        assert C.clopper_pearson_upper(n - 1, n, 0.95) == pytest.approx(
            0.95 ** (1 / n), rel=1e-9)
    for k, n, c in ((1, 10, 0.95), (3, 400, 0.95), (17, 5000, 0.95),
                    (250, 500, 0.95), (5, 40, 0.8), (2, 7, 0.99)):
        u = C.clopper_pearson_upper(k, n, c)
        assert u == pytest.approx(_cp_by_root(k, n, c), rel=1e-7, abs=1e-12)
        assert u > k / n
        assert C.clopper_pearson_upper(k + 1, n, c) > u
    for bad in ((-1, 10), (11, 10), (0, 0), (1.5, 10), (True, 10)):
        with pytest.raises(InvalidDataError):
            C.clopper_pearson_upper(*bad)
    for c in (0.0, 1.0, float("nan")):
        with pytest.raises(InvalidDataError, match="confidence"):
            C.clopper_pearson_upper(0, 10, c)


# ------------------------------------------------------------------ search
def test_bisection_exhaustive_on_monotone_oracles():
    for k in range(0, 20):
        for boundary in range(-1, k):
            calls = []

            def feasible(i):
                calls.append(i)
                return i <= boundary
            assert budget_lib.cheapest_feasible(k, feasible) == boundary
            assert (math.floor(math.log2(k + 1)) <= len(calls)
                    <= math.ceil(math.log2(k + 1)))


def test_search_from_a_guess_finds_the_bisection_answer():
    """cheapest_feasible(..., start): the same index as the bisection for
    every boundary and every guess; one call when the guess is the answer
    and the next level fails; 2 log2(d + 1) + 2 calls at most for an answer
    d levels from the guess."""
    for k in range(0, 18):
        for boundary in range(-1, k):
            for start in range(-2, k + 2):
                calls = []

                def feasible(i):
                    assert 0 <= i < k
                    calls.append(i)
                    return i <= boundary
                assert budget_lib.cheapest_feasible(k, feasible, start) == boundary
                s = min(max(start, 0), k - 1)
                d = abs(boundary - s)
                assert len(calls) <= 2 * math.log2(d + 1) + 2, (k, boundary, start)
                assert len(set(calls)) == len(calls)
                if boundary == s and s + 1 < k:
                    assert calls == [s, s + 1]


@pytest.mark.slow
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


@pytest.mark.slow   # default-suite time (< 5 min); see README
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
@pytest.mark.parametrize("target", [
    pytest.param(dict(target_mismatch=0.0), marks=pytest.mark.slow),
    dict(target_mismatch=0.03),
    pytest.param(dict(target_mismatch=0.2), marks=pytest.mark.slow),
    pytest.param(dict(max_accuracy_drop=0.0), marks=pytest.mark.slow),
    pytest.param(dict(max_accuracy_drop=1.0), marks=pytest.mark.slow)])
def test_never_returns_a_plan_that_misses(toy, cached_quant, target):
    m, g, x, y = toy
    r = C.calibrate(m, g, x, y, methods=C.FAMILIES, **target)
    assert r.best is r.candidates[0]
    costs = [c.compute_cost for c in r.candidates]
    assert costs == sorted(costs) and r.best.compute_cost == min(costs)
    fdec = m.predict(x, verbose=0).argmax(1)
    for c in r.candidates:
        # independent re-measurement: a fresh fake-quant model of the plan,
        # its decisions compared with the float model's (no calibrate cache)
        qdec = logits_model(quantize_model(m, c.plan)).predict(x, verbose=0).argmax(1)
        mis = int(np.sum(qdec != fdec))
        float_acc, quant_acc = np.mean(fdec == y), np.mean(qdec == y)
        assert mis == c.num_mismatch
        assert c.measured_mismatch == pytest.approx(mis / len(x))
        assert quant_acc == pytest.approx(c.quant_accuracy)
        assert float_acc == pytest.approx(c.float_accuracy)
        if "target_mismatch" in target:
            assert mis / len(x) <= target["target_mismatch"] + 1e-12
        else:
            drop = 100 * (float_acc - quant_acc)
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
    assert md.index(f"**{r.best.plan.method}**") < md.index(f"| {r.best.plan.method} |")
    assert md.count("\n| ") == len(r.candidates) + 1
    assert r.to_dict()["best"] == r.best.method


def test_analytic_guarantee_wording(toy):
    m, g, x, y = toy
    ev = Evaluator(m, x, y, 256, "mismatch", 0.5)
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
    with pytest.raises(InvalidDataError, match=r"x_val has per-example shape \(5,\)"
                                               r", but the model expects \(12,\)"):
        C.calibrate(m, g, x[:, :5], target_mismatch=0.1)
    with pytest.raises(InvalidDataError, match="x_val is empty"):
        C.calibrate(m, g, x[:0], target_mismatch=0.1)
    with pytest.raises(InvalidDataError, match="x_val: example 0 contains NaN"):
        C.calibrate(m, g, np.full_like(x, np.nan), target_mismatch=0.1)
    with pytest.raises(InvalidDataError, match="x_val as one numpy array"):
        C.calibrate(m, g, list(x), target_mismatch=0.1)
    with pytest.raises(InvalidDataError, match=r"y_val has shape \(10,\), but there "
                                               r"are 400 examples"):
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
    with pytest.raises(PlanError, match="max_accuracy_drop"):
        C.calibrate(m, g, x, y, max_accuracy_drop=float("nan"))
    with pytest.raises(PlanError, match="max_bits"):
        C.calibrate(m, g, x, target_mismatch=0.1, max_bits=17)
    with pytest.raises(InvalidDataError, match="batch_size"):
        C.calibrate(m, g, x, target_mismatch=0.1, batch_size=0)
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


def test_dataset_input_gives_the_numpy_result(toy, cached_quant):
    """A tf.data dataset of (input, label) pairs, batched or not, is the
    same held-out data as the numpy arrays."""
    from tfprec._tf import tf
    m, g, x, y = toy
    want = C.calibrate(m, g, x, y, max_accuracy_drop=1.0, methods=("uniform", "paper"))
    for ds in (tf.data.Dataset.from_tensor_slices((x, y)),
               tf.data.Dataset.from_tensor_slices((x, y)).batch(64)):
        got = C.calibrate(m, g, ds, max_accuracy_drop=1.0, methods=("uniform", "paper"))
        assert [(c.method, c.level, c.num_mismatch, c.quant_accuracy)
                for c in got.candidates] == [
            (c.method, c.level, c.num_mismatch, c.quant_accuracy)
            for c in want.candidates]
