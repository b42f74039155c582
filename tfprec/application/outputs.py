"""What a ``tfprec`` run writes and prints: report.md (through
:mod:`tfprec.application.report`), summary.json and the terminal summary.

The functions take ``r``, the state of a run
(:class:`tfprec.application.cli.RunState`).  Units: probabilities are
fractions, accuracies %, computational cost 1-bit full adders (FA) per
example, representational cost bits.
"""
from __future__ import annotations

import dataclasses
import json
import os

from tfprec.application import report as report_lib
from tfprec.application.steps import (FLOAT_MODEL_FILE, PLAN_FILE, QUANTIZED_FILE,
                                      SUMMARY_FILE, TFLITE_FILE)

_COMPARISON_NOTES = {
    "analytic": "Every allocation rule at the same analytic target, validated on "
                "the same held-out examples; 'x chosen' is the cost relative to "
                "the chosen plan.",
    "budget": "Every allocation rule's smallest-bound plan within the cost budget, "
              "validated on the same held-out examples; 'x chosen' is the cost "
              "relative to the chosen plan.",
    "measured": "Each rule at its cheapest level meeting the measured target where "
                "the level was chosen; 'x chosen' is the cost relative to the "
                "chosen plan.",
}


def model_info(r) -> dict:
    """``{label: text}`` lines describing the model."""
    s, model, plan = r.s, r.model, r.choice.plan
    info = {
        "model": (f"`{model.name}` from {s.model}" if s.model else
                  f"`{model.name}` (demo)"),
        "parameters": f"{int(model.count_params()):,}",
        "weight layers": f"{len(plan.layers)} ({', '.join(plan.names)})",
        "input shape": str(tuple(model.inputs[0].shape[1:])),
        "classes": str(int(model.outputs[0].shape[-1])),
    }
    from tfprec.statistics.generic_rules import weight_op_paths
    from tfprec.statistics.graph import parse_model
    paths = weight_op_paths(parse_model(model))
    info["noise-gain path of the weight layers"] = "; ".join(
        f"{k}: {len(v)} ({', '.join(v[:6])}{', ...' if len(v) > 6 else ''})"
        for k, v in paths.items())
    if r.train_info:
        info["training"] = r.train_info
    return info


def data_info(r) -> dict:
    """``{label: text}`` lines describing the data."""
    return {
        "data": f"{r.ds.name} ({r.ds.source})",
        "calibration examples (gains)": f"{len(r.x_cal)} from the training split",
        "held-out examples": f"{len(r.x_eval)} from the test split",
    }


def reference_costs(r) -> dict:
    """``{name: (FA, bits)}``: 16 bits everywhere, and the uniform plan at the
    same target (or within the budget) when it was not chosen."""
    refs = {"16-bit fixed point everywhere": (r.full16.total_compute,
                                              r.full16.total_memory)}
    choice = r.choice
    if choice.chosen != "uniform" and "uniform" in choice.plans:
        uc = choice.plans["uniform"].cost()
        name = ("Uniform precision at the same target" if r.s.mode != "budget"
                else "Uniform precision within the budget")
        refs[name] = (uc.total_compute, uc.total_memory)
    return refs


def report_settings(r) -> dict:
    """The ``settings`` of :func:`tfprec.application.report.write_report`."""
    s = r.s
    return {
        "command": s.command, "target": s.target_text(),
        "allocation": s.allocation, "cost": s.cost,
        "reference_costs": {k[0].upper() + k[1:]: v
                            for k, v in reference_costs(r).items()},
        "target_probability": (s.target_bound if s.mode == "analytic" else
                               s.target_mismatch),
        "validation_note": r.choice.validation_note,
        "comparison_note": (_COMPARISON_NOTES[s.mode]
                            + f" Measured on the {r.comparison_split}."),
        "validation_split": r.validation_split,
    }


def write_report(r) -> None:
    """Stages report.md (and the figures)."""
    written = ([PLAN_FILE, QUANTIZED_FILE]
               + ([TFLITE_FILE] if r.export_report else [])
               + ([FLOAT_MODEL_FILE] if r.s.demo else []) + [SUMMARY_FILE])
    report_lib.write_report(
        r.staging.dir, r.choice.plan, gains=r.gains, validation=r.validation,
        comparisons=r.comparisons, sweep_rows=r.sweep_rows,
        export_report=r.export_report, model_info=model_info(r),
        data_info=data_info(r), settings=report_settings(r),
        timings=dict(r.timings), files=written, calibration=r.choice.calibration,
        notes=[f"**WARNING**: {w}" for w in r.warnings] + list(r.notes),
        plots=r.s.plots)


def _export_dict(rep):
    if rep is None:
        return None
    return {"file_size_bytes": rep.file_size_bytes,
            "grid_check_passed": rep.grid_check_passed,
            "sim_agreement": rep.sim_agreement,
            "agreement_by_kernels": rep.agreement_by_kernels}


def summary(r) -> dict:
    """The content of summary.json."""
    s, plan, v, cal = r.s, r.choice.plan, r.validation, r.choice.calibration
    return {
        "command": s.command, "mode": s.mode, "target": s.target_text(),
        "allocation": s.allocation, "cost": s.cost,
        "weight_rounding": s.weight_rounding,
        "chosen": plan.method, "bound": plan.bound(),
        "compute_cost": plan.cost().total_compute,
        "memory_cost": plan.cost().total_memory,
        "validation": v.to_dict(),
        "mismatch_ucl": report_lib.mismatch_ucl(v.num_mismatch, v.num_examples),
        "comparisons": [c.to_dict() for c in r.comparisons],
        "calibration": None if cal is None else cal.to_dict(),
        "sweep": [row.to_dict() for row in r.sweep_rows],
        "export": _export_dict(r.export_report),
        "validation_split": r.validation_split,
        "comparison_split": r.comparison_split, "warnings": r.warnings,
        "gains": r.gains.to_dict(), "notes": r.notes, "timings_s": r.timings,
        "model": model_info(r), "data": data_info(r),
    }


def write_summary(r) -> None:
    """Stages summary.json."""
    r.staging.write_text(SUMMARY_FILE, json.dumps(summary(r), indent=2,
                                                  default=json_default))


def json_default(o):
    """JSON for numpy scalars and arrays, dataclasses, else ``str(o)``."""
    import numpy as np
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if dataclasses.is_dataclass(o):
        return dataclasses.asdict(o)
    return str(o)


# ==================================================================== terminal
def _summary_lines(plan, gains, v, export_report, full16, split: str) -> list:
    out = [f"summary (measured on the {split}):"]
    ucl = report_lib.mismatch_ucl(v.num_mismatch, v.num_examples)
    note = "; ".join(t for t in (report_lib.target_note(plan),
                                 "vacuous: bound >= 1" if plan.bound() >= 1 else "")
                     if t)
    out.append(f"  analytic bound        {plan.bound():.4g}"
               + (f"  ({note})" if note else ""))
    if getattr(gains, "example_w", None) is not None:
        from tfprec.planning.cost_aware import per_example_bound
        out.append(f"  per-example bound     {per_example_bound(plan, gains):.4g}"
                   "  (mean over examples of min(1, per-example bound): also valid)")
    out.append(f"  measured mismatch     {v.mismatch_rate:.4f}  ({v.num_mismatch}/"
               f"{v.num_examples}; 95% UCL {ucl:.4f})"
               + ("" if v.mismatch_rate <= v.bound or v.bound >= 1
                  else "  ** above the bound **"))
    if v.float_accuracy is not None:
        out.append(f"  accuracy              float {100 * v.float_accuracy:.2f}%, "
                   f"fixed point {100 * v.quant_accuracy:.2f}%")
    c = plan.cost()
    out.append(f"  compute cost          {c.total_compute:,.0f} full adders/example "
               f"(16-bit everywhere: {full16.total_compute / c.total_compute:.2f}x)")
    out.append(f"  memory cost           {c.total_memory:,.0f} bits "
               f"(16-bit everywhere: {full16.total_memory / c.total_memory:.2f}x)")
    if export_report is not None:
        out.append(f"  TFLite                {export_report.file_size_bytes:,} bytes "
                   f"({report_lib.export_backend(export_report)} backend"
                   + ("" if getattr(export_report, "mode", "exact") == "exact"
                      else f", {export_report.mode} mode") + "), grid "
                   f"checks {'passed' if export_report.grid_check_passed else 'FAILED'}, "
                   f"{100 * export_report.sim_agreement:.2f}% decisions = fixed-point sim")
        line = report_lib.mostly_float_line(export_report, plan)
        if line:
            out.append(f"  NOTE: {line}")
    return out


def _comparison_lines(comparisons, split: str) -> list:
    out = [f"plans compared (* chosen; mismatch and accuracy on the {split}):"]
    w = max(len(c.method) for c in comparisons) + 2
    out.append(f"  {'plan'.ljust(w)}{'bound':>10}{'mismatch':>10}{'acc %':>8}"
               f"{'compute (FA)':>16}{'memory (bits)':>15}")
    for c in comparisons:
        mis = "-" if c.mismatch_rate is None else f"{c.mismatch_rate:.4f}"
        acc = "-" if c.quant_accuracy is None else f"{100 * c.quant_accuracy:.2f}"
        out.append(f"{'*' if c.chosen else ' '} {c.method.ljust(w)}{c.bound:>10.3g}"
                   f"{mis:>10}{acc:>8}{c.compute_cost:>16,.0f}{c.memory_cost:>15,.0f}")
    return out


def stdout_summary(r, files: list, seconds: float) -> str:
    """Per-layer table, summary and plan comparison for the terminal."""
    s, plan = r.s, r.choice.plan
    replaced, removed = r.staging.replaced, r.staging.removed
    header = [f"tfprec: model {model_info(r)['model']}, "
              f"{int(r.model.count_params()):,} parameters; data {r.ds.name}; "
              f"{len(r.x_cal)} calibration / {len(r.x_eval)} held-out examples",
              f"target: {s.target_text()}"
              + (" (the default, measured on held-out examples; --target_bound for "
                 "the analytic bound)" if s.default_target else "")
              + f"; allocation {s.allocation} -> {plan.method}"]
    footer = ([f"note: {n}" for n in r.notes]
              + [f"WARNING: {w}" for w in r.warnings]
              + ["", f"wrote {len(files)} files to {r.staging.final}: "
                 + ", ".join(sorted(os.path.basename(f) for f in files))]
              + ([f"(replaced: {', '.join(replaced)})"] if replaced else [])
              + ([f"(removed, from the previous run: {', '.join(removed)})"]
                 if removed else [])
              + [f"done in {seconds:.1f} s"])
    out = (header + ["", report_lib.layer_table_text(plan, r.gains), ""]
           + _summary_lines(plan, r.gains, r.validation, r.export_report, r.full16,
                            r.validation_split)
           + [""] + _comparison_lines(r.comparisons, r.comparison_split))
    return "\n".join(out + footer)
