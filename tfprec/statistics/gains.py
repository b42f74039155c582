"""Per-tensor noise gains (METHOD.md section 2), exact, batched and streaming.

For every example x with float decision y and logits z, and every weight or
activation tensor T,

    E_T = (1/24) * mean_x sum_{i != y} ||d(z_i - z_y)/dT||^2 / (z_i - z_y)^2 .

The pass runs one forward pass per batch and one backward pass in which the
M-1 wrong classes are stacked along a leading axis, so each backward op runs
once on a [(M-1)*B, ...] tensor.  The cotangent of class i for example x is
(e_i - e_y) / |z_i - z_y|, so squared gradient norms are already divided by
the squared margins.  Per-example weight-gradient norms come from the layer
registry (:mod:`tfprec.registry`) from each layer's input and the gradient of
its pre-activation output.  Nothing is kept per example across batches.
"""
from __future__ import annotations

import dataclasses
import math
import weakref
from typing import Iterable, Optional, Union

import numpy as np

from tfprec.statistics import registry
from tfprec._tf import keras, tf
from tfprec.errors import InvalidDataError
from tfprec.statistics.graph import Graph, WEIGHT_KINDS, parse_model, range_scale

DataLike = Union[np.ndarray, "tf.data.Dataset"]


@dataclasses.dataclass(frozen=True)
class LayerGains:
    """Noise gains and formats of one weight layer.

    Attributes:
      name: Keras layer name.
      layer_class: Keras class name (Dense, Conv2D, DepthwiseConv2D).
      e_w: noise gain E_W of the weights (kernel and bias, BN folded), in
        probability per squared weight unit.
      e_a: noise gain E_A of the layer's input activations.
      r_w: weight range scale R_W (power of two); weights live on [-R_W, R_W).
      r_a: activation range scale R_A (power of two); [-R_A, R_A) if
        ``act_signed`` else [0, 2 R_A).
      act_signed: whether the input activation needs a sign bit.
      act_range_source: "known bound" (from a clipping activation) or
        "calibrated" (observed on the calibration data).
      act_low, act_high: the activation range used to choose R_A.
      weight_max_abs: max |w| over kernel and bias after folding.
      dot_length: D, dot-product length including the bias.
      num_dots: P, dot products per example.
      num_weights: weights including biases.
      num_inputs: input activations per example.
      act_group: "" if this layer alone reads its input tensor; otherwise the
        names, joined by "+", of all weight layers that read the same tensor.
        They must share one activation format (one stored tensor).
      e_a_shared: for a shared input, the gain of that one tensor quantized
        once: E||sum over the reading layers of their input gradients||^2 / 24
        (the members' noise is the same realization, so their gradients add
        before the norm).  None when not shared.
    """

    name: str
    layer_class: str
    e_w: float
    e_a: float
    r_w: float
    r_a: float
    act_signed: bool
    act_range_source: str
    act_low: float
    act_high: float
    weight_max_abs: float
    dot_length: int
    num_dots: int
    num_weights: int
    num_inputs: int
    act_group: str = ""
    e_a_shared: Optional[float] = None

    @property
    def g_a_shared(self) -> float:
        """Normalized gain of the input tensor as one quantizer shared by all
        weight layers of ``act_group`` (G_A itself if the input is not shared)."""
        e = self.e_a if self.e_a_shared is None else self.e_a_shared
        return self.r_a ** 2 * e

    @property
    def g_w(self) -> float:
        """Normalized weight gain G_W = R_W^2 E_W."""
        return self.r_w ** 2 * self.e_w

    @property
    def g_a(self) -> float:
        """Normalized activation gain G_A = R_A^2 E_A."""
        return self.r_a ** 2 * self.e_a


@dataclasses.dataclass(frozen=True)
class NoiseGains:
    """Result of :func:`noise_gains`: one :class:`LayerGains` per weight layer.

    Attributes:
      layers: per-layer gains in topological order.
      num_examples: examples averaged over.
      num_classes: M, the number of logits.
      num_ties: (example, wrong class) pairs with z_i == z_y; they add nothing
        (their margin is zero, the first-order model does not apply).
      dropped_softmax: whether a final softmax was removed (gains are on the
        pre-softmax logits).
      mode: "exact", or "top<k>+sketch<s>" for the many-class estimator.
      example_w, example_a: with ``per_example=True``, arrays [N, L]: each
        example's sum over wrong classes of ||d(z_i - z_y)/dT||^2 /
        (z_i - z_y)^2 / 24 for the weights / the input tensor (the shared
        tensor's value for layers that read one); E_T is their mean.  Not
        saved by ``to_dict``.
    """

    layers: tuple
    num_examples: int
    num_classes: int
    num_ties: int
    dropped_softmax: bool = False
    mode: str = "exact"
    example_w: Optional[np.ndarray] = dataclasses.field(
        default=None, compare=False, repr=False)
    example_a: Optional[np.ndarray] = dataclasses.field(
        default=None, compare=False, repr=False)

    def __getitem__(self, name: str) -> LayerGains:
        for lg in self.layers:
            if lg.name == name:
                return lg
        raise KeyError(f"no weight layer named {name!r}; layers: {self.names}")

    @property
    def names(self) -> list:
        return [lg.name for lg in self.layers]

    def to_dict(self) -> dict:
        return {"layers": [dataclasses.asdict(lg) for lg in self.layers],
                "num_examples": self.num_examples,
                "num_classes": self.num_classes, "num_ties": self.num_ties,
                "dropped_softmax": self.dropped_softmax}

    @classmethod
    def from_dict(cls, d: dict) -> "NoiseGains":
        return cls(tuple(LayerGains(**lg) for lg in d["layers"]),
                   int(d["num_examples"]), int(d["num_classes"]),
                   int(d["num_ties"]), bool(d.get("dropped_softmax", False)),
                   str(d.get("mode", "exact")))


class _Engine:
    """Compiled forward + stacked backward pass over a parsed graph."""

    def __init__(self, graph: Graph, dtype: tf.DType, top_k: Optional[int],
                 sketch: int, chunk: int):
        self.g = graph
        self.dtype = dtype
        self.top_k = top_k          # None: exact, all M-1 wrong classes
        self.sketch = sketch
        self.c = chunk              # cotangent rows per stacked backward
        self.weight_ops = graph.weight_ops
        for op in self.weight_ops:
            a = op.attrs
            # Weights are variables so one trace serves later calls (e.g. a
            # callback after every epoch); load() refreshes their values.
            a["kernel_t"] = tf.Variable(a["kernel"], dtype=dtype, trainable=False)
            a["bias_t"] = (None if a["bias"] is None else
                           tf.Variable(a["bias"], dtype=dtype, trainable=False))
            if op.kind == "conv2d":
                a["use_gram"] = registry.conv_use_gram(
                    a, graph.shapes[op.inputs[0]], graph.shapes[op.output],
                    graph.num_classes)
        self.needs_grad = self._needs_grad()
        readers: dict = {}
        for op in self.weight_ops:
            readers.setdefault(op.inputs[0], []).append(op.name)
        # Tensors read by several weight layers: one shared quantizer each.
        self.shared = {t: names for t, names in readers.items() if len(names) > 1}
        self.dist_steps: dict = {}      # id(strategy) -> compiled replica step
        # relu/clip ops read only by a disjoint max-pool: fused into its mask.
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
        shape = [None, *graph.shapes[graph.input_id]]
        self.step = tf.function(self._step, input_signature=[
            tf.TensorSpec(shape, dtype), tf.TensorSpec([2], tf.int32)],
            autograph=False)  # plain TF ops and an explicit tf.while_loop

    def load(self, graph: Graph) -> None:
        """Copies the (folded) weights of a freshly parsed graph."""
        for mine, new in zip(self.weight_ops, graph.weight_ops):
            mine.attrs["kernel"] = new.attrs["kernel"]
            mine.attrs["bias"] = new.attrs["bias"]
            mine.attrs["kernel_t"].assign(new.attrs["kernel"])
            if new.attrs["bias"] is not None:
                mine.attrs["bias_t"].assign(new.attrs["bias"])

    def _needs_grad(self) -> set:
        """Tensors through which a gradient must flow to reach a weight op
        (those with a weight op upstream)."""
        need: set = set()
        for op in self.g.ops:
            if op.kind in WEIGHT_KINDS or any(i in need for i in op.inputs):
                need.add(op.output)
        return need

    def _forward(self, x):
        vals = {self.g.input_id: x}
        for op in self.g.ops:
            ins = [vals[i] for i in op.inputs]
            a = op.attrs
            k = op.kind
            if k in WEIGHT_KINDS:
                y = registry.lookup(k).forward(a, ins[0])
            else:
                y = registry.forward_op(op, ins, self.g.shapes[op.output], self.dtype)
            vals[op.output] = y
        return vals

    def _backward_op(self, op, vals, g):
        """Propagates the stacked gradient g of op's output to its inputs.

        Returns a list of (input id, gradient) pairs.
        """
        c = self.c
        a = op.attrs
        k = op.kind
        x = vals[op.inputs[0]] if op.inputs else None
        if k == "act":
            if a["fn"] == "linear":
                return [(op.inputs[0], g)]
            gs = registry._split(g, c) * self._act_mask(op, x)[None]
            return [(op.inputs[0], registry._merge(gs))]
        if k == "maxpool":
            if tuple(a["ksize"]) == tuple(a["strides"]):
                act = self.fusable_act.get(op.name)
                if act is not None:    # route and clip masks in one product
                    pre = vals[act.inputs[0]]
                    return [(act.inputs[0],
                             self._maxpool_disjoint_grad(op, x, g, self._act_mask(act, pre)))]
                return [(op.inputs[0], self._maxpool_disjoint_grad(op, x, g))]
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
        if k in ("identity",):
            return [(op.inputs[0], g)]
        if k == "add":
            return [(i, g) for i in op.inputs]
        if k == "concat":
            sizes = [self.g.shapes[i][a["axis"] - 1] for i in op.inputs]
            parts = tf.split(g, sizes, axis=a["axis"])
            return list(zip(op.inputs, parts))
        raise AssertionError(k)  # pragma: no cover

    def _act_mask(self, op, x):
        """Derivative (0/1) of a relu / clipping act op at its input x."""
        mask = x > 0
        if op.attrs["high"] is not None:
            mask = tf.logical_and(mask, x < op.attrs["high"])
        return tf.cast(mask, self.dtype)

    def _maxpool_disjoint_grad(self, op, x, g, extra_mask=None):
        """Max-pool gradient for non-overlapping windows (ksize == strides).

        The routing mask (1 at the first maximum of each window, as
        MaxPoolGrad) is computed once at batch B; the stacked gradient is
        upsampled and masked, instead of re-running MaxPoolGrad on C tiled
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
        top = max((ho * kh - h) // 2, 0) if op.attrs["padding"] == "SAME" else 0
        left = max((wo * kw - w) // 2, 0) if op.attrs["padding"] == "SAME" else 0
        up = up[:, top:top + h, left:left + w, :]
        up = tf.pad(up, [[0, 0], [0, h - min(h, ho * kh - top)],
                         [0, w - min(w, wo * kw - left)], [0, 0]])
        return registry._merge(registry._split(up, self.c) * mask[None])

    def _margins(self, z):
        """Float decision y [B], margins z_i - z_y [B, M] and tie mask."""
        y = tf.argmax(z, axis=1, output_type=tf.int32)
        zy = tf.gather(z, y, axis=1, batch_dims=1)
        margin = z - zy[:, None]
        not_y = tf.logical_not(tf.one_hot(y, self.g.num_classes, on_value=True,
                                          off_value=False))
        tie = tf.logical_and(tf.equal(margin, 0.0), not_y)
        inv = tf.where(tf.logical_or(tie, tf.logical_not(not_y)), tf.zeros_like(z),
                       1.0 / tf.where(tf.equal(margin, 0.0), tf.ones_like(z),
                                      tf.abs(margin)))
        return y, inv, tie          # inv: 1/|z_i - z_y| on wrong non-tied classes

    def _exact_rows(self, y, inv, start):
        """Cotangents of wrong classes start..start+R-1: [R, B, M].

        Row r of example x is (e_i - e_y) / |z_i - z_y| for its (start+r)-th
        wrong class i; rows past the M-1 wrong classes (padding) are zero.
        """
        m = self.g.num_classes
        cls = start + tf.range(self.c, dtype=tf.int32)[:, None]           # [R, 1]
        wrong = tf.minimum(cls + tf.cast(cls >= y[None, :], tf.int32), m - 1)
        w = tf.transpose(tf.gather(inv, tf.transpose(wrong), batch_dims=1))
        w = tf.where(cls < m - 1, w, tf.zeros_like(w))                     # [R, B]
        return (tf.one_hot(wrong, m, dtype=self.dtype)
                - tf.one_hot(y, m, dtype=self.dtype)[None]) * w[..., None]

    def _estimate_rows(self, y, inv, seed):
        """Top-k closest wrong classes exactly, the others by a sign sketch.

        Rows 0..k-1 are the cotangents of the k wrong classes with the
        smallest |z_i - z_y|; rows k..k+s-1 are r_j . (tail cotangents) /
        sqrt(s) with independent random signs r_j, whose squared norms are an
        unbiased estimate of the tail's sum.  Returns [k + s, B, M].
        """
        m = self.g.num_classes
        k, s = self.top_k, self.sketch
        y1 = tf.one_hot(y, m, dtype=self.dtype)
        _, idx = tf.math.top_k(inv, k)                                   # [B, k]
        top = tf.reduce_sum(tf.one_hot(idx, m, dtype=self.dtype), axis=1)  # [B, M]
        rows = [(tf.one_hot(tf.transpose(idx), m, dtype=self.dtype) - y1[None])
                * tf.transpose(tf.gather(inv, idx, batch_dims=1))[..., None]]
        if s:
            tail = inv * (1.0 - top)                                     # [B, M]
            r = tf.sign(tf.random.stateless_uniform(
                [s, tf.shape(inv)[0], m], seed, -1.0, 1.0, dtype=self.dtype))
            v = r * tail[None] / tf.sqrt(tf.cast(s, self.dtype))
            rows.append(v - tf.reduce_sum(v, axis=2, keepdims=True) * y1[None])
        return tf.concat(rows, axis=0)

    def _backward(self, vals, cot):
        """Stacked backward pass for cotangents [R, B, M] of the logits.

        Returns per-layer [L, B] sums over the R rows of squared gradient
        norms of weights (sw) and of each weight layer's input (sa).
        """
        g = self.g
        c = self.c
        grads = {g.output_id: registry._merge(cot)}
        sw, sa, sh = {}, {}, {}
        pending = {t: [None, len(n)] for t, n in self.shared.items()}
        for op in reversed(g.ops):
            gr = grads.pop(op.output, None)
            if gr is None:
                continue
            if op.kind in WEIGHT_KINDS:
                fns = registry.lookup(op.kind)
                a = vals[op.inputs[0]]
                dy = registry._split(gr, c)
                sw[op.name] = fns.sq_norms(op.attrs, a, dy)
                da = fns.input_vjp(op.attrs, a, dy)
                sa[op.name] = tf.reduce_sum(tf.square(
                    tf.reshape(da, [c, tf.shape(a)[0], -1])), axis=[0, 2])
                outs = [(op.inputs[0], da)]
                acc = pending.get(op.inputs[0])
                if acc is not None:
                    acc[0] = da if acc[0] is None else acc[0] + da
                    acc[1] -= 1
                    if acc[1] == 0:
                        sh[op.inputs[0]] = tf.reduce_sum(tf.square(
                            tf.reshape(acc[0], [c, tf.shape(a)[0], -1])), axis=[0, 2])
            else:
                outs = self._backward_op(op, vals, gr)
            for tid, d in outs:
                if tid in self.needs_grad:
                    grads[tid] = grads[tid] + d if tid in grads else d
        names = [op.name for op in self.weight_ops]
        # Shared tensors are reported in the slot of their readers (same value).
        shared = [sh[op.inputs[0]] if op.inputs[0] in sh else sa[op.name]
                  for op in self.weight_ops]
        return (tf.stack([sw[n] for n in names]), tf.stack([sa[n] for n in names]),
                tf.stack(shared))

    def _step(self, x, seed):
        vals = self._forward(x)
        y, inv, tie = self._margins(vals[self.g.output_id])
        nb = tf.shape(x)[0]
        zeros = tf.zeros([len(self.weight_ops), nb], self.dtype)
        if self.top_k is None:
            rows_total = self.g.num_classes - 1
            make = lambda i: self._exact_rows(y, inv, i * self.c)
        else:
            est = self._estimate_rows(y, inv, seed)
            rows_total = self.top_k + self.sketch
            pad = -rows_total % self.c
            est = tf.pad(est, [[0, pad], [0, 0], [0, 0]])
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
        acts = [vals[op.inputs[0]] for op in self.weight_ops]
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


_ENGINES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _engine_for(model, graph: Graph, dtype: tf.DType, top_k, sketch, chunk) -> _Engine:
    """The model's cached engine for these settings, loaded with its weights."""
    per_model = _ENGINES.setdefault(model, {})
    key = (dtype.name, top_k, sketch, chunk)
    engine = per_model.get(key)
    if engine is None:
        engine = per_model[key] = _Engine(graph, dtype, top_k, sketch, chunk)
    else:
        engine.load(graph)
    return engine


def _batches(x: DataLike, batch_size: int, max_examples: Optional[int],
             in_shape: tuple) -> Iterable[np.ndarray]:
    """Yields input batches of x (numpy or tf.data), checking shape."""
    def check(shape, what):
        if tuple(shape) != tuple(in_shape):
            raise InvalidDataError(
                f"{what} has per-example shape {tuple(shape)}, but the model "
                f"expects {tuple(in_shape)}.")

    if isinstance(x, tf.data.Dataset):
        spec = x.element_spec
        if isinstance(spec, (tuple, list)):
            x = x.map(lambda *e: e[0])
            spec = spec[0]
        if isinstance(spec, dict):
            raise InvalidDataError("dict-valued datasets are not supported; "
                                   "map the dataset to its input tensor.")
        shape = tuple(spec.shape)
        if len(shape) == len(in_shape):
            check(shape, "dataset element")
            x = x.batch(batch_size)
        else:
            check(shape[1:], "dataset batch")
        seen = 0
        for b in x:
            b = np.asarray(b)
            if max_examples is not None:
                b = b[: max_examples - seen]
            if len(b) == 0:
                break
            seen += len(b)
            yield b
        return
    if isinstance(x, (list, tuple)):
        raise InvalidDataError("pass calibration inputs as one numpy array or a "
                               "tf.data.Dataset, not a list or tuple.")
    x = np.asarray(x)
    if x.ndim < 1 or x.dtype.kind not in "fiub":
        raise InvalidDataError(
            f"calibration data must be a numeric array; got dtype {x.dtype} "
            f"and shape {x.shape}.")
    check(x.shape[1:], "calibration data")
    n = len(x) if max_examples is None else min(len(x), max_examples)
    for s in range(0, n, batch_size):
        yield x[s: min(s + batch_size, n)]


def layer_geometry(model) -> list:
    """Per weight layer of ``model``: name, class and cost-model geometry."""
    graph = parse_model(model)
    out = []
    for op in graph.weight_ops:
        geo = registry.lookup(op.kind).geometry(
            op.attrs, graph.shapes[op.inputs[0]], graph.shapes[op.output])
        out.append({"name": op.name, "layer_class": op.layer_class, **geo})
    return out


def noise_gains(model, x: DataLike, batch_size: int = 128,
                max_examples: Optional[int] = None, dtype: str = "float32",
                verbose: bool = False, top_k: Optional[int] = None,
                sketch: int = 0, seed: int = 0, class_chunk: Optional[int] = None,
                strategy: Optional["tf.distribute.Strategy"] = None,
                per_example: bool = False) -> NoiseGains:
    """Computes the per-tensor noise gains of a trained classifier.

    Args:
      model: a Sequential or functional tf_keras classifier whose output is a
        vector of M class scores (logits, or softmax probabilities, in which
        case the pre-softmax logits are analyzed).  It is only read.
      x: calibration inputs: a numpy array [N, ...] or a ``tf.data.Dataset``
        of inputs (batched or not; (input, label) elements are accepted and
        the labels ignored).
      batch_size: examples per batch (numpy input or unbatched datasets); the
        global batch when ``strategy`` is given.
      max_examples: use at most this many examples.
      dtype: "float32" (default) or "float64" arithmetic for the pass.
      verbose: show a Keras progress bar.
      top_k: None (default) for the exact pass over all M-1 wrong classes.
        An int k estimates instead: the k wrong classes with the smallest
        margins exactly, the other classes by ``sketch`` random-sign
        projections (an unbiased estimate of their sum; with sketch=0 they
        are dropped, which can only lower the gains).  Costs k + sketch
        backward rows per example instead of M-1.
      sketch: number of random projections for the classes beyond top_k.
      seed: seed of the random projections (the result is deterministic).
      class_chunk: cotangent rows per stacked backward pass (memory grows
        with class_chunk * batch_size); default min(rows, 32).
      strategy: a ``tf.distribute.Strategy``; each batch is split over its
        replicas and the sums are reduced across them.
      per_example: also keep every example's margin-weighted squared norms
        (2 floats per weight layer and example), which the per-example
        bound (:func:`tfprec.planning.plan.per_example_bound`) needs.  Memory then
        grows with the number of examples (by 16 bytes per layer each).

    Returns:
      A :class:`NoiseGains` with, per weight layer, E_W, E_A (probability per
      squared unit), range scales R_W, R_A and normalized gains G = R^2 E.

    Raises:
      UnsupportedModelError: the model or one of its layers is not supported.
      InvalidDataError: the data is empty, mis-shaped, or not finite, or an
        argument is out of range.
    """
    if dtype not in ("float32", "float64"):
        raise InvalidDataError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    for name, v in (("batch_size", batch_size), ("max_examples", max_examples),
                    ("top_k", top_k), ("class_chunk", class_chunk)):
        if v is not None and (not isinstance(v, (int, np.integer)) or v < 1):
            raise InvalidDataError(f"{name} must be a positive int, got {v!r}")
    if not isinstance(sketch, (int, np.integer)) or sketch < 0:
        raise InvalidDataError(f"sketch must be a non-negative int, got {sketch!r}")
    graph = parse_model(model)
    m1 = graph.num_classes - 1
    if top_k is not None and top_k >= m1:
        top_k, sketch = None, 0           # nothing left to estimate: exact
    if top_k is None:
        sketch = 0
    rows = m1 if top_k is None else top_k + sketch
    chunk = min(rows, class_chunk or 32)
    engine = _engine_for(model, graph, tf.as_dtype(dtype), top_k, sketch, chunk)
    step = engine.step if strategy is None else _distributed(engine, strategy)
    nw = len(engine.weight_ops)
    sw = np.zeros(nw)
    sa = np.zeros(nw)
    sh = np.zeros(nw)
    pw, pa = [], []
    amax = np.full(nw, -np.inf)
    amin = np.full(nw, np.inf)
    n = 0
    ties = 0
    total = (len(x) if isinstance(x, np.ndarray) else None)
    if total is not None and max_examples is not None:
        total = min(total, max_examples)
    bar = keras.utils.Progbar(total, unit_name="example") if verbose else None
    for i, b in enumerate(_batches(x, batch_size, max_examples,
                                   graph.shapes[graph.input_id])):
        b = np.asarray(b, dtype=dtype)
        finite = np.isfinite(b.reshape(len(b), -1)).all(axis=1)
        if not finite.all():
            raise InvalidDataError(
                f"calibration example {n + int(np.argmin(finite))} contains "
                "NaN or Inf.")
        out = step(b, np.array([seed, i], np.int32))
        sw += out["sw"]
        sa += out["sa"]
        sh += out["sh"]
        if per_example:
            pw.append(np.asarray(out["pw"]).T)
            pa.append(np.asarray(out["pa"]).T)
        amax = np.maximum(amax, out["amax"])
        amin = np.minimum(amin, out["amin"])
        ties += int(out["ties"])
        n += len(b)
        if bar is not None:
            bar.update(n)
    if n == 0:
        raise InvalidDataError("calibration data is empty: noise gains need at "
                               "least one example.")
    layers = []
    for j, op in enumerate(engine.weight_ops):
        fns = registry.lookup(op.kind)
        geo = fns.geometry(op.attrs, graph.shapes[op.inputs[0]],
                           graph.shapes[op.output])
        w = [op.attrs["kernel"]] + ([op.attrs["bias"]] if op.attrs["bias"] is not None else [])
        wmax = float(max(np.max(np.abs(t)) for t in w))
        lo_known, hi_known = graph.bounds.get(op.inputs[0], (None, None))
        lo = lo_known if lo_known is not None else float(amin[j])
        if lo_known is not None and hi_known is not None:
            hi, src = float(hi_known), "known bound"
        else:
            hi, src = float(amax[j]), "calibrated"
        signed = lo < 0
        group = engine.shared.get(op.inputs[0])
        layers.append(LayerGains(
            name=op.name, layer_class=op.layer_class,
            e_w=float(sw[j] / n / 24.0), e_a=float(sa[j] / n / 24.0),
            r_w=range_scale(-wmax, wmax, True),
            r_a=range_scale(lo, hi, signed), act_signed=bool(signed),
            act_range_source=src, act_low=float(lo), act_high=float(hi),
            weight_max_abs=wmax, **geo,
            act_group="+".join(group) if group else "",
            e_a_shared=float(sh[j] / n / 24.0) if group else None))
    return NoiseGains(tuple(layers), n, graph.num_classes, ties,
                      graph.dropped_softmax,
                      "exact" if top_k is None else f"top{top_k}+sketch{sketch}",
                      np.concatenate(pw) / 24.0 if per_example else None,
                      np.concatenate(pa) / 24.0 if per_example else None)


def _distributed(engine: _Engine, strategy):
    """A step that splits each batch over the strategy's replicas."""
    n_rep = strategy.num_replicas_in_sync
    reduce_ops = {"sw": "SUM", "sa": "SUM", "sh": "SUM", "ties": "SUM",
                  "pw": "CONCAT", "pa": "CONCAT", "amax": "MAX",
                  "amin": "MIN"}

    run = engine.dist_steps.get(id(strategy))
    if run is None:
        run = engine.dist_steps[id(strategy)] = tf.function(
            lambda x, seed: strategy.run(engine._step, args=(x, seed)),
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
