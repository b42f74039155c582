"""HAWQ-v2 allocation: bits minimizing the Hessian-trace perturbation metric
at a cost budget (multiple-choice knapsack)."""
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


# =========================================================== HAWQ plan
def _cost_table(lp, kind, bits_w, bits_a) -> np.ndarray:
    return np.array([[cost_lib.layer_cost(lp, kind, act_bits=ba, weight_bits=bw)
                      for ba in bits_a] for bw in bits_w], float)


def _mckp_min(objs, costs, budget: float, units: int = 4000):
    """Multiple-choice knapsack: one option per group, min sum obj, cost <= budget.

    ``objs[g]``, ``costs[g]``: 1-D arrays over group g's options.  Each
    option's cost above its group's cheapest option is rounded *up* to units
    of (budget - cheapest plan) / units (so the result always fits the
    budget) and the objective is minimized exactly under that rounding by
    dynamic programming; then single options are swapped greedily while the
    exact budget allows and the objective drops.  Returns option indices or
    None when nothing fits.
    """
    base = [float(c.min()) for c in costs]
    slack = budget - sum(base)                  # budget above the cheapest plan
    if slack < 0:
        return None
    unit = slack / units if slack > 0 else 1.0
    f = np.zeros(units + 1)
    args = []
    for o, c, b0 in zip(objs, costs, base):
        extra = c - b0                          # >= 0; cheapest option is 0
        if slack > 0:
            q = np.ceil(extra / unit - 1e-9).astype(int)
        else:
            q = np.where(extra <= 0, 0, units + 1)
        q = np.maximum(q, 0)
        new = np.full(units + 1, np.inf)
        arg = np.full(units + 1, -1)
        for k in np.argsort(o, kind="stable"):
            if q[k] > units:
                continue
            cand = np.full(units + 1, np.inf)
            cand[q[k]:] = f[:units + 1 - q[k]] + o[k]
            better = cand < new
            new[better] = cand[better]
            arg[better] = k
        f = new
        args.append((q, arg))
    if not np.isfinite(f[units]):
        return None
    u = units
    pick = []
    for q, arg in reversed(args):
        k = int(arg[u])
        pick.append(k)
        u -= q[k]
    pick = pick[::-1]
    # Greedy improvement with exact costs (uses the slack rounding left).
    total = sum(c[k] for c, k in zip(costs, pick))
    while True:
        best = None
        for g, (o, c) in enumerate(zip(objs, costs)):
            k0 = pick[g]
            for k in range(len(o)):
                dobj = o[k] - o[k0]
                dc = c[k] - c[k0]
                if dobj >= -1e-300 or total + dc > budget * (1 + 1e-12):
                    continue
                score = -dobj / max(dc, 1e-300) if dc > 0 else math.inf
                if best is None or score > best[0]:
                    best = (score, g, k, dc)
        if best is None:
            return pick
        _, g, k, dc = best
        pick[g] = k
        total += dc


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
    solved by dynamic programming over the budget (costs rounded up, so the
    plan always fits), followed by greedy refinement with exact costs.

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
        if act_tr is None or any(n not in act_tr for n in tmpl.names):
            raise PlanError(
                "act_bits='hessian' needs activation traces "
                "(hessian_trace_sensitivity's result); pass act_bits=<int> "
                "to keep activations at a fixed precision instead.")
        bits_a = list(range(min_bits, max_bits + 1))
    elif (not isinstance(act_bits, bool) and isinstance(act_bits, (int, np.integer))
          and fixedpoint.MIN_BITS <= act_bits <= fixedpoint.MAX_BITS):
        act_tr = None
        bits_a = [int(act_bits)]
    else:
        raise PlanError(f"act_bits must be 'hessian' or an int in "
                        f"{fixedpoint.MIN_BITS}..{fixedpoint.MAX_BITS}, got {act_bits!r}")
    bits_w = list(range(min_bits, max_bits + 1))
    objs, costs, opts = [], [], []
    clipped = []
    for lp in tmpl.layers:
        op = wops[lp.name]
        tw = float(traces[lp.name])
        if not math.isfinite(tw):
            raise PlanError(f"trace of layer {lp.name!r} is not finite ({tw})")
        if tw < 0:
            clipped.append(lp.name)
            tw = 0.0
        ws = [op.attrs["kernel"]] + ([] if op.attrs["bias"] is None else [op.attrs["bias"]])
        n = sum(w.size for w in ws)
        err = np.array([sum(float(np.sum((fixedpoint.quantize(w, b, lp.weight_range, True)
                                          - w) ** 2)) for w in ws) for b in bits_w])
        ow = tw / n * err                                        # [len(bits_w)]
        if act_tr is not None:
            ta = max(float(act_tr[lp.name]), 0.0)
            oa = np.array([ta * fixedpoint.step(b, lp.act_range) ** 2 / 12.0
                           for b in bits_a])
        else:
            oa = np.zeros(1)
        objs.append((ow[:, None] + oa[None, :]).ravel())
        costs.append(_cost_table(lp, cost, bits_w, bits_a).ravel())
        opts.append([(bw, ba) for bw in bits_w for ba in bits_a])
    cheapest = sum(c.min() for c in costs)
    if budget < cheapest * (1 - 1e-12):
        raise UnattainableTargetError(
            f"budget {budget:.6g} {_unit(cost)} is below the cheapest plan "
            f"allowed ({cheapest:.6g} {_unit(cost)}: weights at {min_bits} bits"
            + (f", activations at {min_bits} bits" if act_tr is not None
               else f", activations fixed at {bits_a[0]} bits")
            + "); raise the budget or lower min_bits.")
    pick = _mckp_min(objs, costs, max(budget, cheapest))
    if pick is None:  # pragma: no cover - the cheapest plan always fits
        raise UnattainableTargetError(f"no plan fits budget {budget:.6g}")
    bw = {lp.name: opts[g][k][0] for g, (lp, k) in enumerate(zip(tmpl.layers, pick))}
    ba = {lp.name: opts[g][k][1] for g, (lp, k) in enumerate(zip(tmpl.layers, pick))}
    plan = tmpl.with_bits(weight_bits=bw, act_bits=ba, method=f"hawq:{cost}")
    objective = float(sum(o[k] for o, k in zip(objs, pick)))
    return dataclasses.replace(plan, target=None, info={
        "objective": objective, "budget": budget, "cost_kind": cost,
        "act_bits": act_bits if act_tr is None else "hessian",
        "negative_traces_clipped": clipped})
