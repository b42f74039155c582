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
  bits removed one at a time while the measured target holds (see below).

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
every evaluation; identical plans are evaluated once (cached by bits).

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
from typing import Callable, Optional, Sequence

import numpy as np

from tfprec.planning import cost as cost_lib
from tfprec.planning import plan as plan_lib
from tfprec.quantization import validate as validate_lib
from tfprec.errors import InvalidDataError, PlanError, UnattainableTargetError
from tfprec.fixedpoint import MAX_BITS, MIN_BITS

FAMILIES = ("cost_aware", "paper", "uniform", "icml2017", "measured_greedy")
DEFAULT_METHODS = ("cost_aware", "paper", "uniform")
LEVEL_NAMES = {"paper": "B_min", "uniform": "B", "icml2017": "B_A",
               "cost_aware": "bound target t", "measured_greedy": "bound target t"}
GRID_PER_OCTAVE = 4
GREEDY_BUDGET = 40


# ================================================================ confidence
def clopper_pearson_upper(k: int, n: int, confidence: float = 0.95) -> float:
    """One-sided Clopper-Pearson upper confidence limit of a binomial rate.

    The smallest u such that P(Binomial(n, u) <= k) <= 1 - confidence, i.e.
    the ``confidence`` quantile of Beta(k + 1, n - k); 1 when k == n.  For
    k = 0 it is 1 - (1 - confidence)^(1/n).

    Args:
      k: observed events (mismatches), 0 <= k <= n.
      n: trials (held-out examples), n >= 1.
      confidence: one-sided level in (0, 1), e.g. 0.95.

    Raises:
      InvalidDataError: k, n or confidence out of range.
    """
    from scipy.stats import beta

    if (isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1
            or isinstance(k, bool) or not isinstance(k, (int, np.integer))
            or not 0 <= k <= n):
        raise InvalidDataError(f"need integers 0 <= k <= n and n >= 1, got "
                               f"k={k!r}, n={n!r}")
    _check_confidence(confidence)
    if k == n:
        return 1.0
    return float(beta.ppf(confidence, int(k) + 1, int(n) - int(k)))


def _check_confidence(confidence) -> float:
    if (isinstance(confidence, bool) or not isinstance(confidence, (int, float))
            or not 0.0 < confidence < 1.0):
        raise InvalidDataError(f"confidence must be a number in (0, 1), got "
                               f"{confidence!r}")
    return float(confidence)


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
            f"examples; cheapest by {self.cost} cost: **{self.best.method}**; "
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
                f"| {c.method} | {_fmt_level(c.method, c.level)} | {c.evaluations} | "
                f"{c.compute_cost:.4g} | {c.memory_cost:.4g} | "
                f"{c.cost(self.cost) / base:.3f} | {c.bound:.3g} | "
                f"{c.measured_mismatch:.4f} ({c.num_mismatch}/{c.num_examples}) | "
                f"{c.mismatch_ucl:.4f} | {pct(c.float_accuracy)} | "
                f"{pct(c.quant_accuracy)} | {drop} | {c.guarantee} |")
        for m, why in self.unmet.items():
            lines.append(f"\n{m}: target not met ({why})")
        return "\n".join(lines) + "\n"


def _fmt_level(method: str, level) -> str:
    if method in ("cost_aware", "measured_greedy"):
        return f"t={level:.3g}"
    return f"{LEVEL_NAMES.get(method, 'level')}={int(level)}"


def _describe(kind: str, target: float) -> str:
    if kind == "mismatch":
        return f"measured mismatch vs float <= {target:g}"
    return f"accuracy drop <= {target:g} pp"


# ================================================================ evaluation
@dataclasses.dataclass(frozen=True)
class _Measurement:
    num_mismatch: int
    num_quant_correct: Optional[int]
    num_harmed: Optional[int] = None     # float right, fake-quant wrong
    num_helped: Optional[int] = None     # float wrong, fake-quant right


class _Evaluator:
    """Float decisions once; one cached fake-quant pass per distinct plan."""

    def __init__(self, model, x, y, batch_size, target_kind, target):
        self.model, self.x, self.y = model, x, y
        self.batch_size = batch_size
        self.n = len(x)
        self.fdec = validate_lib.float_decisions(model, x, batch_size)
        self.float_correct = None if y is None else int(np.sum(self.fdec == y))
        self.kind, self.target = target_kind, target
        self.cache = {}
        self.passes = 0
        if target_kind == "mismatch":
            # compare integer counts: k / n <= p  <=>  k <= floor(p n)
            self.allowed = int(math.floor(target * self.n + 1e-9))
        else:
            self.allowed = int(math.floor(target / 100.0 * self.n + 1e-9))

    @staticmethod
    def key(plan):
        return tuple((l.weight_bits, l.act_bits) for l in plan.layers)

    def measure(self, plan) -> _Measurement:
        k = self.key(plan)
        if k not in self.cache:
            qdec = validate_lib.quant_decisions(self.model, plan, self.x,
                                                self.batch_size)
            self.passes += 1
            if self.y is None:
                self.cache[k] = _Measurement(int(np.sum(qdec != self.fdec)), None)
            else:
                fok, qok = self.fdec == self.y, qdec == self.y
                self.cache[k] = _Measurement(
                    int(np.sum(qdec != self.fdec)), int(np.sum(qok)),
                    int(np.sum(fok & ~qok)), int(np.sum(~fok & qok)))
        return self.cache[k]

    def value(self, m: _Measurement) -> float:
        """The measured quantity the target is on (rate, or drop in pp)."""
        if self.kind == "mismatch":
            return m.num_mismatch / self.n
        return 100.0 * (self.float_correct - m.num_quant_correct) / self.n

    def meets(self, m: _Measurement) -> bool:
        if self.kind == "mismatch":
            return m.num_mismatch <= self.allowed
        return self.float_correct - m.num_quant_correct <= self.allowed


# ================================================================ search
def cheapest_feasible(num_levels: int, feasible: Callable[[int], bool]) -> int:
    """Bisection over levels ordered from most precise (0) to cheapest.

    Assumes ``feasible`` is monotone (True up to some index, False after).
    Returns the largest feasible index, or -1 if none is; calls ``feasible``
    ceil(log2(num_levels + 1)) times.
    """
    lo, hi = -1, int(num_levels)       # lo: feasible sentinel, hi: infeasible
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if feasible(mid):
            lo = mid
        else:
            hi = mid
    return lo


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
    if name == "paper":
        ow, oa = plan_lib.paper_offsets(gains)
        top = max_bits - int(max(ow.max(), oa.max()))
        levels = range(top, MIN_BITS - 1, -1)
        make = lambda b: plan_lib.paper_plan(gains, b_min=b, max_bits=max_bits)
    elif name == "uniform":
        levels = range(max_bits, MIN_BITS - 1, -1)
        make = lambda b: plan_lib.uniform_plan(gains, bits=b, max_bits=max_bits)
    else:  # icml2017
        d = plan_lib.icml2017_offset(gains)
        levels = range(max_bits - max(d, 0), MIN_BITS - min(d, 0) - 1, -1)
        make = lambda b: plan_lib.icml2017_plan(gains, act_bits=b, max_bits=max_bits)
    return _Family(name, list(levels), make)


def _cost_aware_family(gains, cost: str, max_bits: int, per_octave: int) -> _Family:
    """Cost-aware plans indexed by their bound target t.

    With per-example gains (``noise_gains(..., per_example=True)``) the
    shape is that of :func:`~tfprec.planning.plan.per_example_cost_aware_plan` and t
    is a per-example bound target, which ranks tensors by their effect on
    typical examples rather than on the few near-tied ones that dominate
    the paper's bound; otherwise :func:`~tfprec.planning.plan.cost_aware_plan`.
    """
    n = len(gains.layers)
    if gains.example_w is not None:
        def bound_at(b):
            p = plan_lib.uniform_plan(gains, bits=b, max_bits=max_bits)
            return plan_lib.per_example_bound(p, gains)
        make = lambda t: plan_lib.per_example_cost_aware_plan(
            gains, t, cost=cost, max_bits=max_bits)
    else:
        bound_at = lambda b: plan_lib.uniform_plan(gains, bits=b, max_bits=max_bits).bound()
        make = lambda t: plan_lib.cost_aware_plan(gains, t, cost=cost, max_bits=max_bits)
    lo, hi = bound_at(max_bits), bound_at(MIN_BITS)
    if not (lo > 0 and math.isfinite(hi)) or hi <= lo:
        levels = [max(lo, 1e-300) * (1 + 1e-9)]   # every target: the same plan
    else:
        lo *= 1 + 1e-9       # the all-max_bits plan meets t_0 despite rounding
        k = int(math.ceil(per_octave * math.log2(hi / lo) - 1e-9))
        levels = [lo * 2.0 ** (i / per_octave) for i in range(max(k, 0) + 1)]
    del n
    return _Family("cost_aware", levels, make)


@dataclasses.dataclass
class _Found:
    plan: plan_lib.PrecisionPlan
    level: float
    evaluations: int
    trace: list
    measurement: _Measurement


def _search(fam: _Family, ev: _Evaluator):
    """Cheapest level of ``fam`` meeting the target, or (None, trace)."""
    trace = []
    hits = {}

    def feasible(i):
        m = ev.measure(fam.plan(i))
        ok = ev.meets(m)
        hits[i] = m
        trace.append((fam.levels[i], ev.value(m), ok))
        return ok

    i = cheapest_feasible(len(fam.levels), feasible)
    if i < 0:
        return None, trace
    return _Found(fam.plan(i), fam.levels[i], len(trace), trace, hits[i]), trace


def _greedy(start: _Found, gains, ev: _Evaluator, cost: str, max_bits: int,
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
                if (l.name, which) in frozen:
                    continue
                bw, ba = l.weight_bits, l.act_bits
                if (bw if which == "w" else ba) <= MIN_BITS:
                    continue
                lower = cost_lib.layer_cost(
                    l, cost, act_bits=ba - (which == "a"),
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


# ================================================================ inputs
def _check_x(model, x_val) -> np.ndarray:
    if x_val is None or isinstance(x_val, (list, tuple)) or not hasattr(x_val, "shape"):
        raise InvalidDataError(
            "x_val must be one numpy array [N, ...] of held-out inputs, got "
            f"{type(x_val).__name__}")
    x = np.asarray(x_val)
    want = tuple(model.inputs[0].shape[1:])
    if x.ndim < 1 or tuple(x.shape[1:]) != want:
        raise InvalidDataError(
            f"x_val has shape {tuple(x.shape)} (per-example shape "
            f"{tuple(x.shape[1:])}) but model '{model.name}' takes examples of "
            f"shape {want}; pass x_val as [N, {', '.join(map(str, want))}]")
    if x.dtype.kind not in "fiub":
        raise InvalidDataError(f"x_val has dtype {x.dtype}; it must hold numbers")
    if len(x) == 0:
        raise InvalidDataError("x_val is empty: calibration needs held-out examples")
    x = x.astype(model.inputs[0].dtype.as_numpy_dtype, copy=False)
    if not np.all(np.isfinite(x)):
        raise InvalidDataError("x_val contains NaN or Inf")
    return x


def _check_y(y_val, n: int, num_classes: int) -> Optional[np.ndarray]:
    if y_val is None:
        return None
    y = np.asarray(y_val)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    elif y.ndim == 2 and y.shape[1] == num_classes:   # one-hot / probabilities
        y = y.argmax(axis=1)
    if y.ndim != 1 or y.shape[0] != n:
        raise InvalidDataError(
            f"y_val has shape {tuple(y.shape)} but x_val has {n} examples; pass "
            f"{n} integer labels (or {n} one-hot rows of {num_classes})")
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise InvalidDataError("y_val must hold integer class ids")
    elif y.dtype.kind not in "iu":
        raise InvalidDataError(f"y_val has dtype {y.dtype}; labels must be integers")
    y = y.astype(np.int64)
    if y.min() < 0 or y.max() >= num_classes:
        raise InvalidDataError(
            f"y_val has labels in {int(y.min())}..{int(y.max())}; the model has "
            f"{num_classes} classes (0..{num_classes - 1})")
    return y


def _check_target(target_mismatch, max_accuracy_drop, has_labels: bool):
    if (target_mismatch is None) == (max_accuracy_drop is None):
        raise PlanError("pass exactly one of target_mismatch (fraction of "
                        "decisions that may change) and max_accuracy_drop "
                        "(percentage points)")
    num = lambda v: (not isinstance(v, bool) and isinstance(v, (int, float, np.floating))
                     and math.isfinite(v))
    if target_mismatch is not None:
        if not num(target_mismatch) or not 0 <= target_mismatch <= 1:
            raise PlanError(f"target_mismatch must be a fraction in [0, 1], got "
                            f"{target_mismatch!r}")
        return "mismatch", float(target_mismatch), float(target_mismatch)
    if not num(max_accuracy_drop) or not 0 <= max_accuracy_drop <= 100:
        raise PlanError(f"max_accuracy_drop must be in [0, 100] percentage "
                        f"points, got {max_accuracy_drop!r}")
    if not has_labels:
        raise InvalidDataError(
            "max_accuracy_drop needs held-out labels: pass y_val, or use "
            "target_mismatch, which needs none")
    return "accuracy_drop", float(max_accuracy_drop), float(max_accuracy_drop) / 100.0


# ================================================================ API
def calibrate(model, gains, x_val, y_val=None, *, target_mismatch: Optional[float] = None,
              max_accuracy_drop: Optional[float] = None,
              methods: Sequence[str] = DEFAULT_METHODS, cost: str = "compute",
              batch_size: int = 256, confidence: float = 0.95,
              max_bits: int = MAX_BITS, grid_per_octave: int = GRID_PER_OCTAVE,
              greedy_budget: int = GREEDY_BUDGET) -> CalibrationResult:
    """The cheapest plan of each family that meets a measured target.

    Args:
      model: the trained float tf_keras classifier (only read).
      gains: :class:`tfprec.NoiseGains` of ``model`` (they fix each family's
        shape).
      x_val: held-out inputs [N, ...] that were NOT used for the gains (nor
        for training): a validation or test split.
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

    Returns:
      A :class:`CalibrationResult`: ``best`` and ``candidates``.

    Raises:
      UnattainableTargetError: no family meets the target within max_bits;
        the message names the target and the value measured with every
        tensor at max_bits.
      InvalidDataError: x_val / y_val mis-shaped, empty or not finite;
        max_accuracy_drop without labels.
      PlanError: bad target, method, cost or a gains/model mismatch.
    """
    methods = tuple(methods)
    if not methods:
        raise PlanError(f"methods is empty; choose from {FAMILIES}")
    for m in methods:
        if m not in FAMILIES:
            raise PlanError(f"unknown calibration family {m!r}; choose from {FAMILIES}")
    if len(set(methods)) != len(methods):
        raise PlanError(f"methods lists a family twice: {methods}")
    if cost not in ("compute", "memory"):
        raise PlanError(f"cost must be 'compute' or 'memory', got {cost!r}")
    confidence = _check_confidence(confidence)
    for name, v, lo in (("batch_size", batch_size, 1), ("grid_per_octave", grid_per_octave, 1),
                        ("greedy_budget", greedy_budget, 0)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise InvalidDataError(f"{name} must be an int >= {lo}, got {v!r}")
    if (isinstance(max_bits, bool) or not isinstance(max_bits, (int, np.integer))
            or not MIN_BITS <= max_bits <= MAX_BITS):
        raise PlanError(f"max_bits must be an int in {MIN_BITS}..{MAX_BITS}, got {max_bits!r}")
    if not hasattr(gains, "layers"):
        raise PlanError(f"gains must be tfprec.NoiseGains, got {type(gains).__name__}")
    x = _check_x(model, x_val)
    num_classes = int(model.outputs[0].shape[-1])
    y = _check_y(y_val, len(x), num_classes)
    kind, target, p = _check_target(target_mismatch, max_accuracy_drop, y is not None)
    top_plan = plan_lib.uniform_plan(gains, bits=int(max_bits), max_bits=int(max_bits))
    top_plan.validate_for(model)            # gains of another model: PlanError now

    ev = _Evaluator(model, x, y, batch_size, kind, target)
    found, unmet = {}, {}
    ca_result = None
    order = [m for m in methods if m != "measured_greedy"]
    if "measured_greedy" in methods and "cost_aware" not in order:
        order.append("cost_aware")          # the greedy starts from it
    for m in order:
        fam = (_cost_aware_family(gains, cost, int(max_bits), int(grid_per_octave))
               if m == "cost_aware" else _int_family(gains, m, int(max_bits)))
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
                        f"{_fmt_level(m, fam.levels[0])} it measures "
                        f"{_value_str(kind, v0)}")
        else:
            found[m] = res
    if "measured_greedy" in methods:
        if ca_result is None:
            unmet["measured_greedy"] = "its cost_aware start met the target at no level"
        else:
            found["measured_greedy"] = _greedy(ca_result, gains, ev, cost,
                                               int(max_bits), int(greedy_budget))

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


def _calibrated(method, f: _Found, ev: _Evaluator, kind, target, p,
                confidence, gains) -> CalibratedPlan:
    m = f.measurement
    n = ev.n
    k = m.num_mismatch
    ucl = clopper_pearson_upper(k, n, confidence)
    bound = float(f.plan.bound())
    pe = (plan_lib.per_example_bound(f.plan, gains)
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
    level = f.level if method in ("cost_aware", "measured_greedy") else int(f.level)
    return CalibratedPlan(
        plan=plan, method=method, level=level, evaluations=int(f.evaluations),
        measured_mismatch=k / n, mismatch_ucl=ucl, float_accuracy=fa,
        quant_accuracy=qa, accuracy_drop_pp=drop, bound=bound,
        compute_cost=float(costs.total_compute), memory_cost=float(costs.total_memory),
        num_examples=n, guarantee=guarantee, num_mismatch=k,
        analytic_guarantee=analytic, confidence=confidence, trace=tuple(f.trace),
        accuracy_drop_se_pp=se, per_example_bound=pe)
