"""Per-tensor noise gains (METHOD.md section 2), exact, batched and streaming.

For every example x with float decision y and logits z, and every weight or
activation tensor T,

    E_T = (1/24) * mean_x sum_{i != y} ||d(z_i - z_y)/dT||^2 / (z_i - z_y)^2 .

The pass runs one forward pass per batch and one backward pass in which the
M-1 wrong classes are stacked along a leading axis, so each backward op runs
once on a [(M-1)*B, ...] tensor.  The cotangent of class i for example x is
(e_i - e_y) / |z_i - z_y|, so squared gradient norms are already divided by
the squared margins.  Per-example weight-gradient norms come from the layer
registry (:mod:`tfprec.statistics.registry`) from each layer's input and the
gradient of its pre-activation output.  Nothing is kept per example across
batches.  The pass itself is :class:`tfprec.statistics.backward.GainsPass` on
the graph executor (:mod:`tfprec.statistics.executor`).
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Union

import numpy as np

from tfprec import inputs
from tfprec._tf import keras, tf
from tfprec.errors import InvalidDataError
from tfprec.statistics import registry
from tfprec.statistics.backward import GainsPass
from tfprec.statistics.executor import executor_for
from tfprec.statistics.graph import parse_model, range_scale

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
      num_inputs: input activations per example (of the tensor this layer
        reads, after any pooling).
      act_group: "" if this layer alone reads its input tensor; otherwise the
        names, joined by "+", of all weight layers that read the same tensor.
        They must share one activation format (one stored tensor).
      e_a_shared: for a shared input, the gain of that one tensor quantized
        once: E||sum over the reading layers of their input gradients||^2 / 24
        (the members' noise is the same realization, so their gradients add
        before the norm).  None when not shared.
      num_inputs_written: elements per example of the tensor the previous
        layer writes before any pooling (the paper authors' memory
        convention; :func:`tfprec.statistics.graph.written_tensor`).  None
        (gains saved before this field existed) means ``num_inputs``; use
        :attr:`inputs_written`.
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
    num_inputs_written: Optional[int] = None

    @property
    def inputs_written(self) -> int:
        """num_inputs_written, or num_inputs when it is unknown (None)."""
        return self.num_inputs if self.num_inputs_written is None \
            else self.num_inputs_written

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


def layer_geometry(model) -> list:
    """Per weight layer of ``model``: name, class and cost-model geometry
    (dot_length, num_dots, num_weights, num_inputs, num_inputs_written; see
    :class:`LayerGains`)."""
    graph = parse_model(model)
    return [{"name": op.name, "layer_class": op.layer_class,
             **registry.geometry(graph, op)} for op in graph.weight_ops]


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
    dtype = inputs.choice("dtype", dtype, ("float32", "float64"))
    batch_size = inputs.positive_int("batch_size", batch_size)
    max_examples = inputs.optional_positive_int("max_examples", max_examples)
    top_k = inputs.optional_positive_int("top_k", top_k)
    class_chunk = inputs.optional_positive_int("class_chunk", class_chunk)
    sketch = inputs.nonnegative_int("sketch", sketch)
    graph = parse_model(model)
    m1 = graph.num_classes - 1
    if top_k is not None and top_k >= m1:
        top_k, sketch = None, 0           # nothing left to estimate: exact
    if top_k is None:
        sketch = 0
    rows = m1 if top_k is None else top_k + sketch
    chunk = min(rows, class_chunk or 32)
    ex = executor_for(model, graph, tf.as_dtype(dtype))
    gp = ex.cached(("gains", top_k, sketch, chunk),
                   lambda e: GainsPass(e, top_k, sketch, chunk))
    step = gp.step if strategy is None else gp.distributed(strategy)
    nw = len(ex.weight_ops)
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
    batches = inputs.iter_batches(x, graph.shapes[graph.input_id], batch_size,
                                  max_examples=max_examples, dtype=dtype,
                                  what="calibration data")
    for i, b in enumerate(batches):
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
    for j, op in enumerate(graph.weight_ops):
        geo = registry.geometry(graph, op)
        w = [op.attrs["kernel"]] + ([op.attrs["bias"]] if op.attrs["bias"] is not None else [])
        wmax = float(max(np.max(np.abs(t)) for t in w))
        lo_known, hi_known = graph.bounds.get(op.inputs[0], (None, None))
        lo = lo_known if lo_known is not None else float(amin[j])
        if lo_known is not None and hi_known is not None:
            hi, src = float(hi_known), "known bound"
        else:
            hi, src = float(amax[j]), "calibrated"
        signed = lo < 0
        group = gp.shared.get(op.inputs[0])
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
