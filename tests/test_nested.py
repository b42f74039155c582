"""Models nested as layers (a keras.applications base under a new head, a
Sequential stem) and frozen layers, through the pipeline.

Each nested model is checked against the same network built flat by hand
(same layer names, same weights): tfprec must see one network, so gains,
plans and fake-quant outputs agree, and the flat network's gains agree with
the float64 brute force of tests/reference.py.
"""
import json
import warnings

import numpy as np
import pytest

import tfprec
from tfprec._tf import keras, tf
from tfprec.errors import UnsupportedModelError
from tfprec.export import runtime
from tfprec.export.running import tflite_predict
from tfprec.quantization.apply import binary_threshold

from reference import randomize, reference_gains

L = keras.layers
SHAPE = (6, 6, 2)


def _stem(prefix=""):
    return keras.Sequential([L.Conv2D(3, 3, padding="same", name=prefix + "stem_conv"),
                             L.BatchNormalization(name=prefix + "stem_bn"),
                             L.ReLU(name=prefix + "stem_relu")], name=prefix + "stem")


def _backbone_layers(x, names):
    """The backbone's layers after its stem, called on ``x``."""
    y = L.Conv2D(4, 3, strides=2, activation="relu", name=names("conv"))(x)
    z = L.DepthwiseConv2D(3, padding="same", name=names("dw"))(y)
    z = L.Activation("tanh", name=names("tanh"))(z)
    return L.Add(name=names("add"))([y, z])


def nested(seed=0, binary=False, frozen=False):
    """Outer functional model: [backbone (functional, with a nested
    Sequential stem)] -> GAP -> [head (Sequential, ends in softmax/sigmoid)]."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input(SHAPE, name="bb_in")
    h = _stem()(inp)
    backbone = keras.Model(inp, _backbone_layers(h, lambda n: n), name="backbone")
    backbone.trainable = not frozen
    head = keras.Sequential(
        [L.Input((4,)), L.Dense(5, activation="relu", name="fc"),
         L.Dense(1, activation="sigmoid", name="logits") if binary else
         L.Dense(3, activation="softmax", name="logits")], name="head")
    x = keras.Input(SHAPE, name="image")
    y = head(L.GlobalAveragePooling2D(name="gap")(backbone(x)))
    return randomize(keras.Model(x, y, name="outer"), seed)


def flat_copy(model):
    """The network of :func:`nested` built flat, with the same weights."""
    x = keras.Input(SHAPE, name="image")
    h = L.Conv2D(3, 3, padding="same", name="stem_conv")(x)
    h = L.ReLU(name="stem_relu")(L.BatchNormalization(name="stem_bn")(h))
    h = L.GlobalAveragePooling2D(name="gap")(_backbone_layers(h, lambda n: n))
    h = L.Dense(5, activation="relu", name="fc")(h)
    units = model.outputs[0].shape[-1]
    out = L.Dense(units, activation="sigmoid" if units == 1 else "softmax",
                  name="logits")(h)
    flat = keras.Model(x, out, name="flat")
    inner = {l.name: l for l in model.submodules if not isinstance(l, keras.Model)}
    for l in flat.layers:
        if l.weights:
            l.set_weights(inner[l.name].get_weights())
    return flat


def data(n, seed=1):
    return np.random.default_rng(seed).normal(0.0, 1.0, (n, *SHAPE)).astype("float32")


def gains(model, x, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", tfprec.TfprecWarning)
        return tfprec.noise_gains(model, x, **kw)


def structure(model):
    """Weights and graph bookkeeping of ``model`` and the models in it."""
    out, stack = [], [model]
    while stack:
        m = stack.pop()
        for l in m.layers:
            out.append((m.name, l.name, len(l.inbound_nodes), len(l.outbound_nodes),
                        [w.numpy().copy() for w in l.weights]))
            if isinstance(l, keras.Model):
                stack.append(l)
    return out


def assert_same_structure(a, b):
    assert [r[:4] for r in a] == [r[:4] for r in b]
    for ra, rb in zip(a, b):
        for wa, wb in zip(ra[4], rb[4]):
            np.testing.assert_array_equal(wa, wb)


@pytest.fixture(scope="module")
def pair():
    model = nested()
    return model, flat_copy(model)


def test_flat_copy_is_the_same_network(pair):
    model, flat = pair
    x = data(16)
    np.testing.assert_allclose(model(x).numpy(), flat(x).numpy(), rtol=1e-5, atol=1e-6)


def test_gains_equal_the_flat_network_and_the_reference(pair):
    model, flat = pair
    x = data(12)
    got, want_flat = gains(model, x, batch_size=5), gains(flat, x, batch_size=5)
    ref = reference_gains(flat, x)
    assert got.names == want_flat.names
    assert set(got.names) == {"stem_conv", "conv", "dw", "fc", "logits"}
    assert got.num_ties == ref.num_ties
    for name in got.names:
        a, b = got[name], want_flat[name]
        assert (a.e_w, a.e_a, a.act_high) == pytest.approx((b.e_w, b.e_a, b.act_high),
                                                          rel=1e-6), name
        assert a.e_w == pytest.approx(ref.layers[name].e_w, rel=1e-4), name
        assert a.e_a == pytest.approx(ref.layers[name].e_a, rel=1e-4), name


def test_fake_quant_model_is_flat_and_equals_the_flat_one(pair):
    model, flat = pair
    before = structure(model)
    x = data(40, seed=2)
    g = gains(model, x)
    for b_min in (3, 6):
        plan = tfprec.paper_plan(g, b_min=b_min)
        assert plan.names == tfprec.paper_plan(gains(flat, x), b_min=b_min).names
        q, qf = tfprec.quantize_model(model, plan), tfprec.quantize_model(flat, plan)
        assert not any(isinstance(l, keras.Model) for l in q.layers)
        assert [l.name for l in q.layers] == [l.name for l in qf.layers]
        np.testing.assert_allclose(q(x).numpy(), qf(x).numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(tfprec.simulate_logits(model, plan, x),
                                   tfprec.simulate_logits(flat, plan, x), rtol=1e-6,
                                   atol=1e-6)
        r = tfprec.validate.validate(model, plan, x, np.argmax(model(x), -1))
        assert r.float_accuracy == 1.0
        assert r.mismatch_rate == pytest.approx(
            np.mean(np.argmax(q(x), -1) != np.argmax(model(x), -1)))
    folded = tfprec.fold_batchnorm(model)
    np.testing.assert_allclose(folded(x).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-6)
    assert_same_structure(structure(model), before)


def test_frozen_base_is_quantized_like_a_trainable_one():
    frozen, trainable = nested(seed=3, frozen=True), nested(seed=3)
    assert not frozen.get_layer("backbone").trainable_weights
    x = data(20, seed=4)
    gf, gt = gains(frozen, x), gains(trainable, x)
    assert gf.names == gt.names
    for name in gf.names:
        assert gf[name].e_w == pytest.approx(gt[name].e_w, rel=1e-6), name
    plan = tfprec.paper_plan(gf, b_min=4)
    np.testing.assert_allclose(tfprec.quantize_model(frozen, plan)(x).numpy(),
                               tfprec.quantize_model(trainable, plan)(x).numpy(),
                               rtol=1e-6)


def test_frozen_layer_of_a_flat_model():
    keras.utils.set_random_seed(5)
    model = keras.Sequential([L.Input((4,)), L.Dense(6, activation="relu", name="a"),
                              L.Dense(3, name="b")])
    model.get_layer("a").trainable = False
    x = np.random.default_rng(5).normal(size=(30, 4)).astype("float32")
    plan = tfprec.paper_plan(gains(model, x), b_min=4)
    assert plan.names == ["a", "b"]
    np.testing.assert_allclose(tfprec.quantize_model(model, plan)(x).numpy(),
                               tfprec.simulate_logits(model, plan, x), rtol=1e-5,
                               atol=1e-6)
    assert not model.get_layer("a").trainable


def test_binary_head_inside_a_nested_model():
    model = nested(seed=6, binary=True)
    assert binary_threshold(model) == 0.5
    x = data(20, seed=7)
    g = gains(model, x)
    flat = flat_copy(model)
    assert g.names == gains(flat, x).names
    plan = tfprec.paper_plan(g, b_min=5)
    r = tfprec.validate.validate(model, plan, x, (model(x).numpy()[:, 0] > 0.5).astype(int))
    assert r.float_accuracy == 1.0


def test_callback_reads_a_nested_model(pair):
    model, _ = pair
    m = nested()            # the same network, to train
    x = data(24, seed=8)
    y = np.argmax(model(x), -1)
    m.compile("sgd", "sparse_categorical_crossentropy")
    cb = tfprec.NoiseGainCallback(x, method="paper", verbose=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", tfprec.TfprecWarning)
        m.fit(x, y, epochs=1, batch_size=8, verbose=0, callbacks=[cb])
    g = cb.gains
    want = gains(m, x)
    assert cb.plan.names == g.names
    assert g.names == want.names
    for name in g.names:
        assert g[name].e_w == pytest.approx(want[name].e_w, rel=1e-5), name


def test_nested_model_called_twice_is_refused():
    keras.utils.set_random_seed(9)
    tower = keras.Sequential([L.Input((4,)), L.Dense(3, name="t_fc")], name="tower")
    a, b = keras.Input((4,), name="a"), keras.Input((4,), name="b")
    out = L.Dense(2, name="out")(L.Concatenate()([tower(a), tower(b)]))
    model = keras.Model([a, b], out)
    with pytest.raises(UnsupportedModelError, match="'tower'.*more than once"):
        tfprec.noise_gains(model, [np.ones((4, 4), "float32")] * 2)
    with pytest.raises(UnsupportedModelError, match="'tower'"):
        tfprec.fold_batchnorm(model)


def test_clashing_names_are_refused():
    keras.utils.set_random_seed(10)
    inner = keras.Sequential([L.Input((4,)), L.Dense(3, name="fc")], name="inner")
    x = keras.Input((4,))
    model = keras.Model(x, L.Dense(2, name="fc")(inner(x)))
    with pytest.raises(UnsupportedModelError, match="named 'fc'"):
        tfprec.noise_gains(model, np.ones((4, 4), "float32"))


@pytest.mark.slow
def test_export_of_a_nested_model(pair, tmp_path):
    model, flat = pair
    x = data(64, seed=11)
    plan = tfprec.paper_plan(gains(model, x), b_min=6)
    rep = tfprec.export.export_tflite(model, plan, str(tmp_path / "n.tflite"), x)
    rep_flat = tfprec.export.export_tflite(flat, plan, str(tmp_path / "f.tflite"), x)
    assert [l.name for l in rep.layers] == [l.name for l in rep_flat.layers]
    got = tflite_predict(str(tmp_path / "n.tflite"), x)
    np.testing.assert_array_equal(got, tflite_predict(str(tmp_path / "f.tflite"), x))
    fq = tfprec.quantize_model(model, plan)(x).numpy()
    assert np.mean(np.argmax(got, -1) == np.argmax(fq, -1)) == 1.0
    with open(tmp_path / "n.tflite", "rb") as f:
        ops = {r["op"] for r in runtime.op_table(f.read())}
    assert "CONV_2D" in ops and "FULLY_CONNECTED" in ops


def test_recalibrate_batchnorm_reaches_nested_models():
    from tfprec.application import models
    model = nested(seed=12)
    bn = model.get_layer("backbone").get_layer("stem").get_layer("stem_bn")
    x = data(48, seed=12)
    assert models.recalibrate_batchnorm(model, x, batch_size=48) == 1
    pre = keras.Model(model.get_layer("backbone").get_layer("stem").inputs,
                      model.get_layer("backbone").get_layer("stem").get_layer("stem_conv").output)
    h = pre(x).numpy().reshape(-1, 3)
    np.testing.assert_allclose(bn.moving_mean.numpy(), h.mean(0), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_transfer_learning_form_of_an_application():
    """Sequential([frozen MobileNetV2 base, GAP, Dense]) against the same
    layers wired as one functional graph (base.input -> head)."""
    keras.utils.set_random_seed(13)
    base = keras.applications.MobileNetV2(include_top=False, weights=None,
                                          input_shape=(32, 32, 3), alpha=0.35)
    base.trainable = False
    gap, fc = L.GlobalAveragePooling2D(name="gap"), L.Dense(4, name="fc")
    model = keras.Sequential([base, gap, fc])
    flat = keras.Model(base.input, fc(gap(base.output)))
    x = np.random.default_rng(13).uniform(-1, 1, (24, 32, 32, 3)).astype("float32")
    g, gf = gains(model, x), gains(flat, x)
    assert g.names == gf.names and len(g.names) == 53
    for name in g.names:
        assert g[name].e_w == pytest.approx(gf[name].e_w, rel=1e-6), name
        assert g[name].e_a == pytest.approx(gf[name].e_a, rel=1e-6), name
    plan = tfprec.uniform_plan(g, bits=8)
    q = tfprec.quantize_model(model, plan)
    assert not any(isinstance(l, keras.Model) for l in q.layers)
    np.testing.assert_allclose(q(x).numpy(), tfprec.quantize_model(flat, plan)(x).numpy(),
                               rtol=1e-5, atol=1e-5)


def test_tutorial_form_uint8_images_and_a_nested_augmentation(tmp_path):
    """The Keras tutorials' classifier: uint8 images, a nested Sequential of
    random augmentations (identity at inference), Rescaling, then layers;
    exported with the default backend and run on uint8 inputs."""
    keras.utils.set_random_seed(14)
    aug = keras.Sequential([L.RandomFlip("horizontal"), L.RandomRotation(0.1)], name="aug")
    i = keras.Input((8, 8, 3), dtype="uint8")
    h = L.Rescaling(1.0 / 255)(aug(i))
    h = L.Conv2D(4, 3, activation="relu", name="conv")(h)
    out = L.Dense(3, name="logits")(L.Flatten()(h))
    model = randomize(keras.Model(i, out), 14)
    x = np.random.default_rng(14).integers(0, 256, (64, 8, 8, 3)).astype("uint8")
    g = gains(model, x)
    assert g.names == ["conv", "logits"]
    plan = tfprec.uniform_plan(g, bits=8)
    q = tfprec.quantize_model(model, plan)
    path = str(tmp_path / "t.tflite")
    tfprec.export.export_tflite(model, plan, path, x)
    got = tflite_predict(path, x)
    # training=False: Keras' random layers augment by default when called
    want = q(x, training=False).numpy()
    np.testing.assert_allclose(want, tfprec.simulate_logits(model, plan, x), atol=1e-4)
    assert np.mean(np.argmax(got, -1) == np.argmax(want, -1)) == 1.0
    with pytest.raises(tfprec.InvalidDataError, match="example 0 .*uint8"):
        tflite_predict(path, x.astype("float32") + 300)


@pytest.mark.slow   # default-suite time (< 5 min)
def test_cli_on_a_uint8_model_with_nested_augmentation(tmp_path, capsys):
    """--model of the tutorials' form with --data of uint8 images: the model
    gets the images' values 0..255 (it rescales them itself), not x / 255."""
    from test_cli import run_cli
    keras.utils.set_random_seed(15)
    aug = keras.Sequential([L.RandomFlip("horizontal")], name="aug")
    i = keras.Input((8, 8, 3), dtype="uint8")
    h = L.Conv2D(4, 3, activation="relu", name="conv")(L.Rescaling(1.0 / 255)(aug(i)))
    model = randomize(keras.Model(i, L.Dense(3, name="logits")(L.Flatten()(h))), 15)
    rng = np.random.default_rng(15)
    x = rng.integers(0, 256, (400, 8, 8, 3)).astype("uint8")
    y = np.argmax(model.predict(x, verbose=0), -1)        # the float model is right
    model.save(tmp_path / "m.h5")
    np.savez(tmp_path / "d.npz", x_train=x[:200], y_train=y[:200], x_test=x[200:],
             y_test=y[200:])
    out = tmp_path / "out"
    code, _, err = run_cli([f"--model={tmp_path / 'm.h5'}", f"--data={tmp_path / 'd.npz'}",
                            "--target_bound=0.5", "--calibration_examples=200",
                            "--eval_examples=200", "--sweep_levels=none", "--noplots",
                            f"--output_dir={out}"], capsys)
    assert code == 0, err[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["validation"]["float_accuracy"] == 1.0
    assert (out / "model.tflite").is_file()


@pytest.mark.slow   # default-suite time (< 5 min)
def test_rounding_and_the_peers_read_a_nested_model(pair):
    """optimize_rounding and the Hessian-trace peer see the flat network."""
    from tfprec.peers.hessian import hessian_trace_sensitivity
    model, flat = pair
    x = data(64, seed=16)
    plan = tfprec.paper_plan(gains(model, x), b_min=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", tfprec.TfprecWarning)
        r, rf = (tfprec.optimize_rounding(m, plan, x) for m in (model, flat))
    for a, b in zip(r.model.get_weights(), rf.model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    y = np.argmax(model(x).numpy(), -1)
    t, tf_ = (hessian_trace_sensitivity(m, x[:16], y[:16], num_samples=4) for m in (model, flat))
    assert list(t) == list(tf_) == plan.names
    for name in t:        # the same probes on the same network
        assert t[name] == pytest.approx(tf_[name], rel=1e-4), name
        assert t.activation[name] == pytest.approx(tf_.activation[name], rel=1e-4), name


def test_two_inputs_each_through_its_own_nested_tower():
    """Two nested towers (distinct models) on two inputs, merged: the same
    gains and fake-quant outputs as the towers' layers wired flat."""
    keras.utils.set_random_seed(17)

    def tower(k):
        i = keras.Input((5,), name=f"{k}_in")
        return keras.Model(i, L.Dense(4, activation="relu", name=f"{k}_fc")(i), name=k)

    left, right = tower("left"), tower("right")
    a, b = keras.Input((5,), name="a"), keras.Input((5,), name="b")
    fc = L.Dense(3, name="logits")
    model = randomize(keras.Model([a, b], fc(L.Concatenate()([left(a), right(b)]))), 17)
    fa, fb = keras.Input((5,), name="a"), keras.Input((5,), name="b")
    flat = keras.Model([fa, fb], fc(L.Concatenate()([left.get_layer("left_fc")(fa),
                                                       right.get_layer("right_fc")(fb)])))
    rng = np.random.default_rng(17)
    x = [rng.normal(size=(20, 5)).astype("float32") for _ in range(2)]
    g, gf = gains(model, x), gains(flat, x)
    assert g.names == gf.names == ["left_fc", "right_fc", "logits"]
    for name in g.names:
        assert g[name].e_w == pytest.approx(gf[name].e_w, rel=1e-6), name
    plan = tfprec.paper_plan(g, b_min=5)
    np.testing.assert_allclose(tfprec.quantize_model(model, plan)(x).numpy(),
                               tfprec.quantize_model(flat, plan)(x).numpy(), rtol=1e-6)
