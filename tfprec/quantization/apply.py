"""Builds the fake-quant (quantization-aware) model of a precision plan.

:func:`quantize_model` turns a trained float classifier and a
:class:`~tfprec.planning.plan.PrecisionPlan` into a tf_keras model that computes
exactly the fixed-point network of METHOD.md section 1:

1. the plan is checked against the model (layer names, classes, geometry;
   every bit-width in 2..16);
2. a clone of the model is rebuilt with every inference BatchNormalization
   folded into the preceding weight layer (the plan's weight ranges are for
   the folded weights), the user's model is only read;
3. an :class:`~tfprec.quantization.configs.InputQuantizer` is inserted in
   front of every weight layer; it and the weight layer are wrapped in
   TFMOT ``QuantizeWrapperV2`` (public API) with the plan's input format
   (B_A, R_A, signed) and weight format (B_W, R_W, for kernel and bias);
   no other layer is quantized.  Every layer is built with the dtype of the
   layer it replaces, so ``keras.backend.floatx()`` is neither read nor
   changed: float64 models stay float64.

The weight layers of the fake-quant model carry no weight regularizers,
constraints or custom initializers (they were stated for the unfolded
weights, and custom ones would make the model unloadable); add them
yourself before fine-tuning if needed.

A final softmax is kept; when it is the activation of the last weight layer
it becomes a separate ``Activation("softmax")`` layer named
``<layer>_softmax`` so that :func:`logits_model` can expose the pre-softmax
logits.

The result trains with ``compile``/``fit`` (straight-through gradients, the
float "shadow" kernel and bias are the trainable variables) and saves with
``model.save`` (HDF5 ``.h5`` or Keras ``.keras``); load it under
:func:`tfprec.quantization.configs.quantize_scope`.
"""
from __future__ import annotations

import warnings

import numpy as np

from tfprec import compat
from tfprec._tf import keras  # selects Keras 2 before TFMOT is imported
from tfprec.quantization.configs import (ChannelAffine, FixedPointQuantizeConfig,
                                         InputQuantizeConfig, InputQuantizer)
from tfprec.errors import UnsupportedModelError
from tfprec.quantization.simulate import check_plan_bits, checked_plan  # noqa: F401
from tfprec.statistics.graph import parse_model
from tfprec.statistics.layers import NodeCall, copy_weights, weight_attrs

import tensorflow_model_optimization as tfmot  # noqa: E402

L = keras.layers

INPUT_SUFFIX = "_input_quant"
SOFTMAX_SUFFIX = "_softmax"
PREFIX = "quant_"


def _flat(x):
    if isinstance(x, (list, tuple)):
        return [t for e in x for t in _flat(e)]
    return [x]


def _activation_name(layer) -> str:
    fn = getattr(layer, "activation", None)
    if fn is None:
        return "linear"
    return getattr(fn, "__name__", str(fn))


def _wrap(layer, config):
    """TFMOT ``QuantizeWrapperV2`` of ``layer`` computing in ``layer``'s own
    dtype (TFMOT would otherwise give the wrapper ``keras.backend.floatx()``
    and cast a float64 layer's inputs to float32)."""
    return tfmot.quantization.keras.QuantizeWrapperV2(
        layer, config, name_prefix=PREFIX, dtype=layer.dtype)


def _check_graph_model(model, what: str) -> None:
    """UnsupportedModelError naming ``what`` unless ``model`` is a built
    one-output tf_keras Sequential or functional model."""
    if not isinstance(model, keras.Model):
        raise UnsupportedModelError(
            f"{what} must be a tf_keras Model, got {type(model).__name__}. tfprec "
            "needs tf_keras (Keras 2) models; see the README.")
    if not compat.is_graph_network(model) or len(model.outputs) != 1:
        raise UnsupportedModelError(
            f"{what} '{model.name}' of class {type(model).__name__} is not a "
            "one-output Sequential or functional model (subclassed or unbuilt "
            "models are not supported).")


def _unmixed(layer, cfg: dict) -> dict:
    """``cfg`` for a copy of ``layer`` that computes in its variable dtype: a
    mixed-precision layer (policy ``mixed_float16`` / ``mixed_bfloat16``)
    computes in float32 in tfprec's models, as the analysis does: a 16-bit
    fixed-point grid is not exact in float16."""
    if getattr(layer, "compute_dtype", None) != getattr(layer, "variable_dtype", None):
        cfg["dtype"] = layer.variable_dtype
    return cfg


def _clean_config(layer, use_bias) -> dict:
    """``layer``'s config for a copy that gets tfprec's weights: no
    regularizers or constraints (stated for the unfolded weights; custom ones
    would make the clone unloadable), plain initializers."""
    with warnings.catch_warnings():
        # custom / lambda constraints warn when serialized; they are dropped
        warnings.simplefilter("ignore", UserWarning)
        cfg = layer.get_config()
    _unmixed(layer, cfg)
    if "use_bias" in cfg:
        cfg["use_bias"] = use_bias
    for key in list(cfg):
        if key.endswith(("_regularizer", "_constraint")):
            cfg[key] = None
        elif key.endswith("_initializer"):
            cfg[key] = "zeros"
    return cfg


def _set_op_weights(new, op) -> None:
    """Assigns weight op ``op``'s (folded) kernel and bias to layer ``new``."""
    vals = [op.attrs["kernel"]] + ([] if op.attrs["bias"] is None else [op.attrs["bias"]])
    attrs = weight_attrs(new)
    if len(attrs) != len(vals):
        raise UnsupportedModelError(
            f"layer '{op.name}': its copy has {len(attrs)} weight tensors, tfprec "
            f"analysed {len(vals)}")
    dt = np.dtype(new.dtype)
    for a, v in zip(attrs, vals):
        getattr(new, a).assign(v.astype(dt))


def _weight_layer_copy(layer, op, x, split: bool):
    """A built copy of weight op ``op``'s layer (or its part) with the folded
    weights: the same class, a ChannelAffine for a standalone
    BatchNormalization, a DepthwiseConv2D or 1x1 Conv2D for the two parts
    of a SeparableConv2D."""
    part = op.attrs.get("part")
    if op.kind == "affine":
        new = ChannelAffine(name=op.name, dtype=layer.dtype)
    elif part == "depthwise":
        new = L.DepthwiseConv2D(layer.kernel_size, strides=layer.strides,
                                padding=layer.padding,
                                depth_multiplier=layer.depth_multiplier,
                                use_bias=False, name=op.name, dtype=layer.dtype)
    elif part == "pointwise":
        new = L.Conv2D(layer.filters, 1, use_bias=op.attrs["bias"] is not None,
                       activation="linear" if split else layer.activation,
                       name=op.name, dtype=layer.dtype)
    else:
        cfg = _clean_config(layer, op.attrs["bias"] is not None)
        if split:
            cfg["activation"] = "linear"
        try:
            new = type(layer).from_config(cfg)
        except Exception as e:  # noqa: BLE001 - reported with the layer's name
            raise UnsupportedModelError(
                f"layer '{layer.name}' of class {type(layer).__name__} could not "
                f"be rebuilt from its get_config() ({e})") from e
    # built and given the folded weights before any TFMOT wrapper takes its
    # variables over
    new.build(x.shape)
    _set_op_weights(new, op)
    return new


def _rebuild(model, plan=None, split_softmax: bool = True, export=None):
    """Functional clone of ``model`` with BatchNormalization folded.

    With ``plan``, weight layers and new InputQuantizer layers are wrapped in
    TFMOT ``QuantizeWrapperV2`` with the plan's configs, each in its layer's
    dtype.  Weightless layers are copied from their config and called with
    the arguments of their node (constants such as ``x + 3.0`` included).

    ``export`` (the export backends' float network, ``plan`` None): an
    object whose ``before(op, x)`` returns the tensor weight op ``op`` reads
    in place of ``x`` (an explicit clip / rounding layer) and whose
    ``weights(op, layer)`` sets the copy's weights (snapped to the plan's
    grid); nothing is wrapped.
    """
    graph = parse_model(model)   # raises UnsupportedModelError
    by_layer: dict = {}
    for op in graph.weight_ops:
        base = op.name[:-len("_depthwise")] if op.attrs.get("part") == "depthwise" else op.name
        by_layer.setdefault(base, []).append(op)
    folded_bn = {op.attrs["folded_bn"] for op in graph.weight_ops
                 if "folded_bn" in op.attrs}
    nodes = compat.nodes_in_order(model)   # nested models expanded
    taken = {n.layer.name for n in nodes}
    taken.update(compat.producing_layer(t).name for t in model.inputs)

    def unique(name: str) -> str:
        base, i = name, 1
        while name in taken:
            name = f"{base}_{i}"
            i += 1
        taken.add(name)
        return name

    tmap = {}
    new_ins = []        # one per input of the model (several: same order, names)
    for in_t in model.inputs:
        in_layer = compat.producing_layer(in_t)
        new_ins.append(keras.Input(batch_shape=tuple(in_t.shape), dtype=in_t.dtype,
                                   name=in_layer.name))
        tmap[id(in_t)] = new_ins[-1]
    out_t = model.outputs[0]
    for node in nodes:
        if node.is_input:
            continue
        layer = node.layer
        call = NodeCall(node, id)
        ins = [tmap[i] for i in call.input_ids]
        outs = _flat(node.outputs)
        if layer.name in folded_bn:
            tmap[id(outs[0])] = ins[0]
            continue
        if layer.name in by_layer:
            x = ins[0]
            split = (split_softmax and _activation_name(layer) == "softmax"
                     and outs[0] is out_t)
            for op in by_layer[layer.name]:
                new = _weight_layer_copy(layer, op, x, split)
                call_new = new
                if export is not None:
                    x = export.before(op, x)
                    export.weights(op, new)
                elif plan is not None:
                    lp = plan.layer(op.name)
                    if lp.act_bits is not None:  # None: an Embedding's ids, kept
                        iq = InputQuantizer(target=op.name,
                                            name=unique(op.name + INPUT_SUFFIX),
                                            dtype=layer.dtype)
                        x = _wrap(iq, InputQuantizeConfig(
                            int(lp.act_bits), float(lp.act_range),
                            bool(lp.act_signed)))(x)
                    call_new = _wrap(new, FixedPointQuantizeConfig(
                        int(lp.weight_bits), float(lp.weight_range),
                        getattr(lp, "weight_channel_ranges", None)))
                x = call_new(x)
            if split:
                x = L.Activation("softmax", name=unique(layer.name + SOFTMAX_SUFFIX),
                                 dtype=layer.dtype)(x)
            y = x
        else:
            try:
                new = type(layer).from_config(_unmixed(layer, layer.get_config()))
            except Exception as e:  # noqa: BLE001 - reported with the layer's name
                raise UnsupportedModelError(
                    f"layer '{layer.name}' of class {type(layer).__name__} could "
                    f"not be copied from its get_config() ({e})") from e
            args, kwargs = call.args(ins)
            y = new(*args, **kwargs)
            if layer.weights:      # state its config does not hold (Normalization.adapt)
                copy_weights(layer, new)
        tmap[id(outs[0])] = y
    return keras.Model(new_ins if len(new_ins) > 1 else new_ins[0], tmap[id(out_t)],
                       name=model.name)


def fold_batchnorm(model, split_softmax: bool = False) -> keras.Model:
    """Float functional clone of ``model`` with BatchNormalization folded.

    Each BatchNormalization that follows a weight layer is merged into that
    layer's kernel and bias (folded in float64, stored in the layer dtype):
    W' = W * gamma / sqrt(var + eps), b' = (b - mean) * gamma /
    sqrt(var + eps) + beta.  Outputs equal the model's in inference mode up
    to float rounding.  ``model`` is not modified.

    Args:
      model: a tf_keras Sequential or functional classifier supported by
        :func:`tfprec.statistics.graph.parse_model`.
      split_softmax: make a softmax activation of the last weight layer a
        separate ``Activation`` layer (``<layer>_softmax``).

    Raises:
      UnsupportedModelError: the model cannot be analyzed.
    """
    return _rebuild(model, None, split_softmax)


def quantize_model(model, plan, *, allow_fingerprint_mismatch: bool = False) -> keras.Model:
    """Fake-quant tf_keras model realizing ``plan`` on ``model``.

    Every weight layer's kernel and bias (BN folded) are rounded to B_W-bit
    signed fixed point on [-R_W, R_W) (step R_W 2^(1-B_W)), and its input
    activation to B_A bits on [-R_A, R_A) or [0, 2 R_A) (step R_A 2^(1-B_A)),
    with round-half-up and saturation (METHOD.md section 1); everything else
    runs in float.  Gradients are straight-through, so the returned model can
    be fine-tuned with ``compile``/``fit``.

    Args:
      model: the trained float tf_keras classifier (Sequential or
        functional).  It is not modified: weights, layers and compile state
        are left as they are.
      plan: a :class:`~tfprec.planning.plan.PrecisionPlan` made for this model.
      allow_fingerprint_mismatch: apply a plan made from another model's
        weights (same layers and geometry) on purpose, e.g. to a fine-tuned
        copy; see :meth:`~tfprec.planning.plan.PrecisionPlan.validate_for`.

    The fake-quant model computes in the float type of the model's input
    (float32 models stay float32, float64 models float64).

    Returns:
      A new functional ``keras.Model`` (TFMOT ``QuantizeWrapperV2`` layers
      named ``quant_<layer>`` for the weight layers and
      ``quant_<layer>_input_quant`` for their input quantizers; see
      :func:`weight_layer` and :func:`input_quantizer_layer`).  A final softmax
      is kept.  Use :func:`logits_model` for the pre-softmax logits.

    Raises:
      PlanError: ``plan`` is not a plan or does not match the model (names,
        order, classes or geometry, or weights when the plan has a
        fingerprint and ``allow_fingerprint_mismatch`` is False), or a
        bit-width is not an int in 2..16 (NaN, 4.5, True), or a range is not
        a power of two.  The message names the layer (the check is
        :func:`tfprec.quantization.simulate.checked_plan`).
      UnsupportedModelError: the model cannot be analyzed (None, a Keras 3
        or subclassed model, an unsupported layer).
    """
    plan = checked_plan(model, plan,
                        allow_fingerprint_mismatch=allow_fingerprint_mismatch)
    return _rebuild(model, plan, split_softmax=True)


def logits_model(model) -> keras.Model:
    """Model sharing ``model``'s layers that outputs the pre-softmax logits.

    If the output is produced by an ``Activation("softmax")`` or ``Softmax``
    layer, returns a model up to that layer's input; otherwise returns
    ``model`` itself (its output already is the logits).  Works for float
    models and for :func:`quantize_model` results.

    Raises:
      UnsupportedModelError: ``model`` is not a one-output tf_keras
        Sequential or functional model (None, a Keras 3 or subclassed
        model), or its output is the softmax activation of a weight layer
        (use :func:`fold_batchnorm` with ``split_softmax=True`` first).
    """
    _check_graph_model(model, "model")
    out_layer = compat.producing_layer(model.outputs[0])
    inner = getattr(out_layer, "layer", out_layer)  # unwrap a TFMOT wrapper
    if isinstance(inner, L.Softmax) or (
            isinstance(inner, L.Activation) and _activation_name(inner) == "softmax"):
        # the node of *this* model: TFMOT reuses unwrapped layer objects
        node = compat.producing_node(model.outputs[0])
        return keras.Model(model.inputs, _flat(node.keras_inputs)[0],
                           name=model.name + "_logits")
    if _activation_name(inner) == "softmax":
        raise UnsupportedModelError(
            f"the output of model '{model.name}' is the softmax activation of "
            f"layer '{inner.name}'; its logits are not a tensor of the model. "
            "Use tfprec.quantization.apply.fold_batchnorm(model, split_softmax=True).")
    return model


def binary_threshold(model):
    """For a one-output-unit (binary) classifier, the decision threshold on
    its output: 0.5 when the output is a sigmoid probability (the final
    activation of the output layer), else 0.0 (a logit); None when the model
    outputs M >= 2 class scores (decision: argmax)."""
    if int(model.outputs[0].shape[-1]) != 1:
        return None
    out_layer = compat.output_layer(model)   # through a nested head model
    inner = getattr(out_layer, "layer", out_layer)  # unwrap a TFMOT wrapper
    return 0.5 if _activation_name(inner) == "sigmoid" else 0.0


def input_quantizer_layer(qmodel, name: str):
    """The ``QuantizeWrapperV2`` that quantizes weight layer ``name``'s input.

    Raises:
      UnsupportedModelError: ``qmodel`` is not a tf_keras model, or has no
        input quantizer for a weight layer ``name`` (the message names both).
    """
    _check_graph_model(qmodel, "qmodel")
    for layer in qmodel.layers:
        inner = getattr(layer, "layer", None)
        if isinstance(inner, InputQuantizer) and inner.target == name:
            return layer
    raise UnsupportedModelError(
        f"qmodel '{qmodel.name}' has no input quantizer for a weight layer "
        f"named {name!r}; is it a quantize_model result?")


def weight_layer(qmodel, name: str):
    """The ``QuantizeWrapperV2`` of weight layer ``name`` in a fake-quant model.

    Raises:
      UnsupportedModelError: ``qmodel`` is not a tf_keras model or has no
        wrapped weight layer ``name`` (the message names both).
    """
    _check_graph_model(qmodel, "qmodel")
    names = [l.name for l in qmodel.layers]
    if not isinstance(name, str) or PREFIX + name not in names:
        known = [n[len(PREFIX):] for n in names
                 if n.startswith(PREFIX) and not n.endswith(INPUT_SUFFIX)]
        raise UnsupportedModelError(
            f"qmodel '{qmodel.name}' has no quantized weight layer named "
            f"{name!r}; its quantized weight layers are {known}")
    return qmodel.get_layer(PREFIX + name)


def shadow_weights(qmodel, name: str) -> list:
    """The float "shadow" [kernel, bias] variables of weight layer ``name``.

    These are what fine-tuning updates (BN folded, in the layer's units);
    the layer computes with their quantized values, see
    :func:`quantized_weights`.
    """
    return [v for v, _ in compat.wrapper_weight_vars(weight_layer(qmodel, name))]


def quantized_weights(qmodel, name: str) -> list:
    """Current quantized [kernel, bias] of weight layer ``name`` (numpy).

    Rounds the wrapper's float shadow variables with its quantizers; values
    are multiples of the layer's step R_W 2^(1-B_W).
    """
    wrapper = weight_layer(qmodel, name)
    return [np.asarray(q(v, False, {})) for v, q in compat.wrapper_weight_vars(wrapper)]
