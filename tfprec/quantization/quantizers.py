"""TFMOT quantizer realizing the fixed-point format of METHOD.md section 1.

:class:`FixedPointQuantizer` (bits B, range scale R, signed) maps a tensor x
to

    clip(floor(x / Delta + 1/2), k_min, k_max) * Delta,   Delta = R * 2^(1-B)

with k in [-2^(B-1), 2^(B-1) - 1] (signed, values on [-R, R)) or
k in [0, 2^B - 1] (unsigned, values on [0, 2R)), exactly as the numpy
reference :func:`tfprec.fixedpoint.quantize` does.  It is built from plain
TensorFlow ops (not ``FakeQuantWithMinMaxVars``, whose range nudging and
rounding differ), and every op is exact in binary floating point:

* x / Delta is a multiplication by a power of two (exact);
* rounding is floor(v) plus one when the fractional part v - floor(v)
  (exact) is >= 1/2, so no ``v + 1/2`` is ever rounded by the float format;
* the clip and k * Delta are exact.

So for the same input values the quantizer returns bit-for-bit the values of
the numpy reference, in float32 as in float64.

The gradient is the straight-through estimator: identity where
k_min * Delta <= x <= k_max * Delta (inside the representable range), zero
outside (saturated), so quantization-aware training works.  The quantizer
holds no variables (``build`` returns an empty dict).
"""
from __future__ import annotations

import numpy as np

from tfprec._tf import tf  # noqa: F401  (selects Keras 2 before TFMOT loads)
from tfprec.errors import InvalidDataError, PlanError
from tfprec.fixedpoint import channel_steps, check_bits, check_pow2, int_limits, step

import tensorflow_model_optimization as tfmot  # noqa: E402  (after tfprec._tf)

_Quantizer = tfmot.quantization.keras.quantizers.Quantizer


def _check_format(bits, range_scale, signed, what: str = "quantizer"):
    """PlanError naming ``what`` unless bits is an int in 2..16 (bits), the
    range scale a power of two and ``signed`` a bool."""
    check_bits(f"{what}: bits", bits)
    check_pow2(f"{what}: range_scale", range_scale)
    if not isinstance(signed, (bool, np.bool_)):
        raise PlanError(f"{what}: signed={signed!r} must be a bool")


def fixed_point_quantize(x, bits: int, range_scale, signed: bool):
    """Fake-quantizes tensor ``x`` to the (B, R, signed) format, with STE.

    Args:
      x: a floating-point tensor (any shape; float32 or float64).
      bits: B, total bits (sign bit included when ``signed``), 2..16.
      range_scale: R, a power of two, in the units of ``x``; or a sequence
        of one power of two per output channel of a weight tensor ``x``
        (its trailing axes, :func:`tfprec.fixedpoint.channel_view`).
      signed: signed format on [-R, R) or unsigned format on [0, 2R).

    Returns:
      A tensor of x's dtype and shape whose values are k * Delta with integer
      k in the format's code range.  Its gradient is the upstream gradient
      where x lies in [k_min * Delta, k_max * Delta] and zero elsewhere.

    Raises:
      PlanError: ``bits`` is not an int in 2..16, ``range_scale`` not a
        power of two or ``signed`` not a bool (the message names it).
      InvalidDataError: ``x`` is not a floating-point tensor.
    """
    per_channel = np.ndim(range_scale) > 0
    for r in (np.reshape(range_scale, -1).tolist() if per_channel else [range_scale]):
        _check_format(bits, r, signed, "fixed_point_quantize")
    bits, signed = int(bits), bool(signed)
    try:
        x = tf.convert_to_tensor(x)
    except (TypeError, ValueError) as e:
        raise InvalidDataError(f"fixed_point_quantize: x must be a float tensor, "
                               f"got {type(x).__name__}: {e}") from e
    dtype = x.dtype
    if not dtype.is_floating:
        raise InvalidDataError(f"fixed_point_quantize: x must be a float tensor, "
                               f"got dtype {dtype.name}")
    kmin, kmax = int_limits(bits, signed)
    try:
        delta = channel_steps(bits, range_scale, x.shape)
    except ValueError as e:
        raise PlanError(f"fixed_point_quantize: {e}") from e
    inv = tf.constant(1.0 / delta, dtype)       # powers of two: exact
    d = tf.constant(delta, dtype)
    lo = tf.constant(kmin * delta, dtype)
    hi = tf.constant(kmax * delta, dtype)

    @tf.custom_gradient
    def _fq(t):
        v = t * inv
        k = tf.floor(v)
        k = k + tf.cast(v - k >= 0.5, dtype)
        k = tf.clip_by_value(k, float(kmin), float(kmax))

        def grad(dy):
            inside = tf.logical_and(t >= lo, t <= hi)
            return dy * tf.cast(inside, dy.dtype)

        return k * d, grad

    return _fq(x)


class ConfigValue:
    """Mixin for objects defined by their ``get_config()`` dict: equality,
    hash, repr and ``from_config`` all follow from it."""

    @classmethod
    def from_config(cls, config: dict):
        return cls(**config)

    def __eq__(self, other) -> bool:
        return type(other) is type(self) and self.get_config() == other.get_config()

    def __ne__(self, other) -> bool:
        return not self.__eq__(other)

    def __hash__(self) -> int:
        return hash((type(self).__name__, *sorted(
            (k, tuple(v) if isinstance(v, list) else v)
            for k, v in self.get_config().items())))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class FixedPointQuantizer(ConfigValue, _Quantizer):
    """TFMOT ``Quantizer`` for the METHOD.md fixed-point format.

    Args:
      bits: B, total bits including the sign bit when ``signed`` (2..16).
      range_scale: R, a power of two; signed values live on [-R, R), unsigned
        ones on [0, 2R); step Delta = R * 2^(1-B) (units of the tensor).
      signed: whether the format has a sign bit.
      channel_ranges: None, or one power of two R_c <= R per output channel
        of the (weight) tensor it quantizes: channel c on [-R_c, R_c) with
        step R_c 2^(1-B) (:func:`tfprec.fixedpoint.channel_view`).

    Raises:
      PlanError: bits outside 2..16 or R (or an R_c) not a positive power
        of two.
    """

    def __init__(self, bits: int, range_scale: float, signed: bool = True,
                 channel_ranges=None):
        if isinstance(bits, np.integer):
            bits = int(bits)
        if isinstance(signed, np.bool_):
            signed = bool(signed)
        _check_format(bits, range_scale, signed)
        self.bits = int(bits)
        self.range_scale = float(range_scale)
        self.signed = bool(signed)
        self.channel_ranges = None
        if channel_ranges is not None:
            rc = [float(check_pow2("quantizer: channel_ranges", r))
                  for r in np.reshape(np.asarray(channel_ranges, dtype=object), -1)]
            if not rc or max(rc) > self.range_scale:
                raise PlanError(f"quantizer: channel_ranges {rc!r:.80} must be "
                                f"non-empty and at most range_scale {self.range_scale:g}")
            self.channel_ranges = tuple(rc)

    # ------------------------------------------------------------ format
    @property
    def step(self) -> float:
        """Delta = R * 2^(1-B), in the units of the quantized tensor."""
        return step(self.bits, self.range_scale)

    @property
    def int_limits(self) -> tuple:
        """(k_min, k_max): the integer code range."""
        return int_limits(self.bits, self.signed)

    @property
    def value_range(self) -> tuple:
        """(smallest, largest) representable value: (k_min Delta, k_max Delta)."""
        lo, hi = self.int_limits
        return lo * self.step, hi * self.step

    # --------------------------------------------------------- Quantizer
    def build(self, tensor_shape, name, layer):
        """Creates no variables (the format is fixed); returns {}."""
        return {}

    def __call__(self, inputs, training=None, weights=None, **kwargs):
        """Quantizes ``inputs`` (same in training and inference)."""
        return fixed_point_quantize(
            inputs, self.bits, self.range_scale if self.channel_ranges is None
            else self.channel_ranges, self.signed)

    def get_config(self) -> dict:
        cfg = {"bits": self.bits, "range_scale": self.range_scale,
               "signed": self.signed}
        if self.channel_ranges is not None:
            cfg["channel_ranges"] = list(self.channel_ranges)
        return cfg
