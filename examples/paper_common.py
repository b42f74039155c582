"""The paper reproduction shared by ``mnist_mlp.py`` and ``cifar10_vgg.py``
(not part of the tfprec API).

* equal-accuracy search with honest splits: :func:`equal_accuracy` finds,
  for each allocation family, the cheapest level whose fake-quant accuracy
  on the SELECTION split (the first ``--select_examples`` test images) is
  within ``max_accuracy_drop`` percentage points of float; every number the
  table reports is then measured on the disjoint REPORT split (the next
  ``--eval_examples`` test images), which no search saw.  The noise gains use
  training images.
* equal resolution: every family is searched on a grid of one level per bit
  (:func:`tfprec.peers.matched.family_grid`): B_min / B / B_A = 16 .. 2 for
  the paper rule, uniform and ICML 2017; for the cost-aware families the
  targets are their criterion's values at the uniform plans (per-example
  bound, predicted mismatch) at B = 16 .. 2 bits, so none of them selects
  more finely on the selection split than the others.  (``tfprec.calibrate``'s
  default cost-aware grid, 4 points per octave of the bound, is 8 points per
  bit: one bit less everywhere multiplies the bound by 4.)
* paper reproduction (METHOD.md sections 4 and 5): :func:`run_paper` and its
  markdown table, with the cost-model-only binarized and 16-bit networks.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Sequence

import tfprec  # noqa: F401  (first: selects Keras 2 before TensorFlow loads)
from tfprec.application import models
from tfprec.errors import PlanError, TfprecError
from tfprec.peers import matched
from tfprec.planning import cost as cost_lib
from tfprec.planning import plan as plan_lib
from tfprec.planning import rules as rules_lib
from tfprec.quantization import validate
from tfprec.statistics.gains import layer_geometry

from absl import flags

from tfprec.application import data as data_lib

from common import (METHOD_LABELS, PAPER_METHODS, Timer, _pct,
                    define_common_flags, define_flag, define_reference_flags,
                    md_header, print_result, reference_or_trained)

ENGINE = "tfprec.peers.matched: one level per bit for every family"


def paper_main(name: str, dataset: str, run: Callable, *, flatten: bool = False,
               **extra) -> None:
    """main() of a paper example: load ``dataset``, ``run`` with the flags
    (and ``extra`` keywords), print and write the markdown."""
    f = flags.FLAGS
    timer = Timer()
    ds = data_lib.load_dataset(dataset, f.data_dir or None, flatten=flatten)
    print(f"data: {ds}", flush=True)
    res = run(ds, epochs=f.epochs, cache_dir=f.cache_dir, retrain=f.retrain,
              weights_dir=f.weights_dir,
              calibration_examples=f.calibration_examples,
              select_examples=f.select_examples,
              eval_examples=f.eval_examples, binarized_widen=f.binarized_widen,
              max_accuracy_drop=f.max_accuracy_drop, seed=f.seed, **extra)
    print_result(name, res.markdown, timer)


def define_paper_flags(*, epochs: int, calibration_examples: int) -> None:
    """Flags of the paper reproductions (with :func:`common.define_common_flags`)."""
    define_common_flags(epochs=epochs, calibration_examples=calibration_examples,
                        eval_examples=5000)
    define_reference_flags()
    define_flag("integer", "select_examples", 5000,
                "Selection split: the first N test images; every family's level "
                "is chosen on them (the report split, the next --eval_examples "
                "test images, is disjoint).")
    define_flag("float", "binarized_widen", 3.0,
                "Width factor of the cost-model-only binarized network's "
                "hidden layers.")
    define_flag("float", "max_accuracy_drop", 0.1,
                "Equal accuracy: fake-quant accuracy on the selection split "
                "within this many percentage points of float.")


# ================================================================ search
@dataclasses.dataclass(frozen=True)
class Row:
    """One allocation family at its cheapest equal-accuracy level: chosen
    on the selection split, measured on the report split.

    Attributes:
      method: the family (:data:`tfprec.peers.matched.FAMILIES`).
      level, label: the level (bits, or the family's target, probability)
        and its text.
      plan: the plan (None when no level met the target: see ``note``).
      evaluations: fake-quant evaluations of the level search.
      num_select, select_drop_pp, select_mismatch: the selection split's
        size, accuracy drop (percentage points) and changed decisions.
      float_accuracy, quant_accuracy, accuracy_drop_pp, num_mismatch,
      num_examples: on the REPORT split (fractions, percentage points,
        counts); None until measured.
    """

    method: str
    level: Optional[float]
    label: str
    plan: Optional[plan_lib.PrecisionPlan]
    evaluations: int
    num_select: int
    select_drop_pp: Optional[float]
    select_mismatch: Optional[int]
    float_accuracy: Optional[float] = None
    quant_accuracy: Optional[float] = None
    accuracy_drop_pp: Optional[float] = None
    num_mismatch: Optional[int] = None
    num_examples: int = 0
    note: str = ""

    @property
    def met(self) -> bool:
        return self.plan is not None

    @property
    def b_min(self) -> Optional[int]:
        if self.plan is None:
            return None
        return int(min(min(l.weight_bits, l.act_bits) for l in self.plan.layers))

    @property
    def b_max(self) -> Optional[int]:
        if self.plan is None:
            return None
        return int(max(max(l.weight_bits, l.act_bits) for l in self.plan.layers))

    @property
    def bound(self) -> Optional[float]:
        return None if self.plan is None else float(self.plan.bound())

    def cost(self, kind: str) -> Optional[float]:
        return None if self.plan is None else float(self.plan.cost().total(kind))

    @property
    def level_str(self) -> str:
        return self.label


def equal_accuracy(model, gains, x, y, *, max_accuracy_drop: float = 0.1,
                   methods: Sequence[str] = PAPER_METHODS, batch_size: int = 256,
                   cost: str = "compute", predicted_gains=None,
                   predicted_labels=None) -> tuple:
    """Cheapest level of each family within ``max_accuracy_drop`` pp of float
    on (x, y), the SELECTION split, searched on grids of one level per bit
    (:func:`tfprec.peers.matched.family_grid` and ``select_level``; one
    shared evaluator, so a plan two families reach is measured once).

    ``predicted_gains`` (per-class gains on held-out inputs), when given,
    are what the ``cost_aware_predicted`` family plans from;
    ``predicted_labels`` (the class ids of those inputs) make its targets
    predicted accuracy drops, the quantity the selection measures.

    Returns (rows in ``methods`` order, engine text); the rows' report-split
    fields are unset (see :func:`report_rows`).
    """
    ev = matched.selection_evaluator(model, x, y, max_accuracy_drop, batch_size)
    rows = []
    for m in methods:
        try:
            g = (predicted_gains if m == "cost_aware_predicted"
                 and predicted_gains is not None else gains)
            lab = predicted_labels if g is predicted_gains else None
            grid = matched.family_grid(g, m, cost=cost, labels=lab)
        except TfprecError as e:      # e.g. gains without per-class data
            rows.append(Row(m, None, "-", None, 0, ev.n, None, None,
                            note=f"not available: {e}"))
            continue
        sel = matched.select_level(grid, ev)
        rows.append(Row(m, sel.level, sel.label, sel.plan, sel.evaluations, ev.n,
                        sel.accuracy_drop_pp, sel.num_mismatch, note=sel.note))
    return rows, ENGINE


def report_rows(model, rows, x, y, batch_size: int = 256) -> list:
    """``rows`` with their plans measured on (x, y), the REPORT split."""
    ev = matched.report_evaluator(model, x, y, batch_size)
    out = []
    for r in rows:
        if not r.met:
            out.append(dataclasses.replace(r, num_examples=ev.n,
                                           float_accuracy=ev.float_accuracy))
            continue
        m = matched.measure(r.plan, ev)
        out.append(dataclasses.replace(
            r, float_accuracy=m.float_accuracy, quant_accuracy=m.quant_accuracy,
            accuracy_drop_pp=m.accuracy_drop_pp, num_mismatch=m.num_mismatch,
            num_examples=m.num_examples))
    return out


# ================================================================ cost models
def geometry_cost(geometry: Sequence[dict], act_bits: int, weight_bits: int) -> tuple:
    """(compute FA, memory bits) of layers with the given geometry, every
    tensor at the same bits (METHOD.md section 4)."""
    comp = sum(cost_lib.compute_cost(g["dot_length"], g["num_dots"], act_bits,
                                     weight_bits) for g in geometry)
    mem = sum(cost_lib.memory_cost(g["num_weights"], g["num_inputs"], act_bits,
                                   weight_bits) for g in geometry)
    return float(comp), float(mem)


# ================================================================ paper run
@dataclasses.dataclass
class PaperResult:
    """Everything :func:`run_paper` measured; ``markdown`` is the report."""

    title: str
    float_accuracy: float
    rows: list
    fixed16: validate.ValidationResult
    binarized_cost: tuple
    binarized_widen: float
    binarized_geometry: list
    fixed16_cost: tuple
    ratios: dict
    engine: str
    timings: dict
    markdown: str
    gains: object = None
    model: object = None
    predicted_gains: object = None    # per-class gains on selection images

    def row(self, method: str) -> Row:
        for r in self.rows:
            if r.method == method:
                return r
        raise KeyError(method)


def _num(v, spec=".4g") -> str:
    return "n/a" if v is None else format(v, spec)


def _ratio(a, b) -> Optional[float]:
    return None if a is None or b is None or b == 0 else float(a) / float(b)


def _splits(ds, select_examples: int, eval_examples: int) -> tuple:
    """(n_sel, n_eval): the selection split is the first n_sel test
    examples, the report split the next n_eval (shrunk to what is left)."""
    n_sel = min(int(select_examples), ds.num_test - 1)
    n_eval = min(int(eval_examples), ds.num_test - n_sel)
    if n_sel < 1 or n_eval < 1:
        raise PlanError(f"select_examples={select_examples} and eval_examples="
                        f"{eval_examples} leave no disjoint selection and report "
                        f"splits in {ds.num_test} test examples")
    return n_sel, n_eval


def run_paper(builder: str, ds, *, title: str, wide_geometry: Callable[[float], list],
              widen: float = 3.0, widen_note: str = "",
              builder_kwargs: Optional[dict] = None, epochs: int = 3,
              batch_size: int = 128, cache_dir: str = "", calibration_examples: int = 2000,
              select_examples: int = 5000, eval_examples: int = 5000,
              max_accuracy_drop: float = 0.1,
              methods: Sequence[str] = PAPER_METHODS, seed: int = 0,
              schedule: str = "", retrain: bool = False, weights_dir: str = "",
              log: Callable[[str], None] = print) -> PaperResult:
    """The paper reproduction of ``builder`` on ``ds``.

    The model is the committed well-trained reference network
    (:func:`common.load_reference`), or, with ``retrain``, ``builder``
    trained with the short CPU schedule (``epochs``; ``builder_kwargs``).
    Gains on ``calibration_examples`` training examples (per-example and,
    for the predicted family, per-class data); for every allocation family
    the cheapest level at equal accuracy on the SELECTION split (the first
    ``select_examples`` test examples), reported on the REPORT split (the
    next ``eval_examples``); adds the cost-model-only binarized network
    (widths x ``widen``, every tensor 1 bit, geometry from
    ``wide_geometry(widen)``) and the 16-bit network (same widths as the
    trained one, fake-quant accuracy measured on the report split)."""
    timer = Timer()
    with timer("train"):
        model, how, ref_sched = reference_or_trained(
            builder, ds, retrain=retrain, epochs=epochs, cache_dir=cache_dir,
            builder_kwargs=builder_kwargs, batch_size=batch_size, seed=seed,
            weights_dir=weights_dir)
    if ref_sched:
        schedule = ref_sched
    log(f"[{title}] model {how} ({timer.phases['train']:.1f} s)")
    n_cal = min(int(calibration_examples), ds.num_train)
    n_sel, n_eval = _splits(ds, select_examples, eval_examples)
    x_cal = models.fit_inputs(model, ds.x_train[:n_cal])
    x_sel = models.fit_inputs(model, ds.x_test[:n_sel])
    y_sel = ds.y_test[:n_sel]
    x_eval = models.fit_inputs(model, ds.x_test[n_sel:n_sel + n_eval])
    y_eval = ds.y_test[n_sel:n_sel + n_eval]
    pgains = None
    with timer("gains"):
        gains = tfprec.noise_gains(model, x_cal, batch_size=min(256, n_cal),
                                   per_example=True)
        if "cost_aware_predicted" in methods:
            # the predictor is made for held-out inputs (a trained network's
            # training margins are far larger than on unseen data), and on
            # every selection image: the level the selection resolves (a few
            # examples of n_sel) must be one the prediction resolves too
            pgains = tfprec.noise_gains(model, x_sel, batch_size=256, per_class=True)
    log(f"[{title}] noise gains on {n_cal} training examples"
        + (f", per-class gains on the {n_sel} selection examples"
           if pgains is not None else "") + f" ({timer.phases['gains']:.1f} s)")
    with timer("equal-accuracy search (selection split)"):
        rows, engine = equal_accuracy(model, gains, x_sel, y_sel,
                                      max_accuracy_drop=max_accuracy_drop,
                                      methods=methods, predicted_gains=pgains,
                                      predicted_labels=y_sel)
    log(f"[{title}] equal-accuracy search on {n_sel} selection examples "
        f"({timer.phases['equal-accuracy search (selection split)']:.1f} s)")
    with timer("report split"):
        rows = report_rows(model, rows, x_eval, y_eval)
        p16 = rules_lib.uniform_plan(gains, bits=16)
        v16 = validate.validate(model, p16, x_eval, y_eval)
    float_acc = v16.float_accuracy
    geo = layer_geometry(model)
    c16 = geometry_cost(geo, 16, 16)
    wide = wide_geometry(widen)
    cbin = geometry_cost(wide, 1, 1)

    by = {r.method: r for r in rows}
    ratios = {}
    uni = by.get("uniform")
    for m in ("paper", "cost_aware", "cost_aware_predicted"):
        r = by.get(m)
        if r is None or not r.met:
            continue
        if uni is not None and uni.met:
            ratios[f"uniform_minus_{m}_min_bits"] = uni.b_min - r.b_min
            ratios[f"uniform_over_{m}_compute"] = _ratio(uni.cost("compute"), r.cost("compute"))
            ratios[f"uniform_over_{m}_memory"] = _ratio(uni.cost("memory"), r.cost("memory"))
        ratios[f"binarized_over_{m}_compute"] = _ratio(cbin[0], r.cost("compute"))
        ratios[f"binarized_over_{m}_memory"] = _ratio(cbin[1], r.cost("memory"))
        ratios[f"fixed16_over_{m}_compute"] = _ratio(c16[0], r.cost("compute"))
        ratios[f"fixed16_over_{m}_memory"] = _ratio(c16[1], r.cost("memory"))
    timings = dict(timer.phases)
    timings["total"] = timer.total
    res = PaperResult(title, float_acc, rows, v16, cbin, float(widen), wide, c16,
                      ratios, engine, timings, "", gains, model, pgains)
    res.markdown = paper_markdown(res, n_cal=n_cal, n_sel=n_sel, n_eval=n_eval,
                                  max_drop=max_accuracy_drop, trained=how,
                                  schedule=schedule, widen_note=widen_note)
    return res


def paper_markdown(res: PaperResult, *, n_cal: int, n_sel: int, n_eval: int,
                   max_drop: float, trained: str, schedule: str = "",
                   widen_note: str = "") -> str:
    ref = next((r for r in res.rows if r.method == "paper" and r.met), None)
    base_c = None if ref is None else ref.cost("compute")
    base_m = None if ref is None else ref.cost("memory")
    L = md_header(f"{res.title}: minimum precision at equal accuracy", schedule, trained)
    L += [f"Splits: noise gains on {n_cal} training images (the predictor's "
          f"per-class gains on the {n_sel} SELECTION images: it is made for "
          f"held-out inputs); each allocation's "
          f"level is the cheapest whose fake-quant accuracy on the SELECTION split "
          f"(test images 1-{n_sel}) is within {max_drop:g} percentage point of "
          f"float; every accuracy, drop and mismatch below is on the disjoint "
          f"REPORT split (test images {n_sel + 1}-{n_sel + n_eval}), which no "
          f"search saw (float accuracy there {_pct(res.float_accuracy)} %). "
          f"Search: {res.engine} (B_min / B / B_A = 16..2; the cost-aware "
          "families' targets are their criterion at the uniform plans of 16..2 "
          "bits). Costs per METHOD.md section 4: computational cost in 1-bit full "
          "adders (FA) per example, representational cost in bits; \"vs paper\" "
          "divides by the paper rule's per-layer plan.", ""]
    L += ["| network / allocation | level | min precision (bits) | max precision "
          "(bits) | selection drop pp | report acc % | report drop pp | report "
          "mismatch | bound | compute (FA) | memory (bits) | compute vs paper | "
          "memory vs paper |",
          "|" + "---|" * 13]
    for r in res.rows:
        label = METHOD_LABELS.get(r.method, r.method)
        if not r.met:
            L.append(f"| {label} | {r.note} |" + " |" * 11)
            continue
        L.append(
            f"| {label} | {r.level_str} | {r.b_min} | {r.b_max} | "
            f"{_num(r.select_drop_pp, '.2f')} | "
            f"{_pct(r.quant_accuracy)} | {_num(r.accuracy_drop_pp, '.2f')} | "
            f"{r.num_mismatch}/{r.num_examples} | {_num(r.bound, '.3g')} | "
            f"{_num(r.cost('compute'))} | {_num(r.cost('memory'))} | "
            f"{_num(_ratio(r.cost('compute'), base_c), '.2f')} | "
            f"{_num(_ratio(r.cost('memory'), base_m), '.2f')} |")
    v = res.fixed16
    L.append(
        f"| 16-bit fixed point, same widths (measured) | B=16 | 16 | 16 | n/a | "
        f"{_pct(v.quant_accuracy)} | {100 * (v.float_accuracy - v.quant_accuracy):.2f} | "
        f"{v.num_mismatch}/{v.num_examples} | {v.bound:.3g} | "
        f"{_num(res.fixed16_cost[0])} | {_num(res.fixed16_cost[1])} | "
        f"{_num(_ratio(res.fixed16_cost[0], base_c), '.2f')} | "
        f"{_num(_ratio(res.fixed16_cost[1], base_m), '.2f')} |")
    L.append(
        f"| binarized, {res.binarized_widen:g}x wider (cost model only, not "
        f"trained) | B_A=B_W=1 | 1 | 1 | n/a | n/a | n/a | n/a | n/a | "
        f"{_num(res.binarized_cost[0])} | {_num(res.binarized_cost[1])} | "
        f"{_num(_ratio(res.binarized_cost[0], base_c), '.2f')} | "
        f"{_num(_ratio(res.binarized_cost[1], base_m), '.2f')} |")
    L.append("")
    wide_desc = ", ".join(f"{g['name']} {g['num_dots']}x{g['dot_length']}"
                          for g in res.binarized_geometry)
    L += [f"Binarized network: the same topology with every hidden layer "
          f"{res.binarized_widen:g}x wider ({widen_note or 'hidden widths and channels multiplied'}; "
          f"the output layer keeps 10 units), every weight and activation "
          f"1 bit, priced with the same cost formulas; its accuracy is not "
          f"measured (it is not trained). Geometry (dot products x length): "
          f"{wide_desc}.", ""]

    # per-layer bits
    met = [r for r in res.rows if r.met]
    if met:
        L += ["Per-layer precision (B_W / B_A) of each allocation:", "",
              "| layer | " + " | ".join(r.method for r in met) + " |",
              "|" + "---|" * (len(met) + 1)]
        for i, lp in enumerate(met[0].plan.layers):
            L.append(f"| {lp.name} | " + " | ".join(
                f"{r.plan.layers[i].weight_bits} / {r.plan.layers[i].act_bits}"
                for r in met) + " |")
        L.append("")

    # claims
    q = res.ratios
    L += ["Paper claims, as measured here:", ""]
    for m in ("paper", "cost_aware", "cost_aware_predicted"):
        if f"binarized_over_{m}_compute" not in q:
            L.append(f"- {m}: no plan met the target; no ratios.")
            continue
        who = {"paper": "paper rule", "cost_aware": "cost-aware plan",
               "cost_aware_predicted": "predictor-based plan"}[m]
        if f"uniform_minus_{m}_min_bits" in q:
            L.append(f"- \"up to 8 bits lower minimum precision\": uniform B minus the "
                     f"{who}'s minimum precision = {q[f'uniform_minus_{m}_min_bits']} "
                     f"bits (uniform costs {q[f'uniform_over_{m}_compute']:.2f}x "
                     f"compute, {q[f'uniform_over_{m}_memory']:.2f}x memory).")
        L.append(f"- \"~3.5x lower cost than binarized\": binarized / {who} = "
                 f"{q[f'binarized_over_{m}_compute']:.2f}x compute, "
                 f"{q[f'binarized_over_{m}_memory']:.2f}x memory (cost model only).")
        L.append(f"- \"up to 14x lower cost than 16-bit\": 16-bit / {who} = "
                 f"{q[f'fixed16_over_{m}_compute']:.2f}x compute, "
                 f"{q[f'fixed16_over_{m}_memory']:.2f}x memory.")
    t = res.timings
    L += ["", "Wall time: " + ", ".join(f"{k} {v:.1f} s" for k, v in t.items()) + "."]
    return "\n".join(L) + "\n"
