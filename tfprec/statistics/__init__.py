"""Stage 1, statistics: parse the model, run the noise-gain pass.

* :mod:`~tfprec.statistics.graph`: a tf_keras model read into a small
  inference graph (BatchNormalization folded, final softmax dropped);
* :mod:`~tfprec.statistics.registry`: one record of functions per weight-layer
  kind (forward, input VJP, per-example squared weight-gradient norms,
  cost-model geometry);
* :mod:`~tfprec.statistics.executor`: the one executor of the parsed graph
  (weights as variables, forward pass, backward rules of the non-weight ops)
  and the one per-model cache; the gains pass and the Hessian peer run on it;
* :mod:`~tfprec.statistics.backward`: the gains pass (one forward, one
  stacked backward over the wrong classes);
* :mod:`~tfprec.statistics.gains`: :func:`noise_gains`, the per-tensor noise
  gains E_T of METHOD.md section 2;
* :mod:`~tfprec.statistics.callback`: :class:`NoiseGainCallback` for
  ``model.fit``.
"""
