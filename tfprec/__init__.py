"""tfprec: analytical minimum per-layer fixed-point precision for tf_keras models.

Implements Sakr & Shanbhag, "An Analytical Method to Determine Minimum
Per-Layer Precision of Deep Neural Networks", ICASSP 2018.  Importing tfprec
sets ``TF_USE_LEGACY_KERAS=1`` (see :mod:`tfprec._tf`) before TensorFlow loads.

Subpackages follow the pipeline: :mod:`tfprec.statistics` (noise gains),
:mod:`tfprec.planning` (bit-widths, cost, calibration),
:mod:`tfprec.quantization` (fake-quant model, validation),
:mod:`tfprec.export` (TFLite), :mod:`tfprec.application` (data, models,
report, CLI) and :mod:`tfprec.peers` (methods compared against).
"""
from tfprec import _tf  # noqa: F401  (must come first: selects Keras 2)
from tfprec.errors import (ExportError, InvalidDataError, PlanError, TfprecError,
                           UnattainableTargetError, UnsupportedModelError)
from tfprec.planning.cost import PlanCost, compute_cost, memory_cost
from tfprec.statistics.gains import LayerGains, NoiseGains, noise_gains
from tfprec.planning.plan import LayerPrecision, PrecisionPlan
from tfprec.planning.rules import icml2017_plan, paper_plan, uniform_plan
from tfprec.planning.cost_aware import (cost_aware_plan, make_plan, per_example_bound,
                                        per_example_cost_aware_plan)
from tfprec.statistics.callback import NoiseGainCallback
from tfprec.quantization.quantizers import FixedPointQuantizer
from tfprec.quantization.configs import FixedPointQuantizeConfig, quantize_scope
from tfprec.quantization.apply import fold_batchnorm, logits_model, quantize_model
from tfprec.quantization.simulate import simulate_logits
from tfprec.quantization.validate import ValidationResult, sweep
from tfprec.planning.evaluate import CalibratedPlan, CalibrationResult
from tfprec.planning.calibrate import clopper_pearson_upper
# Stage modules users reach as tfprec.<name> (tfprec.validate.validate, ...).
from tfprec import export  # noqa: F401
from tfprec.application import data, models  # noqa: F401
from tfprec.planning import calibrate  # noqa: F401
from tfprec.quantization import validate  # noqa: F401

__version__ = "0.1.0"
