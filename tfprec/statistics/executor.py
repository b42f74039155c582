"""The one executor of a parsed graph (:mod:`tfprec.statistics.graph`).

An :class:`Executor` owns a parsed graph, its folded weights as
``tf.Variable`` of one dtype (so a compiled function traced once serves
later calls; :meth:`Executor.load` refreshes them), the batched forward pass
and the backward rules of the non-weight ops.  The passes built on it:

* the noise-gain pass (:mod:`tfprec.statistics.backward`): forward, then one
  stacked backward over the wrong classes using :meth:`Executor.backward_op`
  for the non-weight ops and the layer registry for the weight ops;
* the Hessian-trace peer (:mod:`tfprec.peers.hessian`): forward with the
  weights passed in as tensors and a perturbation added to each weight op's
  input, differentiated by ``tf.GradientTape``.
* the per-class shift tables (:class:`tfprec.statistics.shifts.ShiftPass`):
  one forward, then :meth:`Executor.forward_from` re-runs only the ops
  downstream of one weight op with its output recomputed from rounded
  weights, or from its rounded input.

:func:`executor_for` is the one per-model cache: one executor per (model,
dtype), and on it one cached pass per pass key (:meth:`Executor.cached`).
"""
from __future__ import annotations

import math
import weakref
from typing import Callable, Optional, Sequence

from tfprec._tf import tf
from tfprec.statistics import embedding, generic, registry  # noqa: F401  (register kinds)
from tfprec.statistics.graph import NO_ACT_KINDS, WEIGHT_KINDS, Graph


class Executor:
    """Forward pass and non-weight backward rules of one parsed graph.

    Attributes:
      g: the parsed graph (its weight ops' ``attrs`` gain ``kernel_t`` and
        ``bias_t``, the weight variables).
      dtype: arithmetic dtype of the pass.
      weight_ops: the weight ops in topological order.
      params: per weight op, (kernel variable, bias variable or None).
      needs_grad: tensor ids with a weight op upstream (a gradient with
        respect to them can reach a weight).
      fusable_act: max-pool op name -> the relu/clip op that alone feeds it
        (its mask is fused into the pool's routing mask).
    """

    def __init__(self, graph: Graph, dtype: tf.DType):
        self.g = graph
        self.dtype = dtype
        self.weight_ops = graph.weight_ops
        self.params = []
        for op in self.weight_ops:
            a = op.attrs
            a["kernel_t"] = tf.Variable(a["kernel"], dtype=dtype, trainable=False)
            a["bias_t"] = (None if a["bias"] is None else
                           tf.Variable(a["bias"], dtype=dtype, trainable=False))
            self.params.append((a["kernel_t"], a["bias_t"]))
        self.needs_grad: set = set()
        for op in graph.ops:
            if op.kind in WEIGHT_KINDS or any(i in self.needs_grad for i in op.inputs):
                self.needs_grad.add(op.output)
        n_read: dict = {}
        for op in graph.ops:
            for i in op.inputs:
                n_read[i] = n_read.get(i, 0) + 1
        producer = {op.output: op for op in graph.ops}
        self.fusable_act = {}
        for op in graph.ops:
            src = producer.get(op.inputs[0]) if op.inputs else None
            if (op.kind == "maxpool" and src is not None and src.kind == "act"
                    and src.attrs["fn"] != "linear" and n_read[op.inputs[0]] == 1):
                self.fusable_act[op.name] = src
        self._passes: dict = {}

    # ----------------------------------------------------------- weights
    def load(self, graph: Graph) -> None:
        """Copies the (folded) weights of a freshly parsed graph of the same
        model into the variables (and the numpy ``kernel``/``bias`` attrs)."""
        for mine, new in zip(self.weight_ops, graph.weight_ops):
            mine.attrs["kernel"] = new.attrs["kernel"]
            mine.attrs["bias"] = new.attrs["bias"]
            mine.attrs["kernel_t"].assign(new.attrs["kernel"])
            if new.attrs["bias"] is not None:
                mine.attrs["bias_t"].assign(new.attrs["bias"])

    def cached(self, key, build: Callable):
        """The pass cached under ``key`` on this executor (built by
        ``build(self)`` on first use)."""
        p = self._passes.get(key)
        if p is None:
            p = self._passes[key] = build(self)
        return p

    # ----------------------------------------------------------- forward
    def forward(self, x, params: Optional[Sequence] = None,
                eps: Optional[Sequence] = None, pool_by_gather: bool = False) -> dict:
        """Batched forward pass; returns tensor id -> value.

        ``params``: per weight op, (kernel, bias or None) tensors used instead
        of the variables.  ``eps``: per weight op, a tensor added to that op's
        input (seen by that op alone); ``vals`` keeps the unperturbed input.
        ``pool_by_gather``: max-pools gather their inputs at the argmax (same
        values), so second derivatives avoid TF's MaxPoolGradGrad, which is
        wrong and nondeterministic for SAME-padded overlapping windows
        (TF 2.21 CPU).
        """
        vals = {self.g.input_id: x}
        wi = 0
        for op in self.g.ops:
            ins = [vals[i] for i in op.inputs]
            if op.kind in WEIGHT_KINDS:
                a = op.attrs
                if params is not None:
                    a = dict(a, kernel_t=params[wi][0], bias_t=params[wi][1])
                # ids (NO_ACT_KINDS) are not activations: never perturbed
                inp = ins[0] if eps is None or op.kind in NO_ACT_KINDS else ins[0] + eps[wi]
                y = registry.lookup(op.kind).forward(a, inp)
                wi += 1
            elif op.kind == "maxpool" and pool_by_gather:
                y = self._maxpool_gather(op, ins[0])
            else:
                y = registry.forward_op(op, ins, self.g.shapes[op.output], self.dtype)
            vals[op.output] = y
        return vals

    def forward_from(self, vals: dict, replaced: dict, keep=None):
        """The logits with some weight ops' outputs replaced.

        ``replaced``: output tensor id of a weight op -> its new value.
        Re-runs only the ops downstream of them (in topological order),
        reading every other tensor from ``vals`` (a :meth:`forward` result of
        the same batch); the weight ops use their variables.  Used by the
        per-class shift pass (:mod:`tfprec.statistics.shifts`).  With
        ``keep`` (tensor ids), returns (logits, {id: new value}) for the
        ids of ``keep`` that were recomputed.
        """
        new = dict(replaced)
        seen = False
        for o in self.g.ops:
            if o.output in replaced:
                seen = True
                continue
            if not seen or not any(i in new for i in o.inputs):
                continue
            ins = [new.get(i, vals[i]) for i in o.inputs]
            if o.kind in WEIGHT_KINDS:
                new[o.output] = registry.lookup(o.kind).forward(o.attrs, ins[0])
            else:
                new[o.output] = registry.forward_op(o, ins, self.g.shapes[o.output],
                                                    self.dtype)
        z = new.get(self.g.output_id, vals[self.g.output_id])
        if keep is None:
            return z
        return z, {t: new[t] for t in keep if t in new}

    @staticmethod
    def _maxpool_gather(op, x):
        """Max-pool as a gather at the window maxima (argmax held constant)."""
        a = op.attrs
        y, idx = tf.nn.max_pool_with_argmax(
            tf.stop_gradient(x), [1, *a["ksize"], 1], [1, *a["strides"], 1],
            a["padding"], include_batch_in_index=True)
        return tf.reshape(tf.gather(tf.reshape(x, [-1]), idx), tf.shape(y))

    # ---------------------------------------------------------- backward
    def backward_op(self, op, vals: dict, g, c: int) -> list:
        """Propagates the gradient ``g`` of non-weight op ``op``'s output to
        its inputs; returns (input id, gradient) pairs.

        ``g`` is stacked: [c * B, ...], c cotangent rows per example of the
        forward batch B (``vals``), row-major over (row, example).
        """
        a = op.attrs
        k = op.kind
        x = vals[op.inputs[0]] if op.inputs else None
        if k == "act":
            if a["fn"] == "linear":
                return [(op.inputs[0], g)]
            gs = registry.split_classes(g, c) * self.act_mask(op, x)[None]
            return [(op.inputs[0], registry.merge_classes(gs))]
        if k == "maxpool":
            if tuple(a["ksize"]) == tuple(a["strides"]):
                act = self.fusable_act.get(op.name)
                if act is not None:    # route and clip masks in one product
                    pre = vals[act.inputs[0]]
                    return [(act.inputs[0], self._maxpool_disjoint_grad(
                        op, x, g, c, self.act_mask(act, pre)))]
                return [(op.inputs[0], self._maxpool_disjoint_grad(op, x, g, c))]
            reps = [c] + [1] * (len(x.shape) - 1)
            dx = tf.raw_ops.MaxPoolGrad(
                orig_input=tf.tile(x, reps), orig_output=tf.tile(vals[op.output], reps),
                grad=g, ksize=[1, *a["ksize"], 1], strides=[1, *a["strides"], 1],
                padding=a["padding"])
            return [(op.inputs[0], dx)]
        if k == "avgpool":
            s = tf.shape(x)
            dx = tf.raw_ops.AvgPoolGrad(
                orig_input_shape=tf.stack([tf.shape(g)[0], s[1], s[2], s[3]]),
                grad=g, ksize=[1, *a["ksize"], 1], strides=[1, *a["strides"], 1],
                padding=a["padding"])
            return [(op.inputs[0], dx)]
        if k == "gap":
            h, w = x.shape[1], x.shape[2]
            gg = g if a["keepdims"] else g[:, None, None, :]
            return [(op.inputs[0], tf.broadcast_to(
                gg / tf.cast(h * w, self.dtype),
                tf.concat([tf.shape(g)[:1], tf.shape(x)[1:]], 0)))]
        if k == "reshape":
            return [(op.inputs[0],
                     tf.reshape(g, [-1, *self.g.shapes[op.inputs[0]]]))]
        if k == "identity":
            return [(op.inputs[0], g)]
        if k == "add":
            return [(i, g) for i in op.inputs]
        if k == "layer":
            return generic.generic_backward(op, vals, g, c, self.dtype, self.needs_grad)
        if k == "binary":
            return [(op.inputs[0], g[:, 1:])]
        if k == "concat":
            sizes = [self.g.shapes[i][a["axis"] - 1] for i in op.inputs]
            return list(zip(op.inputs, tf.split(g, sizes, axis=a["axis"])))
        raise AssertionError(k)  # pragma: no cover - parse_model emits only these

    def act_mask(self, op, x):
        """Derivative (0/1) of a relu / clipping act op at its input x."""
        mask = x > 0
        if op.attrs["high"] is not None:
            mask = tf.logical_and(mask, x < op.attrs["high"])
        return tf.cast(mask, self.dtype)

    def _maxpool_disjoint_grad(self, op, x, g, c: int, extra_mask=None):
        """Max-pool gradient for non-overlapping windows (ksize == strides).

        The routing mask (1 at the first maximum of each window, as
        MaxPoolGrad) is computed once at batch B; the stacked gradient is
        upsampled and masked, instead of re-running MaxPoolGrad on c tiled
        copies of the input.  ``extra_mask`` (batch B) is multiplied in, so
        a preceding relu/clip costs no extra pass over the stacked tensor.
        """
        kh, kw = op.attrs["ksize"]
        _, idx = tf.nn.max_pool_with_argmax(
            x, [1, kh, kw, 1], [1, kh, kw, 1], op.attrs["padding"],
            include_batch_in_index=True)
        flat = tf.reshape(idx, [-1, 1])
        mask = tf.scatter_nd(flat, tf.ones([tf.shape(flat)[0]], self.dtype),
                             tf.cast(tf.reshape(tf.size(x), [1]), tf.int64))
        mask = tf.reshape(mask, tf.shape(x))
        if extra_mask is not None:
            mask = mask * extra_mask
        h, w = x.shape[1], x.shape[2]
        ho, wo = g.shape[1], g.shape[2]
        n, ch = tf.shape(g)[0], g.shape[3]
        up = tf.reshape(tf.broadcast_to(g[:, :, None, :, None, :],
                                        [n, ho, kh, wo, kw, ch]),
                        [n, ho * kh, wo * kw, ch])        # nearest upsampling
        # Window origin: SAME padding may start the first window above/left.
        same = op.attrs["padding"] == "SAME"
        top = max((ho * kh - h) // 2, 0) if same else 0
        left = max((wo * kw - w) // 2, 0) if same else 0
        up = up[:, top:top + h, left:left + w, :]
        up = tf.pad(up, [[0, 0], [0, h - min(h, ho * kh - top)],
                         [0, w - min(w, wo * kw - left)], [0, 0]])
        return registry.merge_classes(registry.split_classes(up, c) * mask[None])


_EXECUTORS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()

#: The automatic batch of the gains pass: the largest power of two in
#: [AUTO_BATCH_MIN, AUTO_BATCH_MAX] examples whose op outputs, times the
#: stacked backward rows, stay within AUTO_BATCH_ELEMENTS values (1 GiB in
#: float32; a CIFAR-10 VGG or ResNet-20 gets 128, an MLP 1024).
AUTO_BATCH_ELEMENTS = 1 << 28
AUTO_BATCH_MIN, AUTO_BATCH_MAX = 128, 1024


def auto_batch_size(graph: Graph, rows: int) -> int:
    """Examples per batch of a pass that stacks ``rows`` backward rows on
    ``graph`` (see :data:`AUTO_BATCH_ELEMENTS`): a small network gets large
    batches, which saves the per-batch dispatch cost of eager re-runs."""
    per_example = max(1, rows) * sum(math.prod(d or 1 for d in graph.shapes[op.output])
                                     for op in graph.ops)
    fit = max(1, AUTO_BATCH_ELEMENTS // max(1, per_example))
    return int(min(AUTO_BATCH_MAX, max(AUTO_BATCH_MIN, 1 << (fit.bit_length() - 1))))


def executor_for(model, graph: Graph, dtype: tf.DType) -> Executor:
    """The model's cached executor for ``dtype``, loaded with the weights of
    ``graph`` (a fresh ``parse_model(model)``).  Cached per model object
    (weakly), so a model trained further reuses the traced passes."""
    per_model = _EXECUTORS.setdefault(model, {})
    ex = per_model.get(dtype.name)
    if ex is None:
        ex = per_model[dtype.name] = Executor(graph, dtype)
    else:
        ex.load(graph)
    return ex
