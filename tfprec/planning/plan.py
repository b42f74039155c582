"""Precision plans (METHOD.md section 3): bits per weight and activation tensor.

A :class:`PrecisionPlan` gives every weight layer a weight bit-width B_W
(kernel and bias, sign bit included) and an input-activation bit-width B_A,
with the range scales and signedness of both formats, the normalized gains
and the layer geometry, so that the analytic mismatch bound

    p_m <= sum_T 4^(1 - B_T) * G_T

and the cost model of :mod:`tfprec.cost` can be evaluated for any plan.

Constructors:

* :func:`paper_plan`: the ICASSP 2018 rule (equalized contributions, offsets
  from the normalized gains, smallest B_min meeting the target);
* :func:`uniform_plan`: one B for every tensor;
* :func:`icml2017_plan`: one B_A for all activations and one B_W for all
  weights with B_W - B_A = round(log2 sqrt(sum G_W / sum G_A));
* :func:`cost_aware_plan`: minimizes computational or representational cost
  subject to the same bound; never costs more than the paper's plan.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from typing import Optional, Sequence

import numpy as np

from tfprec.planning import cost as cost_lib
from tfprec.errors import PlanError, UnattainableTargetError
from tfprec.fixedpoint import MAX_BITS, MIN_BITS, step

SCHEMA = "tfprec.plan"
SCHEMA_VERSION = 1
DEFAULT_TARGET = 0.01


@dataclasses.dataclass(frozen=True)
class LayerPrecision:
    """Formats of one weight layer in a plan.

    Attributes:
      name: Keras layer name.
      layer_class: Keras class name.
      weight_bits: B_W in bits (sign included) for kernel and bias.
      act_bits: B_A in bits for the layer's input activation (sign bit
        included when ``act_signed``).
      weight_range: R_W, power of two; weights on [-R_W, R_W).
      act_range: R_A, power of two; inputs on [-R_A, R_A) if signed, else
        on [0, 2 R_A).
      act_signed: whether the input activation format is signed.
      g_w, g_a: normalized noise gains R^2 E (probability).
      dot_length, num_dots, num_weights, num_inputs: geometry for the cost
        model (see :mod:`tfprec.cost`).
      act_group: "" or the "+"-joined names of the weight layers that read
        the same input tensor; they share one activation format, and g_a is
        then the gain of that one shared tensor, counted once in the bound.
    """

    name: str
    layer_class: str
    weight_bits: int
    act_bits: int
    weight_range: float
    act_range: float
    act_signed: bool
    g_w: float
    g_a: float
    dot_length: int
    num_dots: int
    num_weights: int
    num_inputs: int
    act_group: str = ""

    @property
    def weight_step(self) -> float:
        """Weight quantization step Delta_W = R_W 2^(1-B_W)."""
        return step(self.weight_bits, self.weight_range)

    @property
    def act_step(self) -> float:
        """Activation quantization step Delta_A = R_A 2^(1-B_A)."""
        return step(self.act_bits, self.act_range)

    @property
    def weight_term(self) -> float:
        """This layer's weight contribution to the bound (probability)."""
        return 4.0 ** (1 - self.weight_bits) * self.g_w

    @property
    def act_term(self) -> float:
        """This layer's activation contribution to the bound (probability)."""
        return 4.0 ** (1 - self.act_bits) * self.g_a


@dataclasses.dataclass(frozen=True)
class PrecisionPlan:
    """Per-layer fixed-point precision of a model.

    Attributes:
      layers: one :class:`LayerPrecision` per weight layer, in model order.
      method: how the plan was made ("paper", "uniform", "icml2017",
        "cost_aware:compute", "cost_aware:memory", or a user label).
      target: the mismatch-probability target the plan was made for, if any.
      info: free-form metadata (JSON-serializable).
    """

    layers: tuple
    method: str = "custom"
    target: Optional[float] = None
    info: dict = dataclasses.field(default_factory=dict)

    # ------------------------------------------------------------ queries
    def layer(self, name: str) -> LayerPrecision:
        for lp in self.layers:
            if lp.name == name:
                return lp
        raise PlanError(f"plan has no layer named {name!r}; it has "
                        f"{[l.name for l in self.layers]}")

    @property
    def names(self) -> list:
        return [lp.name for lp in self.layers]

    @property
    def b_min(self) -> int:
        """Smallest bit-width over all tensors of the plan."""
        return min(min(l.weight_bits, l.act_bits) for l in self.layers)

    def bound(self) -> float:
        """Analytic mismatch bound sum_T 4^(1-B_T) G_T (probability).

        A shared input tensor (``act_group``) is one tensor T: its term is
        counted once.
        """
        seen = set()
        total = 0.0
        for l in self.layers:
            total += l.weight_term
            if not l.act_group or l.act_group not in seen:
                total += l.act_term
                seen.add(l.act_group)
        return float(total)

    def cost(self) -> cost_lib.PlanCost:
        """Computational (full adders) and representational (bits) cost."""
        return cost_lib.plan_cost(self.layers)

    def with_bits(self, weight_bits: dict = None, act_bits: dict = None,
                  method: str = None) -> "PrecisionPlan":
        """A copy with some layers' bits replaced (name -> bits)."""
        weight_bits = weight_bits or {}
        act_bits = dict(act_bits or {})
        for l in self.layers:          # a shared input changes for all readers
            if l.name in act_bits and l.act_group:
                for other in l.act_group.split("+"):
                    act_bits.setdefault(other, act_bits[l.name])
        layers = tuple(dataclasses.replace(
            l, weight_bits=int(weight_bits.get(l.name, l.weight_bits)),
            act_bits=int(act_bits.get(l.name, l.act_bits))) for l in self.layers)
        plan = dataclasses.replace(self, layers=layers,
                                   method=method or self.method)
        plan.check()
        return plan

    # --------------------------------------------------------- validation
    def check(self) -> None:
        """Raises PlanError if a field is out of range."""
        if not self.layers:
            raise PlanError("plan has no layers")
        seen = set()
        for l in self.layers:
            if l.name in seen:
                raise PlanError(f"plan lists layer {l.name!r} twice")
            seen.add(l.name)
            for f in ("weight_bits", "act_bits"):
                b = getattr(l, f)
                if not isinstance(b, (int, np.integer)) or not MIN_BITS <= b <= MAX_BITS:
                    raise PlanError(
                        f"layer {l.name!r}: {f}={b!r} is outside the supported "
                        f"{MIN_BITS}..{MAX_BITS} bits")
            for f in ("weight_range", "act_range"):
                r = getattr(l, f)
                if not (isinstance(r, (int, float)) and r > 0
                        and math.log2(r) == round(math.log2(r))):
                    raise PlanError(f"layer {l.name!r}: {f}={r!r} is not a "
                                    "positive power of two")
            if l.act_group:
                first = next(m for m in self.layers if m.act_group == l.act_group)
                for f in ("act_bits", "act_range", "act_signed", "g_a"):
                    if getattr(first, f) != getattr(l, f):
                        raise PlanError(
                            f"layers {first.name!r} and {l.name!r} read the same "
                            f"input tensor but differ in {f} "
                            f"({getattr(first, f)} vs {getattr(l, f)})")
            for f in ("g_w", "g_a"):
                g = getattr(l, f)
                if not (isinstance(g, (int, float)) and g >= 0 and math.isfinite(g)):
                    raise PlanError(f"layer {l.name!r}: {f}={g!r} must be a "
                                    "finite non-negative number")

    def validate_for(self, model) -> None:
        """Raises PlanError unless the plan matches the model's weight layers.

        Compares layer names, order, classes and geometry (weights, dot
        length, dot products, inputs).
        """
        from tfprec.statistics.gains import layer_geometry  # local: avoids a cycle
        geo = layer_geometry(model)
        names = [g["name"] for g in geo]
        if names != self.names:
            missing = [n for n in names if n not in self.names]
            extra = [n for n in self.names if n not in names]
            raise PlanError(
                f"plan does not match model '{model.name}': model weight layers "
                f"{names}, plan layers {self.names}"
                + (f"; missing from plan: {missing}" if missing else "")
                + (f"; not in model: {extra}" if extra else ""))
        for g, l in zip(geo, self.layers):
            for f in ("layer_class", "num_weights", "dot_length", "num_dots",
                      "num_inputs"):
                if g[f] != getattr(l, f):
                    raise PlanError(
                        f"plan does not match model '{model.name}' at layer "
                        f"{l.name!r}: {f} is {getattr(l, f)} in the plan but "
                        f"{g[f]} in the model")

    # ------------------------------------------------------- serialization
    def to_dict(self) -> dict:
        return {"schema": SCHEMA, "version": SCHEMA_VERSION,
                "method": self.method, "target": self.target,
                "bound": self.bound(),
                "cost": {"compute_full_adders": self.cost().total_compute,
                         "memory_bits": self.cost().total_memory},
                "info": self.info,
                "layers": [dataclasses.asdict(l) for l in self.layers]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict) -> "PrecisionPlan":
        if not isinstance(d, dict) or d.get("schema") != SCHEMA:
            raise PlanError(f"not a tfprec plan (schema must be {SCHEMA!r})")
        if d.get("version") != SCHEMA_VERSION:
            raise PlanError(f"plan schema version {d.get('version')!r} is not "
                            f"supported (this tfprec reads {SCHEMA_VERSION})")
        fields = [f.name for f in dataclasses.fields(LayerPrecision)]
        layers = []
        for i, ld in enumerate(d.get("layers") or []):
            if not isinstance(ld, dict):
                raise PlanError(f"plan layer #{i} is not an object")
            missing = [f for f in fields if f not in ld and f != "act_group"]
            if missing:
                raise PlanError(f"plan layer #{i} ({ld.get('name', '?')!r}) "
                                f"lacks fields {missing}")
            unknown = sorted(set(ld) - set(fields))
            if unknown:
                raise PlanError(f"plan layer #{i} ({ld.get('name', '?')!r}) "
                                f"has unknown fields {unknown}")
            layers.append(LayerPrecision(**ld))
        plan = cls(tuple(layers), str(d.get("method", "custom")),
                   d.get("target"), dict(d.get("info") or {}))
        plan.check()
        return plan

    @classmethod
    def from_json(cls, text: str) -> "PrecisionPlan":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise PlanError(f"plan is not valid JSON: {e}") from None
        return cls.from_dict(d)

    def save(self, path: str) -> None:
        """Writes the plan as JSON atomically (temp file, then rename).

        Raises:
          PlanError: the file cannot be written (nothing is left behind).
        """
        try:
            atomic_write_text(path, self.to_json())
        except OSError as e:
            raise PlanError(f"cannot write plan to {path!r}: {e.strerror or e}") from None

    @classmethod
    def load(cls, path: str) -> "PrecisionPlan":
        try:
            with open(path) as f:
                text = f.read()
        except OSError as e:
            raise PlanError(f"cannot read plan file {path!r}: {e.strerror}") from None
        try:
            return cls.from_json(text)
        except PlanError as e:
            raise PlanError(f"{path}: {e}") from None


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Writes ``data`` to ``path`` via a temp file in the same directory.

    OSError propagates unchanged; no partial file is left behind on failure.
    """
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tfprec-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


# ================================================================ rules
def _round_half_up(v: float) -> int:
    return int(math.floor(v + 0.5))


def _layers_at(gains, weight_bits: Sequence[int], act_bits: Sequence[int]) -> tuple:
    return tuple(LayerPrecision(
        name=g.name, layer_class=g.layer_class, weight_bits=int(bw),
        act_bits=int(ba), weight_range=g.r_w, act_range=g.r_a,
        act_signed=g.act_signed, g_w=g.g_w, g_a=g.g_a_shared,
        dot_length=g.dot_length, num_dots=g.num_dots,
        num_weights=g.num_weights, num_inputs=g.num_inputs,
        act_group=g.act_group)
        for g, bw, ba in zip(gains.layers, weight_bits, act_bits))


def _bound(gw, ga, bw, ba) -> float:
    return float(np.sum(4.0 ** (1 - np.asarray(bw, float)) * gw)
                 + np.sum(4.0 ** (1 - np.asarray(ba, float)) * ga))


def _leads(gains) -> np.ndarray:
    """Index of the first reader of each layer's input tensor (itself if the
    input is not shared)."""
    first: dict = {}
    return np.array([first.setdefault(g.act_group or i, i)
                     for i, g in enumerate(gains.layers)], int)


def _gain_arrays(gains):
    """Per-layer G_W and activation gains with a shared tensor's gain held
    by its first reader only (so plain sums give the bound)."""
    gw = np.array([g.g_w for g in gains.layers], float)
    lead = _leads(gains)
    ga = np.array([g.g_a_shared if lead[i] == i else 0.0
                   for i, g in enumerate(gains.layers)], float)
    return gw, ga


def _check_target(target: float) -> float:
    if not (isinstance(target, (int, float)) and 0 < target and math.isfinite(target)):
        raise PlanError(f"target mismatch probability must be a positive "
                        f"number, got {target!r}")
    return float(target)


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
    ow, oa = paper_offsets(gains)
    bw, ba, target = _level_or_search(gains, lambda b: (b + ow, b + oa), b_min,
                                      target, range(MIN_BITS, max_bits + 1),
                                      "B_min", max_bits)
    return PrecisionPlan(_layers_at(gains, bw, ba), "paper", target,
                         {"offsets_w": ow.tolist(), "offsets_a": oa.tolist()})


def uniform_plan(gains, target: float = DEFAULT_TARGET, bits: Optional[int] = None,
                 max_bits: int = MAX_BITS) -> PrecisionPlan:
    """Every weight and activation tensor at the same B (bits)."""
    n = len(gains.layers)
    bw, ba, target = _level_or_search(gains, lambda b: (np.full(n, b), np.full(n, b)),
                                      bits, target, range(MIN_BITS, max_bits + 1),
                                      "uniform B", max_bits)
    return PrecisionPlan(_layers_at(gains, bw, ba), "uniform", target)


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
    n = len(gains.layers)
    d = icml2017_offset(gains)
    bw, ba, target = _level_or_search(gains, lambda b: (np.full(n, b + d), np.full(n, b)),
                                      act_bits, target,
                                      range(MIN_BITS - min(d, 0), max_bits + 1),
                                      "B_A", max_bits)
    return PrecisionPlan(_layers_at(gains, bw, ba), "icml2017", target,
                         {"weight_minus_act_bits": d})


def _level_or_search(gains, make, level, target, levels, what, max_bits):
    """(bw, ba, target) of a one-level rule: at ``level`` if given (target
    None), else at the smallest of ``levels`` whose bound meets ``target``."""
    if level is not None:
        bw, ba = make(int(level))
        lo, hi = min(bw.min(), ba.min()), max(bw.max(), ba.max())
        if lo < MIN_BITS or hi > max_bits:
            raise UnattainableTargetError(
                f"{what}={level} puts a tensor outside {MIN_BITS}..{max_bits} "
                f"bits (the plan needs {lo}..{hi}).")
        return bw, ba, None
    target = _check_target(target)
    gw, ga = _gain_arrays(gains)
    _, bw, ba = _search(levels, make, lambda bw, ba: _bound(gw, ga, bw, ba),
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


# ====================================================== cost-aware plan
def _layer_costs(gains, kind):
    """cost[l][bw, ba] tables for bits 0..MAX_BITS (index = bits)."""
    b = np.arange(MAX_BITS + 1, dtype=float)
    tabs = []
    for g in gains.layers:
        bw = b[:, None]
        ba = b[None, :]
        if kind == "compute":
            d = g.dot_length
            t = g.num_dots * (d * ba * bw + (d - 1) * (ba + bw + math.ceil(math.log2(d)) - 1))
        elif kind == "memory":
            t = bw * g.num_weights + ba * g.num_inputs
        else:
            raise PlanError(f"cost kind must be one of {cost_lib.COST_KINDS}, got {kind!r}")
        tabs.append(np.broadcast_to(t, (MAX_BITS + 1, MAX_BITS + 1)))
    return tabs


def _total_cost(tabs, bw, ba) -> float:
    return float(sum(t[w, a] for t, w, a in zip(tabs, bw, ba)))


def _members(lead) -> list:
    """For each layer i: the layers whose activation bits move with i's."""
    return [np.flatnonzero(lead == lead[i]) for i in range(len(lead))]


def _descend(tabs, gw, ga, bw, ba, target, max_bits, lead):
    """Greedy: remove one bit at a time, best cost saved per bound added.

    An activation move on a shared input lowers it for all its readers.
    """
    bw = np.array(bw, int)
    ba = np.array(ba, int)
    n = len(bw)
    members = _members(lead)
    cur = _bound(gw, ga, bw, ba)
    while True:
        best = None
        for which, arr, g in (("w", bw, gw), ("a", ba, ga)):
            for i in range(n):
                if arr[i] <= MIN_BITS or (which == "a" and lead[i] != i):
                    continue
                dbound = g[i] * (4.0 ** (1 - (arr[i] - 1)) - 4.0 ** (1 - arr[i]))
                if cur + dbound > target * (1 + 1e-12):
                    continue
                if which == "w":
                    dcost = tabs[i][bw[i], ba[i]] - tabs[i][bw[i] - 1, ba[i]]
                else:
                    dcost = sum(tabs[j][bw[j], ba[j]] - tabs[j][bw[j], ba[j] - 1]
                                for j in members[i])
                if dcost <= 0 and dbound > 0:
                    continue
                score = dcost / dbound if dbound > 0 else math.inf
                if best is None or score > best[0]:
                    best = (score, which, i, dbound)
        if best is None:
            return bw, ba
        _, which, i, dbound = best
        if which == "w":
            bw[i] -= 1
        else:
            ba[members[i]] -= 1
        cur += dbound


def _improve(tabs, gw, ga, bw, ba, target, max_bits, lead):
    """Local search: raise one tensor by a bit, re-descend; keep if cheaper."""
    bw, ba = _descend(tabs, gw, ga, bw, ba, target, max_bits, lead)
    best = _total_cost(tabs, bw, ba)
    members = _members(lead)
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
                    ta[members[i]] += 1
                tw, ta = _descend(tabs, gw, ga, tw, ta, target, max_bits, lead)
                c = _total_cost(tabs, tw, ta)
                if c < best - 1e-9:
                    bw, ba, best, improved = tw, ta, c, True
    return bw, ba


def _knapsack(tabs, gw, ga, target, max_bits, units: int = 2000):
    """Multiple-choice knapsack by dynamic programming over a bound budget.

    Each layer picks (B_W, B_A); its bound terms are rounded *up* to units of
    target/units, so the result always meets the target; cost is minimized
    exactly under that rounding.  Returns (bw, ba) or None if infeasible.
    """
    b = np.arange(MAX_BITS + 1)
    pw = 4.0 ** (1 - b.astype(float))
    ok = (b >= MIN_BITS) & (b <= max_bits)
    f = np.zeros(units + 1)
    choices = []
    for t, w, a in zip(tabs, gw, ga):
        q = np.ceil((w * pw[:, None] + a * pw[None, :]) / target * units - 1e-9)
        opts = [(int(q[i, j]), float(t[i, j]), i, j) for i in b[ok] for j in b[ok]
                if q[i, j] <= units]
        new = np.full(units + 1, np.inf)
        arg = np.full(units + 1, -1)
        for k, (qq, c, _, _) in enumerate(opts):
            cand = np.full(units + 1, np.inf)
            cand[qq:] = f[:units + 1 - qq] + c
            better = cand < new
            new[better] = cand[better]
            arg[better] = k
        f = new
        choices.append((opts, arg))
    if not np.isfinite(f[units]):
        return None
    u = units
    bw, ba = [], []
    for opts, arg in reversed(choices):
        qq, _, i, j = opts[arg[u]]
        bw.append(i)
        ba.append(j)
        u -= qq
    return np.array(bw[::-1]), np.array(ba[::-1])


def _lagrangian(tabs, gw, ga, lam, max_bits):
    """Per layer: argmin over (bw, ba) of cost + lam * bound terms."""
    b = np.arange(MAX_BITS + 1, dtype=float)
    pw = 4.0 ** (1 - b)
    bw_out, ba_out = [], []
    for t, w, a in zip(tabs, gw, ga):
        obj = t + lam * (w * pw[:, None] + a * pw[None, :])
        obj = obj.copy()
        obj[:MIN_BITS, :] = np.inf
        obj[:, :MIN_BITS] = np.inf
        obj[max_bits + 1:, :] = np.inf
        obj[:, max_bits + 1:] = np.inf
        i, j = np.unravel_index(np.argmin(obj), obj.shape)
        bw_out.append(i)
        ba_out.append(j)
    return np.array(bw_out), np.array(ba_out)


def cost_aware_plan(gains, target: float = DEFAULT_TARGET, cost: str = "compute",
                    max_bits: int = MAX_BITS) -> PrecisionPlan:
    """Cheapest plan found whose analytic bound meets ``target``.

    Minimizes the computational cost (``cost="compute"``, full adders) or the
    representational cost (``cost="memory"``, bits) subject to
    sum_T 4^(1-B_T) G_T <= target, B_T in [2, max_bits].  Candidates: a
    multiple-choice knapsack solved by dynamic programming over the bound
    budget (exact up to rounding the budget into 2000 parts), the
    Lagrangian relaxation (these two only when no layers share an input
    tensor, since they optimize layer by layer) (per-layer exact minimization of cost + lambda *
    bound, lambda bisected to the target) and the paper's and uniform plans,
    each followed by a greedy descent that removes the bit with the best
    cost saved per bound added while the target holds, and a local search
    that raises one tensor by a bit and descends again while that helps.  The cheapest
    candidate is returned, so the result never costs more than the paper's
    plan at the same target.

    Raises:
      UnattainableTargetError: even max_bits everywhere misses the target.
    """
    target = _check_target(target)
    gw, ga = _gain_arrays(gains)
    n = len(gw)
    top = np.full(n, max_bits)
    if _bound(gw, ga, top, top) > target:
        raise UnattainableTargetError(
            f"even {max_bits} bits for every tensor gives a bound of "
            f"{_bound(gw, ga, top, top):.3g} > target {target:.3g}.")
    tabs = _layer_costs(gains, cost)
    lead = _leads(gains)
    independent = bool(np.all(lead == np.arange(n)))
    cands = []
    for make in (lambda: paper_plan(gains, target, max_bits=max_bits),
                 lambda: uniform_plan(gains, target, max_bits=max_bits)):
        try:
            p = make()
        except UnattainableTargetError:
            continue
        cands.append((np.array([l.weight_bits for l in p.layers]),
                      np.array([l.act_bits for l in p.layers])))
    # Lagrangian: bisection on lambda in log space (per-layer minimization:
    # only when no layers share an input tensor).
    lo, hi = -30.0, 60.0
    best_lag = None
    for _ in range(80 if independent else 0):
        mid = 0.5 * (lo + hi)
        bw, ba = _lagrangian(tabs, gw, ga, 10.0 ** mid, max_bits)
        if _bound(gw, ga, bw, ba) <= target:
            best_lag = (bw, ba)
            hi = mid
        else:
            lo = mid
    if best_lag is not None:
        cands.append(best_lag)
    knap = _knapsack(tabs, gw, ga, target, max_bits) if independent else None
    if knap is not None:
        cands.append(knap)
    cands.append((top, top))
    results = []
    for bw, ba in cands:
        bw2, ba2 = _improve(tabs, gw, ga, bw, ba, target, max_bits, lead)
        results.append((_total_cost(tabs, bw2, ba2), _bound(gw, ga, bw2, ba2),
                        bw2, ba2))
    results.sort(key=lambda r: (r[0], r[1]))
    _, _, bw, ba = results[0]
    return PrecisionPlan(_layers_at(gains, bw, ba), f"cost_aware:{cost}", target)


# ============================================ per-example (clipped) bound
def _example_terms(gains):
    """Per-example normalized gains [N, L] (weights, activations), a shared
    input tensor held by its first reader only."""
    if gains.example_w is None or gains.example_a is None:
        raise PlanError("the per-example bound needs gains computed with "
                        "noise_gains(..., per_example=True)")
    rw2 = np.array([g.r_w ** 2 for g in gains.layers])
    ra2 = np.array([g.r_a ** 2 for g in gains.layers])
    lead = _leads(gains)
    sa = gains.example_a * ra2 * (lead == np.arange(len(lead)))
    return gains.example_w * rw2, sa


def per_example_bound(plan: PrecisionPlan, gains) -> float:
    """Per-example mismatch bound: mean_x min(1, sum_T 4^(1-B_T) G_T(x)).

    The paper's argument bounds each example's flip probability by
    sum_T Delta_T^2 e_T(x); a probability is also at most 1, so the mean of
    the per-example bounds capped at 1 is a valid bound too, never above
    ``plan.bound()`` and much tighter when a few near-tied examples dominate
    the gains.  Needs ``noise_gains(..., per_example=True)``.
    """
    if [l.name for l in gains.layers] != plan.names:
        raise PlanError(f"plan layers {plan.names} do not match the gains' "
                        f"layers {[l.name for l in gains.layers]}")
    sw, sa = _example_terms(gains)
    bw = np.array([l.weight_bits for l in plan.layers], float)
    ba = np.array([l.act_bits for l in plan.layers], float)
    b = sw @ 4.0 ** (1 - bw) + sa @ 4.0 ** (1 - ba)
    return float(np.mean(np.minimum(b, 1.0)))


def _descend_per_example(tabs, sw, sa, bw, ba, target, lead):
    """Greedy bit removal under the per-example bound (as _descend)."""
    bw = np.array(bw, int)
    ba = np.array(ba, int)
    members = _members(lead)
    cw = sw * 4.0 ** (1 - bw)                 # [N, L] current contributions
    ca = sa * 4.0 ** (1 - ba)
    b = cw.sum(1) + ca.sum(1)
    cur = np.mean(np.minimum(b, 1.0))
    n = len(bw)
    while True:
        # Removing a bit multiplies a tensor's contribution by 4.
        new_w = np.minimum(b[:, None] + 3 * cw, 1.0).mean(0)
        new_a = np.minimum(b[:, None] + 3 * ca, 1.0).mean(0)
        best = None
        for which, arr, new in (("w", bw, new_w), ("a", ba, new_a)):
            for i in range(n):
                if arr[i] <= MIN_BITS or (which == "a" and lead[i] != i):
                    continue
                if new[i] > target * (1 + 1e-12):
                    continue
                if which == "w":
                    dcost = tabs[i][bw[i], ba[i]] - tabs[i][bw[i] - 1, ba[i]]
                else:
                    dcost = sum(tabs[j][bw[j], ba[j]] - tabs[j][bw[j], ba[j] - 1]
                                for j in members[i])
                dbound = new[i] - cur
                if dcost <= 0 and dbound > 0:
                    continue
                score = dcost / dbound if dbound > 0 else math.inf
                if best is None or score > best[0]:
                    best = (score, which, i)
        if best is None:
            return bw, ba
        _, which, i = best
        if which == "w":
            b += 3 * cw[:, i]
            cw[:, i] *= 4
            bw[i] -= 1
        else:
            b += 3 * ca[:, i]
            ca[:, i] *= 4
            ba[members[i]] -= 1
        cur = np.mean(np.minimum(b, 1.0))


def per_example_cost_aware_plan(gains, target: float = DEFAULT_TARGET,
                                cost: str = "compute",
                                max_bits: int = MAX_BITS) -> PrecisionPlan:
    """Cheapest plan found whose *per-example* bound meets ``target``.

    Like :func:`cost_aware_plan`, with the constraint
    :func:`per_example_bound` <= target (probability) instead of the
    paper's bound.  Starts from every plan of :func:`cost_aware_plan` and
    :func:`uniform_plan` that meets the per-example target (the paper's
    bound is never below it) and removes bits greedily while it holds.
    Needs ``noise_gains(..., per_example=True)``.
    """
    target = _check_target(target)
    sw, sa = _example_terms(gains)
    n = len(gains.layers)
    lead = _leads(gains)
    tabs = _layer_costs(gains, cost)

    def pe(bw, ba):
        return float(np.mean(np.minimum(sw @ 4.0 ** (1 - np.asarray(bw, float))
                                        + sa @ 4.0 ** (1 - np.asarray(ba, float)), 1.0)))
    top = np.full(n, max_bits)
    if pe(top, top) > target:
        raise UnattainableTargetError(
            f"even {max_bits} bits for every tensor gives a per-example bound "
            f"of {pe(top, top):.3g} > target {target:.3g}.")
    starts = [(top, top)]
    for b in range(MIN_BITS, max_bits + 1):    # cheapest uniform start
        u = np.full(n, b)
        if pe(u, u) <= target:
            starts.append((u, u))
            break
    try:
        ca = cost_aware_plan(gains, target, cost=cost, max_bits=max_bits)
        starts.append((np.array([l.weight_bits for l in ca.layers]),
                       np.array([l.act_bits for l in ca.layers])))
    except UnattainableTargetError:
        pass
    results = []
    for bw, ba in starts:
        bw2, ba2 = _descend_per_example(tabs, sw, sa, bw, ba, target, lead)
        results.append((_total_cost(tabs, bw2, ba2), pe(bw2, ba2), bw2, ba2))
    results.sort(key=lambda r: (r[0], r[1]))
    _, bound, bw, ba = results[0]
    return PrecisionPlan(_layers_at(gains, bw, ba), f"cost_aware_pe:{cost}", target,
                         {"per_example_bound": bound})


PLAN_METHODS = ("paper", "cost_aware", "uniform", "icml2017")


def make_plan(gains, method: str = "paper", target: float = DEFAULT_TARGET,
              cost: str = "compute", max_bits: int = MAX_BITS) -> PrecisionPlan:
    """The plan of ``method`` that meets the analytic ``target``.

    Args:
      gains: :class:`tfprec.NoiseGains`.
      method: one of ``PLAN_METHODS``.
      target: bound on the mismatch probability.
      cost: "compute" or "memory", for ``method="cost_aware"``.
      max_bits: largest bit-width allowed for any tensor.
    """
    if method == "paper":
        return paper_plan(gains, target, max_bits=max_bits)
    if method == "cost_aware":
        return cost_aware_plan(gains, target, cost=cost, max_bits=max_bits)
    if method == "uniform":
        return uniform_plan(gains, target, max_bits=max_bits)
    if method == "icml2017":
        return icml2017_plan(gains, target, max_bits=max_bits)
    raise PlanError(f"unknown plan method {method!r}; choose one of {PLAN_METHODS}")
