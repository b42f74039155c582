"""The depthwise squared-norm rule on large feature maps.

``registry._dw_sq`` switches to one DepthwiseConv2dNativeBackpropFilter (examples
as channels, classes as channel multiplier) when the input map has at least
``registry._DW_FILTER_MIN_POSITIONS`` positions.  Checked against the float64
brute force of tests/reference.py on a model whose depthwise layers all take
that path (channel multiplier 1 and 2, SAME and VALID, strides 1 and 2, with
and without bias), and against the patch einsum used on small maps.
"""
from __future__ import annotations

import numpy as np
import pytest

import tfprec
from tfprec._tf import keras, tf
from tfprec.statistics import registry
from tfprec.statistics.graph import parse_model

from reference import Reference, randomize

L = keras.layers
RTOL = 1e-4


def _model():
    keras.utils.set_random_seed(21)
    x = L.Input((16, 16, 3), name="in")
    d = L.DepthwiseConv2D(3, depth_multiplier=2, padding="same", use_bias=False,
                          name="dw1")(x)                                # 16x16x6
    d = L.BatchNormalization(name="bn1")(d)                             # folded
    d = L.Activation("relu6", name="r1")(d)
    d = L.DepthwiseConv2D(3, strides=2, padding="valid", name="dw2")(d)  # 7x7x6
    e = L.DepthwiseConv2D(2, strides=2, padding="same", use_bias=False,
                          name="dw3")(x)                                # 8x8x3
    f = L.Concatenate(name="cat")([L.GlobalAveragePooling2D(name="g1")(d),
                                   L.GlobalAveragePooling2D(name="g2")(e)])
    out = L.Dense(5, name="fc")(f)
    return randomize(keras.Model(x, out, name="dw_large"), 22)


def _x(n=24):
    return np.random.default_rng(3).normal(size=(n, 16, 16, 3)).astype(np.float32)


def test_large_maps_take_the_filter_path():
    g = parse_model(_model())
    big = [op.name for op in g.weight_ops if op.kind == "depthwise"
           and np.prod(g.shapes[op.inputs[0]][:2]) >= registry._DW_FILTER_MIN_POSITIONS]
    assert sorted(big) == ["dw1", "dw2", "dw3"]


def test_filter_path_matches_reference():
    model, x = _model(), _x()
    want = Reference(model).gains(x)
    got = tfprec.noise_gains(model, x, batch_size=8)
    for op, r in want.layers.items():
        assert got[op].e_w == pytest.approx(r.e_w, rel=RTOL), (op, "e_w")
        assert got[op].e_a == pytest.approx(r.e_a, rel=RTOL), (op, "e_a")


@pytest.mark.parametrize("m, stride, pad, bias", [
    (1, 1, "SAME", True), (2, 2, "VALID", False), (3, 2, "SAME", True)])
def test_filter_rule_equals_patch_rule(m, stride, pad, bias, monkeypatch):
    rng = np.random.default_rng(m)
    cin, c, b = 4, 3, 5
    k = rng.normal(size=(3, 3, cin, m))
    attrs = dict(kernel=k, kernel_t=tf.constant(k, tf.float64), strides=(stride, stride),
                 padding=pad, ksize=(3, 3), bias=None,
                 bias_t=tf.zeros([cin * m], tf.float64) if bias else None)
    a = tf.constant(rng.normal(size=(b, 17, 17, cin)))
    ho = 17 // stride + (17 % stride > 0) if pad == "SAME" else (17 - 3) // stride + 1
    dy = tf.constant(rng.normal(size=(c, b, ho, ho, cin * m)))
    assert 17 * 17 >= registry._DW_FILTER_MIN_POSITIONS
    new = registry._dw_sq(attrs, a, dy).numpy()
    # Patch einsum on the same input: force the small-map branch.
    monkeypatch.setattr(registry, "_DW_FILTER_MIN_POSITIONS", 10 ** 9)
    ref = registry._dw_sq(attrs, a, dy).numpy()
    np.testing.assert_allclose(new, ref, rtol=1e-10)
