"""tfprec: analytical minimum per-layer fixed-point precision for tf_keras models.

Implements Sakr & Shanbhag, "An Analytical Method to Determine Minimum
Per-Layer Precision of Deep Neural Networks", ICASSP 2018.  Importing tfprec
sets ``TF_USE_LEGACY_KERAS=1`` (see :mod:`tfprec._tf`) before TensorFlow loads.
"""
from tfprec import _tf  # noqa: F401  (must come first: selects Keras 2)
from tfprec.errors import (ExportError, InvalidDataError, PlanError, TfprecError,
                           UnattainableTargetError, UnsupportedModelError)
from tfprec.cost import PlanCost, compute_cost, memory_cost
from tfprec.gains import LayerGains, NoiseGains, noise_gains
from tfprec.plan import (LayerPrecision, PrecisionPlan, cost_aware_plan,
                         icml2017_plan, make_plan, paper_plan,
                         per_example_bound, per_example_cost_aware_plan,
                         uniform_plan)
from tfprec.callback import NoiseGainCallback
from tfprec.quantizers import FixedPointQuantizer
from tfprec.configs import FixedPointQuantizeConfig, quantize_scope
from tfprec.apply import fold_batchnorm, logits_model, quantize_model
from tfprec.simulate import simulate_logits
from tfprec.validate import ValidationResult, sweep
from tfprec.calibrate import CalibratedPlan, CalibrationResult, clopper_pearson_upper
from tfprec import calibrate, data, export, models, validate  # noqa: F401  submodules

__version__ = "0.1.0"
