"""The PNG figures of a precision report (matplotlib, Agg backend, without
touching pyplot's global state):

* ``fig_bits.png``: weight and activation bits per layer of the chosen plan;
* ``fig_mismatch_vs_bmin.png``: analytic bound and measured mismatch
  (probabilities) against the precision level (bits) of each rule (log y);
* ``fig_cost_vs_accuracy.png``: computational cost (1-bit full adders per
  example) against fixed-point accuracy (%) of the compared plans and of the
  sweep.

Files are written atomically with :func:`tfprec.fileio.atomic_write_bytes`.
matplotlib is imported only when a figure is drawn.
"""
from __future__ import annotations

import importlib.util
import io
import math
import os
from typing import Optional, Sequence

from tfprec.fileio import atomic_write_bytes

FIG_BITS = "fig_bits.png"
FIG_MISMATCH = "fig_mismatch_vs_bmin.png"
FIG_COST = "fig_cost_vs_accuracy.png"
FIGURES = (FIG_BITS, FIG_MISMATCH, FIG_COST)

METHOD_LABELS = {"paper": "paper (ICASSP 2018)", "uniform": "uniform",
                 "icml2017": "ICML 2017", "cost_aware": "cost-aware",
                 "measured_greedy": "measured greedy"}
_COLORS = {"paper": "#1f77b4", "uniform": "#d62728", "icml2017": "#2ca02c",
           "cost_aware": "#9467bd", "measured_greedy": "#8c564b"}


def have_matplotlib() -> bool:
    """Whether matplotlib (the ``plots`` extra) can be imported."""
    return importlib.util.find_spec("matplotlib") is not None


def base_method(method: str) -> str:
    """Family of a plan's method label ("cost_aware:compute",
    "cost_aware_pe:compute" -> "cost_aware")."""
    m = str(method)
    if "measured_greedy" in m:
        return "measured_greedy"
    m = m.split(":", 1)[0]
    return "cost_aware" if m.startswith("cost_aware") else m


def eng(v) -> str:
    """Compact magnitude: 72.3M, 1.05G, 950k."""
    if v is None:
        return "n/a"
    a = abs(v)
    for div, suf in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if a >= div:
            return f"{v / div:.3g}{suf}"
    return f"{v:.3g}"


def _new_figure(w: float, h: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(w, h), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str) -> str:
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
    ba = [l.act_bits or 0 for l in plan.layers]   # 0: integer ids (Embedding)
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


def _sweep_curves(ax, sweep_rows) -> list:
    """One faint cost / accuracy curve per rule of the sweep; their accuracies (%)."""
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
    return accs


_MARKERS = {"paper": "s", "uniform": "D", "icml2017": "^", "cost_aware": "o",
            "measured_greedy": "P"}


def _plan_points(ax, pts) -> None:
    """A marker per measured compared plan; the chosen one is larger, outlined."""
    for s in pts:
        fam = s.family
        ax.plot([s.compute_cost], [100 * s.quant_accuracy], _MARKERS.get(fam, "o"),
                color=_COLORS.get(fam), ms=11 if s.chosen else 8,
                mec="k" if s.chosen else "white", mew=1.6 if s.chosen else 0.8,
                ls="none", label=f"{s.method}" + (" (chosen)" if s.chosen else ""))


def _float_accuracy(validation, pts, sweep_rows) -> Optional[float]:
    """The float model's accuracy in %, from the first source that has it."""
    for src in ([validation] + list(pts[:1]) + list(sweep_rows[:1])):
        if src is not None and src.float_accuracy is not None:
            return 100 * src.float_accuracy
    return None


def _cost_axis(ax) -> None:
    from matplotlib.ticker import FuncFormatter

    def minor(v, _):
        lead = int(round(v / 10 ** math.floor(math.log10(v)))) if v > 0 else 0
        return eng(v) if lead in (2, 3, 5) else ""
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: eng(v)))
    ax.xaxis.set_minor_formatter(FuncFormatter(minor))
    ax.tick_params(axis="x", which="both", labelsize=8)


def _zoom(ax, pts, accs, ref) -> None:
    """Zoom on the useful range: the compared plans and a few pp below float;
    sweep points of very low precision leave through the bottom."""
    plan_accs = [100 * s.quant_accuracy for s in pts] + [ref]
    lo = min(min(plan_accs) - 1.0, ref - 4.0)
    hi = max(max(plan_accs), max(accs) if accs else ref) + 0.8
    ax.set_ylim(max(0.0, lo), min(100.5, hi))
    below = sum(1 for a in accs if a < lo)
    if below:
        ax.annotate(f"{below} sweep point{'s' if below > 1 else ''} below "
                    f"{lo:.1f}% not shown", (0.01, 0.01), xycoords="axes fraction",
                    fontsize=7, color="0.35", ha="left", va="bottom")


def figure_cost_accuracy(comparisons: Sequence = (), sweep_rows: Sequence = (),
                         validation=None):
    """Computational cost (1-bit full adders per example, log x) against
    fixed-point accuracy (%)."""
    fig = _new_figure(8.2, 4.4)
    ax = fig.add_subplot()
    accs = _sweep_curves(ax, sweep_rows)
    pts = [s for s in comparisons if s.quant_accuracy is not None]
    _plan_points(ax, pts)
    accs += [100 * s.quant_accuracy for s in pts]
    fa = _float_accuracy(validation, pts, sweep_rows)
    if fa is not None:
        ax.axhline(fa, color="k", lw=0.9, ls="--", label=f"float {fa:.2f}%")
    _cost_axis(ax)
    ref = fa if fa is not None else (max(accs) if accs else None)
    if ref is not None:
        _zoom(ax, pts, accs, ref)
    ax.set_xlabel("computational cost, 1-bit full adders per example (log)")
    ax.set_ylabel("fixed-point accuracy (%)")
    ax.grid(True, which="both", alpha=0.25)
    ax.set_title("Cost vs accuracy of the plans", fontsize=10)
    ax.legend(fontsize=7.5, loc="center left", bbox_to_anchor=(1.01, 0.5),
              frameon=False)
    return fig
