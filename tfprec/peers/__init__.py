"""Peer allocation methods tfprec is compared against (benchmarks/peers.py).

* :mod:`~tfprec.peers.hessian`: Hessian-trace sensitivity (HAWQ-v2 /
  PyHessian style Hutchinson estimates);
* :mod:`~tfprec.peers.hawq`: HAWQ-v2 allocation at a cost budget;
* :mod:`~tfprec.peers.greedy`: simulation-driven greedy search;
* :mod:`~tfprec.peers.matched`: matched comparisons (level grids of equal
  resolution, selection / report splits, the predictor-based plan at a
  budget).
"""
