"""The noise-gain pass on the executor: margins, stacked backward, step.

One forward pass per batch (:meth:`Executor.forward`), then one backward
pass in which the cotangent rows of the wrong classes are stacked along a
leading axis, so each backward op runs once on a [c * B, ...] tensor.  The
cotangent of wrong class i for example x is (e_i - e_y) / |z_i - z_y|, so
squared gradient norms come out already divided by the squared margins.
Weight ops use the layer registry (input VJP and per-example squared
weight-gradient norms); the other ops use :meth:`Executor.backward_op`.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from tfprec._tf import tf
from tfprec.statistics import registry
from tfprec.statistics.executor import Executor
from tfprec.statistics.graph import WEIGHT_KINDS


class GainsPass:
    """Compiled forward + stacked backward of the gains over an executor.

    ``top_k`` None: the exact pass over all M-1 wrong classes; otherwise the
    top-k + ``sketch`` estimator.  ``chunk``: cotangent rows per stacked
    backward.  :attr:`step` (traced once, ``autograph=False``) maps an input
    batch and a [2] int32 seed to per-batch sums (float64).
    """

    def __init__(self, ex: Executor, top_k: Optional[int], sketch: int, chunk: int):
        self.ex = ex
        g = ex.g
        self.top_k = top_k
        self.sketch = sketch
        self.c = chunk
        for op in ex.weight_ops:
            if op.kind == "conv2d":
                op.attrs["use_gram"] = registry.conv_use_gram(
                    op.attrs, g.shapes[op.inputs[0]], g.shapes[op.output],
                    g.num_classes)
        readers: dict = {}
        for op in ex.weight_ops:
            readers.setdefault(op.inputs[0], []).append(op.name)
        # Tensors read by several weight layers: one shared quantizer each.
        self.shared = {t: names for t, names in readers.items() if len(names) > 1}
        self.dist_steps: dict = {}      # id(strategy) -> compiled replica step
        shape = [None, *g.shapes[g.input_id]]
        self.step = tf.function(self._step, input_signature=[
            tf.TensorSpec(shape, ex.dtype), tf.TensorSpec([2], tf.int32)],
            autograph=False)  # plain TF ops and an explicit tf.while_loop

    # ------------------------------------------------------------ margins
    def _margins(self, z):
        """Float decision y [B], 1/|z_i - z_y| on wrong non-tied classes
        (0 elsewhere) [B, M], and the tie mask [B, M]."""
        y = tf.argmax(z, axis=1, output_type=tf.int32)
        zy = tf.gather(z, y, axis=1, batch_dims=1)
        margin = z - zy[:, None]
        not_y = tf.logical_not(tf.one_hot(y, self.ex.g.num_classes, on_value=True,
                                          off_value=False))
        tie = tf.logical_and(tf.equal(margin, 0.0), not_y)
        inv = tf.where(tf.logical_or(tie, tf.logical_not(not_y)), tf.zeros_like(z),
                       1.0 / tf.where(tf.equal(margin, 0.0), tf.ones_like(z),
                                      tf.abs(margin)))
        return y, inv, tie

    def _exact_rows(self, y, inv, start):
        """Cotangents of wrong classes start..start+c-1: [c, B, M].

        Row r of example x is (e_i - e_y) / |z_i - z_y| for its (start+r)-th
        wrong class i; rows past the M-1 wrong classes (padding) are zero.
        """
        m = self.ex.g.num_classes
        dt = self.ex.dtype
        cls = start + tf.range(self.c, dtype=tf.int32)[:, None]           # [c, 1]
        wrong = tf.minimum(cls + tf.cast(cls >= y[None, :], tf.int32), m - 1)
        w = tf.transpose(tf.gather(inv, tf.transpose(wrong), batch_dims=1))
        w = tf.where(cls < m - 1, w, tf.zeros_like(w))                     # [c, B]
        return (tf.one_hot(wrong, m, dtype=dt)
                - tf.one_hot(y, m, dtype=dt)[None]) * w[..., None]

    def _estimate_rows(self, y, inv, seed):
        """Top-k closest wrong classes exactly, the others by a sign sketch.

        Rows 0..k-1 are the cotangents of the k wrong classes with the
        smallest |z_i - z_y|; rows k..k+s-1 are r_j . (tail cotangents) /
        sqrt(s) with independent random signs r_j, whose squared norms are an
        unbiased estimate of the tail's sum.  Returns [k + s, B, M].
        """
        m = self.ex.g.num_classes
        dt = self.ex.dtype
        k, s = self.top_k, self.sketch
        y1 = tf.one_hot(y, m, dtype=dt)
        _, idx = tf.math.top_k(inv, k)                                   # [B, k]
        top = tf.reduce_sum(tf.one_hot(idx, m, dtype=dt), axis=1)        # [B, M]
        rows = [(tf.one_hot(tf.transpose(idx), m, dtype=dt) - y1[None])
                * tf.transpose(tf.gather(inv, idx, batch_dims=1))[..., None]]
        if s:
            tail = inv * (1.0 - top)                                     # [B, M]
            r = tf.sign(tf.random.stateless_uniform(
                [s, tf.shape(inv)[0], m], seed, -1.0, 1.0, dtype=dt))
            v = r * tail[None] / tf.sqrt(tf.cast(s, dt))
            rows.append(v - tf.reduce_sum(v, axis=2, keepdims=True) * y1[None])
        return tf.concat(rows, axis=0)

    # ----------------------------------------------------------- backward
    def _backward(self, vals, cot):
        """Stacked backward pass for cotangents [c, B, M] of the logits.

        Returns per-layer [L, B] sums over the c rows of squared gradient
        norms of the weights (sw), of each weight layer's input through that
        layer alone (sa), and of each layer's input tensor as one shared
        quantizer (sh; equal to sa for an unshared input).
        """
        ex, c = self.ex, self.c
        grads = {ex.g.output_id: registry.merge_classes(cot)}
        sw, sa, sh = {}, {}, {}
        pending = {t: [None, len(n)] for t, n in self.shared.items()}

        def sq(d, a):
            return tf.reduce_sum(tf.square(tf.reshape(d, [c, tf.shape(a)[0], -1])),
                                 axis=[0, 2])

        for op in reversed(ex.g.ops):
            gr = grads.pop(op.output, None)
            if gr is None:
                continue
            if op.kind in WEIGHT_KINDS:
                fns = registry.lookup(op.kind)
                a = vals[op.inputs[0]]
                dy = registry.split_classes(gr, c)
                sw[op.name] = fns.sq_norms(op.attrs, a, dy)
                da = fns.input_vjp(op.attrs, a, dy)
                sa[op.name] = sq(da, a)
                outs = [(op.inputs[0], da)]
                acc = pending.get(op.inputs[0])
                if acc is not None:
                    acc[0] = da if acc[0] is None else acc[0] + da
                    acc[1] -= 1
                    if acc[1] == 0:
                        sh[op.inputs[0]] = sq(acc[0], a)
            else:
                outs = ex.backward_op(op, vals, gr, c)
            for tid, d in outs:
                if tid in ex.needs_grad:
                    grads[tid] = grads[tid] + d if tid in grads else d
        names = [op.name for op in ex.weight_ops]
        # Shared tensors are reported in the slot of their readers (same value).
        shared = [sh.get(op.inputs[0], sa[op.name]) for op in ex.weight_ops]
        return (tf.stack([sw[n] for n in names]), tf.stack([sa[n] for n in names]),
                tf.stack(shared))

    def _step(self, x, seed):
        ex = self.ex
        vals = ex.forward(x)
        y, inv, tie = self._margins(vals[ex.g.output_id])
        nb = tf.shape(x)[0]
        zeros = tf.zeros([len(ex.weight_ops), nb], ex.dtype)
        if self.top_k is None:
            rows_total = ex.g.num_classes - 1
            make = lambda i: self._exact_rows(y, inv, i * self.c)
        else:
            est = self._estimate_rows(y, inv, seed)
            rows_total = self.top_k + self.sketch
            est = tf.pad(est, [[0, -rows_total % self.c], [0, 0], [0, 0]])
            make = lambda i: est[i * self.c:(i + 1) * self.c]
        chunks = -(-rows_total // self.c)
        if chunks == 1:
            sw, sa, sh = self._backward(vals, make(0))
        else:
            def body(i, sw, sa, sh):
                w, a, h = self._backward(vals, make(i))
                return i + 1, sw + w, sa + a, sh + h
            _, sw, sa, sh = tf.while_loop(lambda i, *_: i < chunks, body,
                                          (tf.constant(0), zeros, zeros, zeros))
        acts = [vals[op.inputs[0]] for op in ex.weight_ops]
        f64 = lambda t: tf.reduce_sum(tf.cast(t, tf.float64), axis=-1)
        low = tf.constant(np.inf, tf.float64)
        return {
            "sw": f64(sw), "sa": f64(sa), "sh": f64(sh),
            "pw": tf.cast(sw, tf.float64), "pa": tf.cast(sh, tf.float64),
            "ties": tf.reduce_sum(tf.cast(tie, tf.int64)),
            "amax": tf.stack([tf.reduce_max(tf.concat(
                [[-low], tf.reshape(tf.cast(t, tf.float64), [-1])], 0)) for t in acts]),
            "amin": tf.stack([tf.reduce_min(tf.concat(
                [[low], tf.reshape(tf.cast(t, tf.float64), [-1])], 0)) for t in acts]),
        }

    # -------------------------------------------------------- distributed
    def distributed(self, strategy):
        """A step that splits each batch over ``strategy``'s replicas and
        reduces the results (sums, concatenated per-example rows, max/min)."""
        n_rep = strategy.num_replicas_in_sync
        reduce_ops = {"sw": "SUM", "sa": "SUM", "sh": "SUM", "ties": "SUM",
                      "pw": "CONCAT", "pa": "CONCAT", "amax": "MAX", "amin": "MIN"}
        run = self.dist_steps.get(id(strategy))
        if run is None:
            run = self.dist_steps[id(strategy)] = tf.function(
                lambda x, seed: strategy.run(self._step, args=(x, seed)),
                reduce_retracing=True)

        def step(b, seed):
            parts = np.array_split(b, n_rep)
            dist = strategy.experimental_distribute_values_from_function(
                lambda ctx: tf.constant(parts[ctx.replica_id_in_sync_group]))
            seeds = strategy.experimental_distribute_values_from_function(
                lambda ctx: tf.constant(seed + np.array(
                    [0, 1_000_003 * ctx.replica_id_in_sync_group], np.int32)))
            out = run(dist, seeds)
            res = {}
            for k, op in reduce_ops.items():
                vals = [np.asarray(v) for v in strategy.experimental_local_results(out[k])]
                if op == "CONCAT":             # per-example [L, B_replica]
                    res[k] = np.concatenate(vals, axis=1)
                    continue
                red = {"SUM": np.sum, "MAX": np.max, "MIN": np.min}[op]
                res[k] = red(np.stack(vals), axis=0)
            return res
        return step
