"""tfprec.noise_gains checked against the float64 brute force in reference.py."""
import functools
import math

import numpy as np
import pytest

import tfprec
from tfprec.statistics import registry
from tfprec._tf import keras, tf

from reference import Reference, pow2_at_least

L = keras.layers
N = 10  # calibration examples per model (the reference loops over them)


# ------------------------------------------------------------------ models
def _randomize(model, seed):
    """Non-trivial weights: non-zero biases, BN with real statistics."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            new = []
            c = layer.get_weights()[0].shape[0]
            if layer.scale:
                new.append(rng.uniform(0.5, 1.5, c))
            if layer.center:
                new.append(rng.normal(0.0, 0.3, c))
            new += [rng.normal(0.0, 0.3, c), rng.uniform(0.5, 2.0, c)]
            layer.set_weights([w.astype(np.float32) for w in new])
        elif isinstance(layer, (L.Dense, L.Conv2D, L.DepthwiseConv2D)):
            w = layer.get_weights()
            k = w[0]
            fan_in = int(np.prod(k.shape[:-1])) if not isinstance(
                layer, L.DepthwiseConv2D) else int(np.prod(k.shape[:2]))
            new = [rng.normal(0.0, 1.2 / math.sqrt(fan_in), k.shape)]
            if layer.use_bias:
                new.append(rng.normal(0.0, 0.3, w[1].shape))
            layer.set_weights([v.astype(np.float32) for v in new])
    return model


def mlp(head=None):
    """Dense -> BN -> ReLU(max_value=2) -> Dense(relu) -> Dense [-> softmax]."""
    keras.utils.set_random_seed(1)
    x = L.Input((8,), name="in")
    h = L.Dense(12, name="d1")(x)
    h = L.BatchNormalization(name="bn1")(h)
    h = L.ReLU(max_value=2.0, name="clip")(h)
    h = L.Dense(10, activation="relu", name="d2")(h)
    if head == "dense_softmax":
        out = L.Dense(5, activation="softmax", name="d3")(h)
    else:
        out = L.Dense(5, name="d3")(h)
        if head == "activation_softmax":
            out = L.Activation("softmax", name="sm")(out)
        elif head == "softmax_layer":
            out = L.Softmax(name="sm")(out)
    return _randomize(keras.Model(x, out, name=f"mlp_{head}"), 11)


def cnn():
    keras.utils.set_random_seed(2)
    m = keras.Sequential([
        L.Input((14, 14, 3)),
        L.Conv2D(4, 3, padding="valid", name="c1"),             # 12x12x4
        L.BatchNormalization(name="bn1"),
        L.ReLU(max_value=2.0, name="clip1"),
        L.MaxPooling2D(2, name="mp"),                           # 6x6x4
        L.Conv2D(6, 3, padding="same", strides=2, activation="relu",
                 name="c2"),                                    # 3x3x6 (asym. pad)
        L.AveragePooling2D(2, strides=1, name="ap"),            # 2x2x6
        L.Flatten(name="flat"),
        L.Dropout(0.5, name="drop"),
        L.Dense(5, name="fc"),
    ], name="cnn")
    return _randomize(m, 12)


def residual():
    keras.utils.set_random_seed(3)
    x = L.Input((8, 8, 3), name="in")
    h = L.Conv2D(4, 3, padding="same", activation="relu", name="c1")(x)
    b = L.Conv2D(4, 3, padding="same", name="c2")(h)
    b = L.BatchNormalization(name="bn2")(b)
    s = L.Conv2D(4, 1, name="sc")(h)             # 1x1 shortcut; h feeds c2 and sc
    a = L.ReLU(name="r1")(L.Add(name="add1")([b, s]))
    b2 = L.Conv2D(4, 3, padding="same", activation="relu", name="c3")(a)
    a2 = L.Add(name="add2")([a, b2])             # identity shortcut; a feeds c3 too
    a2 = L.AveragePooling2D(3, strides=2, padding="same", name="ap")(a2)  # 4x4x4
    g = L.GlobalAveragePooling2D(name="gap")(a2)
    out = L.Dense(4, name="fc")(g)
    return _randomize(keras.Model(x, out, name="residual"), 13)


def depthwise():
    keras.utils.set_random_seed(4)
    x = L.Input((8, 8, 3), name="in")
    d = L.DepthwiseConv2D(3, depth_multiplier=2, padding="same", use_bias=False,
                          name="dw")(x)                               # 8x8x6
    d = L.BatchNormalization(name="bn_dw")(d)
    d = L.Activation("relu6", name="r6")(d)
    p = L.Conv2D(5, 1, name="pw")(d)                                  # 8x8x5
    p = L.MaxPooling2D(3, strides=2, padding="same", name="mp")(p)    # 4x4x5
    q = L.DepthwiseConv2D(3, strides=2, padding="same", name="dw2")(x)  # 4x4x3
    q = L.BatchNormalization(center=False, name="bn_dw2")(q)
    c = L.Concatenate(name="cat")([p, q])                             # 4x4x8
    f = L.Reshape((128,), name="rs")(c)
    out = L.Dense(6, name="fc")(f)
    return _randomize(keras.Model(x, out, name="depthwise"), 14)


def tie_model(all_zero=False):
    """Last layer has zero kernel columns (classes 0 and 1 tie at the top)."""
    keras.utils.set_random_seed(5)
    x = L.Input((6,), name="in")
    h = L.Dense(7, activation="relu", name="d1")(x)
    out = L.Dense(4, name="d2")(h)
    m = _randomize(keras.Model(x, out, name="ties"), 15)
    k, b = m.get_layer("d2").get_weights()
    if all_zero:
        k[:], b[:] = 0.0, 0.0
    else:
        k[:, :2] = 0.0
        b[:] = [3.0, 3.0, -3.0, -3.0]
    m.get_layer("d2").set_weights([k, b])
    return m


def pooled_head():
    """Conv(no bias)+BN(scale=False), same-padded pools, a 1x1-conv head."""
    keras.utils.set_random_seed(6)
    m = keras.Sequential([
        L.Input((8, 8, 2)),
        L.Conv2D(4, 3, strides=2, padding="same", use_bias=False,
                 name="c1"),                                       # 4x4x4
        L.BatchNormalization(scale=False, name="bn1"),
        L.ReLU(max_value=1.5, name="clip"),
        L.AveragePooling2D(3, strides=2, padding="same", name="ap"),  # 2x2x4
        L.GlobalAveragePooling2D(keepdims=True, name="gap"),      # 1x1x4
        L.Conv2D(5, 1, name="head"),                              # 1x1x5
        L.Flatten(name="flat"),
    ], name="pooled_head")
    return _randomize(m, 16)


def wiring():
    """Concatenate on axis 1, Add of three (one repeated), the input consumed
    by three weight layers, strided valid depthwise, fused relu6 in Dense."""
    keras.utils.set_random_seed(7)
    x = L.Input((6, 6, 2), name="in")
    a = L.Conv2D(3, 3, padding="same", name="ca")(x)
    b = L.Conv2D(3, 3, padding="same", activation="relu6", name="cb")(x)
    c = L.Concatenate(axis=1, name="cat")([a, b])                    # 12x6x3
    d = L.Add(name="add3")([c, c, L.Conv2D(3, 1, name="cc")(c)])
    d = L.DepthwiseConv2D(2, strides=2, depth_multiplier=3, name="dw")(d)  # 6x3x9
    d = L.Dense(4, name="d4")(L.Flatten(name="f1")(d))
    e = L.Concatenate(name="cat2")(
        [d, L.Dense(3, name="side")(L.Flatten(name="f2")(x))])
    h = L.Dense(5, activation="relu6", name="pre")(e)
    out = L.Dense(4, name="fc")(h)
    return _randomize(keras.Model(x, out, name="wiring"), 17)


BUILDERS = {"wiring": wiring, "mlp": mlp, "cnn": cnn, "residual": residual,
            "depthwise": depthwise, "pooled_head": pooled_head,
            "ties": tie_model}


def _data(model, seed, n=N):
    rng = np.random.default_rng(seed)
    return rng.normal(0.0, 1.0, (n,) + tuple(model.input_shape[1:])).astype(np.float32)


@functools.lru_cache(maxsize=None)
def case(name):
    """(model, x, reference gains), built once per test session."""
    model = BUILDERS[name]()
    x = _data(model, 100 + len(name))
    ref = Reference(model)
    return model, x, ref, ref.gains(x)


def assert_matches(got, ref, rtol):
    assert got.num_examples == ref.num_examples
    assert got.num_ties == ref.num_ties
    assert got.num_classes == ref.num_classes
    assert sorted(got.names) == sorted(ref.layers)
    for name, r in ref.layers.items():
        lg = got[name]
        assert math.isfinite(lg.e_w) and math.isfinite(lg.e_a)
        assert lg.e_w == pytest.approx(r.e_w, rel=rtol, abs=0), (name, "e_w")
        assert lg.e_a == pytest.approx(r.e_a, rel=rtol, abs=0), (name, "e_a")


MODELS = ["mlp", "cnn", "residual", "depthwise", "pooled_head", "wiring",
          "ties"]


# -------------------------------------------------------------- the tests
@pytest.mark.parametrize("name", MODELS)
def test_reference_forward_reproduces_model(name):
    model, x, ref, _ = case(name)
    assert ref.check_forward(x) <= 1e-5 * 10


@pytest.mark.parametrize("name", MODELS)
def test_float32_gains_match_reference(name):
    model, x, _, want = case(name)
    got = tfprec.noise_gains(model, x, batch_size=4)
    assert_matches(got, want, 1e-4)
    if name != "ties":
        for r in want.layers.values():
            assert r.e_w > 0 and r.e_a > 0


@pytest.mark.parametrize("name", MODELS)
def test_float64_gains_match_reference_tightly(name):
    model, x, _, want = case(name)
    got = tfprec.noise_gains(model, x, batch_size=3, dtype="float64")
    assert_matches(got, want, 1e-7)


@pytest.mark.parametrize("use_gram", [True, False])
@pytest.mark.parametrize("name", ["cnn", "residual", "depthwise",
                                  "pooled_head"])
def test_conv_gram_and_materialized_forms(name, use_gram, monkeypatch):
    _, x, _, want = case(name)
    model = BUILDERS[name]()  # a fresh model: tfprec caches one executor per model
    calls = []

    def forced(*args, **kwargs):
        calls.append(1)
        return use_gram

    monkeypatch.setattr(registry, "conv_use_gram", forced)
    got = tfprec.noise_gains(model, x, batch_size=5, dtype="float64")
    assert calls, "conv_use_gram was not consulted"
    assert_matches(got, want, 1e-7)
    got32 = tfprec.noise_gains(model, x, batch_size=5)
    assert_matches(got32, want, 1e-4)


@pytest.mark.parametrize("head", ["dense_softmax", "activation_softmax",
                                  "softmax_layer"])
def test_final_softmax_is_dropped(head):
    model, x, _, want = case("mlp")
    soft = mlp(head)
    # same weights as the logit model
    for n in ("d1", "bn1", "d2", "d3"):
        soft.get_layer(n).set_weights(model.get_layer(n).get_weights())
    np.testing.assert_allclose(soft(x).numpy(),
                               tf.nn.softmax(model(x)).numpy(), rtol=1e-6)
    ref_soft = Reference(soft).gains(x)  # reference on the softmax model
    for n, r in want.layers.items():
        assert ref_soft[n].e_w == pytest.approx(r.e_w, rel=1e-12)
        assert ref_soft[n].e_a == pytest.approx(r.e_a, rel=1e-12)
    got = tfprec.noise_gains(soft, x)
    base = tfprec.noise_gains(model, x)
    assert got.dropped_softmax and not base.dropped_softmax
    assert_matches(got, want, 1e-4)
    for a, b in zip(got.layers, base.layers):
        assert a.name == b.name
        assert a.e_w == pytest.approx(b.e_w, rel=1e-6)
        assert a.e_a == pytest.approx(b.e_a, rel=1e-6)


def test_num_examples_and_max_examples():
    model, x, ref, want = case("mlp")
    assert tfprec.noise_gains(model, x).num_examples == N
    got = tfprec.noise_gains(model, x, batch_size=3, max_examples=4)
    assert got.num_examples == 4
    assert_matches(got, ref.gains(x[:4]), 1e-4)
    ds = tf.data.Dataset.from_tensor_slices(x).batch(3)
    got = tfprec.noise_gains(model, ds, max_examples=4)
    assert got.num_examples == 4
    assert_matches(got, ref.gains(x[:4]), 1e-4)


def test_ties_are_skipped_and_counted():
    model, x, _, want = case("ties")
    z = model(x).numpy()
    assert np.all(z[:, 0] == z[:, 1]) and np.all(np.argmax(z, 1) == 0)
    assert want.num_ties == N            # one tied pair (1 vs y=0) per example
    for dt in ("float32", "float64"):
        got = tfprec.noise_gains(model, x, batch_size=4, dtype=dt)
        assert got.num_ties == N
        assert_matches(got, want, 1e-4 if dt == "float32" else 1e-7)
        for lg in got.layers:
            assert lg.e_w > 0 and lg.e_a > 0


def test_all_ties_are_refused_by_name():
    """All-zero weights: every example is a tie (the brute force agrees), and
    the gains pass refuses the model instead of returning all-zero gains."""
    model = tie_model(all_zero=True)
    x = _data(model, 7, n=5)
    want = Reference(model).gains(x)
    assert want.num_ties == 5 * 3
    with pytest.raises(tfprec.UnsupportedModelError,
                       match="every one of the 5 examples"):
        tfprec.noise_gains(model, x)


@pytest.mark.parametrize("name", ["cnn", "residual"])
def test_batch_size_invariance(name):
    model, x, _, want = case(name)
    runs = [tfprec.noise_gains(model, x, batch_size=bs) for bs in (1, 5, N, 64)]
    for got in runs:
        assert_matches(got, want, 1e-4)
    for got in runs[1:]:
        for a, b in zip(got.layers, runs[0].layers):
            assert a.e_w == pytest.approx(b.e_w, rel=1e-5)
            assert a.e_a == pytest.approx(b.e_a, rel=1e-5)
            assert (a.r_a, a.r_w, a.act_signed) == (b.r_a, b.r_w, b.act_signed)


@pytest.mark.parametrize("kind", ["batched", "unbatched", "xy_batched",
                                  "xy_unbatched"])
def test_dataset_input_equals_numpy(kind):
    model, x, _, want = case("depthwise")
    labels = np.arange(N) % 6
    if kind == "batched":
        ds = tf.data.Dataset.from_tensor_slices(x).batch(4)
    elif kind == "unbatched":
        ds = tf.data.Dataset.from_tensor_slices(x)
    elif kind == "xy_batched":
        ds = tf.data.Dataset.from_tensor_slices((x, labels)).batch(3)
    else:
        ds = tf.data.Dataset.from_tensor_slices((x, labels))
    got = tfprec.noise_gains(model, ds, batch_size=4)
    assert_matches(got, want, 1e-4)
    base = tfprec.noise_gains(model, x, batch_size=4)
    for a, b in zip(got.layers, base.layers):
        assert a.e_w == pytest.approx(b.e_w, rel=1e-5)
        assert a.e_a == pytest.approx(b.e_a, rel=1e-5)
        assert (a.r_a, a.act_low, a.act_high) == (b.r_a, b.act_low, b.act_high)


@pytest.mark.parametrize("name", MODELS)
def test_weight_ranges_after_folding(name):
    model, x, _, want = case(name)
    got = tfprec.noise_gains(model, x)
    for n, r in want.layers.items():
        wmax = max(float(np.max(np.abs(r.kernel))),
                   0.0 if r.bias is None else float(np.max(np.abs(r.bias))))
        lg = got[n]
        assert lg.weight_max_abs == pytest.approx(wmax, rel=1e-12)
        assert lg.r_w == pow2_at_least(wmax)
        assert lg.r_w >= wmax > lg.r_w / 2


def test_weight_range_exact_power_of_two():
    model = mlp()
    k, b = model.get_layer("d2").get_weights()
    k = np.clip(k, -0.4, 0.4)
    k[0, 0] = -0.5                      # max |w| is exactly a power of two
    b = np.clip(b, -0.4, 0.4)
    model.get_layer("d2").set_weights([k, b])
    got = tfprec.noise_gains(model, _data(model, 3, n=3))
    assert got["d2"].weight_max_abs == 0.5
    assert got["d2"].r_w == 0.5


def test_activation_ranges():
    model, x, _, want = case("mlp")
    got = tfprec.noise_gains(model, x)
    # d1 consumes the signed network input: calibrated, R >= max |x|
    lg = got["d1"]
    assert lg.act_signed and lg.act_range_source == "calibrated"
    assert lg.act_low == pytest.approx(float(x.min()), rel=1e-6)
    assert lg.act_high == pytest.approx(float(x.max()), rel=1e-6)
    assert lg.r_a == pow2_at_least(float(np.max(np.abs(x))))
    # d2 consumes ReLU(max_value=2): known bound [0, 2] -> unsigned, R = 1
    lg = got["d2"]
    assert not lg.act_signed and lg.act_range_source == "known bound"
    assert (lg.act_low, lg.act_high, lg.r_a) == (0.0, 2.0, 1.0)
    # d3 consumes an unbounded relu: calibrated, unsigned [0, 2R) covers max
    lg = got["d3"]
    hi = want["d3"].in_max
    assert not lg.act_signed and lg.act_range_source == "calibrated"
    assert lg.act_low == 0.0
    assert lg.act_high == pytest.approx(hi, rel=1e-6)
    assert lg.r_a == pow2_at_least(hi / 2)


def test_activation_ranges_cnn_and_depthwise():
    model, x, _, want = case("cnn")
    got = tfprec.noise_gains(model, x)
    # c2 consumes MaxPool(ReLU(max_value=2)): the bound survives pooling
    assert (got["c2"].r_a, got["c2"].act_signed) == (1.0, False)
    assert got["c2"].act_range_source == "known bound"
    assert got["fc"].act_range_source == "calibrated"
    assert not got["fc"].act_signed
    assert got["fc"].r_a == pow2_at_least(want["fc"].in_max / 2)
    model, x, _, want = case("depthwise")
    got = tfprec.noise_gains(model, x)
    assert (got["pw"].r_a, got["pw"].act_signed) == (4.0, False)  # relu6: [0, 8)
    for n in ("dw", "dw2"):
        assert got[n].act_signed
        assert got[n].r_a == pow2_at_least(float(np.max(np.abs(x))))
    # fc consumes a mix of relu6 and a signed linear branch: calibrated, signed
    r = want["fc"]
    assert got["fc"].act_signed == (r.in_min < 0)
    assert got["fc"].r_a == pow2_at_least(max(abs(r.in_min), abs(r.in_max)))
    model, x, _, want = case("pooled_head")
    got = tfprec.noise_gains(model, x)
    # head consumes GAP(AvgPool(ReLU(max_value=1.5))): known [0, 1.5] -> R = 1
    lg = got["head"]
    assert (lg.act_low, lg.act_high, lg.r_a, lg.act_signed) == (0.0, 1.5, 1.0, False)
    assert got["c1"].act_signed and got["c1"].act_range_source == "calibrated"


@pytest.mark.parametrize("name,per_channel", [
    ("cnn", False), pytest.param("depthwise", False, marks=pytest.mark.slow), ("cnn", True)])
def test_gains_follow_weight_changes(name, per_channel):
    """A second call on the same model object sees its new weights and BN
    stats (with per_channel, its new per-channel ranges too)."""
    model = BUILDERS[name]()
    x = _data(model, 5, n=6)
    first = tfprec.noise_gains(model, x, per_channel=per_channel)
    assert_matches(first, Reference(model).gains(x, per_channel=per_channel), 1e-4)
    _randomize(model, 999)
    want = Reference(model).gains(x, per_channel=per_channel)
    for dt, tol in (("float32", 1e-4), ("float64", 1e-7)):
        got = tfprec.noise_gains(model, x, dtype=dt, per_channel=per_channel)
        assert_matches(got, want, tol)
        for n, r in want.layers.items():
            wmax = max(np.max(np.abs(r.kernel)), np.max(np.abs(r.bias)))
            assert got[n].weight_max_abs == pytest.approx(wmax, rel=1e-12)


@pytest.mark.parametrize("name", ["mlp", "cnn", "residual", "depthwise",
                                  "pooled_head", "wiring"])
def test_geometry(name):
    model, x, _, want = case(name)
    got = tfprec.noise_gains(model, x[:2])
    for n, r in want.layers.items():
        layer = model.get_layer(n)
        lg = got[n]
        k = r.kernel
        has_b = r.bias is not None
        assert lg.layer_class == type(layer).__name__
        out_shape = layer.output_shape[1:]
        if isinstance(layer, L.Dense):
            d, p = k.shape[0], k.shape[1]
        elif isinstance(layer, L.DepthwiseConv2D):
            d, p = k.shape[0] * k.shape[1], int(np.prod(out_shape))
        else:
            d, p = int(np.prod(k.shape[:3])), int(np.prod(out_shape))
        assert lg.dot_length == d + int(has_b)
        assert lg.num_dots == p
        assert lg.num_weights == k.size + (r.bias.size if has_b else 0)
        assert lg.num_inputs == int(np.prod(layer.input_shape[1:]))


# ------------------------------------------------ per-channel weight ranges
@pytest.mark.parametrize("name", ["mlp", "cnn", "depthwise", "residual"])
def test_per_channel_gains_match_reference(name):
    """per_channel=True: E_W = sum_c (R_c/R_W)^2 E_c against the float64
    brute force with its own per-channel ranges; E_A unchanged."""
    model, x, ref, flat = case(name)
    want = ref.gains(x, per_channel=True)
    got = tfprec.noise_gains(model, x, batch_size=3, dtype="float64",
                             per_channel=True, per_example=True)
    assert_matches(got, want, 1e-7)
    per_tensor = tfprec.noise_gains(model, x, batch_size=3, dtype="float64")
    some_smaller = False
    for lg in got.layers:
        r = want[lg.name]
        if r.channel_ranges is None:
            assert lg.r_w_channels is None
            continue
        np.testing.assert_array_equal(lg.r_w_channels, r.channel_ranges)
        assert lg.r_w == max(lg.r_w_channels)
        assert lg.r_w == per_tensor[lg.name].r_w
        assert lg.e_w <= per_tensor[lg.name].e_w * (1 + 1e-12)
        some_smaller |= lg.e_w < per_tensor[lg.name].e_w * (1 - 1e-6)
        assert lg.e_a == pytest.approx(per_tensor[lg.name].e_a, rel=1e-12)
    assert some_smaller        # random BN-folded weights: channels differ
    # per-example rows sum to the same effective gains
    np.testing.assert_allclose(got.example_w.mean(axis=0),
                               [lg.e_w for lg in got.layers], rtol=1e-10)
    # JSON round trip keeps the channel ranges
    back = tfprec.NoiseGains.from_dict(got.to_dict())
    assert [lg.r_w_channels for lg in back.layers] == \
        [lg.r_w_channels for lg in got.layers]


def test_per_channel_gains_refuse_bad_saved_ranges():
    model, x, _, _ = case("cnn")
    d = tfprec.noise_gains(model, x, per_channel=True).to_dict()
    i = next(i for i, ld in enumerate(d["layers"]) if ld["r_w_channels"])
    d["layers"][i]["r_w_channels"] = [0.3] * len(d["layers"][i]["r_w_channels"])
    with pytest.raises(tfprec.InvalidDataError, match="r_w_channels"):
        tfprec.NoiseGains.from_dict(d)
