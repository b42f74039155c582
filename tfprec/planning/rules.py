"""One-level precision rules (METHOD.md section 3) and :func:`make_plan`.

* :func:`paper_plan`: the ICASSP 2018 rule, B_T = B_min + b_T with offsets
  b_T = round(log2 sqrt(G_T / G_min)), smallest B_min meeting the target;
* :func:`uniform_plan`: one B for every tensor;
* :func:`icml2017_plan`: one B_A for all activations and one B_W for all
  weights with B_W - B_A = round(log2 sqrt(sum G_W / sum G_A)).

Bit-widths are in bits (sign included); targets and bounds are mismatch
probabilities.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

from tfprec import inputs
from tfprec.errors import PlanError, UnattainableTargetError
from tfprec.fixedpoint import MAX_BITS, MIN_BITS, check_bits
from tfprec.planning.plan import DEFAULT_TARGET, LayerPrecision, PrecisionPlan
from tfprec.planning.search import AnalyticBound

#: The one number each allocation family is searched over.
LEVEL_NAMES = {"paper": "B_min", "uniform": "B", "icml2017": "B_A",
               "cost_aware": "t", "cost_aware_pe": "t",
               "cost_aware_predicted": "t", "measured_greedy": "t"}


def level_text(method: str, level) -> str:
    """A plan's level as text: ``B_min=4``, ``B=5``, ``B_A=6`` (bits) or
    ``t=0.0228`` (a bound target, probability) for the cost-aware family;
    ``-`` when there is none.  ``method`` may carry a suffix
    (``cost_aware:compute``, ``paper+measured_greedy``)."""
    if level is None:
        return "-"
    m = str(method)
    fam = "measured_greedy" if "measured_greedy" in m else m.split(":", 1)[0]
    if LEVEL_NAMES.get(fam) == "t":
        return f"t={level:.3g}"
    return f"{LEVEL_NAMES.get(fam, 'level')}={int(level)}"


def _round_half_up(v: float) -> int:
    return int(math.floor(v + 0.5))


def _layers_at(gains, weight_bits: Sequence[int], act_bits: Sequence[int]) -> tuple:
    """Plan layers at the given bits; a layer without an activation format
    (``LayerGains.has_act`` False: an Embedding's ids) gets ``act_bits``
    None whatever its entry in ``act_bits`` (the searches carry a
    placeholder there: its gain is 0 and its cost does not depend on it)."""
    return tuple(LayerPrecision(
        name=g.name, layer_class=g.layer_class, weight_bits=int(bw),
        act_bits=int(ba) if getattr(g, "has_act", True) else None,
        weight_range=g.r_w, act_range=g.r_a,
        act_signed=g.act_signed, g_w=g.g_w, g_a=g.g_a_shared,
        dot_length=g.dot_length, num_dots=g.num_dots,
        num_weights=g.num_weights, num_inputs=g.num_inputs,
        act_group=g.act_group,
        num_inputs_written=getattr(g, "num_inputs_written", None),
        weight_channel_ranges=getattr(g, "r_w_channels", None))
        for g, bw, ba in zip(gains.layers, weight_bits, act_bits))


def check_gains(gains, name: str = "gains"):
    """``gains`` if it is a :class:`tfprec.NoiseGains` with at least one
    layer; else PlanError naming ``name`` (not an AttributeError later)."""
    from tfprec.statistics.gains import NoiseGains   # local: avoids a cycle
    if not isinstance(gains, NoiseGains):
        raise PlanError(f"{name} must be a tfprec.NoiseGains (from "
                        f"tfprec.noise_gains or NoiseGains.from_dict), got "
                        f"{type(gains).__name__}")
    if not gains.layers:
        raise PlanError(f"{name} has no weight layers")
    return gains


def plan_from_gains(gains, weight_bits: Sequence[int], act_bits: Sequence[int],
                    method: str, target: Optional[float] = None,
                    info: Optional[dict] = None) -> PrecisionPlan:
    """The plan of ``gains`` at per-layer bits (layer order of the gains),
    carrying the gains' ranges, normalized gains, geometry and model
    ``fingerprint``.  Every plan constructor builds its plan here."""
    return PrecisionPlan(_layers_at(gains, weight_bits, act_bits), method, target,
                         dict(info or {}),
                         fingerprint=getattr(gains, "fingerprint", None))


def _bound(gw, ga, bw, ba) -> float:
    """The analytic bound sum_T 4^(1-B_T) G_T (probability)."""
    return AnalyticBound(gw, ga).value(bw, ba)


def _leads(gains) -> np.ndarray:
    """Index of the first reader of each layer's input tensor (itself if the
    input is not shared)."""
    first: dict = {}
    return np.array([first.setdefault(g.act_group or i, i)
                     for i, g in enumerate(gains.layers)], int)


def _gain_arrays(gains):
    """Per-layer G_W and activation gains with a shared tensor's gain held
    by its first reader only (so plain sums give the bound)."""
    gw = np.array([g.g_w for g in check_gains(gains).layers], float)
    lead = _leads(gains)
    ga = np.array([g.g_a_shared if lead[i] == i else 0.0
                   for i, g in enumerate(gains.layers)], float)
    return gw, ga


def _check_target(target: float) -> float:
    """A bound target: a mismatch probability in (0, 1] (PlanError naming
    ``target`` otherwise; bools, NaN, strings refused)."""
    return inputs.probability("target", target, error=PlanError)


def paper_offsets(gains) -> tuple:
    """Offsets b_T = round(log2 sqrt(G_T / G_min)) for weights and activations.

    G_min is the smallest positive normalized gain over all weight and
    activation tensors; tensors with zero gain get offset 0.  Layers that
    read one shared input tensor get that tensor's offset.
    """
    gw, ga = _gain_arrays(gains)
    allg = np.concatenate([gw, ga])
    pos = allg[allg > 0]
    if pos.size == 0:
        return np.zeros(len(gw), int), np.zeros(len(ga), int)
    gmin = pos.min()

    def off(g):
        return np.array([_round_half_up(0.5 * math.log2(v / gmin)) if v > 0 else 0
                         for v in g], int)
    return off(gw), off(ga)[_leads(gains)]


def paper_plan(gains, target: float = DEFAULT_TARGET, b_min: Optional[int] = None,
               max_bits: int = MAX_BITS) -> PrecisionPlan:
    """The ICASSP 2018 rule: B_T = B_min + b_T, smallest B_min meeting target.

    Args:
      gains: :class:`tfprec.NoiseGains`.
      target: bound on the mismatch probability to meet (ignored if b_min).
      b_min: use this B_min instead of searching (bits).
      max_bits: no tensor may exceed this many bits.

    Raises:
      UnattainableTargetError: no B_min keeps every tensor <= max_bits and
        meets the target.
    """
    check_gains(gains)
    ow, oa = paper_offsets(gains)
    bw, ba, target = _level_or_search(gains, lambda b: (b + ow, b + oa), b_min,
                                      target, MIN_BITS, "b_min", "B_min", max_bits)
    return plan_from_gains(gains, bw, ba, "paper", target,
                           {"offsets_w": ow.tolist(), "offsets_a": oa.tolist()})


def uniform_plan(gains, target: float = DEFAULT_TARGET, bits: Optional[int] = None,
                 max_bits: int = MAX_BITS) -> PrecisionPlan:
    """Every weight and activation tensor at the same B (bits)."""
    n = len(check_gains(gains).layers)
    bw, ba, target = _level_or_search(gains, lambda b: (np.full(n, b), np.full(n, b)),
                                      bits, target, MIN_BITS, "bits", "uniform B",
                                      max_bits)
    return plan_from_gains(gains, bw, ba, "uniform", target)


def icml2017_offset(gains) -> int:
    """B_W - B_A = round(log2 sqrt(sum G_W / sum G_A)) of the ICML 2017 rule."""
    gw, ga = _gain_arrays(gains)
    sw, sa = gw.sum(), ga.sum()
    if sw <= 0 or sa <= 0:
        return 0
    return _round_half_up(0.5 * math.log2(sw / sa))


def icml2017_plan(gains, target: float = DEFAULT_TARGET, act_bits: Optional[int] = None,
                  max_bits: int = MAX_BITS) -> PrecisionPlan:
    """ICML 2017 rule: one B_A for all activations, B_W = B_A + offset."""
    n = len(check_gains(gains).layers)
    d = icml2017_offset(gains)
    bw, ba, target = _level_or_search(gains, lambda b: (np.full(n, b + d), np.full(n, b)),
                                      act_bits, target, MIN_BITS - min(d, 0),
                                      "act_bits", "B_A", max_bits)
    return plan_from_gains(gains, bw, ba, "icml2017", target,
                           {"weight_minus_act_bits": d})


def _level_or_search(gains, make, level, target, first, arg, what, max_bits):
    """(bw, ba, target) of a one-level rule: at ``level`` (argument ``arg``,
    bits) if given (target None), else at the smallest level from ``first``
    up whose bound meets ``target``."""
    max_bits = check_bits("max_bits", max_bits)
    if level is not None:
        bw, ba = make(check_bits(arg, level, MIN_BITS, max_bits))
        lo, hi = min(bw.min(), ba.min()), max(bw.max(), ba.max())
        if lo < MIN_BITS or hi > max_bits:
            raise UnattainableTargetError(
                f"{what}={level} puts a tensor outside {MIN_BITS}..{max_bits} "
                f"bits (the plan needs {lo}..{hi}).")
        return bw, ba, None
    target = _check_target(target)
    gw, ga = _gain_arrays(gains)
    _, bw, ba = _search(range(first, max_bits + 1), make, lambda bw, ba: _bound(gw, ga, bw, ba),
                        target, what, max_bits)
    return bw, ba, target


def _search(levels, make, bound, target, what, max_bits):
    last = None
    for lev in levels:
        bw, ba = make(lev)
        if max(bw.max(), ba.max()) > max_bits:
            break
        if min(bw.min(), ba.min()) < MIN_BITS:
            continue
        last = (lev, bound(bw, ba))
        if last[1] <= target:
            return lev, bw, ba
    detail = "" if last is None else f"; at {what}={last[0]} the bound is {last[1]:.3g}"
    raise UnattainableTargetError(
        f"no {what} keeps every tensor at most {max_bits} bits and meets the "
        f"bound target {target:.3g}{detail}.")

