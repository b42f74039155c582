"""Calibrated plans: the cheapest plan that meets a *measured* target.

The analytic bound p_m <= sum_T 4^(1-B_T) G_T (METHOD.md section 2) is a
valid upper bound but a loose one (on the paper's CIFAR-10 network it reads
~14 where the measured mismatch is 3.4 %; on tfprec's VGG, 47 where 1.4 % is
measured), so choosing a plan by "bound <= 1 %" over-provisions.
:func:`calibrate` keeps the analysis for what it is good at, the *shape* of a
plan, and measures only the *level*.  Families (shape; level searched):

* ``paper``: offsets b_T of the ICASSP 2018 rule; level B_min (bits);
* ``uniform``: every tensor equal; level B (bits);
* ``icml2017``: B_W - B_A = round(log2 sqrt(sum G_W / sum G_A)); level B_A;
* ``cost_aware``: :func:`~tfprec.planning.plan.cost_aware_plan` for the chosen cost;
  level: the bound target t it is built for (log-spaced grid);
* ``measured_greedy`` (optional): the calibrated ``cost_aware`` plan, then
  bits removed one at a time while the measured target holds (see below);
* ``cost_aware_predicted`` (optional; gains from ``noise_gains(...,
  per_class=True)``): the cheapest plan whose *predicted* mismatch
  (:mod:`tfprec.planning.predict`) meets t, on the grid t_k = target x
  2^(k / 4) (k = -32 .. 16, the cost-aware grid's resolution), searched
  outward from t = target: the prediction's plan is measured first, then
  levels 1, 2, 4, ... steps cheaper after a pass (the prediction was
  conservative) or more precise after a miss, then bisection of the
  bracket (about 2 log2(d + 1) + 1 evaluations for an answer d levels from
  the prediction).  Level: the predicted target t.

For every family the levels are ordered from the most precise (largest bits,
smallest t) to the cheapest, and a bisection over that order finds the
cheapest level whose fake-quant model (:func:`tfprec.validate.quant_decisions`)
meets the measured target on held-out data: at most ceil(log2(K + 1))
fake-quant evaluations for K levels (4 for uniform's 15 levels, 7 for the 113-point
cost-aware grid).  The bisection assumes the measured value falls (weakly)
with precision, which holds up to sampling noise; if it is not monotone the
result is a boundary of the measured curve, not necessarily the global
cheapest level, but it always meets the target, because it was evaluated.

``cost_aware`` levels: t_k = bound(every tensor at 16 bits) * 2^(k / 4),
k = 0 .. K, up to bound(every tensor at 2 bits) (4 points per octave of the
bound; one bit of one tensor moves its term by two octaves).  Plans are built
only at the probed points.

``measured_greedy`` (optional, not in the default ``methods``): starts from
the calibrated ``cost_aware`` plan and repeatedly tries to remove one bit from
the tensor whose bit saves the most cost; a move is kept if the measured
target still holds, otherwise that tensor is frozen.  At most
``greedy_budget`` extra evaluations (each frozen tensor costs one failed
evaluation, so it ends after at most accepted moves + 2 x layers of them).
Its ``evaluations`` include those of the ``cost_aware`` search it starts
from.  It selects on the held-out data far more than a one-scalar search
does, so its measured mismatch is optimistically biased; confirm it on data
it was not selected on (``benchmarks/calibrated.py`` does).

Targets (exactly one):

* ``target_mismatch=p``: fraction of held-out examples whose fake-quant
  decision differs from the float decision <= p (no labels needed);
* ``max_accuracy_drop=d``: float accuracy - fake-quant accuracy <= d
  percentage points on the held-out labels.  Since every changed decision
  costs at most one correct answer, accuracy drop <= mismatch, so the
  analytic guarantee for this target is bound <= d / 100.  The drop is a
  difference of two counts (examples the fake-quant model breaks minus those
  it fixes), so it is noisy: its standard error is reported
  (``accuracy_drop_se_pp``); with N = 5000 and 1 % mismatch it is ~0.14 pp,
  more than a 0.1 pp target.  A mismatch target is far less noisy (it only
  counts changes) and close to monotone in the level; prefer it when the two
  can be traded.

Held-out data: ``x_val`` (and ``y_val``) must NOT be the examples the noise
gains were computed on, nor the training set; use a validation or test
split.  The float decisions on ``x_val`` are computed once and reused by
every evaluation; identical plans are evaluated once (cached by bits): both
by :class:`tfprec.planning.evaluate.Evaluator`.  The bisection is
:func:`tfprec.planning.budget.cheapest_feasible`.

Confidence: every candidate reports the measured mismatch k / n with a
one-sided Clopper-Pearson upper confidence limit (:func:`clopper_pearson_upper`)
and the analytic bound of the same plan.  The ``guarantee`` field says which
guarantee holds: ``"analytic bound <= p"`` only when plan.bound() <= p;
otherwise a *measured* statement ``"measured on N held-out examples: mismatch
<= UCL at 95%"``.  The limit is for a plan fixed in advance; the level was
itself chosen on the same examples, so read it as a careful summary of the
measurement, not as a certificate.  A measured plan is never called
guaranteed.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Callable, Optional, Sequence

from tfprec import inputs
from tfprec.errors import InvalidDataError, PlanError, UnattainableTargetError
from tfprec.fixedpoint import MAX_BITS, MIN_BITS, check_bits
from tfprec.planning import budget as budget_lib
from tfprec.planning import cost as cost_lib
from tfprec.planning import plan as plan_lib
from tfprec.planning import rules as rules_lib
from tfprec.planning import cost_aware as cost_aware_lib
from tfprec.planning import predict as predict_lib
from tfprec.planning.evaluate import (CalibratedPlan,  # noqa: F401  (result types)
                                      CalibrationResult, Evaluator, Measurement,
                                      _describe)
from tfprec.planning.rules import level_text
from tfprec.statistics import sanity

FAMILIES = ("cost_aware", "paper", "uniform", "icml2017", "measured_greedy",
            "cost_aware_predicted")
DEFAULT_METHODS = ("cost_aware", "paper", "uniform")
GRID_PER_OCTAVE = 4
GREEDY_BUDGET = 40


# ================================================================ confidence
def clopper_pearson_upper(k: int, n: int, confidence: float = 0.95) -> float:
    """One-sided Clopper-Pearson upper confidence limit of a binomial rate.

    The largest rate u not rejected by the exact one-sided binomial test of
    "rate < u" at level 1 - ``confidence``: P(Binomial(n, u) <= k) =
    1 - confidence (the upper end of the two-sided exact interval at level
    2 confidence - 1); 1 when k == n, 1 - (1 - confidence)^(1/n) when k == 0.
    Computed by :func:`scipy.stats.binomtest`.

    Args:
      k: observed events (mismatches), 0 <= k <= n.
      n: trials (held-out examples), n >= 1.
      confidence: one-sided level in (0, 1), e.g. 0.95.

    Raises:
      InvalidDataError: k, n or confidence out of range.
    """
    from scipy.stats import binomtest

    n = inputs.positive_int("n", n)
    k = inputs.nonnegative_int("k", k)
    if k > n:
        raise InvalidDataError(f"need 0 <= k <= n, got k={k}, n={n}")
    confidence = _check_confidence(confidence)
    res = binomtest(k, n, alternative="less")
    return float(res.proportion_ci(confidence_level=confidence, method="exact").high)


def _check_confidence(confidence) -> float:
    c = inputs.probability("confidence", confidence)
    if c >= 1.0:
        raise InvalidDataError(f"confidence must be a number in (0, 1), got "
                               f"{confidence!r}")
    return c


# ================================================================ search
class _Family:
    """Levels of one family, most precise first, with lazily built plans."""

    def __init__(self, name: str, levels: Sequence, make: Callable):
        self.name = name
        self.levels = list(levels)
        self._make = make
        self._plans = {}

    def plan(self, i: int):
        if i not in self._plans:
            self._plans[i] = self._make(self.levels[i])
        return self._plans[i]


def _int_family(gains, name: str, max_bits: int) -> _Family:
    return _Family(name, budget_lib.rule_levels(gains, name, max_bits),
                   lambda b: budget_lib.rule_plan(gains, name, b, max_bits))


def _cost_aware_family(gains, cost: str, max_bits: int, per_octave: int) -> _Family:
    """Cost-aware plans indexed by their bound target t.

    With per-example gains (``noise_gains(..., per_example=True)``) the
    shape is that of :func:`~tfprec.planning.plan.per_example_cost_aware_plan` and t
    is a per-example bound target, which ranks tensors by their effect on
    typical examples rather than on the few near-tied ones that dominate
    the paper's bound; otherwise :func:`~tfprec.planning.plan.cost_aware_plan`.
    """
    if gains.example_w is not None:
        def bound_at(b):
            p = rules_lib.uniform_plan(gains, bits=b, max_bits=max_bits)
            return cost_aware_lib.per_example_bound(p, gains)
        make = lambda t: cost_aware_lib.per_example_at_level(
            gains, t, cost=cost, max_bits=max_bits)
    else:
        bound_at = lambda b: rules_lib.uniform_plan(gains, bits=b, max_bits=max_bits).bound()
        make = lambda t: cost_aware_lib.cost_aware_at_level(gains, t, cost=cost,
                                                            max_bits=max_bits)
    lo, hi = bound_at(max_bits), bound_at(MIN_BITS)
    if not (lo > 0 and math.isfinite(hi)) or hi <= lo:
        levels = [max(lo, 1e-300) * (1 + 1e-9)]   # every target: the same plan
    else:
        lo *= 1 + 1e-9       # the all-max_bits plan meets t_0 despite rounding
        k = int(math.ceil(per_octave * math.log2(hi / lo) - 1e-9))
        levels = [lo * 2.0 ** (i / per_octave) for i in range(max(k, 0) + 1)]
    return _Family("cost_aware", levels, make)


@dataclasses.dataclass
class _Found:
    plan: plan_lib.PrecisionPlan
    level: float
    evaluations: int
    trace: list
    measurement: Measurement


def _search(fam: _Family, ev: Evaluator):
    """Cheapest level of ``fam`` meeting the target, or (None, trace)."""
    trace = []
    hits = {}

    def feasible(i):
        m = ev.measure(fam.plan(i))
        ok = ev.meets(m)
        hits[i] = m
        trace.append((fam.levels[i], ev.value(m), ok))
        return ok

    i = budget_lib.cheapest_feasible(len(fam.levels), feasible)
    if i < 0:
        return None, trace
    return _Found(fam.plan(i), fam.levels[i], len(trace), trace, hits[i]), trace


def _greedy(start: _Found, gains, ev: Evaluator, cost: str, max_bits: int,
            budget: int) -> _Found:
    """Measured greedy descent from ``start`` (see the module doc)."""
    plan, meas = start.plan, start.measurement
    trace = list(start.trace)
    frozen = set()
    used = 0
    while used < budget:
        moves = []
        for l in plan.layers:
            base = cost_lib.layer_cost(l, cost)
            for which in ("w", "a"):
                if (l.name, which) in frozen or (which == "a" and l.act_bits is None):
                    continue
                bw, ba = l.weight_bits, l.act_bits
                if (bw if which == "w" else ba) <= MIN_BITS:
                    continue
                lower = cost_lib.layer_cost(
                    l, cost, act_bits=None if ba is None else ba - (which == "a"),
                    weight_bits=bw - (which == "w"))
                moves.append((base - lower, l.name, which))
        moves = [m for m in moves if m[0] > 0]
        if not moves:
            break
        saving, name, which = max(moves, key=lambda m: (m[0], m[1], m[2]))
        lp = plan.layer(name)
        cand = (plan.with_bits(weight_bits={name: lp.weight_bits - 1})
                if which == "w" else plan.with_bits(act_bits={name: lp.act_bits - 1}))
        m = ev.measure(cand)
        used += 1
        ok = ev.meets(m)
        trace.append((f"{name}.{'W' if which == 'w' else 'A'}-1", ev.value(m), ok))
        if ok:
            plan, meas = cand, m
        else:
            frozen.add((name, which))
    plan = dataclasses.replace(plan, method=f"{start.plan.method}+measured_greedy")
    return _Found(plan, start.level, start.evaluations + used, trace, meas)


#: The cost_aware_predicted grid: predicted targets t_k = p 2^(k / per_octave)
#: from PREDICTED_OCTAVES[0] octaves below the target p to [1] above it.
PREDICTED_OCTAVES = (8, 4)


def _predicted(gains, ev: Evaluator, cost: str, max_bits: int, p: float,
               labels=None, per_octave: int = GRID_PER_OCTAVE):
    """The ``cost_aware_predicted`` family: plans whose predicted mismatch
    (or predicted accuracy drop, with ``labels``) meets t_k = p 2^(k /
    per_octave) (:mod:`tfprec.planning.predict`), the same resolution as
    the cost-aware grid, most precise first.  The search starts at t = p,
    where the prediction meets the target (:func:`budget.cheapest_feasible`
    with ``start``): that plan is measured first (1 evaluation), then steps
    of 1, 2, 4, ... levels towards cheaper plans after a pass (the
    prediction was conservative) or more precise ones after a miss, then
    bisection of the bracket.  A zero target (no decision may change)
    centers the grid on half an example, 1 / (2 n) (predicted targets
    must be positive).  Returns (_Found or None, why)."""
    below, above = PREDICTED_OCTAVES
    p = max(p, 0.5 / ev.n)
    ks = range(-per_octave * below, per_octave * above + 1)
    ts = [min(p * 2.0 ** (k / per_octave), 0.5) for k in ks]
    trace, tried, errors = [], {}, []

    def feasible(i: int) -> bool:
        if i not in tried:
            try:
                plan = cost_aware_lib.cost_aware_plan(gains, ts[i], cost, max_bits,
                                                      criterion="predicted", labels=labels)
            except UnattainableTargetError as e:
                errors.append(str(e))
                tried[i] = (None, None, False)
                return False
            m = ev.measure(plan)
            ok = ev.meets(m)
            trace.append((ts[i], ev.value(m), ok))
            tried[i] = (plan, m, ok)
        return tried[i][2]

    idx = budget_lib.cheapest_feasible(len(ts), feasible, start=per_octave * below)
    if idx < 0:
        last = (f"; at predicted target {trace[-1][0]:.3g} it measures "
                f"{_value_str(ev.kind, trace[-1][1])}" if trace else "")
        why = errors[-1] if errors else "the most precise level missed it"
        return None, (f"no predicted target down to {ts[0]:.3g} met the measured "
                      f"target ({why}){last}")
    plan, m, _ = tried[idx]
    return _Found(plan, ts[idx], len(trace), trace, m), None


# ================================================================ inputs
def _check_target(target_mismatch, max_accuracy_drop, has_labels: bool):
    """(kind, target, target as a probability) of the one target given."""
    if (target_mismatch is None) == (max_accuracy_drop is None):
        raise PlanError("pass exactly one of target_mismatch (fraction of "
                        "decisions that may change) and max_accuracy_drop "
                        "(percentage points)")
    kind, name, v, top, unit = (
        ("mismatch", "target_mismatch", target_mismatch, 1.0, "a fraction")
        if target_mismatch is not None else
        ("accuracy_drop", "max_accuracy_drop", max_accuracy_drop, 100.0,
         "percentage points"))
    if kind == "mismatch":
        v = inputs.probability(name, v, allow_zero=True, error=PlanError)
    elif (isinstance(v, bool) or not isinstance(v, numbers.Real)
            or not 0 <= v <= top):             # NaN fails the comparison
        raise PlanError(f"{name} must be {unit} in [0, {top:g}], got {v!r}")
    if kind == "accuracy_drop" and not has_labels:
        raise InvalidDataError(
            "max_accuracy_drop needs held-out labels: pass y_val, or use "
            "target_mismatch, which needs none")
    return kind, float(v), float(v) / top


# ================================================================ API
def calibrate(model, gains, x_val, y_val=None, *, target_mismatch: Optional[float] = None,
              max_accuracy_drop: Optional[float] = None,
              methods: Sequence[str] = DEFAULT_METHODS, cost: str = "compute",
              batch_size: int = 256, confidence: float = 0.95,
              max_bits: int = MAX_BITS, grid_per_octave: int = GRID_PER_OCTAVE,
              greedy_budget: int = GREEDY_BUDGET,
              max_examples: Optional[int] = None,
              allow_fingerprint_mismatch: bool = False,
              gains_labels=None) -> CalibrationResult:
    """The cheapest plan of each family that meets a measured target.

    Args:
      model: the trained float tf_keras classifier (only read).
      gains: :class:`tfprec.NoiseGains` of ``model`` (they fix each family's
        shape).
      x_val: held-out inputs [N, ...] that were NOT used for the gains (nor
        for training): a validation or test split; a numpy array or a
        tf.data dataset (of inputs, or of (input, label) pairs that also
        give ``y_val``), read once (:func:`tfprec.inputs.as_examples`).
      y_val: their labels (N integer ids or N one-hot rows); needed only for
        ``max_accuracy_drop``, reported when given.
      target_mismatch: measured float/fixed-point decision mismatch rate on
        ``x_val`` must be <= this fraction.
      max_accuracy_drop: float accuracy - fake-quant accuracy on
        (x_val, y_val) must be <= this many percentage points.  Exactly one
        of the two targets.
      methods: families to search, from :data:`FAMILIES`.
      cost: "compute" (full adders) or "memory" (bits): the cost-aware
        family minimizes it and ``best`` is chosen by it.
      batch_size: examples per batch of each pass.
      confidence: one-sided level of the Clopper-Pearson limit.
      max_bits: no tensor above this many bits (<= 16).
      grid_per_octave: cost-aware grid points per factor 2 of the bound.
      greedy_budget: most extra evaluations of ``measured_greedy``.
      allow_fingerprint_mismatch: use ``gains`` although they were computed
        on a model with other weights (``gains.fingerprint`` differs from
        ``model``'s; see :meth:`~tfprec.planning.plan.PrecisionPlan.validate_for`);
        the plans found then carry no fingerprint.
      gains_labels: the class ids of the examples ``gains`` were computed on
        (per-class gains on labelled held-out data), in their order: with
        ``max_accuracy_drop`` the ``cost_aware_predicted`` family then
        plans under the predicted *accuracy drop*
        (:func:`tfprec.planning.predict.predicted_accuracy_drop`) instead
        of the predicted mismatch; ``predict.SOFTMAX`` instead of ids: the
        label-free expected drop under the float softmax.
      max_examples: use at most this many examples of ``x_val`` (a dataset
        is read once and materialized up to this many; an infinite dataset
        needs it, or ``take(n)``; one of unknown cardinality is read to its
        end).  Warnings (TfprecWarning): x_val off the model's input scale,
        one float decision for all, float accuracy on y_val not above chance
        (:mod:`tfprec.statistics.sanity`).

    Returns:
      A :class:`CalibrationResult`: ``best`` and ``candidates``.

    Raises:
      UnattainableTargetError: no family meets the target within max_bits;
        the message names the target and the value measured with every
        tensor at max_bits.
      InvalidDataError: x_val / y_val mis-shaped, empty or not finite;
        max_accuracy_drop without labels.
      PlanError: bad target, method, cost or a gains/model mismatch (other
        layers, or other weights unless ``allow_fingerprint_mismatch``).
    """
    if isinstance(methods, str) or not isinstance(methods, (list, tuple)):
        raise PlanError(f"methods must be a list or tuple of families from "
                        f"{FAMILIES}, got {methods!r}")
    methods = tuple(methods)
    if not methods:
        raise PlanError(f"methods is empty; choose from {FAMILIES}")
    for m in methods:
        if m not in FAMILIES:
            raise PlanError(f"unknown calibration family {m!r}; choose from {FAMILIES}")
    if len(set(methods)) != len(methods):
        raise PlanError(f"methods lists a family twice: {methods}")
    cost = budget_lib.cost_kind(cost)
    confidence = _check_confidence(confidence)
    batch_size = inputs.positive_int("batch_size", batch_size)
    grid_per_octave = inputs.positive_int("grid_per_octave", grid_per_octave)
    greedy_budget = inputs.nonnegative_int("greedy_budget", greedy_budget)
    max_bits = check_bits("max_bits", max_bits)
    rules_lib.check_gains(gains)
    if inputs.flag("allow_fingerprint_mismatch", allow_fingerprint_mismatch,
                   error=PlanError):
        gains = dataclasses.replace(gains, fingerprint=None)
    max_examples = inputs.optional_positive_int("max_examples", max_examples)
    x, y = inputs.as_examples(x_val, y_val, inputs.model_input_shape(model),
                              inputs.model_num_classes(model),
                              dtype=inputs.model_dtype(model), what="x_val",
                              label_what="y_val", max_examples=max_examples)
    sanity.check_input_scale(model, sanity.InputStats.of(x), inputs.raw_dtype(x_val),
                             "x_val")
    kind, target, p = _check_target(target_mismatch, max_accuracy_drop, y is not None)
    top_plan = rules_lib.uniform_plan(gains, bits=max_bits, max_bits=max_bits)
    top_plan.validate_for(model)            # gains of another model: PlanError now

    ev = Evaluator(model, x, y, batch_size, kind, target, what="x_val",
                   label_what="y_val")
    found, unmet = {}, {}
    ca_result = None
    order = [m for m in methods if m != "measured_greedy"]
    if "measured_greedy" in methods and "cost_aware" not in order:
        order.append("cost_aware")          # the greedy starts from it
    drop_labels = None
    if "cost_aware_predicted" in order:       # needs per-class gains: fail early
        predict_lib.class_terms(gains)
        if gains_labels is not None and kind == "accuracy_drop":
            predict_lib.label_columns(gains, gains_labels)      # checked now
            drop_labels = gains_labels
    for m in order:
        if m == "cost_aware_predicted":
            res, why = _predicted(gains, ev, cost, max_bits, p, drop_labels,
                                  grid_per_octave)
            if res is None:
                unmet[m] = why
            else:
                found[m] = res
            continue
        fam = (_cost_aware_family(gains, cost, max_bits, grid_per_octave)
               if m == "cost_aware" else _int_family(gains, m, max_bits))
        if not fam.levels:
            if m in methods:
                unmet[m] = f"no level keeps every tensor within {MIN_BITS}..{max_bits} bits"
            continue
        res, trace = _search(fam, ev)
        if m == "cost_aware":
            ca_result = res
        if m not in methods:
            continue
        if res is None:
            # an all-infeasible bisection ends at index 0, the most precise
            v0 = [v for lev, v, _ in trace if lev == fam.levels[0]][-1]
            unmet[m] = (f"at its most precise level "
                        f"{level_text(m, fam.levels[0])} it measures "
                        f"{_value_str(kind, v0)}")
        else:
            found[m] = res
    if "measured_greedy" in methods:
        if ca_result is None:
            unmet["measured_greedy"] = "its cost_aware start met the target at no level"
        else:
            found["measured_greedy"] = _greedy(ca_result, gains, ev, cost,
                                               max_bits, greedy_budget)

    if not found:
        m16 = ev.measure(top_plan)
        extra = ("" if kind == "mismatch" else
                 f" (mismatch {m16.num_mismatch}/{ev.n})")
        raise UnattainableTargetError(
            f"no plan within {max_bits} bits meets the target "
            f"{_describe(kind, target)} on {ev.n} held-out examples: the best "
            f"measured at {max_bits} bits (every tensor at {max_bits} bits) is "
            f"{_value_str(kind, ev.value(m16))}{extra}; by family: "
            + "; ".join(f"{k}: {v}" for k, v in unmet.items()))

    cands = [_calibrated(method, f, ev, kind, target, p, confidence, gains)
             for method, f in found.items()]
    cands.sort(key=lambda c: (c.cost(cost), c.cost("memory" if cost == "compute"
                                                    else "compute"), c.method))
    return CalibrationResult(
        best=cands[0], candidates=tuple(cands), target_kind=kind, target=target,
        target_probability=p, cost=cost, num_examples=ev.n,
        float_accuracy=None if y is None else ev.float_correct / ev.n,
        total_evaluations=ev.passes, unmet=unmet, confidence=confidence)


def _value_str(kind: str, v: float) -> str:
    return f"mismatch {v:.4g}" if kind == "mismatch" else f"accuracy drop {v:.3g} pp"


def _calibrated(method, f: _Found, ev: Evaluator, kind, target, p,
                confidence, gains) -> CalibratedPlan:
    m = f.measurement
    n = ev.n
    k = m.num_mismatch
    ucl = clopper_pearson_upper(k, n, confidence)
    bound = float(f.plan.bound())
    pe = (cost_aware_lib.per_example_bound(f.plan, gains)
          if getattr(gains, "example_w", None) is not None else None)
    analytic = bound <= p or (pe is not None and pe <= p)
    if bound <= p:
        guarantee = f"analytic bound {bound:.3g} <= {p:g}"
    elif analytic:
        guarantee = f"per-example analytic bound {pe:.3g} <= {p:g}"
    else:
        guarantee = (f"measured on {n} held-out examples: mismatch <= {ucl:.4g} "
                     f"at {100 * confidence:g}% (Clopper-Pearson); the analytic "
                     f"bound {bound:.3g} does not certify {p:g}")
    fa = None if m.num_quant_correct is None else ev.float_correct / n
    qa = None if m.num_quant_correct is None else m.num_quant_correct / n
    drop = None if fa is None else 100.0 * (ev.float_correct - m.num_quant_correct) / n
    se = None
    if fa is not None:
        h, g = m.num_harmed, m.num_helped
        se = 100.0 * math.sqrt(max(h + g - (h - g) ** 2 / n, 0.0)) / n
    costs = f.plan.cost()
    info = dict(f.plan.info)
    info["calibration"] = {
        "family": method, "level": f.level, "target_kind": kind, "target": target,
        "num_examples": n, "num_mismatch": k, "mismatch_ucl": ucl,
        "confidence": confidence, "accuracy_drop_pp": drop,
        "evaluations": f.evaluations, "guarantee": guarantee,
        "per_example_bound": pe}
    plan = dataclasses.replace(f.plan, info=info)
    level = (f.level if method in ("cost_aware", "measured_greedy", "cost_aware_predicted")
             else int(f.level))
    return CalibratedPlan(
        plan=plan, method=method, level=level, evaluations=int(f.evaluations),
        measured_mismatch=k / n, mismatch_ucl=ucl, float_accuracy=fa,
        quant_accuracy=qa, accuracy_drop_pp=drop, bound=bound,
        compute_cost=float(costs.total_compute), memory_cost=float(costs.total_memory),
        num_examples=n, guarantee=guarantee, num_mismatch=k,
        analytic_guarantee=analytic, confidence=confidence, trace=tuple(f.trace),
        accuracy_drop_se_pp=se, per_example_bound=pe)
