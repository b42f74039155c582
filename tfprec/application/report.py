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
matplotlib is importable (the ``plots`` extra) it also writes the figures of
:mod:`tfprec.application.figures`.

Every file is written atomically (:mod:`tfprec.fileio`).  The functions
take plans (:class:`tfprec.planning.plan.PrecisionPlan`), gains, validation
rows and reports that were computed elsewhere; nothing here runs a model.

Units: probabilities (bound, mismatch) are fractions in [0, 1] unless a
column says %; accuracies are printed in %; computational cost is in 1-bit
full adders (FA) per example, representational cost in bits.
"""
from __future__ import annotations

import datetime
import os
from typing import Optional, Sequence

from tfprec.application.figures import (  # noqa: F401  (re-exported)
    FIG_BITS, FIG_COST, FIG_MISMATCH, FIGURES, METHOD_LABELS, base_method,
    eng as _eng, figure_bits, figure_cost_accuracy, figure_mismatch,
    have_matplotlib, write_figures)
from tfprec.application.tables import (  # noqa: F401  (re-exported)
    CONFIDENCE, PlanSummary, _g, _int, _pct, bound_verdict,
    comparison_markdown, layer_rows, layer_table_markdown, layer_table_text,
    mismatch_ucl, plan_level, sweep_markdown)
from tfprec.fileio import atomic_write_text
from tfprec.planning.cost_aware import per_example_bound
from tfprec.planning.rules import level_text

REPORT_FILE = "report.md"


def target_note(plan) -> str:
    """What the plan's ``target`` means, in words ('' when it has none)."""
    budget = (plan.info or {}).get("cost_budget")
    if budget:
        unit = "FA" if budget.get("cost") == "compute" else "bits"
        t = budget.get("bound_target")
        info = plan.info or {}
        if info.get("predicted_accuracy_drop") is not None:
            return (f"lowest predicted accuracy drop within the {budget.get('cost')} "
                    f"budget {budget.get('budget'):.4g} {unit}: predicted "
                    f"{100 * info['predicted_accuracy_drop']:.3g} pp")
        if info.get("predicted_mismatch") is not None:
            return (f"lowest predicted mismatch within the {budget.get('cost')} "
                    f"budget {budget.get('budget'):.4g} {unit}: predicted "
                    f"{info['predicted_mismatch']:.4g}")
        return (f"smallest bound within the {budget.get('cost')} budget "
                f"{budget.get('budget'):.4g} {unit}"
                + (f"; cost-aware bound target bisected to {t:.4g}" if t else ""))
    if plan.target is not None:
        return f"target {plan.target:.4g}"
    return ""


# ====================================================================== markdown
_METHOD_TEXT = (
    "Method: Sakr & Shanbhag, *An Analytical Method to Determine Minimum "
    "Per-Layer Precision of Deep Neural Networks*, ICASSP 2018. The "
    "bound is p_m <= sum_T 4^(1-B_T) G_T with normalized noise gains "
    "G_T = R_T^2 E_T; probabilities are fractions, accuracies in %, "
    "computational cost in 1-bit full adders (FA) per example, "
    "representational cost in bits.")
_CAPTIONS = {
    FIG_BITS: "Weight and input-activation bits per layer of the chosen plan.",
    FIG_MISMATCH: "Analytic bound (dashed) and measured mismatch (solid) "
                  "against the precision level, log scale.",
    FIG_COST: "Computational cost against fixed-point accuracy.",
}


def _header(title: str, settings: dict) -> list:
    stamp = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    by = f" by `{settings['command']}`" if settings.get("command") else ""
    return [f"# {title}", "", f"Generated {stamp}{by}.", "", _METHOD_TEXT, ""]


def _validation_lines(v, split: str = "") -> list:
    """Summary lines of the chosen plan's validation (mismatch, accuracy);
    ``split`` names the examples they were measured on."""
    ucl = mismatch_ucl(v.num_mismatch, v.num_examples)
    where = split or f"{v.num_examples} held-out examples"
    verdict = bound_verdict(v.mismatch_rate, v.bound, "no")
    out = [f"- Measured mismatch on the {where}: "
           f"**{v.mismatch_rate:.4f}** ({v.num_mismatch}/{v.num_examples}; "
           f"95% upper limit {_g(ucl, '.4f')}), bound {v.bound:.4g}: "
           + {"yes": "the bound holds",
              "no": "**the measured rate exceeds the bound**"}.get(
                  verdict, "the bound is vacuous (>= 1) and certifies nothing")]
    if v.float_accuracy is not None:
        out.append(f"- Accuracy on the {where}: float {_pct(v.float_accuracy)} %, "
                   "fixed point "
                   f"{_pct(v.quant_accuracy)} % (change "
                   f"{100 * (v.quant_accuracy - v.float_accuracy):+.2f} pp)")
    return out


def _cost_lines(plan, refs: dict, export_report) -> list:
    """Summary lines of the plan's cost, against references, and the export."""
    cost = plan.cost()
    out = [f"- Cost: {_int(cost.total_compute)} FA ({_eng(cost.total_compute)}), "
           f"{_int(cost.total_memory)} bits ({cost.total_memory / 8 / 1024:.1f} KiB)"]
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
    return out


def _summary_section(plan, validation, export_report, settings: dict, notes) -> list:
    out = ["## Summary", ""]
    if settings.get("target"):
        out.append(f"- Target: {settings['target']}")
    if settings.get("allocation"):
        out.append(f"- Allocation: `{settings['allocation']}` (cost minimized: "
                   f"{settings.get('cost', 'compute')})")
    level = plan_level(plan)
    top = max(max(l.weight_bits, l.act_bits or 0) for l in plan.layers)
    out.append(f"- Chosen plan: **{plan.method}**"
               + (f", {level_text(plan.method, level)}" if level is not None else "")
               + f"; bits {plan.b_min}..{top}")
    out.append(f"- Analytic bound: **{plan.bound():.4g}**"
               + (f" ({target_note(plan)})" if target_note(plan) else ""))
    if validation is not None:
        out += _validation_lines(validation, settings.get("validation_split", ""))
    out += _cost_lines(plan, settings.get("reference_costs") or {}, export_report)
    return out + [f"- {n}" for n in notes] + [""]


def _model_section(model_info: dict, data_info: dict, gains) -> list:
    if not (model_info or data_info or gains is not None):
        return []
    out = ["## Model and data", ""]
    out += [f"- {k}: {v}" for k, v in model_info.items()]
    out += [f"- {k}: {v}" for k, v in data_info.items()]
    if gains is not None:
        out.append(f"- noise gains: {gains.num_examples} calibration examples, "
                   f"{gains.num_classes} classes, mode {getattr(gains, 'mode', 'exact')}"
                   + (", final softmax removed (gains on the logits)"
                      if getattr(gains, "dropped_softmax", False) else "")
                   + (f", {gains.num_ties} tied (example, class) pairs skipped"
                      if getattr(gains, "num_ties", 0) else ""))
    return out + [""]


def _layer_section(plan, gains) -> list:
    return ["## Per-layer plan", "",
            f"Plan `{plan.method}`. E_W, E_A: noise gains (probability per squared "
            "unit); G = R^2 E: normalized gains; B_W (sign included) for kernel "
            "and bias, B_A for the layer's input; ranges are the fixed-point "
            "ranges with the quantization step Delta = R 2^(1-B); W term / A "
            "term: the layer's contributions 4^(1-B) G to the bound.", "",
            layer_table_markdown(plan, gains)]


def _validation_section(plan, v, gains, settings: dict) -> list:
    if v is None:
        return []
    ucl = mismatch_ucl(v.num_mismatch, v.num_examples)
    where = settings.get("validation_split") or "held-out examples"
    out = ["## Validation: bound against measurement", "",
           "Float model vs the fake-quant model of the chosen plan "
           f"(tfprec.quantization.apply.quantize_model) on the {where}.", "",
           "| quantity | value |", "|---|---|",
           f"| held-out examples | {v.num_examples} |",
           f"| float accuracy | {_pct(v.float_accuracy)} % |",
           f"| fixed-point accuracy | {_pct(v.quant_accuracy)} % |",
           f"| changed decisions | {v.num_mismatch} |",
           f"| measured mismatch | {v.mismatch_rate:.4f} |",
           f"| 95% upper confidence limit (one-sided Clopper-Pearson) | {_g(ucl, '.4f')} |",
           f"| analytic bound | {v.bound:.4g} |",
           f"| bound >= measured | {bound_verdict(v.mismatch_rate, v.bound, 'no')} |"]
    if gains is not None and getattr(gains, "example_w", None) is not None:
        peb = per_example_bound(plan, gains)
        out += [f"| per-example bound: mean of min(1, per-example bound) | {peb:.4g} |",
                f"| per-example bound >= measured | "
                f"{bound_verdict(v.mismatch_rate, peb, 'no')} |"]
    out += [""]
    if settings.get("validation_note"):
        out += [settings["validation_note"], ""]
    return out


def _calibration_section(calibration) -> list:
    if calibration is None or not hasattr(calibration, "to_markdown"):
        return []
    text = calibration.to_markdown()
    return ["## Calibration on measured data (selection half)", "", text]


def _comparison_section(comparisons, calibration, settings: dict) -> list:
    if not comparisons:
        return []
    out = ["## Plans compared", "",
           settings.get("comparison_note",
                        "Every allocation rule at the same target; 'x chosen' "
                        "is the cost relative to the chosen plan."), "",
           comparison_markdown(comparisons)]
    notes_c = [f"- {s.method}: {s.note}" for s in comparisons if s.note]
    if notes_c and calibration is None:   # the calibration table has them
        out += notes_c + [""]
    return out


def _sweep_section(sweep_rows) -> list:
    if not sweep_rows:
        return []
    out = ["## Sweep of the precision level", "",
           "The paper's rule (level B_min), uniform precision (level B) and "
           "the ICML 2017 rule (level B_A) at each level, validated on the "
           "held-out examples (tfprec.validate.sweep). The bound should lie "
           "above the measured mismatch and track it as precision varies.", "",
           sweep_markdown(sweep_rows)]
    over = [r for r in sweep_rows if r.mismatch_rate > r.bound]
    if over:
        counts = ", ".join(sorted({f"{r.num_mismatch}/{r.num_examples}" for r in over}))
        out += [f"In {len(over)} of {len(sweep_rows)} rows (marked **no**) the "
                f"measured rate exceeds the bound; there {counts} decisions changed. "
                "The bound is first order in the "
                "quantization noise: an example whose float decision is nearly "
                "tied can flip even at high precision, and one changed decision "
                f"in {over[0].num_examples} is the smallest rate this sample can "
                "show.", ""]
    return out


def float_weight_share(export_report, plan) -> float:
    """Fraction (by count) of the plan's weights the exported file stores as
    float32 (planned above 8 bits: LiteRT has no wider integer weights)."""
    nw = {l.name: l.num_weights for l in plan.layers}
    total = sum(nw.values())
    is_float = lambda l: (getattr(l, "weight_dtype", "") == "float32"  # noqa: E731
                          or getattr(l, "weight_type", "") == "float")
    fl = sum(nw.get(l.name, 0) for l in getattr(export_report, "layers", ())
             if is_float(l))
    return fl / total if total else 0.0


def export_backend(export_report) -> str:
    """The backend that wrote the file: 'exact' or 'ai_edge_quantizer'."""
    return getattr(export_report, "backend", "exact")


def mostly_float_line(export_report, plan) -> Optional[str]:
    """One plain line when most of the exported weights are float32, with the
    flag that changes it; None otherwise."""
    share = float_weight_share(export_report, plan)
    if share <= 0.5:
        return None
    return (f"the TFLite file is mostly float: {100 * share:.0f} % of the weights are "
            "planned above 8 bits and stored as float32; --max_bits=8 caps every "
            "tensor at 8 bits (integer storage), and a measured target "
            "(--target_mismatch, the default, or --max_accuracy_drop) gives "
            "cheaper plans than --target_bound")


def _export_section(export_report, plan=None) -> list:
    if export_report is None:
        return []
    head = [f"Backend: `{export_backend(export_report)}`."]
    line = None if plan is None else mostly_float_line(export_report, plan)
    if line:
        head.append(f"**{line[0].upper() + line[1:]}.**")
    return ["## TFLite export", "", *head, "", export_report.to_markdown()]


def _figures_section(figures) -> list:
    if not figures:
        return []
    out = ["## Figures", ""]
    for f in figures:
        b = os.path.basename(f)
        cap = _CAPTIONS.get(b, b)
        out += [f"![{cap}]({b})", "", f"*{cap}*", ""]
    return out


def _run_section(timings, files) -> list:
    if not (timings or files):
        return []
    out = ["## Run", ""]
    if timings:
        out += ["| step | seconds |", "|---|---:|"]
        out += [f"| {k} | {v:.1f} |" for k, v in timings.items()] + [""]
    if files:
        out += ["Files: " + ", ".join(f"`{os.path.basename(f)}`" for f in files), ""]
    return out


def render_report(plan, *, gains=None, validation=None, comparisons: Sequence = (),
                  sweep_rows: Sequence = (), export_report=None,
                  model_info: Optional[dict] = None, data_info: Optional[dict] = None,
                  settings: Optional[dict] = None, timings: Optional[dict] = None,
                  files: Sequence[str] = (), figures: Sequence[str] = (),
                  calibration=None, notes: Sequence[str] = (),
                  title: str = "tfprec precision report") -> str:
    """The text of ``report.md`` (see :func:`write_report` for the arguments)."""
    settings = dict(settings or {})
    out = (_header(title, settings)
           + _summary_section(plan, validation, export_report, settings, notes)
           + _model_section(dict(model_info or {}), dict(data_info or {}), gains)
           + _layer_section(plan, gains)
           + _validation_section(plan, validation, gains, settings)
           + _calibration_section(calibration)
           + _comparison_section(comparisons, calibration, settings)
           + _sweep_section(sweep_rows)
           + _export_section(export_report, plan)
           + _figures_section(figures)
           + _run_section(timings, files))
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
