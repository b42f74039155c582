"""tfprec's plans at a cost budget and confirmed by measurement: bisection on
the bound target or on the budget."""
from __future__ import annotations

import dataclasses
import math
import weakref
from typing import Optional, Sequence, Union

import numpy as np

from tfprec.planning import cost as cost_lib
from tfprec import fixedpoint
from tfprec.planning import plan as plan_lib
from tfprec.statistics import registry
from tfprec._tf import tf
from tfprec.errors import InvalidDataError, PlanError, UnattainableTargetError
from tfprec.statistics.gains import NoiseGains
from tfprec.statistics.graph import WEIGHT_KINDS, parse_model

from tfprec.peers.greedy import _Evaluator, _check_tol
from tfprec.peers.common import (_check_bits, _check_cost_kind, _pos_int, _template,
                                  _unit, _xy)


# ====================================== tfprec on the same footing
def cost_aware_at_budget(gains, budget: float, cost: str = "compute",
                         max_bits: int = 16, precision: float = 2e-3,
                         iterations: int = 60):
    """tfprec's plan for a cost budget: the smallest-bound cost-aware plan
    that fits.

    Bisects log10 of the bound target of :func:`tfprec.cost_aware_plan`
    (a smaller target gives a costlier plan) between the bounds of the
    uniform ``max_bits`` and all-2-bit plans, until the bracket is narrower
    than ``precision`` decades (or ``iterations`` steps), and returns the
    plan with the smallest analytic bound among those tried whose cost is
    <= ``budget``.  Pure arithmetic on the gains: no data pass (about a
    dozen cost_aware_plan calls).

    Raises:
      UnattainableTargetError: even the all-2-bit plan costs more than the
        budget.
      PlanError: bad budget or cost kind.
    """
    cost = _check_cost_kind(cost)
    if isinstance(budget, bool) or not isinstance(budget, (int, float, np.number)) \
            or not (budget > 0 and math.isfinite(budget)):
        raise PlanError(f"budget must be a positive finite cost in "
                        f"{_unit(cost)}, got {budget!r}")
    floor = plan_lib.uniform_plan(gains, bits=fixedpoint.MIN_BITS)
    if floor.cost().total(cost) > budget * (1 + 1e-12):
        raise UnattainableTargetError(
            f"budget {budget:.6g} {_unit(cost)} is below the cheapest plan "
            f"({floor.cost().total(cost):.6g} {_unit(cost)}: every tensor at "
            f"{fixedpoint.MIN_BITS} bits).")
    best = None

    def consider(p):
        nonlocal best
        if p.cost().total(cost) <= budget * (1 + 1e-12):
            if best is None or p.bound() < best.bound():
                best = p
            return True
        return False

    ceil_bound = plan_lib.uniform_plan(gains, bits=max_bits).bound()
    lo = math.log10(max(ceil_bound, 1e-300)) - 1e-3
    hi = math.log10(max(floor.bound(), 1e-300)) + 1e-3
    for _ in range(int(iterations)):
        mid = 0.5 * (lo + hi)
        try:
            p = plan_lib.cost_aware_plan(gains, 10.0 ** mid, cost=cost,
                                         max_bits=max_bits)
        except UnattainableTargetError:
            lo = mid
            continue
        if consider(p):
            hi = mid
        else:
            lo = mid
        if hi - lo < precision:
            break
    if best is None:
        best = floor
    return dataclasses.replace(best, info=dict(best.info, budget=float(budget)))


def default_targets(gains, tolerance_pp: float, per_decade: int = 4) -> list:
    """Bound targets worth trying for an accuracy tolerance.

    A geometric grid, ``per_decade`` points per decade, from the tolerance
    as a probability (tolerance_pp / 100: a plan whose bound meets it
    loses at most that much accuracy in expectation, so smaller targets only
    cost more) up to the bound of the all-2-bit plan (larger targets all
    give that plan).
    """
    lo = max(tolerance_pp / 100.0, 1e-6)
    hi = max(plan_lib.uniform_plan(gains, bits=fixedpoint.MIN_BITS).bound(), lo)
    n = int(math.ceil(per_decade * math.log10(hi / lo)))
    return [lo * (hi / lo) ** (k / max(n, 1)) for k in range(n + 1)]


def bisect_target_plan(model, gains, x, y, tolerance_pp: float = 0.1,
                       cost: str = "compute",
                       targets: Optional[Sequence[float]] = None,
                       batch_size: int = 256):
    """tfprec's cheapest plan confirmed by measurement, in a few evaluations.

    Bisects over ``targets`` (bound targets; default
    :func:`default_targets`) for the largest target whose
    :func:`tfprec.cost_aware_plan` has measured fake-quant accuracy on
    (x, y) within ``tolerance_pp`` percentage points of float, assuming
    accuracy falls as the target grows (about log2(len(targets)) + 1
    fake-quant evaluations).

    Returns:
      (plan, evaluations).  ``plan.info`` holds the measured accuracies.

    Raises:
      UnattainableTargetError: not even the smallest target's plan is within
        tolerance.
    """
    cost = _check_cost_kind(cost)
    tol = _check_tol(tolerance_pp)
    batch_size = _pos_int("batch_size", batch_size)
    graph = parse_model(model)
    x, y = _xy(x, y, graph.shapes[graph.input_id], graph.num_classes,
               "bisect_target_plan")
    if targets is None:
        targets = default_targets(gains, tol)
    targets = sorted(float(t) for t in targets)
    if not targets:
        raise PlanError("targets is empty")
    ev = _Evaluator(model, x, y, batch_size)
    plans, accs = {}, {}

    def passes(i):
        if i not in plans:
            plans[i] = plan_lib.cost_aware_plan(gains, targets[i], cost=cost)
            accs[i] = ev.accuracy(plans[i])
        return ev.ok(accs[i], tol)

    lo, hi = -1, len(targets)        # invariant: lo passes (or -1), hi fails
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if passes(mid):
            lo = mid
        else:
            hi = mid
    if lo < 0:
        raise UnattainableTargetError(
            f"the cost-aware plan for the smallest target {targets[0]:.3g} has "
            f"accuracy {100 * accs[0]:.2f} % vs float "
            f"{100 * ev.float_accuracy:.2f} %, more than {tol:g} pp lower; pass "
            "smaller targets.")
    plan = plans[lo]
    plan = dataclasses.replace(plan, info=dict(
        plan.info, float_accuracy=ev.float_accuracy, quant_accuracy=accs[lo],
        tolerance_pp=tol, evaluations=ev.evaluations))
    return plan, ev.evaluations


def bisect_budget_plan(model, gains, x, y, tolerance_pp: float = 0.1,
                       cost: str = "compute", rel_step: float = 0.05,
                       batch_size: int = 256):
    """tfprec's cheapest plan confirmed by measurement, bisecting the budget.

    Bisects (geometrically) the cost budget between the all-2-bit plan's
    cost (assumed to miss the tolerance) and the cost of the cost-aware plan
    whose bound meets tolerance_pp / 100 (assumed to pass: its analytic
    bound promises at most that accuracy loss in expectation), until the
    bracket is narrower than a factor 1 + ``rel_step``.  At each step the
    plan is :func:`cost_aware_at_budget` (no data pass) and one fake-quant
    evaluation on (x, y) decides whether its accuracy is within
    ``tolerance_pp`` percentage points of float.  Assumes accuracy grows
    with the budget.  The returned plan is always one that was measured.

    Returns:
      (plan, evaluations); ``plan.info`` holds the measured accuracies and
      the evaluations.

    Raises:
      UnattainableTargetError: even the upper plan misses the tolerance.
    """
    cost = _check_cost_kind(cost)
    tol = _check_tol(tolerance_pp)
    batch_size = _pos_int("batch_size", batch_size)
    if not (isinstance(rel_step, (int, float)) and rel_step > 0):
        raise PlanError(f"rel_step must be a positive number, got {rel_step!r}")
    graph = parse_model(model)
    x, y = _xy(x, y, graph.shapes[graph.input_id], graph.num_classes,
               "bisect_budget_plan")
    ev = _Evaluator(model, x, y, batch_size)
    floor = plan_lib.uniform_plan(gains, bits=fixedpoint.MIN_BITS)
    try:
        top = plan_lib.cost_aware_plan(gains, max(tol / 100.0, 1e-6), cost=cost)
    except UnattainableTargetError:
        top = plan_lib.uniform_plan(gains, bits=fixedpoint.MAX_BITS)
    lo = floor.cost().total(cost)
    hi_plan, hi_acc = top, None
    hi = top.cost().total(cost)
    while hi > lo * (1 + rel_step):
        mid = math.sqrt(lo * hi)
        p = cost_aware_at_budget(gains, mid, cost=cost)
        c = p.cost().total(cost)
        a = ev.accuracy(p)
        if ev.ok(a, tol):
            hi_plan, hi_acc, hi = p, a, c
        else:
            lo = mid
    if hi_acc is None:
        hi_acc = ev.accuracy(hi_plan)
        if not ev.ok(hi_acc, tol):
            raise UnattainableTargetError(
                f"the cost-aware plan whose bound meets {tol / 100:.3g} has "
                f"accuracy {100 * hi_acc:.2f} % vs float "
                f"{100 * ev.float_accuracy:.2f} %, more than {tol:g} pp lower.")
    plan = dataclasses.replace(hi_plan, info=dict(
        hi_plan.info, float_accuracy=ev.float_accuracy, quant_accuracy=hi_acc,
        tolerance_pp=tol, evaluations=ev.evaluations))
    return plan, ev.evaluations
