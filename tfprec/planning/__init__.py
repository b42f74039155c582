"""Stage 2, planning: per-layer bit-widths from the noise gains.

* :mod:`~tfprec.planning.plan`: :class:`PrecisionPlan`, the paper's rule, its
  baselines and the cost-aware allocation;
* :mod:`~tfprec.planning.cost`: the complexity model of METHOD.md section 4
  (full adders, bits);
* :mod:`~tfprec.planning.calibrate`: the cheapest plan meeting a *measured*
  target on held-out data.
"""
