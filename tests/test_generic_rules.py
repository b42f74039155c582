"""Closed-form weight-norm rules of generic ops (tfprec/statistics/generic_rules.py).

Dense on rank > 2 inputs, Conv1D / Conv2D / Conv3D (strides, SAME / causal
padding, dilation, groups), dilated DepthwiseConv1D / 2D and
LayerNormalization stay ops of kind ``generic`` but get an exact closed form
for their per-example squared weight-gradient norms.  For each rule:

* float64 ``tfprec.noise_gains`` equals the ``vectorized_map`` generic path
  (the same model parsed under ``registered_rules(False)``) within 1e-6
  relative;
* ``tfprec.noise_gains`` equals the float64 brute force of
  tests/reference.py within 1e-4 relative in float32, 1e-8 in float64
  (examples with clear margins, as in tests/test_generic_exact.py);
* :func:`outer_sq`, both forms, equals a numpy sum of outer products.
"""
from __future__ import annotations

import functools

import numpy as np
import pytest

import tfprec
from tfprec._tf import keras, tf
from tfprec.statistics import generic_rules
from tfprec.statistics.graph import parse_model, registered_rules

from reference import Reference, clear_margins, randomize

L = keras.layers
N = 24            # calibration examples per model
MARGIN = 0.03     # of the median logit spread, the smallest margin kept

pytestmark = pytest.mark.filterwarnings("ignore:noise gains from only")


# ------------------------------------------------------------------ models
def dense_nd():
    x = L.Input((3, 4, 5), name="in")
    h = L.Dense(6, activation="tanh", name="d4")(x)               # rank-4 input
    h = L.Reshape((12, 6), name="rs")(h)
    h = L.Dense(5, use_bias=False, name="d3")(h)                  # rank 3, no bias
    h = L.Dense(9, name="d3b")(L.Reshape((2, 30), name="rs2")(h))  # Gram form
    return keras.Model(x, L.Dense(4, name="fc")(L.Flatten(name="f")(h)))


def conv1d():
    x = L.Input((11, 3), name="in")
    h = L.Conv1D(4, 3, strides=2, padding="same", activation="relu", name="c1")(x)  # 6
    h = L.Conv1D(4, 3, dilation_rate=2, padding="causal", name="c2")(h)             # 6
    h = L.Conv1D(5, 2, use_bias=False, name="c3")(h)                                # 5
    h = L.BatchNormalization(name="bn3")(h)           # folded: c3 gets a bias
    return keras.Model(x, L.Dense(4, name="fc")(L.Flatten(name="f")(h)))


def conv2d():
    x = L.Input((9, 9, 4), name="in")
    h = L.Conv2D(4, 3, dilation_rate=2, padding="same", activation="relu",
                 name="dil")(x)                                               # 9x9
    h = L.Conv2D(4, (2, 3), dilation_rate=(2, 1), name="dil2")(h)            # 7x7
    return keras.Model(x, L.Dense(4, name="fc")(L.GlobalAveragePooling2D(name="gap")(h)))


def grouped():
    x = L.Input((9, 9, 4), name="in")
    h = L.Conv2D(6, 3, strides=2, groups=2, padding="same", activation="relu",
                 name="grp")(x)                                              # 5x5x6
    h = L.Reshape((25, 6), name="rs")(h)
    h = L.Conv1D(4, 3, dilation_rate=2, groups=2, padding="causal", use_bias=False,
                 name="grp1d")(h)                                              # 25x4
    h = L.BatchNormalization(name="bn")(h)           # folded: grp1d gets a bias
    return keras.Model(x, L.Dense(4, name="fc")(L.Flatten(name="f")(h)))


def depthwise():
    x = L.Input((7, 7, 3), name="in")
    h = L.DepthwiseConv2D(3, dilation_rate=2, depth_multiplier=2, padding="same",
                          activation="relu", name="dw1")(x)                  # 7x7x6
    h = L.DepthwiseConv2D(3, dilation_rate=(1, 2), use_bias=False, name="dw2")(h)  # 5x3
    h = L.Reshape((15, 6), name="rs")(h)
    h = L.DepthwiseConv1D(3, strides=2, padding="same", name="dw1d")(h)      # 8x6
    return keras.Model(x, L.Dense(4, name="fc")(L.Flatten(name="f")(h)))


def layernorm():
    x = L.Input((4, 5), name="in")
    h = L.Dense(6, name="dseq")(x)
    h = L.LayerNormalization(name="ln")(h)
    h = L.Activation("relu", name="r")(h)
    h = L.LayerNormalization(axis=[1, 2], center=False, name="ln2")(h)
    h = L.LayerNormalization(scale=False, epsilon=0.1, name="ln3")(h)
    return keras.Model(x, L.Dense(4, name="fc")(L.Flatten(name="f")(h)))


def conv3d():
    x = L.Input((5, 4, 5, 2), name="in")
    h = L.Conv3D(3, 2, dilation_rate=(1, 2, 1), padding="same", name="c3d")(x)
    h = L.Conv3D(2, (2, 2, 3), strides=(2, 1, 2), name="c3d2")(h)       # 2x3x2
    return keras.Model(x, L.Dense(3, name="fc")(L.Flatten(name="f")(h)))


def conv_transpose():
    x = L.Input((4, 5, 3), name="in")
    h = L.Conv2DTranspose(4, 3, strides=2, padding="same", activation="relu",
                          name="t1")(x)                                 # 8x10
    h = L.Conv2DTranspose(3, (3, 2), strides=(2, 1), use_bias=False,
                          name="t2")(h)                                 # 17x11
    h = L.Conv2D(2, 3, strides=3, name="c")(h)                          # 5x3
    h = L.Conv2DTranspose(2, 2, name="t3")(h)                           # 6x4
    return keras.Model(x, L.Dense(3, name="fc")(L.Flatten(name="f")(h)))


ZOO = {f.__name__: f for f in (dense_nd, conv1d, conv2d, grouped, depthwise, layernorm,
                               conv3d, conv_transpose)}
#: weight ops of each model that must take a closed-form rule
RULED = {"dense_nd": {"d4": "dense_nd", "d3": "dense_nd", "d3b": "dense_nd"},
         "conv1d": {"c1": "conv", "c2": "conv", "c3": "conv"},
         "conv2d": {"dil": "conv", "dil2": "conv"},
         "conv_transpose": {"t1": "conv_transpose", "t2": "conv_transpose",
                            "t3": "conv_transpose"},
         "grouped": {"grp": "conv", "grp1d": "conv"},
         "depthwise": {"dw1": "depthwise", "dw2": "depthwise", "dw1d": "depthwise"},
         "layernorm": {"dseq": "dense_nd", "ln": "layernorm", "ln2": "layernorm",
                       "ln3": "layernorm"},
         "conv3d": {"c3d": "conv", "c3d2": "conv"}}
SLOW = ("conv3d",)
#: The vectorized_map path fails in float64 on grouped convolutions (TF's
#: pfor fallback for a grouped Conv2DBackpropFilter): compared in float32.
FLOAT32_ONLY = ("grouped",)


def _params(names):
    return [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in names]


def _copy(model):
    """A separate model object with the same weights (the executor is cached
    per model object, so each path needs its own)."""
    m = keras.models.clone_model(model)
    m.set_weights(model.get_weights())
    return m


@functools.lru_cache(maxsize=None)
def case(name):
    seed = sorted(ZOO).index(name)
    keras.utils.set_random_seed(seed)
    model = randomize(ZOO[name](), 200 + seed)
    ref = Reference(model)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(4 * N,) + tuple(model.input_shape[1:])).astype(np.float32)
    x = clear_margins(ref, x, MARGIN)
    assert len(x) >= N, f"{name}: only {len(x)} examples with clear margins"
    return model, x[:N], ref.gains(x[:N])


# ------------------------------------------------------------------- tests
@pytest.mark.parametrize("name", [n if n in ("layernorm", "conv_transpose") else
                                  pytest.param(n, marks=pytest.mark.slow) for n in ZOO])
def test_rules_are_selected_and_ops_stay_generic(name):
    model = case(name)[0]
    ops = {op.name: op for op in parse_model(model).weight_ops}
    for op_name, rule in RULED[name].items():
        assert ops[op_name].kind == "generic", op_name
        assert ops[op_name].attrs.get("rule") == rule, op_name
    with registered_rules(False):
        off = parse_model(model).weight_ops
    assert all(op.kind == "generic" and "rule" not in op.attrs for op in off)


@pytest.mark.slow
@pytest.mark.parametrize("name", _params(ZOO))
def test_float64_equals_vectorized_map_path(name):
    model, x, _ = case(name)
    dtype, rtol = ("float32", 1e-5) if name in FLOAT32_ONLY else ("float64", 1e-6)
    fast = tfprec.noise_gains(model, x, batch_size=16, dtype=dtype)
    slow_model = _copy(model)
    with registered_rules(False):
        slow = tfprec.noise_gains(slow_model, x, batch_size=16, dtype=dtype)
    assert sorted(fast.names) == sorted(slow.names)
    for op in RULED[name]:
        assert fast[op].e_w == pytest.approx(slow[op].e_w, rel=rtol), op
        assert fast[op].e_a == pytest.approx(slow[op].e_a, rel=rtol), op
        assert fast[op].e_w > 0


@pytest.mark.parametrize("name", [
    n if n in ("dense_nd", "conv1d", "conv_transpose", "layernorm", "grouped") else
    pytest.param(n, marks=pytest.mark.slow) for n in ZOO])
@pytest.mark.parametrize("dtype, rtol", [("float32", 1e-4), pytest.param(
    "float64", 1e-8, marks=pytest.mark.slow)])
def test_equals_reference(name, dtype, rtol):
    model, x, want = case(name)
    got = tfprec.noise_gains(model, x, batch_size=16, dtype=dtype)
    assert sorted(got.names) == sorted(want.layers)
    floor = rtol / 100 * max(r.e_w for r in want.layers.values())
    for op, r in want.layers.items():
        assert r.e_w > 0, op
        assert got[op].e_w == pytest.approx(r.e_w, rel=rtol, abs=floor), (op, "e_w")
        assert got[op].e_a == pytest.approx(r.e_a, rel=rtol), (op, "e_a")


@pytest.mark.parametrize("gram", [None, True, False])
@pytest.mark.parametrize("has_bias", [True, False])
def test_outer_sq_matches_numpy(gram, has_bias):
    rng = np.random.default_rng(1)
    p, d = rng.normal(size=(3, 5, 4)), rng.normal(size=(3, 5, 7))
    want = np.einsum("ntk,ntq->nkq", p, d)
    want = (want ** 2).sum(axis=(1, 2))
    if has_bias:
        want = want + (d.sum(axis=1) ** 2).sum(axis=1)
    got = generic_rules.outer_sq(tf.constant(p), tf.constant(d), has_bias, gram)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12)


@pytest.mark.slow
def test_per_class_mode_matches_vectorized_map_path():
    """per_class=True calls the rule with one stacked row: same per-class
    gains as the generic path."""
    model, x, _ = case("conv1d")
    fast = tfprec.noise_gains(model, x, batch_size=16, dtype="float64", per_class=True)
    slow_model = _copy(model)
    with registered_rules(False):
        slow = tfprec.noise_gains(slow_model, x, batch_size=16, dtype="float64",
                                  per_class=True)
    assert list(fast.names) == list(slow.names)
    np.testing.assert_allclose(fast.class_w, slow.class_w, rtol=1e-6)
    assert np.all(fast.class_w > 0)


def test_weight_op_paths_name_the_path_of_each_layer():
    """What the report lists: registered rules, closed-form generic rules,
    and the vectorized_map generic path."""
    from tfprec.statistics.generic_rules import weight_op_paths
    from tfprec.statistics.graph import parse_model
    x = inp = keras.Input((8, 3), name="in")
    x = keras.layers.Conv1D(4, 3, name="c1d")(x)                 # closed form
    x = keras.layers.PReLU(name="prelu")(x)                     # vectorized_map
    x = keras.layers.Flatten(name="f")(x)
    m = keras.Model(inp, keras.layers.Dense(3, name="fc")(x))   # registered
    assert weight_op_paths(parse_model(m)) == {
        "closed-form generic": ["c1d"], "generic (vectorized_map)": ["prelu"],
        "registered": ["fc"]}
