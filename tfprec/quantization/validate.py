"""Measured mismatch of a plan against its analytic bound (METHOD.md section 6).

:func:`validate` runs the float model and the fake-quant model of a plan
(:func:`tfprec.quantization.apply.quantize_model`) on held-out inputs and reports the
fraction of examples whose decision (argmax) differs, next to the plan's
bound p_m <= sum_T 4^(1-B_T) G_T, the accuracies when labels are given, and
the plan's costs.  :func:`sweep` does this for a range of precision levels
of the paper's rule and the two baselines, with one float pass shared by all
plans, and :func:`to_markdown` tabulates the rows.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, Optional, Sequence

import numpy as np

from tfprec import inputs as inputs_lib
from tfprec import packing
from tfprec._tf import tf
from tfprec.planning import plan as plan_lib
from tfprec.planning import rules as rules_lib
from tfprec.quantization.apply import binary_threshold, logits_model, quantize_model
from tfprec.quantization.simulate import checked_plan
from tfprec.errors import InvalidDataError, PlanError, UnattainableTargetError
from tfprec.statistics import embedding, sanity

METHODS = ("paper", "uniform", "icml2017")


@dataclasses.dataclass(frozen=True)
class ValidationResult:
    """Float vs fake-quant comparison of one plan.

    Attributes:
      method: the plan's method ("paper", "uniform", "icml2017", ...).
      b_min: smallest bit-width over all tensors of the plan (bits).
      bound: analytic mismatch bound of the plan (probability; may exceed 1).
      num_examples: examples evaluated.
      num_mismatch: examples whose fake-quant decision differs from the
        float decision.
      mismatch_rate: num_mismatch / num_examples (fraction in [0, 1]).
      float_accuracy: fraction of examples the float model classifies
        correctly, in [0, 1]; None without labels.
      quant_accuracy: same for the fake-quant model; None without labels.
      compute_cost: computational cost, 1-bit full adders per example.
      memory_cost: representational cost, bits.
      level: the sweep level (B_min for "paper", B for "uniform", B_A for
        "icml2017"); None outside :func:`sweep`.
    """

    method: str
    b_min: int
    bound: float
    num_examples: int
    num_mismatch: int
    mismatch_rate: float
    float_accuracy: Optional[float]
    quant_accuracy: Optional[float]
    compute_cost: float
    memory_cost: float
    level: Optional[int] = None

    @property
    def bound_holds(self) -> bool:
        """Whether the measured mismatch rate is at most the bound."""
        return self.mismatch_rate <= self.bound

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ------------------------------------------------------------------ data
def _examples(model, x, y, max_examples=None):
    """(inputs in the model's dtype, int64 labels or None) of numpy arrays or
    a tf.data dataset of inputs or (input, label) pairs (materialized, at
    most ``max_examples``); warns if x looks off the model's scale
    (:func:`tfprec.statistics.sanity.check_input_scale`)."""
    max_examples = inputs_lib.optional_positive_int("max_examples", max_examples)
    xa, ya = inputs_lib.as_examples(
        x, y, inputs_lib.model_input_shape(model), inputs_lib.model_num_classes(model),
        dtype=inputs_lib.model_dtype(model), what="x", label_what="y",
        max_examples=max_examples)
    sanity.check_input_scale(model, sanity.InputStats.of(xa),
                             inputs_lib.raw_dtype(x), "x")
    return xa, ya


def _decisions(model, x, batch_size: int) -> np.ndarray:
    """argmax of ``model``'s output over batches of ``x`` (numpy or
    tf.data, streamed), computed in the model's dtype.

    (``Model.predict`` would cast float64 inputs to ``floatx``.)
    """
    batch_size = inputs_lib.positive_int("batch_size", batch_size)
    dtype = tf.as_dtype(inputs_lib.model_dtype(model))
    in_shape = inputs_lib.model_input_shape(model)  # several inputs: packed
    thr = binary_threshold(model)
    run = lambda t: packing.call_model(model, t, training=False)
    if thr is None:
        decide = lambda t: tf.argmax(run(t), axis=1)
    else:                       # binary: class 1 iff p > 0.5 (or logit z > 0)
        decide = lambda t: tf.cast(run(t)[:, 0] > thr, tf.int64)
    fn = tf.function(decide, input_signature=[tf.TensorSpec([None, *in_shape], dtype)])
    out = [fn(tf.constant(b, dtype)).numpy()
           for b in inputs_lib.iter_batches(x, in_shape, batch_size,
                                            dtype=dtype.name, what="x")]
    if not out:
        raise InvalidDataError("x is empty: at least one example is needed.")
    return np.concatenate(out).astype(np.int64)


def float_decisions(model, x, batch_size: int = 256) -> np.ndarray:
    """Argmax decisions (int64 [N]) of the float model (one batched pass).

    ``x``: numpy [N, ...] or a tf.data dataset of inputs or of (input,
    label) pairs (labels ignored).  The argmax of a final softmax equals the
    argmax of its logits, so the model's own output is used.  Token ids
    read by an Embedding must lie in [0, input_dim) (InvalidDataError naming
    the layer; :func:`tfprec.statistics.embedding.check_model_ids`).
    """
    embedding.check_model_ids(model, x, "x")
    return _decisions(model, x, batch_size)


def quant_decisions(model, plan, x, batch_size: int = 256) -> np.ndarray:
    """Argmax decisions (int64 [N]) of the fake-quant model of ``plan``
    (on its pre-softmax logits); ``x`` as in :func:`float_decisions`."""
    inputs_lib.positive_int("batch_size", batch_size)
    return _decisions(logits_model(quantize_model(model, plan)), x, batch_size)


def _result(plan, fdec, qdec, y, level=None) -> ValidationResult:
    n = len(fdec)
    mis = int(np.sum(fdec != qdec))
    cost = plan.cost()
    return ValidationResult(
        method=plan.method, b_min=int(plan.b_min), bound=float(plan.bound()),
        num_examples=n, num_mismatch=mis, mismatch_rate=mis / n,
        float_accuracy=None if y is None else float(np.mean(fdec == y)),
        quant_accuracy=None if y is None else float(np.mean(qdec == y)),
        compute_cost=float(cost.total_compute),
        memory_cost=float(cost.total_memory), level=level)


# ------------------------------------------------------------- public API
def validate(model, plan, x, y=None, batch_size: int = 256,
             max_examples: Optional[int] = None, *, rounded=None) -> ValidationResult:
    """Measures the float vs fixed-point decision mismatch of ``plan``.

    Args:
      model: the trained float tf_keras classifier (only read).
      plan: a :class:`~tfprec.planning.plan.PrecisionPlan` made for ``model``.
      x: held-out inputs in the units the model expects: numpy [N, ...], or
        a tf.data dataset of inputs or of (input, label) pairs (batched or
        not; the labels are used when ``y`` is None); several inputs: a
        list / tuple / dict of arrays or a dataset of them (:mod:`tfprec.packing`).
      y: optional labels: N integer class ids, an [N, 1] column of them, or
        N one-hot rows of width M; checked (ids in 0..M-1, integral).
        Without them (and without labels in ``x``) the accuracies are None.
      batch_size: examples per batch of each pass.
      max_examples: use at most this many examples of ``x`` (a dataset is
        read once and materialized up to this many; an infinite dataset
        needs it, or ``take(n)``; one of unknown cardinality is read to its
        end).
      rounded: a :class:`~tfprec.quantization.rounding.RoundedModel` of
        ``model`` and ``plan`` (:func:`~tfprec.quantization.rounding.optimize_rounding`):
        the fixed-point decisions come from its weights, the float ones from
        ``model``.

    Returns:
      A :class:`ValidationResult` (mismatch rate and accuracies as fractions
      in [0, 1], bound as a probability, costs in full adders and bits).

    Warns:
      TfprecWarning: x looks off the model's input scale (e.g. uint8
        pixels), every example gets the same float decision, or the float
        accuracy on the labels is not above chance (shifted labels)
        (:mod:`tfprec.statistics.sanity`).

    Raises:
      PlanError: ``plan`` is not a plan, does not match the model or has bad
        bit-widths.
      InvalidDataError: x is None, inputs or labels are empty, mis-shaped or
        not finite, labels are out of 0..M-1, negative, non-integral or
        one-hot of the wrong width, x is an infinite dataset without
        max_examples, or batch_size is not a positive int.
    """
    batch_size = inputs_lib.positive_int("batch_size", batch_size)
    x, y = _examples(model, x, y, max_examples)
    fdec = float_decisions(model, x, batch_size)
    sanity.check_decisions(fdec, y, inputs_lib.model_num_classes(model), "x", "y")
    if rounded is None:
        qdec = quant_decisions(model, plan, x, batch_size)
    else:
        plan = checked_plan(model, plan)
        r_plan = getattr(rounded, "plan", None)
        bits = lambda p: [(l.name, l.weight_bits, l.act_bits)
                          for l in getattr(p, "layers", None) or ()]
        if bits(r_plan) != bits(plan):
            raise PlanError("validate: rounded is not an optimize_rounding result for "
                            "this plan (its layers or bits differ)")
        qdec = quant_decisions(rounded.model, r_plan, x, batch_size)
    return _result(plan, fdec, qdec, y)


def _check_method(method) -> None:
    if method not in METHODS:
        raise PlanError(f"unknown plan method {method!r}; choose from {METHODS}")


def plan_at_level(gains, method: str, level: int) -> plan_lib.PrecisionPlan:
    """The plan of ``method`` at precision ``level`` (bits).

    ``level`` is B_min for "paper", the common B for "uniform" and B_A for
    "icml2017".

    Raises:
      PlanError: unknown method.
      UnattainableTargetError: the level puts a tensor outside 2..16 bits.
    """
    _check_method(method)
    level = inputs_lib.bits("level", level)
    if method == "paper":
        return rules_lib.paper_plan(gains, b_min=level)
    if method == "uniform":
        return rules_lib.uniform_plan(gains, bits=level)
    return rules_lib.icml2017_plan(gains, act_bits=level)


def sweep(model, gains, x, y=None, b_mins: Iterable[int] = range(2, 13),
          methods: Sequence[str] = METHODS, batch_size: int = 256,
          max_examples: Optional[int] = None) -> list:
    """Validates the plans of several methods over a range of levels.

    One float pass is shared by all plans; each plan gets one batched
    fake-quant pass.  Levels whose plan would need a tensor outside 2..16
    bits are skipped.

    Args:
      model: the trained float classifier (only read).
      gains: :class:`tfprec.NoiseGains` of ``model``.
      x, y: held-out inputs and optional labels (see :func:`validate`).
      b_mins: precision levels in bits: B_min for "paper", B for "uniform",
        B_A for "icml2017".
      methods: any of "paper", "uniform", "icml2017".
      batch_size: examples per batch.
      max_examples: use at most this many examples (see :func:`validate`).

    Returns:
      A list of :class:`ValidationResult`, one per (method, level) that
      exists, in the order of ``methods`` then ``b_mins``; ``level`` is set.
    """
    for m in methods:
        _check_method(m)
    b_mins = inputs_lib.bit_levels("b_mins", b_mins)
    batch_size = inputs_lib.positive_int("batch_size", batch_size)
    x, y = _examples(model, x, y, max_examples)
    fdec = float_decisions(model, x, batch_size)
    sanity.check_decisions(fdec, y, inputs_lib.model_num_classes(model), "x", "y")
    rows = []
    for method in methods:
        for level in b_mins:
            try:
                plan = plan_at_level(gains, method, level)
            except UnattainableTargetError:
                continue
            qdec = quant_decisions(model, plan, x, batch_size)
            rows.append(_result(plan, fdec, qdec, y, level=int(level)))
    return rows


def _fmt(v, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def to_markdown(rows: Sequence[ValidationResult]) -> str:
    """Markdown table of validation rows (bound and mismatch as fractions,
    accuracies in percent, compute in full adders, memory in bits)."""
    head = ("| method | level | B_min | bound | mismatch | # mismatch | "
            "float acc % | quant acc % | compute (FA) | memory (bits) |")
    sep = "|" + "---|" * 10
    lines = [head, sep]
    for r in rows:
        lines.append(
            f"| {r.method} | {_fmt(r.level, 'd')} | {r.b_min} | {r.bound:.3g} | "
            f"{r.mismatch_rate:.4f} | {r.num_mismatch}/{r.num_examples} | "
            f"{_fmt(None if r.float_accuracy is None else 100 * r.float_accuracy, '.2f')} | "
            f"{_fmt(None if r.quant_accuracy is None else 100 * r.quant_accuracy, '.2f')} | "
            f"{r.compute_cost:.4g} | {r.memory_cost:.4g} |")
    return "\n".join(lines) + "\n"
