"""Fixed-point formats of METHOD.md section 1 (numpy reference).

A format is (bits B, range scale R, signed).  Signed values live on
[-R, R) with step Delta = R * 2^(1-B) (B includes the sign bit), i.e. the
integers k in [-2^(B-1), 2^(B-1) - 1] times Delta.  Unsigned values live on
[0, 2R) with the same step: k in [0, 2^B - 1].  Values are rounded to the
nearest level (ties upward) and saturated at both ends of the range.  The
rounding is computed exactly in the input's own precision (q = v / Delta,
k = floor(q) + (q - floor(q) >= 1/2)), so this numpy reference and the TF
quantizer give identical codes at every tie point, in float32 and float64.
"""
from __future__ import annotations

import math

import numpy as np

MIN_BITS = 2
MAX_BITS = 16


def step(bits: int, range_scale: float) -> float:
    """Quantization step Delta = R * 2^(1-B) (same units as the tensor)."""
    return float(range_scale) * 2.0 ** (1 - int(bits))


def int_limits(bits: int, signed: bool) -> tuple:
    """Smallest and largest integer code k of a B-bit format."""
    if signed:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2 ** bits - 1


def quantize_int(x, bits: int, range_scale: float, signed: bool) -> np.ndarray:
    """Integer codes k (int64) of x in the format; x ~= k * step.

    k = clip(round_half_up(x / Delta), k_min, k_max), computed exactly:
    q = x * (1 / Delta) is a multiplication by a power of two, k = floor(q),
    plus one when q - k >= 1/2 (q - k is exact; no ``q + 1/2`` is rounded
    by the float format).  float32 inputs are rounded in float32, all
    others in float64, with the same ops as the TensorFlow quantizer
    :func:`tfprec.quantization.quantizers.fixed_point_quantize`, so both
    give bit-identical codes.
    """
    lo, hi = int_limits(bits, signed)
    x = np.asarray(x)
    dt = np.float32 if x.dtype == np.float32 else np.float64
    inv = (1.0 / channel_steps(bits, range_scale, x.shape)).astype(dt)  # powers of two
    with np.errstate(over="ignore", invalid="ignore"):   # +-inf saturate
        q = x.astype(dt, copy=False) * inv
        k = np.floor(q)
        k = k + (q - k >= 0.5)
    return np.clip(k, lo, hi).astype(np.int64)


def quantize(x, bits: int, range_scale, signed: bool) -> np.ndarray:
    """x rounded to the nearest level of the format (ties upward) and
    saturated, as float64 values k * Delta (see :func:`quantize_int`).
    ``range_scale`` may be one power of two or one per output channel
    (see :func:`channel_view`)."""
    return quantize_int(x, bits, range_scale, signed) * channel_steps(
        bits, range_scale, np.shape(x))


def channel_steps(bits: int, range_scale, shape):
    """Delta = R * 2^(1-B) (a float64 scalar) for one range scale, or per
    output channel (an array shaped by :func:`channel_view` to broadcast
    against a weight tensor of ``shape``) for a sequence of them."""
    if np.ndim(range_scale) == 0:
        return np.float64(step(bits, range_scale))
    return channel_view(range_scale, shape) * 2.0 ** (1 - int(bits))


def channel_view(ranges, shape) -> np.ndarray:
    """Per-output-channel values ``ranges`` (length C) reshaped to broadcast
    against a weight tensor of ``shape`` whose output channels are its
    trailing axes: the last axis of a Dense or Conv2D kernel and of every
    bias (C values), the last two of a DepthwiseConv2D kernel
    [kh, kw, C_in, multiplier] (C = C_in * multiplier, channel-major as the
    layer's output).  The fewest trailing axes whose sizes multiply to C
    are used; ValueError when none do."""
    r = np.asarray(ranges, np.float64).reshape(-1)
    shape = tuple(int(d) for d in shape)
    n = 1
    for k in range(1, len(shape) + 1):
        n *= shape[-k]
        if n == r.size:
            return r.reshape(shape[-k:])
        if n > r.size:
            break
    raise ValueError(f"{r.size} per-channel ranges do not match the trailing "
                     f"axes of a weight tensor of shape {shape}")


def channel_ranges(kernel, bias, channels: int) -> np.ndarray:
    """Per-output-channel range scales R_c (powers of two) of a weight
    layer with ``channels`` output channels, the trailing axes of its kernel
    (see :func:`channel_view`; C_in * multiplier for a DepthwiseConv2D):
    the smallest power of two covering max |w| over the channel's kernel
    slice and its bias entry.  A channel that is all zeros takes the
    smallest range of the other channels (any range represents it
    exactly); the largest R_c is the tensor's range R_W."""
    m = np.abs(np.asarray(kernel, np.float64)).reshape(-1, int(channels)).max(axis=0)
    if bias is not None:
        m = np.maximum(m, np.abs(np.asarray(bias, np.float64).reshape(-1)))
    r = np.array([pow2_ceil(v) if v > 0 else 0.0 for v in m])
    nz = r[r > 0]
    r[r == 0] = nz.min() if nz.size else 1.0
    return r


def check_bits(name: str, value, lo: int = MIN_BITS, hi: int = MAX_BITS) -> int:
    """``value`` as an int bit-width in lo..hi (bits).

    Raises PlanError naming ``name`` for bools, non-integers (3.5, NaN,
    None) and out-of-range values.  The one bit-width check of tfprec.
    """
    from tfprec.errors import PlanError
    ok = (not isinstance(value, bool) and isinstance(value, (int, np.integer))
          and lo <= value <= hi)
    if not ok:
        raise PlanError(f"{name} must be an int number of bits in {lo}..{hi}, "
                        f"got {value!r}")
    return int(value)


def is_pow2(value) -> bool:
    """Whether ``value`` is a positive finite power of two (2^k, k any int)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return False
    if not (v > 0 and np.isfinite(v)):
        return False
    m, _ = np.frexp(v)
    return m == 0.5


def check_pow2(name: str, value) -> float:
    """``value`` as a float if it is a power of two, else PlanError."""
    from tfprec.errors import PlanError
    if isinstance(value, bool) or not is_pow2(value):
        raise PlanError(f"{name} must be a positive power of two, got {value!r}")
    return float(value)


def pow2_ceil(x: float) -> float:
    """Smallest power of two >= x (1.0 for x <= 0)."""
    if not x > 0 or not math.isfinite(x):
        return 1.0
    return float(2.0 ** math.ceil(math.log2(x)))


def range_scale(low: float, high: float, signed: bool) -> float:
    """Range scale R (a power of two) of METHOD.md section 1.

    Signed tensors live on [-R, R); unsigned ones on [0, 2R).
    """
    if signed:
        return pow2_ceil(max(abs(low), abs(high)))
    return pow2_ceil(high / 2.0)
