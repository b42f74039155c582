"""Error-compensating weight rounding on the plan's own grid (GPTQ / OBQ).

:func:`quantize_model` rounds every weight to the nearest level of its
B_W-bit grid, the quantizer the paper's noise model and bound are about.
At 4 bits that loses accuracy the layer could keep: the rounding errors of
the weights that read the same input add up in the layer's outputs.
:func:`optimize_rounding` picks, layer by layer, the grid values that keep
the layer's *outputs* on calibration inputs closest to the float ones
(Frantar et al., "GPTQ", ICLR 2023, after Optimal Brain Quantization):

- For a Dense or Conv2D layer (BN folded) with kernel W [K, N] (K = the dot
  length, kh * kw * C_in for a convolution) and inputs X [rows, K] (im2col
  rows of the calibration inputs of the *float* model), the output error
  of a choice Q is ||X (W - Q)||^2 = sum_n (w_n - q_n)^T H (w_n - q_n) with
  H = X^T X / rows.
- The K input rows of W are fixed one at a time, largest H_kk first: row k
  is rounded to the nearest level (round half up, saturating, on the
  plan's step Delta, per output channel where the plan has channel
  ranges), and the rows not yet fixed absorb its error by the
  least-squares update  w_F -= (w_k - q_k) [H_F^-1]_{F,k} / [H_F^-1]_kk
  (F = the rows not yet fixed), which GPTQ computes from one Cholesky
  factor of (H + damp * mean(diag H) I)^-1.
- With ``bias_correction`` the mean output shift mu^T (W - Q) (mu = the
  mean input row) is added to the float bias before the bias is rounded.

Every kernel and bias value of the result is a level of the plan's grid
(k * Delta, k in the B_W-bit integer range), so the plan's formats,
costs, fake-quant model and exported files are unchanged; only which
level each weight takes differs.  The analytic bound assumes
round-to-nearest and is not a bound for these weights; measure them
(:func:`tfprec.validate.validate`).  DepthwiseConv2D layers are rounded
to nearest (their kernel codes on the narrow range with
``narrow_range``); standalone BatchNorm, Embedding, generic layers and
SeparableConv2D keep the fake-quant model's round-to-nearest.
"""
from __future__ import annotations

import dataclasses
import warnings
from typing import Optional

import numpy as np

from tfprec import fixedpoint
from tfprec import inputs as inputs_lib
from tfprec import packing
from tfprec._tf import keras, tf
from tfprec.errors import InvalidDataError, TfprecWarning
from tfprec.quantization.apply import _rebuild
from tfprec.quantization.simulate import checked_plan
from tfprec.statistics.graph import parse_model
from tfprec.statistics.layers import weight_attrs

OPTIMIZED_KINDS = ("dense", "conv2d")
# fewer input rows than this many per row of a kernel (rows < 8 K) and GPTQ
# fits its calibration set: on the CIFAR-10 VGG (conv3_2: K = 1152, one output
# position) with conv3_2, fc1, fc2 and logits at 4 bits, 512 training images
# (0.44 rows per kernel row) lost 0.70 pp on held-out images, 2048 none
MIN_ROWS_PER_DOT = 8


@dataclasses.dataclass(frozen=True)
class InputMoments:
    """Second moments of one weight layer's inputs on calibration data.

    Attributes:
      name: the layer (weight op) name.
      hessian: H = X^T X / rows, float64 [K, K] (K: dot length).
      mean: the mean input row mu, float64 [K].
      rows: number of input rows (examples times output positions).
    """

    name: str
    hessian: np.ndarray
    mean: np.ndarray
    rows: int


@dataclasses.dataclass(frozen=True)
class LayerRounding:
    """How one layer's weights were rounded.

    ``error_nearest`` and ``error_optimized``: the output error
    sum_n (w_n - q_n)^T H (w_n - q_n) of round-to-nearest and of the chosen
    levels, as a fraction of the layer's mean squared output
    sum_n w_n^T H w_n (dimensionless; the bias shift is not included).
    """

    name: str
    method: str
    error_nearest: float
    error_optimized: float


@dataclasses.dataclass(frozen=True)
class RoundedModel:
    """The result of :func:`optimize_rounding`.

    Attributes:
      model: a float tf_keras model (BN folded) whose weights are on the
        plan's grid; apply, validate and export it with ``plan``.
      plan: the input plan with the rounded model's weight fingerprint and
        ``info['weight_rounding']``.
      layers: one :class:`LayerRounding` per weight layer.
    """

    model: keras.Model
    plan: object
    layers: tuple


def _ops(graph):
    return [op for op in graph.weight_ops if op.kind in OPTIMIZED_KINDS]


def _rows(t, op):
    """The input rows [rows, K] of weight op ``op`` read from tensor ``t``:
    the input itself for a Dense layer, its im2col patches (kh, kw, C_in
    order: the kernel's) for a Conv2D."""
    if op.kind == "dense":
        return tf.reshape(t, [-1, t.shape[-1]])
    kh, kw = op.attrs["ksize"]
    sh, sw = op.attrs["strides"]
    p = tf.image.extract_patches(t, [1, kh, kw, 1], [1, sh, sw, 1], [1, 1, 1, 1],
                                 op.attrs["padding"])
    return tf.reshape(p, [-1, p.shape[-1]])


def examples_needed(model, rows_per_dot: int = MIN_ROWS_PER_DOT) -> int:
    """The fewest calibration examples that give every Dense and Conv2D layer
    of ``model`` at least ``rows_per_dot`` input rows per kernel row (rows of
    one example: its output positions, 1 for a Dense layer on a vector; a
    kernel row: one of the K = kh * kw * C_in dot-product inputs).  The MNIST
    MLP (K = 784) needs 6272 examples, the CIFAR-10 VGG 9216 (conv3_2: K =
    1152 at one output position).

    Raises:
      InvalidDataError: ``rows_per_dot`` is not a positive int.
      UnsupportedModelError: the model cannot be analyzed.
    """
    rows_per_dot = inputs_lib.positive_int("rows_per_dot", rows_per_dot)
    graph = parse_model(model)
    need = 1
    for op in _ops(graph):
        k = int(np.prod(np.shape(op.attrs["kernel"])[:-1]))
        positions = max(int(np.prod(graph.shapes[op.output][:-1])), 1)
        need = max(need, -(-rows_per_dot * k // positions))
    return need


def input_moments(model, x, *, batch_size: int = 128) -> dict:
    """:class:`InputMoments` of every Dense and Conv2D layer's input, from
    one batched pass of the float (BN-folded) model over ``x``.

    Args:
      model: the trained float tf_keras classifier (not modified).
      x: calibration inputs, numpy [N, ...] or a finite tf.data dataset
        (labels, if any, ignored).  Use examples the plan is not selected
        or reported on (training images, for instance).
      batch_size: examples per batch.

    Returns:
      dict layer name -> InputMoments.

    Raises:
      InvalidDataError: ``x`` is empty, mis-shaped or not finite.
      UnsupportedModelError: the model cannot be analyzed.
    """
    graph = parse_model(model)
    folded = _rebuild(model, None, split_softmax=False)
    ops = _ops(graph)
    if not ops:
        return {}
    probe = keras.Model(folded.inputs, [folded.get_layer(op.name).input for op in ops])
    dtype = tf.as_dtype(inputs_lib.model_dtype(model))
    in_shape = inputs_lib.model_input_shape(model)

    @tf.function(input_signature=[tf.TensorSpec([None, *in_shape], dtype)])
    def moments(b):
        outs = packing.call_model(probe, b, training=False)
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        res = []
        for op, t in zip(ops, outs):
            r = _rows(t, op)
            res.append((tf.matmul(r, r, transpose_a=True), tf.reduce_sum(r, 0),
                        tf.shape(r)[0]))
        return res

    acc = None
    for b in inputs_lib.iter_batches(x, in_shape, batch_size, dtype=dtype.name, what="x"):
        got = [(h.numpy().astype(np.float64), s.numpy().astype(np.float64), int(n))
               for h, s, n in moments(tf.constant(b, dtype))]
        acc = got if acc is None else [(a[0] + g[0], a[1] + g[1], a[2] + g[2])
                                      for a, g in zip(acc, got)]
    if acc is None:
        raise InvalidDataError("x is empty: optimize_rounding needs calibration inputs.")
    return {op.name: InputMoments(op.name, h / n, s / n, n)
            for op, (h, s, n) in zip(ops, acc)}


def _nearest(w: np.ndarray, steps: np.ndarray, bits: int, narrow: bool = False) -> np.ndarray:
    """``w`` rounded to nearest on ``steps`` (one per output channel, the
    trailing axis) by tfprec's one rounding rule
    (:func:`tfprec.fixedpoint.quantize_int`: half up, saturating), in
    float64; ``narrow``: the code -2^(B-1) excluded."""
    k = fixedpoint.quantize_int(np.asarray(w, np.float64), bits,
                                steps * 2.0 ** (bits - 1), True)
    if narrow:
        k = np.maximum(k, 1 - 2 ** (bits - 1))
    return k * steps


def gptq_levels(w: np.ndarray, hessian: np.ndarray, steps, bits: int, *,
                damp: float = 0.01, narrow: bool = False) -> np.ndarray:
    """Grid values Q [K, N] for kernel ``w`` [K, N] chosen by GPTQ.

    ``steps``: Delta, one value or one per output channel [N]; ``bits``:
    B_W (signed levels k * Delta, k in [-2^(B-1), 2^(B-1) - 1]).  Rows are
    fixed in order of decreasing H_kk; the Hessian is damped by
    ``damp`` * mean(diag H) (inputs that are always zero get H_kk = 1).
    ``narrow``: codes k in [-(2^(B-1) - 1), 2^(B-1) - 1] (symmetric).
    """
    w = np.array(w, np.float64)
    k_dim = w.shape[0]
    steps = np.broadcast_to(np.asarray(steps, np.float64), (w.shape[1],))
    h = np.array(hessian, np.float64)
    dead = np.diag(h) <= 0
    h[dead, dead] = 1.0
    h[np.diag_indices(k_dim)] += damp * float(np.mean(np.diag(h)))
    perm = np.argsort(-np.diag(h), kind="stable")
    inv = np.argsort(perm)
    w, h = w[perm], h[np.ix_(perm, perm)]
    # upper Cholesky factor U of H^-1 (H^-1 = U^T U): row k of U holds the
    # least-squares update of the rows after k once rows < k are fixed
    u = np.linalg.cholesky(np.linalg.inv(h)).T
    q = np.empty_like(w)
    for k in range(k_dim):
        q[k] = _nearest(w[k], steps, int(bits), narrow)
        err = (w[k] - q[k]) / u[k, k]
        w[k + 1:] -= np.outer(u[k, k + 1:], err)
    return q[inv]


def _nearest_layer(folded, op, lp) -> str:
    """A DepthwiseConv2D of ``folded`` (BN folded) with its kernel and bias
    put on the plan's grid by round-to-nearest, the kernel's codes on the
    narrow range (as GPTQ's, so the file can store them); "nearest
    (narrow range)".  Other kinds (standalone BN, Embedding, generic
    layers, a SeparableConv2D's halves) are left to the fake-quant
    rounding: "nearest"."""
    try:
        layer = folded.get_layer(op.name)
    except ValueError:
        return "nearest"
    if op.kind != "depthwise" or type(layer).__name__ != "DepthwiseConv2D":
        return "nearest"
    bits, ranges = int(lp.weight_bits), lp.weight_ranges()
    dt = np.dtype(layer.dtype)
    for i, a in enumerate(weight_attrs(layer)):
        v = np.asarray(getattr(layer, a).numpy(), np.float64)
        k = fixedpoint.quantize_int(v, bits, ranges, True)
        if i == 0:                                   # the kernel: narrow range
            k = np.maximum(k, 1 - 2 ** (bits - 1))
        getattr(layer, a).assign((k * fixedpoint.channel_steps(bits, ranges, v.shape))
                                 .astype(dt))
    return "nearest (narrow range)"


def _steps(lp, n: int) -> np.ndarray:
    ranges = lp.weight_ranges()         # checked_plan: always a LayerPrecision
    r = np.broadcast_to(np.asarray(ranges, np.float64), (n,))
    return r * 2.0 ** (1 - int(lp.weight_bits))


def _relative(d: np.ndarray, h: np.ndarray, w: np.ndarray) -> float:
    den = float(np.einsum("kn,kl,ln->", w, h, w))
    return float(np.einsum("kn,kl,ln->", d, h, d)) / den if den > 0 else 0.0


def _candidate(op, w, m, steps, bits, damp, bias_correction, narrow):
    """(q, bias on the grid or None, per-channel output error [N]) of GPTQ
    on ``steps``; the error is E[(x (w - q) + b - b_q)^2] per channel on
    the calibration moments."""
    q = gptq_levels(w, m.hessian, steps, bits, damp=damp, narrow=narrow)
    d = w - q
    err = np.einsum("kn,kl,ln->n", d, m.hessian, d)
    qb = None
    if op.attrs["bias"] is not None:
        b = np.asarray(op.attrs["bias"], np.float64)
        qb = _nearest(b + m.mean @ d if bias_correction else b, steps, bits)
        db = b - qb
        err = err + 2.0 * db * (m.mean @ d) + db ** 2
    return q, qb, err


def _round_layer(op, w, m, steps, bits, damp, bias_correction, range_search, per_channel,
                 narrow):
    """([kernel, bias?] on the grid, steps used [N], LayerRounding) of one
    Dense / Conv2D op."""
    q, qb, err = _candidate(op, w, m, steps, bits, damp, bias_correction, narrow)
    used = steps
    if range_search:       # the range halved: finer steps, the largest weights saturate
        q2, qb2, err2 = _candidate(op, w, m, steps / 2, bits, damp, bias_correction, narrow)
        take = err2 < err if per_channel else np.full(len(err), err2.sum() < err.sum())
        q = np.where(take, q2, q)
        qb = None if qb is None else np.where(take, qb2, qb)
        used = np.where(take, steps / 2, steps)
    row = LayerRounding(op.name, "gptq",
                        _relative(w - _nearest(w, steps, bits), m.hessian, w),
                        _relative(w - q, m.hessian, w))
    vals = [q.reshape(np.shape(op.attrs["kernel"]))]
    if qb is not None:
        vals.append(qb)
    return vals, used, row


def optimize_rounding(model, plan, x=None, *, moments: Optional[dict] = None,
                      damp: float = 0.01, bias_correction: bool = True,
                      batch_size: int = 128, cache: Optional[dict] = None,
                      range_search: bool = False, narrow_range: bool = True) -> RoundedModel:
    """Weights of ``model`` rounded onto ``plan``'s grid by GPTQ.

    Args:
      model: the trained float tf_keras classifier (not modified).
      plan: a :class:`~tfprec.planning.plan.PrecisionPlan` for ``model``.
      x: calibration inputs (see :func:`input_moments`); not needed when
        ``moments`` is given.  A layer with fewer than ``MIN_ROWS_PER_DOT``
        (8) input rows per row of its kernel (rows: examples times output
        positions; a Dense layer with K inputs needs 8 K examples) gets a
        :class:`~tfprec.TfprecWarning` naming it: GPTQ then fits the
        calibration set rather than the data (measured on the CIFAR-10
        VGG: 512 images lost 0.70 pp on held-out images where 2048 lost
        none); :func:`examples_needed` says how many examples suffice.
      moments: :func:`input_moments` of ``model`` computed once, to round
        several plans of the same model without another pass.
      damp: Hessian damping, a fraction of its mean diagonal (>= 0).
      bias_correction: add the mean output shift of the rounded kernel to
        the bias before rounding the bias.
      batch_size: examples per batch of the moments pass.
      cache: a dict kept by the caller across calls with the same model
        and ``moments`` (a search over plans): each layer's levels are
        computed once per (bits, steps, damp, bias correction).
      range_search: also try each output channel (each layer, for a plan
        with one weight range per tensor) on half its range R_c / 2, a
        power of two with half the step, whose largest weights saturate,
        and keep the range with the lower output error on the moments
        (bias included).  The plan's ranges then change where the half
        range won (``weight_channel_ranges`` / ``weight_range``; bits and
        costs do not), and its gains ``g_w`` are the original ones: with
        round-to-nearest a power-of-two range wastes up to one of the
        B_W bits on a channel whose largest weight is just above a power
        of two, which matters at 4 bits.
      narrow_range: kernel codes k in [-(2^(B-1) - 1), 2^(B-1) - 1], a
        symmetric subset of the plan's grid (LiteRT stores int8 weights
        narrow-range: a code of -128 cannot be exported); the bias keeps
        the whole grid.

    Returns:
      :class:`RoundedModel`.  Use ``quantize_model(r.model, r.plan)`` and
      ``export_tflite(r.model, r.plan, ...)``.

    Raises:
      PlanError: ``plan`` does not match ``model``.
      InvalidDataError: neither ``x`` nor ``moments`` given, bad ``x``,
        ``damp`` negative or not finite, or ``moments`` missing a layer.
      UnsupportedModelError: the model cannot be analyzed.
    """
    from tfprec.statistics.gains import model_fingerprint
    plan = checked_plan(model, plan)
    damp = inputs_lib.nonnegative_number("damp", damp)
    bias_correction = inputs_lib.flag("bias_correction", bias_correction)
    range_search = inputs_lib.flag("range_search", range_search)
    narrow_range = inputs_lib.flag("narrow_range", narrow_range)
    if moments is None:
        if x is None:
            raise InvalidDataError("optimize_rounding needs calibration inputs x "
                                   "or precomputed moments.")
        moments = input_moments(model, x, batch_size=batch_size)
    graph = parse_model(model)
    folded = _rebuild(model, None, split_softmax=False)
    report = []
    new_layers: dict = {}
    few = []
    for op in graph.weight_ops:
        lp = plan.layer(op.name)
        if op.kind not in OPTIMIZED_KINDS:
            how = _nearest_layer(folded, op, lp) if narrow_range else "nearest"
            report.append(LayerRounding(op.name, how, float("nan"), float("nan")))
            continue
        m = moments.get(op.name) if isinstance(moments, dict) else None
        if not isinstance(m, InputMoments):
            raise InvalidDataError(f"moments has no entry for layer {op.name!r}; "
                                   "compute them with input_moments(model, x)")
        kernel = np.asarray(op.attrs["kernel"], np.float64)
        w = kernel.reshape(-1, kernel.shape[-1])
        if m.hessian.shape != (w.shape[0], w.shape[0]):
            raise InvalidDataError(f"moments of layer {op.name!r} are for dot length "
                                   f"{m.hessian.shape[0]}, the layer has {w.shape[0]}")
        if m.rows < MIN_ROWS_PER_DOT * w.shape[0]:
            few.append(f"{op.name} ({m.rows} rows, dot length {w.shape[0]})")
        steps = _steps(lp, w.shape[1])
        per_channel = lp.weight_channel_ranges is not None
        key = (op.name, int(lp.weight_bits), steps.tobytes(), damp, bias_correction,
               range_search, narrow_range)
        if cache is None or key not in cache:
            got = _round_layer(op, w, m, steps, int(lp.weight_bits), damp, bias_correction,
                               range_search, per_channel, narrow_range)
            if cache is not None:
                cache[key] = got
        vals, used, row = cache[key] if cache is not None else got
        if range_search:
            r = used * 2.0 ** (int(lp.weight_bits) - 1)
            new_layers[op.name] = dataclasses.replace(
                lp, weight_range=float(r.max()),
                weight_channel_ranges=tuple(float(v) for v in r) if per_channel else None)
        report.append(row)
        layer = folded.get_layer(op.name)
        dt = np.dtype(layer.dtype)
        for a, v in zip(weight_attrs(layer), vals):
            getattr(layer, a).assign(v.astype(dt))
    if few:
        warnings.warn(
            f"GPTQ's calibration inputs give fewer than {MIN_ROWS_PER_DOT} input rows "
            f"per kernel row for {', '.join(few)}: the levels fit the calibration set "
            "more than the data; pass more calibration inputs (x): examples_needed(model) "
            "says how many suffice",
            TfprecWarning, stacklevel=2)
    info = dict(plan.info, weight_rounding=(
        f"gptq (damp {damp:g}, bias correction {'on' if bias_correction else 'off'}, "
        f"range search {'on' if range_search else 'off'}, "
        f"{next(iter(moments.values())).rows if moments else 0} input rows)"))
    layers = tuple(new_layers.get(l.name, l) for l in plan.layers)
    new_plan = dataclasses.replace(plan, layers=layers, fingerprint=model_fingerprint(folded),
                                   info=info)
    return RoundedModel(folded, new_plan, tuple(report))
