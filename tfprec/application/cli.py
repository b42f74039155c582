"""tfprec: minimum per-layer fixed-point precision of a tf_keras classifier.

Implements Sakr & Shanbhag, ICASSP 2018: noise gains of every weight and
activation tensor, a per-layer precision plan that meets a target on the
float / fixed-point mismatch probability, its validation against the float
model, a fake-quant model, a TFLite export and a report.

Usage:
  tfprec --demo
      trains the paper's MNIST MLP briefly on the embedded MNIST subset and
      runs the whole pipeline (no network needed).
  tfprec --model=model.h5 --data=mnist --data_dir=../shared/data
      analyzes a saved tf_keras classifier (.keras, .h5 or SavedModel dir).
  tfprec --model=model.h5 --max_accuracy_drop=0.5
      cheapest plan whose measured accuracy drop is at most 0.5 pp.
  tfprec --model=model.h5 --cost_budget=2e7 --cost=compute
      smallest-bound plan that costs at most 2e7 full adders per example.

Writes into --output_dir (default ./tfprec_out): plan.json, report.md,
quantized.h5 (the fake-quant model; load it under
tfprec.quantization.apply.quantize_scope()), model.tflite, summary.json and PNG figures
(with matplotlib).  Everything is written into a temporary folder first and
moved into place at the end, so a failed run leaves nothing behind.

Run with --helpfull for every flag.  Also runs as `python -m tfprec`.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shlex
import shutil
import sys
import tempfile
import time
import warnings
from typing import Optional

from absl import app, flags

from tfprec.application import report as report_lib

ALLOCATIONS = ("best", "cost_aware", "paper", "uniform", "icml2017")
PLAN_ORDER = ("cost_aware", "paper", "uniform", "icml2017")
DEFAULT_OUTPUT_DIR = "tfprec_out"

PLAN_FILE = "plan.json"
QUANTIZED_FILE = "quantized.h5"
TFLITE_FILE = "model.tflite"
SUMMARY_FILE = "summary.json"
FLOAT_MODEL_FILE = "float_model.h5"
OUTPUT_FILES = (PLAN_FILE, report_lib.REPORT_FILE, QUANTIZED_FILE, TFLITE_FILE,
                SUMMARY_FILE, FLOAT_MODEL_FILE) + report_lib.FIGURES

FLAGS = flags.FLAGS

# ------------------------------------------------------------------ inputs
flags.DEFINE_string(
    "model", None,
    "Saved tf_keras classifier to analyze: a .keras file, an .h5 file or a "
    "SavedModel folder.  Its output must be the class scores (logits or "
    "softmax).  Loaded under tfprec.quantization.apply.quantize_scope() with tfprec's "
    "custom objects (e.g. models.ClipWeights).  Exclusive with --demo.")
flags.DEFINE_bool(
    "demo", False,
    "Train the paper's MNIST MLP (784-512-512-512-10, clip(x, 0, 2), weights "
    "in [-1, 1]) for --demo_epochs epochs on --data (default: the embedded "
    "MNIST subset, no network needed), then run the whole pipeline on it.")
flags.DEFINE_string(
    "data", "mnist_subset",
    "Dataset: 'mnist', 'cifar10' (from --data_dir, else keras.datasets "
    "online), 'mnist_subset' (embedded in tfprec, 8000 train / 2000 test "
    "images) or a path to an .npz file holding x_train, y_train, x_test, "
    "y_test.  Integer images are divided by 255.")
flags.DEFINE_string(
    "data_dir", None,
    "Folder holding offline copies mnist.npz / cifar10_jpeg75.npz (or "
    "cifar10.npz), e.g. ../shared/data.  Default: $TFPREC_DATA_DIR if set.")
flags.DEFINE_integer(
    "calibration_examples", 1000,
    "Examples from the TRAINING split over which the noise gains are averaged "
    "(the first N; capped at the split size).")
flags.DEFINE_integer(
    "eval_examples", 2000,
    "Held-out examples from the TEST split for validation, the plan "
    "comparison, the sweep and measured targets (the first N; capped at the "
    "split size).")

# ------------------------------------------------------------------ target
flags.DEFINE_float(
    "target_mismatch", 0.01,
    "Analytic target: the plan's bound on the probability that the "
    "fixed-point decision differs from the float decision, "
    "sum_T 4^(1-B_T) G_T <= this (a fraction in (0, 1)).  Used unless "
    "--max_accuracy_drop, --target_measured_mismatch or --cost_budget is "
    "given.")
flags.DEFINE_float(
    "max_accuracy_drop", None,
    "Measured target: float accuracy - fixed-point accuracy <= this many "
    "percentage points (in [0, 100)).  The level of each allocation is "
    "calibrated with tfprec.calibrate on the first half of the held-out "
    "examples and the chosen plan is confirmed on the second half.")
flags.DEFINE_float(
    "target_measured_mismatch", None,
    "Measured target: fraction of held-out examples whose fixed-point "
    "decision differs from the float decision <= this (in [0, 1)).  "
    "Calibrated and confirmed like --max_accuracy_drop.")
flags.DEFINE_float(
    "cost_budget", None,
    "Cost budget, in 1-bit full adders per example (--cost=compute) or in "
    "bits (--cost=memory): the plan with the smallest analytic bound whose "
    "cost fits (the bound target of the cost-aware plan is bisected in log "
    "space; rules with one level take their most precise level that fits).")
flags.DEFINE_enum(
    "allocation", "best", list(ALLOCATIONS),
    "Precision allocation rule: 'paper' (ICASSP 2018: equalized bound "
    "contributions, offsets from the normalized gains), 'cost_aware' (the "
    "cheapest per-tensor bits under the bound, by --cost), 'uniform' (one B "
    "for every tensor), 'icml2017' (one B_W, one B_A), or 'best': the "
    "cheapest plan of all rules that meets the target (with --cost_budget: "
    "the smallest bound that fits).")
flags.DEFINE_enum(
    "cost", "compute", ["compute", "memory"],
    "Cost to minimize and to compare by: 'compute' (1-bit full adders per "
    "example) or 'memory' (bits of weights plus input activations).")
flags.DEFINE_integer(
    "max_bits", 16, "Largest bit-width allowed for any tensor (2..16).")

# ------------------------------------------------------------------ outputs
flags.DEFINE_string(
    "output_dir", DEFAULT_OUTPUT_DIR,
    "Folder for plan.json, report.md, quantized.h5, model.tflite, "
    "summary.json and the PNG figures; created if missing (files of an "
    "earlier run with the same names are replaced).")
flags.DEFINE_bool(
    "plots", report_lib.have_matplotlib(),
    "Write PNG figures (needs matplotlib: pip install 'tfprec[plots]').  On "
    "by default when matplotlib is importable.")
flags.DEFINE_bool(
    "export_tflite", True,
    "Write model.tflite realizing the chosen plan exactly "
    "(tfprec.export.export_tflite) and add its grid-check report.")
flags.DEFINE_enum(
    "tflite_kernels", "xnnpack", ["xnnpack", "reference", "optimized"],
    "TFLite kernel family whose int8 rounding the export matches exactly.")
flags.DEFINE_string(
    "sweep_levels", "2-12",
    "Precision levels (bits) of the validation sweep of the paper rule "
    "(B_min) and the uniform (B) and ICML 2017 (B_A) baselines: a range "
    "'LO-HI', a list '2,4,8', or 'none' to skip the sweep.")

# ------------------------------------------------------------------ knobs
flags.DEFINE_integer("demo_epochs", 3, "Training epochs of the --demo model.")
flags.DEFINE_list("demo_hidden", ["512", "512", "512"],
                  "Hidden layer widths of the --demo MLP, comma separated.")
flags.DEFINE_integer("demo_batch_size", 128, "Training batch size of --demo.")
flags.DEFINE_integer("batch_size", 256,
                     "Batch size of the gains, validation and sweep passes.")
flags.DEFINE_integer("seed", 0, "Random seed (demo training).")


# ------------------------------------------------------------------ validators
def _positive_int(name):
    flags.register_validator(
        name, lambda v: v is not None and v >= 1,
        message=f"--{name} must be a positive integer")


for _n in ("calibration_examples", "eval_examples", "demo_epochs",
           "demo_batch_size", "batch_size"):
    _positive_int(_n)

flags.register_validator(
    "target_mismatch", lambda v: v is not None and 0.0 < v < 1.0,
    message="--target_mismatch must be a probability in (0, 1), e.g. 0.01")
flags.register_validator(
    "max_accuracy_drop", lambda v: v is None or 0.0 <= v < 100.0,
    message="--max_accuracy_drop must be in [0, 100) percentage points")
flags.register_validator(
    "target_measured_mismatch", lambda v: v is None or 0.0 <= v < 1.0,
    message="--target_measured_mismatch must be a fraction in [0, 1)")
flags.register_validator(
    "cost_budget", lambda v: v is None or (v > 0 and math.isfinite(v)),
    message="--cost_budget must be a positive number (full adders or bits)")
flags.register_validator(
    "max_bits", lambda v: v is not None and 2 <= v <= 16,
    message="--max_bits must be in 2..16")
flags.register_validator(
    "output_dir", lambda v: bool(v and v.strip()),
    message="--output_dir must not be empty")


def _hidden_ok(v):
    try:
        return len(v) > 0 and all(int(h) >= 1 for h in v)
    except (TypeError, ValueError):
        return False


flags.register_validator(
    "demo_hidden", _hidden_ok,
    message="--demo_hidden must be positive integers, e.g. 512,512,512")


def parse_levels(text: str) -> list:
    """'2-12' -> [2..12]; '2,4,8' -> [2, 4, 8]; 'none' or '' -> [].

    Raises ValueError for anything else or levels outside 2..16.
    """
    t = (text or "").strip().lower()
    if t in ("", "none", "off", "no"):
        return []
    if "-" in t and "," not in t:
        a, b = t.split("-", 1)
        lv = list(range(int(a), int(b) + 1))
        if not lv:
            raise ValueError(f"empty range {text!r}")
    else:
        lv = sorted({int(p) for p in t.split(",") if p.strip()})
    if any(not 2 <= l <= 16 for l in lv):
        raise ValueError(f"levels must be in 2..16, got {text!r}")
    return lv


def _levels_ok(v):
    try:
        parse_levels(v)
        return True
    except ValueError:
        return False


flags.register_validator(
    "sweep_levels", _levels_ok,
    message="--sweep_levels must be 'LO-HI', a list like '2,4,8' (bits in "
            "2..16) or 'none'")


# ==================================================================== errors
class CliError(Exception):
    """A problem with the command line or its inputs; exit status ``code``."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def _log(msg: str) -> None:
    print(f"[tfprec] {msg}", file=sys.stderr, flush=True)


# ==================================================================== staging
class Staging:
    """Writes the outputs into a temporary folder next to the destination.

    The temporary folder lives in the nearest existing ancestor of
    ``output_dir``'s parent, so the final moves are renames on one file
    system.  :meth:`commit` creates the missing parents and moves the files
    into ``output_dir`` (the folder itself is renamed into place when it
    does not exist yet); :meth:`discard` removes everything.
    """

    def __init__(self, output_dir: str):
        self.final = os.path.abspath(os.path.expanduser(output_dir))
        if os.path.exists(self.final) and not os.path.isdir(self.final):
            raise CliError(f"--output_dir: {output_dir!r} exists and is not a folder")
        anchor = os.path.dirname(self.final)
        while not os.path.isdir(anchor):
            parent = os.path.dirname(anchor)
            if parent == anchor:
                break
            anchor = parent
        if not os.access(anchor, os.W_OK | os.X_OK):
            raise CliError(f"--output_dir: cannot write into {anchor!r} "
                           f"(needed for {output_dir!r})")
        if os.path.isdir(self.final) and not os.access(self.final, os.W_OK | os.X_OK):
            raise CliError(f"--output_dir: folder {output_dir!r} is not writable")
        self.dir = tempfile.mkdtemp(prefix=".tfprec-tmp-", dir=anchor)

    def path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def final_path(self, name: str) -> str:
        return os.path.join(self.final, name)

    def commit(self) -> list:
        names = sorted(os.listdir(self.dir))
        os.makedirs(os.path.dirname(self.final), exist_ok=True)
        if not os.path.exists(self.final):
            os.rename(self.dir, self.final)
            self.dir = None
        else:
            for n in names:
                os.replace(os.path.join(self.dir, n), os.path.join(self.final, n))
            self.discard()
        return [os.path.join(self.final, n) for n in names]

    def discard(self) -> None:
        if self.dir and os.path.isdir(self.dir):
            shutil.rmtree(self.dir, ignore_errors=True)
        self.dir = None


# ==================================================================== flags
def _present(name: str) -> bool:
    return bool(FLAGS[name].present)


def check_flags() -> dict:
    """Cross-flag checks; returns the resolved settings.  Raises CliError."""
    if FLAGS.demo and FLAGS.model:
        raise CliError("--demo and --model exclude each other: --demo trains its "
                       "own model", 2)
    if not FLAGS.demo and not FLAGS.model:
        raise CliError("give --model=PATH (a saved tf_keras classifier) or --demo "
                       "(see --helpfull)", 2)
    if FLAGS.model and not os.path.exists(FLAGS.model):
        raise CliError(f"--model: no such file or folder: {FLAGS.model!r}", 2)
    measured = [n for n in ("max_accuracy_drop", "target_measured_mismatch")
                if getattr(FLAGS, n) is not None]
    kinds = measured + (["cost_budget"] if FLAGS.cost_budget is not None else [])
    if _present("target_mismatch"):
        kinds = ["target_mismatch"] + kinds
    if len(kinds) > 1:
        raise CliError("give one target: " + " and ".join(f"--{k}" for k in kinds)
                       + " exclude each other", 2)
    if measured:
        mode = "measured"
        if FLAGS.eval_examples < 2:
            raise CliError("--eval_examples must be at least 2 with a measured "
                           "target (half calibrates, half confirms)", 2)
    elif FLAGS.cost_budget is not None:
        mode = "budget"
    else:
        mode = "analytic"
    if _present("plots") and FLAGS.plots and not report_lib.have_matplotlib():
        raise CliError("--plots needs matplotlib, which is not installed "
                       "(pip install 'tfprec[plots]'), or pass --noplots", 2)
    data = FLAGS.data
    if data and (data.endswith(".npz") or os.sep in data) and not os.path.isfile(data):
        raise CliError(f"--data: no such file: {data!r}", 2)
    if FLAGS.data_dir and not os.path.isdir(FLAGS.data_dir):
        raise CliError(f"--data_dir: no such folder: {FLAGS.data_dir!r}", 2)
    return {"mode": mode, "levels": parse_levels(FLAGS.sweep_levels)}


def _target_text(mode: str) -> str:
    if mode == "analytic":
        return f"analytic bound <= {FLAGS.target_mismatch:g}"
    if mode == "budget":
        unit = "full adders per example" if FLAGS.cost == "compute" else "bits"
        return f"{FLAGS.cost} cost <= {FLAGS.cost_budget:g} {unit} (smallest bound that fits)"
    if FLAGS.max_accuracy_drop is not None:
        return f"measured accuracy drop <= {FLAGS.max_accuracy_drop:g} pp"
    return f"measured mismatch <= {FLAGS.target_measured_mismatch:g}"


# ==================================================================== steps
def load_model(path: str):
    """Loads a tf_keras model with tfprec's custom objects.  CliError on failure."""
    from tfprec._tf import keras
    from tfprec.application import models
    from tfprec.quantization.apply import quantize_scope
    extra = {"ClipWeights": models.ClipWeights, "tfprec>ClipWeights": models.ClipWeights}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with quantize_scope(extra):
                model = keras.models.load_model(path, compile=False)
    except Exception as e:  # anything Keras / h5py / SavedModel raise
        raise CliError(f"--model: cannot load {path!r} as a tf_keras model "
                       f"({type(e).__name__}: {str(e).strip()[:500]})") from e
    if not isinstance(model, keras.Model):
        raise CliError(f"--model: {path!r} holds a {type(model).__name__}, not a "
                       "tf_keras Model")
    return model


def load_data(flatten: bool):
    from tfprec.application import data as data_lib
    from tfprec.errors import InvalidDataError
    try:
        return data_lib.load_dataset(FLAGS.data, FLAGS.data_dir, flatten=flatten)
    except InvalidDataError as e:
        raise CliError(f"--data={FLAGS.data}: {e}") from e


def _take(x, y, n: int, what: str, flag: str, notes: list):
    if n > len(x):
        notes.append(f"--{flag}={n} exceeds the {len(x)} {what} examples; using all {len(x)}")
        n = len(x)
    return x[:n], y[:n]


def _fit(model, x, flag: str):
    from tfprec.application import models
    from tfprec.errors import InvalidDataError
    try:
        return models.fit_inputs(model, x)
    except InvalidDataError as e:
        raise CliError(f"--data={FLAGS.data} does not fit the model ({flag}): {e}") from e


def analytic_plans(gains, target: float, cost: str, max_bits: int):
    """Every rule's plan at the analytic ``target``: ({method: plan}, {method: why})."""
    from tfprec.planning import plan as plan_lib
    from tfprec.errors import UnattainableTargetError
    plans, unmet = {}, {}
    for m in PLAN_ORDER:
        try:
            plans[m] = plan_lib.make_plan(gains, m, target, cost=cost, max_bits=max_bits)
        except UnattainableTargetError as e:
            unmet[m] = str(e)
    return plans, unmet


def _rule_plan(gains, method: str, level: int, max_bits: int):
    from tfprec.planning import plan as plan_lib
    if method == "paper":
        return plan_lib.paper_plan(gains, b_min=level, max_bits=max_bits)
    if method == "uniform":
        return plan_lib.uniform_plan(gains, bits=level, max_bits=max_bits)
    return plan_lib.icml2017_plan(gains, act_bits=level, max_bits=max_bits)


def _with_budget_info(plan, budget, cost, target=None):
    info = dict(plan.info)
    info["cost_budget"] = {"budget": budget, "cost": cost,
                           "bound_target": target}
    return dataclasses.replace(plan, info=info,
                               target=plan.target if target is None else target)


def budget_plan(gains, method: str, budget: float, cost: str, max_bits: int):
    """The plan of ``method`` with the smallest bound whose ``cost`` <= budget.

    Returns (plan or None, minimum cost of the method).  For 'cost_aware' the
    bound target t of :func:`~tfprec.planning.plan.cost_aware_plan` is bisected in
    log space between the bound with every tensor at ``max_bits`` and the
    bound with every tensor at 2 bits; the other rules scan their levels.
    """
    from tfprec.planning import plan as plan_lib
    from tfprec.errors import UnattainableTargetError
    from tfprec.fixedpoint import MIN_BITS
    total = lambda p: p.cost().total(cost)  # noqa: E731
    if method != "cost_aware":
        fits, min_cost = None, math.inf
        for level in range(MIN_BITS, max_bits + 1):
            try:
                p = _rule_plan(gains, method, level, max_bits)
            except UnattainableTargetError:
                continue
            c = total(p)
            min_cost = min(min_cost, c)
            if c <= budget and (fits is None or p.bound() < fits.bound()):
                fits = p
        return (None if fits is None else _with_budget_info(fits, budget, cost)), min_cost
    lo_b = plan_lib.uniform_plan(gains, bits=max_bits, max_bits=max_bits).bound()
    hi_b = plan_lib.uniform_plan(gains, bits=MIN_BITS, max_bits=max_bits).bound()
    cheapest = plan_lib.uniform_plan(gains, bits=MIN_BITS, max_bits=max_bits)
    min_cost = total(cheapest)
    if min_cost > budget:
        return None, min_cost
    if not (lo_b > 0 and math.isfinite(hi_b)):      # all gains zero
        p = plan_lib.cost_aware_plan(gains, 1.0, cost=cost, max_bits=max_bits)
        return _with_budget_info(p, budget, cost, 1.0), min_cost
    lo_t, hi_t = lo_b * (1 + 1e-9), hi_b * (1 + 1e-9)
    best = None

    def consider(t):
        nonlocal best
        p = plan_lib.cost_aware_plan(gains, t, cost=cost, max_bits=max_bits)
        ok = total(p) <= budget
        if ok and (best is None or p.bound() < best[0].bound()):
            best = (p, t)
        return ok

    if consider(lo_t):
        p, t = best
        return _with_budget_info(p, budget, cost, t), min_cost
    if not consider(hi_t):      # the cheapest plan fits; cost_aware should find it
        best = (cheapest, hi_t)
    a, b = math.log(lo_t), math.log(hi_t)     # a: too expensive, b: fits
    for _ in range(48):
        if b - a < 1e-4:
            break
        mid = 0.5 * (a + b)
        if consider(math.exp(mid)):
            b = mid
        else:
            a = mid
    p, t = best
    return _with_budget_info(p, budget, cost, t), min_cost


def _save_model(model, path: str) -> None:
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


def _fmt_cost(v: float, cost: str) -> str:
    unit = "full adders" if cost == "compute" else "bits"
    return f"{v:,.0f} {unit}"


# ==================================================================== main job
@dataclasses.dataclass
class Choice:
    """The plans a run made and the one it chose.

    Attributes:
      plans: method family -> plan, in comparison order.
      chosen: the family of the chosen plan (a key of ``plans``).
      calibration: the :class:`tfprec.calibrate.CalibrationResult` of a
        measured target, else None.
      x_val, y_val: where the chosen plan is validated.
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


def choose_analytic(gains, x_eval, y_eval) -> Choice:
    """Every rule at --target_mismatch; 'best' is the cheapest by --cost."""
    target, cost, alloc = FLAGS.target_mismatch, FLAGS.cost, FLAGS.allocation
    plans, unmet = analytic_plans(gains, target, cost, FLAGS.max_bits)
    if alloc == "best":
        if not plans:
            raise CliError(f"--target_mismatch={target:g}: no allocation meets the "
                           "analytic target: "
                           + "; ".join(f"{k}: {v}" for k, v in unmet.items()))
        chosen = min(plans, key=lambda m: (plans[m].cost().total(cost),
                                           plans[m].bound(), PLAN_ORDER.index(m)))
    else:
        if alloc not in plans:
            raise CliError(f"--target_mismatch={target:g} with --allocation={alloc}: "
                           f"{unmet[alloc]}")
        chosen = alloc
    notes = [f"{m}: no plan meets the target ({why})" for m, why in unmet.items()]
    return Choice(plans, chosen, x_eval, y_eval, notes=notes)


def choose_budget(gains, x_eval, y_eval) -> Choice:
    """Each rule's smallest-bound plan within --cost_budget; 'best' is the
    smallest bound of them."""
    budget, cost, alloc = FLAGS.cost_budget, FLAGS.cost, FLAGS.allocation
    methods = PLAN_ORDER if alloc == "best" else (alloc,)
    plans, min_costs = {}, {}
    for m in methods:
        p, min_costs[m] = budget_plan(gains, m, budget, cost, FLAGS.max_bits)
        if p is not None:
            plans[m] = p
    if not plans:
        raise CliError(
            f"--cost_budget={budget:g}: no "
            + ("plan" if alloc == "best" else f"{alloc} plan")
            + f" fits; the minimum achievable {cost} cost is "
            + _fmt_cost(min(min_costs.values()), cost)
            + (" (every tensor at 2 bits)" if alloc in ("best", "cost_aware", "uniform")
               else f" (the {alloc} rule's lowest level)"))
    chosen = alloc if alloc != "best" else min(
        plans, key=lambda m: (plans[m].bound(), plans[m].cost().total(cost),
                              PLAN_ORDER.index(m)))
    notes = [f"{m}: no plan fits the budget (its minimum is "
             f"{_fmt_cost(min_costs[m], cost)})" for m in methods if m not in plans]
    return Choice(plans, chosen, x_eval, y_eval, notes=notes)


def choose_measured(model, gains, x_eval, y_eval) -> Choice:
    """tfprec.calibrate on the first half of the held-out examples; the chosen
    plan is validated on the second half."""
    from tfprec.planning import calibrate as cal_lib
    from tfprec.errors import TfprecError
    alloc = FLAGS.allocation
    half = len(x_eval) // 2
    methods = PLAN_ORDER if alloc == "best" else (alloc,)
    _log(f"calibrating {', '.join(methods)} on {half} held-out examples")
    flag = ("max_accuracy_drop" if FLAGS.max_accuracy_drop is not None
            else "target_measured_mismatch")
    try:
        cal = cal_lib.calibrate(
            model, gains, x_eval[:half], y_eval[:half],
            target_mismatch=FLAGS.target_measured_mismatch,
            max_accuracy_drop=FLAGS.max_accuracy_drop, methods=methods,
            cost=FLAGS.cost, batch_size=FLAGS.batch_size, max_bits=FLAGS.max_bits)
    except TfprecError as e:
        raise CliError(f"--{flag}={getattr(FLAGS, flag):g}: {e}") from e
    plans = {c.method: c.plan for c in cal.candidates}
    note = (f"Measured target: each rule's level was calibrated on the first {half} "
            f"held-out examples; the numbers above are on the other "
            f"{len(x_eval) - half}, which the calibration did not see.")
    return Choice(plans, cal.best.method, x_eval[half:], y_eval[half:], cal, note,
                  [f"{m}: {why}" for m, why in cal.unmet.items()])


def _demo_model(ds, staging, timings):
    import numpy as np
    from tfprec._tf import keras
    from tfprec.application import models as models_lib
    t0 = time.time()
    hidden = tuple(int(h) for h in FLAGS.demo_hidden)
    n_in = int(np.prod(ds.input_shape))
    keras.utils.set_random_seed(FLAGS.seed)
    model = models_lib.mnist_mlp(hidden=hidden, input_shape=(n_in,),
                                 num_classes=ds.num_classes)
    _log(f"training the demo MLP {'-'.join(map(str, (n_in,) + hidden + (ds.num_classes,)))} "
         f"for {FLAGS.demo_epochs} epochs on {ds.num_train} {ds.name} images")
    models_lib.train(model, ds, epochs=FLAGS.demo_epochs,
                     batch_size=FLAGS.demo_batch_size, seed=FLAGS.seed)
    timings["train (demo)"] = time.time() - t0
    _save_model(model, staging.path(FLOAT_MODEL_FILE))
    info = (f"trained here for {FLAGS.demo_epochs} epochs, batch "
            f"{FLAGS.demo_batch_size}, Adam 1e-3, seed {FLAGS.seed}, on "
            f"{ds.num_train} {ds.name} training images "
            f"({timings['train (demo)']:.1f} s)")
    return model, info


def _compare(model, choice: Choice, validation) -> list:
    """PlanSummary rows of every plan (validated where not measured already)."""
    from tfprec.quantization import validate as validate_lib
    if choice.calibration is not None:
        return [report_lib.PlanSummary.from_calibrated(c, chosen=(c.method == choice.chosen))
                for c in choice.calibration.candidates]
    rows = []
    for m, p in choice.plans.items():
        v = validation if m == choice.chosen else validate_lib.validate(
            model, p, choice.x_val, choice.y_val, batch_size=FLAGS.batch_size)
        rows.append(report_lib.PlanSummary.from_plan(p, v, chosen=(m == choice.chosen)))
    return rows


_COMPARISON_NOTES = {
    "analytic": "Every allocation rule at the same analytic target, validated on "
                "the same held-out examples; 'x chosen' is the cost relative to "
                "the chosen plan.",
    "budget": "Every allocation rule's smallest-bound plan within the cost budget, "
              "validated on the same held-out examples; 'x chosen' is the cost "
              "relative to the chosen plan.",
    "measured": "Each rule at its cheapest level meeting the measured target on the "
                "calibration half of the held-out examples (measured there); 'x "
                "chosen' is the cost relative to the chosen plan.",
}


def _run(argv, settings: dict) -> int:
    t_start = time.time()
    mode, levels = settings["mode"], settings["levels"]
    timings = {}
    staging = Staging(FLAGS.output_dir)
    try:
        from tfprec._tf import tf
        from tfprec.quantization import apply as apply_lib
        from tfprec.quantization import validate as validate_lib
        from tfprec.statistics.gains import noise_gains
        from tfprec.planning.plan import uniform_plan
        tf.get_logger().setLevel("ERROR")     # retracing chatter of repeated passes

        # ---- data and model
        t0 = time.time()
        ds = load_data(flatten=FLAGS.demo)
        timings["load data"] = time.time() - t0
        _log(f"data: {ds!r}")
        train_info = None
        if FLAGS.demo:
            model, train_info = _demo_model(ds, staging, timings)
        else:
            t0 = time.time()
            model = load_model(FLAGS.model)
            timings["load model"] = time.time() - t0
        n_out = int(model.outputs[0].shape[-1])
        if ds.num_classes > n_out:
            raise CliError(f"--data={FLAGS.data} has {ds.num_classes} classes but the "
                           f"model outputs {n_out} scores")
        notes = []
        x_cal, _ = _take(ds.x_train, ds.y_train, FLAGS.calibration_examples,
                         "training", "calibration_examples", notes)
        x_eval, y_eval = _take(ds.x_test, ds.y_test, FLAGS.eval_examples, "test",
                               "eval_examples", notes)
        x_cal = _fit(model, x_cal, "--calibration_examples")
        x_eval = _fit(model, x_eval, "--eval_examples")
        for n in notes:
            _log("note: " + n)

        # ---- gains
        t0 = time.time()
        _log(f"noise gains over {len(x_cal)} calibration examples")
        gains = noise_gains(model, x_cal, batch_size=min(FLAGS.batch_size, 256),
                            per_example=True)
        timings["noise gains"] = time.time() - t0

        # ---- plans
        t0 = time.time()
        if mode == "analytic":
            choice = choose_analytic(gains, x_eval, y_eval)
        elif mode == "budget":
            choice = choose_budget(gains, x_eval, y_eval)
        else:
            choice = choose_measured(model, gains, x_eval, y_eval)
        notes += choice.notes
        plan = choice.plan
        timings["plans"] = time.time() - t0
        _log(f"chosen plan: {plan.method} (bound {plan.bound():.4g}, {FLAGS.cost} cost "
             f"{_fmt_cost(plan.cost().total(FLAGS.cost), FLAGS.cost)})")

        # ---- validation of the chosen plan and the comparison
        t0 = time.time()
        _log(f"validating on {len(choice.x_val)} held-out examples")
        validation = validate_lib.validate(model, plan, choice.x_val, choice.y_val,
                                           batch_size=FLAGS.batch_size)
        comparisons = _compare(model, choice, validation)
        timings["validation"] = time.time() - t0

        # ---- sweep
        sweep_rows = []
        if levels:
            t0 = time.time()
            _log(f"sweep of levels {levels[0]}..{levels[-1]} for "
                 f"{', '.join(validate_lib.METHODS)}")
            sweep_rows = validate_lib.sweep(model, gains, x_eval, y_eval,
                                            b_mins=levels, batch_size=FLAGS.batch_size)
            timings["sweep"] = time.time() - t0

        # ---- outputs: plan, fake-quant model, TFLite
        t0 = time.time()
        plan.save(staging.path(PLAN_FILE))
        _save_model(apply_lib.quantize_model(model, plan), staging.path(QUANTIZED_FILE))
        timings["fake-quant model"] = time.time() - t0
        export_report = None
        if FLAGS.export_tflite:
            t0 = time.time()
            export_report = _export(model, plan, x_eval, staging)
            timings["TFLite export"] = time.time() - t0

        # ---- report and summary.json
        t0 = time.time()
        full16 = uniform_plan(gains, bits=16).cost()
        refs = {"16-bit fixed point everywhere": (full16.total_compute,
                                                  full16.total_memory)}
        if choice.chosen != "uniform" and "uniform" in choice.plans:
            uc = choice.plans["uniform"].cost()
            refs["Uniform precision at the same target"
                 if mode != "budget" else "Uniform precision within the budget"] = (
                uc.total_compute, uc.total_memory)
        n_params = int(model.count_params())
        model_info = {
            "model": (f"`{model.name}` from {FLAGS.model}" if FLAGS.model else
                      f"`{model.name}` (demo)"),
            "parameters": f"{n_params:,}",
            "weight layers": f"{len(plan.layers)} ({', '.join(plan.names)})",
            "input shape": str(tuple(model.inputs[0].shape[1:])),
            "classes": str(n_out),
        }
        if train_info:
            model_info["training"] = train_info
        data_info = {
            "data": f"{ds.name} ({ds.source})",
            "calibration examples (gains)": f"{len(x_cal)} from the training split",
            "held-out examples": f"{len(x_eval)} from the test split",
        }
        cmd = command_line()
        rsettings = {
            "command": cmd, "target": _target_text(mode),
            "allocation": FLAGS.allocation, "cost": FLAGS.cost,
            "reference_costs": {k[0].upper() + k[1:]: v for k, v in refs.items()},
            "target_probability": (FLAGS.target_mismatch if mode == "analytic" else
                                   FLAGS.target_measured_mismatch),
            "validation_note": choice.validation_note,
            "comparison_note": _COMPARISON_NOTES[mode],
        }
        written = ([PLAN_FILE, QUANTIZED_FILE]
                   + ([TFLITE_FILE] if export_report else [])
                   + ([FLOAT_MODEL_FILE] if FLAGS.demo else []) + [SUMMARY_FILE])
        report_lib.write_report(
            staging.dir, plan, gains=gains, validation=validation,
            comparisons=comparisons, sweep_rows=sweep_rows,
            export_report=export_report, model_info=model_info, data_info=data_info,
            settings=rsettings, timings=dict(timings), files=written,
            calibration=choice.calibration, notes=notes, plots=FLAGS.plots)
        timings["report"] = time.time() - t0
        summary = {
            "command": cmd, "mode": mode, "target": _target_text(mode),
            "allocation": FLAGS.allocation, "cost": FLAGS.cost,
            "chosen": plan.method, "bound": plan.bound(),
            "compute_cost": plan.cost().total_compute,
            "memory_cost": plan.cost().total_memory,
            "validation": validation.to_dict(),
            "mismatch_ucl": report_lib.mismatch_ucl(validation.num_mismatch,
                                                    validation.num_examples),
            "comparisons": [c.to_dict() for c in comparisons],
            "calibration": (None if choice.calibration is None
                            else choice.calibration.to_dict()),
            "sweep": [r.to_dict() for r in sweep_rows],
            "export": None if export_report is None else {
                "file_size_bytes": export_report.file_size_bytes,
                "grid_check_passed": export_report.grid_check_passed,
                "sim_agreement": export_report.sim_agreement,
                "agreement_by_kernels": export_report.agreement_by_kernels},
            "gains": gains.to_dict(), "notes": notes, "timings_s": timings,
            "model": model_info, "data": data_info,
        }
        with open(staging.path(SUMMARY_FILE), "w") as f:
            json.dump(summary, f, indent=2, default=_json_default)

        previous = []
        if os.path.isdir(staging.final):
            produced = set(os.listdir(staging.dir))
            previous = [n for n in OUTPUT_FILES
                        if n not in produced and os.path.exists(staging.final_path(n))]
        files = staging.commit()
    except BaseException:
        staging.discard()
        raise

    print(_stdout_summary(
        plan, gains, validation, comparisons, export_report, full16,
        header=[f"tfprec: model {model_info['model']}, {n_params:,} parameters; data "
                f"{ds.name}; {len(x_cal)} calibration / {len(x_eval)} held-out examples",
                f"target: {_target_text(mode)}; allocation {FLAGS.allocation} -> "
                f"{plan.method}"],
        footer=[f"note: {n}" for n in notes] + [
            "", f"wrote {len(files)} files to {staging.final}: "
            + ", ".join(sorted(os.path.basename(f) for f in files))]
        + ([f"(also there from an earlier run: {', '.join(previous)})"]
           if previous else [])
        + [f"done in {time.time() - t_start:.1f} s"]), flush=True)
    return 0


def _export(model, plan, x_eval, staging):
    from tfprec import export as export_lib
    from tfprec.errors import ExportError
    _log("exporting TFLite")
    try:
        rep = export_lib.export_tflite(model, plan, staging.path(TFLITE_FILE),
                                       representative_data=x_eval[:500],
                                       kernels=FLAGS.tflite_kernels)
    except ExportError as e:
        raise CliError(f"TFLite export failed: {e} (pass --noexport_tflite to "
                       "skip it)") from e
    rep.path = staging.final_path(TFLITE_FILE)
    return rep


def _stdout_summary(plan, gains, v, comparisons, export_report, full16,
                    header=(), footer=()) -> str:
    """Per-layer table, summary and plan comparison for the terminal."""
    out = list(header) + ["", report_lib.layer_table_text(plan, gains), "", "summary:"]
    ucl = report_lib.mismatch_ucl(v.num_mismatch, v.num_examples)
    out.append(f"  analytic bound        {plan.bound():.4g}"
               + (f"  ({report_lib.target_note(plan)})"
                  if report_lib.target_note(plan) else ""))
    if getattr(gains, "example_w", None) is not None:
        from tfprec.planning.plan import per_example_bound
        out.append(f"  per-example bound     {per_example_bound(plan, gains):.4g}"
                   "  (mean over examples of min(1, per-example bound): also valid)")
    out.append(f"  measured mismatch     {v.mismatch_rate:.4f}  ({v.num_mismatch}/"
               f"{v.num_examples}; 95% UCL {ucl:.4f})"
               + ("" if v.mismatch_rate <= v.bound else "  ** above the bound **"))
    if v.float_accuracy is not None:
        out.append(f"  accuracy              float {100 * v.float_accuracy:.2f}%, "
                   f"fixed point {100 * v.quant_accuracy:.2f}%")
    c = plan.cost()
    out.append(f"  compute cost          {c.total_compute:,.0f} full adders/example "
               f"(16-bit everywhere: {full16.total_compute / c.total_compute:.2f}x)")
    out.append(f"  memory cost           {c.total_memory:,.0f} bits "
               f"(16-bit everywhere: {full16.total_memory / c.total_memory:.2f}x)")
    if export_report is not None:
        out.append(f"  TFLite                {export_report.file_size_bytes:,} bytes, grid "
                   f"checks {'passed' if export_report.grid_check_passed else 'FAILED'}, "
                   f"{100 * export_report.sim_agreement:.2f}% decisions = fixed-point sim")
    out += ["", "plans compared (* chosen):"]
    w = max(len(s.method) for s in comparisons) + 2
    out.append(f"  {'plan'.ljust(w)}{'bound':>10}{'mismatch':>10}{'acc %':>8}"
               f"{'compute (FA)':>16}{'memory (bits)':>15}")
    for s in comparisons:
        mis = "-" if s.mismatch_rate is None else f"{s.mismatch_rate:.4f}"
        acc = "-" if s.quant_accuracy is None else f"{100 * s.quant_accuracy:.2f}"
        out.append(f"{'*' if s.chosen else ' '} {s.method.ljust(w)}{s.bound:>10.3g}"
                   f"{mis:>10}{acc:>8}{s.compute_cost:>16,.0f}{s.memory_cost:>15,.0f}")
    return "\n".join(out + list(footer))


def command_line() -> str:
    """The tfprec command with the flags given on this run (for the report)."""
    parts = [f.serialize() for f in FLAGS.get_flags_for_module(__name__) if f.present]
    return "tfprec " + " ".join(shlex.quote(p) for p in parts)


def _json_default(o):
    try:
        import numpy as np
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    if dataclasses.is_dataclass(o):
        return dataclasses.asdict(o)
    return str(o)


def main(argv) -> int:
    """absl main: checks the flags, runs the pipeline; returns the exit status."""
    if len(argv) > 1:
        print(f"tfprec: error: unexpected arguments {argv[1:]}; flags take the "
              "form --name=value (see --helpfull)", file=sys.stderr)
        return 2
    try:
        settings = check_flags()
        return _run(argv, settings)
    except CliError as e:
        print(f"tfprec: error: {e}", file=sys.stderr, flush=True)
        return e.code
    except Exception as e:
        from tfprec.errors import TfprecError
        if isinstance(e, (TfprecError, OSError)):
            print(f"tfprec: error: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
            return 1
        raise


def _register_help_for_main_module() -> None:
    """Makes --help (short help) list tfprec's flags when run as a console
    script or with ``python -m tfprec``, and shows this module's usage text."""
    main_mod = sys.modules.get("__main__")
    if main_mod is not None and (not getattr(main_mod, "__doc__", None)
                                 or getattr(main_mod, "__package__", None) == "tfprec"):
        try:
            main_mod.__doc__ = __doc__
        except (AttributeError, TypeError):  # pragma: no cover
            pass
    name = sys.argv[0] if sys.argv else "tfprec"
    for flag in FLAGS.get_flags_for_module(__name__):
        FLAGS.register_key_flag_for_module(name, flag)


_HELP_ARGS = ("-h", "-?", "--help", "--helpshort", "--helpfull", "--helpxml")


def run(argv=None) -> None:
    """Console-script entry point (``tfprec``): ``app.run(main)``.

    Help (--help, --helpshort, --helpfull, --helpxml) exits with status 0
    (absl's own help flags exit with 1).
    """
    _register_help_for_main_module()
    args = list(sys.argv if argv is None else argv)
    if any(a in _HELP_ARGS for a in args[1:]):
        app.define_help_flags()
        try:
            FLAGS(args)                 # a help flag prints and calls sys.exit(1)
        except SystemExit as e:
            raise SystemExit(0 if e.code == 1 else e.code) from None
        except flags.Error:
            pass                        # app.run reports it below
        FLAGS.unparse_flags()
    app.run(main, argv=args)


if __name__ == "__main__":
    run()
