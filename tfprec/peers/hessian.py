"""Hessian-trace sensitivity (HAWQ-v2, Dong et al., NeurIPS 2020; traces as in
PyHessian, Yao et al. 2020): per-layer Hutchinson estimates of the Hessian
trace of the training loss for weights and input activations."""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from tfprec import inputs
from tfprec._tf import tf
from tfprec.statistics.executor import Executor, executor_for
from tfprec.statistics.graph import parse_model


# ================================================ Hessian traces (HAWQ-v2)
@dataclasses.dataclass
class _TraceStats:
    weight_stderr: dict
    activation: dict
    activation_stderr: dict
    num_samples: int
    num_examples: int
    num_params: dict


class HessianTraces(dict):
    """Per-layer Hessian traces: a dict layer name -> Tr(H_W), plus extras.

    The dict values are Hutchinson estimates of the trace of the Hessian of
    the training loss L(W) = mean over the data of the sparse categorical
    cross-entropy of the logits, with respect to the layer's weights (kernel
    and bias together, BatchNormalization folded), in loss per squared
    weight unit.

    Attributes:
      activation: layer name -> mean over examples of the trace of the
        Hessian of that example's loss with respect to the layer's input
        activation (HAWQ-v2's activation sensitivity), loss per squared
        activation unit.
      weight_stderr, activation_stderr: layer name -> Monte-Carlo standard
        error of the estimate (standard deviation over probes / sqrt(probes);
        NaN with a single probe).
      num_samples: Hutchinson probes (Rademacher vectors) per batch.
      num_examples: examples averaged over.
      num_params: layer name -> number of weights (kernel + bias).
    """

    def __init__(self, weights: dict, stats: _TraceStats):
        super().__init__(weights)
        self.weight_stderr = stats.weight_stderr
        self.activation = stats.activation
        self.activation_stderr = stats.activation_stderr
        self.num_samples = stats.num_samples
        self.num_examples = stats.num_examples
        self.num_params = stats.num_params

    def __repr__(self) -> str:
        return (f"HessianTraces({dict(self)!r}, num_samples={self.num_samples}, "
                f"num_examples={self.num_examples})")


class _HvpPass:
    """Compiled Hessian-vector products on the graph executor.

    The executor's forward pass is run with the folded kernel and bias of
    every weight op passed in as tensors and a zero tensor e_l added to
    every weight op's input, so that derivatives with respect to e_l are
    derivatives with respect to that layer's input activation.
    """

    def __init__(self, ex: Executor):
        self.ex = ex
        g = ex.g
        shape = [None, *g.shapes[g.input_id]]
        sig = [tf.TensorSpec(shape, ex.dtype), tf.TensorSpec([None], tf.int64),
               tf.TensorSpec([2], tf.int64)]
        self.fns = {
            "joint": tf.function(lambda x, y, s: self._quad(x, y, s, False),
                                 input_signature=sig),
            "per_block": tf.function(lambda x, y, s: self._quad(x, y, s, True),
                                     input_signature=sig)}

    def loss_sum(self, x, y, params, eps):
        z = self.ex.forward(x, params, eps, pool_by_gather=True)[self.ex.g.output_id]
        return tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=y, logits=z))

    def zeros_eps(self, x):
        n = tf.shape(x)[0]
        g = self.ex.g
        return [tf.zeros(tf.concat([[n], list(g.shapes[op.inputs[0]])], 0),
                         self.ex.dtype) for op in self.ex.weight_ops]

    # ------------------------------------------------------------- HVP
    def hvp(self, x, y, params, eps, tangents):
        """(H v) for the summed loss, by forward-over-backward.

        ``params`` is a flat list of weight tensors, ``eps`` the zero
        activation perturbations; ``tangents`` matches params + eps.
        """
        primals = list(params) + list(eps)
        with tf.autodiff.ForwardAccumulator(primals, tangents) as acc:
            with tf.GradientTape() as tape:
                tape.watch(primals)
                loss = self.loss_sum(x, y, self._pack(params), eps)
            grads = tape.gradient(loss, primals,
                                  unconnected_gradients=tf.UnconnectedGradients.ZERO)
            # an Embedding's table gradient comes as IndexedSlices
            grads = [tf.convert_to_tensor(g) for g in grads]
        return acc.jvp(grads, unconnected_gradients=tf.UnconnectedGradients.ZERO)

    def flat_params(self):
        """Current weights as tensors (read inside the compiled function)."""
        return [tf.convert_to_tensor(v) for kb in self.ex.params for v in kb
                if v is not None]

    def _pack(self, flat):
        it = iter(flat)
        return [(next(it), None if b is None else next(it)) for _, b in self.ex.params]

    def _blocks(self):
        """Indices into params + eps of each weight block, then each
        activation block."""
        wb, i = [], 0
        for _, b in self.ex.params:
            n = 1 if b is None else 2
            wb.append(list(range(i, i + n)))
            i += n
        ab = [[i + j] for j in range(len(self.ex.params))]
        return wb, ab

    def _rademacher(self, t, seed, i):
        s = tf.random.experimental.stateless_fold_in(seed, i)
        u = tf.random.stateless_uniform(tf.shape(t), s, dtype=self.ex.dtype)
        return tf.where(u < 0.5, -tf.ones_like(u), tf.ones_like(u))

    def _quad(self, x, y, seed, per_block: bool):
        """Per layer: v_W . (H v)_W and v_A . (H v)_A for Rademacher v.

        Joint: one v over every weight and activation, one HVP.  Per block:
        one HVP per block with v zero outside the block, so the quadratic
        form is exactly v_l^T H_ll v_l (2 L HVPs).
        """
        params = self.flat_params()
        eps = self.zeros_eps(x)
        prim = params + eps
        wb, ab = self._blocks()
        if not per_block:
            tangents = [self._rademacher(t, seed, i) for i, t in enumerate(prim)]
            hv = self.hvp(x, y, params, eps, tangents)
            dots = [tf.reduce_sum(v * h) for v, h in zip(tangents, hv)]
            quad = lambda blk: tf.add_n([dots[i] for i in blk])
            return (tf.stack([quad(b) for b in wb]),
                    tf.stack([quad(b) for b in ab]))
        out = []
        for blk in wb + ab:
            tangents = [self._rademacher(t, seed, i) if i in blk else tf.zeros_like(t)
                        for i, t in enumerate(prim)]
            hv = self.hvp(x, y, params, eps, tangents)
            out.append(tf.add_n([tf.reduce_sum(tangents[i] * hv[i]) for i in blk]))
        return tf.stack(out[:len(wb)]), tf.stack(out[len(wb):])


def hessian_trace_sensitivity(model, x, y, num_samples: int = 32,
                              batch_size: int = 500, seed: int = 0,
                              dtype: str = "float32",
                              probes: str = "joint") -> HessianTraces:
    """Per-layer Hessian traces of the training loss by Hutchinson's estimator.

    For the training loss L = mean over (x, y) of the sparse categorical
    cross-entropy of the logits (a final softmax is removed, as in tfprec's
    gains), estimates for every weight layer l

    * Tr(H_W,l): trace of d^2 L / dW_l^2, W_l = kernel and bias (BN folded);
    * E_x Tr(H_A,l): mean over examples of the trace of the Hessian of the
      example's loss with respect to the layer's input activation.

    Hutchinson: Tr(H) = E_v[v^T H v] for Rademacher v (exact for every v
    when H is diagonal).  H v is computed with one forward-over-backward
    pass (``tf.autodiff.ForwardAccumulator`` over a ``tf.GradientTape``) on
    a whole batch (no loop over examples).  Two probe schemes:

    * ``probes="joint"`` (default, cheapest): one v over all weights and all
      activations of the batch and one HVP per probe; v_l^T (H v)_l is an
      unbiased estimate of layer l's block trace (the cross-block terms
      vanish in expectation but add variance).
    * ``probes="per_block"`` (HAWQ-v2's per-block estimator): v is drawn on
      one block (a layer's weights, or its input activation) and zero
      elsewhere, one HVP per block, so each probe gives exactly
      v_l^T H_ll v_l; 2 L HVPs per probe.

    The loss of a batch is summed over its examples and the totals are
    divided by N, so the weight result is the trace for the loss averaged
    over all of x; the activation Hessian of the summed loss is block
    diagonal over examples, so its trace / N is the mean per-example trace.
    Work: ``num_samples`` probes per batch.

    Args:
      model: a trained tf_keras classifier tfprec supports (only read).
      x: inputs, numpy [N, ...] or a ``tf.data.Dataset`` (of (input, label)
        pairs when ``y`` is None); see :mod:`tfprec.inputs`.
      y: labels, N integer class ids (or one-hot rows).  Required unless x
        is a dataset of (input, label) pairs.
      num_samples: Rademacher probes per batch.
      batch_size: examples per HVP.
      seed: seed of the probes (results are deterministic).
      dtype: "float32" (default) or "float64".
      probes: "joint" or "per_block" (see above).

    Returns:
      :class:`HessianTraces` (a dict layer name -> weight trace, with
      activation traces and standard errors as attributes).

    Raises:
      InvalidDataError: labels missing, data empty / mis-shaped / not finite,
        or a bad argument.
      UnsupportedModelError: the model cannot be analyzed by tfprec.
    """
    num_samples = inputs.positive_int("num_samples", num_samples)
    batch_size = inputs.positive_int("batch_size", batch_size)
    dtype = inputs.choice("dtype", dtype, ("float32", "float64"))
    probes = inputs.choice("probes", probes, ("joint", "per_block"))
    graph = parse_model(model)
    x, y = inputs.as_examples(x, y, graph.shapes[graph.input_id], graph.num_classes,
                              dtype=dtype, need_labels=True)
    ex = executor_for(model, graph, tf.as_dtype(dtype))
    fn = ex.cached("hvp", _HvpPass).fns[probes]
    nl = len(ex.weight_ops)
    wsum = np.zeros((num_samples, nl))
    asum = np.zeros((num_samples, nl))
    n = len(x)
    for bi, s0 in enumerate(range(0, n, batch_size)):
        xb = tf.constant(x[s0:s0 + batch_size], dtype)
        yb = tf.constant(y[s0:s0 + batch_size])
        for s in range(num_samples):
            wq, aq = fn(xb, yb, tf.constant([seed, bi * num_samples + s], tf.int64))
            wsum[s] += wq.numpy()
            asum[s] += aq.numpy()
    wsum /= n
    asum /= n

    def stderr(a):
        if num_samples < 2:
            return np.full(a.shape[1], np.nan)
        return a.std(axis=0, ddof=1) / math.sqrt(num_samples)

    names = [op.name for op in ex.weight_ops]
    wse, ase = stderr(wsum), stderr(asum)
    nparams = {op.name: int(op.attrs["kernel"].size
                            + (0 if op.attrs["bias"] is None else op.attrs["bias"].size))
               for op in ex.weight_ops}
    stats = _TraceStats(
        weight_stderr=dict(zip(names, map(float, wse))),
        activation=dict(zip(names, map(float, asum.mean(axis=0)))),
        activation_stderr=dict(zip(names, map(float, ase))),
        num_samples=num_samples, num_examples=n, num_params=nparams)
    return HessianTraces(dict(zip(names, map(float, wsum.mean(axis=0)))), stats)
