"""Registered noise-gain rule of the ``embedding`` op (a Keras Embedding).

Semantics (METHOD.md sections 1-2 applied to a table lookup):

* the table W [V, D] (V token ids, D features) is the layer's one weight
  tensor, quantized like any other weight: one signed fixed-point format
  with range R_W = the power-of-two ceiling of max |W| and B_W bits; its
  noise gain is E_W = (1/24) E_x sum_{i != y} ||d(z_i - z_y)/dW||^2 /
  (z_i - z_y)^2 (probability per squared weight unit), as for a Dense
  kernel;
* the input is integer token ids in [0, V), which are not quantized: the op
  has no activation tensor (no E_A, no activation format, no activation
  bits; its plan entry has ``act_bits`` None and it adds nothing to the
  bound or the representational cost for its input);
* cost model: a lookup has no multiplications or additions, so its
  computational cost is 0 full adders; its representational cost is
  B_W * V * D bits (the table).  Geometry: dot length 1, V*D weights, one
  "dot product" (one looked-up value) per output element (N*D per example
  for N ids), N inputs per example (the ids, not stored as activations).

Per-example squared norms (exact, without per-example weight gradients):
with ids[b, t] and the stacked output gradient g[c, b, t, :] (one slice per
wrong class c), the table gradient of example b and class c is the
scatter-add of the rows g[c, b, t, :] into table rows ids[b, t], so

    ||grad_{c,b}||^2 = sum_{t, t'} [ids[b,t] == ids[b,t']] <g[c,b,t], g[c,b,t']>,

summed over c.  It is computed by adding, within each example, the gradient
rows of equal ids (``unsorted_segment_sum`` over (example, first position
of that id)) and summing the squares: O(B N^2) id comparisons and O(C B N D)
arithmetic, no loop over examples.

Ids are carried through the float pass as float values (exact below 2^24 in
float32) and cast to int32 for the lookup; :func:`check_ids` checks them on
the data first.
"""
from __future__ import annotations

import numpy as np

from tfprec._tf import tf
from tfprec.errors import InvalidDataError
from tfprec.statistics import registry
from tfprec.statistics.graph import NO_ACT_KINDS


def _ids(a):
    return tf.cast(a, tf.int32)


def _forward(attrs, a):
    """Rows of the table for ids ``a`` [B, ...]: [B, ..., D]."""
    return tf.gather(attrs["kernel_t"], _ids(a))


def _input_vjp(attrs, a, dy):
    """Ids are not differentiable: a zero gradient [C*B, ...] (no E_A)."""
    c = dy.shape[0]
    return tf.zeros(tf.concat([[c * tf.shape(a)[0]], tf.shape(a)[1:]], 0), dy.dtype)


def _sq_norms(attrs, a, dy):
    """Per-example squared norms of the table gradient, summed over the
    stacked classes: ``a`` [B, ...] ids, ``dy`` [C, B, ..., D] -> [B]."""
    c, d = dy.shape[0], dy.shape[-1]
    b = tf.shape(a)[0]
    ids = tf.reshape(_ids(a), [b, -1])                               # [B, N]
    n = tf.shape(ids)[1]
    same = tf.equal(ids[:, :, None], ids[:, None, :])                # [B, N, N]
    first = tf.argmax(tf.cast(same, tf.int32), axis=2, output_type=tf.int32)
    seg = tf.reshape(first + n * tf.range(b)[:, None], [-1])         # [B*N]
    g = tf.transpose(tf.reshape(dy, [c, b * n, d]), [1, 0, 2])       # [B*N, C, D]
    rows = tf.math.unsorted_segment_sum(g, seg, b * n)               # [B*N, C, D]
    return tf.reduce_sum(tf.reshape(tf.square(rows), [b, -1]), axis=1)


def _geometry(attrs, in_shape, out_shape):
    v, d = attrs["kernel"].shape
    return dict(dot_length=1, num_dots=int(np.prod(out_shape)),
                num_weights=int(v * d), num_inputs=int(np.prod(in_shape)))


registry.register("embedding", registry.WeightLayerFns(
    _forward, _input_vjp, _sq_norms, _geometry))


def _part(graph, x, input_id, tensor_id):
    """The values of ``tensor_id`` in batch ``x`` of graph input
    ``input_id``: ``x`` itself, or for a several-input model the input's
    part of the packed batch (:mod:`tfprec.packing`); None if neither."""
    if tensor_id == input_id:
        return x
    for op in graph.ops:
        spec = getattr(op.attrs.get("call"), "spec", None)
        if op.output == tensor_id and op.inputs == [input_id] and spec is not None:
            return x[:, spec.start: spec.start + spec.size]
    return None


def check_ids(graph, x, what: str = "x", input_id=None) -> None:
    """InvalidDataError naming the layer unless every id that an
    ``embedding`` op of ``graph`` reads from batch ``x`` of the graph input
    ``input_id`` (default: the graph's input) is an integer in [0, V) of
    that op's table (V = ``input_dim``).  Ids carried in float32 must also
    be exact: V at most 2^24 (else use ``dtype="float64"``).

    Costs one min / max (and an integrality test for float data) per batch.
    """
    input_id = graph.input_id if input_id is None else input_id
    x = np.asarray(x)
    if x.size == 0:
        return
    for op in graph.ops:
        if op.kind not in NO_ACT_KINDS:
            continue
        ids = _part(graph, x, input_id, op.inputs[0])
        if ids is None or ids.size == 0:
            continue
        v = op.attrs["input_dim"]
        if ids.dtype.kind == "f" and not np.all(ids == np.round(ids)):
            raise InvalidDataError(
                f"{what}: layer '{op.name}' (Embedding) reads integer token ids, "
                "but the data hold non-integer values.")
        if ids.dtype == np.float32 and v > 2 ** 24:
            raise InvalidDataError(
                f"{what}: layer '{op.name}' (Embedding, input_dim={v}) has ids "
                "above 2^24, which float32 does not hold exactly; run the "
                "pass with dtype='float64'.")
        lo, hi = float(ids.min()), float(ids.max())
        if lo < 0 or hi >= v:
            bad = lo if lo < 0 else hi
            raise InvalidDataError(
                f"{what}: layer '{op.name}' (Embedding, input_dim={v}) reads "
                f"token ids in [0, {v}), but the data hold id {bad:.0f} (ids "
                f"range over [{lo:.0f}, {hi:.0f}]).")


def check_model_ids(model, x, what: str = "x", batch_size: int = 4096) -> None:
    """:func:`check_ids` over all of ``x`` (numpy or tf.data, streamed) for
    a float tf_keras ``model`` with Embedding layers; nothing (no pass over
    ``x``) for a model without one."""
    from tfprec import inputs                    # local: inputs is low level
    from tfprec._tf import keras
    from tfprec.statistics.graph import parse_model
    from tfprec import compat
    layers = ([n.layer for n in compat.nodes_in_order(model)]   # nested: expanded
              if compat.is_graph_network(model) else model.layers)
    if not any(isinstance(l, keras.layers.Embedding) for l in layers):
        return
    graph = parse_model(model)
    for b in inputs.iter_batches(x, graph.shapes[graph.input_id], batch_size,
                                 dtype=inputs.model_dtype(model), what=what):
        check_ids(graph, b, what)
