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
      analyzes a saved tf_keras classifier (.h5, SavedModel folder or a
      tf_keras .keras file) at the default analytic bound --target_bound=0.01.
  tfprec --model=model.h5 --max_accuracy_drop=0.5
      cheapest plan whose measured accuracy drop is at most 0.5 pp.
  tfprec --model=model.h5 --cost_budget=2e7 --cost=compute
      smallest-bound plan that costs at most 2e7 full adders per example.

Writes into --output_dir (default ./tfprec_out): plan.json, report.md,
quantized.h5 (the fake-quant model; load it under
tfprec.quantization.configs.quantize_scope()), model.tflite, summary.json,
PNG figures (with matplotlib) and the manifest .tfprec-run.json.
Everything is written into a temporary folder first and moved into place at
the end, all or nothing, so a failed or interrupted run leaves nothing
behind.  A non-empty folder that tfprec did not write is refused unless
--overwrite is given.

Exit status: 0 done; 2 a usage error (a bad flag, a missing or unreadable
file, a refused output folder, a model or data tfprec cannot use); 1 a
failure while running; 128 + N killed by signal N (130: Ctrl-C).

Run with --help for tfprec's flags (--helpfull: every flag).  Also runs as
`python -m tfprec`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import signal
import sys
import threading
import time
from typing import Optional

from absl import app, flags

# Only TensorFlow-free modules at import time: the flags are checked before
# TensorFlow loads; steps and outputs (which import it) load inside execute.
from tfprec.application import flags as cli_flags
from tfprec.application.flags import (  # noqa: F401  (parse_levels: re-exported)
    CliError, Settings, log, parse_levels, read_settings)
from tfprec.application.staging import Staging
# signals that stop a run like Ctrl-C does: staging removed, exit 128 + signum
STOP_SIGNALS = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGHUP")
                     if hasattr(signal, n))

FLAGS = flags.FLAGS
_log = log


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
    rounded: object = None     # --weight_rounding=gptq: a RoundedModel
    validation: object = None
    comparisons: list = dataclasses.field(default_factory=list)
    sweep_rows: list = dataclasses.field(default_factory=list)
    export_report: object = None
    full16: object = None
    warnings: list = dataclasses.field(default_factory=list)

    @property
    def validation_split(self) -> str:
        """Where the chosen plan's numbers were measured, in words."""
        n = len(self.choice.x_val)
        if self.s.mode == "measured" or self.s.allocation == "cost_aware_predicted":
            return f"report half of the held-out examples ({n} ex.)"
        return f"held-out examples ({n} ex.)"

    @property
    def comparison_split(self) -> str:
        """Where the compared plans' numbers were measured, in words."""
        if self.s.mode == "measured":
            n = len(self.x_eval) // 2
            return f"selection half of the held-out examples ({n} ex.)"
        return self.validation_split


class Interrupted(BaseException):
    """A stop signal (SIGTERM, SIGHUP) arrived during a run."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = int(signum)


def _raise_interrupted(signum, frame):
    raise Interrupted(signum)


@contextlib.contextmanager
def stop_signals_raise():
    """Within the block, SIGTERM and SIGHUP raise :class:`Interrupted` (like
    SIGINT raises KeyboardInterrupt), so the staging folder is removed; the
    previous handlers are restored after.  Only in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _raise_interrupted) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def _timed(r: RunState, step: str):
    t0 = time.time()
    yield
    r.timings[step] = time.time() - t0


def _load(r: RunState) -> None:
    """Data, model and the calibration / held-out examples."""
    from tfprec.application import steps
    s = r.s
    if not s.demo:      # first: a uint8-input model gets its images unscaled
        with _timed(r, "load model"):
            r.model = steps.load_model(s.model, s.custom_objects)
    with _timed(r, "load data"):
        r.ds = steps.load_data(s, None if s.demo else r.model)
    _log(f"data: {r.ds!r}")
    if s.demo:
        r.model, r.train_info = steps.demo_model(s, r.ds, r.staging, r.timings)
    from tfprec import inputs as inputs_lib
    n_out = inputs_lib.model_num_classes(r.model)
    if r.ds.num_classes > n_out:
        raise CliError(f"--data={s.data} has {r.ds.num_classes} classes but the "
                       f"model outputs {n_out} scores", 2)
    ds = r.ds
    r.x_cal, _ = steps.take(s, r.model, ds.x_train, ds.y_train, s.calibration_examples,
                            "training", "calibration_examples", r.notes)
    r.x_eval, r.y_eval = steps.take(s, r.model, ds.x_test, ds.y_test, s.eval_examples,
                                    "test", "eval_examples", r.notes)
    for n in r.notes:
        _log("note: " + n)


def _plan(r: RunState) -> None:
    """Noise gains, the chosen plan, its validation and the comparison."""
    from tfprec.application import steps
    from tfprec.quantization import validate as validate_lib
    from tfprec.statistics.gains import noise_gains
    s = r.s
    with _timed(r, "noise gains"):
        _log(f"noise gains over {len(r.x_cal)} calibration examples")
        with contextlib.redirect_stdout(sys.stderr):     # the progress bar
            r.gains = noise_gains(r.model, r.x_cal, batch_size=min(s.batch_size, 256),
                                  per_example=True, verbose=True,
                                  per_channel=s.per_channel_weights)
    with _timed(r, "plans"):
        r.choice = steps.choose(s, r.model, r.gains, r.x_eval, r.y_eval)
    r.notes += r.choice.notes
    plan = r.choice.plan
    _log(f"chosen plan: {plan.method} (bound {plan.bound():.4g}, {s.cost} cost "
         f"{steps.fmt_cost(plan.cost().total(s.cost), s.cost)})")
    if s.weight_rounding == "gptq":
        from tfprec.quantization.rounding import examples_needed, optimize_rounding
        with _timed(r, "weight rounding"):
            n_round = s.rounding_examples or examples_needed(r.model)
            x_round, _ = steps.take(s, r.model, r.ds.x_train, r.ds.y_train,
                                    n_round, "training", "rounding_examples", r.notes)
            _log(f"rounding the weights of {plan.method} by GPTQ on "
                 f"{len(x_round)} training examples")
            r.rounded = optimize_rounding(r.model, plan, x_round,
                                          batch_size=min(s.batch_size, 128))
        r.notes.append(
            f"--weight_rounding=gptq: the validation, quantized.h5 and model.tflite use "
            f"weights on the plan's grid chosen by GPTQ on {len(x_round)} training "
            "examples (--rounding_examples; the plan was selected with round-to-nearest; "
            "the analytic bound assumes round-to-nearest); plan.json is the plan for "
            "the input model")
    with _timed(r, "validation"):
        _log(f"validating {plan.method} on the {r.validation_split}")
        r.validation = validate_lib.validate(r.model, plan, r.choice.x_val,
                                             r.choice.y_val, batch_size=s.batch_size,
                                             rounded=r.rounded)
        r.comparisons = steps.compare(s, r.model, r.choice, r.validation)
    r.warnings += steps.usefulness_warnings(r.validation, r.model, r.validation_split)
    for w in r.warnings:
        print(f"tfprec: WARNING: {w}", file=sys.stderr, flush=True)


def _sweep(r: RunState) -> None:
    from tfprec.quantization import validate as validate_lib
    levels = list(r.s.levels)
    if not levels:
        return
    with _timed(r, "sweep"):
        _log(f"sweep of levels {levels[0]}..{levels[-1]} for "
             f"{', '.join(validate_lib.METHODS)} on {len(r.x_eval)} held-out examples")
        for i, level in enumerate(levels, 1):
            t0 = time.time()
            rows = validate_lib.sweep(r.model, r.gains, r.x_eval, r.y_eval,
                                      b_mins=[level], batch_size=r.s.batch_size)
            r.sweep_rows += rows
            _log(f"  sweep level {level} ({i}/{len(levels)}): {len(rows)} plans, "
                 f"{time.time() - t0:.1f} s")


def _write(r: RunState) -> None:
    """Stages plan.json, quantized.h5, model.tflite, report.md, summary.json."""
    from tfprec.application import outputs, steps
    from tfprec.application.steps import PLAN_FILE, QUANTIZED_FILE
    from tfprec.planning.rules import uniform_plan
    from tfprec.quantization import apply as apply_lib
    plan = r.choice.plan
    with _timed(r, "fake-quant model"):
        plan.save(r.staging.path(PLAN_FILE))
        # the files realize the rounded weights (--weight_rounding=gptq):
        # their model and plan; plan.json is the plan for the input model
        q_model, q_plan = ((r.model, plan) if r.rounded is None
                           else (r.rounded.model, r.rounded.plan))
        quantized = apply_lib.quantize_model(q_model, q_plan)
        r.staging.write_with(QUANTIZED_FILE, lambda p: steps.save_model(quantized, p))
    if r.s.export_tflite:
        with _timed(r, "TFLite export"):
            r.export_report = steps.export(r.s, q_model, q_plan, r.x_eval, r.staging)
    with _timed(r, "report"):
        r.full16 = uniform_plan(r.gains, bits=16).cost()
        outputs.write_report(r)
    outputs.write_summary(r)


def _quiet_tf() -> None:
    """Imports TensorFlow and silences the retracing chatter of repeated passes."""
    from tfprec._tf import tf
    tf.get_logger().setLevel("ERROR")


def execute(s: Settings) -> int:
    """Runs the pipeline of ``s``; prints the summary; returns the exit status.

    The outputs are staged and committed all at once (:class:`Staging`);
    an exception or a stop signal (SIGINT, SIGTERM, SIGHUP) removes the
    staging folder and leaves ``--output_dir`` as it was.
    """
    for n in s.notices:
        _log("note: " + n)
    t_start = time.time()
    with stop_signals_raise():
        r = RunState(s, Staging(s.output_dir, s.overwrite, s.command))
        try:
            _quiet_tf()
            _load(r)
            _plan(r)
            _sweep(r)
            _write(r)
            files = r.staging.commit()
        except BaseException:
            r.staging.discard()
            raise
    from tfprec.application import outputs
    print(outputs.stdout_summary(r, files, time.time() - t_start), flush=True)
    return 0


def _error(message: str, code: int) -> int:
    print(f"tfprec: error: {message}", file=sys.stderr, flush=True)
    return code


def main(argv) -> int:
    """absl main: checks the flags (before TensorFlow is imported), runs the
    pipeline; returns the exit status: 0, 2 for a usage error (bad flags or
    files, a model or data tfprec cannot use: a TfprecError), 1 for a
    failure while running (an OSError writing the outputs), 128 + N for
    signal N.  Errors are one line ``tfprec: error: ...``, no traceback."""
    if len(argv) > 1:
        return _error(f"unexpected arguments {argv[1:]}; flags take the form "
                      "--name=value (see --help)", 2)
    try:
        return execute(read_settings(FLAGS))
    except CliError as e:
        return _error(str(e), e.code)
    except KeyboardInterrupt:
        return _error("interrupted (SIGINT); nothing was written", 128 + signal.SIGINT)
    except Interrupted as e:
        return _error(f"stopped by {signal.Signals(e.signum).name}; nothing was "
                      "written", 128 + e.signum)
    except Exception as e:
        from tfprec.errors import TfprecError
        if isinstance(e, TfprecError):
            return _error(f"{type(e).__name__}: {e}", 2)
        if isinstance(e, OSError):
            return _error(f"{type(e).__name__}: {e}", 1)
        raise


def parse_flags(argv):
    """absl's flag parsing, with a bad flag reported as one line
    ``tfprec: error: ...`` and exit status 2 (absl's own: 1)."""
    try:
        return FLAGS(argv)
    except flags.Error as e:
        print(f"tfprec: error: {e} (see --help)", file=sys.stderr, flush=True)
        sys.exit(2)


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
    app.run(main, argv=args, flags_parser=parse_flags)


if __name__ == "__main__":
    run()
