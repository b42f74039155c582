"""Peer baselines: Hutchinson Hessian traces, HAWQ-style plans, greedy search."""
import dataclasses
import itertools
import math

import numpy as np
import pytest

from tfprec._tf import keras, tf

import tfprec
from tfprec.peers import greedy, hawq, hessian
from tfprec.planning import budget as budget_lib
from tfprec.planning.cost_aware import cost_aware_at_level
from tfprec import fixedpoint
from tfprec.quantization import validate as V
from tfprec.errors import (InvalidDataError, PlanError, TfprecError,
                           UnattainableTargetError)

L = keras.layers


# ----------------------------------------------------------------- helpers
def _tiny(dtype="float64", seed=0):
    keras.utils.set_random_seed(seed)
    m = keras.Sequential([
        L.Input((5,), dtype=dtype),
        L.Dense(4, name="fc", dtype=dtype),
        L.ReLU(max_value=2.0, name="clip", dtype=dtype),
        L.Dense(3, name="out", dtype=dtype)])
    rs = np.random.RandomState(seed)
    x = rs.randn(40, 5).astype(dtype)
    y = rs.randint(0, 3, 40)
    return m, x, y


def _exact_weight_traces(m, x, y):
    """Trace of the Hessian of the mean loss w.r.t. each layer's kernel+bias."""
    out = {}
    xt = tf.constant(x)
    for layer in (m.get_layer("fc"), m.get_layer("out")):
        total = 0.0
        for v in layer.trainable_variables:
            with tf.GradientTape() as t2:
                with tf.GradientTape() as t1:
                    loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
                        labels=y, logits=m(xt)))
                g = t1.gradient(loss, v)
            h = t2.jacobian(g, v).numpy()
            n = int(np.prod(v.shape))
            total += np.trace(h.reshape(n, n))
        out[layer.name] = total
    return out


def _exact_act_traces(m, x, y):
    """Mean over examples of Tr d^2 loss_i / dA_i^2 for each layer's input."""
    layers = m.layers
    out = {}
    for name, start in (("fc", 0), ("out", 2)):
        a = tf.constant(x)
        for layer in layers[:start]:
            a = layer(a)
        with tf.GradientTape() as t2:
            t2.watch(a)
            with tf.GradientTape() as t1:
                t1.watch(a)
                z = a
                for layer in layers[start:]:
                    z = layer(z)
                loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(
                    labels=y, logits=z))
            g = t1.gradient(loss, a)
        h = t2.jacobian(g, a).numpy()           # [B, d, B, d]
        n = int(np.prod(a.shape))
        out[name] = np.trace(h.reshape(n, n)) / len(x)
    return out


@pytest.fixture(scope="module")
def tiny():
    m, x, y = _tiny()
    return m, x, y, tfprec.noise_gains(m, x, dtype="float64")


# ------------------------------------------------------- Hessian traces
@pytest.mark.parametrize("probes,samples", [pytest.param("joint", 800, marks=pytest.mark.slow),
                                            pytest.param("per_block", 300,
                                                         marks=pytest.mark.slow)])
def test_hutchinson_matches_exact_trace(tiny, probes, samples):
    m, x, y, _ = tiny
    tr = hessian.hessian_trace_sensitivity(m, x, y, num_samples=samples, batch_size=16,
                                     dtype="float64", seed=3, probes=probes)
    assert isinstance(tr, dict) and set(tr) == {"fc", "out"}
    assert tr.num_samples == samples and tr.num_examples == 40
    assert tr.num_params == {"fc": 24, "out": 15}
    exact_w = _exact_weight_traces(m, x, y)
    exact_a = _exact_act_traces(m, x, y)
    for n in ("fc", "out"):
        # Monte-Carlo tolerance: 5 standard errors (and a few percent)
        assert abs(tr[n] - exact_w[n]) <= 5 * tr.weight_stderr[n] + 1e-9, n
        assert tr[n] == pytest.approx(exact_w[n], rel=0.1)
        assert abs(tr.activation[n] - exact_a[n]) <= 5 * tr.activation_stderr[n] + 1e-9
        assert tr.activation[n] == pytest.approx(exact_a[n], rel=0.1)


@pytest.mark.slow
def test_diagonal_hessian_is_exact_with_one_probe():
    """One-hot inputs into a bias-free layer: each weight touches only its own
    examples, so that layer's Hessian block is diagonal and v^T H v equals the
    trace for every Rademacher v (per-block probes).  The next layer's input
    is a scalar per example, so its activation Hessians are 1x1 and the
    activation Hessian of the summed loss is diagonal: exact as well."""
    keras.utils.set_random_seed(1)
    m = keras.Sequential([L.Input((4,), dtype="float64"),
                          L.Dense(1, use_bias=False, name="emb", dtype="float64"),
                          L.Dense(3, name="out", dtype="float64")])
    x = np.repeat(np.eye(4), 2, axis=0)                   # 8 one-hot examples
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    exact_w = {}
    v = m.get_layer("emb").kernel
    with tf.GradientTape() as t2:
        with tf.GradientTape() as t1:
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
                labels=y, logits=m(tf.constant(x))))
        g = t1.gradient(loss, v)
    h = t2.jacobian(g, v).numpy().reshape(4, 4)
    assert np.allclose(h, np.diag(np.diag(h)))            # really diagonal
    exact_w = np.trace(h)
    for seed in (0, 1, 2):
        tr = hessian.hessian_trace_sensitivity(m, x, y, num_samples=1, batch_size=3,
                                         dtype="float64", seed=seed,
                                         probes="per_block")
        assert tr["emb"] == pytest.approx(exact_w, rel=1e-10)
        assert np.isnan(tr.weight_stderr["emb"])          # one probe: no error bar
    # activation of "out" (1 value per example): exact too
    a = m.get_layer("emb")(tf.constant(x))
    with tf.GradientTape() as t2:
        t2.watch(a)
        with tf.GradientTape() as t1:
            t1.watch(a)
            loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(
                labels=y, logits=m.get_layer("out")(a)))
        g = t1.gradient(loss, a)
    ha = t2.jacobian(g, a).numpy().reshape(8, 8)
    assert tr.activation["out"] == pytest.approx(np.trace(ha) / 8, rel=1e-10)


@pytest.mark.slow
def test_hutchinson_conv_maxpool():
    """Conv2D + clipped ReLU + MaxPool + Flatten + Dense: traces match the
    exact Hessian traces within Monte-Carlo tolerance."""
    keras.utils.set_random_seed(0)
    d = "float64"
    m = keras.Sequential([L.Input((6, 6, 2), dtype=d),
                          L.Conv2D(3, 3, name="c", dtype=d),
                          L.ReLU(max_value=2.0, dtype=d),
                          L.MaxPooling2D(2, dtype=d), L.Flatten(dtype=d),
                          L.Dense(3, name="o", dtype=d)])
    rs = np.random.RandomState(0)
    x, y = rs.rand(20, 6, 6, 2), rs.randint(0, 3, 20)
    tr = hessian.hessian_trace_sensitivity(m, x, y, num_samples=120, dtype=d,
                                     probes="per_block")
    for name in ("c", "o"):
        exact = 0.0
        for v in m.get_layer(name).trainable_variables:
            with tf.GradientTape() as t2:
                with tf.GradientTape() as t1:
                    loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
                        labels=y, logits=m(tf.constant(x))))
                g = t1.gradient(loss, v)
            n = int(np.prod(v.shape))
            exact += np.trace(t2.jacobian(g, v).numpy().reshape(n, n))
        assert abs(tr[name] - exact) <= 5 * tr.weight_stderr[name], name


@pytest.mark.slow
def test_traces_refresh_after_weight_change(tiny):
    m, x, y, _ = tiny
    m2, _, _ = _tiny(seed=5)
    m2.set_weights(m.get_weights())
    t1 = hessian.hessian_trace_sensitivity(m2, x, y, num_samples=4, dtype="float64")
    m2.set_weights([w * 0.5 for w in m.get_weights()])    # cached engine reloads
    t2 = hessian.hessian_trace_sensitivity(m2, x, y, num_samples=4, dtype="float64")
    assert t1["fc"] != t2["fc"]


def test_hessian_bad_input(tiny):
    m, x, y, _ = tiny
    with pytest.raises(InvalidDataError, match="needs labels"):
        hessian.hessian_trace_sensitivity(m, x, None)
    with pytest.raises(InvalidDataError, match="40 integer class ids"):
        hessian.hessian_trace_sensitivity(m, x, y[:10])
    with pytest.raises(InvalidDataError, match=r"0\.\.2"):
        hessian.hessian_trace_sensitivity(m, x, y + 3)
    with pytest.raises(InvalidDataError, match="per-example shape"):
        hessian.hessian_trace_sensitivity(m, x[:, :3], y)
    with pytest.raises(InvalidDataError, match="num_samples"):
        hessian.hessian_trace_sensitivity(m, x, y, num_samples=0)
    with pytest.raises(InvalidDataError, match="probes"):
        hessian.hessian_trace_sensitivity(m, x, y, probes="all")
    with pytest.raises(InvalidDataError, match="empty"):
        hessian.hessian_trace_sensitivity(m, x[:0], y[:0])
    bad = x.copy()
    bad[3, 1] = np.nan
    with pytest.raises(InvalidDataError, match="NaN"):
        hessian.hessian_trace_sensitivity(m, bad, y)


# ----------------------------------------------------------------- HAWQ
@pytest.fixture(scope="module")
def tiny_traces(tiny):
    m, x, y, _ = tiny
    return hessian.hessian_trace_sensitivity(m, x, y, num_samples=16, dtype="float64")


def _objective(m, plan, traces):
    from tfprec.statistics.graph import parse_model
    ops = {op.name: op for op in parse_model(m).weight_ops}
    total = 0.0
    for lp in plan.layers:
        op = ops[lp.name]
        ws = [op.attrs["kernel"], op.attrs["bias"]]
        n = sum(w.size for w in ws)
        err = sum(np.sum((fixedpoint.quantize(w, lp.weight_bits, lp.weight_range, True)
                          - w) ** 2) for w in ws)
        total += traces[lp.name] / n * err
        total += traces.activation[lp.name] * lp.act_step ** 2 / 12
    return total


def test_hawq_respects_budget_and_is_optimal(tiny, tiny_traces):
    m, x, y, g = tiny
    lo = tfprec.uniform_plan(g, bits=2).cost().total_compute
    hi = tfprec.uniform_plan(g, bits=5).cost().total_compute
    prev = np.inf
    for frac in (0.0, 0.2, 0.5, 1.0):
        budget = lo + frac * (hi - lo)
        p = hawq.hawq_plan(m, g, tiny_traces, budget, min_bits=2, max_bits=5)
        assert p.method == "hawq:compute"
        assert p.cost().total_compute <= budget * (1 + 1e-12)
        obj = p.info["objective"]
        assert obj == pytest.approx(_objective(m, p, tiny_traces), rel=1e-9)
        assert obj <= prev + 1e-15                       # more budget, less error
        prev = obj
        # brute force over all (B_W, B_A) of both layers
        best = np.inf
        for bits in itertools.product(range(2, 6), repeat=4):
            q = p.with_bits(weight_bits={"fc": bits[0], "out": bits[2]},
                            act_bits={"fc": bits[1], "out": bits[3]})
            if q.cost().total_compute <= budget * (1 + 1e-12):
                best = min(best, _objective(m, q, tiny_traces))
        assert obj == pytest.approx(best, rel=1e-9)


def test_hawq_fixed_activations_and_memory(tiny, tiny_traces):
    m, x, y, g = tiny
    budget = tfprec.uniform_plan(g, bits=6).cost().total_memory
    p = hawq.hawq_plan(m, g, dict(tiny_traces), budget, cost="memory", act_bits=8)
    assert all(l.act_bits == 8 for l in p.layers)
    assert p.cost().total_memory <= budget
    assert p.info["act_bits"] == 8 and p.method == "hawq:memory"
    # a plan as the template works too
    p2 = hawq.hawq_plan(m, tfprec.uniform_plan(g, bits=8), tiny_traces, budget,
                     cost="memory", act_bits=8)
    assert [l.weight_bits for l in p2.layers] == [l.weight_bits for l in p.layers]


def test_hawq_bad_input(tiny, tiny_traces):
    m, x, y, g = tiny
    floor = tfprec.uniform_plan(g, bits=2).cost().total_compute
    with pytest.raises(UnattainableTargetError, match="below the cheapest plan"):
        hawq.hawq_plan(m, g, tiny_traces, floor * 0.9)
    assert issubclass(UnattainableTargetError, TfprecError)
    with pytest.raises(PlanError, match="activation traces"):
        hawq.hawq_plan(m, g, dict(tiny_traces), floor * 2)
    with pytest.raises(PlanError, match=r"lack layers \['out'\]"):
        hawq.hawq_plan(m, g, {"fc": 1.0}, floor * 2, act_bits=8)
    with pytest.raises(PlanError, match="budget must be a positive"):
        hawq.hawq_plan(m, g, tiny_traces, -1.0)
    with pytest.raises(PlanError, match="cost must be one of"):
        hawq.hawq_plan(m, g, tiny_traces, floor * 2, cost="energy")
    with pytest.raises(PlanError, match="act_bits"):
        hawq.hawq_plan(m, g, tiny_traces, floor * 2, act_bits=40)
    with pytest.raises(PlanError, match="NoiseGains"):
        hawq.hawq_plan(m, {"fc": 1}, tiny_traces, floor * 2)


# ------------------------------------------ tfprec at a budget
def test_cost_aware_at_budget(tiny):
    _, _, _, g = tiny
    lo = tfprec.uniform_plan(g, bits=2).cost().total_compute
    for budget in (lo, 2 * lo, 5 * lo):
        p = budget_lib.cost_aware_at_budget(g, budget)
        assert p.cost().total_compute <= budget * (1 + 1e-12)
    b1 = budget_lib.cost_aware_at_budget(g, 2 * lo).bound()
    b2 = budget_lib.cost_aware_at_budget(g, 5 * lo).bound()
    assert b2 <= b1
    with pytest.raises(UnattainableTargetError, match="below the cheapest plan"):
        budget_lib.cost_aware_at_budget(g, 0.5 * lo)


def _hand_compute_cost(b):
    """Full adders of the tiny 5-4-3 network with every tensor at b bits
    (METHOD.md section 4, written out): per dot product of length d
    (inputs + bias), d b^2 for the products and (d - 1)(2 b + ceil(log2 d) - 1)
    for the adder tree."""
    total = 0
    for n_in, n_out in ((5, 4), (4, 3)):
        d = n_in + 1
        total += n_out * (d * b * b + (d - 1) * (2 * b + math.ceil(math.log2(d)) - 1))
    return total


@pytest.mark.slow   # default-suite time (< 5 min); see README
def test_smallest_bound_plan_against_brute_force(tiny):
    from tfprec.planning import select
    _, _, _, g = tiny
    lo = _hand_compute_cost(2)
    for budget in (lo, 1.7 * lo, 3 * lo, 20 * lo):
        # uniform: bound falls with B, so the answer is the largest B that fits
        p, mc = budget_lib.smallest_bound_plan(g, "uniform", budget)
        want = max(b for b in range(2, 17) if _hand_compute_cost(b) <= budget)
        assert p.b_min == want and mc == pytest.approx(lo)
        assert p.info["cost_budget"] == {"budget": budget, "cost": "compute",
                                         "bound_target": None}
        # paper: every B_min that gives a plan within 16 bits, by brute force
        fits = []
        for b in range(2, 17):
            try:
                q = tfprec.paper_plan(g, b_min=b)
            except UnattainableTargetError:
                continue
            if q.cost().total_compute <= budget:
                fits.append(q.bound())
        p, _ = budget_lib.smallest_bound_plan(g, "paper", budget)
        assert (p is None) == (not fits)
        if fits:
            assert p.bound() == pytest.approx(min(fits))
        # cost_aware: no plan on a dense grid of bound targets that fits has
        # a smaller bound than the bisection's
        p, _ = budget_lib.smallest_bound_plan(g, "cost_aware", budget)
        assert p.cost().total_compute <= budget * (1 + 1e-12)
        t = p.info["cost_budget"]["bound_target"]
        assert p.target == t and cost_aware_at_level(g, t).bound() == p.bound()
        grid = np.geomspace(tfprec.uniform_plan(g, bits=16).bound(),
                            tfprec.uniform_plan(g, bits=2).bound(), 300)
        grid_best = min(q.bound() for q in (cost_aware_at_level(g, t) for t in grid)
                        if q.cost().total_compute <= budget)
        assert p.bound() <= grid_best * (1 + 1e-9)
    p, mc = budget_lib.smallest_bound_plan(g, "cost_aware", 0.5 * lo)
    assert p is None and mc == pytest.approx(lo)
    with pytest.raises(PlanError, match="budget must be a positive"):
        budget_lib.smallest_bound_plan(g, "uniform", float("nan"))
    with pytest.raises(PlanError, match="cost"):
        budget_lib.smallest_bound_plan(g, "uniform", lo, cost="energy")
    # select.budget_plans is the same per method, with the minimum costs
    plans, mins = select.budget_plans(g, 3 * lo)
    assert set(mins) == set(select.PLAN_ORDER)
    bits = lambda p: [(l.weight_bits, l.act_bits) for l in p.layers]  # noqa: E731
    assert set(plans) == set(select.PLAN_ORDER)
    for m, q in plans.items():
        assert bits(q) == bits(budget_lib.smallest_bound_plan(g, m, 3 * lo)[0])
        assert q.cost().total_compute <= 3 * lo


def test_bisect_log_finds_the_threshold():
    # (the discrete cheapest_feasible: tests/test_calibrate.py)
    # the threshold of a step function, to the requested width
    for thr in (1.5, 10.0, 77.7, 99.9):
        calls = []
        lo, hi = budget_lib.bisect_log(1.0, 100.0, lambda v: calls.append(v) or v >= thr,
                                       log_width=1e-3)
        assert lo < thr <= hi and math.log(hi / lo) <= 1e-3
        assert len(calls) == math.ceil(math.log2(math.log(100.0) / 1e-3))


def test_select_analytic_and_choice(tiny):
    import types
    from tfprec.planning import select
    _, _, _, g = tiny
    plans, unmet = select.analytic_plans(g, 0.05)
    assert set(plans) | set(unmet) == set(select.PLAN_ORDER)
    for m, p in plans.items():
        assert p.bound() <= 0.05 * (1 + 1e-9)
        want = tfprec.make_plan(g, m, 0.05)
        assert [(l.weight_bits, l.act_bits) for l in p.layers] == \
            [(l.weight_bits, l.act_bits) for l in want.layers]
    plans, unmet = select.analytic_plans(g, 1e-30, methods=("paper", "uniform"))
    assert plans == {} and set(unmet) == {"paper", "uniform"}

    class Stub(tfprec.PrecisionPlan):      # a plan with a given cost and bound
        def __init__(self, c, b):
            object.__setattr__(self, "_cb", (c, b))

        def cost(self, *a, **k):
            c = self._cb[0]
            return types.SimpleNamespace(
                total=lambda kind: c if kind == "compute" else -c)

        def bound(self):
            return self._cb[1]

    stub = Stub
    ps = {"icml2017": stub(1.0, 0.5), "paper": stub(1.0, 0.5), "uniform": stub(2.0, 0.1),
          "cost_aware": stub(3.0, 0.1)}
    assert select.cheapest(ps) == "paper"               # tie on cost and bound: order
    assert select.cheapest(ps, "memory") == "cost_aware"
    assert select.tightest(ps) == "uniform"             # tie on bound: less cost
    with pytest.raises(PlanError, match="empty"):
        select.cheapest({})


# -------------------------------------------------------- greedy search
@pytest.fixture(scope="module")
def clf():
    """A hand-made 12-16-4 classifier of four noisy prototypes (float
    accuracy 0.99; uniform 4 bits lose 1 pp, 3 bits 1.7 pp, 2 bits 3.7 pp)."""
    keras.utils.set_random_seed(0)
    rs = np.random.RandomState(0)
    m = keras.Sequential([L.Input((12,)), L.Dense(16, name="h"),
                          L.ReLU(max_value=2.0, name="h_clip"),
                          L.Dense(4, name="o")])
    y = rs.randint(0, 4, 300)
    proto = np.kron(np.eye(4), np.ones(3))                 # [4, 12]
    x = np.clip(proto[y] + 0.45 * rs.randn(300, 12), 0, 1).astype("float32")
    w1 = 0.1 * rs.randn(12, 16) + 0.4 * np.kron(np.eye(4), np.ones((3, 4)))
    w2 = -0.2 + 0.1 * rs.randn(16, 4)
    w2[np.arange(16), np.arange(16) // 4] = 0.5
    m.set_weights([w1.astype("float32"), np.zeros(16, "float32"),
                   w2.astype("float32"), np.zeros(4, "float32")])
    return m, x, y, tfprec.noise_gains(m, x[:100])


@pytest.mark.slow   # default-suite time (< 5 min); see README
def test_greedy_search_within_tolerance(clf, monkeypatch):
    m, x, y, g = clf
    calls = []
    real = V.quant_decisions
    monkeypatch.setattr(V, "quant_decisions",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    plan, evals = greedy.greedy_search_plan(m, g, x, y, tolerance_pp=1.5,
                                       start_bits=4, min_bits=2)
    assert evals == len(calls) == plan.info["evaluations"]
    assert evals <= plan.info["evaluations_if_all_candidates"]
    assert plan.method == "greedy_search"
    float_acc = np.mean(V.float_decisions(m, x) == y)
    acc = lambda p: np.mean(real(m, p, x) == y)
    assert plan.info["float_accuracy"] == pytest.approx(float_acc)
    assert acc(plan) == pytest.approx(plan.info["quant_accuracy"])
    assert acc(plan) >= float_acc - 0.015 - 1e-12
    start = tfprec.uniform_plan(g, bits=4).cost().total_compute
    assert plan.cost().total_compute < start
    # the kept path, replayed: the start, one bit lower per round, each
    # plan within tolerance and cheaper than the one before, ending at plan
    path = greedy.path_plans(g, plan)
    assert len(path) == plan.info["rounds"] + 1
    assert plan.info["rounds"] >= 1
    assert path[0].cost().total_compute == start
    assert path[-1].to_json() == dataclasses.replace(plan, info={}).to_json()
    for a, b in zip(path, path[1:]):
        assert b.cost().total_compute < a.cost().total_compute
        lowered = [d for la, lb in zip(a.layers, b.layers)
                   for d in (la.weight_bits - lb.weight_bits, la.act_bits - lb.act_bits)]
        assert set(lowered) == {0, 1}
        assert acc(b) >= float_acc - 0.015 - 1e-12
    # local optimality: no single further step stays within tolerance
    for lp in plan.layers:
        for f in ("weight_bits", "act_bits"):
            b = getattr(lp, f)
            if b > 2:
                q = plan.with_bits(**{f: {lp.name: b - 1}})
                assert acc(q) < float_acc - 0.015


def test_greedy_search_bad_input(clf):
    m, x, y, g = clf
    with pytest.raises(InvalidDataError, match="needs labels"):
        greedy.greedy_search_plan(m, g, x, None)
    with pytest.raises(InvalidDataError, match="tolerance_pp"):
        greedy.greedy_search_plan(m, g, x, y, tolerance_pp=-1)
    with pytest.raises(PlanError, match="min_bits"):
        greedy.greedy_search_plan(m, g, x, y, start_bits=4, min_bits=1)
    with pytest.raises(UnattainableTargetError, match="start plan"):
        greedy.greedy_search_plan(m, g, x, y, tolerance_pp=0.0, start_bits=3)
    with pytest.raises(PlanError, match="greedy_search_plan"):
        greedy.path_plans(g, tfprec.uniform_plan(g, bits=4))
    bad = dataclasses.replace(tfprec.uniform_plan(g, bits=4),
                              info={"start_bits": 4, "path": [["nope", "w", 3]]})
    with pytest.raises(PlanError, match="'nope'"):
        greedy.path_plans(g, bad)


@pytest.mark.slow   # default-suite time (< 5 min); see README
def test_bisect_budget_plan(clf):
    m, x, y, g = clf
    plan, evals = budget_lib.bisect_budget_plan(m, g, x, y, tolerance_pp=1.5)
    assert evals in range(1, 9) and plan.info["evaluations"] == evals
    r = V.validate(m, plan, x, y)
    assert r.quant_accuracy >= r.float_accuracy - 0.015 - 1e-12
    with pytest.raises(InvalidDataError, match="needs labels"):
        budget_lib.bisect_target_plan(m, g, x, None)
    plan2, evals2 = budget_lib.bisect_target_plan(m, g, x, y, tolerance_pp=1.5)
    assert plan2.info["evaluations"] == evals2 <= 6
    assert plan2.info["quant_accuracy"] >= plan2.info["float_accuracy"] - 0.015 - 1e-12


def test_paired_test_equals_the_enumerated_binomial_tail():
    """matched.paired_test: the discordant counts by explicit loops, and the
    exact two-sided McNemar p-value from the binomial coefficients summed by
    hand (math.comb), capped at 1."""
    import math
    from tfprec.errors import PlanError
    from tfprec.peers.matched import paired_test
    rng = np.random.default_rng(3)
    for n, flip in ((60, 0.3), (400, 0.05), (25, 0.0)):
        y = rng.integers(0, 4, n)
        a = np.where(rng.random(n) < flip, rng.integers(0, 4, n), y)
        b = np.where(rng.random(n) < 2 * flip, rng.integers(0, 4, n), y)
        only_a = sum(1 for i in range(n) if a[i] == y[i] and b[i] != y[i])
        only_b = sum(1 for i in range(n) if b[i] == y[i] and a[i] != y[i])
        m = only_a + only_b
        tail = sum(math.comb(m, j) for j in range(min(only_a, only_b) + 1)) / 2 ** m
        want = min(1.0, 2 * tail) if m else 1.0
        got = paired_test(a, b, y)
        assert (got.only_a, got.only_b) == (only_a, only_b)
        assert got.p_value == pytest.approx(want, rel=1e-9, abs=1e-15)
    # one-sided evidence: 0 against 10 discordant examples
    y = np.zeros(10, int)
    got = paired_test(np.ones(10, int), y, y)
    assert (got.only_a, got.only_b) == (0, 10)
    assert got.p_value == pytest.approx(2 / 1024)
    with pytest.raises(PlanError, match="decisions_a, decisions_b and labels"):
        paired_test(np.zeros(3), np.zeros(4), np.zeros(3))
