"""Validation of plans: measured float/fixed-point mismatch vs the bound.

The bound of every row is recomputed from the gains fields (sum over tensors
of 4^(1-B_T) R_T^2 E_T, a shared input tensor once) and the measured
mismatch is recounted with the independent numpy float64 simulation
(:func:`simulate_logits` argmax vs float argmax)."""
import numpy as np
import pytest
from conftest import shared_file

from tfprec._tf import keras, tf

import tfprec
from tfprec.quantization import validate as V
from tfprec.quantization.simulate import simulate_logits
from tfprec.errors import InvalidDataError, PlanError
from tfprec.planning.rules import paper_plan, uniform_plan

L = keras.layers


def expected_bound(gains, plan) -> float:
    """sum_T 4^(1-B_T) R_T^2 E_T from the gains fields (R, E) and the plan's
    bit-widths; the input tensor shared by an act_group is one tensor T."""
    total, groups = 0.0, set()
    for g in gains.layers:
        lp = plan.layer(g.name)
        total += 4.0 ** (1 - lp.weight_bits) * g.r_w ** 2 * g.e_w
        if not g.act_group:
            total += 4.0 ** (1 - lp.act_bits) * g.r_a ** 2 * g.e_a
        elif g.act_group not in groups:
            groups.add(g.act_group)
            total += 4.0 ** (1 - lp.act_bits) * g.r_a ** 2 * g.e_a_shared
    return total


@pytest.fixture(scope="module")
def toy():
    """float64 model (built with dtype=, floatx untouched) whose hidden
    tensor is read by two Dense heads (a shared input tensor); the float
    and fake-quant models then agree with the float64 simulation to
    round-off, so the mismatch counts must be equal."""
    keras.utils.set_random_seed(0)
    rs = np.random.RandomState(0)
    i = keras.Input((12,), dtype="float64")
    h = L.Dense(16, activation="relu", dtype="float64")(i)
    o = L.Add(dtype="float64")([L.Dense(4, dtype="float64")(h),
                                L.Dense(4, dtype="float64")(h)])
    m = keras.Model(i, L.Activation("softmax", dtype="float64")(o))
    x = rs.randn(300, 12)
    y = simulate_logits(m, None, x).argmax(1)
    y[:30] = (y[:30] + 1) % 4            # float accuracy exactly 0.9
    g = tfprec.noise_gains(m, x[:100])
    assert sum(bool(l.act_group) for l in g.layers) == 2
    return m, x, y, g


def check_row(model, gains, x, y, r, plan):
    """``r`` against the independent bound and mismatch count."""
    assert r.bound == pytest.approx(expected_bound(gains, plan), rel=1e-12)
    fdec = simulate_logits(model, None, x).argmax(1)
    qdec = simulate_logits(model, plan, x).argmax(1)
    assert r.num_examples == len(x)
    assert r.num_mismatch == int(np.sum(fdec != qdec))
    assert r.mismatch_rate == pytest.approx(np.mean(fdec != qdec))
    if y is not None:
        assert r.float_accuracy == pytest.approx(np.mean(fdec == y))
        assert r.quant_accuracy == pytest.approx(np.mean(qdec == y))


def test_validate_against_simulation_and_gains(toy):
    m, x, y, g = toy
    mismatches = []
    for plan in (paper_plan(g, b_min=2), paper_plan(g, b_min=3),
                 uniform_plan(g, bits=16)):
        r = V.validate(m, plan, x, y, batch_size=64)
        assert r.method == plan.method and r.b_min == plan.b_min and r.level is None
        check_row(m, g, x, y, r, plan)
        assert r.float_accuracy == pytest.approx(0.9)
        mismatches.append(r.num_mismatch)
    assert mismatches[0] > 0 and mismatches[-1] == 0     # not vacuous
    # one-hot labels give the same; no labels gives no accuracies
    plan = paper_plan(g, b_min=3)
    r = V.validate(m, plan, x, y)
    assert V.validate(m, plan, x, np.eye(4)[y]) == r
    r0 = V.validate(m, plan, x)
    assert r0.float_accuracy is None and r0.quant_accuracy is None
    assert r0.num_mismatch == r.num_mismatch
    assert "mismatch_rate" in r.to_dict()


@pytest.mark.slow
def test_datasets_are_accepted_like_arrays(toy):
    m, x, y, g = toy
    plan = paper_plan(g, b_min=2)
    r = V.validate(m, plan, x, y)
    ds = tf.data.Dataset.from_tensor_slices
    assert V.validate(m, plan, ds((x, y)).batch(37)) == r           # pairs
    assert V.validate(m, plan, ds((x, y))) == r                     # unbatched
    assert V.validate(m, plan, ds(x).batch(50), y) == r             # x only + y
    r0 = V.validate(m, plan, ds(x))
    assert r0.float_accuracy is None and r0.num_mismatch == r.num_mismatch
    np.testing.assert_array_equal(V.float_decisions(m, ds((x, y)).batch(64), 16),
                                  simulate_logits(m, None, x).argmax(1))
    np.testing.assert_array_equal(V.quant_decisions(m, plan, ds(x), 16),
                                  simulate_logits(m, plan, x).argmax(1))
    rows = V.sweep(m, g, ds((x, y)).batch(64), b_mins=[2, 3], methods=("uniform",))
    assert rows == V.sweep(m, g, x, y, b_mins=[2, 3], methods=("uniform",))


@pytest.mark.slow
def test_sweep_rows_and_markdown(toy):
    m, x, y, g = toy
    rows = V.sweep(m, g, x, y, b_mins=[2, 4, 15, 16],
                   methods=("paper", "uniform", "icml2017"))
    methods = [r.method for r in rows]
    assert methods == sorted(methods, key=("paper", "uniform", "icml2017").index)
    assert {(r.method, r.level) for r in rows} >= {("paper", 2), ("uniform", 2),
                                                    ("uniform", 16), ("icml2017", 4)}
    for r in rows:
        plan = V.plan_at_level(g, r.method, r.level)
        bits = [b for l in plan.layers for b in (l.weight_bits, l.act_bits)]
        assert 2 <= min(bits) and max(bits) <= 16
        check_row(m, g, x, y, r, plan)
    uni = {r.level: r for r in rows if r.method == "uniform"}
    assert all(l.weight_bits == l.act_bits == 4
               for l in V.plan_at_level(g, "uniform", 4).layers)
    assert uni[2].num_mismatch > 0
    md = V.to_markdown(rows)
    assert md.count("\n") == len(rows) + 2
    assert "| paper | 2 |" in md


def test_validate_errors(toy):
    m, x, y, g = toy
    plan = paper_plan(g, b_min=4)
    bad = [((m, plan, None), InvalidDataError, "x is None"),
           ((m, None, x), PlanError, "plan must be"),
           ((m, plan, [x]), InvalidDataError, "not a list"),
           ((m, plan, x[:, :5]), InvalidDataError, "shape"),
           ((m, plan, x, y[:10]), InvalidDataError, "^y has shape"),
           ((m, plan, x[:0]), InvalidDataError, "x is empty"),
           ((m, plan, np.full_like(x, np.nan)), InvalidDataError, "NaN"),
           ((m, plan, x, y + 10), InvalidDataError, "classes")]
    for args, err, msg in bad:
        with pytest.raises(err, match=msg):
            V.validate(*args)
    for b in (0, True, 2.0):
        with pytest.raises(InvalidDataError, match="batch_size"):
            V.validate(m, plan, x, batch_size=b)
    with pytest.raises(InvalidDataError, match="x is None"):
        V.float_decisions(m, None)
    with pytest.raises(PlanError, match="unknown plan method"):
        V.sweep(m, g, x, methods=("nope",))
    with pytest.raises(PlanError, match="unknown plan method"):
        V.plan_at_level(g, "nope", 4)


@pytest.mark.slow   # default-suite time (< 5 min); see README
def test_mnist_measured_mismatch_below_bound():
    """METHOD.md section 6 on a small MNIST MLP (784-128-128-10, hidden
    activation clip(x, 0, 2), inputs in [0, 1], weights clipped to [-1, 1]):
    the paper rule's bound (recomputed from the gains) is above the
    measured mismatch (recounted with the float64 simulation) wherever it
    is below 1 and resolvable by the test-set size."""
    d = np.load(shared_file("mnist.npz"))
    xtr = d["x_train"][:20000].reshape(-1, 784).astype("float32") / 255.0
    ytr = d["y_train"][:20000]
    xte = d["x_test"][:3000].reshape(-1, 784).astype("float32") / 255.0
    yte = d["y_test"][:3000]
    keras.utils.set_random_seed(0)
    clip = lambda w: tf.clip_by_value(w, -1.0, 1.0)
    m = keras.Sequential([L.Input((784,))] + [
        layer for _ in range(2) for layer in (
            L.Dense(128, kernel_constraint=clip, bias_constraint=clip),
            L.ReLU(max_value=2.0))] + [L.Dense(10)])
    m.compile(keras.optimizers.Adam(1e-3),
              keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    m.fit(xtr, ytr, batch_size=128, epochs=2, verbose=0)
    g = tfprec.noise_gains(m, xtr[:2000])
    assert [l.act_signed for l in g.layers] == [False] * 3
    assert [l.act_range_source for l in g.layers] == ["calibrated", "known bound",
                                                      "known bound"]
    rows = V.sweep(m, g, xte, yte, b_mins=range(2, 11), methods=("paper",))
    assert [r.level for r in rows] == list(range(2, 11))
    assert rows[0].float_accuracy > 0.9
    def decisions_and_near_ties(plan):
        """float64 simulated decisions, and which examples have a top-2
        logit margin within float32 round-off (2e-3 of the logit scale, as
        in test_apply) where a float32 model may decide otherwise."""
        z = simulate_logits(m, plan, xte)
        top2 = np.sort(z, axis=1)[:, -2:]
        return z.argmax(1), top2[:, 1] - top2[:, 0] < 4e-3 * (np.abs(z).max() + 1)

    fdec, fnear = decisions_and_near_ties(None)
    for r in rows:
        plan = V.plan_at_level(g, "paper", r.level)
        assert r.bound == pytest.approx(expected_bound(g, plan), rel=1e-12)
        qdec, qnear = decisions_and_near_ties(plan)
        want = int(np.sum(fdec != qdec))
        assert abs(r.num_mismatch - want) <= int(np.sum(fnear | qnear)), r
    n = rows[0].num_examples
    checked = [r for r in rows if 3.0 / n <= r.bound < 1.0]
    assert len(checked) >= 3, V.to_markdown(rows)
    for r in checked:
        assert r.mismatch_rate < r.bound, V.to_markdown(rows)
    assert rows[0].mismatch_rate > rows[-1].mismatch_rate
