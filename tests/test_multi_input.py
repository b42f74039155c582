"""Classifiers with several inputs (tfprec.packing) through the pipeline."""
import warnings

import numpy as np
import pytest

import tfprec
from tfprec import packing
from tfprec._tf import keras, tf
from tfprec.errors import InvalidDataError, PlanError, UnsupportedModelError

from reference import randomize, reference_gains_multi

L = keras.layers
N = 10          # examples of the brute-force reference (it loops over them)


# ------------------------------------------------------------------ models
def image_tabular(seed=0, dtype="float32"):
    """An image branch (Conv2D, BN, pooling) and a tabular branch (Dense)
    merged by Concatenate, then Dense logits (softmax)."""
    keras.utils.set_random_seed(seed)
    img = keras.Input((6, 6, 2), name="image", dtype=dtype)
    tab = keras.Input((5,), name="tab", dtype=dtype)
    a = L.Conv2D(3, 3, name="conv", dtype=dtype)(img)
    a = L.BatchNormalization(name="bn", dtype=dtype)(a)
    a = L.ReLU(name="relu", dtype=dtype)(a)
    a = L.MaxPooling2D(2, name="pool", dtype=dtype)(a)
    a = L.Flatten(name="flat", dtype=dtype)(a)
    b = L.Dense(6, activation="relu", name="tab_fc", dtype=dtype)(tab)
    c = L.Concatenate(name="cat", dtype=dtype)([a, b])
    c = L.Dense(8, activation="relu", name="fc", dtype=dtype)(c)
    out = L.Dense(4, activation="softmax", name="logits", dtype=dtype)(c)
    return randomize(keras.Model([img, tab], out, name="image_tabular"), seed)


def two_towers(seed=1, dtype="float32"):
    """Two image inputs into towers of the same architecture but separate
    weights, merged by Add, then Dense logits."""
    keras.utils.set_random_seed(seed)
    ins, outs = [], []
    for k in ("left", "right"):
        x = inp = keras.Input((5, 5, 1), name=k, dtype=dtype)
        x = L.Conv2D(2, 3, activation="relu", name=f"{k}_conv", dtype=dtype)(x)
        x = L.Flatten(name=f"{k}_flat", dtype=dtype)(x)
        x = L.Dense(6, name=f"{k}_fc", dtype=dtype)(x)
        ins.append(inp)
        outs.append(x)
    h = L.Add(name="add", dtype=dtype)(outs)
    h = L.Activation("tanh", name="tanh", dtype=dtype)(h)
    out = L.Dense(3, name="logits", dtype=dtype)(h)
    return randomize(keras.Model(ins, out, name="two_towers"), seed)


def with_ids(seed=2):
    """A float input and an int32 token-id input (Embedding)."""
    keras.utils.set_random_seed(seed)
    x = keras.Input((4,), name="feat")
    ids = keras.Input((3,), name="ids", dtype="int32")
    e = L.Flatten(name="eflat")(L.Embedding(50, 2, name="emb")(ids))
    h = L.Concatenate(name="cat")([L.Dense(5, activation="relu", name="fx")(x), e])
    out = L.Dense(3, name="logits")(h)
    return randomize(keras.Model([x, ids], out, name="with_ids"), seed)


def data(model, n, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for t in model.inputs:
        shape = (n, *t.shape[1:])
        if t.dtype.is_integer:
            out.append(rng.integers(0, 50, shape).astype(t.dtype.as_numpy_dtype))
        else:
            out.append(rng.normal(0.0, 1.0, shape).astype(t.dtype.as_numpy_dtype))
    return out


def gains(model, x, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", tfprec.TfprecWarning)
        return tfprec.noise_gains(model, x, **kw)


def assert_matches(got, ref, rtol):
    assert got.num_examples == ref.num_examples
    assert got.num_ties == ref.num_ties
    assert sorted(got.names) == sorted(ref.layers)
    for name, r in ref.layers.items():
        assert got[name].e_w == pytest.approx(r.e_w, rel=rtol, abs=0), (name, "e_w")
        assert got[name].e_a == pytest.approx(r.e_a, rel=rtol, abs=0), (name, "e_a")


def snapshot(model):
    return ([w.copy() for w in model.get_weights()], [l.name for l in model.layers],
            [len(l.inbound_nodes) for l in model.layers],
            [len(l.outbound_nodes) for l in model.layers])


def assert_unchanged(model, snap):
    w, names, inb, outb = snap
    for a, b in zip(model.get_weights(), w):
        np.testing.assert_array_equal(a, b)
    assert [l.name for l in model.layers] == names
    assert [len(l.inbound_nodes) for l in model.layers] == inb
    assert [len(l.outbound_nodes) for l in model.layers] == outb


@pytest.fixture(scope="module")
def img_tab():
    return image_tabular()


# ------------------------------------------------------------------ gains
@pytest.mark.parametrize("make", [image_tabular, pytest.param(two_towers, marks=pytest.mark.slow),
                                  with_ids])
def test_gains_match_reference(make):
    model = make()
    x = data(model, N, seed=3)
    want = reference_gains_multi(model, x)
    got = gains(model, x, batch_size=4)
    assert_matches(got, want, 1e-4)
    for name, r in want.layers.items():
        assert r.e_w > 0


@pytest.mark.slow
def test_gains_float64_match_reference(img_tab):
    x = data(img_tab, N, seed=4)
    assert_matches(gains(img_tab, x, dtype="float64"),
                   reference_gains_multi(img_tab, x), 1e-7)


@pytest.mark.slow
def test_data_forms_give_the_same_gains(img_tab):
    xi, xt = data(img_tab, 24, seed=5)
    y = np.arange(24) % 4
    base = gains(img_tab, [xi, xt], batch_size=8)
    forms = {
        "tuple": (xi, xt),
        "dict": {"tab": xt, "image": xi},
        "packed": packing.pack(img_tab, [xi, xt]),
        "ds tuple": tf.data.Dataset.from_tensor_slices((xi, xt)),
        "ds dict batched": tf.data.Dataset.from_tensor_slices(
            {"image": xi, "tab": xt}).batch(5),
        "ds labelled": tf.data.Dataset.from_tensor_slices(((xi, xt), y)).batch(7),
        "ds dict labelled": tf.data.Dataset.from_tensor_slices(
            ({"image": xi, "tab": xt}, y)),
    }
    shape = tfprec.inputs.model_input_shape(img_tab)
    want = np.concatenate([xi.reshape(24, -1), xt], axis=1)
    for what, x in forms.items():       # every form packs to the same rows
        np.testing.assert_array_equal(tfprec.inputs.as_inputs(x, shape), want, what)
        np.testing.assert_array_equal(np.concatenate(list(tfprec.inputs.iter_batches(
            x, shape, 8))), want, what)
    xa, ya = tfprec.inputs.as_examples(forms["ds labelled"], None, shape, 4)
    np.testing.assert_array_equal(xa, want)
    np.testing.assert_array_equal(ya, y)
    for what in ("ds labelled",):
        g = gains(img_tab, forms[what], batch_size=8)
        assert g.num_examples == 24, what
        for a, b in zip(g.layers, base.layers):
            assert a.e_w == pytest.approx(b.e_w, rel=1e-5), (what, a.name)
            assert a.e_a == pytest.approx(b.e_a, rel=1e-5), (what, a.name)
            assert a.act_high == pytest.approx(b.act_high, rel=1e-6), (what, a.name)
    assert gains(img_tab, [xi, xt], max_examples=10).num_examples == 10


def test_pack_unpack_round_trip_keeps_ids():
    model = with_ids()
    xf, ids = data(model, 6)
    ids[0, 0] = 2 ** 24                       # the largest id float32 holds exactly
    p = packing.pack(model, {"feat": xf, "ids": ids})
    assert p.shape == (6, 4 + 3) and p.dtype == np.float32
    back = packing.unpack(model, p)
    np.testing.assert_array_equal(back[1], ids)
    assert back[1].dtype == np.int32
    np.testing.assert_array_equal(back[0], xf)
    ids[0, 0] = 2 ** 24 + 1
    with pytest.raises(InvalidDataError, match="'ids'.*2\\^24|ids.*16777216"):
        packing.pack(model, [xf, ids])
    np.testing.assert_array_equal(packing.unpack(model, packing.pack(
        model, [xf, ids], dtype="float64"))[1], ids)


# ------------------------------------------------------------------ errors
def test_bad_inputs_are_named(img_tab):
    xi, xt = data(img_tab, 8)
    cases = [
        ([xi], r"1 arrays.*2 inputs \['image', 'tab'\]"),
        ([xi, xt, xt], "3 arrays"),
        (xi, r"2 inputs \['image', 'tab'\].*list or tuple"),
        ({"image": xi}, r"without the key\(s\) \['tab'\]"),
        ({"image": xi, "tab": xt, "tabb": xt}, r"\['tabb'\]"),
        ([xi, xt[:, :4]], r"data\['tab'\].*\(4,\).*\(5,\)"),
        ([xi[:, :5], xt], r"data\['image'\]"),
        ([xi, xt[:7]], r"different numbers of examples.*'image': 8, 'tab': 7"),
        ([xi, None], r"data\['tab'\]"),
        (None, "None"),
        (tf.data.Dataset.from_tensor_slices(xi), r"2 inputs"),
        (tf.data.Dataset.from_tensor_slices((xi, xt[:, :3])), r"data\['tab'\]"),
        (tf.data.Dataset.from_tensor_slices({"image": xi}), r"\['tab'\]"),
        (tf.data.Dataset.from_tensors((xi, xt[:5])), "different batch sizes"),
        (tf.data.Dataset.from_generator(lambda: iter([(xi, xt[:5])]), output_signature=(
            tf.TensorSpec([None, 6, 6, 2]), tf.TensorSpec([None, 5]))),
         "different batch sizes"),
    ]
    shape = tfprec.inputs.model_input_shape(img_tab)
    for x, msg in cases:
        with pytest.raises(InvalidDataError, match=msg):
            tfprec.inputs.as_inputs(x, shape, what="calibration data")
    with pytest.raises(InvalidDataError, match=cases[0][1]):
        gains(img_tab, cases[0][0])
    xn = xt.copy()
    xn[3, 1] = np.nan
    with pytest.raises(InvalidDataError, match="NaN"):
        gains(img_tab, [xi, xn])
    with pytest.raises(InvalidDataError, match=r"x\['tab'\]"):
        tfprec.validate.validate(img_tab, None, [xi, xt[:, :2]])


def test_several_outputs_and_unknown_shapes_refused():
    a = keras.Input((4,), name="a")
    b = keras.Input((3,), name="b")
    h = L.Concatenate()([a, b])
    two_out = keras.Model([a, b], [L.Dense(3)(h), L.Dense(2)(h)])
    with pytest.raises(UnsupportedModelError, match="2 outputs"):
        tfprec.noise_gains(two_out, [np.zeros((2, 4)), np.zeros((2, 3))])
    seq = keras.Input((None, 3), name="seq")
    m = keras.Model([seq, a], L.Dense(3)(L.Concatenate()(
        [L.GlobalAveragePooling1D()(seq), a])))
    with pytest.raises(UnsupportedModelError, match="input 'seq'.*unknown"):
        tfprec.noise_gains(m, [np.zeros((2, 5, 3)), np.zeros((2, 4))])


# ------------------------------------------------------- fake-quant model
def _q(v, bits, r, signed):
    """Round half up and saturate to the B-bit grid of range scale R."""
    step = r * 2.0 ** (1 - bits)
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)
    return np.clip(np.floor(v / step + 0.5), lo, hi) * step


def _numpy_towers(model, plan, xs):
    """float64 numpy forward of two_towers with every weight layer's input
    and weights rounded as the plan says (pre-softmax logits)."""
    def dense(name, a):
        lp = plan.layer(name)
        k, b = model.get_layer(name).get_weights()
        a = _q(a, lp.act_bits, lp.act_range, lp.act_signed)
        return a @ _q(k, lp.weight_bits, lp.weight_range, True) + _q(
            b, lp.weight_bits, lp.weight_range, True)

    def conv(name, a):
        lp = plan.layer(name)
        k, b = model.get_layer(name).get_weights()
        a = _q(a, lp.act_bits, lp.act_range, lp.act_signed)
        kq = _q(k, lp.weight_bits, lp.weight_range, True)
        n, h, w, _ = a.shape
        kh, kw, _, o = k.shape
        out = np.zeros((n, h - kh + 1, w - kw + 1, o))
        for i in range(h - kh + 1):
            for j in range(w - kw + 1):
                out[:, i, j] = np.tensordot(a[:, i:i + kh, j:j + kw], kq, 3)
        return out + _q(b, lp.weight_bits, lp.weight_range, True)

    towers = []
    for k, x in zip(("left", "right"), xs):
        h = np.maximum(conv(f"{k}_conv", np.asarray(x, np.float64)), 0.0)
        towers.append(dense(f"{k}_fc", h.reshape(len(h), -1)))
    return dense("logits", np.tanh(towers[0] + towers[1]))


def test_fake_quant_logits_equal_numpy_simulation():
    model = two_towers(dtype="float64")
    snap = snapshot(model)
    x = data(model, 40, seed=6)
    g = gains(model, x)
    for b_min in (3, 6):
        plan = tfprec.paper_plan(g, b_min=b_min)
        q = tfprec.quantize_model(model, plan)
        assert q.input_names == model.input_names
        assert [tuple(t.shape) for t in q.inputs] == [tuple(t.shape) for t in model.inputs]
        assert {"quant_left_conv", "quant_right_fc", "quant_logits"} <= {
            l.name for l in q.layers}
        z = q([tf.constant(v) for v in x]).numpy()
        want = _numpy_towers(model, plan, x)
        np.testing.assert_allclose(z, want, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(tfprec.simulate_logits(model, plan, x), want,
                                   rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(q({"right": x[1], "left": x[0]}).numpy(), z)
    # the float model is untouched, and its rebuild without a plan equals it
    np.testing.assert_allclose(tfprec.simulate_logits(model, None, x),
                               model(x).numpy(), rtol=1e-9, atol=1e-9)
    assert_unchanged(model, snap)


@pytest.mark.slow
def test_fake_quant_float32_with_bn(img_tab):
    snap = snapshot(img_tab)
    x = data(img_tab, 30, seed=7)
    plan = tfprec.paper_plan(gains(img_tab, x), b_min=8)
    q = tfprec.quantize_model(img_tab, plan)
    assert q.input_names == ["image", "tab"]
    z = tfprec.logits_model(q)(x).numpy()
    zs = tfprec.simulate_logits(img_tab, plan, x)
    # float32 vs float64: an input on a rounding boundary may move one step
    assert np.mean(np.abs(z - zs) < 1e-4 * (1 + np.abs(zs))) > 0.95
    assert np.mean(np.argmax(z, 1) == np.argmax(zs, 1)) >= 0.95
    assert_unchanged(img_tab, snap)


@pytest.mark.slow
def test_plan_of_other_weights_refused(img_tab):
    x = data(img_tab, 12, seed=8)
    plan = tfprec.paper_plan(gains(img_tab, x), b_min=6)
    other = keras.models.clone_model(img_tab)
    other.set_weights([w * 1.5 for w in img_tab.get_weights()])
    with pytest.raises(PlanError, match="fingerprint|other weights"):
        tfprec.quantize_model(other, plan)
    tfprec.quantize_model(other, plan, allow_fingerprint_mismatch=True)


# -------------------------------------------- validation and calibration
@pytest.mark.slow
def test_validate_and_sweep(img_tab):
    snap = snapshot(img_tab)
    x = data(img_tab, 60, seed=9)
    g = gains(img_tab, x)
    y = np.argmax(img_tab(x).numpy(), axis=1)
    plan = tfprec.paper_plan(g, b_min=4)
    qdec = np.argmax(tfprec.simulate_logits(img_tab, plan, x), axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", tfprec.TfprecWarning)
        r = tfprec.validate.validate(img_tab, plan, x, y, batch_size=16)
        r2 = tfprec.validate.validate(
            img_tab, plan, tf.data.Dataset.from_tensor_slices(
                ({"image": x[0], "tab": x[1]}, y)).batch(9))
        rows = tfprec.validate.sweep(img_tab, g, x, y, b_mins=[3, 8],
                                     methods=("paper",))
    assert r.num_examples == 60 and r.float_accuracy == 1.0
    assert abs(r.num_mismatch - int(np.sum(qdec != y))) <= 1
    assert (r2.num_mismatch, r2.float_accuracy) == (r.num_mismatch, r.float_accuracy)
    assert [row.level for row in rows] == [3, 8]
    assert rows[1].mismatch_rate <= rows[0].mismatch_rate
    assert_unchanged(img_tab, snap)


@pytest.mark.slow
def test_calibrate(img_tab):
    snap = snapshot(img_tab)
    x = data(img_tab, 40, seed=11)
    g = gains(img_tab, x)
    y = np.argmax(img_tab(x).numpy(), axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", tfprec.TfprecWarning)
        cal = tfprec.calibrate.calibrate(
            img_tab, g, {"image": x[0], "tab": x[1]}, y, target_mismatch=0.2,
            methods=("uniform",), max_bits=10)
    best = cal.best
    assert best.plan.names == g.names
    # the calibrated plan's measured mismatch is what validate measures
    r = tfprec.validate.validate(img_tab, best.plan, x, y)
    assert r.num_mismatch / r.num_examples <= 0.2
    assert_unchanged(img_tab, snap)


@pytest.mark.slow
def test_callback_on_a_two_input_model():
    model = two_towers()
    x = data(model, 40, seed=10)
    y = np.argmax(model(x).numpy(), axis=1)
    cb = tfprec.NoiseGainCallback({"left": x[0], "right": x[1]}, method="cost_aware",
                                  target=0.05, verbose=False)
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", tfprec.TfprecWarning)
        model.fit(x, y, epochs=1, batch_size=20, verbose=0, callbacks=[cb])
    assert cb.gains is not None and cb.gains.num_examples == 40
    assert cb.plan.names == [l.name for l in cb.gains.layers]
    bad = tfprec.NoiseGainCallback([x[0]], method="cost_aware", verbose=False)
    with pytest.raises(InvalidDataError, match="1 arrays"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[bad])
    one = keras.Sequential([L.Input((3,)), L.Dense(2)])
    one.compile("sgd", "mse")
    listed = tfprec.NoiseGainCallback([np.zeros((4, 3))], verbose=False)
    with pytest.raises(InvalidDataError, match="not a list or tuple"):
        one.fit(np.zeros((4, 3)), np.zeros((4, 2)), verbose=0, callbacks=[listed])
