"""Peer methods, implemented on tfprec's graph and plans for side-by-side runs.

Two families of mixed-precision tools that a user might choose instead of
tfprec's analytical noise gains:

* **Hessian-trace sensitivity** (HAWQ-v2, Dong et al., NeurIPS 2020; traces
  computed as in PyHessian, Yao et al. 2020).
  :func:`hessian_trace_sensitivity` estimates, per weight layer, the trace of
  the Hessian of the training loss with respect to the layer's weights, and
  the mean per-example trace with respect to the layer's input activation,
  with Hutchinson's estimator (Rademacher probes, Hessian-vector products by
  forward-over-backward differentiation).  :func:`hawq_plan` then chooses
  bits that minimize HAWQ-v2's perturbation metric at a cost budget.
* **Simulation-driven greedy search** (what search-based tools do):
  :func:`greedy_search_plan` lowers one tensor's precision at a time and
  keeps a change only if the measured fake-quant accuracy stays within a
  tolerance of float.

And two helpers that put tfprec on the same footing for a comparison:

* :func:`cost_aware_at_budget`: tfprec's plan for a cost budget, i.e. the
  :func:`tfprec.cost_aware_plan` with the smallest analytic bound whose cost
  fits the budget (bisection on the bound target);
* :func:`bisect_budget_plan`: tfprec's plan confirmed by measurement, i.e.
  the cheapest budget whose :func:`cost_aware_at_budget` plan keeps the
  measured fake-quant accuracy within a tolerance of float (bisection on
  the budget, a handful of fake-quant evaluations);
  :func:`bisect_target_plan` does the same on a grid of bound targets.

Every plan is a :class:`tfprec.PrecisionPlan` with the same formats (range
scales, signedness) as tfprec's own plans, so all of them are evaluated by
the same fake-quant model (:func:`tfprec.validate.quant_decisions`) and
priced by the same cost model (:mod:`tfprec.cost`).

Weights are the folded ones tfprec quantizes (BatchNormalization folded into
the preceding weight layer, :func:`tfprec.statistics.graph.parse_model`), so the
Hessian is taken with respect to exactly the tensors whose rounding the plan
decides.
"""
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

__all__ = ["HessianTraces", "hessian_trace_sensitivity", "hawq_plan",
           "greedy_search_plan", "cost_aware_at_budget", "bisect_budget_plan",
           "bisect_target_plan", "default_targets"]


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


class _HvpEngine:
    """Compiled forward + Hessian-vector product over a parsed graph.

    The forward pass mirrors tfprec's gains engine: the folded kernel and
    bias of every weight op are inputs of the function, and a zero tensor e_l
    is added to every weight op's input so that derivatives with respect to
    e_l are derivatives with respect to that layer's input activation.
    """

    def __init__(self, graph, dtype):
        self.g = graph
        self.dtype = dtype
        self.wops = graph.weight_ops
        # Variables, so one trace serves later calls; load() refreshes them.
        self.params = []
        for op in self.wops:
            k = tf.Variable(op.attrs["kernel"], dtype=dtype, trainable=False)
            b = (None if op.attrs["bias"] is None else
                 tf.Variable(op.attrs["bias"], dtype=dtype, trainable=False))
            self.params.append((k, b))
        shape = [None, *graph.shapes[graph.input_id]]
        sig = [tf.TensorSpec(shape, dtype), tf.TensorSpec([None], tf.int64),
               tf.TensorSpec([2], tf.int64)]
        self.fns = {
            "joint": tf.function(lambda x, y, s: self._quad(x, y, s, False),
                                 input_signature=sig),
            "per_block": tf.function(lambda x, y, s: self._quad(x, y, s, True),
                                     input_signature=sig)}

    def load(self, graph) -> None:
        """Copies the (folded) weights of a freshly parsed graph."""
        for (k, b), op in zip(self.params, graph.weight_ops):
            k.assign(op.attrs["kernel"])
            if b is not None:
                b.assign(op.attrs["bias"])

    # ---------------------------------------------------------- forward
    def forward(self, x, params, eps):
        vals = {self.g.input_id: x}
        wi = 0
        for op in self.g.ops:
            ins = [vals[i] for i in op.inputs]
            a = op.attrs
            k = op.kind
            if k in WEIGHT_KINDS:
                kern, bias = params[wi]
                attrs = dict(a, kernel_t=kern, bias_t=bias)
                y = registry.lookup(k).forward(attrs, ins[0] + eps[wi])
                wi += 1
            else:
                y = registry.forward_op(op, ins, self.g.shapes[op.output], self.dtype)
            vals[op.output] = y
        return vals[self.g.output_id]

    def loss_sum(self, x, y, params, eps):
        z = self.forward(x, params, eps)
        return tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=y, logits=z))

    def zeros_eps(self, x):
        n = tf.shape(x)[0]
        return [tf.zeros(tf.concat([[n], list(self.g.shapes[op.inputs[0]])], 0),
                         self.dtype) for op in self.wops]

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
        return acc.jvp(grads, unconnected_gradients=tf.UnconnectedGradients.ZERO)

    def flat_params(self):
        """Current weights as tensors (read inside the compiled function)."""
        out = []
        for k, b in self.params:
            out.append(tf.convert_to_tensor(k))
            if b is not None:
                out.append(tf.convert_to_tensor(b))
        return out

    def _pack(self, flat):
        it = iter(flat)
        return [(next(it), None if b is None else next(it)) for _, b in self.params]

    def _blocks(self):
        """Indices into params + eps of each weight block, then each
        activation block."""
        wb, i = [], 0
        for _, b in self.params:
            n = 1 if b is None else 2
            wb.append(list(range(i, i + n)))
            i += n
        ab = [[i + j] for j in range(len(self.params))]
        return wb, ab

    def _rademacher(self, t, seed, i):
        s = tf.random.experimental.stateless_fold_in(seed, i)
        u = tf.random.stateless_uniform(tf.shape(t), s, dtype=self.dtype)
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


_ENGINES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _hvp_engine(model, graph, dtype) -> _HvpEngine:
    """The model's cached HVP engine for ``dtype``, loaded with its weights."""
    per_model = _ENGINES.setdefault(model, {})
    engine = per_model.get(dtype.name)
    if engine is None:
        engine = per_model[dtype.name] = _HvpEngine(graph, dtype)
    else:
        engine.load(graph)
    return engine


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
      x: inputs, numpy [N, ...].
      y: labels, N integer class ids (or one-hot rows).  Required.
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
    num_samples = _pos_int("num_samples", num_samples)
    batch_size = _pos_int("batch_size", batch_size)
    if dtype not in ("float32", "float64"):
        raise InvalidDataError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    if probes not in ("joint", "per_block"):
        raise InvalidDataError(f"probes must be 'joint' or 'per_block', got {probes!r}")
    graph = parse_model(model)
    x, y = _xy(x, y, graph.shapes[graph.input_id], graph.num_classes,
               "hessian_trace_sensitivity")
    engine = _hvp_engine(model, graph, tf.as_dtype(dtype))
    fn = engine.fns[probes]
    nl = len(engine.wops)
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

    names = [op.name for op in engine.wops]
    wse, ase = stderr(wsum), stderr(asum)
    nparams = {op.name: int(op.attrs["kernel"].size
                            + (0 if op.attrs["bias"] is None else op.attrs["bias"].size))
               for op in engine.wops}
    stats = _TraceStats(
        weight_stderr=dict(zip(names, map(float, wse))),
        activation=dict(zip(names, map(float, asum.mean(axis=0)))),
        activation_stderr=dict(zip(names, map(float, ase))),
        num_samples=num_samples, num_examples=n, num_params=nparams)
    return HessianTraces(dict(zip(names, map(float, wsum.mean(axis=0)))), stats)


# =========================================================== HAWQ plan
def _cost_table(lp, kind, bits_w, bits_a) -> np.ndarray:
    return np.array([[cost_lib.layer_cost(lp, kind, act_bits=ba, weight_bits=bw)
                      for ba in bits_a] for bw in bits_w], float)


def _mckp_min(objs, costs, budget: float, units: int = 4000):
    """Multiple-choice knapsack: one option per group, min sum obj, cost <= budget.

    ``objs[g]``, ``costs[g]``: 1-D arrays over group g's options.  Each
    option's cost above its group's cheapest option is rounded *up* to units
    of (budget - cheapest plan) / units (so the result always fits the
    budget) and the objective is minimized exactly under that rounding by
    dynamic programming; then single options are swapped greedily while the
    exact budget allows and the objective drops.  Returns option indices or
    None when nothing fits.
    """
    base = [float(c.min()) for c in costs]
    slack = budget - sum(base)                  # budget above the cheapest plan
    if slack < 0:
        return None
    unit = slack / units if slack > 0 else 1.0
    f = np.zeros(units + 1)
    args = []
    for o, c, b0 in zip(objs, costs, base):
        extra = c - b0                          # >= 0; cheapest option is 0
        if slack > 0:
            q = np.ceil(extra / unit - 1e-9).astype(int)
        else:
            q = np.where(extra <= 0, 0, units + 1)
        q = np.maximum(q, 0)
        new = np.full(units + 1, np.inf)
        arg = np.full(units + 1, -1)
        for k in np.argsort(o, kind="stable"):
            if q[k] > units:
                continue
            cand = np.full(units + 1, np.inf)
            cand[q[k]:] = f[:units + 1 - q[k]] + o[k]
            better = cand < new
            new[better] = cand[better]
            arg[better] = k
        f = new
        args.append((q, arg))
    if not np.isfinite(f[units]):
        return None
    u = units
    pick = []
    for q, arg in reversed(args):
        k = int(arg[u])
        pick.append(k)
        u -= q[k]
    pick = pick[::-1]
    # Greedy improvement with exact costs (uses the slack rounding left).
    total = sum(c[k] for c, k in zip(costs, pick))
    while True:
        best = None
        for g, (o, c) in enumerate(zip(objs, costs)):
            k0 = pick[g]
            for k in range(len(o)):
                dobj = o[k] - o[k0]
                dc = c[k] - c[k0]
                if dobj >= -1e-300 or total + dc > budget * (1 + 1e-12):
                    continue
                score = -dobj / max(dc, 1e-300) if dc > 0 else math.inf
                if best is None or score > best[0]:
                    best = (score, g, k, dc)
        if best is None:
            return pick
        _, g, k, dc = best
        pick[g] = k
        total += dc


def hawq_plan(model, gains_or_plan, traces, budget: float, cost: str = "compute",
              act_bits: Union[str, int] = "hessian", min_bits: int = 2,
              max_bits: int = 16) -> plan_lib.PrecisionPlan:
    """HAWQ-v2-style mixed precision at a cost budget.

    Chooses per-layer bits minimizing HAWQ-v2's second-order perturbation
    metric

        Omega = sum_l Tr(H_W,l) / n_l * ||Q(W_l) - W_l||^2
              + sum_l E_x Tr(H_A,l) * Delta_A,l^2 / 12

    subject to total cost (tfprec's cost model, ``cost="compute"`` full
    adders or ``"memory"`` bits) <= ``budget``.  The weight term is
    HAWQ-v2's (average trace times the squared norm of the actual rounding
    error of the folded weights at each candidate bit-width, in tfprec's
    format: range R_W, round half up, saturate).  The activation term is
    HAWQ-v2's activation extension (trace of the activation Hessian,
    averaged over the data) with the expected squared rounding error of an
    activation, Delta^2/12 per element (the same noise model tfprec uses).
    Both terms estimate 2x the expected increase of the training loss.

    Activation choice: ``act_bits="hessian"`` (default) lets the activations
    compete for the budget through their Hessian traces, as HAWQ-v2 does,
    so HAWQ and tfprec's :func:`tfprec.cost_aware_plan` choose over the same
    set of tensors and bit-widths under the same cost model (the fair
    comparison).  An int fixes every activation at that many bits and
    allocates only the weights.

    The allocation is a multiple-choice knapsack (one (B_W, B_A) per layer)
    solved by dynamic programming over the budget (costs rounded up, so the
    plan always fits), followed by greedy refinement with exact costs.

    Args:
      model: the trained model the traces were computed for (weights are
        read to measure ||Q(W) - W||^2).
      gains_or_plan: :class:`tfprec.NoiseGains` of the model (formats and
        geometry; also lets the plan report tfprec's bound), or a
        :class:`tfprec.PrecisionPlan` to take them from.
      traces: :func:`hessian_trace_sensitivity` result (or a plain dict
        layer name -> weight trace when ``act_bits`` is an int).
      budget: largest allowed total cost (full adders or bits per example).
      cost: "compute" or "memory".
      act_bits: "hessian" or a fixed activation bit-width.
      min_bits, max_bits: allowed bit-widths.

    Returns:
      A :class:`tfprec.PrecisionPlan` with method ``"hawq:<cost>"``;
      ``info`` holds the objective, the budget and the activation choice.

    Raises:
      PlanError: traces do not cover the model's layers, bad arguments, or
        the gains / plan do not match the model.
      UnattainableTargetError: the budget is below the cheapest allowed plan.
    """
    cost = _check_cost_kind(cost)
    min_bits, max_bits = _check_bits(min_bits, max_bits)
    if isinstance(budget, bool) or not isinstance(budget, (int, float, np.number)) \
            or not (budget > 0 and math.isfinite(budget)):
        raise PlanError(f"budget must be a positive finite cost in "
                        f"{_unit(cost)}, got {budget!r}")
    budget = float(budget)
    tmpl = _template(gains_or_plan)
    tmpl.validate_for(model)
    graph = parse_model(model)
    wops = {op.name: op for op in graph.weight_ops}
    if not isinstance(traces, dict):
        raise PlanError(f"traces must be a dict layer name -> Hessian trace "
                        f"(hessian_trace_sensitivity), got {type(traces).__name__}")
    missing = [n for n in tmpl.names if n not in traces]
    if missing:
        raise PlanError(f"traces lack layers {missing}; they have "
                        f"{sorted(traces)}. Compute them for this model.")
    if act_bits == "hessian":
        act_tr = getattr(traces, "activation", None)
        if act_tr is None or any(n not in act_tr for n in tmpl.names):
            raise PlanError(
                "act_bits='hessian' needs activation traces "
                "(hessian_trace_sensitivity's result); pass act_bits=<int> "
                "to keep activations at a fixed precision instead.")
        bits_a = list(range(min_bits, max_bits + 1))
    elif (not isinstance(act_bits, bool) and isinstance(act_bits, (int, np.integer))
          and fixedpoint.MIN_BITS <= act_bits <= fixedpoint.MAX_BITS):
        act_tr = None
        bits_a = [int(act_bits)]
    else:
        raise PlanError(f"act_bits must be 'hessian' or an int in "
                        f"{fixedpoint.MIN_BITS}..{fixedpoint.MAX_BITS}, got {act_bits!r}")
    bits_w = list(range(min_bits, max_bits + 1))
    objs, costs, opts = [], [], []
    clipped = []
    for lp in tmpl.layers:
        op = wops[lp.name]
        tw = float(traces[lp.name])
        if not math.isfinite(tw):
            raise PlanError(f"trace of layer {lp.name!r} is not finite ({tw})")
        if tw < 0:
            clipped.append(lp.name)
            tw = 0.0
        ws = [op.attrs["kernel"]] + ([] if op.attrs["bias"] is None else [op.attrs["bias"]])
        n = sum(w.size for w in ws)
        err = np.array([sum(float(np.sum((fixedpoint.quantize(w, b, lp.weight_range, True)
                                          - w) ** 2)) for w in ws) for b in bits_w])
        ow = tw / n * err                                        # [len(bits_w)]
        if act_tr is not None:
            ta = max(float(act_tr[lp.name]), 0.0)
            oa = np.array([ta * fixedpoint.step(b, lp.act_range) ** 2 / 12.0
                           for b in bits_a])
        else:
            oa = np.zeros(1)
        objs.append((ow[:, None] + oa[None, :]).ravel())
        costs.append(_cost_table(lp, cost, bits_w, bits_a).ravel())
        opts.append([(bw, ba) for bw in bits_w for ba in bits_a])
    cheapest = sum(c.min() for c in costs)
    if budget < cheapest * (1 - 1e-12):
        raise UnattainableTargetError(
            f"budget {budget:.6g} {_unit(cost)} is below the cheapest plan "
            f"allowed ({cheapest:.6g} {_unit(cost)}: weights at {min_bits} bits"
            + (f", activations at {min_bits} bits" if act_tr is not None
               else f", activations fixed at {bits_a[0]} bits")
            + "); raise the budget or lower min_bits.")
    pick = _mckp_min(objs, costs, max(budget, cheapest))
    if pick is None:  # pragma: no cover - the cheapest plan always fits
        raise UnattainableTargetError(f"no plan fits budget {budget:.6g}")
    bw = {lp.name: opts[g][k][0] for g, (lp, k) in enumerate(zip(tmpl.layers, pick))}
    ba = {lp.name: opts[g][k][1] for g, (lp, k) in enumerate(zip(tmpl.layers, pick))}
    plan = tmpl.with_bits(weight_bits=bw, act_bits=ba, method=f"hawq:{cost}")
    objective = float(sum(o[k] for o, k in zip(objs, pick)))
    return dataclasses.replace(plan, target=None, info={
        "objective": objective, "budget": budget, "cost_kind": cost,
        "act_bits": act_bits if act_tr is None else "hessian",
        "negative_traces_clipped": clipped})


# ================================================ simulation-driven search
class _Evaluator:
    """Counts fake-quant evaluations of plans on fixed labelled data."""

    def __init__(self, model, x, y, batch_size):
        from tfprec.quantization import validate as _validate
        self.v = _validate
        self.model = model
        self.x, self.y = x, y
        self.batch_size = batch_size
        fdec = _validate.float_decisions(model, x, batch_size)
        self.float_accuracy = float(np.mean(fdec == y))
        self.evaluations = 0

    def accuracy(self, plan) -> float:
        self.evaluations += 1
        q = self.v.quant_decisions(self.model, plan, self.x, self.batch_size)
        return float(np.mean(q == self.y))

    def ok(self, acc: float, tolerance_pp: float) -> bool:
        return acc >= self.float_accuracy - tolerance_pp / 100.0 - 1e-12


def _check_tol(tolerance_pp) -> float:
    if isinstance(tolerance_pp, bool) or not isinstance(tolerance_pp, (int, float)) \
            or not (tolerance_pp >= 0 and math.isfinite(tolerance_pp)):
        raise InvalidDataError(f"tolerance_pp must be a non-negative number of "
                               f"percentage points, got {tolerance_pp!r}")
    return float(tolerance_pp)


def greedy_search_plan(model, gains, x, y, tolerance_pp: float = 0.1,
                       start_bits: int = 8, min_bits: int = 2,
                       batch_size: int = 256, cost: str = "compute"):
    """Simulation-driven greedy precision search (the search-based peers).

    Starts from every tensor at ``start_bits`` and repeats: among all
    single-step changes (one weight or activation tensor one bit lower, not
    below ``min_bits``), keep the one that saves the most cost (``cost``,
    tfprec's cost model) whose measured fake-quant top-1 accuracy on (x, y)
    is at least float accuracy - ``tolerance_pp`` percentage points; stop
    when no change qualifies.  Candidates are measured in order of
    decreasing saving and the first that qualifies is kept, which selects
    the same change as measuring all of them with fewer evaluations.  Every
    measurement is one fake-quant pass over x
    (:func:`tfprec.validate.quant_decisions`), counted in ``evaluations``;
    the float pass is not counted.

    Args:
      model: trained tf_keras classifier (only read).
      gains: :class:`tfprec.NoiseGains` of the model (formats and geometry
        only; the search does not use the gains).
      x, y: labelled data the accuracy is measured on (numpy; y required).
      tolerance_pp: allowed accuracy drop, percentage points.
      start_bits, min_bits: starting and smallest bit-width.
      batch_size: examples per fake-quant batch.
      cost: "compute" or "memory".

    Returns:
      (plan, evaluations): the final :class:`tfprec.PrecisionPlan`
      (method "greedy_search"; ``info`` has the float and quantized
      accuracies, rounds, evaluations, and
      ``evaluations_if_all_candidates``: how many a search that measures
      every candidate of every round would need) and the number of
      fake-quant evaluations.

    Raises:
      InvalidDataError: labels missing or data malformed.
      UnattainableTargetError: the start plan itself misses the tolerance.
      PlanError: bad bit arguments or gains that do not match the model.
    """
    cost = _check_cost_kind(cost)
    min_bits, start_bits = _check_bits(min_bits, start_bits)
    tol = _check_tol(tolerance_pp)
    batch_size = _pos_int("batch_size", batch_size)
    graph = parse_model(model)
    x, y = _xy(x, y, graph.shapes[graph.input_id], graph.num_classes,
               "greedy_search_plan")
    plan = _template(gains)
    plan = plan.with_bits(weight_bits={n: start_bits for n in plan.names},
                          act_bits={n: start_bits for n in plan.names},
                          method="greedy_search")
    plan.validate_for(model)
    ev = _Evaluator(model, x, y, batch_size)
    acc = ev.accuracy(plan)
    if not ev.ok(acc, tol):
        raise UnattainableTargetError(
            f"the uniform {start_bits}-bit start plan already has accuracy "
            f"{100 * acc:.2f} % vs float {100 * ev.float_accuracy:.2f} %, more "
            f"than {tol:g} pp lower; raise start_bits.")
    rounds = 0
    tried_all = 1          # evaluations if every candidate were measured
    while True:
        cur = plan.cost().total(cost)
        cands = []
        for lp in plan.layers:
            for which in ("w", "a"):
                b = lp.weight_bits if which == "w" else lp.act_bits
                if b <= min_bits:
                    continue
                kw = {"weight_bits" if which == "w" else "act_bits": {lp.name: b - 1}}
                p = plan.with_bits(**kw)
                cands.append((cur - p.cost().total(cost), len(cands), p))
        cands.sort(key=lambda c: (-c[0], c[1]))
        tried_all += len(cands)
        accepted = None
        for _, _, p in cands:
            a = ev.accuracy(p)
            if ev.ok(a, tol):
                accepted = (p, a)
                break
        if accepted is None:
            break
        plan, acc = accepted
        rounds += 1
    plan = dataclasses.replace(plan, info={
        "float_accuracy": ev.float_accuracy, "quant_accuracy": acc,
        "tolerance_pp": tol, "rounds": rounds, "evaluations": ev.evaluations,
        "evaluations_if_all_candidates": tried_all, "cost_kind": cost})
    return plan, ev.evaluations


# ====================================== tfprec on the same footing
def cost_aware_at_budget(gains, budget: float, cost: str = "compute",
                         max_bits: int = 16, precision: float = 2e-3,
                         iterations: int = 60):
    """tfprec's plan for a cost budget: the smallest-bound cost-aware plan
    that fits.

    Bisects log10 of the bound target of :func:`tfprec.cost_aware_plan`
    (a smaller target gives a costlier plan) between the bounds of the
    uniform ``max_bits`` and all-2-bit plans, until the bracket is narrower
    than ``precision`` decades (or ``iterations`` steps), and returns the
    plan with the smallest analytic bound among those tried whose cost is
    <= ``budget``.  Pure arithmetic on the gains: no data pass (about a
    dozen cost_aware_plan calls).

    Raises:
      UnattainableTargetError: even the all-2-bit plan costs more than the
        budget.
      PlanError: bad budget or cost kind.
    """
    cost = _check_cost_kind(cost)
    if isinstance(budget, bool) or not isinstance(budget, (int, float, np.number)) \
            or not (budget > 0 and math.isfinite(budget)):
        raise PlanError(f"budget must be a positive finite cost in "
                        f"{_unit(cost)}, got {budget!r}")
    floor = plan_lib.uniform_plan(gains, bits=fixedpoint.MIN_BITS)
    if floor.cost().total(cost) > budget * (1 + 1e-12):
        raise UnattainableTargetError(
            f"budget {budget:.6g} {_unit(cost)} is below the cheapest plan "
            f"({floor.cost().total(cost):.6g} {_unit(cost)}: every tensor at "
            f"{fixedpoint.MIN_BITS} bits).")
    best = None

    def consider(p):
        nonlocal best
        if p.cost().total(cost) <= budget * (1 + 1e-12):
            if best is None or p.bound() < best.bound():
                best = p
            return True
        return False

    ceil_bound = plan_lib.uniform_plan(gains, bits=max_bits).bound()
    lo = math.log10(max(ceil_bound, 1e-300)) - 1e-3
    hi = math.log10(max(floor.bound(), 1e-300)) + 1e-3
    for _ in range(int(iterations)):
        mid = 0.5 * (lo + hi)
        try:
            p = plan_lib.cost_aware_plan(gains, 10.0 ** mid, cost=cost,
                                         max_bits=max_bits)
        except UnattainableTargetError:
            lo = mid
            continue
        if consider(p):
            hi = mid
        else:
            lo = mid
        if hi - lo < precision:
            break
    if best is None:
        best = floor
    return dataclasses.replace(best, info=dict(best.info, budget=float(budget)))


def default_targets(gains, tolerance_pp: float, per_decade: int = 4) -> list:
    """Bound targets worth trying for an accuracy tolerance.

    A geometric grid, ``per_decade`` points per decade, from the tolerance
    as a probability (tolerance_pp / 100: a plan whose bound meets it
    loses at most that much accuracy in expectation, so smaller targets only
    cost more) up to the bound of the all-2-bit plan (larger targets all
    give that plan).
    """
    lo = max(tolerance_pp / 100.0, 1e-6)
    hi = max(plan_lib.uniform_plan(gains, bits=fixedpoint.MIN_BITS).bound(), lo)
    n = int(math.ceil(per_decade * math.log10(hi / lo)))
    return [lo * (hi / lo) ** (k / max(n, 1)) for k in range(n + 1)]


def bisect_target_plan(model, gains, x, y, tolerance_pp: float = 0.1,
                       cost: str = "compute",
                       targets: Optional[Sequence[float]] = None,
                       batch_size: int = 256):
    """tfprec's cheapest plan confirmed by measurement, in a few evaluations.

    Bisects over ``targets`` (bound targets; default
    :func:`default_targets`) for the largest target whose
    :func:`tfprec.cost_aware_plan` has measured fake-quant accuracy on
    (x, y) within ``tolerance_pp`` percentage points of float, assuming
    accuracy falls as the target grows (about log2(len(targets)) + 1
    fake-quant evaluations).

    Returns:
      (plan, evaluations).  ``plan.info`` holds the measured accuracies.

    Raises:
      UnattainableTargetError: not even the smallest target's plan is within
        tolerance.
    """
    cost = _check_cost_kind(cost)
    tol = _check_tol(tolerance_pp)
    batch_size = _pos_int("batch_size", batch_size)
    graph = parse_model(model)
    x, y = _xy(x, y, graph.shapes[graph.input_id], graph.num_classes,
               "bisect_target_plan")
    if targets is None:
        targets = default_targets(gains, tol)
    targets = sorted(float(t) for t in targets)
    if not targets:
        raise PlanError("targets is empty")
    ev = _Evaluator(model, x, y, batch_size)
    plans, accs = {}, {}

    def passes(i):
        if i not in plans:
            plans[i] = plan_lib.cost_aware_plan(gains, targets[i], cost=cost)
            accs[i] = ev.accuracy(plans[i])
        return ev.ok(accs[i], tol)

    lo, hi = -1, len(targets)        # invariant: lo passes (or -1), hi fails
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if passes(mid):
            lo = mid
        else:
            hi = mid
    if lo < 0:
        raise UnattainableTargetError(
            f"the cost-aware plan for the smallest target {targets[0]:.3g} has "
            f"accuracy {100 * accs[0]:.2f} % vs float "
            f"{100 * ev.float_accuracy:.2f} %, more than {tol:g} pp lower; pass "
            "smaller targets.")
    plan = plans[lo]
    plan = dataclasses.replace(plan, info=dict(
        plan.info, float_accuracy=ev.float_accuracy, quant_accuracy=accs[lo],
        tolerance_pp=tol, evaluations=ev.evaluations))
    return plan, ev.evaluations


def bisect_budget_plan(model, gains, x, y, tolerance_pp: float = 0.1,
                       cost: str = "compute", rel_step: float = 0.05,
                       batch_size: int = 256):
    """tfprec's cheapest plan confirmed by measurement, bisecting the budget.

    Bisects (geometrically) the cost budget between the all-2-bit plan's
    cost (assumed to miss the tolerance) and the cost of the cost-aware plan
    whose bound meets tolerance_pp / 100 (assumed to pass: its analytic
    bound promises at most that accuracy loss in expectation), until the
    bracket is narrower than a factor 1 + ``rel_step``.  At each step the
    plan is :func:`cost_aware_at_budget` (no data pass) and one fake-quant
    evaluation on (x, y) decides whether its accuracy is within
    ``tolerance_pp`` percentage points of float.  Assumes accuracy grows
    with the budget.  The returned plan is always one that was measured.

    Returns:
      (plan, evaluations); ``plan.info`` holds the measured accuracies and
      the evaluations.

    Raises:
      UnattainableTargetError: even the upper plan misses the tolerance.
    """
    cost = _check_cost_kind(cost)
    tol = _check_tol(tolerance_pp)
    batch_size = _pos_int("batch_size", batch_size)
    if not (isinstance(rel_step, (int, float)) and rel_step > 0):
        raise PlanError(f"rel_step must be a positive number, got {rel_step!r}")
    graph = parse_model(model)
    x, y = _xy(x, y, graph.shapes[graph.input_id], graph.num_classes,
               "bisect_budget_plan")
    ev = _Evaluator(model, x, y, batch_size)
    floor = plan_lib.uniform_plan(gains, bits=fixedpoint.MIN_BITS)
    try:
        top = plan_lib.cost_aware_plan(gains, max(tol / 100.0, 1e-6), cost=cost)
    except UnattainableTargetError:
        top = plan_lib.uniform_plan(gains, bits=fixedpoint.MAX_BITS)
    lo = floor.cost().total(cost)
    hi_plan, hi_acc = top, None
    hi = top.cost().total(cost)
    while hi > lo * (1 + rel_step):
        mid = math.sqrt(lo * hi)
        p = cost_aware_at_budget(gains, mid, cost=cost)
        c = p.cost().total(cost)
        a = ev.accuracy(p)
        if ev.ok(a, tol):
            hi_plan, hi_acc, hi = p, a, c
        else:
            lo = mid
    if hi_acc is None:
        hi_acc = ev.accuracy(hi_plan)
        if not ev.ok(hi_acc, tol):
            raise UnattainableTargetError(
                f"the cost-aware plan whose bound meets {tol / 100:.3g} has "
                f"accuracy {100 * hi_acc:.2f} % vs float "
                f"{100 * ev.float_accuracy:.2f} %, more than {tol:g} pp lower.")
    plan = dataclasses.replace(hi_plan, info=dict(
        hi_plan.info, float_accuracy=ev.float_accuracy, quant_accuracy=hi_acc,
        tolerance_pp=tol, evaluations=ev.evaluations))
    return plan, ev.evaluations
