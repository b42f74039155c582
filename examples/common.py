"""Shared helpers of the example scripts (not part of the tfprec API).

* flags: :func:`define_flag` defines an absl flag once per process (the
  examples share flag names such as ``--data_dir``; a test that imports
  several examples must not hit absl's DuplicateFlagError);
* data and cache defaults: :func:`default_data_dir`, :func:`default_cache_dir`;
* the well-trained reference networks: :func:`load_reference` (the
  committed weights in ``examples/weights``, made by
  ``examples/train_reference.py``);
* training: :func:`trained_model` (cached with ``tfprec.models.cached_trained``
  or trained in place), timed; the examples use it only with ``--retrain``;
* the paper reproduction (equal-accuracy search, binarized and 16-bit
  networks, markdown) is in :mod:`paper_common`;
* architectures: :func:`run_architecture` (gains, paper and cost-aware plans,
  fake-quant validation, TFLite export, shared-input formats).
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
import time
from typing import Callable, Optional

import numpy as np

import tfprec  # noqa: F401  (first: selects Keras 2 before TensorFlow loads)
from tfprec import fileio
from tfprec.application import models
from tfprec.quantization import validate
from tfprec.application import data as data_lib
from tfprec.planning import plan as plan_lib
from tfprec.planning import rules as rules_lib
from tfprec.planning import cost_aware as cost_aware_lib
from tfprec._tf import keras
from tfprec.quantization.apply import logits_model, quantize_model
from tfprec.errors import TfprecError, UnattainableTargetError, UnsupportedModelError
from tfprec.fixedpoint import MAX_BITS, MIN_BITS

from tfprec.planning.calibrate import calibrate as _calibrate

from absl import flags

EXAMPLES_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(EXAMPLES_DIR)
WEIGHTS_DIR = os.path.join(EXAMPLES_DIR, "weights")
# reference network -> (builder keywords of the committed weights, dataset,
# whether the dataset is flattened); examples/train_reference.py writes them
REFERENCE_NETS = {
    "mnist_mlp": ({}, "mnist", True),
    "cifar10_vgg": ({"batchnorm": False}, "cifar10", False),
}
PAPER_METHODS = ("cost_aware_predicted", "cost_aware", "paper", "uniform", "icml2017")
METHOD_LABELS = {
    "paper": "per-layer, paper rule (ICASSP 2018)",
    "cost_aware_predicted": "per-layer, cost-aware under the predicted accuracy drop (tfprec)",
    "cost_aware": "per-layer, cost-aware under the per-example bound (compute)",
    "uniform": "uniform (one B for all tensors)",
    "icml2017": "ICML 2017 (one B_A, one B_W)",
}


# ================================================================ flags
def define_flag(kind: str, name: str, default, help_text: str, **kw) -> None:
    """``flags.DEFINE_<kind>(name, default, help_text)`` unless ``name`` is
    already defined in this process (e.g. by tfprec.cli in a test run): then
    it is left exactly as it is, so importing an example never changes
    another program's flags."""
    if name in flags.FLAGS:
        return
    getattr(flags, f"DEFINE_{kind}")(name, default, help_text, **kw)


def define_common_flags(*, epochs: int, calibration_examples: int,
                        eval_examples: int, output: str = "") -> None:
    """Flags every example has (defaults given per example)."""
    define_flag("string", "data_dir", default_data_dir(),
                "Folder with mnist.npz / cifar10_jpeg75.npz. Default: "
                "$TFPREC_DATA_DIR, else ../shared/data next to the repository "
                "if it exists, else '' (Keras online loaders).")
    define_flag("string", "cache_dir", default_cache_dir(),
                "Folder for cached trained weights (tfprec.models.cached_trained); "
                "'' trains without caching.")
    define_flag("integer", "epochs", epochs, "Float training epochs.")
    define_flag("integer", "calibration_examples", calibration_examples,
                "Training examples the noise gains are computed on.")
    define_flag("integer", "eval_examples", eval_examples,
                "Held-out test examples for the fake-quant evaluation.")
    define_flag("string", "output", output,
                "Write the markdown results here (atomically); '' prints only.")
    define_flag("integer", "seed", 0, "Seed of model initialization and training.")


def define_reference_flags() -> None:
    """--retrain and --weights_dir, of the examples that use a reference
    network (:func:`load_reference`)."""
    define_flag("bool", "retrain", False,
                "Train the network with the example's short CPU schedule "
                "(--epochs, cached in --cache_dir) instead of loading the "
                "committed well-trained reference weights (examples/weights, "
                "made by examples/train_reference.py).")
    define_flag("string", "weights_dir", "",
                "Folder of the reference weights <net>.h5 and training.json "
                "('' : examples/weights).")


def define_architecture_flags(*, train_examples: int) -> None:
    """Flags of the architecture examples (ResNet-20, MobileNet-style)."""
    define_common_flags(epochs=2, calibration_examples=500, eval_examples=2000)
    define_flag("integer", "train_examples", train_examples,
                "Train on the first N training images (CPU schedule).")
    define_flag("float", "target", 0.01,
                "Analytic mismatch-bound target of the plans (probability).")
    define_flag("float", "calibrated_mismatch", 0.01,
                "Also the paper and cost-aware families at the cheapest level whose "
                "measured mismatch is at most this fraction (tfprec.calibrate); "
                "negative: skip.")
    define_flag("integer", "select_examples", 2000,
                "Test examples (after the evaluation split) the calibrated "
                "levels are chosen on.")
    define_flag("bool", "int8_baseline", True,
                "Also validate and export every tensor at 8 bits.")
    define_flag("string", "export_dir", "",
                "Keep the .tflite files here ('' : a temporary folder).")


def architecture_main(builder: str, run) -> None:
    """main() of an architecture example: load CIFAR-10, ``run``, print."""
    f = flags.FLAGS
    timer = Timer()
    ds = data_lib.load_dataset("cifar10", f.data_dir or None,
                               num_train=f.train_examples or None)
    print(f"data: {ds}", flush=True)
    res = run(ds, epochs=f.epochs, cache_dir=f.cache_dir,
              calibration_examples=f.calibration_examples,
              eval_examples=f.eval_examples, target=f.target,
              calibrated_mismatch=(f.calibrated_mismatch
                                   if f.calibrated_mismatch >= 0 else None),
              select_examples=f.select_examples,
              int8_baseline=f.int8_baseline, export_dir=f.export_dir, seed=f.seed)
    print_result(builder, res.markdown, timer)


def print_result(name: str, markdown: str, timer: "Timer") -> None:
    """Prints an example's markdown (and writes it to --output) and its wall time."""
    output = flags.FLAGS.output
    print()
    print(markdown, flush=True)
    if output:
        write_atomic(output, markdown)
        print(f"wrote {output}")
    print(f"{name}: wall time {timer.total:.1f} s", flush=True)


def default_data_dir() -> str:
    """``$TFPREC_DATA_DIR``, else ``<repo>/../shared/data`` if it exists, else
    '' (tfprec.data then uses the Keras online loaders)."""
    env = os.environ.get("TFPREC_DATA_DIR", "").strip()
    if env:
        return env
    shared = os.path.normpath(os.path.join(REPO_ROOT, "..", "shared", "data"))
    return shared if os.path.isdir(shared) else ""


def default_cache_dir() -> str:
    """``$TFPREC_CACHE_DIR``, else ``examples/.cache`` (git-ignored)."""
    return (os.environ.get(models.ENV_CACHE_DIR, "").strip()
            or os.path.join(EXAMPLES_DIR, ".cache"))


# ================================================================ reference nets
class MissingWeightsError(TfprecError, FileNotFoundError):
    """A reference network's committed weights file is not there."""


def reference_path(name: str, weights_dir: str = "") -> str:
    """``<weights_dir or examples/weights>/<name>.h5``."""
    if name not in REFERENCE_NETS:
        raise UnsupportedModelError(
            f"unknown reference network {name!r}; the reference networks are "
            f"{', '.join(REFERENCE_NETS)}")
    return os.path.join(weights_dir or WEIGHTS_DIR, f"{name}.h5")


def load_reference(name: str, weights_dir: str = ""):
    """The well-trained reference network ``name`` ("mnist_mlp" or
    "cifar10_vgg") with its committed weights, compiled.

    ``mnist_mlp``: ``tfprec.models.mnist_mlp()`` (784-512-512-512-10);
    ``cifar10_vgg``: ``tfprec.models.cifar10_vgg(batchnorm=False)`` (the
    BatchNormalization of training already folded into the weights).  The
    weights are ``examples/weights/<name>.h5`` (``weights_dir`` overrides
    the folder), written by ``python examples/train_reference.py --nets
    <name>``; their schedule and test accuracy are in
    ``examples/weights/README.md`` and ``training.json``.

    Raises:
      UnsupportedModelError: ``name`` is not a reference network.
      MissingWeightsError (a TfprecError and FileNotFoundError): the weights
        file is missing; the message names it and the command that makes it.
    """
    path = reference_path(name, weights_dir)
    if not os.path.isfile(path):
        raise MissingWeightsError(
            f"reference weights {path} not found; make them with `python "
            f"examples/train_reference.py --nets {name}` (or run the example "
            f"with --retrain to train its short CPU schedule instead)")
    kw = REFERENCE_NETS[name][0]
    model = models.build(name, **kw)
    model.load_weights(path)
    return models.compile_model(model)


def reference_record(name: str, weights_dir: str = "") -> dict:
    """The training record of ``name`` in ``training.json`` next to its
    weights ({} when there is none): test_accuracy (fraction), epochs,
    train_seconds, seed, command."""
    import json
    path = os.path.join(weights_dir or WEIGHTS_DIR, "training.json")
    try:
        with open(path) as f:
            return dict(json.load(f).get(name, {}))
    except (OSError, ValueError):
        return {}


def reference_or_trained(name: str, ds, *, retrain: bool, epochs: int,
                         cache_dir: str = "", builder_kwargs: Optional[dict] = None,
                         batch_size: int = 128, seed: int = 0,
                         weights_dir: str = "") -> tuple:
    """(model, how, schedule text or '').  Without ``retrain``: the committed
    reference network (:func:`load_reference`; ``builder_kwargs`` must be
    empty, the weights are for the reference architecture).  With
    ``retrain``: :func:`trained_model`'s short CPU schedule."""
    if retrain:
        m, how = trained_model(name, ds, epochs=epochs, cache_dir=cache_dir,
                               builder_kwargs=builder_kwargs, batch_size=batch_size,
                               seed=seed)
        return m, how, None
    if builder_kwargs:
        raise UnsupportedModelError(
            f"the committed {name} weights are for the reference architecture; "
            f"builder arguments {builder_kwargs} need retrain=True (--retrain)")
    model = load_reference(name, weights_dir)
    rec = reference_record(name, weights_dir)
    acc = rec.get("test_accuracy")
    path = reference_path(name, weights_dir)
    shown = os.path.relpath(path, REPO_ROOT) if not weights_dir else path
    how = (f"well-trained reference weights {shown}"
           + (f" ({rec.get('epochs')} epochs, test accuracy "
              f"{100 * acc:.2f} % when trained)" if acc is not None else ""))
    sched = (f"examples/train_reference.py ({rec.get('command', '')}); see "
             "examples/weights/README.md")
    return model, how, sched


# ================================================================ misc
class Timer:
    """Named wall-clock phases: ``with timer("train"): ...``."""

    def __init__(self):
        self.phases: dict = {}
        self.start = time.perf_counter()

    @contextlib.contextmanager
    def __call__(self, name: str):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.phases[name] = self.phases.get(name, 0.0) + time.perf_counter() - t

    @property
    def total(self) -> float:
        return time.perf_counter() - self.start

    def line(self) -> str:
        parts = ", ".join(f"{k} {v:.1f} s" for k, v in self.phases.items())
        return f"wall time {self.total:.1f} s ({parts})"


def write_atomic(path: str, text: str) -> None:
    """Writes ``text`` to ``path`` (temp file in the same folder + rename)."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fileio.atomic_write_text(path, text)


def trained_model(builder: str, ds, *, epochs: int, cache_dir: str = "",
                  builder_kwargs: Optional[dict] = None, batch_size: int = 128,
                  seed: int = 0) -> tuple:
    """(model, how) for ``builder`` trained on ``ds``.

    With a ``cache_dir`` the weights come from / go to
    ``tfprec.models.cached_trained``; ``how`` says 'trained' or 'loaded from
    cache'.  Without, the model is built with ``seed`` and trained in place.
    """
    kw = dict(builder_kwargs or {})
    if cache_dir:
        path = models.cache_path(builder, ds, epochs, batch_size, seed=seed,
                                 cache_dir=cache_dir, builder_kwargs=kw)
        cached = os.path.isfile(path)
        m = models.cached_trained(builder, ds, epochs=epochs, batch_size=batch_size,
                                  seed=seed, cache_dir=cache_dir, builder_kwargs=kw)
        return m, (f"loaded from cache {path}" if cached else f"trained, cached at {path}")
    keras.utils.set_random_seed(int(seed))
    m = models.build(builder, **kw)
    models.train(m, ds, epochs=epochs, batch_size=batch_size, seed=seed)
    return m, "trained (no cache)"


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}"


def md_header(title: str, schedule: str, trained: str) -> list:
    """Markdown lines: the section title, then the training schedule if any."""
    return [f"## {title}", ""] + ([f"Training: {schedule}; {trained}.", ""]
                                  if schedule else [])


# ================================================================ architectures
def shared_groups(plan) -> dict:
    """act_group -> the plan's LayerPrecision of every member."""
    out: dict = {}
    for lp in plan.layers:
        if lp.act_group:
            out.setdefault(lp.act_group, []).append(lp)
    return out


def shared_formats_equal(plan, export_report=None) -> dict:
    """act_group -> whether all its members have one input format
    (B_A, R_A, signedness; and, with an export report, the same stored input
    step and type in the TFLite file)."""
    res = {}
    for group, members in shared_groups(plan).items():
        fmts = {(l.act_bits, l.act_range, l.act_signed) for l in members}
        ok = len(fmts) == 1
        if export_report is not None:
            ex = [export_report.layer(l.name) for l in members]
            ok = ok and len({(e.act_bits, e.act_step, e.act_signed, e.act_dtype)
                             for e in ex}) == 1
        res[group] = ok
    return res


@dataclasses.dataclass
class ArchPlanResult:
    """One plan of :func:`run_architecture`."""

    name: str
    plan: plan_lib.PrecisionPlan
    validation: validate.ValidationResult
    export: object            # tfprec.export.ExportReport or None
    tflite_vs_fakequant: Optional[float]
    tflite_accuracy: Optional[float]
    shared_equal: dict
    note: str = ""


@dataclasses.dataclass
class ArchResult:
    title: str
    float_accuracy: float
    gains: object
    plans: list
    timings: dict
    markdown: str
    model: object = None


def _validation(plan, fdec, qdec, y) -> validate.ValidationResult:
    """The :class:`tfprec.validate.ValidationResult` of float / fake-quant
    decisions (what ``tfprec.validate.validate`` reports)."""
    n = len(fdec)
    mis = int(np.sum(fdec != qdec))
    c = plan.cost()
    return validate.ValidationResult(
        method=plan.method, b_min=int(plan.b_min), bound=float(plan.bound()),
        num_examples=n, num_mismatch=mis, mismatch_rate=mis / n,
        float_accuracy=float(np.mean(fdec == y)), quant_accuracy=float(np.mean(qdec == y)),
        compute_cost=float(c.total_compute), memory_cost=float(c.total_memory))


def _safe_plan(make, target: float, floor: float, log) -> tuple:
    """(plan, target used).  A target below ``floor`` (the bound with every
    tensor at 16 bits) is unattainable for every rule, so it starts there;
    then the target is relaxed x10 (up to probability 1) while the rule
    finds no plan within 16 bits (at most 8 times)."""
    t = float(target)
    if t < floor:
        log(f"  target {t:g} is below the 16-bit bound {floor:.3g}; using {floor:.3g}")
        t = min(floor, 1.0)
    err = None
    for _ in range(8):
        try:
            return make(t), t
        except UnattainableTargetError as e:
            err = e
            if t >= 1.0:                 # a target is a probability, at most 1
                break
            log(f"  target {t:g} unattainable within 16 bits; trying "
                f"{min(10 * t, 1.0):g}")
            t = min(10 * t, 1.0)
    raise UnattainableTargetError(f"no plan within 16 bits up to bound target "
                                  f"{t:g} ({err})")


ARCH_SCHEDULE = ("epochs {epochs} on the first {n} CIFAR-10 training images, batch "
                 "{batch}, Adam lr 1e-3, seed {seed}")


def architecture_runner(builder: str, title: str,
                        schedule: str = ARCH_SCHEDULE) -> Callable:
    """The ``run(ds, **kw)`` of an architecture example: :func:`run_architecture`
    with its builder, title and training schedule text (``schedule`` is
    formatted with epochs, n (training images), batch and seed)."""
    def run(ds, *, epochs: int = 2, batch_size: int = 128, seed: int = 0,
            export_dir=None, log=log_to_stdout, **kw) -> ArchResult:
        return run_architecture(
            builder, ds, title=title, epochs=epochs, batch_size=batch_size, seed=seed,
            export_dir=export_dir or None, log=log, **kw,
            schedule=schedule.format(epochs=epochs, n=ds.num_train, batch=batch_size,
                                     seed=seed))
    run.__doc__ = (f"Trains and analyzes {title} on ``ds`` (CIFAR-10-like, "
                   "32x32x3); keywords as common.run_architecture.")
    return run


def run_architecture(builder: str, ds, *, title: str, epochs: int = 2,
                     batch_size: int = 128, cache_dir: str = "",
                     calibration_examples: int = 500, eval_examples: int = 2000,
                     target: float = 0.01, calibrated_mismatch: Optional[float] = None,
                     select_examples: int = 2000, int8_baseline: bool = True,
                     export_dir: Optional[str] = None,
                     export: bool = True, seed: int = 0, schedule: str = "",
                     log: Callable[[str], None] = print) -> ArchResult:
    """Trains ``builder`` on ``ds`` and analyzes it end to end.

    Gains on ``calibration_examples`` training examples; the paper and
    cost-aware (compute) plans at the analytic bound ``target``; with
    ``calibrated_mismatch`` also the paper and cost-aware families at the
    cheapest level whose MEASURED mismatch is at most that fraction
    (``tfprec.calibrate``), the level chosen on the ``select_examples`` test
    examples after the evaluation split; with ``int8_baseline`` also every
    tensor at 8 bits (the usual int8 deployment, all int8 TFLite kernels).
    Every plan is validated (fake-quant)
    on the first ``eval_examples`` test examples and exported to TFLite with
    grid checks, TFLite accuracy and decision agreement with the fake-quant
    model; the input formats of layers that share an input tensor are
    compared in the plan and in the TFLite file."""
    from tfprec.export import agreement, export_tflite, tflite_predict

    timer = Timer()
    with timer("train"):
        model, how = trained_model(builder, ds, epochs=epochs, cache_dir=cache_dir,
                                   batch_size=batch_size, seed=seed)
    log(f"[{title}] model {how} ({timer.phases['train']:.1f} s)")
    n_cal = min(int(calibration_examples), ds.num_train)
    n_eval = min(int(eval_examples), ds.num_test)
    x_cal, x_eval, y_eval = ds.x_train[:n_cal], ds.x_test[:n_eval], ds.y_test[:n_eval]
    with timer("gains"):
        gains = tfprec.noise_gains(model, x_cal, batch_size=min(128, n_cal))
    log(f"[{title}] noise gains on {n_cal} training examples "
        f"({timer.phases['gains']:.1f} s)")
    floor = rules_lib.uniform_plan(gains, bits=MAX_BITS).bound() * (1 + 1e-9)
    with timer("float pass"):
        fdec = validate.float_decisions(model, x_eval)

    # ---- the plans: (label, plan or None, note)
    plans = []
    for name, make in (("paper", lambda t: rules_lib.paper_plan(gains, t)),
                       ("cost_aware:compute",
                        lambda t: cost_aware_lib.cost_aware_plan(gains, t, cost="compute"))):
        with timer("plan"):
            try:
                plan, t_used = _safe_plan(make, target, floor, log)
            except UnattainableTargetError as e:
                if name == "paper":
                    ow, oa = rules_lib.paper_offsets(gains)
                    span = int(max(ow.max(), oa.max()))
                    if span > MAX_BITS - MIN_BITS:
                        e = (f"the paper rule's offsets span {span} bits, so no "
                             f"B_min >= {MIN_BITS} keeps every tensor within "
                             f"{MAX_BITS} bits")
                log(f"[{title}] {name}: no plan ({e})")
                plans.append((name, None, f"no plan: {e}"))
                continue
        label = name if t_used == target else f"{name} (bound target {t_used:.3g})"
        plans.append((label, plan, ""))
    if int8_baseline:
        plans.append(("uniform 8 bits (int8 baseline)",
                      rules_lib.uniform_plan(gains, bits=8), ""))
    n_sel = 0
    if calibrated_mismatch is not None:
        n_sel = min(int(select_examples), ds.num_test - n_eval)
        what = f"calibrated, measured mismatch <= {calibrated_mismatch:g}"
        if n_sel < 1:
            plans.append((what, None, "no test examples left for the level search"))
        else:
            x_sel = ds.x_test[n_eval:n_eval + n_sel]
            with timer("calibration (level search)"):
                try:
                    cres = _calibrate(model, gains, x_sel, ds.y_test[n_eval:n_eval + n_sel],
                                      target_mismatch=float(calibrated_mismatch),
                                      methods=("paper", "cost_aware"))
                except UnattainableTargetError as e:
                    cres = None
                    plans.append((what, None, f"no plan: {e}"))
            if cres is not None:
                for m in ("paper", "cost_aware"):
                    try:
                        c = cres[m]
                    except KeyError:
                        plans.append((f"{m}, {what}", None,
                                      f"no plan: {cres.unmet.get(m, 'target not met')}"))
                        continue
                    lev = (f"t={c.level:.3g}" if m == "cost_aware"
                           else f"B_min={int(c.level)}")
                    plans.append((f"{m}, {what} ({lev}; {c.num_mismatch}/{c.num_examples} "
                                  f"on the selection split)", c.plan, ""))

    out = []
    tmp = None
    if export and export_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="tfprec-example-")
        export_dir = tmp.name
    try:
        for i, (label, plan, note) in enumerate(plans):
            if plan is None:
                out.append(ArchPlanResult(label, None, None, None, None, None, {}, note=note))
                continue
            with timer("fake-quant validation"):
                # one fake-quant model per plan (tfprec.quantization.apply.quantize_model,
                # as tfprec.validate.validate uses) serves the validation and
                # the comparison with TFLite
                qm = logits_model(quantize_model(model, plan))
                # eager batches: no predict-function tracing per plan
                fq = np.concatenate([qm(x_eval[i:i + 500], training=False).numpy()
                                     for i in range(0, len(x_eval), 500)])
                v = _validation(plan, fdec, np.argmax(fq, -1), y_eval)
            rep = agree = tacc = None
            if export:
                with timer("TFLite export + check"):
                    os.makedirs(export_dir, exist_ok=True)
                    stem = label.split(":")[0].split(" ")[0].rstrip(",")
                    kind = ("calibrated" if "calibrated" in label else
                            "8bit" if stem == "uniform" else "bound")
                    path = os.path.join(export_dir, f"{builder}_{stem}_{kind}.tflite")
                    rep = export_tflite(model, plan, path,
                                        representative_data=x_eval[:32], strict=False)
                    if os.path.isfile(path):
                        tfl = tflite_predict(path, x_eval)
                        agree = agreement(tfl, fq)
                        tacc = float(np.mean(np.argmax(tfl, -1) == y_eval))
            out.append(ArchPlanResult(label, plan, v, rep, agree, tacc,
                                      shared_formats_equal(plan, rep)))
    finally:
        if tmp is not None:
            tmp.cleanup()
    timings = dict(timer.phases)
    timings["total"] = timer.total
    float_acc = float(np.mean(fdec == y_eval))
    res = ArchResult(title, float_acc, gains, out, timings, "", model)
    res.markdown = arch_markdown(res, n_cal=n_cal, n_eval=n_eval, target=target,
                                 trained=how, schedule=schedule, n_sel=n_sel)
    return res


def arch_markdown(res: ArchResult, *, n_cal: int, n_eval: int, target: float,
                  trained: str, schedule: str = "", n_sel: int = 0) -> str:
    yes = lambda b: "yes" if b else "**NO**"  # noqa: E731
    L = md_header(f"{res.title}: end-to-end analysis", schedule, trained)
    L += [f"Float test accuracy {_pct(res.float_accuracy)} % on {n_eval} test "
          f"examples; noise gains on {n_cal} training examples "
          f"({len(res.gains.layers)} weight layers); plans at analytic bound "
          f"target {target:g} (the bound with every tensor at 16 bits is "
          f"{rules_lib.uniform_plan(res.gains, bits=MAX_BITS).bound():.3g})"
          + (f" and calibrated plans whose level was chosen on the next {n_sel} "
             f"test examples (not the {n_eval} they are validated on)" if n_sel else "")
          + ". TFLite int8 kernels are used where B_W and B_A are at most 8 bits.", "",
          "| plan | B_min | max bits | bound | mismatch | float acc % | fake-quant "
          "acc % | compute (FA) | memory (bits) | TFLite grid checks | TFLite int8 "
          "layers | TFLite acc % | TFLite = fake-quant | TFLite = simulation | shared "
          "inputs equal |",
          "|" + "---|" * 15]
    for p in res.plans:
        v, rep = p.validation, p.export
        if p.plan is None:
            L.append(f"| {p.name} | {p.note} |" + " |" * 13)
            continue
        bmax = max(max(l.weight_bits, l.act_bits) for l in p.plan.layers)
        L.append(
            f"| {p.name} | {v.b_min} | {bmax} | {v.bound:.3g} | "
            f"{v.mismatch_rate:.4f} ({v.num_mismatch}/{v.num_examples}) | "
            f"{_pct(v.float_accuracy)} | {_pct(v.quant_accuracy)} | "
            f"{v.compute_cost:.4g} | {v.memory_cost:.4g} | "
            f"{'n/a' if rep is None else yes(rep.grid_check_passed)} | "
            f"{'n/a' if rep is None else sum(l.compute == 'int8' for l in rep.layers)}"
            f"{'' if rep is None else '/' + str(len(rep.layers))} | "
            f"{_pct(p.tflite_accuracy)} | {_pct(p.tflite_vs_fakequant)} | "
            f"{'n/a' if rep is None else _pct(rep.sim_agreement)} | "
            f"{yes(all(p.shared_equal.values())) if p.shared_equal else 'none'} |")
    L.append("")
    made = [p for p in res.plans if p.plan is not None]
    groups = shared_groups(made[0].plan) if made else {}
    if groups:
        L += ["Layers that read one shared input tensor (act_group) and their input "
              "formats (B_A, R_A, signed) in each plan:", ""]
        for g, members in groups.items():
            parts = []
            for p in made:
                ms = shared_groups(p.plan)[g]
                fm = "; ".join(f"{l.name}: {l.act_bits} b, R={l.act_range:g}, "
                               f"{'s' if l.act_signed else 'u'}" for l in ms)
                parts.append(f"{p.name}: {fm} -> equal: {yes(p.shared_equal[g])}")
            L.append(f"- `{g}`: " + " | ".join(parts))
        L.append("")
    else:
        L += ["No two weight layers share an input tensor.", ""]
    for p in made:
        L += [f"Per-layer bits, {p.name} (layer B_W/B_A): " + ", ".join(
            f"{l.name} {l.weight_bits}/{l.act_bits}" for l in p.plan.layers), ""]
    t = res.timings
    L += ["Wall time: " + ", ".join(f"{k} {v:.1f} s" for k, v in t.items()) + "."]
    return "\n".join(L) + "\n"


def log_to_stdout(msg: str) -> None:
    print(msg, flush=True)
