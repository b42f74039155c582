"""Human-readable reports of a precision analysis: ``report.md`` and figures.

:func:`write_report` writes ``report.md`` into an output folder: the model
and data, the per-layer table of the chosen plan (noise gains E and
normalized gains G = R^2 E, bits, ranges, signedness, per-layer
computational and representational costs and bound terms), the analytic
bound next to the measured float / fixed-point mismatch (with its one-sided
95 % Clopper-Pearson upper confidence limit) and accuracies, every plan
compared (method, level, bound, measured mismatch, accuracy, costs), the
B_min sweep of the paper's rule and its baselines
(:func:`tfprec.validate.sweep`) and the TFLite export report.  When
matplotlib is importable (the ``plots`` extra) it also writes, with the Agg
backend and without touching pyplot's global state:

* ``fig_bits.png``: weight and activation bits per layer of the chosen plan;
* ``fig_mismatch_vs_bmin.png``: analytic bound and measured mismatch against
  the precision level of each rule (log y);
* ``fig_cost_vs_accuracy.png``: computational cost against fixed-point
  accuracy of the compared plans and of the sweep.

Every file is written atomically (temporary file in the same folder, then
``os.replace``).  Nothing here imports TensorFlow; the functions take plans
(:class:`tfprec.planning.plan.PrecisionPlan`), gains, validation rows and reports
that were computed elsewhere.

Units: probabilities (bound, mismatch) are fractions in [0, 1] unless a
column says %; accuracies are printed in %; computational cost is in 1-bit
full adders (FA) per example, representational cost in bits.
"""
from __future__ import annotations

import dataclasses
import datetime
import importlib.util
import math
import os
from typing import Optional, Sequence

from tfprec.planning.plan import atomic_write_bytes, atomic_write_text, per_example_bound

REPORT_FILE = "report.md"
FIG_BITS = "fig_bits.png"
FIG_MISMATCH = "fig_mismatch_vs_bmin.png"
FIG_COST = "fig_cost_vs_accuracy.png"
FIGURES = (FIG_BITS, FIG_MISMATCH, FIG_COST)
CONFIDENCE = 0.95

LEVEL_NAMES = {"paper": "B_min", "uniform": "B", "icml2017": "B_A",
               "cost_aware": "t", "measured_greedy": "t"}
METHOD_LABELS = {"paper": "paper (ICASSP 2018)", "uniform": "uniform",
                 "icml2017": "ICML 2017", "cost_aware": "cost-aware",
                 "measured_greedy": "measured greedy"}
_COLORS = {"paper": "#1f77b4", "uniform": "#d62728", "icml2017": "#2ca02c",
           "cost_aware": "#9467bd", "measured_greedy": "#8c564b"}


def have_matplotlib() -> bool:
    """Whether matplotlib (the ``plots`` extra) can be imported."""
    return importlib.util.find_spec("matplotlib") is not None


# ====================================================================== numbers
def mismatch_ucl(num_mismatch: int, num_examples: int,
                 confidence: float = CONFIDENCE) -> Optional[float]:
    """One-sided Clopper-Pearson upper confidence limit of a mismatch rate.

    The ``confidence`` quantile of Beta(k + 1, n - k) (1 when k == n); None
    when there are no examples.  Same definition as
    :func:`tfprec.calibrate.clopper_pearson_upper`.
    """
    k, n = int(num_mismatch), int(num_examples)
    if n < 1 or not 0 <= k <= n:
        return None
    if k == n:
        return 1.0
    if k == 0:                      # closed form, no scipy needed
        return 1.0 - (1.0 - confidence) ** (1.0 / n)
    from scipy.stats import beta
    return float(beta.ppf(confidence, k + 1, n - k))


def base_method(method: str) -> str:
    """Family of a plan's method label ("cost_aware:compute" -> "cost_aware")."""
    m = str(method)
    if "measured_greedy" in m:
        return "measured_greedy"
    return m.split(":", 1)[0]


def plan_level(plan) -> Optional[int]:
    """The one-number level of a rule's plan: B_min (paper), B (uniform), B_A
    (icml2017); None for plans that have no single level (cost-aware)."""
    m = base_method(plan.method)
    if m == "paper" or m == "uniform":
        return int(plan.b_min)
    if m == "icml2017":
        return int(min(l.act_bits for l in plan.layers))
    return None


def target_note(plan) -> str:
    """What the plan's ``target`` means, in words ('' when it has none)."""
    budget = (plan.info or {}).get("cost_budget")
    if budget:
        unit = "FA" if budget.get("cost") == "compute" else "bits"
        t = budget.get("bound_target")
        return (f"smallest bound within the {budget.get('cost')} budget "
                f"{budget.get('budget'):.4g} {unit}"
                + (f"; cost-aware bound target bisected to {t:.4g}" if t else ""))
    if plan.target is not None:
        return f"target {plan.target:.4g}"
    return ""


def _pct(v, digits: int = 2) -> str:
    return "n/a" if v is None else f"{100.0 * v:.{digits}f}"


def _g(v, spec: str = ".3g") -> str:
    return "n/a" if v is None else format(v, spec)


def _int(v) -> str:
    return "n/a" if v is None else f"{v:,.0f}"


def _eng(v) -> str:
    """Compact magnitude: 72.3M, 1.05G, 950k."""
    if v is None:
        return "n/a"
    a = abs(v)
    for div, suf in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if a >= div:
            return f"{v / div:.3g}{suf}"
    return f"{v:.3g}"


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


def _level_str(method: str, level) -> str:
    if level is None:
        return "-"
    fam = base_method(method)
    if fam in ("cost_aware", "measured_greedy"):
        return f"t={level:.3g}"
    return f"{LEVEL_NAMES.get(fam, 'level')}={int(level)}"


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
            "act_signed": l.act_signed,
            "act_range_source": None if lg is None else lg.act_range_source,
            "weight_step": l.weight_step, "act_step": l.act_step,
            "weight_term": l.weight_term, "act_term": l.act_term,
            "compute_cost": cost.compute[l.name], "memory_cost": cost.memory[l.name],
        })
    return rows


def layer_table_text(plan, gains=None) -> str:
    """Plain-text per-layer table (for a terminal): layer, B_W, B_A, G_W,
    G_A, weight and input ranges, computational and representational cost."""
    head = ["layer", "B_W", "B_A", "G_W", "G_A", "weight range", "input range",
            "compute (FA)", "memory (bits)"]
    body = []
    for r in layer_rows(plan, gains):
        body.append([
            r["layer"], str(r["weight_bits"]),
            f"{r['act_bits']}{'s' if r['act_signed'] else 'u'}",
            f"{r['g_w']:.3g}", f"{r['g_a']:.3g}",
            _range(r["weight_range"], True), _range(r["act_range"], r["act_signed"]),
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
                 "G = R^2 E (normalized noise gain)")
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
        lines.append(
            f"| {r['layer']} | {r['class']} | {_g(r['e_w'])} | {_g(r['e_a'])} | "
            f"{r['g_w']:.3g} | {r['g_a']:.3g} | {r['weight_bits']} | {r['act_bits']} | "
            f"{_range(r['weight_range'], True)} ({r['weight_step']:.3g}) | "
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
            f"| {name} | {_level_str(s.method, s.level)} | {bmin} | {s.bound:.3g} | "
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
        holds = "yes" if r.mismatch_rate <= r.bound else "**no**"
        lines.append(
            f"| {r.method} | {_level_str(r.method, r.level)} | {r.b_min} | "
            f"{r.bound:.3g} | {r.mismatch_rate:.4f} ({r.num_mismatch}/{r.num_examples}) | "
            f"{_g(ucl, '.4f')} | {holds} | {_pct(r.quant_accuracy)} | "
            f"{_int(r.compute_cost)} | {_int(r.memory_cost)} |")
    return "\n".join(lines) + "\n"


# ====================================================================== markdown
def render_report(plan, *, gains=None, validation=None, comparisons: Sequence = (),
                  sweep_rows: Sequence = (), export_report=None,
                  model_info: Optional[dict] = None, data_info: Optional[dict] = None,
                  settings: Optional[dict] = None, timings: Optional[dict] = None,
                  files: Sequence[str] = (), figures: Sequence[str] = (),
                  calibration=None, notes: Sequence[str] = (),
                  title: str = "tfprec precision report") -> str:
    """The text of ``report.md`` (see :func:`write_report` for the arguments)."""
    model_info = dict(model_info or {})
    data_info = dict(data_info or {})
    settings = dict(settings or {})
    out = [f"# {title}", ""]
    stamp = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    out.append(f"Generated {stamp}"
               + (f" by `{settings['command']}`" if settings.get("command") else "")
               + ".")
    out.append("")
    out.append("Method: Sakr & Shanbhag, *An Analytical Method to Determine Minimum "
               "Per-Layer Precision of Deep Neural Networks*, ICASSP 2018. The "
               "bound is p_m <= sum_T 4^(1-B_T) G_T with normalized noise gains "
               "G_T = R_T^2 E_T; probabilities are fractions, accuracies in %, "
               "computational cost in 1-bit full adders (FA) per example, "
               "representational cost in bits.")
    out.append("")

    # ---- summary
    cost = plan.cost()
    out += ["## Summary", ""]
    if settings.get("target"):
        out.append(f"- Target: {settings['target']}")
    if settings.get("allocation"):
        out.append(f"- Allocation: `{settings['allocation']}` (cost minimized: "
                   f"{settings.get('cost', 'compute')})")
    out.append(f"- Chosen plan: **{plan.method}**"
               + (f", {_level_str(plan.method, plan_level(plan))}"
                  if plan_level(plan) is not None else "")
               + f"; bits {plan.b_min}..{max(max(l.weight_bits, l.act_bits) for l in plan.layers)}")
    out.append(f"- Analytic bound: **{plan.bound():.4g}**"
               + (f" ({target_note(plan)})" if target_note(plan) else ""))
    if validation is not None:
        v = validation
        ucl = mismatch_ucl(v.num_mismatch, v.num_examples)
        out.append(f"- Measured mismatch on {v.num_examples} held-out examples: "
                   f"**{v.mismatch_rate:.4f}** ({v.num_mismatch}/{v.num_examples}; "
                   f"95% upper limit {_g(ucl, '.4f')}), bound {v.bound:.4g}: "
                   + ("the bound holds" if v.mismatch_rate <= v.bound
                      else "**the measured rate exceeds the bound**"))
        if v.float_accuracy is not None:
            out.append(f"- Accuracy: float {_pct(v.float_accuracy)} %, fixed point "
                       f"{_pct(v.quant_accuracy)} % (change "
                       f"{100 * (v.quant_accuracy - v.float_accuracy):+.2f} pp)")
    refs = settings.get("reference_costs") or {}
    line = (f"- Cost: {_int(cost.total_compute)} FA ({_eng(cost.total_compute)}), "
            f"{_int(cost.total_memory)} bits ({cost.total_memory / 8 / 1024:.1f} KiB)")
    out.append(line)
    for name, (c_fa, c_bits) in refs.items():
        out.append(f"- {name} would cost {c_fa / max(cost.total_compute, 1e-300):.2f}x "
                   f"the FA and {c_bits / max(cost.total_memory, 1e-300):.2f}x the bits "
                   "of the chosen plan")
    if export_report is not None:
        er = export_report
        out.append(f"- TFLite: `{os.path.basename(er.path)}`, {er.file_size_bytes} bytes, "
                   f"grid checks {'passed' if er.grid_check_passed else 'FAILED'}, "
                   f"{100 * er.sim_agreement:.2f}% decisions equal to the fixed-point "
                   "simulation")
    for n in notes:
        out.append(f"- {n}")
    out.append("")

    # ---- model and data
    if model_info or data_info or gains is not None:
        out += ["## Model and data", ""]
        for k, v in model_info.items():
            out.append(f"- {k}: {v}")
        for k, v in data_info.items():
            out.append(f"- {k}: {v}")
        if gains is not None:
            out.append(f"- noise gains: {gains.num_examples} calibration examples, "
                       f"{gains.num_classes} classes, mode {getattr(gains, 'mode', 'exact')}"
                       + (", final softmax removed (gains on the logits)"
                          if getattr(gains, "dropped_softmax", False) else "")
                       + (f", {gains.num_ties} tied (example, class) pairs skipped"
                          if getattr(gains, "num_ties", 0) else ""))
        out.append("")

    # ---- per-layer table
    out += ["## Per-layer plan", "",
            f"Plan `{plan.method}`. E_W, E_A: noise gains (probability per squared "
            "unit); G = R^2 E: normalized gains; B_W (sign included) for kernel "
            "and bias, B_A for the layer's input; ranges are the fixed-point "
            "ranges with the quantization step Delta = R 2^(1-B); W term / A "
            "term: the layer's contributions 4^(1-B) G to the bound.", "",
            layer_table_markdown(plan, gains)]

    # ---- validation
    if validation is not None:
        v = validation
        ucl = mismatch_ucl(v.num_mismatch, v.num_examples)
        out += ["## Validation: bound against measurement", "",
                "Float model vs the fake-quant model of the chosen plan "
                "(tfprec.quantization.apply.quantize_model) on held-out examples.", "",
                "| quantity | value |", "|---|---|",
                f"| held-out examples | {v.num_examples} |",
                f"| float accuracy | {_pct(v.float_accuracy)} % |",
                f"| fixed-point accuracy | {_pct(v.quant_accuracy)} % |",
                f"| changed decisions | {v.num_mismatch} |",
                f"| measured mismatch | {v.mismatch_rate:.4f} |",
                f"| 95% upper confidence limit (one-sided Clopper-Pearson) | {_g(ucl, '.4f')} |",
                f"| analytic bound | {v.bound:.4g} |",
                f"| bound >= measured | {'yes' if v.mismatch_rate <= v.bound else 'no'} |"]
        if gains is not None and getattr(gains, "example_w", None) is not None:
            peb = per_example_bound(plan, gains)
            out += [f"| per-example bound: mean of min(1, per-example bound) | {peb:.4g} |",
                    f"| per-example bound >= measured | "
                    f"{'yes' if v.mismatch_rate <= peb else 'no'} |"]
        out += [""]
        if settings.get("validation_note"):
            out += [settings["validation_note"], ""]

    # ---- calibration
    if calibration is not None and hasattr(calibration, "to_markdown"):
        out += ["## Calibration on measured data", "", calibration.to_markdown()]

    # ---- comparison
    if comparisons:
        out += ["## Plans compared", "",
                settings.get("comparison_note",
                             "Every allocation rule at the same target; 'x chosen' "
                             "is the cost relative to the chosen plan."), "",
                comparison_markdown(comparisons)]
        notes_c = [f"- {s.method}: {s.note}" for s in comparisons if s.note]
        if notes_c and calibration is None:   # the calibration table has them
            out += notes_c + [""]

    # ---- sweep
    if sweep_rows:
        out += ["## Sweep of the precision level", "",
                "The paper's rule (level B_min), uniform precision (level B) and "
                "the ICML 2017 rule (level B_A) at each level, validated on the "
                "held-out examples (tfprec.validate.sweep). The bound should lie "
                "above the measured mismatch and track it as precision varies.", "",
                sweep_markdown(sweep_rows)]
        over = [r for r in sweep_rows if r.mismatch_rate > r.bound]
        if over:
            out += [f"In {len(over)} of {len(sweep_rows)} rows (marked **no**) the "
                    "measured rate exceeds the bound; there "
                    + ", ".join(sorted({f'{r.num_mismatch}/{r.num_examples}' for r in over}))
                    + " decisions changed. The bound is first order in the "
                    "quantization noise: an example whose float decision is nearly "
                    "tied can flip even at high precision, and one changed decision "
                    f"in {over[0].num_examples} is the smallest rate this sample can "
                    "show.", ""]

    # ---- export
    if export_report is not None:
        out += ["## TFLite export", "", export_report.to_markdown()]

    # ---- figures
    if figures:
        out += ["## Figures", ""]
        captions = {
            FIG_BITS: "Weight and input-activation bits per layer of the chosen plan.",
            FIG_MISMATCH: "Analytic bound (dashed) and measured mismatch (solid) "
                          "against the precision level, log scale.",
            FIG_COST: "Computational cost against fixed-point accuracy.",
        }
        for f in figures:
            b = os.path.basename(f)
            out += [f"![{captions.get(b, b)}]({b})", "", f"*{captions.get(b, b)}*", ""]

    # ---- run
    if timings or files:
        out += ["## Run", ""]
        if timings:
            out.append("| step | seconds |")
            out.append("|---|---:|")
            for k, v in timings.items():
                out.append(f"| {k} | {v:.1f} |")
            out.append("")
        if files:
            out.append("Files: " + ", ".join(f"`{os.path.basename(f)}`" for f in files))
            out.append("")
    return "\n".join(out).rstrip() + "\n"


def write_report(output_dir, plan, *, gains=None, validation=None,
                 comparisons: Sequence = (), sweep_rows: Sequence = (),
                 export_report=None, model_info: Optional[dict] = None,
                 data_info: Optional[dict] = None, settings: Optional[dict] = None,
                 timings: Optional[dict] = None, files: Sequence[str] = (),
                 calibration=None, notes: Sequence[str] = (),
                 plots: Optional[bool] = None) -> dict:
    """Writes ``report.md`` (and the figures) into ``output_dir``.

    Args:
      output_dir: an existing folder.
      plan: the chosen :class:`~tfprec.planning.plan.PrecisionPlan`.
      gains: its :class:`~tfprec.statistics.gains.NoiseGains` (for E_W, E_A and the
        calibration-set summary).
      validation: :class:`~tfprec.validate.ValidationResult` of ``plan``.
      comparisons: :class:`PlanSummary` rows (one may be ``chosen``).
      sweep_rows: :func:`tfprec.validate.sweep` rows.
      export_report: :class:`~tfprec.export.ExportReport`.
      model_info, data_info: ``{label: value}`` lines for the summary.
      settings: optional keys ``command``, ``target`` (text), ``allocation``,
        ``cost``, ``target_probability`` (the target drawn in the mismatch
        figure), ``reference_costs`` ({name: (FA, bits)}),
        ``validation_note``, ``comparison_note``.
      timings: ``{step: seconds}``.
      files: the other files of the run, listed at the end.
      calibration: a :class:`tfprec.calibrate.CalibrationResult`.
      notes: extra summary lines.
      plots: write the PNG figures; default: when matplotlib is importable.

    Returns:
      ``{"report": path, "figures": [paths]}``.
    """
    output_dir = os.fspath(output_dir)
    if plots is None:
        plots = have_matplotlib()
    figs = []
    if plots:
        figs = write_figures(output_dir, plan, sweep_rows=sweep_rows,
                             comparisons=comparisons, validation=validation,
                             target=(settings or {}).get("target_probability"))
    text = render_report(plan, gains=gains, validation=validation,
                         comparisons=comparisons, sweep_rows=sweep_rows,
                         export_report=export_report, model_info=model_info,
                         data_info=data_info, settings=settings, timings=timings,
                         files=list(files) + figs, figures=figs,
                         calibration=calibration, notes=notes)
    path = os.path.join(output_dir, REPORT_FILE)
    atomic_write_text(path, text)
    return {"report": path, "figures": figs}


# ====================================================================== figures
def _new_figure(w: float, h: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(w, h), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str) -> str:
    import io
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(path, buf.getvalue())
    return path


def write_figures(output_dir, plan, *, sweep_rows: Sequence = (),
                  comparisons: Sequence = (), validation=None,
                  target: Optional[float] = None) -> list:
    """Writes the PNG figures (Agg backend); returns their paths.

    ``fig_bits.png`` always; ``fig_mismatch_vs_bmin.png`` when there are
    sweep rows; ``fig_cost_vs_accuracy.png`` when some plan has a measured
    accuracy.  Raises ImportError without matplotlib.
    """
    output_dir = os.fspath(output_dir)
    paths = [_save(figure_bits(plan), os.path.join(output_dir, FIG_BITS))]
    if sweep_rows:
        paths.append(_save(figure_mismatch(sweep_rows, target),
                           os.path.join(output_dir, FIG_MISMATCH)))
    measured = [s for s in comparisons if s.quant_accuracy is not None]
    if measured or any(r.quant_accuracy is not None for r in sweep_rows):
        paths.append(_save(figure_cost_accuracy(comparisons, sweep_rows, validation),
                           os.path.join(output_dir, FIG_COST)))
    return paths


def figure_bits(plan):
    """Grouped bar chart: B_W and B_A per layer of ``plan``."""
    names = [l.name for l in plan.layers]
    bw = [l.weight_bits for l in plan.layers]
    ba = [l.act_bits for l in plan.layers]
    n = len(names)
    fig = _new_figure(max(5.5, 0.9 * n + 2.5), 3.8)
    ax = fig.add_subplot()
    x = list(range(n))
    wdt = 0.38
    b1 = ax.bar([i - wdt / 2 for i in x], bw, wdt, label="weights $B_W$",
                color="#1f77b4")
    b2 = ax.bar([i + wdt / 2 for i in x], ba, wdt, label="input activations $B_A$",
                color="#ff7f0e")
    for bars in (b1, b2):
        for rect in bars:
            ax.annotate(f"{int(rect.get_height())}",
                        (rect.get_x() + rect.get_width() / 2, rect.get_height()),
                        xytext=(0, 2), textcoords="offset points", ha="center",
                        va="bottom", fontsize=8)
    ax.set_xticks(x)
    rot = 30 if n > 6 or max(len(s) for s in names) > 8 else 0
    ax.set_xticklabels(names, rotation=rot, ha="right" if rot else "center",
                       fontsize=9)
    top = max(bw + ba)
    ax.set_ylim(0, top + 2.5)
    ax.set_ylabel("bits")
    ax.set_xlabel("weight layer (input side first)")
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.set_title(f"Per-layer precision, plan {plan.method}: bound {plan.bound():.3g}",
                 fontsize=10)
    ax.legend(loc="upper right", fontsize=8, ncol=2, frameon=False)
    return fig


def figure_mismatch(rows, target: Optional[float] = None):
    """Bound and measured mismatch against the level of each rule (log y)."""
    fig = _new_figure(7.0, 5.2)
    ax = fig.add_subplot()
    by = {}
    for r in rows:
        by.setdefault(base_method(r.method), []).append(r)
    n = max(r.num_examples for r in rows)
    floor = 0.5 / n
    top = 2.0
    for m, rs in by.items():
        rs = sorted(rs, key=lambda r: r.level)
        col = _COLORS.get(m, None)
        lab = METHOD_LABELS.get(m, m)
        lv = [r.level for r in rs]
        ax.plot(lv, [min(r.bound, top * 10) for r in rs], "--", color=col, lw=1.3,
                label=f"{lab}: bound")
        meas = [r.mismatch_rate for r in rs]
        ax.plot(lv, [max(v, floor) for v in meas], "-o", color=col, lw=1.6, ms=4,
                label=f"{lab}: measured")
        zero = [(l, floor) for l, v in zip(lv, meas) if v == 0]
        if zero:
            ax.plot([z[0] for z in zero], [z[1] for z in zero], "v", color=col,
                    ms=7, mfc="white", mew=1.4)
    ax.axhline(1.0 / n, color="0.5", lw=0.8, ls=":")
    ax.annotate(f"1 / {n} examples", (1.0, 1.0 / n), xycoords=("axes fraction", "data"),
                xytext=(-4, 3), textcoords="offset points", ha="right", va="bottom",
                fontsize=7, color="0.35")
    if target:
        ax.axhline(target, color="k", lw=0.9, ls="-.")
        ax.annotate(f"target {target:g}", (1.0, target),
                    xycoords=("axes fraction", "data"), xytext=(-4, 3),
                    textcoords="offset points", ha="right", va="bottom", fontsize=7)
    ax.set_yscale("log")
    lo = floor / 1.6
    ax.set_ylim(lo, top)
    ax.set_xlabel("precision level, bits (B_min: paper, B: uniform, B_A: ICML 2017)")
    ax.set_ylabel("mismatch probability (float vs fixed point)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(True, which="major", alpha=0.3)
    ax.set_title("Analytic bound vs measured mismatch "
                 "(hollow \u25bd: no mismatch observed)", fontsize=10)
    # legend below the axes: it never hides a curve
    ax.legend(fontsize=7.5, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.16),
              frameon=False)
    return fig


def figure_cost_accuracy(comparisons: Sequence = (), sweep_rows: Sequence = (),
                         validation=None):
    """Computational cost (log x) against fixed-point accuracy (%)."""
    fig = _new_figure(8.2, 4.4)
    ax = fig.add_subplot()
    by = {}
    for r in sweep_rows:
        if r.quant_accuracy is not None:
            by.setdefault(base_method(r.method), []).append(r)
    accs = []
    for m, rs in by.items():
        rs = sorted(rs, key=lambda r: r.compute_cost)
        ax.plot([r.compute_cost for r in rs], [100 * r.quant_accuracy for r in rs],
                "-", marker=".", color=_COLORS.get(m), alpha=0.45, lw=1.2,
                label=f"{METHOD_LABELS.get(m, m)} sweep")
        accs += [100 * r.quant_accuracy for r in rs]
    pts = [s for s in comparisons if s.quant_accuracy is not None]
    markers = {"paper": "s", "uniform": "D", "icml2017": "^", "cost_aware": "o",
               "measured_greedy": "P"}
    for s in pts:
        fam = s.family
        ax.plot([s.compute_cost], [100 * s.quant_accuracy], markers.get(fam, "o"),
                color=_COLORS.get(fam), ms=11 if s.chosen else 8,
                mec="k" if s.chosen else "white", mew=1.6 if s.chosen else 0.8,
                ls="none", label=f"{s.method}" + (" (chosen)" if s.chosen else ""))
        accs.append(100 * s.quant_accuracy)
    fa = None
    if validation is not None and validation.float_accuracy is not None:
        fa = 100 * validation.float_accuracy
    elif pts and pts[0].float_accuracy is not None:
        fa = 100 * pts[0].float_accuracy
    elif sweep_rows and sweep_rows[0].float_accuracy is not None:
        fa = 100 * sweep_rows[0].float_accuracy
    if fa is not None:
        ax.axhline(fa, color="k", lw=0.9, ls="--", label=f"float {fa:.2f}%")
    ax.set_xscale("log")
    from matplotlib.ticker import FuncFormatter
    def minor(v, _):
        lead = int(round(v / 10 ** math.floor(math.log10(v)))) if v > 0 else 0
        return _eng(v) if lead in (2, 3, 5) else ""
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: _eng(v)))
    ax.xaxis.set_minor_formatter(FuncFormatter(minor))
    ax.tick_params(axis="x", which="both", labelsize=8)
    ref = fa if fa is not None else (max(accs) if accs else None)
    if ref is not None:
        # zoom on the useful range: the compared plans and a few pp below
        # float; sweep points of very low precision leave through the bottom
        plan_accs = [100 * s.quant_accuracy for s in pts] + [ref]
        lo = min(min(plan_accs) - 1.0, ref - 4.0)
        hi = max(max(plan_accs), max(accs) if accs else ref) + 0.8
        ax.set_ylim(max(0.0, lo), min(100.5, hi))
        below = sum(1 for a in accs if a < lo)
        if below:
            ax.annotate(f"{below} sweep point{'s' if below > 1 else ''} below "
                        f"{lo:.1f}% not shown", (0.01, 0.01), xycoords="axes fraction",
                        fontsize=7, color="0.35", ha="left", va="bottom")
    ax.set_xlabel("computational cost, 1-bit full adders per example (log)")
    ax.set_ylabel("fixed-point accuracy (%)")
    ax.grid(True, which="both", alpha=0.25)
    ax.set_title("Cost vs accuracy of the plans", fontsize=10)
    ax.legend(fontsize=7.5, loc="center left", bbox_to_anchor=(1.01, 0.5),
              frameon=False)
    return fig
