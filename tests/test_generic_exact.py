"""tfprec.noise_gains on any functional / Sequential tf_keras classifier,
checked exactly against the float64 brute force of tests/reference.py.

One small model per layer kind and per nonlinearity (a few thousand weights
at most); for each, the float32 pass of ``tfprec.noise_gains`` must give the
reference's weight ops (names), classes, ties and, per op, E_W and E_A within
1e-4 relative (plus an absolute floor of 1e-6 of the model's largest gain of
the same kind).  The definitions (weight ops, BN folding, standalone BN as
scale/offset, SeparableConv2D as two ops, Embedding without E_A, the binary
sigmoid head as logits [0, z]) are stated in tests/reference.py; a BN after
a Conv2DTranspose or a SeparableConv2D is not folded (standalone).

Calibration examples are drawn at random and kept only when every wrong-class
margin |z_i - z_y| is at least 3 % of the typical logit spread: each term is
divided by the squared margin, so a float32 pass cannot match a float64
reference to 1e-4 on a near-tie (its relative error there is ~ 1e-7 |z| /
margin), and a near-tie at the top can even flip y between the two.
"""
from __future__ import annotations

import functools

import numpy as np
import pytest

import tfprec
from tfprec._tf import keras

from reference import Reference, clear_margins, randomize

L = keras.layers
N = 32            # calibration examples per model
RTOL = 1e-4
ABS_FLOOR = 1e-6  # of the largest E_W (E_A) of the model
MARGIN = 0.03     # of the median logit spread, the smallest margin kept

pytestmark = pytest.mark.filterwarnings("ignore:noise gains from only")


# ------------------------------------------------------------------ helpers
def _mlp_with(act, seed):
    """Dense -> act -> Dense -> act -> Dense(4); act is a layer factory."""
    x = L.Input((6,), name="in")
    h = act("a1")(L.Dense(8, name="d1")(x))
    h = act("a2")(L.Dense(6, name="d2")(h))
    return keras.Model(x, L.Dense(4, name="fc")(h), name=f"mlp_{seed}")


def _activation(name):
    return lambda n: L.Activation(name, name=n)


def hard_sigmoid(x):
    """keras.applications.MobileNetV3's: TFOpLambda nodes x + 3.0, * 1/6."""
    return L.ReLU(6.0)(x + 3.0) * (1.0 / 6.0)


def hard_swish(x):
    return L.Multiply()([x, hard_sigmoid(x)])


# ------------------------------------------------------------------ models
def act_sigmoid():
    return _mlp_with(_activation("sigmoid"), 1)


def act_tanh():
    return _mlp_with(_activation("tanh"), 2)


def act_swish():
    return _mlp_with(_activation("swish"), 3)


def act_gelu():
    x = L.Input((6,), name="in")
    h = L.Dense(8, activation="gelu", name="d1")(x)         # fused gelu
    h = L.Activation("gelu", name="a2")(L.Dense(6, name="d2")(h))
    return keras.Model(x, L.Dense(4, name="fc")(h))


def act_hard_sigmoid():
    return _mlp_with(_activation("hard_sigmoid"), 5)


def act_softplus():
    return _mlp_with(_activation("softplus"), 6)


def act_leaky_relu():
    return _mlp_with(lambda n: L.LeakyReLU(0.1, name=n), 7)


def act_elu():
    return _mlp_with(lambda n: L.ELU(name=n), 8)


def act_inner_softmax():
    return _mlp_with(lambda n: L.Softmax(name=n), 9)


def merges():
    x = L.Input((6,), name="in")
    a = L.Dense(5, name="da")(x)
    b = L.Dense(5, activation="tanh", name="db")(x)
    m = L.Multiply(name="mul")([a, b])
    s = L.Subtract(name="sub")([a, m])
    av = L.Average(name="avg")([s, b])
    mx = L.Maximum(name="max")([av, a])
    return keras.Model(x, L.Dense(4, name="fc")(mx))


def spatial():
    x = L.Input((5, 5, 2), name="in")
    h = L.ZeroPadding2D(1, name="zp")(x)                        # 7x7
    h = L.Conv2D(3, 3, activation="relu", name="c1")(h)         # 5x5
    h = L.Cropping2D(((1, 0), (0, 1)), name="crop")(h)          # 4x4
    h = L.UpSampling2D(2, name="up")(h)                         # 8x8
    h = L.Conv2D(3, 3, strides=2, name="c2")(h)                 # 3x3
    return keras.Model(x, L.Dense(4, name="fc")(L.Flatten(name="f")(h)))


def preprocessing():
    x = L.Input((6,), name="in")
    h = L.Rescaling(0.5, offset=0.25, name="rescale")(x)
    h = L.Normalization(mean=np.linspace(-0.5, 0.5, 6),
                        variance=np.linspace(0.5, 2.0, 6), name="norm")(h)
    h = L.Dense(8, activation="relu", name="d1")(h)
    return keras.Model(x, L.Dense(4, name="fc")(h))


def reshaping():
    x = L.Input((6,), name="in")
    h = L.Dense(4, name="d1")(x)
    h = L.RepeatVector(3, name="rep")(h)                        # [B, 3, 4]
    h = L.Permute((2, 1), name="perm")(h)                       # [B, 4, 3]
    h = L.Lambda(lambda t: 2.0 * t - 0.5, name="lam")(h)
    h = L.Dense(5, activation="relu", name="dseq")(h)          # Dense on [B, 4, 3]
    return keras.Model(x, L.Dense(4, name="fc")(L.Flatten(name="f")(h)))


def mobilenetv3_se():
    """MobileNetV3-like: hard-swish stem, depthwise, squeeze-excite with the
    TFOpLambda hard sigmoid, BN folded everywhere, softmax head."""
    x = L.Input((8, 8, 3), name="in")
    h = L.Conv2D(8, 3, strides=2, padding="same", use_bias=False, name="stem")(x)
    h = hard_swish(L.BatchNormalization(name="stem_bn")(h))     # 4x4x8
    d = L.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw")(h)
    d = L.ReLU(name="dw_relu")(L.BatchNormalization(name="dw_bn")(d))
    s = L.GlobalAveragePooling2D(keepdims=True, name="se_gap")(d)
    s = L.Conv2D(4, 1, name="se_reduce")(s)
    s = L.ReLU(name="se_relu")(s)
    s = hard_sigmoid(L.Conv2D(8, 1, name="se_expand")(s))
    d = L.Multiply(name="se_mul")([d, s])
    p = L.Conv2D(6, 1, use_bias=False, name="project")(d)
    p = L.BatchNormalization(name="project_bn")(p)
    g = L.GlobalAveragePooling2D(name="gap")(p)
    return keras.Model(x, L.Dense(5, activation="softmax", name="fc")(g))


def densenet_block():
    """BN -> ReLU -> Conv (standalone BN: its input also feeds the concat),
    bottleneck BN folded, transition BN after a concatenation."""
    x = L.Input((6, 6, 3), name="in")
    x0 = L.Conv2D(4, 3, padding="same", name="conv0")(x)
    h = L.ReLU(name="r1")(L.BatchNormalization(name="bn1")(x0))
    h = L.Conv2D(6, 1, name="conv1")(h)
    h = L.ReLU(name="r2")(L.BatchNormalization(name="bn2")(h))     # folded
    h = L.Conv2D(3, 3, padding="same", name="conv2")(h)
    c = L.Concatenate(name="cat")([x0, h])                          # 6x6x7
    t = L.ReLU(name="r3")(L.BatchNormalization(name="bn_t")(c))
    t = L.Conv2D(4, 1, name="trans")(t)
    t = L.AveragePooling2D(2, name="ap")(t)
    return keras.Model(x, L.Dense(4, name="fc")(L.GlobalAveragePooling2D(name="gap")(t)))


def separable():
    x = L.Input((6, 6, 3), name="in")
    h = L.SeparableConv2D(4, 3, padding="same", depth_multiplier=2,
                          activation="relu", name="sep1")(x)
    h = L.SeparableConv2D(5, 3, strides=2, padding="same", name="sep2")(h)
    h = L.ReLU(name="r")(L.BatchNormalization(name="bn2")(h))       # standalone
    return keras.Model(x, L.Dense(4, name="fc")(L.GlobalAveragePooling2D(name="gap")(h)))


def text():
    x = L.Input((8,), dtype="int32", name="tokens")
    h = L.Embedding(20, 4, name="emb")(x)
    h = L.Conv1D(6, 3, padding="same", activation="relu", name="c1")(h)
    h = L.Dense(5, activation="tanh", name="dseq")(h)              # [B, 8, 5]
    h = L.GlobalMaxPooling1D(name="gmp")(h)
    return keras.Model(x, L.Dense(3, name="fc")(h))


def conv1d():
    x = L.Input((10, 3), name="in")
    h = L.Conv1D(4, 3, dilation_rate=2, activation="relu", name="c1")(x)   # 6
    h = L.Conv1D(4, 3, strides=2, name="c2")(h)                           # 2
    return keras.Model(x, L.Dense(4, name="fc")(L.Flatten(name="f")(h)))


def layernorm():
    x = L.Input((4, 5), name="in")
    h = L.Dense(6, name="dseq")(x)
    h = L.LayerNormalization(name="ln")(h)
    h = L.Activation("relu", name="r")(h)
    return keras.Model(x, L.Dense(4, name="fc")(L.Flatten(name="f")(h)))


def prelu():
    x = L.Input((5, 5, 2), name="in")
    h = L.Conv2D(4, 3, name="c1")(x)
    h = L.PReLU(shared_axes=[1, 2], name="prelu1")(h)
    h = L.Dense(6, name="d1")(L.Flatten(name="f")(h))
    h = L.PReLU(name="prelu2")(h)
    return keras.Model(x, L.Dense(4, name="fc")(h))


def conv_transpose():
    x = L.Input((4, 4, 3), name="in")
    h = L.Conv2DTranspose(4, 3, strides=2, padding="same", activation="relu",
                          name="t1")(x)                              # 8x8
    h = L.Conv2D(4, 3, strides=2, name="c1")(h)                     # 3x3
    h = L.Conv2DTranspose(3, 2, name="t2")(h)                       # 4x4
    h = L.BatchNormalization(name="bn_t2")(h)   # standalone: no folding into a
                                                # transposed conv
    return keras.Model(x, L.Dense(4, name="fc")(L.Flatten(name="f")(h)))


def dilated_grouped():
    x = L.Input((8, 8, 4), name="in")
    h = L.Conv2D(4, 3, dilation_rate=2, padding="same", activation="relu",
                 name="dil")(x)
    h = L.Conv2D(6, 3, groups=2, activation="relu", name="grp")(h)     # 6x6
    h = L.DepthwiseConv2D(3, dilation_rate=2, depth_multiplier=2,
                          padding="same", name="dwdil")(h)
    h = L.ReLU(name="r")(L.BatchNormalization(name="bn_dw")(h))       # folded
    return keras.Model(x, L.Dense(4, name="fc")(L.GlobalAveragePooling2D(name="gap")(h)))


def maxpool_same_odd():
    x = L.Input((9, 9, 2), name="in")
    h = L.Conv2D(4, 3, activation="relu", name="c1")(x)                # 7x7
    h = L.MaxPooling2D(3, strides=2, padding="same", name="mp1")(h)    # 4x4
    h = L.Conv2D(5, 3, padding="same", activation="relu", name="c2")(h)
    h = L.MaxPooling2D(3, strides=2, padding="same", name="mp2")(h)    # 2x2
    return keras.Model(x, L.Dense(4, name="fc")(L.Flatten(name="f")(h)))


def binary_sigmoid():
    x = L.Input((6,), name="in")
    h = L.Dense(8, activation="relu", name="d1")(x)
    return keras.Model(x, L.Dense(1, activation="sigmoid", name="out")(h))


def standalone_bn():
    """BN after a relu conv, and BN on a linear conv whose output also feeds
    an Add: neither can be folded, both are scale/offset weight ops."""
    x = L.Input((6, 6, 2), name="in")
    h = L.Conv2D(4, 3, activation="relu", name="c1")(x)               # 4x4
    h = L.BatchNormalization(name="bn_relu")(h)
    c = L.Conv2D(4, 3, padding="same", name="c2")(h)
    h = L.Add(name="add")([c, L.BatchNormalization(name="bn_shared")(c)])
    return keras.Model(x, L.Dense(4, name="fc")(L.Flatten(name="f")(h)))


def sequential_mix():
    """A Sequential model mixing several new kinds."""
    return keras.Sequential([
        L.Input((6, 6, 2)),
        L.Conv2D(4, 3, padding="same", name="c1"),
        L.BatchNormalization(name="bn1"),                              # folded
        L.Activation("swish", name="sw"),
        L.SeparableConv2D(4, 3, strides=2, name="sep"),               # 2x2
        L.LeakyReLU(0.2, name="lr"),
        L.Flatten(name="f"),
        L.Dense(6, activation="tanh", name="d1"),
        L.Dense(4, activation="softmax", name="fc"),
    ], name="sequential_mix")


ZOO = {f.__name__: f for f in (
    act_sigmoid, act_tanh, act_swish, act_gelu, act_hard_sigmoid, act_softplus,
    act_leaky_relu, act_elu, act_inner_softmax, merges, spatial, preprocessing,
    reshaping, mobilenetv3_se, densenet_block, separable, conv1d,
    layernorm, prelu, conv_transpose, dilated_grouped, maxpool_same_odd,
    standalone_bn, sequential_mix, binary_sigmoid, text)}

#: Run in the default suite (they cover most kinds together); the rest of
#: the zoo runs with ``-m slow``.
FAST = ("mobilenetv3_se", "densenet_block", "separable", "standalone_bn",
        "binary_sigmoid", "text")

# ------------------------------------------------------------------- cases
def _candidates(model, n, rng):
    shape = (n,) + tuple(model.input_shape[1:])
    if model.inputs[0].dtype.is_integer:
        return rng.integers(0, 20, shape).astype(np.int32)
    return rng.normal(0.0, 1.0, shape).astype(np.float32)


@functools.lru_cache(maxsize=None)
def case(name):
    keras.utils.set_random_seed(sorted(ZOO).index(name))
    model = randomize(ZOO[name](), 100 + sorted(ZOO).index(name))
    ref = Reference(model)
    x = clear_margins(ref, _candidates(model, 4 * N, np.random.default_rng(7)), MARGIN)
    assert len(x) >= N, f"{name}: only {len(x)} examples with clear margins"
    x = x[:N]
    return model, x, ref.gains(x)


@pytest.mark.parametrize("name", [
    n if n in FAST else pytest.param(n, marks=pytest.mark.slow) for n in sorted(ZOO)])
def test_noise_gains_match_reference(name):
    model, x, want = case(name)
    assert model.count_params() < 5000
    got = tfprec.noise_gains(model, x, batch_size=16)
    assert sorted(got.names) == sorted(want.layers)
    assert (got.num_examples, got.num_classes, got.num_ties) == (
        want.num_examples, want.num_classes, want.num_ties)
    floor_w = ABS_FLOOR * max(r.e_w for r in want.layers.values())
    floor_a = ABS_FLOOR * max(r.e_a for r in want.layers.values())
    for op, r in want.layers.items():
        assert r.e_w > 0, op
        assert (r.e_a == 0) == (op == "emb"), op          # Embedding: no E_A
        assert got[op].e_w == pytest.approx(r.e_w, rel=RTOL, abs=floor_w), (op, "e_w")
        e_a = 0.0 if got[op].e_a is None else got[op].e_a      # "absent" allowed
        assert e_a == pytest.approx(r.e_a, rel=RTOL, abs=floor_a), (op, "e_a")


@pytest.mark.parametrize("act, r_a, signed", [("sigmoid", 0.5, False),
                                               ("tanh", 1.0, True),
                                               ("swish", None, True)])
def test_known_activation_bounds_fix_the_range(act, r_a, signed):
    """sigmoid [0, 1] -> unsigned R_A = 1/2; tanh [-1, 1] -> signed R_A = 1
    (from the known bound, whatever the data); swish has no known bound: its
    range is calibrated from the data."""
    keras.utils.set_random_seed(0)
    m = keras.Sequential([keras.layers.Input((5,)),
                          keras.layers.Dense(6, activation=act, name="d1"),
                          keras.layers.Dense(3, name="d2")])
    x = np.random.default_rng(0).normal(size=(64, 5)).astype(np.float32) * 0.1
    g = tfprec.noise_gains(m, x)
    d2 = g["d2"]
    assert d2.act_signed == signed
    if r_a is None:
        assert d2.act_range_source != "known bound"
    else:
        assert d2.act_range_source == "known bound" and d2.r_a == r_a
