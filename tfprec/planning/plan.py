"""Precision plans (METHOD.md section 3): bits per weight and activation tensor.

A :class:`PrecisionPlan` gives every weight layer a weight bit-width B_W
(kernel and bias, sign bit included) and an input-activation bit-width B_A,
with the range scales and signedness of both formats, the normalized gains
and the layer geometry, so that the analytic mismatch bound

    p_m <= sum_T 4^(1 - B_T) * G_T

and the cost model of :mod:`tfprec.planning.cost` can be evaluated for any plan.

The constructors live elsewhere: :mod:`tfprec.planning.rules` (the paper's
rule, uniform and ICML 2017 plans) and :mod:`tfprec.planning.cost_aware`
(cost-aware and per-example plans, :func:`make_plan`); the searches are in
:mod:`tfprec.planning.search`.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Optional

from tfprec import inputs
from tfprec.errors import PlanError
from tfprec.fileio import atomic_write_text
from tfprec.fixedpoint import MIN_BITS, check_bits, check_pow2, step
from tfprec.planning import cost as cost_lib

SCHEMA = "tfprec.plan"
SCHEMA_VERSION = 1
DEFAULT_TARGET = 0.01


@dataclasses.dataclass(frozen=True)
class LayerPrecision:
    """Formats of one weight layer in a plan.

    Attributes:
      name: Keras layer name.
      layer_class: Keras class name.
      weight_bits: B_W in bits (sign included) for kernel and bias.
      act_bits: B_A in bits for the layer's input activation (sign bit
        included when ``act_signed``); None for a layer whose input is not a
        quantized activation (an Embedding reads integer token ids): it then
        has no activation format (``act_range`` 1, ``act_signed`` False,
        ``g_a`` 0, no ``act_group``), adds no activation term to the bound
        and no input bits to the representational cost (see
        :attr:`has_act`).
      weight_range: R_W, power of two; weights on [-R_W, R_W).
      act_range: R_A, power of two; inputs on [-R_A, R_A) if signed, else
        on [0, 2 R_A).
      act_signed: whether the input activation format is signed.
      g_w, g_a: normalized noise gains R^2 E (probability).
      dot_length, num_dots, num_weights, num_inputs: geometry for the cost
        model (see :mod:`tfprec.planning.cost`); ``num_inputs`` is the input
        activations the layer reads per example.
      act_group: "" or the "+"-joined names of the weight layers that read
        the same input tensor; they share one activation format, and g_a is
        then the gain of that one shared tensor, counted once in the bound
        and stored once in the representational cost.
      num_inputs_written: input activations per example as the producing
        layer writes them (before max pooling), the authors' convention for
        the representational cost; None means "same as ``num_inputs``".
      weight_channel_ranges: None (the weights on one range R_W), or one
        range scale R_c per output channel (powers of two, the largest
        ``weight_range``): channel c's weights are on [-R_c, R_c) with step
        R_c 2^(1-B_W), all channels with the layer's B_W (gains computed
        with ``per_channel=True``; ``g_w`` is then sum_c R_c^2 E_c).
    """

    name: str
    layer_class: str
    weight_bits: int
    act_bits: Optional[int]
    weight_range: float
    act_range: float
    act_signed: bool
    g_w: float
    g_a: float
    dot_length: int
    num_dots: int
    num_weights: int
    num_inputs: int
    act_group: str = ""
    num_inputs_written: Optional[int] = None
    weight_channel_ranges: Optional[tuple] = None

    @property
    def has_act(self) -> bool:
        """Whether the layer's input is a quantized activation (False when
        ``act_bits`` is None: an Embedding's integer ids)."""
        return self.act_bits is not None

    @property
    def weight_step(self) -> float:
        """Weight quantization step Delta_W = R_W 2^(1-B_W) (the largest
        channel's step for per-channel ranges)."""
        return step(self.weight_bits, self.weight_range)

    def weight_ranges(self):
        """The weight range scale(s) to round with: R_W (a float), or the
        per-channel R_c as a float64 array (see
        :func:`tfprec.fixedpoint.channel_view` for how they broadcast)."""
        if self.weight_channel_ranges is None:
            return float(self.weight_range)
        import numpy as np
        return np.asarray(self.weight_channel_ranges, np.float64)

    @property
    def act_step(self) -> Optional[float]:
        """Activation quantization step Delta_A = R_A 2^(1-B_A); None
        without an activation format (``act_bits`` None)."""
        return None if self.act_bits is None else step(self.act_bits, self.act_range)

    @property
    def weight_term(self) -> float:
        """This layer's weight contribution to the bound (probability)."""
        return 4.0 ** (1 - self.weight_bits) * self.g_w

    @property
    def act_term(self) -> float:
        """This layer's activation contribution to the bound (probability);
        0 without an activation format (``act_bits`` None)."""
        return 0.0 if self.act_bits is None else 4.0 ** (1 - self.act_bits) * self.g_a


@dataclasses.dataclass(frozen=True)
class PrecisionPlan:
    """Per-layer fixed-point precision of a model.

    Attributes:
      layers: one :class:`LayerPrecision` per weight layer, in model order.
      method: how the plan was made ("paper", "uniform", "icml2017",
        "cost_aware:compute", "cost_aware:memory", or a user label).
      target: the bound target the plan was made for, if any: a mismatch
        probability, or for a plan found by a level search (budget,
        calibration) the cost-aware bound level t, which may exceed 1.
      info: free-form metadata; a dict that ``json.dumps`` can write (numpy
        scalars and arrays are written as numbers and lists).  Anything else
        raises PlanError naming ``info`` when the plan is made.
      fingerprint: :func:`tfprec.statistics.gains.model_fingerprint` of the
        model whose gains the plan was made from (copied from
        ``NoiseGains.fingerprint``; kept by :meth:`with_bits`, saved by
        :meth:`save`).  None for a plan made by hand or loaded from a file
        written before this field existed: such a plan is not checked
        against the model's weights.
    """

    layers: tuple
    method: str = "custom"
    target: Optional[float] = None
    info: dict = dataclasses.field(default_factory=dict)
    fingerprint: Optional[str] = None

    def __post_init__(self):
        if self.info is None:
            object.__setattr__(self, "info", {})
        if not isinstance(self.info, dict):
            raise PlanError(f"info must be a dict (JSON object), got "
                            f"{type(self.info).__name__}")
        inputs.json_compatible("info", self.info, default=_json_default,
                               error=PlanError)
        if self.fingerprint is not None:
            inputs.text("fingerprint", self.fingerprint, allow_empty=False,
                        error=PlanError)

    # ------------------------------------------------------------ queries
    def layer(self, name: str) -> LayerPrecision:
        for lp in self.layers:
            if lp.name == name:
                return lp
        raise PlanError(f"plan has no layer named {name!r}; it has "
                        f"{[l.name for l in self.layers]}")

    @property
    def names(self) -> list:
        return [lp.name for lp in self.layers]

    @property
    def b_min(self) -> int:
        """Smallest bit-width over all tensors of the plan (layers without
        an activation format count their weights only)."""
        return min(min(l.weight_bits, l.weight_bits if l.act_bits is None
                       else l.act_bits) for l in self.layers)

    def bound(self) -> float:
        """Analytic mismatch bound sum_T 4^(1-B_T) G_T (probability).

        A shared input tensor (``act_group``) is one tensor T: its term is
        counted once.
        """
        seen = set()
        total = 0.0
        for l in self.layers:
            total += l.weight_term
            if not l.act_group or l.act_group not in seen:
                total += l.act_term
                seen.add(l.act_group)
        return float(total)

    def cost(self, memory_convention: str = "written") -> cost_lib.PlanCost:
        """Computational (full adders) and representational (bits) cost.

        ``memory_convention``: "written" (default, the authors' tables: a
        layer's inputs counted as the feature map its producer writes,
        before max pooling) or "read" (the tensor the layer reads).  A
        shared input tensor is stored once either way.
        """
        return cost_lib.plan_cost(self.layers, memory_convention)

    def with_bits(self, weight_bits: dict = None, act_bits: dict = None,
                  method: str = None) -> "PrecisionPlan":
        """A copy with some layers' bits replaced (layer name -> bits).

        Raises:
          PlanError: a name is not a layer of the plan, or bits are not an
            int in 2..16.
        """
        for what, d in (("weight_bits", weight_bits), ("act_bits", act_bits)):
            if d is not None and not isinstance(d, dict):
                raise PlanError(f"with_bits: {what} must be a dict layer name -> "
                                f"bits, got {d!r:.80}")
        weight_bits = dict(weight_bits or {})
        act_bits = dict(act_bits or {})
        unknown = [n for n in list(weight_bits) + list(act_bits) if n not in self.names]
        if unknown:
            raise PlanError(f"with_bits: plan has no layers named {unknown}; it "
                            f"has {self.names}")
        for what, d in (("weight_bits", weight_bits), ("act_bits", act_bits)):
            for name, b in d.items():
                d[name] = check_bits(f"{what}[{name!r}]", b)
        no_act = [l.name for l in self.layers if l.name in act_bits and not l.has_act]
        if no_act:
            raise PlanError(f"with_bits: layers {no_act} have no activation format "
                            "(their input is integer token ids); give them no "
                            "act_bits")
        for l in self.layers:          # a shared input changes for all readers
            if l.name in act_bits and l.act_group:
                for other in l.act_group.split("+"):
                    act_bits.setdefault(other, act_bits[l.name])
        layers = tuple(dataclasses.replace(
            l, weight_bits=weight_bits.get(l.name, l.weight_bits),
            act_bits=act_bits.get(l.name, l.act_bits)) for l in self.layers)
        if method is not None:
            inputs.text("with_bits: method", method, allow_empty=False, error=PlanError)
        plan = dataclasses.replace(self, layers=layers,     # keeps the fingerprint
                                   method=method or self.method)
        plan.check()
        return plan

    # --------------------------------------------------------- validation
    def check(self) -> None:
        """Raises PlanError if a field is out of range."""
        if not isinstance(self.layers, (tuple, list)) or not self.layers:
            raise PlanError(f"plan has no layers (layers={self.layers!r:.80})")
        inputs.text("method", self.method, error=PlanError)
        if self.target is not None:
            inputs.positive_number("target", self.target, error=PlanError)
        seen = set()
        for l in self.layers:
            _check_layer(l)
            if l.name in seen:
                raise PlanError(f"plan lists layer {l.name!r} twice")
            seen.add(l.name)
            for f in ("weight_bits", "act_bits"):
                if getattr(l, f) is not None or f == "weight_bits":
                    check_bits(f"layer {l.name!r}: {f}", getattr(l, f))
            for f in ("weight_range", "act_range"):
                check_pow2(f"layer {l.name!r}: {f}", getattr(l, f))
            if l.act_group:
                first = next(m for m in self.layers if m.act_group == l.act_group)
                for f in ("act_bits", "act_range", "act_signed", "g_a"):
                    if getattr(first, f) != getattr(l, f):
                        raise PlanError(
                            f"layers {first.name!r} and {l.name!r} read the same "
                            f"input tensor but differ in {f} "
                            f"({getattr(first, f)} vs {getattr(l, f)})")

    def validate_for(self, model, *, allow_fingerprint_mismatch: bool = False) -> None:
        """Raises PlanError unless the plan matches the model.

        Compares layer names, order, classes and geometry (weights, dot
        length, dot products, inputs).  Then, when the plan has a
        ``fingerprint`` (it was made from gains of a model), checks that
        ``model`` has the same weights
        (:func:`tfprec.statistics.gains.model_fingerprint`) and that every
        layer's max |w| (BN folded) fits the plan's weight range R_W, so
        that no weight would saturate: a plan made for the same
        architecture with other weights has ranges and gains of those
        weights and its bound means nothing here.

        Args:
          model: the tf_keras model the plan is about to be applied to.
          allow_fingerprint_mismatch: skip the weights check (geometry is
            still checked), to apply a plan to a fine-tuned or retrained
            copy on purpose.
        """
        from tfprec.statistics.gains import (layer_geometry,  # local: avoids a cycle
                                             model_fingerprint, weight_max_abs)
        from tfprec.fixedpoint import range_scale
        from tfprec.statistics.graph import parse_model
        allow_fingerprint_mismatch = inputs.flag(
            "allow_fingerprint_mismatch", allow_fingerprint_mismatch, error=PlanError)
        graph = parse_model(model)
        geo = layer_geometry(model, graph)
        names = [g["name"] for g in geo]
        if names != self.names:
            missing = [n for n in names if n not in self.names]
            extra = [n for n in self.names if n not in names]
            raise PlanError(
                f"plan does not match model '{model.name}': model weight layers "
                f"{names}, plan layers {self.names}"
                + (f"; missing from plan: {missing}" if missing else "")
                + (f"; not in model: {extra}" if extra else ""))
        for g, l in zip(geo, self.layers):
            for f in ("layer_class", "num_weights", "dot_length", "num_dots",
                      "num_inputs"):
                if g[f] != getattr(l, f):
                    raise PlanError(
                        f"plan does not match model '{model.name}' at layer "
                        f"{l.name!r}: {f} is {getattr(l, f)} in the plan but "
                        f"{g[f]} in the model")
            if (l.act_bits is not None) != g.get("has_act", True):
                raise PlanError(
                    f"plan does not match model '{model.name}' at layer "
                    f"{l.name!r}: " + (
                        f"act_bits is {l.act_bits} in the plan but the layer reads "
                        "integer token ids, which have no activation format "
                        "(act_bits must be None)" if l.act_bits is not None else
                        "act_bits must be an int number of bits in 2..16, got None"))
            written = g.get("num_inputs_written")
            if (written is not None and l.num_inputs_written is not None
                    and written != l.num_inputs_written):
                raise PlanError(
                    f"plan does not match model '{model.name}' at layer "
                    f"{l.name!r}: num_inputs_written is {l.num_inputs_written} "
                    f"in the plan but {written} in the model")
        if self.fingerprint is None or allow_fingerprint_mismatch:
            return
        wmax = weight_max_abs(model, graph)
        over = [f"{l.name!r} (max |w| {wmax[l.name]:.4g} needs R_W = "
                f"{range_scale(-wmax[l.name], wmax[l.name], True):g}, the plan has "
                f"{l.weight_range:g})" for l in self.layers
                if range_scale(-wmax[l.name], wmax[l.name], True) > l.weight_range]
        fp = model_fingerprint(model, graph)
        hint = ("; recompute the gains and the plan for this model, or pass "
                "allow_fingerprint_mismatch=True to use the plan anyway")
        sat = (f"; the weights of layers {', '.join(over)} are outside the plan's "
               f"weight range [-R_W, R_W) and would saturate" if over else "")
        if fp != self.fingerprint:
            raise PlanError(
                f"plan was made for other weights: fingerprint "
                f"{_short(self.fingerprint)}, model '{model.name}' has "
                f"{_short(fp)}{sat}{hint}")
        if over:
            raise PlanError(f"plan does not fit model '{model.name}'{sat}{hint}")

    # ------------------------------------------------------- serialization
    def to_dict(self) -> dict:
        cost = self.cost()
        return {"schema": SCHEMA, "version": SCHEMA_VERSION,
                "method": self.method, "target": self.target,
                "bound": self.bound(),
                "cost": {"compute_full_adders": cost.total_compute,
                         "memory_bits": cost.total_memory},
                "info": self.info, "fingerprint": self.fingerprint,
                "layers": [dataclasses.asdict(l) for l in self.layers]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=_json_default)

    @classmethod
    def from_dict(cls, d: dict) -> "PrecisionPlan":
        """The plan of a :meth:`to_dict` dict, every field checked first.

        Raises:
          PlanError: not a plan dict, another schema version, a missing,
            unknown or mistyped key (``"act_signed": "no"`` is refused: JSON
            booleans only), an out-of-range value; the message names the key
            and the layer.
        """
        if not isinstance(d, dict) or d.get("schema") != SCHEMA:
            got = (f"schema {d.get('schema')!r}" if isinstance(d, dict)
                   else f"a JSON {type(d).__name__}")
            raise PlanError(f"not a tfprec plan (expected an object with schema "
                            f"{SCHEMA!r}, got {got})")
        if d.get("version") != SCHEMA_VERSION:
            raise PlanError(f"plan schema version {d.get('version')!r} is not "
                            f"supported (this tfprec reads {SCHEMA_VERSION})")
        raw = d.get("layers")
        if not isinstance(raw, list) or not raw:
            raise PlanError(f"plan key 'layers' must be a non-empty list of layer "
                            f"objects, got {raw!r:.80}")
        fields = [f.name for f in dataclasses.fields(LayerPrecision)]
        layers = []
        for i, ld in enumerate(raw):
            if not isinstance(ld, dict):
                raise PlanError(f"plan layer #{i} is not an object: {ld!r:.80}")
            missing = [f for f in fields if f not in ld
                       and f not in ("act_group", "num_inputs_written",
                                     "weight_channel_ranges")]
            if missing:
                raise PlanError(f"plan layer #{i} ({ld.get('name', '?')!r}) "
                                f"lacks fields {missing}")
            unknown = sorted(set(ld) - set(fields))
            if unknown:
                raise PlanError(f"plan layer #{i} ({ld.get('name', '?')!r}) "
                                f"has unknown fields {unknown}")
            if isinstance(ld.get("weight_channel_ranges"), list):
                ld = dict(ld, weight_channel_ranges=tuple(ld["weight_channel_ranges"]))
            lp = LayerPrecision(**ld)
            _check_layer(lp, f"plan layer #{i} ({ld.get('name', '?')!r})")
            layers.append(lp)
        method = d.get("method", "custom")
        inputs.text("plan key 'method'", method, error=PlanError)
        target = d.get("target")
        if target is not None:
            inputs.positive_number("plan key 'target'", target, error=PlanError)
        info = d.get("info")
        if info is not None and not isinstance(info, dict):
            raise PlanError(f"plan key 'info' must be an object, got {info!r:.80}")
        fp = d.get("fingerprint")
        if fp is not None:
            inputs.text("plan key 'fingerprint'", fp, allow_empty=False,
                        error=PlanError)
        plan = cls(tuple(layers), method, target, dict(info or {}), fp)
        plan.check()
        return plan

    @classmethod
    def from_json(cls, text: str) -> "PrecisionPlan":
        """The plan of a JSON text (:meth:`to_json`); PlanError otherwise."""
        if not isinstance(text, (str, bytes, bytearray)):
            raise PlanError(f"plan JSON must be a str, got {type(text).__name__}")
        try:
            d = json.loads(text)
        except UnicodeDecodeError as e:
            raise PlanError(f"plan is not UTF-8 text: {e}") from None
        except (json.JSONDecodeError, RecursionError) as e:
            raise PlanError(f"plan is not valid JSON: {e}") from None
        return cls.from_dict(d)

    def save(self, path: str) -> None:
        """Writes the plan as JSON atomically (temp file, then rename).

        Raises:
          PlanError: the plan is invalid (:meth:`check`: a plan that
            :meth:`load` would refuse is never written), or the file cannot
            be written (nothing is left behind).
        """
        self.check()
        try:
            atomic_write_text(path, self.to_json())
        except OSError as e:
            raise PlanError(f"cannot write plan to {path!r}: {e.strerror or e}") from None

    @classmethod
    def load(cls, path: str) -> "PrecisionPlan":
        """The plan saved at ``path`` (:meth:`save`).

        Raises:
          PlanError: the file cannot be read, is not UTF-8 JSON or not a
            valid plan; the message starts with the path.
        """
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise PlanError(f"cannot read plan file {path!r}: {e.strerror or e}") from None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise PlanError(f"{path}: plan file is not UTF-8 text ({e})") from None
        try:
            return cls.from_json(text)
        except PlanError as e:
            raise PlanError(f"{path}: {e}") from None


def _json_default(o):
    """json.dumps fallback: numpy scalars and arrays as numbers and lists."""
    import numpy as np
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"Object of type {type(o).__name__} is not JSON serializable")


def _short(fingerprint: str) -> str:
    """The first 12 hex digits of a fingerprint, for messages."""
    head, _, digest = str(fingerprint).partition(":")
    return f"{head}:{digest[:12]}..." if digest else str(fingerprint)[:19]


def _check_layer(l, where: str = None) -> None:
    """PlanError unless every field of LayerPrecision ``l`` has its type and
    range (bits in 2..16, power-of-two ranges, a real bool, finite gains,
    positive counts); ``where`` names the layer in the message."""
    if not isinstance(l, LayerPrecision):
        raise PlanError(f"plan layers must be LayerPrecision, got {type(l).__name__}")
    where = where or f"layer {l.name!r}"
    inputs.text(f"{where}: name", l.name, allow_empty=False, error=PlanError)
    inputs.text(f"{where}: layer_class", l.layer_class, allow_empty=False,
                error=PlanError)
    check_bits(f"{where}: weight_bits", l.weight_bits)
    if l.act_bits is not None:
        check_bits(f"{where}: act_bits", l.act_bits)
    for f in ("weight_range", "act_range"):
        check_pow2(f"{where}: {f}", getattr(l, f))
    inputs.flag(f"{where}: act_signed", l.act_signed, error=PlanError)
    for f in ("g_w", "g_a"):
        inputs.nonnegative_number(f"{where}: {f}", getattr(l, f), error=PlanError)
    for f in ("dot_length", "num_dots", "num_weights", "num_inputs"):
        inputs.positive_int(f"{where}: {f}", getattr(l, f), error=PlanError)
    if l.num_inputs_written is not None:
        inputs.positive_int(f"{where}: num_inputs_written", l.num_inputs_written,
                            error=PlanError)
    inputs.text(f"{where}: act_group", l.act_group, error=PlanError)
    rc = l.weight_channel_ranges
    if rc is not None:
        if not isinstance(rc, tuple) or not rc:
            raise PlanError(f"{where}: weight_channel_ranges must be null or a "
                            f"non-empty list of powers of two, got {rc!r:.80}")
        for r in rc:
            check_pow2(f"{where}: weight_channel_ranges", r)
        if max(rc) != l.weight_range:
            raise PlanError(f"{where}: the largest of weight_channel_ranges "
                            f"({max(rc):g}) must equal weight_range "
                            f"({l.weight_range:g})")
    if l.act_bits is None and (l.g_a != 0 or l.act_group or l.act_signed):
        raise PlanError(f"{where}: act_bits is null (no activation format: an "
                        "Embedding's integer ids), so g_a must be 0, act_signed "
                        "false and act_group empty")


def bit_arrays(layers, fill: int = MIN_BITS) -> tuple:
    """(B_W, B_A) int arrays over ``layers`` (e.g. ``plan.layers``), bits.

    A layer without an activation format (``act_bits`` None) reads as
    ``fill``: its activation gain is 0 and its cost does not depend on
    B_A, so the bound and cost models are unchanged by that value."""
    import numpy as np
    return (np.array([l.weight_bits for l in layers], int),
            np.array([fill if l.act_bits is None else l.act_bits for l in layers],
                     int))
