"""tests/reference.py checked on its own.

1. Against central finite differences, on tiny float64 models holding every
   new weight-op kind (Conv1D dilated, PReLU, LayerNormalization, Dense on
   [B, T, D], Embedding, grouped / dilated Conv2D, standalone and folded
   BatchNormalization, SeparableConv2D, Conv2DTranspose, a binary sigmoid
   head) and non-weight layers (TFOpLambda constants, merges, activations):
   * E_W: each element of each of the op's weight tensors is moved by +-h
     through the *Keras model's own variables* (model(x), not the reference's
     forward): for a folded BN the kernel element by h/s and beta by h, for a
     standalone BN's scale gamma by h*sqrt(var+eps) and beta by mean*h, so the
     definitions (folding, scale/offset, the separable split) are checked, not
     only the tape;
   * E_A: each element of the op's private input perturbation is moved by +-h
     in the reference's forward (the input seen by that op alone).
2. Against tfprec.noise_gains on models tfprec supports today (the committed
   MNIST MLP on embedded MNIST images; a CNN with SAME 3x3/2 max pooling on an
   odd 7x7 map), within 1e-4 relative.
"""
from __future__ import annotations

import contextlib
import os
import sys

import numpy as np
import pytest

import tfprec
from tfprec._tf import keras, tf
from tfprec.application import data as data_lib

from reference import Reference, randomize

L = keras.layers
H = 1e-5          # finite-difference step (weights and inputs are O(1))
RTOL_FD = 1e-6    # central differences in float64: truncation ~H^2


@contextlib.contextmanager
def float64_layers():
    old = keras.backend.floatx()
    keras.backend.set_floatx("float64")
    try:
        yield
    finally:
        keras.backend.set_floatx(old)


# ------------------------------------------------------------- tiny models
def sequence_model():
    """Conv1D (causal, dilated) + BN (folded) -> PReLU -> LayerNorm -> Dense
    on [B, T, D]."""
    with float64_layers():
        keras.utils.set_random_seed(21)
        x = L.Input((6, 3), name="in")
        h = L.Conv1D(4, 3, dilation_rate=2, padding="causal", name="c1")(x)
        h = L.BatchNormalization(name="bn_c1")(h)                  # folded
        h = L.PReLU(shared_axes=[1], name="prelu")(h)
        h = L.LayerNormalization(name="ln")(h)
        h = L.Dense(3, activation="tanh", name="dseq")(h)          # [B, 6, 3]
        h = L.Flatten(name="f")(h)
        out = L.Dense(4, name="fc")(h)
        return randomize(keras.Model(x, out, name="sequence"), 31)


def text_model():
    """Embedding (no E_A) -> Conv1D(gelu) -> global average -> Dense(softmax)
    (the final softmax dropped)."""
    with float64_layers():
        keras.utils.set_random_seed(22)
        x = L.Input((5,), dtype="int32", name="tokens")
        h = L.Embedding(9, 3, name="emb")(x)
        h = L.Conv1D(4, 2, activation="gelu", name="c1")(h)
        h = L.GlobalAveragePooling1D(name="gap")(h)
        out = L.Dense(3, activation="softmax", name="fc")(h)
        return randomize(keras.Model(x, out, name="text"), 32)


def image_model():
    """Grouped dilated conv (relu) -> BN -> SeparableConv2D -> BN -> SAME
    3x3/2 max pool -> Conv2DTranspose -> BN (the three BNs standalone) ->
    dilated depthwise (multiplier 2) + BN (folded) -> Dense."""
    with float64_layers():
        keras.utils.set_random_seed(23)
        x = L.Input((5, 5, 2), name="in")
        h = L.Conv2D(4, 3, groups=2, dilation_rate=2, padding="same",
                     activation="relu", name="gconv")(x)
        h = L.BatchNormalization(name="bn_alone")(h)            # not foldable
        h = L.SeparableConv2D(3, 3, depth_multiplier=2, padding="same",
                              name="sep")(h)
        h = L.BatchNormalization(name="bn_sep")(h)   # folded into sep's pointwise op
        h = L.ReLU(name="r")(h)
        h = L.MaxPooling2D(3, strides=2, padding="same", name="mp")(h)  # 3x3
        h = L.Conv2DTranspose(2, 2, name="tconv")(h)             # 4x4x2
        h = L.BatchNormalization(name="bn_t")(h)                 # standalone
        h = L.DepthwiseConv2D(2, dilation_rate=2, depth_multiplier=2,
                              name="dw")(h)                      # 2x2x4
        h = L.BatchNormalization(name="bn_dw")(h)                # folded
        out = L.Dense(3, name="fc")(L.Flatten(name="f")(h))
        return randomize(keras.Model(x, out, name="image"), 33)


def binary_model():
    """TFOpLambda constants, Multiply, ELU / LeakyReLU / swish, a BN whose
    producer output is also used elsewhere (standalone), Dense(1, sigmoid)."""
    with float64_layers():
        keras.utils.set_random_seed(24)
        x = L.Input((4,), name="in")
        a = L.Dense(5, name="d1")(x)
        b = L.BatchNormalization(name="bn_shared")(a)     # a is also used below
        g = L.ReLU(6.0, name="r6")(a + 3.0) * (1.0 / 6.0)  # hard sigmoid
        h = L.Multiply(name="mul")([b, g])
        h = L.ELU(name="elu")(h)
        h = L.Dense(4, activation="swish", name="d2")(h)
        h = L.LeakyReLU(0.2, name="lrelu")(h)
        out = L.Dense(1, activation="sigmoid", name="out")(h)
        return randomize(keras.Model(x, out, name="binary"), 34)


def _inputs(model, n, seed):
    rng = np.random.default_rng(seed)
    shape = (n,) + tuple(model.input_shape[1:])
    if model.inputs[0].dtype.is_integer:
        return rng.integers(0, 9, shape).astype(np.int32)
    return rng.normal(0.0, 1.0, shape)


# ------------------------------------------------------ finite differences
def _model_logits(model, ref, x):
    """The classifier logits from the Keras model's own forward (differences
    z_i - z_y are exact: log-probabilities for a softmax, logit(p) for a
    sigmoid), a single logit z as [0, z]."""
    out = model(x, training=False)
    if ref.final == "softmax":
        out = tf.math.log(out)
    elif ref.final == "sigmoid":
        out = tf.math.log(out) - tf.math.log1p(-out)
    if out.shape[-1] == 1:
        out = tf.concat([tf.zeros_like(out), out], axis=-1)
    return out


def _bn_arrays(bn):
    d = {v.name.split("/")[-1].split(":")[0]: v for v in bn.weights}
    mean, var = d["moving_mean"].numpy(), d["moving_variance"].numpy()
    gamma = d["gamma"].numpy() if "gamma" in d else np.ones_like(mean)
    return d, gamma / np.sqrt(var + bn.epsilon), mean, np.sqrt(var + bn.epsilon)


def _coordinates(model, ref, name):
    """For every element of every weight tensor of op ``name``, the moves of
    the Keras model's variables, [(variable, flat index, coefficient)], that
    change that element by 1 (to first order; exactly, as all are linear)."""
    layer_name = name[:-len("_depthwise")] if name.endswith("_depthwise") else name
    layer = model.get_layer(layer_name)
    coords = []
    if isinstance(layer, L.BatchNormalization):          # standalone: scale, offset
        d, s, mean, sd = _bn_arrays(layer)
        for c in range(s.size):
            coords.append([(d["gamma"], c, sd[c]), (d["beta"], c, mean[c])])
        for c in range(s.size):
            coords.append([(d["beta"], c, 1.0)])
        return coords
    if isinstance(layer, L.SeparableConv2D):
        ws = ([layer.depthwise_kernel] if name.endswith("_depthwise") else
              [layer.pointwise_kernel] + ([layer.bias] if layer.use_bias else []))
    else:
        ws = [v for v in layer.weights if v.trainable]
    bn = ref.folded_bn.get(layer_name)
    if bn is None or name.endswith("_depthwise"):
        for v in ws:
            coords += [[(v, j, 1.0)] for j in range(int(np.prod(v.shape)))]
        return coords
    d, s, _, _ = _bn_arrays(bn)                          # folded: W' = W*s
    k = ws[0]
    shape = tuple(k.shape)
    for j in range(int(np.prod(shape))):
        idx = np.unravel_index(j, shape)
        if isinstance(layer, L.DepthwiseConv2D):
            c = idx[-2] * shape[-1] + idx[-1]
        elif isinstance(layer, L.Conv2DTranspose):
            c = idx[-2]
        else:
            c = idx[-1]
        coords.append([(k, j, 1.0 / s[c])])
    coords += [[(d["beta"], c, 1.0)] for c in range(s.size)]   # b' moves with beta
    return coords


def _jacobian(f, coords):
    """[B, M, P]: central differences of f() along each coordinate."""
    cols = []
    for moves in coords:
        vals = []
        for sign in (1.0, -1.0):
            saved = []
            for v, j, coef in moves:
                old = v.numpy()
                saved.append((v, old))
                new = old.copy().reshape(-1)
                new[j] += sign * H * coef
                v.assign(new.reshape(old.shape))
            vals.append(f().numpy())
            for v, old in reversed(saved):
                v.assign(old)
        cols.append((vals[0] - vals[1]) / (2 * H))
    return np.stack(cols, axis=-1)


def _gain(jac, z):
    """(1/24) mean_b sum_{i != y} ||J_i - J_y||^2 / (z_i - z_y)^2."""
    total = 0.0
    for b in range(z.shape[0]):
        y = int(np.argmax(z[b]))
        for i in range(z.shape[1]):
            d = z[b, i] - z[b, y]
            if i != y and d != 0:
                total += float(np.sum((jac[b, i] - jac[b, y]) ** 2)) / d ** 2
    return total / (24.0 * z.shape[0])


def fd_gains(model, ref, x):
    """{op: (E_W, E_A)} by central differences."""
    xt = tf.constant(x)
    model_f = tf.function(lambda: _model_logits(model, ref, xt))
    ref_f = tf.function(lambda: ref.logits(xt))
    z = ref_f().numpy()
    np.testing.assert_allclose(model_f().numpy()[:, 1:] - model_f().numpy()[:, :1],
                               z[:, 1:] - z[:, :1], rtol=1e-9, atol=1e-9)
    out = {}
    for name in ref.order:
        e_w = _gain(_jacobian(model_f, _coordinates(model, ref, name)), z)
        pert = ref.ops[name].pert
        if pert is None:
            e_a = 0.0
        else:
            coords = [[(pert, j, 1.0)] for j in range(int(np.prod(pert.shape)))]
            e_a = _gain(_jacobian(ref_f, coords), z)
        out[name] = (e_w, e_a)
    return out


FD_MODELS = {"sequence": sequence_model, "text": text_model,
             "image": image_model, "binary": binary_model}
FD_OPS = {
    "sequence": {"c1", "prelu", "ln", "dseq", "fc"},
    "text": {"emb", "c1", "fc"},
    "image": {"gconv", "bn_alone", "sep_depthwise", "sep", "tconv",
              "bn_t", "dw", "fc"},
    "binary": {"d1", "bn_shared", "d2", "out"},
}


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.slow) for n in sorted(FD_MODELS)])
def test_reference_matches_finite_differences(name):
    model = FD_MODELS[name]()
    x = _inputs(model, 4, seed=7)
    ref = Reference(model)
    assert set(ref.order) == FD_OPS[name]
    assert ref.final == {"text": "softmax", "binary": "sigmoid"}.get(name)
    assert set(ref.folded_bn) == {"sequence": {"c1"}, "image": {"dw", "sep"}}.get(name, set())
    got = ref.gains(x)
    want = fd_gains(model, ref, x)
    assert got.num_classes == (2 if name == "binary" else model.output_shape[-1])
    for op, (e_w, e_a) in want.items():
        assert got[op].e_w > 0, op
        assert got[op].e_w == pytest.approx(e_w, rel=RTOL_FD), (op, "e_w")
        assert got[op].e_a == pytest.approx(e_a, rel=RTOL_FD, abs=1e-300), (op, "e_a")
        if op == "emb":
            assert got[op].e_a == 0.0
        else:
            assert got[op].e_a > 0, op


def test_standalone_bn_tensors_are_scale_and_offset():
    model = binary_model()
    ref = Reference(model)
    bn = model.get_layer("bn_shared")
    gamma, beta, mean, var = (np.asarray(w, np.float64) for w in bn.get_weights())
    s = gamma / np.sqrt(var + bn.epsilon)
    r = ref.gains(_inputs(model, 2, seed=3))["bn_shared"]
    np.testing.assert_allclose(r.tensors[0], s, rtol=1e-15)
    np.testing.assert_allclose(r.tensors[1], beta - mean * s, rtol=1e-15, atol=1e-15)
    assert "d1" not in ref.folded_bn      # d1's output also feeds a + 3.0


def test_binary_head_logits_are_zero_and_z():
    model = binary_model()
    ref = Reference(model)
    x = _inputs(model, 5, seed=4)
    z = ref.logits(x).numpy()
    p = model(x).numpy()[:, 0]
    np.testing.assert_array_equal(z[:, 0], 0.0)
    np.testing.assert_allclose(1.0 / (1.0 + np.exp(-z[:, 1])), p, rtol=1e-12)


# ------------------------------------- against tfprec on supported models
def odd_maxpool_cnn():
    keras.utils.set_random_seed(25)
    x = L.Input((9, 9, 2), name="in")
    h = L.Conv2D(4, 3, activation="relu", name="c1")(x)                 # 7x7
    h = L.MaxPooling2D(3, strides=2, padding="same", name="mp")(h)      # 4x4
    h = L.Conv2D(4, 3, padding="same", name="c2")(h)
    h = L.BatchNormalization(name="bn2")(h)
    h = L.ReLU(name="r2")(h)
    out = L.Dense(5, name="fc")(L.Flatten(name="f")(h))
    return randomize(keras.Model(x, out, name="odd_maxpool"), 35)


def mnist_mlp():
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))), "examples"))
    import common  # noqa: E402  (examples/common.py)
    return common.load_reference("mnist_mlp")


def _supported_case(name):
    if name == "mnist_mlp":
        model = mnist_mlp()
        ds = data_lib.load_dataset("mnist_subset", flatten=True)
        return model, ds.x_test[:16].astype(np.float32)
    model = odd_maxpool_cnn()
    return model, _inputs(model, 16, seed=9).astype(np.float32)


@pytest.mark.filterwarnings("ignore:noise gains from only")
@pytest.mark.parametrize("name", ["odd_maxpool", pytest.param("mnist_mlp", marks=pytest.mark.slow)])
def test_reference_matches_tfprec_on_supported_models(name):
    model, x = _supported_case(name)
    want = Reference(model).gains(x)
    got = tfprec.noise_gains(model, x, batch_size=8)
    assert sorted(got.names) == sorted(want.layers)
    assert (got.num_examples, got.num_classes, got.num_ties) == (
        want.num_examples, want.num_classes, want.num_ties)
    for op, r in want.layers.items():
        assert r.e_w > 0 and r.e_a > 0
        assert got[op].e_w == pytest.approx(r.e_w, rel=1e-4), (op, "e_w")
        assert got[op].e_a == pytest.approx(r.e_a, rel=1e-4), (op, "e_a")
