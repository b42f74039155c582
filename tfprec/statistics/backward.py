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
from tfprec.statistics.graph import NO_ACT_KINDS, WEIGHT_KINDS


class GainsPass:
    """Compiled forward + stacked backward of the gains over an executor.

    ``top_k`` None: the exact pass over all M-1 wrong classes; otherwise the
    top-k + ``sketch`` estimator.  ``chunk``: cotangent rows per stacked
    backward.  :attr:`step` (traced once, ``autograph=False``) maps an input
    batch and a [2] int32 seed to per-batch sums (float64).  With
    ``per_class`` it also returns, per example and kept wrong class (all
    M-1, or the top ``top_k``), the squared norms of each row: ``cw``, ``ca``
    [B, K, L] (weights; input tensor, shared value for shared inputs),
    ``cm`` [B, K] the margins |z_i - z_y| and ``ci`` [B, K] the classes i.
    """

    def __init__(self, ex: Executor, top_k: Optional[int], sketch: int, chunk: int,
                 per_class: bool = False, channel_scales: Optional[dict] = None):
        self.ex = ex
        # per-channel weights: the weight norms of op n see its output
        # cotangent scaled by R_c / R_W (tfprec.statistics.channels);
        # variables, set from the current weights by set_scales before each
        # pass (the traced step is reused after the model trains further).
        self.scales = {n: tf.Variable(s, dtype=ex.dtype, trainable=False)
                       for n, s in (channel_scales or {}).items()}
        g = ex.g
        self.top_k = top_k
        self.sketch = sketch
        self.c = chunk
        # per_class: also return every (example, wrong class) row's squared
        # norms (the top_k classes only with the estimator; sketch rows are
        # sums over classes and are not kept per class).
        self.per_class = per_class
        self.rows_kept = g.num_classes - 1 if top_k is None else top_k
        for op in ex.weight_ops:
            if op.kind == "conv2d":
                op.attrs["use_gram"] = registry.conv_use_gram(
                    op.attrs, g.shapes[op.inputs[0]], g.shapes[op.output],
                    g.num_classes)
        readers: dict = {}
        for op in ex.weight_ops:
            if op.kind not in NO_ACT_KINDS:     # ids are no activation tensor
                readers.setdefault(op.inputs[0], []).append(op.name)
        # Tensors read by several weight layers: one shared quantizer each.
        self.shared = {t: names for t, names in readers.items() if len(names) > 1}
        self.dist_steps: dict = {}      # id(strategy) -> compiled replica step
        shape = [None, *g.shapes[g.input_id]]
        self.step = tf.function(self._step, input_signature=[
            tf.TensorSpec(shape, ex.dtype), tf.TensorSpec([2], tf.int32)],
            autograph=False)  # plain TF ops and an explicit tf.while_loop

    def set_scales(self, channel_scales: dict) -> None:
        """Sets the per-channel cotangent scales R_c / R_W (same ops and
        channel counts as at construction) from the current weights."""
        for n, s in channel_scales.items():
            self.scales[n].assign(s)

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
        per_class = self.per_class

        def sq(d, a):
            """Squared norms per row and example [c, B] (per_class) or summed
            over the rows [B]."""
            s = tf.reduce_sum(tf.square(tf.reshape(d, [c, tf.shape(a)[0], -1])),
                              axis=2)
            return s if per_class else tf.reduce_sum(s, axis=0)

        def sq_weights(fns, attrs, a, gr, dy):
            if not per_class:
                return fns.sq_norms(attrs, a, dy)
            # Rows as examples: the input tiled c times against a one-row
            # cotangent [1, c*B, ...] gives each row's norm, [c, B].
            a_rep = tf.tile(a, [c] + [1] * (len(a.shape) - 1))
            out = fns.sq_norms(attrs, a_rep, gr[None])
            return tf.reshape(out, [c, tf.shape(a)[0]])

        for op in reversed(ex.g.ops):
            gr = grads.pop(op.output, None)
            if gr is None:
                continue
            if op.kind in WEIGHT_KINDS:
                fns = registry.lookup(op.kind)
                a = vals[op.inputs[0]]
                dy = registry.split_classes(gr, c)
                s = self.scales.get(op.name)
                sw[op.name] = (sq_weights(fns, op.attrs, a, gr, dy) if s is None
                               else sq_weights(fns, op.attrs, a, gr * s, dy * s))
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
        out = (tf.stack([sw[n] for n in names]), tf.stack([sa[n] for n in names]),
               tf.stack(shared))
        if not per_class:
            return out
        # out: [L, c, B] each; rows of the weights and of the (shared) inputs.
        return tuple(tf.reduce_sum(t, axis=1) for t in out) + (out[0], out[2])

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
        extra = {}
        if self.per_class:
            sw, sa, sh, rw, rh = self._per_class_rows(vals, make, chunks, zeros)
            keep = self.rows_kept
            extra = {"cw": tf.transpose(tf.cast(rw[:keep], tf.float64), [2, 0, 1]),
                     "ca": tf.transpose(tf.cast(rh[:keep], tf.float64), [2, 0, 1])}
            extra.update(zip(("cm", "ci"), self._row_classes(vals[ex.g.output_id], y)))
        elif chunks == 1:
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
            **extra,
            "sw": f64(sw), "sa": f64(sa), "sh": f64(sh),
            "pw": tf.cast(sw, tf.float64), "pa": tf.cast(sh, tf.float64),
            "ties": tf.reduce_sum(tf.cast(tie, tf.int64)),
            "amax": tf.stack([tf.reduce_max(tf.concat(
                [[-low], tf.reshape(tf.cast(t, tf.float64), [-1])], 0)) for t in acts]),
            "amin": tf.stack([tf.reduce_min(tf.concat(
                [[low], tf.reshape(tf.cast(t, tf.float64), [-1])], 0)) for t in acts]),
        }

    def _per_class_rows(self, vals, make, chunks, zeros):
        """Sums as :meth:`_backward` plus every row's norms [rows, L, B]
        (weights, input tensors), over all chunks of rows."""
        if chunks == 1:
            sw, sa, sh, rw, rh = self._backward(vals, make(0))
            return sw, sa, sh, tf.transpose(rw, [1, 0, 2]), tf.transpose(rh, [1, 0, 2])
        ta = [tf.TensorArray(self.ex.dtype, size=chunks) for _ in range(2)]

        def body(i, sw, sa, sh, tw, th):
            w, a, h, rw, rh = self._backward(vals, make(i))
            return (i + 1, sw + w, sa + a, sh + h,
                    tw.write(i, tf.transpose(rw, [1, 0, 2])),
                    th.write(i, tf.transpose(rh, [1, 0, 2])))
        _, sw, sa, sh, tw, th = tf.while_loop(
            lambda i, *_: i < chunks, body,
            (tf.constant(0), zeros, zeros, zeros, ta[0], ta[1]))
        flat = lambda t: tf.reshape(t.stack(), tf.concat(
            [[chunks * self.c], tf.shape(zeros)], 0))
        return sw, sa, sh, flat(tw), flat(th)

    def _row_classes(self, z, y):
        """Margins |z_i - z_y| [B, K] and classes i [B, K] of the kept rows
        (in row order: wrong classes by index, or the top_k by margin)."""
        m = self.ex.g.num_classes
        zy = tf.gather(z, y, axis=1, batch_dims=1)
        if self.top_k is None:
            r = tf.range(m - 1, dtype=tf.int32)[None, :]
            cls = r + tf.cast(r >= y[:, None], tf.int32)
        else:
            _, inv, _ = self._margins(z)
            _, cls = tf.math.top_k(inv, self.top_k)
        mg = tf.abs(tf.gather(z, cls, batch_dims=1) - zy[:, None])
        return tf.cast(mg, tf.float64), cls

    # -------------------------------------------------------- distributed
    def distributed(self, strategy):
        """A numpy step (batch, seed) -> results like :attr:`step`'s, that
        splits each batch over ``strategy``'s replicas (all workers' under
        ``MultiWorkerMirroredStrategy``) and all-gathers the results: sums
        and ties added, amax / amin global, per-example rows in example
        order.  Built by :func:`tfprec.statistics.distributed.make_step`
        (design and multi-worker contract there); one per strategy."""
        from tfprec.statistics import distributed as dist_lib
        held = self.dist_steps.get(id(strategy))
        if held is None or held[0] is not strategy:   # ids of dead objects recur
            held = self.dist_steps[id(strategy)] = (strategy, dist_lib.make_step(
                strategy, self._step, self.step.input_signature[0], self.per_class))
        return held[1]
