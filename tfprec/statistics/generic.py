"""Generic ops of the analysed graph: any tf_keras layer, run as itself.

The graph parser (:mod:`tfprec.statistics.graph`) gives every layer it has
no special rule for one of three generic ops:

* ``layer`` (no trainable weights: activations of any kind, merges such as
  Multiply, padding, cropping, up-sampling, Rescaling / Normalization,
  Permute, RepeatVector, Lambda and ``TFOpLambda`` nodes such as ``x + 3.0``).
  The op calls the layer itself with the arguments of its node in the
  model (:class:`NodeCall`); the noise-gain pass differentiates through it
  with ``tf.GradientTape`` on the input tiled once per stacked cotangent row.
  No registry entry is needed.
* ``generic`` (a weight layer with no registered fast rule: Conv1D, dilated
  or grouped convolutions, Dense on [B, T, D], Conv2DTranspose,
  LayerNormalization, PReLU, ...).  Its one or two trainable weights are the
  op's ``kernel`` and ``bias`` (one fixed-point format for both, as for the
  registered layers).  Forward runs ``layer.call`` of a private clone of the
  layer with the weights swapped for the executor's tensors; the
  per-example squared weight-gradient norms are exact, computed by
  ``tf.vectorized_map`` over (example, class) rows of a per-row
  ``GradientTape`` gradient: correct for any differentiable layer, slower
  than a registered rule (``benchmarks/coverage.py`` measures it).
  Dense on [B, T..., D], Conv1D/2D/3D (dilated, grouped, causal),
  DepthwiseConv1D/2D and LayerNormalization stay ``generic`` ops but, while
  :class:`~tfprec.statistics.graph.registered_rules` is on at parse time,
  carry ``attrs["rule"]``: their norms (and, for grouped convolutions, the
  forward and input VJP) then come from the closed forms of
  :mod:`tfprec.statistics.generic_rules`.
* ``affine``: a BatchNormalization that cannot be folded into a preceding
  weight layer, quantized as the per-channel affine map y = x * s + t with
  s = gamma / sqrt(var + eps), t = beta - mean * s as its two weight tensors
  (registered, closed-form per-example norms).

Layers are assumed to act on each example separately in inference mode
(every Keras layer except batch statistics does), so tiling the batch is
exact.
"""
from __future__ import annotations

import math

import numpy as np

from tfprec._tf import tf
from tfprec.statistics import generic_rules, registry
from tfprec.statistics.layers import clone_layer

# ------------------------------------------------------------ generic weights
def _clone_for(attrs, dtype: tf.DType):
    cache = attrs.setdefault("_clones", {})
    lyr = cache.get(dtype.name)
    if lyr is None:
        lyr = cache[dtype.name] = clone_layer(
            attrs["layer"], dtype.name, attrs["input_shape"], **attrs["overrides"])
    return lyr


def _generic_forward(attrs, a):
    if generic_rules.has_forward(attrs):       # per-group (grouped convolutions)
        return generic_rules.forward(attrs, a)
    lyr = _clone_for(attrs, a.dtype)
    swap = {attrs["weight_attrs"][0]: attrs["kernel_t"]}
    if attrs["bias_t"] is not None:
        swap[attrs["weight_attrs"][1]] = attrs["bias_t"]
    old = {k: vars(lyr)[k] for k in swap}
    try:
        for k, v in swap.items():
            object.__setattr__(lyr, k, v)     # no tracking: a plain read in call
        return lyr.call(a)
    finally:
        for k, v in old.items():
            object.__setattr__(lyr, k, v)


def _tile_rows(a, c: int):
    return tf.tile(a, [c] + [1] * (len(a.shape) - 1))


def _generic_vjp(attrs, a, dy):
    if generic_rules.has_input_vjp(attrs):     # closed form (grouped convolutions)
        return generic_rules.input_vjp(attrs, a, dy)
    a_rep = _tile_rows(a, dy.shape[0])
    with tf.GradientTape() as tape:
        tape.watch(a_rep)
        y = _generic_forward(attrs, a_rep)
    return tape.gradient(y, a_rep, output_gradients=registry.merge_classes(dy))


def _generic_sq(attrs, a, dy):
    if attrs.get("rule") is not None:      # closed form (set only while the
        return generic_rules.sq_norms(attrs, a, dy)   # registered rules are on)
    c = dy.shape[0]
    k, b = attrs["kernel_t"], attrs["bias_t"]

    def row(args):
        ai, di = args
        ws = [tf.identity(k)] + ([] if b is None else [tf.identity(b)])
        with tf.GradientTape() as tape:
            for w in ws:
                tape.watch(w)
            y = _generic_forward(dict(attrs, kernel_t=ws[0],
                                      bias_t=ws[1] if b is not None else None),
                                 ai[None])
            s = tf.reduce_sum(y * di[None])
        gs = tape.gradient(s, ws, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return tf.add_n([tf.reduce_sum(tf.square(g)) for g in gs])

    rows = tf.vectorized_map(row, (_tile_rows(a, c), registry.merge_classes(dy)))
    return tf.reduce_sum(tf.reshape(rows, [c, -1]), axis=0)


def _generic_geometry(attrs, in_shape, out_shape):
    kernel, bias = attrs["kernel"], attrs["bias"]
    n_w = int(kernel.size + (0 if bias is None else bias.size))
    p = int(np.prod(out_shape))
    macs = attrs.get("macs")
    if macs is None:      # elementwise (LayerNorm, PReLU, ...): one product each
        macs = p
    d = max(1, int(math.ceil(macs / max(p, 1))))
    return dict(dot_length=d + int(bias is not None), num_dots=p, num_weights=n_w,
                num_inputs=int(np.prod(in_shape)))


registry.register("generic", registry.WeightLayerFns(
    _generic_forward, _generic_vjp, _generic_sq, _generic_geometry))


# ------------------------------------------------ affine (standalone BN)
def _affine_forward(attrs, a):
    y = a * attrs["kernel_t"]
    return y if attrs["bias_t"] is None else y + attrs["bias_t"]


def _affine_vjp(attrs, a, dy):
    return registry.merge_classes(dy * attrs["kernel_t"])


def _affine_sq(attrs, a, dy):
    axes = list(range(2, len(dy.shape) - 1))      # positions of [C, B, ..., ch]
    gk = tf.reduce_sum(dy * a[None], axis=axes) if axes else dy * a[None]
    out = tf.reduce_sum(tf.square(gk), axis=[0, 2])
    if attrs["bias_t"] is not None:
        gb = tf.reduce_sum(dy, axis=axes) if axes else dy
        out = out + tf.reduce_sum(tf.square(gb), axis=[0, 2])
    return out


def _affine_geometry(attrs, in_shape, out_shape):
    has_b = attrs["bias"] is not None
    return dict(dot_length=1 + int(has_b), num_dots=int(np.prod(out_shape)),
                num_weights=int(attrs["kernel"].size * (1 + int(has_b))),
                num_inputs=int(np.prod(in_shape)))


registry.register("affine", registry.WeightLayerFns(
    _affine_forward, _affine_vjp, _affine_sq, _affine_geometry))


def generic_backward(op, vals: dict, g, c: int, dtype, needs_grad) -> list:
    """(input id, gradient) pairs of a ``layer`` op for stacked cotangent
    ``g`` [c * B, ...]: the op re-run on its inputs tiled c times."""
    xs = [_tile_rows(vals[i], c) for i in op.inputs]
    watch = [i for i, (tid, x) in enumerate(zip(op.inputs, xs))
             if tid in needs_grad and x.dtype.is_floating]
    if not watch:
        return []
    with tf.GradientTape() as tape:
        for i in watch:
            tape.watch(xs[i])
        y = op.attrs["call"](xs, dtype)
    gs = tape.gradient(y, [xs[i] for i in watch], output_gradients=g,
                       unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return [(op.inputs[i], d) for i, d in zip(watch, gs)]


