"""Keras callback that gathers noise gains and a precision plan.

    cb = tfprec.NoiseGainCallback(x_calib, log_dir="logs/tfprec")
    model.fit(x, y, epochs=10, callbacks=[cb])
    cb.gains, cb.plan          # after training
    cb.history                 # one entry per statistics pass

The callback only reads the model: the pass works on a folded copy of the
weights, so weights and optimizer state are untouched.
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Optional


from tfprec import fileio, inputs
from tfprec._tf import keras, tf
from tfprec.errors import ExportError, InvalidDataError, PlanError
from tfprec.statistics.graph import parse_model
from tfprec.statistics.gains import NoiseGains, noise_gains
from tfprec.planning.cost import COST_KINDS
from tfprec.planning.plan import DEFAULT_TARGET, PrecisionPlan
from tfprec.planning.cost_aware import PLAN_METHODS, make_plan

#: The callback's plan methods: "measured" (the default: the cheapest plan
#: whose MEASURED float/fixed-point mismatch on held-out inputs is at most
#: ``target``, by :func:`tfprec.planning.calibrate.calibrate`) and the
#: analytic rules of :data:`PLAN_METHODS` (the plan's bound <= ``target``).
CALLBACK_METHODS = ("measured",) + tuple(PLAN_METHODS)


@dataclasses.dataclass(frozen=True)
class StatisticsPass:
    """One statistics pass: the epoch after which it ran (-1: end of
    training), the gains and the plan made from them."""

    epoch: int
    gains: NoiseGains
    plan: PrecisionPlan


def _data_like(d) -> bool:
    """An array, a tf.data.Dataset, or (the inputs of a model with several
    inputs, :mod:`tfprec.packing`) a non-empty list, tuple or dict of arrays;
    checked against the model when training begins."""
    if isinstance(d, dict):
        d = list(d.values())
    if isinstance(d, (list, tuple)):
        return len(d) > 0 and all(hasattr(a, "shape") for a in d)
    return isinstance(d, tf.data.Dataset) or hasattr(d, "shape")


def _inputs_of(d, model):
    """``d`` without labels: for a model with one input, Keras'
    ``validation_data`` form ``(x, y)`` or ``(x, y, sample_weight)`` gives
    ``x`` (the pass and the mismatch need no labels); anything else as is."""
    if isinstance(d, (list, tuple)) and len(model.inputs) == 1 and len(d) in (2, 3):
        return d[0]
    return d


class NoiseGainCallback(keras.callbacks.Callback):
    """Runs the noise-gain pass after training (and every N epochs if asked).

    Args:
      calibration_data: inputs for the pass (numpy array or tf.data.Dataset;
        for a model with several inputs a list / tuple in ``model.inputs``
        order or a dict keyed by input name, see :mod:`tfprec.packing`;
        for a model with one input ``(x, y)`` is accepted, its labels unused).
      target: for ``method="measured"`` (the default), the largest fraction
        of held-out inputs whose fixed-point decision may differ from the
        float one (measured, no labels needed); for the analytic methods, the
        bound on the mismatch probability.  A probability, default 0.01.
      method: ``"measured"`` (default; plans that deploy as integer models on
        a normal network, the analytic bound is still recorded in the plan)
        or an analytic rule of ``tfprec.planning.cost_aware.PLAN_METHODS``
        (``"paper"``, ``"cost_aware"``, ...: the paper's faithful bound,
        conservative by one to three orders of magnitude).
      heldout_data: held-out inputs (numpy or tf.data; labels not needed,
        and for a model with one input Keras' ``validation_data`` form
        ``(x_val, y_val)`` is accepted, its labels unused) on which
        ``method="measured"`` measures the mismatch.  Default: the
        calibration examples are split, the first half for the gains, the
        second half held out.
      cost: "compute" (full adders) or "memory" (bits), for cost_aware.
      every_n_epochs: also run after every N-th epoch (None: only at the end).
      batch_size: examples per batch of the pass (None: the automatic batch
        of :func:`~tfprec.statistics.gains.noise_gains`).
      max_examples: use at most this many calibration examples.
      per_channel: weights of Dense / Conv2D / DepthwiseConv2D layers on
        one range per output channel (``noise_gains(per_channel=True)``).
      log_dir: if set, write per-layer gains, bits and the bound to
        TensorBoard under this directory (step = epoch).
      verbose: show a Keras progress bar during the pass.

    Everything that can be checked before training is: the arguments when
    the callback is made, the model (supported by tfprec), the calibration
    data (type, per-example shape, dtype, finite cardinality) and the
    log_dir (created, writable) in ``on_train_begin``, so ``fit`` fails
    before its first epoch, not after a full run.

    Raises:
      InvalidDataError (a TfprecError): a bad every_n_epochs, batch_size,
        max_examples or calibration_data (when the callback is
        made; the data's shape and cardinality when training begins).
      PlanError: a bad method, target or cost (when the callback is made).
      ExportError: log_dir cannot be created or written (a path under a
        file, an unwritable folder): when the callback is made, or when
        training begins.
      UnsupportedModelError: the model cannot be analyzed (when training
        begins).
    """

    def __init__(self, calibration_data, target: float = DEFAULT_TARGET,
                 method: str = "measured", cost: str = "compute",
                 heldout_data=None,
                 every_n_epochs: Optional[int] = None, batch_size: Optional[int] = None,
                 max_examples: Optional[int] = None, log_dir: Optional[str] = None,
                 verbose: bool = True, per_channel: bool = False):
        super().__init__()
        # Checked now, not after a training run.
        self.method = inputs.choice("method", method, CALLBACK_METHODS)
        self.every_n_epochs = inputs.optional_positive_int("every_n_epochs",
                                                           every_n_epochs)
        self.batch_size = inputs.optional_positive_int("batch_size", batch_size)
        self.max_examples = inputs.optional_positive_int("max_examples", max_examples)
        self.per_channel = inputs.flag("per_channel", per_channel)
        self.target = inputs.probability("target", target, error=PlanError)
        self.cost = inputs.choice("cost", cost, COST_KINDS, error=PlanError)
        self.verbose = verbose
        if calibration_data is None or not _data_like(calibration_data):
            raise InvalidDataError(
                "calibration_data must be a numpy array [N, ...] or a "
                "tf.data.Dataset (for a model with several inputs: a list, tuple "
                f"or dict of arrays), got {type(calibration_data).__name__}.")
        self.calibration_data = calibration_data
        if heldout_data is not None and not _data_like(heldout_data):
            raise InvalidDataError(
                "heldout_data must be a numpy array [N, ...], a tf.data.Dataset "
                "(for a model with several inputs: a list, tuple or dict of "
                f"arrays) or None, got {type(heldout_data).__name__}.")
        self.heldout_data = heldout_data
        self.log_dir = None if log_dir is None else _check_log_dir(log_dir)
        self.history: list = []
        self._writer = None
        self._last_epoch = -1

    @property
    def gains(self) -> Optional[NoiseGains]:
        """Gains of the latest pass (None before any pass)."""
        return self.history[-1].gains if self.history else None

    @property
    def plan(self) -> Optional[PrecisionPlan]:
        """Plan of the latest pass (None before any pass)."""
        return self.history[-1].plan if self.history else None

    def run(self, model, epoch: int = -1) -> StatisticsPass:
        """Runs the statistics pass on ``model`` now and records it."""
        graph = parse_model(model)
        self._check_data(model, graph)      # named as passed: heldout_data, not x_val
        calib = _inputs_of(self.calibration_data, model)
        heldout = None if self.heldout_data is None else _inputs_of(self.heldout_data, model)
        if self.method == "measured" and heldout is None:
            x = inputs.as_inputs(calib, graph.shapes[graph.input_id],
                                 dtype=inputs.model_dtype(model),
                                 what="calibration_data", max_examples=self.max_examples)
            if len(x) < 2:
                raise InvalidDataError(
                    "calibration_data: method='measured' splits it into gains and "
                    f"held-out halves and needs at least 2 examples, got {len(x)} "
                    "(or pass heldout_data)")
            half = len(x) // 2
            calib, heldout = x[:half], x[half:]
        # the predicted-mismatch method needs the per-class terms
        extra = {"per_class": True} if self.method == "cost_aware_predicted" else {}
        extra["per_channel"] = self.per_channel
        g = noise_gains(model, calib, batch_size=self.batch_size,
                        max_examples=self.max_examples, verbose=self.verbose, **extra)
        if self.method == "measured":
            from tfprec.planning.calibrate import calibrate   # local: heavy import
            p = calibrate(model, g, heldout, None, target_mismatch=self.target,
                          cost=self.cost, batch_size=max(self.batch_size or 256, 256)).best.plan
        else:
            p = make_plan(g, self.method, self.target, self.cost)
        entry = StatisticsPass(epoch, g, p)
        self.history.append(entry)
        if self.log_dir:
            self._log(entry, step=max(epoch, self._last_epoch) + (epoch < 0))
        return entry

    def _check_data(self, model, graph) -> None:
        """The calibration and held-out data against ``model``'s input,
        without reading their values (InvalidDataError naming them)."""
        shape = graph.shapes[graph.input_id]
        inputs.check_inputs_spec(_inputs_of(self.calibration_data, model), shape,
                                 what="calibration_data", max_examples=self.max_examples)
        if self.heldout_data is not None:
            inputs.check_inputs_spec(_inputs_of(self.heldout_data, model), shape,
                                     what="heldout_data")

    def on_train_begin(self, logs=None):
        """Checks the model, the calibration data and log_dir before the
        first epoch (UnsupportedModelError, InvalidDataError, ExportError)."""
        self._check_data(self.model, parse_model(self.model))
        if self.log_dir:
            try:
                os.makedirs(self.log_dir, exist_ok=True)
            except OSError as e:
                raise ExportError(f"log_dir {self.log_dir!r} cannot be created: "
                                  f"{e}") from None
            _check_log_dir(self.log_dir)

    def on_epoch_end(self, epoch, logs=None):
        self._last_epoch = epoch
        if self.every_n_epochs and (epoch + 1) % self.every_n_epochs == 0:
            self.run(self.model, epoch)

    def on_train_end(self, logs=None):
        if not self.history or self.history[-1].epoch != self._last_epoch:
            self.run(self.model, -1)

    def _log(self, entry: StatisticsPass, step: int) -> None:
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.log_dir)
        with self._writer.as_default(step=step):
            _scalar("tfprec/bound", entry.plan.bound())
            _scalar("tfprec/compute_full_adders", entry.plan.cost().total_compute)
            for lg, lp in zip(entry.gains.layers, entry.plan.layers):
                _scalar(f"tfprec/{lg.name}/log10_G_W", _log10(lg.g_w))
                _scalar(f"tfprec/{lg.name}/weight_bits", lp.weight_bits)
                if lp.act_bits is not None:     # None: an Embedding's ids
                    _scalar(f"tfprec/{lg.name}/log10_G_A", _log10(lg.g_a))
                    _scalar(f"tfprec/{lg.name}/act_bits", lp.act_bits)
        self._writer.flush()


def _scalar(tag: str, value: float) -> None:
    """A TensorBoard scalar, written with core TF ops only.

    tf.summary.scalar needs the tensorboard package; tf.summary.write with
    the scalars plugin's metadata gives the same event without it.
    """
    md = tf.compat.v1.SummaryMetadata()
    md.plugin_data.plugin_name = "scalars"
    tf.summary.write(tag, tf.constant(value, tf.float32), metadata=md)


def _check_log_dir(log_dir) -> str:
    """``log_dir`` as a str, if it is (or can be made as) a writable folder:
    an existing path must be a writable folder; otherwise its nearest
    existing parent must be one.  ExportError naming log_dir if not."""
    if not isinstance(log_dir, (str, os.PathLike)) or not os.fspath(log_dir):
        raise ExportError(f"log_dir must be a folder path (str), got {log_dir!r}")
    path = os.fspath(log_dir)
    anchor = fileio.nearest_existing_dir(path)
    if not os.path.isdir(anchor):
        raise ExportError(f"log_dir {path!r} cannot be created: {anchor!r} is "
                          "not a folder")
    if not os.access(anchor, os.W_OK | os.X_OK):
        raise ExportError(f"log_dir {path!r} is not writable (no write access to "
                          f"{anchor!r})")
    return path


def _log10(v: float) -> float:
    return math.log10(v) if v > 0 else float("-inf")
