"""Simulation-driven greedy precision search (what search-based tools do):
lower one tensor at a time, keep a change while measured fake-quant accuracy
stays within a tolerance of float."""
from __future__ import annotations

import dataclasses

from tfprec import inputs
from tfprec.errors import PlanError, UnattainableTargetError
from tfprec.fixedpoint import check_bits
from tfprec.planning import plan as plan_lib
from tfprec.planning import rules as rules_lib
from tfprec.planning.budget import (check_tolerance_pp, cost_kind,
                                   labelled_examples)
from tfprec.planning.evaluate import Evaluator
from tfprec.statistics.gains import NoiseGains


def greedy_search_plan(model, gains, x, y=None, tolerance_pp: float = 0.1,
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
      x, y: labelled data the accuracy is measured on: numpy arrays, or a
        tf.data dataset of (input, label) pairs as ``x`` with ``y`` None.
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
    cost = cost_kind(cost)
    min_bits = check_bits("min_bits", min_bits)
    start_bits = check_bits("start_bits", start_bits, lo=min_bits)
    tol = check_tolerance_pp(tolerance_pp)
    batch_size = inputs.positive_int("batch_size", batch_size)
    if not isinstance(gains, NoiseGains):
        raise PlanError(f"gains must be tfprec.NoiseGains (from noise_gains), got "
                        f"{type(gains).__name__}")
    x, y = labelled_examples(model, x, y, "greedy_search_plan")
    plan = rules_lib.uniform_plan(gains, bits=start_bits)
    plan = dataclasses.replace(plan, method="greedy_search", info={})
    plan.validate_for(model)
    ev = Evaluator(model, x, y, batch_size, "accuracy_drop", tol)
    m = ev.measure(plan)
    if not ev.meets(m):
        raise UnattainableTargetError(
            f"the uniform {start_bits}-bit start plan already has "
            f"{ev.accuracy_text(m)}, more than {tol:g} pp lower; raise start_bits.")
    path = []
    tried_all = 1          # evaluations if every candidate were measured
    while True:
        cur = plan.cost().total(cost)
        cands = []
        for lp in plan.layers:
            for which in ("w", "a"):
                b = lp.weight_bits if which == "w" else lp.act_bits
                if b is None or b <= min_bits:    # None: an Embedding's ids
                    continue
                kw = {"weight_bits" if which == "w" else "act_bits": {lp.name: b - 1}}
                p = plan.with_bits(**kw)
                cands.append((cur - p.cost().total(cost), len(cands), p,
                              [lp.name, which, b - 1]))
        cands.sort(key=lambda c: (-c[0], c[1]))
        tried_all += len(cands)
        accepted = next((c for c in cands if ev.meets(ev.measure(c[2]))), None)
        if accepted is None:
            break
        plan = accepted[2]
        path.append(accepted[3])
    plan = dataclasses.replace(plan, info={
        "float_accuracy": ev.float_accuracy,
        "quant_accuracy": ev.accuracy(ev.measure(plan)),
        "tolerance_pp": tol, "rounds": len(path), "evaluations": ev.passes,
        "evaluations_if_all_candidates": tried_all, "cost_kind": cost,
        "start_bits": start_bits, "path": path})
    return plan, ev.passes


def path_plans(gains, plan) -> list:
    """The plans a greedy search kept, in order: its uniform start plan,
    then the plan after each round (costs strictly decreasing; the last is
    ``plan`` itself).

    Args:
      gains: the :class:`tfprec.NoiseGains` the search was given.
      plan: a plan returned by :func:`greedy_search_plan` (its
        ``info["start_bits"]`` and ``info["path"]``).

    Returns:
      A list of ``info["rounds"] + 1`` :class:`tfprec.PrecisionPlan`.

    Raises:
      PlanError: ``plan`` has no greedy path, or its path names a layer the
        gains do not have.
    """
    info = getattr(plan, "info", None) or {}
    if "path" not in info or "start_bits" not in info:
        raise PlanError("path_plans needs a plan from greedy_search_plan "
                        "(info['start_bits'] and info['path'])")
    names = {l.name for l in gains.layers}
    p = dataclasses.replace(rules_lib.uniform_plan(gains, bits=info["start_bits"]),
                            method="greedy_search", info={})
    out = [p]
    for name, which, b in info["path"]:
        if name not in names:
            raise PlanError(f"greedy path: layer {name!r} is not in the gains")
        p = p.with_bits(**{"weight_bits" if which == "w" else "act_bits": {name: b}})
        out.append(p)
    return out
