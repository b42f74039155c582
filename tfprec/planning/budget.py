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

At a cost budget: :func:`smallest_bound_plan` / :func:`cost_aware_at_budget`
(the smallest analytic bound that fits) and :func:`predicted_budget_plan`
(the lowest predicted mismatch that fits: greedy descent and local search
under the prediction).

Every allocation rule's levels (:func:`rule_levels`, :func:`rule_plan`):
``paper``: B_min, ``uniform``: B, ``icml2017``: B_A (bits, most precise
first); ``cost_aware``: its bound target t (probability).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Optional, Sequence

import numpy as np

from tfprec import inputs
from tfprec.errors import PlanError, UnattainableTargetError
from tfprec.fixedpoint import MAX_BITS, MIN_BITS, check_bits
from tfprec.planning import cost as cost_lib
from tfprec.planning import rules as rules_lib
from tfprec.planning import cost_aware as cost_aware_lib
from tfprec.planning import predict, search
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
        x, y, inputs.model_input_shape(model), inputs.model_num_classes(model),
        dtype=inputs.model_dtype(model), what=f"{what}: x", label_what=f"{what}: y",
        need_labels=True)


# ================================================================ bisections
def cheapest_feasible(num_levels: int, feasible: Callable[[int], bool],
                      start: Optional[int] = None) -> int:
    """The largest feasible index of levels ordered from most precise (0)
    to cheapest.

    Assumes ``feasible`` is monotone (True up to some index, False after).
    Returns the largest feasible index, or -1 if none is.  Without
    ``start``: bisection, at most ceil(log2(num_levels + 1)) calls.  With
    ``start`` (a guess of the answer, e.g. where a prediction meets the
    target): ``feasible(start)``, then steps of 1, 2, 4, ... away from it
    (towards cheaper levels after a pass, more precise ones after a miss)
    until the answer is bracketed, then bisection of the bracket: the same
    index, in about 2 log2(d + 1) + 1 calls for an answer d levels from
    the guess.
    """
    n = int(num_levels)
    lo, hi = -1, n                      # lo: feasible sentinel, hi: infeasible
    if start is not None and n > 0:
        s = min(max(int(start), 0), n - 1)
        step = 1
        if feasible(s):
            lo = s
            while lo + step < n:
                if not feasible(lo + step):
                    hi = lo + step
                    break
                lo += step
                step *= 2
        else:
            hi = s
            while hi - step >= 0:
                if feasible(hi - step):
                    lo = hi - step
                    break
                hi -= step
                step *= 2
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


# ================================================================ predicted
#: Method string (prefix) of :func:`predicted_budget_plan`'s plans.
PREDICTED_BUDGET_METHOD = "cost_aware_predicted_budget"
_IMPROVE_RTOL = 1e-9     # a local-search step must lower the prediction by this


def _tensor_moves(bits, lead, lo: int, hi: int):
    """(which, i) of every tensor whose bits may move within lo..hi: all
    weights, and each input tensor once (its first reader)."""
    bw, ba = bits
    out = [("w", i) for i in range(len(bw)) if lo <= bw[i] <= hi]
    return out + [("a", i) for i in range(len(ba)) if lead[i] == i and lo <= ba[i] <= hi]


def _shifted(bw, ba, which: str, i: int, k: int, group) -> tuple:
    """Copies of (bw, ba) with tensor (which, i) moved by k bits (an input
    tensor's readers together)."""
    bw, ba = bw.copy(), ba.copy()
    if which == "w":
        bw[i] += k
    else:
        ba[group[i]] += k
    return bw, ba


def _budget_descent(pm, tabs, bw, ba, limit: float, lead, group) -> tuple:
    """Greedy bit removal until the cost fits ``limit``: at each step the
    bit (one tensor, one bit) with the smallest increase of the prediction
    per unit of cost saved (ties: the larger saving)."""
    bw, ba = np.array(bw, int), np.array(ba, int)
    pm.reset(bw, ba)
    total = search.total_cost(tabs, bw, ba)
    while total > limit:
        _, d_w, _, d_a = pm.moves(bw, ba)
        best = None
        for which, i in _tensor_moves((bw, ba), lead, MIN_BITS + 1, MAX_BITS):
            nw, na = _shifted(bw, ba, which, i, -1, group)
            saved = total - search.total_cost(tabs, nw, na)
            if saved <= 0:
                continue
            key = ((d_w if which == "w" else d_a)[i] / saved, -saved)
            if best is None or key < best[0]:
                best = (key, which, i, nw, na, saved)
        if best is None:       # pragma: no cover - every tensor at 2 bits fits
            break
        _, which, i, bw, ba, saved = best
        pm.take(which, i, 0.0)
        total -= saved
    return bw, ba


def _budget_exchange(pm, tabs, bw, ba, limit: float, max_bits: int, lead,
                     group) -> tuple:
    """Local search under the budget: the best of one tensor +1 bit alone
    (spending budget left over), or one tensor +1 bit and another -1 or -2
    bits, that fits ``limit`` and lowers the prediction; repeated until none
    does.  Returns (bw, ba, prediction)."""
    cur = pm.value(bw, ba)
    while True:
        best = None
        for up, i in _tensor_moves((bw, ba), lead, MIN_BITS, max_bits - 1):
            uw, ua = _shifted(bw, ba, up, i, 1, group)
            cands = []
            if search.total_cost(tabs, uw, ua) <= limit:
                cands.append((pm.value(uw, ua), uw, ua))
            pm.reset(uw, ua)
            new_w, _, new_a, _ = pm.moves(uw, ua)
            for down, j in _tensor_moves((uw, ua), lead, MIN_BITS + 1, MAX_BITS):
                if (down, j) == (up, i):
                    continue
                for k in (1, 2):
                    if (uw if down == "w" else ua)[j] - k < MIN_BITS:
                        break
                    dw, da = _shifted(uw, ua, down, j, -k, group)
                    if search.total_cost(tabs, dw, da) > limit:
                        continue
                    v = (new_w if down == "w" else new_a)[j] if k == 1 \
                        else pm.value(dw, da)
                    cands.append((v, dw, da))
                    break      # -2 only when -1 does not fit
            for v, cw, ca in cands:
                if v < cur * (1 - _IMPROVE_RTOL) - 1e-300 and (
                        best is None or v < best[0]):
                    best = (v, cw, ca)
        if best is None:
            return bw, ba, cur
        v, bw, ba = best
        cur = pm.value(bw, ba)          # exact (moves skip far examples)


def predicted_budget_plan(gains, budget: float, cost: str = "compute",
                          max_bits: int = MAX_BITS, *, form=None, model=None,
                          labels=None):
    """The plan with the lowest *predicted* mismatch whose cost fits a budget
    (with ``labels``, the class ids of the gains' examples: the lowest
    predicted accuracy drop, :func:`tfprec.planning.predict.predicted_accuracy_drop`,
    in ``info["predicted_accuracy_drop"]``).

    The dual of ``cost_aware_plan(..., criterion="predicted")``: minimizes
    :func:`tfprec.planning.predict.predicted_mismatch` (probability; an
    estimate, not a bound) subject to the plan's cost <= ``budget``, bits
    in 2..``max_bits`` per tensor, with no evaluation of the model:

    1. greedy descent from every tensor at ``max_bits``: remove, one at a
       time, the bit (one tensor, one bit; an input tensor several layers
       read is one quantizer and its readers move together) with the
       smallest increase of the prediction per unit of cost saved, until
       the plan fits;
    2. local search from that plan and from the uniform plan that fits with
       the lowest prediction: the best exchange (one tensor +1 bit alone,
       or +1 bit on one tensor and -1 or -2 bits on another) that still
       fits and lowers the prediction, repeated until none does.

    The lower of the two results is returned, so the plan is never
    predicted worse than any uniform plan that fits.  The prediction is
    the search model :class:`tfprec.planning.predict.PredictedMismatch`
    (updated incrementally; a weight move is a table lookup).

    Args:
      gains: :class:`tfprec.NoiseGains` from ``noise_gains(...,
        per_class=True)``.
      budget: cost limit, full adders per example ("compute") or bits
        ("memory").
      cost: the cost kind of ``budget`` (METHOD.md section 4).
      max_bits: no tensor above this many bits (2..16).
      form, model: the prediction's form and model (None: the predictor's
        defaults, ``predict.DEFAULT_FORM`` / ``predict.DEFAULT_MODEL``).

    Returns:
      A :class:`tfprec.PrecisionPlan`, method
      ``"cost_aware_predicted_budget:<cost>"``; ``info["budget"]`` is the
      budget, ``info["predicted_mismatch"]`` the plan's prediction
      (probability), ``info["prediction_form"]`` / ``["prediction_model"]``
      the prediction used, ``info["cost_budget"]`` {"budget", "cost",
      "bound_target": None}.

    Raises:
      UnattainableTargetError: even every tensor at 2 bits costs more than
        the budget.
      PlanError: gains without per-class data, bad budget, cost kind,
        max_bits, form or model.
    """
    rules_lib.check_gains(gains)
    cost = cost_kind(cost)
    budget = _budget(budget, cost)
    max_bits = check_bits("max_bits", max_bits)
    form = predict._check_form(predict.DEFAULT_FORM if form is None else form)
    model = predict._check_model(predict.DEFAULT_MODEL if model is None else model)
    pm = predict._model(gains, form, model, labels)
    n = len(gains.layers)
    lead = rules_lib._leads(gains)
    group = search.members(lead)
    tabs = cost_lib.cost_tables(gains.layers, cost)
    limit = budget * (1 + 1e-12)
    low = np.full(n, MIN_BITS)
    min_cost = search.total_cost(tabs, low, low)
    if min_cost > limit:
        unit = cost_unit(cost)
        raise UnattainableTargetError(
            f"budget {budget:.6g} {unit} is below the cheapest plan "
            f"({min_cost:.6g} {unit}: every tensor at {MIN_BITS} bits).")
    top = np.full(n, max_bits)
    starts = [_budget_descent(pm, tabs, top, top, limit, lead, group)]
    fit = [b for b in range(MIN_BITS, max_bits + 1)
           if search.total_cost(tabs, np.full(n, b), np.full(n, b)) <= limit]
    uni = min(fit, key=lambda b: (pm.value(np.full(n, b), np.full(n, b)), -b))
    starts.append((np.full(n, uni), np.full(n, uni)))
    results = [_budget_exchange(pm, tabs, bw, ba, limit, max_bits, lead, group)
               for bw, ba in starts]
    bw, ba, value = min(results, key=lambda r: r[2])
    info = {"budget": budget, "predicted_mismatch": float(value),
            "prediction_form": form, "prediction_model": model,
            "cost_budget": {"budget": budget, "cost": cost, "bound_target": None}}
    if labels is not None:
        info["predicted_accuracy_drop"] = float(value)
        info["predicted_mismatch"] = predict._model(gains, form, model).value(bw, ba)
    plan = rules_lib.plan_from_gains(
        gains, bw, ba, f"{PREDICTED_BUDGET_METHOD}:{cost}", None, info)
    if plan.cost().total(cost) > limit:  # pragma: no cover - tables are plan totals
        raise PlanError(f"internal: the plan costs {plan.cost().total(cost):.6g} "
                        f"{cost_unit(cost)}, over the budget {budget:.6g}")
    return plan


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
