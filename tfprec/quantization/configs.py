"""TFMOT ``QuantizeConfig``s and scheme for a tfprec precision plan.

Where each tensor of METHOD.md section 1 is quantized in the fake-quant model
built by :func:`tfprec.quantization.apply.quantize_model`:

* weights (kernel and bias together, BatchNormalization folded in) of every
  Dense / Conv2D / DepthwiseConv2D layer: by the layer's
  :class:`FixedPointQuantizeConfig` (B_W bits, signed, range [-R_W, R_W));
* the layer's input activation A_l (the network input included): by an
  :class:`InputQuantizer` layer inserted on the edge into the weight layer.
  ``InputQuantizer`` is the identity in float; in the fake-quant model it is
  wrapped by TFMOT's ``QuantizeWrapperV2`` with an
  :class:`InputQuantizeConfig` whose output quantizer is the B_A-bit
  :class:`~tfprec.quantization.quantizers.FixedPointQuantizer`.  TFMOT configs can only
  quantize a layer's weights, activation functions and outputs, so the
  input of a weight layer is quantized as the output of its own
  ``InputQuantizer`` (one per weight layer, so two weight layers reading the
  same tensor each get their own format).

:func:`tfprec.quantization.apply.quantize_model` wraps exactly these layers
in TFMOT's public ``QuantizeWrapperV2`` (in each layer's own dtype); nothing
else is quantized (TFMOT's default 8-bit scheme is never applied).

Use :func:`quantize_scope` to load a saved fake-quant model.
"""
from __future__ import annotations

from tfprec._tf import keras, tf  # noqa: F401  (selects Keras 2 before TFMOT)
from tfprec.errors import UnsupportedModelError
from tfprec.statistics.layers import weight_attrs
from tfprec.quantization.quantizers import (ConfigValue, FixedPointQuantizer,
                                          _check_format)

import tensorflow_model_optimization as tfmot  # noqa: E402

_QuantizeConfig = tfmot.quantization.keras.QuantizeConfig


def _weight_attrs(layer) -> list:
    """Names of the layer attributes holding its quantized weights (kernel
    and bias, or the layer's one or two trainable weights).

    Found once, while the attributes still hold the variables (the wrapper
    then puts quantized tensors in them), and remembered on the layer.
    """
    names = getattr(layer, "_tfprec_weight_attrs", None)
    if names is None:
        names = weight_attrs(layer)
        object.__setattr__(layer, "_tfprec_weight_attrs", names)
    return names


class FixedPointQuantizeConfig(ConfigValue, _QuantizeConfig):
    """Quantizes a weight layer's kernel and bias with one signed format.

    Args:
      weight_bits: B_W, bits including the sign bit (2..16).
      weight_range: R_W, a power of two; weights on [-R_W, R_W), step
        R_W * 2^(1-B_W) (units of the weights).
      channel_ranges: None, or R_c per output channel (powers of two, at
        most R_W): channel c's kernel slice and bias entry on [-R_c, R_c)
        with step R_c * 2^(1-B_W).

    The layer's activation function and output are not quantized (the next
    weight layer's :class:`InputQuantizer` quantizes what it consumes).
    """

    def __init__(self, weight_bits: int, weight_range: float, channel_ranges=None):
        _check_format(weight_bits, weight_range, True, "weight format")
        self.weight_bits = int(weight_bits)
        self.weight_range = float(weight_range)
        self.channel_ranges = self.quantizer_for(channel_ranges).channel_ranges

    def quantizer_for(self, channel_ranges) -> FixedPointQuantizer:
        return FixedPointQuantizer(self.weight_bits, self.weight_range, True,
                                   channel_ranges)

    @property
    def quantizer(self) -> FixedPointQuantizer:
        return self.quantizer_for(self.channel_ranges)

    def get_weights_and_quantizers(self, layer):
        return [(getattr(layer, a), self.quantizer) for a in _weight_attrs(layer)]

    def get_activations_and_quantizers(self, layer):
        return []

    def set_quantize_weights(self, layer, quantize_weights):
        attrs = _weight_attrs(layer)
        if len(attrs) != len(quantize_weights):
            raise UnsupportedModelError(
                f"layer {layer.name!r}: expected {len(attrs)} quantized "
                f"weights, got {len(quantize_weights)}")
        for a, w in zip(attrs, quantize_weights):
            setattr(layer, a, w)

    def set_quantize_activations(self, layer, quantize_activations):
        pass

    def get_output_quantizers(self, layer):
        return []

    def get_config(self) -> dict:
        cfg = {"weight_bits": self.weight_bits, "weight_range": self.weight_range}
        if self.channel_ranges is not None:
            cfg["channel_ranges"] = list(self.channel_ranges)
        return cfg


class InputQuantizeConfig(ConfigValue, _QuantizeConfig):
    """Quantizes the output of an :class:`InputQuantizer` layer.

    Args:
      act_bits: B_A in bits (sign bit included when ``act_signed``), 2..16.
      act_range: R_A, a power of two; [-R_A, R_A) if signed else [0, 2 R_A);
        step R_A * 2^(1-B_A) (units of the activation).
      act_signed: whether the format is signed.
    """

    def __init__(self, act_bits: int, act_range: float, act_signed: bool):
        _check_format(act_bits, act_range, act_signed, "activation format")
        self.act_bits = int(act_bits)
        self.act_range = float(act_range)
        self.act_signed = bool(act_signed)

    @property
    def quantizer(self) -> FixedPointQuantizer:
        return FixedPointQuantizer(self.act_bits, self.act_range, self.act_signed)

    def get_weights_and_quantizers(self, layer):
        return []

    def get_activations_and_quantizers(self, layer):
        return []

    def set_quantize_weights(self, layer, quantize_weights):
        pass

    def set_quantize_activations(self, layer, quantize_activations):
        pass

    def get_output_quantizers(self, layer):
        return [self.quantizer]

    def get_config(self) -> dict:
        return {"act_bits": self.act_bits, "act_range": self.act_range,
                "act_signed": self.act_signed}


@keras.utils.register_keras_serializable(package="tfprec")
class InputQuantizer(keras.layers.Layer):
    """Marks the input of weight layer ``target``; the identity in float.

    :func:`tfprec.quantization.apply.quantize_model` inserts one in front of every weight
    layer and annotates it with an :class:`InputQuantizeConfig`, so in the
    fake-quant model its ``QuantizeWrapperV2`` rounds the weight layer's
    input to the plan's B_A-bit format.

    Args:
      target: name of the weight layer whose input this is.
    """

    def __init__(self, target: str = "", **kwargs):
        super().__init__(**kwargs)
        self.target = str(target)
        self.supports_masking = True

    def call(self, inputs):
        return tf.identity(inputs)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "target": self.target}


@keras.utils.register_keras_serializable(package="tfprec")
class ChannelAffine(keras.layers.Layer):
    """y = x * kernel + bias over the last (channel) axis.

    :func:`tfprec.quantization.apply.quantize_model` puts one in place of
    every BatchNormalization that follows no weight layer, with kernel =
    gamma / sqrt(moving_var + eps) and bias = beta - moving_mean * kernel
    (the inference map of the BN), so that the plan's weight format
    quantizes exactly the scale and offset that tfprec analysed.
    """

    def build(self, input_shape):
        n = int(input_shape[-1])
        self.kernel = self.add_weight("kernel", (n,), initializer="ones")
        self.bias = self.add_weight("bias", (n,), initializer="zeros")
        super().build(input_shape)

    def call(self, inputs):
        return inputs * self.kernel + self.bias

    def compute_output_shape(self, input_shape):
        return input_shape


CUSTOM_OBJECTS = {
    "ChannelAffine": ChannelAffine,
    "tfprec>ChannelAffine": ChannelAffine,
    "FixedPointQuantizer": FixedPointQuantizer,
    "FixedPointQuantizeConfig": FixedPointQuantizeConfig,
    "InputQuantizeConfig": InputQuantizeConfig,
    "InputQuantizer": InputQuantizer,
    "tfprec>InputQuantizer": InputQuantizer,
}


def quantize_scope(*extra):
    """Context manager with every tfprec and TFMOT custom object.

    Under it, ``keras.models.load_model`` (and ``model_from_config``,
    ``clone_model``) can rebuild a fake-quant model made by
    :func:`tfprec.quantization.apply.quantize_model`::

        with tfprec.quantization.configs.quantize_scope():
            qmodel = keras.models.load_model(path)

    Args:
      *extra: more ``{name: class}`` dicts to include (e.g. the user's own
        custom layers).
    """
    return tfmot.quantization.keras.quantize_scope(dict(CUSTOM_OBJECTS), *extra)
