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

import dataclasses
from typing import Optional

import numpy as np

from tfprec import fixedpoint
from tfprec import inputs as inputs_lib
from tfprec.errors import PlanError
from tfprec.fixedpoint import check_bits
from tfprec.planning import plan as plan_lib
from tfprec._tf import tf
from tfprec.statistics import embedding, generic, registry  # noqa: F401  (register kinds)
from tfprec.statistics.graph import WEIGHT_KINDS, parse_model


# --------------------------------------------------------------------------
# The plan check of every public function taking (model, plan)
# --------------------------------------------------------------------------
def check_plan_bits(plan) -> None:
    """Raises PlanError naming the layer if a bit-width is not an int in
    2..16 (bits): NaN, fractional or integral floats (4.0), bools, None and
    out-of-range values are all refused."""
    for lp in plan.layers:
        for field in ("weight_bits", "act_bits"):
            if field == "act_bits" and getattr(lp, field, 0) is None \
                    and getattr(lp, "layer_class", None) == "Embedding":
                continue    # no activation format (integer ids)
            check_bits(f"layer {getattr(lp, 'name', '?')!r}: {field}",
                       getattr(lp, field, None))


def _as_plan(plan):
    """``plan`` as a PrecisionPlan: a PrecisionPlan is returned as is; an
    object with a ``layers`` sequence of LayerPrecision-like entries (every
    field present as an attribute) is copied into one; anything else is a
    PlanError."""
    if isinstance(plan, plan_lib.PrecisionPlan):
        return plan
    layers = getattr(plan, "layers", None)
    if plan is None or isinstance(plan, (str, bytes, dict)) or layers is None \
            or isinstance(layers, (str, bytes, dict)) or not hasattr(layers, "__iter__"):
        raise PlanError(f"plan must be a tfprec PrecisionPlan, got "
                        f"{type(plan).__name__}")
    fields = dataclasses.fields(plan_lib.LayerPrecision)
    out = []
    for i, lp in enumerate(layers):
        vals = {}
        for f in fields:
            if hasattr(lp, f.name):
                vals[f.name] = getattr(lp, f.name)
            elif f.default is dataclasses.MISSING:
                raise PlanError(f"plan must be a tfprec PrecisionPlan: its layer "
                                f"{i} ({getattr(lp, 'name', '?')!r}) has no "
                                f"field {f.name!r}")
        out.append(plan_lib.LayerPrecision(**vals))
    info = getattr(plan, "info", None)
    return plan_lib.PrecisionPlan(layers=tuple(out),
                                  method=str(getattr(plan, "method", "custom")),
                                  info=dict(info) if isinstance(info, dict) else {},
                                  fingerprint=getattr(plan, "fingerprint", None))


def checked_plan(model, plan, *, allow_fingerprint_mismatch: bool = False):
    """``plan`` as a PrecisionPlan checked for ``model``: the one plan check
    of every public function that takes (model, plan).

    In order: ``plan`` must be a PrecisionPlan (or an object with the same
    ``layers``); :meth:`PrecisionPlan.validate_for` compares it with the
    model (layer names, order, classes, geometry, and, for a plan with a
    weights fingerprint, the weights themselves unless
    ``allow_fingerprint_mismatch`` is True); every bit-width must be an int
    in 2..16 (bits) and every range a power of two
    (:meth:`PrecisionPlan.check`).

    Raises:
      PlanError: naming the layer and field (or the type of ``plan``).
      UnsupportedModelError: ``model`` is not a tf_keras Sequential or
        functional model tfprec can analyze (None, a Keras 3 model, a
        subclassed model, ...).
    """
    allow_fingerprint_mismatch = inputs_lib.flag(
        "allow_fingerprint_mismatch", allow_fingerprint_mismatch, error=PlanError)
    plan = _as_plan(plan)
    plan.validate_for(model, allow_fingerprint_mismatch=allow_fingerprint_mismatch)
    check_plan_bits(plan)
    plan.check()
    return plan


# --------------------------------------------------------------------------
# Simulation
# --------------------------------------------------------------------------
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
                if lp.act_bits is not None:     # None: integer ids, kept
                    inp = fixedpoint.quantize(inp, lp.act_bits, lp.act_range,
                                              lp.act_signed)
                if record is not None:
                    record[op.name] = inp
                kernel = fixedpoint.quantize(kernel, lp.weight_bits,
                                             lp.weight_ranges(), True)
                if bias is not None:
                    bias = fixedpoint.quantize(bias, lp.weight_bits,
                                               lp.weight_ranges(), True)
            if k == "dense":
                y = inp @ kernel
                y = y if bias is None else y + bias
            elif k == "conv2d":
                y = _conv2d(inp, kernel, bias, a["strides"], a["padding"])
            elif k == "depthwise":
                y = _depthwise(inp, kernel, bias, a["strides"], a["padding"])
            elif k == "embedding":      # rows of the (rounded) table
                embedding.check_ids(graph, inp, "x", op.inputs[0])
                y = kernel[inp.astype(np.int64)]
            else:   # generic / affine weight ops: their TF forward, in float64
                const = lambda t: None if t is None else tf.constant(t, tf.float64)
                y = registry.lookup(k).forward(
                    dict(a, kernel_t=const(kernel), bias_t=const(bias)),
                    tf.constant(inp, tf.float64)).numpy()
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
        elif k == "binary":     # one logit z -> two-class logits [0, z]
            y = np.concatenate([np.zeros_like(ins[0]), ins[0]], axis=-1)
        elif k == "layer":      # any weightless layer, run by TF in float64
            y = np.asarray(a["call"]([tf.constant(v) for v in ins], tf.float64))
        else:  # pragma: no cover - parse_model emits only the kinds above
            raise AssertionError(f"op kind {k!r}")
        vals[op.output] = y
    return vals[graph.output_id]


def simulate_logits(model, plan, x, batch_size: int = 256,
                    graph=None, *, allow_fingerprint_mismatch: bool = False) -> np.ndarray:
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
      allow_fingerprint_mismatch: use a plan made from another model's
        weights (same layers and geometry) on purpose; see
        :meth:`~tfprec.planning.plan.PrecisionPlan.validate_for`.

    Returns:
      float64 array [N, M] of logits (a final softmax is not applied).

    Raises:
      PlanError: the plan is not a plan, does not match the model, or has a
        bit-width that is not an int in 2..16 or a range that is not a power
        of two (:func:`checked_plan`; the message names the layer).
      InvalidDataError: x is mis-shaped or not finite, or batch_size is not
        a positive int.
      UnsupportedModelError: the model cannot be analyzed.
    """
    if plan is not None:
        plan = checked_plan(model, plan,
                            allow_fingerprint_mismatch=allow_fingerprint_mismatch)
    graph = parse_model(model) if graph is None else graph
    in_shape = graph.shapes[graph.input_id]     # several inputs: a PackedShape
    out = [_run(graph, plan, b) for b in inputs_lib.iter_batches(
        x, in_shape, batch_size, dtype="float64", what="x")]
    if not out:
        return np.zeros((0, graph.num_classes))
    return np.concatenate(out, axis=0)


def simulate_layer_inputs(model, plan, x, graph=None, *,
                          allow_fingerprint_mismatch: bool = False) -> dict:
    """Quantized input activation of every weight layer (float64, numpy).

    Returns a dict layer name -> array [N, ...]: the layer's input after
    rounding to its B_A-bit grid in the simulated fixed-point network (what
    the fake-quant model's input quantizer outputs).  Meant for probing.

    Raises:
      PlanError, InvalidDataError, UnsupportedModelError: as
        :func:`simulate_logits` (``plan`` is required here).
    """
    plan = checked_plan(model, plan,
                        allow_fingerprint_mismatch=allow_fingerprint_mismatch)
    graph = parse_model(model) if graph is None else graph
    record: dict = {}
    x = inputs_lib.as_inputs(x, graph.shapes[graph.input_id],
                             dtype="float64", what="x")
    _run(graph, plan, x, record)
    return record
