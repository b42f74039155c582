"""Calls of tf_keras layers for the analysed graph (no registry, no TF passes).

:class:`NodeCall` rebuilds the arguments of one layer call of a functional
model; :class:`LayerCall` and :class:`ActivationCall` run a weightless layer
or an activation function on runtime values; :func:`clone_layer` makes the
private copies tfprec runs when it needs another dtype or substituted
weights (the user's layers are only read).
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from tfprec import compat
from tfprec._tf import tf
from tfprec.errors import UnsupportedModelError

#: Known value ranges (low, high) of activation functions' outputs.
ACT_BOUNDS = {"sigmoid": (0.0, 1.0), "hard_sigmoid": (0.0, 1.0), "tanh": (-1.0, 1.0),
              "softmax": (0.0, 1.0), "relu": (0.0, None), "relu6": (0.0, 6.0),
              "softplus": (0.0, None), "elu": (-1.0, None), "selu": (-1.7580993408473766, None)}

#: Attribute names tried first when locating a layer's weight variables.
_WEIGHT_ATTR_NAMES = ("kernel", "depthwise_kernel", "pointwise_kernel", "bias",
                      "gamma", "beta", "alpha", "embeddings")


def quantized_weights(layer) -> list:
    """``layer``'s weight variables that train, a frozen layer's
    (``trainable=False``) included: the weights tfprec quantizes (a
    BatchNormalization's moving statistics do not train)."""
    return [w for w in layer.weights if getattr(w, "trainable", False)]


def split_hint(layer) -> str:
    """How to write ``layer``, which has more than two weight tensors, as
    layers tfprec analyses (part of the refusal's message)."""
    name = type(layer).__name__
    if name in ("SeparableConv1D", "SeparableConv2D"):
        d = name[-2:]
        return (f"write it as DepthwiseConv{d}(kernel_size, strides, padding, "
                f"depth_multiplier, dilation_rate, use_bias=False) followed by "
                f"Conv{d}(filters, 1, activation, use_bias), the same function, "
                "with the layer's depthwise kernel, pointwise kernel and bias "
                "(tfprec splits a channels-last SeparableConv2D without dilation "
                "itself)")
    return "split the layer (a subclassed model: rebuild it functionally)"


def weight_attrs(layer, weights=None) -> list:
    """Attribute names of ``layer``'s quantized weights (``weights``, by
    default :func:`quantized_weights`), in that order.

    Raises:
      UnsupportedModelError: a weight is not held in a plain attribute.
    """
    names = []
    d = vars(layer)
    for w in quantized_weights(layer) if weights is None else weights:
        hit = next((k for k in _WEIGHT_ATTR_NAMES if d.get(k) is w), None)
        if hit is None:
            hit = next((k for k, v in d.items() if v is w), None)
        if hit is None:
            raise UnsupportedModelError(
                f"layer '{layer.name}' of class {type(layer).__name__}: its weight "
                f"'{w.name}' is not held in an attribute of the layer, so tfprec "
                "cannot substitute quantized values for it.")
        names.append(hit)
    return names


class NodeCall:
    """The arguments of one layer call (node) of a functional model, with the
    symbolic tensors replaced by runtime values.

    ``input_ids`` lists the ids of the symbolic tensors in the order
    :meth:`args` expects their values; constants of the call (``x + 3.0``,
    ``axis=-1``, ``training=None``) are kept as they were.
    """

    def __init__(self, node, tid):
        self.struct = (tuple(node.call_args), dict(node.call_kwargs))
        leaves = tf.nest.flatten(self.struct)
        self.slots = [i for i, v in enumerate(leaves) if compat.is_symbolic(v)]
        self.leaves = [None if i in self.slots else v for i, v in enumerate(leaves)]
        self.input_ids = [tid(leaves[i]) for i in self.slots]

    def args(self, values):
        leaves = list(self.leaves)
        for s, v in zip(self.slots, values):
            leaves[s] = v
        return tf.nest.pack_sequence_as(self.struct, leaves)


def _clone_error(layer, e) -> UnsupportedModelError:
    return UnsupportedModelError(
        f"layer '{layer.name}' of class {type(layer).__name__} could not be "
        f"rebuilt from its get_config() ({type(e).__name__}: {e}); tfprec runs "
        "a private copy of it (in the pass dtype, or with quantized weights). "
        "Give the layer a get_config() that from_config() accepts.")


def _short(name: str) -> str:
    return name.split("/")[-1].split(":")[0]


def clone_layer(layer, dtype: str, input_shape, **overrides):
    """A fresh, built copy of ``layer`` computing in ``dtype`` with the same
    weights (the user's layer is never called with substituted weights)."""
    try:
        cfg = dict(layer.get_config(), dtype=dtype, **overrides)
        new = type(layer).from_config(cfg)
        if layer.weights:
            new.build(input_shape)
            copy_weights(layer, new)
    except Exception as e:  # noqa: BLE001 - reported with the layer's name
        raise _clone_error(layer, e) from e
    return new


def copy_weights(src, dst) -> None:
    """Gives the built copy ``dst`` of layer ``src`` every weight of ``src``
    (trainable or not: an adapted Normalization's mean, variance and count,
    which its config does not hold), matched by name, cast to ``dst``'s
    dtypes, then lets ``dst`` recompute what it derives from them
    (``finalize_state``).

    Raises:
      UnsupportedModelError: a weight of ``src`` has no counterpart of the
        same name and shape in ``dst`` (naming both layers' weights).
    """
    mine = {_short(w.name): w for w in dst.weights}
    for w in src.weights:
        to = mine.get(_short(w.name))
        if to is None or tuple(to.shape) != tuple(w.shape):
            raise UnsupportedModelError(
                f"layer '{src.name}' of class {type(src).__name__}: its copy from "
                f"get_config() has no weight like '{_short(w.name)}' {tuple(w.shape)} "
                f"(the copy's: {[(_short(v.name), tuple(v.shape)) for v in dst.weights]})")
        to.assign(tf.cast(w, to.dtype))
    # preprocessing layers keep tensors derived from their weights (an
    # adapted Normalization's broadcast mean and variance): refresh them, as
    # Keras does after loading weights
    getattr(dst, "finalize_state", lambda: None)()


class LayerCall:
    """Callable ``(values, dtype) -> output`` of a weightless layer's node.

    At the layer's own compute dtype the user's layer is called (it has no
    weights to substitute); at another dtype a private copy is.
    """

    def __init__(self, layer, node_call: NodeCall, input_shapes):
        self.layer = layer
        self.node_call = node_call
        self.input_shapes = input_shapes
        self._by_dtype: dict = {}

    def _layer(self, dtype: tf.DType):
        if dtype.name == getattr(self.layer, "compute_dtype", None):
            return self.layer
        lyr = self._by_dtype.get(dtype.name)
        if lyr is None:
            shapes = self.input_shapes
            lyr = self._by_dtype[dtype.name] = clone_layer(
                self.layer, dtype.name, shapes[0] if len(shapes) == 1 else shapes)
        return lyr

    def __call__(self, values, dtype: tf.DType):
        args, kwargs = self.node_call.args(values)
        kwargs = dict(kwargs)
        if getattr(self.layer, "_expects_training_arg", False):
            kwargs["training"] = False
        return self._layer(dtype)(*args, **kwargs)


class ActivationCall:
    """Callable ``(values, dtype) -> output`` of a Keras activation function."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, values, dtype):
        return self.fn(values[0])


def bn_affine(bn) -> tuple:
    """(scale, offset) float64 of inference BatchNormalization ``bn``."""
    cfg = {w.name.split("/")[-1].split(":")[0]: np.asarray(w, np.float64)
           for w in bn.weights}
    n = int(cfg["moving_mean"].shape[-1])
    gamma = cfg.get("gamma", np.ones(n))
    beta = cfg.get("beta", np.zeros(n))
    scale = gamma / np.sqrt(cfg["moving_variance"] + bn.epsilon)
    return scale, beta - cfg["moving_mean"] * scale


def act_bounds(name: str) -> tuple:
    """Known (low, high) output range of activation ``name`` ((None, None):
    unknown, calibrated from data)."""
    return ACT_BOUNDS.get(name, (None, None))


def macs_of(layer, kernel: np.ndarray, in_shape, out_shape) -> Optional[int]:
    """Multiply-adds per example of a generic weight layer (None: one per
    output element, as for elementwise layers)."""
    cls = type(layer).__name__
    p_out = int(np.prod(out_shape))
    if cls in ("Conv1D", "Conv2D", "Conv3D", "Dense"):
        return p_out * int(np.prod(kernel.shape[:-1]))
    if cls == "DepthwiseConv2D" or cls == "DepthwiseConv1D":
        return p_out * int(np.prod(kernel.shape[:-2]))
    if cls in ("Conv2DTranspose", "Conv1DTranspose", "Conv3DTranspose"):
        return int(np.prod(in_shape)) * int(np.prod(kernel.shape[:-2])) * int(kernel.shape[-2])
    return None
