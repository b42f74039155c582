"""Class chunking, the many-class estimator and tf.distribute."""
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import tfprec
from tfprec._tf import keras

L = keras.layers


def _model(m=12, seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([L.Input((6, 6, 2)), L.Conv2D(4, 3, activation="relu"),
                             L.Flatten(), L.Dense(8, activation="relu"),
                             L.Dense(m, bias_initializer="random_normal")])


X = np.random.default_rng(1).normal(size=(40, 6, 6, 2)).astype("float32")


def _close(a, b, rel):
    for la, lb in zip(a.layers, b.layers):
        assert la.e_w == pytest.approx(lb.e_w, rel=rel)
        assert la.e_a == pytest.approx(lb.e_a, rel=rel)


@pytest.mark.slow
def test_class_chunks_equal_one_pass():
    m = _model()
    ref = tfprec.noise_gains(m, X, dtype="float64")
    for chunk in (1, 4, 5):
        _close(tfprec.noise_gains(m, X, dtype="float64", class_chunk=chunk), ref, 1e-10)


def test_estimator_with_all_classes_is_exact():
    m = _model()
    ref = tfprec.noise_gains(m, X, dtype="float64")
    est = tfprec.noise_gains(m, X, dtype="float64", top_k=11, sketch=3)
    assert est.mode == "exact"
    _close(est, ref, 1e-10)


def test_estimator_top_k_only_is_a_lower_bound():
    m = _model()
    ref = tfprec.noise_gains(m, X, dtype="float64")
    est = tfprec.noise_gains(m, X, dtype="float64", top_k=3)
    assert est.mode == "top3+sketch0"
    for a, b in zip(est.layers, ref.layers):
        assert 0 < a.e_w <= b.e_w * (1 + 1e-12) and 0 < a.e_a <= b.e_a * (1 + 1e-12)


def test_sketch_is_unbiased():
    m = _model()
    ref = tfprec.noise_gains(m, X, dtype="float64")
    runs = [tfprec.noise_gains(m, X, dtype="float64", top_k=2, sketch=4, seed=s)
            for s in range(30)]
    assert runs[0].layers[0].e_w != runs[1].layers[0].e_w      # really random
    again = tfprec.noise_gains(m, X, dtype="float64", top_k=2, sketch=4, seed=0)
    assert again.layers[0].e_w == runs[0].layers[0].e_w        # deterministic
    for j, lr in enumerate(ref.layers):
        mean_w = np.mean([r.layers[j].e_w for r in runs])
        mean_a = np.mean([r.layers[j].e_a for r in runs])
        assert mean_w == pytest.approx(lr.e_w, rel=0.05)
        assert mean_a == pytest.approx(lr.e_a, rel=0.05)


def test_bad_estimator_arguments():
    m = _model()
    with pytest.raises(tfprec.InvalidDataError, match="top_k"):
        tfprec.noise_gains(m, X, top_k=0)
    with pytest.raises(tfprec.InvalidDataError, match="sketch"):
        tfprec.noise_gains(m, X, top_k=2, sketch=-1)
    with pytest.raises(tfprec.InvalidDataError, match="class_chunk"):
        tfprec.noise_gains(m, X, class_chunk=0)


@pytest.mark.slow
def test_mirrored_strategy_matches_one_device():
    # Logical devices must be set before TensorFlow starts: own process.
    code = textwrap.dedent("""
        import numpy as np, tfprec
        from tfprec._tf import tf, keras
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        L = keras.layers
        keras.utils.set_random_seed(0)
        m = keras.Sequential([L.Input((6, 6, 2)), L.Conv2D(4, 3), L.BatchNormalization(),
                              L.ReLU(max_value=2.0), L.MaxPooling2D(), L.Flatten(),
                              L.Dense(5, bias_initializer="random_normal")])
        x = np.random.default_rng(1).normal(size=(37, 6, 6, 2)).astype("float32")
        s = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        assert s.num_replicas_in_sync == 2
        a = tfprec.noise_gains(m, x, batch_size=8, dtype="float64")
        b = tfprec.noise_gains(m, x, batch_size=8, dtype="float64", strategy=s)
        assert a.num_examples == b.num_examples == 37 and a.num_ties == b.num_ties
        for la, lb in zip(a.layers, b.layers):
            for f in ("e_w", "e_a", "r_w", "r_a", "act_low", "act_high"):
                va, vb = getattr(la, f), getattr(lb, f)
                assert abs(va - vb) <= 1e-10 * abs(va), (la.name, f, va, vb)
        print("OK")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-3000:]


def test_shared_input_tensor_gain_and_plan_constraint():
    """A tensor read by two weight layers is one quantizer: its gain is that
    of the summed input gradients, and plans give it one format."""
    import tensorflow as tf
    keras.utils.set_random_seed(4)
    inp = L.Input((5,))
    t = L.Dense(6, activation="relu", name="a")(inp)
    u1 = L.Dense(4, name="b1")(t)
    u2 = L.Dense(4, name="b2")(t)
    h = L.ReLU(max_value=2.0)(L.Add()([u1, u2]))
    out = L.Dense(3, name="out", bias_initializer="random_normal")(h)
    m = keras.Model(inp, out)
    x = np.random.default_rng(2).normal(size=(9, 5))
    g = tfprec.noise_gains(m, x, dtype="float64")
    assert g["b1"].act_group == g["b2"].act_group == "b1+b2"
    assert g["a"].act_group == "" and g["a"].e_a_shared is None
    # Brute force: one perturbation e on t, read by b1 and b2 only.
    W = {n: [tf.constant(w, tf.float64) for w in m.get_layer(n).get_weights()]
         for n in ("a", "b1", "b2", "out")}
    tot_shared = tot_sep = 0.0
    for xi in x:
        e = tf.Variable(tf.zeros((1, 6), tf.float64))
        e1 = tf.Variable(tf.zeros((1, 6), tf.float64))
        with tf.GradientTape(persistent=True) as tape:
            tt = tf.nn.relu(xi[None] @ W["a"][0] + W["a"][1])
            hh = tf.clip_by_value((tt + e + e1) @ W["b1"][0] + W["b1"][1]
                                  + (tt + e) @ W["b2"][0] + W["b2"][1], 0, 2)
            z = (hh @ W["out"][0] + W["out"][1])[0]
            y = int(tf.argmax(z))
            ds = [z[i] - z[y] for i in range(3) if i != y]
        for d in ds:
            tot_shared += float(tf.reduce_sum(tape.gradient(d, e) ** 2)) / float(d) ** 2
            tot_sep += float(tf.reduce_sum(tape.gradient(d, e1) ** 2)) / float(d) ** 2
    assert g["b1"].e_a_shared == pytest.approx(tot_shared / len(x) / 24, rel=1e-9)
    assert g["b1"].e_a == pytest.approx(tot_sep / len(x) / 24, rel=1e-9)
    for make in (tfprec.paper_plan, tfprec.uniform_plan, tfprec.icml2017_plan,
                 tfprec.cost_aware_plan):
        p = make(g, 0.01)
        assert p.layer("b1").act_bits == p.layer("b2").act_bits
        assert p.layer("b1").g_a == pytest.approx(g["b1"].g_a_shared)
        shared_term = p.layer("b1").act_term
        others = sum(l.weight_term + (l.act_term if l.name != "b2" else 0)
                     for l in p.layers)
        assert p.bound() == pytest.approx(others) and shared_term > 0
        assert p.bound() <= 0.01
    p = tfprec.paper_plan(g, 0.01).with_bits(act_bits={"b1": 9})
    assert p.layer("b2").act_bits == 9
    with pytest.raises(tfprec.PlanError, match="same input tensor"):
        import dataclasses
        bad = dataclasses.replace(p, layers=tuple(
            dataclasses.replace(l, act_bits=5) if l.name == "b2" else l
            for l in p.layers))
        bad.check()
