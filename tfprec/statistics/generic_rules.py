"""Closed-form per-example weight-gradient norms for some ``generic`` ops.

A weight layer without a registered kind is a ``generic`` op
(:mod:`tfprec.statistics.generic`): its per-example squared weight-gradient
norms come from ``tf.vectorized_map`` over per-row gradients, exact for any
layer but slow.  For the layers below the parser
(:func:`tfprec.statistics.graph._weight_ops`, only while
:class:`~tfprec.statistics.graph.registered_rules` is on) also stores
``attrs["rule"]`` and ``attrs["rule_params"]`` (:func:`rule_for`); the op stays
of kind ``generic`` everywhere else (export, quantization, costs, reports),
and :func:`sq_norms` replaces the ``vectorized_map`` computation with an exact
closed form:

* ``dense_nd``: Dense on [B, T..., D].  The kernel gradient of one example is
  sum_t a_t g_t^T, so its squared norm is sum_{t,t'} (a_t . a_t')(g_t . g_t')
  (Gram form) or, when cheaper, the squared norm of the explicit [D, O]
  product; the bias gradient is sum_t g_t.
* ``conv``: Conv1D / Conv2D / Conv3D, channels_last, any strides, dilation,
  ``groups``, padding valid / same (and causal for Conv1D): the same sum of
  outer products over output positions with the input patches as a_t, per
  group.
* ``depthwise``: DepthwiseConv1D / DepthwiseConv2D, channels_last, any
  strides, dilation, padding: per input channel, patches of that channel
  against its ``depth_multiplier`` output channels.
* ``conv_transpose``: Conv2DTranspose (channels_last, no dilation or
  output_padding): Conv2D's filter gradient with input and output gradient
  swapped, so the patches of the output gradient pair with the input.
* ``layernorm``: LayerNormalization y = xhat * gamma + beta, xhat the input
  normalized over ``axis``: the gamma gradient is g * xhat and the beta
  gradient g, each summed over the positions outside ``axis``.

Shapes as in :mod:`tfprec.statistics.registry`: input ``a`` [B, ...], output
gradient ``dy`` [C, B, ...] (C stacked classes); :func:`sq_norms` returns [B],
the per-example squared norms (units of d(margin)/d(weight), squared) summed
over the C rows.
"""
from __future__ import annotations

import itertools
from typing import Optional

import numpy as np

from tfprec._tf import keras, tf

L = keras.layers


# ----------------------------------------------------------------- selection
def _conv_classes() -> tuple:
    return tuple(c for c in (getattr(L, n, None) for n in ("Conv1D", "Conv2D", "Conv3D"))
                 if c is not None)


def _depthwise_classes() -> tuple:
    return tuple(c for c in (getattr(L, n, None)
                             for n in ("DepthwiseConv1D", "DepthwiseConv2D"))
                 if c is not None)


def rule_for(layer, in_shape, names) -> Optional[tuple]:
    """(rule name, params) of the closed-form rule for generic weight layer
    ``layer`` (per-example input shape ``in_shape``, quantized weights held in
    attributes ``names``), or None: the ``vectorized_map`` path.

    Only the exact Keras classes qualify (a subclass may override ``call``).
    """
    cls = type(layer)
    names = list(names)
    if cls is L.Dense:
        if (len(in_shape) >= 2 and None not in tuple(in_shape)
                and names in (["kernel"], ["kernel", "bias"])):
            return "dense_nd", {}
        return None
    if cls in _conv_classes() + _depthwise_classes():
        if getattr(layer, "data_format", "channels_last") != "channels_last":
            return None
        depthwise = cls in _depthwise_classes()
        kname = "depthwise_kernel" if depthwise else "kernel"
        if names not in ([kname], [kname, "bias"]):
            return None
        padding = layer.padding.lower()
        rank = len(layer.kernel_size)
        if padding not in ("valid", "same") and not (padding == "causal" and rank == 1):
            return None
        params = dict(ksize=tuple(int(k) for k in layer.kernel_size),
                      strides=tuple(int(s) for s in layer.strides),
                      dilation=tuple(int(d) for d in layer.dilation_rate),
                      padding=padding)
        if len(in_shape) != rank + 1 or any(n is None for n in in_shape):
            return None
        if depthwise:
            return "depthwise", params
        return "conv", dict(params, groups=int(getattr(layer, "groups", 1) or 1))
    if cls is getattr(L, "Conv2DTranspose", None):
        if (layer.data_format != "channels_last" or layer.output_padding is not None
                or tuple(layer.dilation_rate) != (1, 1)
                or layer.padding.lower() not in ("valid", "same")
                or names not in (["kernel"], ["kernel", "bias"])
                or len(in_shape) != 3 or any(n is None for n in in_shape)):
            return None
        return "conv_transpose", dict(ksize=tuple(int(k) for k in layer.kernel_size),
                                      strides=tuple(int(s) for s in layer.strides),
                                      padding=layer.padding.lower())
    if cls is L.LayerNormalization:
        if not names or any(n not in ("gamma", "beta") for n in names):
            return None
        rank = len(in_shape) + 1
        axis = sorted({int(ax) % rank for ax in layer.axis})
        if 0 in axis:
            return None
        return "layernorm", dict(axis=tuple(axis), epsilon=float(layer.epsilon),
                                 gamma="gamma" in names, beta="beta" in names)
    return None


# --------------------------------------------------------------- core algebra
def outer_sq(p, d, has_bias: bool, gram: Optional[bool] = None):
    """Squared Frobenius norms of sums of outer products.

    ``p`` [N, T, K], ``d`` [N, T, Q] -> [N]: ||sum_t p_t d_t^T||^2, plus
    ||sum_t d_t||^2 when ``has_bias``.  ``gram`` None (default) uses the Gram
    form sum_{t,t'} (p_t . p_t' + 1)(d_t . d_t') when it needs fewer
    multiply-adds (T^2 (K + Q) against T K Q), else the explicit [K, Q]
    products; True / False forces one form.
    """
    t, k, q = p.shape[1], p.shape[2], d.shape[2]
    if gram is None:
        gram = t is not None and t * t * (k + q) < t * k * q
    if gram:
        pp = tf.matmul(p, p, transpose_b=True)
        if has_bias:
            pp = pp + 1.0
        dd = tf.matmul(d, d, transpose_b=True)
        return tf.reduce_sum(pp * dd, axis=[1, 2])
    g = tf.matmul(p, d, transpose_a=True)
    out = tf.reduce_sum(tf.square(g), axis=[1, 2])
    if has_bias:
        out = out + tf.reduce_sum(tf.square(tf.reduce_sum(d, axis=1)), axis=1)
    return out


def _classes_last(dy, groups: int):
    """[C, B, *S, G*Q] -> [B*G, P, C*Q] with P = prod(S): each group's output
    gradients of all classes side by side per position."""
    c, o = dy.shape[0], dy.shape[-1]
    p = int(np.prod(dy.shape[2:-1]))
    q = o // groups
    d = tf.reshape(dy, [c, -1, p, groups, q])
    d = tf.transpose(d, [1, 3, 2, 0, 4])                 # [B, G, P, C, Q]
    return tf.reshape(d, [-1, p, c * q])


def _dense_nd_sq(attrs, a, dy):
    d_in = a.shape[-1]
    t = int(np.prod(a.shape[1:-1]))
    p = tf.reshape(a, [-1, t, d_in])
    return outer_sq(p, _classes_last(dy, 1), attrs["bias_t"] is not None)


def _geometry(spatial, ksize, strides, dilation, padding: str):
    """(output sizes, [low, high] input paddings) per spatial axis of a
    convolution, as TensorFlow pads (SAME: the extra row at the end)."""
    pads, outs = [], []
    for n, k, s, r in zip(spatial, ksize, strides, dilation):
        ke = (k - 1) * r + 1
        if padding == "valid":
            o, lo, hi = (n - ke) // s + 1, 0, 0
        elif padding == "same":
            o = -(-n // s)
            tot = max((o - 1) * s + ke - n, 0)
            lo, hi = tot // 2, tot - tot // 2
        else:                                   # causal (1-D): left padding
            o, lo, hi = (n - 1) // s + 1, ke - 1, 0
        pads.append([lo, hi])
        outs.append(o)
    return outs, pads


def conv_patches(a, ksize, strides, dilation, padding: str):
    """Input patches of a channels_last convolution: a [B, *S, Cin] ->
    [B, P, prod(ksize), Cin], P the number of output positions.

    Built from prod(ksize) strided slices of the padded input (the order of
    the kernel offsets is the kernel's; the norms do not depend on it).
    """
    outs, pads = _geometry(a.shape[1:-1], ksize, strides, dilation, padding)
    pads = [[0, 0]] + pads + [[0, 0]]
    if any(lo or hi for lo, hi in pads):
        a = tf.pad(a, pads)
    cols = []
    for off in itertools.product(*(range(k) for k in ksize)):
        sl = tuple(slice(i * r, i * r + (o - 1) * s + 1, s)
                   for i, r, o, s in zip(off, dilation, outs, strides))
        cols.append(a[(slice(None),) + sl + (slice(None),)])
    pt = cols[0][..., None, :] if len(cols) == 1 else tf.stack(cols, axis=-2)
    return tf.reshape(pt, [-1, int(np.prod(outs)), len(cols), a.shape[-1]])


def _conv_sq(attrs, a, dy):
    pr = attrs["rule_params"]
    g = pr["groups"]
    pt = conv_patches(a, pr["ksize"], pr["strides"], pr["dilation"], pr["padding"])
    n_p, kk, cin = pt.shape[1], pt.shape[2], pt.shape[3]
    cg = cin // g
    if g == 1:
        p = tf.reshape(pt, [-1, n_p, kk * cin])
    else:
        p = tf.reshape(pt, [-1, n_p, kk, g, cg])
        p = tf.reshape(tf.transpose(p, [0, 3, 1, 2, 4]), [-1, n_p, kk * cg])
    out = outer_sq(p, _classes_last(dy, g), attrs["bias_t"] is not None)
    return tf.reduce_sum(tf.reshape(out, [-1, g]), axis=1) if g > 1 else out


def _merge_classes(t):
    """[C, B, ...] -> [C*B, ...]."""
    s = tf.shape(t)
    return tf.reshape(t, tf.concat([[s[0] * s[1]], s[2:]], 0))


def _conv_vjp(attrs, a, dy):
    """Input gradient [C*B, *S, Cin] of a ``conv`` rule op, per group, on the
    padded input (VALID), cropped to the input.  Without dilation: a
    transposed convolution of the group's output gradients (TensorFlow's own
    gradient of a grouped convolution is ~50x slower on CPU); with dilation
    (no CPU kernel transposes a dilated convolution in float64) the gradient
    of the group's own ``tf.nn.convolution`` at zero input."""
    pr = attrs["rule_params"]
    g = pr["groups"]
    d = _merge_classes(dy)
    k = attrs["kernel_t"]
    og, cg = k.shape[-1] // g, a.shape[-1] // g
    _, pads = _geometry(a.shape[1:-1], pr["ksize"], pr["strides"], pr["dilation"],
                        pr["padding"])
    padded = [n + lo + hi for n, (lo, hi) in zip(a.shape[1:-1], pads)]
    ks = [k[..., i * og:(i + 1) * og] for i in range(g)]
    ds = [d[..., i * og:(i + 1) * og] for i in range(g)]
    conv = dict(strides=list(pr["strides"]), padding="VALID",
                dilations=list(pr["dilation"]))
    if all(r == 1 for r in pr["dilation"]):
        shape = tf.stack([tf.shape(d)[0]] + padded + [cg])
        parts = [tf.nn.conv_transpose(di, ki, shape, **conv) for di, ki in zip(ds, ks)]
    else:
        zs = [tf.zeros(tf.stack([tf.shape(d)[0]] + padded + [cg]), a.dtype)
              for _ in range(g)]
        with tf.GradientTape() as tape:
            for z in zs:
                tape.watch(z)
            ys = [tf.nn.convolution(z, ki, **conv) for z, ki in zip(zs, ks)]
        parts = tape.gradient(ys, zs, output_gradients=ds)
    x = parts[0] if g == 1 else tf.concat(parts, axis=-1)
    if any(lo or hi for lo, hi in pads):
        x = x[(slice(None),) + tuple(slice(lo, lo + n) for n, (lo, _) in
                                     zip(a.shape[1:-1], pads)) + (slice(None),)]
    return x


def _depthwise_sq(attrs, a, dy):
    pr = attrs["rule_params"]
    pt = conv_patches(a, pr["ksize"], pr["strides"], pr["dilation"], pr["padding"])
    n_p, kk, cin = pt.shape[1], pt.shape[2], pt.shape[3]
    p = tf.reshape(tf.transpose(pt, [0, 3, 1, 2]), [-1, n_p, kk])     # [B*Cin, P, kk]
    out = outer_sq(p, _classes_last(dy, cin), attrs["bias_t"] is not None)
    return tf.reduce_sum(tf.reshape(out, [-1, cin]), axis=1)


def _layernorm_sq(attrs, a, dy):
    pr = attrs["rule_params"]
    axis = list(pr["axis"])
    rank = len(a.shape)
    # dy is [C, B, ...]: input axis i is dy axis i + 1
    rest = [i + 1 for i in range(1, rank) if i not in axis]
    keep = [0] + list(range(2, 2 + len(axis)))          # C and the normalized axes

    def sq(g):
        if rest:
            g = tf.reduce_sum(g, axis=rest)             # [C, B, *normalized dims]
        return tf.reduce_sum(tf.square(g), axis=keep)

    out = None
    if pr["gamma"]:
        mean, var = tf.nn.moments(a, axis, keepdims=True)
        xhat = (a - mean) * tf.math.rsqrt(var + tf.cast(pr["epsilon"], a.dtype))
        out = sq(dy * xhat[None])
    if pr["beta"]:
        b = sq(dy)
        out = b if out is None else out + b
    return out


def _conv_transpose_sq(attrs, a, dy):
    """Conv2DTranspose: its kernel gradient is Conv2D's filter gradient with
    the roles swapped (input: the output gradient, output gradient: the
    layer's input), so per example it is sum_p x_p (patch of dy at p)^T over
    the input positions p, the patches taken with the layer's kernel size,
    strides and padding; the bias gradient is dy summed over all output
    positions."""
    pr = attrs["rule_params"]
    c = dy.shape[0]
    pt = conv_patches(_merge_classes(dy), pr["ksize"], pr["strides"],
                      (1,) * len(pr["ksize"]), pr["padding"])   # [C*B, P, kk, O]
    n_p, k = pt.shape[1], pt.shape[2] * pt.shape[3]
    pt = tf.transpose(tf.reshape(pt, [c, -1, n_p, k]), [1, 2, 0, 3])
    x = tf.reshape(a, [-1, n_p, a.shape[-1]])
    out = outer_sq(x, tf.reshape(pt, [-1, n_p, c * k]), False)
    if attrs["bias_t"] is not None:
        s = tf.reduce_sum(dy, axis=list(range(2, len(dy.shape) - 1)))     # [C, B, O]
        out = out + tf.reduce_sum(tf.square(s), axis=[0, 2])
    return out


_RULES = {"dense_nd": _dense_nd_sq, "conv": _conv_sq, "depthwise": _depthwise_sq,
          "layernorm": _layernorm_sq, "conv_transpose": _conv_transpose_sq}


_VJPS = {"conv": _conv_vjp}


def has_forward(attrs) -> bool:
    """True when the rule of ``attrs`` has its own forward (a grouped
    convolution: per-group convolutions are 3-6x faster on CPU than
    TensorFlow's grouped kernel)."""
    return attrs.get("rule") == "conv" and attrs["rule_params"]["groups"] > 1


def forward(attrs, a):
    """Pre-activation output of a generic op with :func:`has_forward`."""
    pr = attrs["rule_params"]
    g = pr["groups"]
    k = attrs["kernel_t"]
    og, cg = k.shape[-1] // g, a.shape[-1] // g
    if pr["padding"] == "causal":
        _, pads = _geometry(a.shape[1:-1], pr["ksize"], pr["strides"],
                            pr["dilation"], "causal")
        a = tf.pad(a, [[0, 0]] + pads + [[0, 0]])
    pad = "SAME" if pr["padding"] == "same" else "VALID"
    y = tf.concat([tf.nn.convolution(a[..., i * cg:(i + 1) * cg], k[..., i * og:(i + 1) * og],
                                     strides=list(pr["strides"]), padding=pad,
                                     dilations=list(pr["dilation"]))
                   for i in range(g)], axis=-1)
    return y if attrs["bias_t"] is None else y + attrs["bias_t"]


def has_input_vjp(attrs) -> bool:
    """True when the rule of ``attrs`` has its own input VJP (a grouped or
    undilated convolution; TensorFlow's gradient is as fast otherwise)."""
    rule = attrs.get("rule")
    if rule == "conv":
        pr = attrs["rule_params"]
        return pr["groups"] > 1 or all(r == 1 for r in pr["dilation"])
    return rule in _VJPS


def input_vjp(attrs, a, dy):
    """Gradient [C*B, ...] with respect to the input ``a`` [B, ...] of a
    generic op whose rule has its own VJP (:func:`has_input_vjp`), for the
    stacked output gradient ``dy`` [C, B, ...]."""
    return _VJPS[attrs["rule"]](attrs, a, dy)


def sq_norms(attrs, a, dy):
    """Per-example squared weight-gradient norms [B] of generic op ``attrs``
    with ``attrs["rule"]`` set (see the module docstring), summed over the
    C rows of ``dy`` [C, B, ...]."""
    return _RULES[attrs["rule"]](attrs, a, dy)


def weight_op_paths(graph) -> dict:
    """{path: [weight op names]} of a parsed graph, for reports: 'registered'
    (a closed-form registered rule: dense, conv2d, depthwise, affine BN,
    embedding), 'closed-form generic' (a layer on the generic path with a
    closed-form norm rule, :mod:`tfprec.statistics.generic_rules`) and
    'generic (vectorized_map)' (the layer run per example row: exact, slower).
    Empty paths are left out."""
    out: dict = {}
    for op in graph.weight_ops:
        path = ("registered" if op.kind != "generic" else
                "closed-form generic" if op.attrs.get("rule") else "generic (vectorized_map)")
        out.setdefault(path, []).append(op.name)
    return out
