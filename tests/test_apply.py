"""Fake-quant model (tfprec.apply) against the numpy float64 simulation."""
import contextlib
import dataclasses

import numpy as np
import pytest

from tfprec._tf import keras, tf
import tensorflow_model_optimization as tfmot

import tfprec
from tfprec import fixedpoint
from tfprec.quantization import apply
from tfprec.quantization.configs import (FixedPointQuantizeConfig, InputQuantizeConfig,
                            InputQuantizer, quantize_scope)
from tfprec.errors import PlanError
from tfprec.planning.rules import paper_plan
from tfprec.quantization.quantizers import FixedPointQuantizer
from tfprec.quantization.simulate import simulate_layer_inputs, simulate_logits

L = keras.layers


@contextlib.contextmanager
def floatx(name):
    old = keras.backend.floatx()
    keras.backend.set_floatx(name)
    try:
        yield
    finally:
        keras.backend.set_floatx(old)


def run(model, x):
    """Model outputs in the model's own dtype (``predict`` would cast float64
    numpy inputs to floatx)."""
    out = model(tf.constant(x, model.inputs[0].dtype), training=False)
    return [o.numpy() for o in out] if isinstance(out, (list, tuple)) else out.numpy()


def _randomize_bn(model, rs):
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            n = layer.get_weights()[0].shape[0]
            layer.set_weights([rs.rand(n) + 0.5, rs.randn(n) * 0.1,
                               rs.randn(n) * 0.1, rs.rand(n) + 0.5])


def make_mlp(seed=0):
    rs = np.random.RandomState(seed)
    keras.utils.set_random_seed(seed)
    m = keras.Sequential([
        L.Input((20,)), L.Dense(24, activation="relu"), L.Dense(16),
        L.BatchNormalization(), L.ReLU(max_value=2.0), L.Dropout(0.3),
        L.Dense(5, activation="softmax")])
    _randomize_bn(m, rs)
    return m


def make_cnn(seed=0):
    """Conv+BN, maxpool, depthwise+BN, residual Add, avgpool SAME, strides,
    concat, GAP, flatten, dense, final softmax layer."""
    rs = np.random.RandomState(seed)
    keras.utils.set_random_seed(seed)
    i = keras.Input((10, 10, 3))
    h = L.Conv2D(6, 3, padding="same", use_bias=False)(i)
    h = L.BatchNormalization()(h)
    h = L.ReLU(max_value=2.0)(h)
    h = L.MaxPooling2D(2)(h)                                   # 5x5x6
    a = L.DepthwiseConv2D(3, padding="same")(h)
    a = L.BatchNormalization()(a)
    a = L.Activation("relu")(a)
    b = L.Conv2D(6, 1)(h)
    h = L.ReLU()(L.Add()([a, b]))
    c = L.Conv2D(4, 3, strides=2, padding="valid", activation="relu")(h)  # 2x2x4
    d = L.AveragePooling2D(3, strides=2, padding="same")(h)    # 3x3x6
    d = L.Conv2D(4, 2, padding="valid")(d)                     # 2x2x4
    h = L.Concatenate()([c, d])
    g = L.GlobalAveragePooling2D()(h)
    f = L.Dense(6, activation="relu")(L.Flatten()(h))
    o = L.Dense(5)(L.Concatenate()([g, f]))
    o = L.Activation("softmax")(o)
    m = keras.Model(i, o, name="cnn")
    _randomize_bn(m, rs)
    return m


def _data(model, n, seed=1):
    rs = np.random.RandomState(seed)
    shape = tuple(model.inputs[0].shape[1:])
    return rs.randn(n, *shape).astype(model.inputs[0].dtype.as_numpy_dtype)


def mixed_plans(model, x, seed=0):
    """Paper plans at low and high B_min and random mixed plans (2..16 bits),
    with signed and unsigned input formats."""
    gains = tfprec.noise_gains(model, x)
    plans = [paper_plan(gains, b_min=2), paper_plan(gains, b_min=6)]
    rs = np.random.RandomState(seed)
    base = paper_plan(gains, b_min=4)
    for _ in range(2):
        acts = {n: int(rs.randint(2, 17)) for n in base.names}
        for l in base.layers:          # readers of one tensor share its format
            if l.act_group:
                acts[l.name] = acts[l.act_group.split("+")[0]]
        p = base.with_bits({n: int(rs.randint(2, 17)) for n in base.names}, acts)
        plans.append(p)
    # a signed format on a non-negative input and extreme bit-widths
    layers = list(base.layers)
    j = next(i for i, l in enumerate(layers) if not l.act_signed)
    for i, l in enumerate(layers):     # j and every layer reading its input
        if i == j or (l.act_group and l.act_group == layers[j].act_group):
            layers[i] = dataclasses.replace(l, act_signed=True, act_bits=16)
    layers[0] = dataclasses.replace(layers[0], weight_bits=2, act_bits=2)
    plans.append(dataclasses.replace(base, layers=tuple(layers)))
    signs = {l.act_signed for p in plans for l in p.layers}
    assert signs == {True, False}
    return plans


@pytest.fixture(scope="module")
def models64():
    with floatx("float64"):
        ms = [make_mlp(), make_cnn()]
    return [(m, _data(m, 64)) for m in ms]


@pytest.fixture(scope="module")
def models32():
    return [(m, _data(m, 64)) for m in (make_mlp(), make_cnn())]


# ------------------------------------------------------------- quantizer
def test_quantizer_straight_through_gradient():
    q = FixedPointQuantizer(3, 1.0, True)       # codes -4..3, step 0.25
    x = tf.constant([-2.0, -1.0, -0.3, 0.1, 0.75, 0.8, 3.0])
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = q(x, training=True, weights={})
    np.testing.assert_array_equal(tape.gradient(y, x).numpy(),
                                  [0, 1, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(y.numpy(), [-1, -1, -0.25, 0, 0.75, 0.75, 0.75])


def test_quantizer_config_equality_and_no_variables():
    q = FixedPointQuantizer(6, 0.5, False)
    assert q.build((3, 4), "kernel", None) == {}
    q2 = FixedPointQuantizer.from_config(q.get_config())
    assert q2 == q and not (q2 != q) and hash(q2) == hash(q)
    assert q != FixedPointQuantizer(6, 0.5, True)
    assert q.step == 0.5 * 2 ** -5 and q.int_limits == (0, 63)
    for cfg in (FixedPointQuantizeConfig(4, 1.0), InputQuantizeConfig(3, 2.0, False)):
        assert type(cfg).from_config(cfg.get_config()) == cfg
    for bad in (1, 17):
        with pytest.raises(PlanError, match="bits"):
            FixedPointQuantizer(bad, 1.0, True)
    with pytest.raises(PlanError, match="power of two"):
        FixedPointQuantizer(4, 0.3, True)


# ------------------------------------------------ fake-quant == simulation
def test_fake_quant_logits_equal_simulation_float64(models64, monkeypatch):
    """A float64 model quantizes in float64 without touching the
    process-wide floatx (which stays float32)."""
    def no_set_floatx(value):
        raise AssertionError(f"quantize_model called set_floatx({value!r})")

    assert keras.backend.floatx() == "float32"
    monkeypatch.setattr(keras.backend, "set_floatx", no_set_floatx)
    for model, x in models64:
        for plan in mixed_plans(model, x):
            q = apply.quantize_model(model, plan)
            assert keras.backend.floatx() == "float32"
            assert {l.dtype for l in q.layers} == {"float64"}
            assert all(v.dtype == tf.float64 for v in q.trainable_variables)
            z = run(apply.logits_model(q), x)
            assert z.dtype == np.float64
            zs = simulate_logits(model, plan, x)
            np.testing.assert_allclose(z, zs, rtol=1e-9, atol=1e-9)


def test_float_simulation_and_bn_folding(models64):
    for model, x in models64:
        folded = apply.fold_batchnorm(model, split_softmax=True)
        assert not any(isinstance(l, L.BatchNormalization) for l in folded.layers)
        z = run(apply.logits_model(folded), x)
        np.testing.assert_allclose(simulate_logits(model, None, x, batch_size=7),
                                   z, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(run(folded, x), run(model, x), atol=1e-12)


@pytest.mark.slow   # default-suite time (< 5 min); see README
def test_fake_quant_logits_match_simulation_float32(models32):
    for model, x in models32:
        for plan in mixed_plans(model, x):
            q = apply.quantize_model(model, plan)
            z = run(apply.logits_model(q), x)
            zs = simulate_logits(model, plan, x)
            # float32 sums and BN folding may flip a rounding by one step
            # at high precision only; the effect is tiny
            scale = np.abs(zs).max() + 1.0
            np.testing.assert_allclose(z, zs, rtol=0, atol=2e-3 * scale)
            # final softmax kept
            np.testing.assert_allclose(run(q, x),
                                       tf.nn.softmax(z).numpy(), atol=1e-6)


def _probe(q, plan):
    outs = [apply.input_quantizer_layer(q, n).output for n in plan.names]
    return keras.Model(q.inputs, outs)


@pytest.mark.parametrize("which", ["32", "64"])
def test_quantizer_outputs_on_exact_grid(which, models32, models64):
    models = models32 if which == "32" else models64
    for model, x in models:
        plan = mixed_plans(model, x)[2]
        q = apply.quantize_model(model, plan)
        acts = run(_probe(q, plan), x)
        ref = simulate_layer_inputs(model, plan, x)
        folded = {op.name: op for op in tfprec.statistics.graph.parse_model(model).weight_ops}
        for lp, a in zip(plan.layers, acts):
            lo, hi = fixedpoint.int_limits(lp.act_bits, lp.act_signed)
            k = np.asarray(a, np.float64) / lp.act_step
            np.testing.assert_array_equal(k, np.round(k))
            assert k.min() >= lo and k.max() <= hi
            if which == "64":
                np.testing.assert_array_equal(a, ref[lp.name])
            ws = apply.quantized_weights(q, lp.name)
            op = folded[lp.name]
            assert len(ws) == (2 if op.attrs["bias"] is not None else 1)
            for w, wf in zip(ws, [op.attrs["kernel"], op.attrs["bias"]]):
                k = np.asarray(w, np.float64) / lp.weight_step
                np.testing.assert_array_equal(k, np.round(k))
                assert k.min() >= -2 ** (lp.weight_bits - 1)
                assert k.max() <= 2 ** (lp.weight_bits - 1) - 1
                if which == "64":
                    np.testing.assert_array_equal(
                        w, fixedpoint.quantize(wf, lp.weight_bits, lp.weight_range, True))


def test_only_weight_layers_and_their_inputs_are_quantized(models32):
    model, x = models32[1]
    plan = mixed_plans(model, x)[0]
    q = apply.quantize_model(model, plan)
    wrappers = [l for l in q.layers if isinstance(l, tfmot.quantization.keras.QuantizeWrapperV2)]
    inner = sorted(type(w.layer).__name__ for w in wrappers)
    n = len(plan.layers)
    assert len(wrappers) == 2 * n
    assert inner.count("InputQuantizer") == n
    assert {w.layer.name for w in wrappers if not isinstance(w.layer, InputQuantizer)} \
        == set(plan.names)
    assert not any(type(l).__name__ == "QuantizeLayer" for l in q.layers)
    assert not any(isinstance(l, L.BatchNormalization) for l in q.layers)
    for w in wrappers:
        cfg = w.quantize_config
        lp = plan.layer(w.layer.target if isinstance(w.layer, InputQuantizer) else w.layer.name)
        if isinstance(w.layer, InputQuantizer):
            assert cfg == InputQuantizeConfig(lp.act_bits, lp.act_range, lp.act_signed)
        else:
            assert cfg == FixedPointQuantizeConfig(lp.weight_bits, lp.weight_range)
    # the trainable variables are the float shadow kernels and biases; the
    # quantizers add no variable (only TFMOT's int32 optimizer_step exists)
    weight_wrappers = [w for w in wrappers if not isinstance(w.layer, InputQuantizer)]
    shadow = [v for w in weight_wrappers for v in apply.shadow_weights(q, w.layer.name)]
    assert len(shadow) == 2 * n                      # every layer has a bias here
    assert {id(v) for v in q.trainable_variables} == {id(v) for v in shadow}
    assert all(v.dtype == tf.int32 and "optimizer_step" in v.name
               for v in q.non_trainable_variables)


# ----------------------------------------------------------------- errors
def test_plan_for_another_model_is_refused(models32):
    (mlp, xm), (cnn, xc) = models32
    plan = paper_plan(tfprec.noise_gains(mlp, xm), b_min=4)
    with pytest.raises(PlanError, match="does not match"):
        apply.quantize_model(cnn, plan)
    keras.utils.set_random_seed(3)
    wider = keras.Sequential([
        L.Input((20,)), L.Dense(30, activation="relu", name=mlp.layers[0].name),
        L.Dense(16, name=mlp.layers[1].name), L.ReLU(max_value=2.0),
        L.Dense(5, activation="softmax", name=mlp.layers[-1].name)])
    with pytest.raises(PlanError, match="num_weights|dot_length|num_dots"):
        apply.quantize_model(wider, plan)


@pytest.mark.parametrize("field,bits", [("weight_bits", 1), ("act_bits", 17),
                                        ("weight_bits", 0), ("act_bits", 1)])
def test_bits_outside_2_to_16_are_refused(models32, field, bits):
    model, x = models32[0]
    plan = paper_plan(tfprec.noise_gains(model, x), b_min=4)
    layers = list(plan.layers)
    layers[1] = dataclasses.replace(layers[1], **{field: bits})
    bad = dataclasses.replace(plan, layers=tuple(layers))
    with pytest.raises(PlanError, match=rf"{layers[1].name}.*{field}.*got {bits}$"):
        apply.quantize_model(model, bad)


def test_missing_plan_is_refused(models32):
    model, _ = models32[0]
    with pytest.raises(PlanError, match="plan must be a tfprec PrecisionPlan"):
        apply.quantize_model(model, None)


def test_user_model_is_not_modified():
    model = make_cnn(seed=5)
    x = _data(model, 32)
    before = [w.copy() for w in model.get_weights()]
    names = [l.name for l in model.layers]
    cfg = model.get_config()
    out = run(model, x)
    plan = paper_plan(tfprec.noise_gains(model, x), b_min=3)
    q = apply.quantize_model(model, plan)
    q.compile("sgd", "sparse_categorical_crossentropy")
    q.fit(x, np.zeros(len(x), int), epochs=1, batch_size=16, verbose=0)
    after = model.get_weights()
    assert len(before) == len(after)
    for a, b in zip(before, after):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes()
    assert [l.name for l in model.layers] == names
    assert model.get_config() == cfg
    np.testing.assert_array_equal(run(model, x), out)
    assert not set(map(id, model.layers)) & set(map(id, q.layers))


# ------------------------------------------------------------ save / load
@pytest.mark.parametrize("fmt", ["h5", pytest.param("savedmodel", marks=pytest.mark.slow)])
def test_save_load_round_trip(models32, tmp_path, fmt):
    model, x = models32[1]
    plan = mixed_plans(model, x)[2]
    q = apply.quantize_model(model, plan)
    path = str(tmp_path / ("q.h5" if fmt == "h5" else "q_savedmodel"))
    q.save(path)
    with quantize_scope():
        q2 = keras.models.load_model(path)
    np.testing.assert_array_equal(run(q2, x), run(q, x))
    cfgs = lambda m: [l.quantize_config for l in m.layers if hasattr(l, "quantize_config")]
    assert cfgs(q2) == cfgs(q)
    z2 = run(apply.logits_model(q2), x)
    np.testing.assert_array_equal(z2, run(apply.logits_model(q), x))


# ----------------------------------------------------------- fine-tuning
def test_qat_fit_changes_shadow_weights_and_stays_on_grid(models32):
    model, x = models32[0]
    rs = np.random.RandomState(0)
    y = rs.randint(0, 5, len(x))
    plan = paper_plan(tfprec.noise_gains(model, x), b_min=3)
    q = apply.quantize_model(model, plan)
    name = plan.names[0]
    shadow0 = [v.numpy().copy() for v in apply.shadow_weights(q, name)]
    q.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    hist = q.fit(x, y, epochs=2, batch_size=16, verbose=0)
    assert np.all(np.isfinite(hist.history["loss"]))
    shadow1 = [v.numpy() for v in apply.shadow_weights(q, name)]
    assert any(not np.array_equal(a, b) for a, b in zip(shadow0, shadow1))
    # the shadow weights are off the grid, what the model uses is on it
    for lp in plan.layers:
        for w in apply.quantized_weights(q, lp.name):
            k = w / lp.weight_step
            np.testing.assert_array_equal(k, np.round(k))
    acts = run(_probe(q, plan), x)
    for lp, a in zip(plan.layers, acts):
        k = a / lp.act_step
        np.testing.assert_array_equal(k, np.round(k))
    # the fine-tuned fake-quant model still equals the simulation of its
    # own (float, folded) shadow weights
    tuned = q_to_float(q, model)
    zs = simulate_logits(tuned, dataclasses.replace(plan, fingerprint=None), x)
    z = run(apply.logits_model(q), x)
    np.testing.assert_allclose(z, zs, rtol=0, atol=1e-3 * (np.abs(zs).max() + 1))


def q_to_float(q, model):
    """Float copy of ``model`` (BN folded) carrying ``q``'s shadow weights."""
    f = apply.fold_batchnorm(model)
    for layer in f.layers:
        if isinstance(layer, (L.Dense, L.Conv2D, L.DepthwiseConv2D)):
            layer.set_weights([v.numpy() for v in apply.shadow_weights(q, layer.name)])
    return f


# --------------------------------------------- per-channel weight ranges
def _per_channel_plans(model, x):
    gains = tfprec.noise_gains(model, x, per_channel=True)
    base = paper_plan(gains, b_min=4)
    rs = np.random.RandomState(3)
    return [paper_plan(gains, b_min=2), base,
            base.with_bits({n: int(rs.randint(2, 17)) for n in base.names})]


def test_per_channel_fake_quant_equals_simulation_and_numpy(models64):
    """Per-channel plans: every channel's weights on its own grid R_c
    2^(1-B_W) (numpy brute force per channel), fake-quant logits equal to
    the float64 simulation, configs serializable."""
    for model, x in models64:
        folded = {op.name: op for op in
                  tfprec.statistics.graph.parse_model(model).weight_ops}
        for plan in _per_channel_plans(model, x):
            per_ch = [l for l in plan.layers if l.weight_channel_ranges is not None]
            assert any(len(set(l.weight_channel_ranges)) > 1 for l in per_ch)
            q = apply.quantize_model(model, plan)
            np.testing.assert_allclose(run(apply.logits_model(q), x),
                                       simulate_logits(model, plan, x),
                                       rtol=1e-9, atol=1e-9)
            for lp in per_ch:
                op = folded[lp.name]
                rc = np.asarray(lp.weight_channel_ranges)
                for w, wf in zip(apply.quantized_weights(q, lp.name),
                                 [op.attrs["kernel"], op.attrs["bias"]]):
                    flat_q = np.asarray(w).reshape(-1, rc.size)
                    flat_f = np.asarray(wf).reshape(-1, rc.size)
                    for c in range(rc.size):     # one channel at a time
                        d = rc[c] * 2.0 ** (1 - lp.weight_bits)
                        k = np.clip(np.floor(flat_f[:, c] / d + 0.5),
                                    -2 ** (lp.weight_bits - 1),
                                    2 ** (lp.weight_bits - 1) - 1)
                        np.testing.assert_array_equal(flat_q[:, c], k * d)
        cfg = next(l.quantize_config for l in q.layers
                   if isinstance(getattr(l, "quantize_config", None),
                                 FixedPointQuantizeConfig)
                   and l.quantize_config.channel_ranges is not None)
        back = FixedPointQuantizeConfig.from_config(cfg.get_config())
        assert back == cfg and hash(back) == hash(cfg)
        assert "channel_ranges" in cfg.get_config()


def test_per_channel_plan_json_round_trip_and_checks(models32):
    model, x = models32[1]
    plan = _per_channel_plans(model, x)[1]
    back = tfprec.PrecisionPlan.from_json(plan.to_json())
    assert back.layers == plan.layers
    assert back.bound() == plan.bound()
    d = plan.to_dict()
    i = next(i for i, l in enumerate(d["layers"]) if l["weight_channel_ranges"])
    bad = [dict(l) for l in d["layers"]]
    bad[i]["weight_channel_ranges"] = [0.75] + list(bad[i]["weight_channel_ranges"][1:])
    with pytest.raises(PlanError, match="weight_channel_ranges"):
        tfprec.PrecisionPlan.from_dict(dict(d, layers=bad))
    bad[i]["weight_channel_ranges"] = [r / 2 for r in d["layers"][i]["weight_channel_ranges"]]
    with pytest.raises(PlanError, match="weight_range"):
        tfprec.PrecisionPlan.from_dict(dict(d, layers=bad))
    # the per-channel bound is below the per-tensor one at the same bits
    flat = paper_plan(tfprec.noise_gains(model, x), b_min=4).with_bits(
        {l.name: l.weight_bits for l in plan.layers},
        {l.name: l.act_bits for l in plan.layers})
    assert plan.bound() < flat.bound()


def test_per_channel_quantizer_refuses_bad_ranges():
    with pytest.raises(PlanError, match="channel_ranges"):
        FixedPointQuantizer(4, 1.0, True, channel_ranges=[0.5, 2.0])
    with pytest.raises(PlanError, match="power of two"):
        FixedPointQuantizer(4, 1.0, True, channel_ranges=[0.5, 0.3])
    with pytest.raises(PlanError, match="trailing axes"):
        tfprec.quantization.quantizers.fixed_point_quantize(
            tf.zeros([3, 5]), 4, [1.0, 0.5], True)
