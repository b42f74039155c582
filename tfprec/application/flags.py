"""The command-line flags of ``tfprec`` and the :class:`Settings` they give.

The flags are defined here (absl); :func:`read_settings` is the only reader
of ``FLAGS``: it checks the flags against each other and the files they name
(model, data, output folder) and returns a frozen :class:`Settings` that the
rest of the command line works from.  Units: probabilities are fractions,
accuracy drops percentage points, costs full adders per example (compute) or
bits (memory), bit-widths bits.

This module does not import TensorFlow (nor does anything it imports), so a
bad command line fails in a fraction of a second.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shlex
import sys
import zipfile
from typing import Optional

from absl import flags

from tfprec.application.figures import have_matplotlib
from tfprec.errors import CliError, InvalidDataError, PlanError, TfprecError  # noqa: F401
from tfprec.fixedpoint import MAX_BITS, MIN_BITS, check_bits

ALLOCATIONS = ("best", "cost_aware", "paper", "uniform", "icml2017",
               "cost_aware_predicted")
#: The allocation planned under the predicted mismatch (issue 13).
PREDICTED_ALLOCATION = "cost_aware_predicted"
DEFAULT_OUTPUT_DIR = "tfprec_out"

FLAGS = flags.FLAGS

# ------------------------------------------------------------------ inputs
flags.DEFINE_string(
    "model", None,
    "Saved tf_keras (Keras 2) classifier to analyze: an .h5 file, a "
    "SavedModel folder or a tf_keras .keras file (a Keras 3 .keras file is "
    "refused: re-save the model with tf_keras).  Its output must be the class "
    "scores (logits or softmax).  Loaded under "
    "tfprec.quantization.configs.quantize_scope() with tfprec's custom objects "
    "(models.ClipWeights) and those of --custom_objects.  Exclusive with "
    "--demo.  Alias: --model_path.")
flags.DEFINE_alias("model_path", "model")
flags.DEFINE_string(
    "custom_objects", None,
    "Python module (dotted path, importable from the current folder or "
    "PYTHONPATH) whose classes are the custom layers / constraints / "
    "activations --model needs, e.g. my_project.layers; every class it "
    "defines is passed to Keras under its class name.")
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
    "y_test.  Integer images are divided by 255 (not for a model whose input "
    "is integer, e.g. uint8 images it rescales itself).")
flags.DEFINE_string(
    "data_dir", None,
    "Folder holding offline copies mnist.npz / cifar10_jpeg75.npz (or "
    "cifar10.npz), e.g. ../shared/data.  Default: $TFPREC_DATA_DIR if set.")
flags.DEFINE_integer(
    "calibration_examples", 1000, lower_bound=1, help=
    "Examples from the TRAINING split over which the noise gains are averaged "
    "(the first N; capped at the split size).")
flags.DEFINE_integer(
    "eval_examples", 2000, lower_bound=1, help=
    "Held-out examples from the TEST split for validation, the plan "
    "comparison, the sweep and measured targets (the first N; capped at the "
    "split size).")

# ------------------------------------------------------------------ target
flags.DEFINE_float(
    "target_bound", 0.01,
    "Analytic target: the plan's BOUND on the probability that the "
    "fixed-point decision differs from the float decision, "
    "sum_T 4^(1-B_T) G_T <= this (a fraction in (0, 1)).  Used only when "
    "given; without a target flag tfprec uses the measured default "
    "--target_mismatch=%g (the bound is shown beside it)." % 0.01)
flags.DEFINE_float(
    "target_mismatch", None,
    "Measured target, as tfprec.calibrate's target_mismatch: the fraction of "
    "held-out examples whose fixed-point decision differs from the float "
    "decision <= this (in [0, 1); no labels needed).  Calibrated on the "
    "selection half of the held-out examples and confirmed on the report "
    "half, like --max_accuracy_drop.  The default target when no target "
    "flag is given: 0.01.  (Before tfprec 0.2 this flag was the analytic "
    "bound target, now --target_bound.)")
flags.DEFINE_float(
    "max_accuracy_drop", None,
    "Measured target: float accuracy - fixed-point accuracy <= this many "
    "percentage points (in [0, 100)).  The level of each allocation is "
    "calibrated with tfprec.calibrate on the first half of the held-out "
    "examples (the selection half) and the chosen plan is confirmed on the "
    "second half (the report half).")
flags.DEFINE_float(
    "target_measured_mismatch", None,
    "Deprecated name of --target_mismatch (the measured mismatch target).")
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
    "cheapest plan of these four rules that meets the target (with "
    "--cost_budget: the smallest bound that fits).  'cost_aware_predicted' "
    "(opt-in: one more noise-gains pass, with per-class margin shifts, over "
    "the selection half of the held-out examples): the cheapest per-tensor "
    "bits under the PREDICTED mismatch (an estimate, not a bound), measured "
    "first and moved along a quarter-octave grid of predicted targets by "
    "tfprec.calibrate (a few measured evaluations) on "
    "the selection half (measured targets; for --max_accuracy_drop and with "
    "--cost_budget it plans under the predicted accuracy drop, "
    "--predicted_drop), or the plan with the lowest predicted "
    "accuracy drop that fits --cost_budget; validated on the report half.  "
    "Not with --target_bound (the prediction is not a bound).")
flags.DEFINE_enum(
    "predicted_drop", "softmax", ["softmax", "labels"],
    "How --allocation=cost_aware_predicted predicts an accuracy drop (for "
    "--max_accuracy_drop and --cost_budget): 'softmax' (label-free: each "
    "possible changed decision weighted by what it costs in right answers "
    "under the float model's own softmax probabilities, p_y - p_i; "
    "tfprec.planning.predict.SOFTMAX) or 'labels' (the right answers of the "
    "selection half expected to be lost, from its labels).")
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
    "summary.json, the PNG figures and the manifest .tfprec-run.json; "
    "created if missing.  A folder an earlier tfprec run wrote is replaced "
    "whole (its old files removed); any other non-empty folder is refused "
    "unless --overwrite is given.")
flags.DEFINE_bool(
    "overwrite", False,
    "Write into a non-empty --output_dir that tfprec did not write (or that "
    "holds other files besides a tfprec run): files with the names this run "
    "writes are replaced, a previous tfprec run's files are removed, the "
    "other files are kept.")
flags.DEFINE_bool(
    "plots", have_matplotlib(),
    "Write PNG figures (needs matplotlib: pip install 'tfprec[plots]').  On "
    "by default when matplotlib is importable.")
flags.DEFINE_bool(
    "export_tflite", True,
    "Write model.tflite realizing the chosen plan exactly "
    "(tfprec.export.export_tflite) and add its grid-check report.")
flags.DEFINE_bool(
    "per_channel_weights", False,
    "Quantize the weights of Dense, Conv2D and DepthwiseConv2D layers on one "
    "power-of-two range per output channel (the layer's bit-width shared), "
    "as TFLite stores int8 / int4 weights: lower noise gains for BN-folded "
    "convolutions, so fewer bits and smaller files; exported with the "
    "ai_edge_quantizer backend.")
flags.DEFINE_enum(
    "weight_rounding", "nearest", ["nearest", "gptq"],
    "How the chosen plan's weights take their grid levels in the fake-quant "
    "model and the TFLite file: 'nearest' (round to nearest, the paper's "
    "quantizer; the analytic bound is about it) or 'gptq' (levels of the same "
    "grid chosen by GPTQ on --rounding_examples training examples to keep each Dense / "
    "Conv2D layer's outputs close to float; much more accurate at <= 5-bit "
    "weights). The plan is selected with 'nearest' and validated with the "
    "chosen rounding; plan.json stays the plan for the input model.")
flags.DEFINE_integer(
    "rounding_examples", 0, lower_bound=0, help=
    "Examples from the TRAINING split (the first N; capped at the split "
    "size) whose layer inputs give GPTQ its second moments with "
    "--weight_rounding=gptq. 0: as many as give every Dense / Conv2D layer 8 "
    "input rows per kernel row (a Dense layer with K inputs: 8 K examples; "
    "tfprec.quantization.rounding.examples_needed); with fewer the levels fit "
    "these examples rather than the data (a warning names the layer).")
flags.DEFINE_enum(
    "tflite_kernels", "xnnpack", ["xnnpack", "reference", "optimized"],
    "TFLite kernel family whose int8 rounding the export matches exactly.")
flags.DEFINE_enum(
    "tflite_mode", "exact", ["exact", "fast", "integer"],
    "What model.tflite trades: 'exact' (the plan's arithmetic, decisions "
    "equal to the fake-quant model's on the tuned kernel family; backend "
    "chosen automatically), 'fast' (ai_edge_quantizer backend without the "
    "float clips between integer layers: ties tuned through the next "
    "layer's weight scale instead) or 'integer' (ai_edge_quantizer backend, every operator on "
    "integer kernels as TF's int8 post-training quantization, with the "
    "plan's weight codes and input grids; tensors the plan does not round, "
    "such as Add inputs, get calibrated int8 scales).  The report gives the "
    "measured agreement of each.")
flags.DEFINE_string(
    "sweep_levels", "2-12",
    "Precision levels (bits) of the validation sweep of the paper rule "
    "(B_min) and the uniform (B) and ICML 2017 (B_A) baselines: a range "
    "'LO-HI', a list '2,4,8', or 'none' to skip the sweep.")

# ------------------------------------------------------------------ knobs
flags.DEFINE_integer("demo_epochs", 3, "Training epochs of the --demo model.",
                     lower_bound=1)
flags.DEFINE_list("demo_hidden", ["512", "512", "512"],
                  "Hidden layer widths of the --demo MLP, comma separated.")
flags.DEFINE_integer("demo_batch_size", 128, "Training batch size of --demo.",
                     lower_bound=1)
flags.DEFINE_integer("batch_size", 256,
                     "Batch size of the gains, validation and sweep passes.",
                     lower_bound=1)
flags.DEFINE_integer("seed", 0, "Random seed (demo training).")


def log(msg: str) -> None:
    """A progress line on stderr."""
    print(f"[tfprec] {msg}", file=sys.stderr, flush=True)


# ==================================================================== errors
# ==================================================================== validators
def _checked(name: str, check) -> None:
    """Registers ``check(f"--{name}", value)`` (a tfprec argument check that
    raises a TfprecError naming the flag) as the validator of ``--name``."""
    def validate(value):
        try:
            check(f"--{name}", value)
        except TfprecError as e:
            raise flags.ValidationError(str(e)) from None
        return True
    flags.register_validator(name, validate)


def _bits(name, value):
    return check_bits(name, value, MIN_BITS, MAX_BITS)


# positive ints: lower_bound=1 in their DEFINE_integer (absl's own check)
_checked("max_bits", _bits)

flags.register_validator(
    "target_bound", lambda v: v is not None and 0.0 < v < 1.0,
    message="--target_bound must be a probability in (0, 1), e.g. 0.01")
flags.register_validator(
    "target_mismatch", lambda v: v is None or 0.0 <= v < 1.0,
    message="--target_mismatch must be a fraction in [0, 1)")
flags.register_validator(
    "max_accuracy_drop", lambda v: v is None or 0.0 <= v < 100.0,
    message="--max_accuracy_drop must be in [0, 100) percentage points")
flags.register_validator(
    "target_measured_mismatch", lambda v: v is None or 0.0 <= v < 1.0,
    message="--target_measured_mismatch (now --target_mismatch) must be a "
            "fraction in [0, 1)")
flags.register_validator(
    "cost_budget", lambda v: v is None or (v > 0 and math.isfinite(v)),
    message="--cost_budget must be a positive number (full adders or bits)")
flags.register_validator(
    "output_dir", lambda v: bool(v and v.strip()),
    message="--output_dir must not be empty")


def _hidden(name, value):
    try:
        widths = [int(h) for h in value]
    except (TypeError, ValueError):
        widths = []
    if not widths or min(widths) < 1:
        raise InvalidDataError(f"{name} must be positive integers, e.g. 512,512,512; "
                               f"got {','.join(map(str, value or []))!r}")


_checked("demo_hidden", _hidden)


def parse_levels(text: str) -> list:
    """'2-12' -> [2..12]; '2,4,8' -> [2, 4, 8]; 'none' or '' -> [] (bits).

    Raises ValueError for anything else or levels outside 2..16 bits.
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
    try:
        for level in lv:
            _bits("level", level)
    except PlanError as e:
        raise ValueError(f"{text!r}: {e}") from None
    return lv


def _levels(name, value):
    try:
        parse_levels(value)
    except ValueError as e:
        raise InvalidDataError(
            f"{name} must be 'LO-HI', a list like '2,4,8' (bits in 2..16) or "
            f"'none' ({e})") from None


_checked("sweep_levels", _levels)


# ==================================================================== settings
@dataclasses.dataclass(frozen=True)
class Settings:
    """What one run of ``tfprec`` does: the flags, checked and resolved.

    ``mode`` is 'analytic' (--target_bound, a probability), 'budget'
    (--cost_budget, full adders per example or bits) or 'measured'
    (--max_accuracy_drop in percentage points or --target_mismatch, a
    probability); ``levels`` are the sweep levels in bits; ``command`` the
    command line that was given; ``notices`` remarks on the flags
    (deprecations) for the log and the report.
    """

    mode: str
    model: Optional[str] = None
    demo: bool = False
    data: str = "mnist_subset"
    data_dir: Optional[str] = None
    calibration_examples: int = 1000
    eval_examples: int = 2000
    target_bound: float = 0.01
    target_mismatch: Optional[float] = None
    max_accuracy_drop: Optional[float] = None
    cost_budget: Optional[float] = None
    allocation: str = "best"
    predicted_drop: str = "softmax"
    cost: str = "compute"
    max_bits: int = 16
    output_dir: str = DEFAULT_OUTPUT_DIR
    overwrite: bool = False
    custom_objects: Optional[str] = None
    plots: bool = False
    export_tflite: bool = True
    tflite_kernels: str = "xnnpack"
    tflite_mode: str = "exact"
    per_channel_weights: bool = False
    weight_rounding: str = "nearest"
    rounding_examples: int = 0
    levels: tuple = ()
    demo_epochs: int = 3
    demo_hidden: tuple = (512, 512, 512)
    demo_batch_size: int = 128
    batch_size: int = 256
    seed: int = 0
    command: str = "tfprec"
    notices: tuple = ()

    @property
    def measured_flag(self) -> str:
        """The flag of a measured target ('max_accuracy_drop' or
        'target_mismatch')."""
        return ("max_accuracy_drop" if self.max_accuracy_drop is not None
                else "target_mismatch")

    def target_text(self) -> str:
        """The target in words, with its unit."""
        if self.mode == "analytic":
            return f"analytic bound <= {self.target_bound:g}"
        if self.mode == "budget":
            unit = "full adders per example" if self.cost == "compute" else "bits"
            how = ("lowest predicted accuracy drop"
                   if self.allocation == PREDICTED_ALLOCATION else "smallest bound")
            return f"{self.cost} cost <= {self.cost_budget:g} {unit} ({how} that fits)"
        if self.max_accuracy_drop is not None:
            return f"measured accuracy drop <= {self.max_accuracy_drop:g} pp"
        return f"measured mismatch <= {self.target_mismatch:g}"

    @property
    def default_target(self) -> bool:
        """Whether the target is the default (no target flag was given)."""
        return (self.mode == "measured" and self.max_accuracy_drop is None
                and "--target_mismatch" not in self.command
                and "--target_measured_mismatch" not in self.command)


_ALIASES = ("model_path",)


def command_line(fv=FLAGS) -> str:
    """The tfprec command with the flags given on this run (for the report)."""
    parts = [f.serialize() for f in fv.get_flags_for_module(__name__)
             if f.present and f.name not in _ALIASES]
    return "tfprec " + " ".join(shlex.quote(p) for p in parts)


def _measured_mismatch(fv) -> tuple:
    """(--target_mismatch, with its deprecated name folded in; notices)."""
    old = fv.target_measured_mismatch
    if old is None:
        return fv.target_mismatch, ()
    if fv.target_mismatch is not None:
        raise CliError("--target_measured_mismatch is the old name of "
                       "--target_mismatch: give only --target_mismatch", 2)
    return old, ("--target_measured_mismatch is deprecated: use --target_mismatch "
                 "(the measured mismatch target); the analytic bound target is "
                 "--target_bound",)


#: The measured mismatch target used when no target flag is given (a
#: fraction of held-out decisions): the analytic bound is conservative by
#: one to three orders of magnitude, so its plans rarely deploy as integer
#: models; a measured target does.
DEFAULT_TARGET_MISMATCH = 0.01


def _mode(fv, target_given: bool, measured_mismatch) -> str:
    measured = (["max_accuracy_drop"] if fv.max_accuracy_drop is not None else []) + (
        ["target_mismatch"] if measured_mismatch is not None else [])
    kinds = measured + (["cost_budget"] if fv.cost_budget is not None else [])
    if target_given:
        kinds = ["target_bound"] + kinds
    if len(kinds) > 1:
        raise CliError("give one target: " + " and ".join(f"--{k}" for k in kinds)
                       + " exclude each other", 2)
    if measured or not kinds:
        if fv.eval_examples < 2:
            raise CliError("--eval_examples must be at least 2 with a measured "
                           "target (half calibrates, half confirms; the default "
                           "target is measured: give --target_bound for the "
                           "analytic one)", 2)
        return "measured"
    return "budget" if fv.cost_budget is not None else "analytic"


def keras3_version(path: str) -> Optional[str]:
    """The ``keras_version`` of a Keras 3 ``.keras`` zip file, else None (a
    tf_keras .keras file, an .h5 file, a folder, an unreadable file)."""
    if not os.path.isfile(path) or not zipfile.is_zipfile(path):
        return None
    try:
        with zipfile.ZipFile(path) as z:
            for member in ("metadata.json", "config.json"):
                if member in z.namelist():
                    meta = json.loads(z.read(member).decode("utf-8"))
                    version = str(meta.get("keras_version", "")) if isinstance(
                        meta, dict) else ""
                    if version:
                        return version if version.startswith("3") else None
    except (OSError, ValueError, zipfile.BadZipFile, KeyError):
        return None
    return None


def check_model_path(path: str, flag: str = "--model") -> None:
    """CliError (exit status 2) unless ``path`` is a readable file or folder
    that may hold a tf_keras model (a Keras 3 .keras file is refused)."""
    if not os.path.exists(path):
        raise CliError(f"{flag}: no such file or folder: {path!r}", 2)
    if not os.access(path, os.R_OK) or (os.path.isdir(path)
                                        and not os.access(path, os.X_OK)):
        raise CliError(f"{flag}: {path!r} is not readable (permission denied)", 2)
    version = keras3_version(path)
    if version:
        raise CliError(
            f"{flag}: {path!r} is a Keras 3 file (keras_version {version}); "
            "tfprec needs a tf_keras (Keras 2) model, saved as .h5 or as a "
            "SavedModel folder: build and save it with `import tf_keras` (or "
            "TF_USE_LEGACY_KERAS=1)", 2)


def _check_paths(fv) -> None:
    if fv.demo and fv.model:
        raise CliError("--demo and --model exclude each other: --demo trains its "
                       "own model", 2)
    if not fv.demo and not fv.model:
        raise CliError("give --model=PATH (a saved tf_keras classifier) or --demo "
                       "(see --help)", 2)
    if fv.model:
        check_model_path(fv.model)


def _check_inputs(fv, plots_given: bool) -> None:
    if plots_given and fv.plots and not have_matplotlib():
        raise CliError("--plots needs matplotlib, which is not installed "
                       "(pip install 'tfprec[plots]'), or pass --noplots", 2)
    data = fv.data
    if data and (data.endswith(".npz") or os.sep in data) and not os.path.isfile(data):
        raise CliError(f"--data: no such file: {data!r}", 2)
    if data and os.path.isfile(data) and not os.access(data, os.R_OK):
        raise CliError(f"--data: {data!r} is not readable (permission denied)", 2)
    if fv.data_dir and not os.path.isdir(fv.data_dir):
        raise CliError(f"--data_dir: no such folder: {fv.data_dir!r}", 2)
    env_dir = os.environ.get("TFPREC_DATA_DIR")
    if (not fv.data_dir and env_dir and data in ("mnist", "cifar10")
            and not os.path.isdir(env_dir)):
        raise CliError(f"--data={data}: the TFPREC_DATA_DIR environment variable "
                       f"names no folder: {env_dir!r}", 2)


def read_settings(fv=FLAGS) -> Settings:
    """Cross-flag checks of the parsed ``fv`` and of the files they name
    (model, data, output folder: see
    :func:`tfprec.application.staging.check_output_dir`); the
    :class:`Settings`.  Imports no TensorFlow.

    Raises CliError (exit status 2) naming the flags at fault.
    """
    from tfprec.application.staging import check_output_dir
    _check_paths(fv)
    measured_mismatch, notices = _measured_mismatch(fv)
    mode = _mode(fv, bool(fv["target_bound"].present), measured_mismatch)
    if (mode == "measured" and measured_mismatch is None
            and fv.max_accuracy_drop is None):
        measured_mismatch = DEFAULT_TARGET_MISMATCH
    if fv.allocation == PREDICTED_ALLOCATION:
        if mode == "analytic":
            raise CliError(f"--allocation={PREDICTED_ALLOCATION} plans under the "
                           "predicted mismatch, an estimate, not a bound: give a "
                           "measured target (--target_mismatch, --max_accuracy_drop) "
                           "or --cost_budget instead of --target_bound", 2)
        if fv.eval_examples < 2:
            raise CliError(f"--eval_examples must be at least 2 with --allocation="
                           f"{PREDICTED_ALLOCATION} (its gains use the selection "
                           "half, its validation the report half)", 2)
    _check_inputs(fv, bool(fv["plots"].present))
    check_output_dir(fv.output_dir, fv.overwrite)
    if fv["target_mismatch"].present:
        notices += ("--target_mismatch is the MEASURED mismatch target (as in "
                    "tfprec.calibrate); the analytic bound target is --target_bound",)
    names = [f.name for f in dataclasses.fields(Settings)
             if f.name not in ("mode", "levels", "demo_hidden", "command",
                               "target_mismatch", "notices")]
    return Settings(mode=mode, levels=tuple(parse_levels(fv.sweep_levels)),
                    demo_hidden=tuple(int(h) for h in fv.demo_hidden),
                    command=command_line(fv), target_mismatch=measured_mismatch,
                    notices=tuple(notices),
                    **{n: getattr(fv, n) for n in names})
