"""Reads a tf_keras model into a small inference graph that tfprec analyzes.

The graph lists, in topological order, one :class:`Op` per Keras layer call.
Weight layers (Dense, Conv2D, DepthwiseConv2D) carry their weights with any
following inference-time BatchNormalization folded in; a fused activation is
split off into an ``act`` op of its own; a final softmax is dropped so the
graph ends at the logits.  Models nested as layers are read as their own
layers (:func:`tfprec.compat.nodes_in_order`).  The user's model is only read.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import numpy as np

from tfprec import compat, packing
from tfprec._tf import keras
from tfprec.errors import UnsupportedModelError
from tfprec.statistics import layers as layer_calls

L = keras.layers

WEIGHT_KINDS = ("dense", "conv2d", "depthwise", "generic", "affine", "embedding")
#: Weight kinds whose input is not a quantized activation: an ``embedding``
#: op (a Keras Embedding) reads integer token ids, which have no fixed-point
#: format; its only quantized tensor is its table (weights).
NO_ACT_KINDS = ("embedding",)
#: Weight kinds with a fast registered rule of their own (the rest of
#: WEIGHT_KINDS: ``generic`` runs the layer itself, ``affine`` is a
#: BatchNormalization that follows no weight layer).
REGISTERED_KINDS = ("dense", "conv2d", "depthwise")

SUPPORTED_LAYERS = (
    "any layer of a Sequential or functional tf_keras model with one or "
    "several inputs and one class-score output, each weight layer called once, with at most "
    "two trainable weight tensors per layer (SeparableConv2D: two ops)"
)


@dataclasses.dataclass
class Op:
    """One node of the inference graph.

    Attributes:
      name: name of the Keras layer this op comes from (weight ops keep the
        layer's name; split-off activations get ``<layer>/act``).
      kind: one of ``dense conv2d depthwise embedding generic affine act
        maxpool avgpool gap reshape identity add concat layer``.
      inputs: ids of the input tensors.
      output: id of the output tensor.
      attrs: kind-specific attributes (kernel, bias, strides, ...).
    """

    name: str
    kind: str
    inputs: list
    output: str
    attrs: dict
    layer_class: str = ""


@dataclasses.dataclass
class Graph:
    """A parsed model: ops in topological order, input and logits tensor ids.

    ``shapes`` maps each tensor id to its per-example shape (no batch dim);
    ``bounds`` maps a tensor id to a known (low, high) value range, where
    either end may be None (unknown).
    """

    ops: list
    input_id: str
    output_id: str
    shapes: dict
    bounds: dict
    num_classes: int
    dropped_softmax: bool

    @property
    def weight_ops(self) -> list:
        return [op for op in self.ops if op.kind in WEIGHT_KINDS]

    def producer(self, tensor_id: str) -> Optional[Op]:
        for op in self.ops:
            if op.output == tensor_id:
                return op
        return None


def _tid(t) -> str:
    return str(id(t))


def _activation_name(fn) -> str:
    if fn is None:
        return "linear"
    name = getattr(fn, "__name__", None)
    if name is None and isinstance(fn, str):
        name = fn
    return name or repr(fn)


def _act_attrs(name: str, layer) -> Optional[dict]:
    """Maps a Keras activation name to act-op attrs; None if unsupported."""
    if name == "linear":
        return {"fn": "linear", "low": None, "high": None}
    if name == "relu":
        return {"fn": "relu", "low": 0.0, "high": None}
    if name == "relu6":
        return {"fn": "relu", "low": 0.0, "high": 6.0}
    return None


def _unsupported(layer, why: str = "") -> UnsupportedModelError:
    msg = (f"layer '{layer.name}' of class {type(layer).__name__} is not "
           f"supported by tfprec{': ' + why if why else ''}. Supported: "
           f"{SUPPORTED_LAYERS}; Sequential and functional tf_keras models.")
    return UnsupportedModelError(msg)


def _pair(v):
    if isinstance(v, int):
        return (v, v)
    return tuple(int(x) for x in v)


def _channels_last(layer) -> bool:
    return getattr(layer, "data_format", "channels_last") in (None, "channels_last")


def _is_weight_layer(layer) -> bool:
    """A BatchNormalization, or a layer with weights that train (frozen layers,
    ``trainable=False``, count too: their weights are quantized the same)."""
    return isinstance(layer, L.BatchNormalization) or bool(
        layer_calls.quantized_weights(layer))


def _trainable_arrays(layer) -> tuple:
    """(attribute names, float64 arrays) of ``layer``'s weights to quantize."""
    ws = layer_calls.quantized_weights(layer)
    if not 1 <= len(ws) <= 2:
        raise _unsupported(layer, f"{len(ws)} weight tensors (tfprec quantizes one or "
                           f"two per layer: a kernel and a bias); {layer_calls.split_hint(layer)}")
    names = layer_calls.weight_attrs(layer, ws)
    return names, [np.asarray(w.numpy(), np.float64) for w in ws]


#: False makes every weight layer take the generic path (benchmarks and tests
#: compare it with the registered rules; see :func:`registered_rules`).
_USE_REGISTERED = [True]


class registered_rules:
    """Context manager: ``with registered_rules(False): parse_model(m)`` parses
    every weight layer as a ``generic`` op (same gains, slower pass)."""

    def __init__(self, enabled: bool):
        self.enabled = bool(enabled)

    def __enter__(self):
        self.saved = _USE_REGISTERED[0]
        _USE_REGISTERED[0] = self.enabled
        return self

    def __exit__(self, *exc):
        _USE_REGISTERED[0] = self.saved
        return False


def _registered_kind(layer, in_shape) -> Optional[str]:
    cls = type(layer)
    if not _USE_REGISTERED[0]:
        return None
    if cls is L.Dense:
        return "dense" if len(in_shape) == 1 else None
    if cls not in (L.Conv2D, L.DepthwiseConv2D) or not _channels_last(layer):
        return None
    if tuple(layer.dilation_rate) != (1, 1) or layer.padding.upper() not in ("VALID", "SAME"):
        return None
    if cls is L.Conv2D:
        return "conv2d" if getattr(layer, "groups", 1) == 1 else None
    return "depthwise"


def _weight_ops(layer, inp: str, out: str, shapes: dict) -> list:
    """The weight op(s) of one weight layer call: registered, generic, or
    for SeparableConv2D a depthwise and a pointwise op."""
    cls = type(layer)
    in_shape = shapes[inp]
    if (cls is L.SeparableConv2D and _channels_last(layer)
            and tuple(layer.dilation_rate) == (1, 1)):
        dw_k = np.asarray(layer.depthwise_kernel.numpy(), np.float64)
        pw_k = np.asarray(layer.pointwise_kernel.numpy(), np.float64)
        bias = (np.asarray(layer.bias.numpy(), np.float64) if layer.use_bias else None)
        _check_finite_weights(layer, kernel=dw_k)
        _check_finite_weights(layer, kernel=pw_k, bias=bias)
        mid = out + "/depthwise"
        shapes[mid] = tuple(shapes[out][:-1]) + (int(dw_k.shape[2] * dw_k.shape[3]),)
        pad = layer.padding.upper()
        dw = Op(layer.name + "_depthwise", "depthwise", [inp], mid,
                {"kernel": dw_k, "bias": None, "strides": _pair(layer.strides),
                 "padding": pad, "ksize": tuple(dw_k.shape[:2]), "part": "depthwise"},
                cls.__name__)
        pw = Op(layer.name, "conv2d", [mid], out,
                {"kernel": pw_k, "bias": bias, "strides": (1, 1), "padding": "VALID",
                 "ksize": (1, 1), "part": "pointwise"}, cls.__name__)
        return [dw, pw]
    names, arrays = _trainable_arrays(layer)
    kernel = arrays[0]
    bias = arrays[1] if len(arrays) == 2 else None
    _check_finite_weights(layer, kernel=kernel, bias=bias)
    attrs: dict[str, Any] = {"kernel": kernel, "bias": bias}
    kind = _registered_kind(layer, in_shape)
    if kind is not None:
        if kind != "dense":
            attrs.update(strides=_pair(layer.strides), padding=layer.padding.upper(),
                         ksize=tuple(kernel.shape[:2]))
        return [Op(layer.name, kind, [inp], out, attrs, cls.__name__)]
    overrides = {}
    if getattr(layer, "activation", None) is not None:
        overrides["activation"] = "linear"
    attrs.update(layer=layer, input_shape=(None, *in_shape), overrides=overrides,
                 weight_attrs=names,
                 macs=layer_calls.macs_of(layer, kernel, in_shape, shapes[out]),
                 fold=("depthwise" if isinstance(layer, L.DepthwiseConv2D) and _channels_last(layer)
                       else "last" if isinstance(layer, (L.Dense, L.Conv1D, L.Conv2D))
                       and not isinstance(layer, (L.Conv2DTranspose, L.SeparableConv2D))
                       and _channels_last(layer) else None))
    if _USE_REGISTERED[0]:      # a closed-form weight-norm rule, kind unchanged
        from tfprec.statistics import generic_rules
        rule = generic_rules.rule_for(layer, in_shape, names)
        if rule is not None:
            attrs.update(rule=rule[0], rule_params=rule[1])
    return [Op(layer.name, "generic", [inp], out, attrs, cls.__name__)]


def _embedding_op(layer, model, ins: list, out: str) -> Op:
    """The ``embedding`` op of a Keras Embedding fed directly by a model input.

    Its table [V, D] is the op's ``kernel`` (one weight tensor, no bias);
    its input holds integer token ids in [0, V), which are not quantized
    (the op has no activation tensor: see :data:`NO_ACT_KINDS` and
    :mod:`tfprec.statistics.embedding`).
    """
    if getattr(layer, "mask_zero", False):
        raise _unsupported(layer, "mask_zero=True (the mask it passes to later "
                           "layers is not analysed); use mask_zero=False")
    inputs = {_tid(t) for t in model.inputs}
    if len(ins) != 1 or ins[0] not in inputs:
        raise _unsupported(layer, "an Embedding must be fed directly by a model "
                           "input (integer token ids); tfprec cannot follow ids "
                           "computed by other layers")
    names, arrays = _trainable_arrays(layer)
    if len(arrays) != 1:     # pragma: no cover - an Embedding has one weight
        raise _unsupported(layer, f"{len(arrays)} weight tensors")
    _check_finite_weights(layer, table=arrays[0])
    return Op(layer.name, "embedding", [ins[0]], out,
              {"kernel": arrays[0], "bias": None, "input_dim": int(layer.input_dim)},
              type(layer).__name__)


def _act_op(layer, name: str, inp: str, out: str, act: str, fn, final: bool,
            shapes: dict) -> Op:
    """The op of an activation (fused in a weight layer, or an Activation
    layer): relu / clipping ``act`` ops, a final softmax, else a generic
    ``layer`` op calling the activation function."""
    cls = type(layer).__name__
    attrs = _act_attrs(act, layer)
    if attrs is not None:
        return Op(name, "act", [inp], out, attrs, cls)
    if act == "softmax" and final:
        return Op(name, "softmax", [inp], out, {}, cls)
    if act == "sigmoid" and final and tuple(shapes[out]) == (1,):
        # a binary classifier's probability: dropped, its logit z is kept
        return Op(name, "softmax", [inp], out, {"sigmoid": True}, cls)
    return Op(name, "layer", [inp], out, {"call": layer_calls.ActivationCall(fn),
              "bounds": layer_calls.act_bounds(act), "act": act, "layer_name": layer.name}, cls)


def _layer_op(layer, node, call, shapes: dict) -> Op:
    """A generic ``layer`` op: the weightless layer runs as itself."""
    if isinstance(layer, L.Concatenate) and layer.axis == 0:
        raise _unsupported(layer, "concatenation along the batch axis")
    out = _tid(_flat(node.outputs)[0])
    in_shapes = [(None, *shapes[i]) for i in call.input_ids]
    return Op(layer.name, "layer", list(call.input_ids), out,
              {"call": layer_calls.LayerCall(layer, call, in_shapes),
               "bounds": (None, None)}, type(layer).__name__)


def _check_finite_weights(layer, **weights) -> None:
    """UnsupportedModelError naming ``layer`` if a weight is NaN or Inf."""
    for what, w in weights.items():
        if w is not None and not np.all(np.isfinite(w)):
            bad = int(np.size(w) - np.count_nonzero(np.isfinite(w)))
            raise UnsupportedModelError(
                f"layer '{layer.name}' of class {type(layer).__name__} has "
                f"{bad} non-finite (NaN or Inf) value(s) in its {what}: the model "
                "cannot be analyzed (did training diverge?).")


def _check_softmax_axis(layer, rank: int) -> None:
    """A Softmax layer may be dropped only if it normalizes the last (class)
    axis of its rank-``rank`` input (batch axis included)."""
    axis = layer.axis
    if isinstance(axis, (list, tuple)):
        if len(axis) != 1:
            raise _unsupported(layer, f"softmax over axes {list(axis)}; only a "
                               "softmax over the last (class) axis can be dropped")
        axis = axis[0]
    if int(axis) % rank != rank - 1:
        raise _unsupported(layer, f"softmax over axis {axis} of a rank-{rank} "
                           "tensor; only a softmax over the last (class) axis "
                           "can be dropped")


def _check_bn_axis(bn) -> None:
    """UnsupportedModelError unless ``bn`` normalizes the last (channel) axis."""
    axis = bn.axis if isinstance(bn.axis, int) else list(bn.axis)
    rank = len(bn.input_shape)
    if isinstance(axis, list):
        if len(axis) != 1:
            raise _unsupported(bn, f"axis={bn.axis}")
        axis = axis[0]
    if axis % rank != rank - 1:
        raise _unsupported(bn, f"axis={bn.axis} (only the channel axis, the last)")


def _fold_bn(op: Op, bn) -> None:
    """Folds inference BatchNormalization ``bn`` into weight op ``op``."""
    _check_bn_axis(bn)
    scale, offset = layer_calls.bn_affine(bn)
    k = op.attrs["kernel"]
    if op.kind == "depthwise" or op.attrs.get("fold") == "depthwise":
        # kernel [kh, kw, cin, m]; out channel c*m+j
        kh, kw, cin, m = k.shape
        k = k * scale.reshape(cin, m)[None, None]
    else:
        k = k * scale
    if op.attrs["bias"] is None:
        b = np.zeros(scale.shape)
        if op.kind == "generic":        # the private copy gets a bias too
            op.attrs["overrides"] = dict(op.attrs["overrides"], use_bias=True)
            op.attrs["weight_attrs"] = [op.attrs["weight_attrs"][0], "bias"]
    else:
        b = op.attrs["bias"]
    op.attrs["kernel"] = k
    op.attrs["bias"] = b * scale + offset
    _check_finite_weights(bn, **{"folded kernel and bias (moving statistics "
                                 "and scale)": np.append(k, op.attrs["bias"])})
    op.attrs["folded_bn"] = bn.name


def parse_model(model) -> Graph:
    """Parses a Sequential or functional tf_keras classifier into a Graph.

    A functional model with several inputs gets one packed input
    (``input_id`` :data:`tfprec.packing.PACKED_ID`, shape a
    :class:`tfprec.packing.PackedShape`) and, first, one ``layer`` op per
    input (named as the input) that takes its part out of it.

    Raises:
      UnsupportedModelError: the model is subclassed, not built, has several
        outputs, or contains a layer tfprec cannot analyze.  The
        message names the layer and its class and lists what is supported.
    """
    if not isinstance(model, keras.Model):
        raise UnsupportedModelError(
            f"expected a tf_keras Model, got {type(model).__name__}. tfprec "
            "needs tf_keras (Keras 2) models; see the README.")
    if not compat.is_graph_network(model):
        raise UnsupportedModelError(
            f"model '{model.name}' of class {type(model).__name__} is a "
            "subclassed (or unbuilt) model; tfprec supports Sequential models "
            "with a known input shape and functional models only (as TFMOT). "
            "Rebuild it with the functional API, e.g. inputs = "
            "keras.Input(shape); outputs = layers...(inputs); "
            "keras.Model(inputs, outputs), and copy the weights over with "
            "set_weights; or give a Sequential model an Input layer.")
    if len(model.outputs) != 1:
        raise UnsupportedModelError(
            f"model '{model.name}' has {len(model.outputs)} outputs; tfprec "
            "supports classifiers with one class-score output.")
    packing.check_fixed_sizes(model)
    # several inputs: analysed through one packed input (tfprec.packing)
    packed = packing.packed_shape(model) if packing.is_multi_input(model) else None

    input_id = packing.PACKED_ID if packed else _tid(model.inputs[0])
    output_id = _tid(model.outputs[0])
    shapes = {input_id: packed or tuple(model.inputs[0].shape[1:])}
    for t, spec in zip(model.inputs if packed else (), packed.specs if packed else ()):
        shapes[_tid(t)] = spec.shape
    ops: list[Op] = []
    consumers: dict[str, int] = {}
    seen_weight_layers: set = set()

    nodes = compat.nodes_in_order(model)
    for node in nodes:
        if node.is_input:
            continue
        layer = node.layer
        cls = type(layer)
        name = layer.name
        call = layer_calls.NodeCall(node, _tid)
        ins = call.input_ids
        outs = [_tid(t) for t in _flat(node.outputs)]
        if len(outs) != 1:
            raise _unsupported(layer, f"a layer with {len(outs)} outputs")
        for i in ins:
            consumers[i] = consumers.get(i, 0) + 1
        out = outs[0]
        shapes[out] = tuple(_flat(node.outputs)[0].shape[1:])
        final = out == output_id
        if _is_weight_layer(layer):
            if name in seen_weight_layers:
                raise _unsupported(layer, "a weight layer called more than once "
                                   "(shared weights would need one format for "
                                   "several tensors); call a copy of the layer "
                                   "for each use")
            seen_weight_layers.add(name)
            if isinstance(layer, L.Embedding):
                ops.append(_embedding_op(layer, model, ins, out))
                continue
            if cls is L.BatchNormalization:
                ops.append(Op(name, "bn", ins[:1], out, {"layer": layer}, cls.__name__))
                continue
            act = _activation_name(getattr(layer, "activation", None))
            pre = out + "/pre" if act != "linear" else out
            shapes[pre] = shapes[out]
            ops.extend(_weight_ops(layer, ins[0], pre, shapes))
            if act != "linear":
                ops.append(_act_op(layer, name + "/act", pre, out, act,
                                   layer.activation, final, shapes))
        elif cls is L.Activation:
            ops.append(_act_op(layer, name, ins[0], out,
                               _activation_name(layer.activation), layer.activation,
                               final, shapes))
        elif cls is L.Softmax and final:
            _check_softmax_axis(layer, len(shapes[ins[0]]) + 1)
            ops.append(Op(name, "softmax", ins, out, {}, cls.__name__))
        elif (cls is L.ReLU and float(layer.negative_slope) == 0.0
              and float(layer.threshold) == 0.0):
            high = None if layer.max_value is None else float(layer.max_value)
            ops.append(Op(name, "act", ins, out,
                          {"fn": "relu", "low": 0.0, "high": high}, cls.__name__))
        elif cls in (L.MaxPooling2D, L.AveragePooling2D) and _channels_last(layer):
            pad = layer.padding.upper()
            ops.append(Op(name, "maxpool" if cls is L.MaxPooling2D else "avgpool",
                          ins, out, {"ksize": _pair(layer.pool_size),
                                     "strides": _pair(layer.strides),
                                     "padding": pad}, cls.__name__))
        elif cls is L.GlobalAveragePooling2D and _channels_last(layer):
            ops.append(Op(name, "gap", ins, out,
                          {"keepdims": bool(getattr(layer, "keepdims", False))},
                          cls.__name__))
        elif cls in (L.Flatten, L.Reshape) and len(ins) == 1:
            ops.append(Op(name, "reshape", ins, out, {}, cls.__name__))
        elif cls is L.Dropout and len(ins) == 1:
            ops.append(Op(name, "identity", ins, out, {}, cls.__name__))
        elif cls is L.Add and len({shapes[i] for i in ins}) == 1:
            ops.append(Op(name, "add", ins, out, {}, cls.__name__))
        elif cls is L.Concatenate and (layer.axis % (len(shapes[ins[0]]) + 1)) != 0:
            ops.append(Op(name, "concat", ins, out,
                          {"axis": layer.axis % (len(shapes[ins[0]]) + 1)},
                          cls.__name__))
        else:
            ops.append(_layer_op(layer, node, call, shapes))

    ops, dropped = _fold_and_strip(ops, consumers, output_id)
    if packed:      # one op per input: its part of the packed input
        ops = [Op(spec.name, "layer", [input_id], _tid(t),
                  {"call": packing.SliceCall(spec), "bounds": (None, None)},
                  "InputLayer") for t, spec in zip(model.inputs, packed.specs)] + ops
    output_id = ops[-1].output if ops else input_id
    if not any(op.kind in WEIGHT_KINDS for op in ops):
        raise UnsupportedModelError(
            f"model '{model.name}' has no Dense, Conv2D or DepthwiseConv2D "
            "layer; there is nothing to quantize.")
    out_shape = shapes[output_id]
    if tuple(out_shape) == (1,):
        # binary classifier: one logit z (its sigmoid dropped), decision z > 0,
        # analysed as the two-class logits [0, z] (margin |z|)
        ops.append(Op("binary_logits", "binary", [output_id], output_id + "/binary",
                      {}, "binary"))
        output_id = output_id + "/binary"
        shapes[output_id] = out_shape = (2,)
    if len(out_shape) != 1 or out_shape[0] is None or out_shape[0] < 2:
        raise UnsupportedModelError(
            f"model '{model.name}' must output a vector of M >= 2 class "
            f"scores (or one binary logit / sigmoid probability) per example; "
            f"its output shape is {out_shape}.")
    bounds = _propagate_bounds(ops)
    return Graph(ops, input_id, output_id, shapes, bounds, int(out_shape[0]),
                 dropped_softmax=dropped)


def _flat(x):
    return [t for e in x for t in _flat(e)] if isinstance(x, (list, tuple)) else [x]


def _fold_and_strip(ops: list, consumers: dict, output_id: str):
    """Folds BatchNormalization ops, drops the final softmax.

    Returns the remaining ops and whether a softmax was dropped.
    """
    dropped = False
    by_output = {op.output: op for op in ops}
    result: list[Op] = []
    rename: dict[str, str] = {}
    for op in ops:
        op.inputs = [rename.get(i, i) for i in op.inputs]
        if op.kind == "bn":
            bn = op.attrs["layer"]
            src = by_output.get(op.inputs[0])
            if (src is not None and _foldable(src)
                    and consumers.get(op.inputs[0], 0) == 1
                    and "folded_bn" not in src.attrs):
                _fold_bn(src, bn)
                rename[op.output] = src.output
                continue
            result.append(_affine_op(op, bn))
            continue
        if op.kind == "softmax":
            if op.output != output_id:
                raise UnsupportedModelError(
                    f"layer '{op.name}' applies softmax before the last layer;"
                    " tfprec supports softmax only as the final activation.")
            dropped = True
            continue
        result.append(op)
    return result, dropped


def _foldable(op: Op) -> bool:
    """A weight op whose output channels are its kernel's last axis (or a
    depthwise kernel's last two), so a following BatchNormalization folds."""
    return op.kind in REGISTERED_KINDS or op.attrs.get("fold") is not None


def _affine_op(op: Op, bn) -> Op:
    """A BatchNormalization that follows no foldable weight op: the weight op
    y = x * scale + offset over the channel (last) axis."""
    _check_bn_axis(bn)
    scale, offset = layer_calls.bn_affine(bn)
    _check_finite_weights(bn, **{"scale and offset (moving statistics, gamma and "
                                 "beta)": np.append(scale, offset)})
    return Op(op.name, "affine", op.inputs, op.output,
              {"kernel": scale, "bias": offset}, op.layer_class)


def _propagate_bounds(ops: list) -> dict:
    """Known value ranges (low, high) of tensors, from bounded activations."""
    b: dict[str, tuple] = {}
    for op in ops:
        ins = [b.get(i, (None, None)) for i in op.inputs]
        if op.kind == "act":
            lo, hi = op.attrs["low"], op.attrs["high"]
            if op.attrs["fn"] == "linear":
                lo, hi = ins[0]
            b[op.output] = (lo, hi)
        elif op.kind == "layer":
            b[op.output] = op.attrs.get("bounds", (None, None))
        elif op.kind in ("maxpool", "avgpool", "gap", "reshape", "identity"):
            b[op.output] = ins[0]
        elif op.kind == "concat":
            los = [x[0] for x in ins]
            his = [x[1] for x in ins]
            b[op.output] = (None if None in los else min(los),
                            None if None in his else max(his))
        elif op.kind == "add":
            los = [x[0] for x in ins]
            his = [x[1] for x in ins]
            b[op.output] = (None if None in los else sum(los),
                            None if None in his else sum(his))
    return b


#: Ops that pass a stored tensor on without being a new one for the cost
#: model's author convention (:func:`written_tensor`).
WRITE_THROUGH_KINDS = ("maxpool", "avgpool", "act", "identity", "reshape")


def written_tensor(graph: Graph, tensor_id: str) -> str:
    """The tensor a previous layer *writes* that ``tensor_id`` is read from.

    Walks back from ``tensor_id`` through max/avg pooling, activations,
    dropout and reshapes to the first tensor produced otherwise: the output
    of a weight op (its activation included), the network input, or the
    output of an add, concat or global average pool.  The paper's authors
    count the feature map a layer writes before any pooling.
    """
    producer = {op.output: op for op in graph.ops}
    op = producer.get(tensor_id)
    while op is not None and op.kind in WRITE_THROUGH_KINDS:
        tensor_id = op.inputs[0]
        op = producer.get(tensor_id)
    return tensor_id
