"""Bad models and bad data raise tfprec errors whose messages name the problem."""
import re

import numpy as np
import pytest

import tfprec
from tfprec import InvalidDataError, TfprecError, UnsupportedModelError
from tfprec._tf import keras, tf

L = keras.layers


def seq(*layers, shape=(8,)):
    keras.utils.set_random_seed(0)
    return keras.Sequential([L.Input(shape), *layers])


@pytest.fixture(scope="module")
def mlp():
    return seq(L.Dense(6, activation="relu", name="d1"), L.Dense(3, name="d2"))


@pytest.fixture(scope="module")
def x8():
    return np.random.default_rng(0).normal(size=(7, 8)).astype(np.float32)


def raises(exc, *fragments):
    """pytest.raises that also checks every fragment occurs in the message."""
    class _Ctx:
        def __enter__(self):
            self.cm = pytest.raises(exc)
            self.info = self.cm.__enter__()
            return self.info

        def __exit__(self, *a):
            out = self.cm.__exit__(*a)
            msg = str(self.info.value)
            for f in fragments:
                assert f in msg, f"{f!r} not in message: {msg}"
            assert isinstance(self.info.value, TfprecError)
            return out
    return _Ctx()


# ------------------------------------------------------------------ models
class NoConfig(L.Layer):
    """A custom weight layer without get_config: tfprec cannot copy it."""

    def __init__(self, units, **kw):
        super().__init__(**kw)
        self.units = units

    def build(self, shape):
        self.w = self.add_weight("w", (shape[-1], self.units))

    def call(self, x):
        return tf.matmul(x, self.w)

    def get_config(self):
        raise NotImplementedError("no config")


@pytest.mark.parametrize("build, shape, name, cls, why", [
    (lambda: seq(L.LSTM(4, name="my_lstm"), L.Dense(3), shape=(5, 8)),
     (5, 8), "my_lstm", "LSTM", "3 weight tensors"),
    (lambda: seq(NoConfig(4, name="opaque"), L.Dense(3)), (8,), "opaque",
     "NoConfig", "get_config"),
])
def test_unsupported_layer_names_layer_and_class(build, shape, name, cls, why):
    model = build()
    x = np.random.default_rng(0).normal(size=(2,) + shape).astype(np.float32)
    with raises(UnsupportedModelError, f"'{name}'", cls, why):
        tfprec.noise_gains(model, x)


@pytest.mark.parametrize("build", [
    lambda: seq(L.Dense(4, activation="sigmoid", name="dsig"), L.Dense(3)),
    lambda: seq(L.Dense(4), L.Activation("tanh", name="atanh"), L.Dense(3)),
    lambda: seq(L.Dense(4), L.LeakyReLU(name="leaky"), L.Dense(3)),
    lambda: seq(L.Dense(4, activation="softmax", name="smx"), L.Dense(3)),
    lambda: seq(L.Dense(4), L.Softmax(name="smx"), L.Dense(3)),
    lambda: seq(L.Dense(4, activation="relu"), L.BatchNormalization(name="bnx"),
                L.Dense(3)),
    lambda: seq(L.BatchNormalization(name="bnx"), L.Dense(3)),
])
def test_formerly_refused_layers_are_analysed(build, x8):
    """Activations, a softmax inside the network and a BatchNormalization
    that follows no weight layer are analysed (issue 10): every gain is
    finite and the weight ops are the ones expected."""
    model = build()
    g = tfprec.noise_gains(model, np.tile(x8, (3, 1)))
    names = [l.name for l in g.layers]
    expect = [l.name for l in model.layers if l.weights]
    assert names == expect
    assert all(np.isfinite(l.e_w) and l.e_w > 0 for l in g.layers)


@pytest.mark.parametrize("sep, dw, conv, shape, kw", [
    (L.SeparableConv1D, L.DepthwiseConv1D, L.Conv1D, (20, 3), {}),
    (L.SeparableConv2D, L.DepthwiseConv2D, L.Conv2D, (9, 9, 3), {"dilation_rate": 2}),
])
def test_separable_layers_refused_with_a_recipe_that_works(sep, dw, conv, shape, kw):
    """A SeparableConv1D (or a dilated SeparableConv2D) has three weight
    tensors: refused, naming the layer and the two layers to write it as.
    Written that way, with its weights, it computes the same function and
    is analysed and fake-quantized."""
    keras.utils.set_random_seed(1)
    x = np.random.default_rng(1).normal(size=(64,) + shape).astype(np.float32)
    i = L.Input(shape)
    s = sep(6, 3, depth_multiplier=2, activation="relu", name="sep", **kw)
    model = keras.Model(i, L.Dense(3)(L.Flatten()(s(i))))
    with raises(UnsupportedModelError, "'sep'", sep.__name__, "3 weight tensors",
                f"{dw.__name__}(", f"{conv.__name__}(filters, 1"):
        tfprec.noise_gains(model, x)
    i = L.Input(shape)
    d = dw(3, depth_multiplier=2, use_bias=False, name="sep_dw", **kw)
    p = conv(6, 1, activation="relu", name="sep_pw")
    split = keras.Model(i, L.Dense(3)(L.Flatten()(p(d(i)))))
    depthwise, pointwise, bias = s.get_weights()
    d.set_weights([depthwise])
    p.set_weights([pointwise, bias])
    split.layers[-1].set_weights(model.layers[-1].get_weights())
    np.testing.assert_allclose(split.predict(x, verbose=0), model.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-5)
    g = tfprec.noise_gains(split, np.tile(x, (4,) + (1,) * len(shape)))
    assert [l.name for l in g.layers][:2] == ["sep_dw", "sep_pw"]
    q = tfprec.quantize_model(split, tfprec.uniform_plan(g, bits=16))
    np.testing.assert_allclose(tfprec.logits_model(q).predict(x, verbose=0),
                               split.predict(x, verbose=0), atol=1e-2)


def test_subclassed_model(x8):
    class Sub(keras.Model):
        def __init__(self):
            super().__init__(name="subby")
            self.d = L.Dense(3)

        def call(self, x):
            return self.d(x)

    model = Sub()
    model(x8)
    with raises(UnsupportedModelError, "'subby'", "Sub", "subclassed"):
        tfprec.noise_gains(model, x8)


def test_not_a_model(x8):
    with raises(UnsupportedModelError, "tf_keras", "dict"):
        tfprec.noise_gains({}, x8)


def test_shared_weight_layer(x8):
    d = L.Dense(8, name="twice")
    inp = L.Input((8,))
    model = keras.Model(inp, L.Dense(3)(d(d(inp))))
    with raises(UnsupportedModelError, "'twice'", "more than once"):
        tfprec.noise_gains(model, x8)


def test_open_input_sizes_are_named_and_the_fix_works():
    keras.utils.set_random_seed(0)
    inp = L.Input((None, None, 2), name="img")
    h = L.GlobalAveragePooling2D()(L.Conv2D(3, 3, activation="relu", name="c")(inp))
    model = keras.Model(inp, L.Dense(3, name="d")(h))
    x = np.random.default_rng(0).normal(size=(6, 5, 5, 2)).astype(np.float32)
    for call in (lambda: tfprec.noise_gains(model, x),
                 lambda: tfprec.fold_batchnorm(model)):
        with raises(UnsupportedModelError, "input 'img'", "(None, None, None, 2)",
                    "clone_model"):
            call()
    # the fix the message gives
    fixed = keras.models.clone_model(model, input_tensors=keras.Input((5, 5, 2)))
    fixed.set_weights(model.get_weights())
    g = tfprec.noise_gains(fixed, x)
    assert g.names == ["c", "d"]
    plan = tfprec.uniform_plan(g, bits=16)
    np.testing.assert_allclose(tfprec.quantize_model(fixed, plan)(x).numpy(),
                               model(x).numpy(), rtol=1e-3, atol=1e-3)


def test_model_without_weights_or_classes(x8):
    with raises(UnsupportedModelError, "nothing to quantize"):
        tfprec.noise_gains(seq(L.ReLU()), x8)
    with raises(UnsupportedModelError, "M >= 2", "(2, 3)"):
        tfprec.noise_gains(seq(L.Reshape((2, 4)), L.Dense(3)), x8)


# -------------------------------------------------------------------- data
def test_empty_data(mlp):
    with raises(InvalidDataError, "empty"):
        tfprec.noise_gains(mlp, np.zeros((0, 8), np.float32))
    ds = tf.data.Dataset.from_tensor_slices(np.zeros((0, 8), np.float32))
    with raises(InvalidDataError, "empty"):
        tfprec.noise_gains(mlp, ds)
    with raises(InvalidDataError, "empty"):
        tfprec.noise_gains(mlp, ds.batch(4))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("source", ["numpy", "dataset"])
def test_non_finite_data_names_example(bad, source, mlp, x8):
    x = x8.copy()
    x[5, 3] = bad
    data = x if source == "numpy" else tf.data.Dataset.from_tensor_slices(x).batch(2)
    with raises(InvalidDataError, "example 5", "NaN or Inf") as info:
        tfprec.noise_gains(mlp, data, batch_size=2)
    assert not re.search(r"example [0-46-9]\b", str(info.value))


@pytest.mark.parametrize("source", ["numpy", "dataset", "dataset_batched",
                                    "dataset_xy"])
def test_wrong_input_shape_gives_both_shapes(source, mlp):
    x = np.zeros((4, 7), np.float32)
    if source == "dataset":
        x = tf.data.Dataset.from_tensor_slices(x)
    elif source == "dataset_batched":
        x = tf.data.Dataset.from_tensor_slices(x).batch(2)
    elif source == "dataset_xy":
        x = tf.data.Dataset.from_tensor_slices((x, np.zeros(4))).batch(2)
    with raises(InvalidDataError, "(7,)", "(8,)"):
        tfprec.noise_gains(mlp, x)


def test_wrong_image_shape_gives_both_shapes():
    model = seq(L.Conv2D(2, 3, name="c"), L.Flatten(), L.Dense(3), shape=(6, 6, 1))
    with raises(InvalidDataError, "(6, 6, 3)", "(6, 6, 1)"):
        tfprec.noise_gains(model, np.zeros((2, 6, 6, 3), np.float32))


def test_other_bad_arguments(mlp, x8):
    with raises(InvalidDataError, "list or tuple"):
        tfprec.noise_gains(mlp, [x8])
    with raises(InvalidDataError, "numeric", "<U"):
        tfprec.noise_gains(mlp, np.array([["a"] * 8]))
    with raises(InvalidDataError, "dtype", "float16"):
        tfprec.noise_gains(mlp, x8, dtype="float16")
    with raises(InvalidDataError, "batch_size", "0"):
        tfprec.noise_gains(mlp, x8, batch_size=0)
    with raises(InvalidDataError, "max_examples", "0"):
        tfprec.noise_gains(mlp, x8, max_examples=0)
    with raises(InvalidDataError, "dict"):
        tfprec.noise_gains(mlp, tf.data.Dataset.from_tensor_slices({"a": x8}))


def test_infinite_dataset_needs_max_examples(mlp, x8):
    ds = tf.data.Dataset.from_tensor_slices(x8).repeat()
    with raises(InvalidDataError, "infinite", "max_examples"):
        tfprec.noise_gains(mlp, ds)
    g = tfprec.noise_gains(mlp, ds, max_examples=20, batch_size=8, dtype="float64")
    want = tfprec.noise_gains(mlp, np.concatenate([x8] * 3)[:20], dtype="float64")
    assert g.num_examples == 20
    for a, b in zip(g.layers, want.layers):
        assert a.e_w == pytest.approx(b.e_w, rel=1e-12)
        assert a.e_a == pytest.approx(b.e_a, rel=1e-12)


@pytest.mark.parametrize("arg,value", [("batch_size", True), ("top_k", 0),
                                       ("sketch", -1), ("class_chunk", 1.5),
                                       ("max_examples", False)])
def test_scalar_arguments_are_named(mlp, x8, arg, value):
    with raises(InvalidDataError, arg, repr(value)):
        tfprec.noise_gains(mlp, x8, **{arg: value})
