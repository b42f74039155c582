"""The tables of a precision report: per-layer rows of a plan, the plans
compared, the precision sweep, as plain text (terminal) or markdown.

Units: probabilities (bound, mismatch, its upper confidence limit) are
fractions in [0, 1]; accuracies are printed in %; bit-widths in bits;
computational cost in 1-bit full adders (FA) per example, representational
cost in bits.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

from tfprec.application.figures import base_method
from tfprec.planning.rules import level_text

CONFIDENCE = 0.95


# ====================================================================== numbers
def mismatch_ucl(num_mismatch: int, num_examples: int,
                 confidence: float = CONFIDENCE) -> Optional[float]:
    """One-sided Clopper-Pearson upper confidence limit of a mismatch rate
    (a probability), :func:`tfprec.planning.calibrate.clopper_pearson_upper`;
    None when there are no examples or the counts are inconsistent."""
    from tfprec.planning.calibrate import clopper_pearson_upper
    k, n = int(num_mismatch), int(num_examples)
    if n < 1 or not 0 <= k <= n:
        return None
    return clopper_pearson_upper(k, n, confidence)


def plan_level(plan) -> Optional[int]:
    """The one-number level of a rule's plan: B_min (paper), B (uniform), B_A
    (icml2017); None for plans that have no single level (cost-aware)."""
    m = base_method(plan.method)
    if m == "paper" or m == "uniform":
        return int(plan.b_min)
    if m == "icml2017":
        return int(min(l.act_bits for l in plan.layers if l.act_bits is not None))
    return None



def bound_verdict(rate: float, bound: float, no: str = "**no**") -> str:
    """Whether a measured mismatch rate is within the analytic bound (both
    probabilities): 'yes', ``no``, or 'vacuous (bound >= 1)' for a bound that
    says nothing."""
    if bound >= 1.0:
        return "vacuous (bound >= 1)"
    return "yes" if rate <= bound else no


def _pct(v, digits: int = 2) -> str:
    return "n/a" if v is None else f"{100.0 * v:.{digits}f}"


def _g(v, spec: str = ".3g") -> str:
    return "n/a" if v is None else format(v, spec)


def _int(v) -> str:
    return "n/a" if v is None else f"{v:,.0f}"


def _range(r: float, signed: bool) -> str:
    return f"[-{r:g}, {r:g})" if signed else f"[0, {2 * r:g})"


# ====================================================================== rows
@dataclasses.dataclass(frozen=True)
class PlanSummary:
    """One plan in the comparison table.

    Attributes:
      method: the plan's method label ("paper", "cost_aware:compute", ...).
      level: the rule's level (B_min, B, B_A in bits; the bound target t of
        a calibrated cost-aware plan) or None.
      bound: analytic mismatch bound (probability; may exceed 1).
      compute_cost: full adders per example.
      memory_cost: bits.
      num_examples, num_mismatch: held-out examples and changed decisions
        (None when not measured).
      mismatch_rate: num_mismatch / num_examples.
      mismatch_ucl: one-sided upper confidence limit of the rate.
      float_accuracy, quant_accuracy: fractions in [0, 1] or None.
      chosen: whether this is the plan the run selected.
      note: free text (e.g. a calibrated plan's guarantee).
      plan: the plan itself (optional; used for the per-layer bits).
    """

    method: str
    level: Optional[float]
    bound: float
    compute_cost: float
    memory_cost: float
    num_examples: Optional[int] = None
    num_mismatch: Optional[int] = None
    mismatch_rate: Optional[float] = None
    mismatch_ucl: Optional[float] = None
    float_accuracy: Optional[float] = None
    quant_accuracy: Optional[float] = None
    chosen: bool = False
    note: str = ""
    plan: object = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def family(self) -> str:
        return base_method(self.method)

    @classmethod
    def from_plan(cls, plan, validation=None, chosen: bool = False,
                  level=None, note: str = "") -> "PlanSummary":
        """From a plan and, optionally, its :class:`~tfprec.validate.ValidationResult`."""
        cost = plan.cost()
        kw = {}
        if validation is not None:
            v = validation
            kw = dict(num_examples=v.num_examples, num_mismatch=v.num_mismatch,
                      mismatch_rate=v.mismatch_rate,
                      mismatch_ucl=mismatch_ucl(v.num_mismatch, v.num_examples),
                      float_accuracy=v.float_accuracy, quant_accuracy=v.quant_accuracy)
        return cls(method=plan.method,
                   level=plan_level(plan) if level is None else level,
                   bound=float(plan.bound()),
                   compute_cost=float(cost.total_compute),
                   memory_cost=float(cost.total_memory), chosen=chosen, note=note,
                   plan=plan, **kw)

    @classmethod
    def from_calibrated(cls, cp, chosen: bool = False) -> "PlanSummary":
        """From a :class:`tfprec.calibrate.CalibratedPlan`."""
        return cls(method=cp.plan.method,
                   level=cp.level, bound=float(cp.bound),
                   compute_cost=float(cp.compute_cost), memory_cost=float(cp.memory_cost),
                   num_examples=int(cp.num_examples),
                   num_mismatch=int(getattr(cp, "num_mismatch",
                                            round(cp.measured_mismatch * cp.num_examples))),
                   mismatch_rate=float(cp.measured_mismatch),
                   mismatch_ucl=float(cp.mismatch_ucl),
                   float_accuracy=cp.float_accuracy, quant_accuracy=cp.quant_accuracy,
                   chosen=chosen, note=str(getattr(cp, "guarantee", "")), plan=cp.plan)

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
             if f.name != "plan"}
        return d


def layer_rows(plan, gains=None) -> list:
    """Per-layer values of ``plan`` (and ``gains`` for E_W, E_A) as dicts."""
    cost = plan.cost()
    glook = {}
    if gains is not None:
        glook = {lg.name: lg for lg in gains.layers}
    rows = []
    for l in plan.layers:
        lg = glook.get(l.name)
        rows.append({
            "layer": l.name, "class": l.layer_class,
            "weight_bits": l.weight_bits, "act_bits": l.act_bits,
            "g_w": l.g_w, "g_a": l.g_a,
            "e_w": None if lg is None else lg.e_w,
            "e_a": None if lg is None else lg.e_a,
            "weight_range": l.weight_range, "act_range": l.act_range,
            "weight_channel_ranges": getattr(l, "weight_channel_ranges", None),
            "act_signed": l.act_signed,
            "act_range_source": None if lg is None else lg.act_range_source,
            "weight_step": l.weight_step, "act_step": l.act_step,
            "weight_term": l.weight_term, "act_term": l.act_term,
            "compute_cost": cost.compute[l.name], "memory_cost": cost.memory[l.name],
        })
    return rows


def _weight_range(r: dict) -> str:
    """The weight range of a layer row; per-channel ranges as the largest
    and the smallest R_c."""
    rc = r.get("weight_channel_ranges")
    if rc is None:
        return _range(r["weight_range"], True)
    return f"{_range(r['weight_range'], True)} per channel (R_c >= {min(rc):g})"


def layer_table_text(plan, gains=None) -> str:
    """Plain-text per-layer table (for a terminal): layer, B_W, B_A, G_W,
    G_A, weight and input ranges, computational and representational cost."""
    head = ["layer", "B_W", "B_A", "G_W", "G_A", "weight range", "input range",
            "compute (FA)", "memory (bits)"]
    body = []
    for r in layer_rows(plan, gains):
        ids = r["act_bits"] is None         # an Embedding: integer ids, no format
        body.append([
            r["layer"], str(r["weight_bits"]),
            "-" if ids else f"{r['act_bits']}{'s' if r['act_signed'] else 'u'}",
            f"{r['g_w']:.3g}", "-" if ids else f"{r['g_a']:.3g}",
            _weight_range(r),
            "integer ids" if ids else _range(r["act_range"], r["act_signed"]),
            _int(r["compute_cost"]), _int(r["memory_cost"])])
    c = plan.cost()
    body.append(["total", "", "", "", "", "", "", _int(c.total_compute),
                 _int(c.total_memory)])
    widths = [max(len(head[i]), *(len(b[i]) for b in body)) for i in range(len(head))]
    left = {0, 5, 6}

    def fmt(cells):
        return "  ".join(c.ljust(w) if i in left else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    lines = [fmt(head), fmt(["-" * w for w in widths])]
    lines += [fmt(b) for b in body[:-1]]
    lines.append(fmt(["-" * w for w in widths]))
    lines.append(fmt(body[-1]))
    lines.append("B_A: 's' signed input format [-R, R), 'u' unsigned [0, 2R); "
                 "G = R^2 E (normalized noise gain)"
                 + ("; '-': integer token ids (Embedding), not quantized"
                    if any(l.act_bits is None for l in plan.layers) else ""))
    return "\n".join(lines)


def layer_table_markdown(plan, gains=None) -> str:
    """Markdown per-layer table of the plan: gains, bits, ranges, costs."""
    lines = [
        "| layer | class | E_W | E_A | G_W | G_A | B_W | B_A | weight range "
        "(step) | input range (step) | input sign | W term | A term | "
        "compute (FA) | memory (bits) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---|---|---:|---:|---:|---:|"]
    for r in layer_rows(plan, gains):
        src = f", {r['act_range_source']}" if r["act_range_source"] else ""
        if r["act_bits"] is None:       # an Embedding: integer ids, no format
            lines.append(
                f"| {r['layer']} | {r['class']} | {_g(r['e_w'])} | - | "
                f"{r['g_w']:.3g} | - | {r['weight_bits']} | - | "
                f"{_weight_range(r)} ({r['weight_step']:.3g}) | "
                f"integer ids | - | {r['weight_term']:.3g} | 0 | "
                f"{_int(r['compute_cost'])} | {_int(r['memory_cost'])} |")
            continue
        lines.append(
            f"| {r['layer']} | {r['class']} | {_g(r['e_w'])} | {_g(r['e_a'])} | "
            f"{r['g_w']:.3g} | {r['g_a']:.3g} | {r['weight_bits']} | {r['act_bits']} | "
            f"{_weight_range(r)} ({r['weight_step']:.3g}) | "
            f"{_range(r['act_range'], r['act_signed'])} ({r['act_step']:.3g}) | "
            f"{'signed' if r['act_signed'] else 'unsigned'}{src} | "
            f"{r['weight_term']:.3g} | {r['act_term']:.3g} | "
            f"{_int(r['compute_cost'])} | {_int(r['memory_cost'])} |")
    c = plan.cost()
    lines.append(f"| **total** | | | | | | | | | | | "
                 f"{sum(l.weight_term for l in plan.layers):.3g} | "
                 f"{sum(l.act_term for l in plan.layers):.3g} | "
                 f"**{_int(c.total_compute)}** | **{_int(c.total_memory)}** |")
    return "\n".join(lines) + "\n"


def comparison_markdown(summaries: Sequence[PlanSummary]) -> str:
    """Markdown table comparing plans (bound next to measured mismatch)."""
    if not summaries:
        return "_no plans to compare_\n"
    ref = next((s for s in summaries if s.chosen), summaries[0])
    lines = [
        "| plan | level | B_min | bound | measured mismatch | UCL 95% | "
        "float acc % | quant acc % | compute (FA) | x chosen | memory (bits) | "
        "x chosen |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in summaries:
        name = f"**{s.method}** (chosen)" if s.chosen else s.method
        bmin = "-" if s.plan is None else str(s.plan.b_min)
        mis = ("not measured" if s.mismatch_rate is None else
               f"{s.mismatch_rate:.4f} ({s.num_mismatch}/{s.num_examples})")
        lines.append(
            f"| {name} | {level_text(base_method(s.method), s.level)} | {bmin} | "
            f"{s.bound:.3g} | "
            f"{mis} | {_g(s.mismatch_ucl, '.4f')} | {_pct(s.float_accuracy)} | "
            f"{_pct(s.quant_accuracy)} | {_int(s.compute_cost)} | "
            f"{s.compute_cost / max(ref.compute_cost, 1e-300):.3f} | "
            f"{_int(s.memory_cost)} | {s.memory_cost / max(ref.memory_cost, 1e-300):.3f} |")
    return "\n".join(lines) + "\n"


def sweep_markdown(rows) -> str:
    """Markdown table of :func:`tfprec.validate.sweep` rows, with the UCL."""
    if not rows:
        return "_no sweep rows_\n"
    lines = [
        "| method | level | B_min | bound | measured mismatch | UCL 95% | bound holds | "
        "quant acc % | compute (FA) | memory (bits) |",
        "|---|---|---:|---:|---:|---:|---|---:|---:|---:|"]
    for r in rows:
        ucl = mismatch_ucl(r.num_mismatch, r.num_examples)
        holds = bound_verdict(r.mismatch_rate, r.bound)
        lines.append(
            f"| {r.method} | {level_text(r.method, r.level)} | {r.b_min} | "
            f"{r.bound:.3g} | {r.mismatch_rate:.4f} ({r.num_mismatch}/{r.num_examples}) | "
            f"{_g(ucl, '.4f')} | {holds} | {_pct(r.quant_accuracy)} | "
            f"{_int(r.compute_cost)} | {_int(r.memory_cost)} |")
    return "\n".join(lines) + "\n"
