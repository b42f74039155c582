"""Layer registry of the noise-gain pass.

In the style of TF Privacy's fast gradient clipping, every weight-layer kind
registers one :class:`WeightLayerFns` record with three functions:

* ``forward(attrs, a)``: pre-activation output Y of the layer for input A;
* ``input_vjp(attrs, a, dy)``: gradient with respect to the layer's input
  through this layer alone, for a stacked cotangent ``dy``;
* ``sq_norms(attrs, a, dy)``: per-example squared norms of the gradient with
  respect to the layer's weights (kernel and bias together), summed over the
  stacked classes, computed from the input A and the gradient of the
  pre-activation output, without forming per-example Jacobians where the
  algebra allows.

Shapes: ``a`` has batch B; ``dy`` has a leading class axis, [C, B, ...], one
slice per wrong class.  ``sq_norms`` returns [B].

``geometry(attrs, in_shape, out_shape)`` gives the cost-model quantities of
METHOD.md section 4: dot-product length D (bias included), number of dot
products P per example, number of weights (bias included) and number of input
activations per example; :func:`geometry` adds, for the author's cost
convention, the elements per example the previous layer writes before any
pooling.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from tfprec._tf import tf
from tfprec.statistics.graph import written_tensor


@dataclasses.dataclass(frozen=True)
class WeightLayerFns:
    forward: Callable
    input_vjp: Callable
    sq_norms: Callable
    geometry: Callable


_REGISTRY: dict[str, WeightLayerFns] = {}


def register(kind: str, fns: WeightLayerFns) -> None:
    """Registers the noise-gain functions of a weight-layer kind."""
    _REGISTRY[kind] = fns


def lookup(kind: str) -> WeightLayerFns:
    return _REGISTRY[kind]


def merge_classes(t):
    """[C, B, ...] -> [C*B, ...]."""
    s = tf.shape(t)
    return tf.reshape(t, tf.concat([[s[0] * s[1]], s[2:]], 0))


def split_classes(t, c: int):
    """[C*B, ...] -> [C, B, ...]."""
    s = tf.shape(t)
    return tf.reshape(t, tf.concat([[c, s[0] // c], s[1:]], 0))


# ----------------------------------------------------------------- Dense
def _dense_forward(attrs, a):
    y = tf.matmul(a, attrs["kernel_t"])
    if attrs["bias_t"] is not None:
        y = y + attrs["bias_t"]
    return y


def _dense_vjp(attrs, a, dy):
    return tf.matmul(merge_classes(dy), attrs["kernel_t"], transpose_b=True)


def _dense_sq(attrs, a, dy):
    # grad_W = a^T dy, grad_b = dy  =>  ||.||^2 = (||a||^2 + 1) ||dy||^2
    a2 = tf.reduce_sum(tf.square(a), axis=1)
    if attrs["bias_t"] is not None:
        a2 = a2 + 1.0
    return a2 * tf.reduce_sum(tf.square(dy), axis=[0, 2])


def _dense_geometry(attrs, in_shape, out_shape):
    n_in, n_out = attrs["kernel"].shape
    has_b = attrs["bias"] is not None
    return dict(dot_length=n_in + int(has_b), num_dots=n_out,
                num_weights=n_in * n_out + (n_out if has_b else 0),
                num_inputs=int(np.prod(in_shape)))


# ----------------------------------------------------------------- Conv2D
def _strides4(attrs):
    return [1, attrs["strides"][0], attrs["strides"][1], 1]


def _patches(attrs, a):
    """Input patches [B, P, kh*kw*Cin] (same order as the kernel's rows).

    Built from kh*kw strided slices of the padded input, which is about
    twice as fast on CPU as tf.image.extract_patches.
    """
    kh, kw = attrs["ksize"]
    sh, sw = attrs["strides"]
    h, w = a.shape[1], a.shape[2]
    if attrs["padding"] == "SAME":
        ho, wo = -(-h // sh), -(-w // sw)
        ph = max((ho - 1) * sh + kh - h, 0)
        pw = max((wo - 1) * sw + kw - w, 0)
        a = tf.pad(a, [[0, 0], [ph // 2, ph - ph // 2], [pw // 2, pw - pw // 2], [0, 0]])
    else:
        ho, wo = (h - kh) // sh + 1, (w - kw) // sw + 1
    cols = [a[:, i: i + (ho - 1) * sh + 1: sh, j: j + (wo - 1) * sw + 1: sw, :]
            for i in range(kh) for j in range(kw)]
    p = cols[0] if len(cols) == 1 else tf.concat(cols, axis=-1)
    return tf.reshape(p, [tf.shape(a)[0], ho * wo, kh * kw * a.shape[-1]])


def _spatial_forward(conv):
    """forward(attrs, a) of a 2-D convolution op ``conv`` (NHWC) plus bias."""
    def forward(attrs, a):
        y = conv(a, attrs["kernel_t"], _strides4(attrs), attrs["padding"])
        return y if attrs["bias_t"] is None else y + attrs["bias_t"]
    return forward


def _spatial_vjp(backprop_input):
    """input_vjp(attrs, a, dy) from a raw ``*BackpropInput`` op."""
    def vjp(attrs, a, dy):
        dy = merge_classes(dy)
        s = tf.shape(a)
        return backprop_input(
            input_sizes=tf.stack([tf.shape(dy)[0], s[1], s[2], s[3]]),
            filter=attrs["kernel_t"], out_backprop=dy, strides=_strides4(attrs),
            padding=attrs["padding"])
    return vjp


_conv_forward = _spatial_forward(tf.nn.conv2d)
_conv_vjp = _spatial_vjp(tf.raw_ops.Conv2DBackpropInput)


def _classes_last(d):
    """[C, B, P, O] -> [B, P, C*O]: all classes' output gradients side by side."""
    c, o = d.shape[0], d.shape[-1]
    s = tf.shape(d)
    return tf.reshape(tf.transpose(d, [1, 2, 0, 3]), [s[1], s[2], c * o])


def _conv_sq(attrs, a, dy):
    pa = _patches(attrs, a)                      # [B, P, K]
    c = dy.shape[0]
    ds = tf.shape(dy)
    d = tf.reshape(dy, [c, ds[1], ds[2] * ds[3], dy.shape[-1]])   # [C, B, P, O]
    has_b = attrs["bias_t"] is not None
    if not attrs["use_gram"]:
        # Kernel gradients [C, B, K, O] by a matmul broadcast over the
        # classes: no transpose of the stacked cotangent (about 1.5x faster
        # on CPU than transposing it to [B, P, C*O]).
        g = tf.matmul(pa[None], d, transpose_a=True)
        out = tf.reduce_sum(tf.square(g), axis=[0, 2, 3])
        if has_b:
            out = out + tf.reduce_sum(tf.square(tf.reduce_sum(d, axis=2)), axis=[0, 2])
        return out
    # Gram form: sum_c ||sum_p a_p d_cp^T||^2 = sum_{p,q} (a_p.a_q + 1)(sum_c d_cp.d_cq)
    d = _classes_last(d)                         # [B, P, C*O]
    aa = tf.matmul(pa, pa, transpose_b=True)
    if has_b:
        aa = aa + 1.0
    dd = tf.matmul(d, d, transpose_b=True)       # [B, P, P]
    return tf.reduce_sum(dd * aa, axis=[1, 2])


def _conv_geometry(attrs, in_shape, out_shape):
    kh, kw, cin, cout = attrs["kernel"].shape
    has_b = attrs["bias"] is not None
    k = kh * kw * cin
    return dict(dot_length=k + int(has_b),
                num_dots=int(np.prod(out_shape)),
                num_weights=k * cout + (cout if has_b else 0),
                num_inputs=int(np.prod(in_shape)))


# -------------------------------------------------------- DepthwiseConv2D
_dw_forward = _spatial_forward(tf.nn.depthwise_conv2d)
_dw_vjp = _spatial_vjp(tf.raw_ops.DepthwiseConv2dNativeBackpropInput)

# Input positions (h*w) from which _dw_sq uses the filter-gradient op: on
# large maps it is 2-3x faster than the patch einsum (CPU, MobileNetV2);
# on small maps with many channels it is slower.
_DW_FILTER_MIN_POSITIONS = 256


def _dw_sq_filter(attrs, a, dy):
    """``_dw_sq`` by one DepthwiseConv2dNativeBackpropFilter: examples become
    channels (input [1, H, W, B*cin]) and classes the channel multiplier
    (cotangent [1, Ho, Wo, B*cin*C*m]), so the op's "filter gradient"
    [kh, kw, B*cin, C*m] is every example's and class's kernel gradient."""
    kh, kw, cin, m = attrs["kernel"].shape
    c = dy.shape[0]
    b = tf.shape(a)[0]
    h, w = a.shape[1], a.shape[2]
    ho, wo = dy.shape[2], dy.shape[3]
    x = tf.reshape(tf.transpose(a, [1, 2, 0, 3]), [1, h, w, b * cin])
    d = tf.reshape(dy, [c, b, ho, wo, cin, m])
    d = tf.reshape(tf.transpose(d, [2, 3, 1, 4, 0, 5]), [1, ho, wo, b * cin * c * m])
    gk = tf.raw_ops.DepthwiseConv2dNativeBackpropFilter(
        input=x, filter_sizes=tf.stack([kh, kw, b * cin, c * m]), out_backprop=d,
        strides=_strides4(attrs), padding=attrs["padding"])
    out = tf.reduce_sum(tf.reshape(tf.square(gk), [kh * kw, b, cin * c * m]), axis=[0, 2])
    if attrs["bias_t"] is not None:
        out = out + tf.reduce_sum(tf.square(tf.reduce_sum(dy, axis=[2, 3])), axis=[0, 2])
    return out


def _dw_sq(attrs, a, dy):
    if a.shape[1] * a.shape[2] >= _DW_FILTER_MIN_POSITIONS:
        return _dw_sq_filter(attrs, a, dy)
    kh, kw, cin, m = attrs["kernel"].shape
    pa = _patches(attrs, a)                                   # [B, P, kk*cin]
    ps = tf.shape(pa)
    pa = tf.reshape(pa, [ps[0], ps[1], kh * kw, cin])         # [B, P, kk, cin]
    c = dy.shape[0]
    ds = tf.shape(dy)
    d = tf.reshape(dy, [c, ds[1], ds[2] * ds[3], cin, m])     # [C, B, P, cin, m]
    g = tf.einsum("bpkc,nbpcm->bnkcm", pa, d)
    out = tf.reduce_sum(tf.square(g), axis=[1, 2, 3, 4])
    if attrs["bias_t"] is not None:
        out = out + tf.reduce_sum(tf.square(tf.reduce_sum(d, axis=2)), axis=[0, 2, 3])
    return out


def _dw_geometry(attrs, in_shape, out_shape):
    kh, kw, cin, m = attrs["kernel"].shape
    has_b = attrs["bias"] is not None
    return dict(dot_length=kh * kw + int(has_b),
                num_dots=int(np.prod(out_shape)),
                num_weights=kh * kw * cin * m + (cin * m if has_b else 0),
                num_inputs=int(np.prod(in_shape)))


register("dense", WeightLayerFns(_dense_forward, _dense_vjp, _dense_sq,
                                 _dense_geometry))
register("conv2d", WeightLayerFns(_conv_forward, _conv_vjp, _conv_sq,
                                  _conv_geometry))
register("depthwise", WeightLayerFns(_dw_forward, _dw_vjp, _dw_sq,
                                     _dw_geometry))


def geometry(graph, op) -> dict:
    """Cost-model geometry of weight op ``op`` of parsed ``graph``.

    The kind's ``geometry`` (dot_length D, num_dots P, num_weights,
    num_inputs: elements per example of the tensor the layer reads) plus
    ``num_inputs_written``: elements per example of the tensor the previous
    layer writes before any pooling (:func:`tfprec.statistics.graph.written_tensor`).
    """
    geo = lookup(op.kind).geometry(op.attrs, graph.shapes[op.inputs[0]],
                                   graph.shapes[op.output])
    shape = graph.shapes[written_tensor(graph, op.inputs[0])]
    return dict(geo, num_inputs_written=int(np.prod(shape)))


def forward_op(op, ins: list, out_shape: tuple, dtype):
    """Forward of a non-weight op of the parsed graph (batched, TF ops).

    ``ins`` are the op's input tensors, ``out_shape`` its per-example output
    shape (for reshapes).
    """
    a = op.attrs
    k = op.kind
    if k == "act":
        if a["fn"] == "linear":
            return ins[0]
        y = tf.nn.relu(ins[0])
        return y if a["high"] is None else tf.minimum(y, tf.cast(a["high"], dtype))
    if k == "maxpool":
        return tf.nn.max_pool2d(ins[0], a["ksize"], a["strides"], a["padding"])
    if k == "avgpool":
        return tf.nn.avg_pool2d(ins[0], a["ksize"], a["strides"], a["padding"])
    if k == "gap":
        return tf.reduce_mean(ins[0], axis=[1, 2], keepdims=a["keepdims"])
    if k == "reshape":
        return tf.reshape(ins[0], [-1, *out_shape])
    if k == "identity":
        return ins[0]
    if k == "layer":
        return a["call"](ins, dtype)
    if k == "binary":           # one logit z -> two-class logits [0, z]
        return tf.concat([tf.zeros_like(ins[0]), ins[0]], axis=-1)
    if k == "add":
        return tf.add_n(ins)
    if k == "concat":
        return tf.concat(ins, axis=a["axis"])
    raise AssertionError(k)  # pragma: no cover - parse_model emits only these


def conv_use_gram(attrs, in_shape, out_shape, num_classes: int) -> bool:
    """Chooses the Gram form when it needs fewer multiply-adds per example.

    Materialized per-example kernel gradients cost C*P*K*O; the Gram form
    costs P^2*K (shared by all classes) + C*P^2*O, where P is the number of
    output positions, K the patch length and O the output channels.
    """
    kh, kw, cin, o = attrs["kernel"].shape
    p = int(np.prod(out_shape[:2]))
    k = kh * kw * cin
    c = max(num_classes - 1, 1)
    return p * p * k + c * p * p * o < c * p * k * o
