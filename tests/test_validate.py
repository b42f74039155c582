"""Validation of plans: measured float/fixed-point mismatch vs the bound."""
import os

import numpy as np
import pytest

from tfprec._tf import keras, tf

import tfprec
from tfprec.quantization import validate as V
from tfprec.errors import InvalidDataError, PlanError
from tfprec.planning.plan import paper_plan, uniform_plan

L = keras.layers
MNIST = os.environ.get("TFPREC_MNIST", "/work/shared/data/mnist.npz")


@pytest.fixture(scope="module")
def toy():
    keras.utils.set_random_seed(0)
    rs = np.random.RandomState(0)
    m = keras.Sequential([L.Input((12,)), L.Dense(16, activation="relu"),
                          L.Dense(4, activation="softmax")])
    x = rs.randn(300, 12).astype("float32")
    y = m.predict(x, verbose=0).argmax(1)
    y[:30] = (y[:30] + 1) % 4            # float accuracy exactly 0.9
    g = tfprec.noise_gains(m, x[:100])
    return m, x, y, g


def test_validate_result_fields(toy):
    m, x, y, g = toy
    plan = paper_plan(g, b_min=3)
    r = V.validate(m, plan, x, y, batch_size=64)
    assert r.method == "paper" and r.b_min == 3 and r.level is None
    assert r.num_examples == 300
    assert r.bound == pytest.approx(plan.bound())
    assert r.mismatch_rate == r.num_mismatch / 300
    assert r.float_accuracy == pytest.approx(0.9)
    assert 0.0 <= r.quant_accuracy <= 1.0
    assert r.compute_cost == plan.cost().total_compute
    assert r.memory_cost == plan.cost().total_memory
    # one-hot labels give the same; no labels gives no accuracies
    r1 = V.validate(m, plan, x, np.eye(4)[y])
    assert r1.quant_accuracy == r.quant_accuracy
    r0 = V.validate(m, plan, x)
    assert r0.float_accuracy is None and r0.quant_accuracy is None
    assert r0.num_mismatch == r.num_mismatch
    # 16 bits everywhere: no decision changes
    r16 = V.validate(m, uniform_plan(g, bits=16), x, y)
    assert r16.num_mismatch == 0 and r16.quant_accuracy == r16.float_accuracy
    assert "mismatch_rate" in r16.to_dict()


def test_sweep_rows_and_markdown(toy):
    m, x, y, g = toy
    rows = V.sweep(m, g, x, y, b_mins=[2, 4, 15, 16],
                   methods=("paper", "uniform", "icml2017"))
    methods = [r.method for r in rows]
    assert methods == sorted(methods, key=("paper", "uniform", "icml2017").index)
    assert {(r.method, r.level) for r in rows} >= {("paper", 2), ("uniform", 2),
                                                    ("uniform", 16), ("icml2017", 4)}
    for r in rows:                      # every tensor within 2..16 bits
        plan = V.plan_at_level(g, r.method, r.level)
        assert 2 <= plan.b_min and max(max(l.weight_bits, l.act_bits)
                                       for l in plan.layers) <= 16
        assert r.bound == pytest.approx(plan.bound())
    # paper plans with offsets > 0 cannot reach B_min = 16: skipped
    offs = max(V.plan_at_level(g, "paper", 2).info["offsets_w"]
               + V.plan_at_level(g, "paper", 2).info["offsets_a"])
    assert (("paper", 16) in {(r.method, r.level) for r in rows}) == (offs == 0)
    md = V.to_markdown(rows)
    assert md.count("\n") == len(rows) + 2
    assert "| paper | 2 |" in md


def test_validate_errors(toy):
    m, x, y, g = toy
    plan = paper_plan(g, b_min=4)
    with pytest.raises(InvalidDataError, match="shape"):
        V.validate(m, plan, x[:, :5])
    with pytest.raises(InvalidDataError, match="labels"):
        V.validate(m, plan, x, y[:10])
    with pytest.raises(InvalidDataError, match="no examples"):
        V.validate(m, plan, x[:0])
    with pytest.raises(InvalidDataError, match="NaN"):
        V.validate(m, plan, np.full_like(x, np.nan))
    with pytest.raises(InvalidDataError, match="batch_size"):
        V.validate(m, plan, x, batch_size=0)
    with pytest.raises(PlanError, match="unknown plan method"):
        V.sweep(m, g, x, methods=("nope",))


@pytest.mark.skipif(not os.path.exists(MNIST), reason="MNIST file not available")
def test_mnist_measured_mismatch_below_bound():
    """METHOD.md section 6 on a small MNIST MLP (784-128-128-10, hidden
    activation clip(x, 0, 2), inputs in [0, 1], weights clipped to [-1, 1]):
    the paper rule's bound is above the measured mismatch wherever it is
    below 1 (and large enough to be resolved by the test-set size)."""
    d = np.load(MNIST)
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
    n = rows[0].num_examples
    checked = [r for r in rows if 3.0 / n <= r.bound < 1.0]
    assert len(checked) >= 3, V.to_markdown(rows)
    for r in checked:
        assert r.mismatch_rate < r.bound, V.to_markdown(rows)
    # the mismatch falls with precision and the bound tracks it
    assert rows[0].mismatch_rate > rows[-1].mismatch_rate
    assert all(a.bound == pytest.approx(4 * b.bound) for a, b in zip(rows, rows[1:]))
