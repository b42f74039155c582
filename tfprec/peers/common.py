"""Transitional: the argument helpers ``peers/hawq.py`` still imports.

To be deleted once hawq uses :func:`tfprec.planning.budget.cost_kind` /
:func:`~tfprec.planning.budget.cost_unit` and builds its template plan itself.
"""
from __future__ import annotations

from tfprec.errors import PlanError
from tfprec.planning import plan as plan_lib
from tfprec.planning.budget import cost_kind as _check_cost_kind  # noqa: F401
from tfprec.planning.budget import cost_unit as _unit  # noqa: F401
from tfprec.statistics.gains import NoiseGains


def _template(gains_or_plan) -> plan_lib.PrecisionPlan:
    """A plan carrying formats, gains and geometry, from gains or a plan."""
    if isinstance(gains_or_plan, NoiseGains):
        return plan_lib.uniform_plan(gains_or_plan, bits=8)
    if isinstance(gains_or_plan, plan_lib.PrecisionPlan):
        return gains_or_plan
    raise PlanError("expected tfprec.NoiseGains (from noise_gains) or a "
                    f"PrecisionPlan to take formats from, got "
                    f"{type(gains_or_plan).__name__}.")
