"""The steps of a ``tfprec`` run, each a function of explicit arguments
(a :class:`tfprec.application.flags.Settings`, never the absl flags).

Loading (model, data), the demo model, the choice of a plan (analytic
target, cost budget or measured target: the planning itself is
:mod:`tfprec.planning.select` and :mod:`tfprec.planning.calibrate`), the
comparison of every rule's plan and the TFLite export.  Problems raise
:class:`tfprec.application.flags.CliError` naming the flag at fault.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib
import inspect
import re
import sys
import time
import warnings
from typing import Optional

from tfprec import inputs as inputs_lib
from tfprec.application import report as report_lib
from tfprec.application.flags import PREDICTED_ALLOCATION, CliError, Settings, log
from tfprec.planning import budget as budget_lib
from tfprec.planning import select

PLAN_FILE = "plan.json"
QUANTIZED_FILE = "quantized.h5"
TFLITE_FILE = "model.tflite"
SUMMARY_FILE = "summary.json"
FLOAT_MODEL_FILE = "float_model.h5"


def fmt_cost(v: float, cost: str) -> str:
    """A cost with its unit: full adders (compute) or bits (memory)."""
    unit = "full adders" if cost == "compute" else "bits"
    return f"{v:,.0f} {unit}"


# ==================================================================== loading
def tfprec_custom_objects() -> dict:
    """tfprec's own Keras custom objects, under every name they are saved
    with (``ClipWeights``, ``tfprec>ClipWeights``)."""
    from tfprec.application import models
    return {"ClipWeights": models.ClipWeights, "tfprec>ClipWeights": models.ClipWeights}


def user_custom_objects(module_path: Optional[str]) -> dict:
    """``{class name: class}`` of every class defined in the module
    ``module_path`` (--custom_objects); CliError (exit status 2) when it
    cannot be imported or defines no class."""
    if not module_path:
        return {}
    try:
        mod = importlib.import_module(module_path)
    except Exception as e:  # the user's module may raise anything
        raise CliError(f"--custom_objects: cannot import {module_path!r} "
                       f"({type(e).__name__}: {e})", 2) from e
    found = {n: c for n, c in vars(mod).items()
             if inspect.isclass(c) and c.__module__ == mod.__name__}
    if not found:
        raise CliError(f"--custom_objects: module {module_path!r} defines no class", 2)
    return found


_UNKNOWN = re.compile(r"Unknown (\w+(?: \w+)?): '?([\w>.]+)'?")


def load_model(path: str, custom_objects: Optional[str] = None):
    """Loads a tf_keras model with tfprec's custom objects and those of the
    module ``custom_objects`` (--custom_objects).  CliError (exit status 2)
    on failure, naming a missing custom class."""
    from tfprec._tf import keras
    from tfprec.quantization.configs import quantize_scope
    extra = dict(tfprec_custom_objects(), **user_custom_objects(custom_objects))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with quantize_scope(extra):
                model = keras.models.load_model(path, compile=False)
    except Exception as e:  # anything Keras / h5py / SavedModel raise
        text = str(e).strip()
        unknown = _UNKNOWN.search(text)
        if unknown:
            raise CliError(
                f"--model: {path!r} uses the custom {unknown.group(1)} "
                f"{unknown.group(2)!r}, which neither Keras nor tfprec defines; pass "
                "--custom_objects=your.module (a module defining that class), or load "
                "the model yourself with keras.models.load_model(..., "
                "custom_objects=...) and use the tfprec API", 2) from e
        raise CliError(f"--model: cannot load {path!r} as a tf_keras model "
                       f"({type(e).__name__}: {text[:500]})", 2) from e
    if not isinstance(model, keras.Model):
        raise CliError(f"--model: {path!r} holds a {type(model).__name__}, not a "
                       "tf_keras Model", 2)
    return model


def load_data(s: Settings, model=None):
    """The dataset of ``--data`` (flattened for the demo MLP).  Integer images
    are divided by 255, except for a ``model`` whose input is integer (uint8
    images it scales itself): it gets their values 0..255."""
    from tfprec.application import data as data_lib
    from tfprec.errors import InvalidDataError
    raw = model is not None and all(t.dtype.is_integer for t in model.inputs)
    try:
        return data_lib.load_dataset(s.data, s.data_dir, flatten=s.demo,
                                     scale_integers=not raw)
    except InvalidDataError as e:
        raise CliError(f"--data={s.data}: {e}", 2) from e


def take(s: Settings, model, x, y, n: int, what: str, flag: str, notes: list):
    """The first ``n`` examples (all, with a note, when there are fewer),
    reshaped to the model's input."""
    from tfprec.application import models
    from tfprec.errors import InvalidDataError
    if n > len(x):
        notes.append(f"--{flag}={n} exceeds the {len(x)} {what} examples; using all {len(x)}")
        n = len(x)
    try:
        return models.fit_inputs(model, x[:n]), y[:n]
    except InvalidDataError as e:
        raise CliError(f"--data={s.data} does not fit the model (--{flag}): {e}",
                       2) from e


def save_model(model, path: str) -> None:
    """model.save(path) (HDF5 for .h5) without Keras' legacy-format chatter."""
    from tfprec._tf import tf
    logger = tf.get_logger()
    level = logger.level
    logger.setLevel("ERROR")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.save(path)
    finally:
        logger.setLevel(level)


def demo_model(s: Settings, ds, staging, timings: dict):
    """Trains the demo MLP on ``ds``, stages it as float_model.h5; returns
    (model, a line describing the training)."""
    import numpy as np
    from tfprec._tf import keras
    from tfprec.application import models as models_lib
    t0 = time.time()
    n_in = int(np.prod(ds.input_shape))
    keras.utils.set_random_seed(s.seed)
    model = models_lib.mnist_mlp(hidden=s.demo_hidden, input_shape=(n_in,),
                                 num_classes=ds.num_classes)
    widths = (n_in,) + tuple(s.demo_hidden) + (ds.num_classes,)
    log(f"training the demo MLP {'-'.join(map(str, widths))} "
        f"for {s.demo_epochs} epochs on {ds.num_train} {ds.name} images")
    models_lib.train(model, ds, epochs=s.demo_epochs, batch_size=s.demo_batch_size,
                     seed=s.seed)
    timings["train (demo)"] = time.time() - t0
    staging.write_with(FLOAT_MODEL_FILE, lambda p: save_model(model, p))
    info = (f"trained here for {s.demo_epochs} epochs, batch "
            f"{s.demo_batch_size}, Adam 1e-3, seed {s.seed}, on "
            f"{ds.num_train} {ds.name} training images "
            f"({timings['train (demo)']:.1f} s)")
    return model, info


# ==================================================================== choice
@dataclasses.dataclass
class Choice:
    """The plans a run made and the one it chose.

    Attributes:
      plans: method family -> plan, in comparison order.
      chosen: the family of the chosen plan (a key of ``plans``).
      x_val, y_val: where the chosen plan is validated.
      calibration: the :class:`tfprec.calibrate.CalibrationResult` of a
        measured target, else None.
      validation_note: how the validation data relates to the choice.
      notes: remarks for the report (rules that met no plan, ...).
    """

    plans: dict
    chosen: str
    x_val: object
    y_val: object
    calibration: object = None
    validation_note: Optional[str] = None
    notes: list = dataclasses.field(default_factory=list)

    @property
    def plan(self):
        return self.plans[self.chosen]


def _methods(s: Settings) -> tuple:
    return select.PLAN_ORDER if s.allocation == "best" else (s.allocation,)


def predicted_gains(s: Settings, model, x_sel):
    """Per-class noise gains (with the weight-shift tables) of the mismatch
    predictor, over the selection half of the held-out examples: the
    predictor is made for held-out inputs (a trained network's training
    margins are larger)."""
    from tfprec.statistics.gains import noise_gains
    log(f"per-class noise gains (mismatch predictor) over the selection half of "
        f"the held-out examples ({len(x_sel)} ex.)")
    with contextlib.redirect_stdout(sys.stderr):          # the progress bar
        return noise_gains(model, x_sel, batch_size=min(s.batch_size, 256),
                           per_class=True, verbose=True,
                           per_channel=s.per_channel_weights)


def drop_labels(s: Settings, y_sel):
    """The ``labels`` of the predicted accuracy drop (--predicted_drop): the
    selection half's labels, or predict.SOFTMAX (label-free)."""
    from tfprec.planning.predict import SOFTMAX
    return SOFTMAX if s.predicted_drop == "softmax" else y_sel


def choose_predicted_budget(s: Settings, model, x_eval, y_eval) -> Choice:
    """--allocation=cost_aware_predicted with --cost_budget: the plan with the
    lowest predicted accuracy drop (--predicted_drop) whose cost fits, from
    per-class gains on the selection half; validated on the report half."""
    from tfprec.errors import UnattainableTargetError
    half = len(x_eval) // 2
    pg = predicted_gains(s, model, x_eval[:half])
    try:
        plan = budget_lib.predicted_budget_plan(pg, s.cost_budget, s.cost, s.max_bits,
                                                labels=drop_labels(s, y_eval[:half]))
    except UnattainableTargetError as e:
        raise CliError(f"--cost_budget={s.cost_budget:g}: {e}", 2) from e
    note = (f"Predicted allocation: the per-class gains were computed on the "
            f"selection half of the held-out examples (the first {half}); the "
            f"plan's numbers above are on the report half (the other "
            f"{len(x_eval) - half}).")
    return Choice({PREDICTED_ALLOCATION: plan}, PREDICTED_ALLOCATION, x_eval[half:],
                  y_eval[half:], validation_note=note)


def choose_analytic(s: Settings, gains, x_eval, y_eval) -> Choice:
    """Every rule at the analytic target (a probability); 'best' is the
    cheapest by ``s.cost``."""
    target, alloc = s.target_bound, s.allocation
    plans, unmet = select.analytic_plans(gains, target, cost=s.cost,
                                         max_bits=s.max_bits)
    if alloc == "best" and not plans:
        raise CliError(f"--target_bound={target:g}: no allocation meets the "
                       "analytic target: "
                       + "; ".join(f"{k}: {v}" for k, v in unmet.items()), 2)
    if alloc != "best" and alloc not in plans:
        raise CliError(f"--target_bound={target:g} with --allocation={alloc}: "
                       f"{unmet[alloc]}", 2)
    chosen = select.cheapest(plans, s.cost) if alloc == "best" else alloc
    notes = [f"{m}: no plan meets the target ({why})" for m, why in unmet.items()]
    return Choice(plans, chosen, x_eval, y_eval, notes=notes)


def choose_budget(s: Settings, model, gains, x_eval, y_eval) -> Choice:
    """Each rule's smallest-bound plan within the cost budget (full adders
    per example or bits); 'best' is the smallest bound of them."""
    budget, cost, alloc = s.cost_budget, s.cost, s.allocation
    if alloc == PREDICTED_ALLOCATION:
        return choose_predicted_budget(s, model, x_eval, y_eval)
    methods = _methods(s)
    plans, min_costs = select.budget_plans(gains, budget, cost=cost,
                                           max_bits=s.max_bits, methods=methods)
    if not plans:
        raise CliError(
            f"--cost_budget={budget:g}: no "
            + ("plan" if alloc == "best" else f"{alloc} plan")
            + f" fits; the minimum achievable {cost} cost is "
            + fmt_cost(min(min_costs.values()), cost)
            + (" (every tensor at 2 bits)" if alloc in ("best", "cost_aware", "uniform")
               else f" (the {alloc} rule's lowest level)"), 2)
    chosen = select.tightest(plans, cost) if alloc == "best" else alloc
    notes = [f"{m}: no plan fits the budget (its minimum is "
             f"{fmt_cost(min_costs[m], cost)})" for m in methods if m not in plans]
    return Choice(plans, chosen, x_eval, y_eval, notes=notes)


def calibrate_each(s: Settings, model, gains, x, y, methods, gains_labels=None):
    """tfprec.calibrate, one rule at a time with a progress line each; the
    results merged into one CalibrationResult (candidates sorted by cost,
    the cheapest first, as calibrate sorts them).  CliError (exit status 2)
    naming the target flag when no rule meets it."""
    from tfprec.errors import TfprecError, UnattainableTargetError
    from tfprec.planning import calibrate as cal_lib
    flag = s.measured_flag
    results, unmet = [], {}
    for i, m in enumerate(methods, 1):
        t0 = time.time()
        try:
            res = cal_lib.calibrate(
                model, gains, x, y, target_mismatch=s.target_mismatch,
                max_accuracy_drop=s.max_accuracy_drop, methods=(m,),
                cost=s.cost, batch_size=s.batch_size, max_bits=s.max_bits,
                gains_labels=gains_labels)
        except UnattainableTargetError as e:
            unmet[m] = str(e)
            log(f"  calibrating {m} ({i}/{len(methods)}): no level meets the target "
                f"({time.time() - t0:.1f} s)")
            continue
        except TfprecError as e:
            raise CliError(f"--{flag}={getattr(s, flag):g}: {e}", 2) from e
        results.append(res)
        unmet.update(res.unmet)
        c = res.best
        log(f"  calibrating {m} ({i}/{len(methods)}): {c.plan.method} at "
            f"{report_lib.level_text(report_lib.base_method(c.plan.method), c.level)}, "
            f"{res.total_evaluations} evaluations ({time.time() - t0:.1f} s)")
    if not results:
        raise CliError(f"--{flag}={getattr(s, flag):g}: no allocation meets the "
                       "measured target: "
                       + "; ".join(f"{k}: {v}" for k, v in unmet.items()), 2)
    cands = [c for r in results for c in r.candidates]
    other = "memory" if s.cost == "compute" else "compute"
    cands.sort(key=lambda c: (c.cost(s.cost), c.cost(other), c.method))
    return dataclasses.replace(
        results[0], best=cands[0], candidates=tuple(cands), unmet=unmet,
        total_evaluations=sum(r.total_evaluations for r in results))


def choose_measured(s: Settings, model, gains, x_eval, y_eval) -> Choice:
    """tfprec.calibrate on the first half of the held-out examples (the
    selection half); the chosen plan is validated on the second half (the
    report half)."""
    half = len(x_eval) // 2
    methods = _methods(s)
    gains_labels = None
    if s.allocation == PREDICTED_ALLOCATION:
        # the predictor's gains on the selection half; an accuracy-drop
        # target is planned under a predicted accuracy drop (--predicted_drop)
        gains = predicted_gains(s, model, x_eval[:half])
        gains_labels = drop_labels(s, y_eval[:half])
    log(f"calibrating {', '.join(methods)} on the selection half of the held-out "
        f"examples ({half} ex.)")
    cal = calibrate_each(s, model, gains, x_eval[:half], y_eval[:half], methods,
                         gains_labels)
    plans = {c.method: c.plan for c in cal.candidates}
    note = (f"Measured target: each rule's level was chosen on the selection half "
            f"of the held-out examples (the first {half}); the chosen plan's numbers "
            f"above are on the report half (the other {len(x_eval) - half}), which "
            "the calibration did not see.")
    return Choice(plans, cal.best.method, x_eval[half:], y_eval[half:], cal, note,
                  [f"{m}: {why}" for m, why in cal.unmet.items()])


def choose(s: Settings, model, gains, x_eval, y_eval) -> Choice:
    """The choice of ``s.mode``."""
    if s.mode == "analytic":
        return choose_analytic(s, gains, x_eval, y_eval)
    if s.mode == "budget":
        return choose_budget(s, model, gains, x_eval, y_eval)
    return choose_measured(s, model, gains, x_eval, y_eval)


# ==================================================================== after
# A plan is flagged as useless when, on the data it was validated on, its
# accuracy drops by more than this many percentage points, its decisions
# differ from the float model's on more than this fraction of examples, or
# its accuracy is within this factor of chance (1 / classes).
USELESS_DROP_PP = 10.0
USELESS_MISMATCH = 0.5
USELESS_CHANCE_FACTOR = 1.5


def usefulness_warnings(v, model, split: str) -> list:
    """Warnings (text) when the validated plan is useless: see the
    thresholds above (percentage points, probability, multiple of chance)."""
    out = []
    where = f"on the {split}"
    if v.float_accuracy is not None and v.quant_accuracy is not None:
        drop = 100.0 * (v.float_accuracy - v.quant_accuracy)
        chance = 1.0 / inputs_lib.model_num_classes(model)
        if drop > USELESS_DROP_PP:
            out.append(f"the chosen plan loses {drop:.1f} percentage points of accuracy "
                       f"{where} (float {100 * v.float_accuracy:.2f} %, fixed point "
                       f"{100 * v.quant_accuracy:.2f} %): it is not usable; allow "
                       "more bits (a larger --cost_budget or a smaller target)")
        elif v.quant_accuracy <= USELESS_CHANCE_FACTOR * chance:
            out.append(f"the chosen plan's accuracy {100 * v.quant_accuracy:.2f} % "
                       f"{where} is near chance ({100 * chance:.1f} %)")
    if v.mismatch_rate > USELESS_MISMATCH:
        out.append(f"the chosen plan changes {100 * v.mismatch_rate:.1f} % of the "
                   f"float model's decisions {where}: it is not usable")
    return out


def compare(s: Settings, model, choice: Choice, validation) -> list:
    """PlanSummary rows of every plan (validated where not measured already)."""
    from tfprec.quantization import validate as validate_lib
    if choice.calibration is not None:
        return [report_lib.PlanSummary.from_calibrated(c, chosen=(c.method == choice.chosen))
                for c in choice.calibration.candidates]
    rows = []
    for m, p in choice.plans.items():
        v = validation if m == choice.chosen else validate_lib.validate(
            model, p, choice.x_val, choice.y_val, batch_size=s.batch_size)
        rows.append(report_lib.PlanSummary.from_plan(p, v, chosen=(m == choice.chosen)))
    return rows


#: export_tflite keywords of each --tflite_mode
TFLITE_MODES = {
    "exact": {},
    "fast": {"backend": "ai_edge_quantizer", "exact_ties": False},
    "integer": {"backend": "ai_edge_quantizer", "full_integer": True},
}


def export(s: Settings, model, plan, x_eval, staging):
    """Stages model.tflite realizing ``plan``; its ExportReport."""
    from tfprec import export as export_lib
    from tfprec.errors import ExportError
    log("exporting TFLite")
    try:
        rep = export_lib.export_tflite(model, plan, staging.path(TFLITE_FILE),
                                       representative_data=x_eval[:500],
                                       kernels=s.tflite_kernels, **TFLITE_MODES[s.tflite_mode])
    except ExportError as e:
        raise CliError(f"TFLite export failed: {e} (pass --noexport_tflite to "
                       "skip it)", 1) from e
    rep.path = staging.final_path(TFLITE_FILE)
    return rep
