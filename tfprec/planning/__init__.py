"""Stage 2, planning: per-layer bit-widths from the noise gains.

* :mod:`~tfprec.planning.plan`: :class:`PrecisionPlan` and its JSON form;
* :mod:`~tfprec.planning.rules`: the paper's rule (ICASSP 2018) and its
  baselines (uniform, ICML 2017);
* :mod:`~tfprec.planning.cost_aware`: the cheapest plan under the analytic
  or the per-example bound;
* :mod:`~tfprec.planning.search`: the one exact multiple-choice knapsack and
  the one greedy descent (both bounds);
* :mod:`~tfprec.planning.cost`: the complexity model of METHOD.md section 4
  (full adders, bits);
* :mod:`~tfprec.planning.evaluate`: the one fake-quant evaluator and the
  calibration result types;
* :mod:`~tfprec.planning.calibrate`: the cheapest plan meeting a *measured*
  target on held-out data;
* :mod:`~tfprec.planning.budget`: the one bisection (levels, bound targets,
  budgets), plans at a cost budget;
* :mod:`~tfprec.planning.select`: every rule's plan at a target or budget and
  the choice among them (what the command line runs).
"""
