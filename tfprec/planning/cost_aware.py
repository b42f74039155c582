"""Cost-aware plans: the cheapest bits whose mismatch bound meets a target.

* :func:`cost_aware_plan`: subject to the paper's bound
  sum_T 4^(1-B_T) G_T <= target (probability);
* :func:`per_example_cost_aware_plan`: subject to the per-example bound
  :func:`per_example_bound` <= target.

Costs are METHOD.md section 4's (:mod:`tfprec.planning.cost`): full adders
("compute") or bits ("memory").
"""
from __future__ import annotations

import numpy as np

from tfprec.errors import PlanError, UnattainableTargetError
from tfprec.fixedpoint import MAX_BITS, MIN_BITS, check_bits
from tfprec.planning import cost as cost_lib
from tfprec.planning import predict, search
from tfprec.planning.plan import DEFAULT_TARGET, PrecisionPlan, bit_arrays
from tfprec import inputs
from tfprec.planning.rules import (_check_target, _gain_arrays, _leads,
                                   check_gains, plan_from_gains,
                                   icml2017_plan, paper_plan, uniform_plan)

# The knapsack keeps this relative margin under the target so that the
# bound summed in another order (plan.bound()) still meets it.
_SUM_MARGIN = 1e-12


def _bits_of(plan) -> tuple:
    """(B_W, B_A) arrays of ``plan``; a layer without an activation format
    (act_bits None) gets a placeholder (:func:`~tfprec.planning.plan.bit_arrays`)."""
    return bit_arrays(plan.layers)


def _uniform_starts(model, n: int, max_bits: int, target: float, what: str) -> list:
    """Descent starts under a search model (value(bw, ba), a probability):
    every tensor at ``max_bits`` and the cheapest uniform plan meeting
    ``target``; UnattainableTargetError when even ``max_bits`` misses it."""
    top = np.full(n, max_bits)
    if model.value(top, top) > target:
        raise UnattainableTargetError(
            f"even {max_bits} bits for every tensor gives a {what} "
            f"of {model.value(top, top):.3g} > target {target:.3g}.")
    starts = [(top, top)]
    for b in range(MIN_BITS, max_bits + 1):
        u = np.full(n, b)
        if model.value(u, u) <= target:
            starts.append((u, u))
            break
    return starts


def _cheapest_of(tabs, model, starts, step) -> tuple:
    """The cheapest (then lowest-valued under ``model``) of ``step(bw, ba)``
    applied to each start (``step``: a descent or local search of
    :mod:`tfprec.planning.search`)."""
    results = []
    for bw, ba in starts:
        bw2, ba2 = step(bw, ba)
        results.append((search.total_cost(tabs, bw2, ba2), model.value(bw2, ba2),
                        bw2, ba2))
    results.sort(key=lambda r: (r[0], r[1]))
    return results[0][2], results[0][3]


def _knapsack(tabs, gw, ga, target: float, max_bits: int):
    """Exact cheapest per-layer (B_W, B_A) with bound <= target when no input
    tensor is shared (:func:`tfprec.planning.search.mckp`); None if none.

    A layer whose cost is a sum of a weight part and an activation part (the
    representational cost) gives two groups of 15 options instead of one of
    225: the same problem, solved faster."""
    b = np.arange(MIN_BITS, max_bits + 1)
    pw = 4.0 ** (1 - b.astype(float))
    grids = [t[np.ix_(b, b)] for t in tabs]
    if all(np.array_equal(t, t[:, :1] + t[:1, :] - t[0, 0]) for t in grids):
        values = [part for t in grids for part in (t[:, 0], t[0, :] - t[0, 0])]
        weights = [part for w, a in zip(gw, ga) for part in (w * pw, a * pw)]
        pick = search.mckp(values, weights, target * (1 - _SUM_MARGIN))
        return None if pick is None else (b[pick[0::2]], b[pick[1::2]])
    values = grids
    weights = [w * pw[:, None] + a * pw[None, :] for w, a in zip(gw, ga)]
    pick = search.mckp(values, weights, target * (1 - _SUM_MARGIN))
    if pick is None:
        return None
    rows, cols = np.divmod(np.array(pick), b.size)
    return b[rows], b[cols]


CRITERIA = ("analytic", "predicted")


def cost_aware_plan(gains, target: float = DEFAULT_TARGET, cost: str = "compute",
                    max_bits: int = MAX_BITS,
                    memory_convention: str = "written",
                    criterion: str = "analytic", labels=None) -> PrecisionPlan:
    """Cheapest plan found whose analytic bound meets ``target``.

    ``criterion="predicted"``: instead, the cheapest plan found whose
    *predicted* mismatch (:func:`tfprec.planning.predict.predicted_mismatch`,
    an estimate, not a bound; needs ``noise_gains(..., per_class=True)``)
    meets ``target``: :func:`predicted_cost_aware_plan`,
    method ``"cost_aware_predicted:<cost>"``; with ``labels`` (the class
    ids of the gains' examples) the target is a *predicted accuracy drop*
    (:func:`tfprec.planning.predict.predicted_accuracy_drop`, a fraction:
    0.005 for 0.5 percentage points).  The default ``"analytic"`` is
    described below.

    Minimizes the computational cost (``cost="compute"``, full adders) or the
    representational cost (``cost="memory"``, bits, inputs counted by
    ``memory_convention``, see :mod:`tfprec.planning.cost`) subject to
    sum_T 4^(1-B_T) G_T <= target (probability), B_T in [2, max_bits] bits.

    When no two layers share an input tensor the problem is a
    multiple-choice knapsack over the layers' (B_W, B_A) pairs, solved
    exactly (:func:`tfprec.planning.search.mckp`).  Otherwise (and as extra
    candidates) the paper's, the uniform and the all-``max_bits`` plans are
    improved by a greedy descent that removes the bit with the best cost
    saved per bound added while the target holds, and a local search that
    raises one tensor by a bit and descends again while that helps (a
    shared input tensor's readers move together).  The cheapest candidate
    is returned, so the result never costs more than the paper's plan at
    the same target.

    Raises:
      UnattainableTargetError: even max_bits everywhere misses the target.
      PlanError: bad target, cost kind, criterion or max_bits (an int in
        2..16); criterion "predicted" with gains lacking per-class data.
    """
    if not isinstance(criterion, str) or criterion not in CRITERIA:
        raise PlanError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
    if criterion == "predicted":
        return predicted_cost_aware_plan(gains, target, cost, max_bits,
                                         memory_convention, labels=labels)
    if labels is not None:
        raise PlanError("labels are for criterion='predicted' (the predicted "
                        "accuracy drop); the analytic bound takes none")
    return cost_aware_at_level(gains, _check_target(target), cost, max_bits,
                               memory_convention)


def _level(target) -> float:
    return inputs.positive_number("target", target, unit="probability (a bound "
                                  "level, may exceed 1)", error=PlanError)


def _check_cost_args(cost, memory_convention):
    inputs.choice("cost", cost, cost_lib.COST_KINDS, error=PlanError)
    inputs.choice("memory_convention", memory_convention,
                  cost_lib.MEMORY_CONVENTIONS, error=PlanError)


def cost_aware_at_level(gains, target: float, cost: str = "compute",
                        max_bits: int = MAX_BITS,
                        memory_convention: str = "written") -> PrecisionPlan:
    """:func:`cost_aware_plan` (analytic criterion) at a bound *level*
    ``target`` > 0 that may exceed 1.

    The level searches (:mod:`tfprec.planning.budget`,
    :mod:`tfprec.planning.calibrate`) use the bound target only as a knob
    that orders plans from precise to cheap, up to the bound of the
    all-2-bit plan (often above 1); a user's target is a probability and
    goes through :func:`cost_aware_plan`, which refuses targets above 1.
    """
    check_gains(gains)
    target = _level(target)
    max_bits = check_bits("max_bits", max_bits)
    _check_cost_args(cost, memory_convention)
    gw, ga = _gain_arrays(gains)
    bound = search.AnalyticBound(gw, ga)
    n = len(gw)
    top = np.full(n, max_bits)
    if bound.value(top, top) > target:
        raise UnattainableTargetError(
            f"even {max_bits} bits for every tensor gives a bound of "
            f"{bound.value(top, top):.3g} > target {target:.3g}.")
    tabs = cost_lib.cost_tables(gains.layers, cost, memory_convention)
    lead = _leads(gains)
    cands = [(top, top)]
    for make in (paper_plan, uniform_plan):
        try:
            cands.append(_bits_of(make(gains, min(target, 1.0), max_bits=max_bits)))
        except UnattainableTargetError:
            continue
    if np.all(lead == np.arange(n)):
        knap = _knapsack(tabs, gw, ga, target, max_bits)
        if knap is not None:
            cands.append(knap)
    bw, ba = _cheapest_of(tabs, bound, cands, lambda bw, ba: search.improve(
        tabs, bound, bw, ba, target, max_bits, lead))
    return plan_from_gains(gains, bw, ba, f"cost_aware:{cost}", target)


# ============================================ per-example (clipped) bound
def _example_bound(gains) -> search.PerExampleBound:
    """The per-example bound model of ``gains`` (normalized per-example
    gains [N, L], a shared input tensor held by its first reader only)."""
    if gains.example_w is None or gains.example_a is None:
        raise PlanError("the per-example bound needs gains computed with "
                        "noise_gains(..., per_example=True)")
    rw2 = np.array([g.r_w ** 2 for g in gains.layers])
    ra2 = np.array([g.r_a ** 2 for g in gains.layers])
    lead = _leads(gains)
    sa = gains.example_a * ra2 * (lead == np.arange(len(lead)))
    return search.PerExampleBound(gains.example_w * rw2, sa)


def per_example_bound(plan: PrecisionPlan, gains) -> float:
    """Per-example mismatch bound: mean_x min(1, sum_T 4^(1-B_T) G_T(x)).

    The paper's argument bounds each example's flip probability by
    sum_T Delta_T^2 e_T(x); a probability is also at most 1, so the mean of
    the per-example bounds capped at 1 is a valid bound too, never above
    ``plan.bound()`` and much tighter when a few near-tied examples dominate
    the gains.  Needs ``noise_gains(..., per_example=True)``.
    """
    check_gains(gains)
    if not isinstance(plan, PrecisionPlan):
        raise PlanError(f"plan must be a tfprec PrecisionPlan, got "
                        f"{type(plan).__name__}")
    if [l.name for l in gains.layers] != plan.names:
        raise PlanError(f"plan layers {plan.names} do not match the gains' "
                        f"layers {[l.name for l in gains.layers]}")
    return _example_bound(gains).value(*_bits_of(plan))


def per_example_cost_aware_plan(gains, target: float = DEFAULT_TARGET,
                                cost: str = "compute", max_bits: int = MAX_BITS,
                                memory_convention: str = "written") -> PrecisionPlan:
    """Cheapest plan found whose *per-example* bound meets ``target``.

    Like :func:`cost_aware_plan`, with the constraint
    :func:`per_example_bound` <= target (probability) instead of the
    paper's bound.  Starts from every plan of :func:`cost_aware_plan` and
    :func:`uniform_plan` that meets the per-example target (the paper's
    bound is never below it) and removes bits greedily while it holds.
    Needs ``noise_gains(..., per_example=True)``.
    """
    return per_example_at_level(gains, _check_target(target), cost, max_bits,
                                memory_convention)


def per_example_at_level(gains, target: float, cost: str = "compute",
                         max_bits: int = MAX_BITS,
                         memory_convention: str = "written") -> PrecisionPlan:
    """:func:`per_example_cost_aware_plan` at a bound level ``target`` > 0
    that may exceed 1 (for the level searches; see
    :func:`cost_aware_at_level`)."""
    check_gains(gains)
    target = _level(target)
    max_bits = check_bits("max_bits", max_bits)
    _check_cost_args(cost, memory_convention)
    bound = _example_bound(gains)
    n = len(gains.layers)
    lead = _leads(gains)
    tabs = cost_lib.cost_tables(gains.layers, cost, memory_convention)
    starts = _uniform_starts(bound, n, max_bits, target, "per-example bound")
    try:
        starts.append(_bits_of(cost_aware_at_level(gains, target, cost, max_bits,
                                                   memory_convention)))
    except UnattainableTargetError:
        pass
    bw, ba = _cheapest_of(tabs, bound, starts, lambda bw, ba: search.descend(
        tabs, bound, bw, ba, target, lead))
    value = bound.value(bw, ba)
    return plan_from_gains(gains, bw, ba, f"cost_aware_pe:{cost}", target,
                           {"per_example_bound": value})


PLAN_METHODS = ("paper", "cost_aware", "uniform", "icml2017", "cost_aware_predicted")


def make_plan(gains, method: str = "paper", target: float = DEFAULT_TARGET,
              cost: str = "compute", max_bits: int = MAX_BITS) -> PrecisionPlan:
    """The plan of ``method`` that meets the analytic ``target``.

    Args:
      gains: :class:`tfprec.NoiseGains`.
      method: one of ``PLAN_METHODS``.
      target: bound on the mismatch probability.
      cost: "compute" or "memory", for the cost-aware methods.
        ``"cost_aware_predicted"`` meets ``target`` with the *predicted*
        mismatch (``cost_aware_plan(..., criterion="predicted")``; gains from
        ``noise_gains(..., per_class=True)``), an estimate, not a bound.
      max_bits: largest bit-width allowed for any tensor (bits, at most 16).
    """
    if method == "paper":
        return paper_plan(gains, target, max_bits=max_bits)
    if method == "cost_aware":
        return cost_aware_plan(gains, target, cost=cost, max_bits=max_bits)
    if method == "cost_aware_predicted":
        return cost_aware_plan(gains, target, cost=cost, max_bits=max_bits,
                               criterion="predicted")
    if method == "uniform":
        return uniform_plan(gains, target, max_bits=max_bits)
    if method == "icml2017":
        return icml2017_plan(gains, target, max_bits=max_bits)
    raise PlanError(f"unknown plan method {method!r}; choose one of {PLAN_METHODS}")


# ============================================ predicted mismatch
def _linearized_start(gains, model, bw, ba, target, cost, max_bits, memory_convention):
    """Bits of the knapsack on the tangent plane of the prediction at
    (bw, ba), capacity shrunk until the prediction meets ``target``."""
    gw, ga = model.gradient(bw, ba)
    lead = _leads(gains)
    ga = ga * (lead == np.arange(len(lead)))
    if not (np.all(np.isfinite(gw)) and np.all(np.isfinite(ga))) or gw.sum() + ga.sum() <= 0:
        return None
    p0 = model.value(bw, ba)
    u_w, u_a = 4.0 ** (1 - bw.astype(float)), 4.0 ** (1 - ba.astype(float))
    cap = target - p0 + float(gw @ u_w + ga @ u_a)
    # no shared input tensor: the linear problem is the knapsack itself
    tabs = (cost_lib.cost_tables(gains.layers, cost, memory_convention)
            if np.all(lead == np.arange(len(lead))) else None)
    lin = None if tabs is not None else predict._linearized_gains(gains, gw, ga)
    for _ in range(8):
        if cap <= 0:
            return None
        if tabs is not None:
            b = _knapsack(tabs, gw, ga, min(cap, 1.0), max_bits)
            if b is None:
                return None
        else:
            try:
                b = _bits_of(cost_aware_at_level(lin, min(cap, 1.0), cost, max_bits,
                                                 memory_convention))
            except UnattainableTargetError:
                return None
        if model.value(*b) <= target:
            return b
        cap *= 0.6
    return None


def predicted_cost_aware_plan(gains, target: float = DEFAULT_TARGET,
                              cost: str = "compute", max_bits: int = MAX_BITS,
                              memory_convention: str = "written",
                              form: str = predict.DEFAULT_FORM,
                              model: str = predict.DEFAULT_MODEL,
                              labels=None) -> PrecisionPlan:
    """Cheapest plan found whose *predicted* mismatch meets ``target``
    (with ``labels``, the class ids of the gains' examples: whose predicted
    accuracy drop, a fraction, meets it; ``info["predicted_accuracy_drop"]``).

    Minimizes the computational (full adders) or representational (bits)
    cost subject to :func:`predicted_mismatch` <= ``target`` (probability),
    B_T in [2, max_bits] bits, with no evaluation of the model.  The
    prediction is not additive over tensors, so: the cheapest uniform plan
    meeting the target; knapsack solutions of the prediction linearized
    (tangent plane in u_T = 4^(1-B_T)) at that plan and at the result, each
    capacity shrunk until the real prediction meets the target; then the
    greedy descent of :mod:`tfprec.planning.search` under
    :class:`PredictedMismatch` from every start, and its local search from
    the best.  A shared input tensor's readers move together.  ``model``:
    the prediction model, "shift" (default: known weight shifts, Gaussian
    activation noise; a weight move is a table lookup) or "gaussian".
    Method string ``"cost_aware_predicted:<cost>"``;
    ``info["predicted_mismatch"]`` holds the prediction,
    ``info["prediction_model"]`` the model.  An estimate, not a guarantee: confirm it with
    :func:`tfprec.calibrate` (family ``cost_aware_predicted``).

    Raises:
      PlanError: gains without ``per_class=True``; bad target, cost, form,
        model or max_bits.
      UnattainableTargetError: even max_bits everywhere misses the target.
    """
    target = _check_target(target)
    max_bits = check_bits("max_bits", max_bits)
    form = predict._check_form(form)
    model_name = predict._check_model(model)
    model = predict._model(gains, form, model_name, labels)
    what = "predicted mismatch" if labels is None else "predicted accuracy drop"
    n = len(gains.layers)
    lead = _leads(gains)
    tabs = cost_lib.cost_tables(gains.layers, cost, memory_convention)
    starts = _uniform_starts(model, n, max_bits, target, what)
    point = starts[-1]
    for _ in range(2):                             # two tangent-plane steps
        lin = _linearized_start(gains, model, *point, target, cost, max_bits,
                                memory_convention)
        if lin is None:
            break
        starts.append(lin)
        point = lin
    bw, ba = _cheapest_of(tabs, model, starts, lambda bw, ba: search.descend(
        tabs, model, bw, ba, target, lead))
    bw, ba = search.improve(tabs, model, bw, ba, target, max_bits, lead)
    info = {"prediction_form": form, "prediction_model": model_name}
    if labels is None:
        info["predicted_mismatch"] = model.value(bw, ba)
    else:
        info["predicted_accuracy_drop"] = model.value(bw, ba)
        info["predicted_mismatch"] = predict._model(gains, form, model_name).value(bw, ba)
    return plan_from_gains(gains, bw, ba, f"{predict.METHOD}:{cost}", target, info)
