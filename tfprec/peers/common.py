"""Argument checks shared by the peer methods (to be folded into tfprec.inputs)."""
from __future__ import annotations

import dataclasses
import math
import weakref
from typing import Optional, Sequence, Union

import numpy as np

from tfprec.planning import cost as cost_lib
from tfprec import fixedpoint
from tfprec.planning import plan as plan_lib
from tfprec.statistics import registry
from tfprec._tf import tf
from tfprec.errors import InvalidDataError, PlanError, UnattainableTargetError
from tfprec.statistics.gains import NoiseGains
from tfprec.statistics.graph import WEIGHT_KINDS, parse_model



# ====================================================== checks of inputs
def _pos_int(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise InvalidDataError(f"{name} must be a positive int, got {v!r}")
    return int(v)


def _xy(x, y, in_shape: tuple, num_classes: int, what: str):
    """Checks inputs and integer labels; returns (x float array, y int64)."""
    if y is None:
        raise InvalidDataError(
            f"{what} needs labels y: it measures the training loss (sparse "
            "categorical cross-entropy of the logits) or the accuracy, which "
            "are defined only with the true classes. Pass y as N integer "
            "class ids.")
    if isinstance(x, (list, tuple)) or not hasattr(x, "shape"):
        raise InvalidDataError("pass inputs x as one numpy array [N, ...].")
    x = np.asarray(x)
    if x.ndim < 1 or x.dtype.kind not in "fiub":
        raise InvalidDataError(f"inputs x must be a numeric array, got dtype "
                               f"{x.dtype} and shape {x.shape}.")
    if tuple(x.shape[1:]) != tuple(in_shape):
        raise InvalidDataError(f"inputs x have per-example shape "
                               f"{tuple(x.shape[1:])}, but the model expects "
                               f"{tuple(in_shape)}.")
    if len(x) == 0:
        raise InvalidDataError(f"{what}: no examples (x is empty).")
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == num_classes and y.shape[1] > 1:
        y = y.argmax(axis=1)          # one-hot rows
    if y.ndim != 1 or len(y) != len(x) or y.dtype.kind not in "iu":
        raise InvalidDataError(
            f"labels y must be {len(x)} integer class ids (or one-hot rows), "
            f"got dtype {y.dtype} and shape {y.shape}.")
    if y.min() < 0 or y.max() >= num_classes:
        raise InvalidDataError(f"labels y must lie in 0..{num_classes - 1}; "
                               f"got {int(y.min())}..{int(y.max())}.")
    if not np.all(np.isfinite(x.reshape(len(x), -1))):
        raise InvalidDataError("inputs x contain NaN or Inf.")
    return x, y.astype(np.int64)


def _template(gains_or_plan) -> plan_lib.PrecisionPlan:
    """A plan carrying formats, gains and geometry, from gains or a plan."""
    if isinstance(gains_or_plan, NoiseGains):
        return plan_lib.uniform_plan(gains_or_plan, bits=8)
    if isinstance(gains_or_plan, plan_lib.PrecisionPlan):
        return gains_or_plan
    raise PlanError("expected tfprec.NoiseGains (from noise_gains) or a "
                    f"PrecisionPlan to take formats from, got "
                    f"{type(gains_or_plan).__name__}.")


def _check_cost_kind(cost: str) -> str:
    if cost not in cost_lib.COST_KINDS:
        raise PlanError(f"cost must be one of {cost_lib.COST_KINDS}, got {cost!r}")
    return cost


def _check_bits(min_bits, max_bits):
    for n, b in (("min_bits", min_bits), ("max_bits", max_bits)):
        if (isinstance(b, bool) or not isinstance(b, (int, np.integer))
                or not fixedpoint.MIN_BITS <= b <= fixedpoint.MAX_BITS):
            raise PlanError(f"{n}={b!r} must be an int in {fixedpoint.MIN_BITS}.."
                            f"{fixedpoint.MAX_BITS}")
    if min_bits > max_bits:
        raise PlanError(f"min_bits={min_bits} exceeds max_bits={max_bits}")
    return int(min_bits), int(max_bits)


def _unit(cost: str) -> str:
    return "full adders" if cost == "compute" else "bits"
