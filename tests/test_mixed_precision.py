"""Models built under a mixed-precision policy (mixed_float16): tfprec
analyses and fake-quantizes them in float32, like the same model built in
float32 (a 16-bit fixed-point grid is not exact in float16)."""
import warnings

import numpy as np
import pytest

import tfprec
from tfprec._tf import keras

from reference import randomize

L = keras.layers


def build(policy):
    keras.mixed_precision.set_global_policy(policy)
    try:
        keras.utils.set_random_seed(0)
        i = keras.Input((6, 6, 2))
        h = L.Conv2D(4, 3, activation="relu", name="conv")(i)
        h = L.BatchNormalization(name="bn")(h)
        h = L.Dense(6, activation="tanh", name="fc")(L.Flatten(name="flat")(h))
        h = L.Dense(3, name="logits")(h)
        out = L.Activation("softmax", dtype="float32", name="softmax")(h)
        return randomize(keras.Model(i, out), 0)
    finally:    # None: the default again (from floatx(), which other tests set)
        keras.mixed_precision.set_global_policy(None)


@pytest.fixture(scope="module")
def models():
    mixed, full = build("mixed_float16"), build("float32")
    full.set_weights(mixed.get_weights())
    assert mixed.get_layer("conv").compute_dtype == "float16"
    return mixed, full


def test_gains_and_fake_quant_are_those_of_the_float32_model(models):
    mixed, full = models
    x = np.random.default_rng(1).normal(size=(40, 6, 6, 2)).astype("float32")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", tfprec.TfprecWarning)
        gm, gf = tfprec.noise_gains(mixed, x), tfprec.noise_gains(full, x)
    assert gm.names == gf.names
    for name in gm.names:
        assert gm[name].e_w == pytest.approx(gf[name].e_w, rel=1e-5), name
        assert gm[name].e_a == pytest.approx(gf[name].e_a, rel=1e-5), name
    for bits in (4, 12, 16):
        plan = tfprec.uniform_plan(gm, bits=bits)
        keras.mixed_precision.set_global_policy("mixed_float16")   # as users leave it
        try:
            q = tfprec.quantize_model(mixed, plan)
        finally:
            keras.mixed_precision.set_global_policy(None)
        assert all(getattr(l, "compute_dtype", "float32") == "float32" for l in q.layers)
        z = tfprec.logits_model(q)(x).numpy()
        assert z.dtype == np.float32
        np.testing.assert_allclose(z, tfprec.simulate_logits(full, plan, x), rtol=1e-4,
                                   atol=1e-5)
        np.testing.assert_allclose(q(x).numpy(), tfprec.quantize_model(full, plan)(x).numpy(),
                                   rtol=1e-5, atol=1e-6)
    # the user's model keeps its policy
    assert mixed.get_layer("fc").compute_dtype == "float16"
