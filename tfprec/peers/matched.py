"""Matched comparisons of allocation families: equal level resolution,
honest splits, and tfprec's predictor-based plan at a cost budget.

Used by the paper examples (``examples/paper_common.py``) and
``benchmarks/peers.py``.

Level grids of equal resolution (:func:`family_grid`).  The integer-level
families move one bit at a time: ``paper`` (B_min), ``uniform`` (B) and
``icml2017`` (B_A), levels 16 .. 2 bits, most precise first.  One bit less
on every tensor multiplies the analytic bound by 4 (two octaves), so
:func:`tfprec.calibrate.calibrate`'s cost-aware grid (4 points per octave of
the bound) has 8 levels per bit of the other families and gets to select
on the held-out data 8 times more finely.  Here the cost-aware families get
the same resolution: their targets are the value of their own criterion at
the uniform plans, t_B = criterion(uniform plan at B bits), B = 16 .. 2
(``per_bit`` > 1 adds geometric points in between):

* ``cost_aware``: the analytic bound (probability), or the per-example
  bound when the gains have per-example data
  (:func:`~tfprec.planning.cost_aware.per_example_cost_aware_plan`);
  for the analytic bound t_B = bound(16 bits) * 4^(16 - B) exactly;
* ``cost_aware_predicted``: the predicted mismatch
  (:func:`tfprec.planning.predict.predicted_mismatch`, a probability; an
  estimate, not a bound) and ``cost_aware_plan(..., criterion="predicted")``
  (needs ``noise_gains(..., per_class=True)``).

So the level at index i of every family is "as precise as the uniform plan
at 16 - i bits" by that family's own criterion.

Honest splits (:func:`select_level`, :func:`measure`): the level is chosen
on a *selection* split (the cheapest level whose fake-quant accuracy there
is within ``max_accuracy_drop`` percentage points of float; bisection
:func:`tfprec.planning.budget.cheapest_feasible`, about log2(levels) + 1
fake-quant evaluations, by the shared
:class:`tfprec.planning.evaluate.Evaluator`), and reported on a disjoint
*report* split the search never saw.

Around a target (:func:`target_grid`): the predictor-based family on
targets t = target * 2^(k/4) of its own criterion (the predicted accuracy
drop with labels, else the predicted mismatch), the search starting at the
target itself: what ``benchmarks/peers.py`` selects tfprec's plan on.

At a budget (:func:`predicted_at_budget`): the plan with the lowest
predicted mismatch whose cost fits, allocated under the budget
(:func:`tfprec.planning.budget.predicted_budget_plan`: greedy descent and
local search under the prediction); :func:`bisected_at_budget` is the
earlier bisection of the predicted target over the cost-aware plans, kept
for comparison (it leaves budget unused).
"""
from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Callable, Optional

from tfprec import inputs
from tfprec.errors import PlanError, UnattainableTargetError
from tfprec.fixedpoint import MAX_BITS, MIN_BITS, check_bits
from tfprec.planning import budget as budget_lib
from tfprec.planning import cost_aware as cost_aware_lib
from tfprec.planning import rules as rules_lib
from tfprec.planning.evaluate import Evaluator

FAMILIES = ("cost_aware_predicted", "cost_aware", "paper", "uniform", "icml2017")
CRITERIA = ("bound", "per_example", "predicted", "predicted_drop")
PREDICTED_LOG_WIDTH = 0.1      # final bracket of the predicted target, natural log


# ================================================================ criteria
def _choice(name: str, value, choices) -> str:
    """``value`` if it is one of ``choices``; else PlanError naming ``name``."""
    if not isinstance(value, str) or value not in choices:
        raise PlanError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def predict_module():
    """:mod:`tfprec.planning.predict` (the mismatch predictor), imported on
    first use; PlanError when this tfprec has none."""
    try:
        from tfprec.planning import predict
    except ImportError as e:      # pragma: no cover - predictor not installed
        raise PlanError("the predicted-mismatch family needs "
                        f"tfprec.planning.predict ({e})") from None
    return predict


def criterion_value(plan, gains, criterion: str, labels=None) -> float:
    """``plan``'s value of ``criterion`` (probability): "bound" (analytic,
    plan.bound()), "per_example" (per-example bound), "predicted" (the
    predicted mismatch, an estimate) or "predicted_drop" (the predicted
    accuracy drop, a fraction; needs ``labels`` of the gains' examples)."""
    criterion = _choice("criterion", criterion, CRITERIA)
    if criterion == "bound":
        return float(plan.bound())
    if criterion == "per_example":
        return float(cost_aware_lib.per_example_bound(plan, gains))
    if criterion == "predicted_drop":
        return float(predict_module().predicted_accuracy_drop(plan, gains, labels))
    return float(predict_module().predicted_mismatch(plan, gains))


def _criterion_plan(gains, criterion: str, target: float, cost: str, max_bits: int,
                    labels=None):
    if criterion == "bound":
        return cost_aware_lib.cost_aware_plan(gains, target, cost=cost,
                                              max_bits=max_bits)
    if criterion == "per_example":
        return cost_aware_lib.per_example_cost_aware_plan(gains, target, cost=cost,
                                                          max_bits=max_bits)
    return cost_aware_lib.cost_aware_plan(
        gains, target, cost=cost, max_bits=max_bits, criterion="predicted",
        labels=labels if criterion == "predicted_drop" else None)


def family_criterion(gains, family: str, labels=None) -> Optional[str]:
    """The criterion a cost-aware family meets (None for integer levels);
    the predictor-based family with ``labels``: the predicted accuracy drop."""
    if family == "cost_aware_predicted":
        return "predicted" if labels is None else "predicted_drop"
    if family == "cost_aware":
        return "per_example" if getattr(gains, "example_w", None) is not None else "bound"
    return None


# ================================================================ grids
@dataclasses.dataclass
class FamilyGrid:
    """Levels of one family, most precise first, with lazily built plans.

    Attributes:
      family: one of :data:`FAMILIES`.
      levels: the levels: bits (integer families) or targets of the
        family's criterion (probability).
      labels: each level as text (``B_min=4``; ``t=0.0012 (~B=5)``).
      criterion: None, or what the targets are ("bound", "per_example",
        "predicted", "predicted_drop").
      start: where a level search should start (:func:`target_grid`: the
        level at the target), or None.
    """

    family: str
    levels: list
    labels: list
    criterion: Optional[str]
    make: Callable
    _plans: dict = dataclasses.field(default_factory=dict, repr=False)
    start: Optional[int] = None

    def plan(self, i: int):
        if i not in self._plans:
            self._plans[i] = self.make(self.levels[i])
        return self._plans[i]

    def index_at(self, value: float) -> int:
        """The cheapest level whose criterion target is at most ``value``
        (a probability; 0 when none is): where a criterion that
        estimates the measured quantity says the target is met.  Integer
        families (no criterion) raise PlanError."""
        if self.criterion is None:
            raise PlanError(f"family {self.family!r} has integer levels, not "
                            "criterion targets")
        return max([0] + [i for i, t in enumerate(self.levels) if t <= value])


def _level_maker(gains, crit: str, cost: str, max_bits: int, labels) -> Callable:
    """The plan of a criterion target t; below every plan: the most precise."""
    top = rules_lib.uniform_plan(gains, bits=max_bits, max_bits=max_bits)

    def make(t):
        try:
            return _criterion_plan(gains, crit, t, cost, max_bits, labels)
        except UnattainableTargetError:
            return top
    return make


def family_grid(gains, family: str, *, cost: str = "compute",
                max_bits: int = MAX_BITS, per_bit: int = 1, labels=None) -> FamilyGrid:
    """The level grid of ``family`` at one level per bit (see the module doc).

    Args:
      gains: :class:`tfprec.NoiseGains` (per-example data for the
        per-example bound, per-class data for ``cost_aware_predicted``).
      family: one of :data:`FAMILIES`.
      cost: "compute" (full adders) or "memory" (bits), for the cost-aware
        families.
      max_bits: most precise level (bits, <= 16).
      per_bit: cost-aware targets per bit of the uniform family (1: equal
        resolution; more: geometric points in between).
      labels: class ids of the gains' examples (``cost_aware_predicted``
        only): its targets are then predicted accuracy drops (a fraction),
        for selection against an accuracy-drop target.

    Raises:
      PlanError: unknown family or cost, bad max_bits / per_bit, or gains
        without the data the family's criterion needs.
    """
    family = _choice("family", family, FAMILIES)
    cost = budget_lib.cost_kind(cost)
    max_bits = check_bits("max_bits", max_bits)
    per_bit = inputs.positive_int("per_bit", per_bit, error=PlanError)
    if labels is not None and family != "cost_aware_predicted":
        raise PlanError(f"labels are for the cost_aware_predicted family, not {family!r}")
    class_ids = labels                     # (``labels`` below: the level texts)
    crit = family_criterion(gains, family, class_ids)
    if crit is None:
        levels = budget_lib.rule_levels(gains, family, max_bits)
        return FamilyGrid(family, levels,
                          [rules_lib.level_text(family, b) for b in levels], None,
                          lambda b: budget_lib.rule_plan(gains, family, b, max_bits))
    bits = list(range(max_bits, MIN_BITS - 1, -1))
    vals = [criterion_value(rules_lib.uniform_plan(gains, bits=b, max_bits=max_bits),
                            gains, crit, class_ids) for b in bits]
    # a floor keeps the geometric grid defined when a value underflows to 0;
    # x(1 + 1e-9): uniform B meets t_B; targets are probabilities, at most 1
    floor = max(max(vals) * 1e-30, 1e-300)
    vals = [min(1.0, max(v, floor) * (1 + 1e-9)) for v in vals]
    # levels must not fall as precision drops (the selection bisects them):
    # an estimated criterion (the prediction on N examples moves in steps of
    # 1/N and is not monotone in B at high precision) takes its running max
    vals = list(itertools.accumulate(vals, max))
    levels, labels = [], []
    for k, (b, v) in enumerate(zip(bits, vals)):
        levels.append(v)
        labels.append(f"t={v:.3g} (~B={b})")
        if k + 1 < len(vals):
            nxt = max(vals[k + 1], v)
            for j in range(1, per_bit):
                t = v * (nxt / v) ** (j / per_bit)
                levels.append(t)
                labels.append(f"t={t:.3g} (~B={b - j / per_bit:.2f})")
    return FamilyGrid(family, levels, labels, crit,
                      _level_maker(gains, crit, cost, max_bits, class_ids))


def target_grid(gains, target: float, *, labels=None, cost: str = "compute",
                max_bits: int = MAX_BITS, per_octave: int = 4,
                octaves_below: int = 6, octaves_above: int = 3) -> FamilyGrid:
    """The predictor-based family on a geometric grid of its own criterion
    around a target: t_k = target * 2^(k / per_octave), k = -per_octave *
    octaves_below .. per_octave * octaves_above, most precise (smallest)
    first; :attr:`FamilyGrid.start` is the index of t = target.

    For selection against a measured target whose value the prediction
    estimates directly (``labels``: the predicted accuracy drop for an
    accuracy-drop target; else the predicted mismatch for a mismatch
    target): the search starts where the prediction meets the target and
    moves in steps of a quarter octave (the resolution of
    :func:`tfprec.calibrate.calibrate`'s cost-aware grid), which a grid
    anchored at the uniform plans (:func:`family_grid`) cannot give where
    their predictions jump.

    Raises:
      PlanError: bad target (a probability in (0, 1)), per_octave or
        octave counts, cost, max_bits, or gains / labels the criterion
        cannot use.
    """
    if isinstance(target, bool) or not isinstance(target, (int, float)) \
            or not (0 < target < 1):
        raise PlanError(f"target must be a probability in (0, 1), got {target!r}")
    per_octave = inputs.positive_int("per_octave", per_octave, error=PlanError)
    below = inputs.nonnegative_int("octaves_below", octaves_below, error=PlanError)
    above = inputs.nonnegative_int("octaves_above", octaves_above, error=PlanError)
    cost = budget_lib.cost_kind(cost)
    max_bits = check_bits("max_bits", max_bits)
    crit = family_criterion(gains, "cost_aware_predicted", labels)
    if labels is not None:
        predict_module().label_columns(gains, labels)          # checked now
    else:
        predict_module().class_terms(gains)
    ks = range(-per_octave * below, per_octave * above + 1)
    levels = [min(float(target) * 2.0 ** (k / per_octave), 1.0) for k in ks]
    return FamilyGrid("cost_aware_predicted", levels,
                      [f"t={t:.3g} ({k / per_octave:+g} oct.)" for t, k in zip(levels, ks)],
                      crit, _level_maker(gains, crit, cost, max_bits, labels),
                      start=per_octave * below)


# ================================================================ selection
@dataclasses.dataclass(frozen=True)
class Selected:
    """One family at the cheapest level that met the target on the
    selection split.

    Attributes:
      family, level, label: the family and its chosen level (see FamilyGrid).
      plan: the :class:`tfprec.PrecisionPlan` (None when no level met it).
      evaluations: fake-quant evaluations the bisection asked for
        (shared, cached measurements included).
      num_examples: examples of the selection split.
      accuracy_drop_pp: float minus fake-quant accuracy on the selection
        split, percentage points.
      num_mismatch: changed decisions on the selection split.
      note: why no level met the target (plan None).
    """

    family: str
    level: Optional[float]
    label: str
    plan: object
    evaluations: int
    num_examples: int
    accuracy_drop_pp: Optional[float]
    num_mismatch: Optional[int]
    note: str = ""

    @property
    def met(self) -> bool:
        return self.plan is not None


def selection_margin_pp(tolerance_pp: float, n_select: int, margin_pp: float) -> float:
    """The safety margin (percentage points) a search keeps on its selection
    split so its plan holds on held-out data: ``margin_pp`` when >= 0, else
    the one-sigma binomial standard error of a drop equal to the tolerance
    on ``n_select`` examples (0.5 pp on 2000: 0.158 pp)."""
    if margin_pp >= 0:
        return float(margin_pp)
    t = tolerance_pp / 100.0
    return 100.0 * math.sqrt(t * (1.0 - t) / n_select)


@dataclasses.dataclass(frozen=True)
class PairedTest:
    """McNemar's exact test of two plans' accuracy on the same examples.

    Attributes:
      only_a: examples plan A classifies right and plan B wrong (count).
      only_b: examples plan B classifies right and plan A wrong (count).
      p_value: two-sided exact p-value (probability) of a difference at
        least this large if both plans were equally accurate: the binomial
        tail 2 P(X <= min(only_a, only_b)), X ~ Bin(only_a + only_b, 1/2),
        capped at 1 (1 when both counts are 0).
    """

    only_a: int
    only_b: int
    p_value: float


def paired_test(decisions_a, decisions_b, labels) -> PairedTest:
    """McNemar's exact test on two plans' decisions (class ids, [N] each) for
    the same examples and ``labels`` [N]: whether plan A's accuracy differs
    from plan B's by more than the examples on which they disagree explain.

    Raises:
      PlanError: the three arrays are not 1-D of one length.
    """
    import numpy as np
    from scipy import stats
    a, b, y = (np.asarray(v) for v in (decisions_a, decisions_b, labels))
    if {a.ndim, b.ndim, y.ndim} != {1} or len({len(a), len(b), len(y)}) != 1:
        raise PlanError("paired_test needs decisions_a, decisions_b and labels as "
                        f"1-D arrays of one length, got shapes {a.shape}, {b.shape}, "
                        f"{y.shape}")
    ra, rb = a == y, b == y
    only_a, only_b = int(np.sum(ra & ~rb)), int(np.sum(rb & ~ra))
    n = only_a + only_b
    p = 1.0 if n == 0 else min(1.0, 2.0 * float(stats.binom.cdf(min(only_a, only_b), n, 0.5)))
    return PairedTest(only_a, only_b, p)


def selection_evaluator(model, x, y, max_accuracy_drop: float,
                        batch_size: int = 256) -> Evaluator:
    """The :class:`~tfprec.planning.evaluate.Evaluator` of a selection split
    with an accuracy-drop target (percentage points); share it between
    families so a plan two families reach is measured once."""
    tol = budget_lib.check_tolerance_pp(max_accuracy_drop)
    batch_size = inputs.positive_int("batch_size", batch_size)
    x, y = budget_lib.labelled_examples(model, x, y, "selection split")
    return Evaluator(model, x, y, batch_size, "accuracy_drop", tol)


def select_level(grid: FamilyGrid, ev: Evaluator,
                 start: Optional[int] = None) -> Selected:
    """The cheapest level of ``grid`` whose measured accuracy drop on the
    evaluator's (selection) examples meets its target (assumes the drop
    grows, weakly, as the level gets cheaper).  Bisection, or with
    ``start`` (a level index guessed to be near the answer, e.g.
    :meth:`FamilyGrid.index_at` of the target for the predicted family) a
    search outward from it that brackets, then bisects: the same level,
    with fewer evaluations when the guess is close
    (:func:`tfprec.planning.budget.cheapest_feasible`)."""
    calls = []

    def feasible(i):
        m = ev.measure(grid.plan(i))
        calls.append((i, m))
        return ev.meets(m)

    i = budget_lib.cheapest_feasible(len(grid.levels), feasible, start)
    if i < 0:
        m = ev.measure(grid.plan(0))
        return Selected(grid.family, None, "-", None, len(calls), ev.n,
                        ev.accuracy_drop_pp(m), m.num_mismatch,
                        f"not met: at its most precise level {grid.labels[0]} the "
                        f"selection split measures {ev.accuracy_text(m)}")
    m = ev.measure(grid.plan(i))
    return Selected(grid.family, float(grid.levels[i]), grid.labels[i], grid.plan(i),
                    len(calls), ev.n, ev.accuracy_drop_pp(m), m.num_mismatch)


@dataclasses.dataclass(frozen=True)
class Measured:
    """A plan measured on the report split (never used to select it).

    Attributes:
      num_examples: examples of the report split.
      float_accuracy, quant_accuracy: top-1 accuracy (fraction).
      accuracy_drop_pp: float minus fake-quant accuracy, percentage points.
      num_mismatch: changed decisions; mismatch_rate = num_mismatch / N.
    """

    num_examples: int
    float_accuracy: float
    quant_accuracy: float
    accuracy_drop_pp: float
    num_mismatch: int

    @property
    def mismatch_rate(self) -> float:
        return self.num_mismatch / self.num_examples


def report_evaluator(model, x, y, batch_size: int = 256) -> Evaluator:
    """A target-less evaluator of the report split (float decisions once)."""
    batch_size = inputs.positive_int("batch_size", batch_size)
    x, y = budget_lib.labelled_examples(model, x, y, "report split")
    return Evaluator(model, x, y, batch_size)


def measure(plan, ev: Evaluator) -> Measured:
    """``plan`` measured on the report evaluator ``ev``."""
    m = ev.measure(plan)
    return Measured(ev.n, ev.float_accuracy, ev.accuracy(m), ev.accuracy_drop_pp(m),
                    m.num_mismatch)


# ================================================================ budget
def predicted_at_budget(gains, budget: float, cost: str = "compute",
                        max_bits: int = MAX_BITS, labels=None):
    """tfprec's predictor-based plan for a cost budget: the plan with the
    lowest predicted mismatch (probability) found among all plans whose cost
    fits (:func:`tfprec.planning.budget.predicted_budget_plan`; no data
    pass).

    Args:
      gains: :class:`tfprec.NoiseGains` with per-class data
        (``noise_gains(..., per_class=True)``).
      budget: cost limit, full adders per example ("compute") or bits
        ("memory").
      cost: the cost kind of ``budget``.
      max_bits: no tensor above this many bits.
      labels: class ids of the gains' examples: the lowest predicted
        accuracy drop instead (``info["predicted_accuracy_drop"]``).

    Returns:
      The plan (method ``"cost_aware_predicted_budget:<cost>"``);
      ``info["budget"]`` is the budget and ``info["predicted_mismatch"]``
      its prediction.

    Raises:
      UnattainableTargetError: even the all-2-bit plan costs more than the
        budget.
      PlanError: bad budget, cost kind or max_bits; gains without per-class
        data.
    """
    return budget_lib.predicted_budget_plan(gains, budget, cost, max_bits,
                                            labels=labels)


def bisected_at_budget(gains, budget: float, cost: str = "compute",
                       max_bits: int = MAX_BITS,
                       log_width: float = PREDICTED_LOG_WIDTH):
    """The earlier predictor-based budget plan: the lowest predicted
    mismatch (probability) among the
    ``cost_aware_plan(..., criterion="predicted")`` plans that fit (kept
    for comparison with :func:`predicted_at_budget`; it optimizes a target,
    not the budget, and leaves budget unused).

    Bisects the predicted-mismatch target t in log space (a smaller t gives
    a costlier plan) to a bracket of ``log_width`` (natural log), between
    the predictions of the most precise uniform plan that fits (B_fit bits)
    and of the uniform plan at B_fit + 2 bits (widened to every tensor at
    ``max_bits`` when that one fits too); keeps the lowest-prediction plan
    that fits (at worst the uniform B_fit plan).  No data pass.

    Args:
      gains: :class:`tfprec.NoiseGains` with per-class data
        (``noise_gains(..., per_class=True)``).
      budget: cost limit, full adders per example ("compute") or bits
        ("memory").

    Returns:
      The plan; ``info["budget"]`` is the budget and
      ``info["predicted_mismatch"]`` its prediction.

    Raises:
      UnattainableTargetError: even the all-2-bit plan costs more than the
        budget.
      PlanError: bad budget, cost kind or max_bits.
    """
    cost = budget_lib.cost_kind(cost)
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) \
            or not (budget > 0 and math.isfinite(budget)):
        raise PlanError(f"budget must be a positive finite cost in "
                        f"{budget_lib.cost_unit(cost)}, got {budget!r}")
    max_bits = check_bits("max_bits", max_bits)
    limit = float(budget) * (1 + 1e-12)
    total = lambda p: p.cost().total(cost)  # noqa: E731
    cheapest = rules_lib.uniform_plan(gains, bits=MIN_BITS, max_bits=max_bits)
    if total(cheapest) > limit:
        raise UnattainableTargetError(
            f"budget {budget:.6g} {budget_lib.cost_unit(cost)} is below the cheapest "
            f"plan ({total(cheapest):.6g}: every tensor at {MIN_BITS} bits).")
    pred = predict_module().predicted_mismatch
    clamp = lambda v: min(max(v, 1e-300) * (1 + 1e-9), 1.0)  # noqa: E731
    # bracket: the most precise uniform plan that fits (B_fit) is met at
    # t = its prediction, so t there fits; two bits more precise rarely does
    uni = {b: rules_lib.uniform_plan(gains, bits=b, max_bits=max_bits)
           for b in range(MIN_BITS, max_bits + 1)}
    b_fit = max(b for b, p in uni.items() if total(p) <= limit)
    best = [uni[b_fit], pred(uni[b_fit], gains)]

    def fits(t):
        try:
            p = cost_aware_lib.cost_aware_plan(gains, t, cost=cost, max_bits=max_bits,
                                               criterion="predicted")
        except UnattainableTargetError:
            return False
        if total(p) > limit:
            return False
        v = pred(p, gains)
        if v < best[1]:
            best[:] = [p, v]
        return True

    hi = clamp(best[1])
    lo = clamp(pred(uni[min(b_fit + 2, max_bits)], gains))
    if lo < hi and fits(lo):                 # rare: widen to the most precise
        hi, lo = lo, clamp(pred(uni[max_bits], gains))
    if lo < hi and not fits(lo):
        fits(hi)
        budget_lib.bisect_log(lo, hi, fits, log_width=log_width)
    plan, v = best
    return dataclasses.replace(plan, info=dict(plan.info, budget=float(budget),
                                               predicted_mismatch=float(v)))

