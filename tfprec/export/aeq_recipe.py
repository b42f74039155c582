"""Plan -> AI Edge Quantizer recipe, for :mod:`tfprec.export.aeq`.

Three pieces:

* :func:`weight_qsv`: the min/max statistics that make AEQ's min/max
  algorithm give every channel of a snapped kernel the scale Delta_W
  exactly, so its stored codes are the plan's.  (AEQ's
  ``dequantized_weight_recovery`` infers the scale from the smallest gap
  between a channel's values, which is a multiple of Delta_W when a channel
  has no two adjacent codes and fails when the gaps have no common step;
  it does not handle DEPTHWISE_CONV_2D either.  Custom algorithm keys are
  not accepted by AEQ 0.10's recipe manager.)
* :func:`read_graph` lists the operators and tensors of a float TFLite file
  (LiteRT schema, public).
* :data:`VERIFIED`: the (operator, activation type, weight type) kernel
  combinations whose outputs were checked here against the fake-quant model
  on every LiteRT kernel family; :func:`check_verified` refuses the others.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from tfprec._tf import keras, tf
from tfprec.errors import ExportError
from tfprec.fixedpoint import quantize

ALGORITHM_KEY = "min_max_uniform_quantize"

# Kernel families: LiteRT op resolvers (tfprec.export.checks.interpreter).
FAMILIES = ("xnnpack", "optimized", "reference")
RESOLVER = {"xnnpack": "auto", "optimized": "builtin", "reference": "ref"}

# Weight storage types the backend can write ('float': float32 values on the
# plan's grid), and their bits.
WEIGHT_TYPES = {"int2": 2, "int4": 4, "int8": 8, "int4_block32": 4, "float": 32}

# (op kind, activation type, weight type) -> kernel families on which the
# integer kernel gives exactly the plan's codes (with the tie nudge of
# TIE_DIRECTION tuned for that family): measured by
# ``python benchmarks/deploy.py --verify`` (one-layer models, 400 examples,
# low-bit grids so that requantization ties are frequent) on LiteRT 2.3.0 /
# ai-edge-quantizer 0.10.0.  Fraction of examples whose logits equal the
# plan's float64 simulation, with the better nudge per family:
#   dense   int8 int4 / int8 int8 / int16 int8: 1.0 on all three families
#   dense   int16 int4: reference 1.0, xnnpack and optimized 0.9975
#   conv2d  int8 int4 / int8 int8: 1.0 on all three
#   conv2d  int16 int4: reference 1.0, xnnpack / optimized 0.985
#   conv2d  int16 int8: reference 1.0, xnnpack / optimized 0.9825
#   depthwise int8 int8 / int16 int8: 1.0 on all three
# (XNNPACK does not take the int16 operators: they run on the builtin
# kernels).  The builtin kernels' results depend on the CPU: on a later one
# (no AVX-512) every int16 combination above was exact on all three
# families (tests/test_export_aeq.py::test_verified_table warns of such
# unclaimed exact families); VERIFIED keeps what held on every CPU measured.
# 'float' activations: weight-only (weights dequantized, float
# compute), the mode of the logits layer; float weights (B_W > 8) compute in
# float32.  A combination exact on only some families is exported, and its
# report and metadata say so.
_ALL = frozenset(FAMILIES)
_REF = frozenset({"reference"})
VERIFIED = {
    ("dense", "int8", "int8"): _ALL, ("dense", "int8", "int4"): _ALL,
    ("dense", "int16", "int8"): _ALL, ("dense", "int16", "int4"): _REF,
    ("dense", "float", "int8"): _ALL, ("dense", "float", "int4"): _ALL,
    ("conv2d", "int8", "int8"): _ALL, ("conv2d", "int8", "int4"): _ALL,
    ("conv2d", "int16", "int8"): _REF, ("conv2d", "int16", "int4"): _REF,
    ("conv2d", "float", "int8"): _ALL, ("conv2d", "float", "int4"): _ALL,
    ("depthwise", "int8", "int8"): _ALL, ("depthwise", "int16", "int8"): _ALL,
    ("depthwise", "float", "int8"): _ALL,
}
VERIFICATION_NOTES = (
    "int2 and 32-blockwise int4 weights are refused: ai-edge-quantizer 0.10 "
    "offers them only for weight-only / dynamic-range operators, whose "
    "activations are not on the plan's grid, and LiteRT's int2 and blockwise "
    "kernels are not verified here; DEPTHWISE_CONV_2D has no int4 kernel in "
    "its policy (int4 plans are stored as int8, same grid)")

# Direction of the requantization nudge (tfprec.export.aeq._nudge) that
# makes a kernel family round ties of positive values upward, measured as
# above: +1 multiplier a hair above 2^-p (single rounding: XNNPACK, the
# reference FULLY_CONNECTED, the int16 kernels), -1 a hair below (gemmlowp
# double rounding: optimized builtins, reference CONV_2D / DEPTHWISE_CONV_2D,
# and XNNPACK for int4 CONV_2D, which it leaves to the builtins).
_SPLIT = {"xnnpack": 1, "optimized": -1, "reference": 1}
_SPLIT_CONV = {"xnnpack": 1, "optimized": -1, "reference": -1}
_UP = {"xnnpack": 1, "optimized": 1, "reference": 1}
_DOWN = {"xnnpack": -1, "optimized": -1, "reference": -1}
TIE_DIRECTION = {
    ("dense", "int8", "int4"): _SPLIT, ("dense", "int8", "int8"): _SPLIT,
    ("dense", "int16", "int4"): _UP, ("dense", "int16", "int8"): _UP,
    ("conv2d", "int8", "int4"): _DOWN, ("conv2d", "int8", "int8"): _SPLIT_CONV,
    ("conv2d", "int16", "int4"): _UP, ("conv2d", "int16", "int8"): _UP,
    ("depthwise", "int8", "int8"): _SPLIT_CONV, ("depthwise", "int16", "int8"): _UP,
}


def tie_direction(kind: str, act: str, weight: str, family: str) -> int:
    """+1 / -1 (see :data:`TIE_DIRECTION`); +1 for combinations not in it."""
    return TIE_DIRECTION.get((kind, act, weight), {}).get(family, 1)


def check_verified(layer: str, kind: str, act: str, weight: str) -> frozenset:
    """The kernel families on which (kind, act, weight) is verified; a
    named ExportError for a combination that is not (nothing is written)."""
    if weight == "float":
        return _ALL
    fams = VERIFIED.get((kind, act, weight))
    if not fams:
        raise ExportError(
            f"layer {layer!r}: {kind} with {act} activations and {weight} "
            f"weights is not a verified LiteRT kernel combination of the "
            f"ai_edge_quantizer backend ({VERIFICATION_NOTES}); verified: "
            + ", ".join(f"{k}/{a}/{w}" for k, a, w in sorted(VERIFIED)))
    return fams


# --------------------------------------------------------------------------
# Weight scales
# --------------------------------------------------------------------------
def tflite_steps(kind: str, kernel: np.ndarray, step) -> np.ndarray:
    """``step`` (one Delta_W, or one per output channel) shaped to broadcast
    against a TFLite-layout kernel: channels on axis 0 (FULLY_CONNECTED,
    CONV_2D) or the last axis (DEPTHWISE_CONV_2D)."""
    axis = kernel.ndim - 1 if kind == "depthwise" else 0
    shape = [1] * kernel.ndim
    shape[axis] = kernel.shape[axis]
    s = np.asarray(step, np.float64).reshape(-1)
    return np.broadcast_to(s, (kernel.shape[axis],)).reshape(shape)


def weight_qsv(kind: str, kernel: np.ndarray, bits: int, step) -> dict:
    """Per-channel min/max of a (TFLite-layout) kernel for AEQ's min/max
    rule such that channel c's symmetric scale is exactly its step
    (``step``: one Delta_W, or one per channel): bound / (2^(B-1) - 1)
    with bound = (2^(B-1) - 1) * step (the quotient is exact in floating
    point).  Channels: axis 0 (FULLY_CONNECTED, CONV_2D) or the last axis
    (DEPTHWISE_CONV_2D)."""
    qmax = 2 ** (bits - 1) - 1
    bound = (qmax * tflite_steps(kind, kernel, step)).astype(np.float32)
    return {"min": -bound, "max": bound}


# --------------------------------------------------------------------------
# TFLite graphs
# --------------------------------------------------------------------------
@dataclasses.dataclass
class TflOp:
    index: int
    name: str            # builtin operator name, e.g. 'FULLY_CONNECTED'
    inputs: list         # tensor indices (-1: none)
    outputs: list


@dataclasses.dataclass
class TflGraph:
    ops: list
    tensors: list        # schema TensorT objects
    buffers: list
    inputs: list
    outputs: list
    model: object
    raw: bytes = b""

    def buffer_bytes(self, i: int) -> Optional[bytes]:
        """Bytes of buffer ``i``: inline data, or (files over the flatbuffer
        size limit, or written so by ai_edge_quantizer) ``offset``/``size``
        into the file; None when empty."""
        b = self.buffers[i]
        if b.data is not None and len(b.data):
            return np.asarray(b.data, np.uint8).tobytes()
        off, size = int(getattr(b, "offset", 0) or 0), int(getattr(b, "size", 0) or 0)
        if off > 1 and size > 0:
            return bytes(self.raw[off:off + size])
        return None

    def tensor_name(self, i: int) -> str:
        n = self.tensors[i].name
        return n.decode() if isinstance(n, bytes) else str(n)

    def producer(self, t: int) -> Optional[TflOp]:
        for op in self.ops:
            if t in op.outputs:
                return op
        return None

    def consumers(self, t: int) -> list:
        return [op for op in self.ops if t in op.inputs]

    def const(self, t: int) -> Optional[np.ndarray]:
        """Value of a constant tensor (None for a runtime tensor)."""
        if t < 0:
            return None
        data = self.buffer_bytes(self.tensors[t].buffer)
        return None if data is None else np.frombuffer(data, np.uint8)

    def type_name(self, t: int) -> str:
        from ai_edge_litert import schema_py_generated as S
        names = {v: k for k, v in vars(S.TensorType).items() if not k.startswith("_")}
        return names.get(self.tensors[t].type, "?").lower()


def read_graph(content: bytes) -> TflGraph:
    """Operators (in execution order) and tensors of subgraph 0 of a TFLite
    flatbuffer, read with the LiteRT schema."""
    from ai_edge_litert import schema_py_generated as S
    model = S.ModelT.InitFromPackedBuf(bytearray(content), 0)
    names = {v: k for k, v in vars(S.BuiltinOperator).items() if not k.startswith("_")}
    sg = model.subgraphs[0]
    ops = []
    for i, op in enumerate(sg.operators):
        code = model.operatorCodes[op.opcodeIndex]
        bc = max(int(code.builtinCode), int(code.deprecatedBuiltinCode))
        name = names.get(bc, str(bc))
        if name == "CUSTOM" and code.customCode:
            name = "CUSTOM:" + (code.customCode.decode() if isinstance(code.customCode, bytes)
                                else str(code.customCode))
        ops.append(TflOp(i, name, [int(t) for t in op.inputs],
                         [int(t) for t in op.outputs]))
    return TflGraph(ops, list(sg.tensors), list(model.buffers),
                    [int(t) for t in sg.inputs], [int(t) for t in sg.outputs], model,
                    bytes(content))


WEIGHT_OPS = {"FULLY_CONNECTED": "dense", "CONV_2D": "conv2d",
              "DEPTHWISE_CONV_2D": "depthwise"}
# ops whose output holds values of the input grid (clips, ReLUs, max-pool,
# reshapes): a weight layer's input format is carried back through them to
# the producing weight op's output
TRANSPARENT = {"MINIMUM", "MAXIMUM", "RELU", "RELU6", "RELU_N1_TO_1", "RELU_0_TO_1",
               "MAX_POOL_2D", "RESHAPE", "SQUEEZE"}


# ops whose int8 output AI Edge Quantizer gives its input's scale (its
# SAME_AS_INPUT_SCALE constraint): in a full-integer file a planned grid is
# carried back through them too (average pooling then rounds its mean onto
# the grid of its input, which is the plan's)
SAME_SCALE = TRANSPARENT | {"AVERAGE_POOL_2D", "PAD", "MIRROR_PAD", "SLICE", "STRIDED_SLICE",
                            "TRANSPOSE", "SPACE_TO_DEPTH", "RESIZE_BILINEAR",
                            "RESIZE_NEAREST_NEIGHBOR", "BROADCAST_TO", "GATHER",
                            "GATHER_ND", "REDUCE_MIN"}


def chain_tensors(g: TflGraph, op: TflOp, through=TRANSPARENT) -> tuple:
    """(tensors carrying ``op``'s input grid, producing weight op or None):
    ``op``'s data input and, back through the ops of ``through``
    (:data:`TRANSPARENT`, or :data:`SAME_SCALE` for a full-integer file),
    every tensor up to and including the output of the weight op (or model
    input) that feeds it."""
    got = []
    t = op.inputs[0]
    while True:
        got.append(t)
        p = g.producer(t)
        if p is None:
            return got, None
        if p.name in WEIGHT_OPS:
            return got, p
        if p.name not in through:
            return got, p
        data = [i for i in p.inputs if i >= 0 and g.const(i) is None]
        if len(data) != 1:
            return got, p
        t = data[0]


def match_ops(g: TflGraph, layers: list, snapped: dict) -> dict:
    """{layer name: TflOp} for the weight ops of kind dense / conv2d /
    depthwise (``layers``: (name, kind) pairs) whose snapped kernel is the
    constant weight input of a FULLY_CONNECTED / CONV_2D /
    DEPTHWISE_CONV_2D of the float file, found by content (the first unused
    one).  Other weight ops (affine, generic layers, or an operator the
    converter wrote differently) are absent: they run in float32."""
    used, out = set(), {}
    for name, kind in layers:
        if kind not in WEIGHT_OPS.values():
            continue
        try:
            k = tflite_kernel(kind, snapped[name][0]).astype(np.float32)
        except (ValueError, IndexError):
            continue
        for op in g.ops:
            if op.index in used or WEIGHT_OPS.get(op.name) != kind or len(op.inputs) < 2:
                continue
            got = g.const(op.inputs[1])
            if got is not None and got.size == 4 * k.size and np.array_equal(
                    got.view(np.float32).reshape(k.shape), k):
                out[name] = op
                used.add(op.index)
                break
    return out


def closed_consumers(g: TflGraph, t: int, wanted: dict) -> Optional[list]:
    """The weight ops (``wanted``: {op index: layer name}) that tensor ``t``
    reaches through :data:`TRANSPARENT` ops, when every path from ``t`` ends
    at the data input of one of them; None when a path ends anywhere else
    (another operator, a model output)."""
    found, stack, seen = [], [t], set()
    while stack:
        t = stack.pop()
        if t in seen:
            continue
        seen.add(t)
        cons = g.consumers(t)
        if t in g.outputs or not cons:
            return None
        for c in cons:
            data = [i for i in c.inputs if i >= 0 and g.const(i) is None]
            if c.index in wanted and c.inputs[0] == t and data == [t]:
                found.append(c)
            elif c.name in TRANSPARENT and data == [t]:
                stack.append(c.outputs[0])
            else:
                return None
    return found or None


# --------------------------------------------------------------------------
# Formats and recipe entries
# --------------------------------------------------------------------------
def weight_type(kind: str, bits: int, wide_to_8: bool, override) -> tuple:
    """(storage type, substitution note or '')."""
    if override is not None:
        return override, f"weights stored as {override} (weight_types)"
    if bits > 8:
        if wide_to_8:
            return "int8", f"{bits}-bit weights rounded to 8 bits (round_wide_weights)"
        return "float", f"{bits}-bit weights stored as float32 on their grid"
    if bits <= 4 and kind != "depthwise":
        return "int4", ""
    if bits <= 4:
        return "int8", f"{bits}-bit depthwise weights stored as int8 (no int4 depthwise kernel)"
    return "int8", ""


def span(fa, act: str) -> tuple:
    """(min, max) QSV that makes AEQ's min/max rule give scale Delta_A with
    the zero point of the format's integer type."""
    d = fa.step
    if act == "int16":
        return -32767.0 * d, 32767.0 * d
    return (0.0, 255.0 * d) if not fa.signed else (-128.0 * d, 127.0 * d)


def op_config(act: str, wtype: str):
    from ai_edge_quantizer import qtyping
    gran = qtyping.QuantGranularity
    if wtype == "float":
        return None
    g = gran.BLOCKWISE_32 if wtype == "int4_block32" else gran.CHANNELWISE
    wcfg = qtyping.TensorQuantizationConfig(
        num_bits=WEIGHT_TYPES[wtype], symmetric=True, granularity=g,
    )
    if act == "float":
        return qtyping.OpQuantizationConfig(
            weight_tensor_config=wcfg, compute_precision=qtyping.ComputePrecision.FLOAT,
            explicit_dequantize=True)
    acfg = qtyping.TensorQuantizationConfig(num_bits=16 if act == "int16" else 8,
                                            symmetric=act == "int16")
    return qtyping.OpQuantizationConfig(
        activation_tensor_config=acfg, weight_tensor_config=wcfg,
        compute_precision=qtyping.ComputePrecision.INTEGER)


def nudge(g, chain: list, src, fmts: dict, op_of: dict, direction: int) -> dict:
    """{tensor: eps} for the tensors between a weight op's output and a
    float MINIMUM (the plan's clip, which requantizes exactly onto
    Delta_A): scale Delta_A*(1-eps) (``direction`` +1: the kernel's
    multiplier a hair above 2^-p, for single-rounding kernels) or
    Delta_A*(1+eps) (-1: a hair below, which makes the first step of a
    double-rounding kernel a no-op) makes ties of positive values round
    upward (the plan's rule) without moving any other value: eps =
    2^-(p+10) with 2^-p = Delta_in*Delta_W/Delta_A the accumulator's
    resolution in output steps (clamped to 2^-22..2^-12, float32)."""
    if src is None or src.name not in WEIGHT_OPS or not direction:
        return {}
    mins = [i for i, t in enumerate(chain)
            if (p := g.producer(t)) is not None and p.name == "MINIMUM"]
    if not mins:
        return {}
    prev = next(n for n, o in op_of.items() if o is src)
    cons = next(n for n, o in op_of.items() if chain[0] in o.inputs)
    eps = nudge_eps(fmts, prev, cons, direction)
    # chain runs from the consumer back to the producer: the tensors after
    # the last MINIMUM (closest to the producer) are the nudged ones
    return {t: eps for t in chain[mins[-1] + 1:]}


def nudge_eps(fmts: dict, prev: str, consumer: str, direction: int) -> float:
    """The relative nudge eps (see :func:`nudge`) of weight layer
    ``prev``'s output scale, requantized onto ``consumer``'s input grid:
    direction * 2^-(p+10), clamped to 2^-22..2^-12, with 2^-p =
    Delta_in*Delta_W/Delta_A (the smallest channel step)."""
    fw, fin = fmts[prev]
    fa = fmts[consumer][1]
    p = int(round(np.log2(fa.step / (fin.step * float(np.min(fw.steps()))))))
    return direction * 2.0 ** -min(max(p + 10, 12), 22)


def anchored(name: str) -> str:
    import re
    return "^" + re.escape(name) + ";?$"


# --------------------------------------------------------------------------
# The float model that is converted
# --------------------------------------------------------------------------
class PlanClip(keras.layers.Layer):
    """clip(x, low, high): the plan's saturation of a weight layer's input
    (MINIMUM then MAXIMUM in the TFLite graph) where an integer producer
    requantizes onto the input grid."""

    def __init__(self, low, high, **kw):
        super().__init__(**kw)
        self.low = None if low is None else float(low)
        self.high = None if high is None else float(high)

    def call(self, x):
        if self.high is not None:
            x = tf.minimum(x, tf.constant(self.high, x.dtype))
        if self.low is not None:
            x = tf.maximum(x, tf.constant(self.low, x.dtype))
        return x

    def get_config(self):
        return {**super().get_config(), "low": self.low, "high": self.high}


class PlanRound(keras.layers.Layer):
    """The plan's input quantizer in float arithmetic: min(x, hi*step), then
    floor(x / step + 1/2) * step (round half up, METHOD.md section 1), then
    max(., lo*step).  ``step`` is a power of two, so every operation is
    exact in float32 while |x / step| < 2^23; the bounds are on the grid, so
    clipping before or after rounding is the same.  The MINIMUM in front and
    the MAXIMUM behind keep the converter from folding the scalings into
    the neighbouring operators' weights."""

    def __init__(self, step, lo, hi, **kw):
        super().__init__(**kw)
        self.step, self.lo, self.hi = float(step), int(lo), int(hi)

    def call(self, x):
        c = lambda v: tf.constant(v, x.dtype)  # noqa: E731
        x = tf.minimum(x, c(self.hi * self.step))
        x = tf.floor(x * c(1.0 / self.step) + c(0.5)) * c(self.step)
        return tf.maximum(x, c(self.lo * self.step))

    def get_config(self):
        return {**super().get_config(), "step": self.step, "lo": self.lo, "hi": self.hi}


class _GridBuild:
    """Export hook of :func:`tfprec.quantization.apply._rebuild`: the
    weights of every weight op snapped to the plan's grid (B_W bits, or 8
    with ``wide_to_8`` for wider ones), and in front of each op a
    :class:`PlanClip` (ops in ``clip``: an integer producer requantizes onto
    their input grid; ``None`` for no clip at all) or a :class:`PlanRound`
    (every other op: the rounding is explicit)."""

    def __init__(self, fmts: dict, wide_to_8: bool, clip: dict):
        self.fmts, self.wide_to_8, self.clip = fmts, wide_to_8, clip
        self.snapped: dict = {}

    def before(self, op, x):
        fa = self.fmts[op.name][1]
        if fa is None:                       # no activation format (ids)
            return x
        if op.name in self.clip:
            if self.clip[op.name] is None:
                return x
            return PlanClip(fa.lo * fa.step, fa.hi * fa.step,
                            name=f"{op.name}_plan_clip")(x)
        return PlanRound(fa.step, fa.lo, fa.hi, name=f"{op.name}_plan_round")(x)

    def weights(self, op, layer) -> None:
        from tfprec.statistics.layers import weight_attrs
        fw = self.fmts[op.name][0]
        bits = min(fw.bits, 8) if self.wide_to_8 else fw.bits
        vals = []
        for a in weight_attrs(layer):
            v = getattr(layer, a)
            q = quantize(v.numpy(), bits, fw.ranges, True)   # in the layer's dtype, as the fake-quant model
            v.assign(q.astype(v.dtype.as_numpy_dtype))
            vals.append(np.asarray(v.numpy()))
        self.snapped[op.name] = vals


def grid_model(model, fmts: dict, wide_to_8: bool, clip=None):
    """(float tf_keras model, {op name: snapped weight arrays}): the plan's
    network without the rounding of the integer chains: BN folded (the
    folding of :func:`tfprec.quantization.apply.quantize_model`, every
    weight op a layer of its own, SeparableConv2D in two), softmax dropped,
    weights snapped to their grids, a :class:`PlanClip` or
    :class:`PlanRound` in front of every weight op (see :class:`_GridBuild`;
    ``clip`` None: a PlanClip everywhere, the graph used to find the
    integer chains)."""
    from tfprec.quantization.apply import _rebuild, logits_model
    hook = _GridBuild(fmts, wide_to_8,
                      clip if clip is not None else {n: True for n in fmts})
    out = logits_model(_rebuild(model, None, True, export=hook))
    return out, hook.snapped


def tflite_kernel(kind: str, w: np.ndarray) -> np.ndarray:
    """Keras kernel -> TFLite layout."""
    if kind == "dense":
        return w.T
    if kind == "conv2d":
        return np.transpose(w, (3, 0, 1, 2))
    kh, kw, cin, m = w.shape
    return w.reshape(1, kh, kw, cin * m)
