"""TFLite export that realizes a precision plan exactly.

:func:`export_tflite` writes a ``.tflite`` flatbuffer whose arithmetic is the
fixed-point network of a :class:`~tfprec.planning.plan.PrecisionPlan` (METHOD.md
section 1): every weight layer's (BatchNorm-folded) kernel and bias are on the
planned B_W-bit grid and its input activation on the planned B_A-bit grid.

Why the flatbuffer is written directly.  ``tf.lite.TFLiteConverter`` does not
keep sub-8-bit fake-quant grids (TFMOT issues 574 and 950).  Feeding it 8-bit
``fake_quant_with_min_max_vars`` nodes whose ranges make the int8 scale
exactly Delta does give exact per-tensor scales (with
``_experimental_disable_per_channel``) when the fake-quant sits right after
each conv/dense, but a conv whose output has no fake-quant stays float, the
logits are requantized to int8, and there is no control over rounding.  So
tfprec writes the TFLite model itself with the schema that ships with
TensorFlow (``schema_py_generated``) and reads every tensor back through
``tf.lite.Interpreter`` to check it.

Realization, per weight layer (Dense, Conv2D, DepthwiseConv2D):

* B_W <= 8 and B_A <= 8 ("int8 compute"): weights int8 with one scale
  Delta_W per tensor and zero point 0 (the stored value is the code); input
  int8 with scale Delta_A and zero point 0 (signed formats, and unsigned ones
  up to 7 bits: the stored value is the code) or -128 (8-bit unsigned); bias
  int32 with scale Delta_A*Delta_W (it holds k_b / Delta_A, exact).  The
  TFLite kernel requantizes the int32 accumulator straight onto the next
  weight layer's input grid when only ReLU / clipping activations,
  max-pooling, flattening or dropout lie in between (they commute with
  rounding; the activation clip and the next format's clip become int8
  MAXIMUM / MINIMUM).  Otherwise (the logits, an average-pool, add,
  concatenation, or a tensor feeding layers of different formats) a Dense
  layer runs as an int8 x int8 BATCH_MATMUL with int32 output, turned exactly
  into float32; a conv layer is computed in float32 from its int8-stored
  operands (DEQUANTIZE is exact).
* B_W > 8 or B_A > 8: computed in float32 (int16 activations were not used).
  Weights above 8 bits are stored float32, pre-rounded to their grid (float32
  holds 16-bit codes exactly); inputs above 8 bits are rounded by builtin
  float ops (MUL 1/Delta, FLOOR, SUB, GREATER_EQUAL 1/2, CAST, ADD: exactly
  floor(v + 1/2); MAXIMUM / MINIMUM; MUL Delta).  Operands at <= 8 bits stay
  int8-stored and are DEQUANTIZEd.
* The network input is rounded by the same float ops and then QUANTIZEd
  (exact: the value is already on the grid).

Rounding of the int8 requantization.  The plan rounds to nearest with ties
upward.  TFLite's kernel families differ: XNNPACK (the interpreter's
default) rounds once with ties to even, the reference FULLY_CONNECTED once
with ties away from zero, the reference CONV_2D / DEPTHWISE_CONV_2D and the
optimized builtin kernels twice (gemmlowp), which is off by one step for
about 2^-s of the values when the multiplier is 2^-s.  The export makes the
kernel family named by ``kernels`` round exactly like the plan:

* the internal tensor ``<layer>/acc_requant`` that the kernel writes has
  scale Delta*(1 -+ 2^-23) instead of Delta, i.e. the multiplier is nudged by
  2^-23 (up for single-rounding kernels, so ties go up; down for
  double-rounding ones, whose first rounding then changes nothing); no
  non-tie value can cross a rounding boundary as long as the accumulator
  stays below 2^22 or 2^23 (checked from the weights, else left alone and
  noted).  An int8 requantization (QUANTIZE or ADD, exact: it moves codes by
  less than 2^-15) then gives the tensor the scale Delta exactly;
* on a signed grid the bias is raised by K output steps (K = minus the
  lowest code), so every code that matters is rounded from a positive value,
  and an int8 ADD of -K*Delta takes them off again.

On another kernel family the grids are still exact but a requantized
activation can land one step off; the report gives the decision agreement
with the plan for every family.
"""
from __future__ import annotations

import dataclasses
import math
import os
import tempfile
from typing import Optional

import numpy as np

from tfprec._tf import keras, tf
from tfprec.errors import ExportError, TfprecError
from tfprec.fixedpoint import MAX_BITS, MIN_BITS, int_limits, quantize, quantize_int
from tfprec.statistics.graph import WEIGHT_KINDS, parse_model
from tfprec.quantization.simulate import _run as _simulate, simulate_logits

__all__ = ["ExportReport", "LayerExport", "export_tflite", "tflite_predict",
           "agreement", "simulate_plan"]

_CHECK_EXAMPLES = 32

# Sign of the relative nudge of each int8 kernel's requantization multiplier
# that makes it round exactly like the plan (ties upward), per kernel family:
# single-rounding kernels (XNNPACK; TFLite's reference FULLY_CONNECTED) need
# the multiplier a hair above 2^-s; gemmlowp-style double-rounding kernels
# (TFLite's reference CONV_2D / DEPTHWISE_CONV_2D and its optimized builtin
# kernels) a hair below, which turns their first rounding step into a no-op.
_TIE_DIRECTION = {
    "xnnpack": {"dense": 1, "conv2d": 1, "depthwise": 1},
    "reference": {"dense": 1, "conv2d": -1, "depthwise": -1},
    "optimized": {"dense": -1, "conv2d": -1, "depthwise": -1},
}
_RESOLVER_OF = {"xnnpack": "auto", "reference": "ref", "optimized": "builtin"}


# --------------------------------------------------------------------------
# Fixed-point formats
# --------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Fmt:
    bits: int
    range: float
    signed: bool

    @property
    def step(self) -> float:
        return float(self.range) * 2.0 ** (1 - int(self.bits))

    @property
    def lo(self) -> int:
        return int_limits(self.bits, self.signed)[0]

    @property
    def hi(self) -> int:
        return int_limits(self.bits, self.signed)[1]

    @property
    def int8(self) -> bool:
        return self.bits <= 8

    @property
    def zp(self) -> int:
        """int8 zero point: stored value q = code k + zp."""
        return -128 if (not self.signed and self.bits == 8) else 0


def _is_pow2(v) -> bool:
    try:
        v = float(v)
    except (TypeError, ValueError):
        return False
    if not (v > 0 and math.isfinite(v)):
        return False
    m, _ = math.frexp(v)
    return m == 0.5


def _layer_formats(lp) -> tuple:
    name = getattr(lp, "name", "?")
    for f in ("weight_bits", "act_bits"):
        b = getattr(lp, f, None)
        if (isinstance(b, bool) or not isinstance(b, (int, np.integer))
                or not MIN_BITS <= int(b) <= MAX_BITS):
            raise ExportError(f"layer {name!r}: {f}={b!r} cannot be exported; "
                              f"bits must be integers in {MIN_BITS}..{MAX_BITS}")
    for f in ("weight_range", "act_range"):
        r = getattr(lp, f, None)
        if not _is_pow2(r):
            raise ExportError(f"layer {name!r}: {f}={r!r} cannot be exported; "
                              "ranges must be positive powers of two")
    fw = _Fmt(int(lp.weight_bits), float(lp.weight_range), True)
    fa = _Fmt(int(lp.act_bits), float(lp.act_range), bool(lp.act_signed))
    for f, what in ((fw, "weight"), (fa, "activation")):
        if not 2.0 ** -60 <= f.step <= 2.0 ** 60:
            raise ExportError(f"layer {name!r}: {what} step {f.step!r} is outside "
                              "the float32 range TFLite scales can hold")
    return fw, fa


# --------------------------------------------------------------------------
# Flatbuffer writer (the TFLite schema that ships with TensorFlow)
# --------------------------------------------------------------------------
def _schema():
    try:
        import flatbuffers  # noqa: F401
        from tensorflow.lite.python import schema_py_generated as schema
    except Exception as e:  # pragma: no cover - depends on the TF build
        raise ExportError("this TensorFlow build lacks the TFLite flatbuffer "
                          f"schema (tensorflow.lite.python.schema_py_generated): {e}")
    return schema


class _Builder:
    """Collects tensors, buffers and operators of one TFLite subgraph."""

    def __init__(self):
        self.S = _schema()
        S = self.S
        self.BO = S.BuiltinOperator
        self.BOPT = S.BuiltinOptions
        self.types = {np.dtype(np.float32): S.TensorType.FLOAT32,
                      np.dtype(np.int8): S.TensorType.INT8,
                      np.dtype(np.int32): S.TensorType.INT32,
                      np.dtype(np.bool_): S.TensorType.BOOL}
        self.buffers = [S.BufferT()]
        self.tensors = []
        self.ops = []
        self.codes: dict = {}
        self.names: set = set()

    def _name(self, name: str) -> str:
        base, i = name, 1
        while name in self.names:
            i += 1
            name = f"{base}_{i}"
        self.names.add(name)
        return name

    def tensor(self, name, shape, dtype, scale=None, zp=0, batch=True) -> int:
        """An activation tensor of per-example ``shape`` (batch dim added)."""
        S = self.S
        t = S.TensorT()
        t.name = self._name(name)
        dims = [int(d) for d in shape]
        if batch:
            t.shape = np.array([1] + dims, np.int32)
            t.shapeSignature = np.array([-1] + dims, np.int32)
        else:
            t.shape = np.array(dims, np.int32)
        t.type = self.types[np.dtype(dtype)]
        t.buffer = 0
        if scale is not None:
            t.quantization = self._qparams(scale, zp)
        self.tensors.append(t)
        return len(self.tensors) - 1

    def const(self, name, data, dtype, scale=None, zp=0) -> int:
        S = self.S
        arr = np.ascontiguousarray(np.asarray(data).astype(dtype))
        b = S.BufferT()
        b.data = np.frombuffer(arr.tobytes(), np.uint8).copy()
        self.buffers.append(b)
        t = S.TensorT()
        t.name = self._name(name)
        t.shape = np.array(arr.shape, np.int32)
        t.type = self.types[np.dtype(dtype)]
        t.buffer = len(self.buffers) - 1
        if scale is not None:
            t.quantization = self._qparams(scale, zp)
        self.tensors.append(t)
        return len(self.tensors) - 1

    def _qparams(self, scale, zp):
        q = self.S.QuantizationParametersT()
        q.scale = np.atleast_1d(np.asarray(scale, np.float32))
        q.zeroPoint = np.atleast_1d(np.asarray(zp, np.int64))
        q.quantizedDimension = 0
        return q

    def op(self, code, inputs, outputs, opt_type=0, opts=None, version=1):
        key = (int(code), int(version))
        if key not in self.codes:
            self.codes[key] = len(self.codes)
        o = self.S.OperatorT()
        o.opcodeIndex = self.codes[key]
        o.inputs = np.array(inputs, np.int32)
        o.outputs = np.array(outputs, np.int32)
        o.builtinOptionsType = opt_type
        o.builtinOptions = opts
        self.ops.append(o)
        return outputs[0] if len(outputs) == 1 else outputs

    def finish(self, inputs, outputs, description: str) -> bytes:
        import flatbuffers
        S = self.S
        codes = [None] * len(self.codes)
        for (c, v), i in self.codes.items():
            oc = S.OperatorCodeT()
            oc.builtinCode = c
            oc.deprecatedBuiltinCode = min(c, 127)
            oc.version = v
            codes[i] = oc
        sg = S.SubGraphT()
        sg.tensors = self.tensors
        sg.inputs = np.array(inputs, np.int32)
        sg.outputs = np.array(outputs, np.int32)
        sg.operators = self.ops
        sg.name = "main"
        m = S.ModelT()
        m.version = 3
        m.description = description
        m.operatorCodes = codes
        m.subgraphs = [sg]
        m.buffers = self.buffers
        fb = flatbuffers.Builder(1024)
        fb.Finish(m.Pack(fb), file_identifier=b"TFL3")
        return bytes(fb.Output())

    # -------------------------------------------------------------- helpers
    def shape_of(self, t) -> tuple:
        return tuple(int(d) for d in self.tensors[t].shape[1:])

    def binary(self, code, a, b, name, shape, dtype=np.float32, scale=None, zp=0,
               version=1):
        S = self.S
        out = self.tensor(name, shape, dtype, scale, zp)
        opts_map = {self.BO.ADD: (self.BOPT.AddOptions, S.AddOptionsT),
                    self.BO.SUB: (self.BOPT.SubOptions, S.SubOptionsT),
                    self.BO.MUL: (self.BOPT.MulOptions, S.MulOptionsT)}
        if code in opts_map:
            ot, cls = opts_map[code]
            self.op(code, [a, b], [out], ot, cls(), version)
        elif code in (self.BO.MAXIMUM, self.BO.MINIMUM):
            self.op(code, [a, b], [out], self.BOPT.MaximumMinimumOptions,
                    S.MaximumMinimumOptionsT(), version)
        elif code == self.BO.GREATER_EQUAL:
            self.op(code, [a, b], [out], self.BOPT.GreaterEqualOptions,
                    S.GreaterEqualOptionsT(), version)
        else:
            self.op(code, [a, b], [out], 0, None, version)
        return out

    def fconst(self, name, value) -> int:
        return self.const(name, np.float32(value), np.float32)


# --------------------------------------------------------------------------
# Graph analysis
# --------------------------------------------------------------------------
def _consumers(graph) -> dict:
    cons: dict = {}
    for op in graph.ops:
        for i in op.inputs:
            cons.setdefault(i, []).append(op)
    return cons


def _compose_clip(outer, inner):
    """clip_outer(clip_inner(x)) as one clip (lo, hi); None = unbounded."""
    def clamp(v, lo, hi):
        if v is None:
            return None
        if lo is not None and v < lo:
            return lo
        if hi is not None and v > hi:
            return hi
        return v
    ilo, ihi = inner
    olo, ohi = outer
    lo = clamp(ilo, olo, ohi) if ilo is not None else olo
    hi = clamp(ihi, olo, ohi) if ihi is not None else ohi
    return lo, hi


def _on_grid(v, step) -> bool:
    if v is None:
        return True
    k = v / step
    return math.isfinite(k) and k == math.floor(k)


@dataclasses.dataclass
class _Chain:
    fmt: _Fmt
    ops: list           # non-weight ops absorbed (act / maxpool / reshape / identity)
    clip: tuple         # (lo, hi) real-valued composed activation clip


def _int8_chain(graph, op, cons, fmts) -> Optional[_Chain]:
    """The int8 grid op's output can be requantized onto, if any.

    Follows op's output through single-consumer activation / max-pool /
    reshape / identity ops to a tensor consumed only by weight layers that
    share one input format of <= 8 bits, with every activation clip bound on
    that grid.
    """
    t = op.output
    chain: list = []
    clip = (None, None)
    while True:
        if t == graph.output_id:
            return None
        cs = cons.get(t, [])
        if not cs:
            return None
        if all(c.kind in WEIGHT_KINDS for c in cs):
            fs = {fmts[c.name][1] for c in cs}
            if len(fs) != 1:
                return None
            fa = fs.pop()
            if not fa.int8:
                return None
            if not (_on_grid(clip[0], fa.step) and _on_grid(clip[1], fa.step)):
                return None
            return _Chain(fa, chain, clip)
        if len(cs) != 1:
            return None
        c = cs[0]
        if c.kind == "act":
            if c.attrs.get("fn") == "relu":
                clip = _compose_clip((c.attrs.get("low"), c.attrs.get("high")), clip)
            elif c.attrs.get("fn") != "linear":
                return None
        elif c.kind not in ("maxpool", "reshape", "identity"):
            return None
        chain.append(c)
        t = c.output


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------
@dataclasses.dataclass
class LayerExport:
    """How one weight layer was realized and whether its grids check out.

    Attributes:
      name, layer_class, kind: the Keras layer and its graph kind.
      weight_bits, act_bits: planned B_W and B_A.
      weight_step, act_step: planned Delta_W and Delta_A.
      act_signed: planned signedness of the input format.
      weight_dtype: stored type of the kernel ('int8' or 'float32').
      bias_dtype: stored type of the bias ('int32', 'int8', 'float32', or
        'none').
      act_dtype: stored type of the input activation ('int8' or 'float32').
      compute: 'int8' (integer kernel) or 'float32'.
      output: how the layer's result leaves it ('int8 on <layer> grid',
        'int32 -> float32', 'float32').
      weights_grid_ok: kernel and bias read back from the interpreter hold
        exactly the plan's codes with scale Delta_W (bias: Delta_A*Delta_W).
      act_grid_ok: the input tensor read back after running the interpreter
        on the check examples holds only allowed codes with scale Delta_A.
      act_codes_match: fraction of input-activation codes equal to the
        plan's fixed-point simulation on the check examples, on the kernel
        family the export targets.
      num_weights, num_inputs: counts used for the representational cost.
      notes: anything worth knowing (fallbacks, rounding).
    """

    name: str
    layer_class: str
    kind: str
    weight_bits: int
    act_bits: int
    weight_step: float
    act_step: float
    act_signed: bool
    weight_dtype: str = ""
    bias_dtype: str = ""
    act_dtype: str = ""
    compute: str = ""
    output: str = ""
    weights_grid_ok: bool = False
    act_grid_ok: bool = False
    act_codes_match: float = float("nan")
    num_weights: int = 0
    num_inputs: int = 0
    notes: list = dataclasses.field(default_factory=list)

    @property
    def grid_check_passed(self) -> bool:
        return bool(self.weights_grid_ok and self.act_grid_ok)


@dataclasses.dataclass
class ExportReport:
    """Result of :func:`export_tflite`.

    Attributes:
      path: the written ``.tflite`` file.
      layers: one :class:`LayerExport` per weight layer, in model order.
      file_size_bytes: size of the written file.
      plan_bits: the plan's representational cost in bits,
        sum over layers of B_W * num_weights + B_A * num_inputs.
      check_examples: examples the activation check ran on.
      check_source: 'representative_data' or 'synthetic'.
      kernels: the TFLite kernel family the rounding was tuned for.
      sim_agreement: fraction of check examples whose TFLite decision (on
        that kernel family) equals the decision of the plan's fixed-point
        simulation (:func:`simulate_plan`).
      max_logit_diff: largest |TFLite logit - simulated logit| on them.
      agreement_by_kernels, max_logit_diff_by_kernels: the same for every
        kernel family ('xnnpack': the interpreter's default; 'reference';
        'optimized': builtin kernels without delegates).
      notes: model-level notes.
    """

    path: str
    layers: list
    file_size_bytes: int
    plan_bits: float
    check_examples: int
    check_source: str
    sim_agreement: float
    max_logit_diff: float
    kernels: str = "xnnpack"
    agreement_by_kernels: dict = dataclasses.field(default_factory=dict)
    max_logit_diff_by_kernels: dict = dataclasses.field(default_factory=dict)
    notes: list = dataclasses.field(default_factory=list)

    @property
    def plan_bytes(self) -> float:
        return self.plan_bits / 8.0

    @property
    def grid_check_passed(self) -> bool:
        return all(l.grid_check_passed for l in self.layers)

    def layer(self, name: str) -> LayerExport:
        for l in self.layers:
            if l.name == name:
                return l
        raise KeyError(name)

    def to_markdown(self) -> str:
        ok = lambda b: "yes" if b else "**NO**"  # noqa: E731
        lines = [
            f"### TFLite export: `{os.path.basename(self.path)}`",
            "",
            f"- file size: {self.file_size_bytes} bytes; plan representational "
            f"cost: {self.plan_bits:.0f} bits = {self.plan_bytes:.0f} bytes "
            f"(file / plan = {self.file_size_bytes / max(self.plan_bytes, 1e-9):.2f})",
            f"- grid checks passed: {ok(self.grid_check_passed)} "
            f"(activations checked on {self.check_examples} "
            f"{self.check_source.replace('_', ' ')} examples)",
            f"- decisions equal to the plan's fixed-point simulation "
            f"({self.kernels} kernels): {100 * self.sim_agreement:.2f}%, max "
            f"|logit difference| {self.max_logit_diff:.3g}; by kernel family: "
            + ", ".join(f"{k} {100 * v:.2f}%" for k, v in self.agreement_by_kernels.items()),
            "",
            "| layer | B_W | B_A | weights | input | compute | output | "
            "weight grid | input grid | input codes = sim |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for l in self.layers:
            sign = "s" if l.act_signed else "u"
            lines.append(
                f"| {l.name} | {l.weight_bits} | {l.act_bits}{sign} | "
                f"{l.weight_dtype} (bias {l.bias_dtype}) | {l.act_dtype} | "
                f"{l.compute} | {l.output} | {ok(l.weights_grid_ok)} | "
                f"{ok(l.act_grid_ok)} | {100 * l.act_codes_match:.2f}% |")
        notes = list(self.notes) + [f"{l.name}: {n}" for l in self.layers for n in l.notes]
        if notes:
            lines += [""] + [f"- {n}" for n in notes]
        return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------
# Fixed-point simulation of a plan (float64)
# --------------------------------------------------------------------------
def simulate_plan(model, plan, x) -> np.ndarray:
    """Logits of the plan's fixed-point network (float64 reference).

    Every weight layer's input is rounded with :func:`tfprec.fixedpoint.quantize`
    to its planned format and its folded kernel and bias to theirs; everything
    else is float64.
    """
    graph = _parse(model)
    return simulate_logits(model, plan, _as_input(x, graph, "x"), graph=graph)


# --------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------
def _parse(model):
    try:
        return parse_model(model)
    except TfprecError as e:
        raise ExportError(f"cannot export: {e}") from e


def _plan_formats(graph, plan) -> dict:
    layers = getattr(plan, "layers", None)
    if layers is None:
        raise ExportError(f"expected a PrecisionPlan, got {type(plan).__name__}")
    by_name = {}
    for lp in layers:
        if lp.name in by_name:
            raise ExportError(f"plan lists layer {lp.name!r} twice")
        by_name[lp.name] = lp
    wnames = [op.name for op in graph.weight_ops]
    for n in wnames:
        if n not in by_name:
            raise ExportError(f"layer {n!r} has no entry in the plan; cannot export it")
    extra = [n for n in by_name if n not in wnames]
    if extra:
        raise ExportError(f"plan layers {extra} are not weight layers of the model")
    return {n: _layer_formats(by_name[n]) for n in wnames}


def _as_input(x, graph, what: str) -> np.ndarray:
    x = np.asarray(x, np.float32)
    shape = tuple(graph.shapes[graph.input_id])
    if x.shape[1:] != shape:
        if x.shape == shape:
            x = x[None]
        else:
            raise ExportError(f"{what} has shape {x.shape}; the model takes "
                              f"[batch, {', '.join(map(str, shape))}]")
    return x


def _check_inputs(representative_data, graph, fmts, n: int):
    shape = tuple(graph.shapes[graph.input_id])
    if representative_data is not None:
        if callable(representative_data) and not hasattr(representative_data, "__iter__"):
            representative_data = representative_data()
        if isinstance(representative_data, (np.ndarray, list, tuple)) or hasattr(
                representative_data, "numpy") or hasattr(representative_data, "__array__"):
            try:
                arr = np.asarray(representative_data, np.float32)
            except Exception:
                arr = None
            if arr is not None and arr.ndim == len(shape) + 1:
                return _as_input(arr[:n], graph, "representative_data"), "representative_data"
        got, count = [], 0
        for item in representative_data:
            if isinstance(item, (list, tuple)):
                item = item[0]
            item = np.asarray(item, np.float32)
            if item.shape == shape:
                item = item[None]
            got.append(item)
            count += item.shape[0]
            if count >= n:
                break
        if not got:
            raise ExportError("representative_data yielded no examples")
        return _as_input(np.concatenate(got)[:n], graph, "representative_data"), \
            "representative_data"
    # synthetic: uniform over the first layer's input format (and a bit beyond)
    first = [op for op in graph.ops if op.kind in WEIGHT_KINDS][0]
    fa = fmts[first.name][1]
    rng = np.random.default_rng(0)
    lo = -1.1 * fa.range if fa.signed else -0.1 * fa.range
    hi = 1.1 * fa.range if fa.signed else 2.1 * fa.range
    return rng.uniform(lo, hi, (n, *shape)).astype(np.float32), "synthetic"


class _Realizer:
    """Lowers a parsed graph and a plan to TFLite operators."""

    def __init__(self, graph, fmts, bmm_zp: bool, kernels: str = "xnnpack"):
        self.tie_direction = _TIE_DIRECTION[kernels]
        self.g = graph
        self.fmts = fmts
        self.b = _Builder()
        self.cons = _consumers(graph)
        self.bmm_zp = bmm_zp
        self.float_rep: dict = {}     # graph tensor id -> float32 TFLite tensor
        self.int8_rep: dict = {}      # graph tensor id -> (fmt, TFLite tensor)
        self.absorbed: set = set()    # names of ops realized inside an int8 chain
        self.layers: dict = {}        # name -> LayerExport
        self.tensors: dict = {}       # name -> dict of TFLite tensor ids
        self.quant_cache: dict = {}

    # ------------------------------------------------------------ float ops
    def _float(self, tid) -> int:
        if tid in self.float_rep:
            return self.float_rep[tid]
        if tid in self.int8_rep:
            fmt, t = self.int8_rep[tid]
            b = self.b
            out = b.tensor(b.tensors[t].name.decode() + "/dequant", b.shape_of(t), np.float32)
            b.op(b.BO.DEQUANTIZE, [t], [out], version=2)
            self.float_rep[tid] = out
            return out
        raise ExportError(f"internal: tensor {tid} has no representation")

    def _round_float(self, x: int, fmt: _Fmt, name: str) -> int:
        """float x -> float codes*step on fmt (ties upward, saturating)."""
        b, BO = self.b, self.b.BO
        shp = b.shape_of(x)
        v = b.binary(BO.MUL, x, b.fconst(f"{name}/inv_step", 1.0 / fmt.step),
                     f"{name}/scaled", shp)
        # floor(v + 1/2) exactly (v + 1/2 itself could round in float32):
        # f = FLOOR(v), then +1 where v - f >= 1/2.  v - f is exact whenever
        # it is below 1/2 (it is a multiple of v's ulp), so the comparison
        # never errs.
        f = b.tensor(f"{name}/floor", shp, np.float32)
        b.op(BO.FLOOR, [v], [f])
        d = b.binary(BO.SUB, v, f, f"{name}/frac", shp)
        up = b.binary(BO.GREATER_EQUAL, d, b.fconst(f"{name}/half", 0.5), f"{name}/up",
                      shp, dtype=np.bool_)
        upf = b.tensor(f"{name}/up_f", shp, np.float32)
        opts = b.S.CastOptionsT()
        opts.inDataType = b.S.TensorType.BOOL
        opts.outDataType = b.S.TensorType.FLOAT32
        b.op(BO.CAST, [up], [upf], b.BOPT.CastOptions, opts)
        k = b.binary(BO.ADD, f, upf, f"{name}/code", shp)
        k = b.binary(BO.MAXIMUM, k, b.fconst(f"{name}/kmin", fmt.lo), f"{name}/code_lo", shp)
        k = b.binary(BO.MINIMUM, k, b.fconst(f"{name}/kmax", fmt.hi), f"{name}/code_hi", shp)
        return b.binary(BO.MUL, k, b.fconst(f"{name}/step", fmt.step), name, shp)

    def _input_for(self, op, fmt: _Fmt):
        """(int8 tensor or None, float tensor or None) of op's quantized input."""
        tid = op.inputs[0]
        b = self.b
        if tid in self.int8_rep and self.int8_rep[tid][0] == fmt:
            return self.int8_rep[tid][1], None
        if (tid, fmt) in self.quant_cache:
            return self.quant_cache[(tid, fmt)]
        src = self._float(tid)
        if fmt.int8:
            qf = self._round_float(src, fmt, f"{op.name}/input_grid")
            q = b.tensor(f"{op.name}/input_q", b.shape_of(qf), np.int8, fmt.step, fmt.zp)
            b.op(b.BO.QUANTIZE, [qf], [q], version=2)
            res = (q, None)
        else:
            res = (None, self._round_float(src, fmt, f"{op.name}/input_q"))
        self.quant_cache[(tid, fmt)] = res
        return res

    # --------------------------------------------------------- weight layers
    def _weights(self, op, fw: _Fmt):
        kc = quantize_int(op.attrs["kernel"], fw.bits, fw.range, True)
        bias = op.attrs.get("bias")
        bc = None if bias is None else quantize_int(bias, fw.bits, fw.range, True)
        return kc, bc

    @staticmethod
    def _tfl_kernel(op, k):
        """Keras kernel layout -> TFLite layout."""
        if op.kind == "dense":
            return np.ascontiguousarray(k.T)                    # [out, in]
        if op.kind == "conv2d":
            return np.ascontiguousarray(np.transpose(k, (3, 0, 1, 2)))  # [O, kh, kw, I]
        kh, kw, cin, m = k.shape
        return np.ascontiguousarray(k.reshape(1, kh, kw, cin * m))

    def _conv_like(self, op, x, w, bias, out, int8: bool):
        b, S, BO = self.b, self.b.S, self.b.BO
        ins = [x, w] + ([bias] if bias is not None else [-1])
        if op.kind == "dense":
            o = S.FullyConnectedOptionsT()
            o.keepNumDims = False
            b.op(BO.FULLY_CONNECTED, ins, [out], b.BOPT.FullyConnectedOptions, o,
                 4 if int8 else 1)
            return
        pad = S.Padding.SAME if op.attrs["padding"] == "SAME" else S.Padding.VALID
        if op.kind == "conv2d":
            o = S.Conv2DOptionsT()
            code, ot, ver = BO.CONV_2D, b.BOPT.Conv2DOptions, 3 if int8 else 1
        else:
            o = S.DepthwiseConv2DOptionsT()
            o.depthMultiplier = int(op.attrs["kernel"].shape[3])
            code, ot, ver = BO.DEPTHWISE_CONV_2D, b.BOPT.DepthwiseConv2DOptions, 3 if int8 else 1
        o.padding = pad
        o.strideH, o.strideW = (int(s) for s in op.attrs["strides"])
        o.dilationHFactor = o.dilationWFactor = 1
        o.fusedActivationFunction = 0
        b.op(code, ins, [out], ot, o, ver)

    def weight_op(self, op, lp):
        b = self.b
        fw, fa = self.fmts[op.name]
        kc, bc = self._weights(op, fw)
        out_shape = self.g.shapes[op.output]
        rep = LayerExport(op.name, op.layer_class, op.kind, fw.bits, fa.bits, fw.step,
                          fa.step, fa.signed,
                          num_weights=int(kc.size + (0 if bc is None else bc.size)),
                          num_inputs=int(np.prod(self.g.shapes[op.inputs[0]])))
        self.layers[op.name] = rep
        tens = self.tensors[op.name] = {}

        int8_ok = fw.int8 and fa.int8
        bias_i32 = None
        bias_exact = True
        if int8_ok and bc is not None:
            scaled = bc.astype(np.float64) / fa.step
            bias_exact = bool(np.all(scaled == np.round(scaled))
                              and np.all(np.abs(scaled) < 2.0 ** 31))
            if bias_exact:
                bias_i32 = scaled.astype(np.int64)
        chain = None
        if int8_ok and bias_exact:
            chain = _int8_chain(self.g, op, self.cons, self.fmts)
            if chain is not None:
                m = fa.step * fw.step / chain.fmt.step
                if not 2.0 ** -31 <= m < 2.0 ** 30:
                    chain = None
        if not int8_ok:
            path = "float"
        elif chain is not None:
            path = "int8"
        elif op.kind == "dense":
            path = "int32"
        else:
            path = "float"
        if int8_ok and not bias_exact:
            rep.notes.append(
                "bias codes are not integers in int32 at scale Delta_A*Delta_W "
                f"(Delta_A = {fa.step:g} > 1); bias added in float32")
        if int8_ok and path == "float":
            rep.notes.append("output feeds no single int8 grid (logits, average "
                             "pooling, add, concat, mixed formats) or its bias is "
                             "not int32-exact; computed in float32 from int8 operands")

        xq, xf = self._input_for(op, fa)
        tens["input"] = xq if xq is not None else xf
        rep.act_dtype = "int8" if xq is not None else "float32"

        if path == "int32":
            w = b.const(f"{op.name}/kernel", kc, np.int8, fw.step, 0)
            tens["kernel_layout"] = "keras"
        elif fw.int8:
            w = b.const(f"{op.name}/kernel", self._tfl_kernel(op, kc), np.int8, fw.step, 0)
            tens["kernel_layout"] = "tflite"
        else:
            w = b.const(f"{op.name}/kernel", self._tfl_kernel(op, kc) * fw.step,
                        np.float32)
            tens["kernel_layout"] = "tflite"
        rep.weight_dtype = "int8" if fw.int8 else "float32"
        tens["kernel"] = w

        if path == "int8":
            self._int8_layer(op, rep, tens, xq, w, bias_i32, fa, fw, chain, out_shape)
        elif path == "int32":
            self._int32_dense(op, rep, tens, xq, w, kc, bc, fa, fw, out_shape)
        else:
            self._float_layer(op, rep, tens, xq, xf, w, bc, fa, fw, out_shape)

    def _int8_layer(self, op, rep, tens, xq, w, bias_i32, fa, fw, chain, out_shape):
        """int8 kernel whose output is requantized onto the next layer's grid.

        TFLite kernels break rounding ties differently (reference: away from
        zero; XNNPACK: to even).  The plan rounds ties upward.  Two exact
        devices make every kernel agree with the plan:

        * the output tensor's scale is Delta*(1 - delta) with delta = 2^-23
          (a float32 number), so the kernel's multiplier is
          M*(1 + delta): a tie moves up by a hair while no other value
          crosses a rounding boundary (|accumulator + shift| * delta < 1);
          an int8 requantization (QUANTIZE or ADD) then relabels the scale
          to exactly Delta without changing any code;
        * on a grid with negative codes the bias is raised by K steps of the
          output (K = -lowest code, so every code that matters rounds from a
          positive value) and an int8 ADD of -K*Delta takes them back off.
        """
        b, BO = self.b, self.b.BO
        g = chain.fmt
        lo, hi = chain.clip
        klo = g.lo if lo is None else max(g.lo, min(g.hi, int(round(lo / g.step))))
        khi = g.hi if hi is None else max(g.lo, min(g.hi, int(round(hi / g.step))))
        ratio = g.step / (fa.step * fw.step)      # 2^s: accumulator units per step
        kc = np.asarray(_Realizer._tfl_kernel(op, self._weights(op, fw)[0]), np.int64)
        amax = max(abs(fa.lo), abs(fa.hi))
        per_out = (np.abs(kc).sum(axis=tuple(range(1, kc.ndim))) if op.kind != "depthwise"
                   else np.abs(kc).sum(axis=(0, 1, 2)))
        bias0 = np.zeros(per_out.shape, np.int64) if bias_i32 is None else bias_i32
        acc_bound = float(np.max(per_out * amax + np.abs(bias0)))
        shift_k, delta = 0, 0.0
        if ratio > 1:        # the kernel rounds: make ties go up
            shift_k = max(0, -klo)
            total = acc_bound + shift_k * ratio
            direction = self.tie_direction[op.kind]
            limit = 2.0 ** 23 if direction > 0 else 2.0 ** 22
            if total < limit:
                delta = direction * 2.0 ** -23
            else:
                rep.notes.append(
                    f"accumulator bound {total:.3g} >= {limit:.3g}: rounding ties "
                    "are left to the TFLite kernel")
        c = int(shift_k * ratio)
        if bias_i32 is not None or c:
            bvals = bias0 + c
            if np.any(np.abs(bvals) >= 2 ** 31):
                raise ExportError(f"layer {op.name!r}: int32 bias overflows")
            bias = b.const(f"{op.name}/bias", bvals, np.int32, fa.step * fw.step, 0)
            tens["bias"] = bias
            tens["bias_shift"] = c
            rep.bias_dtype = "int32"
        else:
            bias = None
            rep.bias_dtype = "none"
        z1 = g.zp if shift_k == 0 else -128
        s1 = float(np.float32(g.step * (1.0 - delta)))
        y = b.tensor(f"{op.name}/acc_requant", out_shape, np.int8, s1, z1)
        self._conv_like(op, xq, w, bias, y, True)
        if shift_k:
            k = b.const(f"{op.name}/unshift", np.array([-shift_k], np.int8), np.int8, g.step, 0)
            y = b.binary(BO.ADD, y, k, f"{op.name}/out", out_shape, np.int8, g.step,
                         g.zp, version=2)
        elif delta:
            out = b.tensor(f"{op.name}/out", out_shape, np.int8, g.step, g.zp)
            b.op(BO.QUANTIZE, [y], [out], version=2)
            y = out
        rep.compute = "int8"
        consumers = sorted({c.name for c in self._chain_end_consumers(op, chain)})
        rep.output = "int8 on the input grid of " + ", ".join(consumers)
        # the composed clip: activation clip, then the next format's clip
        shp = out_shape
        if klo + g.zp > -128:
            c = b.const(f"{op.name}/out_min", np.int8(klo + g.zp), np.int8, g.step, g.zp)
            y = b.binary(BO.MAXIMUM, y, c, f"{op.name}/out_lo", shp, np.int8,
                         g.step, g.zp, version=2)
        if khi + g.zp < 127:
            c = b.const(f"{op.name}/out_max", np.int8(khi + g.zp), np.int8, g.step, g.zp)
            y = b.binary(BO.MINIMUM, y, c, f"{op.name}/out_hi", shp, np.int8,
                         g.step, g.zp, version=2)
        cur = op.output
        self.int8_rep[cur] = (g, y)
        for c in chain.ops:
            self.absorbed.add(c.name)
            if c.kind == "maxpool":
                out = b.tensor(c.name, self.g.shapes[c.output], np.int8, g.step, g.zp)
                self._pool(c, y, out, version=2)
                y = out
            elif c.kind == "reshape":
                y = self._reshape(c, y, np.int8, g.step, g.zp)
            # act (clip applied above) and identity: same tensor
            self.int8_rep[c.output] = (g, y)

    def _chain_end_consumers(self, op, chain):
        t = chain.ops[-1].output if chain.ops else op.output
        return self.cons.get(t, [])

    def _int32_dense(self, op, rep, tens, xq, w, kc, bc, fa, fw, out_shape):
        """int8 x int8 BATCH_MATMUL -> exact int32 accumulator -> float32."""
        b, BO, S = self.b, self.b.BO, self.b.S
        acc = b.tensor(f"{op.name}/acc", out_shape, np.int32)
        o = S.BatchMatMulOptionsT()
        o.adjX = False
        o.adjY = False
        b.op(BO.BATCH_MATMUL, [xq, w], [acc], b.BOPT.BatchMatMulOptions, o, 3)
        if fa.zp != 0 and not self.bmm_zp:
            # the int32 kernel multiplied (k + zp) by the weights: subtract zp * colsum
            corr = (-fa.zp * kc.sum(axis=0)).astype(np.int64)
            tens["acc_offset"] = corr
            acc = b.binary(BO.ADD, acc, b.const(f"{op.name}/zp_correction", corr, np.int32),
                           f"{op.name}/acc_corrected", out_shape, np.int32)
        accf = b.tensor(f"{op.name}/acc_f", out_shape, np.float32)
        co = S.CastOptionsT()
        co.inDataType = S.TensorType.INT32
        co.outDataType = S.TensorType.FLOAT32
        b.op(BO.CAST, [acc], [accf], b.BOPT.CastOptions, co)
        y = b.binary(BO.MUL, accf, b.fconst(f"{op.name}/acc_step", fa.step * fw.step),
                     f"{op.name}/matmul", out_shape)
        if bc is not None:
            tens["bias"] = b.const(f"{op.name}/bias", bc * fw.step, np.float32)
            rep.bias_dtype = "float32"
            y = b.binary(BO.ADD, y, tens["bias"], f"{op.name}/out", out_shape)
        else:
            rep.bias_dtype = "none"
        rep.compute = "int8"
        rep.output = "int32 -> float32"
        self.float_rep[op.output] = y

    def _float_layer(self, op, rep, tens, xq, xf, w, bc, fa, fw, out_shape):
        b, BO = self.b, self.b.BO
        x = xf
        if x is None:
            x = b.tensor(f"{op.name}/input_dequant", b.shape_of(xq), np.float32)
            b.op(BO.DEQUANTIZE, [xq], [x], version=2)
        wf = w
        if fw.int8:
            wf = b.tensor(f"{op.name}/kernel_dequant", b.tensors[w].shape, np.float32,
                          batch=False)
            b.op(BO.DEQUANTIZE, [w], [wf], version=2)
        bias = None
        if bc is not None:
            bias = b.const(f"{op.name}/bias", bc * fw.step, np.float32)
            tens["bias"] = bias
            rep.bias_dtype = "float32"
        else:
            rep.bias_dtype = "none"
        y = b.tensor(f"{op.name}/out", out_shape, np.float32)
        self._conv_like(op, x, wf, bias, y, False)
        rep.compute = "float32"
        rep.output = "float32"
        if not (fw.int8 and fa.int8):
            above = [n for n, f in (("weights", fw), ("input", fa)) if not f.int8]
            rep.notes.append(f"{' and '.join(above)} above 8 bits: computed in "
                             "float32 on the exact planned grid")
        self.float_rep[op.output] = y

    # ------------------------------------------------------- other float ops
    def _pool(self, op, x, out, version=1):
        b, S, BO = self.b, self.b.S, self.b.BO
        o = S.Pool2DOptionsT()
        o.padding = S.Padding.SAME if op.attrs["padding"] == "SAME" else S.Padding.VALID
        o.strideH, o.strideW = (int(s) for s in op.attrs["strides"])
        o.filterHeight, o.filterWidth = (int(s) for s in op.attrs["ksize"])
        o.fusedActivationFunction = 0
        code = BO.MAX_POOL_2D if op.kind == "maxpool" else BO.AVERAGE_POOL_2D
        b.op(code, [x], [out], b.BOPT.Pool2DOptions, o, version)

    def _reshape(self, op, x, dtype, scale=None, zp=0):
        b, S, BO = self.b, self.b.S, self.b.BO
        shp = [int(d) for d in self.g.shapes[op.output]]
        out = b.tensor(op.name, shp, dtype, scale, zp)
        sh = b.const(f"{op.name}/shape", np.array([-1] + shp, np.int32), np.int32)
        o = S.ReshapeOptionsT()
        o.newShape = np.array([-1] + shp, np.int32)
        b.op(BO.RESHAPE, [x, sh], [out], b.BOPT.ReshapeOptions, o)
        return out

    def float_op(self, op):
        b, S, BO = self.b, self.b.S, self.b.BO
        ins = [self._float(i) for i in op.inputs]
        x = ins[0]
        shp = [int(d) for d in self.g.shapes[op.output]]
        if op.kind == "act":
            y = x
            if op.attrs.get("fn") == "relu":
                lo, hi = op.attrs.get("low"), op.attrs.get("high")
                if lo == 0.0 and hi is None:
                    y = b.tensor(op.name, shp, np.float32)
                    b.op(BO.RELU, [x], [y])
                elif lo == 0.0 and hi == 6.0:
                    y = b.tensor(op.name, shp, np.float32)
                    b.op(BO.RELU6, [x], [y])
                else:
                    if lo is not None:
                        y = b.binary(BO.MAXIMUM, y, b.fconst(f"{op.name}/lo", lo),
                                     f"{op.name}/max", shp)
                    if hi is not None:
                        y = b.binary(BO.MINIMUM, y, b.fconst(f"{op.name}/hi", hi),
                                     f"{op.name}/min", shp)
        elif op.kind in ("maxpool", "avgpool"):
            y = b.tensor(op.name, shp, np.float32)
            self._pool(op, x, y)
        elif op.kind == "gap":
            y = b.tensor(op.name, shp, np.float32)
            axes = b.const(f"{op.name}/axes", np.array([1, 2], np.int32), np.int32)
            o = S.ReducerOptionsT()
            o.keepDims = bool(op.attrs.get("keepdims", False))
            b.op(BO.MEAN, [x, axes], [y], b.BOPT.ReducerOptions, o)
        elif op.kind == "reshape":
            y = self._reshape(op, x, np.float32)
        elif op.kind == "identity":
            y = x
        elif op.kind == "add":
            y = ins[0]
            for k, other in enumerate(ins[1:]):
                y = b.binary(BO.ADD, y, other, f"{op.name}/{k}" if k < len(ins) - 2
                             else op.name, shp)
        elif op.kind == "concat":
            y = b.tensor(op.name, shp, np.float32)
            o = S.ConcatenationOptionsT()
            o.axis = int(op.attrs["axis"])
            o.fusedActivationFunction = 0
            b.op(BO.CONCATENATION, ins, [y], b.BOPT.ConcatenationOptions, o)
        else:
            raise ExportError(f"layer {op.name!r}: op kind {op.kind!r} cannot be "
                              "exported to TFLite")
        self.float_rep[op.output] = y

    # ---------------------------------------------------------------- build
    def build(self, plan_by_name) -> bytes:
        b = self.b
        x = b.tensor("input", self.g.shapes[self.g.input_id], np.float32)
        self.float_rep[self.g.input_id] = x
        for op in self.g.ops:
            if op.name in self.absorbed:
                continue
            if op.kind in WEIGHT_KINDS:
                self.weight_op(op, plan_by_name[op.name])
            else:
                self.float_op(op)
        out = self._float(self.g.output_id)
        ident = b.tensor("logits", self.g.shapes[self.g.output_id], np.float32)
        # a named output tensor (RESHAPE to the same shape) keeps the output
        # distinct from any constant or intermediate tensor
        shp = [int(d) for d in self.g.shapes[self.g.output_id]]
        sh = b.const("logits/shape", np.array([-1] + shp, np.int32), np.int32)
        o = b.S.ReshapeOptionsT()
        o.newShape = np.array([-1] + shp, np.int32)
        b.op(b.BO.RESHAPE, [out, sh], [ident], b.BOPT.ReshapeOptions, o)
        content = b.finish([x], [ident], "tfprec fixed-point export")
        # the same model with every layer's quantized input as an extra
        # output, so the check can read them under any kernel (delegates
        # do not keep intermediate tensors)
        extra = sorted({t["input"] for t in self.tensors.values()})
        probe = b.finish([x], [ident] + extra, "tfprec fixed-point export (probe)")
        return content, probe


_BMM_ZP_CACHE: dict = {}


def _bmm_honors_zero_point() -> bool:
    """Whether TFLite's int8 x int8 -> int32 BATCH_MATMUL subtracts the input
    zero point (probed once on a 1x1 model)."""
    if "v" in _BMM_ZP_CACHE:
        return _BMM_ZP_CACHE["v"]
    b = _Builder()
    x = b.tensor("x", [1], np.int8, 1.0, -128)
    w = b.const("w", np.array([[1]], np.int8), np.int8, 1.0, 0)
    y = b.tensor("y", [1], np.int32)
    o = b.S.BatchMatMulOptionsT()
    b.op(b.BO.BATCH_MATMUL, [x, w], [y], b.BOPT.BatchMatMulOptions, o, 3)
    it = _interpreter(b.finish([x], [y], "probe"), "ref")
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], np.array([[0]], np.int8))
    it.invoke()
    v = int(it.get_tensor(it.get_output_details()[0]["index"])[0, 0])
    _BMM_ZP_CACHE["v"] = (v == 128)
    return _BMM_ZP_CACHE["v"]


def _interpreter(content=None, resolver: str = "auto", path=None, preserve=False):
    from tensorflow.lite.python.interpreter import OpResolverType
    kinds = {"auto": OpResolverType.AUTO,
             "builtin": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
             "ref": OpResolverType.BUILTIN_REF}
    if resolver not in kinds:
        raise ValueError(f"resolver must be one of {sorted(kinds)}, got {resolver!r}")
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tf.lite.Interpreter(model_content=content, model_path=path,
                                   experimental_op_resolver_type=kinds[resolver],
                                   experimental_preserve_all_tensors=preserve)


def _run_probe(content: bytes, resolver: str, x: np.ndarray) -> dict:
    """Runs the probe model; returns {output tensor index: value}."""
    it = _interpreter(content, resolver)
    inp = it.get_input_details()[0]["index"]
    it.resize_tensor_input(inp, list(x.shape))
    it.allocate_tensors()
    it.set_tensor(inp, x)
    it.invoke()
    return {d["index"]: np.array(it.get_tensor(d["index"])) for d in it.get_output_details()}


def _qparams(detail):
    qp = detail["quantization_parameters"]
    return np.asarray(qp["scales"], np.float64), np.asarray(qp["zero_points"], np.int64)


def _check_weights(it, details, rep: LayerExport, tens, op, fw, fa):
    ok = True
    kc = quantize_int(op.attrs["kernel"], fw.bits, fw.range, True)
    d = details[tens["kernel"]]
    v = it.get_tensor(tens["kernel"])
    scales, zps = _qparams(d)
    exp = kc if tens["kernel_layout"] == "keras" else _Realizer._tfl_kernel(op, kc)
    if rep.weight_dtype == "int8":
        ok &= (v.dtype == np.int8 and scales.size == 1 and scales[0] == fw.step
               and zps.size == 1 and zps[0] == 0
               and v.min() >= fw.lo and v.max() <= fw.hi
               and v.shape == exp.shape and np.array_equal(v.astype(np.int64), exp))
    else:
        codes = v.astype(np.float64) / fw.step
        ok &= (v.dtype == np.float32 and scales.size == 0 and v.shape == exp.shape
               and np.array_equal(codes, np.round(codes))
               and np.array_equal(codes.astype(np.int64), exp))
    bias = op.attrs.get("bias")
    if bias is not None:
        bc = quantize_int(bias, fw.bits, fw.range, True)
        if "bias" not in tens:
            return False
        d = details[tens["bias"]]
        v = it.get_tensor(tens["bias"])
        scales, zps = _qparams(d)
        if rep.bias_dtype == "int32":
            raw = v.astype(np.int64) - int(tens.get("bias_shift", 0))
            ok &= (v.dtype == np.int32 and scales.size == 1
                   and scales[0] == fa.step * fw.step and zps[0] == 0
                   and np.array_equal(raw.astype(np.float64) * fa.step,
                                      bc.astype(np.float64)))
        else:
            codes = v.astype(np.float64) / fw.step
            ok &= (v.dtype == np.float32 and np.array_equal(codes, bc.astype(np.float64)))
    return bool(ok)


def _check_acts(values: dict, details, rep: LayerExport, tens, fa: _Fmt, sim_codes):
    t = tens["input"]
    d = details[t]
    v = values[t]
    scales, zps = _qparams(d)
    if rep.act_dtype == "int8":
        ok = (v.dtype == np.int8 and scales.size == 1 and scales[0] == fa.step
              and zps.size == 1 and zps[0] == fa.zp)
        codes = v.astype(np.int64) - fa.zp
    else:
        codes_f = v.astype(np.float64) / fa.step
        ok = (v.dtype == np.float32 and scales.size == 0
              and np.array_equal(codes_f, np.round(codes_f)))
        codes = np.round(codes_f).astype(np.int64)
    ok = bool(ok and codes.min() >= fa.lo and codes.max() <= fa.hi)
    match = float(np.mean(codes.reshape(sim_codes.shape) == sim_codes)) \
        if codes.size == sim_codes.size else 0.0
    return ok, match


def _write_atomic(path: str, data: bytes) -> None:
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=".tfprec-", suffix=".tflite.tmp", dir=d)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        raise ExportError(f"cannot write TFLite file {path!r}: {e}") from e
    finally:
        if tmp is not None:
            try:
                os.remove(tmp)
            except OSError:
                pass


def export_tflite(model, plan, path, representative_data=None, *,
                  kernels: str = "xnnpack",
                  check_examples: int = _CHECK_EXAMPLES,
                  strict: bool = True) -> ExportReport:
    """Writes a ``.tflite`` model that computes the plan's fixed-point network.

    Args:
      model: a trained tf_keras classifier (read only, never modified).
      plan: a :class:`~tfprec.planning.plan.PrecisionPlan` for ``model``.
      path: output file; written atomically (temp file + ``os.replace``).
      representative_data: inputs for the activation-grid check and the
        comparison with the plan's simulation (an array ``[N, ...]`` or an
        iterable of arrays / ``[array]`` lists, as for the TFLite converter).
        Without it, ``check_examples`` synthetic inputs drawn uniformly over
        the first layer's input range are used.
      kernels: TFLite kernel family whose int8 requantization is made to
        round exactly like the plan: 'xnnpack' (the default CPU path of
        ``tf.lite.Interpreter``), 'reference' (``BUILTIN_REF``) or
        'optimized' (builtin kernels without delegates).  The grids are exact
        for every choice; only rounding ties / double rounding differ.
      check_examples: how many examples the checks use.
      strict: raise :class:`ExportError` (with ``.report``) and write nothing
        if any grid check fails.

    Returns:
      An :class:`ExportReport`.

    Raises:
      ExportError: the plan does not match the model, a layer cannot be
        represented (message names it), a grid check fails (``strict``), or
        the file cannot be written (message names the path; no partial file
        is left).
    """
    if kernels not in _TIE_DIRECTION:
        raise ExportError(f"kernels must be one of {sorted(_TIE_DIRECTION)}, got {kernels!r}")
    graph = _parse(model)
    fmts = _plan_formats(graph, plan)
    plan_by_name = {lp.name: lp for lp in plan.layers}
    xs, source = _check_inputs(representative_data, graph, fmts, int(check_examples))

    real = _Realizer(graph, fmts, _bmm_honors_zero_point(), kernels)
    content, probe = real.build(plan_by_name)

    # ---- read everything back through the interpreter
    try:
        # weights and quantization parameters, as stored
        it = _interpreter(content, "ref")
        it.allocate_tensors()
        details = {d["index"]: d for d in it.get_tensor_details()}
        out_index = it.get_output_details()[0]["index"]
        # every layer's quantized input, computed by each kernel family (the
        # probe model lists them as outputs: delegates keep no intermediates)
        runs = {}
        for fam, resolver in _RESOLVER_OF.items():
            runs[fam] = _run_probe(probe, resolver, xs)
    except ExportError:
        raise
    except Exception as e:
        raise ExportError(f"the exported model does not run in tf.lite.Interpreter: {e}") from e

    values: dict = {}
    sim = _simulate(graph, plan, xs, values)
    record = {n: np.floor(v / fmts[n][1].step + 0.5).astype(np.int64)
              for n, v in values.items()}
    layers = []
    for op in graph.weight_ops:
        rep = real.layers[op.name]
        fw, fa = fmts[op.name]
        tens = real.tensors[op.name]
        rep.weights_grid_ok = _check_weights(it, details, rep, tens, op, fw, fa)
        oks = []
        for fam, outs in runs.items():
            ok, match = _check_acts(outs, details, rep, tens, fa, record[op.name])
            oks.append(ok)
            if fam == kernels:
                rep.act_codes_match = match
        rep.act_grid_ok = bool(all(oks))
        layers.append(rep)

    # representational cost of the plan (METHOD.md section 4), from the
    # plan's own counts where it has them
    plan_bits = 0.0
    for op in graph.weight_ops:
        lp = plan_by_name[op.name]
        rep = real.layers[op.name]
        nw = getattr(lp, "num_weights", None) or rep.num_weights
        ni = getattr(lp, "num_inputs", None) or rep.num_inputs
        if (nw, ni) != (rep.num_weights, rep.num_inputs):
            rep.notes.append(f"the plan counts {nw} weights and {ni} inputs; the "
                             f"model has {rep.num_weights} and {rep.num_inputs}")
        plan_bits += int(lp.weight_bits) * int(nw) + int(lp.act_bits) * int(ni)

    sim_dec = np.argmax(sim, axis=-1)
    by_kernels = {fam: float(np.mean(sim_dec == np.argmax(outs[out_index], axis=-1)))
                  for fam, outs in runs.items()}
    diff_by_kernels = {fam: float(np.max(np.abs(outs[out_index].astype(np.float64) - sim)))
                       for fam, outs in runs.items()}
    notes = [
        f"rounding tuned for {kernels} kernels (kernels='{kernels}'): their int8 "
        "requantization rounds exactly like the plan (ties upward). TFLite's "
        "kernel families round differently (XNNPACK: single rounding, ties to "
        "even; reference FULLY_CONNECTED: single, ties away from zero; "
        "reference CONV_2D/DEPTHWISE and optimized builtins: gemmlowp double "
        "rounding); on other kernels a requantized activation can land one step "
        "off, still on its grid"]
    report = ExportReport(
        path=os.fspath(path), layers=layers, file_size_bytes=len(content),
        plan_bits=float(plan_bits), check_examples=int(xs.shape[0]),
        check_source=source, kernels=kernels,
        sim_agreement=by_kernels[kernels], max_logit_diff=diff_by_kernels[kernels],
        agreement_by_kernels=by_kernels, max_logit_diff_by_kernels=diff_by_kernels,
        notes=notes)
    if strict and not report.grid_check_passed:
        bad = [l.name for l in layers if not l.grid_check_passed]
        err = ExportError(f"grid check failed for layers {bad}; nothing written "
                          f"to {os.fspath(path)!r}")
        err.report = report
        raise err
    _write_atomic(path, content)
    report.file_size_bytes = os.path.getsize(path)
    return report


# --------------------------------------------------------------------------
# Running exported models
# --------------------------------------------------------------------------
def tflite_predict(path, x, batch_size: int = 256, resolver: str = "auto") -> np.ndarray:
    """Logits of a ``.tflite`` classifier on inputs ``x`` ([N, ...] float).

    Runs in batches of ``batch_size`` (the input is resized once; the last
    batch is zero-padded).  ``resolver``: 'auto' (XNNPACK, the interpreter's
    default), 'ref' (TFLite reference kernels) or 'builtin'.
    """
    x = np.asarray(x, np.float32)
    if x.ndim < 1 or x.shape[0] == 0:
        return np.zeros((0,), np.float64)
    try:
        it = _interpreter(path=os.fspath(path), resolver=resolver)
    except ValueError as e:
        raise ExportError(f"cannot load TFLite model {os.fspath(path)!r}: {e}") from e
    n = x.shape[0]
    bs = int(max(1, min(batch_size, n)))
    inp = it.get_input_details()[0]["index"]
    it.resize_tensor_input(inp, [bs, *x.shape[1:]])
    it.allocate_tensors()
    out_idx = it.get_output_details()[0]["index"]
    outs = []
    for s in range(0, n, bs):
        xb = x[s:s + bs]
        m = xb.shape[0]
        if m < bs:
            xb = np.concatenate([xb, np.zeros((bs - m, *x.shape[1:]), np.float32)])
        it.set_tensor(inp, xb)
        it.invoke()
        outs.append(np.array(it.get_tensor(out_idx)[:m], np.float64))
    return np.concatenate(outs)


def _logits_of(a, x):
    if isinstance(a, keras.Model):
        if x is None:
            raise ValueError("agreement: inputs x are needed to run a model")
        out = np.asarray(a.predict(np.asarray(x, np.float32), verbose=0), np.float64)
        return out
    if isinstance(a, (str, os.PathLike)):
        if x is None:
            raise ValueError("agreement: inputs x are needed to run a .tflite file")
        return tflite_predict(a, x)
    return np.asarray(a)


def agreement(model_or_logits_a, logits_b, x=None) -> float:
    """Fraction of examples on which two classifiers take the same decision.

    Each argument is logits ``[N, M]`` (or decisions ``[N]``), a tf_keras
    model, or a path to a ``.tflite`` file; models and files are run on
    ``x``.  A final softmax does not change the argmax, so a Keras model's
    probabilities compare directly with TFLite logits.
    """
    a = _logits_of(model_or_logits_a, x)
    b = _logits_of(logits_b, x)
    da = a if a.ndim == 1 else np.argmax(a, axis=-1)
    db = b if b.ndim == 1 else np.argmax(b, axis=-1)
    if da.shape != db.shape:
        raise ValueError(f"agreement: {da.shape[0]} vs {db.shape[0]} examples")
    if da.size == 0:
        return float("nan")
    return float(np.mean(da == db))
