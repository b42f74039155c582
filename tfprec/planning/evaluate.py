"""The one evaluator of measured plan searches (calibrate, budget, greedy).

:class:`Evaluator` holds held-out examples, computes the float model's
decisions on them once (:func:`tfprec.validate.float_decisions`) and measures
plans with one fake-quant pass each (:func:`tfprec.validate.quant_decisions`),
cached by the plan's bits, so a plan that two searches ask for is measured
once.  ``passes`` counts the fake-quant passes actually run (the
"evaluations" every search reports).

A measurement (:class:`Measurement`) has the number of changed decisions
(mismatch count) and, with labels, the fake-quant correct count and the
examples it breaks / fixes.  Targets (optional, one of):

* ``"mismatch"``: measured mismatch rate (fraction of examples whose
  decision changes) <= ``target`` (a probability);
* ``"accuracy_drop"``: float accuracy - fake-quant accuracy <= ``target``
  percentage points (needs labels).

Both are compared as integer counts (k <= floor(target * n)), so rounding
never decides a borderline level.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

import numpy as np

from tfprec import inputs
from tfprec.errors import InvalidDataError, PlanError
from tfprec.planning import plan as plan_lib
from tfprec.planning.rules import level_text
from tfprec.quantization import validate as validate_lib
from tfprec.statistics import sanity

TARGET_KINDS = ("mismatch", "accuracy_drop")


@dataclasses.dataclass(frozen=True)
class Measurement:
    """One fake-quant pass over the evaluator's examples (counts).

    Attributes:
      num_mismatch: examples whose fake-quant decision differs from float.
      num_quant_correct: examples the fake-quant model classifies correctly
        (None without labels).
      num_harmed: float right, fake-quant wrong (None without labels).
      num_helped: float wrong, fake-quant right (None without labels).
    """

    num_mismatch: int
    num_quant_correct: Optional[int]
    num_harmed: Optional[int] = None
    num_helped: Optional[int] = None


class Evaluator:
    """Float decisions once; one cached fake-quant pass per distinct plan.

    Args:
      model: the float tf_keras classifier (only read).
      x: checked input array [N, ...] (see :func:`tfprec.inputs.as_examples`).
      y: checked int64 labels [N], or None.
      batch_size: examples per batch of each pass.
      target_kind: None (measure only), "mismatch" or "accuracy_drop".
      target: the mismatch rate (probability in [0, 1]) or the accuracy drop
        (percentage points) a plan must not exceed.
      what, label_what: the caller's names of x and y, for the warnings of
        :func:`tfprec.statistics.sanity.check_decisions` (every decision the
        same, float accuracy not above chance).
    """

    def __init__(self, model, x, y=None, batch_size: int = 256,
                 target_kind: Optional[str] = None, target: Optional[float] = None,
                 *, what: str = "x", label_what: str = "y"):
        if target_kind not in (None,) + TARGET_KINDS:
            raise PlanError(f"target kind must be one of {TARGET_KINDS}, got "
                            f"{target_kind!r}")
        if target_kind == "accuracy_drop" and y is None:
            raise InvalidDataError("an accuracy-drop target needs labels y")
        self.model, self.x, self.y = model, x, y
        self.batch_size = batch_size
        self.n = len(x)
        self.fdec = validate_lib.float_decisions(model, x, batch_size)
        sanity.check_decisions(self.fdec, y, inputs.model_num_classes(model),
                               what, label_what)
        self.float_correct = None if y is None else int(np.sum(self.fdec == y))
        self.kind, self.target = target_kind, target
        self.cache = {}
        self.passes = 0
        self.allowed = None
        if target_kind is not None:
            frac = target if target_kind == "mismatch" else target / 100.0
            self.allowed = int(math.floor(frac * self.n + 1e-9))

    @property
    def float_accuracy(self) -> Optional[float]:
        """Float top-1 accuracy (fraction), None without labels."""
        return None if self.y is None else self.float_correct / self.n

    @staticmethod
    def key(plan) -> tuple:
        """Cache key: the (B_W, B_A) bits of every layer."""
        return tuple((l.weight_bits, l.act_bits) for l in plan.layers)

    def measure(self, plan) -> Measurement:
        """The measurement of ``plan`` (one fake-quant pass the first time)."""
        k = self.key(plan)
        if k not in self.cache:
            qdec = validate_lib.quant_decisions(self.model, plan, self.x,
                                                self.batch_size)
            self.passes += 1
            mis = int(np.sum(qdec != self.fdec))
            if self.y is None:
                self.cache[k] = Measurement(mis, None)
            else:
                fok, qok = self.fdec == self.y, qdec == self.y
                self.cache[k] = Measurement(mis, int(np.sum(qok)),
                                            int(np.sum(fok & ~qok)),
                                            int(np.sum(~fok & qok)))
        return self.cache[k]

    def accuracy(self, m: Measurement) -> float:
        """Fake-quant top-1 accuracy of a measurement (fraction)."""
        return m.num_quant_correct / self.n

    def accuracy_text(self, m: Measurement) -> str:
        """"accuracy A % vs float F %" for error messages (needs labels)."""
        return (f"accuracy {100 * self.accuracy(m):.2f} % vs float "
                f"{100 * self.float_accuracy:.2f} %")

    def mismatch_rate(self, m: Measurement) -> float:
        """Fraction of examples whose decision changed."""
        return m.num_mismatch / self.n

    def accuracy_drop_pp(self, m: Measurement) -> float:
        """Float accuracy - fake-quant accuracy, percentage points."""
        return 100.0 * (self.float_correct - m.num_quant_correct) / self.n

    def value(self, m: Measurement) -> float:
        """The measured quantity the target is on (rate, or drop in pp)."""
        if self.kind == "mismatch":
            return self.mismatch_rate(m)
        return self.accuracy_drop_pp(m)

    def meets(self, m: Measurement) -> bool:
        """Whether the measurement meets the target (exact integer test)."""
        if self.kind is None:
            raise PlanError("this evaluator has no target")
        if self.kind == "mismatch":
            return m.num_mismatch <= self.allowed
        return self.float_correct - m.num_quant_correct <= self.allowed


# ================================================================ results
@dataclasses.dataclass(frozen=True)
class CalibratedPlan:
    """One plan family at the cheapest level that meets the measured target.

    Attributes:
      plan: the :class:`~tfprec.planning.plan.PrecisionPlan`; ``plan.info
        ["calibration"]`` records the target and the measurement.
      method: the family ("cost_aware", "paper", "uniform", "icml2017",
        "measured_greedy").
      level: the chosen level: B_min / B / B_A in bits, or the bound target t
        (probability) of the cost-aware plan (for "measured_greedy": t of
        the plan it started from).
      evaluations: fake-quant evaluations this family's search asked for
        (including ones another family had already run, which the cache
        answered; for "measured_greedy" including its cost-aware start).
      measured_mismatch: mismatch rate on the held-out data, fraction in
        [0, 1].
      mismatch_ucl: one-sided Clopper-Pearson upper limit of the mismatch
        rate at ``confidence``.
      float_accuracy, quant_accuracy: fractions in [0, 1]; None without
        labels.
      accuracy_drop_pp: (float - quant accuracy) in percentage points; None
        without labels.
      accuracy_drop_se_pp: standard error of ``accuracy_drop_pp`` (paired:
        100 sqrt(h + g - (h - g)^2 / n) / n with h examples the fake-quant
        model gets wrong that the float model got right and g the reverse),
        to show how much of the drop is sampling noise; None without labels.
      bound: the analytic bound of the plan (probability; may exceed 1).
      compute_cost: full adders per example.
      memory_cost: bits.
      num_examples: held-out examples measured on.
      guarantee: which guarantee holds, in words (see the module doc).
      num_mismatch: held-out examples whose decision changed.
      analytic_guarantee: True only when the bound, or the per-example
        bound, is <= the target probability.
      per_example_bound: :func:`~tfprec.planning.plan.per_example_bound` of the plan
        when the gains carry per-example data, else None.
      confidence: the level of ``mismatch_ucl``.
      trace: ((level, measured value, met), ...) in evaluation order; the
        measured value is the mismatch rate or the accuracy drop in pp; a
        "measured_greedy" move appears as level "<layer>.W-1" / ".A-1".
    """

    plan: plan_lib.PrecisionPlan
    method: str
    level: float
    evaluations: int
    measured_mismatch: float
    mismatch_ucl: float
    float_accuracy: Optional[float]
    quant_accuracy: Optional[float]
    accuracy_drop_pp: Optional[float]
    bound: float
    compute_cost: float
    memory_cost: float
    num_examples: int
    guarantee: str
    num_mismatch: int = 0
    analytic_guarantee: bool = False
    confidence: float = 0.95
    trace: tuple = ()
    accuracy_drop_se_pp: Optional[float] = None
    per_example_bound: Optional[float] = None

    def cost(self, kind: str = "compute") -> float:
        """``compute_cost`` (full adders) or ``memory_cost`` (bits)."""
        if kind == "compute":
            return self.compute_cost
        if kind == "memory":
            return self.memory_cost
        raise PlanError(f"cost kind must be 'compute' or 'memory', got {kind!r}")

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["plan"] = self.plan.to_dict()
        d["trace"] = [list(t) for t in self.trace]
        return d


@dataclasses.dataclass(frozen=True)
class CalibrationResult:
    """Result of :func:`calibrate`.

    Attributes:
      best: the candidate meeting the target at the lowest ``cost``.
      candidates: every family that met the target, each at its own cheapest
        level, sorted by ``cost`` (``best`` first).
      target_kind: "mismatch" or "accuracy_drop".
      target: p (fraction) or d (percentage points).
      target_probability: the probability the analytic bound is compared
        with: p, or d / 100.
      cost: "compute" or "memory", the cost ``best`` minimizes.
      num_examples: held-out examples.
      float_accuracy: float accuracy on them (None without labels).
      total_evaluations: fake-quant passes actually run (cache hits shared
        between families counted once).
      unmet: family -> why it met the target at none of its levels.
      confidence: level of the upper confidence limits.
    """

    best: CalibratedPlan
    candidates: tuple
    target_kind: str
    target: float
    target_probability: float
    cost: str
    num_examples: int
    float_accuracy: Optional[float]
    total_evaluations: int
    unmet: dict
    confidence: float = 0.95

    def __getitem__(self, method: str) -> CalibratedPlan:
        for c in self.candidates:
            if c.method == method:
                return c
        raise KeyError(f"no candidate of family {method!r}; candidates: "
                       f"{[c.method for c in self.candidates]}"
                       + (f"; unmet: {self.unmet}" if self.unmet else ""))

    def describe_target(self) -> str:
        return _describe(self.target_kind, self.target)

    def to_dict(self) -> dict:
        return {"best": self.best.method,
                "candidates": [c.to_dict() for c in self.candidates],
                "target_kind": self.target_kind, "target": self.target,
                "target_probability": self.target_probability,
                "cost": self.cost, "num_examples": self.num_examples,
                "float_accuracy": self.float_accuracy,
                "total_evaluations": self.total_evaluations,
                "unmet": dict(self.unmet), "confidence": self.confidence}

    def to_markdown(self) -> str:
        """Markdown summary: target, then one row per candidate, cheapest
        first (costs relative to ``best``), bound next to the measured
        mismatch and its upper confidence limit."""
        pct = lambda v: "n/a" if v is None else f"{100 * v:.2f}"
        lines = [
            f"Target: {self.describe_target()} on {self.num_examples} held-out "
            f"examples; cheapest by {self.cost} cost: **{self.best.plan.method}**; "
            f"{self.total_evaluations} fake-quant evaluations in all.",
            "",
            f"| method | level | evals | compute (FA) | memory (bits) | "
            f"{self.cost} vs best | bound | mismatch | UCL {100 * self.confidence:g}% | "
            "float acc % | quant acc % | drop pp ± se | guarantee |",
            "|" + "---|" * 13]
        base = self.best.cost(self.cost)
        for c in self.candidates:
            drop = ("n/a" if c.accuracy_drop_pp is None else
                    f"{c.accuracy_drop_pp:.2f} ± {c.accuracy_drop_se_pp:.2f}")
            lines.append(
                f"| {c.plan.method} | {level_text(c.plan.method, c.level)} | "
                f"{c.evaluations} | "
                f"{c.compute_cost:.4g} | {c.memory_cost:.4g} | "
                f"{c.cost(self.cost) / base:.3f} | {c.bound:.3g} | "
                f"{c.measured_mismatch:.4f} ({c.num_mismatch}/{c.num_examples}) | "
                f"{c.mismatch_ucl:.4f} | {pct(c.float_accuracy)} | "
                f"{pct(c.quant_accuracy)} | {drop} | {c.guarantee} |")
        for m, why in self.unmet.items():
            lines.append(f"\n{m}: target not met ({why})")
        return "\n".join(lines) + "\n"


def _describe(kind: str, target: float) -> str:
    if kind == "mismatch":
        return f"measured mismatch vs float <= {target:g}"
    return f"accuracy drop <= {target:g} pp"
