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
tfprec.quantization.configs.quantize_scope()), model.tflite, summary.json
and PNG figures (with matplotlib).  Everything is written into a temporary folder first and
moved into place at the end, so a failed run leaves nothing behind.

Run with --helpfull for every flag.  Also runs as `python -m tfprec`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
from typing import Optional

from absl import app, flags

from tfprec.application import flags as cli_flags
from tfprec.application import outputs, steps
from tfprec.application import report as report_lib
from tfprec.application.flags import (  # noqa: F401  (parse_levels: re-exported)
    CliError, Settings, parse_levels, read_settings)
from tfprec.application.staging import Staging
from tfprec.application.steps import (FLOAT_MODEL_FILE, PLAN_FILE, QUANTIZED_FILE,
                                      SUMMARY_FILE, TFLITE_FILE)

OUTPUT_FILES = (PLAN_FILE, report_lib.REPORT_FILE, QUANTIZED_FILE, TFLITE_FILE,
                SUMMARY_FILE, FLOAT_MODEL_FILE) + report_lib.FIGURES

FLAGS = flags.FLAGS
_log = steps.log


# ==================================================================== a run
@dataclasses.dataclass
class RunState:
    """What a run has made so far (filled in step by step by :func:`execute`)."""

    s: Settings
    staging: Staging
    timings: dict = dataclasses.field(default_factory=dict)
    notes: list = dataclasses.field(default_factory=list)
    ds: object = None
    model: object = None
    train_info: Optional[str] = None
    x_cal: object = None
    x_eval: object = None
    y_eval: object = None
    gains: object = None
    choice: object = None
    validation: object = None
    comparisons: list = dataclasses.field(default_factory=list)
    sweep_rows: list = dataclasses.field(default_factory=list)
    export_report: object = None
    full16: object = None


@contextlib.contextmanager
def _timed(r: RunState, step: str):
    t0 = time.time()
    yield
    r.timings[step] = time.time() - t0


def _load(r: RunState) -> None:
    """Data, model and the calibration / held-out examples."""
    s = r.s
    with _timed(r, "load data"):
        r.ds = steps.load_data(s)
    _log(f"data: {r.ds!r}")
    if s.demo:
        r.model, r.train_info = steps.demo_model(s, r.ds, r.staging, r.timings)
    else:
        with _timed(r, "load model"):
            r.model = steps.load_model(s.model)
    n_out = int(r.model.outputs[0].shape[-1])
    if r.ds.num_classes > n_out:
        raise CliError(f"--data={s.data} has {r.ds.num_classes} classes but the "
                       f"model outputs {n_out} scores")
    ds = r.ds
    r.x_cal, _ = steps.take(s, r.model, ds.x_train, ds.y_train, s.calibration_examples,
                            "training", "calibration_examples", r.notes)
    r.x_eval, r.y_eval = steps.take(s, r.model, ds.x_test, ds.y_test, s.eval_examples,
                                    "test", "eval_examples", r.notes)
    for n in r.notes:
        _log("note: " + n)


def _plan(r: RunState) -> None:
    """Noise gains, the chosen plan, its validation and the comparison."""
    from tfprec.quantization import validate as validate_lib
    from tfprec.statistics.gains import noise_gains
    s = r.s
    with _timed(r, "noise gains"):
        _log(f"noise gains over {len(r.x_cal)} calibration examples")
        r.gains = noise_gains(r.model, r.x_cal, batch_size=min(s.batch_size, 256),
                              per_example=True)
    with _timed(r, "plans"):
        r.choice = steps.choose(s, r.model, r.gains, r.x_eval, r.y_eval)
    r.notes += r.choice.notes
    plan = r.choice.plan
    _log(f"chosen plan: {plan.method} (bound {plan.bound():.4g}, {s.cost} cost "
         f"{steps.fmt_cost(plan.cost().total(s.cost), s.cost)})")
    with _timed(r, "validation"):
        _log(f"validating on {len(r.choice.x_val)} held-out examples")
        r.validation = validate_lib.validate(r.model, plan, r.choice.x_val,
                                             r.choice.y_val, batch_size=s.batch_size)
        r.comparisons = steps.compare(s, r.model, r.choice, r.validation)


def _sweep(r: RunState) -> None:
    from tfprec.quantization import validate as validate_lib
    levels = list(r.s.levels)
    if not levels:
        return
    with _timed(r, "sweep"):
        _log(f"sweep of levels {levels[0]}..{levels[-1]} for "
             f"{', '.join(validate_lib.METHODS)}")
        r.sweep_rows = validate_lib.sweep(r.model, r.gains, r.x_eval, r.y_eval,
                                          b_mins=levels, batch_size=r.s.batch_size)


def _write(r: RunState) -> None:
    """Stages plan.json, quantized.h5, model.tflite, report.md, summary.json."""
    from tfprec.planning.rules import uniform_plan
    from tfprec.quantization import apply as apply_lib
    plan = r.choice.plan
    with _timed(r, "fake-quant model"):
        plan.save(r.staging.path(PLAN_FILE))
        quantized = apply_lib.quantize_model(r.model, plan)
        r.staging.write_with(QUANTIZED_FILE, lambda p: steps.save_model(quantized, p))
    if r.s.export_tflite:
        with _timed(r, "TFLite export"):
            r.export_report = steps.export(r.s, r.model, plan, r.x_eval, r.staging)
    with _timed(r, "report"):
        r.full16 = uniform_plan(r.gains, bits=16).cost()
        outputs.write_report(r)
    outputs.write_summary(r)


def execute(s: Settings) -> int:
    """Runs the pipeline of ``s``; prints the summary; returns the exit status."""
    from tfprec._tf import tf
    t_start = time.time()
    r = RunState(s, Staging(s.output_dir))
    try:
        tf.get_logger().setLevel("ERROR")     # retracing chatter of repeated passes
        _load(r)
        _plan(r)
        _sweep(r)
        _write(r)
        previous = r.staging.earlier(OUTPUT_FILES)
        files = r.staging.commit()
    except BaseException:
        r.staging.discard()
        raise
    print(outputs.stdout_summary(r, files, previous, time.time() - t_start), flush=True)
    return 0


def main(argv) -> int:
    """absl main: checks the flags, runs the pipeline; returns the exit status."""
    if len(argv) > 1:
        print(f"tfprec: error: unexpected arguments {argv[1:]}; flags take the "
              "form --name=value (see --helpfull)", file=sys.stderr)
        return 2
    try:
        return execute(read_settings(FLAGS))
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
    for flag in FLAGS.get_flags_for_module(cli_flags.__name__):
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
