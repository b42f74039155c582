"""Plans of every allocation rule at one target, and the choice among them.

Library versions of what ``tfprec.application.cli`` offers (no flags: every
setting is an argument):

* :func:`analytic_plans`: each rule's plan meeting an analytic bound target;
* :func:`budget_plans`: each rule's smallest-bound plan within a cost budget
  (:func:`tfprec.planning.budget.smallest_bound_plan`);
* :func:`cheapest` / :func:`tightest`: the rule whose plan costs least /
  has the smallest bound.
"""
from __future__ import annotations

from typing import Sequence

from tfprec import inputs
from tfprec.errors import PlanError, UnattainableTargetError
from tfprec.fixedpoint import MAX_BITS, check_bits
from tfprec.planning import budget as budget_lib
from tfprec.planning import plan as plan_lib
from tfprec.planning import cost_aware as cost_aware_lib
from tfprec.planning import rules as rules_lib

PLAN_ORDER = ("cost_aware", "paper", "uniform", "icml2017")


def _methods(methods: Sequence[str]) -> tuple:
    """``methods`` as a tuple of rules from PLAN_ORDER (a bare string, an
    unknown or a repeated name raise PlanError naming ``methods``)."""
    return inputs.choices("methods", methods, PLAN_ORDER, error=PlanError)


def analytic_plans(gains, target: float, *, cost: str = "compute",
                   max_bits: int = MAX_BITS,
                   methods: Sequence[str] = PLAN_ORDER) -> tuple:
    """Each rule's plan meeting the analytic bound ``target``.

    Args:
      gains: :class:`tfprec.NoiseGains`.
      target: bound target (probability of a changed decision).
      cost: "compute" (full adders) or "memory" (bits), the cost the
        cost-aware rule minimizes.
      max_bits: no tensor above this many bits.
      methods: rules, from :data:`PLAN_ORDER`.

    Returns:
      ({method: plan}, {method: why it has no plan}) for the methods that
      can / cannot meet the target within ``max_bits``.
    """
    rules_lib.check_gains(gains)
    target = rules_lib._check_target(target)
    cost = budget_lib.cost_kind(cost)
    max_bits = check_bits("max_bits", max_bits)
    plans, unmet = {}, {}
    for m in _methods(methods):
        try:
            plans[m] = cost_aware_lib.make_plan(gains, m, target, cost=cost, max_bits=max_bits)
        except UnattainableTargetError as e:
            unmet[m] = str(e)
    return plans, unmet


def budget_plans(gains, budget: float, *, cost: str = "compute",
                 max_bits: int = MAX_BITS,
                 methods: Sequence[str] = PLAN_ORDER) -> tuple:
    """Each rule's smallest-bound plan whose ``cost`` is at most ``budget``.

    Args:
      budget: full adders per example ("compute") or bits ("memory").
      (others as :func:`analytic_plans`)

    Returns:
      ({method: plan} for the methods with a plan that fits, each with
      ``info["cost_budget"] = {"budget", "cost", "bound_target"}``;
      {method: its minimum achievable cost} for every method).
    """
    rules_lib.check_gains(gains)
    plans, min_costs = {}, {}
    for m in _methods(methods):
        p, min_costs[m] = budget_lib.smallest_bound_plan(
            gains, m, budget, cost=cost, max_bits=max_bits)
        if p is not None:
            plans[m] = p
    return plans, min_costs


def _rank(m: str) -> int:
    return PLAN_ORDER.index(m) if m in PLAN_ORDER else len(PLAN_ORDER)


def _nonempty(plans: dict) -> dict:
    if not isinstance(plans, dict):
        raise PlanError(f"plans must be a dict method -> PrecisionPlan, got "
                        f"{type(plans).__name__}")
    if not plans:
        raise PlanError("no plans to choose from (plans is empty)")
    for m, p in plans.items():
        if not isinstance(p, plan_lib.PrecisionPlan):
            raise PlanError(f"plans[{m!r}] must be a PrecisionPlan, got "
                            f"{type(p).__name__}")
    return plans


def cheapest(plans: dict, cost: str = "compute") -> str:
    """The method whose plan has the least ``cost`` (ties: smaller bound,
    then :data:`PLAN_ORDER`)."""
    cost, plans = budget_lib.cost_kind(cost), _nonempty(plans)
    return min(plans, key=lambda m: (plans[m].cost().total(cost), plans[m].bound(),
                                     _rank(m)))


def tightest(plans: dict, cost: str = "compute") -> str:
    """The method whose plan has the smallest bound (ties: less ``cost``,
    then :data:`PLAN_ORDER`)."""
    cost, plans = budget_lib.cost_kind(cost), _nonempty(plans)
    return min(plans, key=lambda m: (plans[m].bound(), plans[m].cost().total(cost),
                                     _rank(m)))
