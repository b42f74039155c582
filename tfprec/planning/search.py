"""Discrete searches over bit-widths shared by the planners.

* :func:`mckp`: the multiple-choice knapsack (one option per group, minimize
  one attribute subject to a capacity on the sum of another), solved exactly
  by branch and bound on Pareto-optimal partial picks.  Used by
  :func:`tfprec.cost_aware_plan` (min cost, bound <= target) and by HAWQ
  (min perturbation, cost <= budget).
* :func:`descend`: the greedy bit removal (best cost saved per bound added
  while the target holds) under any bound model: :class:`AnalyticBound`
  (METHOD.md section 2), :class:`PerExampleBound` (mean of per-example
  bounds capped at 1) or :class:`tfprec.planning.predict.PredictedMismatch`
  (the mismatch prediction, an estimate; not monotone in the bits under
  its "shift" model, so a move may lower it); a model has
  ``value(bw, ba)``, ``reset(bw, ba)``, ``moves(bw, ba)`` -> (new value,
  value added) per layer for one bit less of each weight / activation
  tensor, ``take(which, i, delta)`` and the current value ``cur``.
* :func:`improve`: local search around :func:`descend`.

Bits arrays ``bw``, ``ba`` hold B_W and B_A per layer (bits); ``tabs[l]`` is
layer l's cost table ``[B_W, B_A]`` (:func:`tfprec.planning.cost.cost_tables`);
``lead[l]`` is the first reader of layer l's input tensor (activation bits of
one tensor move together).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

from tfprec.errors import PlanError
from tfprec.fixedpoint import MIN_BITS

_RTOL = 1e-12          # relative slack allowed on a bound target (rounding)


# ======================================================= knapsack (MCKP)
def _pareto(v: np.ndarray, w: np.ndarray, capacity: float) -> np.ndarray:
    """Indices of the options that fit and are not dominated, by increasing
    weight (so with strictly decreasing value)."""
    idx = np.flatnonzero(w <= capacity)
    idx = idx[np.lexsort((idx, v[idx], w[idx]))]     # by weight, value, index
    v = v[idx]
    return idx[v < np.concatenate([[np.inf], np.minimum.accumulate(v)[:-1]])]


def _hull_steps(w: np.ndarray, v: np.ndarray):
    """(weight added, value added) of each step along the lower convex hull
    of one group's Pareto options (weights increasing)."""
    hull = [0]
    for k in range(1, len(w)):
        while len(hull) >= 2 and ((v[hull[-1]] - v[hull[-2]]) * (w[k] - w[hull[-2]])
                                  >= (v[k] - v[hull[-2]]) * (w[hull[-1]] - w[hull[-2]])):
            hull.pop()
        hull.append(k)
    return np.diff(w[hull]), np.diff(v[hull])


class _LPBound:
    """The LP relaxation of the knapsack over some groups: the least value
    they can reach within a capacity r when options may be mixed (a lower
    bound on any pick), from the groups' hull steps taken best value per
    weight first."""

    def __init__(self, ws, vs):
        steps = [_hull_steps(w, v) for w, v in zip(ws, vs)]
        self.w0 = float(sum(w[0] for w in ws))
        self.v0 = float(sum(v[0] for v in vs))
        dw = np.concatenate([s[0] for s in steps] + [np.zeros(0)])
        dv = np.concatenate([s[1] for s in steps] + [np.zeros(0)])
        order = np.argsort(dv / dw, kind="stable")
        self.slope = np.append(dv[order] / dw[order], 0.0)
        self.cw = np.concatenate([[0.0], np.cumsum(dw[order])])
        self.cv = np.concatenate([[0.0], np.cumsum(dv[order])])

    def _steps(self, r):
        return np.maximum(np.searchsorted(self.cw, r - self.w0, side="right") - 1, 0)

    def lower(self, r):
        """Lower bound on the value within capacity ``r`` (inf if nothing fits)."""
        s = r - self.w0
        j = self._steps(r)
        out = self.v0 + self.cv[j] + (s - self.cw[j]) * self.slope[j]
        return np.where(s < 0, np.inf, out)

    def upper(self, r) -> float:
        """Value of a pick that fits ``r``: the whole hull steps that fit."""
        return float(self.v0 + self.cv[self._steps(r)])


def _sweep(ws, vs, rest, capacity: float, best: float, beam: Optional[int]):
    """Partial picks group by group, kept Pareto-optimal and pruned by the LP
    bound against ``best``; with ``beam``, only that many with the least
    value-plus-bound (a heuristic pass).  Returns the final values and the
    back-pointers of each group."""
    tot_w, tot_v = np.zeros(1), np.zeros(1)
    back = []
    for g, (w, v) in enumerate(zip(ws, vs)):
        tw = (tot_w[:, None] + w[None, :]).ravel()
        tv = (tot_v[:, None] + v[None, :]).ravel()
        room = capacity - tw
        est = tv + rest[g + 1].lower(room)
        keep = np.flatnonzero((room >= rest[g + 1].w0) & (est <= best))
        if beam is not None and keep.size > beam:
            keep = keep[np.argpartition(est[keep], beam)[:beam]]
        keep = keep[np.lexsort((tv[keep], tw[keep]))]
        kv = tv[keep]
        keep = keep[kv < np.concatenate([[np.inf], np.minimum.accumulate(kv)[:-1]])]
        tot_w, tot_v = tw[keep], tv[keep]
        back.append(keep)
    return tot_v, back


def mckp(values: Sequence, weights: Sequence, capacity: float) -> Optional[list]:
    """Multiple-choice knapsack: pick one option k_g per group g minimizing
    sum_g values[g][k_g] subject to sum_g weights[g][k_g] <= capacity.

    Exact, by branch and bound over the groups in order: the set of partial
    picks is kept Pareto-optimal (no other partial pick both lighter and
    better), and a partial pick is dropped when its value plus the LP
    relaxation's lower bound on the remaining groups exceeds the value of a
    known pick that fits (found first by a beam search).  Weights are
    summed exactly as given (no rounding), so the returned pick satisfies
    the capacity exactly.

    Args:
      values, weights: one 1-D array per group, over that group's options;
        weights must be finite and non-negative (bound terms, costs).
      capacity: the largest allowed sum of weights.

    Returns:
      The chosen option index per group, or None when no pick fits.
    """
    values = [np.asarray(v, float).ravel() for v in values]
    weights = [np.asarray(w, float).ravel() for w in weights]
    if not all(np.all(np.isfinite(v)) for v in values) or not all(
            np.all(np.isfinite(w) & (w >= 0)) for w in weights):
        raise PlanError("knapsack values must be finite and weights finite and "
                        "non-negative")
    opts = [_pareto(v, w, capacity) for v, w in zip(values, weights)]
    if any(o.size == 0 for o in opts):
        return None
    ws = [w[o] for w, o in zip(weights, opts)]
    vs = [v[o] for v, o in zip(values, opts)]
    rest = [_LPBound(ws[g:], vs[g:]) for g in range(len(ws) + 1)]
    if rest[0].w0 > capacity:
        return None
    best = rest[0].upper(capacity)
    found, _ = _sweep(ws, vs, rest, capacity, best * (1 + 1e-9) + 1e-300, 64)
    if found.size:
        best = min(best, float(found.min()))
    best += 1e-9 * abs(best) + 1e-300             # keep ties under float rounding
    tot_v, back = _sweep(ws, vs, rest, capacity, best, None)
    if tot_v.size == 0:  # pragma: no cover - the known pick always survives
        return None
    state = int(np.argmin(tot_v))
    pick = []
    for g in range(len(ws) - 1, -1, -1):
        state, k = divmod(int(back[g][state]), len(ws[g]))
        pick.append(int(opts[g][k]))
    return pick[::-1]


# ========================================================== bound models
class AnalyticBound:
    """The paper's bound sum_T 4^(1-B_T) G_T (probability).

    ``gw``, ``ga``: normalized gains per layer, a shared input tensor's gain
    held by its first reader only (0 for the others).
    """

    def __init__(self, gw, ga):
        self.gw = np.asarray(gw, float)
        self.ga = np.asarray(ga, float)

    def value(self, bw, ba) -> float:
        """The bound at bits ``bw``, ``ba`` (probability)."""
        return float(np.sum(4.0 ** (1 - np.asarray(bw, float)) * self.gw)
                     + np.sum(4.0 ** (1 - np.asarray(ba, float)) * self.ga))

    def reset(self, bw, ba) -> float:
        self.cur = self.value(bw, ba)
        return self.cur

    def moves(self, bw, ba):
        """(new bound, bound added) for removing one bit of each weight and
        of each activation tensor: four arrays over layers."""
        dw = self.gw * (4.0 ** (1 - (bw - 1)) - 4.0 ** (1 - bw))
        da = self.ga * (4.0 ** (1 - (ba - 1)) - 4.0 ** (1 - ba))
        return self.cur + dw, dw, self.cur + da, da

    def take(self, which: str, i: int, delta: float) -> None:
        self.cur += delta


class PerExampleBound:
    """mean_x min(1, sum_T 4^(1-B_T) G_T(x)) (probability), from per-example
    normalized gains ``sw``, ``sa`` [N, L] (a shared tensor held by its first
    reader only)."""

    def __init__(self, sw, sa):
        self.sw = np.asarray(sw, float)
        self.sa = np.asarray(sa, float)

    def value(self, bw, ba) -> float:
        """The bound at bits ``bw``, ``ba`` (probability)."""
        b = (self.sw @ 4.0 ** (1 - np.asarray(bw, float))
             + self.sa @ 4.0 ** (1 - np.asarray(ba, float)))
        return float(np.mean(np.minimum(b, 1.0)))

    def reset(self, bw, ba) -> float:
        self.cw = self.sw * 4.0 ** (1 - np.asarray(bw))     # [N, L] contributions
        self.ca = self.sa * 4.0 ** (1 - np.asarray(ba))
        self.b = self.cw.sum(1) + self.ca.sum(1)
        self.cur = np.mean(np.minimum(self.b, 1.0))
        return self.cur

    def moves(self, bw, ba):
        # Removing a bit multiplies a tensor's contribution by 4.
        new_w = np.minimum(self.b[:, None] + 3 * self.cw, 1.0).mean(0)
        new_a = np.minimum(self.b[:, None] + 3 * self.ca, 1.0).mean(0)
        return new_w, new_w - self.cur, new_a, new_a - self.cur

    def take(self, which: str, i: int, delta: float) -> None:
        c = self.cw if which == "w" else self.ca
        self.b += 3 * c[:, i]
        c[:, i] *= 4
        self.cur = np.mean(np.minimum(self.b, 1.0))


# ======================================================== greedy descent
def total_cost(tabs, bw, ba) -> float:
    """Sum of the layers' table entries at ``bw``, ``ba``."""
    return float(sum(t[w, a] for t, w, a in zip(tabs, bw, ba)))


def members(lead) -> list:
    """For each layer i: the layers whose activation bits move with i's."""
    lead = np.asarray(lead)
    return [np.flatnonzero(lead == lead[i]) for i in range(len(lead))]


def descend(tabs, bound, bw, ba, target: float, lead):
    """Greedy: remove one bit at a time, best cost saved per bound added,
    while ``bound`` (any bound model of the module doc) stays <= ``target``.  An activation move on a shared input lowers it
    for all its readers.  Returns new (bw, ba) arrays."""
    bw = np.array(bw, int)
    ba = np.array(ba, int)
    group = members(lead)
    bound.reset(bw, ba)
    while True:
        new_w, d_w, new_a, d_a = bound.moves(bw, ba)
        best = None
        for which, arr, new, dlt in (("w", bw, new_w, d_w), ("a", ba, new_a, d_a)):
            for i in range(len(bw)):
                if arr[i] <= MIN_BITS or (which == "a" and lead[i] != i):
                    continue
                if new[i] > target * (1 + _RTOL):
                    continue
                if which == "w":
                    dcost = tabs[i][bw[i], ba[i]] - tabs[i][bw[i] - 1, ba[i]]
                else:
                    dcost = sum(tabs[j][bw[j], ba[j]] - tabs[j][bw[j], ba[j] - 1]
                                for j in group[i])
                dbound = dlt[i]
                if dcost <= 0 and dbound > 0:
                    continue
                with np.errstate(over="ignore"):    # a denormal dbound: inf
                    score = dcost / dbound if dbound > 0 else math.inf
                if best is None or score > best[0]:
                    best = (score, which, i, dbound)
        if best is None:
            return bw, ba
        _, which, i, dbound = best
        if which == "w":
            bw[i] -= 1
        else:
            ba[group[i]] -= 1
        bound.take(which, i, dbound)


def improve(tabs, bound, bw, ba, target: float, max_bits: int, lead):
    """Local search: :func:`descend`, then repeatedly raise one tensor by a
    bit (at most ``max_bits``) and descend again; keep if cheaper."""
    bw, ba = descend(tabs, bound, bw, ba, target, lead)
    best = total_cost(tabs, bw, ba)
    group = members(lead)
    improved = True
    while improved:
        improved = False
        for which in ("w", "a"):
            for i in range(len(bw)):
                if which == "a" and lead[i] != i:
                    continue
                tw, ta = bw.copy(), ba.copy()
                arr = tw if which == "w" else ta
                if arr[i] >= max_bits:
                    continue
                if which == "w":
                    tw[i] += 1
                else:
                    ta[group[i]] += 1
                tw, ta = descend(tabs, bound, tw, ta, target, lead)
                c = total_cost(tabs, tw, ta)
                if c < best - 1e-9:
                    bw, ba, best, improved = tw, ta, c, True
    return bw, ba
