"""Reference networks (METHOD.md section 5) and small training helpers.

Builders return *uncompiled* tf_keras functional models that output logits
(no softmax; train with ``from_logits=True``) and use only layers tfprec
analyzes.  Layer names are stable:

* weight layers: ``fc1`` .. / ``conv1_1`` .. / ``stem``, ``s1b1_conv1`` ..,
  and ``logits`` for the final Dense;
* a BatchNormalization after weight layer ``X`` is ``X_bn``; its activation
  is ``X_clip`` (ReLU(max_value=2), the paper's clip(x, 0, 2)), ``X_relu`` or
  ``X_relu6``.

:func:`train` compiles (Adam, sparse categorical cross-entropy on logits,
accuracy) and fits with fixed seeds; :func:`cached_trained` builds, trains
once and caches the weights, so benchmark reruns only load them.

CPU-feasible schedules, measured on the development machine (2 CPU cores, no
GPU, TensorFlow 2.21 / tf_keras 2.21), batch 128, Adam lr 1e-3, seed 0:

* ``mnist_mlp`` on full MNIST (60000 train): 3 epochs take ~17 s (first
  epoch ~8 s incl. warm-up, then ~3-4 s each) and reach 97.6 % test
  accuracy.  On the embedded ``mnist_subset`` (8000 train) 5 epochs take
  ~3.4 s and reach 95.8 % on its 2000 test images.
* ``cifar10_vgg`` on CIFAR-10 (JPEG-75 copy, 50000 train): ~45 s per epoch;
  test accuracy 36.9 / 57.3 / 67.8 / 61.9 / 70.6 % after epochs 1-5
  (3 epochs: 137 s in all).  Test accuracy fluctuates between early epochs
  (BatchNormalization statistics still settling).
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from typing import Callable, Optional, Sequence

import numpy as np

from tfprec._tf import keras, tf
from tfprec.application.data import Dataset
from tfprec.errors import InvalidDataError
from tfprec.fileio import atomic_write_with

L = keras.layers

ENV_CACHE_DIR = "TFPREC_CACHE_DIR"


# ------------------------------------------------------------ constraint
@keras.utils.register_keras_serializable("tfprec")
class ClipWeights(keras.constraints.Constraint):
    """Keeps every weight in [-limit, limit] by clipping after each update."""

    def __init__(self, limit: float = 1.0):
        self.limit = float(limit)

    def __call__(self, w):
        return tf.clip_by_value(w, -self.limit, self.limit)

    def get_config(self):
        return {"limit": self.limit}


# HDF5 files store the constraint's plain class name, which the legacy loader
# looks up in Keras' global custom objects: registering it under that name
# too makes tfprec's own saved models reload anywhere (quantize_scope(),
# plain keras.models.load_model) once tfprec.models is imported, which
# accessing any tfprec model-level name does (tfprec/__init__.py).
keras.utils.get_custom_objects().setdefault("ClipWeights", ClipWeights)


# ------------------------------------------------------------ builders
def mnist_mlp(hidden: Sequence[int] = (512, 512, 512), clip: float = 2.0,
              dropout: float = 0.0, weight_limit: Optional[float] = 1.0,
              input_shape: tuple = (784,), num_classes: int = 10,
              name: str = "mnist_mlp") -> keras.Model:
    """The paper's MNIST MLP 784-512-512-512-10.

    Layers: ``input`` -> [``fc{i}`` (Dense, linear) -> ``fc{i}_clip``
    (ReLU(max_value=clip), i.e. clip(x, 0, clip)) -> ``fc{i}_dropout`` if
    ``dropout`` > 0] for each hidden width -> ``logits`` (Dense, linear).
    Kernels and biases are kept in [-weight_limit, weight_limit] by a
    :class:`ClipWeights` constraint (None: unconstrained).  Keras' Dropout is
    inverted dropout, so it is the identity at inference and no rescaling of
    the weights is needed afterwards.  Takes flattened inputs [N, 784]
    (``load_dataset('mnist', flatten=True)``).

    Measured (2 CPU cores): 3 epochs on the 60000 MNIST training images,
    batch 128, Adam lr 1e-3, seed 0: ~17 s in all, test accuracy 97.6 %
    (float); 5 epochs on ``mnist_subset``: ~3.4 s, 95.8 %.  Parameters:
    932,362.
    """
    cons = ClipWeights(weight_limit) if weight_limit is not None else None
    x = inp = keras.Input(shape=tuple(input_shape), name="input")
    if len(input_shape) != 1:
        x = L.Flatten(name="flatten")(x)
    for i, width in enumerate(hidden, start=1):
        x = L.Dense(int(width), name=f"fc{i}", kernel_constraint=cons,
                    bias_constraint=cons)(x)
        x = L.ReLU(max_value=float(clip), name=f"fc{i}_clip")(x)
        if dropout and dropout > 0:
            x = L.Dropout(float(dropout), name=f"fc{i}_dropout")(x)
    out = L.Dense(int(num_classes), name="logits", kernel_constraint=cons,
                  bias_constraint=cons)(x)
    return keras.Model(inp, out, name=name)


def cifar10_vgg(clip: float = 2.0, batchnorm: bool = True,
                input_shape: tuple = (32, 32, 3), num_classes: int = 10,
                name: str = "cifar10_vgg") -> keras.Model:
    """The paper's CIFAR-10 VGG-like network.

    32C3-32C3-MP2-64C3-64C3-MP2-128C3-128C3-FC256-FC256-10 with valid 3x3
    convolutions: spatial sizes 32 -> 30, 28 -> pool 14 -> 12, 10 -> pool 5
    -> 3, 1, then ``flatten`` (128 features).  Each conv (``conv{b}_{i}``) and
    hidden fc (``fc1``, ``fc2``) is linear, followed by
    BatchNormalization (``..._bn``, when ``batchnorm``; the weight layer then
    has no bias, tfprec folds the BN into it) and ReLU(max_value=clip)
    (``..._clip``).  Pools are ``pool1``, ``pool2``; the output is ``logits``.

    Measured (2 CPU cores, JPEG-75 CIFAR-10, 50000 train, batch 128, Adam
    lr 1e-3, seed 0): ~45 s per epoch; test accuracy 67.8 % after 3 epochs
    (137 s), 70.6 % after 5.  Parameters: 391,274 (incl. the BN moving
    statistics).
    """
    x = inp = keras.Input(shape=tuple(input_shape), name="input")

    def unit(x, layer_name, layer):
        x = layer(x)
        if batchnorm:
            x = L.BatchNormalization(name=f"{layer_name}_bn")(x)
        return L.ReLU(max_value=float(clip), name=f"{layer_name}_clip")(x)

    for b, (filters, pool) in enumerate(((32, True), (64, True), (128, False)),
                                        start=1):
        for i in (1, 2):
            n = f"conv{b}_{i}"
            x = unit(x, n, L.Conv2D(filters, 3, padding="valid",
                                    use_bias=not batchnorm, name=n))
        if pool:
            x = L.MaxPooling2D(2, name=f"pool{b}")(x)
    x = L.Flatten(name="flatten")(x)
    for i in (1, 2):
        n = f"fc{i}"
        x = unit(x, n, L.Dense(256, use_bias=not batchnorm, name=n))
    out = L.Dense(int(num_classes), name="logits")(x)
    return keras.Model(inp, out, name=name)


def _conv_bn(x, filters, kernel, strides, name, act: Optional[str] = "relu"):
    x = L.Conv2D(filters, kernel, strides=strides, padding="same",
                 use_bias=False, kernel_initializer="he_normal", name=name)(x)
    x = L.BatchNormalization(name=f"{name}_bn")(x)
    if act == "relu":
        x = L.ReLU(name=f"{name}_relu")(x)
    elif act == "relu6":
        x = L.ReLU(max_value=6.0, name=f"{name}_relu6")(x)
    return x


def resnet20(num_classes: int = 10, input_shape: tuple = (32, 32, 3),
             name: str = "resnet20") -> keras.Model:
    """CIFAR ResNet-20 (He et al. 2016): 3 stages x 3 basic blocks.

    ``stem`` (3x3 conv, 16) -> stages of 16/32/64 channels; block ``s{s}b{b}``
    is ``_conv1`` (3x3, stride 2 in the first block of stages 2 and 3) -> BN
    -> ReLU -> ``_conv2`` (3x3) -> BN, plus the shortcut (identity, or
    ``_proj`` = 1x1 conv stride 2 + BN when the shape changes), ``_add``,
    ``_relu``; then ``gap`` (GlobalAveragePooling2D) and ``logits``.  Every
    conv has no bias and is followed by BatchNormalization.  Parameters:
    274,042 (incl. the BN moving statistics).
    """
    x = inp = keras.Input(shape=tuple(input_shape), name="input")
    x = _conv_bn(x, 16, 3, 1, "stem")
    channels = 16
    for s, filters in enumerate((16, 32, 64), start=1):
        for b in range(1, 4):
            n = f"s{s}b{b}"
            stride = 2 if (s > 1 and b == 1) else 1
            y = _conv_bn(x, filters, 3, stride, f"{n}_conv1")
            y = _conv_bn(y, filters, 3, 1, f"{n}_conv2", act=None)
            if stride != 1 or channels != filters:
                x = _conv_bn(x, filters, 1, stride, f"{n}_proj", act=None)
            x = L.Add(name=f"{n}_add")([x, y])
            x = L.ReLU(name=f"{n}_relu")(x)
            channels = filters
    x = L.GlobalAveragePooling2D(name="gap")(x)
    out = L.Dense(int(num_classes), name="logits")(x)
    return keras.Model(inp, out, name=name)


def _dw_block(x, pw_filters, strides, name):
    x = L.DepthwiseConv2D(3, strides=strides, padding="same", use_bias=False,
                          name=f"{name}_dw")(x)
    x = L.BatchNormalization(name=f"{name}_dw_bn")(x)
    x = L.ReLU(max_value=6.0, name=f"{name}_dw_relu6")(x)
    return _conv_bn(x, pw_filters, 1, 1, f"{name}_pw", act="relu6")


def mobilenet_like(num_classes: int = 10, input_shape: tuple = (32, 32, 3),
                   name: str = "mobilenet_like") -> keras.Model:
    """A small MobileNet-style network with one two-branch Concatenate.

    ``stem`` (3x3 conv 16, stride 1, BN, ReLU6) -> ``b1`` (dw s1, pw 32) ->
    ``b2`` (dw s2, pw 64) -> two branches: ``b3a`` (dw s1, pw 32) and ``b3b``
    (1x1 conv 32, BN, ReLU6), joined by ``b3_concat`` (64 channels) ->
    ``b4`` (dw s2, pw 128) -> ``b5`` (dw s1, pw 128) -> ``gap`` -> ``logits``.
    A block ``bK`` is DepthwiseConv2D ``bK_dw`` + BN + ReLU6 then 1x1 Conv2D
    ``bK_pw`` + BN + ReLU6.  Spatial sizes 32 -> 32 -> 16 -> 8.
    """
    x = inp = keras.Input(shape=tuple(input_shape), name="input")
    x = _conv_bn(x, 16, 3, 1, "stem", act="relu6")
    x = _dw_block(x, 32, 1, "b1")
    x = _dw_block(x, 64, 2, "b2")
    a = _dw_block(x, 32, 1, "b3a")
    b = _conv_bn(x, 32, 1, 1, "b3b", act="relu6")
    x = L.Concatenate(axis=-1, name="b3_concat")([a, b])
    x = _dw_block(x, 128, 2, "b4")
    x = _dw_block(x, 128, 1, "b5")
    x = L.GlobalAveragePooling2D(name="gap")(x)
    out = L.Dense(int(num_classes), name="logits")(x)
    return keras.Model(inp, out, name=name)


def _application(fn_name: str, **defaults) -> Callable[..., keras.Model]:
    """Builder of ``keras.applications.<fn_name>`` (tf_keras) with random
    weights (``weights=None``: nothing is downloaded), a logits output
    (``classifier_activation=None``), 32x32x3 inputs and 10 classes by
    default."""
    def build_app(num_classes: int = 10, input_shape: tuple = (32, 32, 3),
                  **kw) -> keras.Model:
        fn = getattr(keras.applications, fn_name)
        return fn(input_shape=tuple(input_shape), weights=None,
                  classes=int(num_classes), classifier_activation=None,
                  **{**defaults, **kw})
    build_app.__name__ = fn_name
    build_app.__doc__ = (f"``tf_keras.applications.{fn_name}`` with random weights "
                         "and a logits output (see :func:`_application`).")
    return build_app


#: keras.applications classifiers tfprec is tested on (issue 10); inputs in
#: [0, 1] (MobileNetV3's own Rescaling preprocessing is switched off).
APPLICATIONS = {
    "mobilenet_v2": _application("MobileNetV2"),
    "mobilenet_v3_small": _application("MobileNetV3Small", include_preprocessing=False),
    "resnet50": _application("ResNet50"),
    "densenet121": _application("DenseNet121"),
}

BUILDERS: dict[str, Callable[..., keras.Model]] = {
    "mnist_mlp": mnist_mlp,
    "cifar10_vgg": cifar10_vgg,
    "resnet20": resnet20,
    "mobilenet_like": mobilenet_like,
    **APPLICATIONS,
}


def build(builder_name: str, **kwargs) -> keras.Model:
    """Builds the named reference model (one of :data:`BUILDERS`)."""
    try:
        fn = BUILDERS[builder_name]
    except KeyError:
        raise ValueError(f"unknown model builder {builder_name!r}; use one of "
                         f"{', '.join(BUILDERS)}") from None
    return fn(**kwargs)


# ------------------------------------------------------------ training
def fit_inputs(model: keras.Model, x: np.ndarray) -> np.ndarray:
    """Reshapes ``x`` to the model's input shape when only the layout differs
    (e.g. [N, 28, 28, 1] images for an MLP that takes [N, 784])."""
    want = tuple(model.input_shape[1:])
    if tuple(x.shape[1:]) == want:
        return x
    if None not in want and int(np.prod(want)) == int(np.prod(x.shape[1:])):
        return x.reshape((len(x),) + want)
    raise InvalidDataError(
        f"inputs of shape {tuple(x.shape[1:])} do not fit model "
        f"'{model.name}' which takes {want}")


def compile_model(model: keras.Model, lr: float = 1e-3) -> keras.Model:
    """Compiles with Adam(lr), SparseCategoricalCrossentropy(from_logits=True)
    and accuracy."""
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=lr),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"])
    return model


def train(model: keras.Model, ds: Dataset, epochs: int = 3,
          batch_size: int = 128, lr: float = 1e-3, seed: int = 0,
          verbose: int = 0, validation: bool = False):
    """Compiles ``model`` (see :func:`compile_model`) and fits it on
    ``ds.x_train`` / ``ds.y_train``; returns the Keras History.

    ``keras.utils.set_random_seed(seed)`` is called first, so shuffling and
    dropout are reproducible (weights were drawn when the model was built:
    seed before building too, as :func:`cached_trained` does).  With
    ``validation`` the test split is evaluated after every epoch.
    """
    keras.utils.set_random_seed(int(seed))
    compile_model(model, lr)
    x = fit_inputs(model, ds.x_train)
    val = (fit_inputs(model, ds.x_test), ds.y_test) if validation else None
    return model.fit(x, ds.y_train, epochs=int(epochs), batch_size=int(batch_size),
                     shuffle=True, validation_data=val, verbose=verbose)


def recalibrate_batchnorm(model: keras.Model, x: np.ndarray, batch_size: int = 1024) -> int:
    """Sets every BatchNormalization's moving mean and variance to the
    statistics of one batch of ``x`` (the first ``batch_size`` examples).

    keras.applications use a BN momentum of 0.99-0.999, so after a short
    training run (a few hundred steps) the moving statistics still lag far
    behind the weights and the model is near chance in inference mode.  With
    momentum 0 for one training-mode forward pass, each BN layer's moving
    statistics become those of the batch, layer after layer (each layer
    normalizes with the batch statistics it stores; it uses the batch's biased
    variance, Keras stores the unbiased one, so downstream statistics are
    off by that n/(n-1) factor's effect, ~1e-3 relative for a 1024-image
    batch).  Weights are not changed.  Returns the number of BN layers
    updated.
    """
    # submodules: the BN layers of nested models (a keras.applications base) too
    bns = [l for l in model.submodules if isinstance(l, L.BatchNormalization)]
    if not bns:
        return 0
    saved = [l.momentum for l in bns]
    try:
        for l in bns:
            l.momentum = 0.0
        model(fit_inputs(model, x[:batch_size]), training=True)
    finally:
        for l, m in zip(bns, saved):
            l.momentum = m
    return len(bns)


def accuracy(model: keras.Model, ds: Dataset, split: str = "test",
             batch_size: int = 512) -> float:
    """Float top-1 accuracy of ``model`` on ``ds``'s ``'test'`` or ``'train'`` split."""
    x = fit_inputs(model, getattr(ds, f"x_{split}"))
    y = getattr(ds, f"y_{split}")
    logits = model.predict(x, batch_size=batch_size, verbose=0)
    return float(np.mean(np.argmax(logits, axis=-1) == y))


def default_cache_dir() -> str:
    """``$TFPREC_CACHE_DIR`` or ``~/.cache/tfprec/models``."""
    env = os.environ.get(ENV_CACHE_DIR, "").strip()
    return env or os.path.join(os.path.expanduser("~"), ".cache", "tfprec", "models")


def cache_path(builder_name: str, ds: Dataset, epochs: int, batch_size: int = 128,
               lr: float = 1e-3, seed: int = 0, cache_dir: Optional[str] = None,
               builder_kwargs: Optional[dict] = None) -> str:
    """Weights file :func:`cached_trained` uses for these settings.

    The name spells out builder, dataset name, train/test sizes, epochs,
    batch size and seed; a short hash adds the builder arguments, learning
    rate and a fingerprint of the training data (labels and a strided sample
    of the inputs), so a changed dataset never reuses stale weights.
    """
    kw = dict(builder_kwargs or {})
    h = hashlib.sha256()
    h.update(json.dumps({"kw": kw, "lr": float(lr)}, sort_keys=True,
                        default=str).encode())
    h.update(np.ascontiguousarray(ds.y_train).tobytes())
    step = max(1, ds.num_train // 256)
    h.update(np.ascontiguousarray(ds.x_train[::step]).tobytes())
    h.update(str(ds.x_train.shape).encode())
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in ds.name)
    fname = (f"{builder_name}_{safe}_n{ds.num_train}-{ds.num_test}_e{int(epochs)}"
             f"_b{int(batch_size)}_s{int(seed)}_{h.hexdigest()[:12]}.h5")
    return os.path.join(cache_dir or default_cache_dir(), fname)


def cached_trained(builder_name: str, ds: Dataset, epochs: int = 3,
                   batch_size: int = 128, lr: float = 1e-3, seed: int = 0,
                   cache_dir: Optional[str] = None,
                   builder_kwargs: Optional[dict] = None,
                   verbose: int = 0) -> keras.Model:
    """Builds ``builder_name`` with a fixed seed, trains it once and caches the
    weights (HDF5, at :func:`cache_path`); later calls with the same settings
    load them instead of training.  Returns the compiled, trained model.

    The cache write is atomic (:func:`tfprec.fileio.atomic_write_with`), so
    concurrent or interrupted runs never leave a partial file.  An unreadable
    cache file is ignored (with a warning) and replaced.
    """
    kw = dict(builder_kwargs or {})
    path = cache_path(builder_name, ds, epochs, batch_size, lr, seed, cache_dir, kw)
    keras.utils.set_random_seed(int(seed))
    model = build(builder_name, **kw)
    if os.path.isfile(path):
        try:
            model.load_weights(path)
            return compile_model(model, lr)
        except Exception as e:  # corrupt / incompatible: retrain
            warnings.warn(f"ignoring unreadable cached weights {path}: {e}")
            keras.utils.set_random_seed(int(seed))
            model = build(builder_name, **kw)
    train(model, ds, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
          verbose=verbose)
    if builder_name in APPLICATIONS:      # short runs: BN statistics lag (0.999)
        recalibrate_batchnorm(model, ds.x_train)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    atomic_write_with(path, lambda tmp: model.save_weights(tmp, save_format="h5"))
    return model
