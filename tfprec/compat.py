"""The one place where tfprec touches private TensorFlow / tf_keras / TFMOT
internals that have no public equivalent.

Everything else in tfprec uses public APIs.  The internals below were
checked against the versions in :data:`CHECKED_VERSIONS`;
``tests/test_compat.py`` fails loudly on any other version, so an upgrade is
a deliberate step: re-run the suite, then add the version here.

* functional-graph traversal: ``Model._is_graph_network`` (a built
  Sequential or functional model, not a subclassed one) and
  ``Model._nodes_by_depth`` (the layer calls of the model's own graph, by
  depth; ``Layer.inbound_nodes`` lists a shared layer's calls in *every*
  model that uses it, so it cannot tell which belong to this model);
* ``KerasTensor._keras_history``: the (layer, node index, tensor index)
  that produced a symbolic tensor;
* ``Node.call_args`` / ``call_kwargs`` / ``outputs`` / ``is_input`` of those
  nodes (a nested model's calls are read through :class:`FlatNode`);
* TFMOT ``QuantizeWrapperV2._weight_vars``: the (variable, quantizer,
  quantizer variables) triples of a wrapped layer.
"""
from __future__ import annotations

from tfprec._tf import tf, keras

#: package -> the major.minor versions whose internals tfprec was checked with.
CHECKED_VERSIONS = {
    "tensorflow": ("2.21",),
    "tf_keras": ("2.21",),
    "tensorflow_model_optimization": ("0.8",),
}


def installed_versions() -> dict:
    """package -> installed version string."""
    import tensorflow_model_optimization as tfmot
    return {"tensorflow": tf.__version__, "tf_keras": keras.__version__,
            "tensorflow_model_optimization": tfmot.__version__}


def unchecked_versions() -> dict:
    """package -> installed version, for packages whose version is not in
    :data:`CHECKED_VERSIONS` (empty when everything was checked)."""
    out = {}
    for pkg, v in installed_versions().items():
        if ".".join(v.split(".")[:2]) not in CHECKED_VERSIONS[pkg]:
            out[pkg] = v
    return out


def is_graph_network(model) -> bool:
    """Whether ``model`` is a built Sequential or functional model."""
    return bool(getattr(model, "_is_graph_network", False))


def _own_nodes(model) -> list:
    by_depth = model._nodes_by_depth
    return [n for d in sorted(by_depth.keys(), reverse=True) for n in by_depth[d]]


class FlatNode:
    """A layer call of a model nested in another (a Sequential or functional
    model used as a layer), seen from the outer model's graph: the call's
    arguments and outputs with the nested model's own input and output
    tensors replaced by the tensors the outer graph calls it with and gets
    back.  Has the attributes of a Keras node that tfprec reads."""

    is_input = False

    def __init__(self, node, sub: dict):
        def resolve(v):
            return sub.get(id(v), v) if is_symbolic(v) else v
        self.layer = node.layer
        self.call_args = tf.nest.map_structure(resolve, tuple(node.call_args))
        self.call_kwargs = tf.nest.map_structure(resolve, dict(node.call_kwargs))
        self.outputs = tf.nest.map_structure(resolve, node.outputs)


def _nested_error(msg: str):
    from tfprec.errors import UnsupportedModelError   # local: compat is low level
    return UnsupportedModelError(msg)


def _nested_inputs(node, nested) -> list:
    """The outer graph's tensors that feed ``nested``'s inputs, in order."""
    args = node.call_args[0] if node.call_args else node.call_kwargs.get("inputs")
    if isinstance(args, dict):
        names = [producing_layer(t).name for t in nested.inputs]
        if not set(names) <= set(args):
            raise _nested_error(
                f"model '{nested.name}' is called with inputs {sorted(args)} "
                f"where it takes {names}")
        leaves = [args[k] for k in names]
    else:
        leaves = tf.nest.flatten(args)
    if len(leaves) != len(nested.inputs) or not all(map(is_symbolic, leaves)):
        raise _nested_error(
            f"model '{nested.name}' (nested as a layer) is called with "
            f"{len(leaves)} input(s) where it takes {len(nested.inputs)}; tfprec "
            "reads a nested model only when it is called on its inputs as its "
            "own graph defines them")
    return leaves


def _expand(model, sub: dict, seen: dict, out: list, top: bool) -> None:
    for n in _own_nodes(model):
        if n.is_input:
            if top:
                out.append(n)
            continue
        layer = n.layer
        if isinstance(layer, keras.layers.TimeDistributed) and \
                isinstance(layer.layer, keras.layers.Dense):
            # TimeDistributed(Dense) is its Dense on [B, T, ..., D]: read as
            # that Dense (which holds the weights), called on the same tensors
            flat = FlatNode(n, sub)
            flat.layer = layer.layer
            out.append(flat)
            continue
        if not (isinstance(layer, keras.Model) and is_graph_network(layer)):
            out.append(FlatNode(n, sub) if sub else n)
            continue
        if id(layer) in seen:
            raise _nested_error(
                f"model '{layer.name}' nested in model '{seen[id(layer)]}' is "
                "called more than once (its weights would be shared by several "
                "tensors, each needing its own format); call a copy of it for "
                "each use")
        seen[id(layer)] = model.name
        inner = {}
        for t, outer_t in zip(layer.inputs, _nested_inputs(n, layer)):
            inner[id(t)] = sub.get(id(outer_t), outer_t)
        outs = tf.nest.flatten(n.outputs)
        for t, outer_t in zip(layer.outputs, outs):
            if id(t) in inner:
                raise _nested_error(
                    f"model '{layer.name}' (nested as a layer) passes its input "
                    "through unchanged as an output; remove it from the model")
            inner[id(t)] = sub.get(id(outer_t), outer_t)
        _expand(layer, inner, seen, out, False)


def nodes_in_order(model) -> list:
    """The layer-call nodes of ``model``'s graph, inputs first (topological
    order; input nodes included, see ``node.is_input``).

    A Sequential or functional model used as a layer of ``model`` (a
    ``keras.applications`` base under a new head, a nested stem) is expanded
    into its own layer calls, as :class:`FlatNode` objects whose tensors are
    the outer graph's where the two graphs meet, so tfprec analyses and
    rebuilds the network as one flat graph of layers.  The nested models
    themselves are only read.  A ``TimeDistributed(Dense)`` call is read as
    its Dense called on the same tensors (a Dense maps the last axis of any
    [B, T, ..., D] input), so the plan names the Dense.

    Raises:
      UnsupportedModelError: a nested model is called more than once, or
        layers of the expanded graph share a name (names identify the
        layers of a plan); the message names them.
    """
    nodes: list = []
    _expand(model, {}, {}, nodes, True)
    names: dict = {}
    for n in nodes:
        if n.is_input:
            continue
        other = names.setdefault(n.layer.name, n.layer)
        if other is not n.layer:
            raise _nested_error(
                f"two layers of model '{model.name}' are named "
                f"'{n.layer.name}' once its nested models are expanded (one of "
                "them inside a nested model); tfprec identifies a plan's layers "
                "by name: give them distinct names")
    return nodes


def output_layer(model):
    """The layer whose call produces ``model``'s (first) output, looked up
    through nested models (the last layer of a nested head)."""
    t = model.outputs[0]
    layer, _, index = t._keras_history
    while isinstance(layer, keras.Model) and is_graph_network(layer):
        t = layer.outputs[index]
        layer, _, index = t._keras_history
    return layer


def producing_layer(tensor):
    """The layer that produced symbolic tensor ``tensor``."""
    return tensor._keras_history.layer


def producing_node(tensor):
    """The node (layer call) that produced symbolic tensor ``tensor``."""
    layer, node_index, _ = tensor._keras_history
    return layer.inbound_nodes[node_index]


def is_symbolic(value) -> bool:
    """Whether ``value`` is a symbolic (Keras functional) tensor."""
    return hasattr(value, "_keras_history")


def wrapper_weight_vars(wrapper) -> list:
    """(variable, quantizer) pairs of a TFMOT ``QuantizeWrapperV2``."""
    return [(v, q) for v, q, _ in wrapper._weight_vars]
