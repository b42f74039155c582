"""Simulation-driven greedy precision search (what search-based tools do):
lower one tensor at a time, keep a change while measured fake-quant accuracy
stays within a tolerance of float."""
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

from tfprec.peers.common import (_check_bits, _check_cost_kind, _pos_int, _template,
                                  _unit, _xy)


# ================================================ simulation-driven search
class _Evaluator:
    """Counts fake-quant evaluations of plans on fixed labelled data."""

    def __init__(self, model, x, y, batch_size):
        from tfprec.quantization import validate as _validate
        self.v = _validate
        self.model = model
        self.x, self.y = x, y
        self.batch_size = batch_size
        fdec = _validate.float_decisions(model, x, batch_size)
        self.float_accuracy = float(np.mean(fdec == y))
        self.evaluations = 0

    def accuracy(self, plan) -> float:
        self.evaluations += 1
        q = self.v.quant_decisions(self.model, plan, self.x, self.batch_size)
        return float(np.mean(q == self.y))

    def ok(self, acc: float, tolerance_pp: float) -> bool:
        return acc >= self.float_accuracy - tolerance_pp / 100.0 - 1e-12


def _check_tol(tolerance_pp) -> float:
    if isinstance(tolerance_pp, bool) or not isinstance(tolerance_pp, (int, float)) \
            or not (tolerance_pp >= 0 and math.isfinite(tolerance_pp)):
        raise InvalidDataError(f"tolerance_pp must be a non-negative number of "
                               f"percentage points, got {tolerance_pp!r}")
    return float(tolerance_pp)


def greedy_search_plan(model, gains, x, y, tolerance_pp: float = 0.1,
                       start_bits: int = 8, min_bits: int = 2,
                       batch_size: int = 256, cost: str = "compute"):
    """Simulation-driven greedy precision search (the search-based peers).

    Starts from every tensor at ``start_bits`` and repeats: among all
    single-step changes (one weight or activation tensor one bit lower, not
    below ``min_bits``), keep the one that saves the most cost (``cost``,
    tfprec's cost model) whose measured fake-quant top-1 accuracy on (x, y)
    is at least float accuracy - ``tolerance_pp`` percentage points; stop
    when no change qualifies.  Candidates are measured in order of
    decreasing saving and the first that qualifies is kept, which selects
    the same change as measuring all of them with fewer evaluations.  Every
    measurement is one fake-quant pass over x
    (:func:`tfprec.validate.quant_decisions`), counted in ``evaluations``;
    the float pass is not counted.

    Args:
      model: trained tf_keras classifier (only read).
      gains: :class:`tfprec.NoiseGains` of the model (formats and geometry
        only; the search does not use the gains).
      x, y: labelled data the accuracy is measured on (numpy; y required).
      tolerance_pp: allowed accuracy drop, percentage points.
      start_bits, min_bits: starting and smallest bit-width.
      batch_size: examples per fake-quant batch.
      cost: "compute" or "memory".

    Returns:
      (plan, evaluations): the final :class:`tfprec.PrecisionPlan`
      (method "greedy_search"; ``info`` has the float and quantized
      accuracies, rounds, evaluations, and
      ``evaluations_if_all_candidates``: how many a search that measures
      every candidate of every round would need) and the number of
      fake-quant evaluations.

    Raises:
      InvalidDataError: labels missing or data malformed.
      UnattainableTargetError: the start plan itself misses the tolerance.
      PlanError: bad bit arguments or gains that do not match the model.
    """
    cost = _check_cost_kind(cost)
    min_bits, start_bits = _check_bits(min_bits, start_bits)
    tol = _check_tol(tolerance_pp)
    batch_size = _pos_int("batch_size", batch_size)
    graph = parse_model(model)
    x, y = _xy(x, y, graph.shapes[graph.input_id], graph.num_classes,
               "greedy_search_plan")
    plan = _template(gains)
    plan = plan.with_bits(weight_bits={n: start_bits for n in plan.names},
                          act_bits={n: start_bits for n in plan.names},
                          method="greedy_search")
    plan.validate_for(model)
    ev = _Evaluator(model, x, y, batch_size)
    acc = ev.accuracy(plan)
    if not ev.ok(acc, tol):
        raise UnattainableTargetError(
            f"the uniform {start_bits}-bit start plan already has accuracy "
            f"{100 * acc:.2f} % vs float {100 * ev.float_accuracy:.2f} %, more "
            f"than {tol:g} pp lower; raise start_bits.")
    rounds = 0
    tried_all = 1          # evaluations if every candidate were measured
    while True:
        cur = plan.cost().total(cost)
        cands = []
        for lp in plan.layers:
            for which in ("w", "a"):
                b = lp.weight_bits if which == "w" else lp.act_bits
                if b <= min_bits:
                    continue
                kw = {"weight_bits" if which == "w" else "act_bits": {lp.name: b - 1}}
                p = plan.with_bits(**kw)
                cands.append((cur - p.cost().total(cost), len(cands), p))
        cands.sort(key=lambda c: (-c[0], c[1]))
        tried_all += len(cands)
        accepted = None
        for _, _, p in cands:
            a = ev.accuracy(p)
            if ev.ok(a, tol):
                accepted = (p, a)
                break
        if accepted is None:
            break
        plan, acc = accepted
        rounds += 1
    plan = dataclasses.replace(plan, info={
        "float_accuracy": ev.float_accuracy, "quant_accuracy": acc,
        "tolerance_pp": tol, "rounds": rounds, "evaluations": ev.evaluations,
        "evaluations_if_all_candidates": tried_all, "cost_kind": cost})
    return plan, ev.evaluations
