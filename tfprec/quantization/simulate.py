"""Independent numpy float64 simulation of a fixed-point plan.

:func:`simulate_logits` re-executes a model from its parsed graph
(:func:`tfprec.statistics.graph.parse_model`, BatchNormalization folded in float64) with
plain numpy in float64: every weight layer's folded kernel and bias are
rounded to the plan's B_W-bit grid and its input activation to the B_A-bit
grid with :func:`tfprec.fixedpoint.quantize` (round half up, saturate: the
one rounding rule, bit-identical to the TensorFlow quantizer);
every other op runs in float64.  It shares no code with the TensorFlow
fake-quant model of :mod:`tfprec.apply` beyond the graph parser and the
numpy reference formats, so the two can be checked against each other.

Supported op kinds are those of :mod:`tfprec.graph`: dense, conv2d,
depthwise (SAME / VALID padding, strides), act (linear, relu, clipped relu),
maxpool, avgpool (SAME averages over the in-image taps, as TensorFlow),
gap, reshape (Flatten / Reshape), identity (Dropout), add, concat.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from tfprec import fixedpoint
from tfprec import inputs as inputs_lib
from tfprec.statistics.graph import WEIGHT_KINDS, parse_model


def _same_pads(size: int, k: int, s: int) -> tuple:
    """TensorFlow SAME padding (before, after) of one spatial axis."""
    out = -(-size // s)
    total = max((out - 1) * s + k - size, 0)
    return total // 2, total - total // 2


def _pad(x: np.ndarray, ksize, strides, padding: str, value: float = 0.0):
    if padding == "VALID":
        return x
    ph = _same_pads(x.shape[1], ksize[0], strides[0])
    pw = _same_pads(x.shape[2], ksize[1], strides[1])
    return np.pad(x, ((0, 0), ph, pw, (0, 0)), constant_values=value)


def _windows(x: np.ndarray, ksize, strides) -> np.ndarray:
    """im2col view [N, Ho, Wo, C, kh, kw] of a padded NHWC array."""
    w = np.lib.stride_tricks.sliding_window_view(x, tuple(ksize), axis=(1, 2))
    return w[:, ::strides[0], ::strides[1]]


def _conv2d(x, kernel, bias, strides, padding):
    kh, kw = kernel.shape[:2]
    p = _windows(_pad(x, (kh, kw), strides, padding), (kh, kw), strides)
    y = np.einsum("nhwcij,ijco->nhwo", p, kernel, optimize=True)
    return y if bias is None else y + bias


def _depthwise(x, kernel, bias, strides, padding):
    kh, kw, cin, m = kernel.shape
    p = _windows(_pad(x, (kh, kw), strides, padding), (kh, kw), strides)
    y = np.einsum("nhwcij,ijcm->nhwcm", p, kernel, optimize=True)
    y = y.reshape(*y.shape[:3], cin * m)       # channel c*m + j, as Keras
    return y if bias is None else y + bias


def _maxpool(x, ksize, strides, padding):
    p = _windows(_pad(x, ksize, strides, padding, -np.inf), ksize, strides)
    return p.max(axis=(-2, -1))


def _avgpool(x, ksize, strides, padding):
    s = _windows(_pad(x, ksize, strides, padding), ksize, strides).sum(axis=(-2, -1))
    ones = np.ones((1, *x.shape[1:3], 1))
    n = _windows(_pad(ones, ksize, strides, padding), ksize, strides).sum(axis=(-2, -1))
    return s / n


def _run(graph, plan, x: np.ndarray, record: Optional[dict] = None) -> np.ndarray:
    vals = {graph.input_id: x}
    for op in graph.ops:
        ins = [vals[i] for i in op.inputs]
        a = op.attrs
        k = op.kind
        if k in WEIGHT_KINDS:
            inp, kernel, bias = ins[0], a["kernel"], a["bias"]
            if plan is not None:
                lp = plan.layer(op.name)
                inp = fixedpoint.quantize(inp, lp.act_bits, lp.act_range,
                                          lp.act_signed)
                if record is not None:
                    record[op.name] = inp
                kernel = fixedpoint.quantize(kernel, lp.weight_bits,
                                             lp.weight_range, True)
                if bias is not None:
                    bias = fixedpoint.quantize(bias, lp.weight_bits,
                                               lp.weight_range, True)
            if k == "dense":
                y = inp @ kernel
                y = y if bias is None else y + bias
            elif k == "conv2d":
                y = _conv2d(inp, kernel, bias, a["strides"], a["padding"])
            else:
                y = _depthwise(inp, kernel, bias, a["strides"], a["padding"])
        elif k == "act":
            y = ins[0]
            if a["fn"] != "linear":
                y = np.maximum(y, 0.0)
                if a["high"] is not None:
                    y = np.minimum(y, a["high"])
        elif k == "maxpool":
            y = _maxpool(ins[0], a["ksize"], a["strides"], a["padding"])
        elif k == "avgpool":
            y = _avgpool(ins[0], a["ksize"], a["strides"], a["padding"])
        elif k == "gap":
            y = ins[0].mean(axis=(1, 2), keepdims=a["keepdims"])
        elif k == "reshape":
            y = ins[0].reshape(len(ins[0]), *graph.shapes[op.output])
        elif k == "identity":
            y = ins[0]
        elif k == "add":
            y = ins[0]
            for t in ins[1:]:
                y = y + t
        elif k == "concat":
            y = np.concatenate(ins, axis=a["axis"])
        else:  # pragma: no cover - parse_model emits only the kinds above
            raise AssertionError(f"op kind {k!r}")
        vals[op.output] = y
    return vals[graph.output_id]


def simulate_logits(model, plan, x, batch_size: int = 256,
                    graph=None) -> np.ndarray:
    """Pre-softmax logits of the fixed-point network, simulated in float64.

    Args:
      model: the float tf_keras classifier the plan was made for (only read).
      plan: a :class:`~tfprec.planning.plan.PrecisionPlan` for ``model``, or None for
        the float64 network itself (BN folded, nothing quantized).
      x: inputs in the units the model expects: a numpy array [N, ...] or a
        tf.data dataset of inputs or of (input, label) pairs (streamed).
      batch_size: examples per numpy batch (memory only; results do not
        depend on it).
      graph: an already parsed ``parse_model(model)`` (optional, saves time).

    Returns:
      float64 array [N, M] of logits (a final softmax is not applied).

    Raises:
      PlanError: the plan does not match the model.
      InvalidDataError: x is mis-shaped or not finite, or batch_size is not
        a positive int.
      UnsupportedModelError: the model cannot be analyzed.
    """
    graph = parse_model(model) if graph is None else graph
    if plan is not None:
        plan.validate_for(model)
    in_shape = tuple(graph.shapes[graph.input_id])
    out = [_run(graph, plan, b) for b in inputs_lib.iter_batches(
        x, in_shape, batch_size, dtype="float64", what="x")]
    if not out:
        return np.zeros((0, graph.num_classes))
    return np.concatenate(out, axis=0)


def simulate_layer_inputs(model, plan, x, graph=None) -> dict:
    """Quantized input activation of every weight layer (float64, numpy).

    Returns a dict layer name -> array [N, ...]: the layer's input after
    rounding to its B_A-bit grid in the simulated fixed-point network (what
    the fake-quant model's input quantizer outputs).  Meant for probing.
    """
    graph = parse_model(model) if graph is None else graph
    plan.validate_for(model)
    record: dict = {}
    x = inputs_lib.as_inputs(x, tuple(graph.shapes[graph.input_id]),
                             dtype="float64", what="x")
    _run(graph, plan, x, record)
    return record
