"""TimeDistributed(Dense) is read as its Dense on [B, T, D].

Keras' ``TimeDistributed`` wrapper keeps the Dense's weights on the inner
layer, where tfprec could not substitute quantized values (it refused the
model).  A Dense maps the last axis of any input, so the wrapped call is
the Dense called on the sequence: gains, plans, the fake-quant model and the
export equal those of the same network written with a plain Dense, and the
gains equal the float64 brute force of ``tests/reference.py`` run on the
wrapped model itself.
"""
import numpy as np
import pytest

import tfprec
from tfprec._tf import keras
from tfprec.quantization.apply import logits_model

from reference import reference_gains

L = keras.layers


def _pair():
    keras.utils.set_random_seed(5)
    i = keras.Input((6, 4))
    td = L.TimeDistributed(L.Dense(5, activation="relu", name="frame"), name="td")
    h = L.GlobalAveragePooling1D()(td(i))
    wrapped = keras.Model(i, L.Dense(3, name="fc")(h))
    i = keras.Input((6, 4))
    h = L.GlobalAveragePooling1D()(L.Dense(5, activation="relu", name="frame")(i))
    plain = keras.Model(i, L.Dense(3, name="fc")(h))
    plain.set_weights(wrapped.get_weights())
    x = np.random.default_rng(5).normal(size=(256, 6, 4)).astype("float32")
    return wrapped, plain, x


@pytest.mark.slow   # default-suite time (< 5 min)
def test_wrapped_dense_equals_the_plain_dense_everywhere(tmp_path):
    wrapped, plain, x = _pair()
    before = [w.copy() for w in wrapped.get_weights()]
    gw, gp = tfprec.noise_gains(wrapped, x), tfprec.noise_gains(plain, x)
    assert gw.names == gp.names == ["frame", "fc"]
    for a, b in zip(gw.layers, gp.layers):
        assert a.e_w == pytest.approx(b.e_w, rel=1e-6)
        assert a.e_a == pytest.approx(b.e_a, rel=1e-6)
    pw = tfprec.cost_aware_plan(gw, 0.05)
    pp = tfprec.cost_aware_plan(gp, 0.05)
    assert [(l.weight_bits, l.act_bits) for l in pw.layers] == \
        [(l.weight_bits, l.act_bits) for l in pp.layers]
    qw = logits_model(tfprec.quantize_model(wrapped, pw)).predict(x, verbose=0)
    qp = logits_model(tfprec.quantize_model(plain, pp)).predict(x, verbose=0)
    np.testing.assert_allclose(qw, qp, atol=1e-6)
    rep = tfprec.export.export_tflite(wrapped, pw, str(tmp_path / "td.tflite"), x[:64])
    assert rep.sim_agreement == 1.0
    # the user's model is only read
    assert all(np.array_equal(a, b) for a, b in zip(before, wrapped.get_weights()))
    assert isinstance(wrapped.get_layer("td"), L.TimeDistributed)


def test_wrapped_dense_gains_match_the_float64_brute_force():
    wrapped, _, x = _pair()
    got = tfprec.noise_gains(wrapped, x[:64], batch_size=16)
    ref = reference_gains(wrapped, x[:64])     # names the wrapper's weight op "td"
    assert sorted(ref.layers) == ["fc", "td"]
    for mine, theirs in (("frame", "td"), ("fc", "fc")):
        assert got[mine].e_w == pytest.approx(ref.layers[theirs].e_w, rel=1e-4), mine
        assert got[mine].e_a == pytest.approx(ref.layers[theirs].e_a, rel=1e-4), mine


def test_other_wrapped_layers_are_still_named_when_refused():
    keras.utils.set_random_seed(0)
    i = keras.Input((3, 8, 8, 2))
    h = L.TimeDistributed(L.Conv2D(4, 3), name="tdconv")(i)
    m = keras.Model(i, L.Dense(3)(L.Flatten()(h)))
    x = np.random.default_rng(0).normal(size=(8, 3, 8, 8, 2)).astype("float32")
    with pytest.raises(tfprec.UnsupportedModelError, match="'tdconv'"):
        tfprec.noise_gains(m, x)
