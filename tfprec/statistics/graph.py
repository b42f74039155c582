"""Reads a tf_keras model into a small inference graph that tfprec analyzes.

The graph lists, in topological order, one :class:`Op` per Keras layer call.
Weight layers (Dense, Conv2D, DepthwiseConv2D) carry their weights with any
following inference-time BatchNormalization folded in; a fused activation is
split off into an ``act`` op of its own; a final softmax is dropped so the
graph ends at the logits.  The user's model is only read, never modified.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

import numpy as np

from tfprec import compat
from tfprec._tf import keras
from tfprec.errors import UnsupportedModelError

L = keras.layers

WEIGHT_KINDS = ("dense", "conv2d", "depthwise")

SUPPORTED_LAYERS = (
    "InputLayer, Dense, Conv2D, DepthwiseConv2D, BatchNormalization (directly "
    "after a Dense/Conv2D/DepthwiseConv2D with linear activation), Activation "
    "and ReLU (relu, relu6, ReLU(max_value) clipping, linear), MaxPooling2D, "
    "AveragePooling2D, GlobalAveragePooling2D, Flatten, Reshape, Dropout, Add, "
    "Concatenate, and a final softmax"
)


@dataclasses.dataclass
class Op:
    """One node of the inference graph.

    Attributes:
      name: name of the Keras layer this op comes from (weight ops keep the
        layer's name; split-off activations get ``<layer>/act``).
      kind: one of ``dense conv2d depthwise act maxpool avgpool gap reshape
        identity add concat``.
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


def _check_channels_last(layer):
    fmt = getattr(layer, "data_format", "channels_last")
    if fmt not in (None, "channels_last"):
        raise _unsupported(layer, f"data_format={fmt!r} (only channels_last)")


def _weight_op(layer, inp: str, out: str) -> Op:
    cls = type(layer)
    _check_channels_last(layer)
    weights = [np.asarray(w, dtype=np.float64) for w in layer.get_weights()]
    use_bias = bool(getattr(layer, "use_bias", False))
    kernel = weights[0]
    bias = weights[1] if use_bias else None
    _check_finite_weights(layer, kernel=kernel, bias=bias)
    attrs: dict[str, Any] = {"kernel": kernel, "bias": bias}
    if cls is L.Dense:
        kind = "dense"
    else:
        if tuple(layer.dilation_rate) != (1, 1):
            raise _unsupported(layer, f"dilation_rate={layer.dilation_rate}")
        pad = layer.padding.upper()
        if pad not in ("VALID", "SAME"):
            raise _unsupported(layer, f"padding={layer.padding!r}")
        attrs.update(strides=_pair(layer.strides), padding=pad,
                     ksize=tuple(kernel.shape[:2]))
        if cls is L.Conv2D:
            if getattr(layer, "groups", 1) != 1:
                raise _unsupported(layer, f"groups={layer.groups}")
            kind = "conv2d"
        else:
            kind = "depthwise"
    return Op(layer.name, kind, [inp], out, attrs, cls.__name__)


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


def _fold_bn(op: Op, bn) -> None:
    """Folds inference BatchNormalization ``bn`` into weight op ``op``."""
    axis = bn.axis if isinstance(bn.axis, int) else list(bn.axis)
    rank = len(bn.input_shape)
    if isinstance(axis, list):
        if len(axis) != 1:
            raise _unsupported(bn, f"axis={bn.axis}")
        axis = axis[0]
    if axis % rank != rank - 1:
        raise _unsupported(bn, f"axis={bn.axis} (only the channel axis)")
    cfg = {w.name.split("/")[-1].split(":")[0]: np.asarray(w, np.float64)
           for w in bn.weights}
    n = bn.input_shape[-1]
    gamma = cfg.get("gamma", np.ones(n))
    beta = cfg.get("beta", np.zeros(n))
    mean = cfg["moving_mean"]
    var = cfg["moving_variance"]
    scale = gamma / np.sqrt(var + bn.epsilon)
    k = op.attrs["kernel"]
    if op.kind == "depthwise":  # kernel [kh, kw, cin, m]; out channel c*m+j
        kh, kw, cin, m = k.shape
        k = k * scale.reshape(cin, m)[None, None]
    else:
        k = k * scale
    b = op.attrs["bias"] if op.attrs["bias"] is not None else np.zeros(n)
    op.attrs["kernel"] = k
    op.attrs["bias"] = (b - mean) * scale + beta
    _check_finite_weights(bn, **{"folded kernel and bias (moving statistics "
                                 "and scale)": np.append(k, op.attrs["bias"])})
    op.attrs["folded_bn"] = bn.name


def parse_model(model) -> Graph:
    """Parses a Sequential or functional tf_keras classifier into a Graph.

    Raises:
      UnsupportedModelError: the model is subclassed, not built, has several
        inputs or outputs, or contains a layer tfprec cannot analyze.  The
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
            "with a known input shape and functional models only.")
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise UnsupportedModelError(
            f"model '{model.name}' has {len(model.inputs)} inputs and "
            f"{len(model.outputs)} outputs; tfprec supports one of each.")

    input_id = _tid(model.inputs[0])
    output_id = _tid(model.outputs[0])
    shapes = {input_id: tuple(model.inputs[0].shape[1:])}
    ops: list[Op] = []
    consumers: dict[str, int] = {}
    seen_weight_layers: set = set()

    nodes = compat.nodes_in_order(model)
    for node in nodes:
        if node.is_input:
            continue
        layer = node.layer
        ins = [_tid(t) for t in node.keras_inputs]
        outs = [_tid(t) for t in _flat(node.outputs)]
        for i in ins:
            consumers[i] = consumers.get(i, 0) + 1
        out = outs[0]
        shapes[out] = tuple(_flat(node.outputs)[0].shape[1:])
        cls = type(layer)
        name = layer.name
        if cls in (L.Dense, L.Conv2D, L.DepthwiseConv2D):
            if name in seen_weight_layers:
                raise _unsupported(layer, "a weight layer called more than once")
            seen_weight_layers.add(name)
            if cls is L.Dense and len(shapes[ins[0]]) != 1:
                raise _unsupported(layer, "Dense on an input of rank > 2")
            act = _activation_name(layer.activation)
            wop = _weight_op(layer, ins[0], out + "/pre" if act != "linear" else out)
            ops.append(wop)
            if act != "linear":
                shapes[out + "/pre"] = shapes[out]
                attrs = _act_attrs(act, layer)
                if attrs is None:
                    if act == "softmax" and node is nodes[-1] and out == output_id:
                        ops.append(Op(name + "/act", "softmax", [out + "/pre"], out,
                                      {}, cls.__name__))
                        continue
                    raise _unsupported(layer, f"activation {act!r}")
                ops.append(Op(name + "/act", "act", [out + "/pre"], out, attrs,
                              cls.__name__))
        elif cls is L.BatchNormalization:
            ops.append(Op(name, "bn", ins, out, {"layer": layer}, cls.__name__))
        elif cls is L.Activation:
            act = _activation_name(layer.activation)
            attrs = _act_attrs(act, layer)
            if attrs is None:
                if act == "softmax":
                    ops.append(Op(name, "softmax", ins, out, {}, cls.__name__))
                    continue
                raise _unsupported(layer, f"activation {act!r}")
            ops.append(Op(name, "act", ins, out, attrs, cls.__name__))
        elif cls is L.Softmax:
            _check_softmax_axis(layer, len(shapes[ins[0]]) + 1)
            ops.append(Op(name, "softmax", ins, out, {}, cls.__name__))
        elif cls is L.ReLU:
            if float(layer.negative_slope) != 0.0 or float(layer.threshold) != 0.0:
                raise _unsupported(layer, "ReLU with negative_slope or threshold")
            high = None if layer.max_value is None else float(layer.max_value)
            ops.append(Op(name, "act", ins, out,
                          {"fn": "relu", "low": 0.0, "high": high}, cls.__name__))
        elif cls in (L.MaxPooling2D, L.AveragePooling2D):
            _check_channels_last(layer)
            pad = layer.padding.upper()
            ops.append(Op(name, "maxpool" if cls is L.MaxPooling2D else "avgpool",
                          ins, out, {"ksize": _pair(layer.pool_size),
                                     "strides": _pair(layer.strides),
                                     "padding": pad}, cls.__name__))
        elif cls is L.GlobalAveragePooling2D:
            _check_channels_last(layer)
            ops.append(Op(name, "gap", ins, out,
                          {"keepdims": bool(getattr(layer, "keepdims", False))},
                          cls.__name__))
        elif cls in (L.Flatten, L.Reshape):
            ops.append(Op(name, "reshape", ins, out, {}, cls.__name__))
        elif cls is L.Dropout:
            ops.append(Op(name, "identity", ins, out, {}, cls.__name__))
        elif cls is L.Add:
            if len({shapes[i] for i in ins}) != 1:
                raise _unsupported(layer, "Add of differently shaped inputs")
            ops.append(Op(name, "add", ins, out, {}, cls.__name__))
        elif cls is L.Concatenate:
            rank = len(shapes[ins[0]]) + 1
            axis = layer.axis % rank
            if axis == 0:
                raise _unsupported(layer, "concatenation along the batch axis")
            ops.append(Op(name, "concat", ins, out, {"axis": axis}, cls.__name__))
        else:
            raise _unsupported(layer)

    ops, dropped = _fold_and_strip(ops, consumers, output_id)
    output_id = ops[-1].output if ops else input_id
    if not any(op.kind in WEIGHT_KINDS for op in ops):
        raise UnsupportedModelError(
            f"model '{model.name}' has no Dense, Conv2D or DepthwiseConv2D "
            "layer; there is nothing to quantize.")
    out_shape = shapes[output_id]
    if len(out_shape) != 1 or out_shape[0] is None or out_shape[0] < 2:
        raise UnsupportedModelError(
            f"model '{model.name}' must output a vector of M >= 2 class "
            f"scores per example; its output shape is {out_shape}.")
    bounds = _propagate_bounds(ops)
    return Graph(ops, input_id, output_id, shapes, bounds, int(out_shape[0]),
                 dropped_softmax=dropped)


def _flat(x):
    if isinstance(x, (list, tuple)):
        return [t for e in x for t in _flat(e)]
    return [x]


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
            if (src is None or src.kind not in WEIGHT_KINDS
                    or consumers.get(op.inputs[0], 0) != 1
                    or "folded_bn" in src.attrs):
                raise _unsupported(
                    bn, "BatchNormalization is folded only when it directly "
                    "follows a Dense/Conv2D/DepthwiseConv2D with linear "
                    "activation whose output it alone consumes")
            _fold_bn(src, bn)
            rename[op.output] = src.output
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
