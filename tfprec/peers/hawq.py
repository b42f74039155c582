"""HAWQ-v2 allocation: bits minimizing the Hessian-trace perturbation metric
at a cost budget (multiple-choice knapsack)."""
from __future__ import annotations

import dataclasses
import math
from typing import Union

import numpy as np

from tfprec import fixedpoint
from tfprec.errors import PlanError, UnattainableTargetError
from tfprec.planning import cost as cost_lib
from tfprec.planning import plan as plan_lib
from tfprec.planning import rules as rules_lib
from tfprec.planning.budget import cost_kind as _check_cost_kind
from tfprec.planning.budget import cost_unit as _unit
from tfprec.planning.search import mckp
from tfprec.statistics.gains import NoiseGains
from tfprec.statistics.graph import parse_model


def _template(gains_or_plan) -> plan_lib.PrecisionPlan:
    """A plan carrying formats, gains and geometry, from gains or a plan."""
    if isinstance(gains_or_plan, NoiseGains):
        return rules_lib.uniform_plan(gains_or_plan, bits=8)
    if isinstance(gains_or_plan, plan_lib.PrecisionPlan):
        return gains_or_plan
    raise PlanError("expected tfprec.NoiseGains (from noise_gains) or a "
                    f"PrecisionPlan to take formats from, got "
                    f"{type(gains_or_plan).__name__}.")


def _check_bits(min_bits, max_bits) -> tuple:
    """(min_bits, max_bits) as ints in 2..16 bits with min <= max."""
    min_bits = fixedpoint.check_bits("min_bits", min_bits)
    max_bits = fixedpoint.check_bits("max_bits", max_bits, min_bits)
    return min_bits, max_bits


def hawq_plan(model, gains_or_plan, traces, budget: float, cost: str = "compute",
              act_bits: Union[str, int] = "hessian", min_bits: int = 2,
              max_bits: int = 16) -> plan_lib.PrecisionPlan:
    """HAWQ-v2-style mixed precision at a cost budget.

    Chooses per-layer bits minimizing HAWQ-v2's second-order perturbation
    metric

        Omega = sum_l Tr(H_W,l) / n_l * ||Q(W_l) - W_l||^2
              + sum_l E_x Tr(H_A,l) * Delta_A,l^2 / 12

    subject to total cost (tfprec's cost model, ``cost="compute"`` full
    adders or ``"memory"`` bits) <= ``budget``.  The weight term is
    HAWQ-v2's (average trace times the squared norm of the actual rounding
    error of the folded weights at each candidate bit-width, in tfprec's
    format: range R_W, round half up, saturate).  The activation term is
    HAWQ-v2's activation extension (trace of the activation Hessian,
    averaged over the data) with the expected squared rounding error of an
    activation, Delta^2/12 per element (the same noise model tfprec uses).
    Both terms estimate 2x the expected increase of the training loss.

    Activation choice: ``act_bits="hessian"`` (default) lets the activations
    compete for the budget through their Hessian traces, as HAWQ-v2 does,
    so HAWQ and tfprec's :func:`tfprec.cost_aware_plan` choose over the same
    set of tensors and bit-widths under the same cost model (the fair
    comparison).  An int fixes every activation at that many bits and
    allocates only the weights.

    The allocation is a multiple-choice knapsack (one (B_W, B_A) per layer)
    solved exactly (:func:`tfprec.planning.search.mckp`); the plan always
    fits the budget.

    Args:
      model: the trained model the traces were computed for (weights are
        read to measure ||Q(W) - W||^2).
      gains_or_plan: :class:`tfprec.NoiseGains` of the model (formats and
        geometry; also lets the plan report tfprec's bound), or a
        :class:`tfprec.PrecisionPlan` to take them from.
      traces: :func:`hessian_trace_sensitivity` result (or a plain dict
        layer name -> weight trace when ``act_bits`` is an int).
      budget: largest allowed total cost (full adders or bits per example).
      cost: "compute" or "memory".
      act_bits: "hessian" or a fixed activation bit-width.
      min_bits, max_bits: allowed bit-widths.

    Returns:
      A :class:`tfprec.PrecisionPlan` with method ``"hawq:<cost>"``;
      ``info`` holds the objective, the budget and the activation choice.

    Raises:
      PlanError: traces do not cover the model's layers, bad arguments, or
        the gains / plan do not match the model.
      UnattainableTargetError: the budget is below the cheapest allowed plan.
    """
    cost = _check_cost_kind(cost)
    min_bits, max_bits = _check_bits(min_bits, max_bits)
    if isinstance(budget, bool) or not isinstance(budget, (int, float, np.number)) \
            or not (budget > 0 and math.isfinite(budget)):
        raise PlanError(f"budget must be a positive finite cost in "
                        f"{_unit(cost)}, got {budget!r}")
    budget = float(budget)
    tmpl = _template(gains_or_plan)
    tmpl.validate_for(model)
    graph = parse_model(model)
    wops = {op.name: op for op in graph.weight_ops}
    if not isinstance(traces, dict):
        raise PlanError(f"traces must be a dict layer name -> Hessian trace "
                        f"(hessian_trace_sensitivity), got {type(traces).__name__}")
    missing = [n for n in tmpl.names if n not in traces]
    if missing:
        raise PlanError(f"traces lack layers {missing}; they have "
                        f"{sorted(traces)}. Compute them for this model.")
    if act_bits == "hessian":
        act_tr = getattr(traces, "activation", None)
        if act_tr is None or any(n not in act_tr for n in tmpl.names
                                  if tmpl.layer(n).has_act):
            raise PlanError(
                "act_bits='hessian' needs activation traces "
                "(hessian_trace_sensitivity's result); pass act_bits=<int> "
                "to keep activations at a fixed precision instead.")
        bits_a = list(range(min_bits, max_bits + 1))
    elif isinstance(act_bits, str):
        raise PlanError(f"act_bits must be 'hessian' or an int number of bits, "
                        f"got {act_bits!r}")
    else:
        act_tr = None
        bits_a = [fixedpoint.check_bits("act_bits", act_bits)]
    bits_w = list(range(min_bits, max_bits + 1))
    tables = cost_lib.cost_tables(tmpl.layers, cost)
    objs, costs, opts = [], [], []
    clipped = []
    for lp, table in zip(tmpl.layers, tables):
        op = wops[lp.name]
        tw = float(traces[lp.name])
        if not math.isfinite(tw):
            raise PlanError(f"trace of layer {lp.name!r} is not finite ({tw})")
        if tw < 0:
            clipped.append(lp.name)
            tw = 0.0
        ws = [op.attrs["kernel"]] + ([] if op.attrs["bias"] is None else [op.attrs["bias"]])
        n = sum(w.size for w in ws)
        err = np.array([sum(float(np.sum((fixedpoint.quantize(w, b, lp.weight_ranges(), True)
                                          - w) ** 2)) for w in ws) for b in bits_w])
        ow = tw / n * err                                        # [len(bits_w)]
        if act_tr is not None and lp.has_act:
            ta = max(float(act_tr[lp.name]), 0.0)
            oa = np.array([ta * fixedpoint.step(b, lp.act_range) ** 2 / 12.0
                           for b in bits_a])
        else:
            oa = np.zeros(len(bits_a))
        objs.append((ow[:, None] + oa[None, :]).ravel())
        costs.append(table[np.ix_(bits_w, bits_a)].ravel())
        opts.append([(bw, ba) for bw in bits_w for ba in bits_a])
    cheapest = sum(c.min() for c in costs)
    if budget < cheapest * (1 - 1e-12):
        raise UnattainableTargetError(
            f"budget {budget:.6g} {_unit(cost)} is below the cheapest plan "
            f"allowed ({cheapest:.6g} {_unit(cost)}: weights at {min_bits} bits"
            + (f", activations at {min_bits} bits" if act_tr is not None
               else f", activations fixed at {bits_a[0]} bits")
            + "); raise the budget or lower min_bits.")
    pick = mckp(objs, costs, max(budget, cheapest))
    if pick is None:  # pragma: no cover - the cheapest plan always fits
        raise UnattainableTargetError(f"no plan fits budget {budget:.6g}")
    bw = {lp.name: opts[g][k][0] for g, (lp, k) in enumerate(zip(tmpl.layers, pick))}
    ba = {lp.name: opts[g][k][1] for g, (lp, k) in enumerate(zip(tmpl.layers, pick))
          if lp.has_act}          # an Embedding has no activation format
    plan = tmpl.with_bits(weight_bits=bw, act_bits=ba, method=f"hawq:{cost}")
    objective = float(sum(o[k] for o, k in zip(objs, pick)))
    return dataclasses.replace(plan, target=None, info={
        "objective": objective, "budget": budget, "cost_kind": cost,
        "act_bits": act_bits if act_tr is None else "hessian",
        "negative_traces_clipped": clipped})
