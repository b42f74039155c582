"""tfprec: analytical minimum per-layer fixed-point precision for tf_keras models.

Implements Sakr & Shanbhag, "An Analytical Method to Determine Minimum
Per-Layer Precision of Deep Neural Networks", ICASSP 2018.  Importing tfprec
sets ``TF_USE_LEGACY_KERAS=1`` (as :mod:`tfprec._tf` does) so that a
TensorFlow imported afterwards selects Keras 2, but does not import
TensorFlow itself: the public names below load their modules on first use
(PEP 562), so ``import tfprec`` and the command line's flag checks are fast.
``tfprec.noise_gains``, ``from tfprec import PrecisionPlan`` and the stage
modules ``tfprec.validate``, ``tfprec.calibrate``, ``tfprec.export``,
``tfprec.data``, ``tfprec.models`` work as before.

Subpackages follow the pipeline: :mod:`tfprec.statistics` (noise gains),
:mod:`tfprec.planning` (bit-widths, cost, calibration),
:mod:`tfprec.quantization` (fake-quant model, validation),
:mod:`tfprec.export` (TFLite), :mod:`tfprec.application` (data, models,
report, CLI) and :mod:`tfprec.peers` (methods compared against).
"""
import importlib
import importlib.util
import os

# The same setting as tfprec._tf (which every TensorFlow import of tfprec
# goes through), made here too so that a TensorFlow the user imports right
# after ``import tfprec`` selects Keras 2 as well.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from tfprec.errors import (ExportError, InvalidDataError, PlanError,  # noqa: E402,F401
                           TfprecError, TfprecWarning, UnattainableTargetError,
                           UnsupportedModelError)

__version__ = "0.1.0"

# public name -> the module that defines it (loaded on first access)
_LAZY = {
    "PlanCost": "tfprec.planning.cost", "compute_cost": "tfprec.planning.cost",
    "memory_cost": "tfprec.planning.cost",
    "LayerGains": "tfprec.statistics.gains", "NoiseGains": "tfprec.statistics.gains",
    "noise_gains": "tfprec.statistics.gains",
    "LayerPrecision": "tfprec.planning.plan", "PrecisionPlan": "tfprec.planning.plan",
    "icml2017_plan": "tfprec.planning.rules", "paper_plan": "tfprec.planning.rules",
    "uniform_plan": "tfprec.planning.rules",
    "cost_aware_plan": "tfprec.planning.cost_aware",
    "make_plan": "tfprec.planning.cost_aware",
    "per_example_bound": "tfprec.planning.cost_aware",
    "per_example_cost_aware_plan": "tfprec.planning.cost_aware",
    "NoiseGainCallback": "tfprec.statistics.callback",
    "FixedPointQuantizer": "tfprec.quantization.quantizers",
    "FixedPointQuantizeConfig": "tfprec.quantization.configs",
    "quantize_scope": "tfprec.quantization.configs",
    "fold_batchnorm": "tfprec.quantization.apply",
    "logits_model": "tfprec.quantization.apply",
    "quantize_model": "tfprec.quantization.apply",
    "optimize_rounding": "tfprec.quantization.rounding",
    "RoundedModel": "tfprec.quantization.rounding",
    "simulate_logits": "tfprec.quantization.simulate",
    "ValidationResult": "tfprec.quantization.validate",
    "sweep": "tfprec.quantization.validate",
    "CalibratedPlan": "tfprec.planning.evaluate",
    "CalibrationResult": "tfprec.planning.evaluate",
    "clopper_pearson_upper": "tfprec.planning.calibrate",
    "predicted_mismatch": "tfprec.planning.predict",
}
# stage modules reachable as tfprec.<name> (tfprec.validate.validate, ...)
_LAZY_MODULES = {
    "export": "tfprec.export", "data": "tfprec.application.data",
    "models": "tfprec.application.models", "calibrate": "tfprec.planning.calibrate",
    "validate": "tfprec.quantization.validate",
}
# tfprec's own Keras custom objects (models.ClipWeights): registered whenever
# a module that works with Keras models is loaded, so that tfprec's saved
# models always reload.
_CUSTOM_OBJECTS_MODULE = "tfprec.application.models"

__all__ = sorted(["ExportError", "InvalidDataError", "PlanError", "TfprecError", "TfprecWarning",
                  "UnattainableTargetError", "UnsupportedModelError", "__version__",
                  *_LAZY, *_LAZY_MODULES])


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    elif name in _LAZY_MODULES:
        value = importlib.import_module(_LAZY_MODULES[name])
    elif not name.startswith("_") and importlib.util.find_spec(f"tfprec.{name}"):
        # a subpackage reached as an attribute (tfprec.planning.select, ...),
        # as worked when ``import tfprec`` imported everything
        value = importlib.import_module(f"tfprec.{name}")
    else:
        raise AttributeError(f"module 'tfprec' has no attribute {name!r}")
    importlib.import_module(_CUSTOM_OBJECTS_MODULE)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
