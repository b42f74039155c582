"""Tests of tfprec.models: reference architectures and cached training."""
import os

import numpy as np
import pytest

from tfprec.application import models
from tfprec._tf import keras
from tfprec.application.data import load_dataset
from tfprec.errors import InvalidDataError

L = keras.layers
ALLOWED = (L.InputLayer, L.Dense, L.Conv2D, L.DepthwiseConv2D, L.BatchNormalization,
           L.ReLU, L.Activation, L.MaxPooling2D, L.AveragePooling2D,
           L.GlobalAveragePooling2D, L.Flatten, L.Reshape, L.Dropout, L.Add,
           L.Concatenate)
WEIGHT = (L.Dense, L.Conv2D, L.DepthwiseConv2D)


@pytest.fixture(scope="module")
def small_mnist():
    return load_dataset("mnist_subset", flatten=True, num_train=512, num_test=256)


def _check_allowed(model):
    for layer in model.layers:
        assert type(layer) in ALLOWED, (model.name, layer.name, type(layer))
        if isinstance(layer, L.BatchNormalization):
            prev = layer.inbound_nodes[0].inbound_layers
            assert isinstance(prev, WEIGHT), (layer.name, prev)
            assert prev.activation is keras.activations.linear
        if isinstance(layer, WEIGHT):
            assert layer.activation is keras.activations.linear, layer.name


def test_mnist_mlp_structure():
    m = models.mnist_mlp()
    assert [l.name for l in m.layers] == [
        "input", "fc1", "fc1_clip", "fc2", "fc2_clip", "fc3", "fc3_clip", "logits"]
    assert [l.units for l in m.layers if isinstance(l, L.Dense)] == [512, 512, 512, 10]
    assert m.input_shape == (None, 784) and m.output_shape == (None, 10)
    assert m.count_params() == 784 * 512 + 512 + 2 * (512 * 512 + 512) + 5130 == 932362
    for l in m.layers:
        if isinstance(l, L.ReLU):
            assert float(l.max_value) == 2.0
        if isinstance(l, L.Dense):
            assert isinstance(l.kernel_constraint, models.ClipWeights)
    _check_allowed(m)
    d = models.mnist_mlp(hidden=(64,), dropout=0.25)
    assert [l.name for l in d.layers] == ["input", "fc1", "fc1_clip", "fc1_dropout", "logits"]


def test_clip_constraint_keeps_weights_in_range(small_mnist):
    m = models.mnist_mlp(hidden=(32, 32))
    m.set_weights([np.full(w.shape, 0.95, np.float32) * np.sign(
        np.random.default_rng(0).standard_normal(w.shape)).astype(np.float32)
        for w in m.get_weights()])
    models.compile_model(m, lr=0.5)  # huge steps push weights past +-1
    x = small_mnist.x_train[:128]
    m.train_on_batch(x, small_mnist.y_train[:128])
    ws = np.concatenate([w.ravel() for w in m.get_weights()])
    assert ws.min() >= -1.0 and ws.max() <= 1.0
    assert np.isclose(np.abs(ws).max(), 1.0)  # the clip was active


def test_clip_constraint_serializes():
    m = models.mnist_mlp(hidden=(8,), weight_limit=0.5)
    m2 = keras.models.model_from_json(m.to_json())
    c = m2.get_layer("fc1").kernel_constraint
    assert isinstance(c, models.ClipWeights) and c.limit == 0.5
    assert keras.constraints.get(
        keras.constraints.serialize(models.ClipWeights(0.25))).limit == 0.25


def test_cifar10_vgg_structure():
    m = models.cifar10_vgg()
    convs = [l for l in m.layers if isinstance(l, L.Conv2D)]
    assert [l.filters for l in convs] == [32, 32, 64, 64, 128, 128]
    assert all(l.padding == "valid" and l.kernel_size == (3, 3) for l in convs)
    spatial = [l.output_shape[1] for l in m.layers
               if isinstance(l, (L.Conv2D, L.MaxPooling2D))]
    assert spatial == [30, 28, 14, 12, 10, 5, 3, 1]
    assert [l.units for l in m.layers if isinstance(l, L.Dense)] == [256, 256, 10]
    names = [l.name for l in m.layers]
    assert names[:8] == ["input", "conv1_1", "conv1_1_bn", "conv1_1_clip",
                         "conv1_2", "conv1_2_bn", "conv1_2_clip", "pool1"]
    assert names[-4:] == ["fc2", "fc2_bn", "fc2_clip", "logits"]
    assert sum(isinstance(l, L.BatchNormalization) for l in m.layers) == 8
    assert m.count_params() == 391274
    _check_allowed(m)
    nobn = models.cifar10_vgg(batchnorm=False)
    assert not any(isinstance(l, L.BatchNormalization) for l in nobn.layers)
    assert nobn.get_layer("conv1_1").use_bias


def test_resnet20_structure():
    m = models.resnet20()
    convs = [l for l in m.layers if isinstance(l, L.Conv2D)]
    assert len(convs) == 1 + 18 + 2  # stem, 9 blocks x 2, 2 projections
    assert sum(isinstance(l, L.Add) for l in m.layers) == 9
    projs = [l for l in convs if l.name.endswith("_proj")]
    assert [p.name for p in projs] == ["s2b1_proj", "s3b1_proj"]
    assert all(p.kernel_size == (1, 1) and p.strides == (2, 2) for p in projs)
    assert m.get_layer("s3b3_relu").output_shape == (None, 8, 8, 64)
    assert isinstance(m.layers[-2], L.GlobalAveragePooling2D)
    assert m.output_shape == (None, 10) and m.count_params() == 274042
    _check_allowed(m)


def test_mobilenet_like_structure():
    m = models.mobilenet_like(num_classes=7)
    kinds = {type(l) for l in m.layers}
    assert {L.DepthwiseConv2D, L.Concatenate, L.GlobalAveragePooling2D} <= kinds
    assert any(isinstance(l, L.DepthwiseConv2D) and l.strides == (2, 2) for l in m.layers)
    assert m.get_layer("b3_concat").output_shape == (None, 16, 16, 64)
    assert all(float(l.max_value) == 6.0 for l in m.layers if isinstance(l, L.ReLU))
    assert m.output_shape == (None, 7)
    _check_allowed(m)


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.slow) if n in models.APPLICATIONS else n
    for n in sorted(models.BUILDERS)])     # the applications: tests/test_applications.py
def test_graph_parser_accepts(name):
    from tfprec.statistics.graph import parse_model
    m = models.build(name)
    g = parse_model(m)
    n_weight = sum(isinstance(l, WEIGHT) for l in m.layers)
    assert sum(op.kind in ("dense", "conv2d", "depthwise") for op in g.ops) == n_weight
    assert not any(op.kind == "bn" for op in g.ops)  # all folded


def test_build_unknown():
    with pytest.raises(ValueError, match="vgg99"):
        models.build("vgg99")


def test_fit_inputs_reshapes_or_raises(small_mnist):
    m = models.mnist_mlp(hidden=(8,))
    x = small_mnist.x_train[:4].reshape(4, 28, 28, 1)
    assert models.fit_inputs(m, x).shape == (4, 784)
    with pytest.raises(InvalidDataError, match="mnist_mlp"):
        models.fit_inputs(m, np.zeros((4, 10), np.float32))


@pytest.mark.slow
def test_train_learns_and_is_deterministic(small_mnist):
    def run():
        keras.utils.set_random_seed(3)
        m = models.mnist_mlp(hidden=(64,))
        h = models.train(m, small_mnist, epochs=2, batch_size=64, seed=3)
        return m, h
    m1, h1 = run()
    m2, _ = run()
    assert set(h1.history) >= {"loss", "accuracy"}
    assert h1.history["loss"][1] < h1.history["loss"][0]
    assert models.accuracy(m1, small_mnist) > 0.6
    for a, b in zip(m1.get_weights(), m2.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.slow
def test_cached_trained_reuses_cache(small_mnist, tmp_path, monkeypatch):
    calls = []
    real_train = models.train

    def counting_train(*a, **k):
        calls.append(1)
        return real_train(*a, **k)

    monkeypatch.setattr(models, "train", counting_train)
    kw = {"hidden": (32,)}
    args = dict(epochs=1, batch_size=64, seed=0, cache_dir=str(tmp_path),
                builder_kwargs=kw)
    m1 = models.cached_trained("mnist_mlp", small_mnist, **args)
    path = models.cache_path("mnist_mlp", small_mnist, 1, 64, 1e-3, 0,
                             str(tmp_path), kw)
    assert len(calls) == 1 and os.path.isfile(path)
    assert os.listdir(tmp_path) == [os.path.basename(path)]  # no temp files left
    assert "mnist_mlp_mnist_subset_n512-256_e1_b64_s0" in path

    m2 = models.cached_trained("mnist_mlp", small_mnist, **args)
    assert len(calls) == 1  # loaded, not trained
    for a, b in zip(m1.get_weights(), m2.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert models.accuracy(m2, small_mnist) == models.accuracy(m1, small_mnist)
    m2.evaluate(small_mnist.x_test, small_mnist.y_test, verbose=0)  # compiled

    # different settings -> different key -> trains again
    models.cached_trained("mnist_mlp", small_mnist, **{**args, "epochs": 2})
    assert len(calls) == 2 and len(os.listdir(tmp_path)) == 2


def test_cached_trained_replaces_corrupt_cache(small_mnist, tmp_path, monkeypatch):
    kw = {"hidden": (16,)}
    path = models.cache_path("mnist_mlp", small_mnist, 1, 128, 1e-3, 0,
                             str(tmp_path), kw)
    with open(path, "wb") as f:
        f.write(b"corrupt")
    with pytest.warns(UserWarning, match="unreadable cached weights"):
        models.cached_trained("mnist_mlp", small_mnist, epochs=1,
                              cache_dir=str(tmp_path), builder_kwargs=kw)
    assert os.path.getsize(path) > 1000


def test_cache_dir_env(monkeypatch, tmp_path, small_mnist):
    monkeypatch.setenv(models.ENV_CACHE_DIR, str(tmp_path))
    assert models.cache_path("mnist_mlp", small_mnist, 1).startswith(str(tmp_path))


def test_recalibrate_batchnorm_sets_batch_statistics():
    """After recalibration each BN's moving mean / variance are the batch
    statistics of its own input: exactly for the first BN; for a later one up
    to the n/(n-1) variance correction upstream (the pass normalizes with the
    batch's biased variance, inference with the stored unbiased one)."""
    from tfprec._tf import keras
    L = keras.layers
    keras.utils.set_random_seed(0)
    inp = L.Input((6, 6, 2))
    h = L.Conv2D(3, 3, name="c1")(inp)
    h = L.BatchNormalization(name="bn1", momentum=0.999)(h)
    h = L.ReLU()(h)
    h = L.Conv2D(4, 3, name="c2")(h)
    h = L.BatchNormalization(name="bn2", momentum=0.99)(h)
    m = keras.Model(inp, L.Dense(3)(L.Flatten()(h)))
    x = np.random.default_rng(0).normal(size=(64, 6, 6, 2)).astype(np.float32)
    w = [v.copy() for v in m.get_weights()]
    assert models.recalibrate_batchnorm(m, x, batch_size=48) == 2
    for name, src, tol in (("bn1", "c1", 1e-5), ("bn2", "c2", 2e-3)):
        bn = m.get_layer(name)
        feats = keras.Model(m.input, m.get_layer(src).output).predict(x[:48], verbose=0)
        mean = feats.mean(axis=(0, 1, 2))
        var = feats.reshape(-1, feats.shape[-1]).var(axis=0, ddof=1)   # Keras: unbiased
        np.testing.assert_allclose(bn.moving_mean.numpy(), mean, rtol=tol, atol=1e-5)
        np.testing.assert_allclose(bn.moving_variance.numpy(), var, rtol=tol, atol=1e-5)
        assert bn.momentum in (0.999, 0.99)                  # restored
    trainable = [v.name for v in m.weights if "moving" not in v.name]
    for v, old in zip(m.weights, w):
        if v.name in trainable:
            np.testing.assert_array_equal(v.numpy(), old)    # weights unchanged
