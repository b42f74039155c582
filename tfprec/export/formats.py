"""Fixed-point formats of a plan, as the TFLite export realizes them.

A layer's formats come from its plan entry (METHOD.md section 1): the weight
format (B_W bits, range R_W, signed) and the input-activation format (B_A
bits, range R_A, signed or not).  This module also holds the rounding rules
per TFLite kernel family and the graph analysis that decides where an int8
kernel may requantize its output straight onto the next layer's grid.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Optional

import numpy as np

from tfprec.errors import ExportError, InvalidDataError, PlanError, UnsupportedModelError
from tfprec.fixedpoint import check_bits, check_pow2, int_limits
from tfprec.statistics.graph import WEIGHT_KINDS

# Sign of the relative nudge of each int8 kernel's requantization multiplier
# that makes it round exactly like the plan (ties upward), per kernel family:
# single-rounding kernels (XNNPACK; TFLite's reference FULLY_CONNECTED) need
# the multiplier a hair above 2^-s; gemmlowp-style double-rounding kernels
# (TFLite's reference CONV_2D / DEPTHWISE_CONV_2D and its optimized builtin
# kernels) a hair below, which turns their first rounding step into a no-op.
TIE_DIRECTION = {
    "xnnpack": {"dense": 1, "conv2d": 1, "depthwise": 1},
    "reference": {"dense": 1, "conv2d": -1, "depthwise": -1},
    "optimized": {"dense": -1, "conv2d": -1, "depthwise": -1},
}
# LiteRT op resolver ('auto' / 'ref' / 'builtin', see checks.interpreter) of
# each kernel family
RESOLVER_OF = {"xnnpack": "auto", "reference": "ref", "optimized": "builtin"}
# the kernel families, in report order
FAMILIES = tuple(TIE_DIRECTION)


class ExportInvalidDataError(ExportError, InvalidDataError):
    """Bad data or scalar argument of an export function: both an
    ExportError and an InvalidDataError (the message names the argument)."""


class ExportPlanError(ExportError, PlanError):
    """A plan an export function cannot use: both an ExportError and a
    PlanError, in the words of :meth:`PrecisionPlan.validate_for`."""


class ExportUnsupportedModelError(ExportError, UnsupportedModelError):
    """A model an export function cannot read: both an ExportError and an
    UnsupportedModelError."""


_EXPORT_TYPE = ((InvalidDataError, ExportInvalidDataError), (PlanError, ExportPlanError),
                (UnsupportedModelError, ExportUnsupportedModelError))


@contextlib.contextmanager
def as_export_errors(prefix: str = ""):
    """Re-raises tfprec's argument errors (InvalidDataError, PlanError,
    UnsupportedModelError) with the same words as errors that are also
    ExportErrors, so export functions raise one type (``except
    ExportError``) and callers can still tell bad data, a bad plan and a
    bad model apart."""
    try:
        yield
    except ExportError:
        raise
    except (InvalidDataError, PlanError, UnsupportedModelError) as e:
        cls = next(c for base, c in _EXPORT_TYPE if isinstance(e, base))
        raise cls(f"{prefix}{e}") from e


@dataclasses.dataclass(frozen=True)
class Fmt:
    """A fixed-point format: ``bits`` (B), ``range`` (R), ``signed``;
    ``channels``: None, or the per-output-channel ranges R_c of a weight
    format (``range`` is then their maximum)."""

    bits: int
    range: float
    signed: bool
    channels: Optional[tuple] = None

    @property
    def ranges(self):
        """R (a float), or the R_c as a float64 array."""
        return self.range if self.channels is None else np.asarray(self.channels, np.float64)

    def steps(self, bits: Optional[int] = None):
        """Delta (a float), or per channel R_c 2^(1-B) (an array), at
        ``bits`` (default B)."""
        b = self.bits if bits is None else int(bits)
        return self.ranges * 2.0 ** (1 - b)

    @property
    def step(self) -> float:
        """Delta = R * 2^(1-B), in the tensor's units."""
        return float(self.range) * 2.0 ** (1 - int(self.bits))

    @property
    def lo(self) -> int:
        return int_limits(self.bits, self.signed)[0]

    @property
    def hi(self) -> int:
        return int_limits(self.bits, self.signed)[1]

    @property
    def int8(self) -> bool:
        """Whether the codes fit an int8 tensor (B <= 8 bits)."""
        return self.bits <= 8

    @property
    def zp(self) -> int:
        """int8 zero point: stored value q = code k + zp."""
        return -128 if (not self.signed and self.bits == 8) else 0


def layer_formats(lp) -> tuple:
    """(weight Fmt, input Fmt) of one plan entry (input Fmt None for a layer
    with no activation format: an Embedding's integer ids); ExportError naming the
    layer when its bits are not ints in MIN_BITS..MAX_BITS, its ranges not
    powers of two, or its steps outside what float32 TFLite scales hold."""
    name = getattr(lp, "name", "?")
    has_act = bool(getattr(lp, "has_act", True))
    with as_export_errors(f"layer {name!r} cannot be exported: "):
        wb = check_bits("weight_bits", getattr(lp, "weight_bits", None))
        wr = check_pow2("weight_range", getattr(lp, "weight_range", None))
        if has_act:
            ab = check_bits("act_bits", getattr(lp, "act_bits", None))
            ar = check_pow2("act_range", getattr(lp, "act_range", None))
    rc = getattr(lp, "weight_channel_ranges", None)
    fw = Fmt(wb, wr, True, None if rc is None else tuple(float(r) for r in rc))
    fa = Fmt(ab, ar, bool(lp.act_signed)) if has_act else None
    for f, what in ((fw, "weight"), (fa, "activation")):
        if f is None:
            continue
        if not 2.0 ** -60 <= f.step <= 2.0 ** 60:
            raise ExportError(f"layer {name!r}: {what} step {f.step!r} is outside "
                              "the float32 range TFLite scales can hold")
    return fw, fa


def plan_formats(graph, plan) -> dict:
    """{weight layer name: (weight Fmt, input Fmt)}; the plan must list every
    weight layer of the graph once and nothing else."""
    layers = getattr(plan, "layers", None)
    if layers is None:
        raise ExportPlanError(f"expected a PrecisionPlan, got {type(plan).__name__}")
    by_name = {}
    for lp in layers:
        if lp.name in by_name:
            raise ExportPlanError(f"plan lists layer {lp.name!r} twice")
        by_name[lp.name] = lp
    wnames = [op.name for op in graph.weight_ops]
    for n in wnames:
        if n not in by_name:
            raise ExportPlanError(f"layer {n!r} has no entry in the plan; cannot export it")
    extra = [n for n in by_name if n not in wnames]
    if extra:
        raise ExportPlanError(f"plan layers {extra} are not weight layers of the model")
    return {n: layer_formats(by_name[n]) for n in wnames}


# --------------------------------------------------------------------------
# Weight layouts
# --------------------------------------------------------------------------
def tflite_kernel(op, k):
    """Keras kernel layout -> TFLite layout."""
    if op.kind == "dense":
        return np.ascontiguousarray(k.T)                    # [out, in]
    if op.kind == "conv2d":
        return np.ascontiguousarray(np.transpose(k, (3, 0, 1, 2)))  # [O, kh, kw, I]
    kh, kw, cin, m = k.shape
    return np.ascontiguousarray(k.reshape(1, kh, kw, cin * m))


# the weight layers the exporter lowers (Dense, Conv2D, DepthwiseConv2D)
LOWERED_WEIGHT_KINDS = ("dense", "conv2d", "depthwise")


def w_out(op, tflite_shape) -> int:
    """Number of output channels of a weight op from its TFLite kernel shape."""
    return int(tflite_shape[-1] if op.kind == "depthwise" else tflite_shape[0])


# --------------------------------------------------------------------------
# Where an int8 kernel's output can be requantized onto the next grid
# --------------------------------------------------------------------------
def consumers(graph) -> dict:
    """{graph tensor id: [ops reading it]}."""
    cons: dict = {}
    for op in graph.ops:
        for i in op.inputs:
            cons.setdefault(i, []).append(op)
    return cons


def compose_clip(outer, inner):
    """clip_outer(clip_inner(x)) as one clip (lo, hi); None = unbounded."""
    def clamp(v, lo, hi):
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


def on_grid(v, step) -> bool:
    """Whether the clip bound ``v`` (None: unbounded) is a multiple of step."""
    if v is None:
        return True
    k = v / step
    return math.isfinite(k) and k == math.floor(k)


@dataclasses.dataclass
class Chain:
    fmt: Fmt
    ops: list           # non-weight ops absorbed (act / maxpool / reshape / identity)
    clip: tuple         # (lo, hi) real-valued composed activation clip
    concat: object = None   # a Concatenate the chain passes through (not absorbed)


def int8_chain(graph, op, cons, fmts) -> Optional[Chain]:
    """The int8 grid op's output can be requantized onto, if any.

    Follows op's output through single-consumer activation / max-pool /
    reshape / identity ops, and possibly one Concatenate whose output feeds
    weight layers directly (concatenation commutes with rounding and
    clipping), to a tensor consumed only by weight layers that share one
    input format of <= 8 bits, with every activation clip bound on that grid.
    """
    t = op.output
    chain: list = []
    clip = (None, None)
    concat = None
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
            if not (on_grid(clip[0], fa.step) and on_grid(clip[1], fa.step)):
                return None
            return Chain(fa, chain, clip, concat)
        if len(cs) != 1 or concat is not None:
            return None
        c = cs[0]
        if c.kind == "concat":
            concat = c
            t = c.output
            continue
        if c.kind == "act":
            if c.attrs.get("fn") == "relu":
                clip = compose_clip((c.attrs.get("low"), c.attrs.get("high")), clip)
            elif c.attrs.get("fn") != "linear":
                return None
        elif c.kind not in ("maxpool", "reshape", "identity"):
            return None
        chain.append(c)
        t = c.output


# --------------------------------------------------------------------------
# Where an int8 kernel's output is dequantized (pooling, add, concat, logits)
# --------------------------------------------------------------------------
def act_run(graph, cons, op) -> tuple:
    """(ops, clip): the activation / identity ops that alone follow op's
    output (stopping at a tensor with several readers, another op or the
    logits) and their composed clip (lo, hi), None = unbounded."""
    t, ops, clip = op.output, [], (None, None)
    while t != graph.output_id:
        cs = cons.get(t, [])
        if len(cs) != 1:
            break
        c = cs[0]
        if c.kind == "act" and c.attrs.get("fn") == "relu":
            clip = compose_clip((c.attrs.get("low"), c.attrs.get("high")), clip)
        elif not (c.kind == "identity"
                  or (c.kind == "act" and c.attrs.get("fn") == "linear")):
            break
        ops.append(c)
        t = c.output
    return ops, clip


def exact_int8_output(graph, cons, op, acc_step: float, acc_bound: float,
                      tb: int = 0):
    """(absorbed act ops, lo, hi, zp) when op's output, after the activations
    that alone follow it, fits int8 codes at scale acc_step / 2^tb (acc_step
    = Delta_A*Delta_W; the kernel's multiplier is then exactly 1 and nothing
    is rounded): lo..hi are the reachable accumulator values (clipped; the
    accumulator is at most ``acc_bound`` units of acc_step in magnitude), zp
    the zero point whose saturation realizes the lower clip.  None when it
    does not fit or a clip bound is off that grid."""
    ops, clip = act_run(graph, cons, op)
    unit = acc_step / 2 ** tb
    if not (on_grid(clip[0], unit) and on_grid(clip[1], unit)):
        return None
    bound = int(np.ceil(acc_bound * 2 ** tb))
    lo, hi = -bound, bound
    if clip[0] is not None:
        lo = max(lo, int(clip[0] / unit))
    if clip[1] is not None:
        hi = min(hi, int(clip[1] / unit))
    hi = max(hi, lo)
    if hi - lo > 255:
        return None
    zp = int(min(127, max(-128, -128 - lo)))
    if lo + zp < -128 or hi + zp > 127:
        return None
    return ops, lo, hi, zp


def rounded_chain(graph, cons, op, bound: float) -> Optional[Chain]:
    """A Chain onto an 8-bit grid that is not in the plan (the
    ``round_pooled_outputs`` option): the finest power-of-two step whose 256
    codes cover op's output after the activations that alone follow it
    (clipped range, else +-``bound``, the largest |output|), with the clip
    bounds on that grid; None when there is none."""
    ops, clip = act_run(graph, cons, op)
    lo = -bound if clip[0] is None else max(-bound, clip[0])
    hi = bound if clip[1] is None else min(bound, clip[1])
    if not (np.isfinite(lo) and np.isfinite(hi)) or hi <= lo:
        return None
    signed = lo < 0
    span = max(hi, -lo) / 127.0 if signed else hi / 255.0
    if span <= 0:
        return None
    step = 2.0 ** math.ceil(math.log2(span))
    if not (on_grid(clip[0], step) and on_grid(clip[1], step)):
        return None
    return Chain(Fmt(8, step * 2.0 ** 7, signed), ops, clip)


def fused_clip(step: float, zp: int, klo: int, khi: int) -> tuple:
    """(fused activation code, lowest code, highest code) of an int8 kernel
    writing codes of step ``step`` with zero point ``zp``: the fused
    activation (none 0, RELU 1, RELU_N1_TO_1 2, RELU6 3) that leaves the
    fewest MAXIMUM / MINIMUM ops for the clip [klo, khi] (codes) without
    clipping inside it.  Only activations whose bounds are codes of the grid
    are used (TFLite and XNNPACK then both clamp at exactly that code, also
    with the scale nudged by 2^-23)."""
    nlo, nhi = -128 - zp, 127 - zp
    best = (int(klo > nlo) + int(khi < nhi), 0, nlo, nhi)
    for code, lo_v, hi_v in ((1, 0.0, None), (2, -1.0, 1.0), (3, 0.0, 6.0)):
        lo, hi = nlo, nhi
        ok = True
        for v, is_lo in ((lo_v, True), (hi_v, False)):
            if v is None:
                continue
            k = v / step
            if k != math.floor(k) or abs(k) >= 2.0 ** 20:
                ok = False
                break
            lo, hi = (max(lo, int(k)), hi) if is_lo else (lo, min(hi, int(k)))
        cost = int(klo > lo) + int(khi < hi)
        if ok and lo <= klo and hi >= khi and cost < best[0]:
            best = (cost, code, lo, hi)
    return best[1], best[2], best[3]
