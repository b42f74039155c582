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
    """A fixed-point format: ``bits`` (B), ``range`` (R), ``signed``."""

    bits: int
    range: float
    signed: bool

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
    """(weight Fmt, input Fmt) of one plan entry; ExportError naming the
    layer when its bits are not ints in MIN_BITS..MAX_BITS, its ranges not
    powers of two, or its steps outside what float32 TFLite scales hold."""
    name = getattr(lp, "name", "?")
    with as_export_errors(f"layer {name!r} cannot be exported: "):
        wb = check_bits("weight_bits", getattr(lp, "weight_bits", None))
        ab = check_bits("act_bits", getattr(lp, "act_bits", None))
        wr = check_pow2("weight_range", getattr(lp, "weight_range", None))
        ar = check_pow2("act_range", getattr(lp, "act_range", None))
    fw = Fmt(wb, wr, True)
    fa = Fmt(ab, ar, bool(lp.act_signed))
    for f, what in ((fw, "weight"), (fa, "activation")):
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


def int8_chain(graph, op, cons, fmts) -> Optional[Chain]:
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
            if not (on_grid(clip[0], fa.step) and on_grid(clip[1], fa.step)):
                return None
            return Chain(fa, chain, clip)
        if len(cs) != 1:
            return None
        c = cs[0]
        if c.kind == "act":
            if c.attrs.get("fn") == "relu":
                clip = compose_clip((c.attrs.get("low"), c.attrs.get("high")), clip)
            elif c.attrs.get("fn") != "linear":
                return None
        elif c.kind not in ("maxpool", "reshape", "identity"):
            return None
        chain.append(c)
        t = c.output
