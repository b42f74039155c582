"""Cheap sanity checks of data and models that would otherwise give silent
nonsense (issue 12): wrong input scale, absurd or overflowing values,
degenerate models, too few calibration examples, mismatched labels.

Errors (the result would be meaningless) are :class:`tfprec.errors.TfprecError`
subclasses; doubts (the result may be fine) are
:class:`tfprec.errors.TfprecWarning` warnings, which callers can filter.

Input scale heuristic (:func:`check_input_scale`)
-------------------------------------------------
tfprec cannot know the range a model was trained on, and the models it
supports have no Rescaling/Normalization layer of their own (the data reach
the first weight layer as given).  Networks are almost always trained on
inputs of order one (images scaled to [0, 1] or [-1, 1], or standardized
features), so the data are compared with that, using only the dtype and the
minimum, maximum and integrality of the values, which cost one reduction
per batch.  One warning naming the argument, its dtype and observed range is
given when the first of these fires:

1. integer data (uint8, int32, ...) with values above 1 given to a model
   with a float input and no Rescaling/Normalization layer: raw pixel codes
   fed to a model trained on scaled inputs (the classic ``x`` vs
   ``x / 255``);
2. float data whose values are all integers, none negative, the largest in
   ``[RAW_CODE_MIN_MAX, 65535]``: 8- or 16-bit codes cast to float without
   scaling;
3. float data whose largest magnitude exceeds :data:`MAX_TYPICAL_ABS`.

A model trained on such values is analyzed correctly: the warning is then
a false alarm, to be filtered with ``warnings.filterwarnings("ignore",
category=tfprec.errors.TfprecWarning)``.  Where the float decisions are
computed anyway (``validate``, ``sweep``, ``calibrate``), two model-based
checks follow (:func:`check_decisions`): every example getting the same
decision (a saturated, mis-scaled input or an untrained model) and, with
labels, a float accuracy not above chance (labels shifted, permuted or of
other inputs, or inputs on the wrong scale).

Overflow and degenerate models (:func:`overflow_limits`, :func:`check_pass_batch`,
:func:`check_ties`, :func:`check_gains_finite`)
-------------------------------------------------------------------------------
Finite but absurd inputs (1e38) overflow the float pass and used to give NaN
gains.  Each batch of the gains pass is checked, at no extra pass: the
observed input range of every weight layer must be finite and small enough
that its outputs cannot overflow (|z| <= D * max|a| * max|w| + max|b| below
a quarter of the dtype's largest value, so logits and sums stay finite), and
every example's squared-norm terms must be finite.  Models whose logits are
all equal on every example (all-zero weights) are refused: every example is
a tie and the gains would all be zero.

Calibration set size (:func:`check_num_examples`)
-------------------------------------------------
E_T is a mean over examples of per-example terms that scale with
1/margin^2, so they are heavy-tailed: their coefficient of variation is
typically 2 to 10.  The relative standard error of the mean is CV/sqrt(N);
a bit-width depends on E through 0.5 log2(E), so a relative error e moves
it by about 0.72 e bits.  With N = 1000 (and CV around 5) the error is
about 16 %, i.e. about 0.1 bit: the recommended minimum,
:data:`RECOMMENDED_EXAMPLES`.  Below :data:`MIN_EXAMPLES` (200: 35 %, a
quarter bit, and often much worse, since the few small-margin examples that
dominate E may be missing altogether) a warning is given; one example gave a
plan whose measured mismatch was twice its bound.
"""
from __future__ import annotations

import math
import sys
import warnings
from typing import Optional

import numpy as np

from tfprec.errors import InvalidDataError, TfprecWarning, UnsupportedModelError

#: Fewer calibration examples than this give a warning (see module docstring).
MIN_EXAMPLES = 200
#: Calibration examples recommended for the noise gains (about 0.1 bit).
RECOMMENDED_EXAMPLES = 1000
#: Largest input magnitude of "order one" inputs before a scale warning.
MAX_TYPICAL_ABS = 1e4
#: Integral non-negative float data whose maximum is at least this (and at
#: most 65535) look like raw 8/16-bit codes.
RAW_CODE_MIN_MAX = 32
#: Layers that rescale inputs inside a model (then rule 1 does not apply).
RESCALING_LAYERS = ("Rescaling", "Normalization")


def _warn(msg: str) -> None:
    """A TfprecWarning attributed to the first caller outside tfprec."""
    frame, level = sys._getframe(1), 2
    while frame is not None and frame.f_globals.get("__name__", "").startswith("tfprec."):
        frame, level = frame.f_back, level + 1
    warnings.warn(msg, TfprecWarning, stacklevel=level)


# ================================================================ input scale
class InputStats:
    """Running minimum, maximum and integrality of input batches (one
    vectorized reduction per batch; integrality stops being checked once a
    non-integer value is seen)."""

    def __init__(self):
        self.low = math.inf
        self.high = -math.inf
        self.integral = True
        self.count = 0

    def update(self, batch) -> None:
        b = np.asarray(batch)
        if b.size == 0:
            return
        self.low = min(self.low, float(np.min(b)))
        self.high = max(self.high, float(np.max(b)))
        if self.integral and b.dtype.kind == "f":
            self.integral = bool(np.all(b == np.round(b)))
        self.count += len(b)

    @classmethod
    def of(cls, x) -> "InputStats":
        s = cls()
        s.update(x)
        return s

    def watch(self, batches):
        """Yields ``batches`` unchanged, updating the statistics."""
        for b in batches:
            self.update(b)
            yield b


def _has_rescaling(model) -> bool:
    layers = getattr(model, "submodules", None) or getattr(model, "layers", ())
    return any(type(l).__name__ in RESCALING_LAYERS for l in layers)


def _has_embedding(model) -> bool:
    """Whether ``model`` has an Embedding layer (its input holds token ids)."""
    return any(type(l).__name__ == "Embedding" for l in getattr(model, "layers", ()))


def _model_float_input(model) -> bool:
    try:
        return model.inputs[0].dtype.is_floating
    except (AttributeError, IndexError, TypeError):
        return True


def check_input_scale(model, stats: InputStats, raw_dtype, what: str) -> Optional[str]:
    """Warns (TfprecWarning) when the data ``what`` look off the scale a
    model is normally trained on (rules in the module docstring).  Returns
    the warning text, or None."""
    if stats.count == 0 or not (math.isfinite(stats.low) and math.isfinite(stats.high)):
        return None
    if not _model_float_input(model) or _has_embedding(model):
        return None     # token ids (integer inputs, Embedding) have no scale
    raw = np.dtype(raw_dtype) if raw_dtype is not None else np.dtype("float32")
    rng = f"[{stats.low:.6g}, {stats.high:.6g}]"
    fix = ("if the model was trained on scaled inputs (e.g. x / 255 in [0, 1], "
           "or standardized), scale the data the same way; if it was trained on "
           "these values, ignore this warning")
    msg = None
    if raw.kind in "iu" and stats.high > 1 and _model_float_input(model) \
            and not _has_rescaling(model):
        msg = (f"{what} has integer dtype {raw.name} with values in {rng}, but "
               f"model '{model.name}' takes float inputs and has no Rescaling or "
               f"Normalization layer: {fix}.")
    elif raw.kind == "f" and stats.integral and stats.low >= 0 \
            and RAW_CODE_MIN_MAX <= stats.high <= 65535:
        msg = (f"{what} holds only whole numbers in {rng} (dtype {raw.name}): "
               f"it looks like raw 8/16-bit codes (e.g. pixels 0..255 cast to "
               f"float without scaling); {fix}.")
    elif max(abs(stats.low), abs(stats.high)) > MAX_TYPICAL_ABS:
        msg = (f"{what} has values in {rng}, far outside the order-one range "
               f"networks are normally trained on; {fix}.")
    if msg is not None:
        _warn(msg)
    return msg


# ============================================================ decisions
def check_decisions(fdec: np.ndarray, y: Optional[np.ndarray], num_classes: int,
                    what: str = "x", label_what: str = "y") -> Optional[str]:
    """Warns (TfprecWarning) when the float model gives every example of
    ``what`` the same decision (more examples than classes), or when its
    accuracy on ``label_what`` is not above chance by two standard errors:
    accuracy <= 1/M + 2 sqrt((1/M)(1 - 1/M)/N).  Returns the warning text,
    or None."""
    fdec = np.asarray(fdec)
    n = len(fdec)
    if n == 0:
        return None
    msg = None
    if n > num_classes and np.all(fdec == fdec[0]):
        msg = (f"the float model gives every one of the {n} examples of {what} the "
               f"same decision (class {int(fdec[0])} of {num_classes}): {what} may "
               "be on the wrong scale (saturating the network), or the model is "
               "untrained; mismatch rates measured on it are meaningless.")
    elif y is not None:
        chance = 1.0 / num_classes
        acc = float(np.mean(fdec == np.asarray(y)))
        limit = chance + 2.0 * math.sqrt(chance * (1.0 - chance) / n)
        if acc <= limit:
            msg = (f"the float model's accuracy on {label_what} is {100 * acc:.1f} % "
                   f"over {n} examples, not above chance (1/M = {100 * chance:.1f} %"
                   f" for M = {num_classes} classes; limit {100 * limit:.1f} %): the "
                   f"labels {label_what} may be shifted, permuted or belong to other "
                   f"inputs, or {what} may be on the wrong scale.")
    if msg is not None:
        _warn(msg)
    return msg


# ============================================================ gains pass
def check_multi_label(graph) -> Optional[str]:
    """Warns (TfprecWarning) when the model ends in a sigmoid over M >= 2
    outputs: tfprec analyses one decision per example, the argmax of the M
    scores, while such a head is usually multi-label (each output
    thresholded on its own).  Returns the warning text, or None."""
    last = graph.ops[-1] if graph.ops else None
    if last is None or last.attrs.get("act") != "sigmoid" or graph.num_classes < 2:
        return None
    msg = (f"model ends in a sigmoid over {graph.num_classes} outputs (layer "
           f"'{last.attrs.get('layer_name', last.name)}'): tfprec analyses, plans "
           "and measures one decision per example, the argmax of the "
           f"{graph.num_classes} scores; if the model is multi-label (each output "
           "thresholded on its own), the mismatch and the bound are not about its "
           "decisions (split it into one binary model per label, one sigmoid unit "
           "each, which tfprec analyses as binary classifiers).")
    _warn(msg)
    return msg


def check_num_examples(n: int, what: str = "x") -> None:
    """Warns (TfprecWarning) when fewer than :data:`MIN_EXAMPLES`
    calibration examples were used for the gains."""
    if n < MIN_EXAMPLES:
        _warn(f"noise gains from only {n} examples of {what} (max_examples / x): "
              f"E_T is a mean of heavy-tailed per-example terms and needs at "
              f"least {MIN_EXAMPLES} examples, {RECOMMENDED_EXAMPLES} or more "
              "recommended (about 0.1 bit of error); the plan's bound may not "
              "hold on held-out data.")


def overflow_limits(graph, dtype) -> np.ndarray:
    """Per weight layer of ``graph``: the largest input magnitude (max(|a|, 1))
    for which no output of the layer can exceed a quarter of ``dtype``'s
    largest finite value: D * max|a| * max|w| + max|b| <= max / 4."""
    big = float(np.finfo(np.dtype(dtype)).max) / 4.0
    lims = []
    for op in graph.weight_ops:
        if op.kind == "embedding":      # a lookup: ids do not scale the output
            lims.append(math.inf)
            continue
        k = np.abs(op.attrs["kernel"])
        b = op.attrs["bias"]
        wmax = max(float(np.max(k)) if k.size else 0.0,
                   float(np.max(np.abs(b))) if b is not None and b.size else 0.0)
        dot = int(np.prod(k.shape[:-1])) + 1
        lims.append(math.inf if wmax == 0 else big / (dot * wmax))
    return np.asarray(lims)


def check_pass_batch(out: dict, graph, limits: np.ndarray, offset: int, size: int,
                     what: str = "x") -> None:
    """Raises InvalidDataError naming ``what`` when one batch of the gains
    pass (examples offset..offset+size-1) overflowed: a weight layer's input
    is not finite or so large its outputs may overflow, or an example's
    squared-norm terms are not finite."""
    amax = np.asarray(out["amax"], np.float64)
    amin = np.asarray(out["amin"], np.float64)
    mag = np.maximum(np.abs(amax), np.abs(amin))
    bad = ~np.isfinite(mag) | (np.maximum(mag, 1.0) > limits)
    last = offset + size - 1
    if bad.any():
        j = int(np.argmax(bad))
        raise InvalidDataError(
            f"{what}: examples {offset}..{last} drive the input of layer "
            f"'{graph.weight_ops[j].name}' to {mag[j]:.3g}, where the float pass "
            "overflows (non-finite logits and gains); the values of x are absurd "
            "for this model (check their scale), or the weights are.")
    for key in ("pw", "pa"):
        v = out.get(key)
        if v is None:
            continue
        v = np.asarray(v)
        if np.all(np.isfinite(v)):
            continue
        where = f"examples {offset}..{last}"
        if v.ndim == 2 and v.shape[1] == size:
            where = f"example {offset + int(np.argmin(np.isfinite(v).all(axis=0)))}"
        raise InvalidDataError(
            f"{what}: {where} gives non-finite logits or gradients in the float "
            "pass (overflow); check the scale of x and that the weights are finite.")


def check_ties(ties: int, n: int, num_classes: int, what: str = "x") -> None:
    """Raises UnsupportedModelError when every example of ``what`` is a tie:
    all M logits equal (ties == N (M-1), see ``NoiseGains.num_ties``)."""
    if n > 0 and ties >= n * (num_classes - 1):
        raise UnsupportedModelError(
            f"every one of the {n} examples of {what} is a tie: all {num_classes} "
            "logits are equal (e.g. all-zero weights, or an output that does not "
            "depend on the input), so the first-order model does not apply and "
            "every noise gain would be 0. Train the model, or check that x is "
            "its input.")


def check_gains_finite(values, names, what: str = "x") -> None:
    """Raises InvalidDataError when a noise gain is not finite."""
    v = np.asarray(values, np.float64)
    if not np.all(np.isfinite(v)):
        j = int(np.argmin(np.isfinite(v).reshape(len(names), -1).all(axis=1)))
        raise InvalidDataError(
            f"{what}: the noise gains of layer '{names[j]}' are not finite "
            "(overflow in the float pass); check the scale of x and the weights.")
