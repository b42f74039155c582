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
from tfprec.fixedpoint import is_pow2, range_scale
from tfprec.statistics import channels, embedding, registry, sanity
from tfprec.statistics.backward import GainsPass
from tfprec.statistics.executor import auto_batch_size, executor_for
from tfprec.statistics.fingerprint import model_fingerprint  # noqa: F401  (re-exported)
from tfprec.statistics.graph import NO_ACT_KINDS, parse_model
from tfprec.statistics.shifts import (NUM_BITS, activation_format, activation_formats,
                                      check_same_format, coherence_table, shift_pass_for)

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
      has_act: False for a layer whose input is not a quantized activation:
        an Embedding reads integer token ids, which have no fixed-point
        format (:mod:`tfprec.statistics.embedding`).  Such a layer has no
        E_A: ``e_a`` is 0, ``r_a`` 1, ``act_signed`` False,
        ``act_range_source`` "none", ``act_low`` = ``act_high`` = 0, no
        ``act_group``; ``num_inputs`` counts its ids per example but they
        cost nothing; plans give it ``act_bits`` None.
      r_w_channels: None (one weight range R_W per tensor), or the range
        scales R_c (powers of two) of the layer's output channels when the
        gains were computed with ``per_channel=True``
        (:mod:`tfprec.statistics.channels`); ``r_w`` is then their maximum
        and ``e_w`` the effective gain sum_c (R_c / R_W)^2 E_c, so that
        ``g_w`` = sum_c R_c^2 E_c keeps its meaning in the bound.
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
    has_act: bool = True
    r_w_channels: Optional[tuple] = None

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
      class_w, class_a: with ``per_class=True``, arrays [N, K, L] (K = M-1
        wrong classes, or ``top_k``): for each example x, kept wrong class i
        and layer, ||d(z_i - z_y)/dT||^2 / (z_i - z_y)^2 / 24 (1 / squared
        logit units times squared tensor units; the input tensor's shared
        value for layers that read one); summed over K they give
        example_w / example_a (exact mode).  What the mismatch predictor
        (:func:`tfprec.planning.predict.predicted_mismatch`) needs.
      class_margin, class_index: with ``per_class=True``, [N, K]: the
        margin z_y - z_i (logit units) and the class i of each kept row.
      class_shift, class_act_shift: with ``per_class=True``, [L, 15, N, K]
        float32: the exact change of each kept margin z_y - z_i (logit
        units) when only layer l's weights (kernel and bias, BN folded), or
        only its input tensor, are rounded to b = 2..10 bits (index b - 2;
        the entries of 11..16 bits are 0) on their range R_W / R_A, the
        plan's rounding, everything else float (:mod:`tfprec.statistics.shifts`):
        known shifts of each margin, which the predictor's default model adds.
      input_noise: with ``per_class=True``, [2, L, 15, L] float64: [0, s,
        b - 2, l] (layer s's weights at b bits) and [1, s, b - 2, l] (its
        input), the mean over examples of the squared change of layer l's
        input, summed over its values / its number of nonzero float values
        (squared activation units; the upstream noise the predictor sees).
      act_coherence: with ``per_class=True``, [L, 9, S]: the share of layer
        l's input rounding error at b = 2..10 bits that stays coherent under
        upstream noise of spread s Delta (shifts.coherence_table).
        The class_* arrays, input_noise and act_coherence are not saved by ``to_dict``.
      fingerprint: :func:`model_fingerprint` of the model the gains were
        computed on (None for gains made by hand or saved without it);
        plans made from the gains copy it, and
        :meth:`~tfprec.planning.plan.PrecisionPlan.validate_for` refuses
        such a plan on a model with other weights.
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
    class_w: Optional[np.ndarray] = dataclasses.field(
        default=None, compare=False, repr=False)
    class_a: Optional[np.ndarray] = dataclasses.field(
        default=None, compare=False, repr=False)
    class_margin: Optional[np.ndarray] = dataclasses.field(
        default=None, compare=False, repr=False)
    class_index: Optional[np.ndarray] = dataclasses.field(
        default=None, compare=False, repr=False)
    fingerprint: Optional[str] = None
    class_shift: Optional[np.ndarray] = dataclasses.field(
        default=None, compare=False, repr=False)
    class_act_shift: Optional[np.ndarray] = dataclasses.field(
        default=None, compare=False, repr=False)
    input_noise: Optional[np.ndarray] = dataclasses.field(
        default=None, compare=False, repr=False)
    act_coherence: Optional[np.ndarray] = dataclasses.field(
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
        """JSON-ready dict (per-example and per-class arrays are not saved)."""
        return {"layers": [dataclasses.asdict(lg) for lg in self.layers],
                "num_examples": self.num_examples,
                "num_classes": self.num_classes, "num_ties": self.num_ties,
                "dropped_softmax": self.dropped_softmax, "mode": self.mode,
                "fingerprint": self.fingerprint}

    @classmethod
    def from_dict(cls, d: dict) -> "NoiseGains":
        """Gains from :meth:`to_dict`'s dict, every field checked first.

        Raises:
          InvalidDataError: ``d`` is not a dict, a key is missing or unknown,
            or a value has the wrong type or is out of range (negative or
            non-finite gains, ranges that are not powers of two, ...); the
            message names the key and the layer.
        """
        if not isinstance(d, dict):
            raise InvalidDataError(f"gains must be a dict (NoiseGains.to_dict()), "
                                   f"got {type(d).__name__}")
        missing = [k for k in ("layers", "num_examples", "num_classes", "num_ties")
                   if k not in d]
        if missing:
            raise InvalidDataError(f"gains dict lacks keys {missing}")
        raw = d["layers"]
        if not isinstance(raw, list) or not raw:
            raise InvalidDataError(f"gains key 'layers' must be a non-empty list of "
                                   f"layer dicts, got {raw!r:.80}")
        layers = tuple(_layer_gains_from_dict(i, ld) for i, ld in enumerate(raw))
        names = [lg.name for lg in layers]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise InvalidDataError(f"gains list layers {dup} more than once")
        fp = d.get("fingerprint")
        if fp is not None:
            inputs.text("gains key 'fingerprint'", fp, allow_empty=False)
        num_classes = inputs.positive_int("gains key 'num_classes'", d["num_classes"])
        if num_classes < 2:
            raise InvalidDataError(f"gains key 'num_classes' must be at least 2, "
                                   f"got {num_classes}")
        return cls(layers,
                   inputs.positive_int("gains key 'num_examples'", d["num_examples"]),
                   num_classes,
                   inputs.nonnegative_int("gains key 'num_ties'", d["num_ties"]),
                   inputs.flag("gains key 'dropped_softmax'",
                               d.get("dropped_softmax", False)),
                   inputs.text("gains key 'mode'", d.get("mode", "exact"),
                               allow_empty=False),
                   fingerprint=fp)


_GAIN_FIELDS = ("e_w", "e_a", "weight_max_abs")     # finite, >= 0
_COUNT_FIELDS = ("dot_length", "num_dots", "num_weights", "num_inputs")


def _layer_gains_from_dict(i: int, ld) -> LayerGains:
    """One checked :class:`LayerGains` from a saved dict (InvalidDataError)."""
    if not isinstance(ld, dict):
        raise InvalidDataError(f"gains layer #{i} must be a dict, got {ld!r:.80}")
    fields = {f.name: f for f in dataclasses.fields(LayerGains)}
    optional = ("act_group", "e_a_shared", "num_inputs_written", "has_act",
                "r_w_channels")
    where = f"gains layer #{i} ({ld.get('name', '?')!r})"
    missing = [f for f in fields if f not in ld and f not in optional]
    if missing:
        raise InvalidDataError(f"{where} lacks keys {missing}")
    unknown = sorted(set(ld) - set(fields))
    if unknown:
        raise InvalidDataError(f"{where} has unknown keys {unknown}")
    v = dict(ld)
    if v.get("r_w_channels") is not None:
        rc = v["r_w_channels"]
        if (not isinstance(rc, (list, tuple)) or not rc
                or any(isinstance(r, bool) or not is_pow2(r) for r in rc)
                or max(rc) != v.get("r_w")):
            raise InvalidDataError(f"{where}: r_w_channels must be a non-empty list "
                                   f"of powers of two whose largest is r_w, got {rc!r:.80}")
        v["r_w_channels"] = tuple(float(r) for r in rc)
    for k in ("name", "layer_class", "act_range_source"):
        inputs.text(f"{where}: {k}", v[k], allow_empty=False)
    for k in _GAIN_FIELDS:
        v[k] = inputs.nonnegative_number(f"{where}: {k}", v[k])
    if v.get("e_a_shared") is not None:
        v["e_a_shared"] = inputs.nonnegative_number(f"{where}: e_a_shared",
                                                    v["e_a_shared"])
    for k in ("r_w", "r_a"):
        if isinstance(v[k], bool) or not is_pow2(v[k]):
            raise InvalidDataError(f"{where}: {k} must be a positive power of two, "
                                   f"got {v[k]!r}")
        v[k] = float(v[k])
    for k in ("act_low", "act_high"):
        v[k] = inputs.finite_number(f"{where}: {k}", v[k])
    if v["act_low"] > v["act_high"]:
        raise InvalidDataError(f"{where}: act_low {v['act_low']} is above act_high "
                               f"{v['act_high']}")
    v["act_signed"] = inputs.flag(f"{where}: act_signed", v["act_signed"])
    for k in _COUNT_FIELDS:
        v[k] = inputs.positive_int(f"{where}: {k}", v[k])
    if v.get("num_inputs_written") is not None:
        v["num_inputs_written"] = inputs.positive_int(f"{where}: num_inputs_written",
                                                      v["num_inputs_written"])
    if "act_group" in v:
        inputs.text(f"{where}: act_group", v["act_group"])
    if "has_act" in v:
        v["has_act"] = inputs.flag(f"{where}: has_act", v["has_act"])
        if not v["has_act"] and (v["e_a"] != 0 or v.get("e_a_shared") is not None
                                 or v.get("act_group")):
            raise InvalidDataError(f"{where}: a layer without an activation "
                                   "tensor (has_act false) must have e_a 0, no "
                                   "e_a_shared and no act_group")
    return LayerGains(**v)


def weight_max_abs(model, graph=None) -> dict:
    """Layer name -> max |w| over kernel and bias after BN folding (the
    weight units of the model), for every weight layer of ``model``."""
    graph = parse_model(model) if graph is None else graph
    return {op.name: float(max(np.max(np.abs(t)) for t in (op.attrs["kernel"],
                                                          op.attrs["bias"])
                               if t is not None))
            for op in graph.weight_ops}


def layer_geometry(model, graph=None) -> list:
    """Per weight layer of ``model``: name, class and cost-model geometry
    (dot_length, num_dots, num_weights, num_inputs, num_inputs_written; see
    :class:`LayerGains`), and ``has_act`` (False: the layer reads integer
    ids).  ``graph``: the parsed model if already at hand."""
    graph = parse_model(model) if graph is None else graph
    return [{"name": op.name, "layer_class": op.layer_class,
             **registry.geometry(graph, op), "has_act": op.kind not in NO_ACT_KINDS}
            for op in graph.weight_ops]


def noise_gains(model, x: DataLike, batch_size: Optional[int] = None,
                max_examples: Optional[int] = None, dtype: str = "float32",
                verbose: bool = False, top_k: Optional[int] = None,
                sketch: int = 0, seed: int = 0, class_chunk: Optional[int] = None,
                strategy: Optional["tf.distribute.Strategy"] = None,
                per_example: bool = False, per_class: bool = False,
                per_channel: bool = False) -> NoiseGains:
    """Computes the per-tensor noise gains of a trained classifier.

    Args:
      model: a Sequential or functional tf_keras classifier whose output is a
        vector of M class scores (logits, or softmax probabilities, in which
        case the pre-softmax logits are analyzed).  It is only read.
      x: calibration inputs: a numpy array [N, ...] or a ``tf.data.Dataset``
        of inputs (batched or not; (input, label) elements are accepted and
        the labels ignored), in the units the model was trained on; for a
        model with several inputs a list / tuple of arrays in
        ``model.inputs`` order, a dict keyed by input name, or a dataset of
        those (:mod:`tfprec.packing`).  Ids read by an Embedding must be
        integers in [0, input_dim) (ints or integral floats;
        InvalidDataError naming the layer otherwise).  How many: E_T is a mean of heavy-tailed per-example terms (they scale
        with 1/margin^2), whose relative standard error is CV/sqrt(N) with
        CV typically 2-10; a relative error e in E moves a bit-width by about
        0.72 e bits.  Use at least 1000 examples (about 0.1 bit); fewer than
        200 give a TfprecWarning (:mod:`tfprec.statistics.sanity`).
      batch_size: examples per batch (numpy input or unbatched datasets); the
        global batch when ``strategy`` is given.  None (default): 128, or up
        to 1024 for a small network (:func:`~tfprec.statistics.executor.auto_batch_size`).
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
      strategy: a ``tf.distribute.Strategy`` (MirroredStrategy,
        OneDeviceStrategy, MultiWorkerMirroredStrategy; not
        ParameterServerStrategy); each batch is split into contiguous
        shards over its replicas and the results are all-gathered (sums and
        ties added, activation ranges global, per-example rows in example
        order), so the result equals the one-process pass up to float
        rounding.  Under MultiWorkerMirroredStrategy every worker must call
        ``noise_gains`` with the same full ``x`` and the same arguments; each
        computes only its replicas' shards and every worker returns the
        full :class:`NoiseGains` (:mod:`tfprec.statistics.distributed`).
      per_example: also keep every example's margin-weighted squared norms
        (2 floats per weight layer and example), which the per-example
        bound (:func:`tfprec.planning.plan.per_example_bound`) needs.  Memory then
        grows with the number of examples (by 16 bytes per layer each).
      per_class: also keep, per example and wrong class (the ``top_k``
        closest classes with the estimator; sketch rows are not kept), the
        margin-weighted squared norms of every weight and input tensor
        (``class_w``, ``class_a``, ``class_margin``, ``class_index``), which
        the mismatch predictor (:mod:`tfprec.planning.predict`) needs.
        Implies ``per_example``.  Also computes the shift tables
        ``class_shift`` / ``class_act_shift`` (the exact margin shift of
        every kept class when one layer's weights, or its input, are rounded
        to b = 2..10 bits; :mod:`tfprec.statistics.shifts`): a forward-only
        pre-pass for the activation ranges, then per batch 9 re-runs of the
        part of the network downstream of each weight layer, twice, i.e. up
        to 18 L forward passes (about 9 L on a chain); this is the dominant
        cost of ``per_class=True``.  Not distributed: with ``strategy``, the
        shift tables run on the default device (of every worker, on the
        whole batch).  Memory: 16 K L + 12 K + 120 K L bytes per example
        (constant per example).  The data are read twice: they must be the
        same both times (InvalidDataError otherwise).
      per_channel: weights of Dense, Conv2D and DepthwiseConv2D layers on
        one power-of-two range per output channel (the layer's bit-width
        shared by its channels), as TFLite stores int8 / int4 weights;
        E_W is then the effective gain of :mod:`tfprec.statistics.channels`
        and each :class:`LayerGains` lists its ``r_w_channels``.  Same cost
        as the per-tensor pass.

    Returns:
      A :class:`NoiseGains` with, per weight layer, E_W, E_A (probability per
      squared unit), range scales R_W, R_A and normalized gains G = R^2 E.

    Raises:
      UnsupportedModelError: the model or one of its layers is not supported,
        a weight is NaN or Inf (the message names the layer), or every
        example is a tie (all logits equal, e.g. all-zero weights).
      InvalidDataError: the data is empty, mis-shaped, or not finite, its
        values overflow the float pass (non-finite logits or gains), or an
        argument is out of range.

    Warns:
      TfprecWarning: fewer than 200 examples, or ``x`` looks off the scale
        the model was trained on (integer pixel codes, values > 1e4; see
        :func:`tfprec.statistics.sanity.check_input_scale`).
    """
    dtype = inputs.choice("dtype", dtype, ("float32", "float64"))
    batch_size = inputs.optional_positive_int("batch_size", batch_size)
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
    batch_size = batch_size or auto_batch_size(graph, chunk)
    ex = executor_for(model, graph, tf.as_dtype(dtype))
    per_class = inputs.flag("per_class", per_class)
    per_channel = inputs.flag("per_channel", per_channel)
    per_example = bool(per_example) or per_class
    gp = ex.cached(("gains", top_k, sketch, chunk) + (("per_class",) if per_class else ())
                   + (("per_channel",) if per_channel else ()),
                   lambda e: GainsPass(e, top_k, sketch, chunk, per_class,
                                       channels.channel_scales(graph, per_channel)))
    gp.set_scales(channels.channel_scales(graph, per_channel))    # current weights
    if strategy is not None and not isinstance(strategy, tf.distribute.Strategy):
        raise InvalidDataError(f"strategy must be a tf.distribute.Strategy or None, "
                               f"got {strategy!r}")
    step = gp.step if strategy is None else gp.distributed(strategy)
    nw = len(ex.weight_ops)
    if per_class:
        shift_pass, shift_stacks = shift_pass_for(ex, gp.rows_kept, per_channel)
        # the activation shift tables need the activations' formats first
        fmts0 = activation_formats(graph, ex, inputs.iter_batches(
            x, graph.shapes[graph.input_id], batch_size, max_examples=max_examples,
            dtype=dtype, what="calibration data"))
        fmts = [(f["r_a"], f["signed"]) if f["has_act"] else None for f in fmts0]
    sw, sa, sh = np.zeros(nw), np.zeros(nw), np.zeros(nw)
    pw, pa = [], []
    rows = {"cw": [], "ca": [], "cm": [], "ci": []}
    shifts, act_shifts = [], []
    noise = np.zeros((2, nw, NUM_BITS, nw))
    amax = np.full(nw, -np.inf)
    amin = np.full(nw, np.inf)
    n = ties = 0
    total = (len(x) if isinstance(x, np.ndarray) else None)
    if total is not None and max_examples is not None:
        total = min(total, max_examples)
    bar = keras.utils.Progbar(total, unit_name="example") if verbose else None
    batches = inputs.iter_batches(x, graph.shapes[graph.input_id], batch_size,
                                  max_examples=max_examples, dtype=dtype,
                                  what="calibration data")
    stats, limits = sanity.InputStats(), sanity.overflow_limits(graph, dtype)
    for i, b in enumerate(stats.watch(batches)):
        embedding.check_ids(graph, b, "x (calibration data)")
        out = step(b, np.array([seed, i], np.int32))
        sanity.check_pass_batch(out, graph, limits, n, len(b), "x (calibration data)")
        sw += out["sw"]
        sa += out["sa"]
        sh += out["sh"]
        if per_example:
            pw.append(np.asarray(out["pw"]).T)
            pa.append(np.asarray(out["pa"]).T)
        if per_class:
            for k, v in rows.items():
                v.append(np.asarray(out[k]))
            coherence = coherence_table(ex, b, fmts) if i == 0 else coherence
            wsh, ash, wno, ano = shift_pass.step(b, np.asarray(out["ci"], np.int32),
                                                 shift_stacks, fmts)
            shifts.append(np.asarray(wsh, np.float32))
            act_shifts.append(np.asarray(ash, np.float32))
            noise += np.stack([np.asarray(wno), np.asarray(ano)])
        amax = np.maximum(amax, out["amax"])
        amin = np.minimum(amin, out["amin"])
        ties += int(out["ties"])
        n += len(b)
        if bar is not None:
            bar.update(n)
    if n == 0:
        raise InvalidDataError("calibration data is empty: noise gains need at "
                               "least one example.")
    sanity.check_input_scale(model, stats, inputs.raw_dtype(x), "x (calibration data)")
    sanity.check_num_examples(n, "x (calibration data)")
    sanity.check_multi_label(graph)
    sanity.check_ties(ties, n, graph.num_classes, "x (calibration data)")
    sanity.check_gains_finite(np.stack([sw, sa, sh], axis=1),
                              [op.name for op in graph.weight_ops], "x (calibration data)")
    layers = []
    for j, op in enumerate(graph.weight_ops):
        geo = registry.geometry(graph, op)
        w = [op.attrs["kernel"]] + ([op.attrs["bias"]] if op.attrs["bias"] is not None else [])
        wmax = float(max(np.max(np.abs(t)) for t in w))
        f = activation_format(graph, op, amin[j], amax[j])
        if per_class:
            check_same_format(op, f, fmts0[j])
        lo, hi, src, signed, has_act = (f["lo"], f["hi"], f["source"], f["signed"],
                                        f["has_act"])
        group = gp.shared.get(op.inputs[0])
        rc = channels.op_channel_ranges(graph, op) if per_channel else None
        layers.append(LayerGains(
            name=op.name, layer_class=op.layer_class,
            e_w=float(sw[j] / n / 24.0), e_a=float(sa[j] / n / 24.0) if has_act else 0.0,
            r_w=range_scale(-wmax, wmax, True),
            r_a=f["r_a"], act_signed=bool(signed),
            act_range_source=src, act_low=float(lo), act_high=float(hi),
            weight_max_abs=wmax, **geo,
            act_group="+".join(group) if group else "",
            e_a_shared=float(sh[j] / n / 24.0) if group else None,
            has_act=has_act,
            r_w_channels=None if rc is None else tuple(float(r) for r in rc)))
    return NoiseGains(tuple(layers), n, graph.num_classes, ties,
                      graph.dropped_softmax,
                      "exact" if top_k is None else f"top{top_k}+sketch{sketch}",
                      np.concatenate(pw) / 24.0 if per_example else None,
                      np.concatenate(pa) / 24.0 if per_example else None,
                      *((np.concatenate(rows["cw"]) / 24.0,
                         np.concatenate(rows["ca"]) / 24.0,
                         np.concatenate(rows["cm"]),
                         np.concatenate(rows["ci"]).astype(np.int32))
                        if per_class else (None,) * 4),
                      fingerprint=model_fingerprint(model, graph),
                      class_shift=np.concatenate(shifts, axis=2) if per_class else None,
                      class_act_shift=(np.concatenate(act_shifts, axis=2)
                                       if per_class else None),
                      input_noise=noise / n if per_class else None,
                      act_coherence=coherence if per_class else None)

