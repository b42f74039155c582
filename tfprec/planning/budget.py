"""Searches over plan levels: bisections, plans at a cost budget, and plans
confirmed by measurement.

The one place for the two monotone bisections of tfprec:

* :func:`cheapest_feasible`: over a list of levels ordered from the most
  precise to the cheapest, the cheapest level whose (monotone) test passes
  (used by :func:`tfprec.calibrate.calibrate` and :func:`bisect_target_plan`);
* :func:`bisect_log`: over a positive interval in log space, the smallest
  value whose (monotone) test passes (used by :func:`smallest_bound_plan`
  on the cost-aware bound target and by :func:`bisect_budget_plan` on the
  cost budget).

Every allocation rule's levels (:func:`rule_levels`, :func:`rule_plan`):
``paper``: B_min, ``uniform``: B, ``icml2017``: B_A (bits, most precise
first); ``cost_aware``: its bound target t (probability).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Optional, Sequence

from tfprec import inputs
from tfprec.errors import PlanError, UnattainableTargetError
from tfprec.fixedpoint import MAX_BITS, MIN_BITS, check_bits
from tfprec.planning import cost as cost_lib
from tfprec.planning import rules as rules_lib
from tfprec.planning import cost_aware as cost_aware_lib
from tfprec.planning.evaluate import Evaluator

RULES = ("cost_aware", "paper", "uniform", "icml2017")
BUDGET_LOG_WIDTH = 1e-4      # final bracket of the bound target, natural log


# ================================================================ checks
def cost_kind(cost) -> str:
    """``cost`` if it is "compute" (full adders) or "memory" (bits); else PlanError."""
    return inputs.choice("cost", cost, cost_lib.COST_KINDS, error=PlanError)


def cost_unit(cost: str) -> str:
    return "full adders" if cost == "compute" else "bits"


def check_tolerance_pp(value) -> float:
    """An accuracy tolerance as a finite float >= 0 (percentage points)."""
    return inputs.nonnegative_number("tolerance_pp", value, unit="percentage points")


def _budget(budget, cost: str) -> float:
    return inputs.positive_number("budget", budget, unit=cost_unit(cost),
                                  error=PlanError)


def labelled_examples(model, x, y, what: str):
    """(x, y) as checked arrays from numpy or tf.data (:func:`tfprec.inputs.as_examples`
    with the model's input shape, classes and dtype); labels required."""
    return inputs.as_examples(
        x, y, inputs.model_input_shape(model), int(model.outputs[0].shape[-1]),
        dtype=inputs.model_dtype(model), what=f"{what}: x", label_what=f"{what}: y",
        need_labels=True)


# ================================================================ bisections
def cheapest_feasible(num_levels: int, feasible: Callable[[int], bool]) -> int:
    """Bisection over levels ordered from most precise (0) to cheapest.

    Assumes ``feasible`` is monotone (True up to some index, False after).
    Returns the largest feasible index, or -1 if none is; calls ``feasible``
    at most ceil(log2(num_levels + 1)) times.
    """
    lo, hi = -1, int(num_levels)       # lo: feasible sentinel, hi: infeasible
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if feasible(mid):
            lo = mid
        else:
            hi = mid
    return lo


def bisect_log(lo: float, hi: float, ok: Callable[[float], bool], *,
               log_width: float, max_steps: int = 60) -> tuple:
    """Bisection in log space for the smallest value that passes ``ok``.

    Assumes ``ok`` is monotone (False below some value, True above), ``lo``
    fails and ``hi`` passes (neither is called).  Probes geometric means
    until ln(hi / lo) <= ``log_width`` or ``max_steps`` probes; returns the
    final bracket (lo, hi).
    """
    a, b = math.log(lo), math.log(hi)
    for _ in range(int(max_steps)):
        if b - a <= log_width:
            break
        mid = 0.5 * (a + b)
        if ok(math.exp(mid)):
            b = mid
        else:
            a = mid
    return math.exp(a), math.exp(b)


# ================================================================ rule levels
def rule_levels(gains, method: str, max_bits: int = MAX_BITS) -> list:
    """Integer levels (bits) of "paper" (B_min), "uniform" (B) or "icml2017"
    (B_A) that keep every tensor within 2..max_bits, most precise first."""
    rules_lib.check_gains(gains)
    max_bits = check_bits("max_bits", max_bits)
    if method == "paper":
        ow, oa = rules_lib.paper_offsets(gains)
        top = max_bits - int(max(ow.max(), oa.max()))
        return list(range(top, MIN_BITS - 1, -1))
    if method == "uniform":
        return list(range(max_bits, MIN_BITS - 1, -1))
    if method == "icml2017":
        d = rules_lib.icml2017_offset(gains)
        return list(range(max_bits - max(d, 0), MIN_BITS - min(d, 0) - 1, -1))
    raise PlanError(f"{method!r} has no integer levels; choose from "
                    "('paper', 'uniform', 'icml2017')")


def rule_plan(gains, method: str, level: int, max_bits: int = MAX_BITS):
    """The plan of an integer-level rule at ``level`` bits (see rule_levels);
    a level that is not an int in 2..16 (0, 40, 3.5) raises PlanError."""
    level = inputs.bits("level", level)
    if method == "paper":
        return rules_lib.paper_plan(gains, b_min=level, max_bits=max_bits)
    if method == "uniform":
        return rules_lib.uniform_plan(gains, bits=level, max_bits=max_bits)
    if method == "icml2017":
        return rules_lib.icml2017_plan(gains, act_bits=level, max_bits=max_bits)
    raise PlanError(f"{method!r} has no integer levels")


# ================================================================ at a budget
def _with_budget_info(plan, budget: float, cost: str, target=None):
    info = dict(plan.info, cost_budget={"budget": budget, "cost": cost,
                                        "bound_target": target})
    return dataclasses.replace(plan, info=info,
                               target=plan.target if target is None else target)


def smallest_bound_plan(gains, method: str, budget: float, *, cost: str = "compute",
                        max_bits: int = MAX_BITS,
                        log_width: float = BUDGET_LOG_WIDTH) -> tuple:
    """The plan of ``method`` with the smallest analytic bound whose cost fits.

    ``cost_aware``: bisects the bound target t of
    :func:`~tfprec.planning.plan.cost_aware_plan` in log space (a smaller t
    gives a costlier plan) between the bounds with every tensor at
    ``max_bits`` and at 2 bits, to a bracket of ``log_width`` (natural log);
    ``paper`` / ``uniform`` / ``icml2017``: scans their levels.  Pure
    arithmetic on the gains: no data pass.

    Args:
      gains: :class:`tfprec.NoiseGains`.
      method: one of :data:`RULES`.
      budget: cost limit, full adders per example ("compute") or bits
        ("memory").
      cost: the cost kind of ``budget``.
      max_bits: no tensor above this many bits.

    Returns:
      (plan or None when nothing fits, the method's minimum cost).  The plan's
      ``info["cost_budget"]`` is {"budget", "cost", "bound_target"} (t for
      cost_aware, else None).
    """
    rules_lib.check_gains(gains)
    cost = cost_kind(cost)
    budget = _budget(budget, cost)
    max_bits = check_bits("max_bits", max_bits)
    inputs.choice("method", method, RULES, error=PlanError)
    log_width = inputs.positive_number("log_width", log_width, unit="natural log",
                                       error=PlanError)
    limit = budget * (1 + 1e-12)
    total = lambda p: p.cost().total(cost)  # noqa: E731
    if method != "cost_aware":
        fits, min_cost = None, math.inf
        for level in rule_levels(gains, method, max_bits):
            p = rule_plan(gains, method, level, max_bits)
            c = total(p)
            min_cost = min(min_cost, c)
            if c <= limit and (fits is None or p.bound() < fits.bound()):
                fits = p
        return (None if fits is None else _with_budget_info(fits, budget, cost)), min_cost
    cheapest = rules_lib.uniform_plan(gains, bits=MIN_BITS, max_bits=max_bits)
    min_cost = total(cheapest)
    if min_cost > limit:
        return None, min_cost
    lo_b = rules_lib.uniform_plan(gains, bits=max_bits, max_bits=max_bits).bound()
    hi_b = cheapest.bound()
    if not (lo_b > 0 and math.isfinite(hi_b)):      # all gains zero
        p = cost_aware_lib.cost_aware_at_level(gains, 1.0, cost=cost, max_bits=max_bits)
        return _with_budget_info(p, budget, cost, 1.0), min_cost
    best = []

    def fits(t):
        try:
            p = cost_aware_lib.cost_aware_at_level(gains, t, cost=cost, max_bits=max_bits)
        except UnattainableTargetError:
            return False
        ok = total(p) <= limit
        if ok and (not best or p.bound() < best[0].bound()):
            best[:] = [p, t]
        return ok

    lo_t, hi_t = lo_b * (1 + 1e-9), hi_b * (1 + 1e-9)
    if not fits(lo_t):
        if not fits(hi_t):       # the cheapest plan fits; cost_aware should find it
            best[:] = [cheapest, hi_t]
        bisect_log(lo_t, hi_t, fits, log_width=log_width)
    p, t = best
    return _with_budget_info(p, budget, cost, t), min_cost


def cost_aware_at_budget(gains, budget: float, cost: str = "compute",
                         max_bits: int = MAX_BITS,
                         log_width: float = BUDGET_LOG_WIDTH):
    """tfprec's plan for a cost budget: the smallest-bound cost-aware plan
    that fits (:func:`smallest_bound_plan` of "cost_aware");
    ``info["budget"]`` is the budget.

    Raises:
      UnattainableTargetError: even the all-2-bit plan costs more than the
        budget.
      PlanError: bad budget or cost kind.
    """
    plan, min_cost = smallest_bound_plan(gains, "cost_aware", budget, cost=cost,
                                         max_bits=max_bits, log_width=log_width)
    if plan is None:
        unit = cost_unit(cost)
        raise UnattainableTargetError(
            f"budget {budget:.6g} {unit} is below the cheapest plan "
            f"({min_cost:.6g} {unit}: every tensor at {MIN_BITS} bits).")
    return dataclasses.replace(plan, info=dict(plan.info, budget=float(budget)))


# ================================================================ measured
def default_targets(gains, tolerance_pp: float, per_decade: int = 4) -> list:
    """Bound targets worth trying for an accuracy tolerance.

    A geometric grid, ``per_decade`` points per decade, from the tolerance
    as a probability (tolerance_pp / 100: a plan whose bound meets it
    loses at most that much accuracy in expectation, so smaller targets only
    cost more) up to the bound of the all-2-bit plan (larger targets all
    give that plan).
    """
    rules_lib.check_gains(gains)
    tolerance_pp = check_tolerance_pp(tolerance_pp)
    per_decade = inputs.positive_int("per_decade", per_decade)
    lo = max(tolerance_pp / 100.0, 1e-6)
    hi = max(rules_lib.uniform_plan(gains, bits=MIN_BITS).bound(), lo)
    n = int(math.ceil(per_decade * math.log10(hi / lo)))
    return [lo * (hi / lo) ** (k / max(n, 1)) for k in range(n + 1)]


def _measured_info(plan, ev: Evaluator, m, tol: float):
    return dataclasses.replace(plan, info=dict(
        plan.info, float_accuracy=ev.float_accuracy, quant_accuracy=ev.accuracy(m),
        tolerance_pp=tol, evaluations=ev.passes))


def bisect_target_plan(model, gains, x, y=None, tolerance_pp: float = 0.1,
                       cost: str = "compute",
                       targets: Optional[Sequence[float]] = None,
                       batch_size: int = 256):
    """tfprec's cheapest plan confirmed by measurement, in a few evaluations.

    Bisects (:func:`cheapest_feasible`) over ``targets`` (bound targets;
    default :func:`default_targets`) for the largest target whose
    :func:`tfprec.cost_aware_plan` has measured fake-quant accuracy on
    (x, y) within ``tolerance_pp`` percentage points of float, assuming
    accuracy falls as the target grows (about log2(len(targets)) + 1
    fake-quant evaluations).  ``x`` may be a numpy array or a tf.data
    dataset (of (input, label) pairs when ``y`` is None).

    Returns:
      (plan, evaluations).  ``plan.info`` holds the measured accuracies.

    Raises:
      UnattainableTargetError: not even the smallest target's plan is within
        tolerance.
      InvalidDataError: data or labels malformed or missing.
    """
    cost = cost_kind(cost)
    tol = check_tolerance_pp(tolerance_pp)
    batch_size = inputs.positive_int("batch_size", batch_size)
    x, y = labelled_examples(model, x, y, "bisect_target_plan")
    rules_lib.check_gains(gains)
    if targets is not None and (isinstance(targets, (str, bytes))
                                or not hasattr(targets, "__iter__")):
        raise PlanError(f"targets must be a list of bound targets, got {targets!r}")
    targets = sorted(default_targets(gains, tol) if targets is None else
                     [inputs.positive_number(f"targets[{i}]", t, unit="probability "
                                             "(a bound level)", error=PlanError)
                      for i, t in enumerate(targets)])
    if not targets:
        raise PlanError("targets is empty")
    ev = Evaluator(model, x, y, batch_size, "accuracy_drop", tol)
    plans = {}

    def feasible(i):
        plans[i] = cost_aware_lib.cost_aware_at_level(gains, targets[i], cost=cost)
        return ev.meets(ev.measure(plans[i]))

    i = cheapest_feasible(len(targets), feasible)
    if i < 0:
        m = ev.measure(plans[0])
        raise UnattainableTargetError(
            f"the cost-aware plan for the smallest target {targets[0]:.3g} has "
            f"{ev.accuracy_text(m)}, more than {tol:g} pp lower; pass smaller "
            "targets.")
    plan = _measured_info(plans[i], ev, ev.measure(plans[i]), tol)
    return plan, ev.passes


def bisect_budget_plan(model, gains, x, y=None, tolerance_pp: float = 0.1,
                       cost: str = "compute", rel_step: float = 0.05,
                       batch_size: int = 256):
    """tfprec's cheapest plan confirmed by measurement, bisecting the budget.

    Bisects (:func:`bisect_log`) the cost budget between the all-2-bit plan's
    cost (assumed to miss the tolerance) and the cost of the cost-aware plan
    whose bound meets tolerance_pp / 100 (assumed to pass: its analytic
    bound promises at most that accuracy loss in expectation), until the
    bracket is narrower than a factor 1 + ``rel_step``.  At each step the
    plan is :func:`cost_aware_at_budget` (no data pass) and one fake-quant
    evaluation on (x, y) decides whether its accuracy is within
    ``tolerance_pp`` percentage points of float.  Assumes accuracy grows
    with the budget.  The returned plan is always one that was measured.
    ``x`` may be numpy or tf.data (see :func:`bisect_target_plan`).

    Returns:
      (plan, evaluations); ``plan.info`` holds the measured accuracies and
      the evaluations.

    Raises:
      UnattainableTargetError: even the upper plan misses the tolerance.
    """
    cost = cost_kind(cost)
    tol = check_tolerance_pp(tolerance_pp)
    batch_size = inputs.positive_int("batch_size", batch_size)
    rules_lib.check_gains(gains)
    rel_step = inputs.positive_number("rel_step", rel_step, unit="relative cost",
                                      error=PlanError)
    x, y = labelled_examples(model, x, y, "bisect_budget_plan")
    ev = Evaluator(model, x, y, batch_size, "accuracy_drop", tol)
    floor = rules_lib.uniform_plan(gains, bits=MIN_BITS)
    try:
        top = cost_aware_lib.cost_aware_at_level(gains, max(tol / 100.0, 1e-6), cost=cost)
    except UnattainableTargetError:
        top = rules_lib.uniform_plan(gains, bits=MAX_BITS)
    passed = [top]

    def ok(budget):
        p = cost_aware_at_budget(gains, budget, cost=cost)
        if ev.meets(ev.measure(p)):
            passed.append(p)
            return True
        return False

    lo, hi = floor.cost().total(cost), top.cost().total(cost)
    if hi > lo:
        bisect_log(lo, hi, ok, log_width=math.log1p(rel_step))
    plan = passed[-1]
    m = ev.measure(plan)
    if not ev.meets(m):
        raise UnattainableTargetError(
            f"the cost-aware plan whose bound meets {tol / 100:.3g} has "
            f"{ev.accuracy_text(m)}, more than {tol:g} pp lower.")
    return _measured_info(plan, ev, m, tol), ev.passes
